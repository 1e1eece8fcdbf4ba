"""MagicDNS: the resolver behind 100.100.100.100, answering the tailnet's names itself.

It behaves like Tailscale's quad-100 resolver (net/dns/resolver/tsdns.go;
shared/protocol/names.md §3.2) so that a host sees the same answers from
meshlet as from Tailscale:

* A/AAAA for node names (self, peers, `DNSConfig.ExtraRecords`), matched
  case-insensitively, answered with the question's own spelling, TTL 600 s,
  authoritative. A name that exists but has no address of the asked family
  gets NOERROR with no answer, never NXDOMAIN. NS, SOA, AXFR and HINFO for a
  node name get NOTIMP; other types NOERROR with no answer.
* PTR for a node's address in in-addr.arpa / ip6.arpa; an unknown address in
  the tailnet's reverse zones gets NXDOMAIN; malformed reverse names go
  upstream.
* NXDOMAIN for unknown names under a local domain (the MagicDNS suffix with
  MagicDNS on, and `Routes` entries without resolvers), and for `.onion`.
* Everything else is forwarded: to the longest matching `Routes` suffix's
  resolvers, else `DNSConfig.Resolvers`, else the resolvers the OS had
  before meshlet took over (the constructor's list). Never to
  100.100.100.100 itself. No answer in time: SERVFAIL.

Malformed input: fewer than 12 bytes (no ID to answer with) or a message
that is itself a response is dropped, never answered (answering responses
lets two resolvers bounce packets forever). A query that does not parse, or
asks other than exactly one question, gets FORMERR; an opcode other than
QUERY gets NOTIMP; EDNS version other than 0 gets BADVERS (RFC 6891).

Sizes: a query with an EDNS OPT record gets one back (we advertise 1232
bytes, the DNS flag-day size) and may receive that much; without EDNS the
limit is 512 (RFC 1035). An answer over the limit loses records from the
end and has TC set, so the client retries over TCP. A forwarded query goes
upstream byte for byte, so the upstream sizes its own reply; when that reply
is truncated we retry over TCP and cut the full answer down to the client's
limit ourselves.
"""

import asyncio
import ipaddress
import logging
import struct
from typing import Any

from dnslib import AAAA, EDNS0, PTR, RR, A, DNSHeader, DNSLabel, DNSRecord
from meshlet.control.netmap import NetMap

from . import forward
from .names import (
    SERVICE_IP4,
    SERVICE_IP6,
    SERVICE_IPS,
    SERVICE_NAME,
    NameTable,
    Upstream,
    fqdn,
    reverse_name_ip,
)

log = logging.getLogger("meshlet_agent.dns")

TTL_S = 600
"""TTL of every local answer; Tailscale's defaultTTL."""
EDNS_PAYLOAD = 1232
"""The UDP payload size we advertise in our OPT record (DNS flag day 2020)."""
MAX_UDP_PAYLOAD = 4096
"""The most we send over UDP whatever a client advertises."""
PLAIN_UDP_PAYLOAD = 512  # RFC 1035 §2.3.4
FAILURE_LOG_INTERVAL_S = 60.0

QTYPE_A, QTYPE_PTR, QTYPE_AAAA, QTYPE_OPT, QTYPE_ANY = 1, 12, 28, 41, 255
_QTYPES_NOTIMP = frozenset((2, 6, 13, 252))  # NS, SOA, HINFO, AXFR: as Tailscale
CLASS_IN, CLASS_ANY = 1, 255
RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 2, 3, 4
_EXT_RCODE_BADVERS = 1  # BADVERS = 16: the OPT record carries its high 8 bits

_ANSWER, _FORWARD, _DROP = 0, 1, 2


class _Query:
    """What `_local` learned about a query that must go upstream."""

    __slots__ = ("limit", "name", "record")

    def __init__(self, record: Any, name: str, limit: int) -> None:
        self.record = record
        self.name = name
        self.limit = limit


def _header_error(query: bytes, rcode: int) -> bytes:
    """A header-only reply for a query dnslib could not read: its ID, opcode and RD, and `rcode`."""
    qid, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | rcode
    return struct.pack("!6H", qid, flags, 0, 0, 0, 0)


def _qname_text(label: Any) -> "str | None":
    """The question name as a lower-case FQDN, or None if it cannot be one of ours (odd bytes)."""
    parts: list[str] = []
    for raw in label.label:
        if b"." in raw or not raw.isascii():
            return None
        parts.append(raw.decode("ascii").lower())
    return ".".join(parts) + "." if parts else "."


def _fit(reply: Any, limit: int) -> bytes:
    """`reply` packed into `limit` bytes: extra sections dropped first, then answers with TC set."""
    data = bytes(reply.pack())
    if len(data) <= limit:
        return data
    reply.auth = []
    reply.ar = [r for r in reply.ar if r.rtype == QTYPE_OPT]
    data = bytes(reply.pack())
    while len(data) > limit and reply.rr:
        n = len(reply.rr)
        reply.rr = reply.rr[: min(n - 1, n * limit // len(data))]  # a few passes even for huge answers
        reply.header.tc = 1
        data = bytes(reply.pack())
    if len(data) > limit:
        reply.ar = []
        reply.header.tc = 1
        data = bytes(reply.pack())
    return data


class Resolver:
    """The tailnet's names from the latest NetMap, and a forwarder for the rest."""

    def __init__(
        self, upstreams: "list[tuple[str, int]] | None" = None, *, forward_timeout_s: float = 2.0
    ) -> None:
        self._os_upstreams: list[Upstream] = []
        self.set_os_upstreams(upstreams or [])
        self._timeout_s = forward_timeout_s
        self._table = NameTable()
        self._last_failure_log = -FAILURE_LOG_INTERVAL_S
        self.stats: dict[str, int] = {
            "queries": 0,
            "local_answers": 0,
            "forwarded": 0,
            "failures": 0,
            "dropped": 0,
        }

    # -- configuration ------------------------------------------------------------------------

    def set_netmap(self, nm: NetMap) -> None:
        """Rebuilds the name table from `nm` (linear in the number of peers)."""
        self._table = NameTable.from_netmap(nm)

    def set_os_upstreams(self, upstreams: "list[tuple[str, int]]") -> None:
        """The resolvers the OS used before meshlet (OsDns.original_nameservers()); never quad-100."""
        self._os_upstreams = [(h, p) for h, p in upstreams if h.split("%")[0] not in SERVICE_IPS]

    @property
    def suffix(self) -> str:
        """The MagicDNS suffix with its trailing dot ("meshlet.internal."), "" before a netmap."""
        return self._table.suffix

    @property
    def magic_dns(self) -> bool:
        """True when control turned MagicDNS on (`DNSConfig.Proxied`)."""
        return self._table.magic_dns

    @property
    def search_domains(self) -> list[str]:
        """`DNSConfig.Domains`, without trailing dots, for the OS's search list."""
        return list(self._table.search_domains)

    @property
    def has_default_resolvers(self) -> bool:
        """True when control sent `DNSConfig.Resolvers`: every query should come to us, not only the suffix's."""
        return bool(self._table.default_upstreams)

    def host_entries(self) -> list[tuple[str, str]]:
        """(address, FQDN) pairs for /etc/hosts mode: every name the resolver answers, in netmap order."""
        return [(ip, name) for name, ips in self._table.dns_hosts.items() for ip in ips]

    # -- names for the CLI --------------------------------------------------------------------

    def lookup(self, name: str) -> list[str]:
        """A tailnet name's addresses, IPv4 first: "pi", "pi.meshlet.internal" or with the trailing dot.

        An address of a node stands for that node (`meshlet ip -4 fd7a:…` gives its IPv4).
        """
        t = self._table
        n = self.reverse(name) or fqdn(name)
        if not n:
            return []
        ips = t.all_hosts.get(n)
        if ips is None and t.suffix:
            ips = t.all_hosts.get(n + t.suffix)
        return sorted(ips or [], key=lambda ip: ":" in ip)

    def reverse(self, ip: str) -> "str | None":
        """The FQDN (with trailing dot) of the node or extra record at `ip`, or None."""
        try:
            text = str(ipaddress.ip_address(ip.strip()))
        except ValueError:
            return None
        return self._table.ptr.get(text)

    # -- answering ----------------------------------------------------------------------------

    def answer_local(self, query: bytes) -> "bytes | None":
        """The answer if it is ours to give (tailnet names, malformed queries), else None: forward it.

        None is also returned for input with no DNS header or for a response;
        `resolve` then returns b"" (send nothing).
        """
        kind, out = self._local(query, PLAIN_UDP_PAYLOAD)
        if kind != _ANSWER:
            return None
        assert isinstance(out, bytes)
        self._count("local_answers")
        return out

    async def resolve(self, query: bytes, *, tcp: bool = False) -> bytes:
        """The answer to `query`, asking upstream if needed; b"" means send nothing.

        `tcp`: the query came over TCP, so the answer need not fit a UDP datagram.
        """
        kind, out = self._local(query, 65535 if tcp else PLAIN_UDP_PAYLOAD)
        if kind == _DROP:
            self._count("dropped")
            return b""
        if kind == _ANSWER:
            assert isinstance(out, bytes)
            self._count("local_answers")
            return out
        assert isinstance(out, _Query)
        upstreams = self._table.upstreams_for(out.name) or self._os_upstreams
        self._count("forwarded")
        try:
            reply = await forward.race(query, upstreams, self._timeout_s)
        except forward.ForwardError as e:
            self.stats["failures"] += 1
            self._log_failure(out.name, str(e))
            return self._reply(out.record, RCODE_SERVFAIL, out.limit, aa=False)
        if len(reply) <= out.limit:
            return reply
        try:
            return _fit(DNSRecord.parse(reply), out.limit)
        except Exception:  # noqa: BLE001 - dnslib cannot re-read it: send the header alone with TC set
            return reply[:2] + bytes((reply[2] | 0x02, reply[3])) + struct.pack("!4H", 0, 0, 0, 0)

    def _count(self, what: str) -> None:
        self.stats["queries"] += 1
        self.stats[what] += 1

    def _log_failure(self, name: str, why: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            log.warning("DNS: no upstream answered for %s (%s); answering SERVFAIL", name, why)

    def _local(self, query: bytes, limit: int) -> "tuple[int, bytes | _Query | None]":
        if len(query) < 12:
            return _DROP, None
        flags, qdcount = struct.unpack("!2xHH", query[:6])
        if flags & 0x8000:
            return _DROP, None
        if (flags >> 11) & 0xF != 0:
            return _ANSWER, _header_error(query, RCODE_NOTIMP)
        if qdcount != 1:
            return _ANSWER, _header_error(query, RCODE_FORMERR)
        try:
            # dnslib raises DNSError for most bad input, but some malformed
            # records surface as other exceptions (e.g. RecursionError on long
            # pointer chains); any of them means "not a query we can read".
            rec = DNSRecord.parse(query)
            opts = [r for r in rec.ar if r.rtype == QTYPE_OPT]
            qname = _qname_text(rec.q.qname)
        except Exception:  # noqa: BLE001 - see above: every failure here is the sender's
            return _ANSWER, _header_error(query, RCODE_FORMERR)
        if len(opts) > 1:
            return _ANSWER, _header_error(query, RCODE_FORMERR)
        edns = opts[0] if opts else None
        if edns is not None:
            if (edns.ttl >> 16) & 0xFF != 0:
                reply = self._reply_record(rec, RCODE_NOERROR, aa=False)
                reply.ar = [EDNS0(udp_len=EDNS_PAYLOAD, ext_rcode=_EXT_RCODE_BADVERS)]
                return _ANSWER, bytes(reply.pack())
            limit = max(limit, min(max(edns.rclass, PLAIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD))
        if qname is None or rec.q.qclass not in (CLASS_IN, CLASS_ANY):
            return _FORWARD, _Query(rec, qname or "", limit)
        return self._lookup(rec, qname, limit)

    def _lookup(self, rec: Any, name: str, limit: int) -> "tuple[int, bytes | _Query | None]":
        t = self._table
        qtype = rec.q.qtype
        if name == "onion." or name.endswith(".onion."):  # RFC 7686
            return _ANSWER, self._reply(rec, RCODE_NXDOMAIN, limit)
        if name == SERVICE_NAME:
            return _ANSWER, self._answer_ips(rec, [SERVICE_IP4, SERVICE_IP6], limit)
        if qtype == QTYPE_PTR and name.endswith(".arpa."):
            ip = reverse_name_ip(name)
            if ip is None:
                return _FORWARD, _Query(rec, name, limit)
            target = SERVICE_NAME if ip in SERVICE_IPS else t.ptr.get(ip)
            if target is not None:
                reply = self._reply_record(rec, RCODE_NOERROR)
                reply.add_answer(RR(rec.q.qname, QTYPE_PTR, rdata=PTR(DNSLabel(target)), ttl=TTL_S))
                return _ANSWER, self._pack(reply, rec, limit)
            if t.is_local(name):
                return _ANSWER, self._reply(rec, RCODE_NXDOMAIN, limit)
            return _FORWARD, _Query(rec, name, limit)
        host = t.resolve_name(name)
        if host is not None:
            if qtype in _QTYPES_NOTIMP:
                return _ANSWER, self._reply(rec, RCODE_NOTIMP, limit)
            return _ANSWER, self._answer_ips(rec, t.dns_hosts[host], limit)
        if t.is_local(name):
            return _ANSWER, self._reply(rec, RCODE_NXDOMAIN, limit)
        return _FORWARD, _Query(rec, name, limit)

    def _answer_ips(self, rec: Any, ips: list[str], limit: int) -> bytes:
        qtype = rec.q.qtype
        reply = self._reply_record(rec, RCODE_NOERROR)
        for ip in ips:
            v6 = ":" in ip
            if qtype == QTYPE_A and not v6 or qtype == QTYPE_ANY and not v6:
                reply.add_answer(RR(rec.q.qname, QTYPE_A, rdata=A(ip), ttl=TTL_S))
            elif qtype == QTYPE_AAAA and v6 or qtype == QTYPE_ANY and v6:
                reply.add_answer(RR(rec.q.qname, QTYPE_AAAA, rdata=AAAA(ip), ttl=TTL_S))
        return self._pack(reply, rec, limit)

    @staticmethod
    def _reply_record(rec: Any, rcode: int, aa: bool = True) -> Any:
        rd = rec.header.rd
        header = DNSHeader(id=rec.header.id, qr=1, aa=int(aa), rd=rd, ra=rd, cd=rec.header.cd, rcode=rcode)
        return DNSRecord(header, q=rec.q)

    def _reply(self, rec: Any, rcode: int, limit: int, aa: bool = True) -> bytes:
        return self._pack(self._reply_record(rec, rcode, aa), rec, limit)

    @staticmethod
    def _pack(reply: Any, rec: Any, limit: int) -> bytes:
        if any(r.rtype == QTYPE_OPT for r in rec.ar):
            reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
        return _fit(reply, limit)
