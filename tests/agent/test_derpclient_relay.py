"""The agent's DERP client against the real meshlet-derp relay, both in one event loop.

The unit tests in test_derpclient.py use a scripted relay; here the two halves
written from the same fact sheet must agree with each other: login, packets
both ways, PeerGone when a peer leaves, and reconnection when the relay
restarts on the same port.
"""

import asyncio
import os

from meshlet.derp.events import PeerGone
from meshlet.key import NodePrivate
from meshlet_agent.derpclient import DerpClient
from meshlet_derp.config import Config
from meshlet_derp.server import DerpServer


def _config(port: int = 0) -> Config:
    cfg = Config(http=True, addr="127.0.0.1:%d" % port, metrics_addr="", stun=False, stun_port=0)
    cfg.validate()
    return cfg


async def _relay(key: NodePrivate, port: int = 0) -> DerpServer:
    server = DerpServer(_config(port), key)
    await server.start()
    return server


def _client(url: str, events: "list[object] | None" = None) -> DerpClient:
    return DerpClient(url, NodePrivate.generate(os.urandom), max_backoff_ms=200,
                      on_event=(events.append if events is not None else None))


def test_two_agents_exchange_packets_through_meshlet_derp() -> None:
    async def body() -> None:
        relay = await _relay(NodePrivate.generate(os.urandom))
        url = "http://127.0.0.1:%d/derp" % relay.addr[1]
        alice_events: "list[object]" = []
        alice, bob = _client(url, alice_events), _client(url)
        try:
            alice.start(), bob.start()
            await asyncio.wait_for(asyncio.gather(alice.wait_connected(), bob.wait_connected()), 10)
            assert alice.send(bob.public_key, b"hello bob")
            assert await asyncio.wait_for(bob.recv(), 5) == (alice.public_key, b"hello bob")
            assert bob.send(alice.public_key, b"hello alice")
            assert await asyncio.wait_for(alice.recv(), 5) == (bob.public_key, b"hello alice")
            await bob.close()
            for _ in range(100):  # PeerGone(Disconnected): alice received from bob
                if any(isinstance(e, PeerGone) and e.peer == bob.public_key for e in alice_events):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("no PeerGone for bob: %r" % alice_events)
        finally:
            await alice.close()
            await bob.close()
            await relay.close()

    asyncio.run(body())


def test_agent_reconnects_when_the_relay_restarts() -> None:
    async def body() -> None:
        key = NodePrivate.generate(os.urandom)
        relay = await _relay(key)
        port = relay.addr[1]
        url = "http://127.0.0.1:%d/derp" % port
        alice, bob = _client(url), _client(url)
        try:
            alice.start(), bob.start()
            await asyncio.wait_for(asyncio.gather(alice.wait_connected(), bob.wait_connected()), 10)
            await relay.close()
            relay = await _relay(key, port)  # same key, same port: a restart
            deadline = asyncio.get_running_loop().time() + 15
            while True:  # sends fail while down; keep trying until both are back
                await asyncio.sleep(0.1)
                if alice.connected and bob.connected and alice.send(bob.public_key, b"after restart"):
                    try:
                        got = await asyncio.wait_for(bob.recv(), 1)
                    except asyncio.TimeoutError:
                        got = None
                    if got == (alice.public_key, b"after restart"):
                        break
                assert asyncio.get_running_loop().time() < deadline, "no reconnect within 15 s"
        finally:
            await alice.close()
            await bob.close()
            await relay.close()

    asyncio.run(body())
