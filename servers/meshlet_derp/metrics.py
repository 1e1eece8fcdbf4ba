"""The relay's counters and gauges, rendered in Prometheus' text exposition format (0.0.4).

Hot-path counters are plain attributes (an attribute increment is the
cheapest thing Python does); labelled ones are small dicts. Gauges that are
cheaper to compute than to maintain (queue depth, open file descriptors,
resident memory) are computed at scrape time by callables the server
registers. Every name starts with `meshlet_derp_`; `docs/derp.md` lists them.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from meshlet.disco import looks_like_disco

PREFIX = "meshlet_derp_"

# Drop reasons (Tailscale's derpserver dropReason names, so dashboards translate).
DROP_REASONS = (
    "unknown_dest",  # no such key here or in the mesh
    "unknown_dest_on_fwd",  # a mesh peer forwarded a packet for a key that is not here
    "gone_disconnected",  # the destination left with packets still queued
    "queue_head",  # the destination's queue was full: its oldest packet was dropped
    "queue_tail",  # the destination's queue was full: the new packet was dropped
    "write_error",  # the destination's connection failed while packets were queued
    "dup_client",  # the key is connected more than once and none is active
    "mesh_unavailable",  # the mesh peer that has the key cannot take more right now
)

# (name, type, help) for the plain attribute counters and gauges.
_SCALARS = (
    ("connections_accepted_total", "counter", "TCP connections accepted on the DERP listener"),
    (
        "connections_refused_total",
        "counter",
        "connections closed at once because max_connections was reached",
    ),
    ("http_connections", "gauge", "connections still speaking HTTP (not yet upgraded)"),
    ("derp_connections", "gauge", "upgraded DERP connections, logged in or not"),
    ("clients_local", "gauge", "distinct node keys connected to this relay"),
    ("clients_remote", "gauge", "node keys reachable through mesh peers"),
    ("mesh_peer_connections", "gauge", "logged-in connections that presented the mesh key"),
    ("home_clients", "gauge", "clients that said this relay is their home (NotePreferred)"),
    ("logins_total", "counter", "successful DERP logins (ClientInfo opened)"),
    ("dup_connections_total", "counter", "logins for a node key that was already connected"),
    ("packets_received_total", "counter", "SendPacket frames received"),
    ("bytes_received_total", "counter", "packet bytes received in SendPacket frames"),
    ("disco_packets_received_total", "counter", "SendPacket frames whose packet looks like disco"),
    ("packets_sent_total", "counter", "RecvPacket frames written"),
    ("bytes_sent_total", "counter", "packet bytes written in RecvPacket frames"),
    ("packets_forwarded_out_total", "counter", "packets sent on to a mesh peer (ForwardPacket)"),
    ("packets_forwarded_in_total", "counter", "ForwardPacket frames received from mesh peers"),
    ("peer_gone_disconnected_total", "counter", "PeerGone(Disconnected) frames queued"),
    ("peer_gone_not_here_total", "counter", "PeerGone(NotHere) frames queued"),
    ("pings_total", "counter", "Ping frames received"),
    ("pongs_total", "counter", "Pong frames queued"),
    ("pings_ignored_total", "counter", "Pings ignored because a Pong was still pending"),
    ("keep_alives_total", "counter", "KeepAlive frames queued"),
    ("unknown_frames_total", "counter", "frames skipped (unknown type, or not one clients send)"),
    ("write_timeouts_total", "counter", "connections closed because the client stopped reading"),
    ("rate_limit_waits_total", "counter", "times a client's reads were paused by its rate limit"),
    ("stun_requests_total", "counter", "STUN binding requests answered"),
    ("mesh_forward_frames_total", "counter", "ForwardPacket frames written to mesh peers"),
)


class Metrics:
    """Every number the relay exports. Attributes named as in `_SCALARS` (without the prefix)."""

    def __init__(self) -> None:
        for name, _, _ in _SCALARS:
            setattr(self, name, 0)
        self.packets_dropped: dict[tuple[str, str], int] = {}
        self.bytes_dropped: dict[tuple[str, str], int] = {}
        self.connection_errors: dict[str, int] = {}  # reason -> connections closed for it
        self.http_requests: dict[tuple[str, int], int] = {}  # (endpoint, status) -> requests
        self.stun_dropped: dict[str, int] = {}  # reason -> datagrams dropped
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}  # name -> (help, fn)

    # Typed declarations for mypy (set dynamically above).
    connections_accepted_total: int
    connections_refused_total: int
    http_connections: int
    derp_connections: int
    clients_local: int
    clients_remote: int
    mesh_peer_connections: int
    home_clients: int
    logins_total: int
    dup_connections_total: int
    packets_received_total: int
    bytes_received_total: int
    disco_packets_received_total: int
    packets_sent_total: int
    bytes_sent_total: int
    packets_forwarded_out_total: int
    packets_forwarded_in_total: int
    peer_gone_disconnected_total: int
    peer_gone_not_here_total: int
    pings_total: int
    pongs_total: int
    pings_ignored_total: int
    keep_alives_total: int
    unknown_frames_total: int
    write_timeouts_total: int
    rate_limit_waits_total: int
    stun_requests_total: int
    mesh_forward_frames_total: int

    def drop(self, reason: str, data: bytes | None, kind: str | None = None, size: int = -1) -> None:
        """Counts one dropped packet; `kind` ("disco"/"other") is found from `data` if not given."""
        if kind is None:
            kind = "disco" if data is not None and looks_like_disco(data) else "other"
        key = (reason, kind)
        self.packets_dropped[key] = self.packets_dropped.get(key, 0) + 1
        n = size if size >= 0 else (len(data) if data is not None else 0)
        self.bytes_dropped[key] = self.bytes_dropped.get(key, 0) + n

    def dropped(self, reason: str | None = None) -> int:
        """Total packets dropped, for one reason or all (tests use this)."""
        return sum(v for (r, _), v in self.packets_dropped.items() if reason is None or r == reason)

    def connection_error(self, reason: str) -> None:
        self.connection_errors[reason] = self.connection_errors.get(reason, 0) + 1

    def http_request(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.http_requests[key] = self.http_requests.get(key, 0) + 1

    def stun_drop(self, reason: str) -> None:
        self.stun_dropped[reason] = self.stun_dropped.get(reason, 0) + 1

    def gauge(self, name: str, help_text: str, fn: Callable[[], float]) -> None:
        """Registers a gauge computed at scrape time."""
        self.gauges[name] = (help_text, fn)

    def render(self) -> str:
        """The whole exposition, `# HELP`/`# TYPE` lines included."""
        out: list[str] = []
        for name, kind, help_text in _SCALARS:
            _head(out, name, kind, help_text)
            out.append("%s%s %d" % (PREFIX, name, getattr(self, name)))
        for reason in DROP_REASONS:  # every reason present from the start, as Tailscale does
            for kind in ("disco", "other"):
                self.packets_dropped.setdefault((reason, kind), 0)
                self.bytes_dropped.setdefault((reason, kind), 0)
        _labelled(out, "packets_dropped_total", "packets dropped, by reason and kind", self.packets_dropped,
                  ("reason", "kind"))  # fmt: skip
        _labelled(out, "bytes_dropped_total", "packet bytes dropped, by reason and kind", self.bytes_dropped,
                  ("reason", "kind"))  # fmt: skip
        errors = {(k,): v for k, v in self.connection_errors.items()}
        _labelled(
            out, "connection_errors_total", "connections closed on an error, by reason", errors, ("reason",)
        )
        requests = {(e, str(s)): v for (e, s), v in self.http_requests.items()}
        _labelled(
            out,
            "http_requests_total",
            "HTTP requests, by endpoint and status",
            requests,
            ("endpoint", "code"),
        )
        stun = {(k,): v for k, v in self.stun_dropped.items()}
        _labelled(out, "stun_dropped_total", "STUN datagrams dropped, by reason", stun, ("reason",))
        for name, (help_text, fn) in sorted(self.gauges.items()):
            _head(out, name, "gauge", help_text)
            value = fn()
            out.append("%s%s %s" % (PREFIX, name, _number(value)))
        return "\n".join(out) + "\n"


def _head(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append("# HELP %s%s %s" % (PREFIX, name, help_text))
    out.append("# TYPE %s%s %s" % (PREFIX, name, kind))


def _labelled(
    out: list[str], name: str, help_text: str, values: Mapping[Any, int], labels: tuple[str, ...]
) -> None:
    _head(out, name, "counter", help_text)
    for key in sorted(values):
        pairs = ",".join('%s="%s"' % (label, _escape(v)) for label, v in zip(labels, key))
        out.append("%s%s{%s} %d" % (PREFIX, name, pairs, values[key]))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return "%d" % value if float(value).is_integer() else "%r" % float(value)


def process_rss_bytes() -> int:
    """Resident set size from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def process_open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
