"""Enrollment QR codes: on the terminal, and as a printable label (PNG or SVG).

A label is what goes on a board's case or its box: the QR code of the
enrollment code, the control server's URL under it (so a person knows where
the board will join without scanning), and an optional line of text (the
host name, a room). The pre-auth key is in the QR code but never written
as text; the label is as secret as the key until the key is used or expires.

The code is checked with the core's `meshlet.enroll.parse` before anything
is drawn, so a label never carries a code the agent would refuse.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from xml.sax.saxutils import escape

from meshlet import enroll
from meshlet_host.qr import ERROR_LEVEL

from . import font5x7

MAX_LABEL = 64
KINDS = ("png", "svg")


class QrError(Exception):
    """Not an enrollment code, or the label could not be written; the message names the fix."""


def check_code(code: str) -> enroll.EnrollCode:
    """The parsed code, or QrError saying what is wrong with it."""
    try:
        return enroll.parse(code)
    except enroll.EnrollCodeError as e:
        raise QrError(
            "not an enrollment code: %s; copy the whole code from `meshlet-control keys create --qr`"
            % e.detail
        ) from None


def _check_label(label: str | None) -> str:
    if label is None:
        return ""
    if len(label) > MAX_LABEL or any(c < " " for c in label):
        raise QrError("--label must be one line of at most %d characters" % MAX_LABEL)
    return label


def kind_of(path: str, kind: str | None = None) -> str:
    """ "png" or "svg": `kind` if given, else from the file name."""
    k = kind or os.path.splitext(path)[1].lower().lstrip(".")
    if k not in KINDS:
        raise QrError("cannot tell the label format of %s; name it .png or .svg" % path)
    return k


def write_label(code: str, path: str, *, kind: str | None = None, label: str | None = None) -> str:
    """Writes the label for `code` to `path` (PNG or SVG); returns the format written."""
    parsed = check_code(code)
    text = _check_label(label)
    k = kind_of(path, kind)
    data = (
        label_png(code, parsed.server, text) if k == "png" else label_svg(code, parsed.server, text).encode()
    )
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise QrError("cannot write %s: %s; choose another path" % (path, e.strerror)) from None
    return k


def _matrix(code: str) -> list[list[bool]]:
    """The QR modules with the standard 4-module quiet zone."""
    import segno

    qr = segno.make(code.strip(), error=ERROR_LEVEL)
    return [[bool(px) for px in row] for row in qr.matrix_iter(scale=1, border=4)]


# --- SVG ---------------------------------------------------------------------------------

_SVG_MODULE = 4  # user units per QR module; the label scales to any print size


def label_svg(code: str, server: str, label: str = "") -> str:
    """An SVG label: the QR code, then the label text and the server in a monospaced font."""
    matrix = _matrix(code)
    size = len(matrix) * _SVG_MODULE
    path = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if row[x]:
                start = x
                while x < len(row) and row[x]:
                    x += 1
                path.append("M%d %dh%dv%dh-%dz" % (
                    start * _SVG_MODULE, y * _SVG_MODULE, (x - start) * _SVG_MODULE, _SVG_MODULE,
                    (x - start) * _SVG_MODULE,
                ))  # fmt: skip
            else:
                x += 1
    lines = [(label, 16, "bold")] if label else []
    lines.append((server, 10, "normal"))
    height = size + sum(px + 8 for _, px, _ in lines) + 8
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">'
        % (
            size,
            height,
            size,
            height,
        ),  # fmt: skip
        "<title>meshlet enrollment: %s</title>" % escape(label or server),
        '<rect width="100%" height="100%" fill="#fff"/>',
        '<path fill="#000" d="%s"/>' % "".join(path),
    ]
    y = size
    for text, px, weight in lines:
        y += px + 8
        out.append(
            '<text x="%d" y="%d" font-family="monospace" font-size="%d" font-weight="%s" '
            'text-anchor="middle" textLength="%d" lengthAdjust="spacingAndGlyphs">%s</text>'
            % (size // 2, y, px, weight, min(size - 16, int(len(text) * px * 0.6)), escape(text))
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- PNG ---------------------------------------------------------------------------------

_PNG_MODULE = 8  # pixels per QR module: 300 dpi prints it about 2.7 mm a module
_PNG_TEXT = 3  # pixels per font pixel for the server line (twice that for the label)


def label_png(code: str, server: str, label: str = "") -> bytes:
    """A 1-bit PNG label: the QR code, then the label text and the server in a 5x7 pixel font."""
    matrix = _matrix(code)
    rows: list[list[bool]] = []
    for row in matrix:
        wide = [px for px in row for _ in range(_PNG_MODULE)]
        rows.extend([wide] * _PNG_MODULE)
    width = len(rows[0])
    texts = [(label, _PNG_TEXT * 2)] if label else []
    texts.append((server, _PNG_TEXT))
    for text, scale in texts:
        while scale > 1 and len(text) * (font5x7.WIDTH + 1) * scale > width - 2 * _PNG_MODULE:
            scale -= 1
        ink = font5x7.render(_fit(text, width, scale), scale)
        pad = (width - len(ink[0])) // 2
        for r in ink:
            rows.append([False] * pad + r + [False] * (width - pad - len(r)))
        rows.extend([[False] * width for _ in range(2 * _PNG_MODULE)])
    return _png_1bit(rows)


def _fit(text: str, width: int, scale: int) -> str:
    """`text`, shortened with "..." in the middle when even scale 1 would not fit."""
    most = max(3, (width - 2 * _PNG_MODULE) // ((font5x7.WIDTH + 1) * scale))
    if len(text) <= most:
        return text
    half = (most - 3) // 2
    return text[:half] + "..." + text[len(text) - (most - 3 - half) :]


def _png_1bit(rows: list[list[bool]]) -> bytes:
    """Grayscale, 1 bit a pixel: 0 is black. Rows are ink (True) or paper."""
    width = len(rows[0])
    raw = io.BytesIO()
    for row in rows:
        raw.write(b"\x00")  # filter: none
        byte = 0
        for i, ink in enumerate(row):
            byte = (byte << 1) | (0 if ink else 1)
            if i % 8 == 7:
                raw.write(bytes((byte,)))
                byte = 0
        if width % 8:
            raw.write(bytes(((byte << (8 - width % 8)) & 0xFF,)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, len(rows), 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.getvalue(), 9))
        + chunk(b"IEND", b"")
    )
