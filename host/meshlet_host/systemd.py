"""systemd's readiness protocol (sd_notify), for units with Type=notify."""

import os
import socket


def notify(state: str) -> bool:
    """Sends `state` (e.g. "READY=1", "STOPPING=1") to $NOTIFY_SOCKET; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
