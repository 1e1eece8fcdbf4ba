"""The control server end to end on 127.0.0.1, spoken to by a Python TS2021 client.

The client (control_testclient.py) is the core's Noise client plus h2's
client side, doing on the wire what a Tailscale client does (control.md
§4-§7). The server is app.ControlServer over a real State in ":memory:".
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from control_testclient import DERP_MAP, get_key, run_async, tailnet

from meshlet.control import base
from meshlet.key import MachinePrivate, NodePrivate
from meshlet_control import poll


async def _next_with(stream: Any, field: str, timeout: float = 5) -> dict[str, Any]:
    """The next message carrying `field`, skipping others (keep-alives, unrelated patches)."""
    while True:
        msg: dict[str, Any] = await stream.next(timeout)
        if field in msg:
            return msg


# --- HTTP/1.1 side -------------------------------------------------------------------------


def test_key_endpoint_serves_the_noise_key_and_wants_v():
    async def body() -> None:
        async with tailnet() as net:
            status, raw = await get_key("127.0.0.1", net.server.port)
            assert status == 200
            assert json.loads(raw) == {
                "legacyPublicKey": "mkey:" + "0" * 64,
                "publicKey": net.key.public().to_text(),
            }
            assert (await get_key("127.0.0.1", net.server.port, "/key"))[0] == 400
            assert (await get_key("127.0.0.1", net.server.port, "/key?v=abc"))[0] == 400
            assert (await get_key("127.0.0.1", net.server.port, "/nothing"))[0] == 404

    run_async(body())


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return data


def test_ts2021_refuses_requests_that_are_not_a_proper_upgrade():
    async def body() -> None:
        async with tailnet() as net:
            p = net.server.port
            plain = await _raw(p, b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert plain.startswith(b"HTTP/1.1 400 "), plain
            wrong = await _raw(
                p,
                b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                b"X-Tailscale-Handshake: AAAA\r\nContent-Length: 0\r\n\r\n",
            )
            assert wrong.startswith(b"HTTP/1.1 400 "), wrong
            nohs = await _raw(
                p,
                b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                b"Upgrade: tailscale-control-protocol\r\nContent-Length: 0\r\n\r\n",
            )
            assert nohs.startswith(b"HTTP/1.1 400 ") and b"X-Tailscale-Handshake" in nohs, nohs

    run_async(body())


def test_ts2021_bad_initiation_gets_the_error_message_after_101():
    async def body() -> None:
        async with tailnet() as net:
            bogus = base64.b64encode(bytes(101)).decode()  # right size, type 0 instead of 1
            data = await _raw(
                net.server.port,
                b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: %s\r\n"
                b"Content-Length: 0\r\n\r\n" % bogus.encode(),
            )
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), data
            assert rest[0] == base.MSG_ERROR, rest
            assert b"unexpected handshake message type" in rest

    run_async(body())


# --- register and map over Noise + HTTP/2 --------------------------------------------------


def test_register_map_stream_lite_update_and_deltas():
    async def body() -> None:
        async with tailnet() as net:
            a = await net.client()
            assert a.early is not None and a.early["nodeKeyChallenge"].startswith("chalpub:")
            reg = await a.register(net.auth_key(), "alpha")
            assert (
                reg["MachineAuthorized"] is True and reg["AuthURL"] == "" and reg["NodeKeyExpired"] is False
            )
            assert reg["User"]["ID"] == reg["Login"]["ID"] and reg["Login"]["LoginName"] == "default"

            sa = await a.open_map(["10.0.0.1:41641"])
            full = await sa.next()
            node = full["Node"]
            assert node["Name"] == "alpha.meshlet.internal."
            assert node["Addresses"] == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
            assert node["MachineAuthorized"] is True and node["KeyExpiry"] == "0001-01-01T00:00:00Z"
            assert node["Key"] == a.node.public().to_text() and node["DiscoKey"] == a.disco.public().to_text()
            assert node["Endpoints"] == ["10.0.0.1:41641"] and node["HomeDERP"] == 900 and node["Cap"] == 130
            assert "Peers" not in full
            assert full["DERPMap"] == DERP_MAP
            assert full["DNSConfig"] == {
                "Resolvers": [{"Addr": "1.1.1.1"}],
                "Domains": ["meshlet.internal"],
                "Proxied": True,
            }
            assert full["PacketFilter"][0]["SrcIPs"] == ["*"]
            assert full["Debug"] == {"DisableLogTail": True}
            assert [p["ID"] for p in full["UserProfiles"]] == [node["User"]]

            b = await net.client()
            await b.register(net.auth_key(), "beta")
            added = await _next_with(sa, "PeersChanged")
            peer = added["PeersChanged"][0]
            assert peer["Name"] == "beta.meshlet.internal." and peer["Addresses"][0] == "100.64.0.2/32"
            assert peer["Cap"] == 130 and added["UserProfiles"][0]["ID"] == peer["User"]

            sb = await b.open_map(["10.0.0.2:41641"], derp=901)
            full_b = await sb.next()
            (pa,) = full_b["Peers"]
            assert pa["Name"] == "alpha.meshlet.internal." and pa["Online"] is True
            assert pa["DiscoKey"] == a.disco.public().to_text() and pa["HomeDERP"] == 900
            assert pa["Endpoints"] == ["10.0.0.1:41641"]

            # B's first poll gave it a disco key, endpoints and a home DERP, then made it online.
            seen: dict[str, Any] = {}
            while not (seen.get("DiscoKey") and seen.get("Online")):
                msg = await sa.next(5)
                for p in msg.get("PeersChanged", []):
                    seen.update(p)
                for p in msg.get("PeersChangedPatch", []):
                    seen.update(p)
            assert seen["DiscoKey"] == b.disco.public().to_text()
            assert seen.get("HomeDERP", seen.get("DERPRegion")) == 901

            # A lite update on B's connection while B's poll stays open on it.
            assert await b.lite_update(["10.0.0.2:41641", "203.0.113.9:5555"], derp=901) == (200, b"")
            patch = await _next_with(sa, "PeersChangedPatch")
            assert patch["PeersChangedPatch"] == [
                {"NodeID": peer["ID"], "Endpoints": ["10.0.0.2:41641", "203.0.113.9:5555"]}
            ]
            stored = net.state.get_node(peer["ID"])
            assert stored is not None and stored.endpoints == ["10.0.0.2:41641", "203.0.113.9:5555"]

            # B's poll ends: A hears it went offline.
            b.cancel(sb)
            off = await _next_with(sa, "PeersChangedPatch")
            assert off["PeersChangedPatch"][0]["Online"] is False
            assert "LastSeen" in off["PeersChangedPatch"][0]

            # Removing B: A gets PeersRemoved (an empty Peers would mean "no change").
            net.state.delete_node(peer["ID"])
            gone = await _next_with(sa, "PeersRemoved")
            assert gone["PeersRemoved"] == [peer["ID"]]

    run_async(body())


def test_used_single_use_key_is_refused_but_restart_is_fine():
    async def body() -> None:
        async with tailnet() as net:
            key = net.auth_key()
            a = await net.client()
            assert (await a.register(key, "alpha"))["MachineAuthorized"] is True
            # Same machine, same node key, same spent key: a restart, accepted.
            again = await net.client(a.machine)
            again.node = a.node
            assert (await again.register(key, "alpha"))["MachineAuthorized"] is True
            # Another machine with the spent key: a clear error the client shows.
            c = await net.client()
            reg = await c.register(key, "gamma")
            assert reg == {"Error": "authkey already used"}
            assert (await c.register("mlt-auth-nonsense", "gamma")) == {"Error": "invalid authkey"}
            assert len(net.state.list_nodes()) == 1

    run_async(body())


def test_requests_must_match_the_noise_machine_key():
    async def body() -> None:
        async with tailnet() as net:
            a = await net.client()
            await a.register(net.auth_key(reusable=True), "alpha")
            thief = await net.client()
            thief.node = a.node  # A's node key, but the Noise session proves another machine
            status, text = await thief.request("/machine/map", thief.map_request(False, []))
            assert (status, text) == (400, b"node doesn't match machine key\n")
            reg = await thief.register(net.auth_key(), "thief")
            assert "another machine" in reg["Error"]
            stranger = await net.client()
            status, _ = await stranger.request("/machine/map", stranger.map_request(True, []))
            assert status == 401
            assert (await stranger.request("/machine/register", b"{not json"))[0] == 400
            assert (await stranger.request("/machine/other", {}))[0] == 404

    run_async(body())


def test_keepalives_on_an_idle_stream():
    async def body() -> None:
        async with tailnet(map_keepalive_s=0.3) as net:
            a = await net.client()
            await a.register(net.auth_key(), "alpha")
            s = await a.open_map([])
            assert "Node" in await s.next()
            assert await s.next(5) == {"KeepAlive": True}
            assert await s.next(5) == {"KeepAlive": True}

    run_async(body())


def test_policy_change_pushes_filters_and_visibility():
    async def body() -> None:
        async with tailnet() as net:
            a, b = await net.client(), await net.client()
            await a.register(net.auth_key(), "alpha")
            await b.register(net.auth_key(), "beta")
            sa = await a.open_map(["10.0.0.1:1"])
            full = await sa.next()
            assert len(full["Peers"]) == 1
            # Only alpha may reach beta's port 80: beta's filter names alpha, alpha's is empty.
            net.state.set_policy(
                '{"acls": [{"action": "accept", "src": ["100.64.0.1"], "dst": ["100.64.0.2:80"]}]}'
            )
            msg = await _next_with(sa, "PacketFilter")
            assert msg["PacketFilter"] == []
            sb = await b.open_map(["10.0.0.2:1"])
            fb = await sb.next()
            assert fb["PacketFilter"] == [
                {
                    "SrcIPs": ["100.64.0.1"],
                    "DstPorts": [{"IP": "100.64.0.2", "Ports": {"First": 80, "Last": 80}}],
                }
            ]
            assert [p["Name"] for p in fb["Peers"]] == ["alpha.meshlet.internal."]
            # Nobody may reach anybody: each loses the other from its netmap.
            net.state.set_policy('{"acls": []}')
            msg = await _next_with(sb, "PeersRemoved")
            assert msg["PeersRemoved"] == [full["Node"]["ID"]] and msg["PacketFilter"] == []
            # Back to no policy: allow-all, and the peer comes back whole.
            net.state.clear_policy()
            msg = await _next_with(sb, "PeersChanged")
            assert msg["PeersChanged"][0]["ID"] == full["Node"]["ID"]
            assert msg["PacketFilter"][0]["SrcIPs"] == ["*"]

    run_async(body())


def test_ephemeral_node_is_removed_after_going_offline():
    async def body() -> None:
        async with tailnet(ephemeral_timeout_ms=500) as net:
            a, e = await net.client(), await net.client()
            await a.register(net.auth_key(), "alpha")
            await e.register(net.auth_key(ephemeral=True), "eph")
            sa = await a.open_map([])
            await sa.next()
            se = await e.open_map([])
            await se.next()
            eid = next(n.id for n in net.state.list_nodes() if n.hostname == "eph")
            e.cancel(se)
            gone = await _next_with(sa, "PeersRemoved", timeout=5)
            assert gone["PeersRemoved"] == [eid]
            assert net.state.get_node(eid) is None

    run_async(body())


def test_a_new_poll_replaces_the_old_one():
    async def body() -> None:
        async with tailnet() as net:
            a = await net.client()
            await a.register(net.auth_key(), "alpha")
            s1 = await a.open_map([])
            await s1.next()
            s2 = await a.open_map([])
            assert "Node" in await s2.next()
            for _ in range(50):
                if s1.ended:
                    break
                await asyncio.sleep(0.05)
            assert s1.ended
            assert len(net.server.hub.sessions) == 1

    run_async(body())


def test_a_big_full_map_crosses_flow_control_windows():
    # 1,000 peers make a compressed full map of over h2's 65,535-byte default window
    # (random keys do not compress): the server must wait for WINDOW_UPDATE frames.
    async def body() -> None:
        async with tailnet() as net:
            key = net.auth_key(reusable=True)
            for i in range(1000):
                mk = MachinePrivate.generate(os.urandom).public()
                nk = NodePrivate.generate(os.urandom).public()
                assert net.state.register(mk, nk, None, key, {"Hostname": "n%d" % i}).node is not None
            a = await net.client()
            await a.register(key, "alpha")
            s = await a.open_map([])
            full = await s.next(20)
            assert len(full["Peers"]) == 1000
            assert len(poll.encode_message(full)) > 65535
            assert net.server.hub.sessions[full["Node"]["ID"]].messages_sent >= 1

    run_async(body())


def test_encode_message_is_little_endian_length_and_one_zstd_frame():
    import zstandard

    framed = poll.encode_message({"KeepAlive": True})
    n = int.from_bytes(framed[:4], "little")
    assert n == len(framed) - 4
    assert framed[4:8] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert zstandard.ZstdDecompressor().decompress(framed[4:]) == b'{"KeepAlive":true}'


def test_interactive_registration_waits_in_followup_until_approved():
    async def body() -> None:
        async with tailnet() as net:
            a = await net.client()
            first = await a.register(None, "alpha")
            assert first["MachineAuthorized"] is False and first["AuthURL"].endswith("/register/1")
            followup = asyncio.ensure_future(a.register(None, "alpha", Followup=first["AuthURL"]))
            await asyncio.sleep(0.3)
            assert not followup.done()  # held, not answered with the same URL at once
            net.state.approve_node(1)
            done = await asyncio.wait_for(followup, 5)
            assert done["MachineAuthorized"] is True and done["AuthURL"] == ""
            s = await a.open_map([])
            assert (await s.next())["Node"]["Name"] == "alpha.meshlet.internal."

    run_async(body())
