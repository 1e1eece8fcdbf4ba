"""The pump (agent/meshlet_agent/wgengine.py) without root: two Engines in one event loop.

Each Engine gets real UDP sockets on loopback and, instead of a TUN device,
one end of a SOCK_SEQPACKET socket pair: like a TUN descriptor it keeps
packet boundaries, so the test writes an IP packet into "a's TUN" and reads
it out of "b's TUN".
"""

import asyncio
import logging
import os
import socket
import struct
from typing import Any, Iterator

import pytest

from meshlet.key import NodePrivate
from meshlet.wg.device import Device, PeerConfig
from meshlet_agent import localapi
from meshlet_agent.tun import Tun
from meshlet_agent.udp import Udp
from meshlet_agent.wgengine import Engine, now_ms, unix_ms

A_IP, B_IP = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
LOOPBACK = bytes([127, 0, 0, 1])


def ipv4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0, src, dst)
    return header + payload


class Side:
    def __init__(self, name: str, ip: bytes) -> None:
        self.key = NodePrivate.generate(os.urandom)
        self.ip = ip
        self.udp = Udp.open(0)
        ours, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        for end in (ours, self.wire):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.wire.settimeout(5)
        self._keep = ours
        self.tun = Tun(name, ours.fileno())
        self.tun.mtu = 1420
        self.device = Device(self.key, os.urandom, unix_ms(), now_ms())
        self.engine = Engine(self.device, self.key.public(), self.tun, self.udp)
        self.events: list[object] = []
        self.engine.subscribe(self.events.append)

    def peer_with(self, other: "Side", endpoint: bool = True, psk: bytes | None = None) -> None:
        ep = (LOOPBACK, other.udp.port) if endpoint else None
        self.device.set_peer(PeerConfig(other.key.public(), [(other.ip, 32)], ep, psk))

    def close(self) -> None:
        self.engine.stop()
        self.udp.close()
        self._keep.close()
        self.wire.close()


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    a, b = Side("fakea", A_IP), Side("fakeb", B_IP)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def read_wire(side: Side, timeout_s: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, side.wire.recv, 65535), timeout_s)


def test_packets_cross_both_ways(sides: tuple[Side, Side], caplog: pytest.LogCaptureFixture) -> None:
    a, b = sides
    a.peer_with(b)
    b.peer_with(a, endpoint=False)  # b learns a's address from the handshake

    async def main() -> None:
        a.engine.start()
        b.engine.start()
        ping = ipv4(A_IP, B_IP, b"hello through the tunnel")
        a.wire.send(ping)
        assert await read_wire(b) == ping
        pong = ipv4(B_IP, A_IP, b"and back")
        b.wire.send(pong)
        assert await read_wire(a) == pong
        # a burst larger than one batch, so reads are split and GSO runs are formed
        burst = [ipv4(A_IP, B_IP, bytes([i]) * 1380) for i in range(200)]

        def send_all() -> None:
            for p in burst:
                a.wire.send(p)

        sender = asyncio.get_running_loop().run_in_executor(None, send_all)
        got = [await read_wire(b) for _ in burst]
        await sender
        assert got == burst

    with caplog.at_level(logging.INFO, logger="meshlet_agent"):
        asyncio.run(main())
    names = [type(e).__name__ for e in a.events]
    assert "HandshakeCompleted" in names
    assert any(type(e).__name__ == "PeerEndpointChanged" for e in b.events)
    assert "handshake completed, session established" in caplog.text
    st = b.engine.status()
    assert st["interface"] == "fakeb" and st["public_key"] == b.key.public().to_base64()
    (peer,) = st["peers"]
    assert peer["endpoint"] == "127.0.0.1:%d" % a.udp.port
    assert peer["latest_handshake_unix_ms"] > 0 and peer["rx_bytes"] > 200 * 1380
    assert st["counters"]["rx_packets"] == 201  # the first packet and the burst
    assert a.engine.status()["udp_gso_sends"] >= 1 or not a.udp.gso


def test_drop_reason_logged_once(sides: tuple[Side, Side], caplog: pytest.LogCaptureFixture) -> None:
    a, b = sides
    a.peer_with(b)
    b.peer_with(a)

    async def main() -> None:
        a.engine.start()
        b.engine.start()
        for i in range(5):  # packets to an address no peer owns
            a.wire.send(ipv4(A_IP, bytes([192, 0, 2, i]), b"x"))
        garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(5):
            garbage.sendto(b"\x04\x00\x00\x00" + bytes(40), ("127.0.0.1", b.udp.port))
        garbage.close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if (
                a.device.stats.dropped.get("no_route") == 5
                and b.device.stats.dropped.get("unknown_receiver") == 5
            ):
                break

    with caplog.at_level(logging.INFO, logger="meshlet_agent"):
        asyncio.run(main())
    assert a.device.stats.dropped["no_route"] == 5
    assert b.device.stats.dropped["unknown_receiver"] == 5
    assert caplog.text.count("dropping packets: no_route") == 1
    assert caplog.text.count("dropping packets: unknown_receiver") == 1


def test_timer_drives_handshake_retries(sides: tuple[Side, Side]) -> None:
    """b never answers (its engine is not running); a's timer must fire and retransmit."""
    a, b = sides
    a.peer_with(b)

    async def main() -> None:
        a.engine.start()
        a.wire.send(ipv4(A_IP, B_IP, b"x"))
        await asyncio.sleep(0.2)
        first = a.device.stats.handshakes_initiated
        assert first == 1
        deadline = a.device.next_deadline()
        assert deadline is not None and deadline - now_ms() <= 5_400
        assert a.engine._timer is not None  # armed for the retransmit

    asyncio.run(main())


def test_status_over_local_api(
    sides: tuple[Side, Side], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHLET_RUN_DIR", str(tmp_path))
    a, b = sides
    a.peer_with(b)

    async def main() -> dict[str, Any]:
        a.engine.start()
        api = localapi.LocalApi("fakea", a.engine.status)
        await api.start()
        path = localapi.socket_path("fakea")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(None, localapi.request, "fakea")
        assert localapi.list_interfaces() == ["fakea"]
        with pytest.raises(localapi.LocalApiError, match="another running meshlet"):
            await localapi.LocalApi("fakea", a.engine.status).start()
        await api.close()
        assert not os.path.exists(path)
        return status

    status = asyncio.run(main())
    assert status["interface"] == "fakea"
    assert status["peers"][0]["public_key"] == b.key.public().to_base64()


def test_stale_socket_is_replaced(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_RUN_DIR", str(tmp_path))
    path = localapi.socket_path("stale0")
    os.makedirs(os.path.dirname(path))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a socket file nobody listens on, as a killed agent leaves behind

    async def main() -> None:
        api = localapi.LocalApi("stale0", lambda: {"ok": 1})
        await api.start()
        await api.close()

    asyncio.run(main())


def test_local_api_rejects_bad_requests(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_RUN_DIR", str(tmp_path))

    async def ask(payload: bytes) -> bytes:
        reader, writer = await asyncio.open_unix_connection(localapi.socket_path("req0"))
        writer.write(payload)
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    async def main() -> list[bytes]:
        api = localapi.LocalApi("req0", lambda: {"x": 1})
        await api.start()
        try:
            return [
                await ask(b"not json\n"),
                await ask(b'{"request": "reboot"}\n'),
                await ask(b'{"request":"status"}\n'),
            ]
        finally:
            await api.close()

    bad_json, unknown, ok = asyncio.run(main())
    assert b'"ok":false' in bad_json and b"not JSON" in bad_json
    assert b"unknown request" in unknown
    assert ok.strip() == b'{"ok":true,"status":{"x":1}}'
