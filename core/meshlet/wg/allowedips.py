"""Crypto-key routing: longest-prefix match over every peer's allowed IPs (whitepaper §2).

Outbound, a packet's destination picks the peer whose allowed IPs hold the
longest matching prefix; inbound, a decrypted packet's source must map back
to the peer whose key decrypted it, or the packet is dropped.

Theory of operation. wireguard-go walks a path-compressed binary trie; in
Python a walk costs one bytecode loop per bit, up to 128 for IPv6. This
table instead keeps one dict per prefix length present, keyed by the
address as an int with its host bits cleared, and tries the lengths longest
first:

    levels = [(mask, {network: peer}), ...]   longest prefix first

so a lookup is one dict probe per distinct prefix length in use (a typical
tailnet has two or three: /32 or /128 per peer, a subnet route, /0 for an exit
node), each done in C. The semantics are exactly a trie's, and the property
tests compare it with a naive linear scan.

Inserting a prefix that another peer holds moves it to the new peer, as in
wireguard-go. Host bits of an inserted address are cleared (10.0.0.7/24 is
stored as 10.0.0.0/24).
"""

import struct

from .._compat import TYPE_CHECKING
from ..errors import LocalProtocolError

if TYPE_CHECKING:
    from .peer import Peer


class _Table:
    """One address family: 32 or 128 bits."""

    __slots__ = ("bits", "routes", "levels")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.routes: "dict[int, dict[int, Peer]]" = {}  # prefix length -> {network: peer}
        self.levels: "list[tuple[int, dict[int, Peer]]]" = []

    def mask(self, cidr: int) -> int:
        return ((1 << cidr) - 1) << (self.bits - cidr)

    def reindex(self) -> None:
        self.levels = [(self.mask(n), self.routes[n]) for n in sorted(self.routes, reverse=True)]

    def lookup(self, x: int) -> "Peer | None":
        for mask, networks in self.levels:
            peer = networks.get(x & mask)
            if peer is not None:
                return peer
        return None


class AllowedIPs:
    """Longest-prefix match from IPv4 and IPv6 addresses to peers."""

    __slots__ = ("_v4", "_v6")

    def __init__(self) -> None:
        self._v4 = _Table(32)
        self._v6 = _Table(128)

    def validate(self, ip: bytes, cidr: int) -> None:
        """Raises LocalProtocolError ("bad_ip", "bad_prefix") unless `ip/cidr` could be inserted."""
        self._table(ip, cidr)

    def _table(self, ip: bytes, cidr: int) -> "_Table":
        if len(ip) == 4:
            table = self._v4
        elif len(ip) == 16:
            table = self._v6
        else:
            raise LocalProtocolError("bad_ip", "address of %d bytes" % len(ip))
        if not 0 <= cidr <= table.bits:
            raise LocalProtocolError("bad_prefix", "/%d for a %d-bit address" % (cidr, table.bits))
        return table

    def insert(self, ip: bytes, cidr: int, peer: "Peer") -> None:
        """Routes `ip/cidr` to `peer`, taking it from any peer that had it.

        Raises:
            LocalProtocolError: "bad_ip" or "bad_prefix".
        """
        table = self._table(ip, cidr)
        networks = table.routes.get(cidr)
        if networks is None:
            networks = table.routes[cidr] = {}
            table.reindex()
        networks[int.from_bytes(ip, "big") & table.mask(cidr)] = peer

    def remove(self, ip: bytes, cidr: int, peer: "Peer") -> None:
        """Removes `ip/cidr` if `peer` holds it."""
        table = self._table(ip, cidr)
        networks = table.routes.get(cidr)
        if networks is None:
            return
        key = int.from_bytes(ip, "big") & table.mask(cidr)
        if networks.get(key) is peer:
            del networks[key]
            if not networks:
                del table.routes[cidr]
                table.reindex()

    def remove_by_peer(self, peer: "Peer") -> None:
        for ip, cidr in self.entries_for_peer(peer):
            self.remove(ip, cidr, peer)

    def entries_for_peer(self, peer: "Peer") -> "list[tuple[bytes, int]]":
        """Every prefix `peer` holds, IPv4 first, longest first."""
        out = []
        for table, size in ((self._v4, 4), (self._v6, 16)):
            for cidr, networks in sorted(table.routes.items(), reverse=True):
                for key in sorted(networks):
                    if networks[key] is peer:
                        out.append((key.to_bytes(size, "big"), cidr))
        return out

    def lookup(self, ip: bytes) -> "Peer | None":
        """The peer owning the longest prefix that contains `ip` (4 or 16 bytes)."""
        if len(ip) == 4:
            return self._v4.lookup(int.from_bytes(ip, "big"))
        if len(ip) == 16:
            return self._v6.lookup(int.from_bytes(ip, "big"))
        return None

    def lookup_packet(self, packet: "bytes | memoryview", v6: bool, source: bool) -> "Peer | None":
        """Looks up the source or destination of an IP packet of the given version.

        The caller has checked the version and that the header is complete
        (20 bytes for IPv4, 40 for IPv6); the address is read in place.
        """
        if v6:
            hi, lo = struct.unpack_from(">QQ", packet, 8 if source else 24)
            return self._v6.lookup((hi << 64) | lo)
        return self._v4.lookup(struct.unpack_from(">I", packet, 12 if source else 16)[0])
