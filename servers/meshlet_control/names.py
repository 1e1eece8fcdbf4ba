"""Node names: from a client's Hostinfo.Hostname to a unique DNS label and its MagicDNS FQDN.

The rules (shared/protocol/names.md §2, after Tailscale's `dnsname.SanitizeHostname`):

1. drop one trailing `.local`, `.localdomain` or `.lan`;
2. lower-case; every character outside `a-z 0-9 -` becomes `-`; runs of `-`
   collapse into one;
3. trim `-` from both ends; keep at most 63 characters (trimming again);
4. if nothing is left, `node-` and the first 8 hex digits of the machine key.

Uniqueness (`unique_label`): the first free of `name`, `name-1`, `name-2`, …,
shortening `name` so the result still fits in 63 characters. Headscale
appends 8 random characters instead; numbered suffixes are easier to read and
to type. A node keeps its name for life (re-registration, restarts, hostname
changes), unless an administrator renames it.

The FQDN is `<label>.<base_domain>.` with the trailing dot the client expects
in `Node.Name`: the client derives its MagicDNS suffix from everything after
the first label of its own name (names.md §1).
"""

from __future__ import annotations

import re
from typing import Callable

MAX_LABEL = 63
MAX_NAME = 253

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SUFFIXES = (".localdomain", ".local", ".lan")


def sanitize_hostname(hostname: str, machine_hex: str = "") -> str:
    """A valid DNS label for `hostname`; `machine_hex` (the machine key's hex) names nodes without one."""
    name = hostname.strip().rstrip(".")
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            name = name[: -len(suffix)]
            break
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out = out[:MAX_LABEL].rstrip("-")
    if not out:
        out = "node-" + (machine_hex[:8] if machine_hex else "unknown")
    return out


def valid_label(label: str) -> bool:
    """1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit."""
    return bool(_LABEL.match(label))


def unique_label(base: str, taken: Callable[[str], bool]) -> str:
    """`base`, or `base-1`, `base-2`, … (shortened to fit 63), whichever `taken` says is free."""
    if not taken(base):
        return base
    n = 1
    while True:
        suffix = "-%d" % n
        candidate = base[: MAX_LABEL - len(suffix)].rstrip("-") + suffix
        if not taken(candidate):
            return candidate
        n += 1


def check_base_domain(domain: str) -> str:
    """The base domain without a trailing dot; raises ValueError naming the fix."""
    d = domain.strip().rstrip(".").lower()
    if not d or len(d) > MAX_NAME - MAX_LABEL - 1:
        raise ValueError(
            "base domain %r must be 1-%d characters, e.g. meshlet.internal" % (domain, MAX_NAME - 64)
        )
    for label in d.split("."):
        if not valid_label(label):
            raise ValueError("base domain %r: label %r is not a DNS label (a-z, 0-9, '-')" % (domain, label))
    if d == "local" or d.endswith(".local"):
        raise ValueError("base domain %r is mDNS's .local; pick another, e.g. meshlet.internal" % domain)
    return d


def fqdn(label: str, base_domain: str) -> str:
    """`label.base_domain.` (Node.Name form, with the trailing dot)."""
    return "%s.%s." % (label, base_domain)
