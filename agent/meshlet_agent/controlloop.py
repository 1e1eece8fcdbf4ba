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

States (`ControlStatus.state`):

| state | meaning |
| --- | --- |
| Stopped | not started, or closed |
| Authenticating | a RegisterRequest is on its way |
| NeedsLogin | a person must act: open `auth_url` (a Followup waits for it), or read `error` (a refused auth key, a wrong pinned server key, an expired node key): nothing is retried until the next `start` |
| NeedsMachineAuth | registered, but control has not authorized the machine yet (HTTP 403, or `MachineAuthorized: false`); polled with backoff |
| Connecting | registered; opening the map poll |
| Connected | the map stream is up and a netmap arrived |
| Backoff | waiting before the next attempt; `last_error` says why |
| LoggedOut | after `logout()` |

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

The auth key of `start()` is used for one successful registration and then
forgotten, as a restarted daemon would not have it either. A pinned server
key (from an enrollment code) is used for the Noise handshake and compared
with `GET /key` once per `start()`, so a wrong pin is a clear error rather
than a failed handshake.
"""

import asyncio
import logging
import os
import re
import ssl as _ssl
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from meshlet.control import netmap
from meshlet.control.netmap import NetMap
from meshlet.derp.backoff import Backoff
from meshlet.enroll import EnrollCode, EnrollCodeError, split_control_url
from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, MachinePublic, NodePrivate
from meshlet_host.statefile import StateFileError

from .controlclient import (
    LOGOUT_TIME,
    MAP_WATCHDOG_S,
    ControlClient,
    ControlError,
    RegisterResult,
    fetch_server_key,
)
from .statestore import StateStore

log = logging.getLogger("meshlet_agent.controlloop")

STOPPED = "Stopped"
AUTHENTICATING = "Authenticating"
NEEDS_LOGIN = "NeedsLogin"
NEEDS_MACHINE_AUTH = "NeedsMachineAuth"
CONNECTING = "Connecting"
CONNECTED = "Connected"
BACKOFF = "Backoff"
LOGGED_OUT = "LoggedOut"

# --- implementation constants ------------------------------------------------------

BACKOFF_MAX_S = 30.0  # Tailscale's mapRoutine: backoff.NewBackoff("mapRoutine", logf, 30*time.Second)
RENEW_BEFORE_S = 7 * 86400.0  # renew a node key a week before it expires: time to notice a refusal
RENEW_RETRY_S = 3600.0  # after a renewal (refused or not), wait this long before the next one
NETMAP_SAVE_DELAY_S = 5.0  # a burst of deltas costs one write of netmap.json
FOLLOWUP_PAUSE_S = 2.0  # a Followup answered at once (a server that does not hold it) waits this long
LOGOUT_TIMEOUT_S = 15.0


class LoginParams:
    """What `meshlet up` asks for.

    Args:
        control_url: "http(s)://host[:port]".
        auth_key: a pre-auth key; None for an interactive login (or none needed).
        server_key: the control server's key to pin (from an enrollment code).
        hostname: the name to register ("" keeps Hostinfo's).
        tags: Hostinfo.RequestTags.
        ephemeral: register as an ephemeral node.
        force_reauth: register a new node key even if the current one works.
    """

    def __init__(
        self,
        control_url: str,
        *,
        auth_key: str | None = None,
        server_key: MachinePublic | None = None,
        hostname: str = "",
        tags: Iterable[str] = (),
        ephemeral: bool = False,
        force_reauth: bool = False,
    ) -> None:
        self.control_url = control_url
        self.auth_key = auth_key or None
        self.server_key = server_key
        self.hostname = hostname
        self.tags = list(tags)
        self.ephemeral = ephemeral
        self.force_reauth = force_reauth

    @classmethod
    def from_enroll_code(cls, code: EnrollCode, **kw: Any) -> "LoginParams":
        """The parameters an enrollment code (meshlet.enroll.parse) gives, plus `kw`."""
        return cls(code.server, auth_key=code.auth_key, server_key=code.server_key, **kw)


class ControlStatus:
    """Where the loop is; `on_status` gets a copy after every change.

    Attributes:
        state: one of the states in the module docstring.
        auth_url: the URL a person must open (NeedsLogin), else "".
        error: why a person must act (NeedsLogin, LoggedOut), else "".
        last_error: the last transient failure (kept after recovery, for status output).
        connected: the map stream is up.
        netmap_seq: how many netmaps were delivered since the loop was made.
    """

    __slots__ = ("state", "auth_url", "error", "last_error", "connected", "netmap_seq")

    def __init__(self, state: str = STOPPED) -> None:
        self.state = state
        self.auth_url = ""
        self.error = ""
        self.last_error = ""
        self.connected = False
        self.netmap_seq = 0

    def copy(self) -> "ControlStatus":
        c = ControlStatus(self.state)
        for name in ControlStatus.__slots__:
            setattr(c, name, getattr(self, name))
        return c

    def __repr__(self) -> str:
        return "ControlStatus(%s%s%s)" % (
            self.state,
            " " + self.auth_url if self.auth_url else "",
            " error=%r" % self.error if self.error else "",
        )


class _Stop(Exception):
    """A person must act (NeedsLogin with this message); the loop ends."""


class _Reconnect(Exception):
    """Poll again at once (a renewed node key)."""


def go_time_s(text: str) -> float | None:
    """A Go time.Time in JSON (RFC 3339, up to 9 fractional digits) -> Unix seconds; None for
    the zero time, empty or unreadable text (treated as "never expires")."""
    if not text or text.startswith("0001-01-01"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if m is None:
        return None
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(m.group(1) + (m.group(2) or "")[:7] + tz).timestamp()
    except ValueError:
        return None


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
        self.disco = disco
        self.hostinfo = dict(hostinfo)
        self.on_netmap = on_netmap
        self.on_status = on_status
        self._ssl_context = ssl_context
        self._now_s = now_s
        self._watchdog_s = watchdog_s
        self._renew_before_s = renew_before_s
        self._renew_retry_s = renew_retry_s
        self._save_delay_s = save_delay_s
        self._backoff = Backoff(random_bytes, max_ms=int(backoff_max_s * 1000))
        self.netmap: NetMap | None = store.load_netmap()
        self.status = ControlStatus()
        self._changed = asyncio.Event()
        self._auth_key: str | None = None
        pin = store.prefs.server_key
        self._pin: MachinePublic | None = MachinePublic.from_text(pin) if pin else None
        self._pin_checked = False
        self._client: ControlClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lite_task: asyncio.Task[None] | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._netmap_dirty = False
        self._endpoints: list[str] = []
        self._home_derp = 0
        self._lite_pending = False
        self._last_renewal_s = float("-inf")
        self._skew_s = 0.0  # control's clock minus ours, from MapResponse.ControlTime

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
            self.netmap = None
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
        self._pin = pin
        self._pin_checked = False
        previous, client = self._task, self._client
        self._client = None
        self._task = asyncio.get_running_loop().create_task(self._run(previous, client))

    def set_endpoints(self, endpoints: list[str], home_derp: int) -> None:
        """New UDP endpoints and home DERP region: a lite update, coalesced with later ones.

        While the map stream is down they wait for the next MapRequest, which carries them.
        """
        self._endpoints = list(endpoints)
        self._home_derp = home_derp
        self._lite_pending = True
        self._kick_lite_update()

    async def wait_for(self, *states: str, timeout: float | None = None) -> ControlStatus:
        """The status once its state is one of `states` (now or later).

        Raises:
            TimeoutError: not within `timeout` seconds.
        """

        async def wait() -> ControlStatus:
            while self.status.state not in states:
                self._changed.clear()
                await self._changed.wait()
            return self.status.copy()

        return await asyncio.wait_for(wait(), timeout)

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
                client = await asyncio.wait_for(self._connected_client(), LOGOUT_TIMEOUT_S)
                result = await client.register(None, self._hostinfo(), expiry=LOGOUT_TIME)
                acknowledged = not result.error
                problem = result.error
            except (ControlError, _Stop, EnrollCodeError, OSError, TimeoutError) as e:
                problem = str(e) or type(e).__name__
            finally:
                await self._drop_connection()
        if problem:
            log.warning("control: logout not acknowledged: %s", problem)
        store.forget_login()
        self.netmap = None
        self._netmap_dirty = False
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
        if self._netmap_dirty:
            self._save_netmap()
        await self._drop_connection()
        self._set(STOPPED, connected=False)

    # --- status -------------------------------------------------------------------------

    def _set(self, state: str | None = None, **fields: Any) -> None:
        s = self.status
        before = s.copy()
        if state is not None:
            s.state = state
        for name, value in fields.items():
            setattr(s, name, value)
        if all(getattr(s, n) == getattr(before, n) for n in ControlStatus.__slots__):
            return
        self._changed.set()
        try:
            self.on_status(s.copy())
        except Exception:  # the callback's bug must not end the loop
            log.exception("control: on_status failed")

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
                    await self._poll()
                except _Reconnect:
                    continue
                except _Stop as e:
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
                await self._drop_connection()
                delay_s = self._backoff.failed() / 1000
                if self.status.state not in (NEEDS_MACHINE_AUTH, NEEDS_LOGIN):
                    self._set(BACKOFF)
                log.info("control: next attempt in %.1f s", delay_s)
                await asyncio.sleep(delay_s)
        finally:
            await self._drop_connection()

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

    async def _connected_client(self) -> ControlClient:
        """The ControlClient for the prefs' control URL, dialled; checks a pinned key once."""
        prefs = self.store.prefs
        scheme, host, port = split_control_url(prefs.control_url)
        tls = (self._ssl_context or _ssl.create_default_context()) if scheme == "https" else None
        if self._client is None:
            self._client = ControlClient(
                host,
                port,
                self.store.machine_key,
                self._node_key(),
                self.disco,
                server_key=self._pin,
                ssl=tls,
                server_hostname=host if tls else None,
            )
        self._client.node = self._node_key()
        if self._pin is not None and not self._pin_checked:
            seen = await fetch_server_key(host, port, ssl=tls, server_hostname=host if tls else None)
            if seen != self._pin:
                raise _Stop(
                    "the control server at %s presents key %s, but the enrollment code pinned %s: the code "
                    "is for another server, or the server's key changed; get a new enrollment code"
                    % (prefs.control_url, seen.to_text(), self._pin.to_text())
                )
            self._pin_checked = True
        await self._client.connect()
        return self._client

    def _node_key(self) -> NodePrivate:
        key = self.store.node_key
        if key is None:
            key = self.store.new_node_key()
        return key

    async def _drop_connection(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client.server_key = self._pin  # unpinned: ask GET /key again on the next dial
        self._pin_checked = False  # pinned: compare it with GET /key again, for a clear error if it changed

    async def _login(self) -> None:
        """Registers the node key; returns once control accepted it.

        Raises:
            _Stop: control refused (its text), or a wrong pinned key.
            ControlError: transport failures (the caller backs off).
        """
        store = self.store
        self._set(AUTHENTICATING, connected=False)
        client = await self._connected_client()
        old = store.old_node_key.public() if store.old_node_key is not None else None
        hostinfo = self._hostinfo()
        eph = store.prefs.ephemeral
        result = await client.register(self._auth_key, hostinfo, eph, old_node_key=old)
        while True:
            if result.error:
                raise _Stop("control refused the login: %s" % result.error)
            if result.node_key_expired:
                expired = store.node_key
                store.new_node_key()
                if store.old_node_key is None:
                    store.old_node_key = expired  # OldNodeKey tells control which node this is
                    store.save()
                raise ControlError("control says the node key has expired; registering a new one")
            if not result.auth_url:
                break
            log.info("control: to log in, open %s", result.auth_url)
            self._set(NEEDS_LOGIN, auth_url=result.auth_url)
            started = asyncio.get_running_loop().time()
            result = await client.register(None, hostinfo, eph, old_node_key=old, followup=result.auth_url)
            if result.auth_url and asyncio.get_running_loop().time() - started < FOLLOWUP_PAUSE_S:
                await asyncio.sleep(FOLLOWUP_PAUSE_S)
        store.node_key_accepted()
        self._auth_key = None
        log.info("control: logged in as %s", _who(result))
        self._set(auth_url="", error="")
        if not result.machine_authorized:
            self._set(NEEDS_MACHINE_AUTH)

    async def _poll(self) -> None:
        """Runs one map stream until it fails (raises) or a renewal asks for a new one."""
        client = await self._connected_client()
        if self.status.state != NEEDS_MACHINE_AUTH:
            self._set(CONNECTING)
        self._lite_pending = False  # this MapRequest carries the current endpoints
        stream = await client.open_map(self._endpoints, self._hostinfo(), self._home_derp)
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
        self._set(state, connected=True, error="", auth_url="", netmap_seq=self.status.netmap_seq + 1)
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
        store = self.store
        old = store.node_key
        assert old is not None
        new = store.new_node_key()
        client.node = new
        log.info("control: renewing node key %s -> %s", old.public().short(), new.public().short())
        result: RegisterResult = await client.register(
            None, self._hostinfo(), store.prefs.ephemeral, old_node_key=old.public()
        )  # a transport failure leaves both keys stored: the next login finishes the renewal
        if result.ok:
            store.node_key_accepted()
            raise _Reconnect()
        if result.auth_url:
            raise ControlError("control wants a login for the renewed node key")
        store.keep_old_node_key()
        client.node = old
        text = result.error or "not authorized"
        log.warning("control: node key renewal refused: %s", text)
        self._set(last_error="control refused to renew the node key: %s" % text)

    # --- lite updates and the netmap cache ----------------------------------------------

    def _kick_lite_update(self) -> None:
        if self.status.connected and (self._lite_task is None or self._lite_task.done()):
            self._lite_task = asyncio.get_running_loop().create_task(self._send_lite_updates())

    async def _send_lite_updates(self) -> None:
        while self._lite_pending and self.status.connected and self._client is not None:
            self._lite_pending = False
            try:
                await self._client.lite_update(
                    self._endpoints, hostinfo=self._hostinfo(), home_derp=self._home_derp
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

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._task, self._lite_task, self._save_task) if t is not None]
        self._task = self._lite_task = self._save_task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _who(result: RegisterResult) -> str:
    login = result.login.get("LoginName") or result.user.get("DisplayName") or "?"
    return str(login)
