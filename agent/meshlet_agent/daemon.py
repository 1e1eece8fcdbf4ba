"""`meshlet daemon`: the process around the Backend (backend.py).

One daemon per state directory (a lock file), the local API socket,
sd_notify, signals and a clean shutdown (DNS restored, TUN and socket
removed).
"""

import asyncio
import fcntl
import logging
import os
import signal
from typing import Any

from . import localapi
from . import log as agent_log
from .backend import NEEDS_LOGIN, NEEDS_MACHINE_AUTH, RUNNING, STARTING, STOPPED, Backend
from .parts import DEFAULT_PORT, DEFAULT_TUN, Parts

log = logging.getLogger("meshlet_agent.daemon")


class DaemonError(Exception):
    """The daemon cannot start (lock held, bad flags); the message names the fix."""


# --- the process ---------------------------------------------------------------------------


class StateLock:
    """One daemon per state directory: an flock on `<dir>/meshletd.lock` holding the pid."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "meshletd.lock")
        self._fd = -1

    def acquire(self) -> None:
        """Raises DaemonError naming the other daemon's pid when the lock is held."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise DaemonError(
                "cannot open %s: %s; run the daemon as root or pass a --state-dir it can write"
                % (self.path, e.strerror)
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(
                "another meshlet daemon (pid %s) uses the state directory %s; stop it "
                "(`systemctl stop meshletd`) or pass another --state-dir"
                % (other, os.path.dirname(self.path))
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1


class DaemonOptions:
    """`meshlet daemon`'s flags."""

    def __init__(
        self,
        state_dir: str,
        socket_path: str,
        socket_group: "str | None" = None,
        tun: str = DEFAULT_TUN,
        port: int = DEFAULT_PORT,
    ) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.socket_group = socket_group
        self.tun = tun
        self.port = port


def open_store(state_dir: str) -> Any:
    """The StateStore for `state_dir` (a separate function so tests can swap the class)."""
    from .statestore import StateStore

    return StateStore(state_dir)


async def run(opts: DaemonOptions, stop: "asyncio.Event | None" = None, parts: "Parts | None" = None) -> None:
    """Runs the daemon until `stop` is set or SIGTERM/SIGINT arrives; always cleans up.

    Raises:
        DaemonError, LocalApiError, StateFileError: start-up failed (nothing is left behind).
    """
    from meshlet_host.statefile import ensure_dir

    ensure_dir(opts.state_dir)
    lock = StateLock(opts.state_dir)
    lock.acquire()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    api: "localapi.Server | None" = None
    backend: "Backend | None" = None
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_state(state: str) -> None:
        agent_log.sd_notify("STATUS=%s" % _STATE_TEXT.get(state, state))

    try:
        store = open_store(opts.state_dir)
        backend = Backend(store, parts or Parts(opts.state_dir, opts.tun, opts.port), on_state)
        api = localapi.Server(
            opts.socket_path,
            backend.handlers(),
            mode=0o660,
            group=opts.socket_group,
            dir_mode=0o755,
            busy_hint="is another `meshlet daemon` running? (`systemctl status meshletd`)",
        )
        await api.start()
        for sig in signals:
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        log.info("meshletd: listening on %s; state in %s", opts.socket_path, opts.state_dir)
        agent_log.sd_notify("READY=1")
        try:
            await backend.start()
        except localapi.RequestError as e:
            log.error("automatic start failed: %s", e)
        await stop.wait()
        agent_log.sd_notify("STOPPING=1")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if backend is not None:
            await backend.close()
        if api is not None:
            await api.close()
        lock.release()
        log.info("meshletd: stopped")


_STATE_TEXT = {
    NEEDS_LOGIN: "NeedsLogin: run `meshlet up`",
    NEEDS_MACHINE_AUTH: "NeedsMachineAuth: waiting for the admin to approve this machine",
    STARTING: "Starting: logging in to control",
    RUNNING: "Running",
    STOPPED: "Stopped: `meshlet up` starts it again",
}


def _on_signal(sig: int, stop: asyncio.Event) -> None:
    log.info("%s received, shutting down", signal.Signals(sig).name)
    stop.set()


def unit_text(command: str = "/usr/bin/env meshlet") -> str:
    """The systemd unit shipped with the package (`meshlet daemon --print-unit`), starting `command`."""
    from importlib.resources import files

    text = files("meshlet_agent").joinpath("systemd/meshletd.service").read_text(encoding="utf-8")
    return text.replace("ExecStart=/usr/bin/env meshlet daemon", "ExecStart=%s daemon" % command)
