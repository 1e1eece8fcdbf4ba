"""ControlLoop against the real in-process meshlet-control: login, restarts, failures, logout, renewal.

The server is `meshlet_control.app.start` over a State in a temporary
directory, on 127.0.0.1 without TLS (as in test_controlclient.py). Each node
is a ControlLoop over its own StateStore directory, so "restarting the agent"
is a new ControlLoop on the same directory.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from meshlet import enroll
from meshlet.control.netmap import NetMap
from meshlet.key import DiscoPrivate, MachinePrivate, NodePublic
from meshlet_agent import controlloop
from meshlet_agent.controlloop import ControlLoop, ControlStatus, LoginParams
from meshlet_agent.statestore import NETMAP_FILE, StateStore
from meshlet_control.config import ServeConfig
from meshlet_control.state import Node, State
from meshlet_testing.control import InProcessControl

_DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "t",
            "RegionName": "test",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1"}],
        }
    }
}
_WAIT_S = 15.0  # a hang guard, not a performance claim


class _Agent:
    """One node: a ControlLoop and everything it reported."""

    def __init__(self, directory: Path, name: str, **kw: Any) -> None:
        self.directory = directory
        self.name = name
        self.netmaps: list[NetMap] = []
        self.statuses: list[ControlStatus] = []
        self.store = StateStore(str(directory))
        kw.setdefault("save_delay_s", 0.05)
        self.loop = ControlLoop(
            self.store,
            disco=DiscoPrivate.generate(os.urandom).public(),
            hostinfo={"Hostname": name, "OS": "linux"},
            on_netmap=self.netmaps.append,
            on_status=self.statuses.append,
            **kw,
        )

    def node_public(self) -> NodePublic:
        assert self.store.node_key is not None
        return self.store.node_key.public()

    def states(self) -> list[str]:
        return [s.state for s in self.statuses]

    async def until(self, *states: str) -> ControlStatus:
        return await self.loop.wait_for(*states, timeout=_WAIT_S)

    async def netmap_where(self, ok: Callable[[NetMap], bool]) -> NetMap:
        async def wait() -> NetMap:
            while True:
                nm = self.loop.netmap
                if nm is not None and self.loop.status.connected and ok(nm):
                    return nm
                await asyncio.sleep(0.02)

        return await asyncio.wait_for(wait(), _WAIT_S)


class _Net(InProcessControl):
    def __init__(self, tmp: Path, state: State, key: MachinePrivate, cfg: ServeConfig) -> None:
        super().__init__(tmp, state, key, cfg)
        self.agents: list[_Agent] = []

    def agent(self, name: str, **kw: Any) -> _Agent:
        a = _Agent(self.tmp / name, name, **kw)
        self.agents.append(a)
        return a

    def node_of(self, a: _Agent) -> Node:
        assert a.store.node_key is not None
        node = self.state.node_by_machine(a.store.machine_key.public())
        assert node is not None
        return node


@contextlib.asynccontextmanager
async def _tailnet(tmp: Path, **state_kw: Any) -> AsyncIterator[_Net]:
    net = _Net.create(tmp, _DERP_MAP, ["1.1.1.1"], **state_kw)
    await net.start_server()
    try:
        yield net
    finally:
        for a in net.agents:
            await a.loop.close()
        await net.close()


def _run(tmp: Path, body: Callable[[_Net], Awaitable[None]], **state_kw: Any) -> None:
    async def main() -> None:
        async with _tailnet(tmp, **state_kw) as net:
            await body(net)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_register_with_a_preauth_key_and_get_a_netmap(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        assert a.loop.netmap is None and a.loop.status.state == controlloop.STOPPED
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key(), hostname="alpha"))
        st = await a.until(controlloop.CONNECTED)
        assert st.connected and st.netmap_seq == 1 and not st.error
        assert a.states()[:3] == [controlloop.AUTHENTICATING, controlloop.CONNECTING, controlloop.CONNECTED]
        nm = a.netmaps[-1]
        assert nm.self_node is not None and nm.self_node.key == a.node_public()
        assert nm.self_node.name.startswith("alpha.") and list(nm.derp_regions) == [900]
        assert a.store.registered and a.store.prefs.control_url == net.url and a.store.prefs.want_running
        assert net.node_of(a).hostname == "alpha"
        await a.loop.close()
        assert a.loop.status.state == controlloop.STOPPED
        assert StateStore(str(a.directory)).load_netmap() == nm, "close writes the netmap cache"

    _run(tmp_path, body)


def test_a_restart_uses_the_stored_key_and_starts_from_the_cached_netmap(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        first = net.agent("alpha")
        first.loop.start(LoginParams(net.url, auth_key=net.auth_key(), hostname="alpha"))
        await first.until(controlloop.CONNECTED)
        await first.loop.close()
        cached = first.loop.netmap

        again = net.agent("alpha")  # the same directory: the agent restarted
        assert again.loop.netmap is not None and again.loop.netmap == cached
        again.loop.start(LoginParams(net.url, hostname="alpha"))  # no auth key needed
        await again.until(controlloop.CONNECTED)
        assert controlloop.AUTHENTICATING not in again.states(), "straight to the map poll"
        assert len(net.state.list_nodes()) == 1 and net.node_of(again).node_key == again.node_public()

    _run(tmp_path, body)


def test_interactive_login_waits_for_nodes_approve(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, hostname="alpha"))
        st = await a.until(controlloop.NEEDS_LOGIN)
        node = net.node_of(a)
        assert st.auth_url == "http://control.test/register/%d" % node.id and not node.authorized
        net.state.approve_node(node.id)  # what `meshlet-control nodes approve ID` does
        st = await a.until(controlloop.CONNECTED)
        assert st.auth_url == "" and a.store.registered

    _run(tmp_path, body)


def test_a_refused_auth_key_is_needs_login_with_controls_words_and_no_retries(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        key = net.auth_key()
        first = net.agent("alpha")
        first.loop.start(LoginParams(net.url, auth_key=key))
        await first.until(controlloop.CONNECTED)

        second = net.agent("beta")
        second.loop.start(LoginParams(net.url, auth_key=key))
        st = await second.until(controlloop.NEEDS_LOGIN)
        assert "authkey already used" in st.error and st.auth_url == ""
        task = second.loop._task
        assert task is not None
        await asyncio.wait_for(task, _WAIT_S)  # the loop ended: nothing will try that key again
        assert second.states().count(controlloop.AUTHENTICATING) == 1 and not second.store.registered

        third = net.agent("gamma")
        third.loop.start(LoginParams(net.url, auth_key="mlt-auth-nosuchkey000-" + "x" * 32))
        assert "invalid authkey" in (await third.until(controlloop.NEEDS_LOGIN)).error

    _run(tmp_path, body)


def test_the_loop_redials_a_restarted_server_and_updates_resume(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        key = net.auth_key(reusable=True)
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=key))
        await a.until(controlloop.CONNECTED)
        await net.stop_server()
        st = await a.until(controlloop.BACKOFF)
        assert not st.connected and st.last_error
        await asyncio.sleep(0.3)  # a few failed dials
        await net.start_server()
        await a.until(controlloop.CONNECTED)

        b = net.agent("beta")
        b.loop.start(LoginParams(net.url, auth_key=key))
        await b.until(controlloop.CONNECTED)
        b_key = b.node_public()
        nm = await a.netmap_where(lambda nm: b_key in nm.peers)
        assert nm.peers[b_key].name.startswith("beta.")

        async def cached() -> NetMap | None:
            while True:
                got = StateStore(str(a.directory)).load_netmap()
                if got is not None and b_key in got.peers:
                    return got
                await asyncio.sleep(0.02)

        assert await asyncio.wait_for(cached(), _WAIT_S), "the new peer reached the cache"

    _run(tmp_path, body)


def test_a_silent_map_stream_is_redialled(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha", watchdog_s=0.5)  # the server's keep-alives come every ~60 s
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)

        async def second_map() -> None:
            while a.loop.status.netmap_seq < 2:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(second_map(), _WAIT_S)
        assert controlloop.BACKOFF in a.states() and "silent" in a.loop.status.last_error

    _run(tmp_path, body)


def test_endpoints_reach_control_as_a_lite_update(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.set_endpoints(["192.0.2.1:41641"], 900)  # before login: carried by the first MapRequest
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        node = net.node_of(a)
        assert node.endpoints == ["192.0.2.1:41641"] and node.home_derp == 900
        a.loop.set_endpoints(["192.0.2.2:1"], 901)
        a.loop.set_endpoints(["198.51.100.2:41641"], 901)

        async def reported() -> None:
            while net.node_of(a).endpoints != ["198.51.100.2:41641"]:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(reported(), _WAIT_S)
        assert net.node_of(a).home_derp == 901

    _run(tmp_path, body)


def test_logout_expires_the_key_at_control_and_forgets_it_here(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        await a.loop.close()  # the netmap is cached
        node_id = net.node_of(a).id
        assert (a.directory / NETMAP_FILE).exists()
        assert await a.loop.logout()
        st = a.loop.status
        assert st.state == controlloop.LOGGED_OUT and not st.error and a.loop.netmap is None
        assert (
            a.store.node_key is None and a.store.prefs.logged_out and not (a.directory / NETMAP_FILE).exists()
        )
        node = net.state.get_node(node_id)
        assert node is not None and node.is_expired(int(1000 * time.time()) + 1)

        again = net.agent("alpha")  # a later `meshlet up` logs in afresh with a new node key
        again.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await again.until(controlloop.CONNECTED)
        assert net.node_of(again).id == node_id and not again.store.prefs.logged_out

    _run(tmp_path, body)


def test_logout_without_control_still_forgets_the_key(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        await net.stop_server()
        assert not await a.loop.logout()
        assert a.loop.status.state == controlloop.LOGGED_OUT and "not told" in a.loop.status.error
        assert a.store.node_key is None

    _run(tmp_path, body)


def test_a_node_key_near_expiry_is_renewed_with_old_node_key(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha", renew_before_s=7200.0)  # control gives keys one hour
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        first = a.netmaps[0].self_node
        assert first is not None
        first_key = first.key
        nm = await a.netmap_where(lambda nm: nm.self_node is not None and nm.self_node.key != first_key)
        new_key = a.node_public()
        assert nm.self_node is not None and nm.self_node.key == new_key != first_key
        node = net.node_of(a)
        assert node.node_key == new_key and node.authorized and len(net.state.list_nodes()) == 1
        assert a.store.registered and a.store.old_node_key is None
        reopened = StateStore(str(a.directory)).node_key
        assert reopened is not None and reopened.public() == new_key
        await asyncio.sleep(0.3)
        assert a.node_public() == new_key, "one renewal per renew_retry_s"

    _run(tmp_path, body, default_key_expiry_ms=3_600_000)


def test_an_expired_node_key_needs_a_new_login(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        old = a.store.node_key
        net.state.expire_node(net.node_of(a).id)  # `meshlet-control nodes expire ID`
        st = await a.until(controlloop.NEEDS_LOGIN)
        assert st.auth_url and a.store.node_key != old and a.store.old_node_key == old

    _run(tmp_path, body)


def test_a_deleted_node_is_unknown_to_control_and_registers_again(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        net.state.delete_node(net.node_of(a).id)
        st = await a.until(controlloop.NEEDS_LOGIN)  # 401, then an interactive registration
        assert st.auth_url and "401" in st.last_error

    _run(tmp_path, body)


def test_an_enrollment_code_pins_the_servers_key(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        code = enroll.parse(enroll.build(net.url, net.key.public(), net.auth_key()))
        a = net.agent("alpha")
        a.loop.start(LoginParams.from_enroll_code(code, hostname="alpha"))
        await a.until(controlloop.CONNECTED)
        assert a.store.prefs.server_key == net.key.public().to_text()

        wrong = MachinePrivate.generate(os.urandom).public()
        b = net.agent("beta")
        b.loop.start(LoginParams.from_enroll_code(enroll.EnrollCode(net.url, wrong, net.auth_key())))
        st = await b.until(controlloop.NEEDS_LOGIN)
        assert (
            "enrollment code pinned " + wrong.to_text() in st.error and net.key.public().to_text() in st.error
        )
        assert len(net.state.list_nodes()) == 1

    _run(tmp_path, body)


def test_a_bad_control_url_is_refused_at_start(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        try:
            a.loop.start(LoginParams("ctrl.example.com"))
        except ValueError as e:
            assert "http(s)://HOST[:PORT]" in str(e)
        else:
            raise AssertionError("expected ValueError")

    _run(tmp_path, body)


def test_go_times() -> None:
    assert controlloop.go_time_s("0001-01-01T00:00:00Z") is None and controlloop.go_time_s("") is None
    assert controlloop.go_time_s("1970-01-01T00:02:03Z") == 123.0
    assert controlloop.go_time_s("1970-01-01T01:02:03.5+01:00") == 123.5
    assert controlloop.go_time_s("2026-11-22T06:00:00.123456789Z") == 1795327200.123456
    assert controlloop.go_time_s("yesterday") is None


def test_force_reauth_registers_a_new_node_key_for_the_same_node(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await a.until(controlloop.CONNECTED)
        node, old = net.node_of(a), a.node_public()
        a.loop.start(LoginParams(net.url, auth_key=net.auth_key(), force_reauth=True))
        await a.netmap_where(lambda nm: nm.self_node is not None and nm.self_node.key != old)
        again = net.node_of(a)
        assert again.id == node.id and again.node_key == a.node_public() != old
        assert a.store.old_node_key is None and a.loop.status.state == controlloop.CONNECTED

    _run(tmp_path, body)


def test_a_node_control_has_not_authorized_waits_in_needs_machine_auth(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        a = net.agent("alpha")
        a.loop.start(LoginParams(net.url))
        await a.until(controlloop.NEEDS_LOGIN)
        await a.loop.close()
        a.store.registered = True  # as if control had accepted the key and later withdrawn it
        a.store.save()
        b = net.agent("alpha")
        b.loop.start(LoginParams(net.url))
        st = await b.until(controlloop.NEEDS_MACHINE_AUTH)  # HTTP 403 on the map poll
        assert "403" in st.last_error and not st.connected
        net.state.approve_node(net.node_of(b).id)
        await b.until(controlloop.CONNECTED)

    _run(tmp_path, body)


def test_key_expiry_is_judged_by_controls_clock_not_ours(tmp_path: Path) -> None:
    async def body(net: _Net) -> None:
        ahead = net.agent("alpha", now_s=lambda: time.time() + 10 * 86400, renew_before_s=60.0)
        ahead.loop.start(LoginParams(net.url, auth_key=net.auth_key()))
        await ahead.until(controlloop.CONNECTED)
        key = ahead.node_public()
        await asyncio.sleep(0.3)
        assert ahead.loop.status.state == controlloop.CONNECTED and ahead.node_public() == key

    _run(tmp_path, body, default_key_expiry_ms=86_400_000)
