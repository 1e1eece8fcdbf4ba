"""controlbase: TS2021's Noise IK handshake and encrypted record stream, sans-I/O.

A Tailscale client reaches its control server with `POST /ts2021`, an HTTP
upgrade whose `X-Tailscale-Handshake` header carries the first Noise message
(base64). After `101 Switching Protocols` the socket is a raw byte stream:
the server's handshake response, then Noise transport records both ways,
with HTTP/2 inside (shared/protocol/control.md §5). This module turns bytes
into bytes; the HTTP and the socket belong to the shell.

Flow:

    client                                         server
    ClientHandshake(...).initiation()  --101 B-->  accept_initiation(...)
       (base64 in X-Tailscale-Handshake)             -> machine key, version,
                                                        response, Conn
    receive_response(...) -> Conn      <--51 B---  response
    Conn.send / receive_data / read    <-records->  Conn.send / receive_data / read

The Noise instance is Noise_IK_25519_ChaChaPoly_BLAKE2s (meshlet.noise) with
prologue "Tailscale Control Protocol v<version>" (decimal, no terminator),
the server's static key as the `<- s` pre-message, empty handshake payloads,
and big-endian nonces in the transport records (control.md §5.3, §5.4).

Initiation, client -> server, 101 bytes (control.md §5.4):

    2b  protocol version, big-endian (130 = 00 82); also the prologue's number
    1b  type 0x01
    2b  payload length, big-endian, always 96 (00 60)
    32b client ephemeral public key
    48b client machine public key, encrypted (32 + 16 tag)
    16b tag over the empty payload

Response, server -> client, 51 bytes:

    1b  type 0x02
    2b  payload length, always 48 (00 30)
    32b server ephemeral public key
    16b tag over the empty payload

Error, server -> client instead of a response (an unauthenticated hint):

    1b  type 0x03
    2b  length N, big-endian
    Nb  text

Transport record, both directions:

    1b  type 0x04
    2b  length L of what follows, big-endian: plaintext length + 16
    Lb  ChaCha20-Poly1305 ciphertext and tag, no associated data; nonce =
        4 zero bytes || 64-bit big-endian counter, from 0 per direction

A record is at most 4096 bytes in all, so at most 4077 bytes of plaintext;
`Conn.send` splits longer writes. Record boundaries mean nothing: above them
is a byte stream. Any decryption failure kills the Conn.

Early payload (control.md §5.5): before HTTP/2, the server may send, inside
records, this plaintext; the client tells it from an HTTP/2 frame header
(also 9 bytes, never starting with ff) by its first 9 bytes:

    5b  magic ff ff ff 54 53 ("\\xff\\xff\\xffTS")
    4b  length N, big-endian (the client accepts up to 10 MiB)
    Nb  JSON tailcfg.EarlyNoise, e.g. {"nodeKeyChallenge":"chalpub:<64 hex>"}
"""

import binascii

from .. import noise
from .._compat import const
from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ..key import MachinePrivate, MachinePublic
from ..wire import Reader, Writer

# --- specification constants (control.md §5.4, §5.5) ------------------------

PROTOCOL_VERSION = 130  # tailcfg.CurrentCapabilityVersion of Tailscale v1.90
HANDSHAKE_HEADER = "X-Tailscale-Handshake"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 0x01
MSG_RESPONSE = 0x02
MSG_ERROR = 0x03
MSG_RECORD = 0x04

HEADER_LEN = 3  # type and length; the initiation has the 2-byte version before it
INITIATION_LEN = 101
RESPONSE_LEN = 51
_INITIATION_PAYLOAD_LEN = const(96)
_RESPONSE_PAYLOAD_LEN = const(48)
_TAG_LEN = const(16)

MAX_MESSAGE_LEN = 4096  # a whole record, header included
MAX_CIPHERTEXT_LEN = MAX_MESSAGE_LEN - HEADER_LEN  # 4093
MAX_PLAINTEXT_LEN = MAX_CIPHERTEXT_LEN - _TAG_LEN  # 4077
_MAX_ERROR_LEN = const(0xFFFF)

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
EARLY_PAYLOAD_HEADER_LEN = 9
MAX_EARLY_PAYLOAD_LEN = 10 << 20  # the Go client's limit

# --- implementation constants ------------------------------------------------

# Decrypted plaintext is compacted once this much has been read from the front
# of its buffer: large enough that compaction is rare, small next to a board's RAM.
_COMPACT_AT = const(4096)


def prologue(version: int) -> bytes:
    """`Tailscale Control Protocol v<version>`, the Noise prologue."""
    return PROLOGUE_PREFIX + str(version).encode()


def encode_handshake_header(initiation: bytes) -> str:
    """The X-Tailscale-Handshake value: standard base64 with padding (136 characters)."""
    return binascii.b2a_base64(initiation).decode().strip()


def decode_handshake_header(text: str) -> bytes:
    """Inverse of `encode_handshake_header`; only the canonical spelling is accepted.

    Raises:
        RemoteProtocolError("bad_base64").
    """
    try:
        raw = binascii.a2b_base64(text)
    except ValueError:  # binascii.Error is a ValueError
        raise RemoteProtocolError("bad_base64", "X-Tailscale-Handshake is not base64")
    if encode_handshake_header(raw) != text:
        raise RemoteProtocolError("bad_base64", "X-Tailscale-Handshake is not canonical base64")
    return raw


def build_error(text: str) -> bytes:
    """The error message a server sends instead of a response (type 0x03).

    The text reaches the client unauthenticated: keep it fixed, never echo
    the peer's input. Cut to 65535 bytes.
    """
    raw = text.encode()[:_MAX_ERROR_LEN]
    return Writer().u8(MSG_ERROR).u16(len(raw)).raw(raw).getvalue()


def _text(raw: bytes) -> str:
    """The server's error text for humans; not UTF-8 is shown as a bytes repr."""
    try:
        return raw.decode()
    except ValueError:  # UnicodeError, on both runtimes
        return repr(raw)


class ClientHandshake:
    """The client's half of the handshake: the initiation now, the Conn later.

    Args:
        machine_priv: this machine's static key.
        control_pub: the server's static key, as served by `GET /key`.
        ephemeral_priv: a fresh key for this handshake only (the core has
            no randomness; see MachinePrivate.generate).
        version: the protocol (capability) version to announce.

    Attributes:
        version, control_pub: as given.
    """

    def __init__(
        self,
        machine_priv: MachinePrivate,
        control_pub: MachinePublic,
        ephemeral_priv: MachinePrivate,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        if not 0 <= version <= 0xFFFF:
            raise LocalProtocolError("out_of_range", "version %d" % version)
        self.version = version
        self.control_pub = control_pub
        self._hs = noise.HandshakeState(
            True,
            machine_priv.raw_private(),
            ephemeral_priv.raw_private(),
            control_pub.raw,
            prologue(version),
            "big",
            machine_priv.public().raw,
        )
        w = Writer().u16(version).u8(MSG_INITIATION).u16(_INITIATION_PAYLOAD_LEN)
        self._initiation = w.raw(self._hs.write_message()).getvalue()
        self._rx = bytearray()
        self._done = False

    def initiation(self) -> bytes:
        """The 101-byte initiation message."""
        return self._initiation

    def initiation_header(self) -> str:
        """The initiation as the X-Tailscale-Handshake header value."""
        return encode_handshake_header(self._initiation)

    def receive_response(self, data: bytes) -> "Conn | None":
        """Feeds bytes read after the HTTP 101; returns the Conn once the response is complete.

        Call it with whatever the socket produced, as often as needed: it
        returns None while the 51-byte response (or a whole error message)
        has not arrived yet. Bytes after the response are already records:
        they go straight into the returned Conn's `receive_data`.

        Raises:
            RemoteProtocolError("server_error"): the server sent an error
                message; its text is the error's detail.
            RemoteProtocolError("bad_type") or ("bad_length"): not a response.
            CryptoError: the response does not authenticate.
            LocalProtocolError("out_of_order"): the handshake already ended.
        """
        if self._done:
            raise LocalProtocolError("out_of_order", "handshake already ended")
        rx = self._rx
        rx.extend(data)
        if len(rx) < HEADER_LEN:
            return None
        msg_type = rx[0]
        length = (rx[1] << 8) | rx[2]
        if msg_type == MSG_ERROR:
            if len(rx) < HEADER_LEN + length:
                return None
            self._done = True
            raise RemoteProtocolError("server_error", _text(bytes(rx[HEADER_LEN : HEADER_LEN + length])))
        if msg_type != MSG_RESPONSE:
            self._done = True
            raise RemoteProtocolError("bad_type", "handshake response of type %d" % msg_type)
        if length != _RESPONSE_PAYLOAD_LEN:
            self._done = True
            raise RemoteProtocolError("bad_length", "handshake response of length %d" % length)
        if len(rx) < RESPONSE_LEN:
            return None
        self._done = True
        hs = self._hs
        hs.read_message(bytes(rx[HEADER_LEN:RESPONSE_LEN]))
        c1, c2 = hs.split()
        conn = Conn(c1, c2, self.version, self.control_pub, hs.get_handshake_hash())
        rest = bytes(rx[RESPONSE_LEN:])
        self._rx = bytearray()
        if rest:
            conn.receive_data(rest)
        return conn


def accept_initiation(
    initiation: bytes, control_priv: MachinePrivate, ephemeral_priv: MachinePrivate
) -> "tuple[MachinePublic, int, bytes, Conn]":
    """The server's whole handshake: check the initiation, build the response.

    The version is not judged here (Tailscale's server does not either): the
    caller decides what to do with it once the peer is authenticated.

    Args:
        initiation: the 101 bytes from X-Tailscale-Handshake (see
            decode_handshake_header).
        control_priv: the server's static key.
        ephemeral_priv: a fresh key for this handshake only.

    Returns:
        (client machine key, protocol version, the 51-byte response to
        write after the HTTP 101, the server's Conn).

    Raises:
        RemoteProtocolError("bad_length") or ("bad_type"): the detail is
            Tailscale's fixed text, fit for `build_error`.
        CryptoError: the initiation does not authenticate, or a DH result
            is all zeros.
    """
    if len(initiation) != INITIATION_LEN:
        raise RemoteProtocolError("bad_length", "wrong handshake initiation size")
    r = Reader(initiation)
    version = r.u16()
    if r.u8() != MSG_INITIATION:
        raise RemoteProtocolError("bad_type", "unexpected handshake message type")
    if r.u16() != _INITIATION_PAYLOAD_LEN:
        raise RemoteProtocolError("bad_length", "wrong handshake initiation length")
    hs = noise.HandshakeState(
        False,
        control_priv.raw_private(),
        ephemeral_priv.raw_private(),
        None,
        prologue(version),
        "big",
        control_priv.public().raw,
    )
    hs.read_message(r.rest())
    assert hs.rs is not None  # IK's first message always carries s
    client = MachinePublic(hs.rs)
    response = Writer().u8(MSG_RESPONSE).u16(_RESPONSE_PAYLOAD_LEN).raw(hs.write_message()).getvalue()
    c1, c2 = hs.split()
    return client, version, response, Conn(c2, c1, version, client, hs.get_handshake_hash())


class Conn:
    """The record layer after the handshake, for either role.

    Feed it bytes from the socket with `receive_data` and take the
    decrypted stream out with `read`; give `send` plaintext and write what
    it returns. Made by `ClientHandshake.receive_response` and
    `accept_initiation`, not by hand.

    Buffering is bounded: undecrypted bytes never exceed one record (4096
    bytes), because every complete record is decrypted as it arrives and a
    header declaring more is refused at once. Decrypted bytes wait in `read`'s
    buffer until taken; every byte is copied a bounded number of times.

    Attributes:
        version: the protocol version both sides used.
        peer: the other side's MachinePublic (the client's machine key on a
            server; the control key on a client).
        handshake_hash: the Noise handshake hash, a channel binding.
        send_cipher, receive_cipher: the noise.CipherStates (big-endian
            nonces) of each direction; for tests and diagnostics.
        eof: True once `receive_data(b"")` reported the end of the stream.
    """

    def __init__(
        self,
        send_cipher: noise.CipherState,
        receive_cipher: noise.CipherState,
        version: int,
        peer: MachinePublic,
        handshake_hash: bytes,
    ) -> None:
        self.version = version
        self.peer = peer
        self.handshake_hash = handshake_hash
        self.eof = False
        self.send_cipher = send_cipher
        self.receive_cipher = receive_cipher
        self._rx = bytearray()  # the start of an incomplete record
        self._plain = bytearray()  # decrypted, not yet read
        self._plain_pos = 0
        self._dead = ""  # the reason that killed the Conn, or ""

    def send(self, plaintext: "bytes | bytearray | memoryview") -> bytes:
        """Encrypts `plaintext` into as many records as it needs (4077 bytes each).

        An empty plaintext gives no record at all, as in Tailscale.

        Raises:
            LocalProtocolError("nonce_exhausted"): 2^64-1 records sent; the
                Conn is dead.
            LocalProtocolError("conn_dead"): the Conn failed earlier.
        """
        self._check_alive()
        out = bytearray()
        try:
            for at in range(0, len(plaintext), MAX_PLAINTEXT_LEN):
                chunk = plaintext[at : at + MAX_PLAINTEXT_LEN]
                sealed = self.send_cipher.encrypt_with_ad(b"", chunk)
                out.append(MSG_RECORD)
                out.append(len(sealed) >> 8)
                out.append(len(sealed) & 0xFF)
                out.extend(sealed)
        except ProtocolError as e:
            self._dead = e.reason
            raise
        return bytes(out)

    def receive_data(self, data: "bytes | bytearray | memoryview") -> None:
        """Takes bytes from the socket and decrypts every record they complete.

        `b""` means the peer closed the stream (what `socket.recv` returns),
        which is fine between records and an error inside one.

        Raises (and the Conn is dead afterwards):
            RemoteProtocolError("bad_type"): a message other than a record.
            RemoteProtocolError("record_too_large"): a header declares more
                than 4096 bytes; raised as soon as the header arrives.
            RemoteProtocolError("truncated"): the stream ended inside a record.
            CryptoError("bad_tag"): a record does not authenticate.
            RemoteProtocolError("nonce_exhausted"): 2^64-1 records received.
        Raises LocalProtocolError("conn_dead") once dead, and
        LocalProtocolError("out_of_order") for data after the end.
        """
        self._check_alive()
        if self.eof:
            if data:
                raise LocalProtocolError("out_of_order", "data after the end of the stream")
            return
        if not data:
            self.eof = True
            if self._rx:
                self._dead = "truncated"
                raise RemoteProtocolError("truncated", "stream ended inside a record")
            return
        if self._rx:
            self._rx.extend(data)
            buf: "bytes | bytearray | memoryview" = self._rx
        else:
            buf = data
        try:
            used = self._decrypt_records(buf)
        except ProtocolError as e:
            self._dead = e.reason
            raise
        if buf is self._rx:
            if used:
                self._rx = self._rx[used:]
        elif used < len(buf):
            self._rx = bytearray(buf[used:])

    def read(self, max_bytes: int = -1) -> bytes:
        """Returns up to `max_bytes` decrypted bytes (all of them if negative).

        Returns b"" when nothing is buffered; check `eof` to tell "wait for
        more" from "the peer closed".

        Raises:
            LocalProtocolError("conn_dead"): the Conn failed earlier.
        """
        self._check_alive()
        pos = self._plain_pos
        avail = len(self._plain) - pos
        n = avail if max_bytes < 0 or max_bytes > avail else max_bytes
        out = bytes(self._plain[pos : pos + n])
        if n == avail:
            self._plain = bytearray()
            self._plain_pos = 0
        else:
            self._plain_pos = pos + n
        return out

    def pending(self) -> int:
        """How many decrypted bytes `read` can return right now."""
        return len(self._plain) - self._plain_pos

    def is_dead(self) -> bool:
        return bool(self._dead)

    def _decrypt_records(self, buf: "bytes | bytearray | memoryview") -> int:
        """Decrypts every whole record at the front of `buf`; returns the bytes used."""
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_LEN:
            if buf[pos] != MSG_RECORD:
                raise RemoteProtocolError("bad_type", "message of type %d, want a record" % buf[pos])
            length = (buf[pos + 1] << 8) | buf[pos + 2]
            if length > MAX_CIPHERTEXT_LEN:
                raise RemoteProtocolError("record_too_large", "record of %d bytes" % (HEADER_LEN + length))
            start = pos + HEADER_LEN
            if end - start < length:
                break
            pos = start + length
            # Records shorter than a tag fail here too, as CryptoError.
            self._deliver(self.receive_cipher.decrypt_with_ad(b"", buf[start:pos]))
        return pos

    def _deliver(self, plaintext: bytes) -> None:
        if not plaintext:  # empty records are legal and carry nothing
            return
        pos = self._plain_pos
        if pos >= _COMPACT_AT and 2 * pos >= len(self._plain):
            self._plain = self._plain[pos:]
            self._plain_pos = 0
        self._plain.extend(plaintext)

    def _check_alive(self) -> None:
        if self._dead:
            raise LocalProtocolError("conn_dead", "failed earlier: " + self._dead)


def build_early_payload(payload_json: bytes) -> bytes:
    """The server's early payload as plaintext for `Conn.send`: magic, length, JSON.

    Raises:
        LocalProtocolError("too_large"): over the client's 10 MiB limit.
    """
    if len(payload_json) > MAX_EARLY_PAYLOAD_LEN:
        raise LocalProtocolError("too_large", "early payload of %d bytes" % len(payload_json))
    return EARLY_PAYLOAD_MAGIC + len(payload_json).to_bytes(4, "big") + bytes(payload_json)


def split_early_payload(first: bytes) -> "tuple[bytes | None, bytes] | None":
    """Looks at the first plaintext bytes from the server for an early payload.

    Returns:
        None: too few bytes to decide (fewer than 9), or the payload is not
            complete yet; call again with more.
        (None, first): no early payload; every byte belongs to HTTP/2.
        (json, rest): the early payload's JSON (not yet parsed; the caller
            must fail the connection if it is not valid JSON) and the
            HTTP/2 bytes after it.

    Raises:
        RemoteProtocolError("early_payload_too_large"): declared over 10 MiB.
    """
    if len(first) < EARLY_PAYLOAD_HEADER_LEN:
        return None
    if first[:5] != EARLY_PAYLOAD_MAGIC:
        return None, first
    n = int.from_bytes(first[5:9], "big")
    if n > MAX_EARLY_PAYLOAD_LEN:
        raise RemoteProtocolError("early_payload_too_large", "%d bytes" % n)
    end = EARLY_PAYLOAD_HEADER_LEN + n
    if len(first) < end:
        return None
    return bytes(first[EARLY_PAYLOAD_HEADER_LEN:end]), bytes(first[end:])
