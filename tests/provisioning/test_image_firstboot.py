"""What the provisioned board finds on first boot: cloud-init files, the enrollment, and the
first-boot script that joins the tailnet and then deletes the secret."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from meshlet_provision.image import Enrollment, ImageError, WifiConfig
from meshlet_provision.image.cloudinit import meta_data, network_config, user_data
from meshlet_provision.image.enrollment import check_hostname, default_hostname
from meshlet_provision.image.layer import FIRSTBOOT_DIR, hosts_file

KEY = "mkey:" + "ab" * 32
CODE = "meshlet://enroll?server=https%3A%2F%2Fcontrol.example.com&key=" + KEY + "&authkey=mlt-auth-xyz"


def test_user_data_and_meta_data() -> None:
    assert user_data("pi-kitchen").splitlines()[0] == "#cloud-config"
    assert 'hostname: "pi-kitchen"' in user_data("pi-kitchen")
    assert (
        meta_data("pi-kitchen", "meshlet-01") == 'instance-id: "meshlet-01"\nlocal-hostname: "pi-kitchen"\n'
    )


def test_network_config_quotes_what_yaml_would_misread() -> None:
    text = network_config(WifiConfig('café: "5G" #1', "pa ss: #word", "GB"))
    assert '        "café: \\"5G\\" #1":' in text
    assert '          password: "pa ss: #word"' in text
    assert 'regulatory-domain: "GB"' in text
    assert "wifis" not in network_config(None) and "eth0" in network_config(None)


def test_wifi_and_hostname_validation() -> None:
    with pytest.raises(ImageError, match="8 to 63"):
        WifiConfig("home", "short")
    with pytest.raises(ImageError, match="two-letter"):
        WifiConfig("home", "longenough", "Germany")
    assert "<psk>" in repr(WifiConfig("home", "longenough")) and "longenough" not in repr(
        WifiConfig("home", "longenough")
    )
    with pytest.raises(ImageError, match="lowercase letters"):
        check_hostname("Pi_Kitchen")
    assert default_hostname("Pi_Zero.2") == "pi-zero-2"


def test_enrollment_files_put_the_secret_in_one_file() -> None:
    files = Enrollment("https://control.example.com", "mlt-auth-xyz").boot_files("pi")
    assert files == {
        "meshlet/enroll.env": files["meshlet/enroll.env"],
        "meshlet/authkey": b"mlt-auth-xyz\n",
    }
    assert b"mlt-auth" not in files["meshlet/enroll.env"]
    code = Enrollment.from_code(CODE)
    assert (code.login_server, code.auth_key) == ("https://control.example.com", "mlt-auth-xyz")
    assert set(code.boot_files("pi")) == {"meshlet/enroll.env", "meshlet/enroll-code"}
    assert "mlt-auth" not in repr(code)
    assert set(Enrollment("https://c.example").boot_files("pi")) == {"meshlet/enroll.env"}


def test_enrollment_errors() -> None:
    with pytest.raises(ImageError, match="enrollment code does not parse"):
        Enrollment.from_code("meshlet://enroll?server=x")
    with pytest.raises(ImageError, match="--login-server"):
        Enrollment("control.example.com", "k")
    with pytest.raises(ImageError, match="one line"):
        Enrollment("https://c.example", "two\nlines")


def test_hosts_file() -> None:
    assert (
        hosts_file("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n", "pi")
        == "127.0.0.1\tlocalhost\n127.0.1.1\tpi\n"
    )
    assert hosts_file("", "pi") == "127.0.0.1\tlocalhost\n127.0.1.1\tpi\n"


def firstboot_tree(
    tmp_path: Path, files: dict[str, bytes], meshlet_rc: int
) -> tuple[Path, dict[str, str], Path]:
    """A fake root for meshlet-firstboot: the boot partition's meshlet/ and a `meshlet` that logs its argv."""
    boot = tmp_path / "boot/firmware"
    for name, data in files.items():
        (boot / name).parent.mkdir(parents=True, exist_ok=True)
        (boot / name).write_bytes(data)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv.log"
    (bindir / "meshlet").write_text(
        '#!/bin/sh\nprintf "%%s\\n" "$@" >> %s\necho ---- >> %s\nexit %d\n' % (log, log, meshlet_rc)
    )
    (bindir / "meshlet").chmod(0o755)
    env = dict(
        os.environ,
        MESHLET_FIRSTBOOT_ROOT=str(tmp_path),
        MESHLET_FIRSTBOOT_WAIT="1",
        PATH="%s:%s" % (bindir, os.environ["PATH"]),
    )
    return boot, env, log


def run_firstboot(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(FIRSTBOOT_DIR / "meshlet-firstboot")], env=env, capture_output=True, text=True, check=False
    )


def test_firstboot_joins_with_the_key_file_then_deletes_it(tmp_path: Path) -> None:
    boot, env, log = firstboot_tree(
        tmp_path, Enrollment("https://c.example", "mlt-auth-xyz").boot_files("pi-kitchen"), 0
    )
    proc = run_firstboot(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    argv = log.read_text().split("----")[0].split()
    assert argv == [
        "up",
        "--login-server",
        "https://c.example",
        "--hostname",
        "pi-kitchen",
        "--authkey",
        "file:%s/meshlet/authkey" % boot,
    ]  # the key never in ps
    assert not (boot / "meshlet").exists()
    assert (tmp_path / "var/lib/meshlet/firstboot.done").exists()
    # Later boots: nothing.
    assert run_firstboot(env).returncode == 0 and log.read_text().count("----") == 1


def test_firstboot_keeps_the_secret_until_up_succeeds(tmp_path: Path) -> None:
    boot, env, log = firstboot_tree(tmp_path, Enrollment.from_code(CODE).boot_files("pi"), 1)
    proc = run_firstboot(env)
    assert proc.returncode == 1 and "retrying in 30 s" in proc.stdout
    assert log.read_text().split()[:2] == ["up", "--enroll-code"] and CODE in log.read_text()
    assert (boot / "meshlet/enroll-code").exists()
    assert not (tmp_path / "var/lib/meshlet/firstboot.done").exists()


def test_firstboot_without_a_key_logs_in_interactively_on_a_terminal(tmp_path: Path) -> None:
    """No key: `meshlet up` gets a pty (it draws the QR only on a terminal), and everything is
    copied to each active console."""
    _, env, log = firstboot_tree(tmp_path, Enrollment("https://c.example").boot_files("pi"), 0)
    (tmp_path / "sys/class/tty/console").mkdir(parents=True)
    (tmp_path / "sys/class/tty/console/active").write_text("ttyFAKE0\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ttyFAKE0").write_text("")
    fake = tmp_path / "bin/meshlet"
    fake.write_text(fake.read_text().replace("exit 0", '[ -t 2 ] && echo "stderr is a terminal" >&2\nexit 0'))
    proc = run_firstboot(env)
    assert proc.returncode == 0 and "log in at the URL below" in proc.stdout
    assert "stderr is a terminal" in proc.stdout
    assert log.read_text().split()[:-1] == ["up", "--login-server", "https://c.example", "--hostname", "pi"]
    console = (tmp_path / "dev/ttyFAKE0").read_text()
    assert "log in at the URL below" in console and "stderr is a terminal" in console


def test_firstboot_unit_runs_once_after_the_daemon() -> None:
    unit = (FIRSTBOOT_DIR / "meshlet-firstboot.service").read_text()
    assert "After=meshletd.service" in unit and "Requires=meshletd.service" in unit
    assert "ConditionPathExists=!/var/lib/meshlet/firstboot.done" in unit
    assert "StandardOutput=journal" in unit  # and the script copies it to the consoles
