"""Logging a node in: what it sends to /machine/register and what it makes of the answers.

The control loop's authRoutine half (Tailscale's controlclient.Auto,
shared/protocol/control.md §6), as steps the loop (controlloop.py) calls
with a connected `ControlClient` and the node's `StateStore`:

* `check_pinned_key`: a pinned server key (from an enrollment code) is
  compared with `GET /key` once per `start()`, so a wrong pin is a clear
  error rather than a failed handshake.
* `register_node`: a pre-auth key, or an interactive login: the AuthURL is
  reported, then a Followup waits until a person approved it. The auth key
  of `start()` is used for one successful registration and then forgotten
  (by the loop), as a restarted daemon would not have it either.
* `renew_node_key`: a new node key registered with `OldNodeKey` while the
  old one keeps working.

`ActionNeeded` ends the loop with NeedsLogin (a person must act);
`ControlError` is transient (the loop backs off and tries again).
"""

import asyncio
import logging
import re
import ssl as _ssl
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from meshlet.enroll import EnrollCode
from meshlet.key import MachinePublic

from .controlclient import ControlClient, ControlError, RegisterResult, fetch_server_key
from .statestore import StateStore

log = logging.getLogger("meshlet_agent.controlloop")

FOLLOWUP_PAUSE_S = 2.0  # a Followup answered at once (a server that does not hold it) waits this long


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


class ActionNeeded(Exception):
    """A person must act (NeedsLogin with this message); the loop ends."""


class Reconnect(Exception):
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


async def check_pinned_key(
    control_url: str, host: str, port: int, tls: _ssl.SSLContext | None, pin: MachinePublic
) -> None:
    """Raises ActionNeeded when the server's `GET /key` is not the pinned key (ControlError: no answer)."""
    seen = await fetch_server_key(host, port, ssl=tls, server_hostname=host if tls else None)
    if seen != pin:
        raise ActionNeeded(
            "the control server at %s presents key %s, but the enrollment code pinned %s: the code "
            "is for another server, or the server's key changed; get a new enrollment code"
            % (control_url, seen.to_text(), pin.to_text())
        )


async def register_node(
    client: ControlClient,
    store: StateStore,
    auth_key: str | None,
    hostinfo: dict[str, Any],
    on_auth_url: Callable[[str], None],
) -> RegisterResult:
    """Registers the node key; returns control's answer once it accepted it (the key is then stored
    as accepted). `on_auth_url` is called with each login URL a person must open.

    Raises:
        ActionNeeded: control refused (its text).
        ControlError: transport failures, an expired node key (a new one is stored to register next).
    """
    old = store.old_node_key.public() if store.old_node_key is not None else None
    eph = store.prefs.ephemeral
    result = await client.register(auth_key, hostinfo, eph, old_node_key=old)
    while True:
        if result.error:
            raise ActionNeeded("control refused the login: %s" % result.error)
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
        on_auth_url(result.auth_url)
        started = asyncio.get_running_loop().time()
        result = await client.register(None, hostinfo, eph, old_node_key=old, followup=result.auth_url)
        if result.auth_url and asyncio.get_running_loop().time() - started < FOLLOWUP_PAUSE_S:
            await asyncio.sleep(FOLLOWUP_PAUSE_S)
    store.node_key_accepted()
    log.info("control: logged in as %s", _who(result))
    return result


async def renew_node_key(client: ControlClient, store: StateStore, hostinfo: dict[str, Any]) -> str:
    """Registers a new node key with OldNodeKey while the old one still works.

    Returns why control refused (the old key is kept and still used).

    Raises:
        Reconnect: renewed; poll again with the new key.
        ControlError: control wants an interactive login for the new key, or a transport failure
            (that leaves both keys stored: the next login finishes the renewal).
    """
    old = store.node_key
    assert old is not None
    new = store.new_node_key()
    client.node = new
    log.info("control: renewing node key %s -> %s", old.public().short(), new.public().short())
    result: RegisterResult = await client.register(
        None, hostinfo, store.prefs.ephemeral, old_node_key=old.public()
    )  # a transport failure leaves both keys stored: the next login finishes the renewal
    if result.ok:
        store.node_key_accepted()
        raise Reconnect()
    if result.auth_url:
        raise ControlError("control wants a login for the renewed node key")
    store.keep_old_node_key()
    client.node = old
    text = result.error or "not authorized"
    log.warning("control: node key renewal refused: %s", text)
    return text


def _who(result: RegisterResult) -> str:
    login = result.login.get("LoginName") or result.user.get("DisplayName") or "?"
    return str(login)
