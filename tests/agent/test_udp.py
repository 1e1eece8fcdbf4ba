"""UDP sockets (agent/meshlet_agent/udp.py): GSO batching on a real kernel, and its fallbacks."""

import errno
import socket
from typing import Any

import pytest

from meshlet_agent.udp import Udp

LOOPBACK = bytes([127, 0, 0, 1])


def receiver() -> socket.socket:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(2)
    return r


def test_runs_arrive_as_separate_datagrams() -> None:
    """A run of equal-size datagrams (and a shorter last one) must arrive exactly as sent, in order."""
    r = receiver()
    udp = Udp.open(0)
    try:
        dst = (LOOPBACK, r.getsockname()[1])
        sizes = [1452] * 10 + [700] + [1452] * 3 + [32]
        sent = [(None, dst, bytes([i]) * n) for i, n in enumerate(sizes)]
        errors: list[OSError] = []
        udp.send_many(sent, errors.append)
        got = [r.recv(65535) for _ in sent]
        assert errors == []
        assert got == [t[2] for t in sent]
        if udp.gso:
            assert udp.gso_sends >= 2  # 11 datagrams, then 3 + 1
    finally:
        udp.close()
        r.close()


def test_gso_knob_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_WG_GSO", "0")
    r = receiver()
    udp = Udp.open(0)
    try:
        dst = (LOOPBACK, r.getsockname()[1])
        udp.send_many([(None, dst, b"x" * 100)] * 5, no_error)
        assert [r.recv(200) for _ in range(5)] == [b"x" * 100] * 5
        assert udp.gso is False and udp.gso_sends == 0
    finally:
        udp.close()
        r.close()


def no_error(e: OSError) -> None:
    raise AssertionError("unexpected send error: %s" % e)


class FakeSocket:
    def __init__(self, fail_sendmsg: int) -> None:
        self.fail_sendmsg = fail_sendmsg
        self.sendto_calls: list[bytes] = []
        self.sendmsg_calls = 0

    def getsockname(self) -> tuple[str, int]:
        return ("0.0.0.0", 51820)

    def sendto(self, data: bytes, sa: Any) -> int:
        self.sendto_calls.append(data)
        return len(data)

    def sendmsg(self, bufs: Any, anc: Any, flags: int, sa: Any) -> int:
        self.sendmsg_calls += 1
        if self.fail_sendmsg:
            self.fail_sendmsg -= 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return sum(len(b) for b in bufs)


def test_gso_refused_from_the_start_is_turned_off() -> None:
    fake = FakeSocket(fail_sendmsg=1)
    udp = Udp(fake, None)  # type: ignore[arg-type]
    dst = (LOOPBACK, 9)
    udp.send_many([(None, dst, b"a" * 10)] * 4, no_error)
    assert udp.gso is False and fake.sendto_calls == [b"a" * 10] * 4
    udp.send_many([(None, dst, b"b" * 10)] * 4, no_error)
    assert fake.sendmsg_calls == 1  # never tried again


def test_gso_refused_later_falls_back_for_that_run_only() -> None:
    fake = FakeSocket(fail_sendmsg=0)
    udp = Udp(fake, None)  # type: ignore[arg-type]
    dst = (LOOPBACK, 9)
    udp.send_many([(None, dst, b"a" * 10)] * 4, no_error)
    assert udp.gso_sends == 1
    fake.fail_sendmsg = 1
    udp.send_many([(None, dst, b"b" * 10)] * 4, no_error)
    assert udp.gso is True and fake.sendto_calls == [b"b" * 10] * 4


def test_ipv6_destination_without_ipv6_socket_is_reported() -> None:
    udp = Udp(FakeSocket(0), None)  # type: ignore[arg-type]
    errors: list[OSError] = []
    udp.send_many([(None, (bytes(15) + b"\x01", 9), b"x")], errors.append)
    assert [e.errno for e in errors] == [errno.EAFNOSUPPORT]


def test_port_in_use_error_names_the_fix() -> None:
    first = Udp.open(0)
    try:
        from meshlet_agent.udp import UdpError

        with pytest.raises(UdpError, match="already in use; stop the other WireGuard"):
            Udp.open(first.port)
    finally:
        first.close()
