"""Garbage, truncated frames and bad HTTP close only the offending connection; the relay keeps serving."""

import asyncio
import os

from derp_testclient import DerpTestClient, serve, wait_for

from meshlet.derp import frames


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _still_serving(srv) -> None:  # type: ignore[no-untyped-def]
    a = await DerpTestClient.connect(srv.addr)
    b = await DerpTestClient.connect(srv.addr)
    a.send_packet(b.key, b"still here")
    assert await b.recv_packet() == (a.key, b"still here")


def test_garbage_after_login_closes_that_connection_only():
    async def body():
        async with serve() as srv:
            bystander = await DerpTestClient.connect(srv.addr)
            for junk in (
                frames.encode_frame(frames.FRAME_NOTE_PREFERRED, b"\x01\x02"),
                frames.encode_frame(frames.FRAME_PING, b"short"),
                frames.encode_frame(frames.FRAME_SEND_PACKET, b"no key"),
                frames.build_close_peer(bystander.key),  # not a mesh peer
            ):
                c = await DerpTestClient.connect(srv.addr)
                c.send(junk)
                assert await c.closed(), junk.hex()
            bystander.send(frames.build_ping(b"pingpong"))
            assert await bystander.expect(frames.FRAME_PONG) == b"pingpong"
            await _still_serving(srv)
            errors = srv.metrics.connection_errors
            assert errors["bad_length"] == 1 and errors["short"] == 2 and errors["not_mesh_peer"] == 1

    _run(body())


def test_random_bytes_instead_of_client_info():
    async def body():
        async with serve() as srv:
            for _ in range(20):
                c = await DerpTestClient.open(srv.addr)
                await c.upgrade()
                await c.next_frame()  # ServerKey
                c.send(os.urandom(300))
                assert await c.closed()
            await _still_serving(srv)
            assert srv.metrics.connection_errors.get("internal_error", 0) == 0
            assert sum(srv.metrics.connection_errors.values()) == 20

    _run(body())


def test_truncated_frame_then_eof():
    async def body():
        async with serve() as srv:
            c = await DerpTestClient.connect(srv.addr)
            c.send(frames.build_send_packet(c.key, b"cut short")[:-3])
            await c.drain()
            c.writer.write_eof()
            assert await c.closed()
            await wait_for(
                lambda: srv.metrics.connection_errors.get("truncated") == 1, what="truncated counted"
            )
            await _still_serving(srv)

    _run(body())


def test_bad_http_gets_400_and_a_huge_head_431():
    async def body():
        async with serve() as srv:
            r, w = await asyncio.open_connection(*srv.addr)
            w.write(b"NONSENSE\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 5)
            assert reply.startswith(b"HTTP/1.1 400 ")
            w.close()
            r, w = await asyncio.open_connection(*srv.addr)
            w.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n")
            reply = await asyncio.wait_for(r.read(), 5)
            assert reply.startswith(b"HTTP/1.1 431 ")
            w.close()
            await _still_serving(srv)
            assert srv.metrics.connection_errors["http_bad_request"] == 1
            assert srv.metrics.connection_errors["http_head_too_large"] == 1

    _run(body())
