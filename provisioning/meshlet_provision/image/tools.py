"""Running the external tools the builder leans on, with errors that say which package is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from .errors import ToolError

# Program -> the Debian package that ships it (the fix named in the error).
PACKAGES = {
    "mcopy": "mtools",
    "mdir": "mtools",
    "mdel": "mtools",
    "mmd": "mtools",
    "mtype": "mtools",
    "mkfs.fat": "dosfstools",
    "debugfs": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mmdebstrap": "mmdebstrap",
    "arch-test": "arch-test",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-arm-static": "qemu-user-static",
    "xz": "xz-utils",
}


def need(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise ToolError("%s is not installed: apt-get install %s" % (program, PACKAGES.get(program, program)))
    return path


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    what: str = "",
) -> bytes:
    """Run argv, return stdout; a non-zero exit raises ToolError with the tool's own stderr."""
    exe = need(argv[0])
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run([exe, *argv[1:]], input=input, capture_output=True, env=full_env, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise ToolError(
            "%s failed (exit %d)%s: %s"
            % (argv[0], proc.returncode, " while " + what if what else "", " | ".join(err))
        )
    return proc.stdout
