"""The tailnet node's Backend: the state machine Tailscale calls ipn's LocalBackend.

It owns the node's life and answers the local API:

    NoState ──load──> NeedsLogin ──up──> Starting ──netmap──> Running
                         ^   │              │                   │ down
                         │   └──────────────┴─> NeedsMachineAuth│
                         │                                      v
                       logout <──────────────────────────── Stopped ──up──> Starting

It wires the parts together and nothing else: prefs and keys go to the
StateStore; ControlLoop's netmaps go to DataPlane.apply_netmap, the
Resolver's name table and the system resolver (OsDns); the DataPlane's
home DERP region goes back to control. Whatever cannot run (no TUN, control
unreachable, a refused key) ends up as one line in `status` (`Health`,
`Error`) that names the fix, and the daemon keeps answering.
"""

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from meshlet import __version__
from meshlet.control.netmap import NetMap, Node
from meshlet.key import DiscoPublic, NodePublic
from meshlet_host.statefile import StateFileError

from . import localapi
from .parts import ControlLoopLike, DataPlaneLike, OsDnsLike, Parts, ResolverLike
from .peerstatus import hostinfo_text, magic_dns_suffix, node_ips, node_tags, peer_status, region_code, short_name
from .uprequest import UpRequest, apply_enroll_code, login_params

log = logging.getLogger("meshlet_agent.backend")

# --- backend states (ipn.State's names, which `tailscale status --json` shows) --------------

NO_STATE = "NoState"
NEEDS_LOGIN = "NeedsLogin"
NEEDS_MACHINE_AUTH = "NeedsMachineAuth"
STARTING = "Starting"
RUNNING = "Running"
STOPPED = "Stopped"

MAGIC_DNS_IP = "100.100.100.100"
MAX_PING_COUNT = 100
MAX_PING_TIMEOUT_S = 30.0
MAX_PING_TOTAL_S = 100.0  # count * timeout: below localapi.HANDLER_TIMEOUT_S
STOP_TIMEOUT_S = 10.0  # how long shutdown waits for one part before moving on

LOGIN_HINT = "run `meshlet up --login-server URL --authkey KEY`"


# --- the Backend ---------------------------------------------------------------------------


class Backend:
    """One tailnet node: prefs, login, the data plane and DNS, driven by local API requests.

    Args:
        store: the StateStore (keys, prefs, the netmap cache).
        parts: builds the DataPlane, ControlLoop, Resolver and OsDns.
        on_state: called with the new state name on every change (sd_notify STATUS=).
    """

    def __init__(self, store: Any, parts: Parts, on_state: "Callable[[str], None] | None" = None) -> None:
        self.store = store
        self.parts = parts
        self.state = NO_STATE
        self.auth_url = ""
        self.error = ""  # the last refusal (bad key, no TUN), shown until the next up
        self.control_health = ""  # e.g. "control unreachable: ...; retrying"
        self.dns_health = ""
        self.netmap: "NetMap | None" = None
        self._on_state = on_state
        self._lock = asyncio.Lock()
        self._dataplane: "DataPlaneLike | None" = None
        self._dataplane_key: "NodePublic | None" = None
        self._restart_task: "asyncio.Task[None] | None" = None
        self._control: "ControlLoopLike | None" = None
        self._resolver: "ResolverLike | None" = None
        self._os_dns: "OsDnsLike | None" = None
        self._endpoints: list[str] = []  # our UDP endpoints, from the DataPlane's discovery
        self._endpoint_types: list[int] = []
        self._home_region = 0
        self._dns_configured = False
        self._dns_settings: tuple[str, tuple[str, ...], bool] = ("", (), False)
        self._accept_dns = True

    # -- life ----------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the state; comes up by itself if the prefs say so and a node key is registered."""
        prefs = self.store.prefs
        try:
            self._os_dns_part().restore()  # what a crashed run may have left in the host's resolver
        except Exception as e:  # noqa: BLE001 - OsDnsError; keep starting, the log names the file
            log.error("cannot undo an earlier run's DNS settings: %s", e)
        if self._registered() and prefs.want_running:
            log.info("state: logged in to %s and wanted running: coming up", prefs.control_url)
            async with self._lock:
                await self._bring_up(UpRequest(accept_dns=prefs.accept_dns, ephemeral=prefs.ephemeral))
        elif self._registered():
            self._set_state(STOPPED)
        else:
            self._set_state(NEEDS_LOGIN)

    async def close(self) -> None:
        """Shutdown: stops the parts and restores DNS; prefs and keys stay as they are."""
        async with self._lock:
            await self._tear_down()

    def _registered(self) -> bool:
        prefs = self.store.prefs
        return bool(prefs.control_url) and not prefs.logged_out and self._key_registered()

    def _key_registered(self) -> bool:
        return bool(self.store.registered) and self.store.node_key is not None

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        log.info("state: %s -> %s", self.state, state)
        self.state = state
        if self._on_state is not None:
            self._on_state(state)

    # -- requests ------------------------------------------------------------------

    async def up(self, req: UpRequest) -> dict[str, Any]:
        """Stores the prefs and starts the node; returns at once (the CLI polls `status`).

        Raises:
            RequestError: no login server known, a bad enrollment code or URL, no data plane.
        """
        async with self._lock:
            await self._bring_up(req)
        return {"state": self.state, "auth_url": self.auth_url, "error": self.error}

    async def _bring_up(self, req: UpRequest) -> None:
        from meshlet.enroll import EnrollCodeError, split_control_url

        store, prefs = self.store, self.store.prefs
        if req.enroll_code:
            req = apply_enroll_code(req)
        url = (req.login_server or prefs.control_url).strip().rstrip("/")
        if not url:
            raise localapi.RequestError("no login server known; %s" % LOGIN_HINT)
        try:
            split_control_url(url)
        except EnrollCodeError as e:
            raise localapi.RequestError(
                "bad login server %r: %s; give it as http(s)://HOST[:PORT]" % (url, e.detail)
            ) from None
        server_changed = bool(prefs.control_url) and url != prefs.control_url
        hostname = req.hostname or prefs.hostname
        tags = req.advertise_tags or list(prefs.advertise_tags)
        same = (hostname, tags) == (prefs.hostname, list(prefs.advertise_tags))
        if (
            self._control is not None
            and self._key_registered()
            and not (req.force_reauth or server_changed)
            and same
        ):
            # Already up (a script running the same `meshlet up` again): only DNS may change.
            self._accept_dns = req.accept_dns
            prefs.accept_dns = req.accept_dns
            prefs.want_running = True
            store.save()
            self._configure_dns()
            return
        await self._tear_down()
        self.error = ""
        self.auth_url = ""
        self.control_health = ""
        # The node key is settled here, before the data plane is built around it (ControlLoop.start
        # would otherwise change it under the DataPlane): a new one for another server or --force-reauth.
        if server_changed:
            store.registered = False
            store.old_node_key = None
            store.clear_netmap()  # another tailnet: the old peers mean nothing there
            prefs.control_url = url
            prefs.server_key = ""
            self.netmap = None
        if server_changed or req.force_reauth or store.node_key is None:
            store.new_node_key()
        prefs.accept_dns = req.accept_dns
        store.save()
        self._accept_dns = req.accept_dns
        self._set_state(STARTING)
        if not await self._start_data_plane():
            raise localapi.RequestError(self.error)
        control = self.parts.control_loop(store, self, self._disco_public())
        self._control = control
        if self._endpoints or self._home_region:
            self._report_endpoints()  # carried by the first MapRequest
        cached = getattr(control, "netmap", None)
        if cached is not None and cached.self_node is not None and not req.force_reauth:
            log.info("using the cached netmap (%d peers) until control answers", len(cached.peers))
            self.on_netmap(cached)
        params = login_params(url, req, hostname, tags)
        try:
            control.start(params)
        except (ValueError, StateFileError) as e:
            self.error = str(e)
            await self._tear_down()
            self._set_state(NEEDS_LOGIN)
            raise localapi.RequestError(self.error) from None

    async def _start_data_plane(self) -> bool:
        """The Resolver and the DataPlane on the store's node key; False (and `error`) if it cannot run."""
        self._resolver = self.parts.resolver(self._upstreams())
        key = self.store.node_key
        assert key is not None
        self._endpoints, self._endpoint_types = [], []
        dataplane = self.parts.data_plane(key, self._resolver, self._on_home_region, self._on_endpoints)
        try:
            await dataplane.start()
        except Exception as e:  # noqa: BLE001 - DataPlaneError and friends; the message names the fix
            self.error = "cannot start the data plane: %s" % e
            log.error("%s", self.error)
            self._resolver = None
            self._set_state(STOPPED)
            return False
        self._dataplane = dataplane
        self._dataplane_key = key.public()
        self._home_region = dataplane.home_region
        return True

    def _disco_public(self) -> DiscoPublic:
        disco = getattr(self._dataplane, "disco_public", None)
        return disco if isinstance(disco, DiscoPublic) else DiscoPublic.zero()

    async def down(self) -> dict[str, Any]:
        """Stops the data plane and restores DNS; keeps keys and the login (want_running false)."""
        async with self._lock:
            await self._tear_down()
            self.store.prefs.want_running = False
            self.store.save()
            self.error = ""
            self.auth_url = ""
            self._set_state(STOPPED if self._registered() else NEEDS_LOGIN)
        return {"state": self.state}

    async def logout(self) -> dict[str, Any]:
        """`down`, then expires the node key at control and forgets it (ControlLoop.logout)."""
        async with self._lock:
            control = self._control
            self._control = None  # kept alive through the teardown: it does the logout
            await self._tear_down()
            warning = ""
            if self.store.node_key is not None and self.store.prefs.control_url:
                if control is None:
                    control = self.parts.control_loop(self.store, self, DiscoPublic.zero())
                acknowledged = await control.logout()
                if not acknowledged:
                    warning = (
                        "control did not confirm the logout; the node key is forgotten here anyway "
                        "(remove the node at control if it is still listed)"
                    )
            else:
                self.store.forget_login()
            if control is not None:
                await _quietly(control.close())
            self.netmap = None
            self.auth_url = ""
            self.error = ""
            self.control_health = ""
            self._set_state(NEEDS_LOGIN)
        return {"state": self.state, "warning": warning}

    async def _tear_down(self) -> None:
        if self._restart_task is not None:
            self._restart_task.cancel()
            await _quietly(self._restart_task)
            self._restart_task = None
        if self._control is not None:
            await _quietly(self._control.close())
            self._control = None
        if self._dataplane is not None:
            await _quietly(self._dataplane.close())
            self._dataplane = None
            self._dataplane_key = None
        self._restore_dns()
        self._resolver = None

    # -- callbacks from the parts -----------------------------------------------------

    def on_netmap(self, nm: NetMap) -> None:
        """From ControlLoop (and the cache at start): to the data plane, names and DNS."""
        self.netmap = nm
        node = nm.self_node
        if node is not None and self._dataplane_key is not None and node.key != self._dataplane_key:
            # ControlLoop renewed the node key: WireGuard must use the new one.
            self._schedule_data_plane_restart()
            return
        if self._dataplane is not None:
            self._dataplane.apply_netmap(nm)
        if self._resolver is not None:
            self._resolver.set_netmap(nm)
        if node is None:
            return
        self.auth_url = ""
        if not node.machine_authorized:
            self._set_state(NEEDS_MACHINE_AUTH)
            return
        self._configure_dns()
        if self._dataplane is not None:
            self._set_state(RUNNING)

    def on_control_status(self, st: Any) -> None:
        """From ControlLoop: login progress and connection health (a controlloop.ControlStatus)."""
        state = str(getattr(st, "state", ""))
        if state == "NeedsLogin":
            self.auth_url = str(getattr(st, "auth_url", "") or "")
            if getattr(st, "error", ""):
                self.error = str(st.error)
            self._set_state(NEEDS_LOGIN)
        elif state == "NeedsMachineAuth":
            self._set_state(NEEDS_MACHINE_AUTH)
        elif state == "Backoff":
            self.control_health = "cannot reach control: %s; retrying (known peers keep working)" % (
                getattr(st, "last_error", "") or "no answer"
            )
        elif state == "Connected":
            self.control_health = ""
            self.auth_url = ""

    def _on_home_region(self, region: int) -> None:
        self._home_region = region
        self._report_endpoints()

    def _on_endpoints(self, endpoints: list[str], types: list[int]) -> None:
        """From the DataPlane: our UDP endpoints changed (STUN, local addresses): tell control."""
        self._endpoints, self._endpoint_types = list(endpoints), list(types)
        self._report_endpoints()

    def _report_endpoints(self) -> None:
        control = self._control
        if control is None:
            return
        control.set_endpoints(self._endpoints, self._home_region, self._endpoint_types or None)

    def _schedule_data_plane_restart(self) -> None:
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.get_running_loop().create_task(self._restart_data_plane())

    async def _restart_data_plane(self) -> None:
        """After a node key renewal: the node comes up again on the new key (a new DataPlane, and a new
        ControlLoop that sends control the new DataPlane's disco key). Rare: keys last months."""
        async with self._lock:
            self._restart_task = None  # so the teardown does not cancel this very task
            log.info("node key renewed: restarting the data plane on the new key")
            prefs = self.store.prefs
            await self._tear_down()
            try:
                await self._bring_up(UpRequest(accept_dns=self._accept_dns, ephemeral=prefs.ephemeral))
            except localapi.RequestError as e:
                log.error("restart after the key renewal failed: %s", e)

    # -- DNS -------------------------------------------------------------------------

    def _configure_dns(self) -> None:
        """Points the system resolver at 100.100.100.100 when accept_dns and control turned DNS on."""
        r = self._resolver
        if not self._accept_dns or r is None or not (r.magic_dns or r.has_default_resolvers):
            self._restore_dns()
            return
        os_dns = self._os_dns_part()
        settings = (r.suffix, tuple(r.search_domains), r.has_default_resolvers)
        try:
            if not self._dns_configured or settings != self._dns_settings:  # not on every peer's change
                os_dns.configure(r.suffix, r.search_domains, default_route=r.has_default_resolvers)
                self._dns_settings = settings
            os_dns.update_hosts(r.host_entries())
            self._dns_configured = True
            self.dns_health = ""
        except Exception as e:  # noqa: BLE001 - OsDnsError: names still work by IP; status says so
            self.dns_health = "cannot configure the system resolver: %s" % e
            log.warning("%s", self.dns_health)

    def _restore_dns(self) -> None:
        if self._os_dns is not None and self._dns_configured:
            try:
                self._os_dns.restore()
            except Exception as e:  # noqa: BLE001 - shutdown continues; the log says what to fix
                log.error("restoring the system resolver failed: %s", e)
            self._dns_configured = False

    def _os_dns_part(self) -> OsDnsLike:
        if self._os_dns is None:
            self._os_dns = self.parts.os_dns()
        return self._os_dns

    def _upstreams(self) -> list[tuple[str, int]]:
        """The resolvers the host used before us, for names that are not the tailnet's."""
        try:
            return self._os_dns_part().original_nameservers()
        except Exception as e:  # noqa: BLE001 - OsDnsError: forwarding then fails, tailnet names still work
            log.warning("cannot read the host's resolvers: %s", e)
            return []

    # -- queries ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`tailscale status --json`'s shape (the fields that mean the same here)."""
        nm = self.netmap
        dp = self._dataplane.status() if self._dataplane is not None else {}
        dp_peers: dict[str, Any] = dp.get("Peer") or {}
        relay_code = region_code(nm, int(dp.get("HomeDERP") or 0))
        health = []
        if self.error:
            health.append(self.error)
        for h in (self.control_health, self.dns_health):
            if h:
                health.append(h)
        if self.state == NEEDS_LOGIN and not self.auth_url and not self.error:
            health.append("not logged in; %s" % LOGIN_HINT)
        if self.state == NEEDS_MACHINE_AUTH:
            health.append(
                "this machine awaits approval by the tailnet admin (`meshlet-control nodes approve`)"
            )
        out: dict[str, Any] = {
            "Version": __version__,
            "BackendState": self.state,
            "AuthURL": self.auth_url,
            "Error": self.error,
            "TailscaleIPs": [],
            "Self": None,
            "Peer": {},
            "User": {},
            "Health": health,
            "MagicDNSSuffix": "",
        }
        if nm is None or nm.self_node is None:
            return out
        me = peer_status(nm.self_node, {})
        me["Online"] = self.state == RUNNING
        me["Relay"] = relay_code
        out["Self"] = me
        out["TailscaleIPs"] = me["TailscaleIPs"]
        out["MagicDNSSuffix"] = magic_dns_suffix(nm)
        for key, peer in sorted(nm.peers.items(), key=lambda kv: kv[1].name):
            text = key.to_text()
            out["Peer"][text] = peer_status(peer, dp_peers.get(text) or {}, nm)
        for uid, profile in nm.user_profiles.items():
            out["User"][str(uid)] = profile
        return out

    def ips(self, name: str = "") -> list[str]:
        """This node's addresses, or a peer's (by name or address), v4 first."""
        nm = self._need_netmap()
        node = nm.self_node if not name else self.find_node(name)
        assert node is not None
        return node_ips(node)

    def find_node(self, target: str) -> Node:
        """A node by IP, MagicDNS name (short or full) or host name.

        Raises:
            RequestError: no such node.
        """
        nm = self._need_netmap()
        nodes = [n for n in [nm.self_node, *nm.peers.values()] if n is not None]
        try:
            ip = ipaddress.ip_address(target)
        except ValueError:
            want = target.lower().rstrip(".")
            for n in nodes:
                if want in (
                    n.name.lower().rstrip("."),
                    short_name(n).lower(),
                    hostinfo_text(n, "Hostname").lower(),
                ):
                    return n
            raise localapi.RequestError(
                "no peer named %s: `meshlet status` lists the names" % target
            ) from None
        for n in nodes:
            if str(ip) in node_ips(n):
                return n
        raise localapi.RequestError(
            "no node has the address %s: `meshlet status` lists the tailnet's addresses" % target
        )

    def _need_netmap(self) -> NetMap:
        nm = self.netmap
        if self.state == STOPPED:
            raise localapi.RequestError("meshlet is stopped: run `meshlet up`")
        if nm is None or nm.self_node is None:
            if self.state in (NEEDS_LOGIN, NO_STATE):
                raise localapi.RequestError("not logged in: %s" % LOGIN_HINT)
            raise localapi.RequestError(
                "no netmap from control yet (state %s); wait, and see `meshlet status`" % self.state
            )
        return nm

    async def ping(
        self, target: str, count: int = 1, timeout_s: float = 5.0, until_direct: bool = True
    ) -> list[dict[str, Any]]:
        """Disco pings through the data plane: one result per attempt (a pong or an error); with
        `until_direct` (tailscale ping's default) the first pong over a direct path ends the series."""
        if not 1 <= count <= MAX_PING_COUNT:
            raise localapi.RequestError("ping: count must be 1..%d" % MAX_PING_COUNT)
        if not 0 < timeout_s <= MAX_PING_TIMEOUT_S or count * timeout_s > MAX_PING_TOTAL_S:
            raise localapi.RequestError(
                "ping: timeout must be 0..%.0f s and count x timeout at most %.0f s"
                % (MAX_PING_TIMEOUT_S, MAX_PING_TOTAL_S)
            )
        node = self.find_node(target)
        nm = self._need_netmap()
        if nm.self_node is not None and node.key == nm.self_node.key:
            raise localapi.RequestError("%s is this node; ping a peer (`meshlet status` lists them)" % target)
        if self._dataplane is None or self.state != RUNNING:
            raise localapi.RequestError("meshlet is not running (state %s): run `meshlet up`" % self.state)
        ips = node_ips(node)
        base = {"node": short_name(node), "ip": ips[0] if ips else ""}
        results: list[dict[str, Any]] = []
        for i in range(count):
            try:
                res = await self._dataplane.ping(node.key, timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                results.append(dict(base, error="no reply within %g s" % timeout_s))
            except Exception as e:  # noqa: BLE001 - PingError: no disco key, no path
                results.append(dict(base, error=str(e)))
                break
            else:
                latency_ms = round(float(res.latency_s) * 1000.0, 1)
                pong = dict(base, via=str(res.via), latency_ms=latency_ms)
                endpoint = str(getattr(res, "endpoint", "") or "")
                if endpoint:
                    pong["endpoint"] = endpoint  # a direct path: "via" is that address too
                results.append(pong)
                if until_direct and endpoint:
                    break
        return results

    async def netcheck(self) -> dict[str, Any]:
        """A fresh netcheck report from the running data plane (netcheck.Report's JSON)."""
        if self._dataplane is None or self.state not in (RUNNING, STARTING):
            raise localapi.RequestError("meshlet is not running (state %s): run `meshlet up`" % self.state)
        netcheck = getattr(self._dataplane, "netcheck", None)
        if netcheck is None:
            raise localapi.RequestError("this data plane cannot run netcheck")
        report: dict[str, Any] = await netcheck()
        return report

    def whois(self, ip_text: str) -> dict[str, Any]:
        """The node with this address and its user's profile, from the netmap."""
        try:
            ip = ipaddress.ip_address(ip_text)
        except ValueError:
            raise localapi.RequestError(
                "%r is not an IP address; whois takes one, like 100.64.0.2" % ip_text
            ) from None
        node = self.find_node(str(ip))
        nm = self._need_netmap()
        profile = nm.user_profiles.get(node.user) or {"ID": node.user}
        return {
            "node": {
                "ID": node.node_id,
                "Name": node.name,
                "HostName": hostinfo_text(node, "Hostname") or short_name(node),
                "Key": node.key.to_text(),
                "Addresses": list(node.addresses),
                "OS": hostinfo_text(node, "OS"),
                "Tags": node_tags(node),
                "Online": node.online,
            },
            "user": profile,
        }

    # -- the local API's handlers ---------------------------------------------------------

    def handlers(self) -> dict[str, localapi.Handler]:
        async def up(req: dict[str, Any]) -> dict[str, Any]:
            return await self.up(UpRequest.from_request(req))

        async def down(req: dict[str, Any]) -> dict[str, Any]:
            return await self.down()

        async def logout(req: dict[str, Any]) -> dict[str, Any]:
            return await self.logout()

        async def status(req: dict[str, Any]) -> dict[str, Any]:
            return {"status": self.status()}

        async def ip(req: dict[str, Any]) -> dict[str, Any]:
            name = req.get("name") or ""
            if not isinstance(name, str):
                raise localapi.RequestError("ip: name must be a string")
            return {"ips": self.ips(name)}

        async def ping(req: dict[str, Any]) -> dict[str, Any]:
            target, count, timeout_s = req.get("target"), req.get("count", 1), req.get("timeout_s", 5.0)
            if not isinstance(target, str) or not target:
                raise localapi.RequestError("ping: give a peer's name or address")
            if (
                not isinstance(count, int)
                or isinstance(count, bool)
                or not isinstance(timeout_s, (int, float))
            ):
                raise localapi.RequestError("ping: count must be a whole number and timeout_s a number")
            until_direct = req.get("until_direct", True)
            if not isinstance(until_direct, bool):
                raise localapi.RequestError("ping: until_direct must be true or false")
            return {"pongs": await self.ping(target, count, float(timeout_s), until_direct)}

        async def netcheck(req: dict[str, Any]) -> dict[str, Any]:
            return {"report": await self.netcheck()}

        async def whois(req: dict[str, Any]) -> dict[str, Any]:
            ip_text = req.get("ip")
            if not isinstance(ip_text, str):
                raise localapi.RequestError("whois: give an IP address, like 100.64.0.2")
            return self.whois(ip_text)

        return {
            "up": up,
            "down": down,
            "logout": logout,
            "status": status,
            "ip": ip,
            "ping": ping,
            "whois": whois,
            "netcheck": netcheck,
        }


async def _quietly(aw: Any) -> None:
    """Awaits a part's close/cancel during teardown: log its failure, carry on."""
    try:
        await asyncio.wait_for(aw, STOP_TIMEOUT_S)
    except asyncio.CancelledError:
        pass
    except Exception as e:  # noqa: BLE001 - shutdown must reach every part
        log.warning("stopping a part failed: %s", e)
