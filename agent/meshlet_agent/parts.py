"""The parts of a running node, as the Backend uses them, and the factory that builds the real ones.

The real classes live in statestore.py, controlloop.py, dataplane.py and
dns/. The protocols list only what the Backend calls, so tests can
substitute the parts that cannot run in-process (the TUN needs root; OsDns
edits the host).
"""

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from meshlet import __version__
from meshlet.control.netmap import NetMap
from meshlet.key import DiscoPublic, NodePrivate, NodePublic

if TYPE_CHECKING:
    from .backend import Backend

DEFAULT_TUN = "meshlet0"
DEFAULT_PORT = 41641  # tailscaled's default UDP port


class DataPlaneLike(Protocol):
    @property
    def home_region(self) -> int: ...

    async def start(self) -> None: ...

    def apply_netmap(self, nm: NetMap) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def ping(self, peer: NodePublic, timeout_s: float = 5.0) -> Any: ...

    async def netcheck(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class ControlLoopLike(Protocol):
    netmap: "NetMap | None"

    def start(self, params: Any) -> None: ...

    def set_endpoints(
        self, endpoints: list[str], home_derp: int, endpoint_types: "list[int] | None" = None
    ) -> None: ...

    async def logout(self) -> bool: ...

    async def close(self) -> None: ...


class ResolverLike(Protocol):
    def set_netmap(self, nm: NetMap) -> None: ...

    @property
    def suffix(self) -> str: ...

    @property
    def magic_dns(self) -> bool: ...

    @property
    def search_domains(self) -> list[str]: ...

    @property
    def has_default_resolvers(self) -> bool: ...

    def host_entries(self) -> list[tuple[str, str]]: ...

    def answer_local(self, query: bytes) -> "bytes | None": ...

    async def resolve(self, query: bytes) -> bytes: ...


class OsDnsLike(Protocol):
    def configure(
        self, suffix: str, search_domains: list[str], nameserver: str = ..., *, default_route: bool = False
    ) -> None: ...

    def update_hosts(self, entries: list[tuple[str, str]]) -> None: ...

    def original_nameservers(self) -> list[tuple[str, int]]: ...

    def restore(self) -> None: ...


class Parts:
    """Builds the parts of a running node. Tests replace the ones that cannot run in-process."""

    def __init__(self, state_dir: str, ifname: str = DEFAULT_TUN, port: int = DEFAULT_PORT) -> None:
        self.state_dir = state_dir
        self.ifname = ifname
        self.port = port
        self.control_kw: dict[str, Any] = {}  # ControlLoop's tunables (tests shorten its delays)

    def data_plane(
        self,
        node_private: NodePrivate,
        resolver: ResolverLike,
        on_home_region: Callable[[int], None],
        on_endpoints: Callable[[list[str], list[int]], None],
    ) -> DataPlaneLike:
        from .dataplane import DataPlane

        return DataPlane(
            node_private,
            ifname=self.ifname,
            port=self.port,
            resolver=resolver,
            on_home_region=on_home_region,
            on_endpoints=on_endpoints,
        )

    def control_loop(self, store: Any, backend: "Backend", disco: DiscoPublic) -> ControlLoopLike:
        from .controlloop import ControlLoop

        return ControlLoop(
            store,
            disco=disco,
            hostinfo=hostinfo(),
            on_netmap=backend.on_netmap,
            on_status=backend.on_control_status,
            **self.control_kw,
        )

    def resolver(self, upstreams: list[tuple[str, int]]) -> ResolverLike:
        from .dns import Resolver

        return Resolver(upstreams)

    def os_dns(self) -> OsDnsLike:
        from .dns import OsDns

        return OsDns(self.ifname, self.state_dir)


def hostinfo() -> dict[str, Any]:
    """What control learns about this machine (tailcfg.Hostinfo); Hostname and tags come from the prefs."""
    uname = os.uname()
    return {
        "IPNVersion": __version__,
        "Hostname": socket.gethostname(),
        "OS": "linux",
        "OSVersion": uname.release,
        "Machine": uname.machine,
        "GoArch": _GOARCH.get(uname.machine, uname.machine),
    }


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}
