"""Slow clients are cut off: an HTTP request head that never ends, a ClientInfo that never comes."""

import asyncio

from derp_testclient import DerpTestClient, serve

from meshlet.derp import frames


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_request_head_dribbled_byte_by_byte_is_cut_off():
    async def body():
        async with serve(request_timeout_s=0.3) as srv:
            r, w = await asyncio.open_connection(*srv.addr)
            loop = asyncio.get_running_loop()
            start = loop.time()
            closed = False
            for byte in b"GET /derp HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                try:
                    w.write(bytes([byte]))
                    await w.drain()
                except ConnectionError:
                    closed = True
                    break
                if r.at_eof() or (await _eof(r)):
                    closed = True
                    break
                if loop.time() - start > 3:
                    break
            assert closed, "the server kept the slow request open"
            assert loop.time() - start < 1.5
            assert srv.metrics.connection_errors["http_timeout"] == 1
            w.close()

    _run(body())


async def _eof(r: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(r.read(100), 0.05)
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


def test_upgraded_client_that_never_sends_client_info_is_cut_off():
    async def body():
        async with serve(handshake_timeout_s=0.3) as srv:
            c = await DerpTestClient.open(srv.addr)
            await c.upgrade()
            assert (await c.next_frame())[0] == frames.FRAME_SERVER_KEY
            loop = asyncio.get_running_loop()
            start = loop.time()
            c.send(frames.encode_header(frames.FRAME_CLIENT_INFO, 100) + b"partial")  # and then nothing
            assert await c.closed(timeout=3)
            assert 0.2 < loop.time() - start < 1.5
            assert srv.metrics.connection_errors["handshake_timeout"] == 1
            ok = await DerpTestClient.connect(srv.addr)  # the deadline is per connection
            await asyncio.sleep(0.5)
            ok.send(frames.build_ping(b"alive..."))
            assert await ok.expect(frames.FRAME_PONG) == b"alive..."

    _run(body())


def test_idle_timeout_when_configured():
    async def body():
        async with serve(idle_timeout_s=0.3) as srv:
            c = await DerpTestClient.connect(srv.addr)
            assert await c.closed(timeout=3)
            assert srv.metrics.connection_errors["idle_timeout"] == 1

    _run(body())
