"""The four WireGuard messages (whitepaper §5.4), byte for byte.

Every integer is little-endian. The first four bytes are the type byte and
three zero bytes, read as one u32 (wireguard-go does the same, so a message
with non-zero reserved bytes has an unknown type).

Handshake initiation, type 1, 148 bytes:

    4b   type = 1, reserved
    4b   sender index
    32b  unencrypted ephemeral public key
    48b  encrypted static public key (32 + 16 tag)
    28b  encrypted TAI64N timestamp (12 + 16 tag)
    16b  mac1   (over bytes 0..115)
    16b  mac2   (over bytes 0..131)

Handshake response, type 2, 92 bytes:

    4b   type = 2, reserved
    4b   sender index
    4b   receiver index
    32b  unencrypted ephemeral public key
    16b  encrypted nothing (a tag only)
    16b  mac1   (over bytes 0..59)
    16b  mac2   (over bytes 0..75)

Cookie reply, type 3, 64 bytes:

    4b   type = 3, reserved
    4b   receiver index (the sender index of the message being answered)
    24b  nonce
    32b  encrypted cookie (16 + 16 tag)

Transport data, type 4, 32 + n bytes:

    4b   type = 4, reserved
    4b   receiver index
    8b   counter (also the AEAD nonce)
    16+n encrypted, zero-padded IP packet and its tag; n = 0 is a keepalive

Handshake and cookie messages have exact sizes; anything else is "short" or
"trailing". Parsing checks layout only: MACs, tags and indices are the
business of cookie.py, handshake.py and device.py.

The transport message also has `parse`/`to_bytes` for tests and tools, but
the per-packet path (session.py, device.py) reads and writes its 16-byte
header with `struct` directly, to create no object per packet.
"""

import struct

from ..errors import RemoteProtocolError
from ..wire import Reader, Writer
from .constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_SIZE,
)

INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76
MAC_LEN = 16


def message_type(data: "bytes | bytearray | memoryview") -> int:
    """The u32 type word that every message starts with.

    Raises:
        RemoteProtocolError("short"): fewer than 4 bytes.
    """
    if len(data) < 4:
        raise RemoteProtocolError("short", "%d bytes is no WireGuard message" % len(data))
    return int(struct.unpack_from("<I", data, 0)[0])


def _open(data: "bytes | bytearray | memoryview", want_type: int, size: int) -> Reader:
    r = Reader(data)
    if r.remaining() < size:
        raise RemoteProtocolError("short", "%d bytes, type %d needs %d" % (r.remaining(), want_type, size))
    if r.remaining() > size:
        raise RemoteProtocolError("trailing", "%d bytes, type %d needs %d" % (r.remaining(), want_type, size))
    got = r.u32le()
    if got != want_type:
        raise RemoteProtocolError("bad_type", "type word %d, want %d" % (got, want_type))
    return r


class MessageInitiation:
    """Handshake initiation (type 1). Byte fields are exactly their wire sizes."""

    __slots__ = ("sender", "ephemeral", "encrypted_static", "encrypted_timestamp", "mac1", "mac2")

    def __init__(
        self,
        sender: int,
        ephemeral: bytes,
        encrypted_static: bytes,
        encrypted_timestamp: bytes,
        mac1: bytes = bytes(16),
        mac2: bytes = bytes(16),
    ) -> None:
        self.sender = sender
        self.ephemeral = ephemeral
        self.encrypted_static = encrypted_static
        self.encrypted_timestamp = encrypted_timestamp
        self.mac1 = mac1
        self.mac2 = mac2

    @classmethod
    def parse(cls, data: "bytes | bytearray | memoryview") -> "MessageInitiation":
        """Raises RemoteProtocolError: "short", "trailing" or "bad_type"."""
        r = _open(data, MESSAGE_INITIATION, MESSAGE_INITIATION_SIZE)
        return cls(r.u32le(), r.take(32), r.take(48), r.take(28), r.take(16), r.take(16))

    def to_bytes(self) -> bytes:
        w = Writer().u32le(MESSAGE_INITIATION).u32le(self.sender).fixed(self.ephemeral, 32)
        w.fixed(self.encrypted_static, 48).fixed(self.encrypted_timestamp, 28)
        return w.fixed(self.mac1, 16).fixed(self.mac2, 16).getvalue()


class MessageResponse:
    """Handshake response (type 2)."""

    __slots__ = ("sender", "receiver", "ephemeral", "encrypted_nothing", "mac1", "mac2")

    def __init__(
        self,
        sender: int,
        receiver: int,
        ephemeral: bytes,
        encrypted_nothing: bytes,
        mac1: bytes = bytes(16),
        mac2: bytes = bytes(16),
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.ephemeral = ephemeral
        self.encrypted_nothing = encrypted_nothing
        self.mac1 = mac1
        self.mac2 = mac2

    @classmethod
    def parse(cls, data: "bytes | bytearray | memoryview") -> "MessageResponse":
        """Raises RemoteProtocolError: "short", "trailing" or "bad_type"."""
        r = _open(data, MESSAGE_RESPONSE, MESSAGE_RESPONSE_SIZE)
        return cls(r.u32le(), r.u32le(), r.take(32), r.take(16), r.take(16), r.take(16))

    def to_bytes(self) -> bytes:
        w = Writer().u32le(MESSAGE_RESPONSE).u32le(self.sender).u32le(self.receiver)
        w.fixed(self.ephemeral, 32).fixed(self.encrypted_nothing, 16)
        return w.fixed(self.mac1, 16).fixed(self.mac2, 16).getvalue()


class MessageCookieReply:
    """Cookie reply (type 3): an encrypted cookie for the next mac2."""

    __slots__ = ("receiver", "nonce", "encrypted_cookie")

    def __init__(self, receiver: int, nonce: bytes, encrypted_cookie: bytes) -> None:
        self.receiver = receiver
        self.nonce = nonce
        self.encrypted_cookie = encrypted_cookie

    @classmethod
    def parse(cls, data: "bytes | bytearray | memoryview") -> "MessageCookieReply":
        """Raises RemoteProtocolError: "short", "trailing" or "bad_type"."""
        r = _open(data, MESSAGE_COOKIE_REPLY, MESSAGE_COOKIE_REPLY_SIZE)
        return cls(r.u32le(), r.take(24), r.take(32))

    def to_bytes(self) -> bytes:
        w = Writer().u32le(MESSAGE_COOKIE_REPLY).u32le(self.receiver)
        return w.fixed(self.nonce, 24).fixed(self.encrypted_cookie, 32).getvalue()


class MessageTransport:
    """Transport data (type 4): `content` is ciphertext and tag, at least 16 bytes."""

    __slots__ = ("receiver", "counter", "content")

    def __init__(self, receiver: int, counter: int, content: bytes) -> None:
        self.receiver = receiver
        self.counter = counter
        self.content = content

    @classmethod
    def parse(cls, data: "bytes | bytearray | memoryview") -> "MessageTransport":
        """Raises RemoteProtocolError: "short" or "bad_type"."""
        r = Reader(data)
        if r.remaining() < MESSAGE_TRANSPORT_SIZE:
            raise RemoteProtocolError("short", "%d bytes is less than a transport message" % r.remaining())
        got = r.u32le()
        if got != MESSAGE_TRANSPORT:
            raise RemoteProtocolError("bad_type", "type word %d, want 4" % got)
        return cls(r.u32le(), r.u64le(), r.rest())

    def to_bytes(self) -> bytes:
        w = Writer().u32le(MESSAGE_TRANSPORT).u32le(self.receiver).u64le(self.counter)
        return w.raw(self.content).getvalue()
