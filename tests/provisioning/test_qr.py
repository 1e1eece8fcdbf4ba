"""`meshlet-provision qr`: the code is checked first, then shown on the terminal or written as a label."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import pytest
import segno
from meshlet import enroll
from meshlet.key import MachinePublic
from meshlet_provision import font5x7, qr
from meshlet_provision.cli import main
from meshlet_provision.qr import QrError

CODE = enroll.build(
    "https://control.example.com:8443",
    MachinePublic(bytes(range(1, 33))),
    "mlt-auth-abcdefabcdef-0123456789abcdef0123456789abcdef",
)
SVG = "{http://www.w3.org/2000/svg}"


def read_png(path: Any) -> tuple[int, int, list[list[bool]]]:
    """width, height and ink (True) per pixel of the 1-bit grayscale PNG the label writer makes."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    chunks: dict[bytes, bytes] = {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (1, 0)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = (width + 7) // 8
    rows = []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        assert line[0] == 0
        rows.append([not (line[1 + x // 8] >> (7 - x % 8)) & 1 for x in range(width)])
    assert b"IEND" in chunks
    return width, height, rows


def test_png_label_holds_the_qr_code_of_the_code(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "label.png"
    assert main(["qr", CODE, "--png", str(out), "--label", "pi-kitchen"]) == 0
    assert capsys.readouterr().out == "wrote %s (server https://control.example.com:8443)\n" % out
    width, height, ink = read_png(out)
    matrix = [list(map(bool, row)) for row in segno.make(CODE, error="m").matrix_iter(scale=1, border=4)]
    module = width // len(matrix)
    assert module * len(matrix) == width and height > width  # the text goes under the code
    sampled = [
        [ink[y * module + module // 2][x * module + module // 2] for x in range(len(matrix))]
        for y in range(len(matrix))
    ]
    assert sampled == matrix
    assert any(any(row) for row in ink[width:])  # text was drawn


def test_png_label_without_label_text(tmp_path: Any) -> None:
    out = tmp_path / "label.png"
    qr.write_label(CODE, str(out))
    width, height, ink = read_png(out)
    assert height > width


def test_svg_label_parses_and_names_the_server(tmp_path: Any) -> None:
    out = tmp_path / "label.svg"
    assert main(["qr", CODE, "--svg", str(out), "--label", "Kitchen <north> & co"]) == 0
    root = ET.parse(out).getroot()
    assert root.tag == SVG + "svg"
    texts = [t.text for t in root.iter(SVG + "text")]
    assert texts == ["Kitchen <north> & co", "https://control.example.com:8443"]
    assert root.find(SVG + "path") is not None
    assert b"abcdefabcdef" not in out.read_bytes()  # the key is only inside the QR code


def test_terminal_qr_and_the_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qr", "  " + CODE + "\n", "--label", "pi-kitchen"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[-2:] == ["pi-kitchen", "server: https://control.example.com:8443"]
    assert "█" in out or "▀" in out
    assert "mlt-auth" not in out


@pytest.mark.parametrize(
    "code, detail",
    [
        ("https://control.example.com", "an enrollment code starts with meshlet://enroll?"),
        ("meshlet://enroll?server=http://a", "the key parameter (the server's mkey:) is missing"),
        (
            "meshlet://enroll?server=ftp://a&key=mkey:" + "01" * 32,
            "server: the control URL must start with http:// or https://",
        ),
    ],
)
def test_not_an_enrollment_code(
    code: str, detail: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "label.png"
    assert main(["qr", code, "--png", str(out)]) == 1
    assert capsys.readouterr().err == (
        "meshlet-provision: not an enrollment code: %s; copy the whole code from "
        "`meshlet-control keys create --qr`\n" % detail
    )
    assert not out.exists()


def test_png_and_svg_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["qr", CODE, "--png", "a.png", "--svg", "a.svg"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_label_errors(tmp_path: Any) -> None:
    with pytest.raises(QrError, match="--label must be one line of at most 64 characters"):
        qr.write_label(CODE, str(tmp_path / "a.png"), label="two\nlines")
    with pytest.raises(QrError, match="name it .png or .svg"):
        qr.write_label(CODE, str(tmp_path / "a.jpg"))
    with pytest.raises(
        QrError, match=r"cannot write .*/missing/a.svg: No such file or directory; choose another path"
    ):
        qr.write_label(CODE, str(tmp_path / "missing" / "a.svg"))


def test_long_text_is_shortened_to_fit_the_label(tmp_path: Any) -> None:
    out = tmp_path / "a.png"
    qr.write_label(CODE, str(out), label="x" * 64)
    width, _, ink = read_png(out)
    assert all(len(row) == width for row in ink)


def test_the_font_draws_every_character_it_is_given() -> None:
    assert font5x7.glyph("a") == font5x7.glyph("A")
    box = font5x7.glyph("é")
    assert box[0] == [True] * 5 and box[3] == [True, False, False, False, True]
    rows = font5x7.render("ab", scale=2)
    assert len(rows) == 14 and len(rows[0]) == (5 + 1 + 5) * 2
