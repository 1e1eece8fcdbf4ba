"""What the image is enrolled with, and the files that carry it to the board's first boot.

The secret (a pre-auth key, or an enrollment code, which holds one) is written only to the
FAT boot partition, in meshlet/ next to the cloud-init files: the board's owner can see and
replace it there before first boot, and meshlet-firstboot deletes it after the first
successful `meshlet up`.  It is never written into the root filesystem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlet.enroll import EnrollCodeError, parse, split_control_url

from .errors import ImageError

BOOT_DIR = "meshlet"  # on the boot partition: /boot/firmware/meshlet on the running board
SETTINGS_FILE = BOOT_DIR + "/enroll.env"
AUTHKEY_FILE = BOOT_DIR + "/authkey"
CODE_FILE = BOOT_DIR + "/enroll-code"
SECRET_FILES = (AUTHKEY_FILE, CODE_FILE)

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_AUTHKEY = re.compile(r"^[\x21-\x7e]{1,512}$")


@dataclass(frozen=True)
class Enrollment:
    """Enrollment(login_server, auth_key): with auth_key None the first boot logs in interactively
    (the login URL and a QR on the serial console).  Enrollment.from_code(code) for a meshlet://enroll code."""

    login_server: str
    auth_key: str | None = None
    enroll_code: str | None = None

    def __post_init__(self) -> None:
        try:
            split_control_url(self.login_server)
        except EnrollCodeError as e:
            raise ImageError(
                "--login-server %r: %s; give the control URL, e.g. https://control.example.com"
                % (self.login_server, e.detail or e)
            ) from None
        if "\n" in self.login_server or '"' in self.login_server:
            raise ImageError("--login-server %r contains a quote or newline" % self.login_server)
        if self.auth_key is not None and not _AUTHKEY.match(self.auth_key):
            raise ImageError(
                "the auth key must be one line of printable text (meshlet-control keys create prints one)"
            )

    @classmethod
    def from_code(cls, code: str) -> Enrollment:
        code = code.strip()
        try:
            parsed = parse(code)
        except EnrollCodeError as e:
            raise ImageError(
                "the enrollment code does not parse: %s; copy it again from meshlet-control keys create --qr"
                % (e.detail or e)
            ) from None
        return cls(parsed.server, parsed.auth_key, code)

    @property
    def interactive(self) -> bool:
        return not self.auth_key

    def __repr__(self) -> str:
        return "Enrollment(%s, %s)" % (self.login_server, "interactive" if self.interactive else "<auth key>")

    def boot_files(self, hostname: str) -> dict[str, bytes]:
        """Path on the boot partition -> contents: the settings file and at most one secret file."""
        settings = (
            "# meshlet first-boot enrollment, read by meshlet-firstboot; this directory is deleted\n"
            "# after the first successful `meshlet up`.\n"
            "MESHLET_LOGIN_SERVER=%s\nMESHLET_HOSTNAME=%s\n" % (self.login_server, hostname)
        )
        files = {SETTINGS_FILE: settings.encode()}
        if self.enroll_code:
            files[CODE_FILE] = (self.enroll_code + "\n").encode()
        elif self.auth_key:
            files[AUTHKEY_FILE] = (self.auth_key + "\n").encode()
        return files


def check_hostname(name: str) -> str:
    if not _HOSTNAME.match(name):
        raise ImageError(
            "hostname %r: use 1-63 lowercase letters, digits and hyphens, not starting or ending with a hyphen"
            % name
        )
    return name


def default_hostname(board_id: str) -> str:
    """The board id made into a hostname (rpi4 -> rpi4, Pi_Zero.2 -> pi-zero-2)."""
    name = re.sub(r"[^a-z0-9-]+", "-", board_id.lower()).strip("-")[:63].strip("-")
    return name or "meshlet"
