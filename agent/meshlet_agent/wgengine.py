"""The WireGuard pump: TUN ↔ `meshlet.wg.device.Device` ↔ a transport, on asyncio.

Theory of operation. The core `Device` does all of WireGuard; this module
only moves bytes and time in and out of it:

    TUN readable  -> read up to BATCH packets -> [hooks.outbound] -> device.send_packet()  -+
    transport     -> datagrams (with their source) -> device.receive_datagram()            +-> flush()
    timer due     -> device.handle_timer()                                                -+

    flush(): device.transmits()        -> transport.send_many()
             device.received_packets() -> [hooks.inbound] -> write() on the TUN
             device.next_event()       -> one log line each
             device.next_deadline()    -> (re-)arm the single timer

The transport is what carries datagrams: `UdpTransport` (plain UDP sockets,
`meshlet wg up`; sendmsg() with UDP GSO for runs) or the tailnet's MagicSock
(UDP, disco, STUN and DERP). It calls `receive(data, src, now_ms)` for every
WireGuard datagram and `flush(now_ms)` after a batch.

Hooks (`PacketHooks`, optional) see plaintext packets: `outbound` may consume
a packet read from the TUN (the tailnet's DNS intercept) and `inbound` may
refuse a decrypted one (the packet filter). `inject(packet)` writes a packet
of our own into the TUN (DNS answers). Without hooks the hot path is the
plain loop, not a loop with a test per packet.

Each reader drains its descriptor until EAGAIN or BATCH items, whichever is
first, so one busy direction cannot starve the other and one flush serves a
whole batch. Time is read once per batch (`now_ms`, monotonic milliseconds).

There is one timer handle. It is moved earlier when `next_deadline()` moves
earlier and otherwise left alone: a timer that fires before the real deadline
costs one `handle_timer` call that does nothing, which is cheaper than
cancelling and re-creating a handle after every batch.

Counters. The core counts its own drops (`device.stats.dropped[reason]`); the
pump counts the I/O failures it sees (`Engine.io_errors[...]`). A reason seen
for the first time is logged at once, with a hint for the common ones (a wrong
key, a wrong pre-shared key); after that, growth is summarised at most once
per DROP_SUMMARY_INTERVAL_S. Nothing per-packet reaches the log unbounded.
"""

import asyncio
import errno
import logging
import os
import time
from typing import Any, Callable, Protocol

from meshlet.key import NodePublic
from meshlet.wg.device import Device
from meshlet.wire import format_addr

from . import knobs
from .tun import Tun
from .udp import Udp
from .wgconfig import format_prefix

Transmit = tuple[NodePublic | None, tuple[bytes, int], bytes]

log = logging.getLogger("meshlet_agent.wgengine")

READ_SIZE = 65535
"""Bytes asked of each read: the largest IP packet or UDP datagram, so nothing is ever truncated."""
DROP_SUMMARY_INTERVAL_S = 30.0
"""At most one summary of growing drop counters per this many seconds; also the wall-clock re-read period."""
_TUN_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV})
"""TUN errors that mean the interface is gone (`ip link del`): reading again would spin."""

_DROP_HINTS = {
    "unknown_peer": "a handshake came from a key that is no [Peer] here: check PublicKey on both sides",
    "bad_mac1": "a handshake not addressed to this interface's key: the peer has the wrong PublicKey for us",
    "bad_tag": "a message did not authenticate: check that PresharedKey matches on both sides, and the keys",
    "unknown_receiver": "packets for a session this side does not have (the peer restarted or rekeyed)",
    "stale_timestamp": "a replayed handshake initiation, or a peer whose clock went backwards",
    "replay": "replayed or badly reordered transport packets",
    "not_allowed": "the peer sent a packet from an address outside its AllowedIPs here",
    "no_route": "a packet to an address no peer's AllowedIPs covers (IPv6 multicast after link-up is normal)",
    "no_endpoint": "a packet for a peer without Endpoint that has not contacted us yet",
    "handshake_failed": "packets queued for a peer that never answered: check Endpoint and that it runs",
}
# Routine reasons: their first occurrence is logged at INFO; any other reason's at WARNING.
_ROUTINE_DROPS = frozenset({"no_route", "unknown_receiver", "no_endpoint", "keys_zeroed"})


def now_ms() -> int:
    """Monotonic milliseconds, the core's clock (the same clock asyncio's loop.time() reads)."""
    return time.monotonic_ns() // 1_000_000


def unix_ms() -> int:
    return time.time_ns() // 1_000_000


def describe_event(ev: object) -> str:
    """One log line for a core event: its class name and its fields, keys in short form."""
    fields = []
    attrs = getattr(ev, "__slots__", None) or list(getattr(ev, "__dict__", {}))
    for name in attrs:
        value = getattr(ev, name, None)
        if isinstance(value, NodePublic):
            text = value.wireguard_short()
        elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bytes):
            text = format_addr(value[0], value[1])
        else:
            text = str(value)
        fields.append("%s=%s" % (name, text))
    return "wg: %s %s" % (type(ev).__name__, " ".join(fields))


class Sink(Protocol):
    """What a transport delivers into (the Engine).

    `receive(data, src, now_ms)` is an attribute, not a method, so that the
    Engine can hand out the Device's own bound method: one call per datagram.
    """

    @property
    def receive(self) -> Callable[[bytes, tuple[bytes, int], int], None]: ...

    def flush(self, now: int) -> None: ...


class Transport(Protocol):
    """Carries WireGuard datagrams for the pump.

    `attach(sink)` starts delivering: `sink.receive(data, src, now_ms)` for each
    WireGuard datagram, then one `sink.flush(now_ms)` per batch. `send_many`
    sends the device's transmits `(peer key or None, (ip, port), datagram)` and
    reports failures to `on_error` (the datagrams are dropped, as UDP may).
    `status()` adds the transport's fields to `Engine.status()`.
    """

    def attach(self, sink: Sink, batch: int) -> None: ...

    def detach(self) -> None: ...

    def send_many(self, transmits: list[Transmit], on_error: Callable[[OSError], None]) -> None: ...

    def status(self) -> dict[str, Any]: ...


class PacketHooks(Protocol):
    """Plaintext packet hooks: both return True to let the packet go on."""

    def outbound(self, packet: bytes, now: int) -> bool: ...

    def inbound(self, packet: bytes, now: int) -> bool: ...


class UdpTransport:
    """Plain UDP sockets as the pump's transport (`meshlet wg up`)."""

    def __init__(self, udp: Udp) -> None:
        self.udp = udp
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors: Callable[[str, OSError], None] | None = None

    def attach(self, sink: Sink, batch: int) -> None:
        loop = self._loop = asyncio.get_running_loop()
        udp = self.udp
        loop.add_reader(udp.v4.fileno(), self._readable, sink, batch, udp.v4, udp.addr_v4)
        if udp.v6 is not None:
            loop.add_reader(udp.v6.fileno(), self._readable, sink, batch, udp.v6, udp.addr_v6)

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            for s in self.udp.sockets():
                loop.remove_reader(s.fileno())

    def on_read_error(self, callback: Callable[[str, OSError], None]) -> None:
        self._errors = callback

    def _readable(self, sink: Sink, batch: int, sock: Any, to_ip: Callable[[str], bytes]) -> None:
        now = now_ms()
        recvfrom = sock.recvfrom
        receive = sink.receive
        for _ in range(batch):
            try:
                data, sa = recvfrom(READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                # ICMP errors for earlier sends surface here (ECONNREFUSED etc.); they are not fatal.
                if self._errors is not None:
                    self._errors("udp_read", e)
                break
            receive(data, (to_ip(sa[0]), sa[1]), now)
        sink.flush(now)

    def send_many(self, transmits: list[Transmit], on_error: Callable[[OSError], None]) -> None:
        self.udp.send_many(transmits, on_error)

    def status(self) -> dict[str, Any]:
        return {"listening_port": self.udp.port, "udp_gso": self.udp.gso, "udp_gso_sends": self.udp.gso_sends}


class Engine:
    """Drives one Device from one TUN and one transport on the running event loop.

    Args:
        device: the configured core device.
        public_key: the device's public key, for status.
        tun: the open TUN interface (its fd must be non-blocking).
        transport: a `Transport`; a bare `Udp` is wrapped in `UdpTransport`.
        batch: items read per readiness callback (default: MESHLET_WG_BATCH, 64); bounds latency and memory.
        on_fatal: called once with a message when the engine cannot go on (the TUN vanished); it has
            already stopped itself.
        hooks: plaintext packet hooks (DNS intercept, packet filter), or None.
    """

    def __init__(
        self,
        device: Device,
        public_key: NodePublic,
        tun: Tun,
        transport: "Transport | Udp",
        batch: int | None = None,
        on_fatal: Callable[[str], None] | None = None,
        hooks: PacketHooks | None = None,
    ) -> None:
        self.device = device
        self.public_key = public_key
        self.tun = tun
        self.transport: Transport = UdpTransport(transport) if isinstance(transport, Udp) else transport
        if isinstance(self.transport, UdpTransport):
            self.transport.on_read_error(self._io_error)
        self.hooks = hooks
        self.batch = batch or knobs.wg_batch()
        # The transport's entry for a WireGuard datagram; `flush` follows after a batch.
        self.receive: Callable[[bytes, tuple[bytes, int], int], None] = device.receive_datagram
        self.io_errors: dict[str, int] = {}
        self.started_unix_ms = 0
        self._on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._drop_kinds = 0
        self._drops_logged: dict[str, int] = {}
        self._summary: asyncio.TimerHandle | None = None
        self._on_event: list[Callable[[object], None]] = []
        self._established: set[str] = set()

    # --- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Registers the readers and the timer on the running loop."""
        loop = self._loop = asyncio.get_running_loop()
        self.started_unix_ms = unix_ms()
        loop.add_reader(self.tun.fd, self._on_tun if self.hooks is None else self._on_tun_hooked)
        self.transport.attach(self, self.batch)
        self._summary = loop.call_later(DROP_SUMMARY_INTERVAL_S, self._summarise_drops)
        self._flush(now_ms())

    def stop(self) -> None:
        """Unregisters everything; the descriptors stay open (their owners close them)."""
        loop = self._loop
        if loop is None:
            return
        self._loop = None
        if self.tun.fd >= 0:
            loop.remove_reader(self.tun.fd)
        self.transport.detach()
        for h in (self._timer, self._summary):
            if h is not None:
                h.cancel()
        self._timer = self._summary = None

    def subscribe(self, callback: Callable[[object], None]) -> None:
        """Calls `callback(event)` for every core event, after logging it (tests and later the tailnet)."""
        self._on_event.append(callback)

    # --- the hot path ------------------------------------------------------------

    def _on_tun(self) -> None:
        now = now_ms()
        read = os.read
        fd = self.tun.fd
        send_packet = self.device.send_packet
        for _ in range(self.batch):
            try:
                packet = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._tun_error("tun_read", e)
                return
            send_packet(packet, now)
        self._flush(now)

    def _on_tun_hooked(self) -> None:
        now = now_ms()
        read = os.read
        fd = self.tun.fd
        send_packet = self.device.send_packet
        outbound = self.hooks.outbound  # type: ignore[union-attr]
        for _ in range(self.batch):
            try:
                packet = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._tun_error("tun_read", e)
                return
            if outbound(packet, now):
                send_packet(packet, now)
        self._flush(now)

    def flush(self, now: int) -> None:
        """Sends, writes and logs whatever the device produced; re-arms the timer."""
        self._flush(now)

    def inject(self, packet: bytes) -> bool:
        """Writes one IP packet of our own into the TUN (e.g. a DNS answer); False if that failed."""
        if self._loop is None or self.tun.fd < 0:
            return False
        try:
            os.write(self.tun.fd, packet)
        except OSError as e:
            self._tun_error("tun_write", e)
            return False
        return True

    def _flush(self, now: int) -> None:
        if self._loop is None:
            return
        dev = self.device
        transmits = dev.transmits()
        if transmits:
            self.transport.send_many(transmits, self._udp_send_error)
        packets = dev.received_packets()
        if packets:
            if self.hooks is not None:
                inbound = self.hooks.inbound
                packets = [p for p in packets if inbound(p, now)]
            write = os.write
            fd = self.tun.fd
            for packet in packets:
                try:
                    write(fd, packet)
                except OSError as e:
                    if self._tun_error("tun_write", e):
                        return
        ev = dev.next_event()
        while ev is not None:
            self._log_event(ev)
            ev = dev.next_event()
        if len(dev.stats.dropped) != self._drop_kinds:
            self._log_new_drops()
        self._arm(now)

    # --- timer -----------------------------------------------------------------------

    def _arm(self, now: int) -> None:
        deadline = self.device.next_deadline()
        if deadline is None:
            return  # an armed timer may fire needlessly once; that is harmless
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        loop = self._loop
        if loop is None:
            return
        self._timer_at = deadline
        self._timer = loop.call_at(deadline / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # asyncio may run a handle up to one clock tick early; the loop decided it is due.
        now = max(now_ms(), self._timer_at)
        self.device.handle_timer(now)
        self._flush(now)

    # --- logging and counters -------------------------------------------------------

    def _log_event(self, ev: object) -> None:
        name = type(ev).__name__
        peer = getattr(ev, "peer", None)
        who = peer.wireguard_short() if isinstance(peer, NodePublic) else "?"
        if name == "HandshakeCompleted":
            # The first session with a peer (or the first after a failure) is news; 2-minute rekeys are not.
            if who in self._established:
                log.debug("wg: %s: new session (rekey)", who)
            else:
                self._established.add(who)
                log.info("wg: %s: handshake completed, session established", who)
        elif name == "HandshakeFailed":
            self._established.discard(who)
            log.warning("wg: %s: handshake did not complete after every retry; packets for it dropped", who)
        elif name == "PeerEndpointChanged":
            addr = getattr(ev, "addr", None)
            text = format_addr(addr[0], addr[1]) if isinstance(addr, tuple) else "?"
            log.info("wg: %s: endpoint changed to %s", who, text)
        elif name == "KeysZeroed":
            self._established.discard(who)
            log.info("wg: %s: idle for 9 minutes, session keys erased", who)
        else:
            log.info("%s", describe_event(ev))
        for cb in self._on_event:
            cb(ev)

    def _log_new_drops(self) -> None:
        dropped = self.device.stats.dropped
        self._drop_kinds = len(dropped)
        for reason, count in list(dropped.items()):
            if reason not in self._drops_logged:
                self._drops_logged[reason] = count
                hint = _DROP_HINTS.get(reason, "see `meshlet wg show --json` for the counters")
                level = logging.INFO if reason in _ROUTINE_DROPS else logging.WARNING
                log.log(level, "wg: dropping packets: %s (%s); further drops are summarised", reason, hint)

    def _summarise_drops(self) -> None:
        grown = []
        for reason, count in list(self.device.stats.dropped.items()) + list(self.io_errors.items()):
            before = self._drops_logged.get(reason, 0)
            if count > before:
                grown.append("%s +%d" % (reason, count - before))
                self._drops_logged[reason] = count
        if grown:
            log.info("wg: drops in the last %d s: %s", DROP_SUMMARY_INTERVAL_S, ", ".join(grown))
        # Follow NTP steps and slews: handshake timestamps come from this wall clock.
        self.device.set_wall_clock(unix_ms(), now_ms())
        if self._loop is not None:
            self._summary = self._loop.call_later(DROP_SUMMARY_INTERVAL_S, self._summarise_drops)

    def _tun_error(self, where: str, e: OSError) -> bool:
        """Counts a TUN error; returns True (after stopping the engine) if the interface is gone."""
        self._io_error(where, e)
        if e.errno not in _TUN_GONE or self._loop is None:
            return False
        message = "interface %s vanished (%s: %s); was it deleted? restart `meshlet wg up`" % (
            self.tun.name,
            where.replace("_", " "),
            e.strerror,
        )
        log.error("wg: %s", message)
        self.stop()
        if self._on_fatal is not None:
            self._on_fatal(message)
        return True

    def _udp_send_error(self, e: OSError) -> None:
        self._io_error("udp_send", e)

    def _io_error(self, where: str, e: OSError) -> None:
        key = "%s_%s" % (where, errno.errorcode.get(e.errno or 0, "error").lower())
        n = self.io_errors.get(key, 0)
        self.io_errors[key] = n + 1
        if n == 0:
            self._drops_logged.setdefault(key, 0)
            log.warning("wg: %s failed: %s (logged once; counted as %s)", where.replace("_", " "), e, key)

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `meshlet wg show` prints, as JSON-ready data."""
        dev = self.device
        peers = []
        for p in dev.peers():
            peers.append(
                {
                    "public_key": p.public_key.to_base64(),
                    "preshared_key": bool(p.preshared_key_set),
                    "endpoint": format_addr(p.endpoint[0], p.endpoint[1]) if p.endpoint else None,
                    "allowed_ips": [format_prefix(a) for a in p.allowed_ips],
                    "latest_handshake_unix_ms": p.last_handshake_unix_ms,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                    "persistent_keepalive_s": p.persistent_keepalive_s,
                }
            )
        stats = dev.stats
        counters = {}
        for name in getattr(type(stats), "__slots__", ()):
            value = getattr(stats, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                counters[name] = value
        return {
            "interface": self.tun.name,
            "public_key": self.public_key.to_base64(),
            "mtu": self.tun.mtu,
            "started_unix_ms": self.started_unix_ms,
            "peers": peers,
            "dropped": dict(stats.dropped),
            "counters": counters,
            "io_errors": dict(self.io_errors),
            **self.transport.status(),
            "pid": os.getpid(),
        }
