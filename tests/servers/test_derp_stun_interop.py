"""The relay's STUN responder against real STUN clients: Debian's `stun`, coturn's turnutils_* tools.

The responder runs inside a real meshlet_derp server (127.0.0.1, an
ephemeral UDP port); the clients are subprocesses. Debian's `stun` (RFC
3489) also sends CHANGE-REQUEST tests, which a one-socket responder drops
and counts (docs/protocol-notes.md, erratum 6).
"""

import asyncio
import os
import re
import shutil
import socket

import pytest
from derp_testclient import serve

from meshlet import stun

pytestmark = pytest.mark.interop


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip("%s is not installed (Debian package %s; ./dev setup installs it)" % (tool, package))
    return path


async def _run(argv: "list[str]", timeout: float) -> "tuple[int, str]":
    sp = asyncio.subprocess
    proc = await asyncio.create_subprocess_exec(*argv, stdin=sp.DEVNULL, stdout=sp.PIPE, stderr=sp.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("%s did not finish in %s s" % (argv[0], timeout))
    return proc.returncode or 0, out.decode(errors="replace")


def _stun_port(srv) -> int:  # type: ignore[no-untyped-def]
    assert srv.stun_addrs
    return srv.stun_addrs[0][1]


def test_tailscale_request_and_garbage():
    async def body():
        async with serve(stun=True, stun_port=0) as srv:
            port = _stun_port(srv)
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                s.sendto(b"garbage", ("127.0.0.1", port))
                txid = os.urandom(12)
                s.sendto(stun.build_binding_request(txid), ("127.0.0.1", port))
                data = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
                resp = stun.parse_binding_response(data)
                assert (
                    resp.txid == txid and resp.ip == b"\x7f\x00\x00\x01" and resp.port == s.getsockname()[1]
                )
                assert len(data) == 32  # exactly Tailscale's answer: header + XOR-MAPPED-ADDRESS
            assert srv.metrics.stun_dropped == {"short": 1}
            assert srv.metrics.stun_requests_total == 1

    asyncio.run(body())


def test_turnutils_stunclient():
    exe = _need("turnutils_stunclient", "coturn")

    async def body():
        async with serve(stun=True, stun_port=0) as srv:
            rc, out = await _run([exe, "-p", str(_stun_port(srv)), "127.0.0.1"], 15)
            print(out)
            assert rc == 0
            assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out)
            assert srv.metrics.stun_requests_total >= 1 and not srv.metrics.stun_dropped

    asyncio.run(body())


def test_turnutils_natdiscovery_mapping():
    exe = _need("turnutils_natdiscovery", "coturn")

    async def body():
        async with serve(stun=True, stun_port=0) as srv:
            rc, out = await _run([exe, "-m", "-p", str(_stun_port(srv)), "127.0.0.1"], 15)
            print(out)
            assert rc == 0
            assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out)
            assert not srv.metrics.stun_dropped

    asyncio.run(body())


def test_debian_stun_client():
    exe = _need("stun", "stun-client")

    async def body():
        async with serve(stun=True, stun_port=0) as srv:
            # `stun HOST:PORT`; its exit status is a NAT-type code, not success.
            rc, out = await _run([exe, "127.0.0.1:%d" % _stun_port(srv), "-v"], 30)
            print("exit %d\n%s" % (rc, out[-2000:]))
            assert "Received message of type 257" in out  # a Binding success, parsed
            assert re.search(r"MappedAddress = 127\.0\.0\.1:\d+", out)
            assert re.search(r"^test I = 1", out, re.M)
            assert srv.metrics.stun_requests_total >= 1
            assert set(srv.metrics.stun_dropped) == {"change_request"}

    asyncio.run(body())
