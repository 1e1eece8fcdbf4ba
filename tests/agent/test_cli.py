"""The `meshlet` CLI (agent/meshlet_agent/cli.py): parser, help, keys, `wg show` layout, one-line errors."""

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest

from meshlet.key import NodePrivate
from meshlet_agent import cli


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = cli.main(argv)
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def test_parser_shapes() -> None:
    p = cli.build_parser()
    a = p.parse_args(["wg", "up", "/etc/wireguard/wg0.conf"])
    assert (a.command, a.wg_command, a.config, a.ifname, a.verbose) == (
        "wg",
        "up",
        "/etc/wireguard/wg0.conf",
        None,
        False,
    )
    a = p.parse_args(["wg", "up", "x.conf", "--ifname", "mesh0", "--foreground", "-v"])
    assert (a.ifname, a.foreground, a.verbose) == ("mesh0", True, True)
    a = p.parse_args(["wg", "show"])
    assert (a.ifname, a.json) == (None, False)
    a = p.parse_args(["wg", "show", "wg0", "--json"])
    assert (a.ifname, a.json) == ("wg0", True)
    for cmd in ("genkey", "genpsk", "pubkey"):
        assert p.parse_args(["wg", cmd]).wg_command == cmd


@pytest.mark.parametrize("argv", [[], ["wg"], ["wg", "up"], ["wg", "nope"], ["wg", "show", "a", "b"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "usage: meshlet" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["--help"], ["wg", "--help"], ["wg", "up", "--help"], ["wg", "show", "--help"]]
)
def test_help_renders_with_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meshlet")
    assert "example" in out


def subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_up_help_teaches_the_config() -> None:
    up_help = subparser(cli.build_parser(), "wg", "up").format_help()
    for word in ("[Interface]", "PrivateKey", "[Peer]", "AllowedIPs", "SIGTERM", "meshlet wg show"):
        assert word in up_help


def test_genkey_pubkey_genpsk(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["wg", "genkey"], capsys)
    assert code == 0
    key = out.strip()
    priv = NodePrivate.from_base64(key)
    raw = priv.raw_private()
    assert raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40  # clamped like `wg genkey`
    code, out, _ = run(["wg", "pubkey"], capsys, stdin=key + "\n")
    assert code == 0 and out.strip() == priv.public().to_base64()
    code, out, _ = run(["wg", "genpsk"], capsys)
    assert code == 0 and len(out.strip()) == 44 and out.strip().endswith("=")


def test_pubkey_matches_wg(capsys: pytest.CaptureFixture[str]) -> None:
    wg = __import__("shutil").which("wg")
    if wg is None:
        pytest.skip("wireguard-tools (wg) not installed: apt-get install wireguard-tools")
    key = subprocess.run([wg, "genkey"], capture_output=True, text=True, check=True).stdout
    want = subprocess.run([wg, "pubkey"], input=key, capture_output=True, text=True, check=True).stdout
    code, out, _ = run(["wg", "pubkey"], capsys, stdin=key)
    assert code == 0 and out == want


def test_pubkey_error_is_one_line_with_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["wg", "pubkey"], capsys, stdin="garbage\n")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("meshlet: stdin is not a base64 WireGuard private key")
    assert "meshlet wg genkey" in err


def test_up_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["wg", "up", str(tmp_path / "wg0.conf")], capsys)
    assert code == 1
    assert err == "meshlet: cannot read %s: No such file or directory; check the path and permissions\n" % (
        tmp_path / "wg0.conf"
    )


def test_up_bad_config_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text("[Interface]\nPrivateKey = nope\n")
    code, _, err = run(["wg", "up", str(path)], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("meshlet: %s:2: PrivateKey is not a base64 WireGuard key" % path)
    assert "wg genkey" in err


def test_up_bad_ifname(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(
        "[Interface]\nPrivateKey = %s\n" % NodePrivate.generate(__import__("os").urandom).to_base64()
    )
    code, _, err = run(["wg", "up", str(path), "--ifname", "a-name-far-too-long"], capsys)
    assert code == 1
    assert "Linux allows 1 to 15" in err and "--ifname" in err


def test_show_nothing_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHLET_RUN_DIR", str(tmp_path))
    code, _, err = run(["wg", "show"], capsys)
    assert code == 1 and "meshlet wg up" in err
    code, _, err = run(["wg", "show", "wg7"], capsys)
    assert code == 1
    assert err.startswith("meshlet: no meshlet interface wg7 is running") and err.count("\n") == 1
    code, out, _ = run(["wg", "show", "--json"], capsys)
    assert code == 0 and out.strip() == "[]"


def test_default_ifname() -> None:
    from meshlet_agent.wgup import default_ifname

    assert default_ifname("/etc/wireguard/wg0.conf") == "wg0"
    assert default_ifname("mesh") == "mesh"


STATUS = {
    "interface": "wg0",
    "public_key": "A" * 43 + "=",
    "listening_port": 51820,
    "peers": [
        {
            "public_key": "B" * 43 + "=",
            "preshared_key": False,
            "endpoint": None,
            "allowed_ips": [],
            "latest_handshake_unix_ms": 0,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "persistent_keepalive_s": 0,
        },
        {
            "public_key": "C" * 43 + "=",
            "preshared_key": True,
            "endpoint": "10.231.0.2:51820",
            "allowed_ips": ["100.64.0.2/32", "fd00::/64"],
            "latest_handshake_unix_ms": 1_000_000_000_000 - 65_400,
            "rx_bytes": 732,
            "tx_bytes": 5 * 1024 * 1024 + 1,
            "persistent_keepalive_s": 25,
        },
    ],
}


def test_format_show_like_wg() -> None:
    text = cli.format_show(STATUS, 1_000_000_000)
    assert text == (
        "interface: wg0\n"
        "  public key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        "  private key: (hidden)\n"
        "  listening port: 51820\n"
        "\n"
        "peer: CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC=\n"
        "  preshared key: (hidden)\n"
        "  endpoint: 10.231.0.2:51820\n"
        "  allowed ips: 100.64.0.2/32, fd00::/64\n"
        "  latest handshake: 1 minute, 6 seconds ago\n"
        "  transfer: 732 B received, 5.00 MiB sent\n"
        "  persistent keepalive: every 25 seconds\n"
        "\n"
        "peer: BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=\n"
        "  allowed ips: (none)"
    )


def test_time_and_bytes_forms() -> None:
    assert cli.pretty_time(1) == "1 second"
    assert cli.pretty_time(3600 * 25 + 1) == "1 day, 1 hour, 1 second"
    assert cli.ago(5, 5) == "Now"
    assert "wound backward" in cli.ago(6, 5)
    assert cli.human_bytes(1023) == "1023 B"
    assert cli.human_bytes(1536) == "1.50 KiB"
    assert cli.human_bytes(3 << 30) == "3.00 GiB"


def test_python_dash_m(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "meshlet_agent", "wg", "genkey"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0 and len(res.stdout.strip()) == 44


@pytest.mark.parametrize("value", ["abc", "0", "99999"])
def test_a_bad_knob_is_one_line_naming_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHLET_WG_BATCH", value)
    assert cli.main(["wg", "genkey"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshlet: MESHLET_WG_BATCH=") and "set 1..4096" in err and err.count("\n") == 1
