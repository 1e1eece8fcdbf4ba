"""`meshlet wg up`: bring a userspace WireGuard interface up from a config and run it.

The order is chosen so that a mistake fails before anything is created, and
so that everything created is removed again on every way out:

    read + parse the config       ConfigError  (nothing created yet)
    resolve Endpoint host names   WgUpError
    bind the UDP sockets          UdpError
    create + configure the TUN    TunError     (UDP closed again)
    build the core Device, start the Engine and the local API
    ... run until SIGTERM / SIGINT ...
    stop the API, the Engine; close the TUN (the kernel deletes the interface,
    its addresses and routes) and the sockets

Everything here runs once per start; the per-packet work is in wgengine.py.
"""

import asyncio
import logging
import os
import signal
import socket

from meshlet.key import NodePublic
from meshlet.wg.device import Device, PeerConfig

from . import log as agent_log
from .localapi import LocalApi
from .tun import Tun, check_ifname
from .udp import Udp
from .wgconfig import Endpoint, WgConfig, format_prefix, parse_config
from .wgengine import Engine, now_ms, unix_ms

log = logging.getLogger("meshlet_agent.wgup")


class WgUpError(Exception):
    """Start-up failed for a reason other than the config's syntax; the message names the fix."""


def load_config(path: str) -> WgConfig:
    """Reads and parses a config file.

    Raises:
        WgUpError: the file cannot be read.
        ConfigError: the file is not a valid config.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise WgUpError("cannot read %s: %s; check the path and permissions" % (path, e.strerror)) from None
    except UnicodeDecodeError:
        raise WgUpError("%s is not UTF-8 text; is it really a WireGuard config?" % path) from None
    return parse_config(text, path)


def default_ifname(path: str) -> str:
    """wg-quick's rule: the file name without `.conf` (`/etc/wireguard/wg0.conf` -> `wg0`)."""
    base = os.path.basename(path)
    return base[: -len(".conf")] if base.endswith(".conf") else base


def resolve(ep: Endpoint, want_v6: bool) -> tuple[bytes, int]:
    """The address to use for an Endpoint, resolving a host name (first usable answer, as wg does).

    Raises:
        WgUpError: the name does not resolve to an address family we can send to.
    """
    if ep.ip is not None:
        return ep.ip, ep.port
    try:
        infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise WgUpError(
            "Endpoint %s does not resolve: %s; check the name or write an IP address" % (ep, e.strerror)
        ) from None
    for family, _, _, _, sa in infos:
        if family == socket.AF_INET:
            return socket.inet_pton(socket.AF_INET, str(sa[0])), ep.port
        if family == socket.AF_INET6 and want_v6:
            return socket.inet_pton(socket.AF_INET6, str(sa[0]).partition("%")[0]), ep.port
    raise WgUpError("Endpoint %s resolves to no IPv4 address and this host has no IPv6; use an address" % ep)


def peer_configs(cfg: WgConfig, have_v6: bool) -> list[PeerConfig]:
    out = []
    for p in cfg.peers:
        endpoint = resolve(p.endpoint, have_v6) if p.endpoint is not None else None
        out.append(
            PeerConfig(
                public_key=p.public_key,
                allowed_ips=list(p.allowed_ips),
                endpoint=endpoint,
                preshared_key=p.preshared_key,
                persistent_keepalive_s=p.persistent_keepalive_s,
            )
        )
    return out


async def run(cfg: WgConfig, ifname: str, stop: "asyncio.Event | None" = None) -> None:
    """Runs the interface until `stop` is set or SIGTERM/SIGINT arrives; always cleans up.

    Raises:
        WgUpError, UdpError, TunError, LocalApiError: start-up failed (nothing is left behind).
        WgUpError: the interface vanished while running (exit status 1, so systemd can restart).
    """
    check_ifname(ifname)
    for note in cfg.notes:
        log.info("%s", note)
    udp = Udp.open(cfg.interface.listen_port or 0)
    tun: Tun | None = None
    engine: Engine | None = None
    api: LocalApi | None = None
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        stop.set()

    try:
        peers = peer_configs(cfg, udp.v6 is not None)
        tun = Tun.open(ifname)
        routes = [a for p in cfg.peers for a in p.allowed_ips]
        tun.configure(cfg.interface.addresses, cfg.mtu, routes)
        private = cfg.interface.private_key
        device = Device(private, os.urandom, unix_ms(), now_ms(), mtu=cfg.mtu, log=_core_log)
        for pc in peers:
            device.set_peer(pc)
        engine = Engine(device, private.public(), tun, udp, on_fatal=on_fatal)
        engine.start()
        api = LocalApi(ifname, engine.status)
        await api.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        _log_up(ifname, private.public(), udp, cfg)
        agent_log.sd_notify("READY=1")
        await stop.wait()
        agent_log.sd_notify("STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if api is not None:
            await api.close()
        if engine is not None:
            engine.stop()
        if tun is not None:
            tun.close()
            log.info("%s down", ifname)
        udp.close()
    if fatal:
        raise WgUpError(fatal[0])


def _core_log(fmt: str, *args: object) -> None:
    """The core's injected logger: authenticated events only (so bounded), at debug level."""
    logging.getLogger("meshlet_agent.core").debug(fmt, *args)


def _on_signal(sig: int, stop: asyncio.Event) -> None:
    log.info("%s received, shutting down", signal.Signals(sig).name)
    stop.set()


def _log_up(ifname: str, pub: NodePublic, udp: Udp, cfg: WgConfig) -> None:
    log.info(
        "%s up: public key %s, listening on UDP port %d, MTU %d, %d peer%s, addresses %s",
        ifname,
        pub.to_base64(),
        udp.port,
        cfg.mtu,
        len(cfg.peers),
        "" if len(cfg.peers) == 1 else "s",
        ", ".join(format_prefix(a) for a in cfg.interface.addresses) or "(none)",
    )
    for p in cfg.peers:
        log.info(
            "peer %s: endpoint %s, allowed ips %s%s",
            p.public_key.wireguard_short(),
            p.endpoint or "(none: waits for the peer)",
            ", ".join(format_prefix(a) for a in p.allowed_ips) or "(none)",
            ", keepalive every %d s" % p.persistent_keepalive_s if p.persistent_keepalive_s else "",
        )
