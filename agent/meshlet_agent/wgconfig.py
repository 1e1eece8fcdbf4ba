"""wg-quick style configuration files: parse, validate, explain.

The format is the one `wg setconf` and `wg-quick` read (wg(8), wg-quick(8)):

    [Interface]
    PrivateKey = <44 base64 characters>      # required: `wg genkey`
    ListenPort = 51820                       # optional; random if absent
    Address = 100.64.0.1/32, fd7a::1/128     # optional, repeatable, comma lists
    MTU = 1420                               # optional; default 1420
    DNS = 1.1.1.1                            # accepted and ignored, with a note

    [Peer]                                   # one section per peer
    PublicKey = <44 base64 characters>       # required
    PresharedKey = <44 base64 characters>    # optional: `wg genpsk`
    Endpoint = 192.0.2.1:51820               # optional: ip:port, [v6]:port, host:port
    AllowedIPs = 100.64.0.2/32, 10.0.0.0/24  # optional, repeatable, comma lists
    PersistentKeepalive = 25                 # optional: seconds, or "off"

As in wg(8), section and key names are case-insensitive, `#` starts a comment
anywhere on a line, and whitespace around keys, values and list items is
ignored. Unlike wg-quick, meshlet runs no hooks and manages no routing
tables, so `PreUp`/`PostUp`/`PreDown`/`PostDown`, `Table`, `SaveConfig` and
`FwMark` are refused with a note saying so rather than silently ignored.

Parsing is pure: the caller passes the text and a name for messages. Every
problem raises `ConfigError`, whose message names `file:line`, the key, what
is wrong and how to fix it, e.g.

    wg0.conf:3: PrivateKey is not a base64 WireGuard key (44 characters
    ending in '='); generate one with `wg genkey` or `meshlet wg genkey`

Endpoint host names are kept as text (`Endpoint.ip` is None): resolving them
is I/O and belongs to the shell.
"""

import binascii
from dataclasses import dataclass, field

from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate, NodePublic
from meshlet.wire import format_ip, parse_ip

DEFAULT_MTU = 1420
"""wg-quick's default: a 1500-byte underlay minus the 80 bytes of IPv6+UDP+WireGuard overhead."""
MIN_MTU = 576
"""IPv4's minimum datagram size every host must accept (RFC 791)."""
MIN_MTU_V6 = 1280
"""IPv6's minimum link MTU (RFC 8200 §5); an interface with an IPv6 address needs at least this."""
MAX_MTU = 65535

Prefix = tuple[bytes, int]
"""An address or network: 4 or 16 address bytes and a prefix length."""


class ConfigError(Exception):
    """A problem in a configuration file, with where, what and how to fix it.

    Attributes:
        source: the file name used in messages.
        line: 1-based line number, or 0 for a problem with the file as a whole.
        key: the key (or section) concerned, as written in the file.
        problem: what is wrong, as a phrase that follows the key.
        fix: what to do about it.
    """

    def __init__(self, source: str, line: int, key: str, problem: str, fix: str) -> None:
        where = "%s:%d" % (source, line) if line else source
        super().__init__("%s: %s %s; %s" % (where, key, problem, fix))
        self.source = source
        self.line = line
        self.key = key
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Endpoint:
    """A peer's `Endpoint`: `ip` is set for literal addresses, None for host names."""

    host: str
    port: int
    ip: bytes | None

    def __str__(self) -> str:
        return "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)


@dataclass
class InterfaceConfig:
    """The `[Interface]` section.

    Attributes:
        private_key: the interface's static key (`PrivateKey`).
        listen_port: UDP port (`ListenPort`); None lets the OS choose.
        addresses: interface addresses with their prefix length (`Address`), host bits kept.
        mtu: the TUN MTU (`MTU`); None means DEFAULT_MTU.
        dns: `DNS` entries, kept only to mention that they are ignored.
    """

    private_key: NodePrivate
    listen_port: int | None = None
    addresses: list[Prefix] = field(default_factory=list)
    mtu: int | None = None
    dns: list[str] = field(default_factory=list)


@dataclass
class PeerSection:
    """One `[Peer]` section.

    Attributes:
        public_key: the peer's static public key (`PublicKey`).
        preshared_key: 32 bytes (`PresharedKey`), or None for none.
        endpoint: where to send the first handshake (`Endpoint`), or None to wait for the peer.
        allowed_ips: networks routed to and accepted from this peer (`AllowedIPs`), host bits cleared.
        persistent_keepalive_s: seconds between keepalives, 0 for off (`PersistentKeepalive`).
        line: where the section starts, for messages.
    """

    public_key: NodePublic
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    allowed_ips: list[Prefix] = field(default_factory=list)
    persistent_keepalive_s: int = 0
    line: int = 0


@dataclass
class WgConfig:
    """A whole file: the interface, its peers, and notes worth logging (ignored keys)."""

    interface: InterfaceConfig
    peers: list[PeerSection]
    notes: list[str] = field(default_factory=list)

    @property
    def mtu(self) -> int:
        return self.interface.mtu if self.interface.mtu is not None else DEFAULT_MTU


_WG_QUICK_ONLY = {
    "preup": "meshlet runs no hook scripts; run the command yourself before `meshlet wg up`",
    "postup": "meshlet runs no hook scripts; run the command yourself after the interface is up",
    "predown": "meshlet runs no hook scripts; run the command yourself before stopping meshlet",
    "postdown": "meshlet runs no hook scripts; run the command yourself after meshlet stops",
    "table": "meshlet adds routes for AllowedIPs to the main table only; delete the line",
    "saveconfig": "meshlet never writes the configuration file back; delete the line",
    "fwmark": "meshlet does not set a firewall mark on its UDP socket; delete the line",
}

_KEY_FIX = "generate one with `wg genkey` (or `meshlet wg genkey`)"
_PUB_FIX = "derive it from the peer's private key with `wg pubkey` (or `meshlet wg pubkey`)"
_PSK_FIX = "generate one with `wg genpsk` (or `meshlet wg genpsk`) and use the same value on both peers"


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.section = ""
        self.seen: set[str] = set()  # keys seen in the current section (single-valued ones)
        self.lineno = 0
        self.private_key: NodePrivate | None = None
        self.iface_line = 0
        self.listen_port: int | None = None
        self.addresses: list[Prefix] = []
        self.mtu: int | None = None
        self.mtu_line = 0
        self.dns: list[str] = []
        self.peers: list[PeerSection] = []
        self.peer: dict[str, object] = {}
        self.peer_line = 0
        self.notes: list[str] = []

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.source, self.lineno, key, problem, fix)

    def feed(self, lineno: int, raw: str) -> None:
        self.lineno = lineno
        line = raw.split("#", 1)[0].strip()
        if not line:
            return
        if line.startswith("["):
            self.start_section(line)
            return
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise self.error(
                repr(line),
                "is not a `Key = Value` line",
                "write settings as `Key = Value` under an [Interface] or [Peer] header",
            )
        if not self.section:
            raise self.error(
                key, "appears before any section", "put it under an [Interface] or [Peer] header"
            )
        lower = key.lower()
        if lower in _WG_QUICK_ONLY:
            raise self.error(key, "is a wg-quick setting meshlet does not support", _WG_QUICK_ONLY[lower])
        if not value:
            raise self.error(key, "has no value", "write `%s = <value>` or delete the line" % key)
        if self.section == "interface":
            self.interface_key(key, lower, value)
        else:
            self.peer_key(key, lower, value)

    def start_section(self, line: str) -> None:
        name = line.strip("[] \t").lower()
        if not line.endswith("]") or name not in ("interface", "peer"):
            raise self.error(
                line,
                "is not a known section",
                "the sections are [Interface] (once) and [Peer] (one per peer)",
            )
        self.finish_peer()
        if name == "interface":
            if self.iface_line:
                raise self.error(
                    "[Interface]",
                    "appears a second time (first on line %d)" % self.iface_line,
                    "merge the two sections into one",
                )
            self.iface_line = self.lineno
        else:
            self.peer = {}
            self.peer_line = self.lineno
        self.section = name
        self.seen = set()

    def once(self, key: str, lower: str) -> None:
        if lower in self.seen:
            raise self.error(key, "is set twice in this section", "keep only one `%s` line" % key)
        self.seen.add(lower)

    def interface_key(self, key: str, lower: str, value: str) -> None:
        if lower == "privatekey":
            self.once(key, lower)
            try:
                self.private_key = NodePrivate.from_base64(value)
            except ProtocolError:
                raise self.error(
                    key, "is not a base64 WireGuard key (44 characters ending in '=')", _KEY_FIX
                ) from None
        elif lower == "listenport":
            self.once(key, lower)
            self.listen_port = self.number(key, value, 0, 65535, "pick a free UDP port such as 51820")
        elif lower == "address":
            for item in self.items(key, value):
                self.addresses.append(self.prefix(key, item, keep_host=True))
        elif lower == "mtu":
            self.once(key, lower)
            self.mtu = self.number(key, value, MIN_MTU, MAX_MTU, "1420 suits a 1500-byte underlay")
            self.mtu_line = self.lineno
        elif lower == "dns":
            self.dns.extend(self.items(key, value))
        else:
            raise self.error(
                key,
                "is not a known [Interface] setting",
                "the settings are PrivateKey, ListenPort, Address, MTU and DNS; check the spelling",
            )

    def peer_key(self, key: str, lower: str, value: str) -> None:
        if lower == "publickey":
            self.once(key, lower)
            try:
                self.peer["public_key"] = NodePublic.from_base64(value)
            except ProtocolError:
                raise self.error(
                    key, "is not a base64 WireGuard key (44 characters ending in '=')", _PUB_FIX
                ) from None
        elif lower == "presharedkey":
            self.once(key, lower)
            self.peer["preshared_key"] = self.psk(key, value)
        elif lower == "endpoint":
            self.once(key, lower)
            self.peer["endpoint"] = self.endpoint(key, value)
        elif lower == "allowedips":
            nets = self.peer.setdefault("allowed_ips", [])
            assert isinstance(nets, list)
            for item in self.items(key, value):
                nets.append(self.prefix(key, item, keep_host=False))
        elif lower == "persistentkeepalive":
            self.once(key, lower)
            if value.lower() == "off":
                self.peer["persistent_keepalive_s"] = 0
            else:
                self.peer["persistent_keepalive_s"] = self.number(
                    key, value, 0, 65535, "25 seconds keeps most NAT mappings open; `off` disables it"
                )
        else:
            raise self.error(
                key,
                "is not a known [Peer] setting",
                "the settings are PublicKey, PresharedKey, Endpoint, AllowedIPs and PersistentKeepalive;"
                " check the spelling",
            )

    def finish_peer(self) -> None:
        if self.section != "peer":
            return
        pub = self.peer.get("public_key")
        if not isinstance(pub, NodePublic):
            raise ConfigError(
                self.source,
                self.peer_line,
                "[Peer]",
                "has no PublicKey",
                "add `PublicKey = <the peer's public key>` (" + _PUB_FIX + ")",
            )
        for other in self.peers:
            if other.public_key == pub:
                raise ConfigError(
                    self.source,
                    self.peer_line,
                    "[Peer]",
                    "repeats the PublicKey of the peer on line %d" % other.line,
                    "merge the two [Peer] sections into one",
                )
        psk = self.peer.get("preshared_key")
        ep = self.peer.get("endpoint")
        nets = self.peer.get("allowed_ips", [])
        keepalive = self.peer.get("persistent_keepalive_s", 0)
        assert psk is None or isinstance(psk, bytes)
        assert ep is None or isinstance(ep, Endpoint)
        assert isinstance(nets, list) and isinstance(keepalive, int)
        self.peers.append(PeerSection(pub, psk, ep, nets, keepalive, self.peer_line))
        self.peer = {}

    def items(self, key: str, value: str) -> list[str]:
        items = [v.strip() for v in value.split(",")]
        if any(not v for v in items):
            raise self.error(key, "has an empty item in its list", "separate items with single commas")
        return items

    def number(self, key: str, value: str, lo: int, hi: int, hint: str) -> int:
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise self.error(key, "must be a whole number from %d to %d, got %r" % (lo, hi, value), hint)
        return int(value)

    def ip(self, key: str, text: str, example: str) -> bytes:
        try:
            return parse_ip(text)
        except ProtocolError:
            raise self.error(
                key, "has %r, which is not an IPv4 or IPv6 address" % text, "write it like " + example
            ) from None

    def prefix(self, key: str, text: str, keep_host: bool) -> Prefix:
        example = "100.64.0.1/32 or fd7a:115c:a1e0::1/128"
        addr, slash, bits_text = text.partition("/")
        ip = self.ip(key, addr, example)
        width = 8 * len(ip)
        if not slash:
            return ip, width
        if not bits_text.isdigit() or int(bits_text) > width:
            raise self.error(
                key,
                "has %r, whose prefix length is not a number from 0 to %d" % (text, width),
                "write it like " + example,
            )
        bits = int(bits_text)
        if keep_host:
            return ip, bits
        return mask(ip, bits), bits

    def psk(self, key: str, value: str) -> bytes:
        try:
            raw = binascii.a2b_base64(value)
        except (binascii.Error, ValueError):
            raw = b""
        if len(value) != 44 or len(raw) != 32 or binascii.b2a_base64(raw).decode().strip() != value:
            raise self.error(key, "is not a base64 key (44 characters ending in '=')", _PSK_FIX)
        return raw

    def endpoint(self, key: str, value: str) -> Endpoint:
        fix = "write it as 192.0.2.1:51820, [2001:db8::1]:51820 or host.example.com:51820"
        if value.startswith("["):
            host, sep, port = value[1:].partition("]:")
            if not sep:
                raise self.error(key, "has %r, which lacks `]:port`" % value, fix)
            literal: bytes | None = self.ip(key, host, "[2001:db8::1]:51820")
        else:
            host, sep, port = value.rpartition(":")
            if not sep or not host:
                raise self.error(key, "has %r, which lacks a port" % value, fix)
            if ":" in host:
                raise self.error(key, "has %r: an IPv6 address needs brackets" % value, fix)
            literal = _try_ip(host)
            if literal is None and not _is_hostname(host):
                raise self.error(key, "has %r, which is neither an address nor a host name" % host, fix)
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise self.error(key, "has port %r, which is not a number from 1 to 65535" % port, fix)
        if literal is not None:
            host = format_ip(literal)
        return Endpoint(host, int(port), literal)

    def finish(self) -> WgConfig:
        self.finish_peer()
        if not self.iface_line:
            raise ConfigError(
                self.source,
                0,
                "[Interface]",
                "section is missing",
                "start the file with [Interface] and a PrivateKey",
            )
        if self.private_key is None:
            raise ConfigError(
                self.source,
                self.iface_line,
                "[Interface]",
                "has no PrivateKey",
                "add `PrivateKey = ...`; " + _KEY_FIX,
            )
        own = self.private_key.public()
        for p in self.peers:
            if p.public_key == own:
                raise ConfigError(
                    self.source,
                    p.line,
                    "[Peer]",
                    "has this interface's own public key",
                    "use the other machine's public key (run `wg pubkey` there)",
                )
        if self.mtu is not None and self.mtu < MIN_MTU_V6 and any(len(ip) == 16 for ip, _ in self.addresses):
            raise ConfigError(
                self.source,
                self.mtu_line,
                "MTU",
                "is %d, below the 1280 bytes IPv6 requires, but Address has an IPv6 address" % self.mtu,
                "raise MTU to at least 1280 or remove the IPv6 address",
            )
        notes = []
        if self.dns:
            notes.append(
                "%s: DNS = %s is ignored: meshlet does not change the system resolver"
                % (self.source, ", ".join(self.dns))
            )
        iface = InterfaceConfig(self.private_key, self.listen_port, self.addresses, self.mtu, self.dns)
        return WgConfig(iface, self.peers, notes)


def mask(ip: bytes, bits: int) -> bytes:
    """`ip` with the bits after the first `bits` cleared (the network address)."""
    out = bytearray(ip)
    for i in range(len(out)):
        keep = min(8, max(0, bits - 8 * i))
        out[i] &= (0xFF00 >> keep) & 0xFF
    return bytes(out)


def _try_ip(text: str) -> bytes | None:
    try:
        return parse_ip(text)
    except ProtocolError:
        return None


def _is_hostname(text: str) -> bool:
    if len(text) > 253:
        return False
    for label in text.rstrip(".").split("."):
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return False
    return True


def parse_config(text: str, source: str = "<config>") -> WgConfig:
    """Parses a wg-quick style configuration.

    Args:
        text: the file's contents.
        source: the name used in error messages (usually the file's path).

    Returns:
        The validated configuration; `notes` lists settings that were accepted but ignored.

    Raises:
        ConfigError: the first problem found, naming line, key, problem and fix.
    """
    parser = _Parser(source)
    for lineno, raw in enumerate(text.splitlines(), 1):
        parser.feed(lineno, raw)
    return parser.finish()


def format_prefix(prefix: Prefix) -> str:
    """`100.64.0.0/10`, the form wg(8) prints."""
    return "%s/%d" % (format_ip(prefix[0]), prefix[1])
