"""Loads the JSON test vectors in tests/vectors/.

Each file is an object with a "source" naming where the numbers come from
(an RFC section, a fact sheet, an upstream test file) and a "vectors" list.
Hex strings may contain spaces and line breaks for readability; `unhex`
removes them, so expected bytes can be written the way the specs print them.
"""

import json

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
VECTORS_DIR = _HERE + "/../../vectors"


def load(name: str) -> "dict[str, object]":
    """Returns the parsed tests/vectors/<name>.json."""
    with open(VECTORS_DIR + "/" + name + ".json") as f:
        doc: "dict[str, object]" = json.load(f)
    if not doc.get("source"):
        raise ValueError(name + ".json names no source")
    return doc


def cases(name: str) -> "list[dict[str, str]]":
    """The "vectors" list of tests/vectors/<name>.json."""
    got = load(name)["vectors"]
    assert isinstance(got, list)
    return got


def unhex(s: str) -> bytes:
    """bytes.fromhex that also ignores line breaks (MicroPython's ignores none)."""
    return bytes.fromhex("".join(s.split()))
