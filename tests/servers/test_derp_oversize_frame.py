"""Oversized frames are refused at their 5-byte header, before the payload is read or buffered."""

import asyncio

from derp_testclient import DerpTestClient, serve

from meshlet.derp import frames, login


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_oversized_frames_close_the_connection_at_the_header():
    async def body():
        async with serve() as srv:
            bystander = await DerpTestClient.connect(srv.addr)
            # Steady state: the largest legal frame is a ForwardPacket (64 KiB + two keys).
            for length in (frames.SERVER_MAX_FRAME_LEN + 1, 0xFFFFFFFF):
                c = await DerpTestClient.connect(srv.addr)
                c.send(frames.encode_header(frames.FRAME_SEND_PACKET, length))  # no payload at all
                assert await c.closed()
            # A SendPacket whose data part is over 64 KiB (but the frame fits) is refused too.
            c = await DerpTestClient.connect(srv.addr)
            c.send(frames.encode_frame(frames.FRAME_SEND_PACKET, bytes(32 + frames.MAX_PACKET_SIZE + 1)))
            assert await c.closed()
            # During login the limit is ClientInfo's 256 KiB.
            c = await DerpTestClient.open(srv.addr)
            await c.upgrade()
            await c.next_frame()
            c.send(frames.encode_header(frames.FRAME_CLIENT_INFO, login.MAX_CLIENT_INFO_LEN + 1))
            assert await c.closed()
            assert srv.metrics.connection_errors["frame_too_large"] == 3
            assert srv.metrics.connection_errors["packet_too_large"] == 1
            bystander.send_packet(bystander.key, b"to myself")
            assert await bystander.recv_packet() == (bystander.key, b"to myself")

    _run(body())
