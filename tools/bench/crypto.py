"""Operations per second of every crypto primitive, for each backend of `meshlet.crypto`.

This is the measurement behind `meshlet/crypto/_cpython.py`, which takes each
primitive from whichever CPython backend is faster, and behind the table in
docs/crypto.md. It is a benchmark, not a test: it prints numbers and never
fails on them.

    .venv/bin/python tools/bench/crypto.py [--seconds S] [--json]

What it measures. One call of the backend's public function, with its
argument conversion and length checks, exactly as the core would make it,
for:

* aead_* and xaead_* on 1400 bytes with no associated data (a WireGuard
  transport packet near the tunnel MTU) and on 64 bytes with 32 bytes of
  associated data (a Noise handshake payload, ad = the handshake hash);
* secretbox_* on 1400 and 64 bytes (disco and DERP ClientInfo boxes);
* x25519, x25519_base and box_beforenm (one per handshake or per new peer);
* blake2s and hmac_blake2s on 64 bytes, and hkdf_blake2s with two outputs,
  computed by the facade's formula over each backend's own HMAC.

Backends: `_sodium` (PyNaCl), `_pyca` (`cryptography`), and `_pure` when it
imports. A `_pyca` function that is `_sodium`'s own, re-exported because
`cryptography` lacks the primitive, is not timed twice: its cell reads
"= sodium".

How a cell is timed. Each cell gets a fixed wall-clock budget (--seconds,
0.3 by default), split into three rounds; the backends take turns round by
round. Within a round, calls run in batches sized from the rate seen so far,
timed with time.perf_counter, until the round's budget is spent. The cell
reports the best round, the usual way to filter out a neighbour stealing the
CPU. `_pure` gets the same budget and
so simply completes fewer calls. Every function is first called once and its
result checked against `_sodium`'s, so a fast wrong answer is never timed.

How to read it. "faster" names the quicker of sodium and pyca and "ratio" is
faster / slower. On a small shared machine runs differ by several percent,
so a ratio under 1.15 prints as "tie": it is noise, not a reason to prefer
one library. The pure column is for scale only; it is what a board without a
native module would pay (on CPython, so a microcontroller is slower still).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from types import ModuleType
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core"))

from meshlet.crypto import _pyca, _sodium  # noqa: E402

TIE_RATIO = 1.15  # below this, two backends are within run-to-run noise on 2 shared cores
ROUNDS = 3  # rounds per cell; the best one is reported

Row = dict[str, Any]


def load_backends() -> dict[str, ModuleType]:
    """The backends to time; `_pure` only if it imports (it may be mid-edit)."""
    backends: dict[str, ModuleType] = {"sodium": _sodium, "pyca": _pyca}
    try:
        from meshlet.crypto import _pure
    except Exception as exc:  # a missing or half-written file must not stop the bench
        print("bench: skipping pure backend (%s: %s)" % (type(exc).__name__, exc), file=sys.stderr)
    else:
        backends["pure"] = _pure
    return backends


def hkdf2(hmac_blake2s: Callable[[bytes, bytes], bytes], key: bytes, ikm: bytes) -> list[bytes]:
    """The facade's `hkdf_blake2s(key, ikm, 2)` over a given HMAC (Noise's KDF2)."""
    prk = hmac_blake2s(key, ikm)
    t1 = hmac_blake2s(prk, b"\x01")
    return [t1, hmac_blake2s(prk, t1 + b"\x02")]


Case = tuple[str, str, tuple[bytes, ...]]


def cases() -> list[Case]:
    """(label, function name, arguments) for every cell; inputs are random but fixed."""
    key, priv, peer_priv = os.urandom(32), os.urandom(32), os.urandom(32)
    pub = _sodium.x25519_base(peer_priv)
    n12, n24, ad32 = os.urandom(12), os.urandom(24), os.urandom(32)
    out: list[Case] = []
    for size, ad in ((1400, b""), (64, ad32)):
        msg = os.urandom(size)
        for kind, nonce in (("aead", n12), ("xaead", n24)):
            sealed = getattr(_sodium, kind + "_seal")(key, nonce, msg, ad)
            out.append(("%s_seal %dB" % (kind, size), kind + "_seal", (key, nonce, msg, ad)))
            out.append(("%s_open %dB" % (kind, size), kind + "_open", (key, nonce, sealed, ad)))
        boxed = _sodium.secretbox_seal(key, n24, msg)
        out.append(("secretbox_seal %dB" % size, "secretbox_seal", (key, n24, msg)))
        out.append(("secretbox_open %dB" % size, "secretbox_open", (key, n24, boxed)))
    out.append(("x25519", "x25519", (priv, pub)))
    out.append(("x25519_base", "x25519_base", (priv,)))
    out.append(("box_beforenm", "box_beforenm", (pub, priv)))
    out.append(("blake2s 64B", "blake2s", (os.urandom(64),)))
    out.append(("hmac_blake2s 64B", "hmac_blake2s", (key, os.urandom(64))))
    out.append(("hkdf_blake2s n=2", "hkdf", (key, os.urandom(32))))
    return out


def bind(backend: ModuleType, name: str) -> tuple[Callable[..., Any], object]:
    """The callable to time for a cell, and the identity used to spot re-exports."""
    if name == "hkdf":
        hmac_fn = backend.hmac_blake2s
        return (lambda key, ikm: hkdf2(hmac_fn, key, ikm)), hmac_fn
    fn = getattr(backend, name)
    return fn, fn


def _round(fn: Callable[..., Any], args: tuple[bytes, ...], budget_s: float) -> float:
    """Calls per second over one round of `budget_s` seconds."""
    calls, batch = 0, 1
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn(*args)
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return calls / elapsed
        # Aim the next batch at the time left, but at most double it, so a
        # slow first call cannot make one batch overrun the budget badly.
        batch = max(1, min(2 * batch, int(calls * (budget_s - elapsed) / elapsed) + 1))


def verdict(sodium: float, pyca: float | None) -> tuple[str, float | None]:
    """("sodium" | "pyca" | "tie" | "sodium only", faster/slower)."""
    if pyca is None:
        return "sodium only", None
    ratio = max(sodium, pyca) / min(sodium, pyca)
    if ratio < TIE_RATIO:
        return "tie", ratio
    return ("sodium" if sodium > pyca else "pyca"), ratio


def measure_row(
    label: str, name: str, args: tuple[bytes, ...], backends: dict[str, ModuleType], seconds: float
) -> Row:
    """Times one primitive on every backend, after checking each answers like `_sodium`.

    The backends take turns, one round each, ROUNDS times over, and each keeps
    its best round: a burst of load from a neighbour then costs every backend
    a round instead of costing one backend all of them.
    """
    expected = bind(_sodium, name)[0](*args)
    sodium_identity = bind(_sodium, name)[1]
    timed: dict[str, Callable[..., Any]] = {}
    rates: dict[str, float | None] = {}
    for bname, module in backends.items():
        fn, identity = bind(module, name)
        rates[bname] = None
        if bname != "sodium" and identity is sodium_identity:
            continue  # a re-export of _sodium's function: same code, same speed
        if fn(*args) != expected:
            raise SystemExit("bench: %s %s disagrees with sodium; fix it before timing it" % (bname, label))
        timed[bname] = fn
    for _ in range(ROUNDS):
        for bname, fn in timed.items():
            rates[bname] = max(rates[bname] or 0.0, _round(fn, args, seconds / ROUNDS))
    faster, ratio = verdict(rates["sodium"] or 0.0, rates["pyca"])
    return {"primitive": label, "function": name, "ops_per_s": rates,
            "delegated_to_sodium": rates["pyca"] is None, "faster": faster, "ratio": ratio}


def environment(seconds: float, backends: dict[str, ModuleType]) -> dict[str, Any]:
    """What the numbers depend on, so a pasted table says where it came from."""
    import cryptography
    import nacl
    from cryptography.hazmat.backends.openssl.backend import backend as openssl

    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_implementation() + " " + platform.python_version(),
        "machine": "%s, %d CPUs" % (platform.machine(), os.cpu_count() or 0),
        "pynacl": nacl.__version__,
        "cryptography": cryptography.__version__ + " (" + openssl.openssl_version_text() + ")",
        "seconds_per_cell": seconds,
        "backends": list(backends),
    }


def _fmt_rate(rate: float | None, delegated: bool) -> str:
    if delegated:
        return "= sodium"
    return "-" if rate is None else "{:,.0f}".format(rate)


def render(env: dict[str, Any], rows: list[Row]) -> str:
    """A fixed-width table, one primitive per line."""
    head = ("primitive", "sodium ops/s", "pyca ops/s", "pure ops/s", "faster", "ratio")
    lines = [head]
    for r in rows:
        ops = r["ops_per_s"]
        lines.append((
            r["primitive"],
            _fmt_rate(ops["sodium"], False),
            _fmt_rate(ops["pyca"], r["delegated_to_sodium"]),
            _fmt_rate(ops.get("pure"), False),
            r["faster"],
            "-" if r["ratio"] is None else "%.2fx" % r["ratio"],
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["%s: %s" % (k, v) for k, v in env.items()]
    out.append("")
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        out.append(" | ".join(cells))
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time budget per cell (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    backends = load_backends()
    rows = [measure_row(label, name, a, backends, args.seconds) for label, name, a in cases()]
    env = environment(args.seconds, backends)
    if args.json:
        print(json.dumps({"environment": env, "rows": rows}, indent=2))
    else:
        print(render(env, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
