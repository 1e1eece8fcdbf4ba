"""Enrollment codes: the control URL, the server's key and a pre-auth key in one URI.

`meshlet-control keys create --qr` prints a QR code of (docs/control.md,
"The enrollment URI"):

    meshlet://enroll?server=<control URL>&key=mkey:<64 hex>&authkey=<pre-auth key>

| parameter | value |
| --------- | ----- |
| server    | the control URL, `http://` or `https://`, host and optional port (and path) |
| key       | the control server's Noise public key; the agent pins it (compares it with `GET /key`) |
| authkey   | the pre-auth key; may be left out for an interactive login to a pinned server |

Values are percent-encoded as RFC 3986 says, except that `:` and `/` stay as
they are (what Python's `urlencode(safe=":/", quote_via=quote)` writes, so
the control server's CLI and `build` here spell a code identically). `parse`
also reads what any form encoder writes (`+` for a space, lowercase hex), and
ignores parameters it does not know, so later versions may add some.

A code is typed, pasted or scanned by a person, so a bad one is neither the
network's fault nor a bug: `parse` raises `EnrollCodeError` (reason
"bad_enroll_code"; "bad_control_url" from `split_control_url`) with a detail
that names what is wrong. Nothing else escapes (tests/props).
"""

from ._compat import const
from .errors import ProtocolError
from .key import MachinePublic

SCHEME = "meshlet"
PREFIX = "meshlet://enroll?"

_MAX_CODE_LEN = const(4096)  # a QR code holds at most 2953 bytes; anything longer was not scanned
_MAX_AUTH_KEY_LEN = const(512)  # headscale's keys are 85 characters, ours 51
# RFC 3986 unreserved characters, plus ":" and "/" which the CLI leaves alone.
_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/"
_HEX = "0123456789ABCDEF"


class EnrollCodeError(ProtocolError):
    """An enrollment code or control URL that cannot be used; `detail` says why."""


def _fail(detail: str, reason: str = "bad_enroll_code") -> EnrollCodeError:
    return EnrollCodeError(reason, detail)


class EnrollCode:
    """What an enrollment code says.

    Attributes:
        server: the control URL, without a trailing slash.
        server_key: the control server's Noise public key.
        auth_key: the pre-auth key, or None for an interactive login.
    """

    __slots__ = ("server", "server_key", "auth_key")

    def __init__(self, server: str, server_key: MachinePublic, auth_key: "str | None") -> None:
        self.server = server
        self.server_key = server_key
        self.auth_key = auth_key

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EnrollCode)
            and self.server == other.server
            and self.server_key == other.server_key
            and self.auth_key == other.auth_key
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        # The auth key is a secret: show only whether there is one.
        return "EnrollCode(%s, %s, %s)" % (
            self.server,
            self.server_key.to_text(),
            "<auth key>" if self.auth_key else "no auth key",
        )


def _printable(text: str) -> bool:
    for c in text:
        if c <= " " or c > "~":
            return False
    return True


def split_control_url(url: str, reason: str = "bad_control_url") -> "tuple[str, str, int]":
    """`http(s)://host[:port][/path]` -> (scheme, host, port); IPv6 hosts without brackets.

    Raises:
        EnrollCodeError: not http or https, no host, a bad port, user info,
            a query or fragment, spaces or non-ASCII characters.
    """
    if not url or not _printable(url):
        raise _fail("the control URL is empty or has spaces or non-ASCII characters", reason)
    i = url.find("://")
    scheme = url[:i].lower() if i > 0 else ""
    if scheme not in ("http", "https"):
        raise _fail("the control URL must start with http:// or https://", reason)
    rest = url[i + 3 :]
    if "?" in rest or "#" in rest:
        raise _fail("the control URL must not have a query or fragment", reason)
    slash = rest.find("/")
    authority = rest if slash < 0 else rest[:slash]
    if "@" in authority:
        raise _fail("the control URL must not carry a user name or password", reason)
    port_text = ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _fail("the control URL's IPv6 address lacks its ]", reason)
        host = authority[1:end]
        after = authority[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise _fail("the control URL has text after its IPv6 address", reason)
            port_text = after[1:]
        if not host or ":" not in host:
            raise _fail("the control URL has an empty or bad IPv6 address", reason)
    else:
        host = authority
        colon = authority.rfind(":")
        if colon >= 0:
            host, port_text = authority[:colon], authority[colon + 1 :]
        if not host or ":" in host or "[" in host or "]" in host:
            raise _fail("the control URL has no usable host", reason)
    port = 443 if scheme == "https" else 80
    if port_text or (":" in authority and not authority.endswith("]")):
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise _fail("the control URL's port must be a number from 1 to 65535", reason)
        port = int(port_text)
    return scheme, host, port


def _unquote(text: str) -> str:
    """Percent-decoding of one query value (and `+` as a space, as form parsers do); ASCII only."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "%":
            pair = text[i + 1 : i + 3]
            if (
                len(pair) != 2
                or pair[0] not in "0123456789abcdefABCDEF"
                or pair[1] not in "0123456789abcdefABCDEF"
            ):
                raise _fail("a % is not followed by two hex digits")
            code = int(pair, 16)
            if code >= 0x80:
                raise _fail("the code holds non-ASCII characters")
            out.append(chr(code))
            i += 3
            continue
        out.append(" " if c == "+" else c)
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    out = []
    for c in text:
        if c in _SAFE:
            out.append(c)
        else:
            b = ord(c)
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
    return "".join(out)


def _check_auth_key(auth_key: str) -> None:
    if not auth_key:
        raise _fail("authkey is empty; leave it out for an interactive login")
    if len(auth_key) > _MAX_AUTH_KEY_LEN or not _printable(auth_key):
        raise _fail("authkey is too long or has spaces or non-ASCII characters")


def _parse_key(text: str) -> MachinePublic:
    if not text.startswith(MachinePublic.PREFIX) or len(text) != 69:
        raise _fail("key must be mkey: and 64 hex digits (the server's public key)")
    try:
        key = MachinePublic.from_text(text)
    except ProtocolError:
        raise _fail("key has characters that are not hex digits")
    if key.is_zero():
        raise _fail("key is the zero key")
    return key


def _query(text: str) -> "dict[str, str]":
    params: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        eq = part.find("=")
        name = _unquote(part if eq < 0 else part[:eq])
        value = "" if eq < 0 else _unquote(part[eq + 1 :])
        if name in params:
            raise _fail("%s appears twice" % name if _printable(name) else "a parameter appears twice")
        params[name] = value
    return params


def parse(text: str) -> EnrollCode:
    """An enrollment code (surrounding whitespace ignored) -> EnrollCode.

    Raises:
        EnrollCodeError: reason "bad_enroll_code"; the detail names the problem.
    """
    if not isinstance(text, str):
        raise _fail("an enrollment code is text")
    text = text.strip()
    if len(text) > _MAX_CODE_LEN:
        raise _fail("the code is longer than any QR code holds")
    head = text[: len(PREFIX)]
    if head.lower() != PREFIX:
        raise _fail("an enrollment code starts with " + PREFIX)
    if "#" in text:
        raise _fail("the code has a # fragment")
    params = _query(text[len(PREFIX) :])
    server = params.get("server")
    if not server:
        raise _fail("the server parameter (the control URL) is missing")
    try:
        split_control_url(server, "bad_enroll_code")
    except EnrollCodeError as e:
        raise _fail("server: " + e.detail)
    key_text = params.get("key")
    if not key_text:
        raise _fail("the key parameter (the server's mkey:) is missing")
    key = _parse_key(key_text)
    auth_key = params.get("authkey")
    if auth_key is not None:
        _check_auth_key(auth_key)
    while server.endswith("/"):
        server = server[:-1]
    return EnrollCode(server, key, auth_key)


def build(server: str, server_key: MachinePublic, auth_key: "str | None") -> str:
    """The enrollment code for a control URL, its key and a pre-auth key (None: interactive).

    Raises:
        EnrollCodeError: the same checks `parse` makes.
    """
    try:
        split_control_url(server, "bad_enroll_code")
    except EnrollCodeError as e:
        raise _fail("server: " + e.detail)
    while server.endswith("/"):
        server = server[:-1]
    if server_key.is_zero():
        raise _fail("key is the zero key")
    text = PREFIX + "server=" + _quote(server) + "&key=" + server_key.to_text()
    if auth_key is not None:
        _check_auth_key(auth_key)
        text += "&authkey=" + _quote(auth_key)
    return text
