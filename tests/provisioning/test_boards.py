"""Board profiles (boards/<id>/profile.toml): the shipped ones, strict reading, QEMU results, the table."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
from meshlet_agent import knobs
from meshlet_provision import boards
from meshlet_provision.boards import Board, BoardError, all_boards, load_board
from meshlet_provision.cli import main

REQUIRED = {
    "qemu-virt-arm64": "arm64",
    "qemu-virt-armhf": "armhf",
    "qemu-raspi3b": "arm64",
    "rpi-zero-2-w": "arm64",
    "rpi-3b": "arm64",
    "rpi-4b": "arm64",
    "rpi-5": "arm64",
    "rpi-2": "armhf",
}


def test_every_required_board_has_a_profile_with_the_right_arch() -> None:
    found = {b.id: b for b in all_boards()}
    for board_id, arch in REQUIRED.items():
        assert found[board_id].arch == arch
        assert found[board_id].debian_arch == arch


def test_the_rpi_4b_profile() -> None:
    b = load_board("rpi-4b")
    assert isinstance(b, Board)
    assert (b.name, b.arch, b.kernel_flavour, b.dtb, b.ram_mb) == (
        "Raspberry Pi 4 Model B", "arm64", "linux-image-rpi-v8", "broadcom/bcm2711-rpi-4-b.dtb", 1024,
    )  # fmt: skip
    assert b.qemu["machine"] == "virt" and b.qemu["cpu"] == "cortex-a72"
    assert b.qemu["kernel_flavour"] == "linux-image-arm64"  # QEMU boots Debian's kernel for a stand-in
    assert b.qemu["fidelity"] == "cpu-and-ram" and b.qemu["boots_from"] == "kernel+initrd"
    assert b.qemu_binary == "qemu-system-aarch64"


def test_qemu_raspi3b_uses_the_mini_uart_on_the_second_serial() -> None:
    b = load_board("qemu-raspi3b")
    q = b.qemu
    assert (q["machine"], q["console"], q["serial_index"], q["disk"], q["net_device"], q["smp"]) == (
        "raspi3b", "ttyS1", 1, "sd", "usb-net", 4,
    )  # fmt: skip
    assert q["dtb"] == "broadcom/bcm2837-rpi-3-b.dtb"


def test_armhf_boards_run_qemu_system_arm() -> None:
    assert load_board("qemu-virt-armhf").qemu_binary == "qemu-system-arm"
    assert load_board("rpi-2").qemu["kernel_flavour"] == "linux-image-armmp"


def test_agent_env_uses_only_knobs_the_agent_reads() -> None:
    documented = set(boards.known_knobs())
    assert "MESHLET_WG_BATCH" in documented
    for b in all_boards():
        for name, value in b.agent_env.items():
            assert name in documented
            assert isinstance(value, str)
    small = load_board("rpi-zero-2-w")
    assert small.ram_mb == 512 and small.agent_env == {"MESHLET_WG_BATCH": "16"}
    assert knobs.__doc__ is not None


def test_the_env_file_for_the_image() -> None:
    assert load_board("rpi-zero-2-w").env_file() == (
        "# meshlet agent defaults for Raspberry Pi Zero 2 W (boards/rpi-zero-2-w/profile.toml)\n"
        "MESHLET_WG_BATCH=16\n"
    )


def test_an_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(BoardError) as e:
        load_board("rpi-6")
    assert str(e.value).startswith("unknown board 'rpi-6'; known boards: qemu-raspi3b, ")
    assert str(e.value).endswith(" (meshlet-provision boards)")
    with pytest.raises(BoardError, match="unknown board"):
        load_board("../rpi-4b")


# --- strict reading ------------------------------------------------------------------------


@pytest.fixture
def bdir(tmp_path: Any) -> str:
    """A copy of boards/ to break."""
    d = str(tmp_path / "boards")
    shutil.copytree(boards.boards_dir(), d, ignore=shutil.ignore_patterns(boards.RESULTS))
    return d


def edit(bdir: str, board_id: str, old: str, new: str) -> str:
    path = os.path.join(bdir, board_id, "profile.toml")
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('arch = "arm64"', 'arch = "x86"', "arch is 'x86'; use one of arm64, armhf"),
        (
            'debian_arch = "arm64"',
            'debian_arch = "armhf"',
            "debian_arch is 'armhf' but arch arm64 runs 'arm64' packages",
        ),
        ("ram_mb = 1024", 'ram_mb = "1G"', "ram_mb should be a whole number, got '1G'"),
        ("ram_mb = 1024", "ram_mb = true", "ram_mb should be a whole number, got True"),
        (
            "ram_mb = 1024",
            "ram_mb = 1024\nram = 1",
            "ram is not a profile field; known fields: agent_env, arch, ",
        ),
        (
            'kernel_flavour = "linux-image-rpi-v8"',
            'kernel_flavour = "rpi-v8"',
            "kernel_flavour should name a kernel package",
        ),
        ('dtb = "broadcom/bcm2711-rpi-4-b.dtb"', 'dtb = "bcm2711"', "dtb should be a .dtb path"),
        (
            'console = "ttyAMA0"',
            'console = "ttyUSB0"',
            "qemu.console is 'ttyUSB0'; use one of ttyAMA0, ttyS0, ttyS1",
        ),
        ('machine = "virt"\n', "", "qemu.machine is missing; add it (see boards/README.md)"),
        ("smp = 4", "smp = 64", "qemu.smp should be 1..8, got 64"),
        (
            'boots_from = "kernel+initrd"',
            'boots_from = "pxe"',
            "qemu.boots_from is 'pxe'; use one of kernel+initrd, firmware",
        ),
        (
            "[agent_env]",
            "[agent_env]\nMESHLET_WG_BATCHES = 3",
            "agent_env.MESHLET_WG_BATCHES is not a knob the agent reads; known: ",
        ),
        (
            "[agent_env]",
            "[agent_env]\nWG_BATCH = 3",
            "agent_env.WG_BATCH is not an agent knob; knobs are MESHLET_* names",
        ),
        (
            "[agent_env]",
            "[agent_env]\nMESHLET_WG_BATCH = [1]",
            "agent_env.MESHLET_WG_BATCH should be a string or a whole number",
        ),
        ("[qemu]", "[qemu", "is not valid TOML"),
        ("[qemu]", "qemu = 1\n[x]", "qemu should be a table, got 1"),
    ],
)
def test_a_bad_profile_names_the_file_and_the_field(bdir: str, old: str, new: str, message: str) -> None:
    path = edit(bdir, "rpi-4b", old, new)
    with pytest.raises(BoardError) as e:
        load_board("rpi-4b", bdir)
    assert str(e.value).startswith(path)
    assert message in str(e.value)


def test_a_missing_optional_field_takes_its_default(bdir: str) -> None:
    edit(bdir, "rpi-4b", 'dtb = "broadcom/bcm2711-rpi-4-b.dtb"\n', "")
    edit(bdir, "rpi-4b", "serial_index = 0\n", "")
    b = load_board("rpi-4b", bdir)
    assert b.dtb == "" and b.qemu["serial_index"] == 0


def test_a_missing_boards_directory_says_what_to_do(tmp_path: Any) -> None:
    with pytest.raises(BoardError, match="run from a meshlet checkout or set MESHLET_BOARDS_DIR"):
        all_boards(str(tmp_path / "nowhere"))


def test_the_boards_dir_can_be_moved(bdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLET_BOARDS_DIR", bdir)
    assert load_board("rpi-5").path == os.path.join(bdir, "rpi-5", "profile.toml")


# --- QEMU results and the README table --------------------------------------------------------


def test_tested_in_qemu_is_not_yet_without_results(bdir: str) -> None:
    assert {b.tested_in_qemu for b in all_boards(bdir)} == {"not yet"}


def test_recorded_results_fill_the_column_and_the_readme(bdir: str) -> None:
    boards.record_qemu_result(
        "qemu-virt-arm64", True, tests=["tests/qemu/test_enroll.py::test_first_boot"], qemu_version="7.2.22",
        date="2026-11-22", directory=bdir,
    )  # fmt: skip
    boards.record_qemu_result("qemu-raspi3b", False, date="2026-11-21", directory=bdir)
    assert load_board("qemu-virt-arm64", bdir).tested_in_qemu == "yes (2026-11-22, QEMU 7.2.22)"
    assert load_board("qemu-raspi3b", bdir).tested_in_qemu == "failed (2026-11-21)"
    assert load_board("rpi-4b", bdir).tested_in_qemu == "not yet"
    with open(os.path.join(bdir, boards.RESULTS)) as f:
        saved = json.load(f)
    assert saved["boards"]["qemu-virt-arm64"] == {
        "status": "passed", "date": "2026-11-22", "qemu": "7.2.22",
        "tests": ["tests/qemu/test_enroll.py::test_first_boot"],
    }  # fmt: skip
    with open(os.path.join(bdir, "README.md")) as f:
        readme = f.read()
    assert "| `qemu-virt-arm64` |" in readme and "| yes (2026-11-22, QEMU 7.2.22) |" in readme
    with pytest.raises(BoardError, match="unknown board"):
        boards.record_qemu_result("nope", True, directory=bdir)


def test_a_damaged_results_file_names_the_fix(bdir: str) -> None:
    with open(os.path.join(bdir, boards.RESULTS), "w") as f:
        f.write("{not json")
    with pytest.raises(BoardError, match="delete it and rerun the QEMU tests"):
        all_boards(bdir)


def test_the_readme_table_is_up_to_date() -> None:
    """boards/README.md is generated: after editing a profile, `meshlet-provision boards --write-readme`."""
    path = os.path.join(boards.boards_dir(), "README.md")
    with open(path) as f:
        text = f.read()
    assert boards.render_readme(text, all_boards()) == text


def test_readme_markers_are_required(tmp_path: Any) -> None:
    with pytest.raises(BoardError, match="lacks the table markers"):
        boards.render_readme("# Boards\n", [])


# --- the command ---------------------------------------------------------------------------


def test_boards_lists_every_board(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == len(all_boards())
    assert [
        "rpi-zero-2-w",
        "arm64",
        "512",
        "MB",
        "Raspberry",
        "Pi",
        "Zero",
        "2",
        "W",
        "(QEMU:",
        "not",
        "yet)",
    ] in [line.split() for line in lines]


def test_boards_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["id"] for d in data} >= set(REQUIRED)
    one = next(d for d in data if d["id"] == "rpi-4b")
    assert one["qemu"]["machine"] == "virt" and one["dtb"] == "broadcom/bcm2711-rpi-4-b.dtb"
    assert main(["boards", "rpi-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "armhf"


def test_boards_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| board | id | arch |")
    assert "tested in QEMU |" in out.splitlines()[0]
    assert "| Raspberry Pi 5 | `rpi-5` | arm64 | BCM2712 / 4x Cortex-A76 @ 2.4 GHz | 1 GB |" in out


def test_boards_unknown_id_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boards", "pi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshlet-provision: unknown board 'pi'; known boards: ")
    assert err.count("\n") == 1
