"""The tailnet commands of the `meshlet` CLI (agent/meshlet_agent/cli/tailnet.py): flags, output, errors.

The daemon side is a real localapi.Server on a temporary socket with canned
answers (the Backend has its own tests); what is tested here is what the
user types and reads.
"""

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlet_agent import cli, localapi
from meshlet_agent.cli import tailnet
from meshlet_agent.cli.common import CliError


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- a daemon with canned answers ----------------------------------------------------------


class CannedDaemon:
    """A localapi.Server in a thread; `answers[name]` is the reply body, or an error string."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _handler(self, name: str) -> localapi.Handler:
        async def handle(req: dict[str, Any]) -> dict[str, Any]:
            self.requests.append(req)
            answer = self.answers[name]
            if isinstance(answer, list):  # a sequence of answers, one per request (status polls)
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            if isinstance(answer, str):
                raise localapi.RequestError(answer)
            return dict(answer)

        return handle

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            names = ["up", "down", "logout", "status", "ip", "ping", "whois"]
            server = localapi.Server(self.path, {n: self._handler(n) for n in names}, mode=0o660)
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.close()

        self._loop.run_until_complete(serve())

    def __enter__(self) -> "CannedDaemon":
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._loop.close()


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CannedDaemon]:
    path = str(tmp_path / "meshletd.sock")
    monkeypatch.setenv("MESHLET_SOCKET", path)
    with CannedDaemon(path) as d:
        yield d


# --- statuses as the daemon sends them --------------------------------------------------------

SELF = {
    "ID": "1",
    "PublicKey": "nodekey:" + "a" * 64,
    "HostName": "pi-kitchen",
    "DNSName": "pi-kitchen.tail.example.",
    "OS": "linux",
    "UserID": 7,
    "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
    "Online": True,
    "Active": False,
    "Relay": "lab",
    "CurAddr": "",
    "RxBytes": 0,
    "TxBytes": 0,
    "Tags": [],
}


def peer(name: str, ip: str, **kw: Any) -> dict[str, Any]:
    p = dict(SELF, HostName=name, DNSName=name + ".tail.example.", TailscaleIPs=[ip], OS="linux")
    p.update(kw)
    return p


RUNNING = {
    "BackendState": "Running",
    "AuthURL": "",
    "Error": "",
    "TailscaleIPs": SELF["TailscaleIPs"],
    "Self": SELF,
    "Peer": {
        "nodekey:" + "b" * 64: peer("laptop", "100.64.0.3", Active=True, TxBytes=1234, RxBytes=5678),
        "nodekey:" + "c" * 64: peer("nas", "100.64.0.2", Online=False, Tags=["tag:server"]),
        "nodekey:" + "d" * 64: peer("phone", "100.64.0.4", OS="android", TxBytes=10, RxBytes=0),
    },
    "User": {"7": {"ID": 7, "LoginName": "alice@example.com", "DisplayName": "Alice"}},
    "Health": [],
    "MagicDNSSuffix": "tail.example",
}


# --- parsing -----------------------------------------------------------------------------------


def test_up_flags() -> None:
    p = cli.build_parser()
    a = p.parse_args(["up"])
    assert (a.login_server, a.authkey, a.accept_dns, a.timeout, a.json, a.socket) == (
        None,
        None,
        True,
        0.0,
        False,
        None,
    )
    a = p.parse_args(
        ["up", "--login-server", "http://c:8080", "--authkey", "file:/k", "--hostname", "pi",
         "--advertise-tags", "tag:a,tag:b", "--accept-dns=false", "--timeout", "30", "--json"]
    )  # fmt: skip
    assert (a.login_server, a.authkey, a.hostname, a.advertise_tags, a.accept_dns, a.timeout) == (
        "http://c:8080", "file:/k", "pi", "tag:a,tag:b", False, 30.0,
    )  # fmt: skip
    assert p.parse_args(["up", "--accept-dns"]).accept_dns is True


def test_socket_flag_before_or_after_the_command() -> None:
    p = cli.build_parser()
    assert p.parse_args(["--socket", "/x.sock", "status"]).socket == "/x.sock"
    assert p.parse_args(["status", "--socket", "/y.sock"]).socket == "/y.sock"
    assert p.parse_args(["status"]).socket is None


@pytest.mark.parametrize(
    "argv",
    [["up", "--accept-dns=maybe"], ["ip", "-4", "-6"], ["ping"], ["whois"], ["ping", "-c", "x", "pi"]],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2


@pytest.mark.parametrize("cmd", ["daemon", "up", "down", "logout", "status", "ip", "ping", "whois"])
def test_every_command_teaches_with_examples(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meshlet %s" % cmd)
    assert "example" in out and "meshlet %s" % cmd in out.split("example", 1)[1]


def test_up_request_reads_the_key_file(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    key.write_text("tskey-auth-abc\n")
    args = cli.build_parser().parse_args(
        ["up", "--login-server", "http://c", "--authkey", "file:%s" % key, "--advertise-tags", "tag:a, tag:b"]
    )
    req = tailnet.up_request(args)
    assert req == {
        "request": "up",
        "login_server": "http://c",
        "authkey": "tskey-auth-abc",
        "enroll_code": None,
        "hostname": None,
        "advertise_tags": ["tag:a", "tag:b"],
        "accept_dns": True,
        "ephemeral": False,
        "force_reauth": False,
    }


@pytest.mark.parametrize(
    "argv, error",
    [
        (
            ["up", "--authkey", "file:/nonexistent/k"],
            "cannot read the auth key from /nonexistent/k: No such file",
        ),
        (
            ["up", "--advertise-tags", "server"],
            "--advertise-tags: 'server' is not a tag; write tags like tag:server",
        ),
        (
            ["up", "--authkey", "k", "--enroll-code", "meshlet://enroll?x"],
            "give --authkey or --enroll-code, not both",
        ),
    ],
)
def test_up_request_errors_name_the_fix(argv: list[str], error: str) -> None:
    with pytest.raises(CliError) as info:
        tailnet.up_request(cli.build_parser().parse_args(argv))
    assert str(info.value).startswith(error)


# --- output ------------------------------------------------------------------------------------


def test_status_table_like_tailscale() -> None:
    text, code = tailnet.format_status(RUNNING)
    assert code == 0
    assert text == (
        "100.64.0.1  pi-kitchen  alice@          linux    -\n"
        '100.64.0.3  laptop      alice@          linux    active; relay "lab", tx 1234 rx 5678\n'
        "100.64.0.2  nas         tagged-devices  linux    offline\n"
        "100.64.0.4  phone       alice@          android  idle, tx 10 rx 0"
    )


def test_status_when_not_running_says_what_to_do() -> None:
    text, code = tailnet.format_status(
        {"BackendState": "NeedsLogin", "AuthURL": "", "Health": ["not logged in; run `meshlet up ...`"]}
    )
    assert code == 1
    assert text.splitlines() == [
        "Logged out: run `meshlet up --login-server URL --authkey KEY`",
        "# Health check:",
        "#     - not logged in; run `meshlet up ...`",
    ]
    text, _ = tailnet.format_status({"BackendState": "NeedsLogin", "AuthURL": "http://c/a/xyz"})
    assert text == "Logged out.\nLog in at: http://c/a/xyz"
    assert tailnet.format_status({"BackendState": "Stopped"}) == ("meshlet is stopped: run `meshlet up`", 1)


@pytest.mark.parametrize(
    "fields, path",
    [
        ({}, "-"),
        ({"Online": False}, "offline"),
        ({"TxBytes": 5}, "idle, tx 5 rx 0"),
        ({"TxBytes": 5, "Online": False}, "idle; offline, tx 5 rx 0"),
        ({"Active": True, "Relay": "900"}, 'active; relay "900"'),
        ({"Active": True, "Relay": "900", "CurAddr": "192.0.2.1:41641"}, "active; direct 192.0.2.1:41641"),
    ],
)
def test_peer_path_column(fields: dict[str, Any], path: str) -> None:
    p = {"Online": True, "Active": False, "Relay": "", "CurAddr": "", "TxBytes": 0, "RxBytes": 0}
    p.update(fields)
    assert tailnet.peer_path(p) == path


def test_pong_lines_like_tailscale_ping() -> None:
    pong = {"node": "pi-kitchen", "ip": "100.64.0.2", "via": "DERP(900)", "latency_ms": 3.2}
    assert tailnet.format_pong(pong) == "pong from pi-kitchen (100.64.0.2) via DERP(900) in 3ms"
    assert tailnet.format_pong(dict(pong, latency_ms=0.42)) == (
        "pong from pi-kitchen (100.64.0.2) via DERP(900) in 0.4ms"
    )
    lost = {"node": "pi-kitchen", "ip": "100.64.0.2", "error": "no reply within 5 s"}
    assert tailnet.format_pong(lost) == "no pong from pi-kitchen (100.64.0.2): no reply within 5 s"


def test_whois_text() -> None:
    reply = {
        "node": {
            "ID": 2,
            "Name": "nas.tail.example.",
            "Addresses": ["100.64.0.2/32"],
            "OS": "linux",
            "Tags": [],
        },
        "user": {"ID": 7, "LoginName": "alice@example.com", "DisplayName": "Alice"},
    }
    assert tailnet.format_whois(reply) == (
        "Machine:\n"
        "  Name:      nas.tail.example\n"
        "  ID:        2\n"
        "  Addresses: 100.64.0.2/32\n"
        "  OS:        linux\n"
        "User:\n"
        "  Name:      alice@example.com\n"
        "  Display:   Alice\n"
        "  ID:        7"
    )


def test_ip_families() -> None:
    ips = ["100.64.0.1", "fd7a:115c:a1e0::1"]
    assert tailnet.filter_ips(ips, False, False) == ips
    assert tailnet.filter_ips(ips, True, False) == ["100.64.0.1"]
    assert tailnet.filter_ips(ips, False, True) == ["fd7a:115c:a1e0::1"]


# --- up's wait ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_up_waits_through_login_to_running() -> None:
    seq: list[dict[str, Any]] = [
        {"BackendState": "Starting"},
        {"BackendState": "Starting"},
        {"BackendState": "NeedsLogin", "AuthURL": "http://c/a/1"},
        {"BackendState": "NeedsLogin", "AuthURL": "http://c/a/1"},
        RUNNING,
    ]
    err = io.StringIO()
    clock = Clock()
    st = tailnet.wait_until_running(lambda: seq.pop(0), err, 0, True, clock.sleep, clock.now)
    assert st is RUNNING
    text = err.getvalue()
    assert text.count("waiting for control…") == 1
    assert text.count("To authenticate, visit:\n\n\thttp://c/a/1") == 1
    assert "█" in text or "▀" in text  # the QR code, drawn with block characters


def test_up_tells_why_it_still_waits() -> None:
    health = "cannot reach control: connection refused; retrying (known peers keep working)"
    seq: list[dict[str, Any]] = [{"BackendState": "Starting", "Health": [health]}] * 3 + [RUNNING]
    err = io.StringIO()
    clock = Clock()
    tailnet.wait_until_running(lambda: seq.pop(0), err, 0, False, clock.sleep, clock.now)
    assert err.getvalue() == "meshlet: %s\nwaiting for control…\n" % health


def test_up_stops_on_the_daemons_error() -> None:
    seq: list[dict[str, Any]] = [
        {"BackendState": "Starting"},
        {"BackendState": "NeedsLogin", "Error": "invalid key: create one"},
    ]
    clock = Clock()
    with pytest.raises(CliError, match="^invalid key: create one$"):
        tailnet.wait_until_running(lambda: seq.pop(0), io.StringIO(), 0, False, clock.sleep, clock.now)


def test_up_timeout_names_the_state() -> None:
    clock = Clock()
    with pytest.raises(CliError, match=r"not running after 3 s \(state Starting\); raise --timeout"):
        tailnet.wait_until_running(
            lambda: {"BackendState": "Starting"}, io.StringIO(), 3, False, clock.sleep, clock.now
        )


# --- against a daemon --------------------------------------------------------------------------


def test_daemon_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meshletd.sock"
    code, out, err = run(["--socket", str(path), "status"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "meshlet: cannot reach meshletd at %s: is `meshlet daemon` running? (systemctl start meshletd)\n"
        % path
    )


def test_status_and_json(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["status"] = {"status": RUNNING}
    code, out, _ = run(["status"], capsys)
    assert code == 0 and out.startswith("100.64.0.1  pi-kitchen")
    code, out, _ = run(["status", "--json"], capsys)
    assert code == 0 and __import__("json").loads(out) == RUNNING


def test_up_sends_the_request_and_waits(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["up"] = {"state": "Starting", "auth_url": "", "error": ""}
    daemon.answers["status"] = [{"status": {"BackendState": "Starting"}}, {"status": RUNNING}]
    code, out, err = run(
        ["up", "--login-server", "http://c:8080", "--authkey", "k1", "--hostname", "pi"], capsys
    )
    assert code == 0
    assert out == "meshlet is up: pi-kitchen.tail.example, 100.64.0.1 fd7a:115c:a1e0::1\n"
    assert "waiting for control…" in err
    up = daemon.requests[0]
    assert (up["request"], up["login_server"], up["authkey"], up["hostname"]) == (
        "up",
        "http://c:8080",
        "k1",
        "pi",
    )


def test_refusal_is_one_line(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["ping"] = "no peer named x: `meshlet status` lists the names"
    code, out, err = run(["ping", "x"], capsys)
    assert (code, out, err) == (1, "", "meshlet: no peer named x: `meshlet status` lists the names\n")


def test_ping_output_and_exit_status(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    pong = {"node": "nas", "ip": "100.64.0.2", "via": "DERP(lab)", "latency_ms": 12.6}
    lost = {"node": "nas", "ip": "100.64.0.2", "error": "no reply within 1 s"}
    daemon.answers["ping"] = {"pongs": [lost, pong]}
    code, out, _ = run(["ping", "-c", "2", "--timeout", "1", "nas"], capsys)
    assert code == 0
    assert (
        out
        == "no pong from nas (100.64.0.2): no reply within 1 s\npong from nas (100.64.0.2) via DERP(lab) in 13ms\n"
    )
    assert daemon.requests[-1] == {"request": "ping", "target": "nas", "count": 2, "timeout_s": 1.0}
    daemon.answers["ping"] = {"pongs": [lost]}
    code, _, err = run(["ping", "--timeout", "1", "nas"], capsys)
    assert code == 1 and "no reply from nas; is it online? (`meshlet status`)" in err


def test_ip_and_whois(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["ip"] = {"ips": ["100.64.0.2", "fd7a:115c:a1e0::2"]}
    assert run(["ip", "-4", "nas"], capsys)[1] == "100.64.0.2\n"
    assert daemon.requests[-1] == {"request": "ip", "name": "nas"}
    assert run(["ip"], capsys)[1] == "100.64.0.2\nfd7a:115c:a1e0::2\n"
    assert run(["ip", "-6", "--json"], capsys)[1] == '[\n  "fd7a:115c:a1e0::2"\n]\n'
    daemon.answers["whois"] = {"node": {"ID": 2, "Name": "nas."}, "user": {"ID": 7}}
    code, out, _ = run(["whois", "--json", "100.64.0.2"], capsys)
    assert code == 0 and '"Name": "nas."' in out


def test_down_and_logout(daemon: CannedDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["down"] = {"state": "Stopped"}
    daemon.answers["logout"] = {
        "state": "NeedsLogin",
        "warning": "control did not confirm the logout (timeout)",
    }
    assert run(["down"], capsys) == (0, "", "")
    code, _, err = run(["logout"], capsys)
    assert code == 0 and err == "meshlet: control did not confirm the logout (timeout)\n"
