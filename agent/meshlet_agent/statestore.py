"""The agent's persistent state: its keys, its preferences and the last netmap.

Two files in the state directory (/var/lib/meshlet by default; mode 0700),
each written whole and atomically with mode 0600 by meshlet_host.statefile,
so a power cut leaves the old file or the new one:

    state.json    {"version": 1,
                   "machine_key": "privkey:…",      the Noise key towards control; made once, kept
                                                     across logouts (Tailscale keeps it too)
                   "node_key": "privkey:…" | null,   WireGuard and DERP identity; null after logout
                   "old_node_key": "privkey:…" | null,  the key being replaced while a renewal or
                                                     re-authentication is under way (RegisterRequest.OldNodeKey)
                   "registered": bool,               control accepted node_key (a restart goes straight
                                                     to the map poll)
                   "prefs": {"control_url", "server_key" (mkey: pinned by an enrollment code, or ""),
                             "hostname", "advertise_tags", "want_running", "accept_dns",
                             "ephemeral", "logged_out"}}
    netmap.json   the last NetMap as one full MapResponse (NetMap.to_doc()), so the data
                  plane can start before control answers, or while it is down

Keys are generated here, once, from the injected randomness (os.urandom) via
the key classes. A damaged state.json is never replaced by fresh keys behind
the user's back (that would silently turn the device into a new node): it
raises StateFileError naming the file and the fix. netmap.json is only a
cache: a damaged one, or one that belongs to another node key, is ignored.

When the netmap is written. Control sends a delta whenever any peer's
endpoints or online state change, which on a busy tailnet is every few
seconds; an SD card should not be rewritten that often. `save_netmap`
therefore compares the map without its volatile fields with what it last
wrote and skips the write when only those differ:

* every node's `Online` and `Endpoints` (a peer's endpoints are re-learnt
  from control or disco within seconds of starting, so stale ones cost
  nothing), and the self node's `Hostinfo.NetInfo` (DERP latencies).

Everything else (a peer added or removed, a new key, disco key, home DERP,
address, name, the packet filter, DNS, DERP map) is written. The caller
(ControlLoop) also debounces: it writes a few seconds after a change, so a
burst of deltas costs one write.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from meshlet.control.netmap import NetMap
from meshlet.errors import ProtocolError
from meshlet.key import MachinePrivate, MachinePublic, NodePrivate
from meshlet_host import statefile
from meshlet_host.statefile import StateFileError

log = logging.getLogger("meshlet_agent.state")

STATE_FILE = "state.json"
NETMAP_FILE = "netmap.json"
STATE_VERSION = 1
MAX_NETMAP_BYTES = 64 << 20  # the netmap of a 10k-node tailnet is a few MB
_VOLATILE_NODE_FIELDS = ("Online", "Endpoints", "LastSeen")

__all__ = ["Prefs", "StateStore", "StateFileError", "STATE_FILE", "NETMAP_FILE"]


class Prefs:
    """What the user asked for (`meshlet up` flags), kept across restarts.

    Attributes:
        control_url: the control server, e.g. "https://ctrl.example.com".
        server_key: the control server's key as "mkey:…" when pinned by an
            enrollment code (checked against `GET /key`), else "".
        hostname: the name to register ("" = the system's).
        advertise_tags: Hostinfo.RequestTags, e.g. ["tag:server"].
        want_running: the node should be up (false after `meshlet down`).
        accept_dns: use MagicDNS and the tailnet's resolvers.
        ephemeral: register as an ephemeral node.
        logged_out: `meshlet logout` ran; nothing happens until the next `up`.
    """

    __slots__ = (
        "control_url",
        "server_key",
        "hostname",
        "advertise_tags",
        "want_running",
        "accept_dns",
        "ephemeral",
        "logged_out",
    )

    def __init__(self) -> None:
        self.control_url = ""
        self.server_key = ""
        self.hostname = ""
        self.advertise_tags: list[str] = []
        self.want_running = False
        self.accept_dns = True
        self.ephemeral = False
        self.logged_out = False

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in Prefs.__slots__}

    @classmethod
    def from_dict(cls, doc: object) -> "Prefs":
        """Raises ValueError naming the field that has the wrong type."""
        if not isinstance(doc, dict):
            raise ValueError("prefs is not an object")
        p = cls()
        for name in Prefs.__slots__:
            if name not in doc:
                continue
            v, default = doc[name], getattr(p, name)
            if isinstance(default, list):
                if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
                    raise ValueError("prefs.%s is not a list of strings" % name)
                v = list(v)
            elif type(v) is not type(default):
                raise ValueError("prefs.%s is not a %s" % (name, type(default).__name__))
            setattr(p, name, v)
        if p.server_key:
            MachinePublic.from_text(p.server_key)  # RemoteProtocolError: the caller says "damaged"
        return p

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prefs) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _node_key_or_none(doc: dict[str, Any], name: str) -> NodePrivate | None:
    v = doc.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError("%s is not a key" % name)
    return NodePrivate.from_text(v)


def _stable_digest(doc: dict[str, Any]) -> bytes:
    """The map's digest without its volatile fields (see the module docstring)."""

    def strip(node: Any, is_self: bool) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: v for k, v in node.items() if k not in _VOLATILE_NODE_FIELDS}
        hostinfo = out.get("Hostinfo")
        if is_self and isinstance(hostinfo, dict) and "NetInfo" in hostinfo:
            out["Hostinfo"] = {k: v for k, v in hostinfo.items() if k != "NetInfo"}
        return out

    stable = dict(doc)
    stable["Node"] = strip(doc.get("Node"), True)
    stable["Peers"] = [strip(p, False) for p in doc.get("Peers") or []]
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).digest()


class StateStore:
    """The state directory of one agent.

    Reads state.json at once (creating it, with a new machine key, when it
    does not exist). Attributes are changed by the caller and written with
    `save()`.

    Args:
        directory: the state directory; created with mode 0700 if missing.
        random_bytes: where new keys come from.

    Attributes:
        machine_key: this machine's Noise key (never changes).
        node_key: the node key in use, or None (never logged in, or logged out).
        old_node_key: the key `node_key` replaces until control accepts it.
        registered: control accepted `node_key`.
        prefs: the user's preferences.

    Raises:
        StateFileError: the directory or state.json cannot be used; the message names the fix.
    """

    def __init__(self, directory: str, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.directory = directory
        self.state_path = os.path.join(directory, STATE_FILE)
        self.netmap_path = os.path.join(directory, NETMAP_FILE)
        self._random_bytes = random_bytes
        self.node_key: NodePrivate | None = None
        self.old_node_key: NodePrivate | None = None
        self.registered = False
        self.prefs = Prefs()
        self._netmap_digest: bytes | None = None
        statefile.ensure_dir(directory)
        data = statefile.read_private(self.state_path)
        if data is None:
            self.machine_key = MachinePrivate.generate(random_bytes)
            self.save()
            log.info("state: new machine key %s in %s", self.machine_key.public().short(), self.state_path)
        else:
            self._load(data)

    def _load(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("version") != STATE_VERSION:
                raise ValueError(
                    "unknown version %r (this agent writes %d)" % (doc.get("version"), STATE_VERSION)
                )
            mk = doc.get("machine_key")
            if not isinstance(mk, str):
                raise ValueError("machine_key is missing")
            self.machine_key = MachinePrivate.from_text(mk)
            self.node_key = _node_key_or_none(doc, "node_key")
            self.old_node_key = _node_key_or_none(doc, "old_node_key")
            registered = doc.get("registered", False)
            if not isinstance(registered, bool):
                raise ValueError("registered is not a boolean")
            self.registered = registered and self.node_key is not None
            self.prefs = Prefs.from_dict(doc.get("prefs", {}))
        except (ValueError, UnicodeError, ProtocolError) as e:
            raise StateFileError(
                "%s is damaged (%s); move it aside (mv %s %s.bad) and log in again: the device will "
                "come back as a new node" % (self.state_path, e, self.state_path, self.state_path)
            ) from None

    def save(self) -> None:
        """Writes state.json (atomically, mode 0600). Raises StateFileError."""
        doc = {
            "version": STATE_VERSION,
            "machine_key": self.machine_key.to_text(),
            "node_key": self.node_key.to_text() if self.node_key is not None else None,
            "old_node_key": self.old_node_key.to_text() if self.old_node_key is not None else None,
            "registered": self.registered,
            "prefs": self.prefs.to_dict(),
        }
        statefile.write_atomic(self.state_path, (json.dumps(doc, indent=1) + "\n").encode())

    # --- node key life ----------------------------------------------------------------

    def new_node_key(self) -> NodePrivate:
        """Makes a new node key, not yet registered. A registered current key becomes
        `old_node_key` (sent as OldNodeKey); an unregistered one is simply dropped. Saves."""
        if self.node_key is not None and self.registered:
            self.old_node_key = self.node_key
        self.node_key = NodePrivate.generate(self._random_bytes)
        self.registered = False
        self.save()
        return self.node_key

    def node_key_accepted(self) -> None:
        """Control accepted `node_key`: it is registered and the old one is forgotten. Saves."""
        self.registered = True
        self.old_node_key = None
        self.save()

    def keep_old_node_key(self) -> None:
        """A renewal failed: go back to `old_node_key`, which control still knows. Saves."""
        if self.old_node_key is not None:
            self.node_key = self.old_node_key
            self.old_node_key = None
            self.registered = True
            self.save()

    def forget_login(self) -> None:
        """After a logout: no node key, no netmap; prefs say logged out. Saves."""
        self.node_key = None
        self.old_node_key = None
        self.registered = False
        self.prefs.logged_out = True
        self.prefs.want_running = False
        self.save()
        self.clear_netmap()

    # --- the netmap cache -------------------------------------------------------------

    def load_netmap(self) -> NetMap | None:
        """The cached netmap, or None when there is none, it is damaged, or it belongs to
        another node key (a cache never stops the agent; a damaged one is logged)."""
        if self.node_key is None:
            return None
        try:
            data = statefile.read_private(self.netmap_path, MAX_NETMAP_BYTES + 1)
        except StateFileError as e:
            log.warning("state: ignoring the cached netmap: %s", e)
            return None
        if data is None:
            return None
        nm = NetMap()
        try:
            if len(data) > MAX_NETMAP_BYTES:
                raise ValueError("larger than %d bytes" % MAX_NETMAP_BYTES)
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            nm.apply(doc)
        except (ValueError, UnicodeError, ProtocolError) as e:
            log.warning("state: ignoring the damaged netmap cache %s: %s", self.netmap_path, e)
            return None
        me = nm.self_node
        if me is None or me.key != self.node_key.public():
            log.info("state: the cached netmap belongs to another node key; ignoring it")
            return None
        self._netmap_digest = _stable_digest(doc)
        return nm

    def save_netmap(self, nm: NetMap, *, force: bool = False) -> bool:
        """Writes netmap.json unless only volatile fields changed since the last write
        (module docstring); `force` writes anyway. Returns whether it wrote.

        Raises:
            StateFileError: the file cannot be written.
        """
        if nm.self_node is None:
            return False
        doc = nm.to_doc()
        digest = _stable_digest(doc)
        if not force and digest == self._netmap_digest:
            return False
        statefile.write_atomic(self.netmap_path, json.dumps(doc, separators=(",", ":")).encode())
        self._netmap_digest = digest
        return True

    def clear_netmap(self) -> None:
        """Removes netmap.json (logout, or a login as another node)."""
        self._netmap_digest = None
        try:
            os.unlink(self.netmap_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StateFileError(
                "cannot remove %s: %s; remove it by hand" % (self.netmap_path, e.strerror)
            ) from None
