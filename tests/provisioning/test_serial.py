"""`meshlet-provision serial`: enrollment over a serial console.

The board here is a real bash behind a pty, served on a loopback TCP port,
so pyserial's `socket://` URL talks to it as it talks to a QEMU guest's
`-serial tcp:…,server,nowait`. The `meshlet` first in that shell's PATH is a
test double standing in for the board's agent: it prints what `meshlet up
--json` prints (progress on stderr, the status JSON on stdout, or the
one-line error) and records its arguments. The real board path, a booted
image with the real agent, is tested in tests/qemu.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any, Iterator

import pytest
from meshlet import enroll
from meshlet.key import MachinePublic
from meshlet_provision import serial_enroll
from meshlet_provision.cli import main
from meshlet_provision.serial_enroll import Console, SerialEnrollError, enroll_over_serial

SERVER_KEY = MachinePublic(bytes(range(1, 33)))


def code_with(authkey: str) -> str:
    return enroll.build("http://10.0.2.2:8080", SERVER_KEY, authkey)


GOOD = code_with("mlt-auth-goodgoodgood-0123456789abcdef0123456789abcdef")
EXPIRED = code_with("mlt-auth-expiredexpir-0123456789abcdef0123456789abcdef")
GARBAGE = code_with("mlt-auth-garbagegarba-0123456789abcdef0123456789abcdef")
HANG = code_with("mlt-auth-hanghanghang-0123456789abcdef0123456789abcdef")

RUNNING = {
    "BackendState": "Running",
    "TailscaleIPs": ["100.64.0.7", "fd7a:115c:a1e0::7"],
    "Self": {"HostName": "pi-kitchen", "DNSName": "pi-kitchen.meshlet.internal."},
    "Health": [],
}

# The double for the board's `meshlet`: behaves by the pre-auth key, as control would.
FAKE_MESHLET = textwrap.dedent(
    """\
    #!/bin/bash
    printf '%s\\n' "$@" > "$FAKE_LOG"
    code="$3"
    case "$code" in
      *goodgood*)
        echo 'waiting for control…' >&2
        cat <<'JSON'
    RUNNING_JSON
    JSON
        exit 0;;
      *expired*)
        echo 'meshlet: authkey expired: create a new one with `meshlet-control keys create`' >&2
        exit 1;;
      *garbage*)
        head -c 300 /dev/urandom | tr -d '\\000' | tr '\\033' x
        echo
        exit 0;;
      *hang*)
        echo 'waiting for control…' >&2
        exec sleep 600;;
    esac
    echo 'meshlet: unexpected test code' >&2
    exit 3
    """
).replace("RUNNING_JSON", json.dumps(RUNNING, indent=2))

# A console that shows `login:` first, as agetty does on a booted board.
FAKE_GETTY = textwrap.dedent(
    """\
    import os, sys, termios
    def say(text):
        os.write(1, text.encode())
    def line():
        data = b""
        while not data.endswith(b"\\n"):
            c = os.read(0, 1)
            if not c:
                sys.exit(0)
            data += c
        return data.decode().strip()
    say("\\r\\nDebian GNU/Linux 12 testboard ttyAMA0\\r\\n\\r\\n")
    while True:
        say("testboard login: ")
        user = line()
        say("Password: ")
        attrs = termios.tcgetattr(0)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        password = line()
        attrs[3] |= termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        if user == "pi" and password == os.environ["BOARD_PASSWORD"]:
            say("\\r\\nLinux testboard 6.1.0-50-arm64 #1 SMP aarch64\\r\\n")
            os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
        say("\\r\\n\\r\\nLogin incorrect\\r\\n")
    """
)


class PtyBoard:
    """A program on a pty, its terminal served to one TCP client on 127.0.0.1 (like QEMU's -serial tcp:)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = "socket://127.0.0.1:%d" % self.port
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            self.argv, stdin=slave, stdout=slave, stderr=slave, env=self.env, start_new_session=True
        )
        os.close(slave)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn.fileno(), master], [], [], 0.1)
                if conn.fileno() in ready:
                    data = conn.recv(4096)
                    if not data:
                        break
                    os.write(master, data)
                if master in ready:
                    try:
                        out = os.read(master, 4096)
                    except OSError:
                        break  # the program exited: EIO on the master
                    conn.sendall(out)
        finally:
            conn.close()
            os.close(master)

    def close(self) -> None:
        self._stop.set()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)  # the session we started: bash and the double it runs
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def board_env(tmp_path: Any) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "meshlet"
    fake.write_text(FAKE_MESHLET)
    fake.chmod(0o755)
    return {
        "PATH": "%s:%s" % (bindir, os.environ.get("PATH", "/usr/bin:/bin")),
        "HOME": str(tmp_path),
        "TERM": "dumb",
        "PS1": "root@testboard:~# ",
        "FAKE_LOG": str(tmp_path / "meshlet-args"),
        "BOARD_PASSWORD": "correct horse battery",
    }


@pytest.fixture
def shell_board(board_env: dict[str, str]) -> Iterator[PtyBoard]:
    """A board whose console is already a root shell (as a lab image with autologin)."""
    board = PtyBoard([shutil.which("bash") or "/bin/bash", "--norc", "--noprofile", "-i"], board_env)
    yield board
    board.close()


@pytest.fixture
def login_board(board_env: dict[str, str]) -> Iterator[PtyBoard]:
    """A board whose console shows `login:` (user pi)."""
    board = PtyBoard([sys.executable, "-c", FAKE_GETTY], board_env)
    yield board
    board.close()


def fake_args(env: dict[str, str]) -> list[str]:
    with open(env["FAKE_LOG"]) as f:
        return f.read().splitlines()


# --- over a shell -----------------------------------------------------------------------


def test_a_shell_console_enrolls_and_reports_running(
    shell_board: PtyBoard, board_env: dict[str, str]
) -> None:
    progress: list[str] = []
    outcome = enroll_over_serial(
        shell_board.url, GOOD, hostname="pi-kitchen", timeout_s=60, progress=progress.append
    )
    assert outcome.ok, outcome
    assert outcome.state == "Running" and outcome.exit_code == 0
    assert outcome.status == RUNNING
    assert outcome.summary() == "the board is up: pi-kitchen.meshlet.internal, 100.64.0.7 fd7a:115c:a1e0::7"
    # The code reached the board's meshlet whole, through the shell's quoting.
    args = fake_args(board_env)
    assert args[:3] == ["up", "--enroll-code", GOOD]
    assert args[args.index("--hostname") + 1] == "pi-kitchen" and "--json" in args
    assert "board: waiting for control…" in progress
    assert not any("goodgood" in line for line in progress)  # the pre-auth key is never shown


def test_the_cli_prints_the_node_and_exits_0(
    shell_board: PtyBoard, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["serial", shell_board.url, "--enroll-code", GOOD, "--hostname", "pi-kitchen", "--timeout", "60"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out == "the board is up: pi-kitchen.meshlet.internal, 100.64.0.7 fd7a:115c:a1e0::7\n"
    assert "meshlet-provision: waking the console" in err
    assert "goodgood" not in out + err


def test_json_output_carries_the_boards_status(
    shell_board: PtyBoard, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["serial", shell_board.url, "--enroll-code", GOOD, "--json", "--timeout", "60"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out)
    assert result["ok"] is True and result["state"] == "Running" and result["status"] == RUNNING
    assert "goodgood" not in out


def test_a_refused_key_fails_with_the_boards_own_words(
    shell_board: PtyBoard, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["serial", shell_board.url, "--enroll-code", EXPIRED, "--timeout", "60"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out == ""
    assert err.endswith(
        "meshlet-provision: meshlet: authkey expired: create a new one with `meshlet-control keys create`\n"
    )
    assert "expiredexpir" not in err


def test_garbage_from_the_board_is_a_failure_not_a_crash(shell_board: PtyBoard) -> None:
    outcome = enroll_over_serial(shell_board.url, GARBAGE, timeout_s=60)
    assert not outcome.ok
    assert outcome.exit_code == 0 and outcome.status is None
    assert outcome.error == "meshlet up exited 0 but printed no Running status (state 'none')"


def test_a_board_that_never_finishes_times_out_and_is_interrupted(shell_board: PtyBoard) -> None:
    outcome = enroll_over_serial(shell_board.url, HANG, timeout_s=4)
    assert not outcome.ok and outcome.exit_code is None
    assert outcome.error.startswith("meshlet up did not finish within 4 s; last output: waiting for control…")
    assert "hanghang" not in outcome.error


# --- over a login prompt ------------------------------------------------------------------


def test_a_login_prompt_is_answered(login_board: PtyBoard, board_env: dict[str, str]) -> None:
    progress: list[str] = []
    outcome = enroll_over_serial(
        login_board.url, GOOD, login="pi", password=board_env["BOARD_PASSWORD"], timeout_s=60,
        progress=progress.append,
    )  # fmt: skip
    assert outcome.ok, outcome
    assert progress[:3] == ["waking the console", "logging in as pi", "sending the password"]
    assert not any(board_env["BOARD_PASSWORD"] in line for line in progress)


def test_a_login_prompt_without_login_says_which_flag(login_board: PtyBoard) -> None:
    outcome = enroll_over_serial(login_board.url, GOOD, timeout_s=60)
    assert outcome.error == "the console shows a login prompt; pass --login USER (and --password-file FILE)"


def test_a_password_prompt_without_a_password_says_which_flag(login_board: PtyBoard) -> None:
    outcome = enroll_over_serial(login_board.url, GOOD, login="pi", timeout_s=60)
    assert outcome.error == "the board asks for a password; pass --password-file FILE"


def test_a_wrong_password_is_reported(
    login_board: PtyBoard, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    rc = main(["serial", login_board.url, "--enroll-code", GOOD, "--login", "pi", "--password-file", str(pw),
               "--timeout", "60"])  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.endswith("meshlet-provision: the board refused the login; check --login and --password-file\n")


# --- consoles that are not a board --------------------------------------------------------


class Babbler:
    """A TCP 'console' that only ever sends noise (wrong baud rate, wrong port)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "socket://127.0.0.1:%d" % self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while not self._stop.wait(0.05):
                try:
                    conn.sendall(bytes((0xF0, 0x9F, 0x7E, 0x80, 0xFF, 0x0D, 0x0A, 0xC3)) * 8)
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


def test_noise_on_the_line_times_out_with_a_hint() -> None:
    babbler = Babbler()
    try:
        outcome = enroll_over_serial(babbler.url, GOOD, timeout_s=3)
    finally:
        babbler.close()
    assert outcome.error == (
        "no shell answered on the console within 3 s; check the port and --baud, and that the board has "
        "booted (its console on this serial line)"
    )


def test_a_port_that_cannot_be_opened_names_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serial", "/dev/meshlet-no-such-tty", "--enroll-code", GOOD])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.startswith("meshlet-provision: cannot open /dev/meshlet-no-such-tty: ")
    assert "dialout" in err


def test_a_bad_code_is_refused_before_touching_the_port(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["serial", "/dev/meshlet-no-such-tty", "--enroll-code", "https://example.com"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err == (
        "meshlet-provision: not an enrollment code: an enrollment code starts with meshlet://enroll?; "
        "copy it from `meshlet-control keys create --qr`\n"
    )


# --- the conversation itself, fed bytes and time ---------------------------------------------


def test_the_echo_of_the_command_is_not_mistaken_for_the_boards_answer() -> None:
    c = Console(GOOD, nonce="n0nce", quiet_s=1.0)
    assert c.start(0.0) == b"\r"
    assert c.feed(b"\r\nroot@b:~# ", 0.1) == b""
    assert c.tick(1.2) == b'echo MESHLET-READY-"n0nce"\r'
    assert c.feed(b'echo MESHLET-READY-"n0nce"\r\n', 1.3) == b""  # only the echo: not yet
    typed = c.feed(b"MESHLET-READY-n0nce\r\nroot@b:~# ", 1.4)
    assert typed.startswith(b' echo MESHLET-BEGIN-"n0nce"; meshlet up --enroll-code ')
    assert typed.endswith(b' --json --timeout 293; echo MESHLET-END-"n0nce"-rc=$?\r')
    # The terminal echoes the line, wrapped, with the marker words quoted: nothing matches yet.
    c.feed(typed[:70] + b"\r\n" + typed[70:].replace(b"\r", b"\r\n"), 1.5)
    assert c.outcome is None and c.progress == ["waking the console", "shell ready; running meshlet up "
                                                "--enroll-code <redacted>"]  # fmt: skip
    c.feed(b"MESHLET-BEGIN-n0nce\r\nwaiting for control\xe2\x80", 1.6)  # a character cut by the read
    c.feed(b"\xa6\r\n" + json.dumps(RUNNING, indent=2).replace("\n", "\r\n").encode() + b"\r\n", 1.7)
    c.feed(b"MESHLET-END-n0nce-rc=", 1.8)
    assert c.outcome is None  # the status is still on the way
    c.feed(b"0\r\nroot@b:~# ", 1.9)
    assert c.outcome is not None and c.outcome.ok and c.outcome.status == RUNNING
    assert "board: waiting for control…" in c.progress


def test_a_session_it_logged_in_to_is_logged_out() -> None:
    c = Console(GOOD, login="pi", password="secret-password", nonce="x", quiet_s=1.0)
    c.start(0.0)
    assert c.feed(b"\r\nboard login: ", 0.1) == b""  # judged once the console is quiet
    assert c.tick(1.1) == b"pi\r"
    c.feed(b"pi\r\nPassword: ", 1.2)
    assert c.tick(2.2) == b"secret-password\r"
    # "Last login:" arriving at the end of a read is not a login prompt.
    assert c.feed(b"\r\nLast login: ", 2.3) == b""
    assert c.feed(b"Sun Nov 22 06:56:15 UTC 2026 on ttyAMA0\r\n$ ", 2.4) == b""
    assert c.tick(3.4) == b'echo MESHLET-READY-"x"\r'
    assert c.feed(b"MESHLET-READY-x\r\n$ ", 3.5).startswith(b" echo MESHLET-BEGIN-")
    out = c.feed(b"MESHLET-BEGIN-x\r\nmeshlet: invalid authkey\r\nMESHLET-END-x-rc=1\r\n$ ", 3.6)
    assert out == b"exit\r"
    assert c.outcome is not None and c.outcome.error == "meshlet: invalid authkey"
    assert c.progress[-1] == "logging out"


def test_someone_elses_password_prompt_is_failed_and_waited_out() -> None:
    c = Console(GOOD, login="pi", password="pw", nonce="x", quiet_s=1.0)
    c.start(0.0)
    c.feed(b"\r\nPassword: ", 0.1)  # someone typed a user name and walked away
    assert c.tick(1.1) == b"\r"
    # login(1) pauses before "Login incorrect": typing now would become the next user name.
    assert c.feed(b"\r\n", 1.2) == b""
    assert c.tick(3.2) == b""
    c.feed(b"\r\nLogin incorrect\r\nboard login: ", 4.0)
    assert c.tick(5.0) == b"pi\r"


def test_a_missing_meshlet_says_so() -> None:
    c = Console(GOOD, nonce="x")
    c.start(0.0)
    c.feed(b"$ ", 0.1)
    c.tick(1.0)
    c.feed(b"MESHLET-READY-x\n$ ", 1.1)
    c.feed(b"MESHLET-BEGIN-x\nbash: meshlet: command not found\nMESHLET-END-x-rc=127\n", 1.2)
    assert c.outcome is not None
    assert c.outcome.error == "meshlet is not installed on the board (the shell found no `meshlet` command)"


def test_a_bad_code_is_a_typed_error() -> None:
    with pytest.raises(SerialEnrollError, match="not an enrollment code: the key parameter"):
        Console("meshlet://enroll?server=http://a")


def test_sudo_prefixes_the_command() -> None:
    c = Console(GOOD, sudo=True, hostname="h", nonce="n")
    assert "; sudo -n meshlet up --enroll-code '%s' --hostname h --json --timeout 60;" % GOOD in c.command(60)
    assert serial_enroll.REDACTED == c.redact(GOOD)
