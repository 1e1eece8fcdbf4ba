"""The netns lab: network namespaces joined by veth links, and the processes started in them.

Two shapes:

* `Lab`: two namespaces `a` and `b` joined by one veth (WireGuard interop, benchmarks)

      namespace <p>a                          namespace <p>b
      veth <p>va 10.231.0.1/24  <-------->  veth <p>vb 10.231.0.2/24
      meshlet or wireguard-go on <p>wa       wireguard-go on <p>wb

* `Star`: a hub namespace routing between several leaf namespaces (the control
  server on the hub, Tailscale clients on the leaves: tests/interop and
  tools/demo/tailnet.py).

Both are `Namespaces`: the public building blocks (`add_ns`, `add_link`,
`default_route`, `forward`, `nft`, `own_resolv_conf`) and the bookkeeping
(`run`, `spawn`, `down`) that other shapes reuse; natlab.NatLab is a `Star`
whose `build()` lays out NAT routers with them.

Everything a lab creates is named from one short prefix, unique per lab
(`ml`/`ms` + pid + counter, so parallel runs and leftovers of a killed run do
not collide), because wireguard-go's control socket
/var/run/wireguard/<if>.sock and meshlet's /run/meshlet/wg/<if>.sock are
machine-wide paths, not per-namespace. `down()` stops every process the lab
started by its recorded PID (SIGTERM, then SIGKILL), deletes the namespaces
and removes stale sockets; it never kills anything by name.

The recipe follows shared/lab/README.md §2, including its pitfalls: run
`wireguard-go -f` (foreground, so the PID is the daemon's), wait for the UAPI
socket before `wg set` (else wg falls back to netlink and fails), never pass
`--help` to wireguard-go. Deleting a namespace does not stop the processes in
it (§5), hence the recorded PIDs.

This folder is never shipped (DESIGN.md: tools/ is lab, bench and runners);
tests/interop/netns.py re-exports this module (and transfer.py) for the tests.
"""

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

WG_RUN_DIR = "/var/run/wireguard"
NETNS_ETC = "/etc/netns"  # ip netns exec bind-mounts /etc/netns/<ns>/* over /etc/*
UNDER = "10.231.0"
OVER = "100.64.0"
_counter = itertools.count()


def unique_prefix(tag: str) -> str:
    """`tag` + pid + a counter: a name prefix no other lab (of this run or a killed one) uses."""
    return "%s%x%x" % (tag, os.getpid() % 0xFFFF, next(_counter))


def requirements_missing() -> str | None:
    """Why netns interop cannot run here, or None. The reason names the fix."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TUN (run the tests as root, e.g. `sudo ./dev test`)"
    for exe, pkg in (("ip", "iproute2"), ("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")):
        if shutil.which(exe) is None:
            return "`%s` is not installed: apt-get install %s" % (exe, pkg)
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: modprobe tun (or pass the device into the container)"
    return netns_missing()


def netns_missing() -> str | None:
    """Why network namespaces with veth links cannot be made here (root, iproute2), or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (run the tests as root, e.g. `sudo ./dev test`)"
    if shutil.which("ip") is None:
        return "`ip` is not installed: apt-get install iproute2"
    probe = "mlprobe%d" % os.getpid()
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return "cannot create a network namespace (%s): run where netns is allowed" % res.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def nft_missing() -> str | None:
    """Why the lab's nftables rules (blocked UDP, NAT routers) cannot be loaded here, or None."""
    if shutil.which("nft") is None:
        return (
            "`nft` is not installed (the lab's firewall and NAT rules are nftables): apt-get install nftables"
        )
    return None


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Polls `pred` until it returns something truthy; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.1f s waiting for %s" % (timeout_s, what))
        time.sleep(interval_s)


class Proc:
    """A process started in a namespace, with its PID and log file recorded."""

    def __init__(self, name: str, popen: "subprocess.Popen[bytes]", log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status (negative: killed by that signal)."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


class Namespaces:
    """Network namespaces named from one prefix, the veth links between them, the processes
    started in them, and their teardown: what `Lab`, `Star` and natlab.NatLab build on.

    `add_ns` and `add_link` are the building blocks of a topology's `up()`;
    `down()` stops every process started with `spawn` by its recorded PID,
    deletes every namespace `add_ns` made (with their nftables tables and
    conntrack entries) and every /etc/netns/<ns> directory
    `own_resolv_conf` wrote, and never kills anything by name.
    """

    def __init__(self, prefix: str, workdir: str | None, dir_prefix: str) -> None:
        self.p = prefix
        self.ns: dict[str, str] = {}  # key ("a", "hub", a leaf name, ...) -> namespace name
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=dir_prefix))
        self.procs: list[Proc] = []
        self._made: list[str] = []
        self._etc_dirs: list[Path] = []

    # --- building blocks of up() --------------------------------------------------------------

    def add_ns(self, suffix: str, key: str | None = None) -> str:
        """Creates namespace <prefix><suffix> with its loopback up; its name. `key` registers it in `ns`."""
        ns = self.p + suffix
        _run(["ip", "netns", "add", ns])
        self._made.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if key is not None:
            self.ns[key] = ns
        return ns

    def add_link(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
        """A veth pair between namespaces `ns_a` and `ns_b`, addressed (CIDR) and up on both ends."""
        _run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        _run(["ip", "-n", ns_a, "addr", "add", addr_a, "dev", if_a])
        _run(["ip", "-n", ns_b, "addr", "add", addr_b, "dev", if_b])
        _run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
        _run(["ip", "-n", ns_b, "link", "set", if_b, "up"])

    def default_route(self, ns: str, via: str) -> None:
        _run(["ip", "-n", ns, "route", "add", "default", "via", via])

    def forward(self, ns: str) -> None:
        """Turns namespace `ns` into a router (IPv4 forwarding)."""
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def nft(self, ns: str, rules: str) -> None:
        """Loads an nftables ruleset into namespace `ns`; RuntimeError naming the package if nft fails."""
        res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError("nft in %s failed: %s (apt-get install nftables)" % (ns, res.stderr.strip()))

    def own_resolv_conf(self, key: str, text: str) -> None:
        """Writes /etc/netns/<ns>/resolv.conf, which `ip netns exec` bind-mounts over /etc/resolv.conf."""
        etc = Path(NETNS_ETC) / self.ns[key]
        etc.mkdir(parents=True, exist_ok=True)
        self._etc_dirs.append(etc)
        (etc / "resolv.conf").write_text(text)

    # --- teardown ---------------------------------------------------------------------------

    def down(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made = []
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs = []
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- commands -----------------------------------------------------------------------------

    def run(
        self, where: str, *args: str, timeout: float = 30, check: bool = True
    ) -> "subprocess.CompletedProcess[str]":
        """Runs `args` in namespace `ns[where]`; RuntimeError with its output if it fails and `check`."""
        res = subprocess.run(
            ["ip", "netns", "exec", self.ns[where], *args], capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                "%s in %s failed (%d): %s%s" % (" ".join(args), where, res.returncode, res.stdout, res.stderr)
            )
        return res

    def spawn(
        self, where: str, name: str, args: list[str], env: dict[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> Proc:  # fmt: skip
        """Starts `args` inside the namespace (`ip netns exec` execs: the PID is the program's).

        With `die_with_parent` the program runs in its own session, so a
        terminal's Ctrl-C reaches only this process (whose `down()` then stops
        everything in order), and the kernel sends it SIGKILL if this process
        dies without running `down()` (itself killed with SIGKILL): a safety
        net for demos, not a replacement for `down()`.
        """
        proc = _spawn_in(self.ns[where], self.dir / (name + ".log"), name, args, env, die_with_parent)
        self.procs.append(proc)
        return proc


class Lab(Namespaces):
    """Two namespaces `a` and `b` joined by a veth. Use as a context manager or call up()/down()."""

    def __init__(self, prefix: str | None = None, workdir: str | None = None) -> None:
        super().__init__(prefix or unique_prefix("ml"), workdir, "meshlet-lab-")
        assert len(self.p) <= 11, "interface names are prefix + 2 chars and must stay under 16"
        self.ns = {"a": self.p + "a", "b": self.p + "b"}
        self.veth = {"a": self.p + "va", "b": self.p + "vb"}
        self.under = {"a": UNDER + ".1", "b": UNDER + ".2"}
        self._wg_ifaces: list[str] = []

    # --- set-up and teardown -----------------------------------------------------------

    def up(self) -> "Lab":
        for side in "ab":
            self.add_ns(side, key=side)
        a, b = self.ns["a"], self.ns["b"]
        self.add_link(a, self.veth["a"], self.under["a"] + "/24", b, self.veth["b"], self.under["b"] + "/24")
        return self

    def down(self) -> None:
        super().down()
        for ifname in self._wg_ifaces:
            try:
                os.unlink(os.path.join(WG_RUN_DIR, ifname + ".sock"))
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Lab":
        return self.up()

    # --- commands ------------------------------------------------------------------------

    def ip(self, side: str, *args: str) -> str:
        return _run(["ip", "-n", self.ns[side], *args])

    def ping(
        self, side: str, dst: str, count: int = 3, deadline_s: int = 10
    ) -> "subprocess.CompletedProcess[str]":
        return self.run(
            side,
            "ping",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-w",
            str(deadline_s),
            dst,
            timeout=deadline_s + 5,
            check=False,
        )

    # --- wireguard-go ------------------------------------------------------------------

    def wireguard_go(self, side: str, ifname: str) -> Proc:
        """Starts `wireguard-go -f IFNAME` and waits for its UAPI socket (lab pitfall)."""
        self._wg_ifaces.append(ifname)
        proc = self.spawn(
            side, "wireguard-go-" + ifname, ["wireguard-go", "-f", ifname], env={"LOG_LEVEL": "error"}
        )
        sock = os.path.join(WG_RUN_DIR, ifname + ".sock")
        wait_for(lambda: os.path.exists(sock) or not proc.alive(), 10, "wireguard-go's socket " + sock)
        if not proc.alive():
            raise RuntimeError("wireguard-go %s exited: %s" % (ifname, proc.log()))
        return proc

    def wg(self, side: str, *args: str) -> str:
        return self.run(side, "wg", *args, timeout=15).stdout

    def key_file(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        return str(path)


class Star(Namespaces):
    """A hub namespace routing between leaf namespaces, one veth and one /24 per leaf.

        leaf <p><name_i>  veth <p>l<i> 10.232.<i+1>.2/24, default route via .1
              |
        hub  <p>h         veth <p>h<i> 10.232.<i+1>.1/24, IPv4 forwarding on

    tsnet wants a non-loopback interface with a default route before it
    talks to anyone (shared/lab/README.md §1.6); every leaf has one, and the
    hub's addresses are RFC 1918, so a control URL on the hub is a "private
    host" to tsnet and it never races a TLS dial to port 443 (§1.6 again).
    Leaves reach each other through the hub (routed, no NAT), so direct UDP
    paths between them work unless a test blocks them: `block_leaf_udp`
    (or `set_leaf_udp(blocked=True)` later) adds an nftables rule in the hub
    that drops UDP *forwarded* between leaves, while everything a leaf sends
    to the hub itself (DERP over TCP, STUN over UDP) still arrives. That is a
    network where DERP is the only path between two nodes.

    Every leaf gets its own /etc/netns/<ns>/resolv.conf (`own_resolv_conf`,
    on by default), which `ip netns exec` bind-mounts over /etc/resolv.conf
    for every program started in the leaf. An agent that points the
    system resolver at MagicDNS then rewrites the leaf's file, never the
    host's; `down()` removes the directory.

    Processes started with `spawn` are stopped by `down()` by their recorded
    PIDs; namespaces are deleted; nothing is killed by name.
    """

    SUBNET = "10.232"

    def __init__(
        self, leaves: list[str], prefix: str | None = None, workdir: str | None = None,
        block_leaf_udp: bool = False, own_resolv_conf: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(prefix or unique_prefix("ms"), workdir, "meshlet-star-")
        self.block_leaf_udp = block_leaf_udp
        self.own_resolv_conf_files = own_resolv_conf
        assert len(self.p) <= 10, "interface names are prefix + up to 3 chars and must stay under 16"
        self.leaves = list(leaves)
        self.ns = {"hub": self.p + "h"}
        self.addr = {"hub": "%s.1.1" % self.SUBNET}
        for i, name in enumerate(self.leaves):
            self.ns[name] = self.p + name
            self.addr[name] = "%s.%d.2" % (self.SUBNET, i + 1)

    def hub_addr(self, leaf: str) -> str:
        """The hub's address on `leaf`'s link (any of them reaches the hub from every leaf)."""
        return "%s.%d.1" % (self.SUBNET, self.leaves.index(leaf) + 1)

    def up(self) -> "Star":
        """Builds the topology (`build`); on any failure tears down what was made and re-raises."""
        try:
            self.build()
        except BaseException:
            self.down()
            raise
        return self

    def build(self) -> None:
        """Makes the namespaces and links (called by `up`); subclasses with another shape replace it."""
        hub = self.add_ns("h", key="hub")
        self.forward(hub)
        for i, name in enumerate(self.leaves):
            ns = self.add_ns(name, key=name)
            self.add_link(hub, "%sh%d" % (self.p, i), "%s.%d.1/24" % (self.SUBNET, i + 1),
                          ns, "%sl%d" % (self.p, i), self.addr[name] + "/24")  # fmt: skip
            self.default_route(ns, self.hub_addr(name))
            if self.own_resolv_conf_files:
                self.own_resolv_conf(name, self.lab_resolv_conf(name))
        if self.block_leaf_udp:
            self.set_leaf_udp(blocked=True)

    def lab_resolv_conf(self, leaf: str) -> str:
        """The resolv.conf a leaf starts with: no DNS server at all, and lookups fail at once.

        Nothing listens on the leaf's 127.0.0.1:53, so a query is refused by
        an ICMP port unreachable; on loopback the kernel never rate-limits
        those, whereas a silent or rate-limited server (the hub) would stall
        every lookup for glibc's 5 s timeout until an agent takes over.
        """
        return (
            "# meshlet lab %s: this namespace's own resolv.conf (ip netns exec bind-mounts it)\n"
            "nameserver 127.0.0.1\n" % self.ns[leaf]
        )

    def resolv_conf_path(self, leaf: str) -> Path:
        """/etc/netns/<ns>/resolv.conf: what programs in `leaf` see as /etc/resolv.conf."""
        return Path(NETNS_ETC) / self.ns[leaf] / "resolv.conf"

    def set_leaf_udp(self, blocked: bool) -> None:
        """Drops (or lets through again) UDP forwarded between leaves; leaf <-> hub is untouched.

        One nftables table in the hub namespace, gone with the namespace.
        """
        hub = self.ns["hub"]
        table = "meshlet_lab"
        subprocess.run(["ip", "netns", "exec", hub, "nft", "delete", "table", "inet", table],
                       capture_output=True)  # fmt: skip
        if blocked:
            rules = (
                "table inet %s {\n"
                "  chain forward {\n"
                "    type filter hook forward priority 0; policy accept;\n"
                "    meta l4proto udp counter drop\n"
                "  }\n"
                "}\n" % table
            )
            self.nft(hub, rules)
        self.block_leaf_udp = blocked

    def dropped_udp(self) -> int:
        """Packets the leaf-to-leaf UDP rule dropped so far (0 when not blocking)."""
        res = subprocess.run(["ip", "netns", "exec", self.ns["hub"], "nft", "list", "table", "inet",
                              "meshlet_lab"], capture_output=True, text=True)  # fmt: skip
        found = re.search(r"counter packets (\d+)", res.stdout)
        return int(found.group(1)) if found else 0

    def __enter__(self) -> "Star":
        return self.up()


def _spawn_in(
    ns: str, log_path: Path, name: str, args: list[str], env: dict[str, str] | None, die_with_parent: bool
) -> Proc:
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent if die_with_parent else None,
            start_new_session=die_with_parent,
        )
    return Proc(name, popen, log_path)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; kept across exec)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), res.stderr.strip()))
    return res.stdout


def fetch(lab: Namespaces, where: str, url: str, timeout_s: float = 8.0) -> str:
    """GET `url` from inside namespace `where` (stdlib urllib; names resolved by that namespace's
    resolv.conf): the body, or RuntimeError with the reason."""
    code = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode())\n"
    )
    res = lab.run(where, sys.executable, "-c", code, url, str(timeout_s), timeout=timeout_s + 10, check=False)
    if res.returncode != 0:
        err = res.stderr.strip()
        raise RuntimeError(err.splitlines()[-1] if err else "exit %d" % res.returncode)
    return res.stdout.strip()


def tail(text: str, lines: int = 25) -> str:
    """The last `lines` lines of a log, for error messages."""
    return "\n".join(text.splitlines()[-lines:])


def genkey() -> tuple[str, str]:
    """A (private, public) pair in base64, from `wg genkey` / `wg pubkey`."""
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    return priv, pub
