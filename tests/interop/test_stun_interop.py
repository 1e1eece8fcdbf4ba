"""meshlet's STUN codec against real STUN software on loopback (shared/lab/README.md §3).

Two directions:

* meshlet as the **client**: `stun.build_binding_request` sent to coturn's
  `turnserver --stun-only`, its answer read with `stun.parse_binding_response`.
  coturn answers Tailscale's SOFTWARE+FINGERPRINT request with five attributes
  (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN, SOFTWARE, FINGERPRINT),
  so this also shows the parser skipping what it does not use. coturn drops a
  request whose FINGERPRINT is wrong, so its answer confirms meshlet's CRC.
* meshlet as the **server**: a responder thread in this file (not the real
  server, which is a later issue) answers each datagram with
  `stun.build_binding_response(stun.parse_binding_request(...))`, and three
  real clients must accept the answer: coturn's `turnutils_stunclient`
  (RFC 5389), Debian's `stun` (RFC 3489, MAPPED-ADDRESS only) and, optionally,
  `turnutils_natdiscovery -m`.

Every wait is bounded; servers and threads are stopped in fixture teardown.
The printed lines (pytest -rA) record what each peer sent and said.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from meshlet import stun
from meshlet.errors import ProtocolError

pytestmark = pytest.mark.interop

LOOPBACK = "127.0.0.1"
LOOPBACK_IP = socket.inet_aton(LOOPBACK)

_ATTR_NAMES = {
    0x0001: "MAPPED-ADDRESS",
    0x0003: "CHANGE-REQUEST",
    0x0004: "SOURCE-ADDRESS",
    0x0005: "CHANGED-ADDRESS",
    0x0020: "XOR-MAPPED-ADDRESS",
    0x0027: "RESPONSE-PORT",
    0x802B: "RESPONSE-ORIGIN",
    0x802C: "OTHER-ADDRESS",
    0x8020: "XOR-MAPPED-ADDRESS(old)",
    0x8022: "SOFTWARE",
    0x8028: "FINGERPRINT",
}


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip("%s is not installed (Debian package %s; ./dev setup installs it)" % (tool, package))
    return path


def _walk(data: bytes) -> "list[tuple[int, bytes]]":
    """(type, value) of each attribute, written independently of meshlet's codec."""
    end = 20 + int.from_bytes(data[2:4], "big")
    out, i = [], 20
    while i + 4 <= end:
        kind, n = int.from_bytes(data[i : i + 2], "big"), int.from_bytes(data[i + 2 : i + 4], "big")
        out.append((kind, bytes(data[i + 4 : i + 4 + n])))
        i += 4 + (n + 3) // 4 * 4
    return out


def _describe(data: bytes) -> str:
    return ", ".join("%s(%d)" % (_ATTR_NAMES.get(k, "0x%04x" % k), len(v)) for k, v in _walk(data)) or "none"


def _free_port() -> int:
    """A port free for both UDP and TCP on loopback (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOPBACK, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port found")


# -- meshlet as the client, coturn as the server ------------------------------


@pytest.fixture
def coturn(tmp_path):
    """`turnserver --stun-only` on a free loopback port; yields (port, log path)."""
    exe = _need("turnserver", "coturn")
    port = _free_port()
    log = tmp_path / "turn.log"
    argv = [
        exe, "-n", "--stun-only", "--no-auth", "-L", LOOPBACK, "--listening-port", str(port),
        "--no-cli", "--no-tls", "--no-dtls", "--log-file", "stdout", "--simple-log",
        "--userdb", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "turnserver.pid"),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "Total General servers" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                why = "turnserver exited (%d) before it was ready:\n%s" % (proc.returncode, log.read_text())
                pytest.fail(why)
            if time.monotonic() > deadline:
                pytest.fail("turnserver not ready after 10 s:\n%s" % log.read_text())
            time.sleep(0.02)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _ask(
    sock: socket.socket, port: int, requests: "list[bytes]", want_txid: bytes, grace: float = 0.0
) -> "list[bytes]":
    """Sends `requests` (resending up to 5 times) until a reply carrying want_txid
    arrives, then collects stragglers for `grace` seconds. Returns every reply seen."""
    replies: "list[bytes]" = []
    for _ in range(5):
        for r in requests:
            sock.sendto(r, (LOOPBACK, port))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _src = sock.recvfrom(2048)
            except socket.timeout:
                break
            replies.append(data)
            if data[8:20] == want_txid:
                deadline = min(deadline, time.monotonic() + grace)
        if any(d[8:20] == want_txid for d in replies):
            return replies
    pytest.fail("no answer from port %d after 5 tries" % port)


def test_meshlet_request_against_coturn(coturn):
    port, _log = coturn
    txid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        own = sock.getsockname()
        replies = _ask(sock, port, [stun.build_binding_request(txid)], txid)
    data = [d for d in replies if d[8:20] == txid][0]
    print("coturn answered %d bytes: %s" % (len(data), _describe(data)))
    print("  %s" % data.hex())
    resp = stun.parse_binding_response(data)
    assert resp.txid == txid
    assert (resp.ip, resp.port) == (LOOPBACK_IP, own[1]), (resp.ip, resp.port, own)
    kinds = [k for k, _ in _walk(data)]
    assert 0x0020 in kinds, "coturn sent no XOR-MAPPED-ADDRESS: %s" % _describe(data)
    # The parser must not depend on XOR-MAPPED-ADDRESS being the only attribute:
    # check it also agrees with coturn's plain MAPPED-ADDRESS, if present.
    for k, v in _walk(data):
        if k == 0x0001:
            assert (v[4:8], int.from_bytes(v[2:4], "big")) == (LOOPBACK_IP, own[1])


def test_coturn_checks_fingerprint_so_its_answer_confirms_meshlets_crc(coturn):
    port, _log = coturn
    good_txid, bad_txid = os.urandom(12), os.urandom(12)
    bad = bytearray(stun.build_binding_request(bad_txid))
    bad[-1] ^= 0xFF  # last byte of the FINGERPRINT CRC
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        replies = _ask(sock, port, [bytes(bad), stun.build_binding_request(good_txid)], good_txid, grace=0.3)
    txids = [d[8:20] for d in replies]
    counts = (txids.count(good_txid), txids.count(bad_txid))
    print("replies: %d to the good request, %d to the corrupted one" % counts)
    assert bad_txid not in txids, "coturn answered a request with a corrupted FINGERPRINT"


# -- meshlet as the server, real clients ---------------------------------------


class _Responder:
    """A UDP thread answering Binding requests with meshlet's codec.

    answered: (source port, classic?, attribute names of the request)
    dropped:  (source, reason, request hex), for datagrams raising ProtocolError
    errors:   anything else the codec raised: always a bug
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.answered: "list[tuple[int, bool, str]]" = []
        self.dropped: "list[tuple[tuple[str, int], str, str]]" = []
        self.errors: "list[str]" = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stun-responder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError as e:
                if not self._stop.is_set():
                    self.errors.append("recvfrom: %r" % e)
                return
            try:
                req = stun.parse_binding_request(data)
                if req.change_request:
                    # One socket cannot answer "from another IP/port"; answering
                    # from this one would fake a full-cone NAT to the client.
                    self.dropped.append((src, "change_request", data.hex()))
                    continue
                reply = stun.build_binding_response(req, socket.inet_aton(src[0]), src[1])
            except ProtocolError as e:
                self.dropped.append((src, e.reason, data.hex()))
                continue
            except Exception as e:  # noqa: BLE001 - a parser bug; reported by the tests
                self.errors.append("%r on %s" % (e, data.hex()))
                continue
            self.sock.sendto(reply, src)
            self.answered.append((src[1], req.classic, _describe(data)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        assert not self._thread.is_alive(), "responder thread did not stop"

    def report(self) -> None:
        for port, classic, attrs in self.answered:
            kind = "RFC 3489" if classic else "RFC 5389"
            print("  answered :%d %s request, attributes: %s" % (port, kind, attrs))
        for src, reason, hexdata in self.dropped:
            print("  dropped %s:%d (%s): %s" % (src[0], src[1], reason, hexdata))
        for e in self.errors:
            print("  ERROR %s" % e)


@pytest.fixture
def responder():
    r = _Responder()
    try:
        yield r
    finally:
        r.close()


def _run(argv: "list[str]", timeout: float) -> "tuple[int, str, float]":
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        pytest.fail("%s did not finish in %s s; output so far:\n%s" % (argv[0], timeout, out))
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_turnutils_stunclient_accepts_meshlets_response(responder):
    exe = _need("turnutils_stunclient", "coturn")
    rc, out, took = _run([exe, "-p", str(responder.port), LOOPBACK], timeout=15)
    print("turnutils_stunclient (exit %d, %.2f s):\n%s" % (rc, took, out.strip()))
    responder.report()
    assert responder.errors == []
    found = re.findall(r"UDP reflexive addr: 127\.0\.0\.1:(\d+)", out)
    assert found, "no reflexive address in turnutils_stunclient's output"
    assert {int(p) for p in found} <= {p for p, _, _ in responder.answered}, "the address is not one we sent"
    assert responder.dropped == []
    assert rc == 0


def test_debian_stun_client_accepts_meshlets_rfc3489_response(responder):
    # `stun HOST:PORT` (-p would be the *client's* source port); its exit
    # status is the NAT-type code, not success (lab README §3 pitfalls).
    # Tests II/III carry CHANGE-REQUEST (change IP / change port). A one-socket
    # responder cannot honour it and must not fake it by answering from the same
    # address, so those requests go unanswered (and `stun` retries them for a few
    # seconds); only the plain test I is answered. The NAT verdict depends on
    # that, so it is printed, not asserted.
    exe = _need("stun", "stun-client")
    rc, out, took = _run([exe, "%s:%d" % (LOOPBACK, responder.port), "-v"], timeout=30)
    verdict = re.search(r"Primary: ([^\n]*)", out)
    primary = verdict.group(1).strip() if verdict else "?"
    print("stun (exit %d = NAT type code, %.2f s): Primary: %s" % (rc, took, primary))
    for line in out.splitlines():
        if re.match(r"(MappedAddress|Received|test |is nat|mapped IP|hairpin|preserve)", line):
            print("  " + line.strip())
    responder.report()
    assert responder.errors == []
    assert responder.dropped and {reason for _, reason, _ in responder.dropped} == {"change_request"}
    # Proof that it received and parsed our answers: it prints the MAPPED-ADDRESS
    # it decoded from each Binding success (type 257 = 0x0101), and those are
    # exactly the source ports our responder saw.
    assert "Received message of type 257" in out
    mapped = re.findall(r"MappedAddress = 127\.0\.0\.1:(\d+)", out)
    assert mapped, "stun printed no MappedAddress line"
    assert {int(p) for p in mapped} <= {p for p, classic, _ in responder.answered if classic}
    assert re.search(r"^test I = 1", out, re.M), "stun's own verdict: test I (plain binding) failed"


def test_turnutils_natdiscovery_mapping_against_meshlet(responder):
    # Optional peer: mapping discovery only (-m). Filtering (-f) needs
    # CHANGE-REQUEST answered from another address, which one socket cannot do.
    exe = _need("turnutils_natdiscovery", "coturn")
    rc, out, took = _run([exe, "-m", "-p", str(responder.port), LOOPBACK], timeout=15)
    print("turnutils_natdiscovery -m (exit %d, %.2f s):\n%s" % (rc, took, out.strip()))
    responder.report()
    assert responder.errors == []
    assert responder.dropped == []
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out)
    assert rc == 0
