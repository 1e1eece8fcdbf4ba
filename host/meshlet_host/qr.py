"""Terminal QR codes: one look for every meshlet command that shows a code to scan.

`meshlet-control keys create --qr` (enrollment codes), `meshlet up` (the
interactive login URL, also on a board's serial console) and
`meshlet-provision qr` print the same way, so a phone scans them all alike.
"""

from typing import TextIO

ERROR_LEVEL = "m"
"""QR error correction: survives a smudged label or a dim console, and keeps the code small."""


def print_terminal_qr(text: str, out: TextIO) -> None:
    """A QR code of `text` in block characters, two module rows per line."""
    import segno  # only when a code is shown: it costs the daemon-less CLI ~3.6 MB otherwise

    segno.make(text, error=ERROR_LEVEL).terminal(out=out, compact=True)
