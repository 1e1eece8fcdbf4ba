"""DERP's login: ServerKey, ClientInfo and ServerInfo, and the sealed JSON inside.

    server -> client   ServerKey    8b magic "DERP🔑" + 32b server key
    client -> server   ClientInfo   32b client node key + 24b nonce + box(JSON)
    server -> client   ServerInfo   24b nonce + box(JSON)

(shared/protocol/derp.md §4.) The boxes are NaCl `crypto_box` between the
client's node key and the server's key. The JSON inside is Go's encoding of
`derp.ClientInfo` and `derp.ServerInfo`, reproduced byte for byte here
because it is written by hand: MicroPython's json.dumps puts spaces after
',' and ':' and its dicts keep no order, and tsnet sends exactly
`{"version":2,"CanAckPings":true}`.
"""

import json

from .. import crypto
from .._compat import const
from ..errors import LocalProtocolError, RemoteProtocolError
from ..key import NodePrivate, NodePublic
from ..wire import Reader, Writer
from .frames import (
    FRAME_CLIENT_INFO,
    FRAME_SERVER_INFO,
    FRAME_SERVER_KEY,
    KEY_LEN,
    MAGIC,
    NONCE_LEN,
    encode_frame,
)

MAX_INFO_LEN = 1 << 20  # the client's limit on a ServerInfo box
MAX_CLIENT_INFO_LEN = 256 << 10  # the server's cap on ClientInfo, against JSON resource exhaustion
_SERVER_KEY_MAX_LEN = const(1024)  # the client reads the greeting with a 1 KiB limit

_INT = const(0)
_BOOL = const(1)
_MESH_KEY = const(2)
_INT64_MAX = const(0x7FFFFFFFFFFFFFFF)

# Go's struct fields in declaration order: (JSON name, kind, omitempty).
_CLIENT_INFO = (
    ("meshKey", _MESH_KEY, True),
    ("version", _INT, True),
    ("CanAckPings", _BOOL, False),
    ("IsProber", _BOOL, True),
)
_SERVER_INFO = (
    ("version", _INT, True),
    ("TokenBucketBytesPerSecond", _INT, True),
    ("TokenBucketBytesBurst", _INT, True),
)


def build_server_key(server_public: NodePublic) -> bytes:
    """ServerKey (0x01): the magic and the server's public key."""
    return encode_frame(FRAME_SERVER_KEY, MAGIC + server_public.raw)


def parse_server_key(payload: bytes) -> NodePublic:
    """The server's key from its greeting; extra bytes are reserved and ignored.

    Raises:
        RemoteProtocolError: "short", "bad_magic", or "frame_too_large" (the
            client reads the greeting with a 1 KiB limit).
    """
    if len(payload) > _SERVER_KEY_MAX_LEN:
        raise RemoteProtocolError("frame_too_large", "server greeting of %d bytes" % len(payload))
    r = Reader(payload)
    if r.take(len(MAGIC)) != MAGIC:
        raise RemoteProtocolError("bad_magic", "not a DERP server greeting")
    return NodePublic(r.take(KEY_LEN))


def build_client_info(
    client_private: NodePrivate, server_public: NodePublic, nonce: bytes, info: "dict[str, object]"
) -> bytes:
    """ClientInfo (0x02): our node key, then the JSON sealed to the server.

    Args:
        info: any of "meshKey" (64 hex digits), "version" (int),
            "CanAckPings" (bool), "IsProber" (bool); encoded as Go does, in
            that order, compact, empty values omitted except CanAckPings.
            `{"version": 2, "CanAckPings": True}` is what tsnet sends.
        nonce: 24 fresh random bytes.

    Raises:
        LocalProtocolError("bad_info"): an unknown key or a value of the wrong type.
    """
    plaintext = _encode_info(_CLIENT_INFO, info)
    w = Writer().raw(client_private.public().raw).fixed(nonce, NONCE_LEN)
    w.raw(crypto.box_seal(client_private.raw_private(), server_public.raw, nonce, plaintext))
    return encode_frame(FRAME_CLIENT_INFO, w.getvalue())


def parse_client_info(payload: bytes, server_private: NodePrivate) -> "tuple[NodePublic, dict[str, object]]":
    """The server side of the login: who the client is, and what it says.

    Returns:
        (client node key, info) where info always has the four canonical keys
        "meshKey" (lowercase hex, "" if absent), "version", "CanAckPings" and
        "IsProber". JSON keys match case-insensitively, as in Go; unknown keys
        are ignored, null leaves the default.

    Raises:
        RemoteProtocolError: "short", "frame_too_large" (over 256 KiB), "bad_json".
        CryptoError: the box does not open, or the client key is low-order.
    """
    if len(payload) > MAX_CLIENT_INFO_LEN:
        raise RemoteProtocolError("frame_too_large", "client info of %d bytes" % len(payload))
    r = Reader(payload)
    if r.remaining() < KEY_LEN + NONCE_LEN:
        raise RemoteProtocolError("short", "client info of %d bytes" % r.remaining())
    client = NodePublic(r.take(KEY_LEN))
    nonce = r.take(NONCE_LEN)
    plaintext = crypto.box_open(server_private.raw_private(), client.raw, nonce, r.rest())
    return client, _decode_info(_CLIENT_INFO, plaintext)


def build_server_info(
    server_private: NodePrivate, client_public: NodePublic, nonce: bytes, info: "dict[str, object]"
) -> bytes:
    """ServerInfo (0x03): the JSON sealed to the client, after its nonce.

    Args:
        info: any of "version", "TokenBucketBytesPerSecond",
            "TokenBucketBytesBurst" (ints; zero ones are omitted, as in Go).
            Tailscale's server sends `{"version":2}`.
    """
    plaintext = _encode_info(_SERVER_INFO, info)
    w = Writer().fixed(nonce, NONCE_LEN)
    w.raw(crypto.box_seal(server_private.raw_private(), client_public.raw, nonce, plaintext))
    return encode_frame(FRAME_SERVER_INFO, w.getvalue())


def parse_server_info(
    payload: bytes, client_private: NodePrivate, server_public: NodePublic
) -> "dict[str, object]":
    """Opens the server's welcome; the three canonical keys are always present.

    Raises:
        RemoteProtocolError: "short", "frame_too_large", "bad_json".
        CryptoError: the box does not open.
    """
    r = Reader(payload)
    if r.remaining() < NONCE_LEN:
        raise RemoteProtocolError("short", "server info of %d bytes" % r.remaining())
    if r.remaining() > NONCE_LEN + MAX_INFO_LEN:
        raise RemoteProtocolError("frame_too_large", "server info of %d bytes" % r.remaining())
    nonce = r.take(NONCE_LEN)
    plaintext = crypto.box_open(client_private.raw_private(), server_public.raw, nonce, r.rest())
    return _decode_info(_SERVER_INFO, plaintext)


def _encode_info(fields: "tuple[tuple[str, int, bool], ...]", info: "dict[str, object]") -> bytes:
    # Written by hand: MicroPython's json.dumps puts spaces after ',' and ':'
    # and its dicts do not keep insertion order, and Go's bytes are the contract.
    for name in info:
        if not any(name == f[0] for f in fields):
            raise LocalProtocolError("bad_info", "unknown field %r" % name)
    parts = []
    for name, kind, omitempty in fields:
        value = info.get(name)
        text = _encode_value(kind, _default(kind) if value is None else value, name)
        if not (omitempty and text in ("0", "false", '""')):
            parts.append('"%s":%s' % (name, text))
    return ("{" + ",".join(parts) + "}").encode()


def _encode_value(kind: int, value: object, name: str) -> str:
    if kind == _BOOL and type(value) is bool:
        return "true" if value else "false"
    if kind == _INT and type(value) is int and -_INT64_MAX - 1 <= value <= _INT64_MAX:
        return "%d" % value
    if kind == _MESH_KEY and isinstance(value, str):
        if value == "":
            return '""'
        raw = _mesh_key(value)
        if raw is not None:
            return '""' if raw == bytes(KEY_LEN) else '"%s"' % value.lower()  # Go's omitzero
    raise LocalProtocolError("bad_info", "bad value for %s" % name)


def _default(kind: int) -> object:
    if kind == _MESH_KEY:
        return ""
    return False if kind == _BOOL else 0


def _mesh_key(text: str) -> "bytes | None":
    if len(text) != 2 * KEY_LEN:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == KEY_LEN else None  # CPython's fromhex skips spaces; Go's hex does not


def _decode_info(fields: "tuple[tuple[str, int, bool], ...]", plaintext: bytes) -> "dict[str, object]":
    try:
        obj = json.loads(plaintext)
    except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
        raise RemoteProtocolError("bad_json", "not JSON")
    if type(obj) is not dict:
        raise RemoteProtocolError("bad_json", "not a JSON object")
    out: "dict[str, object]" = {}
    for name, kind, _ in fields:
        out[name] = _default(kind)
    for key, value in obj.items():
        low = key.lower()
        for name, kind, _ in fields:
            if name.lower() == low and value is not None:
                out[name] = _decode_value(kind, value, name)
    return out


def _decode_value(kind: int, value: object, name: str) -> object:
    if kind == _BOOL and type(value) is bool:
        return value
    if kind == _INT and type(value) is int and -_INT64_MAX - 1 <= value <= _INT64_MAX:
        return value
    if kind == _MESH_KEY and isinstance(value, str) and _mesh_key(value) is not None:
        return value.lower()
    raise RemoteProtocolError("bad_json", "bad value for %s" % name)
