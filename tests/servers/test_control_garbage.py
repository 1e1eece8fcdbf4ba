"""Bad input on the control server's two layers: the HTTP/1.1 listener and the Noise + HTTP/2 channel.

Whatever arrives, the server closes that one connection (or refuses that one
stream) and keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h2.errors
import h2.events
from control_testclient import get_key, run_async, tailnet

from meshlet.control import base
from meshlet.key import MachinePrivate
from meshlet_control import http, noise


async def _closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes the connection (then ours is closed too)."""
    out = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return out
            out += data
    finally:
        writer.close()
        await writer.wait_closed()


async def _noise_raw(net: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, base.Conn]:
    """A connection right after the handshake, with the early payload consumed; no HTTP/2 yet."""
    hs = base.ClientHandshake(
        MachinePrivate.generate(os.urandom), net.key.public(), MachinePrivate.generate(os.urandom)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", net.server.port)
    writer.write(
        b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
        b"X-Tailscale-Handshake: %s\r\nContent-Length: 0\r\n\r\n" % hs.initiation_header().encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    conn = hs.receive_response(await reader.readexactly(base.RESPONSE_LEN))
    assert conn is not None
    return reader, writer, conn


async def _still_serving(net: Any) -> None:
    assert (await get_key("127.0.0.1", net.server.port))[0] == 200
    c = await net.client()
    assert (await c.register(net.auth_key(), "after-%d" % len(net.clients)))["MachineAuthorized"] is True


def test_a_message_that_is_not_a_record_closes_the_connection():
    async def body() -> None:
        async with tailnet() as net:
            reader, writer, _ = await _noise_raw(net)
            writer.write(b"\x05\x00\x10" + bytes(16))
            await _closed(reader, writer)
            await _still_serving(net)

    run_async(body())


def test_a_forged_record_closes_the_connection():
    async def body() -> None:
        async with tailnet() as net:
            reader, writer, _ = await _noise_raw(net)
            writer.write(b"\x04\x00\x20" + os.urandom(32))  # right shape, wrong key
            await _closed(reader, writer)
            await _still_serving(net)

    run_async(body())


def test_an_oversized_record_header_closes_the_connection():
    async def body() -> None:
        async with tailnet() as net:
            reader, writer, _ = await _noise_raw(net)
            writer.write(b"\x04\xff\xff")  # 65,535 > 4,093 bytes of ciphertext
            await _closed(reader, writer)
            await _still_serving(net)

    run_async(body())


def test_garbage_instead_of_the_http2_preface_gets_goaway_and_close():
    async def body() -> None:
        async with tailnet() as net:
            reader, writer, conn = await _noise_raw(net)
            writer.write(conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100)))
            data = await _closed(reader, writer)
            assert data, "expected at least the early payload and the server's SETTINGS/GOAWAY"
            await _still_serving(net)

    run_async(body())


def test_an_oversized_request_body_is_refused_and_the_connection_lives_on():
    async def body() -> None:
        async with tailnet() as net:
            c = await net.client()
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(
                sid,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "c"),
                    (":path", "/machine/register"),
                ],
            )
            reset = asyncio.get_running_loop().create_future()
            orig = c._events

            def spy(events: list[h2.events.Event]) -> None:
                for ev in events:
                    if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid and not reset.done():
                        reset.set_result(ev.error_code)
                orig(events)

            c._events = spy  # type: ignore[method-assign]
            chunk = bytes(16000)
            sent = 0
            while sent <= noise.MAX_BODY_BYTES and not reset.done():
                window = min(c.h2.local_flow_control_window(sid), c.h2.max_outbound_frame_size, len(chunk))
                if window <= 0:
                    await asyncio.sleep(0.01)
                    continue
                c.h2.send_data(sid, chunk[:window])
                c._flush()
                sent += window
                await asyncio.sleep(0)
            assert await asyncio.wait_for(reset, 5) == h2.errors.ErrorCodes.REFUSED_STREAM
            # The same connection still answers.
            assert (await c.register(net.auth_key(), "alpha"))["MachineAuthorized"] is True

    run_async(body())


def test_an_oversized_http_head_gets_431():
    async def body() -> None:
        async with tailnet() as net:
            reader, writer = await asyncio.open_connection("127.0.0.1", net.server.port)
            writer.write(
                b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (http.MAX_HEAD_BYTES + 10)
            )
            data = await _closed(reader, writer)
            assert data.startswith(b"HTTP/1.1 431 "), data[:80]
            await _still_serving(net)

    run_async(body())


def test_a_slow_http_head_is_cut_off(monkeypatch: Any):
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.5)

    async def body() -> None:
        async with tailnet() as net:
            reader, writer = await asyncio.open_connection("127.0.0.1", net.server.port)
            writer.write(b"GET /key?v=130 HTTP/1.1\r\n")  # and never the rest
            assert await _closed(reader, writer, timeout=5) == b""
            await _still_serving(net)

    run_async(body())


def test_a_client_that_vanishes_mid_poll_goes_offline():
    async def body() -> None:
        async with tailnet() as net:
            a = await net.client()
            await a.register(net.auth_key(), "alpha")
            s = await a.open_map([])
            full = await s.next()
            node_id = full["Node"]["ID"]
            assert net.state.get_node(node_id).online  # type: ignore[union-attr]
            a.writer.transport.abort()  # no goodbye at all
            for _ in range(100):
                if not net.state.get_node(node_id).online:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.05)
            assert not net.state.get_node(node_id).online  # type: ignore[union-attr]
            assert node_id not in net.server.hub.sessions

    run_async(body())
