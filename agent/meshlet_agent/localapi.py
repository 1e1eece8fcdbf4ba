"""The local API: JSON lines over Unix sockets, between the `meshlet` CLI and a running agent.

Two kinds of server use it:

    /run/meshlet/meshletd.sock  `meshlet daemon` (the tailnet agent): mode 0660, owner root,
                                group root or `--socket-group`; requests up, down, logout,
                                status, ip, ping, whois (docs/agent-internals.md)
    /run/meshlet/wg/<if>.sock   one per `meshlet wg up`: mode 0600 in a 0700 directory;
                                request status, for `meshlet wg show`

The protocol is one JSON object per line in each direction, then the server
closes the connection:

    -> {"request": "status", ...arguments}
    <- {"ok": true, "status": {...}}
    <- {"ok": false, "error": "unknown request 'x'; this daemon knows: down, ip, ..."}

A request line is limited to MAX_REQUEST_BYTES and must arrive within
REQUEST_TIMEOUT_S; a handler gets HANDLER_TIMEOUT_S (ping and up bound their
own waits below that). Who may connect is decided by the socket's mode and
group, as for tailscaled's socket. A socket file left behind by a crashed
agent is detected (nothing answers on it) and replaced; a live one makes
start-up fail with a clear message.

`MESHLET_RUN_DIR` moves the base directory (default /run/meshlet) and
`MESHLET_SOCKET` the daemon's socket, e.g. for tests run without root.
"""

import asyncio
import errno
import grp
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import knobs

log = logging.getLogger("meshlet_agent.localapi")

MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 5.0
HANDLER_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 64 << 20  # a status with thousands of peers stays far below this

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Gets the request object, returns the reply's fields (`ok: true` is added).

It refuses with RequestError, whose message reaches the client."""


class LocalApiError(Exception):
    """The socket could not be served or reached; the message names the fix."""


class NotRunningError(LocalApiError):
    """Nothing listens on the socket (no file, or a stale one)."""


class SocketPermissionError(LocalApiError):
    """The socket exists but this user may not connect to it."""


class RefusedError(LocalApiError):
    """The server answered `ok: false`; `reason` is its error text, which names the fix."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__("%s refused the request: %s" % (path, reason))
        self.path = path
        self.reason = reason


class RequestError(Exception):
    """Raised by a handler to refuse a request; the message (problem and fix) goes to the client."""


# --- server ---------------------------------------------------------------------------


class Server:
    """Serves `handlers` by request name on a Unix socket while the event loop runs.

    Args:
        path: the socket file.
        handlers: request name -> Handler.
        mode: the socket's permission bits (0600: root only; 0660: root and `group`).
        group: a group name or numeric id that may connect (with mode 0660), or None.
        dir_mode: the mode for the socket's directory when this creates it.
        busy_hint: how to find the live server, for the "already running" error.
    """

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        mode: int = 0o600,
        group: "str | None" = None,
        dir_mode: int = 0o700,
        busy_hint: str = "stop it first",
    ) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._mode = mode
        self._gid = resolve_group(group) if group else None
        self._dir_mode = dir_mode
        self._busy_hint = busy_hint
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Creates the directory (if missing) and the socket with its mode and group.

        Raises:
            LocalApiError: another server answers on the socket, or the directory is unusable.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=self._dir_mode, exist_ok=True)
                os.chmod(directory, self._dir_mode)
        except OSError as e:
            raise LocalApiError(
                "cannot create %s: %s; run as root or set MESHLET_RUN_DIR (or --socket) to a writable place"
                % (directory, e.strerror)
            ) from None
        if os.path.lexists(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise LocalApiError(
                    "%s exists and is not a socket; remove it or choose another path" % self.path
                )
            if _alive(self.path):
                raise LocalApiError(
                    "%s is served by another running meshlet; %s" % (self.path, self._busy_hint)
                )
            log.info("localapi: replacing the stale socket %s", self.path)
            os.unlink(self.path)
        old = os.umask(0o177)  # never a moment with a wider mode than 0600
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST_BYTES + 2
            )
        except OSError as e:
            raise LocalApiError(
                "cannot listen on %s: %s; check the directory's permissions" % (self.path, e.strerror)
            ) from None
        finally:
            os.umask(old)
        if self._gid is not None:
            os.chown(self.path, -1, self._gid)
        os.chmod(self.path, self._mode)
        log.debug("localapi: listening on %s (mode %04o)", self.path, self._mode)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT_S)
            except asyncio.IncompleteReadError as e:
                line = e.partial  # a request without its newline, then EOF: still one request
            reply = await self.answer(line)
        except (asyncio.LimitOverrunError, ValueError):
            reply = _refusal("request longer than %d bytes" % MAX_REQUEST_BYTES)
        except asyncio.TimeoutError:
            reply = _refusal("request line not received within %.0f s" % REQUEST_TIMEOUT_S)
        except (ConnectionError, OSError):
            writer.close()
            return
        try:
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (also used by tests without a socket)."""
        if len(line) > MAX_REQUEST_BYTES:
            return _refusal("request longer than %d bytes" % MAX_REQUEST_BYTES)
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _refusal("request is not JSON; send one JSON object and a newline")
        what = req.get("request") if isinstance(req, dict) else None
        handler = self._handlers.get(what) if isinstance(what, str) else None
        if handler is None:
            return _refusal(
                "unknown request %r; this server knows: %s (are the CLI and the agent the same version?)"
                % (what, ", ".join(sorted(self._handlers)))
            )
        try:
            body = await asyncio.wait_for(handler(req), HANDLER_TIMEOUT_S)
        except RequestError as e:
            return _refusal(str(e))
        except asyncio.TimeoutError:
            return _refusal("%s took longer than %.0f s; see the agent's log" % (what, HANDLER_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - one broken request must not take the agent down
            log.exception("localapi: %s failed", what)
            return _refusal("%s failed inside the agent (a bug); its log has the details" % what)
        out: dict[str, Any] = {"ok": True}
        out.update(body)
        return out


def _refusal(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def resolve_group(group: str) -> int:
    """A group name or number -> gid.

    Raises:
        LocalApiError: no such group.
    """
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LocalApiError(
            "no group %r; create it (`groupadd %s`) or pass an existing --socket-group" % (group, group)
        ) from None


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


# --- client (blocking, for the CLI) -------------------------------------------------------


def call(path: str, req: Mapping[str, Any], timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """Sends one request to the server at `path` and returns its `ok: true` reply.

    Raises:
        NotRunningError: no server listens there.
        SocketPermissionError: this user may not connect.
        RefusedError: the server answered `ok: false` (its reason names the fix).
        LocalApiError: the server hung or answered something that is not a reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NotRunningError("nothing is listening on %s" % path) from None
        except PermissionError:
            raise SocketPermissionError("cannot connect to %s: permission denied" % path) from None
        except OSError as e:
            if e.errno == errno.ENOTSOCK:
                raise NotRunningError("%s is not a socket" % path) from None
            raise LocalApiError("cannot connect to %s: %s" % (path, e.strerror)) from None
        chunks: list[bytes] = []
        size = 0
        try:
            s.sendall(json.dumps(dict(req), separators=(",", ":")).encode() + b"\n")
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise LocalApiError(
                        "%s answered more than %d bytes; is it a meshlet socket?" % (path, size)
                    )
        except socket.timeout:
            raise LocalApiError(
                "%s did not answer within %.0f s; is the agent stuck? (its log may say why)"
                % (path, timeout_s)
            ) from None
        except OSError as e:
            raise LocalApiError("talking to %s failed: %s; is the agent stuck?" % (path, e)) from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise LocalApiError(
            "%s answered something that is not JSON; is it a meshlet socket?" % path
        ) from None
    if not isinstance(reply, dict):
        raise LocalApiError("%s answered something that is not a JSON object; is it a meshlet socket?" % path)
    if not reply.get("ok"):
        raise RefusedError(path, str(reply.get("error") or "no reason given"))
    return reply


# --- `meshlet wg up` sockets ---------------------------------------------------------------


def run_dir() -> str:
    return os.path.join(knobs.run_dir(), "wg")


def socket_path(ifname: str) -> str:
    return os.path.join(run_dir(), ifname + ".sock")


def list_interfaces() -> list[str]:
    """Names of interfaces with a socket file, sorted (some may be stale)."""
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    return sorted(n[: -len(".sock")] for n in names if n.endswith(".sock"))


class LocalApi(Server):
    """`meshlet wg up`'s socket: serves `status()` for `meshlet wg show`, root only."""

    def __init__(self, ifname: str, status: Callable[[], dict[str, Any]]) -> None:
        async def handle_status(req: dict[str, Any]) -> dict[str, Any]:
            return {"status": status()}

        super().__init__(
            socket_path(ifname),
            {"status": handle_status},
            mode=0o600,
            dir_mode=0o700,
            busy_hint="stop it first (`meshlet wg show %s`)" % ifname,
        )
        self.ifname = ifname

    async def start(self) -> None:
        """As Server.start, and the directory is kept at 0700 even if it existed."""
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as e:
            raise LocalApiError(
                "cannot create %s: %s; run as root or set MESHLET_RUN_DIR to a writable directory"
                % (directory, e.strerror)
            ) from None
        await super().start()


def request(ifname: str, what: str = "status") -> dict[str, Any]:
    """Asks a running `meshlet wg up` (blocking; for the CLI).

    Raises:
        LocalApiError: nothing serves the interface, permission denied, or a bad answer.
    """
    path = socket_path(ifname)
    try:
        reply = call(path, {"request": what})
    except NotRunningError:
        raise LocalApiError(
            "no meshlet interface %s is running (no %s); start it with `meshlet wg up`" % (ifname, path)
        ) from None
    except SocketPermissionError:
        raise LocalApiError("cannot reach %s: permission denied; run as root" % path) from None
    result = reply.get(what)
    if not isinstance(result, dict):
        raise LocalApiError("%s answered without %r; agent and CLI versions differ?" % (path, what))
    return result
