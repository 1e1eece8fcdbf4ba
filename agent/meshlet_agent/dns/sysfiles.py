"""Rewriting a system file (/etc/resolv.conf, /etc/hosts) so that readers never see half of it.

The new text goes to a temporary file beside the original and is renamed
over it, like meshlet_host.statefile, but keeping the mode and owner the
file should have (0644 root: every program must be able to read these). In
containers and under `ip netns exec`, /etc/resolv.conf and /etc/hosts are
often bind mounts, and renaming over a mount point fails with EBUSY (or the
directory is read-only while the mounted file is not); then the file is
rewritten in place, which is not atomic but is the only way.
"""

import errno
import os


def read_text(path: str) -> "str | None":
    """The file's text (through symlinks), or None if it does not exist or cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def replace_file(path: str, data: bytes, *, mode: int = 0o644, uid: int = -1, gid: int = -1) -> bool:
    """Replaces `path` with `data`; True if renamed into place, False if rewritten in place (a mount).

    Raises OSError when neither works.
    """
    tmp = "%s.meshlet-tmp-%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.path.isfile(path):
            raise
        write_in_place(path, data)  # a read-only /etc with the file itself mounted writable
        return False
    try:
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if e.errno != errno.EBUSY:
            raise
    write_in_place(path, data)
    return False


def write_in_place(path: str, data: bytes) -> None:
    """Truncates and rewrites `path` itself (never through a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_resolv_conf(text: str) -> "tuple[list[str], list[str]]":
    """(nameserver addresses, search domains) from resolv.conf text; the last search/domain line wins."""
    servers: list[str] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif words and words[0] in ("search", "domain"):
            search = words[1:]
    return servers, search
