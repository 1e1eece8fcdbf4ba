"""The local API: one Unix socket per interface for `meshlet wg show`.

    /run/meshlet/wg/            directory, mode 0700, owned by root
    /run/meshlet/wg/<if>.sock   socket, mode 0600, one per running `meshlet wg up`

The protocol is one JSON object per line in each direction, then the server
closes the connection:

    -> {"request": "status"}
    <- {"ok": true, "status": {...}}          (Engine.status())
    <- {"ok": false, "error": "unknown request 'x'"}

Requests are limited to MAX_REQUEST_BYTES and REQUEST_TIMEOUT_S. Only root
can connect (the socket's mode), which is what `wg show` requires as well.
A socket file left behind by a crashed agent is detected (nothing answers
on it) and replaced; a live one makes start-up fail with a clear message.

`MESHLET_RUN_DIR` moves the base directory (default /run/meshlet), e.g. for
tests run without root.
"""

import asyncio
import json
import logging
import os
import socket
from typing import Any, Callable

from . import knobs

log = logging.getLogger("meshlet_agent.localapi")

MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 5.0
CLIENT_TIMEOUT_S = 5.0


class LocalApiError(Exception):
    """The socket could not be served or reached; the message names the fix."""


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


class LocalApi:
    """Serves `status()` on the interface's socket while the event loop runs."""

    def __init__(self, ifname: str, status: Callable[[], dict[str, Any]]) -> None:
        self.ifname = ifname
        self.path = socket_path(ifname)
        self._status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Creates the directory and socket with safe modes.

        Raises:
            LocalApiError: another agent serves this interface, or the directory is unusable.
        """
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as e:
            raise LocalApiError(
                "cannot create %s: %s; run as root or set MESHLET_RUN_DIR to a writable directory"
                % (directory, e.strerror)
            ) from None
        if os.path.exists(self.path):
            if _alive(self.path):
                raise LocalApiError(
                    "%s is served by another running meshlet; stop it first (`meshlet wg show %s`)"
                    % (self.path, self.ifname)
                )
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.debug("localapi: listening on %s", self.path)

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
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            reply = self._answer(line)
        except (asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError):
            reply = {"ok": False, "error": "request too slow or too long"}
        try:
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST_BYTES:
            return {"ok": False, "error": "request longer than %d bytes" % MAX_REQUEST_BYTES}
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        what = req.get("request") if isinstance(req, dict) else None
        if what == "status":
            return {"ok": True, "status": self._status()}
        return {"ok": False, "error": "unknown request %r" % (what,)}


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def request(ifname: str, what: str = "status") -> dict[str, Any]:
    """Asks a running agent (blocking; for the CLI).

    Raises:
        LocalApiError: nothing serves the interface, permission denied, or a bad answer.
    """
    path = socket_path(ifname)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CLIENT_TIMEOUT_S)
        try:
            s.connect(path)
            s.sendall(json.dumps({"request": what}).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (FileNotFoundError, ConnectionRefusedError):
            raise LocalApiError(
                "no meshlet interface %s is running (no %s); start it with `meshlet wg up`" % (ifname, path)
            ) from None
        except PermissionError:
            raise LocalApiError("cannot reach %s: permission denied; run as root" % path) from None
        except OSError as e:
            raise LocalApiError("talking to %s failed: %s; is the agent stuck?" % (path, e)) from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise LocalApiError(
            "%s answered something that is not JSON; is it a meshlet socket?" % path
        ) from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error") if isinstance(reply, dict) else reply
        raise LocalApiError("%s refused the request: %s" % (path, err))
    result = reply.get(what)
    if not isinstance(result, dict):
        raise LocalApiError("%s answered without %r; agent and CLI versions differ?" % (path, what))
    return result
