"""The control server's HTTP/1.1 listener (h11): `GET /key`, the `/ts2021` upgrade, a health page.

What the plain (or TLS) listener answers (shared/protocol/control.md §4, §5):

    GET /key?v=N        200 JSON {"legacyPublicKey":"mkey:000…","publicKey":"mkey:<hex>"};
                        400 without a numeric v (as headscale)
    POST or GET /ts2021 with Upgrade: tailscale-control-protocol and X-Tailscale-Handshake
                        101, the 51-byte Noise response, the early payload, then
                        HTTP/2 inside Noise (noise.py)
    /ts2021 otherwise   400 with a plain message (no upgrade, no or bad handshake header)
    /, /health          200, one line
    anything else       404

After the 101 the reference server checks nothing more at this layer; a
handshake that does not decrypt gets the TS2021 error message (type 0x03)
instead of the response, then the connection closes.

Limits: a request head of 16 KiB (431 beyond), a body of 64 KiB (413; no
endpoint here wants one), the whole head within `REQUEST_TIMEOUT_S`, and
keep-alive connections idle for that long are closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from http import HTTPStatus
from typing import Awaitable, Callable
from urllib.parse import parse_qs

import h11
from h11._state import MIGHT_SWITCH_PROTOCOL  # re-exported by h11 but missing from its __all__

from meshlet.control import base
from meshlet.errors import ProtocolError
from meshlet.key import MachinePrivate

log = logging.getLogger("meshlet_control.http")

# --- specification constants -------------------------------------------------------

UPGRADE_PROTOCOL = "tailscale-control-protocol"  # control.md §5.2
ZERO_MKEY = "mkey:" + "0" * 64
# The 101 exactly as Tailscale's controlhttpserver writes it; the client checks the
# status and that Upgrade equals the protocol name.
SWITCHING_PROTOCOLS = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n"
)

# --- implementation constants ------------------------------------------------------

MAX_HEAD_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
REQUEST_TIMEOUT_S = 30.0  # a whole request head, and the keep-alive idle limit

Upgraded = Callable[[asyncio.StreamReader, asyncio.StreamWriter, base.Conn, bytes], Awaitable[None]]
"""Called after a successful upgrade with (reader, writer, conn, early payload plaintext)."""


def key_response(control_pub_text: str) -> bytes:
    """The body of GET /key (tailcfg.OverTLSPublicKeyResponse, control.md §4)."""
    return json.dumps({"legacyPublicKey": ZERO_MKEY, "publicKey": control_pub_text}).encode()


def early_payload(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """The early payload plaintext: a fresh challenge key, as headscale sends (control.md §5.5)."""
    challenge = MachinePrivate.generate(random_bytes).public().raw.hex()
    doc = json.dumps({"nodeKeyChallenge": "chalpub:" + challenge}, separators=(",", ":")).encode()
    return base.build_early_payload(doc)


class HttpConnection:
    """One accepted TCP connection: HTTP/1.1 requests until it upgrades or closes.

    Args:
        reader, writer: the connection.
        control_key: the server's Noise static key.
        upgraded: takes over the connection after a successful /ts2021 upgrade.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        control_key: MachinePrivate,
        upgraded: Upgraded,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.control_key = control_key
        self.upgraded = upgraded
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        addr = writer.get_extra_info("peername")
        self.peer = "%s:%s" % (addr[0], addr[1]) if isinstance(addr, tuple) else "?"

    async def run(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            log.debug("http %s: %s", self.peer, e or type(e).__name__)
        finally:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass

    async def _serve(self) -> None:
        request: h11.Request | None = None
        body_len = 0
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                await self._error(status, "bad request" if status != 431 else "request head too large")
                return
            if ev is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(64 << 10), REQUEST_TIMEOUT_S)
                self.h11.receive_data(data)
                continue
            if ev is h11.PAUSED:
                if request is not None and self.h11.their_state is MIGHT_SWITCH_PROTOCOL:
                    await self._upgrade(request)
                    return
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                    continue
                return
            if isinstance(ev, h11.Request):
                request, body_len = ev, 0
            elif isinstance(ev, h11.Data):
                body_len += len(ev.data)
                if body_len > MAX_BODY_BYTES:
                    await self._error(413, "request body too large")
                    return
            elif isinstance(ev, h11.EndOfMessage) and request is not None:
                if _path(request) == "/ts2021" and self.h11.their_state is MIGHT_SWITCH_PROTOCOL:
                    continue  # PAUSED comes next; the upgrade happens there
                await self._respond(request)
                request = None
            elif isinstance(ev, h11.ConnectionClosed):
                return
            if self.h11.our_state is h11.MUST_CLOSE:
                return

    async def _respond(self, req: h11.Request) -> None:
        path = _path(req)
        if path == "/key":
            query = parse_qs(req.target.partition(b"?")[2].decode("latin-1"))
            v = query.get("v", [""])[0]
            if not v.isdigit():
                await self._simple(400, b"missing or bad v parameter\n", b"text/plain; charset=utf-8")
                return
            body = key_response(self.control_key.public().to_text())
            await self._simple(200, body, b"application/json")
        elif path == "/ts2021":
            # Reached only without a proper upgrade request (control.md §5.2).
            await self._simple(
                400, b"tailscale-control-protocol upgrade required\n", b"text/plain; charset=utf-8"
            )
        elif path in ("/", "/health", "/healthz"):
            await self._simple(
                200, b"meshlet control server (Tailscale-compatible)\n", b"text/plain; charset=utf-8"
            )
        else:
            await self._simple(404, b"not found\n", b"text/plain; charset=utf-8")

    async def _upgrade(self, req: h11.Request) -> None:
        headers = _headers(req)
        if headers.get(b"upgrade", b"").lower() != UPGRADE_PROTOCOL.encode():
            await self._raw_error(400, "unexpected Upgrade header")
            return
        text = headers.get(b"x-tailscale-handshake", b"").decode("latin-1")
        if not text:
            await self._raw_error(400, "no X-Tailscale-Handshake header")
            return
        try:
            initiation = base.decode_handshake_header(text)
        except ProtocolError:
            await self._raw_error(400, "handshake header not base64")
            return
        trailing = bytes(self.h11.trailing_data[0])
        self.writer.write(SWITCHING_PROTOCOLS)
        try:
            client, version, response, conn = base.accept_initiation(
                initiation, self.control_key, MachinePrivate.generate(os.urandom)
            )
        except ProtocolError as e:
            log.info("http %s: Noise handshake failed: %s", self.peer, e)
            self.writer.write(base.build_error(e.detail or "handshake failed"))
            await self.writer.drain()
            return
        log.debug("http %s: Noise session with %s, version %d", self.peer, client.short(), version)
        self.writer.write(response)
        if trailing:
            conn.receive_data(trailing)
        await self.upgraded(self.reader, self.writer, conn, early_payload())

    async def _simple(self, status: int, body: bytes, ctype: bytes) -> None:
        headers = [
            (b"Content-Type", ctype),
            (b"Content-Length", b"%d" % len(body)),
            (b"Server", b"meshlet-control"),
        ]
        out = self.h11.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b""
        out += self.h11.send(h11.Data(data=body)) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        await self.writer.drain()

    async def _error(self, status: int, text: str) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (text + "\n").encode()
        headers = [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
        ]
        try:
            out = (
                self.h11.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
                or b""
            )
            out += self.h11.send(h11.Data(data=body)) or b""
        except h11.LocalProtocolError:
            return
        self.writer.write(out)
        await self.writer.drain()

    async def _raw_error(self, status: int, text: str) -> None:
        # h11 is waiting for a 101 it will never get; write the answer by hand.
        body = (text + "\n").encode()
        self.writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, _reason(status), len(body), body)
        )
        await self.writer.drain()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _path(req: h11.Request) -> str:
    return bytes(req.target).split(b"?", 1)[0].decode("latin-1")


def _headers(req: h11.Request) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in req.headers:
        out.setdefault(bytes(name), bytes(value))
    return out
