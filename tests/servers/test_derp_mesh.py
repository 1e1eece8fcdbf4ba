"""Two relays of one region, meshed with a pre-shared key: a client on A reaches a client on B."""

import asyncio

from derp_testclient import DerpTestClient, disco_packet, new_key, serve, wait_for

from meshlet.derp import frames
from meshlet_derp.mesh import MeshClient

MESH_KEY = bytes.fromhex("5e" * 32)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _mesh(a, b):  # type: ignore[no-untyped-def]
    """Points A at B and B at A (what --mesh-with does at start-up), and waits until both watch."""
    for srv, other in ((a, b), (b, a)):
        mc = MeshClient(srv, "127.0.0.1:%d" % other.addr[1])
        mc.retry_s = 0.1
        srv.mesh_clients.append(mc)
        mc.start()
    await wait_for(lambda: all(mc.logged_in for s in (a, b) for mc in s.mesh_clients), what="mesh logins")


def test_client_on_a_reaches_client_on_b_and_peer_gone_propagates():
    async def body():
        async with serve(mesh_key=MESH_KEY) as a, serve(mesh_key=MESH_KEY) as b:
            await _mesh(a, b)
            ca = await DerpTestClient.connect(a.addr)
            cb = await DerpTestClient.connect(b.addr)
            await wait_for(
                lambda: a.registry.forwarders() >= 1 and b.registry.forwarders() >= 1, what="forwarders"
            )
            ca.send_packet(cb.key, b"A to B")
            assert await cb.recv_packet() == (ca.key, b"A to B")
            cb.send_packet(ca.key, b"B to A")
            assert await ca.recv_packet() == (cb.key, b"B to A")
            assert a.metrics.packets_forwarded_out_total == 1 and b.metrics.packets_forwarded_in_total == 1
            # cb leaves B: B tells A (watch conns), A tells ca, which received from cb.
            await cb.close()
            assert frames.parse_peer_gone(await ca.expect(frames.FRAME_PEER_GONE)) == (
                cb.key,
                frames.PEER_GONE_DISCONNECTED,
            )
            # And now cb's key is nowhere: disco to it gets NotHere from A.
            ca.send_packet(cb.key, disco_packet())
            assert frames.parse_peer_gone(await ca.expect(frames.FRAME_PEER_GONE)) == (
                cb.key,
                frames.PEER_GONE_NOT_HERE,
            )

    _run(body())


def test_forward_packet_only_from_mesh_peers_and_self_connect_is_ignored():
    async def body():
        async with serve(mesh_key=MESH_KEY) as a:
            # A client without the mesh key sending ForwardPacket is disconnected.
            intruder = await DerpTestClient.connect(a.addr)
            victim = await DerpTestClient.connect(a.addr)
            intruder.send(frames.build_forward_packet(new_key().public(), victim.key, b"spoofed"))
            assert await intruder.closed()
            assert a.metrics.connection_errors["not_mesh_peer"] == 1
            victim.send(frames.build_ping(b"stillok!"))
            assert await victim.expect(frames.FRAME_PONG) == b"stillok!"
            # A mesh peer may forward; the packet arrives with the claimed source.
            peer = await DerpTestClient.connect(a.addr, mesh_key=MESH_KEY)
            src = new_key().public()
            peer.send(frames.build_forward_packet(src, victim.key, b"forwarded"))
            assert await victim.recv_packet() == (src, b"forwarded")
            # --mesh-with listing this relay itself: the client notices and stops.
            mc = MeshClient(a, "127.0.0.1:%d" % a.addr[1])
            a.mesh_clients.append(mc)
            mc.start()
            assert mc._task is not None
            await asyncio.wait_for(mc._task, 5)
            assert not mc.logged_in

    _run(body())


def test_mesh_connection_loss_forgets_the_peers_clients():
    async def body():
        async with serve(mesh_key=MESH_KEY) as a:
            async with serve(mesh_key=MESH_KEY) as b:
                await _mesh(a, b)
                cb = await DerpTestClient.connect(b.addr)
                ca = await DerpTestClient.connect(a.addr)
                await wait_for(lambda: cb.key in {k for mc in a.mesh_clients for k in mc.present})
                cb.send_packet(ca.key, b"hi")
                assert await ca.recv_packet() == (cb.key, b"hi")
                await cb.close()
                await ca.expect(frames.FRAME_PEER_GONE)
            # B is gone entirely: A forgets everything it learnt from it.
            await wait_for(lambda: a.registry.forwarders() == 0, what="forwarders cleared")

    _run(body())
