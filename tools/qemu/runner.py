"""Boot an ARM image under QEMU (TCG) and drive it over its serial console.

What tests/qemu and tools/bench/provision.py stand on. One `Guest` is one
qemu-system-aarch64 (or -arm) process:

    g = Guest(image, "arm64", netns=ns, hostfwd=[("tcp", 2222, 22)], log_dir=tmp)
    g.boot()                        # QEMU up, our end of the serial console attached
    g.wait_for("login:", 120)       # bytes from the console, regex or text
    g.shell()                       # a root shell on the console (autologin or root/root)
    rc, out = g.run("uname -m")     # a command, its exit status and output
    g.release_console()             # let `meshlet-provision serial socket://127.0.0.1:PORT` have it
    g.attach_console()
    g.poweroff()                    # in-guest poweroff; QEMU exits (PSCI)
    g.close()                       # always: kills QEMU by its PID if still there

`image` is a meshlet_provision.image.ImageResult (build_image(..., lab=True)
for a console autologin and an SSH key; the QEMU tier builds no other kind)
or anything shaped like one: `.path` (a raw disk image, partitioned or a
bare ext4), `.boot_files` (kernel, initrd, dtb: QEMU boots the kernel
directly, no firmware) and `.root_partition`. `board` is a Board (its .arch
and .qemu table) or just an arch name.

Choices, from shared/lab/QEMU.md: `-M virt -cpu max,pauth=off -smp 2` for
arm64 (pointer authentication is very slow under TCG: 44 s to boot with
plain `max`), `-cpu cortex-a15` for armhf; the disk is `snapshot=on`, so
the image is never written and any number of guests can share it, unless
the test asks for `snapshot=False` on its own copy (`persistent_copy`) to
keep state across a power cycle. The serial port is a TCP server on
127.0.0.1 that waits for its first client (us) before the guest runs, so
no boot output is lost; while we hold it, nobody else can connect, hence
`release_console`. Network: QEMU user-mode (a NAT; the guest is 10.0.2.15,
the namespace QEMU runs in is 10.0.2.2, `hostfwd` maps ports in), and
optionally a private Ethernet segment between two guests (`Link`, a
`-netdev socket` over loopback) whose address `run` sets from the console.

`netns`: QEMU runs inside that network namespace (`ip netns exec`, which
execs, so the PID we record is QEMU's); its TCP ports (serial, hostfwd,
links) are then on that namespace's loopback, and our console connection
goes through a small relay process started in the same namespace.
Everything has a timeout; teardown is by PID, never by name.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

# arch: qemu binary, machine, cpu, console device
MACHINES = {
    "arm64": ("qemu-system-aarch64", "virt", "max,pauth=off", "ttyAMA0"),
    "armhf": ("qemu-system-arm", "virt", "cortex-a15", "ttyAMA0"),
}
DEFAULT_SMP = 2
DEFAULT_MEMORY_MB = 1024
ROOT_LABEL = "meshlet-root"
_ports = itertools.count((os.getpid() * 37) % 20000 + 30000)

# The console relay for guests in another namespace: stdin/stdout <-> TCP 127.0.0.1:PORT.
RELAY = r"""
import os, select, socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("console relay: nothing listens on 127.0.0.1:%d" % port)
        time.sleep(0.05)
s.setblocking(True)
fds = [0, s.fileno()]
while True:
    r, _, _ = select.select(fds, [], [])
    if 0 in r:
        d = os.read(0, 65536)
        if not d:
            break
        s.sendall(d)
    if s.fileno() in r:
        d = s.recv(65536)
        if not d:
            break
        os.write(1, d)
"""


class GuestError(RuntimeError):
    """QEMU failed to start, exited, or the guest did not print what was awaited in time."""


def requirements_missing(arch: str = "arm64") -> str | None:
    """Why a guest of `arch` cannot boot here, or None; the reason names the fix."""
    qemu = MACHINES[arch][0]
    if shutil.which(qemu) is None:
        return "`%s` is not installed: apt-get install qemu-system-arm" % qemu
    return None


def free_port() -> int:
    """A TCP port number for this process's guests (distinct per call; checked free on this host)."""
    for _ in range(200):
        port = next(_ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise GuestError("no free TCP port found")


def persistent_copy(image: Any, dest: str | os.PathLike[str]) -> Any:
    """A copy of `image` whose disk the guest may write (for `Guest(..., snapshot=False)`).

    Sparse copy (a second or two for a 1-2 GB image that is mostly holes);
    the returned object has the same boot files and root partition.
    """
    subprocess.run(["cp", "--sparse=always", str(image.path), str(dest)], check=True, timeout=300)
    return _ImageView(Path(dest), image.boot_files, getattr(image, "root_partition", None))


class _ImageView:
    def __init__(self, path: Path, boot_files: Any, root_partition: Any) -> None:
        self.path = path
        self.boot_files = boot_files
        self.root_partition = root_partition


def _boot_file(boot_files: Any, name: str) -> str | None:
    value = boot_files.get(name) if isinstance(boot_files, dict) else getattr(boot_files, name, None)
    return str(value) if value else None


def _root_arg(root_partition: Any) -> str:
    """The kernel's root= for the image: a LABEL=/PARTUUID=/device as given, else by label.

    By label because virtio-mmio disks enumerate in reverse creation order:
    with a second disk, the root is not /dev/vda.
    """
    if isinstance(root_partition, str) and ("=" in root_partition or root_partition.startswith("/dev/")):
        return root_partition
    return "LABEL=" + ROOT_LABEL


class Link:
    """A private Ethernet segment between two guests: `-netdev socket` over 127.0.0.1:PORT.

    The first guest attached listens, the second connects, so boot them in
    that order. `addresses` are the guests' IPv4 addresses on the link, in
    attach order (configured from the console by `Guest.configure_link`).
    """

    def __init__(self, port: int | None = None, subnet: str = "192.168.77") -> None:
        self.port = port or free_port()
        self.subnet = subnet
        self.attached = 0

    def attach(self) -> tuple[str, str]:
        """The -netdev spec for the next guest, and that guest's address (CIDR) on the link."""
        self.attached += 1
        if self.attached > 2:
            raise GuestError("a Link joins two guests; make another Link for a third")
        mode = "listen" if self.attached == 1 else "connect"
        return "socket,id=link0,%s=127.0.0.1:%d" % (mode, self.port), "%s.%d/24" % (self.subnet, self.attached)


class Guest:
    """One QEMU ARM guest: the process, its serial console, its network."""

    def __init__(
        self,
        image: Any,
        board: Any = "arm64",
        cache_dir: str | os.PathLike[str] | None = None,
        serial_port: int | None = None,
        hostfwd: Iterable[tuple[str, int, int]] = (),
        link: Link | None = None,
        *,
        name: str = "guest",
        netns: str | None = None,
        snapshot: bool = True,
        smp: int | None = None,
        memory_mb: int | None = None,
        append: str = "",
        share: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        mac_index: int = 1,
    ) -> None:
        arch = board if isinstance(board, str) else board.arch
        qemu_table: dict[str, Any] = {} if isinstance(board, str) else dict(getattr(board, "qemu", {}) or {})
        if arch not in MACHINES:
            raise GuestError("no QEMU machine for arch %r (known: %s)" % (arch, ", ".join(MACHINES)))
        binary, machine, cpu, console = MACHINES[arch]
        # A board profile may pick another CPU (cortex-a53 for a "real" Pi 3) but not another
        # machine: the runner knows how to boot `virt` only (raspi3b: QEMU.md §1, too slow for CI).
        cpu = qemu_table.get("cpu", cpu)
        self.arch = arch
        self.name = name
        self.netns = netns
        self.image = image
        self.cache_dir = cache_dir
        self.serial_port = serial_port or free_port()
        self.hostfwd = list(hostfwd)
        self.link = link
        self.link_addr: str | None = None
        self.log_dir = Path(log_dir) if log_dir else None
        kernel = _boot_file(image.boot_files, "kernel")
        initrd = _boot_file(image.boot_files, "initrd")
        if not kernel or not os.path.exists(kernel):
            raise GuestError("the image has no kernel to boot (boot_files.kernel = %r)" % kernel)
        root = _root_arg(getattr(image, "root_partition", None))
        found = re.search(r"\broot=(\S+)", str(getattr(image, "cmdline", "") or ""))
        if found:  # the image's own cmdline.txt knows its root best
            root = found.group(1)
        cmdline = "root=%s rw rootwait console=%s net.ifnames=0 quiet loglevel=3 systemd.show_status=false" % (
            root,
            qemu_table.get("console", console),
        )
        if append:
            cmdline += " " + append
        smp = smp or int(qemu_table.get("smp", DEFAULT_SMP))
        memory_mb = memory_mb or int(qemu_table.get("memory_mb", DEFAULT_MEMORY_MB))
        snap = ",snapshot=on" if snapshot else ""
        argv = [
            binary, "-M", machine, "-cpu", cpu, "-smp", str(smp), "-m", str(memory_mb),
            "-display", "none", "-monitor", "none", "-nodefaults",
            "-chardev", "socket,id=con0,host=127.0.0.1,port=%d,server=on,wait=on" % self.serial_port,
            "-serial", "chardev:con0",
            "-kernel", kernel, "-append", cmdline,
            "-drive", "if=none,id=hd0,format=raw,file=%s%s" % (image.path, snap),
            "-device", "virtio-blk-device,drive=hd0",
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-device,rng=rng0",
        ]  # fmt: skip
        if initrd:
            argv += ["-initrd", initrd]
        dtb = _boot_file(image.boot_files, "dtb")
        if dtb and machine != "virt":
            argv += ["-dtb", dtb]  # virt makes its own device tree
        if share:
            argv += ["-fsdev", "local,id=fs0,path=%s,security_model=none,readonly=on" % os.path.abspath(share),
                     "-device", "virtio-9p-device,fsdev=fs0,mount_tag=lab"]  # fmt: skip
        # virtio-mmio devices enumerate in reverse creation order: the NIC created last is
        # eth0. The link NIC goes first so that the user-mode NIC stays eth0.
        if link is not None:
            netdev, self.link_addr = link.attach()
            argv += ["-netdev", netdev, "-device", "virtio-net-device,netdev=link0,mac=%s" % self.link_mac(mac_index)]
        fwd = "".join(",hostfwd=%s:127.0.0.1:%d-:%d" % (p, h, g) for p, h, g in self.hostfwd)
        argv += ["-netdev", "user,id=n0" + fwd,
                 "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:%02x" % mac_index]  # fmt: skip
        self._link_mac = self.link_mac(mac_index)
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._rfd = -1
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._eof = False
        self.buf = b""
        self.pos = 0
        self._n = 0
        self.t0 = 0.0
        self.marks: dict[str, float] = {}
        self._console_log: Any = None
        self._qemu_log_path: Path | None = None

    @staticmethod
    def link_mac(index: int) -> str:
        return "52:54:00:77:00:%02x" % index

    # --- the process -----------------------------------------------------------------------

    def boot(self, timeout_s: float = 30) -> "Guest":
        """Starts QEMU and attaches the console (QEMU holds the guest until we connect)."""
        if self.proc is not None and self.proc.poll() is None:
            raise GuestError("%s is already running (pid %d)" % (self.name, self.proc.pid))
        argv = (["ip", "netns", "exec", self.netns] if self.netns else []) + self.argv
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._qemu_log_path = self.log_dir / ("%s.qemu.log" % self.name)
            if self._console_log is None:
                self._console_log = open(self.log_dir / ("%s.console.log" % self.name), "ab")
        qlog = open(self._qemu_log_path, "ab") if self._qemu_log_path else subprocess.DEVNULL
        self.t0 = time.monotonic()
        self.marks = {}
        self.buf, self.pos = b"", 0
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog)
        finally:
            if qlog is not subprocess.DEVNULL:
                qlog.close()  # type: ignore[union-attr]
        try:
            self.attach_console(timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise GuestError("%s was never booted" % self.name)
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, what: str) -> float:
        """Records the time since boot() under `what` (for benchmarks and logs); returns it."""
        self.marks[what] = round(self.elapsed(), 2)
        return self.marks[what]

    def qemu_log(self) -> str:
        if self._qemu_log_path and self._qemu_log_path.exists():
            return self._qemu_log_path.read_text(errors="replace")
        return ""

    def close(self) -> None:
        """Kills QEMU by its PID if it still runs, and the console relay; idempotent."""
        self.release_console()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        with self._cond:
            if self._console_log:
                self._console_log.close()
                self._console_log = None

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the console -------------------------------------------------------------------------

    def attach_console(self, timeout_s: float = 30) -> None:
        """Connects our end of the serial console (QEMU's TCP server takes one client at a time)."""
        if self._rfd >= 0:
            return
        if self.netns:
            self._relay = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-u", "-c", RELAY,
                 str(self.serial_port), str(timeout_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            )  # fmt: skip
            assert self._relay.stdout is not None
            self._rfd = self._relay.stdout.fileno()
            self._start_reader()
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = socket.create_connection(("127.0.0.1", self.serial_port), timeout=2)
                break
            except OSError:
                if not self.alive():
                    raise GuestError("QEMU exited before its console listened:\n%s" % self.qemu_log()[-2000:])
                if time.monotonic() > deadline:
                    raise GuestError("QEMU's console on 127.0.0.1:%d did not listen" % self.serial_port)
                time.sleep(0.05)
        self._sock.setblocking(True)
        self._rfd = self._sock.fileno()
        self._start_reader()

    def _start_reader(self) -> None:
        """Drains the console all the time: a guest whose console nobody reads stalls on its UART."""
        self._eof = False
        self._reader = threading.Thread(target=self._read_loop, args=(self._rfd,), daemon=True,
                                        name="console-" + self.name)  # fmt: skip
        self._reader.start()

    def _read_loop(self, fd: int) -> None:
        while True:
            try:
                r, _, _ = select.select([fd], [], [], 0.5)
                if self._rfd != fd:
                    return  # released
                if not r:
                    continue
                data = os.read(fd, 65536)
            except (OSError, ValueError):
                data = b""
            with self._cond:
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self.buf += data
                if self._console_log:
                    self._console_log.write(data)
                    self._console_log.flush()
                self._cond.notify_all()

    def release_console(self) -> None:
        """Disconnects our end, so another client (meshlet-provision serial) can connect."""
        reader, self._reader = self._reader, None
        fd, self._rfd = self._rfd, -1
        if reader is not None and fd >= 0:
            reader.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._relay is not None:
            if self._relay.poll() is None:
                self._relay.kill()  # our relay, by its PID
                self._relay.wait(5)
            for f in (self._relay.stdin, self._relay.stdout):
                if f:
                    f.close()
            self._relay = None
        self._rfd = -1

    def console_url(self) -> str:
        """The pyserial URL of the console, valid in the namespace QEMU runs in."""
        return "socket://127.0.0.1:%d" % self.serial_port

    def _read(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s` for more console output (the reader thread appends it)."""
        if self._rfd < 0:
            raise GuestError("%s's console is released; attach_console() first" % self.name)
        with self._cond:
            size = len(self.buf)
            if not self._eof:
                self._cond.wait(max(0.0, timeout_s))
            grew = len(self.buf) > size
            eof = self._eof
        if grew:
            return True
        if eof:
            raise GuestError("%s's console closed (QEMU exited: %s); tail:\n%s" % (
                self.name, not self.alive(), self.tail()))
        if not self.alive():
            raise GuestError("QEMU (%s) exited with %s; console tail:\n%s"
                             % (self.name, self.proc.returncode if self.proc else "?", self.tail()))  # fmt: skip
        return False

    def send(self, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if self._sock is not None:
            self._sock.sendall(raw)
        elif self._relay is not None and self._relay.stdin is not None:
            self._relay.stdin.write(raw)
            self._relay.stdin.flush()
        else:
            raise GuestError("%s's console is released; attach_console() first" % self.name)

    def sendline(self, line: str = "") -> None:
        self.send(line + "\n")

    def tail(self, n: int = 1500) -> str:
        return self.buf[-n:].decode(errors="replace").replace("\r", "")

    def wait_for(self, pattern: str | bytes, timeout_s: float = 60, regex: bool = False) -> "re.Match[bytes]":
        """Waits for `pattern` (text, or a regex with regex=True) after the previous match."""
        raw = pattern.encode() if isinstance(pattern, str) else pattern
        rx = re.compile(raw if regex else re.escape(raw))
        deadline = time.monotonic() + timeout_s
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError("%s: no %r on the console within %.0f s; tail:\n%s"
                                 % (self.name, pattern, timeout_s, self.tail()))  # fmt: skip
            self._read(min(left, 0.5))

    def drain(self) -> None:
        """Reads whatever the console has now and forgets it."""
        while self._read(0.05):
            pass
        self.pos = len(self.buf)

    # --- a shell on the console ------------------------------------------------------------------

    def shell(self, timeout_s: float = 180, password: str = "root") -> None:
        """Gets a root shell on the console: answers login:/Password: if asked, then quiets it.

        Works with an autologin console (provisioned lab images) and with
        a getty asking root/root (tools/qemu lab image). Wait for boot with
        this; it returns once commands can run.
        """
        deadline = time.monotonic() + timeout_s
        answered: set[bytes] = set()
        while True:
            # Decide on the console's last line only: "login: " inside "x login: root (automatic
            # login)" is autologin announcing itself, not a prompt.
            last = self.buf[self.buf.rfind(b"\n") + 1 :].rstrip(b"\r")
            if last.endswith((b"login: ", b"Password: ")) and self._read(1.0):
                continue  # more is coming ("login: root (automatic login)"): not a prompt yet
            if last.endswith(b"login: ") and b"login" not in answered:
                answered.add(b"login")
                self.sendline("root")
            elif last.endswith(b"Password: ") and b"password" not in answered:
                answered.add(b"password")
                self.sendline(password)
            elif re.search(rb"[#$] $", last):
                break
            if time.monotonic() > deadline:
                raise GuestError("%s: no shell prompt on the console within %.0f s; tail:\n%s"
                                 % (self.name, timeout_s, self.tail()))  # fmt: skip
            if not self._read(0.5) and last == self.buf[self.buf.rfind(b"\n") + 1 :].rstrip(b"\r"):
                # Quiet console: a getty may be waiting behind kernel messages; nudge it.
                if time.monotonic() - self.t0 > 5 and not last.strip():
                    self.sendline("")
        self.pos = len(self.buf)
        self.mark("shell")
        # No echo, no prompt noise, kernel messages off the console: output is what commands print.
        self.run("stty -echo; export PS1='# ' PS2='' TERM=dumb; dmesg -n 1", timeout_s=30)

    def run(self, cmd: str, timeout_s: float = 120) -> tuple[int, str]:
        """Runs a shell command on the console; (exit status, output without the prompt)."""
        self._n += 1
        tag = "__MQ%d__" % self._n
        start = self.pos = len(self.buf)
        # The marker is split in the typed text, so only the printed one matches.
        line = '%s\necho "%s"RC=$?END' % (cmd, tag)
        self.sendline(line)
        m = self.wait_for(re.escape(tag.encode()) + rb"RC=(\d+)END", timeout_s, regex=True)
        out = self.buf[start : m.start()].decode(errors="replace").replace("\r", "")
        if line in out:
            out = out.split(line, 1)[1]
        out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out).strip("\n")
        if out.startswith("# "):
            out = out[2:]
        out = re.sub(r"\n?# ?$", "", out)
        return int(m.group(1)), out

    def run_json(self, cmd: str, timeout_s: float = 120) -> Any:
        """`check(cmd)` parsed as JSON; lines that other programs wrote on the console are skipped."""
        import json

        out = self.check(cmd, timeout_s)
        lines = out.splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith(("{", "["))), None)
        last = max((i for i, line in enumerate(lines) if line.startswith(("}", "]"))), default=None)
        if first is None or last is None:
            raise GuestError("%s: `%s` printed no JSON:\n%s" % (self.name, cmd, out[-2000:]))
        body = [line for line in lines[first : last + 1] if not re.match(r"^\[\s*\d+\.\d+\]", line)]
        return json.loads("\n".join(body))

    def check(self, cmd: str, timeout_s: float = 120) -> str:
        """`run`, raising GuestError (with the output) unless the command exits 0."""
        rc, out = self.run(cmd, timeout_s)
        if rc != 0:
            raise GuestError("%s: `%s` exited %d:\n%s" % (self.name, cmd, rc, out[-3000:]))
        return out

    def configure_link(self) -> str:
        """Gives the link NIC its address (found by MAC, whatever the kernel named it); the address."""
        if self.link is None or self.link_addr is None:
            raise GuestError("%s has no Link" % self.name)
        mac = self._link_mac
        self.check(
            "dev=$(for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = %s ] && basename $d; done); "
            "ip addr add %s dev $dev && ip link set $dev up" % (mac, self.link_addr)
        )
        return self.link_addr.split("/")[0]

    def poweroff(self, timeout_s: float = 90) -> int:
        """Powers the guest off from its shell and waits for QEMU to exit; QEMU's exit status."""
        self.sendline("systemctl poweroff || poweroff -f")
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = 90) -> int:
        if self.proc is None:
            raise GuestError("%s was never booted" % self.name)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise GuestError("%s: QEMU did not exit within %.0f s; tail:\n%s" % (self.name, timeout_s, self.tail()))
            try:
                if self._rfd >= 0:
                    self._read(0.5)
                else:
                    time.sleep(0.2)
            except GuestError:
                time.sleep(0.2)
        self.release_console()
        self.mark("exited")
        return self.proc.returncode
