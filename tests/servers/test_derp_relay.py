"""The relay end to end on 127.0.0.1: upgrade, login, relaying, PeerGone, NotHere, dups, HTTP, metrics."""

import asyncio
import urllib.request

from derp_testclient import DerpTestClient, disco_packet, new_key, serve, wait_for

from meshlet.derp import frames
from meshlet_derp.web import switching_protocols


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_upgrade_is_the_exact_101_and_two_clients_exchange_packets():
    async def body():
        key = new_key()
        async with serve(private=key) as srv:
            a = await DerpTestClient.connect(srv.addr)
            b = await DerpTestClient.connect(srv.addr)
            assert a.response_head == switching_protocols(key.public().raw.hex())
            assert a.server_key == key.public()
            assert a.server_info["version"] == 2
            a.send_packet(b.key, b"hello b")
            assert await b.recv_packet() == (a.key, b"hello b")
            b.send_packet(a.key, b"hello a" * 100)
            assert await a.recv_packet() == (b.key, b"hello a" * 100)
            assert srv.metrics.packets_received_total == 2
            await wait_for(lambda: srv.metrics.packets_sent_total == 2)
            await a.close()
            await b.close()

    _run(body())


def test_fast_start_skips_the_101_but_still_sends_server_key():
    async def body():
        async with serve() as srv:
            a = await DerpTestClient.connect(srv.addr, fast_start=True)
            b = await DerpTestClient.connect(srv.addr)
            assert a.response_head == b""
            b.send_packet(a.key, b"x")
            assert await a.recv_packet() == (b.key, b"x")

    _run(body())


def test_client_frames_right_after_the_request_are_kept():
    # A fast-start client writes its request and ClientInfo without waiting:
    # the bytes after the request head belong to the DERP stream.
    async def body():
        async with serve() as srv:
            from meshlet.derp import login

            c = await DerpTestClient.open(srv.addr)
            info = {"version": 2, "CanAckPings": True}
            hello = login.build_client_info(c.private, srv.public, bytes(24), info)
            req = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
            req += b"Derp-Fast-Start: 1\r\n\r\n"
            c.send(req + hello + frames.build_note_preferred(True) + frames.build_ping(b"12345678"))
            ftype, _ = await c.next_frame()
            assert ftype == frames.FRAME_SERVER_KEY
            ftype, _ = await c.next_frame()
            assert ftype == frames.FRAME_SERVER_INFO
            assert await c.expect(frames.FRAME_PONG) == b"12345678"
            assert srv.metrics.home_clients == 1

    _run(body())


def test_peer_gone_disconnected_goes_to_those_who_received_from_the_leaver():
    async def body():
        async with serve() as srv:
            a = await DerpTestClient.connect(srv.addr)
            b = await DerpTestClient.connect(srv.addr)
            bystander = await DerpTestClient.connect(srv.addr)
            a.send_packet(b.key, b"from a")
            assert await b.recv_packet() == (a.key, b"from a")
            await a.close()
            peer, reason = frames.parse_peer_gone(await b.expect(frames.FRAME_PEER_GONE))
            assert (peer, reason) == (a.key, frames.PEER_GONE_DISCONNECTED)
            # The bystander never received from a: it hears nothing.
            bystander.send(frames.build_ping(b"bbbbbbbb"))
            assert await bystander.expect(frames.FRAME_PONG) == b"bbbbbbbb"
            assert srv.metrics.peer_gone_disconnected_total == 1

    _run(body())


def test_not_here_for_disco_to_an_absent_key_is_rate_limited():
    async def body():
        async with serve() as srv:
            a = await DerpTestClient.connect(srv.addr)
            absent = new_key().public()
            for i in range(10):
                a.send_packet(absent, disco_packet(bytes([i])))
            a.send_packet(absent, b"not disco")  # never answered
            a.send(frames.build_ping(b"syncsync"))
            gone = []
            while True:
                ftype, payload = await a.next_frame()
                if ftype == frames.FRAME_PONG:
                    break
                assert ftype == frames.FRAME_PEER_GONE
                gone.append(frames.parse_peer_gone(payload))
            assert gone == [(absent, frames.PEER_GONE_NOT_HERE)] * 3  # burst of 3, then 1 per second
            assert srv.metrics.dropped("unknown_dest") == 11
            assert srv.metrics.packets_dropped[("unknown_dest", "disco")] == 10

    _run(body())


def test_ping_gets_pong_and_keepalives_arrive():
    async def body():
        async with serve(keep_alive_s=0.05) as srv:
            a = await DerpTestClient.connect(srv.addr)
            a.send(frames.encode_frame(frames.FRAME_PING, b"abcdefgh" + b"x" * 100))  # the first 8 count
            assert await a.expect(frames.FRAME_PONG) == b"abcdefgh"
            assert srv.metrics.pongs_total == 1
            for _ in range(3):  # every 50 ms plus up to 1/12 of that as jitter
                ftype, payload = await a.next_frame(timeout=1)
                assert (ftype, payload) == (frames.FRAME_KEEP_ALIVE, b"")
            assert srv.metrics.keep_alives_total >= 3

    _run(body())


def test_duplicate_key_newest_wins_and_the_old_one_is_told():
    async def body():
        async with serve() as srv:
            key = new_key()
            old = await DerpTestClient.connect(srv.addr, private=key)
            new = await DerpTestClient.connect(srv.addr, private=key)
            sender = await DerpTestClient.connect(srv.addr)
            health = frames.parse_health(await old.expect(frames.FRAME_HEALTH))
            assert "another connection" in health
            sender.send_packet(key.public(), b"to the newest")
            assert await new.recv_packet() == (sender.key, b"to the newest")
            # "Last writer is active": the old one speaks, and gets the packets again.
            old.send(frames.build_note_preferred(False))
            assert frames.parse_health(await old.expect(frames.FRAME_HEALTH)) == ""
            assert "another connection" in frames.parse_health(await new.expect(frames.FRAME_HEALTH))
            sender.send_packet(key.public(), b"to the old one")
            assert await old.recv_packet() == (sender.key, b"to the old one")
            assert srv.metrics.dup_connections_total == 1
            await old.close()
            await wait_for(lambda: srv.registry.connections_of(key.public()) == 1)
            assert frames.parse_health(await new.expect(frames.FRAME_HEALTH)) == ""
            sender.send_packet(key.public(), b"only one left")
            assert await new.recv_packet() == (sender.key, b"only one left")

    _run(body())


def test_http_endpoints():
    async def body():
        async with serve() as srv:
            base = "http://127.0.0.1:%d" % srv.addr[1]

            def get(path, method="GET", headers=None):  # type: ignore[no-untyped-def]
                req = urllib.request.Request(base + path, method=method, headers=headers or {})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        return r.status, dict(r.headers), r.read()
                except urllib.error.HTTPError as e:
                    return e.code, dict(e.headers), e.read()

            loop = asyncio.get_running_loop()
            status, headers, _ = await loop.run_in_executor(None, get, "/derp/probe")
            assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
            status, headers, _ = await loop.run_in_executor(None, get, "/derp/latency-check", "HEAD")
            assert status == 200
            status, _, _ = await loop.run_in_executor(None, get, "/derp/probe", "POST")
            assert status == 405
            status, _, text = await loop.run_in_executor(None, get, "/derp")
            assert status == 426 and b"upgrade" in text
            ok = {"X-Tailscale-Challenge": "abc.DEF_1:2-3"}
            status, headers, _ = await loop.run_in_executor(None, get, "/generate_204", "GET", ok)
            assert status == 204 and headers["X-Tailscale-Response"] == "response abc.DEF_1:2-3"
            bad = {"X-Tailscale-Challenge": "no spaces allowed"}
            status, headers, _ = await loop.run_in_executor(None, get, "/generate_204", "GET", bad)
            assert status == 204 and "X-Tailscale-Response" not in headers
            long = {"X-Tailscale-Challenge": "a" * 65}
            status, headers, _ = await loop.run_in_executor(None, get, "/generate_204", "GET", long)
            assert "X-Tailscale-Response" not in headers
            status, _, _ = await loop.run_in_executor(None, get, "/metrics")
            assert status == 404  # metrics live on their own listener

    _run(body())


def test_metrics_endpoint_shows_the_counters():
    async def body():
        async with serve() as srv:
            a = await DerpTestClient.connect(srv.addr)
            b = await DerpTestClient.connect(srv.addr)
            a.send_packet(b.key, b"count me")
            await b.recv_packet()
            a.send_packet(new_key().public(), b"lost")
            await wait_for(lambda: srv.metrics.dropped() == 1)
            assert srv.metrics_addr is not None
            url = "http://127.0.0.1:%d/metrics" % srv.metrics_addr[1]

            def fetch() -> str:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    return r.read().decode()

            text = await asyncio.get_running_loop().run_in_executor(None, fetch)
            values = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    values[name] = float(value)
            assert values["meshlet_derp_logins_total"] == 2
            assert values["meshlet_derp_clients_local"] == 2
            assert values["meshlet_derp_packets_received_total"] == 2
            assert values["meshlet_derp_packets_sent_total"] == 1
            assert values["meshlet_derp_bytes_received_total"] == len(b"count me") + len(b"lost")
            assert values['meshlet_derp_packets_dropped_total{reason="unknown_dest",kind="other"}'] == 1
            assert values["meshlet_derp_queue_depth"] == 0
            assert values["meshlet_derp_process_resident_memory_bytes"] > 0
            assert "# TYPE meshlet_derp_packets_dropped_total counter" in text

    _run(body())


def test_watch_conns_needs_the_mesh_key_and_floods_peer_present():
    async def body():
        mesh_key = bytes(range(32))
        async with serve(mesh_key=mesh_key) as srv:
            a = await DerpTestClient.connect(srv.addr)
            watcher = await DerpTestClient.connect(srv.addr, mesh_key=mesh_key)
            watcher.send(frames.build_watch_conns())
            seen = set()
            for _ in range(2):  # the watcher itself is connected too
                seen.add(frames.parse_peer_present(await watcher.expect(frames.FRAME_PEER_PRESENT)).key)
            assert seen == {a.key, watcher.key}
            b = await DerpTestClient.connect(srv.addr)
            p = frames.parse_peer_present(await watcher.expect(frames.FRAME_PEER_PRESENT))
            assert (
                p.key == b.key and p.ip == b"\x7f\x00\x00\x01" and p.flags == frames.PEER_PRESENT_IS_REGULAR
            )
            await b.close()
            assert frames.parse_peer_gone(await watcher.expect(frames.FRAME_PEER_GONE)) == (
                b.key,
                frames.PEER_GONE_DISCONNECTED,
            )
            # Without the key, WatchConns closes the connection.
            a.send(frames.build_watch_conns())
            assert await a.closed()
            assert srv.metrics.connection_errors["not_mesh_peer"] == 1

    _run(body())


def test_rate_limit_is_advertised_in_server_info_and_paces_reads():
    async def body():
        async with serve(rate_limit_bytes_per_s=200_000, rate_burst_bytes=70_000) as srv:
            a = await DerpTestClient.connect(srv.addr)
            b = await DerpTestClient.connect(srv.addr)
            assert a.server_info["TokenBucketBytesPerSecond"] == 200_000
            assert a.server_info["TokenBucketBytesBurst"] == 70_000
            loop = asyncio.get_running_loop()
            start = loop.time()
            for _ in range(100):  # 128 KB: 70 KB of burst, then ~0.3 s at 200 KB/s
                a.send_packet(b.key, bytes(1280))
            for _ in range(100):
                await b.recv_packet()
            assert loop.time() - start > 0.2
            assert srv.metrics.rate_limit_waits_total >= 1

    _run(body())
