"""Enrollment over a board's serial console: log in, run `meshlet up`, read its verdict.

A board on a USB serial adapter (or a QEMU guest's `-serial tcp:…`) shows
whatever its console shows: kernel messages, a `login:` prompt, a shell.
`Console` is the conversation as a state machine fed bytes and time, and
answering with the bytes to type; `enroll_over_serial` is the I/O around
it (pyserial's `serial_for_url`, so `/dev/ttyUSB0` and `socket://host:port`
both work).

    wake   ->  send CR, wait until the console is quiet, then look at its last line
    login  ->  `login:` prompt: type the user, then the password if asked
    probe  ->  `echo MESHLET-READY-"<nonce>"`: the shell is there when the
               unquoted word comes back (the terminal's echo of what we typed
               still has the quotes, so it never matches)
    run    ->  `echo BEGIN; meshlet up --enroll-code … --json; echo END-rc=$?`
               and the lines between the two markers are the board's answer

The code's pre-auth key and the password are secrets: everything reported
(progress, errors, the result) goes through `redact`, and only what the
board printed after the BEGIN marker is ever shown, because the terminal's
echo of the command line may wrap the key where no redaction would find it.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from typing import Any, Callable

from meshlet import enroll

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 300.0
QUIET_S = 0.8  # a console that printed nothing for this long has shown its prompt
FAIL_DELAY_S = 5.0  # login(1) waits about 3 s after a wrong password (FAIL_DELAY) before prompting again
PROBE_WAIT_S = 5.0  # a shell echoes a probe at once; after this, wake the console again
REDACTED = "<redacted>"

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
_LOGIN = re.compile(r"(?<!last )login:\s*$", re.I)  # not the "Last login: <date>" after logging in
_PASSWORD = re.compile(r"password( for [^:]*)?:\s*$", re.I)
_REFUSED = re.compile(r"login incorrect|authentication failure|permission denied", re.I)


class SerialEnrollError(Exception):
    """The console could not be opened or enrollment failed; the message names the fix."""


class Outcome:
    """What the board said.

    Attributes:
        ok: the board reported BackendState Running.
        state: the board's BackendState ("" when it printed no status).
        exit_code: `meshlet up`'s exit status on the board (None if it never finished).
        error: the board's own error line (`meshlet: invalid authkey …`), or ours.
        status: the board's `meshlet status --json`-shaped object, or None.
        output: the board's lines between the markers, redacted.
    """

    __slots__ = ("ok", "state", "exit_code", "error", "status", "output")

    def __init__(
        self, ok: bool, state: str = "", exit_code: int | None = None, error: str = "",
        status: dict[str, Any] | None = None, output: list[str] | None = None,
    ) -> None:  # fmt: skip
        self.ok = ok
        self.state = state
        self.exit_code = exit_code
        self.error = error
        self.status = status
        self.output = output or []

    def __repr__(self) -> str:
        return "Outcome(ok=%r, state=%r, exit_code=%r, error=%r)" % (
            self.ok,
            self.state,
            self.exit_code,
            self.error,
        )

    def summary(self) -> str:
        """One line for people: the node's name and addresses, or the error."""
        if not self.ok:
            return self.error
        me = (self.status or {}).get("Self") or {}
        name = str(me.get("DNSName") or "").rstrip(".") or str(me.get("HostName") or "?")
        ips = " ".join(str(ip) for ip in (self.status or {}).get("TailscaleIPs") or [])
        return "the board is up: %s, %s" % (name, ips) if ips else "the board is up: %s" % name

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "state": self.state,
            "exit_code": self.exit_code,
            "error": self.error,
            "status": self.status,
            "output": list(self.output),
        }


def clean(text: str) -> str:
    """Terminal output as plain lines: no escape sequences, no carriage returns, no NULs."""
    return _ANSI.sub("", text).replace("\r", "").replace("\0", "")


class Console:
    """The serial conversation, fed bytes and time; `feed`/`tick` return the bytes to type.

    Progress lines (already redacted) collect in `progress` for the caller to
    print; `outcome` is set once the conversation is over.
    """

    def __init__(
        self,
        code: str,
        *,
        hostname: str | None = None,
        login: str | None = None,
        password: str | None = None,
        sudo: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        nonce: str | None = None,
        quiet_s: float = QUIET_S,
        probe_wait_s: float = PROBE_WAIT_S,
    ) -> None:
        try:
            parsed = enroll.parse(code)
        except enroll.EnrollCodeError as e:
            raise SerialEnrollError(
                "not an enrollment code: %s; copy it from `meshlet-control keys create --qr`" % e.detail
            ) from None
        self.code = code.strip()
        self.hostname = hostname
        self.login = login
        self.password = password
        self.sudo = sudo
        self.timeout_s = timeout_s
        self.quiet_s = quiet_s
        self.probe_wait_s = probe_wait_s
        self.nonce = nonce or secrets.token_hex(4)
        # The password is typed with the terminal's echo off; a short one ("root") would mangle
        # the output if redacted, so only a long one is.
        self._secrets = [s for s in (self.code, parsed.auth_key) if s]
        if password and len(password) >= 8:
            self._secrets.append(password)
        self.progress: list[str] = []
        self.outcome: Outcome | None = None
        self.phase = "start"
        self._text = ""  # console text since the last thing we typed, cleaned
        self._partial = b""  # an incomplete UTF-8 sequence carried to the next read
        self._last_rx = 0.0
        self._sent_at = 0.0
        self._deadline = 0.0
        self._run_lines: list[str] = []
        self._run_seen = 0  # characters of _text already split into run lines
        self._scan_from = 0  # where to look for the BEGIN marker next
        self._quiet_needed = quiet_s
        self._begun = False
        self._login_sent = False

    # --- markers and the command -------------------------------------------------------

    @property
    def ready_marker(self) -> str:
        return "MESHLET-READY-" + self.nonce

    @property
    def begin_marker(self) -> str:
        return "MESHLET-BEGIN-" + self.nonce

    @property
    def end_marker(self) -> str:
        return "MESHLET-END-" + self.nonce + "-rc="

    def command(self, timeout_s: int) -> str:
        """The shell line that runs `meshlet up` between the markers.

        The leading space keeps it out of the shell's history (HISTCONTROL=ignorespace).
        """
        up = ["meshlet", "up", "--enroll-code", self.code]
        if self.hostname:
            up += ["--hostname", self.hostname]
        up += ["--json", "--timeout", str(max(timeout_s, 1))]
        if self.sudo:
            up = ["sudo", "-n"] + up
        return ' echo MESHLET-BEGIN-"%s"; %s; echo MESHLET-END-"%s"-rc=$?' % (
            self.nonce, " ".join(shlex.quote(a) for a in up), self.nonce,
        )  # fmt: skip

    def redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, REDACTED)
        return text

    # --- the state machine --------------------------------------------------------------

    def start(self, now: float) -> bytes:
        self._deadline = now + self.timeout_s
        self._say("waking the console")
        return self._type("\r", "wake", now)

    def feed(self, data: bytes, now: float) -> bytes:
        if self.outcome is not None or not data:
            return b""
        data = self._partial + data
        text = data.decode("utf-8", "replace")
        if text.endswith("\ufffd"):  # maybe a sequence cut by the read: keep its bytes for the next one
            cut = len(data) - min(3, len(data))
            self._partial = data[cut:]
            text = data[:cut].decode("utf-8", "replace")
        else:
            self._partial = b""
        self._text += clean(text)
        self._last_rx = now
        if len(self._text) > 1 << 16 and self.phase != "run":
            self._text = self._text[-4096:]  # a console babbling without end: keep the tail
        return self._step(now)

    def tick(self, now: float) -> bytes:
        if self.outcome is not None:
            return b""
        return self._step(now)

    def _step(self, now: float) -> bytes:
        if self.phase == "run":
            return self._run(now)
        if now >= self._deadline:
            if self.phase == "probe" or self.phase == "wake":
                return self._fail(
                    "no shell answered on the console within %g s; check the port and --baud, and that "
                    "the board has booted (its console on this serial line)" % self.timeout_s
                )
            return self._fail("the console stopped answering while logging in (%g s)" % self.timeout_s)
        if _REFUSED.search(self._text) and self._login_sent:
            return self._fail("the board refused the login; check --login and --password-file")
        if self.phase == "probe" and self.ready_marker in self._text:
            return self._begin_run(now)
        quiet_for = now - max(self._sent_at, self._last_rx)
        last = self._last_line()
        # A fresh login prompt ends any longer wait (see _prompt).
        needed = self.quiet_s if _LOGIN.search(last) else self._quiet_needed
        if quiet_for < needed:
            return b""  # a line may arrive in pieces: judge it only once the console is quiet
        if _LOGIN.search(last) or _PASSWORD.search(last):
            return self._prompt(last, now)
        if self.phase == "probe":
            if quiet_for >= self.probe_wait_s:
                # No answer: something holds the console (a pager, a hung command). Interrupt it.
                return self._type("\x03\r", "wake", now)
            return b""
        return self._probe(now)

    def _prompt(self, last: str, now: float) -> bytes:
        if _PASSWORD.search(last):
            if not self._login_sent or self.phase != "login":
                # A password prompt we did not ask for (someone else's login): let it fail, and wait
                # out login's delay after a failure, or our probe would be read as the next user name.
                out = self._type("\r", "wake", now)
                self._quiet_needed = max(self.quiet_s, FAIL_DELAY_S)
                return out
            if self.password is None:
                return self._fail("the board asks for a password; pass --password-file FILE")
            self._say("sending the password")
            return self._type(self.password + "\r", "password", now)
        if self._login_sent:
            return self._fail("the board refused the login; check --login and --password-file")
        if not self.login:
            return self._fail(
                "the console shows a login prompt; pass --login USER (and --password-file FILE)"
            )
        self._login_sent = True
        self._say("logging in as %s" % self.login)
        return self._type(self.login + "\r", "login", now)

    def _probe(self, now: float) -> bytes:
        return self._type('echo MESHLET-READY-"%s"\r' % self.nonce, "probe", now)

    def _begin_run(self, now: float) -> bytes:
        self._say("shell ready; running meshlet up --enroll-code %s%s" % (
            REDACTED, " --hostname %s" % self.hostname if self.hostname else "",
        ))  # fmt: skip
        remaining = int(self._deadline - now) - 5
        return self._type(self.command(remaining) + "\r", "run", now)

    def _run(self, now: float) -> bytes:
        if not self._begun:
            i = self._find_marker(self.begin_marker)
            if i < 0:
                return self._run_timeout(now)
            self._begun = True
            self._run_seen = i + len(self.begin_marker)
        end = self._text.find(self.end_marker, self._run_seen)
        upto = end if end >= 0 else self._text.rfind("\n") + 1
        if upto > self._run_seen:
            chunk = self._text[self._run_seen : upto]
            lines = chunk.split("\n")
            if end < 0:
                lines = lines[:-1]  # ends with the newline: the last piece is empty
            for line in lines:
                self._run_line(line)
            self._run_seen = upto
        if end >= 0:
            m = re.match(r"(\d+)\n", self._text[end + len(self.end_marker) :])
            if m is None:
                return self._run_timeout(now)  # the status digits or the newline are still on the way
            self._finish(int(m.group(1)))
            return self._logout()
        return self._run_timeout(now)

    def _find_marker(self, marker: str) -> int:
        """Where the board printed `marker` and a newline (the echo of our command has it in quotes)."""
        i = self._text.find(marker + "\n", self._scan_from)
        if i < 0:
            self._scan_from = max(0, len(self._text) - len(marker))  # a babbling console: scan each byte once
        return i

    def _run_line(self, line: str) -> None:
        line = self.redact(line.rstrip())
        if not line.strip():
            return
        self._run_lines.append(line)
        if not line.startswith((" ", "{", "}", "]", '"')):  # not the JSON status: show it
            self.progress.append("board: " + line)

    def _run_timeout(self, now: float) -> bytes:
        if now < self._deadline:
            return b""
        tail = "; last output: " + " | ".join(self._run_lines[-3:]) if self._run_lines else ""
        self._fail("meshlet up did not finish within %g s%s; raise --timeout or look at the board" % (
            self.timeout_s, tail,
        ))  # fmt: skip
        return b"\x03" + self._logout()  # stop it on the board

    def _logout(self) -> bytes:
        """Ends the session we logged in to, so no root shell is left open on the console."""
        if not self._login_sent:
            return b""
        self.progress.append("logging out")
        return b"exit\r"

    def _finish(self, rc: int) -> None:
        status = _first_json_object(self._run_lines)
        state = str(status.get("BackendState") or "") if status else ""
        lines = self._run_lines
        if rc == 0 and state == "Running":
            self.outcome = Outcome(True, state, rc, "", status, lines)
            self.phase = "done"
            self._say(self.outcome.summary())
            return
        said = [ln for ln in lines if ln.startswith("meshlet: ")]
        if rc == 127:
            error = "meshlet is not installed on the board (the shell found no `meshlet` command)"
        elif said:
            error = said[-1]
        elif rc == 0:
            error = "meshlet up exited 0 but printed no Running status (state %r)" % (state or "none")
        else:
            shown = [ln for ln in lines if not ln.startswith((" ", "{", "}"))][-3:]
            error = "meshlet up failed with status %d%s" % (rc, ": " + " | ".join(shown) if shown else "")
        self.outcome = Outcome(False, state, rc, self.redact(error), status, lines)
        self.phase = "done"

    def _fail(self, error: str) -> bytes:
        self.outcome = Outcome(False, "", None, self.redact(error), None, self._run_lines)
        self.phase = "done"
        return b""

    def _type(self, text: str, phase: str, now: float) -> bytes:
        self.phase = phase
        self._text = ""
        self._scan_from = 0
        self._quiet_needed = self.quiet_s
        self._sent_at = now
        return text.encode()

    def _say(self, line: str) -> None:
        self.progress.append(self.redact(line))

    def _last_line(self) -> str:
        text = self._text.rstrip("\n")
        return text[text.rfind("\n") + 1 :]


def _first_json_object(lines: list[str]) -> dict[str, Any] | None:
    """The first JSON object starting at the beginning of a line (`meshlet up --json` prints one)."""
    text = "\n".join(lines)
    decoder = json.JSONDecoder()
    for m in re.finditer(r"(?m)^\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def enroll_over_serial(
    port: str,
    code: str,
    *,
    hostname: str | None = None,
    baud: int = DEFAULT_BAUD,
    login: str | None = None,
    password: str | None = None,
    sudo: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Enrolls the board on `port` (`/dev/ttyUSB0`, `socket://127.0.0.1:4555`, any pyserial URL).

    Raises:
        SerialEnrollError: not an enrollment code, or the port cannot be opened.
        Board failures are not raised: they are in the Outcome, with the board's own words.
    """
    import serial

    console = Console(code, hostname=hostname, login=login, password=password, sudo=sudo, timeout_s=timeout_s)
    try:
        link = serial.serial_for_url(port, baudrate=baud, timeout=0.1, write_timeout=10)
    except (serial.SerialException, ValueError) as e:
        raise SerialEnrollError(
            "cannot open %s: %s; check the device (and that you are in the dialout group) "
            "or the socket://HOST:PORT address" % (port, e)
        ) from None

    def report() -> None:
        while console.progress:
            line = console.progress.pop(0)
            if progress is not None:
                progress(line)

    try:
        out = console.start(clock())
        while True:
            if out:
                link.write(out)
                link.flush()
            report()
            if console.outcome is not None:
                return console.outcome
            data = link.read(4096)
            now = clock()
            out = console.feed(data, now) if data else console.tick(now)
    except serial.SerialException as e:
        raise SerialEnrollError(
            "the serial link to %s failed: %s; check the cable or the QEMU guest" % (port, e)
        ) from None
    finally:
        report()
        link.close()
