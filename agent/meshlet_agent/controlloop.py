"""One node's life with its control server: log in, follow the map, come back after failures.

Tailscale's controlclient.Auto (its authRoutine and mapRoutine, shared/protocol/
control.md §3) on asyncio, over `controlclient.ControlClient`, with the
node's keys and preferences in a `statestore.StateStore`.

    start(params) ──> node key registered? ──no──> login ──────────────┐
                             │ yes                 register (auth key) │
                             ▼                     or AuthURL, then    │
                  map poll: open, full map,  <──── Followup until      │
                  deltas, keep-alives              approved ───────────┘
                  on_netmap(nm) after each;        refused: NeedsLogin + error, stop
                  saved (debounced)
                             │ failure: transport, HTTP, bad message, 120 s of silence
                             ▼
                  Backoff: wait n² × 10 ms × [0.5, 1.5), capped at 30 s (Tailscale's
                  mapRoutine backoff), reset by every netmap; then dial again

The states (`ControlStatus.state`) are listed in controlstatus.py; the
registration steps are controllogin.py's.

What control's answers do (servers/meshlet_control/auth.py has its side):

* HTTP 401 on the map poll (control does not know the node key: deleted, or
  a new database): register again, which is interactive without an auth key.
* HTTP 403 (not authorized): NeedsMachineAuth, polled with backoff.
* `NodeKeyExpired` in a RegisterResponse, or a self node whose `KeyExpiry`
  has passed: a new node key, registered with `OldNodeKey` = the old one.
  Without a fresh auth key that is an interactive login (NeedsLogin + URL).
* A self node whose `KeyExpiry` is less than `renew_before_s` away: renewal.
  A new node key is registered with `OldNodeKey` and no auth key while the
  old one keeps working (meshlet-control renews such a key seamlessly). If
  control refuses, the old key stays and renewal is tried again after
  `renew_retry_s`; if it asks for an interactive login, that is the state.
* `Error` in a RegisterResponse (e.g. "authkey already used", "invalid
  authkey"): NeedsLogin with that text in `error`, and the loop stops: no
  retry storm with a key that will not work.
"""

import asyncio
import logging
import os
import ssl as _ssl
import time
from collections.abc import Callable
from typing import Any

from meshlet.control.netmap import NetMap
from meshlet.control.requests import LOGOUT_TIME
from meshlet.derp.backoff import Backoff
from meshlet.enroll import EnrollCodeError, split_control_url
from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, MachinePublic
from meshlet_host.statefile import StateFileError

from .controlclient import MAP_WATCHDOG_S, ControlClient, ControlError
from .controldialer import ControlDialer
from .controllogin import ActionNeeded, LoginParams, Reconnect, go_time_s, register_node
from .controlpoll import MapPoll
from .controlstatus import (
    AUTHENTICATING,
    BACKOFF,
    CONNECTED,
    CONNECTING,
    LOGGED_OUT,
    NEEDS_LOGIN,
    NEEDS_MACHINE_AUTH,
    STOPPED,
    ControlStatus,
    StatusBoard,
)
from .statestore import StateStore

# What callers and tests import from here.
__all__ = [
    "AUTHENTICATING",
    "BACKOFF",
    "CONNECTED",
    "CONNECTING",
    "LOGGED_OUT",
    "NEEDS_LOGIN",
    "NEEDS_MACHINE_AUTH",
    "STOPPED",
    "ControlLoop",
    "ControlStatus",
    "LoginParams",
    "go_time_s",
]

log = logging.getLogger("meshlet_agent.controlloop")

# --- implementation constants ------------------------------------------------------

BACKOFF_MAX_S = 30.0  # Tailscale's mapRoutine: backoff.NewBackoff("mapRoutine", logf, 30*time.Second)
RENEW_BEFORE_S = 7 * 86400.0  # renew a node key a week before it expires: time to notice a refusal
RENEW_RETRY_S = 3600.0  # after a renewal (refused or not), wait this long before the next one
NETMAP_SAVE_DELAY_S = 5.0  # a burst of deltas costs one write of netmap.json
LOGOUT_TIMEOUT_S = 15.0


class ControlLoop:
    """Keeps one node logged in to its control server and its netmap current.

    Args:
        store: the node's keys, preferences and netmap cache.
        disco: this run's disco public key (sent in every MapRequest).
        hostinfo: Hostinfo to report (Hostname and RequestTags come from the prefs).
        on_netmap: called with the NetMap after every change (the same object
            while one map stream lasts; a new one after each redial).
        on_status: called with a copy of the status after every change.
        random_bytes: randomness for new node keys, Noise and backoff jitter.
        ssl_context: for an https control URL (default: the system's trust store).
        now_s: the wall clock; with control's ControlTime it tells when KeyExpiry comes.
        watchdog_s: a map stream silent this long is redialled (Tailscale: 120 s).
        renew_before_s, renew_retry_s: node key renewal (module docstring).
        backoff_max_s: the cap on the delay between attempts.
        save_delay_s: how long after a change the netmap is written.

    Attributes:
        netmap: the current NetMap; at first the cached one (None if there is
            none), so the data plane can start before control answers.
        status: the current ControlStatus.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        disco: DiscoPublic,
        hostinfo: dict[str, Any],
        on_netmap: Callable[[NetMap], None],
        on_status: Callable[[ControlStatus], None],
        random_bytes: Callable[[int], bytes] = os.urandom,
        ssl_context: _ssl.SSLContext | None = None,
        now_s: Callable[[], float] = time.time,
        watchdog_s: float = MAP_WATCHDOG_S,
        renew_before_s: float = RENEW_BEFORE_S,
        renew_retry_s: float = RENEW_RETRY_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        save_delay_s: float = NETMAP_SAVE_DELAY_S,
    ) -> None:
        self.store = store
        self.hostinfo = dict(hostinfo)
        self._backoff = Backoff(random_bytes, max_ms=int(backoff_max_s * 1000))
        self._board = StatusBoard(on_status)
        self._dialer = ControlDialer(store, disco, ssl_context)
        self._poll = MapPoll(
            store,
            self._board,
            self._dialer,
            self._hostinfo,
            on_netmap,
            self._backoff,
            now_s=now_s,
            watchdog_s=watchdog_s,
            renew_before_s=renew_before_s,
            renew_retry_s=renew_retry_s,
            save_delay_s=save_delay_s,
        )
        self._auth_key: str | None = None
        self._task: asyncio.Task[None] | None = None

    # --- the public side ----------------------------------------------------------------

    def start(self, params: LoginParams) -> None:
        """Logs in (if needed) and follows the map, in the background, until close/logout.

        Writes the prefs. Starting again replaces the previous run. A new
        control URL drops the node key and the cached netmap (the old key
        means nothing to another server).

        Raises:
            ValueError: the control URL is unusable (the message names the fix).
            StateFileError: the state cannot be written.
        """
        url = params.control_url.strip().rstrip("/")
        try:
            split_control_url(url)
        except EnrollCodeError as e:
            raise ValueError(
                "bad control URL %r: %s; give it as http(s)://HOST[:PORT]" % (params.control_url, e.detail)
            ) from None
        store, prefs = self.store, self.store.prefs
        new_server = bool(prefs.control_url) and prefs.control_url != url
        pin = params.server_key
        if pin is None and prefs.server_key and not new_server:
            pin = MachinePublic.from_text(prefs.server_key)
        if new_server:
            store.registered = False
            store.old_node_key = None
            store.clear_netmap()
            self._poll.netmap = None
        if new_server or params.force_reauth or store.node_key is None:
            store.new_node_key()
        prefs.control_url = url
        prefs.server_key = pin.to_text() if pin is not None else ""
        prefs.hostname = params.hostname
        prefs.advertise_tags = list(params.tags)
        prefs.ephemeral = params.ephemeral
        prefs.logged_out = False
        prefs.want_running = True
        store.save()
        self._auth_key = params.auth_key
        self._set(error="", auth_url="")
        previous, client = self._task, self._dialer.restart(pin)
        self._task = asyncio.get_running_loop().create_task(self._run(previous, client))

    def set_endpoints(
        self, endpoints: list[str], home_derp: int, endpoint_types: list[int] | None = None
    ) -> None:
        """New UDP endpoints (and their EndpointTypes; None: all local) and home DERP region:
        a lite update, coalesced with later ones.

        While the map stream is down they wait for the next MapRequest, which carries them.
        """
        self._poll.set_endpoints(endpoints, home_derp, endpoint_types)

    async def wait_for(self, *states: str, timeout: float | None = None) -> ControlStatus:
        """The status once its state is one of `states` (now or later).

        Raises:
            TimeoutError: not within `timeout` seconds.
        """
        return await self._board.wait_for(*states, timeout=timeout)

    async def logout(self) -> bool:
        """Expires the node key at control (a RegisterRequest with Expiry in the past, as
        `tailscale logout` sends) and forgets it here, with the cached netmap.

        The local state is cleared even if control cannot be reached; then
        `status.error` says so (an admin can delete the node there).

        Returns:
            Whether control acknowledged the logout.
        """
        await self._stop_tasks()
        acknowledged = False
        problem = ""
        store = self.store
        if store.node_key is not None and store.prefs.control_url:
            try:
                client = await asyncio.wait_for(self._dialer.connected(), LOGOUT_TIMEOUT_S)
                result = await client.register(None, self._hostinfo(), expiry=LOGOUT_TIME)
                acknowledged = not result.error
                problem = result.error
            except (ControlError, ActionNeeded, EnrollCodeError, OSError, TimeoutError) as e:
                problem = str(e) or type(e).__name__
            finally:
                await self._dialer.drop()
        if problem:
            log.warning("control: logout not acknowledged: %s", problem)
        store.forget_login()
        self._poll.forget()
        error = ""
        if problem:
            error = (
                "control was not told of the logout (%s); remove the node there if it is still listed"
                % problem
            )
        self._set(LOGGED_OUT, auth_url="", error=error, connected=False)
        return acknowledged

    async def close(self) -> None:
        """Stops the loop, writes a pending netmap and closes the connection."""
        await self._stop_tasks()
        self._poll.flush()
        await self._dialer.drop()
        self._set(STOPPED, connected=False)

    @property
    def netmap(self) -> NetMap | None:
        """The current NetMap; at first the cached one (None if there is none)."""
        return self._poll.netmap

    @netmap.setter
    def netmap(self, nm: NetMap | None) -> None:
        self._poll.netmap = nm

    @property
    def status(self) -> ControlStatus:
        """The current ControlStatus (the loop's own: copy what must not change)."""
        return self._board.status

    # --- status -------------------------------------------------------------------------

    def _set(self, state: str | None = None, **fields: Any) -> None:
        self._board.set(state, **fields)

    def _hostinfo(self) -> dict[str, Any]:
        hi = dict(self.hostinfo)
        prefs = self.store.prefs
        if prefs.hostname:
            hi["Hostname"] = prefs.hostname
        if prefs.advertise_tags:
            hi["RequestTags"] = list(prefs.advertise_tags)
        return hi

    # --- the loop -----------------------------------------------------------------------

    async def _run(self, previous: asyncio.Task[None] | None, old_client: ControlClient | None) -> None:
        if previous is not None:
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
        if old_client is not None:
            await old_client.close()
        self._backoff.reset()
        try:
            while True:
                try:
                    if not self.store.registered:
                        await self._login()
                    await self._poll.run(await self._dialer.connected())
                except Reconnect:
                    continue
                except ActionNeeded as e:
                    log.warning("control: %s", e)
                    self._set(NEEDS_LOGIN, error=str(e), connected=False)
                    return
                except (ControlError, RemoteProtocolError, OSError, EOFError) as e:
                    self._failed(e)
                except StateFileError as e:
                    log.error("control: %s", e)
                    self._set(BACKOFF, last_error=str(e), connected=False)
                except Exception as e:  # a bug: keep the node trying rather than dead
                    log.exception("control: unexpected failure")
                    self._set(BACKOFF, last_error=repr(e), connected=False)
                await self._dialer.drop()
                delay_s = self._backoff.failed() / 1000
                if self.status.state not in (NEEDS_MACHINE_AUTH, NEEDS_LOGIN):
                    self._set(BACKOFF)
                log.info("control: next attempt in %.1f s", delay_s)
                await asyncio.sleep(delay_s)
        finally:
            await self._dialer.drop()

    def _failed(self, e: BaseException) -> None:
        text = str(e) or type(e).__name__
        status = e.status if isinstance(e, ControlError) else 0
        if status == 401:
            log.warning("control: the node key is unknown to control; registering again")
            self.store.registered = False
            try:
                self.store.save()
            except StateFileError as err:
                log.error("control: %s", err)
            self._set(last_error=text, connected=False)
        elif status == 403:
            log.warning("control: the node is not authorized yet: %s", text)
            self._set(NEEDS_MACHINE_AUTH, last_error=text, connected=False)
        else:
            log.warning("control: %s", text)
            self._set(BACKOFF, last_error=text, connected=False)

    async def _login(self) -> None:
        """Registers the node key; returns once control accepted it.

        Raises:
            ActionNeeded: control refused (its text), or a wrong pinned key.
            ControlError: transport failures (the caller backs off).
        """
        self._set(AUTHENTICATING, connected=False)
        client = await self._dialer.connected()
        result = await register_node(
            client,
            self.store,
            self._auth_key,
            self._hostinfo(),
            lambda url: self._set(NEEDS_LOGIN, auth_url=url),
        )
        self._auth_key = None
        self._set(auth_url="", error="")
        if not result.machine_authorized:
            self._set(NEEDS_MACHINE_AUTH)

    async def _stop_tasks(self) -> None:
        tasks = [t for t in [self._task, *self._poll.take_tasks()] if t is not None]
        self._task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
