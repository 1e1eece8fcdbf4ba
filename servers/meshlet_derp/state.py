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

from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate
from meshlet_host import statefile

from .config import KEY_FILE_NAME, ConfigError


def load_or_create_server_key(state_dir: str) -> tuple[NodePrivate, bool]:
    """(the key, whether it was just created)."""
    path = os.path.join(state_dir, KEY_FILE_NAME)
    try:
        data = statefile.read_private(path, 4096)
        if data is None:
            statefile.ensure_dir(state_dir)
            key = NodePrivate.generate(os.urandom)
            statefile.write_atomic(path, (key.to_text() + "\n").encode())
            return key, True
    except statefile.StateFileError as e:
        raise ConfigError("%s (--state-dir %s)" % (e, state_dir)) from None
    try:
        return NodePrivate.from_text(data.decode("ascii", errors="replace").strip()), False
    except ProtocolError:
        raise ConfigError(
            "%s is not a meshlet-derp key (want privkey: and 64 hex digits); "
            "move it away to generate a new one" % path
        ) from None


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
