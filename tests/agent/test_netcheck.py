"""Region latency probes against STUN responders and latency-check servers on 127.0.0.1.

The STUN responders are built from meshlet.stun and can be told to answer
only some probes, to answer with a stray transaction id first, or to stay
silent; each records when every request arrived, so the 0/100/200 ms
stagger and the rotation over a region's nodes are visible.
"""

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshlet import stun
from meshlet.derp.region import HomeRegion
from meshlet.wire import parse_ip
from meshlet_agent.cli.netcheck import format_report
from meshlet_agent.netcheck import (
    NetcheckError,
    RegionTarget,
    Report,
    Sample,
    StunProber,
    https_latency,
    local_addresses,
    measure,
    report,
)
from meshlet_testing import tlscert

HOST = "derp.test"


class StunResponder(asyncio.DatagramProtocol):
    """Answers Binding requests; `answer_from` skips the first requests, `answer=False` stays silent."""

    def __init__(self, answer: bool = True, answer_from: int = 0, stray_first: bool = False) -> None:
        self.answer = answer
        self.answer_from = answer_from
        self.stray_first = stray_first
        self.arrivals: list[float] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _OPEN.append(transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = stun.parse_binding_request(data)
        assert req.is_tailscale()
        self.arrivals.append(time.monotonic())
        if not self.answer or len(self.arrivals) <= self.answer_from:
            return
        assert self.transport is not None
        ip = parse_ip(addr[0])
        if self.stray_first:
            stray = stun.BindingRequest(bytes(12))
            self.transport.sendto(stun.build_binding_response(stray, ip, addr[1]), addr)
            self.transport.sendto(b"not stun at all", addr)
        self.transport.sendto(stun.build_binding_response(req, ip, addr[1]), addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


async def responder(**kwargs: bool | int) -> StunResponder:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: StunResponder(**kwargs),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    return proto


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _OPEN.append(s)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


_OPEN: list[socket.socket | asyncio.BaseTransport] = []  # closed when the test's loop ends


def run(coro: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            async with asyncio.timeout(20):
                await coro()
        finally:
            while _OPEN:
                _OPEN.pop().close()
            await asyncio.sleep(0)  # let transports finish closing

    asyncio.run(main())


def test_stun_probes_match_txids_stagger_and_stop_once_answered() -> None:
    async def main() -> None:
        quick = await responder(stray_first=True)
        second = await responder(answer_from=1)  # ignores the first probe
        silent_a = await responder(answer=False)
        silent_b = await responder(answer=False)
        sock = udp_socket()
        prober = StunProber(sock)
        targets = [
            RegionTarget(1, [("127.0.0.1", quick.port)]),
            RegionTarget(2, [("127.0.0.1", second.port)]),
            RegionTarget(3, [("127.0.0.1", silent_a.port), ("127.0.0.1", silent_b.port)]),
            RegionTarget(4, []),  # no STUN: not probed
        ]
        start = time.monotonic()
        samples = await prober.probe(targets, timeout_s=0.6)
        elapsed = time.monotonic() - start
        by_region = {s.region_id: s for s in samples}
        assert set(by_region) == {1, 2}
        assert all(s.kind == "stun" for s in samples)
        assert by_region[1].reflexive == (bytes([127, 0, 0, 1]), sock.getsockname()[1])
        assert 0 < by_region[1].latency_us < 100_000
        assert 0 < by_region[2].latency_us < 100_000  # timed from the probe that was answered
        assert len(quick.arrivals) == 1  # answered at once: probes 2 and 3 never sent
        assert len(second.arrivals) == 2
        assert second.arrivals[1] - second.arrivals[0] >= 0.09
        # Region 3: three probes at 0/100/200 ms, to Nodes[t % 2] in turn.
        assert (len(silent_a.arrivals), len(silent_b.arrivals)) == (2, 1)
        # Only lower bounds: the schedule is "not before"; a loaded CI machine may be late.
        assert silent_a.arrivals[1] - silent_a.arrivals[0] >= 0.18
        assert silent_b.arrivals[0] - silent_a.arrivals[0] >= 0.09
        assert elapsed >= 0.6  # waited for region 3 until the timeout
        assert prober.ignored == 1  # the stray txid; the non-STUN datagram is not even parsed

    run(main)


def test_stun_phase_ends_as_soon_as_every_region_answered() -> None:
    async def main() -> None:
        a, b = await responder(), await responder()
        sock = udp_socket()
        start = time.monotonic()
        samples = await StunProber(sock).probe(
            [RegionTarget(1, [("127.0.0.1", a.port)]), RegionTarget(2, [("127.0.0.1", b.port)])]
        )
        assert time.monotonic() - start < 0.5
        assert sorted(s.region_id for s in samples) == [1, 2]

    run(main)


def test_a_socket_owner_can_feed_the_prober() -> None:
    async def main() -> None:
        r = await responder()
        sock = udp_socket()
        prober = StunProber(sock, read_socket=False)
        loop = asyncio.get_running_loop()
        others: list[bytes] = []

        def readable() -> None:  # the socket's owner, e.g. the WireGuard pump
            data, addr = sock.recvfrom(2048)
            if not prober.handle_datagram(data, addr):
                others.append(data)

        loop.add_reader(sock.fileno(), readable)
        sock.sendto(b"wireguard", sock.getsockname())  # not STUN: stays with the owner
        samples = await prober.probe([RegionTarget(7, [("127.0.0.1", r.port)])])
        loop.remove_reader(sock.fileno())
        assert [s.region_id for s in samples] == [7]
        assert others == [b"wireguard"]
        assert not prober.handle_datagram(stun.build_binding_request(bytes(12)))  # nothing in flight

    run(main)


# --- HTTPS latency ---


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    return tlscert.make_cert(tmp_path, HOST)


async def latency_server(
    status: int = 200, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, list[bytes]]:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(
                b"HTTP/1.1 %d X\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n" % status
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    return server, requests


def _port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def test_https_latency_plain_and_tls(tmp_path: Path) -> None:
    cert_path, key_path = make_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)

    async def main() -> None:
        plain, plain_requests = await latency_server()
        secure, secure_requests = await latency_server(tls=tls)
        us = await https_latency(RegionTarget(1, [], HOST, _port(plain), tls=False, dial_host="127.0.0.1"))
        assert 0 < us < 1_000_000
        assert plain_requests == [
            b"GET /derp/latency-check HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
            % (HOST.encode(), _port(plain))
        ]
        target = RegionTarget(2, [], HOST, _port(secure), insecure=True, dial_host="127.0.0.1")
        assert 0 < await https_latency(target) < 1_000_000
        assert len(secure_requests) == 1
        with pytest.raises(NetcheckError, match="certificate"):
            await https_latency(RegionTarget(2, [], HOST, _port(secure), dial_host="127.0.0.1"))
        for s in (plain, secure):
            s.close()
            await s.wait_closed()

    run(main)


def test_https_latency_failures() -> None:
    async def main() -> None:
        server, _ = await latency_server(status=403)
        port = _port(server)
        with pytest.raises(NetcheckError, match="status 403"):
            await https_latency(RegionTarget(1, [], "127.0.0.1", port, tls=False))
        server.close()
        await server.wait_closed()
        with pytest.raises(NetcheckError, match="failed"):
            await https_latency(RegionTarget(1, [], "127.0.0.1", port, tls=False), timeout_s=2)

    run(main)


def test_measure_falls_back_to_https_when_udp_is_blocked_and_picks_a_home() -> None:
    async def main() -> None:
        silent = await responder(answer=False)
        web, _ = await latency_server()
        sock = udp_socket()
        prober = StunProber(sock)
        targets = [
            RegionTarget(1, [("127.0.0.1", silent.port)], "127.0.0.1", _port(web), tls=False),
            RegionTarget(2, [("127.0.0.1", silent.port)], "127.0.0.1", 1, tls=False),  # nothing listens
        ]
        # STUN is silent everywhere, so HTTPS measures instead.
        latencies, samples = await measure(targets, prober, stun_timeout_s=0.3)
        assert list(latencies) == [1]
        assert [(s.region_id, s.kind) for s in samples] == [(1, "https")]
        assert HomeRegion().update(latencies, 0) == 1
        # With STUN answering, no HTTPS check runs at all.
        good = await responder()
        targets = [RegionTarget(5, [("127.0.0.1", good.port)], "127.0.0.1", 1, tls=False)]
        latencies, samples = await measure(targets, StunProber(sock))
        assert list(latencies) == [5] and samples[0].kind == "stun"
        web.close()
        await web.wait_closed()

    run(main)


def test_sample_repr() -> None:
    assert repr(Sample(3, 1234, "stun")) == "Sample(3, 1234 us, stun)"


# --- the report: UDP, public address, mapping by destination (issue 7) ------------------------


class LyingResponder(StunResponder):
    """A STUN server behind which the client's NAT picks another port (a symmetric NAT, as seen
    from here): it reports the source port plus `shift`."""

    shift = 1000

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = stun.parse_binding_request(data)
        assert self.transport is not None
        self.transport.sendto(stun.build_binding_response(req, parse_ip(addr[0]), addr[1] + self.shift), addr)


async def responder_at(ip: str, cls: type = StunResponder) -> StunResponder:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(cls, local_addr=(ip, 0))
    return proto  # type: ignore[return-value]


def _sample(dest: str, reflexive_port: int, region: int = 1) -> Sample:
    return Sample(region, 1000, "stun", (bytes([198, 51, 100, 7]), reflexive_port), (dest, 3478))


def test_report_mapping_varies_only_with_answers_from_two_server_ips() -> None:
    same = Report.from_samples([_sample("192.0.2.1", 41641), _sample("192.0.2.2", 41641, 2)])
    assert same.udp and same.global_v4 == (bytes([198, 51, 100, 7]), 41641)
    assert same.mapping_varies_by_dest_ip is False
    hard = Report.from_samples([_sample("192.0.2.1", 41641), _sample("192.0.2.2", 50000, 2)])
    assert hard.mapping_varies_by_dest_ip is True
    one_server = Report.from_samples([_sample("192.0.2.1", 41641), _sample("192.0.2.1", 41641)])
    assert one_server.mapping_varies_by_dest_ip is None  # one destination shows one mapping: unknown
    https_only = Report.from_samples([Sample(1, 5000, "https")])
    assert not https_only.udp and https_only.global_v4 is None and https_only.latencies_us == {1: 5000}
    doc = hard.to_json()
    assert doc["UDP"] is True and doc["GlobalV4"] == "198.51.100.7:41641"
    assert doc["MappingVariesByDestIP"] is True and doc["RegionLatency"] == {"1": 1_000_000, "2": 1_000_000}


def test_report_asks_a_second_server_ip_of_the_region_for_the_mapping_test() -> None:
    async def body() -> None:
        first = await responder_at("127.0.0.1")
        second = await responder_at("127.0.0.2")
        sock = udp_socket()
        target = RegionTarget(1, [("127.0.0.1", first.port), ("127.0.0.2", second.port)])
        rep, latencies = await report([target], StunProber(sock))
        assert rep.udp and rep.global_v4 == (bytes([127, 0, 0, 1]), sock.getsockname()[1])
        assert rep.mapping_varies_by_dest_ip is False and second.arrivals  # no NAT on loopback
        assert set(latencies) == {1}

        only = await responder_at("127.0.0.1")
        rep, _ = await report([RegionTarget(2, [("127.0.0.1", only.port)])], StunProber(udp_socket()))
        assert rep.udp and rep.mapping_varies_by_dest_ip is None  # one STUN server: cannot tell

    run(body)


def test_report_sees_a_mapping_that_varies_by_destination() -> None:
    async def body() -> None:
        a = await responder_at("127.0.0.1")
        b = await responder_at("127.0.0.2", LyingResponder)
        targets = [RegionTarget(1, [("127.0.0.1", a.port)]), RegionTarget(2, [("127.0.0.2", b.port)])]
        rep, _ = await report(targets, StunProber(udp_socket()))
        assert rep.mapping_varies_by_dest_ip is True

    run(body)


def test_local_addresses_leave_out_the_tailnet_and_loopback() -> None:
    addrs = local_addresses()
    assert addrs, "no address at all (not even loopback)"
    for ip in addrs:
        assert not (len(ip) == 4 and ip[0] == 100 and 64 <= ip[1] < 128)
        assert not (len(ip) == 16 and ip[:6] == bytes.fromhex("fd7a115ca1e0"))
    if any(ip[0] != 127 for ip in addrs if len(ip) == 4) or any(len(ip) == 16 for ip in addrs):
        assert all(not (len(ip) == 4 and ip[0] == 127) for ip in addrs)


def test_the_cli_prints_the_report_like_tailscale_netcheck() -> None:
    rep = Report.from_samples([_sample("192.0.2.1", 41641), _sample("192.0.2.2", 41641, 2)])
    rep.preferred_derp = 1
    rep.region_names = {1: ("fra", "Frankfurt"), 2: ("nyc", "New York"), 3: ("syd", "Sydney")}
    text = format_report(rep.to_json(), now_unix=0)
    assert text.splitlines() == [
        "",
        "Report:",
        "\t* Time: 1970-01-01T00:00:00Z",
        "\t* UDP: true",
        "\t* IPv4: yes, 198.51.100.7:41641",
        "\t* IPv6: no, not measured",
        "\t* MappingVariesByDestIP: false",
        "\t* Nearest DERP: Frankfurt",
        "\t* DERP latency:",
        "\t\t- fra: 1.0ms (Frankfurt)",
        "\t\t- nyc: 1.0ms (New York)",
        "\t\t- syd:  (Sydney)",
    ]
