"""The daemon's Backend (agent/meshlet_agent/backend.py) against the real in-process meshlet-control.

Real parts: StateStore (a temporary directory), ControlLoop (talking TS2021 to
`meshlet_control.app` on 127.0.0.1), the MagicDNS Resolver, and OsDns in its
resolv.conf mode on a temporary file standing in for /etc/resolv.conf.

One fake: the DataPlane. The real one opens a TUN device and routes
100.64.0.0/10 and fd7a:115c:a1e0::/48 to it in this process's network
namespace, which other tests share; test_daemon_e2e.py runs the real one
in a namespace of its own. The fake records what the Backend tells it and
answers `status()` and `ping()` as the contract (docs/agent-internals.md) says.
"""

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshlet import enroll
from meshlet.control.netmap import NetMap
from meshlet.key import DiscoPrivate, MachinePrivate, NodePrivate, NodePublic
from meshlet_agent import daemon, localapi
from meshlet_agent.backend import Backend
from meshlet_agent.parts import Parts
from meshlet_agent.uprequest import UpRequest
from meshlet_agent.dns import OsDns
from meshlet_agent.statestore import StateStore
from meshlet_control.config import ServeConfig
from meshlet_control.state import State
from meshlet_testing.control import InProcessControl

_DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "lab",
            "RegionName": "test",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1"}],
        }
    }
}
_WAIT_S = 15.0  # a hang guard, not a performance claim
_RESOLV_CONF = "nameserver 192.0.2.53\nsearch example.com\n"


class Pong:
    def __init__(self, latency_s: float, via: str) -> None:
        self.latency_s = latency_s
        self.via = via


class FakeDataPlane:
    """Stands in for dataplane.DataPlane (see the module docstring for why)."""

    def __init__(
        self, key: NodePrivate, resolver: Any, on_home_region: Callable[[int], None], fail: str
    ) -> None:
        self.key = key
        self.resolver = resolver
        self.on_home_region = on_home_region
        self.disco_public = DiscoPrivate.generate(os.urandom).public()
        self.home_region = 0
        self.fail = fail
        self.netmaps: list[NetMap] = []
        self.started = self.closed = False
        self.unreachable: set[NodePublic] = set()

    async def start(self) -> None:
        if self.fail:
            raise RuntimeError(self.fail)
        self.started = True
        self.home_region = 900
        self.on_home_region(900)

    def apply_netmap(self, nm: NetMap) -> None:
        self.netmaps.append(nm)

    def status(self) -> dict[str, Any]:
        peers = {}
        for key in self.netmaps[-1].peers if self.netmaps else {}:
            peers[key.to_text()] = {
                "CurAddr": "",
                "Relay": "lab",
                "RxBytes": 100,
                "TxBytes": 200,
                "LastHandshake": "2026-01-01T00:00:00.000Z",
                "Online": True,
                "Active": True,
            }
        return {"HomeDERP": self.home_region, "Peer": peers, "Counters": {}}

    async def ping(self, peer: NodePublic, timeout_s: float = 5.0) -> Pong:
        if peer in self.unreachable:
            raise TimeoutError()
        return Pong(0.0032, "DERP(lab)")

    async def close(self) -> None:
        self.closed = True


class TestParts(Parts):
    """Real parts except the DataPlane; OsDns on temporary files."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        super().__init__(str(directory / "state"), "meshlet-t0", 0)
        self.directory = directory
        self.control_kw = {"save_delay_s": 0.05, "backoff_max_s": 0.5}
        self.dataplanes: list[FakeDataPlane] = []
        self.dataplane_fails = ""
        self.resolv_conf = directory / "resolv.conf"
        self.resolv_conf.write_text(_RESOLV_CONF)
        (directory / "hosts").write_text("127.0.0.1 localhost\n")

    def data_plane(
        self,
        node_private: NodePrivate,
        resolver: Any,
        on_home_region: Callable[[int], None],
        on_endpoints: Callable[[list[str], list[int]], None],
    ) -> Any:
        dp = FakeDataPlane(node_private, resolver, on_home_region, self.dataplane_fails)
        self.dataplanes.append(dp)
        return dp

    def os_dns(self) -> Any:
        return OsDns(
            self.ifname,
            self.state_dir,
            mode="resolv.conf",
            resolv_conf=str(self.resolv_conf),
            hosts=str(self.directory / "hosts"),
        )


class Node:
    """One agent: a Backend over its own state directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self.directory = directory
        self.parts = TestParts(directory)
        self.store = StateStore(self.parts.state_dir)
        self.states: list[str] = []
        self.backend = Backend(self.store, self.parts, self.states.append)

    @property
    def dataplane(self) -> FakeDataPlane:
        return self.parts.dataplanes[-1]

    async def until(self, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                st = self.backend.status()
                if ok(st):
                    return st
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(wait(), _WAIT_S)

    async def until_state(self, state: str) -> dict[str, Any]:
        return await self.until(lambda st: st["BackendState"] == state)


class Net(InProcessControl):
    def __init__(self, tmp: Path, state: State, key: MachinePrivate, cfg: ServeConfig) -> None:
        super().__init__(tmp, state, key, cfg)
        self.nodes: list[Node] = []

    def node(self, name: str) -> Node:
        n = Node(self.tmp / name)
        self.nodes.append(n)
        return n

    async def up(self, name: str, **kw: Any) -> Node:
        """A node logged in with a fresh pre-auth key, Running."""
        n = self.node(name)
        await n.backend.start()
        await n.backend.up(UpRequest(login_server=self.url, authkey=self.auth_key(), hostname=name, **kw))
        await n.until_state("Running")
        return n


@contextlib.asynccontextmanager
async def tailnet(tmp: Path) -> AsyncIterator[Net]:
    net = Net.create(tmp, _DERP_MAP, ["192.0.2.1"])
    await net.start_server()
    try:
        yield net
    finally:
        for n in net.nodes:
            await n.backend.close()
        await net.close()


def run(tmp: Path, body: Callable[[Net], Awaitable[None]]) -> None:
    async def main() -> None:
        async with tailnet(tmp) as net:
            await body(net)

    asyncio.run(asyncio.wait_for(main(), 60))


def refusal(call: Callable[[], Any]) -> str:
    with pytest.raises(localapi.RequestError) as info:
        call()
    return str(info.value)


async def async_refusal(aw: Awaitable[Any]) -> str:
    with pytest.raises(localapi.RequestError) as info:
        await aw
    return str(info.value)


# --- the life of a node ---------------------------------------------------------------------


def test_a_new_node_needs_login_and_every_query_says_how(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        st = n.backend.status()
        assert st["BackendState"] == "NeedsLogin" and st["Self"] is None and st["Peer"] == {}
        assert st["Health"] == ["not logged in; run `meshlet up --login-server URL --authkey KEY`"]
        assert refusal(lambda: n.backend.ips()) == (
            "not logged in: run `meshlet up --login-server URL --authkey KEY`"
        )
        assert await async_refusal(n.backend.up(UpRequest())) == (
            "no login server known; run `meshlet up --login-server URL --authkey KEY`"
        )
        assert n.states == ["NeedsLogin"]

    run(tmp_path, body)


def test_up_with_a_preauth_key_runs_and_status_has_tailscales_shape(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        reply = await n.backend.up(
            UpRequest(login_server=net.url, authkey=net.auth_key(), hostname="pi-kitchen")
        )
        assert reply["state"] in ("Starting", "Running") and reply["error"] == ""
        st = await n.until_state("Running")
        assert n.states[:3] == ["NeedsLogin", "Starting", "Running"]
        me = st["Self"]
        assert me["HostName"] == "pi-kitchen"
        assert me["DNSName"] == "pi-kitchen.%s." % st["MagicDNSSuffix"]
        assert me["TailscaleIPs"][0].startswith("100.") and me["TailscaleIPs"][1].startswith(
            "fd7a:115c:a1e0:"
        )
        assert st["TailscaleIPs"] == me["TailscaleIPs"] == n.backend.ips()
        assert me["PublicKey"] == n.store.node_key.public().to_text()  # type: ignore[union-attr]
        assert me["Online"] is True and me["Relay"] == "lab" and me["OS"] == "linux"
        assert st["Health"] == [] and st["Error"] == "" and st["AuthURL"] == ""
        assert str(me["UserID"]) in st["User"]
        # The data plane got the node key and the netmap; control got the home region and disco key.
        dp = n.dataplane
        assert dp.started and dp.key.public() == n.store.node_key.public()  # type: ignore[union-attr]
        assert dp.netmaps[-1].self_node is not None
        node = net.state.node_by_machine(n.store.machine_key.public())
        assert node is not None and node.disco_key == dp.disco_public
        # Prefs are stored for the next start.
        prefs = StateStore(n.parts.state_dir).prefs
        assert (prefs.control_url, prefs.hostname, prefs.want_running) == (net.url, "pi-kitchen", True)
        json.dumps(st)  # what the local API sends

    run(tmp_path, body)


def test_magicdns_takes_over_the_resolver_and_down_gives_it_back(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = await net.up("pi")
        resolv = n.parts.resolv_conf
        assert "nameserver 100.100.100.100" in resolv.read_text()
        await n.backend.down()
        assert resolv.read_text() == _RESOLV_CONF
        await n.backend.up(UpRequest(accept_dns=False))
        await n.until_state("Running")
        assert resolv.read_text() == _RESOLV_CONF, "--accept-dns=false leaves the resolver alone"

    run(tmp_path, body)


def test_peers_by_name_ip_ping_and_whois(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        a = await net.up("pi-kitchen")
        b = await net.up("laptop")
        st = await a.until(lambda st: len(st["Peer"]) == 1)
        ((key, peer),) = st["Peer"].items()
        assert key == b.store.node_key.public().to_text()  # type: ignore[union-attr]
        assert peer["HostName"] == "laptop" and peer["Relay"] == "lab" and peer["Active"] is True
        assert (peer["RxBytes"], peer["TxBytes"]) == (100, 200)
        ips = peer["TailscaleIPs"]
        assert a.backend.ips("laptop") == ips == a.backend.ips(peer["DNSName"]) == a.backend.ips(ips[1])

        pongs = await a.backend.ping("laptop", count=2, timeout_s=1)
        assert pongs == [{"node": "laptop", "ip": ips[0], "via": "DERP(lab)", "latency_ms": 3.2}] * 2
        a.dataplane.unreachable.add(b.store.node_key.public())  # type: ignore[union-attr]
        pongs = await a.backend.ping(ips[0], timeout_s=0.5)
        assert pongs == [{"node": "laptop", "ip": ips[0], "error": "no reply within 0.5 s"}]

        who = a.backend.whois(ips[0])
        assert who["node"]["HostName"] == "laptop" and who["node"]["Key"] == key
        assert who["user"]["LoginName"]

        assert (
            refusal(lambda: a.backend.ips("nope")) == "no peer named nope: `meshlet status` lists the names"
        )
        assert await async_refusal(a.backend.ping("pi-kitchen")) == (
            "pi-kitchen is this node; ping a peer (`meshlet status` lists them)"
        )
        assert refusal(lambda: a.backend.whois("100.99.99.99")) == (
            "no node has the address 100.99.99.99: `meshlet status` lists the tailnet's addresses"
        )
        assert refusal(lambda: a.backend.whois("laptop")) == (
            "'laptop' is not an IP address; whois takes one, like 100.64.0.2"
        )
        assert await async_refusal(a.backend.ping("laptop", count=1000)) == "ping: count must be 1..100"

    run(tmp_path, body)


def test_down_keeps_the_login_and_a_restart_stays_down(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = await net.up("pi")
        key = n.store.node_key
        await n.backend.down()
        assert n.backend.state == "Stopped" and n.dataplane.closed
        assert refusal(lambda: n.backend.ips()) == "meshlet is stopped: run `meshlet up`"
        await n.backend.close()

        again = Node(n.directory)  # the daemon restarted
        net.nodes.append(again)
        await again.backend.start()
        assert again.backend.state == "Stopped" and again.parts.dataplanes == []
        await again.backend.up(UpRequest())  # no server, no key: both remembered
        await again.until_state("Running")
        assert again.store.node_key == key and len(net.state.list_nodes()) == 1

    run(tmp_path, body)


def test_a_restart_comes_up_by_itself_from_the_cache_while_control_is_down(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        a = await net.up("pi")
        await net.up("laptop")
        await a.until(lambda st: len(st["Peer"]) == 1)
        await a.backend.close()  # the daemon stops (the netmap is cached on the way out)
        await net.stop_server()

        again = Node(a.directory)
        net.nodes.append(again)
        await again.backend.start()
        st = again.backend.status()
        assert st["BackendState"] == "Running", "from the cached netmap, before control answers"
        assert [p["HostName"] for p in st["Peer"].values()] == ["laptop"]
        assert again.backend.ips("laptop")
        st = await again.until(lambda st: any("cannot reach control" in h for h in st["Health"]))
        assert st["BackendState"] == "Running"

        await net.start_server()  # control is back: the health line goes
        await again.until(lambda st: st["Health"] == [])

    run(tmp_path, body)


def test_a_refused_key_is_an_error_in_status(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        await n.backend.up(UpRequest(login_server=net.url, authkey="mlt-auth-nope"))
        st = await n.until(lambda st: bool(st["Error"]))
        assert st["BackendState"] == "NeedsLogin"
        assert "invalid authkey" in st["Error"] and st["Health"][0] == st["Error"]
        await n.backend.up(UpRequest(authkey=net.auth_key()))  # a good key this time
        st = await n.until_state("Running")
        assert st["Error"] == "" and st["Health"] == []

    run(tmp_path, body)


def test_interactive_login_shows_the_auth_url_until_approved(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        await n.backend.up(UpRequest(login_server=net.url))
        st = await n.until(lambda st: bool(st["AuthURL"]))
        assert st["BackendState"] == "NeedsLogin" and st["AuthURL"].startswith(
            "http://control.test/register/"
        )
        node = net.state.node_by_machine(n.store.machine_key.public())
        assert node is not None
        net.state.approve_node(node.id)
        st = await n.until_state("Running")
        assert st["AuthURL"] == ""


def test_an_auth_key_while_waiting_for_interactive_login_is_used(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        await n.backend.up(UpRequest(login_server=net.url))
        await n.until(lambda st: bool(st["AuthURL"]))
        await n.backend.up(UpRequest(authkey=net.auth_key()))
        st = await n.until_state("Running")
        assert st["AuthURL"] == ""
        assert len(net.state.list_nodes()) == 1

    run(tmp_path, body)

    run(tmp_path, body)


def test_logout_expires_the_key_at_control_and_forgets_it(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = await net.up("pi")
        reply = await n.backend.logout()
        assert reply == {"state": "NeedsLogin", "warning": ""}
        assert n.store.node_key is None and n.store.prefs.logged_out and n.dataplane.closed
        node = net.state.node_by_machine(n.store.machine_key.public())
        assert node is not None and node.is_expired(int(__import__("time").time() * 1000))
        assert n.backend.status()["Self"] is None
        assert await async_refusal(n.backend.ping("x")) == (
            "not logged in: run `meshlet up --login-server URL --authkey KEY`"
        )

    run(tmp_path, body)


def test_running_the_same_up_again_changes_nothing(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        key = net.auth_key(reusable=True)
        n = net.node("pi")
        await n.backend.start()
        await n.backend.up(UpRequest(login_server=net.url, authkey=key, hostname="pi"))
        await n.until_state("Running")
        await n.backend.up(UpRequest(login_server=net.url, authkey=key, hostname="pi"))
        assert n.backend.state == "Running" and len(n.parts.dataplanes) == 1
        await n.backend.up(UpRequest(force_reauth=True, authkey=key))
        await n.until_state("Running")
        assert len(n.parts.dataplanes) == 2 and n.dataplane.key.public() == n.store.node_key.public()  # type: ignore[union-attr]

    run(tmp_path, body)


def test_no_data_plane_is_a_refusal_that_names_the_fix(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        n.parts.dataplane_fails = "cannot open /dev/net/tun: permission denied; run as root"
        await n.backend.start()
        text = await async_refusal(n.backend.up(UpRequest(login_server=net.url, authkey=net.auth_key())))
        assert text == "cannot start the data plane: cannot open /dev/net/tun: permission denied; run as root"
        assert n.backend.status()["BackendState"] == "Stopped"

    run(tmp_path, body)


@pytest.mark.parametrize(
    "req, error",
    [
        ({"authkey": 5}, "up: authkey must be a string"),
        ({"accept_dns": "no"}, "up: accept_dns must be true or false"),
        ({"advertise_tags": ["server"]}, "up: 'server' is not a tag; tags look like tag:server"),
        ({"advertise_tags": "tag:a"}, 'up: advertise_tags must be a list of strings like "tag:server"'),
    ],
)
def test_up_request_types(req: dict[str, Any], error: str) -> None:
    assert refusal(lambda: UpRequest.from_request(req)) == error


def test_an_enrollment_code_logs_in_and_pins_the_servers_key(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        await n.backend.up(UpRequest(enroll_code=enroll.build(net.url, net.key.public(), net.auth_key())))
        await n.until_state("Running")
        assert n.store.prefs.control_url == net.url
        assert n.store.prefs.server_key == net.key.public().to_text()

        other = net.node("impostor")
        await other.backend.start()
        wrong = MachinePrivate.generate(os.urandom).public()
        await other.backend.up(UpRequest(enroll_code=enroll.build(net.url, wrong, net.auth_key())))
        st = await other.until(lambda st: bool(st["Error"]))
        assert "but the enrollment code pinned %s" % wrong.to_text() in st["Error"]
        assert st["BackendState"] == "NeedsLogin"

    run(tmp_path, body)


def test_a_bad_enrollment_code_is_refused(tmp_path: Path) -> None:
    async def body(net: Net) -> None:
        n = net.node("pi")
        await n.backend.start()
        text = await async_refusal(n.backend.up(UpRequest(enroll_code="meshlet://enroll?server=ftp://x")))
        assert text.startswith("the enrollment code does not parse: ") and text.endswith(
            "copy or scan it again"
        )

    run(tmp_path, body)


# --- the process ----------------------------------------------------------------------------------


def test_one_daemon_per_state_directory(tmp_path: Path) -> None:
    first = daemon.StateLock(str(tmp_path))
    first.acquire()
    try:
        with pytest.raises(daemon.DaemonError) as info:
            daemon.StateLock(str(tmp_path)).acquire()
        assert str(info.value) == (
            "another meshlet daemon (pid %d) uses the state directory %s; stop it (`systemctl stop meshletd`) "
            "or pass another --state-dir" % (os.getpid(), tmp_path)
        )
    finally:
        first.release()
    again = daemon.StateLock(str(tmp_path))
    again.acquire()
    again.release()


def test_run_serves_the_socket_notifies_systemd_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    sock = str(tmp_path / "run" / "meshletd.sock")
    parts = TestParts(tmp_path)
    opts = daemon.DaemonOptions(state_dir=parts.state_dir, socket_path=sock, socket_group=str(os.getgid()))

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(opts, stop, parts))
        while not os.path.exists(sock):
            await asyncio.sleep(0.01)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, localapi.call, sock, {"request": "status"})
        with pytest.raises(daemon.DaemonError, match="another meshlet daemon"):
            await daemon.run(opts, asyncio.Event(), parts)
        stop.set()
        await task
        return reply

    reply = asyncio.run(asyncio.wait_for(main(), 30))
    assert reply["status"]["BackendState"] == "NeedsLogin"
    assert not os.path.exists(sock) and not os.path.exists(os.path.join(parts.state_dir, "meshletd.lock"))
    messages = []
    while True:
        try:
            messages.append(notify.recv(4096).decode())
        except BlockingIOError:
            break
    notify.close()
    assert messages == ["READY=1", "STATUS=NeedsLogin: run `meshlet up`", "STOPPING=1"]


def test_the_unit_is_type_notify_and_runs_the_daemon() -> None:
    text = daemon.unit_text()
    assert "Type=notify" in text and "ExecStart=/usr/bin/env meshlet daemon" in text
    assert "[Install]" in text and "WantedBy=multi-user.target" in text
