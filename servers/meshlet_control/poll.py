"""`POST /machine/map`: the long poll, lite updates, and pushing every change to every live stream.

(shared/protocol/control.md §7.) Three kinds of MapRequest:

    Stream:true              long poll: 200, a full map, then deltas and keep-alives, forever
    Stream:false OmitPeers   lite update: apply Hostinfo/Endpoints/DiscoKey, 200, empty body
    Stream:false             one full map, then the stream ends (tests only in 1.90)

Each message on the response body (§7.3):

    4b  length N of what follows, little-endian uint32
    Nb  one zstd frame; decompressed, one JSON MapResponse

The first message that is not a keep-alive must carry `Node` (§7.4). A
keep-alive `{"KeepAlive":true}` goes out after `keepalive_s` (less up to 9 s
of jitter) without any other message; the client's watchdog gives up after
120 s of silence. One hub-wide timer sweeps the sessions once a second.

Theory of operation. `PollHub` is the only subscriber to State changes.
It keeps every member node's peer dict (mapper.tail_node) in memory, so a
change costs one dict build and a full map costs no query at all. On a
change it diffs the node's old and new peer dict (mapper.diff_peer) and
encodes the resulting delta *once*; the same framed bytes go to every live
session that may see the node. A `MapSession` writes them at once, inside
the State's callback, when its stream is idle and the client's flow-control
window takes them (no task switch per stream: 10k streams hear of a change
in about a quarter of a second, tools/bench/control_scale.py); otherwise
they queue for the session's writer coroutine, which obeys flow control and
socket backpressure and batches what accumulated. A session whose queue
passes `MAX_QUEUE_BYTES` (the client stopped reading) is closed; the client
then polls again and gets a fresh full map.

Packet filters and visibility are per viewer (policy.compile_policy: a
node sees a peer when either may reach the other). With no policy file
everyone sees everyone, gets allow-all and nothing is ever recompiled; with
one, every change to the set of nodes, their addresses, users or tags
recompiles the policy and re-derives each live session's peers and filter,
sending PeersChanged / PeersRemoved / PacketFilter where they changed.

Online state: a node is online while it has a long poll open. When the
last one closes, the node is marked offline after `offline_grace_s`
(headscale waits 10 s) unless a new poll arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import zstandard

from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic

from . import mapper, tailcfg
from .noise import Request, Response, StreamClosed

if TYPE_CHECKING:
    from .state import Change, Node, State

log = logging.getLogger("meshlet_control.poll")

# --- implementation constants ------------------------------------------------------

MAX_QUEUE_BYTES = 32 << 20  # framed messages waiting for one slow client before it is cut off
ZSTD_LEVEL = 1  # full maps of 10k peers are megabytes of JSON; level 1 compresses them ~10x, fast
DEFAULT_KEEPALIVE_S = 50.0  # headscale: 50 s + up to 9 s; the client's watchdog is 120 s
KEEPALIVE_JITTER_S = 9.0
DEFAULT_OFFLINE_GRACE_S = 10.0  # headscale's wait before a dropped stream means offline

# Fields of a node's own dict whose change does not need a new `Node` message.
_SELF_VOLATILE = frozenset(
    ("Endpoints", "DiscoKey", "HomeDERP", "DERP", "Hostinfo", "Cap", "Online", "LastSeen")
)

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)


def encode_message(msg: dict[str, Any]) -> bytes:
    """One MapResponse as it goes on the wire: LE length, zstd frame of the JSON (§7.3)."""
    z = _compressor.compress(tailcfg.json_bytes(msg))
    return len(z).to_bytes(4, "little") + z


KEEPALIVE_MESSAGE = encode_message(tailcfg.KEEPALIVE)


class MapRequest:
    """The fields of tailcfg.MapRequest the server uses (control.md §7.1)."""

    __slots__ = (
        "version",
        "node_key",
        "disco_key",
        "stream",
        "omit_peers",
        "hostinfo",
        "endpoints",
        "compress",
    )

    def __init__(self, doc: dict[str, Any]) -> None:
        """Raises RemoteProtocolError("bad_json") for a malformed request."""
        self.version, self.node_key = tailcfg.request_version_and_node_key(doc)
        self.disco_key = tailcfg.parse_key(DiscoPublic, doc.get("DiscoKey"), "DiscoKey", required=False)
        self.stream = doc.get("Stream") is True
        self.omit_peers = doc.get("OmitPeers") is True
        hostinfo = doc.get("Hostinfo")
        self.hostinfo: dict[str, Any] | None = hostinfo if isinstance(hostinfo, dict) else None
        self.endpoints = tailcfg.get_str_list(doc, "Endpoints")
        compress = doc.get("Compress")
        self.compress = compress if isinstance(compress, str) else ""

    def home_derp(self) -> int | None:
        """Hostinfo.NetInfo.PreferredDERP, or None when this request carries no NetInfo."""
        netinfo = (self.hostinfo or {}).get("NetInfo")
        if not isinstance(netinfo, dict):
            return None
        region = netinfo.get("PreferredDERP")
        return region if isinstance(region, int) and region >= 0 else None


class MapSession:
    """One long poll: framed messages go out at once when the stream can take them, else queue.

    The fast path (`send` with nothing queued, the writer idle and the
    client's flow-control window open) seals and writes synchronously: no
    task switch per stream, which is what makes one change reach 10k streams
    quickly. Otherwise the message waits in `queue` for the writer coroutine
    (`run`), which obeys flow control and socket backpressure.

    Attributes:
        node_id: whose poll this is.
        capver: the client's MapRequest.Version.
        packet_filter: the rules last sent.
        known: the peer ids this client has; None: every node (no policy).
        self_dict: the self node last sent, volatile fields included.
        keepalive_at: time.monotonic() when a keep-alive is due.
    """

    def __init__(self, hub: PollHub, node_id: int, capver: int, resp: Response | None) -> None:
        self.hub = hub
        self.node_id = node_id
        self.capver = capver
        self.resp = resp
        self.packet_filter: list[dict[str, Any]] = []
        self.known: set[int] | None = None
        self.self_dict: dict[str, Any] = {}
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.messages_sent = 0
        self.closed = False
        self.keepalive_at = 0.0
        self._writing = True  # until run() has sent the response headers
        self._wake = asyncio.Event()
        self.schedule_keepalive()

    def send(self, framed: bytes) -> None:
        """Sends (or queues) one framed message (encode_message); never blocks."""
        if self.closed:
            return
        if not self._writing and not self.queue and self.resp is not None:
            try:
                if self.resp.write_nowait(framed):
                    self.messages_sent += 1
                    self.schedule_keepalive()
                    return
            except StreamClosed:
                self.close()
                return
        self.queue.append(framed)
        self.queued_bytes += len(framed)
        if self.queued_bytes > MAX_QUEUE_BYTES:
            log.warning("poll: node %d is not reading its map stream, closing it", self.node_id)
            self.close()
            return
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self.queue.clear()
        self.queued_bytes = 0
        self._wake.set()

    def schedule_keepalive(self) -> None:
        k = self.hub.keepalive_s
        self.keepalive_at = time.monotonic() + max(1.0, k - random.uniform(0, min(KEEPALIVE_JITTER_S, k / 5)))

    async def run(self) -> None:
        """Writes what `send` could not, until the stream or the session closes."""
        assert self.resp is not None
        await self.resp.start(200, [("content-type", "application/json; charset=utf-8")])
        while not self.closed:
            if not self.queue:
                self._writing = False
                self._wake.clear()
                await self._wake.wait()
                self._writing = True
                continue
            data = b"".join(self.queue)
            self.messages_sent += len(self.queue)
            self.queue.clear()
            self.queued_bytes = 0
            await self.resp.write(data)
            self.schedule_keepalive()


class PollHub:
    """The live map sessions of a server and the fan-out of State changes to them.

    Args:
        state: the tailnet's State; the hub subscribes to its changes.
        cfg: the tailnet-wide map settings.
        now_ms: the clock (Unix milliseconds).
        keepalive_s: silence before a keep-alive.
        offline_grace_s: how long after its last poll closes a node turns offline.
    """

    def __init__(
        self,
        state: State,
        cfg: mapper.MapperConfig,
        now_ms: Callable[[], int],
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        offline_grace_s: float = DEFAULT_OFFLINE_GRACE_S,
    ) -> None:
        self.state = state
        self.cfg = cfg
        self.now_ms = now_ms
        self.keepalive_s = keepalive_s
        self.offline_grace_s = offline_grace_s
        self.sessions: dict[int, MapSession] = {}
        self.nodes: dict[int, Node] = {}  # the members: authorised nodes with addresses
        self.peer_dicts: dict[int, dict[str, Any]] = {}
        self.profiles: dict[int, dict[str, Any]] = {}
        self.policy_active = False  # False: allow-all, everyone sees everyone, no compiling
        self._offline_timers: dict[int, asyncio.TimerHandle] = {}
        self._keepalives: asyncio.Task[None] | None = None
        self._loaded = False
        self._unsubscribe = state.subscribe(self.on_change)

    # --- the node cache -----------------------------------------------------------------

    def load(self) -> None:
        """Reads every node once; later changes arrive through on_change."""
        if self._loaded:
            return
        self._loaded = True
        self._check_policy()
        now = self.now_ms()
        for node in self.state.list_nodes():
            if _is_member(node):
                self.nodes[node.id] = node
                self.peer_dicts[node.id] = self._tail_node(node, now)

    def _check_policy(self) -> None:
        self.policy_active = (
            self.state.get_policy() is not None and not self.state.compiled_policy().allow_all
        )

    def _tail_node(self, node: Node, now: int) -> dict[str, Any]:
        owner = self.state.owner(node)
        if owner.id not in self.profiles:
            self.profiles[owner.id] = mapper.user_profile(owner)
        return mapper.tail_node(node, node.capver, now, owner.id)

    def close(self) -> None:
        self._unsubscribe()
        if self._keepalives is not None:
            self._keepalives.cancel()
        for t in self._offline_timers.values():
            t.cancel()
        for s in list(self.sessions.values()):
            s.close()

    def visible_ids(self, viewer_id: int) -> set[int] | None:
        """The ids of the peers `viewer_id` may see; None means every other node (no policy)."""
        if not self.policy_active:
            return None
        return self.state.compiled_policy().peers_for(viewer_id) & self.nodes.keys()

    def filter_for(self, viewer: Node) -> list[dict[str, Any]]:
        """The viewer's packet filter: allow-all without a policy (control.md §7.4, §9.2)."""
        if not self.policy_active:
            return tailcfg.FILTER_ALLOW_ALL
        return self.state.compiled_policy().filter_for(viewer)

    def full_map(self, session: MapSession, viewer: Node) -> dict[str, Any]:
        """The first message of `session`; remembers what it told the session."""
        now = self.now_ms()
        visible = self.visible_ids(viewer.id)
        if visible is None:
            peers = [d for i, d in self.peer_dicts.items() if i != viewer.id]
        else:
            peers = [self.peer_dicts[i] for i in visible if i in self.peer_dicts]
        session.known = visible
        owner = self.state.owner(viewer)
        self.profiles.setdefault(owner.id, mapper.user_profile(owner))
        users = {owner.id} | {int(p["User"]) for p in peers}
        profiles = [self.profiles[u] for u in users if u in self.profiles]
        session.packet_filter = self.filter_for(viewer)
        msg = mapper.full_map(
            viewer, session.capver, peers, profiles, session.packet_filter, self.cfg, now, owner.id
        )
        session.self_dict = msg["Node"]
        return msg

    # --- State changes ------------------------------------------------------------------

    def on_change(self, change: Change) -> None:
        """State's callback: turn one change into deltas on every live session."""
        if not self._loaded:
            return
        try:
            if change.kind == "policy_changed":
                self._check_policy()
                self._refresh_all()
            elif change.kind == "node_removed":
                self._node_removed(change.node_id)
            elif change.node_id is not None:
                node = self.state.get_node(change.node_id)
                if node is None or not _is_member(node):
                    self._node_removed(change.node_id)
                else:
                    self._node_updated(node)
        except Exception:  # a bug here must not break the State's caller
            log.exception("poll: failed to push %s of node %s", change.kind, change.node_id)

    def _node_updated(self, node: Node) -> None:
        old_node = self.nodes.get(node.id)
        self.nodes[node.id] = node
        new = self._tail_node(node, self.now_ms())
        old = self.peer_dicts.get(node.id)
        self.peer_dicts[node.id] = new
        framed = self._delta_for(node, mapper.diff_peer(old, new))
        if _filter_inputs_changed(old_node, node):
            self._check_policy()
        if self.policy_active and _filter_inputs_changed(old_node, node):
            self._refresh_all(node.id, framed, new=old_node is None)
        elif framed is not None:
            for node_id, session in self.sessions.items():
                if node_id != node.id and (session.known is None or node.id in session.known):
                    session.send(framed)
        own = self.sessions.get(node.id)
        if own is not None:
            self._update_self(own, node)

    def _delta_for(self, node: Node, diff: tuple[str, dict[str, Any]] | None) -> bytes | None:
        if diff is None:
            return None
        kind, payload = diff
        if kind == "patch":
            msg = mapper.delta(patches=[payload], now_ms=self.now_ms())
        else:
            msg = mapper.delta(changed=[payload], now_ms=self.now_ms())
            owner = int(payload["User"])
            if msg is not None and owner in self.profiles:
                msg["UserProfiles"] = [self.profiles[owner]]
        return encode_message(msg) if msg is not None else None

    def _node_removed(self, node_id: int | None) -> None:
        if node_id is None:
            return
        self.nodes.pop(node_id, None)
        if self.peer_dicts.pop(node_id, None) is None:
            return
        own = self.sessions.pop(node_id, None)
        if own is not None:
            own.close()
        if self.policy_active:
            self._refresh_all(gone=node_id)
            return
        msg = mapper.delta(removed=[node_id], now_ms=self.now_ms())
        assert msg is not None
        self.broadcast(msg)

    def _update_self(self, session: MapSession, node: Node) -> None:
        new = mapper.self_node(node, session.capver, self.now_ms(), self.state.owner(node).id)
        if _strip(new) != _strip(session.self_dict):
            session.self_dict = new
            session.send(encode_message({"Node": new, "ControlTime": tailcfg.go_time(self.now_ms())}))

    def _refresh_all(
        self,
        updated: int | None = None,
        framed: bytes | None = None,
        new: bool = False,
        gone: int | None = None,
    ) -> None:
        """Re-derives every session's peers and filter after the policy or the node set changed.

        Args:
            updated: a node that changed (`new`: just added); its delta `framed`
                goes to the sessions that knew it and still see it, the others
                get it whole (PeersChanged) or lose it (PeersRemoved).
            gone: a node just removed.
        """
        everyone = set(self.nodes)
        for session in list(self.sessions.values()):
            viewer = self.nodes.get(session.node_id)
            if viewer is None:
                continue
            me = {viewer.id}
            new_vis = self.visible_ids(viewer.id)
            old_set = (everyone - me) if session.known is None else session.known
            new_set = (everyone - me) if new_vis is None else new_vis
            if session.known is None:  # "all": what "all" was before this change
                if new and updated is not None:
                    old_set = old_set - {updated}
                if gone is not None:
                    old_set = old_set | {gone}
            added = {i for i in new_set - old_set if i in self.peer_dicts}
            removed = old_set - new_set
            msg: dict[str, Any] = {}
            if added:
                msg["PeersChanged"] = sorted((self.peer_dicts[i] for i in added), key=lambda p: int(p["ID"]))
                users = {int(p["User"]) for p in msg["PeersChanged"]}
                msg["UserProfiles"] = [self.profiles[u] for u in sorted(users) if u in self.profiles]
            if removed:
                msg["PeersRemoved"] = sorted(removed)
            rules = self.filter_for(viewer)
            if rules != session.packet_filter:
                session.packet_filter = rules
                msg["PacketFilter"] = rules
            session.known = None if new_vis is None else set(new_vis)
            if msg:
                msg["ControlTime"] = tailcfg.go_time(self.now_ms())
                session.send(encode_message(msg))
            if framed is not None and updated is not None and updated in old_set and updated in new_set:
                if updated != viewer.id:
                    session.send(framed)

    def broadcast(self, msg: dict[str, Any], exclude: int | None = None) -> int:
        """Encodes `msg` once and queues it on every live session but `exclude`'s; returns how many."""
        framed = encode_message(msg)
        n = 0
        for node_id, session in self.sessions.items():
            if node_id != exclude:
                session.send(framed)
                n += 1
        return n

    # --- sessions -------------------------------------------------------------------------

    def open_session(self, node: Node, capver: int, resp: Response | None) -> tuple[MapSession, bytes]:
        """Starts a long poll for `node`: returns the session and its framed full map.

        Synchronous on purpose: nothing can change between the full map and
        the session being registered for deltas.
        """
        self.load()
        old = self.sessions.get(node.id)
        if old is not None:  # a new poll replaces the old one (control.md §7.2)
            old.close()
        timer = self._offline_timers.pop(node.id, None)
        if timer is not None:
            timer.cancel()
        session = MapSession(self, node.id, capver, resp)
        self.sessions[node.id] = session
        first = encode_message(self.full_map(session, node))
        if self._keepalives is None:
            self._keepalives = asyncio.get_running_loop().create_task(self._keepalive_loop())
        return session, first

    async def _keepalive_loop(self) -> None:
        """One timer for every stream: a keep-alive to each that was silent for its interval (§7.3)."""
        period = min(1.0, self.keepalive_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.keepalive_at <= now:
                    session.send(KEEPALIVE_MESSAGE)
                    session.schedule_keepalive()

    def close_session(self, session: MapSession) -> None:
        """Forgets a finished poll; the node turns offline after the grace period."""
        session.close()
        if self.sessions.get(session.node_id) is not session:
            return
        del self.sessions[session.node_id]
        node_id = session.node_id
        if self.offline_grace_s <= 0:
            self._went_offline(node_id)
            return
        loop = asyncio.get_running_loop()
        self._offline_timers[node_id] = loop.call_later(self.offline_grace_s, self._went_offline, node_id)

    def _went_offline(self, node_id: int) -> None:
        self._offline_timers.pop(node_id, None)
        if node_id in self.sessions or node_id not in self.nodes:
            return
        self.state.set_online(node_id, False)


class Poller:
    """Answers /machine/map: authenticates, applies the request, runs or skips the long poll.

    Args:
        hub: the server's PollHub.
    """

    def __init__(self, hub: PollHub) -> None:
        self.hub = hub
        self.state = hub.state

    async def handle(self, req: Request, resp: Response) -> None:
        if req.method != "POST":
            await resp.respond(405, b"POST only\n", "text/plain")
            return
        try:
            mr = MapRequest(tailcfg.parse_object(req.body, "MapRequest"))
        except RemoteProtocolError as e:
            await resp.respond(400, (e.detail + "\n").encode(), "text/plain")
            return
        node = self.state.node_by_node_key(mr.node_key)
        if node is None:
            await resp.respond(401, b"unknown node key; register first\n", "text/plain")
            return
        if node.machine_key != req.machine_key:  # control.md §5.6
            log.warning("poll: node key %s used by machine %s", mr.node_key.short(), req.machine_key.short())
            await resp.respond(400, b"node doesn't match machine key\n", "text/plain")
            return
        if not node.authorized:
            await resp.respond(
                403, b"node is not authorized; approve it or register with a key\n", "text/plain"
            )
            return
        self.hub.load()
        # Apply what the request reports (disco key, endpoints, Hostinfo with NetInfo kept
        # when absent, home DERP, capver); peers hear of it through the hub (§12 item 5).
        self.state.update_from_map_request(
            node.id, mr.disco_key, mr.endpoints, mr.hostinfo, mr.home_derp(), capver=mr.version
        )
        if not mr.stream:
            if mr.omit_peers:  # lite update (§7.2): the body is discarded by the client
                await resp.start(200, [("content-length", "0")], end=True)
                return
            current = self.state.get_node(node.id) or node
            session = MapSession(self.hub, node.id, mr.version, None)
            body = encode_message(self.hub.full_map(session, current))
            await resp.start(200, [("content-type", "application/json; charset=utf-8")])
            await resp.write(body)
            return
        await self.long_poll(node.id, mr, resp)

    async def long_poll(self, node_id: int, mr: MapRequest, resp: Response) -> None:
        node = self.state.get_node(node_id)
        if node is None:
            await resp.respond(401, b"node was removed\n", "text/plain")
            return
        session, first = self.hub.open_session(node, mr.version, resp)
        session.send(first)
        log.info("poll: node %d %s streaming (capver %d)", node.id, node.fqdn, mr.version)
        self.state.set_online(node.id, True)
        try:
            await session.run()
        except StreamClosed:
            pass
        finally:
            log.info(
                "poll: node %d %s stream closed after %d messages", node.id, node.fqdn, session.messages_sent
            )
            self.hub.close_session(session)


def _is_member(node: Node) -> bool:
    """Whether a node belongs in netmaps: authorised and addressed (pending ones never do)."""
    return node.authorized and bool(node.ipv4)


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _SELF_VOLATILE}


def _filter_inputs_changed(old: Node | None, new: Node) -> bool:
    """Whether a node change can change anyone's compiled packet filter."""
    if old is None:
        return True
    return (old.ipv4, old.ipv6, old.user_id, _tuple(old.tags)) != (
        new.ipv4,
        new.ipv6,
        new.user_id,
        _tuple(new.tags),
    )


def _tuple(items: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(sorted(items or ()))
