"""qemu-user registration, so foreign-architecture programs run (mmdebstrap, chroots).

Debian's qemu-user-static registers its interpreters through systemd-binfmt
or binfmt-support; a container or CI machine without either has the
package but nothing registered, and mmdebstrap then fails deep inside
arch-test. Registering here, from the package's own binfmt.d files, makes
a fresh machine work as this one does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import ImageError

QEMU_ARCH = {"arm64": "aarch64", "armhf": "arm"}
"""Debian architecture -> qemu-user's name for it."""
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def ensure_binfmt(arch: str) -> None:
    """Mounts binfmt_misc and registers qemu-user for `arch` unless that is done already (needs root).

    Raises:
        ImageError: an architecture meshlet does not build for, or qemu-user-static is missing.
    """
    qarch = QEMU_ARCH.get(arch)
    if qarch is None:
        raise ImageError("no qemu-user for architecture %r; meshlet builds arm64 and armhf" % arch)
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
    if (BINFMT_DIR / ("qemu-" + qarch)).exists():
        return
    conf = Path("/usr/lib/binfmt.d/qemu-%s.conf" % qarch)
    if not conf.exists():
        raise ImageError("%s is missing: apt-get install qemu-user-static" % conf)
    (BINFMT_DIR / "register").write_bytes(conf.read_bytes())
