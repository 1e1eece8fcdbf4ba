"""meshlet-control's settings: defaults, the TOML file, flags, and what `serve` derives from them.

Three layers, each overriding the last: the defaults of `Settings`, then
`--config FILE.toml` (stdlib tomllib; keys are the attribute names below,
dashes allowed), then command-line flags. `build_serve_config()` checks
them and derives a `ServeConfig`: the listen address, the URL clients use,
and the DERP map (pointing at the embedded relay unless `derp = "none"`).
Every mistake is one `ConfigError` line naming the setting and the fix.

The state directory holds, all mode 0600 in a 0700 directory:

    control.sqlite (+ -wal, -shm)   users, keys, nodes, policy (db.py)
    control_private.key             the Noise static key: `privkey:<64 hex>`, made on first use
    derp_server_private.key         the embedded DERP relay's key (meshlet_derp.state)
    derp-tls-<host>.crt/.key        the embedded relay's self-signed certificate, if it needs one

Secrets never live in the config file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from meshlet.errors import ProtocolError
from meshlet.key import MachinePrivate
from meshlet_host import statefile, tomlconfig

from . import names

DEFAULT_STATE_DIR = "/var/lib/meshlet-control"
STATE_DIR_ENV = "MESHLET_CONTROL_STATE_DIR"
DEFAULT_LISTEN = "127.0.0.1:8080"  # headscale's default listen_addr: a lab on one machine, nothing exposed
DEFAULT_DERP_PORT = (
    3340  # Tailscale's port for DERP over plain HTTP; any free port works (DERPPort is explicit)
)
DEFAULT_STUN_PORT = 3478
DEFAULT_REGION_ID = 900  # 900-999 are reserved for self-hosted regions
DB_FILE = "control.sqlite"
CONTROL_KEY_FILE = "control_private.key"


class ConfigError(Exception):
    """A setting is wrong; the message names it and how to fix it."""


@dataclass
class Settings:
    """Every `serve` setting. The TOML file uses these names; flags use them with dashes."""

    listen: str = DEFAULT_LISTEN
    """HOST:PORT for the control protocol (HTTP, or HTTPS with tls_cert)."""
    server_url: str = ""
    """The URL clients are given (--login-server); default http(s)://<listen host>:<port>."""
    base_domain: str = "meshlet.internal"
    """MagicDNS suffix: nodes are <name>.<base_domain>."""
    state_dir: str = ""
    """Database and keys; default $MESHLET_CONTROL_STATE_DIR or /var/lib/meshlet-control."""
    derp: str = "embedded"
    """"embedded": run a DERP relay and STUN responder in the same process; "none": don't."""
    derp_port: int = DEFAULT_DERP_PORT
    """TCP port of the embedded relay (on the listen host)."""
    stun_port: int = DEFAULT_STUN_PORT
    """UDP port of the embedded STUN responder; 0 turns STUN off."""
    derp_region_id: int = DEFAULT_REGION_ID
    """Region ID of the embedded relay in the DERP map."""
    derp_hostname: str = ""
    """Host name clients dial the relay by (default: the server URL's host)."""
    derp_http: bool = False
    """Serve DERP over plain HTTP (clients then need TS_DEBUG_USE_DERP_HTTP=1); default TLS."""
    derp_map_file: str = ""
    """A tailcfg DERPMap JSON file with more regions (e.g. standalone meshlet-derp relays)."""
    tls_cert: str = ""
    """TLS certificate chain (PEM) for the control listener and the embedded relay."""
    tls_key: str = ""
    """TLS private key (PEM)."""
    dns: list[str] = field(default_factory=list)
    """Nameservers pushed to nodes (DNSConfig.Resolvers); empty: nodes keep their own."""
    magic_dns: bool = True
    """Answer <name>.<base_domain> on the nodes (DNSConfig.Proxied)."""
    map_keepalive_s: float = 60.0
    """Keep-alive interval on map long-polls (the client gives up after 120 s of silence)."""
    ephemeral_timeout: str = "30m"
    """How long an ephemeral node may stay offline before it is deleted (headscale: 30m)."""
    node_key_expiry: str = "0"
    """Key lifetime of untagged nodes that ask for none, e.g. 180d; 0: never (headscale's default)."""
    verbose: bool = False
    """Log debug lines too."""
    json_logs: bool = False
    """Log one JSON object per line."""


@dataclass
class EmbeddedDerp:
    """How to run the embedded relay (None in ServeConfig when derp = "none")."""

    host: str
    port: int
    stun_port: int
    hostname: str
    http: bool
    certfile: str = ""
    keyfile: str = ""
    self_signed: bool = False


@dataclass
class ServeConfig:
    """What the protocol side (app.run) needs; built by build_serve_config()."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    server_url: str = "http://127.0.0.1:8080"
    base_domain: str = "meshlet.internal"
    derp_map: dict[str, Any] = field(default_factory=dict)
    """tailcfg.DERPMap as JSON-ready dicts."""
    dns: list[str] = field(default_factory=list)
    """Nameserver addresses for DNSConfig.Resolvers."""
    tls_cert: str = ""
    tls_key: str = ""
    map_keepalive_s: float = 60.0
    ephemeral_timeout_s: float = 1800.0
    magic_dns: bool = True
    state_dir: str = ""
    node_key_expiry_s: float = 0.0
    derp: EmbeddedDerp | None = None


# -- durations and addresses -----------------------------------------------------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str, what: str = "duration") -> int:
    """ "90s", "30m", "24h", "7d", "1h30m" or a plain number of seconds -> milliseconds; "0" -> 0."""
    t = str(text).strip().lower()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", t):
        return int(float(t) * 1000)
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ConfigError("%s %r is not a duration; write e.g. 90s, 30m, 24h, 7d or 1h30m" % (what, text))
    return int(sum(float(n) * _UNITS_MS[u] for n, u in parts))


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """ "127.0.0.1:8080" -> ("127.0.0.1", 8080); "[::1]:8080" -> ("::1", 8080); ":8080" -> ("", 8080)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            "%s %r is not HOST:PORT; write e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080" % (what, text)
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError("%s %r: put an IPv6 address in brackets, e.g. [::1]:8080" % (what, text))
    return host, int(port)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _url_host(host: str) -> str:
    ip = _ip(host)
    return "[%s]" % host if ip is not None and ip.version == 6 else host


# -- the TOML file and flags -----------------------------------------------------------

# Duration settings that may be written as a bare number of seconds in TOML.
_INT_AS_STR = frozenset(("ephemeral_timeout", "node_key_expiry"))


def load_toml(path: str, settings: Settings | None = None) -> Settings:
    """Reads FILE.toml over `settings` (or the defaults); unknown keys and wrong types are errors."""
    return tomlconfig.load_toml(path, settings if settings is not None else Settings(), ConfigError, _INT_AS_STR)


def apply(s: Settings, name: str, value: Any, where: str) -> None:
    """Sets one setting after checking its type against the default's."""
    tomlconfig.apply(s, name, value, where, ConfigError, _INT_AS_STR)


def state_dir_of(s: Settings) -> str:
    return s.state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


# -- deriving the ServeConfig ----------------------------------------------------------


def build_serve_config(s: Settings) -> ServeConfig:
    """Checks the settings and derives what `serve` runs with. Raises ConfigError."""
    host, port = parse_hostport(s.listen, "listen")
    tls = bool(s.tls_cert or s.tls_key)
    if tls and not (s.tls_cert and s.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key (PEM files)")
    for path in (s.tls_cert, s.tls_key):
        if path and not os.path.isfile(path):
            raise ConfigError("TLS file %s does not exist; check --tls-cert/--tls-key" % path)
    server_url = _server_url(s, host, port, tls)
    url_host = urllib.parse.urlsplit(server_url).hostname or ""
    try:
        base_domain = names.check_base_domain(s.base_domain)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if url_host == base_domain or url_host.endswith("." + base_domain):
        raise ConfigError(
            "base domain %r contains the server's own name %s: nodes would answer it themselves and "
            "lose the server; pick another --base-domain" % (base_domain, url_host)
        )
    for ns in s.dns:
        if _ip(ns) is None and not ns.startswith("https://"):
            raise ConfigError(
                "nameserver %r is not an IP address (or https:// DoH URL); e.g. --dns 1.1.1.1" % ns
            )
    if s.map_keepalive_s < 1 or s.map_keepalive_s > 110:
        raise ConfigError(
            "map_keepalive_s must be 1-110 seconds (the client gives up after 120 s); default 60"
        )
    eph_ms = parse_duration_ms(s.ephemeral_timeout, "ephemeral_timeout")
    expiry_ms = parse_duration_ms(s.node_key_expiry, "node_key_expiry")
    state_dir = state_dir_of(s)
    derp_map: dict[str, Any] = {"Regions": {}, "omitDefaultRegions": True}
    if s.derp_map_file:
        derp_map = _load_derp_map(s.derp_map_file)
    embedded = None
    if s.derp == "embedded":
        embedded = _embedded(s, host, url_host, state_dir)
        region = embedded_region(s.derp_region_id, embedded)
        if str(s.derp_region_id) in derp_map["Regions"]:
            raise ConfigError(
                "region %d is both embedded and in %s; pick another --derp-region-id"
                % (s.derp_region_id, s.derp_map_file)
            )
        derp_map["Regions"][str(s.derp_region_id)] = region
    elif s.derp != "none":
        raise ConfigError("derp %r is unknown; use embedded or none" % s.derp)
    return ServeConfig(
        listen_host=host,
        listen_port=port,
        server_url=server_url,
        base_domain=base_domain,
        derp_map=derp_map,
        dns=list(s.dns),
        tls_cert=s.tls_cert,
        tls_key=s.tls_key,
        map_keepalive_s=s.map_keepalive_s,
        ephemeral_timeout_s=eph_ms / 1000,
        magic_dns=s.magic_dns,
        state_dir=state_dir,
        node_key_expiry_s=expiry_ms / 1000,
        derp=embedded,
    )


def _server_url(s: Settings, host: str, port: int, tls: bool) -> str:
    if s.server_url:
        parts = urllib.parse.urlsplit(s.server_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(
                "server URL %r must be http(s)://HOST[:PORT], e.g. http://192.0.2.10:8080" % s.server_url
            )
        return s.server_url.rstrip("/")
    ip = _ip(host)
    if not host or (ip is not None and ip.is_unspecified):
        raise ConfigError(
            "listening on every interface (%s): give --server-url, the URL clients dial, e.g. "
            "--server-url http://192.0.2.10:%d" % (s.listen, port)
        )
    scheme = "https" if tls else "http"
    default = 443 if tls else 80
    return "%s://%s%s" % (scheme, _url_host(host), "" if port == default else ":%d" % port)


def _embedded(s: Settings, listen_host: str, url_host: str, state_dir: str) -> EmbeddedDerp:
    for name, port in (("derp_port", s.derp_port), ("stun_port", s.stun_port)):
        if not 0 <= port <= 65535:
            raise ConfigError("%s %d is not a port; use 1-65535" % (name, port))
    if not 900 <= s.derp_region_id <= 999:
        raise ConfigError(
            "derp_region_id %d: self-hosted regions are 900-999 (default 900)" % s.derp_region_id
        )
    hostname = s.derp_hostname or url_host
    d = EmbeddedDerp(listen_host, s.derp_port, s.stun_port, hostname, s.derp_http)
    if not s.derp_http:
        if s.tls_cert:
            d.certfile, d.keyfile = s.tls_cert, s.tls_key
        else:
            safe = re.sub(r"[^A-Za-z0-9.-]", "_", hostname)
            d.certfile = os.path.join(state_dir, "derp-tls-%s.crt" % safe)
            d.keyfile = os.path.join(state_dir, "derp-tls-%s.key" % safe)
            d.self_signed = True
    return d


def embedded_region(region_id: int, d: EmbeddedDerp) -> dict[str, Any]:
    """The DERP map region of the embedded relay (control.md §9.5, the lab shape of Tailscale's tests)."""
    node: dict[str, Any] = {
        "Name": "%da" % region_id,
        "RegionID": region_id,
        "HostName": d.hostname,
        "DERPPort": d.port,
        "STUNPort": d.stun_port if d.stun_port else -1,
    }
    ip = _ip(d.hostname)
    if ip is not None:  # a literal: dial it, and don't look up the other family
        node["IPv4" if ip.version == 4 else "IPv6"] = str(ip)
        node["IPv6" if ip.version == 4 else "IPv4"] = "none"
    if d.http or d.self_signed:
        node["InsecureForTests"] = True
    return {"RegionID": region_id, "RegionCode": "mlt", "RegionName": "meshlet", "Nodes": [node]}


def _load_derp_map(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError("cannot read DERP map %s: %s; check --derp-map-file" % (path, e.strerror)) from None
    except ValueError as e:
        raise ConfigError("DERP map %s is not JSON: %s" % (path, e)) from None
    regions = data.get("Regions") if isinstance(data, dict) else None
    if not isinstance(regions, dict):
        raise ConfigError('DERP map %s needs a "Regions" object keyed by region ID (tailcfg.DERPMap)' % path)
    for key, region in regions.items():
        if not key.isdigit() or not isinstance(region, dict) or region.get("RegionID") != int(key):
            raise ConfigError("DERP map %s: region %r must repeat its ID as RegionID" % (path, key))
    return dict(data)


# -- the control key -------------------------------------------------------------------


def load_or_create_control_key(state_dir: str) -> tuple[MachinePrivate, bool]:
    """The server's Noise static key from STATE_DIR/control_private.key, made on first use (mode 0600)."""
    path = os.path.join(state_dir, CONTROL_KEY_FILE)
    try:
        data = statefile.read_private(path, 4096)
    except statefile.StateFileError as e:
        raise ConfigError("%s (--state-dir %s)" % (e, state_dir)) from None
    if data is None:
        key = MachinePrivate.generate(os.urandom)
        write_secret(state_dir, path, (key.to_text() + "\n").encode())
        return key, True
    try:
        return MachinePrivate.from_text(data.decode("ascii", errors="replace").strip()), False
    except ProtocolError:
        raise ConfigError(
            "%s is not a control key (want privkey: and 64 hex digits); move it away to make a new "
            "one (every client then has to be restarted)" % path
        ) from None


def write_secret(state_dir: str, path: str, data: bytes) -> None:
    """Writes a 0600 file atomically inside the (0700) state directory."""
    try:
        statefile.ensure_dir(state_dir)
        statefile.write_atomic(path, data)
    except statefile.StateFileError as e:
        raise ConfigError("%s (--state-dir %s)" % (e, state_dir)) from None
