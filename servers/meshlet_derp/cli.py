"""The `meshlet-derp` command line: flags modelled on Tailscale's derper, plus a TOML config.

The parser is built by `build_parser()` alone, so documentation can render
`--help` without running anything. Flags override the `--config` file, which
overrides the defaults (config.py). Every failure prints one line,
`meshlet-derp:` followed by the problem and the fix, and exits non-zero:

    1  the configuration or the environment is wrong (bad file, port in use)
    2  the command line itself is wrong (argparse's convention)
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import ssl
import sys
from typing import Any, Callable, Coroutine, Sequence

from meshlet import __version__
from meshlet_host import systemd

from . import log as derp_log
from .config import (
    DEFAULT_HTTP_ADDR,
    DEFAULT_METRICS_ADDR,
    DEFAULT_STATE_DIR,
    DEFAULT_STUN_PORT,
    DEFAULT_TLS_ADDR,
    Config,
    ConfigError,
    apply,
    load_toml,
)
from .server import DerpServer

_EPILOG = """\
examples:
  # a lab relay on plain HTTP, port 3340, STUN on 3478, key kept in ./state
  meshlet-derp --http --state-dir ./state

  # production: TLS on :443 with a certificate from files
  meshlet-derp --hostname derp1.example.com \\
      --certfile /etc/meshlet-derp/fullchain.pem --keyfile /etc/meshlet-derp/privkey.pem

  # the same with derper's certdir layout (DIR/HOSTNAME.crt, DIR/HOSTNAME.key)
  meshlet-derp --hostname derp1.example.com --certdir /etc/meshlet-derp/certs

  # two relays of one region, meshed (the list may include the relay itself)
  openssl rand -hex 32 > /etc/meshlet-derp/mesh.key; chmod 600 /etc/meshlet-derp/mesh.key
  meshlet-derp --config /etc/meshlet-derp/derp.toml \\
      --mesh-psk-file /etc/meshlet-derp/mesh.key \\
      --mesh-with derp1.example.com:443,derp2.example.com:443

  # everything from a file; flags still override it
  meshlet-derp --config /etc/meshlet-derp/derp.toml --verbose

Metrics: curl http://127.0.0.1:3341/metrics (Prometheus text; --metrics-addr "" turns it off).
The server key is generated once into STATE_DIR/derp_server_private.key (mode 0600).
See docs/derp.md for the TOML keys, mesh set-up and a systemd unit.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole `meshlet-derp` command line (used by main() and by the docs)."""
    p = argparse.ArgumentParser(
        prog="meshlet-derp",
        description="meshlet-derp: a Tailscale-compatible DERP relay with a STUN responder and meshing.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags actually given override the config file
    )
    p.add_argument("--version", action="version", version="meshlet-derp " + __version__)
    p.add_argument(
        "--config", "-c", metavar="FILE.toml", help="read settings from a TOML file (flags override it)"
    )
    g = p.add_argument_group("listening")
    addr_help = (
        "DERP listen address, e.g. :443, 0.0.0.0:3340, [::1]:443 (default %s with TLS, %s with --http)"
    )
    g.add_argument(
        "-a", "--addr", metavar="HOST:PORT", help=addr_help % (DEFAULT_TLS_ADDR, DEFAULT_HTTP_ADDR)
    )
    g.add_argument(
        "--http", action="store_true", help="serve plain HTTP, no TLS (labs, or behind a TLS proxy)"
    )
    g.add_argument("--certfile", metavar="PEM", help="TLS certificate chain")
    g.add_argument("--keyfile", metavar="PEM", help="TLS private key")
    g.add_argument(
        "--certdir", metavar="DIR", help="directory with HOSTNAME.crt and HOSTNAME.key (derper's layout)"
    )
    g.add_argument("--hostname", metavar="NAME", help="this relay's DNS name (picks the files in --certdir)")
    g.add_argument(
        "--stun-port", type=int, metavar="PORT", help="UDP port for STUN (default %d)" % DEFAULT_STUN_PORT
    )
    g.add_argument("--no-stun", dest="stun", action="store_false", help="do not run the STUN responder")
    g.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help='listener for /metrics and /healthz (default %s; "" turns it off)'
                   % DEFAULT_METRICS_ADDR)  # fmt: skip
    g = p.add_argument_group("state and mesh")
    g.add_argument("--state-dir", metavar="DIR",
                   help="where the server key is kept (default %s)" % DEFAULT_STATE_DIR)  # fmt: skip
    g.add_argument("--mesh-psk-file", metavar="FILE", help="the region's mesh key: a file of 64 hex digits")
    mesh_help = "comma-separated relays of this region to mesh with (needs --mesh-psk-file)"
    g.add_argument("--mesh-with", metavar="HOST:PORT,...", help=mesh_help)
    g.add_argument("--mesh-ca-file", metavar="PEM", help="CA bundle to verify mesh peers' certificates")
    g = p.add_argument_group("limits")
    g.add_argument(
        "--rate-limit-bytes-per-s",
        type=int,
        metavar="N",
        help="per-client receive rate limit, bytes/s (default 0: none); advertised in ServerInfo",
    )
    g.add_argument("--rate-burst-bytes", type=int, metavar="N", help="per-client burst (at least 65568)")
    g.add_argument(
        "--queue-depth", type=int, metavar="N", help="packets queued per client and lane (default 32)"
    )
    g.add_argument(
        "--max-connections", type=int, metavar="N", help="open connections at most (default 65536)"
    )
    g.add_argument(
        "--handshake-timeout-s", type=float, metavar="S", help="for ClientInfo after the upgrade (10)"
    )
    g.add_argument(
        "--request-timeout-s", type=float, metavar="S", help="for TLS and the HTTP request head (30)"
    )
    g.add_argument(
        "--idle-timeout-s", type=float, metavar="S", help="close silent DERP clients (default 0: never)"
    )
    g.add_argument("--write-timeout-s", type=float, metavar="S", help="close clients that stop reading (2)")
    g.add_argument("--mesh-write-timeout-s", type=float, metavar="S", help="the same for mesh peers (30)")
    g.add_argument(
        "--keep-alive-s", type=float, metavar="S", help="KeepAlive interval, plus 0-5 s jitter (60)"
    )
    g = p.add_argument_group("process")
    g.add_argument("--json-logs", action="store_true", help="log one JSON object per line")
    g.add_argument("--verbose", "-v", action="store_true", help="log debug lines too")
    g.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"),
                   help="auto (default) uses uvloop when it is installed")  # fmt: skip
    return p


def load_config(argv: Sequence[str] | None = None) -> Config:
    """Defaults, then --config, then flags; validated. Raises ConfigError."""
    args = vars(build_parser().parse_args(argv))
    path = args.pop("config", None)
    cfg = load_toml(path) if path else Config()
    for name, value in args.items():
        apply(cfg, name, value, "--" + name.replace("_", "-"))
    cfg.validate()
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
        derp_log.setup(cfg.verbose, cfg.json_logs)
        return _run(cfg)
    except ConfigError as e:
        print("meshlet-derp: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(cfg: Config) -> int:
    from .state import load_mesh_key, load_or_create_server_key

    private, created = load_or_create_server_key(cfg.state_dir)
    mesh_key = load_mesh_key(cfg.mesh_psk_file) if cfg.mesh_psk_file else None
    log = logging.getLogger("meshlet_derp")
    if created:
        log.info("derp: generated a new server key in %s", cfg.state_dir)
    server = DerpServer(cfg, private, mesh_key)
    runner = _runner(cfg.event_loop)
    try:
        runner(_serve(server))
    except OSError as e:
        raise ConfigError(_bind_error(e, cfg)) from None
    except ssl.SSLError as e:
        raise ConfigError(
            "TLS set-up failed: %s; check --certfile/--keyfile (PEM, matching pair)" % e
        ) from None
    return 0


async def _serve(server: DerpServer) -> None:
    await server.start()
    systemd.notify("READY=1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("meshlet_derp").info("derp: shutting down")
    systemd.notify("STOPPING=1")
    await server.close()


def _runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
            return run
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "--event-loop uvloop: uvloop is not installed; pip install uvloop, or use auto"
                )
    return asyncio.run


def _bind_error(e: OSError, cfg: Config) -> str:
    if e.errno == errno.EADDRINUSE:
        return (
            "cannot listen: %s; another process has the port: pick another with -a/--addr, --stun-port or "
            "--metrics-addr" % (e.strerror or e)
        )
    if e.errno == errno.EACCES:
        return (
            "cannot listen: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE "
            "(or use -a :3340)"
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return "cannot listen: %s; the address in -a/--addr is not on this machine" % (e.strerror or e)
    return "cannot start: %s" % e
