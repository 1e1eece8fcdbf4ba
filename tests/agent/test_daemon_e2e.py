"""One real node, end to end: `meshlet daemon` as a process, driven by the `meshlet` CLI.

    leaf m: `meshlet daemon` (TUN meshlet0, its own /etc/resolv.conf)
    hub:    `meshlet-control serve` with its embedded DERP relay

`meshlet up` -> Running -> `status --json` shows Self with a 100.x address,
the TUN carries it and the leaf's resolv.conf names 100.100.100.100 ->
`down` (TUN gone, resolv.conf back) -> `up` again without a key -> `logout`
(control expires the key) -> SIGTERM (socket and lock file removed, exit 0).
Several nodes talking to each other are tests/interop's business.

Needs root and network namespaces (the TUN and routes stay inside the
leaf); skips with the reason otherwise. Processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

from meshlet_testing.lab import netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import meshletnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import tailnode  # noqa: E402

JOIN_S = 60


def _link(star: Any, name: str) -> str:
    return str(star.run("m", "ip", "-o", "addr", "show", "dev", name, check=False).stdout)


def test_up_status_down_up_logout_stop() -> None:
    skip_unless(netns.netns_missing())
    star = netns.Star(["m"])
    try:
        star.up()
        control = tailnode.Control(star)
        control.start()
        node = meshletnode.MeshletNode(star, "m", "pi-e2e", verbose=True)
        node.start()
        original_resolv = star.resolv_conf_path("m").read_text()

        res = node.cli("status", check=False)
        assert res.returncode == 1 and "Logged out" in res.stdout

        out = node.up(control.url, authkey=control.keys_create()["key"], timeout=JOIN_S)
        assert out.startswith("meshlet is up: pi-e2e.")
        st = node.wait_running(JOIN_S)
        me = st["Self"]
        ip4 = me["TailscaleIPs"][0]
        assert ip4.startswith("100.") and me["HostName"] == "pi-e2e" and st["BackendState"] == "Running"
        assert node.ip() == me["TailscaleIPs"]
        assert ip4 + "/32" in _link(star, meshletnode.TUN), "the TUN carries the node's address"
        assert control.node_list()["pi-e2e"]["ipv4"] == ip4
        assert "nameserver 100.100.100.100" in star.resolv_conf_path("m").read_text()

        node.down()
        assert node.status()["BackendState"] == "Stopped"
        assert _link(star, meshletnode.TUN) == "", "down removes the TUN"
        assert star.resolv_conf_path("m").read_text() == original_resolv

        node.cli("up", "--timeout", str(JOIN_S), timeout=JOIN_S + 10)  # no key: the login is kept
        assert node.wait_running(JOIN_S)["Self"]["TailscaleIPs"][0] == ip4

        node.logout()
        st = node.status()
        assert st["BackendState"] == "NeedsLogin" and st["Self"] is None
        assert control.node_list()["pi-e2e"]["expired"] is True
        state = json.loads((node.state_dir / "state.json").read_text())
        assert state["node_key"] is None and state["prefs"]["logged_out"] is True

        assert node.stop() == 0
        assert not os.path.exists(node.socket)
        assert not (node.state_dir / "meshletd.lock").exists()
        assert star.resolv_conf_path("m").read_text() == original_resolv
    finally:
        star.down()
