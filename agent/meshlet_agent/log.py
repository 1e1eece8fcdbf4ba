"""Logging set-up for the agent: one line per event on stderr, systemd-friendly.

Under systemd (`JOURNAL_STREAM` is set when stderr is connected to the
journal) each line starts with the sd-daemon priority prefix, `<6>` for info,
and carries no timestamp, since the journal adds its own:

    <6>meshlet_agent.wgup: wg0 up: public key AbCd…=, port 51820, 1 peer

Elsewhere lines carry an ISO timestamp and the level name:

    2025-01-31T12:00:00.123 INFO meshlet_agent.wgup: wg0 up: ...
"""

import logging
import os
import sys

from meshlet_host import systemd

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", " | ")
        return "<%d>%s" % (prio, text)


class _PlainFormatter(logging.Formatter):
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup(level: int = logging.INFO) -> None:
    """Sends every `meshlet_agent.*` record at `level` or above to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger("meshlet_agent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def sd_notify(state: str) -> None:
    """Tells systemd about start-up or shutdown (`READY=1`, `STOPPING=1`) when run as Type=notify."""
    systemd.notify(state)
