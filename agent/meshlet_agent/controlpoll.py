"""The map side of the control loop: the long poll, the netmap it builds, and what goes back up.

Tailscale's mapRoutine (shared/protocol/control.md §7), for the control loop
(controlloop.py), which logs in first and backs off after each failure:

* `run(client)` follows one map stream: a full map, then deltas and
  keep-alives, each applied to a fresh NetMap and handed to `on_netmap`.
  It returns only by raising: the stream failed, control ended it, 120 s
  of silence, the node key expired (a new one is stored), or a renewal
  asks for a new stream (`Reconnect`).
* The node key's expiry is read on control's clock (MapResponse
  ControlTime), not ours: a board without a real-time clock may boot far off
  the right time. Less than `renew_before_s` before it, the key is renewed
  (controllogin.renew_node_key), at most once per `renew_retry_s`.
* `set_endpoints` reports new endpoints with lite updates while the stream is
  up; while it is down they wait for the next MapRequest, which carries them.
* The netmap is written to the store `save_delay_s` after a change, so a
  burst of deltas costs one write.
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from meshlet.control import netmap
from meshlet.control.netmap import NetMap
from meshlet.derp.backoff import Backoff
from meshlet_host.statefile import StateFileError

from .controlclient import ControlClient, ControlError
from .controldialer import ControlDialer
from .controllogin import go_time_s, renew_node_key
from .controlstatus import CONNECTED, CONNECTING, NEEDS_MACHINE_AUTH, StatusBoard
from .statestore import StateStore

log = logging.getLogger("meshlet_agent.controlloop")


class MapPoll:
    """The loop's map stream, its netmap, lite updates and the netmap cache.

    Args (the loop's, see ControlLoop): store, the StatusBoard, the dialer
    (for lite updates), `hostinfo()` (what to report), `on_netmap`, the loop's
    Backoff (reset by every netmap), `now_s`, `watchdog_s`, `renew_before_s`,
    `renew_retry_s`, `save_delay_s`.

    Attributes:
        netmap: the current NetMap; at first the cached one (None if there is none).
    """

    def __init__(
        self,
        store: StateStore,
        board: StatusBoard,
        dialer: ControlDialer,
        hostinfo: Callable[[], dict[str, Any]],
        on_netmap: Callable[[NetMap], None],
        backoff: Backoff,
        *,
        now_s: Callable[[], float],
        watchdog_s: float,
        renew_before_s: float,
        renew_retry_s: float,
        save_delay_s: float,
    ) -> None:
        self.store = store
        self._board = board
        self._dialer = dialer
        self._hostinfo = hostinfo
        self.on_netmap = on_netmap
        self._backoff = backoff
        self._now_s = now_s
        self._watchdog_s = watchdog_s
        self._renew_before_s = renew_before_s
        self._renew_retry_s = renew_retry_s
        self._save_delay_s = save_delay_s
        self.netmap: NetMap | None = store.load_netmap()
        self._lite_task: asyncio.Task[None] | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._netmap_dirty = False
        self._endpoints: list[str] = []
        self._endpoint_types: list[int] | None = None  # None: all local (type 1)
        self._home_derp = 0
        self._lite_pending = False
        self._last_renewal_s = float("-inf")
        self._skew_s = 0.0  # control's clock minus ours, from MapResponse.ControlTime

    def _set(self, state: str | None = None, **fields: Any) -> None:
        self._board.set(state, **fields)

    async def run(self, client: ControlClient) -> None:
        """Runs one map stream until it fails (raises) or a renewal asks for a new one."""
        if self._board.status.state != NEEDS_MACHINE_AUTH:
            self._set(CONNECTING)
        self._lite_pending = False  # this MapRequest carries the current endpoints
        stream = await client.open_map(
            self._endpoints, self._hostinfo(), self._home_derp, self._endpoint_types
        )
        nm = NetMap()
        try:
            while True:
                try:
                    msg = await stream.next(self._watchdog_s)
                except EOFError:
                    raise ControlError("control ended the map stream") from None
                self._note_control_time(msg.get("ControlTime"))
                if netmap.is_keepalive(msg):
                    continue
                nm.apply(msg)
                await self._got_netmap(nm, client)
        finally:
            if client.conn is not None:
                client.conn.cancel(stream.stream)

    def _note_control_time(self, text: object) -> None:
        """Control's clock: KeyExpiry is compared with it, not with ours (a board without a
        real-time clock may boot far off the right time)."""
        t = go_time_s(text) if isinstance(text, str) else None
        if t is not None:
            self._skew_s = t - self._now_s()

    async def _got_netmap(self, nm: NetMap, client: ControlClient) -> None:
        me = nm.self_node
        assert me is not None  # apply() insists on it
        self.netmap = nm
        self._backoff.reset()
        expiry = go_time_s(me.key_expiry)
        now = self._now_s() + self._skew_s
        if expiry is not None and expiry <= now:
            self.store.new_node_key()
            raise ControlError("the node key expired at %s; logging in again" % me.key_expiry)
        state = CONNECTED if me.machine_authorized else NEEDS_MACHINE_AUTH
        status = self._board.status
        self._set(state, connected=True, error="", auth_url="", netmap_seq=status.netmap_seq + 1)
        try:
            self.on_netmap(nm)
        except Exception:
            log.exception("control: on_netmap failed")
        self._netmap_dirty = True
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save_later())
        if self._lite_pending:
            self._kick_lite_update()
        due = expiry is not None and expiry - now < self._renew_before_s
        if due and now - self._last_renewal_s >= self._renew_retry_s:
            self._last_renewal_s = now
            await self._renew(client)

    async def _renew(self, client: ControlClient) -> None:
        """Registers a new node key with OldNodeKey while the old one still works."""
        text = await renew_node_key(client, self.store, self._hostinfo())
        self._set(last_error="control refused to renew the node key: %s" % text)

    # --- lite updates and the netmap cache ----------------------------------------------

    def set_endpoints(
        self, endpoints: list[str], home_derp: int, endpoint_types: list[int] | None = None
    ) -> None:
        """New UDP endpoints (with their tailcfg.EndpointType) and home DERP region: a lite update,
        coalesced with later ones."""
        self._endpoints = list(endpoints)
        self._endpoint_types = list(endpoint_types) if endpoint_types else None
        self._home_derp = home_derp
        self._lite_pending = True
        self._kick_lite_update()

    def _kick_lite_update(self) -> None:
        if self._board.status.connected and (self._lite_task is None or self._lite_task.done()):
            self._lite_task = asyncio.get_running_loop().create_task(self._send_lite_updates())

    async def _send_lite_updates(self) -> None:
        while self._lite_pending and self._board.status.connected and self._dialer.client is not None:
            self._lite_pending = False
            try:
                await self._dialer.client.lite_update(
                    self._endpoints,
                    hostinfo=self._hostinfo(),
                    home_derp=self._home_derp,
                    endpoint_types=self._endpoint_types,
                )
            except ControlError as e:
                log.info("control: lite update failed (the next map request carries it): %s", e)
                self._lite_pending = True
                return

    async def _save_later(self) -> None:
        await asyncio.sleep(self._save_delay_s)
        self._save_netmap()

    def _save_netmap(self) -> None:
        self._netmap_dirty = False
        if self.netmap is None or not self.store.registered:
            return
        try:
            self.store.save_netmap(self.netmap)
        except StateFileError as e:
            log.warning("control: cannot cache the netmap: %s", e)

    def flush(self) -> None:
        """Writes a netmap change that is still waiting for its delay."""
        if self._netmap_dirty:
            self._save_netmap()

    def forget(self) -> None:
        """No netmap (a logout, another control server); nothing is written."""
        self.netmap = None
        self._netmap_dirty = False

    def take_tasks(self) -> list[asyncio.Task[None]]:
        """The background tasks (lite update, delayed save), for the caller to cancel."""
        tasks = [t for t in (self._lite_task, self._save_task) if t is not None]
        self._lite_task = self._save_task = None
        return tasks
