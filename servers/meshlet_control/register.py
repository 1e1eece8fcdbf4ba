"""`POST /machine/register` on the Noise channel: RegisterRequest in, RegisterResponse out.

(shared/protocol/control.md §6.) The request, as tsnet 1.90 sends it:

    {"Version":130, "NodeKey":"nodekey:…", "OldNodeKey":"nodekey:000…",
     "NLKey":"nlpub:…", "Auth":{"AuthKey":"…"}, "Expiry":"0001-01-01T00:00:00Z",
     "Followup":"", "Hostinfo":{…}, "Ephemeral":true, "Timestamp":"…"}

The decisions (pre-auth key valid? same machine re-registering? logout
because Expiry is in the past?) belong to State.register; this module only
hands it the machine key the Noise session proved (§5.6: State refuses a
node key that belongs to another machine) and spells the answer:

    success   {"User":{…}, "Login":{…}, "NodeKeyExpired":false,
               "MachineAuthorized":true, "AuthURL":""}
    refused   {"Error":"<what is wrong and how to fix it>"}   (HTTP 200: the client
               shows Error to the user; any other status is retried as a transport error)
    interactive {"AuthURL":"<url>", "MachineAuthorized":false, …}; the client then
              re-sends the request with Followup=<url>, which is held until an admin
              approves the node (or FOLLOWUP_WAIT_S passes)
    logout    {"NodeKeyExpired":true, "MachineAuthorized":false}  (Expiry in the past)

Status codes other than 200: 400 for a body that is not a RegisterRequest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from meshlet.errors import RemoteProtocolError
from meshlet.key import NodePublic

from . import tailcfg
from .noise import Request, Response

if TYPE_CHECKING:
    from .state import Node, State

log = logging.getLogger("meshlet_control.register")

# --- implementation constants ------------------------------------------------------

FOLLOWUP_WAIT_S = 60.0  # how long a Followup request is held waiting for `nodes approve`
FOLLOWUP_POLL_S = 0.5  # approvals come from another process, seen by State.refresh() within 1 s


class RegisterRequest:
    """The fields of tailcfg.RegisterRequest the server uses."""

    __slots__ = (
        "version",
        "node_key",
        "old_node_key",
        "auth_key",
        "expiry_ms",
        "followup",
        "hostinfo",
        "ephemeral",
    )

    def __init__(self, doc: dict[str, Any]) -> None:
        """Raises RemoteProtocolError("bad_json") for a malformed request."""
        self.version, self.node_key = tailcfg.request_version_and_node_key(doc)
        self.old_node_key = tailcfg.parse_key(NodePublic, doc.get("OldNodeKey"), "OldNodeKey", required=False)
        auth = tailcfg.get_dict(doc, "Auth")
        auth_key = auth.get("AuthKey")
        self.auth_key: str | None = auth_key if isinstance(auth_key, str) and auth_key else None
        self.expiry_ms = tailcfg.parse_go_time(doc.get("Expiry"), "Expiry")
        followup = doc.get("Followup")
        self.followup = followup if isinstance(followup, str) else ""
        self.hostinfo = tailcfg.get_dict(doc, "Hostinfo")
        self.ephemeral = doc.get("Ephemeral") is True


class Registrar:
    """Answers /machine/register.

    Args:
        state: the tailnet's State.
        now_ms: the clock (Unix milliseconds).
    """

    def __init__(self, state: State, now_ms: Callable[[], int]) -> None:
        self.state = state
        self.now_ms = now_ms

    async def handle(self, req: Request, resp: Response) -> None:
        if req.method != "POST":
            await resp.respond(405, b"POST only\n", "text/plain")
            return
        try:
            rr = RegisterRequest(tailcfg.parse_object(req.body, "RegisterRequest"))
        except RemoteProtocolError as e:
            await resp.respond(400, (e.detail + "\n").encode(), "text/plain")
            return
        status, doc = self.register(req, rr)
        if rr.followup and doc.get("AuthURL"):
            status, doc = await self._wait_for_approval(req, rr, status, doc)
        await resp.respond(
            status, tailcfg.json_bytes(doc) if status == 200 else doc["text"].encode(), _ctype(status)
        )

    async def _wait_for_approval(
        self, req: Request, rr: RegisterRequest, status: int, doc: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Holds a Followup request until an admin approves the node, as headscale does (§6.1).

        The client re-sends Followup when this answers with the same AuthURL
        again, after a back-off; holding it makes an approval take effect at once.
        """
        deadline = asyncio.get_running_loop().time() + FOLLOWUP_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(FOLLOWUP_POLL_S)
            node = self.state.node_by_node_key(rr.node_key)
            if node is None or node.machine_key != req.machine_key:
                break
            if node.authorized:
                return self.register(req, rr)
        return status, doc

    def register(self, req: Request, rr: RegisterRequest) -> tuple[int, dict[str, Any]]:
        """The answer as (HTTP status, RegisterResponse dict).

        State.register refuses a node key that belongs to another machine
        (the machine key is the one the Noise handshake proved, §5.6).
        """
        mk = req.machine_key
        result = self.state.register(
            mk,
            rr.node_key,
            rr.old_node_key,
            rr.auth_key,
            rr.hostinfo,
            requested_expiry_ms=rr.expiry_ms,
            followup=rr.followup,
            ephemeral=rr.ephemeral,
            capver=rr.version if rr.version > 1 else req.version,
        )
        hostname = rr.hostinfo.get("Hostname", "")
        if result.error:
            log.info(
                "register: %s (%r, machine %s) refused: %s",
                rr.node_key.short(),
                hostname,
                mk.short(),
                result.error,
            )
            return 200, {"Error": result.error}
        node = result.node
        if result.logged_out:
            log.info("register: %s (machine %s) logged out", rr.node_key.short(), mk.short())
            return 200, {"NodeKeyExpired": True, "MachineAuthorized": False, "AuthURL": ""}
        if node is None:
            return 200, {"Error": "registration failed"}
        doc = self._identity(node)
        if result.auth_url:
            log.info("register: node %d (%r) waits for approval at %s", node.id, hostname, result.auth_url)
            doc.update(NodeKeyExpired=False, MachineAuthorized=False, AuthURL=result.auth_url)
            return 200, doc
        expired = node.expiry_ms != 0 and node.expiry_ms <= self.now_ms()
        log.info(
            "register: %s node %d %s (%s, machine %s)%s",
            "new" if result.created else "known",
            node.id,
            node.fqdn,
            rr.node_key.short(),
            mk.short(),
            ", key expired" if expired else "",
        )
        doc["NodeKeyExpired"] = expired
        doc["MachineAuthorized"] = bool(node.authorized)
        doc["AuthURL"] = ""
        return 200, doc

    def _identity(self, node: Node) -> dict[str, Any]:
        """RegisterResponse.User and .Login: the node's owner (tagged nodes: "tagged-devices")."""
        user = self.state.owner(node)
        display = user.display_name or user.name
        return {
            "User": {"ID": user.id, "DisplayName": display, "Created": tailcfg.go_time(user.created_ms)},
            "Login": {"ID": user.id, "Provider": "", "LoginName": user.name, "DisplayName": display},
        }


def _ctype(status: int) -> str:
    return "application/json" if status == 200 else "text/plain; charset=utf-8"
