"""Logging for meshlet-derp: one line per event on stderr, systemd-friendly, rate-limited where it must be.

Three formats:

* under systemd (JOURNAL_STREAM set): `<6>meshlet_derp.server: message`,
  the sd-daemon priority prefix and no timestamp (the journal adds one);
* elsewhere: `2025-01-31T12:00:00.123 INFO meshlet_derp.server: message`;
* `--json-logs`: one JSON object per line with ts, level, logger, msg.

Messages are written `key=value` where they carry data (`client=[AbCdE]
addr=192.0.2.1:4242 reason=frame_too_large`), so they grep and parse well.

Per-connection failures go through `RateLimitedLog`: at most `burst` lines
per reason per `interval_s`, then one summary line with how many were
suppressed. A flood of bad clients can fill the counters, never the disk.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "<%d>%s" % (_PRIORITY.get(record.levelno, 6), super().format(record).replace("\n", " | "))


class _PlainFormatter(logging.Formatter):
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": "%s.%03dZ"
            % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"))


def setup(verbose: bool = False, json_logs: bool = False) -> None:
    """Sends every `meshlet_derp.*` record to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger("meshlet_derp")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class RateLimitedLog:
    """At most `burst` lines per key per `interval_s`; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0, burst: int = 5) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, printed, suppressed)

    def log(self, level: int, key: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        start, printed, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.interval_s:
            if suppressed:
                self.logger.log(
                    level, "%d more like %r suppressed in the last %.0f s", suppressed, key, now - start
                )
            start, printed, suppressed = now, 0, 0
        if printed < self.burst:
            self.logger.log(level, fmt, *args)
            printed += 1
        else:
            suppressed += 1
        self._windows[key] = (start, printed, suppressed)
        if len(self._windows) > 1000:  # keys are reasons, a small set; never let them grow unbounded
            self._windows.clear()
