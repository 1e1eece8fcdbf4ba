"""The runner itself, on a stock arm64 guest: console, hostfwd, a private link, persistence.

One boot of two arm64 guests joined by a `Link` (tools/qemu/runner.py):
both get a shell over their serial console, guest 1 reaches guest 2 over
the link, the host reaches guest 1's dropbear through a hostfwd port, a
file written on a persistent copy of the disk survives a power cycle while
the pristine image stays untouched. This is what the provisioned-image
tests (test_provisioned.py) stand on.

The guest is the same image they boot (meshlet_provision.image.build_image
from scratch, lab=True: serial autologin, the cache's SSH key), so a cold
cache builds one Debian tree for the whole tier, not two. It has to carry
an enrollment; an interactive one (a login server and no key) puts no
secret on it, and the kernel command line masks meshletd and its first-boot
unit, so no agent runs and nothing but the shell writes to the console:
the runner is tested on a plain Debian box, not on meshlet.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

# Never contacted: the units that would use it are masked by NO_MESHLET.
UNUSED_LOGIN_SERVER = "http://10.0.2.2:9"
NO_MESHLET = "systemd.mask=meshletd.service systemd.mask=meshlet-firstboot.service"


@pytest.fixture(scope="module")
def lab_arm64(image_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import runner

    reason = runner.requirements_missing("arm64")
    if reason:
        pytest.skip(reason)
    try:
        from meshlet_provision import boards, image
    except ImportError as e:
        pytest.skip("meshlet_provision is not importable (%s): install the repository with ./dev setup" % e)
    out = tmp_path_factory.mktemp("lab-image") / "lab.img"
    result = image.build_image(
        boards.load_board("qemu-virt-arm64"), out, from_scratch=True,
        enrollment=image.Enrollment(UNUSED_LOGIN_SERVER), hostname="lab", cache_dir=str(image_cache),
        progress=print, lab=True,
    )  # fmt: skip
    print("lab image: %.1f s, base from cache: %s" % (result.seconds, result.cache_hit))
    return result


def _sha256_head(path: Path, n: int = 64 << 20) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


def test_two_guests_on_a_link_with_console_and_ssh(lab_arm64, qemu_logs: Path) -> None:  # type: ignore[no-untyped-def]
    from runner import Guest, Link, free_port

    link = Link()
    ssh_port = free_port()
    a = Guest(lab_arm64, "arm64", hostfwd=[("tcp", ssh_port, 22)], link=link, name="lab-a",
              log_dir=qemu_logs, smp=1, mac_index=1, append=NO_MESHLET)  # fmt: skip
    b = Guest(lab_arm64, "arm64", link=link, name="lab-b", log_dir=qemu_logs, smp=1, mac_index=2,
              append=NO_MESHLET)  # fmt: skip
    with a, b:
        a.boot()
        b.boot()
        a.shell()
        b.shell()
        assert a.check("uname -m").strip() == "aarch64"
        a_ip, b_ip = a.configure_link(), b.configure_link()
        out = a.check("ping -c 3 -W 5 %s" % b_ip, timeout_s=30)
        assert " 0% packet loss" in out, out
        rc, _ = b.run("ping -c 1 -W 5 %s" % a_ip, timeout_s=30)
        assert rc == 0
        ssh = subprocess.run(
            ["ssh", "-i", str(lab_arm64.ssh_key), "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
             "root@127.0.0.1", "cat /proc/device-tree/compatible"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ssh.returncode == 0, ssh.stderr
        assert "linux,dummy-virt" in ssh.stdout
        assert a.poweroff() == 0
        assert b.poweroff() == 0


def test_a_persistent_copy_keeps_state_across_a_power_cycle(lab_arm64, qemu_logs: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from runner import Guest, persistent_copy

    before = _sha256_head(lab_arm64.path)
    disk = persistent_copy(lab_arm64, tmp_path / "disk.img")
    with Guest(disk, "arm64", snapshot=False, name="lab-persist", log_dir=qemu_logs,
               append=NO_MESHLET) as g:
        g.boot()
        g.shell()
        g.check("echo kept > /root/marker && sync")
        g.poweroff()
        g.boot()
        g.shell()
        assert g.check("cat /root/marker").strip() == "kept"
        g.poweroff()
    assert _sha256_head(lab_arm64.path) == before
