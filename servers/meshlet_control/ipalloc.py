"""Tailnet address allocation: one IPv4 from 100.64.0.0/10 and one IPv6 from fd7a:115c:a1e0::/48 per node.

Headscale's "sequential" strategy (shared/protocol/control.md §10), kept
exactly in one respect and extended in another:

* A cursor per family starts at the network address each time the state is
  opened and moves forward to the next address that is neither in use nor
  reserved. The first node gets 100.64.0.1 and fd7a:115c:a1e0::1, the next
  .2/::2, and so on. Addresses freed by deleted nodes are therefore reused
  only after a restart (the cursor starts from the bottom again), as in
  headscale; within one run new nodes never take an address a peer may
  still have cached for a node that just left.
* When the cursor reaches the end of the prefix it wraps once to the start
  (headscale gives up there); only a completely full prefix is an error.

Never handed out: the network and last address of each prefix, 100.100.100.100
and fd7a:115c:a1e0::53 (the quad-100 resolver), and 100.115.92.0/23
(ChromeOS's VM range), all as headscale skips them.

The set of used addresses lives in memory (ints), so each allocation costs
O(1) amortised; the database's UNIQUE columns catch a concurrent allocation
by another process, after which the caller reloads and tries again.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Union

IPv4_PREFIX = ipaddress.ip_network("100.64.0.0/10")
IPv6_PREFIX = ipaddress.ip_network("fd7a:115c:a1e0::/48")
_RESERVED = [
    ipaddress.ip_network("100.115.92.0/23"),
    ipaddress.ip_network("100.100.100.100/32"),
    ipaddress.ip_network("fd7a:115c:a1e0::53/128"),
]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class AddressesExhausted(Exception):
    """No free address is left in a prefix."""


class _Family:
    def __init__(self, prefix: Network) -> None:
        self.prefix = prefix
        self.first = int(prefix.network_address) + 1
        self.last = int(prefix.broadcast_address) - 1
        self.cursor = int(prefix.network_address)
        self.used: set[int] = set()
        spans = [
            (int(r.network_address), int(r.broadcast_address))
            for r in _RESERVED
            if r.version == prefix.version
        ]
        self.reserved = [(lo, hi) for lo, hi in spans if self.first - 1 <= lo and hi <= self.last + 1]

    def is_reserved(self, a: int) -> bool:
        return any(lo <= a <= hi for lo, hi in self.reserved)

    def next(self) -> int:
        a, wrapped = self.cursor, False
        while True:
            a += 1
            if a > self.last:
                if wrapped:
                    raise AddressesExhausted("no free address left in %s; delete unused nodes" % self.prefix)
                a, wrapped = self.first - 1, True
                continue
            if a not in self.used and not self.is_reserved(a):
                self.cursor = a
                self.used.add(a)
                return a


class IPAllocator:
    """Hands out (ipv4, ipv6) pairs; `used` seeds it with the addresses already taken."""

    def __init__(
        self, used: Iterable[str] = (), v4: Network = IPv4_PREFIX, v6: Network = IPv6_PREFIX
    ) -> None:
        self.v4 = _Family(v4)
        self.v6 = _Family(v6)
        for text in used:
            self.mark_used(text)

    def mark_used(self, text: str) -> None:
        if not text:
            return
        ip = ipaddress.ip_address(text)
        (self.v4 if ip.version == 4 else self.v6).used.add(int(ip))

    def release(self, text: str) -> None:
        """Forgets an address (its node was deleted); the cursor only comes back to it after wrapping."""
        if not text:
            return
        ip = ipaddress.ip_address(text)
        (self.v4 if ip.version == 4 else self.v6).used.discard(int(ip))

    def allocate(self) -> tuple[str, str]:
        """The next free (ipv4, ipv6). Raises AddressesExhausted."""
        v4 = str(ipaddress.IPv4Address(self.v4.next()))
        try:
            v6 = str(ipaddress.IPv6Address(self.v6.next()))
        except AddressesExhausted:
            self.release(v4)
            raise
        return v4, v6

    def reset_cursors(self) -> None:
        """Back to the bottom of each prefix (what a restart does)."""
        self.v4.cursor = int(self.v4.prefix.network_address)
        self.v6.cursor = int(self.v6.prefix.network_address)
