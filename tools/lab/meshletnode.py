"""meshlet agents in the netns lab: one `meshlet daemon` per `Star` leaf, driven by the `meshlet` CLI.

Each node lives in its own directory, <star.dir>/<name>/:

    state/          --state-dir: keys, prefs, the cached netmap (0700)
    meshletd.sock   --socket: the local API (JSON lines, docs/agent-internals.md)
    run/            MESHLET_RUN_DIR, so nothing lands in the machine-wide /run/meshlet

and logs to <star.dir>/<name>.log. The daemon runs inside the leaf (it owns
the leaf's TUN `meshlet0`, its UDP port 41641 and, with MagicDNS, the leaf's
/etc/resolv.conf, which a `Star` makes a per-namespace file). The CLI runs in
this process's namespace: the socket is a path, and paths do not belong to
network namespaces.

    node = MeshletNode(star, "a", "laptop")
    node.start()                                    # daemon up, socket answering
    node.up(control.url, authkey=key)               # `meshlet up`; returns its reply
    node.wait_running(30)                           # BackendState Running, addresses assigned
    node.wait_peers(["pi-kitchen"], 30)             # the peer is in the netmap
    node.ping("pi-kitchen")                         # `meshlet ping`; a Pong or RuntimeError
    node.stop()                                     # SIGTERM by PID (Star.down does it too)

`api(request)` talks to the local API directly, one JSON object each way,
for measurements where a CLI process per call would cost more than what
is measured (tools/bench/agent.py).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

from netlab import Proc, Star, wait_for
from netlab import fetch as fetch, tail as tail  # re-exported: meshletnode.fetch, meshletnode.tail

TUN = "meshlet0"
PORT = 41641
MESHLET = [sys.executable, "-m", "meshlet_agent"]


class NodeError(RuntimeError):
    """A meshlet command failed; the message holds the command, its output and the log's end."""


class MeshletNode:
    """One `meshlet daemon` in a leaf of `star`, its files under <star.dir>/<name>/."""

    def __init__(
        self, star: Star, leaf: str, name: str, *, tun: str = TUN, port: int = PORT,
        verbose: bool = False, env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.star = star
        self.leaf = leaf
        self.name = name
        self.tun = tun
        self.port = port
        self.verbose = verbose
        self.home = star.dir / name
        self.state_dir = self.home / "state"
        self.socket = str(self.home / "meshletd.sock")
        self.run_dir = self.home / "run"
        self.env = {"MESHLET_RUN_DIR": str(self.run_dir), **(env or {})}
        self.proc: Proc | None = None
        self.runs = 0

    # --- the daemon -------------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0, die_with_parent: bool = False) -> Proc:
        """Starts `meshlet daemon` in the leaf and waits until its local API answers `status`."""
        if not self.star.resolv_conf_path(self.leaf).exists():
            # Without its own file, the leaf's /etc/resolv.conf IS the host's, and MagicDNS would rewrite it.
            raise NodeError(
                "leaf %s has no %s: the agent would rewrite the host's /etc/resolv.conf; "
                "build the Star with own_resolv_conf=True"
                % (self.leaf, self.star.resolv_conf_path(self.leaf))
            )
        self.home.mkdir(exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        self.runs += 1
        args = [*MESHLET, "daemon", "--state-dir", str(self.state_dir), "--socket", self.socket,
                "--tun", self.tun, "--port", str(self.port)]  # fmt: skip
        if self.verbose:
            args.append("--verbose")
        log_name = self.name if self.runs == 1 else "%s-%d" % (self.name, self.runs)
        self.proc = proc = self.star.spawn(self.leaf, log_name, args, self.env, die_with_parent)

        def answering() -> bool:
            if not proc.alive():
                return True
            if not os.path.exists(self.socket):
                return False
            try:
                return bool(self.api({"request": "status"}, timeout_s=2).get("ok"))
            except (OSError, ValueError):
                return False

        try:
            wait_for(answering, timeout_s, "meshlet daemon %s's socket %s" % (self.name, self.socket), 0.05)
        except TimeoutError as e:
            raise NodeError("%s; its log:\n%s" % (e, tail(proc.log()))) from None
        if not proc.alive():
            raise NodeError(
                "meshlet daemon %s exited (%s); its log:\n%s"
                % (self.name, proc.popen.returncode, tail(proc.log()))
            )
        return proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM by PID (then SIGKILL); the exit status, or None if it never ran."""
        return self.proc.stop(timeout_s) if self.proc is not None else None

    def log(self) -> str:
        return self.proc.log() if self.proc is not None else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    # --- the CLI ----------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 30, check: bool = True) -> "subprocess.CompletedProcess[str]":
        """`meshlet --socket S ARGS`; NodeError naming the command, its output and the log on failure."""
        res = subprocess.run(
            [*MESHLET, "--socket", self.socket, *args],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env},
        )  # fmt: skip
        if check and res.returncode != 0:
            raise NodeError(
                "`meshlet %s` on %s failed (exit %d): %s%s\n--- %s's log ---\n%s"
                % (
                    " ".join(args),
                    self.name,
                    res.returncode,
                    res.stdout,
                    res.stderr,
                    self.name,
                    tail(self.log()),
                )
            )
        return res

    def up(
        self, login_server: str, *, authkey: str | None = None, enroll_code: str | None = None,
        hostname: str | None = None, extra: tuple[str, ...] = (), timeout: float = 60,
    ) -> str:  # fmt: skip
        """`meshlet up` with a pre-auth key or an enrollment code; its output."""
        args = ["up"]
        if enroll_code is not None:
            args += ["--enroll-code", enroll_code]
        else:
            args += ["--login-server", login_server]
            if authkey is not None:
                args += ["--authkey", authkey]
        args += ["--hostname", hostname or self.name, "--timeout", "%g" % timeout, *extra]
        return self.cli(*args, timeout=timeout + 10).stdout

    def down(self) -> str:
        return self.cli("down").stdout

    def logout(self) -> str:
        return self.cli("logout").stdout

    def status(self) -> dict[str, Any]:
        """`meshlet status --json` (the shape of `tailscale status --json`)."""
        out: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return out

    def ip(self, name: str | None = None) -> list[str]:
        """`meshlet ip [NAME]`: the tailnet addresses, one a line."""
        args = ["ip"] + ([name] if name else [])
        return self.cli(*args).stdout.split()

    def ping(self, target: str, timeout: float = 20) -> str:
        """`meshlet ping TARGET`: its output (`pong from …`), or NodeError."""
        return self.cli("ping", target, timeout=timeout).stdout.strip()

    def ping_once(self, target_ip: str, timeout_s: float = 2.0) -> dict[str, Any]:
        """One disco ping through the local API (no CLI process per ping, so timings are the path's):
        the last pong, {"via", "latency_ms", "endpoint"?}, or {"error"}."""
        request = {"request": "ping", "target": target_ip, "count": 1, "timeout_s": timeout_s}
        reply = self.api(request, timeout_s=timeout_s + 10)
        if not reply.get("ok", True) and "pongs" not in reply:
            return {"error": str(reply.get("error", reply))}
        pongs = reply.get("pongs") or [{"error": "no pongs"}]
        out: dict[str, Any] = pongs[-1]
        return out

    def cur_addr(self, peer: str) -> tuple[str, str]:
        """(CurAddr, Relay) of host `peer` in the local API's status: the direct address or "", the region."""
        status = self.api({"request": "status"}, timeout_s=10)["status"]
        found = peers_by_name(status)[peer]
        return str(found.get("CurAddr") or ""), str(found.get("Relay") or "")

    # --- waiting ----------------------------------------------------------------------------

    def wait_running(self, timeout_s: float) -> dict[str, Any]:
        """Polls `status` until BackendState is Running with tailnet addresses; the status."""

        def running() -> dict[str, Any] | None:
            self.check_alive()
            st = self.status()
            ok = st.get("BackendState") == "Running" and (st.get("TailscaleIPs") or self_ips(st))
            return st if ok else None

        out: dict[str, Any] = self._wait(running, timeout_s, "Running with addresses")
        return out

    def wait_peers(self, names: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """Polls `status` until every one of `names` is a peer; those peers by host name."""

        def present() -> dict[str, dict[str, Any]] | None:
            self.check_alive()
            found = peers_by_name(self.status())
            return found if all(n in found for n in names) else None

        out: dict[str, dict[str, Any]] = self._wait(present, timeout_s, "peers %s in the netmap" % names)
        return out

    def wait_ping(self, target: str, timeout_s: float, per_try_s: float = 10) -> str:
        """`meshlet ping TARGET` until one succeeds; its output."""
        last = [""]

        def pong() -> str | None:
            self.check_alive()
            try:
                return self.ping(target, timeout=per_try_s + 5)
            except (NodeError, subprocess.TimeoutExpired) as e:
                last[0] = str(e).splitlines()[0] if str(e) else type(e).__name__
                return None

        try:
            out: str = wait_for(pong, timeout_s, "", 0.2)
        except TimeoutError:
            raise NodeError(
                "%s: no pong from %s within %.0f s (last: %s)\n--- log ---\n%s"
                % (self.name, target, timeout_s, last[0], tail(self.log()))
            ) from None
        return out

    def _wait(self, pred: Any, timeout_s: float, what: str) -> Any:
        try:
            return wait_for(pred, timeout_s, what, 0.2)
        except TimeoutError as e:
            try:
                st = json.dumps(self.status())[:1500]
            except (NodeError, ValueError) as se:
                st = str(se)
            raise NodeError(
                "%s: %s; status: %s\n--- log ---\n%s" % (self.name, e, st, tail(self.log()))
            ) from None

    def check_alive(self) -> None:
        if self.proc is not None and not self.proc.alive():
            raise NodeError(
                "meshlet daemon %s exited (status %s); its log:\n%s"
                % (self.name, self.proc.popen.returncode, tail(self.log()))
            )

    # --- the local API directly --------------------------------------------------------------

    def api(self, request: dict[str, Any], timeout_s: float = 30) -> dict[str, Any]:
        """One request over the local API socket (docs/agent-internals.md); the reply object."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(self.socket)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf.decode().splitlines()[0])
        return reply


def peers_by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`status --json`'s Peer map keyed by host name instead of node key."""
    out = {}
    for peer in (status.get("Peer") or {}).values():
        name = peer.get("HostName") or (peer.get("DNSName") or "").split(".")[0]
        if name:
            out[name] = peer
    return out


def self_ips(status: dict[str, Any]) -> list[str]:
    ips: list[str] = (status.get("Self") or {}).get("TailscaleIPs") or []
    return ips


_VIA = re.compile(r"via\s+(DERP\([^)]*\)|\S+)")
_MS = re.compile(r"in\s+([0-9.]+)\s*ms")


def ping_summary(output: str) -> dict[str, Any]:
    """What a `meshlet ping` line says: {"via": "DERP(900)" | …, "latency_ms": float | None, "line": …}."""
    line = output.strip().splitlines()[-1] if output.strip() else ""
    via = _VIA.search(line)
    ms = _MS.search(line)
    return {
        "via": via.group(1) if via else "",
        "latency_ms": float(ms.group(1)) if ms else None,
        "line": line,
    }


HTTP_SERVER = r"""
import http.server, socket, sys
host, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (text.replace("{remote_host}", self.client_address[0]) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
server = S((host, port), H)
print("serving http on %s port %d" % (host, port), flush=True)
server.serve_forever()
"""


def serve_http(star: Star, leaf: str, name: str, host: str, port: int, text: str,
               die_with_parent: bool = False) -> Proc:  # fmt: skip
    """A small HTTP server in `leaf` on HOST:PORT answering every GET with `text` ({remote_host} filled in)."""
    proc = star.spawn(leaf, name, [sys.executable, "-u", "-c", HTTP_SERVER, host, str(port), text],
                      die_with_parent=die_with_parent)  # fmt: skip
    wait_for(lambda: "serving http on" in proc.log() or not proc.alive(), 10, "the HTTP server %s" % name)
    if not proc.alive():
        raise RuntimeError("HTTP server %s on %s:%d exited: %s" % (name, host, port, tail(proc.log())))
    return proc
