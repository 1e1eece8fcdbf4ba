"""The relay's secrets on disk: its private key (generated once) and the region's mesh key.

The private key lives in `<state_dir>/derp_server_private.key` as one line,
`privkey:<64 hex>`. It is created on first start, written atomically (a
temporary file with mode 0600 in the same directory, fsync, rename, fsync
of the directory) so a crash never leaves half a key, and refused if group
or others can read it. Clients learn the public half from the ServerKey
frame, so a new key costs nothing but a reconnect; keeping it stable keeps
`Derp-Public-Key` stable for operators.

The mesh key file holds 64 hex digits (whitespace around them is ignored),
as derper's `--mesh-psk-file`. Generate one with `openssl rand -hex 32`.
"""

from __future__ import annotations

import os
import stat

from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate

from .config import KEY_FILE_NAME, ConfigError


def load_or_create_server_key(state_dir: str) -> tuple[NodePrivate, bool]:
    """(the key, whether it was just created)."""
    path = os.path.join(state_dir, KEY_FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return _create(state_dir, path), True
    except OSError as e:
        raise ConfigError(
            "cannot read %s: %s; check --state-dir and its permissions" % (path, e.strerror)
        ) from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        text = f.read(4096).strip()
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError("%s is readable by group or others; run `chmod 600 %s`" % (path, path))
    try:
        return NodePrivate.from_text(text), False
    except ProtocolError:
        raise ConfigError(
            "%s is not a meshlet-derp key (want privkey: and 64 hex digits); "
            "move it away to generate a new one" % path
        ) from None


def _create(state_dir: str, path: str) -> NodePrivate:
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            "cannot create state directory %s: %s; create it or pass --state-dir DIR"
            % (state_dir, e.strerror)
        ) from None
    key = NodePrivate.generate(os.urandom)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (key.to_text() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConfigError("cannot write %s: %s; make --state-dir writable" % (path, e.strerror)) from None
    return key


def load_mesh_key(path: str) -> bytes:
    """The 32-byte mesh key from a file of 64 hex digits."""
    try:
        with open(path, "rb") as f:
            text = f.read(1024).decode("ascii", errors="replace").strip()
    except OSError as e:
        raise ConfigError("cannot read mesh key %s: %s; check --mesh-psk-file" % (path, e.strerror)) from None
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ConfigError(
            "mesh key %s must hold exactly 64 hex digits; make one with `openssl rand -hex 32 > %s`"
            % (path, path)
        )
    key = bytes.fromhex(text)
    if key == bytes(32):
        raise ConfigError("mesh key %s is all zeros, which means no mesh; generate a random one" % path)
    return key
