"""meshlet-derp's settings: defaults, the TOML file, the command line, and their checks.

Three layers, each overriding the last: the defaults below, `--config
FILE.toml` (stdlib tomllib; the keys are the attribute names of `Config`),
then command-line flags. `Config.validate()` turns every mistake into one
`ConfigError` line that names the problem and the fix.

The server's private key and the mesh key are secrets and never live in the
config: the key is generated once into `state_dir` (state.py), the mesh key
is read from `mesh_psk_file`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from meshlet_host import tomlconfig

DEFAULT_TLS_ADDR = ":443"
DEFAULT_HTTP_ADDR = ":3340"  # Tailscale's port for plain-HTTP DERP (TS_DEBUG_USE_DERP_HTTP)
DEFAULT_STUN_PORT = 3478
DEFAULT_STATE_DIR = "/var/lib/meshlet-derp"
DEFAULT_METRICS_ADDR = "127.0.0.1:3341"
KEY_FILE_NAME = "derp_server_private.key"


class ConfigError(Exception):
    """A setting is wrong; the message names it and how to fix it."""


@dataclass
class Config:
    """Every setting. The TOML file uses these names; flags use them with dashes."""

    addr: str = ""
    """Listen address, ":port", "ip:port" or "[ipv6]:port". Empty: ":443" (TLS) or ":3340" (--http)."""
    http: bool = False
    """Serve plain HTTP instead of TLS (labs, or behind a TLS-terminating proxy)."""
    certfile: str = ""
    """TLS certificate chain (PEM)."""
    keyfile: str = ""
    """TLS private key (PEM)."""
    certdir: str = ""
    """Directory holding <hostname>.crt and <hostname>.key (derper's --certmode=manual layout)."""
    hostname: str = ""
    """The relay's DNS name: picks the files in certdir, and is the Host mesh peers are dialled with."""
    stun: bool = True
    """Run the STUN responder."""
    stun_port: int = DEFAULT_STUN_PORT
    """UDP port for STUN, on the same IP as addr."""
    state_dir: str = DEFAULT_STATE_DIR
    """Where the server's private key is kept (derp_server_private.key, mode 0600)."""
    mesh_psk_file: str = ""
    """File with the region's mesh key: 64 hex digits."""
    mesh_with: list[str] = field(default_factory=list)
    """Other relays of the region, host:port each; this relay's own address may be listed."""
    mesh_ca_file: str = ""
    """CA bundle (PEM) to verify mesh peers' TLS certificates (default: the system's)."""
    metrics_addr: str = DEFAULT_METRICS_ADDR
    """Listener for /metrics (Prometheus) and /healthz; "" turns it off."""
    rate_limit_bytes_per_s: int = 0
    """Per-client receive limit in bytes/s (0: none); advertised to clients in ServerInfo."""
    rate_burst_bytes: int = 0
    """Per-client burst; raised to at least 65,568 (one whole packet frame)."""
    queue_depth: int = 32
    """Packets queued per client, per lane (ordinary and disco)."""
    max_connections: int = 65536
    """Open TCP connections at most (0: no limit but the file descriptor limit)."""
    handshake_timeout_s: float = 10.0
    """From the 101 response until ClientInfo must have arrived."""
    request_timeout_s: float = 30.0
    """For a whole HTTP request head (and TLS handshake) to arrive; also the HTTP keep-alive idle limit."""
    idle_timeout_s: float = 0.0
    """Close a DERP client that sent nothing for this long (0: never; Tailscale clients can be silent)."""
    write_timeout_s: float = 2.0
    """Close a client that keeps its send buffer full this long (it stopped reading)."""
    mesh_write_timeout_s: float = 30.0
    """The same for mesh peers."""
    keep_alive_s: float = 60.0
    """KeepAlive interval (plus up to 5 s of jitter)."""
    tcp_user_timeout_s: float = 15.0
    """TCP_USER_TIMEOUT on client sockets (Linux): unacknowledged data this old kills the connection."""
    json_logs: bool = False
    """Log JSON objects, one a line, instead of text."""
    verbose: bool = False
    """Log debug lines too."""
    event_loop: str = "auto"
    """"auto" (uvloop if installed), "uvloop" or "asyncio"."""

    # -- derived -----------------------------------------------------------------------

    def listen_addr(self) -> tuple[str, int]:
        """(host, port) of the DERP listener; host "" means every interface."""
        text = self.addr or (DEFAULT_HTTP_ADDR if self.http else DEFAULT_TLS_ADDR)
        return parse_hostport(text, "addr")

    def tls_files(self) -> tuple[str, str] | None:
        """(certfile, keyfile), or None for plain HTTP."""
        if self.http:
            return None
        if self.certfile or self.keyfile:
            return self.certfile, self.keyfile
        name = self.hostname
        return os.path.join(self.certdir, name + ".crt"), os.path.join(self.certdir, name + ".key")

    def validate(self) -> None:
        """Raises ConfigError for the first thing wrong."""
        self.listen_addr()
        if self.metrics_addr:
            parse_hostport(self.metrics_addr, "metrics_addr")
        for entry in self.mesh_with:
            parse_hostport(entry, "mesh_with", need_host=True)
        if not 0 <= self.stun_port <= 65535:
            raise ConfigError("stun_port %d is not a port; use 1-65535 (default 3478)" % self.stun_port)
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError("event_loop %r is unknown; use auto, uvloop or asyncio" % self.event_loop)
        if self.queue_depth < 1:
            raise ConfigError("queue_depth must be at least 1 (default 32)")
        for name in ("rate_limit_bytes_per_s", "rate_burst_bytes", "max_connections"):
            if getattr(self, name) < 0:
                raise ConfigError("%s must not be negative (0 turns it off)" % name)
        for name in ("handshake_timeout_s", "request_timeout_s", "write_timeout_s", "mesh_write_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError("%s must be more than 0 seconds" % name)
        for name in ("idle_timeout_s", "keep_alive_s", "tcp_user_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError("%s must not be negative (0 turns it off)" % name)
        if self.mesh_with and not self.mesh_psk_file:
            raise ConfigError(
                "--mesh-with needs the region's mesh key: add --mesh-psk-file FILE (64 hex digits)"
            )
        self._validate_tls()

    def _validate_tls(self) -> None:
        if self.http:
            return
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("TLS needs both --certfile and --keyfile (or --certdir with --hostname)")
        if not self.certfile and not (self.certdir and self.hostname):
            raise ConfigError(
                "TLS needs a certificate: give --certfile and --keyfile, or --certdir DIR with --hostname "
                "NAME (DIR/NAME.crt and DIR/NAME.key); or serve plain HTTP with --http"
            )
        files = self.tls_files()
        assert files is not None
        for path in files:
            if not os.path.isfile(path):
                raise ConfigError(
                    "TLS file %s does not exist; check --certfile/--keyfile or --certdir" % path
                )


def parse_hostport(text: str, what: str, need_host: bool = False) -> tuple[str, int]:
    """ ":443" -> ("", 443); "[::1]:3340" -> ("::1", 3340); "host:80" -> ("host", 80)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            '%s %r is not HOST:PORT; write e.g. ":443", "0.0.0.0:3340" or "[::1]:443"' % (what, text)
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("%s %r: %s in brackets is not an IPv6 address" % (what, text, host)) from None
    elif ":" in host:
        raise ConfigError('%s %r: put an IPv6 address in brackets, e.g. "[::1]:443"' % (what, text))
    if need_host and not host:
        raise ConfigError("%s %r needs a host name or address before the port" % (what, text))
    return host, int(port_text)


def load_toml(path: str, cfg: Config | None = None) -> Config:
    """Reads FILE.toml over `cfg` (or the defaults); unknown keys and wrong types are errors."""
    return tomlconfig.load_toml(path, cfg if cfg is not None else Config(), ConfigError)


def apply(cfg: Config, name: str, value: Any, where: str) -> None:
    """Sets one setting after checking its type against the default's."""
    tomlconfig.apply(cfg, name, value, where, ConfigError)
