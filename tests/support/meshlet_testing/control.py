"""An in-process meshlet-control server for agent tests: real HTTP and TS2021 on 127.0.0.1.

`InProcessControl` owns the server's State, machine key and ServeConfig;
test modules subclass it to add their kind of agent (a ControlLoop, a
whole Backend) and use it through an async context manager of their own.
The first start takes a kernel-chosen port and every restart reuses it,
so an agent that lost the server redials the same URL. CPython only: the
MicroPython runner never imports this file.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Self

from meshlet.key import MachinePrivate
from meshlet_control import app
from meshlet_control.config import ServeConfig
from meshlet_control.state import State


class InProcessControl:
    def __init__(self, tmp: Path, state: State, key: MachinePrivate, cfg: ServeConfig) -> None:
        self.tmp = tmp
        self.state = state
        self.key = key
        self.cfg = cfg
        self.server: app.ControlServer | None = None

    @classmethod
    def create(cls, tmp: Path, derp_map: dict[str, Any], dns: list[str], **state_kw: Any) -> Self:
        """A control whose state lives in tmp/control.db, with a fresh machine key; not started yet."""
        state = State(str(tmp / "control.db"), server_url="http://control.test", **state_kw)
        cfg = ServeConfig(listen_host="127.0.0.1", listen_port=0, derp_map=derp_map, dns=dns)
        return cls(tmp, state, MachinePrivate.generate(os.urandom), cfg)

    @property
    def url(self) -> str:
        assert self.server is not None
        return "http://127.0.0.1:%d" % self.server.port

    async def start_server(self) -> None:
        self.server = await app.start(self.state, self.key, self.cfg, offline_grace_s=0, housekeeping=True)
        self.cfg = dataclasses.replace(self.cfg, listen_port=self.server.port)  # a restart reuses the port

    async def stop_server(self) -> None:
        assert self.server is not None
        await self.server.close()
        self.server = None

    async def close(self) -> None:
        """Stops the server if it runs and closes the state (after the test's agents are closed)."""
        if self.server is not None:
            await self.server.close()
            self.server = None
        self.state.close()

    def auth_key(self, **kw: Any) -> str:
        return self.state.create_preauth_key(self.state.default_user(), **kw).key
