"""A WireGuard interface without the I/O: what a shell drives (whitepaper §2-§6).

The shell feeds in what arrives and sends out what comes back:

    device.receive_datagram(data, src, now_ms)   a UDP (or DERP) datagram from src = (ip bytes, port)
    device.send_packet(packet, now_ms)           a plaintext IP packet read from the TUN
    device.handle_timer(now_ms)                  at or after device.next_deadline()
    device.transmits()      -> [(peer key or None, (ip, port), datagram)]   to send, drained
    device.received_packets() -> [ip packet]                                 to write to the TUN, drained
    device.next_event()     -> HandshakeCompleted | PeerEndpointChanged | HandshakeFailed | KeysZeroed | None

Theory of operation.

* Dispatch. The first four bytes pick the handler. Transport data goes by its
  receiver index to a keypair (`_keypairs`); a handshake response or cookie
  reply goes by its receiver index to the peer with that handshake in flight
  (`_handshakes`); an initiation goes to the peer whose static key it
  decrypts to. Indices are random 32-bit numbers, unique across both tables.
* Silence. Nothing unauthenticated gets an answer, except a cookie reply
  when under load (cookie.py). Every failure is a `ProtocolError`, caught at
  the three entry points and counted in `stats.dropped[reason]`; nothing else
  is raised for bad input.
* Roaming. Any authenticated packet from a new address moves the peer's
  endpoint there (whitepaper §2.1) and emits PeerEndpointChanged.
* Crypto-key routing. Outbound, the destination IP picks the peer (longest
  prefix over allowed IPs, "no_route" otherwise); inbound, the source IP of a
  decrypted packet must map back to the peer that sent it ("not_allowed").
* Sending. With a usable current keypair and nothing staged, a packet is
  encrypted at once. Otherwise it is staged (bounded, oldest dropped) and a
  handshake is started; the queue is flushed when a session is ready.
* Timers are per-peer deadlines (timers.py); the hooks are called at the
  same points as wireguard-go's `timers*` functions.

Counters: `rx_bytes`/`tx_bytes` are authenticated datagram bytes (handshakes
included), as in `wg show`; `rx_packets`/`tx_packets` are IP packets
delivered to and taken from the TUN (keepalives excluded).

Drop reasons (`stats.dropped` keys), stable:

    malformed          short, trailing, bad_type, too_large, bad_ip_version, bad_ip_length
    unauthenticated    bad_mac1, bad_tag, low_order_point, unknown_peer, unknown_receiver,
                       unexpected_response, unexpected_cookie, bad_peer_key
    replays, floods    replay, stale_timestamp, flood, expired (Reject-After-Time),
                       under_load (answered with a cookie reply instead)
    routing            not_allowed (inbound source), no_route (outbound destination), no_endpoint
    queue              staged_overflow, handshake_failed, keys_zeroed (staged packets dropped)
"""

import struct

from .._compat import TYPE_CHECKING
from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ..key import NodePrivate, NodePublic
from .allowedips import AllowedIPs
from .constants import (
    DEFAULT_MTU,
    KEEP_KEY_FRESH_RECEIVING_MS,
    MAX_MESSAGE_SIZE,
    MAX_STAGED_PACKETS,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_SIZE,
    REJECT_AFTER_TIME_MS,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_MS,
    REKEY_TIMEOUT_JITTER_MAX_MS,
    REKEY_TIMEOUT_MS,
    UNDER_LOAD_HANDSHAKES_PER_S,
)
from .cookie import CookieChecker, LoadMonitor
from .events import HandshakeCompleted, HandshakeFailed, KeysZeroed, PeerEndpointChanged
from .handshake import consume_initiation, consume_response, create_initiation, create_response
from .handshake import derive_keys, new_ephemeral
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    MessageCookieReply,
    MessageInitiation,
    MessageResponse,
    message_type,
)
from .peer import Peer, PeerConfig, PeerStatus
from .session import Keypair, unpad
from .tai64n import WallClock
from .timers import NEW_HANDSHAKE, PERSISTENT_KEEPALIVE, RETRANSMIT_HANDSHAKE, SEND_KEEPALIVE
from .timers import ZERO_KEY_MATERIAL

if TYPE_CHECKING:
    from typing import Callable, Protocol

    class Log(Protocol):
        def __call__(self, fmt: str, *args: object) -> None: ...

    Transmit = tuple["NodePublic | None", tuple[bytes, int], bytes]
    Event = HandshakeCompleted | HandshakeFailed | PeerEndpointChanged | KeysZeroed

__all__ = ["Device", "DeviceStats", "PeerConfig", "PeerStatus"]

_MAX_PACKET = MAX_MESSAGE_SIZE - MESSAGE_TRANSPORT_SIZE


def _nolog(fmt: str, *args: object) -> None:
    pass


class DeviceStats:
    """Counters. `dropped` maps a stable reason ("short", "bad_mac1", "replay", ...) to a count."""

    __slots__ = (
        "dropped",
        "handshakes_initiated",
        "handshakes_completed",
        "cookie_replies_sent",
        "rx_packets",
        "tx_packets",
        "rx_bytes",
        "tx_bytes",
    )

    def __init__(self) -> None:
        self.dropped: "dict[str, int]" = {}
        self.handshakes_initiated = 0
        self.handshakes_completed = 0
        self.cookie_replies_sent = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self.rx_bytes = 0
        self.tx_bytes = 0


class Device:
    """One WireGuard interface.

    Args:
        private_key: the interface's static key (a node key).
        random_bytes: the only randomness: ephemerals, indices, jitter, cookies.
        unix_ms, now_ms: the wall clock read together with the monotonic
            clock, for handshake timestamps (`set_wall_clock` re-pins it).
        mtu: the tunnel MTU, which bounds padding.
        max_staged_packets: per-peer queue while a handshake runs.
        under_load_handshakes_per_s: handshake messages per second above which
            mac2 (a cookie round trip) is demanded; 0 always, None never.
        log: `log(fmt, *args)`, called for authenticated events only.
    """

    def __init__(
        self,
        private_key: NodePrivate,
        random_bytes: "Callable[[int], bytes]",
        unix_ms: int,
        now_ms: int,
        mtu: int = DEFAULT_MTU,
        max_staged_packets: int = MAX_STAGED_PACKETS,
        under_load_handshakes_per_s: "int | None" = UNDER_LOAD_HANDSHAKES_PER_S,
        log: "Log" = _nolog,
    ) -> None:
        self._private = private_key
        self.public_key = private_key.public()
        self._random_bytes = random_bytes
        self._wall = WallClock(unix_ms, now_ms)
        self._now_ms = now_ms
        self.mtu = mtu
        self._max_staged = max_staged_packets
        self._log = log
        self._peers: "dict[NodePublic, Peer]" = {}
        self._allowed = AllowedIPs()
        self._handshakes: "dict[int, Peer]" = {}
        self._keypairs: "dict[int, Keypair]" = {}
        self._cookies = CookieChecker(self.public_key, random_bytes)
        self._load = LoadMonitor(under_load_handshakes_per_s)
        self._transmits: "list[Transmit]" = []
        self._received: "list[bytes]" = []
        self._events: "list[Event]" = []
        self.stats = DeviceStats()

    # --- configuration ----------------------------------------------------------

    def set_wall_clock(self, unix_ms: int, now_ms: int) -> None:
        """Re-pins wall-clock time (e.g. after NTP). Timestamps still never go backwards per peer."""
        self._wall.set(unix_ms, now_ms)

    def set_peer(self, cfg: PeerConfig) -> None:
        """Adds a peer, or updates one in place (sessions kept; allowed IPs replaced).

        Raises:
            LocalProtocolError: "own_key", "bad_ip", "bad_prefix", "bad_length".
        """
        if cfg.public_key == self.public_key:
            raise LocalProtocolError("own_key", "a peer cannot have the interface's own key")
        for ip, cidr in cfg.allowed_ips:  # validate before changing anything
            self._allowed.validate(ip, cidr)
        peer = self._peers.get(cfg.public_key)
        newly_keepalive = cfg.persistent_keepalive_s > 0
        if peer is None:
            peer = Peer(self._private, cfg, self._jitter_ms)
            self._peers[cfg.public_key] = peer
        else:
            newly_keepalive = newly_keepalive and not peer.timers.persistent_keepalive_s
            peer.update(cfg)
        self._allowed.remove_by_peer(peer)
        for ip, cidr in cfg.allowed_ips:
            self._allowed.insert(ip, cidr, peer)
        if newly_keepalive:
            # As wg(8) does: a keepalive at once, which starts the handshake.
            peer.timers.persistent_keepalive_ms = self._now_ms

    def remove_peer(self, public_key: NodePublic) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        self._zero(peer)
        peer.timers.clear()
        self._allowed.remove_by_peer(peer)

    def peers(self) -> "list[PeerStatus]":
        out = []
        for p in self._peers.values():
            out.append(
                PeerStatus(
                    p.public_key,
                    p.endpoint,
                    self._allowed.entries_for_peer(p),
                    p.preshared_key_set,
                    p.timers.persistent_keepalive_s,
                    p.last_handshake_unix_ms,
                    p.rx_bytes,
                    p.tx_bytes,
                )
            )
        return out

    # --- outputs ------------------------------------------------------------------

    def transmits(self) -> "list[Transmit]":
        out = self._transmits
        self._transmits = []
        return out

    def received_packets(self) -> "list[bytes]":
        out = self._received
        self._received = []
        return out

    def next_event(self) -> "Event | None":
        return self._events.pop(0) if self._events else None

    def next_deadline(self) -> "int | None":
        best = None
        for peer in self._peers.values():
            t = peer.timers.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        return best

    # --- inputs -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, src: "tuple[bytes, int]", now_ms: int) -> None:
        """Handles one datagram from `src`. Never raises on bad input: counts and drops."""
        self._now_ms = now_ms
        try:
            if len(data) >= MESSAGE_TRANSPORT_SIZE and data[0] == MESSAGE_TRANSPORT:
                self._receive_transport(data, src, now_ms)  # the hot path: one test, one call
                return
            kind = message_type(data)
            if kind == MESSAGE_TRANSPORT:
                self._receive_transport(data, src, now_ms)
            elif kind == MESSAGE_INITIATION:
                self._receive_initiation(data, src, now_ms)
            elif kind == MESSAGE_RESPONSE:
                self._receive_response(data, src, now_ms)
            elif kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(data, now_ms)
            else:
                raise RemoteProtocolError("bad_type", "message type %d" % kind)
        except ProtocolError as e:
            self._drop(e.reason)

    def send_packet(self, packet: bytes, now_ms: int) -> None:
        """Encrypts one IP packet to the peer its destination routes to, or stages it."""
        self._now_ms = now_ms
        try:
            self._send_packet(packet, now_ms)
        except ProtocolError as e:
            self._drop(e.reason)

    def handle_timer(self, now_ms: int) -> None:
        """Runs every timer due at `now_ms`."""
        self._now_ms = now_ms
        for peer in list(self._peers.values()):
            for action in peer.timers.expired(now_ms):
                try:
                    self._on_timer(peer, action, now_ms)
                except ProtocolError as e:
                    self._drop(e.reason)

    # --- receive path -------------------------------------------------------------

    def _receive_transport(self, data: bytes, src: "tuple[bytes, int]", now_ms: int) -> None:
        if len(data) < MESSAGE_TRANSPORT_SIZE:
            raise RemoteProtocolError("short", "transport message of %d bytes" % len(data))
        kind, receiver, counter = struct.unpack_from("<IIQ", data, 0)
        if kind != MESSAGE_TRANSPORT:
            raise RemoteProtocolError("bad_type", "type word %d" % kind)  # non-zero reserved bytes
        kp = self._keypairs.get(receiver)
        if kp is None:
            raise RemoteProtocolError("unknown_receiver", "no session %08x" % receiver)
        if now_ms - kp.created_ms > REJECT_AFTER_TIME_MS:
            raise RemoteProtocolError("expired", "session older than Reject-After-Time")
        plaintext = kp.decrypt(data, counter)
        if not kp.replay.accept(counter):
            raise RemoteProtocolError("replay", "counter %d" % counter)
        peer = kp.peer
        self._authenticated(peer, src, len(data), now_ms)
        if kp is peer.keypairs.next:
            self._confirm(peer, kp, now_ms)
        elif kp.is_initiator and now_ms - kp.created_ms > KEEP_KEY_FRESH_RECEIVING_MS:
            self._keep_key_fresh_receiving(peer, now_ms)
        if not plaintext:
            return  # a keepalive
        peer.timers.data_received(now_ms)
        packet = unpad(plaintext)
        if self._allowed.lookup_packet(packet, packet[0] >> 4 == 6, True) is not peer:
            raise RemoteProtocolError("not_allowed", "source outside the peer's allowed IPs")
        self._received.append(packet)
        self.stats.rx_packets += 1

    def _authenticated(self, peer: Peer, src: "tuple[bytes, int]", size: int, now_ms: int) -> None:
        """Bookkeeping for any authenticated datagram: roaming, timers, counters."""
        if peer.endpoint != src:
            peer.endpoint = src
            self._events.append(PeerEndpointChanged(peer.public_key, src))
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now_ms)
        timers.any_authenticated_packet_received()
        peer.rx_bytes += size
        self.stats.rx_bytes += size

    def _receive_initiation(self, data: bytes, src: "tuple[bytes, int]", now_ms: int) -> None:
        msg = MessageInitiation.parse(data)
        if not self._admit_handshake(data, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, src, now_ms):
            return
        peer = consume_initiation(self._private, msg, self._peers.get, now_ms)
        self._authenticated(peer, src, len(data), now_ms)
        self._send_response(peer, now_ms)

    def _receive_response(self, data: bytes, src: "tuple[bytes, int]", now_ms: int) -> None:
        msg = MessageResponse.parse(data)
        if not self._admit_handshake(data, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, src, now_ms):
            return
        peer = self._handshakes.get(msg.receiver)
        if peer is None:
            raise RemoteProtocolError("unknown_receiver", "no handshake %08x" % msg.receiver)
        consume_response(self._private, peer.handshake, msg)
        self._authenticated(peer, src, len(data), now_ms)
        self._begin_session(peer, now_ms)
        self._handshake_complete(peer, now_ms)
        self._send_keepalive(peer, now_ms)

    def _admit_handshake(
        self, data: bytes, mac1_at: int, mac2_at: int, src: "tuple[bytes, int]", now_ms: int
    ) -> bool:
        """mac1 always; under load, mac2 too, or a cookie reply instead (whitepaper §5.4.7)."""
        under_load = self._load.note_handshake(now_ms)
        if not self._cookies.check_mac1(data, mac1_at):
            raise RemoteProtocolError("bad_mac1", "handshake message without a valid mac1")
        if not under_load or self._cookies.check_mac2(data, mac2_at, src, now_ms):
            return True
        self._transmits.append((None, src, self._cookies.create_reply(data, mac1_at, src, now_ms)))
        self.stats.cookie_replies_sent += 1
        self._drop("under_load")
        return False

    def _receive_cookie_reply(self, data: bytes, now_ms: int) -> None:
        reply = MessageCookieReply.parse(data)
        peer = self._handshakes.get(reply.receiver)
        if peer is None:
            kp = self._keypairs.get(reply.receiver)
            if kp is None:
                raise RemoteProtocolError("unknown_receiver", "no handshake %08x" % reply.receiver)
            peer = kp.peer
        peer.cookie.consume_reply(reply, now_ms)

    # --- sessions -------------------------------------------------------------------

    def _begin_session(self, peer: Peer, now_ms: int) -> None:
        """Turns the finished handshake into a keypair and files it under its index."""
        hs = peer.handshake
        local_index, remote_index = hs.local_index, hs.remote_index
        send, recv, initiator = derive_keys(hs)
        self._handshakes.pop(local_index, None)
        kp = Keypair(send, recv, initiator, local_index, remote_index, now_ms, peer)
        self._keypairs[local_index] = kp
        for old in peer.keypairs.install(kp):
            self._keypairs.pop(old.local_index, None)
        peer.timers.session_derived(now_ms)

    def _confirm(self, peer: Peer, kp: Keypair, now_ms: int) -> None:
        """The first packet under a responder's keypair: it becomes current."""
        old = peer.keypairs.confirm(kp)
        if old is not None:
            self._keypairs.pop(old.local_index, None)
        self._handshake_complete(peer, now_ms)
        self._send_staged(peer, now_ms)

    def _handshake_complete(self, peer: Peer, now_ms: int) -> None:
        peer.timers.handshake_complete()
        peer.last_handshake_unix_ms = self._wall.unix_ms(now_ms)
        self.stats.handshakes_completed += 1
        self._events.append(HandshakeCompleted(peer.public_key))
        self._log("wg: %s handshake completed", peer.public_key.wireguard_short())

    def _zero(self, peer: Peer) -> None:
        """Erases every key shared with `peer` and drops its queue."""
        for kp in peer.keypairs.clear():
            self._keypairs.pop(kp.local_index, None)
        hs = peer.handshake
        if hs.local_index:
            self._handshakes.pop(hs.local_index, None)
        hs.clear()
        self._flush_staged(peer, "keys_zeroed")

    def _new_index(self) -> int:
        for _ in range(64):
            i = int.from_bytes(self._random_bytes(4), "little")
            if i not in self._handshakes and i not in self._keypairs:
                return i
        raise LocalProtocolError("no_index", "random_bytes keeps repeating itself")

    def _jitter_ms(self) -> int:
        return int.from_bytes(self._random_bytes(2), "big") % REKEY_TIMEOUT_JITTER_MAX_MS

    # --- send path ------------------------------------------------------------------

    def _send_packet(self, packet: bytes, now_ms: int) -> None:
        n = len(packet)
        version = packet[0] >> 4 if n else 0
        if version == 4:
            if n < 20:
                raise RemoteProtocolError("short", "IPv4 packet of %d bytes" % n)
        elif version == 6:
            if n < 40:
                raise RemoteProtocolError("short", "IPv6 packet of %d bytes" % n)
        else:
            raise RemoteProtocolError("bad_ip_version", "IP version %d" % version)
        if n > _MAX_PACKET:
            raise RemoteProtocolError("too_large", "packet of %d bytes" % n)
        peer = self._allowed.lookup_packet(packet, version == 6, False)
        if peer is None:
            raise RemoteProtocolError("no_route", "no peer's allowed IPs hold the destination")
        kp = peer.keypairs.current
        if not peer.staged and kp is not None and kp.can_send(now_ms):
            self._send_data(peer, kp, packet, now_ms)
        else:
            self._stage(peer, packet)
            self._send_staged(peer, now_ms)

    def _send_data(self, peer: Peer, kp: Keypair, packet: bytes, now_ms: int) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop("no_endpoint")
            return
        datagram = kp.encrypt(packet, self.mtu)
        self._transmits.append((peer.public_key, endpoint, datagram))
        size = len(datagram)
        peer.tx_bytes += size
        self.stats.tx_bytes += size
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now_ms)
        timers.any_authenticated_packet_sent()
        if packet:
            self.stats.tx_packets += 1
            timers.data_sent(now_ms)
        # keep key fresh (sending): rekey early, the data already went out under the old key
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now_ms - kp.created_ms > REKEY_AFTER_TIME_MS
        ):
            self._send_initiation(peer, now_ms, False)

    def _keep_key_fresh_receiving(self, peer: Peer, now_ms: int) -> None:
        """An initiator nearing Reject-After-Time renews on receive too (once), so a
        session that only carries data towards us is still replaced in time."""
        if peer.timers.sent_last_minute_handshake:
            return
        kp = peer.keypairs.current
        if kp is not None and kp.is_initiator and now_ms - kp.created_ms > KEEP_KEY_FRESH_RECEIVING_MS:
            peer.timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now_ms, False)

    def _stage(self, peer: Peer, packet: bytes) -> None:
        if len(peer.staged) >= self._max_staged:
            peer.staged.pop(0)
            self._drop("staged_overflow")
        peer.staged.append(packet)

    def _send_staged(self, peer: Peer, now_ms: int) -> None:
        if not peer.staged:
            return
        kp = peer.keypairs.current
        if kp is None or not kp.can_send(now_ms):
            self._send_initiation(peer, now_ms, False)
            return
        staged = peer.staged
        peer.staged = []
        for packet in staged:
            self._send_data(peer, kp, packet, now_ms)

    def _flush_staged(self, peer: Peer, reason: str) -> None:
        for _ in peer.staged:
            self._drop(reason)
        peer.staged = []

    def _send_keepalive(self, peer: Peer, now_ms: int) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now_ms)

    def _send_initiation(self, peer: Peer, now_ms: int, retry: bool) -> None:
        """Starts a handshake, at most once per Rekey-Timeout (retries included)."""
        timers = peer.timers
        if not retry:
            timers.handshake_attempts = 0
        hs = peer.handshake
        if hs.last_sent_ms is not None and now_ms - hs.last_sent_ms < REKEY_TIMEOUT_MS:
            return
        hs.last_sent_ms = now_ms
        if peer.endpoint is None:
            # Nowhere to send it: count it and let the retry timer try again,
            # as wireguard-go does, but spend no Diffie-Hellman on it.
            self._drop("no_endpoint")
        else:
            self._transmit_initiation(peer, now_ms)
        timers.any_authenticated_packet_traversal(now_ms)
        timers.any_authenticated_packet_sent()
        timers.handshake_initiated(now_ms)

    def _transmit_initiation(self, peer: Peer, now_ms: int) -> None:
        hs = peer.handshake
        if hs.local_index:
            self._handshakes.pop(hs.local_index, None)
        index = self._new_index()
        stamp = self._wall.stamp(now_ms, peer.last_sent_timestamp)
        msg = create_initiation(self._private, hs, index, stamp, new_ephemeral(self._random_bytes))
        peer.last_sent_timestamp = stamp
        self._handshakes[index] = peer
        self._transmit_handshake(peer, peer.cookie.add_macs(msg.to_bytes(), INITIATION_MAC1_OFFSET, now_ms))
        self.stats.handshakes_initiated += 1

    def _send_response(self, peer: Peer, now_ms: int) -> None:
        hs = peer.handshake
        hs.last_sent_ms = now_ms
        if hs.local_index:
            self._handshakes.pop(hs.local_index, None)  # our own initiation, if any, is abandoned
        msg = create_response(hs, self._new_index(), new_ephemeral(self._random_bytes))
        packet = peer.cookie.add_macs(msg.to_bytes(), RESPONSE_MAC1_OFFSET, now_ms)
        self._begin_session(peer, now_ms)
        timers = peer.timers
        timers.any_authenticated_packet_traversal(now_ms)
        timers.any_authenticated_packet_sent()
        self._transmit_handshake(peer, packet)

    def _transmit_handshake(self, peer: Peer, packet: bytes) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop("no_endpoint")
            return
        self._transmits.append((peer.public_key, endpoint, packet))
        peer.tx_bytes += len(packet)
        self.stats.tx_bytes += len(packet)

    # --- timers ---------------------------------------------------------------------

    def _on_timer(self, peer: Peer, action: int, now_ms: int) -> None:
        timers = peer.timers
        if action == RETRANSMIT_HANDSHAKE:
            if timers.should_retry():
                self._send_initiation(peer, now_ms, True)
            else:
                self._give_up(peer, now_ms)
        elif action == SEND_KEEPALIVE:
            self._send_keepalive(peer, now_ms)
            timers.keepalive_sent(now_ms)
        elif action == NEW_HANDSHAKE:
            self._send_initiation(peer, now_ms, False)  # sent data, heard nothing for 15 s
        elif action == ZERO_KEY_MATERIAL:
            self._zero(peer)
            self._events.append(KeysZeroed(peer.public_key))
        elif action == PERSISTENT_KEEPALIVE:
            if timers.persistent_keepalive_s:
                self._send_keepalive(peer, now_ms)

    def _give_up(self, peer: Peer, now_ms: int) -> None:
        peer.timers.give_up(now_ms)
        self._flush_staged(peer, "handshake_failed")
        self._events.append(HandshakeFailed(peer.public_key))
        self._log("wg: %s handshake did not complete after 20 attempts", peer.public_key.wireguard_short())

    def _drop(self, reason: str) -> None:
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
