"""OsDns (agent/meshlet_agent/dns/oscfg.py): pointing the host at 100.100.100.100 and back.

Every file is a temporary copy and resolvectl is a fake script: these tests
never touch this machine's /etc/resolv.conf, /etc/hosts or systemd-resolved.
"""

import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from meshlet_agent.dns import OsDns, OsDnsError
from meshlet_agent.dns.names import REVERSE_ZONES

ORIGINAL = (
    b"# from DHCP\nnameserver 192.168.1.1\nnameserver 2001:db8::53\nsearch lan\noptions edns0 trust-ad\n"
)
HOSTS = b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
SUFFIX = "meshlet.internal."
ENTRIES = [("100.64.0.1", "pi4.meshlet.internal."), ("100.64.0.2", "pi-kitchen.meshlet.internal.")]


class Host:
    """A fake /etc and /var/lib/meshlet under tmp_path."""

    def __init__(self, tmp: Path) -> None:
        self.etc = tmp / "etc"
        self.etc.mkdir()
        self.resolv = self.etc / "resolv.conf"
        self.hosts = self.etc / "hosts"
        self.state = tmp / "state"
        self.run = tmp / "run"
        self.run.mkdir()
        self.resolved_conf = self.run / "resolved-upstream.conf"
        self.resolvectl_log = tmp / "resolvectl.log"
        self.resolvectl = tmp / "resolvectl"
        self.resolv.write_bytes(ORIGINAL)
        self.resolv.chmod(0o644)
        self.hosts.write_bytes(HOSTS)
        self.hosts.chmod(0o644)
        self.fake_resolvectl(fail="")

    def fake_resolvectl(self, fail: str) -> None:
        """A resolvectl that logs its arguments, and fails (like a stopped resolved) for verb `fail`."""
        self.resolvectl.write_text(
            textwrap.dedent(
                """\
                #!/bin/sh
                echo "$@" >> %s
                if [ "$1" = "%s" ]; then echo "Failed to set DNS configuration: Unit dbus-org.freedesktop.resolve1.service not found." >&2; exit 1; fi
                """
                % (self.resolvectl_log, fail)
            )
        )
        self.resolvectl.chmod(0o755)

    def os_dns(self, mode: str = "auto", resolvectl: "str | None" = None) -> OsDns:
        return OsDns(
            "meshlet0",
            str(self.state),
            mode=mode,
            resolv_conf=str(self.resolv),
            hosts=str(self.hosts),
            resolvectl=resolvectl or str(self.resolvectl),
            resolved_conf=str(self.resolved_conf),
        )

    def use_resolved_stub(self) -> None:
        """/etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf, as on Ubuntu and Debian with resolved."""
        self.resolv.unlink()
        os.symlink("../run/systemd/resolve/stub-resolv.conf", self.resolv)
        self.resolved_conf.write_text("nameserver 192.168.1.1\nnameserver 100.100.100.100\nsearch lan\n")

    def resolvectl_calls(self) -> list[str]:
        return self.resolvectl_log.read_text().splitlines() if self.resolvectl_log.exists() else []


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- resolv.conf ----------------------------------------------------------------------------------


def test_auto_rewrites_a_plain_resolv_conf_and_says_why(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    dns = host.os_dns()
    with caplog.at_level(logging.INFO, logger="meshlet_agent.dns"):
        dns.configure(SUFFIX, ["meshlet.internal", "corp.example"])
    assert dns.mode == "resolv.conf"
    chosen = [r.getMessage() for r in caplog.records if "using mode" in r.getMessage()]
    assert len(chosen) == 1 and "resolv.conf" in chosen[0] and "can be rewritten" in chosen[0]
    text = host.resolv.read_text()
    assert text.startswith("# meshlet MagicDNS: this file is managed by meshlet")
    assert "To undo by hand: cp %s %s" % (host.state / "resolv.conf.pre-meshlet", host.resolv) in text
    assert text.splitlines()[2:] == ["nameserver 100.100.100.100", "search meshlet.internal corp.example"]
    assert mode_of(host.resolv) == 0o644  # every program must read it
    assert mode_of(host.state / "resolv.conf.pre-meshlet") == 0o600
    assert (host.state / "resolv.conf.pre-meshlet").read_bytes() == ORIGINAL


def test_restore_puts_the_original_back_exactly(host: Host) -> None:
    host.resolv.chmod(0o640)
    before = os.stat(host.resolv)
    dns = host.os_dns()
    dns.configure(SUFFIX, [])
    dns.configure(SUFFIX, ["other.example"])  # a netmap change: the backup stays the real original
    dns.restore()
    after = os.stat(host.resolv)
    assert host.resolv.read_bytes() == ORIGINAL
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o640, before.st_uid, before.st_gid)
    assert sorted(os.listdir(host.state)) == []
    dns.restore()  # twice is harmless
    assert host.resolv.read_bytes() == ORIGINAL


def test_original_nameservers_come_from_the_backup_once_rewritten(host: Host) -> None:
    dns = host.os_dns()
    want = [("192.168.1.1", 53), ("2001:db8::53", 53)]
    assert dns.original_nameservers() == want
    dns.configure(SUFFIX, [])
    assert dns.original_nameservers() == want


def test_original_nameservers_skip_the_stub_and_quad100(host: Host) -> None:
    host.resolv.write_text("nameserver 127.0.0.53\nnameserver 100.100.100.100\nnameserver 9.9.9.9\n")
    assert host.os_dns(mode="off").original_nameservers() == [("9.9.9.9", 53)]
    host.resolv.write_text("nameserver 127.0.0.53\noptions edns0\n")
    host.resolved_conf.write_text("nameserver 10.0.0.1\n")
    assert host.os_dns(mode="off").original_nameservers() == [("10.0.0.1", 53)]  # resolved's own upstreams


def test_a_symlinked_resolv_conf_comes_back_as_the_same_symlink(host: Host) -> None:
    """resolved's stub, but no resolvectl to talk to it: fall back to rewriting the file."""
    host.use_resolved_stub()
    dns = host.os_dns(resolvectl=str(host.run / "no-such-resolvectl"))
    dns.configure(SUFFIX, [])
    assert dns.mode == "resolv.conf" and "not found" in dns.reason
    assert not host.resolv.is_symlink() and "nameserver 100.100.100.100" in host.resolv.read_text()
    assert "ln -sf ../run/systemd/resolve/stub-resolv.conf" in host.resolv.read_text()
    dns.restore()
    assert os.readlink(host.resolv) == "../run/systemd/resolve/stub-resolv.conf"


def test_a_missing_resolv_conf_is_missing_again_after_restore(host: Host) -> None:
    host.resolv.unlink()
    dns = host.os_dns()
    dns.configure(SUFFIX, [])
    assert host.resolv.exists()
    dns.restore()
    assert not host.resolv.exists()


def test_someone_elses_newer_resolv_conf_is_left_alone(host: Host) -> None:
    """A DHCP client rewrote the file while meshlet ran: theirs is newer than our backup."""
    dns = host.os_dns()
    dns.configure(SUFFIX, [])
    host.resolv.write_text("nameserver 10.9.9.9\n")
    dns.restore()
    assert host.resolv.read_text() == "nameserver 10.9.9.9\n" and os.listdir(host.state) == []


def test_crashed_agent_settings_are_undone_on_the_next_start(host: Host) -> None:
    crashed = host.os_dns()
    crashed.configure(SUFFIX, [])  # and then the process died without restore()
    assert b"100.100.100.100" in host.resolv.read_bytes()
    nxt = host.os_dns()
    assert nxt.original_nameservers() == [("192.168.1.1", 53), ("2001:db8::53", 53)]
    assert host.resolv.read_bytes() == ORIGINAL  # recovered before anything else
    nxt.configure(SUFFIX, [])
    nxt.restore()
    assert host.resolv.read_bytes() == ORIGINAL


def test_bind_mounted_resolv_conf_is_rewritten_in_place(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Renaming over a mount point fails with EBUSY (containers, `ip netns exec`); the file is then
    rewritten in place, the same inode."""
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if os.path.abspath(dst) == str(host.resolv):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    inode = os.stat(host.resolv).st_ino
    dns = host.os_dns()
    dns.configure(SUFFIX, [])
    assert os.stat(host.resolv).st_ino == inode and "nameserver 100.100.100.100" in host.resolv.read_text()
    assert [p for p in os.listdir(host.etc) if "tmp" in p] == []
    dns.restore()
    assert os.stat(host.resolv).st_ino == inode and host.resolv.read_bytes() == ORIGINAL


BIND_MOUNT_SCRIPT = """
import json, os, subprocess, sys
sys.path[:0] = json.loads(sys.argv[2])
from meshlet_agent.dns import OsDns
etc = sys.argv[1]
subprocess.run(["mount", "--bind", etc + "/netns-resolv.conf", etc + "/resolv.conf"], check=True)
dns = OsDns("meshlet0", etc + "/../state", resolv_conf=etc + "/resolv.conf", hosts=etc + "/hosts",
            resolvectl=etc + "/../no-resolvectl")
dns.configure("meshlet.internal.", [])
during = open(etc + "/resolv.conf").read()
dns.restore()
print(json.dumps({"mode": dns.mode, "during": during, "after": open(etc + "/resolv.conf").read()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_real_bind_mount_in_a_private_mount_namespace(host: Host) -> None:
    """As `ip netns exec` does with /etc/netns/<ns>/resolv.conf, in a throwaway mount namespace."""
    (host.etc / "netns-resolv.conf").write_bytes(ORIGINAL)
    host.resolv.write_text("# the host's own file, hidden by the mount\n")
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", BIND_MOUNT_SCRIPT, str(host.etc),
           json.dumps([p for p in sys.path if p])]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if p.returncode != 0 and "unshare failed" in p.stderr:
        pytest.skip("mount namespaces are not available here: " + p.stderr.strip())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["mode"] == "resolv.conf" and "nameserver 100.100.100.100" in out["during"]
    assert out["after"].encode() == ORIGINAL
    assert (host.etc / "netns-resolv.conf").read_bytes() == ORIGINAL  # the mount source, restored through it
    assert host.resolv.read_text() == "# the host's own file, hidden by the mount\n"


# -- systemd-resolved -----------------------------------------------------------------------------


def test_resolved_mode_uses_resolvectl(host: Host) -> None:
    host.use_resolved_stub()
    dns = host.os_dns()
    dns.configure(SUFFIX, ["meshlet.internal", "corp.example"])
    assert dns.mode == "resolved"
    zones = " ".join("~" + z.rstrip(".") for z in REVERSE_ZONES)
    assert host.resolvectl_calls() == [
        "dns meshlet0 100.100.100.100",
        "domain meshlet0 meshlet.internal corp.example " + zones,
        "default-route meshlet0 false",
    ]
    assert os.readlink(host.resolv) == "../run/systemd/resolve/stub-resolv.conf"  # untouched
    assert dns.original_nameservers() == [("192.168.1.1", 53)]
    dns.restore()
    assert host.resolvectl_calls()[-1] == "revert meshlet0"


def test_resolved_mode_with_default_resolvers_takes_all_queries(host: Host) -> None:
    host.use_resolved_stub()
    dns = host.os_dns(mode="resolved")
    dns.configure(SUFFIX, [], default_route=True)
    calls = host.resolvectl_calls()
    assert calls[1].startswith("domain meshlet0 meshlet.internal ~64.100.in-addr.arpa") and calls[1].endswith(
        " ~."
    )
    assert calls[2] == "default-route meshlet0 true"


def test_resolvectl_failure_names_the_fix(host: Host) -> None:
    host.use_resolved_stub()
    host.fake_resolvectl(fail="dns")
    dns = host.os_dns()
    with pytest.raises(OsDnsError) as e:
        dns.configure(SUFFIX, [])
    assert "resolvectl" in str(e.value) and "dbus-org.freedesktop.resolve1" in str(e.value)
    assert "systemctl status systemd-resolved" in str(e.value)


def test_resolved_settings_left_by_a_crash_are_reverted(host: Host) -> None:
    host.use_resolved_stub()
    host.os_dns().configure(SUFFIX, [])
    host.os_dns().choose()
    assert host.resolvectl_calls()[-1] == "revert meshlet0"


# -- /etc/hosts -----------------------------------------------------------------------------------


def test_hosts_mode_keeps_a_managed_block(host: Host) -> None:
    dns = host.os_dns(mode="hosts")
    dns.configure(SUFFIX, [])
    assert host.hosts.read_bytes() == HOSTS  # nothing to add yet
    dns.update_hosts(ENTRIES)
    lines = host.hosts.read_text().splitlines()
    assert lines[:2] == HOSTS.decode().splitlines()
    assert lines[2].startswith("# BEGIN meshlet MagicDNS") and lines[-1] == "# END meshlet MagicDNS"
    assert lines[3:-1] == [
        "100.64.0.1 pi4.meshlet.internal pi4",
        "100.64.0.2 pi-kitchen.meshlet.internal pi-kitchen",
    ]
    dns.update_hosts(ENTRIES[1:])  # pi4 left the tailnet
    assert "pi4" not in host.hosts.read_text() and "pi-kitchen" in host.hosts.read_text()
    assert mode_of(host.hosts) == 0o644
    dns.restore()
    assert host.hosts.read_bytes() == HOSTS


def test_auto_falls_back_to_hosts_when_resolv_conf_cannot_be_written(host: Host) -> None:
    dns = OsDns("meshlet0", str(host.state), resolv_conf=str(host.etc / "ro" / "resolv.conf"), hosts=str(host.hosts),
                resolvectl=str(host.resolvectl))  # fmt: skip
    dns.update_hosts(ENTRIES)
    dns.configure(SUFFIX, [])
    assert dns.mode == "hosts" and "pi-kitchen.meshlet.internal" in host.hosts.read_text()


def test_hosts_block_left_by_a_crash_is_removed(host: Host) -> None:
    crashed = host.os_dns(mode="hosts")
    crashed.update_hosts(ENTRIES)
    crashed.configure(SUFFIX, [])
    assert "pi4" in host.hosts.read_text()
    host.os_dns(mode="off").restore()
    assert host.hosts.read_bytes() == HOSTS


def test_update_hosts_is_ignored_in_other_modes(host: Host) -> None:
    dns = host.os_dns(mode="resolv.conf")
    dns.configure(SUFFIX, [])
    dns.update_hosts(ENTRIES)
    assert host.hosts.read_bytes() == HOSTS


# -- off and bad modes ----------------------------------------------------------------------------


def test_off_touches_nothing(host: Host) -> None:
    dns = host.os_dns(mode="off")
    dns.configure(SUFFIX, ["x"])
    dns.update_hosts(ENTRIES)
    dns.restore()
    assert host.resolv.read_bytes() == ORIGINAL and host.hosts.read_bytes() == HOSTS
    assert host.resolvectl_calls() == [] and not host.state.exists()


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(OsDnsError, match="unknown DNS mode 'dnsmasq'"):
        OsDns("meshlet0", "/nonexistent", mode="dnsmasq")
