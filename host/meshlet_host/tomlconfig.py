"""Settings files in TOML, over a dataclass of settings whose defaults give the types.

The daemons (meshlet-derp, meshlet-control) each keep their settings in one
dataclass; `--config FILE.toml` fills it, then the flags override it. A key
may be spelt with dashes or underscores. An unknown key, or a value of the
wrong type, is an error naming the file, the key and what was expected, so
a typo in a config file never passes silently.
"""

import dataclasses
import tomllib
from typing import Any, TypeVar

T = TypeVar("T")


def load_toml(path: str, settings: T, error: "type[Exception]", int_as_str: "frozenset[str]" = frozenset()) -> T:
    """Reads FILE.toml over `settings`; raises `error` with a message naming the fix.

    Args:
        int_as_str: names of string settings that also accept a bare integer
            (durations such as `ephemeral_timeout = 30`).
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise error("cannot read config %s: %s; check the --config path" % (path, e.strerror)) from None
    except tomllib.TOMLDecodeError as e:
        raise error("config %s is not valid TOML: %s" % (path, e)) from None
    for key, value in data.items():
        apply(settings, key.replace("-", "_"), value, "%s: %s" % (path, key), error, int_as_str)
    return settings


def apply(
    settings: Any, name: str, value: Any, where: str, error: "type[Exception]",
    int_as_str: "frozenset[str]" = frozenset(),
) -> None:  # fmt: skip
    """Sets one setting after checking the value's type against the default's."""
    names = sorted(f.name for f in dataclasses.fields(settings))
    if name not in names:
        raise error("%s is not a setting; known settings: %s" % (where, ", ".join(names)))
    default = getattr(type(settings)(), name)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str) or (name in int_as_str and type(value) is int)
        value = str(value)
    if not ok:
        raise error("%s should be %s, got %r" % (where, type(default).__name__, value))
    setattr(settings, name, value)
