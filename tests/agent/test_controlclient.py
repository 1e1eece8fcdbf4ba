"""The agent's control client against an in-process meshlet-control.

The server is the real one (`meshlet_control.app.start`) over a State in a
temporary directory, on 127.0.0.1 without TLS: the client does GET /key,
the /ts2021 upgrade, Noise, HTTP/2, register, the long poll and lite
updates exactly as it would against a deployed server.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from meshlet.control.netmap import NetMap
from meshlet.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshlet_agent import controlclient, controlconn
from meshlet_agent.controlclient import ControlClient, ControlError
from meshlet_control import app
from meshlet_control.config import ServeConfig
from meshlet_control.state import State

_DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "t",
            "RegionName": "test",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1"}],
        }
    }
}


class _Net:
    def __init__(self, state: State, server: app.ControlServer) -> None:
        self.state = state
        self.server = server
        self.clients: list[ControlClient] = []

    def auth_key(self, **kw: Any) -> str:
        return self.state.create_preauth_key(self.state.default_user(), **kw).key

    def client(self) -> ControlClient:
        c = ControlClient(
            "127.0.0.1",
            self.server.port,
            MachinePrivate.generate(os.urandom),
            NodePrivate.generate(os.urandom),
            DiscoPrivate.generate(os.urandom).public(),
        )
        self.clients.append(c)
        return c


@contextlib.asynccontextmanager
async def _tailnet(tmp: Path) -> AsyncIterator[_Net]:
    state = State(str(tmp / "control.db"))
    cfg = ServeConfig(listen_host="127.0.0.1", listen_port=0, derp_map=_DERP_MAP, dns=["1.1.1.1"])
    server = await app.start(
        state, MachinePrivate.generate(os.urandom), cfg, offline_grace_s=0, housekeeping=True
    )
    net = _Net(state, server)
    try:
        yield net
    finally:
        for c in net.clients:
            await c.close()
        await server.close()
        state.close()


def _run(tmp: Path, body: Callable[[_Net], Awaitable[None]]) -> None:
    async def main() -> None:
        async with _tailnet(tmp) as net:
            await body(net)

    asyncio.run(asyncio.wait_for(main(), 30))


async def _until(
    maps: AsyncIterator[NetMap], ok: Callable[[NetMap], bool], current: NetMap | None = None
) -> NetMap:
    """The NetMap once `ok` holds: `current` (the one the stream last yielded) or a later one."""
    if current is not None and ok(current):
        return current

    async def wait() -> NetMap:
        async for nm in maps:
            if ok(nm):
                return nm
        raise AssertionError("map stream ended")

    return await asyncio.wait_for(wait(), 10)


def test_fetch_server_key_is_the_servers_noise_key(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        key = await controlclient.fetch_server_key("127.0.0.1", net.server.port)
        assert key == net.server.control_key.public()

    _run(tmp_path, body)


def test_register_with_a_preauth_key_then_get_a_full_map(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        c = net.client()
        result = await c.register(net.auth_key(), {"Hostname": "alpha", "OS": "linux"})
        assert result.ok and result.machine_authorized and not result.error and not result.auth_url
        assert not result.node_key_expired
        nm = await _until(c.stream_map(["192.0.2.1:41641"], home_derp=900), lambda nm: True)
        me = nm.self_node
        assert me is not None and me.key == c.node.public()
        assert me.name.startswith("alpha.") and me.addresses and me.machine_authorized
        assert list(nm.derp_regions) == [900]
        assert nm.packet_filter, "allow-all without a policy"
        assert nm.peers == {}

    _run(tmp_path, body)


def test_a_used_single_use_key_yields_the_servers_error_text(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        key = net.auth_key()
        assert (await net.client().register(key, {"Hostname": "alpha"})).ok
        second = await net.client().register(key, {"Hostname": "beta"})
        assert not second.ok and second.error
        assert "key" in second.error.lower(), second.error

    _run(tmp_path, body)


def test_a_server_that_is_not_there_is_a_control_error(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        port = net.server.port
        await net.server.close()
        try:
            await controlclient.fetch_server_key("127.0.0.1", port, timeout=2)
        except ControlError:
            return
        raise AssertionError("expected ControlError")

    _run(tmp_path, body)


def test_two_clients_see_each_other_and_endpoint_changes_arrive_as_deltas(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a, b = net.client(), net.client()
        key = net.auth_key(reusable=True)
        assert (await a.register(key, {"Hostname": "alpha"})).ok
        assert (await b.register(key, {"Hostname": "beta"})).ok
        maps_a = a.stream_map(["192.0.2.1:41641"], home_derp=900)
        maps_b = b.stream_map(["192.0.2.2:41641"], home_derp=900)
        b_key, a_key = b.node.public(), a.node.public()
        # An async generator starts its poll at the first iteration: open both before waiting on either.
        nm_a = await _until(maps_a, lambda nm: True)
        nm_b = await _until(maps_b, lambda nm: True)
        # b's own poll reports its endpoints and disco key a moment after it shows up in a's map.
        nm_a = await _until(
            maps_a, lambda nm: b_key in nm.peers and nm.peers[b_key].disco_key == b.disco, nm_a
        )
        nm_b = await _until(
            maps_b, lambda nm: a_key in nm.peers and nm.peers[a_key].disco_key == a.disco, nm_b
        )
        peer_b = nm_a.peers[b_key]
        assert peer_b.name.startswith("beta.") and peer_b.disco_key == b.disco
        assert peer_b.endpoints == ["192.0.2.2:41641"] and peer_b.home_derp == 900
        assert peer_b.allowed_ips and nm_b.peers[a_key].addresses == nm_a.self_node.addresses  # type: ignore[union-attr]

        new_disco = DiscoPrivate.generate(os.urandom).public()
        await b.lite_update(["198.51.100.9:41641"], disco_key=new_disco, home_derp=901)

        def moved(nm: NetMap) -> bool:
            p = nm.peers.get(b_key)
            return p is not None and p.endpoints == ["198.51.100.9:41641"] and p.disco_key == new_disco

        nm_a = await _until(maps_a, moved, nm_a)
        assert nm_a.peers[b_key].home_derp == 901
        assert len(nm_a.peers) == 1
        await maps_a.aclose()  # type: ignore[attr-defined]
        await maps_b.aclose()  # type: ignore[attr-defined]

    _run(tmp_path, body)


def _framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "little") + payload


def _stream_of(data: bytes) -> controlclient.MapStream:
    s = controlconn.ResponseStream(1)
    s.status = 200
    s.body.extend(data)
    s.ended = True
    return controlclient.MapStream(None, s)  # type: ignore[arg-type]


def test_map_framing_unpacks_zstd_json_and_rejects_garbage() -> None:
    import zstandard

    from meshlet.errors import RemoteProtocolError

    z = zstandard.ZstdCompressor()
    good = _framed(z.compress(b'{"KeepAlive":true}')) + _framed(z.compress(b'{"Domain":"x"}'))

    async def read_all(data: bytes) -> list[Any]:
        stream, out = _stream_of(data), []
        while True:
            try:
                out.append(await stream.next(1))
            except EOFError:
                return out
            except RemoteProtocolError as e:
                return out + [e.reason]

    assert asyncio.run(read_all(good)) == [{"KeepAlive": True}, {"Domain": "x"}]
    assert asyncio.run(read_all(_framed(b"not zstd at all"))) == ["bad_zstd"]
    assert asyncio.run(read_all(_framed(z.compress(b"[1, 2]")))) == ["bad_map"]
    assert asyncio.run(read_all(b"\xff\xff\xff\xff")) == ["frame_too_large"]
    bomb = zstandard.ZstdCompressor().compress(b" " * (controlclient.MAX_MAP_JSON_BYTES + 1))
    assert asyncio.run(read_all(_framed(bomb))) == ["frame_too_large"]
