"""1,000 concurrent clients connect, log in and each exchanges one packet with a partner."""

import asyncio
import resource
import time

import pytest
from derp_testclient import DerpTestClient, serve

N = 1000


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip(
            "RLIMIT_NOFILE is %d; this test needs %d" % (resource.getrlimit(resource.RLIMIT_NOFILE)[0], want)
        )


def test_a_thousand_clients():
    _raise_nofile(2 * N + 200)  # both ends of every connection live in this process

    async def body():
        async with serve(max_connections=N + 10) as srv:
            start = time.monotonic()
            gate = asyncio.Semaphore(200)

            async def one() -> DerpTestClient:
                async with gate:
                    return await DerpTestClient.connect(srv.addr)

            clients = await asyncio.gather(*(one() for _ in range(N)))
            logged_in = time.monotonic() - start
            assert srv.metrics.clients_local == N
            for i, c in enumerate(clients):
                c.send_packet(clients[i ^ 1].key, b"from %d" % i)

            async def check(i: int) -> None:
                src, data = await clients[i].recv_packet(timeout=20)
                assert (src, data) == (clients[i ^ 1].key, b"from %d" % (i ^ 1))

            await asyncio.gather(*(check(i) for i in range(N)))
            total = time.monotonic() - start
            print(
                "%d clients: logged in after %.2f s, all packets exchanged after %.2f s"
                % (N, logged_in, total)
            )
            assert srv.metrics.packets_sent_total == N
            assert srv.metrics.dropped() == 0

    asyncio.run(asyncio.wait_for(body(), 60))
