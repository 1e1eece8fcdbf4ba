"""The arguments of `meshlet up` as the local API carries them, checked, and what they turn into.

An enrollment code (`meshlet://enroll?...`) fills in the login server, pins
its key and supplies the auth key; `login_params` hands the result to the
ControlLoop.
"""

from typing import Any

from meshlet.key import MachinePublic

from . import localapi


class UpRequest:
    """The arguments of `up` (docs/agent-internals.md, the local API)."""

    def __init__(
        self,
        login_server: str = "",
        authkey: str = "",
        enroll_code: str = "",
        hostname: str = "",
        advertise_tags: "list[str] | None" = None,
        accept_dns: bool = True,
        ephemeral: bool = False,
        force_reauth: bool = False,
    ) -> None:
        self.login_server = login_server
        self.authkey = authkey
        self.enroll_code = enroll_code
        self.hostname = hostname
        self.advertise_tags = list(advertise_tags or [])
        self.accept_dns = accept_dns
        self.ephemeral = ephemeral
        self.force_reauth = force_reauth
        self.server_key: "MachinePublic | None" = None  # pinned by an enrollment code

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> "UpRequest":
        """Checks the JSON types; raises RequestError naming the bad field."""

        def text(name: str) -> str:
            v = req.get(name)
            if v is None:
                return ""
            if not isinstance(v, str):
                raise localapi.RequestError("up: %s must be a string" % name)
            return v

        def flag(name: str, default: bool) -> bool:
            v = req.get(name)
            if v is None:
                return default
            if not isinstance(v, bool):
                raise localapi.RequestError("up: %s must be true or false" % name)
            return v

        tags = req.get("advertise_tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise localapi.RequestError('up: advertise_tags must be a list of strings like "tag:server"')
        for t in tags:
            if not t.startswith("tag:") or len(t) <= 4:
                raise localapi.RequestError("up: %r is not a tag; tags look like tag:server" % t)
        return cls(
            login_server=text("login_server"),
            authkey=text("authkey"),
            enroll_code=text("enroll_code"),
            hostname=text("hostname"),
            advertise_tags=tags,
            accept_dns=flag("accept_dns", True),
            ephemeral=flag("ephemeral", False),
            force_reauth=flag("force_reauth", False),
        )


def apply_enroll_code(req: UpRequest) -> UpRequest:
    """`meshlet://enroll?server=…&key=mkey:…&authkey=…`: the login server, its pinned key, the auth key."""
    from meshlet.enroll import EnrollCodeError, parse

    try:
        code = parse(req.enroll_code)
    except EnrollCodeError as e:
        raise localapi.RequestError(
            "the enrollment code does not parse: %s; copy or scan it again" % (e.detail or e)
        ) from None
    if req.login_server and req.login_server.rstrip("/") != code.server:
        raise localapi.RequestError(
            "--login-server %s disagrees with the enrollment code's server %s; drop one of them"
            % (req.login_server, code.server)
        )
    req.login_server = code.server
    req.server_key = code.server_key
    req.authkey = req.authkey or code.auth_key or ""
    return req


def login_params(url: str, req: UpRequest, hostname: str, tags: list[str]) -> Any:
    from .controlloop import LoginParams

    return LoginParams(
        url,
        auth_key=req.authkey or None,
        server_key=req.server_key,
        hostname=hostname,
        tags=tags,
        ephemeral=req.ephemeral,
    )
