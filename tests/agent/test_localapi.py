"""The local API (agent/meshlet_agent/localapi.py): JSON lines over a Unix socket, bounded and guarded."""

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshlet_agent import localapi


async def echo(req: dict[str, Any]) -> dict[str, Any]:
    return {"echo": req}


async def refuse(req: dict[str, Any]) -> dict[str, Any]:
    raise localapi.RequestError("no peer named x: meshlet status lists the names")


async def broken(req: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("oops")


HANDLERS: dict[str, localapi.Handler] = {"echo": echo, "refuse": refuse, "broken": broken}


def serve(path: str, body: Callable[[localapi.Server], Awaitable[Any]], **kw: Any) -> Any:
    """Runs `body(server)` while a Server with HANDLERS listens on `path`."""

    async def main() -> Any:
        server = localapi.Server(path, HANDLERS, **kw)
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(main())


async def raw(path: str, data: bytes) -> dict[str, Any]:
    """Sends bytes as they are and reads the one-line reply."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    if not data.endswith(b"\n"):
        writer.write_eof()
    line = await reader.readline()
    writer.close()
    return json.loads(line)  # type: ignore[no-any-return]


async def call(path: str, req: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.get_running_loop().run_in_executor(None, localapi.call, path, req)


def test_a_request_and_its_reply(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")

    async def body(server: localapi.Server) -> None:
        assert await call(path, {"request": "echo", "x": 1}) == {
            "ok": True,
            "echo": {"request": "echo", "x": 1},
        }
        # A request without its newline, then EOF, is still one request.
        assert (await raw(path, b'{"request":"echo"}'))["ok"] is True

    serve(path, body)


@pytest.mark.parametrize(
    "line, error",
    [
        (b"not json\n", "request is not JSON"),
        (b"\xff\xfe\n", "request is not JSON"),
        (b"[1, 2]\n", "unknown request None"),
        (b'{"request": "nope"}\n', "unknown request 'nope'; this server knows: broken, echo, refuse"),
        (b'{"request": 7}\n', "unknown request 7"),
        (b'{"request": "refuse"}\n', "no peer named x: meshlet status lists the names"),
        (b'{"request": "broken"}\n', "broken failed inside the agent (a bug); its log has the details"),
    ],
)
def test_bad_requests_get_one_error_line(tmp_path: Path, line: bytes, error: str) -> None:
    path = str(tmp_path / "d.sock")
    reply = serve(path, lambda s: raw(path, line))
    assert reply["ok"] is False
    assert reply["error"].startswith(error)


def test_oversize_request_is_refused_and_the_server_lives_on(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")

    async def body(server: localapi.Server) -> None:
        big = b'{"request": "echo", "pad": "' + b"x" * (localapi.MAX_REQUEST_BYTES + 10) + b'"}\n'
        reply = await raw(path, big)
        assert reply == {"ok": False, "error": "request longer than %d bytes" % localapi.MAX_REQUEST_BYTES}
        assert (await call(path, {"request": "echo"}))["ok"] is True

    serve(path, body)


def test_refusal_reaches_the_client_as_refused_error(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")

    async def body(server: localapi.Server) -> None:
        with pytest.raises(localapi.RefusedError) as info:
            await call(path, {"request": "refuse"})
        assert info.value.reason == "no peer named x: meshlet status lists the names"

    serve(path, body)


def test_socket_mode_and_group(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "meshletd.sock")
    gid = os.getgid()

    async def body(server: localapi.Server) -> None:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755

    serve(path, body, mode=0o660, group=str(gid), dir_mode=0o755)
    assert not os.path.exists(path)  # close() removes it


def test_unknown_group_names_the_fix() -> None:
    with pytest.raises(localapi.LocalApiError, match="no group 'no-such-group-xyz'; create it"):
        localapi.Server("/nonexistent/x.sock", HANDLERS, group="no-such-group-xyz")


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: what a crashed daemon leaves
    with pytest.raises(localapi.NotRunningError):
        localapi.call(path, {"request": "echo"})
    assert serve(path, lambda s: call(path, {"request": "echo"}))["ok"] is True


def test_live_socket_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")

    async def body(server: localapi.Server) -> None:
        second = localapi.Server(path, HANDLERS, busy_hint="is another `meshlet daemon` running?")
        with pytest.raises(localapi.LocalApiError, match="served by another running meshlet; is another"):
            await second.start()
        assert (await call(path, {"request": "echo"}))["ok"] is True  # the first one is untouched

    serve(path, body)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(localapi.LocalApiError, match="exists and is not a socket; remove it"):
            await localapi.Server(str(path), HANDLERS).start()

    asyncio.run(main())
    assert path.read_text() == "precious"


def test_client_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(localapi.NotRunningError):
        localapi.call(str(tmp_path / "missing.sock"), {"request": "echo"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(localapi.NotRunningError):
        localapi.call(str(tmp_path / "file"), {"request": "echo"})


def test_slow_client_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localapi, "REQUEST_TIMEOUT_S", 0.05)
    path = str(tmp_path / "d.sock")

    async def body(server: localapi.Server) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"request": ')  # and then nothing
        reply = json.loads(await reader.readline())
        writer.close()
        assert reply == {"ok": False, "error": "request line not received within 0 s"}

    serve(path, body)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_mode_0660_keeps_other_users_out() -> None:
    d = tempfile.mkdtemp(prefix="meshlet-localapi-", dir="/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "meshletd.sock")

    def as_nobody() -> int:
        """Exit status of a forked child that tries the socket as uid 65534: 13 = permission denied."""
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, try once, report by exit status only
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                localapi.call(path, {"request": "echo"}, timeout_s=2.0)
                code = 0
            except localapi.SocketPermissionError:
                code = 13
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    async def body(server: localapi.Server) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, as_nobody)

    try:
        assert serve(path, body, mode=0o660) == 13
        assert serve(path, body, mode=0o666) == 0  # the mode is what decides
    finally:
        os.rmdir(d)


def test_answer_without_a_socket() -> None:
    server = localapi.Server("/unused", HANDLERS)
    assert asyncio.run(server.answer(b'{"request": "echo"}')) == {"ok": True, "echo": {"request": "echo"}}
