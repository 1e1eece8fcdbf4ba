"""Secret-bearing state files: written atomically with mode 0600, read only when private.

Keys and pre-auth keys live in small files under a state directory
(/var/lib/meshlet, /var/lib/meshlet-control, the DERP relay's --state-dir).
A crash or power cut on a board must leave either the old file or the new
one, never half of each, so a write goes to a temporary file in the same
directory (mode 0600 from its creation), is fsynced, renamed over the old
one, and the directory is fsynced. A reader refuses a file that group or
others can read, so a key copied around carelessly is noticed at once.
"""

import os
import stat


class StateFileError(Exception):
    """A state file or directory could not be used; the message names the fix."""


def ensure_dir(path: str) -> None:
    """Creates `path` (mode 0700) and its parents if missing."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StateFileError(
            "cannot create state directory %s: %s; create it or choose another state directory" % (path, e.strerror)
        ) from None


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data`, mode 0600, so that readers see the old or the new file whole."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateFileError("cannot write %s: %s; make its directory writable" % (path, e.strerror)) from None


def read_private(path: str, max_bytes: int = 1 << 20) -> "bytes | None":
    """The file's bytes, or None if it does not exist.

    Raises:
        StateFileError: it cannot be read, or group or others may read it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError("cannot read %s: %s; check its permissions" % (path, e.strerror)) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        data = f.read(max_bytes)
    if stat.S_IMODE(mode) & 0o077:
        raise StateFileError("%s is readable by group or others; run `chmod 600 %s`" % (path, path))
    return data
