"""A client that never reads: its queue drops (counted), then it is closed; other clients are unaffected."""

import asyncio

from derp_testclient import DerpTestClient, serve, wait_for


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_client_that_never_reads():
    async def body():
        async with serve(write_timeout_s=1.0) as srv:
            stuck = await DerpTestClient.connect(srv.addr, rcvbuf=4096)
            sender = await DerpTestClient.connect(srv.addr)
            a = await DerpTestClient.connect(srv.addr)
            b = await DerpTestClient.connect(srv.addr)
            packet = bytes(1200)
            for _ in range(3000):  # 3.6 MB at a client that reads nothing
                sender.send_packet(stuck.key, packet)
            await sender.drain()
            await wait_for(lambda: srv.metrics.dropped("queue_head") > 0, what="queue drops")
            # Meanwhile another pair is served normally.
            for i in range(50):
                a.send_packet(b.key, b"%d" % i)
            for i in range(50):
                assert await b.recv_packet() == (a.key, b"%d" % i)
            # The stuck client is closed after the write timeout, and its queue counted as dropped.
            await wait_for(lambda: srv.metrics.write_timeouts_total == 1, timeout=5, what="write timeout")
            assert srv.metrics.connection_errors["write_timeout"] == 1
            lanes = max(c.longest_lane() for c in srv.connections)
            assert lanes <= srv.cfg.queue_depth
            m = srv.metrics
            print("sent %d, dropped queue_head=%d gone=%d" % (m.packets_sent_total, m.dropped("queue_head"),
                                                              m.dropped("gone_disconnected")))  # fmt: skip
            b.send_packet(a.key, b"after")
            assert await a.recv_packet() == (b.key, b"after")

    _run(body())
