"""The agent's environment knobs, all declared here (Tailscale's envknob).

Each is read when needed, so tests can set them with monkeypatch. They are
for operators and tests, not for everyday configuration: a knob that proves
useful becomes a config setting or a flag.

| variable             | default        | effect                                                    |
| -------------------- | -------------- | --------------------------------------------------------- |
| MESHLET_RUN_DIR      | /run/meshlet   | base of the local API sockets (`<dir>/wg/<if>.sock`)      |
| MESHLET_SOCKET       | <run dir>/meshletd.sock | the daemon's socket (`meshlet daemon --socket`)  |
| MESHLET_STATE_DIR    | /var/lib/meshlet | keys, prefs, netmap cache (`meshlet daemon --state-dir`)|
| MESHLET_WG_GSO       | 1              | 0 turns off UDP GSO batching on send (for measurements)   |
| MESHLET_WG_BATCH     | 64             | packets or datagrams read per readiness callback          |
"""

import os


class KnobError(ValueError):
    """A knob holds something unusable; the message names the variable and the allowed values."""


def check_all() -> None:
    """Reads every numeric knob once, so a bad value stops `meshlet` at start, not mid-run.

    Raises:
        KnobError: the first bad knob.
    """
    wg_gso()
    wg_batch()


def _int(name: str, default: int, lo: int, hi: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise KnobError(
            "%s=%r is not a whole number; unset it or set %d..%d" % (name, text, lo, hi)
        ) from None
    if not lo <= value <= hi:
        raise KnobError("%s=%d is out of range; unset it or set %d..%d" % (name, value, lo, hi))
    return value


def run_dir() -> str:
    return os.environ.get("MESHLET_RUN_DIR") or "/run/meshlet"


def daemon_socket() -> str:
    """Where `meshlet daemon` listens and the CLI connects (flag --socket overrides)."""
    return os.environ.get("MESHLET_SOCKET") or os.path.join(run_dir(), "meshletd.sock")


def state_dir() -> str:
    """The daemon's state directory (flag --state-dir overrides)."""
    return os.environ.get("MESHLET_STATE_DIR") or "/var/lib/meshlet"


def wg_gso() -> bool:
    return _int("MESHLET_WG_GSO", 1, 0, 1) == 1


def wg_batch() -> int:
    return _int("MESHLET_WG_BATCH", 64, 1, 4096)
