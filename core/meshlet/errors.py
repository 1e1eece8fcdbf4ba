"""The error tree of the protocol core.

Every failure the core reports is a `ProtocolError` carrying a short, stable
`reason` string ("short", "bad_magic", "frame_too_large", ...). Counters are
keyed by that reason, tests assert on it, and logs print it; the free-form
`detail` is for humans only and may change.

Which subclass is raised says whose fault it was (h11's split):

* `RemoteProtocolError`: the bytes came from the network and are wrong.
  Datagram entry points count and drop these; stream entry points close the
  connection.
* `CryptoError`: a special remote error, an authentication tag that did not
  verify or a key exchange that produced a low-order point. Kept separate so
  callers can count forgeries apart from garbage.
* `LocalProtocolError`: the caller asked for something impossible (a frame
  too large to send, a key of the wrong length). That is a bug in the caller.

Anything else escaping a parser is a bug in the parser; the hypothesis
properties in tests/props enforce that.
"""


class ProtocolError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, reason: str, detail: str = "") -> None:
        # MicroPython requires the base initialiser to run first.
        super().__init__(reason + ": " + detail if detail else reason)
        self.reason = reason
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """Bytes received from a peer are malformed or violate the protocol."""


class CryptoError(RemoteProtocolError):
    """Authentication failed: a bad AEAD tag, box, MAC, or a low-order DH result."""


class LocalProtocolError(ProtocolError):
    """The caller asked the core to do something the protocol does not allow."""
