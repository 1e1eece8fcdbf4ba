"""The HTTP/1.1 half of the relay, sans-I/O on top of h11: requests in, response bytes or an upgrade out.

What a DERP listener answers (shared/protocol/derp.md §2.3, §6; Tailscale's
derpserver/handler.go and cmd/derper):

| path | answer |
| --- | --- |
| `/derp` with `Upgrade: DERP` | the exact 101 of §2.3 (or nothing with `Derp-Fast-Start: 1`), then DERP |
| `/derp` otherwise | 426 "DERP requires connection upgrade" |
| `/derp/probe`, `/derp/latency-check` | GET/HEAD: 200, `Access-Control-Allow-Origin: *`; else 405 |
| `/generate_204` | 204, plus `X-Tailscale-Response: response c` for a valid `X-Tailscale-Challenge: c` |
| `/` | 200, a line saying what this is |
| `/robots.txt` | disallow everything |
| anything else | 404 |

The metrics listener (a separate port) answers `/metrics` (Prometheus text)
and `/healthz` instead. Limits: a request head of at most 16 KiB (431
beyond), a body of at most 64 KiB (413 beyond; no endpoint wants one), and
malformed HTTP gets 400; each of these closes the connection. Keep-alive
and pipelining work as h11 allows.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Callable

import h11

MAX_HEAD_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10

_CHALLENGE_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
_NO_CACHE = b"no-cache, no-store, must-revalidate, no-transform, max-age=0"
_HOME = b"This is a meshlet DERP relay (Tailscale-compatible). Clients connect to /derp.\n"


def switching_protocols(server_public_hex: str) -> bytes:
    """The 101 response, byte for byte as Tailscale's handler writes it (derp.md §2.3)."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: DERP\r\n"
        "Connection: Upgrade\r\n"
        "Derp-Version: 2\r\n"
        "Derp-Public-Key: %s\r\n\r\n" % server_public_hex
    ).encode()


class Upgrade:
    """The request asked for DERP: switch the connection over.

    Attributes:
        response: bytes to write first (the 101; empty with fast start).
        trailing: bytes the client already sent after its request; they are DERP frames.
        ideal_node: the Ideal-Node header ("" if absent): the client is not on its ideal node.
    """

    __slots__ = ("response", "trailing", "ideal_node")

    def __init__(self, response: bytes, trailing: bytes, ideal_node: str) -> None:
        self.response = response
        self.trailing = trailing
        self.ideal_node = ideal_node


class HttpError(Exception):
    """The HTTP side failed (bad request, oversized head or body): write `response`, then close.

    `reason` is for the counters: "http_bad_request", "http_head_too_large", "http_body_too_large".
    """

    def __init__(self, reason: str, response: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


class HttpSession:
    """One HTTP connection's requests.

    Args:
        mode: "derp" for the relay's listener, "metrics" for the metrics one.
        server_public_hex: the relay's key, for the 101's Derp-Public-Key.
        count: called with (endpoint, status) for each answered request.
        render_metrics: returns the Prometheus text (metrics mode).
    """

    def __init__(
        self,
        mode: str,
        server_public_hex: str,
        count: Callable[[str, int], None],
        render_metrics: Callable[[], str] | None = None,
    ) -> None:
        self.mode = mode
        self.server_public_hex = server_public_hex
        self.count = count
        self.render_metrics = render_metrics
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._request: h11.Request | None = None
        self._body_bytes = 0
        self.closing = False

    def receive_data(self, data: bytes) -> tuple[bytes, Upgrade | None]:
        """Feeds bytes (b"" at EOF); returns (bytes to write, an Upgrade or None).

        After `closing` turns True, write the bytes and close the connection.

        Raises:
            HttpError: the request was bad; write its `response` and close.
        """
        out: list[bytes] = []
        try:
            self.conn.receive_data(data)
            while not self.closing:
                ev = self.conn.next_event()
                if ev is h11.NEED_DATA:
                    break
                if ev is h11.PAUSED:
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
                        continue
                    break
                upgrade = self._event(ev, out)
                if upgrade is not None:
                    return b"".join(out), upgrade
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint
            reason = "http_head_too_large" if status == 431 else "http_bad_request"
            out.append(self._error_response(status, reason))
            raise HttpError(reason, b"".join(out)) from None
        return b"".join(out), None

    def _event(self, ev: object, out: list[bytes]) -> Upgrade | None:
        if isinstance(ev, h11.Request):
            # h11 caps only an *incomplete* head; a complete one that arrived in one read is checked here.
            if len(ev.target) + sum(len(k) + len(v) + 4 for k, v in ev.headers) > MAX_HEAD_BYTES:
                out.append(self._error_response(431, "http_head_too_large"))
                raise HttpError("http_head_too_large", b"".join(out))
            self._request = ev
            self._body_bytes = 0
            if self.mode == "derp" and _path(ev) == "/derp":
                upgrade = self._maybe_upgrade(ev, out)
                if upgrade is not None:
                    return upgrade
        elif isinstance(ev, h11.Data):
            self._body_bytes += len(ev.data)
            if self._body_bytes > MAX_BODY_BYTES:
                out.append(self._error_response(413, "http_body_too_large"))
                raise HttpError("http_body_too_large", b"".join(out))
        elif isinstance(ev, h11.EndOfMessage):
            if self._request is not None:
                out.append(self._respond(self._request))
                self._request = None
        elif isinstance(ev, h11.ConnectionClosed):
            self.closing = True
        return None

    def _maybe_upgrade(self, req: h11.Request, out: list[bytes]) -> Upgrade | None:
        headers = _headers(req)
        if headers.get(b"upgrade", b"").lower() != b"derp":
            return None  # answered 426 at EndOfMessage
        self.count("derp", 101)
        fast = headers.get(b"derp-fast-start", b"") == b"1"
        trailing = bytes(self.conn.trailing_data[0])
        response = b"" if fast else switching_protocols(self.server_public_hex)
        ideal = headers.get(b"ideal-node", b"").decode("ascii", "replace")
        return Upgrade(response, trailing, ideal)

    def _respond(self, req: h11.Request) -> bytes:
        path = _path(req)
        method = req.method
        headers = _headers(req)
        if self.mode == "metrics":
            return self._respond_metrics(path, method)
        if path == "/derp":
            return self._simple(426, "derp", b"DERP requires connection upgrade\n")
        if path in ("/derp/probe", "/derp/latency-check"):
            if method not in (b"GET", b"HEAD"):
                return self._simple(405, "probe", b"bogus probe method\n")
            return self._simple(200, "probe", b"", [(b"Access-Control-Allow-Origin", b"*")], method)
        if path == "/generate_204":
            extra = [(b"Cache-Control", _NO_CACHE)]
            challenge = headers.get(b"x-tailscale-challenge", b"")
            text = challenge.decode("latin-1")
            if challenge and len(challenge) <= 64 and all(c in _CHALLENGE_OK for c in text):
                extra.append((b"X-Tailscale-Response", b"response " + challenge))
            return self._simple(204, "generate_204", None, extra)
        if path == "/":
            return self._simple(200, "home", _HOME, method=method)
        if path == "/robots.txt":
            return self._simple(200, "robots", b"User-agent: *\nDisallow: /\n", method=method)
        return self._simple(404, "other", b"not found\n", method=method)

    def _respond_metrics(self, path: str, method: bytes) -> bytes:
        if path == "/metrics" and self.render_metrics is not None:
            body = self.render_metrics().encode()
            ctype = (b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            return self._simple(200, "metrics", body, [ctype], method)
        if path == "/healthz":
            return self._simple(200, "healthz", b"ok\n", method=method)
        return self._simple(404, "other", b"not found\n", method=method)

    def _simple(
        self,
        status: int,
        endpoint: str,
        body: bytes | None,
        extra: list[tuple[bytes, bytes]] | None = None,
        method: bytes = b"GET",
    ) -> bytes:
        self.count(endpoint, status)
        headers: list[tuple[bytes, bytes]] = [(b"Server", b"meshlet-derp")]
        if body is not None:
            if not any(k.lower() == b"content-type" for k, _ in extra or ()):
                headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
            headers.append((b"Content-Length", b"%d" % len(body)))
        headers.extend(extra or ())
        data = (
            self.conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b""
        )
        if body and method != b"HEAD":
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        if self.conn.our_state is h11.MUST_CLOSE:
            self.closing = True
        return data

    def _error_response(self, status: int, reason: str) -> bytes:
        self.closing = True
        self.count("error", status)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        body = ("%d %s\n" % (status, reason)).encode()
        headers = [
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
        ]
        try:
            return (
                self.conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
                or b""
            ) + (self.conn.send(h11.Data(data=body)) or b"")
        except h11.LocalProtocolError:
            return b""


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _path(req: h11.Request) -> str:
    target = req.target.split(b"?", 1)[0]
    return target.decode("latin-1")


def _headers(req: h11.Request) -> dict[bytes, bytes]:
    # h11 lower-cases names; for repeated headers the first one wins, as Go's Header.Get.
    out: dict[bytes, bytes] = {}
    for name, value in req.headers:
        out.setdefault(bytes(name), bytes(value))
    return out
