"""MagicDNS for the agent: the resolver on 100.100.100.100 and the OS settings that point at it.

`Resolver` answers the tailnet's names from the NetMap and forwards the
rest; `OsDns` makes the system ask it (systemd-resolved, /etc/resolv.conf
or /etc/hosts) and undoes that on `down`, or on the next start after a
crash. docs/magicdns.md is the operator's view.
"""

from .names import SERVICE_IP4, SERVICE_IP6
from .oscfg import OsDns, OsDnsError
from .resolver import Resolver

__all__ = ["SERVICE_IP4", "SERVICE_IP6", "OsDns", "OsDnsError", "Resolver"]
