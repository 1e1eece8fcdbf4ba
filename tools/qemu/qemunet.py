"""A tailnet for QEMU guests, built from network namespaces so nothing touches the host's network.

    namespace <p>laptop    `meshlet daemon` "laptop": reaches the guests by MagicDNS name
                  \\
    hub <p>h       meshlet-control serve on 10.232.1.1:8080 (embedded DERP + STUN)
                  /
    namespace <p>dev       QEMU: each guest behind its own user-mode NAT (guest 10.0.2.15,
                           10.0.2.2 = this namespace), so the guest reaches control at
                           http://10.232.1.1:8080 through two NATs, like a board at home

The guests' serial consoles, hostfwd ports and private links are TCP ports
on the `dev` namespace's loopback; `Guest` reaches its console through a
relay in that namespace, and `run_dev` runs any other client there
(`meshlet-provision serial socket://127.0.0.1:PORT`, ssh to a hostfwd).
Every leaf has its own /etc/netns/<ns>/resolv.conf (netlab.Star), so the
laptop agent's MagicDNS rewrites that, never the host's /etc/resolv.conf.
`stop()` stops guests and processes by PID and deletes the namespaces.

    with QemuTailnet(log_dir) as net:
        key = net.control.keys_create("--reusable")["key"]
        g = net.guest(image, board, name="pi")      # Guest in the dev namespace, not booted
        g.boot(); g.shell()
        net.control.wait_online(["pi"], 120)
        net.laptop.wait_ping("pi", 60)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LAB = str(HERE.parent / "lab")
if LAB not in sys.path:
    sys.path.insert(0, LAB)

import meshletnode  # noqa: E402
import tailnode  # noqa: E402
from netlab import Star, netns_missing  # noqa: E402
from runner import Guest  # noqa: E402


class QemuTailnet:
    """The namespaces, meshlet-control, the laptop agent, and the guests started through it."""

    def __init__(self, log_dir: str | os.PathLike[str] | None = None) -> None:
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.star = Star(["laptop", "dev"], workdir=str(log_dir) if log_dir else None)
        self.control = tailnode.Control(self.star)
        self.laptop = meshletnode.MeshletNode(self.star, "laptop", "laptop", verbose=True)
        self.guests: list[Guest] = []
        self.log_dir = self.star.dir

    @staticmethod
    def requirements_missing() -> str | None:
        reason: str | None = netns_missing()
        return reason

    @property
    def dev_ns(self) -> str:
        ns: str = self.star.ns["dev"]
        return ns

    def start(self, laptop: bool = True) -> "QemuTailnet":
        self.star.up()
        try:
            self.control.start()
            if laptop:
                self.laptop.start()
                self.laptop.up(self.control.url, authkey=self.control.keys_create()["key"], hostname="laptop")
                self.laptop.wait_running(60)
        except BaseException:
            self.stop()
            raise
        return self

    def authkey(self, *args: str) -> str:
        key: str = self.control.keys_create(*args)["key"]
        return key

    def enroll_code(self, *args: str) -> str:
        """A fresh key's enrollment URI (meshlet://enroll?server=…&key=…&authkey=…)."""
        uri: str = self.control.keys_create(*args)["enroll_uri"]
        return uri

    def guest(self, image: Any, board: Any, name: str, **kw: Any) -> Guest:
        """A Guest whose QEMU runs in the dev namespace, its logs in this tailnet's directory."""
        g = Guest(image, board, netns=self.dev_ns, name=name, log_dir=self.log_dir, **kw)
        self.guests.append(g)
        return g

    def run_dev(self, *args: str, timeout: float = 60, check: bool = False) -> Any:
        """Runs a program in the dev namespace (where the guests' TCP ports are)."""
        return self.star.run("dev", *args, timeout=timeout, check=check)

    def run_laptop(self, *args: str, timeout: float = 60, check: bool = False) -> Any:
        """Runs a program in the laptop's namespace (its resolv.conf points at MagicDNS)."""
        return self.star.run("laptop", *args, timeout=timeout, check=check)

    def logs(self, lines: int = 30) -> str:
        parts = ["--- %s ---\n%s" % (p.name, meshletnode.tail(p.log(), lines)) for p in self.star.procs]
        parts += ["--- %s console ---\n%s" % (g.name, g.tail(3000)) for g in self.guests]
        return "\n".join(parts)

    def stop(self) -> None:
        for g in self.guests:
            g.close()
        self.star.down()

    def __enter__(self) -> "QemuTailnet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
