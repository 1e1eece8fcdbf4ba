"""Where a node stands with its control server, and who is told when that changes.

The control loop (controlloop.py) moves through these states; the daemon
shows them to the user (`meshlet status`) and tests wait for them:

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
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("meshlet_agent.controlloop")

STOPPED = "Stopped"
AUTHENTICATING = "Authenticating"
NEEDS_LOGIN = "NeedsLogin"
NEEDS_MACHINE_AUTH = "NeedsMachineAuth"
CONNECTING = "Connecting"
CONNECTED = "Connected"
BACKOFF = "Backoff"
LOGGED_OUT = "LoggedOut"


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


class StatusBoard:
    """One ControlStatus that tells `on_status` (a copy) and any `wait_for` of each real change.

    Setting a field to the value it has is no change: nobody is told.
    """

    def __init__(self, on_status: Callable[[ControlStatus], None]) -> None:
        self.status = ControlStatus()
        self._on_status = on_status
        self._changed = asyncio.Event()

    def set(self, state: str | None = None, **fields: Any) -> None:
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
            self._on_status(s.copy())
        except Exception:  # the callback's bug must not end the loop
            log.exception("control: on_status failed")

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
