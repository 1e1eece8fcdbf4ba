"""Which of two direct paths to a peer is better (disco.md §6.4; Tailscale's betterAddr).

A path is an address (4 or 16 bytes, port) with the latency of its last pong.
Each path collects points:

* the faster one gets its percentage advantage over the slower one
  (`100 - 100 * fast / slow`; 200 ms against 190 ms gives the faster 5);
* +50 on loopback, else +30 for IPv6 link-local, else +20 for a private
  address (RFC 1918, ULA fc00::/7): a LAN path wins over the same NAT's
  public mapping at about the same speed;
* +10 for IPv6.

The new path replaces the current one only with strictly more points, and
not at all when it has at most 1 point against 0 (hysteresis: a 1 % gain is
noise). The same address is better only with a larger path MTU (MTU probing
is off here, so it never is). Latencies are in the caller's unit (the core
uses ms; 0 means "under a millisecond").
"""

from .._compat import TYPE_CHECKING

if TYPE_CHECKING:
    Addr = tuple[bytes, int]

_LOOPBACK_V6 = b"\x00" * 15 + b"\x01"


def is_loopback(ip: bytes) -> bool:
    return (len(ip) == 4 and ip[0] == 127) or ip == _LOOPBACK_V6


def is_link_local_v6(ip: bytes) -> bool:
    """fe80::/10."""
    return len(ip) == 16 and ip[0] == 0xFE and ip[1] & 0xC0 == 0x80


def is_private(ip: bytes) -> bool:
    """RFC 1918 (10/8, 172.16/12, 192.168/16) and ULA (fc00::/7), as Go's netip.Addr.IsPrivate."""
    if len(ip) == 4:
        return ip[0] == 10 or (ip[0] == 172 and ip[1] & 0xF0 == 16) or (ip[0] == 192 and ip[1] == 168)
    return len(ip) == 16 and ip[0] & 0xFE == 0xFC


def _kind_points(ip: bytes) -> int:
    points = 0
    if is_loopback(ip):
        points += 50
    elif is_link_local_v6(ip):
        points += 30
    elif is_private(ip):
        points += 20
    if len(ip) == 16:
        points += 10
    return points


def better_addr(a: "Addr | None", a_latency: int, b: "Addr | None", b_latency: int) -> bool:
    """Whether path `a` (with its latency) should replace the current path `b`; None is no path."""
    if a == b:
        return False  # the same address: only a larger MTU would win, and MTU probing is off
    if b is None:
        return True
    if a is None:
        return False
    a_points = 0
    b_points = 0
    if a_latency > b_latency and a_latency > 0:
        b_points = 100 - (b_latency * 100) // a_latency
    elif b_latency > 0:
        a_points = 100 - (a_latency * 100) // b_latency
    a_points += _kind_points(a[0])
    b_points += _kind_points(b[0])
    if a_points <= 1 and b_points == 0:
        return False
    return a_points > b_points
