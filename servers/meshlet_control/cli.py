"""The `meshlet-control` command line: the server (`serve`) and headscale-style admin commands.

    meshlet-control serve [--config FILE.toml] [--listen HOST:PORT] [--server-url URL] [--derp embedded|none] ...
    meshlet-control users create NAME | users list [--json]
    meshlet-control keys create [--user U] [--reusable] [--ephemeral] [--tag tag:x]... [--expiry 1h] [--json] [--qr]
    meshlet-control keys list [--json] | keys expire KEY
    meshlet-control nodes list [--json] | rename ID NAME | expire ID | delete ID | approve ID [--user U]
    meshlet-control policy check FILE | set FILE | get | clear

Admin commands open the server's SQLite database in the state directory
(--state-dir, else $MESHLET_CONTROL_STATE_DIR, else /var/lib/meshlet-control)
directly, while the server runs; the server notices their changes within a
second (State.refresh) and pushes them to the nodes.

The parser is built by `build_parser()` alone, so documentation can render
`--help` without running anything. Every failure prints one line,
`meshlet-control:` followed by the problem and the fix, and exits non-zero:

    1  the operation failed (bad config, no such node, a policy error, port in use)
    2  the command line itself is wrong (argparse's convention)
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

from meshlet import __version__, enroll
from meshlet.key import MachinePrivate, MachinePublic
from meshlet_host.qr import print_terminal_qr

from . import config as config_mod
from .config import DB_FILE, ConfigError, ServeConfig, Settings
from .db import DatabaseError
from .policy import PolicyError, compile_policy, parse_policy
from .state import Node, PreAuthKey, State, StateError, User

log = logging.getLogger("meshlet_control")

HOUSEKEEPING_S = 1.0  # refresh() and tick() period: admin changes and ephemeral clean-up land within it

_EPILOG = """\
examples:
  meshlet-control serve --state-dir ./state        # a tailnet on 127.0.0.1:8080, DERP on :3340, STUN on :3478
  meshlet-control serve --listen 0.0.0.0:8080 --server-url http://192.0.2.10:8080 --state-dir ./state
  meshlet-control users create alice
  meshlet-control keys create --user alice --reusable --expiry 24h
  meshlet-control keys create --tag tag:server --ephemeral --qr   # a QR code with the enrollment URI
  meshlet-control nodes list
  meshlet-control nodes rename 3 printer
  meshlet-control policy check acl.hujson && meshlet-control policy set acl.hujson

Admin commands find the database with --state-dir (or MESHLET_CONTROL_STATE_DIR); the default is
/var/lib/meshlet-control. See docs/control.md.
"""

_SERVE_EPILOG = """\
examples:
  # everything on one machine: control on 127.0.0.1:8080, DERP (TLS, self-signed) on 3340, STUN on 3478
  meshlet-control serve --state-dir ./state

  # a LAN: listen everywhere, tell clients where to find us, push a resolver
  meshlet-control serve --listen 0.0.0.0:8080 --server-url http://192.0.2.10:8080 --dns 1.1.1.1

  # behind your own certificate; no embedded relay, regions from a file instead
  meshlet-control serve --listen 0.0.0.0:443 --server-url https://ctrl.example.com \\
      --tls-cert /etc/meshlet/fullchain.pem --tls-key /etc/meshlet/privkey.pem \\
      --derp none --derp-map-file /etc/meshlet/derpmap.json

Clients: tsnet/tailscale with --login-server (ControlURL) = the server URL and an auth key from
`meshlet-control keys create`. Settings can also come from a TOML file (--config) whose keys are the
flag names with underscores; flags override it. See docs/control.md.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole `meshlet-control` command line (used by main() and by the docs)."""
    state_dir = argparse.ArgumentParser(add_help=False)
    state_dir.add_argument(
        "--state-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="database and keys (default $%s or %s)"
        % (config_mod.STATE_DIR_ENV, config_mod.DEFAULT_STATE_DIR),
    )
    p = argparse.ArgumentParser(
        prog="meshlet-control",
        description="meshlet-control: a Tailscale-compatible coordination server with an embedded DERP relay.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[state_dir],
    )
    p.add_argument("--version", action="version", version="meshlet-control " + __version__)
    top = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(top, state_dir)
    _add_users(top, state_dir)
    _add_keys(top, state_dir)
    _add_nodes(top, state_dir)
    _add_policy(top, state_dir)
    return p


def _sub(
    group: Any, name: str, help_: str, parents: list[argparse.ArgumentParser], epilog: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        parents=parents,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _add_serve(top: Any, state_dir: argparse.ArgumentParser) -> None:
    s = _sub(
        top,
        "serve",
        "run the control server (and, by default, a DERP relay and STUN)",
        [state_dir],
        _SERVE_EPILOG,
    )
    S = argparse.SUPPRESS
    s.add_argument("--config", "-c", metavar="FILE.toml", default=S, help="read settings from a TOML file")
    g = s.add_argument_group("listening")
    g.add_argument("--listen", metavar="HOST:PORT", default=S, help="default %s" % config_mod.DEFAULT_LISTEN)
    g.add_argument(
        "--server-url",
        metavar="URL",
        default=S,
        help="the URL clients use (default http://LISTEN); needed with 0.0.0.0",
    )
    g.add_argument("--tls-cert", metavar="PEM", default=S, help="serve HTTPS with this certificate chain")
    g.add_argument("--tls-key", metavar="PEM", default=S, help="… and this private key")
    g = s.add_argument_group("tailnet")
    g.add_argument(
        "--base-domain", metavar="DOMAIN", default=S, help="MagicDNS suffix (default meshlet.internal)"
    )
    g.add_argument(
        "--dns",
        metavar="IP",
        action="append",
        default=S,
        help="nameserver pushed to nodes; repeat or comma-separate",
    )
    g.add_argument(
        "--no-magic-dns",
        dest="magic_dns",
        action="store_false",
        default=S,
        help="do not answer node names on the nodes",
    )
    g.add_argument(
        "--ephemeral-timeout",
        metavar="DURATION",
        default=S,
        help="delete ephemeral nodes offline this long (default 30m, as headscale)",
    )
    g.add_argument(
        "--node-key-expiry",
        metavar="DURATION",
        default=S,
        help="key lifetime of untagged nodes, e.g. 180d (default 0: never)",
    )
    g.add_argument(
        "--map-keepalive-s", type=float, metavar="S", default=S, help="map keep-alive interval (60)"
    )
    g = s.add_argument_group("DERP relay")
    g.add_argument("--derp", choices=("embedded", "none"), default=S, help="run a relay in-process (default)")
    g.add_argument(
        "--derp-port",
        type=int,
        metavar="PORT",
        default=S,
        help="relay TCP port (default %d)" % config_mod.DEFAULT_DERP_PORT,
    )
    g.add_argument(
        "--stun-port",
        type=int,
        metavar="PORT",
        default=S,
        help="STUN UDP port (default %d; 0: no STUN)" % config_mod.DEFAULT_STUN_PORT,
    )
    g.add_argument("--derp-region-id", type=int, metavar="ID", default=S, help="900-999 (default 900)")
    g.add_argument(
        "--derp-hostname", metavar="NAME", default=S, help="relay host for clients (default: URL host)"
    )
    g.add_argument(
        "--derp-http",
        action="store_true",
        default=S,
        help="plain-HTTP relay (clients need TS_DEBUG_USE_DERP_HTTP=1)",
    )
    g.add_argument(
        "--derp-map-file", metavar="FILE.json", default=S, help="more regions, as a tailcfg DERPMap"
    )
    g = s.add_argument_group("process")
    g.add_argument("--verbose", "-v", action="store_true", default=S, help="log debug lines too")
    g.add_argument("--json-logs", action="store_true", default=S, help="log one JSON object per line")


def _add_users(top: Any, state_dir: argparse.ArgumentParser) -> None:
    users = _sub(top, "users", "manage users", [])
    sub = users.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    c = _sub(sub, "create", "create a user", [state_dir], "example:\n  meshlet-control users create alice\n")
    c.add_argument("name", metavar="NAME", help="1-63 of a-z, 0-9, '.', '_', '-'")
    ls = _sub(sub, "list", "list users", [state_dir])
    ls.add_argument("--json", action="store_true", help="print JSON")


def _add_keys(top: Any, state_dir: argparse.ArgumentParser) -> None:
    keys = _sub(top, "keys", "manage pre-auth keys", [])
    sub = keys.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    c = _sub(
        sub,
        "create",
        "create a pre-auth key (shown once)",
        [state_dir],
        "examples:\n  meshlet-control keys create --user alice\n"
        "  meshlet-control keys create --reusable --ephemeral --tag tag:ci --expiry 24h --json\n"
        "  meshlet-control keys create --qr          # scan the enrollment URI\n"
        "\nA single-use key admits one machine; that machine may re-register with it on every restart.\n",
    )
    c.add_argument("--user", metavar="NAME", help='owner (default: the user "default", created if missing)')
    c.add_argument("--reusable", action="store_true", help="admit any number of machines")
    c.add_argument("--ephemeral", action="store_true", help="nodes are deleted once offline for a while")
    c.add_argument("--tag", metavar="tag:NAME", action="append", default=[], help="tag the nodes; repeatable")
    c.add_argument(
        "--expiry", metavar="DURATION", default="1h", help="key lifetime, e.g. 24h, 7d; 0 never (1h)"
    )
    c.add_argument("--json", action="store_true", help="print JSON (with the enrollment URI when known)")
    c.add_argument("--qr", action="store_true", help="print a QR code of the enrollment URI")
    c.add_argument(
        "--server-url", metavar="URL", help="control URL for the enrollment URI (default: serve's)"
    )
    ls = _sub(sub, "list", "list pre-auth keys (their public prefix only)", [state_dir])
    ls.add_argument("--user", metavar="NAME", help="only this user's keys")
    ls.add_argument("--json", action="store_true", help="print JSON")
    e = _sub(sub, "expire", "expire a key now (nodes it admitted stay)", [state_dir])
    e.add_argument("key", metavar="KEY", help="the key, its prefix mlt-auth-XXXXXXXXXXXX, or its id")


def _add_nodes(top: Any, state_dir: argparse.ArgumentParser) -> None:
    nodes = _sub(top, "nodes", "manage nodes", [])
    sub = nodes.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    ls = _sub(sub, "list", "list nodes", [state_dir])
    ls.add_argument("--json", action="store_true", help="print JSON")
    r = _sub(sub, "rename", "give a node another name", [state_dir])
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("name", metavar="NAME", help="a DNS label: 1-63 of a-z, 0-9 and '-'")
    for name, what in (
        ("expire", "expire a node's key now: it must log in again"),
        ("delete", "delete a node"),
    ):
        x = _sub(sub, name, what, [state_dir])
        x.add_argument("id", type=int, metavar="ID")
    a = _sub(sub, "approve", "admit a node waiting after an interactive login", [state_dir])
    a.add_argument("id", type=int, metavar="ID")
    a.add_argument("--user", metavar="NAME", help="give it to this user")


def _add_policy(top: Any, state_dir: argparse.ArgumentParser) -> None:
    pol = _sub(top, "policy", "check and set the ACL policy (Tailscale's HuJSON format)", [])
    sub = pol.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    c = _sub(sub, "check", "parse a policy file and compile it against the current nodes", [state_dir])
    c.add_argument("file", metavar="FILE")
    s = _sub(sub, "set", "check a policy file, then make it the tailnet's policy", [state_dir])
    s.add_argument("file", metavar="FILE")
    _sub(sub, "get", "print the current policy", [state_dir])
    _sub(sub, "clear", "remove the policy: everything is allowed again", [state_dir])


class CliError(Exception):
    """A failure to report as one `meshlet-control: ...` line with exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; that is not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CliError, ConfigError, StateError, DatabaseError, PolicyError) as e:
        print("meshlet-control: %s" % e, file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _cmd_serve(args)
    handler = _COMMANDS[(args.command, args.sub)]
    create = (args.command, args.sub) in (("users", "create"), ("keys", "create"), ("policy", "set"))
    if (args.command, args.sub) == ("policy", "check") and not os.path.exists(_db_path(args)):
        return _cmd_policy_check(args, None)
    state = _open(args, create)
    try:
        return handler(args, state)
    finally:
        state.close()


def _state_dir(args: argparse.Namespace) -> str:
    return str(
        getattr(args, "state_dir", "")
        or os.environ.get(config_mod.STATE_DIR_ENV)
        or config_mod.DEFAULT_STATE_DIR
    )


def _db_path(args: argparse.Namespace) -> str:
    return os.path.join(_state_dir(args), DB_FILE)


def _open(args: argparse.Namespace, create: bool) -> State:
    path = _db_path(args)
    if not create and not os.path.exists(path):
        raise CliError(
            "no database at %s; pass the server's --state-dir (or set %s), or start `meshlet-control "
            "serve --state-dir DIR` once" % (path, config_mod.STATE_DIR_ENV)
        )
    return State(path, base_domain=None)


# -- users -------------------------------------------------------------------------------


def _cmd_users_create(args: argparse.Namespace, state: State) -> int:
    user = state.create_user(args.name)
    print("created user %s (id %d)" % (user.name, user.id))
    return 0


def _cmd_users_list(args: argparse.Namespace, state: State) -> int:
    users = state.list_users()
    if args.json:
        _print_json(
            [
                {
                    "id": u.id,
                    "name": u.name,
                    "display_name": u.display_name,
                    "created": _iso(u.created_ms),
                    "created_ms": u.created_ms,
                }
                for u in users
            ]
        )
        return 0
    _table(["ID", "NAME", "CREATED"], [[str(u.id), u.name, _date(u.created_ms)] for u in users])
    return 0


def _user_arg(state: State, name: str | None) -> User | None:
    if name is None:
        return None
    user = state.user_by_name(name)
    if user is None:
        raise CliError("no user %r; create it with `meshlet-control users create %s`" % (name, name))
    return user


# -- keys --------------------------------------------------------------------------------


def _cmd_keys_create(args: argparse.Namespace, state: State) -> int:
    user = _user_arg(state, args.user) or state.default_user()
    lifetime_ms = config_mod.parse_duration_ms(args.expiry, "--expiry")
    now = int(time.time() * 1000)
    key = state.create_preauth_key(
        user,
        reusable=args.reusable,
        ephemeral=args.ephemeral,
        tags=args.tag,
        expiry_ms=now + lifetime_ms if lifetime_ms else 0,
    )
    uri = None
    if args.qr or args.json:
        uri = _enrollment_uri(args, state, key.key, required=args.qr)
    if args.json:
        obj = _key_json(key, user, now)
        obj["key"] = key.key
        obj["enroll_uri"] = uri
        _print_json(obj)
    else:
        print(key.key)
    if args.qr and uri is not None:
        out = sys.stderr if args.json else sys.stdout
        print_terminal_qr(uri, out)
        print("enrollment URI: %s" % uri, file=out)
    return 0


def enrollment_uri(server_url: str, control_public: str, auth_key: str) -> str:
    """`meshlet://enroll?server=<control URL>&key=<mkey:…>&authkey=<key>` (docs/control.md).

    Built by the core's `meshlet.enroll`, which the agent parses it with.
    """
    try:
        return enroll.build(server_url, MachinePublic.from_text(control_public), auth_key)
    except enroll.EnrollCodeError as e:
        raise CliError(
            "cannot make an enrollment URI for %r: %s; pass --server-url http(s)://HOST[:PORT]"
            % (server_url, e.detail)
        ) from None


def _enrollment_uri(args: argparse.Namespace, state: State, auth_key: str, required: bool) -> str | None:
    url = args.server_url or state.get_meta("server_url")
    if not url:
        if required:
            raise CliError(
                "the enrollment URI needs the server's URL and none is recorded yet; pass --server-url "
                "URL, or start `meshlet-control serve` once"
            )
        return None
    private: MachinePrivate
    private, _ = config_mod.load_or_create_control_key(_state_dir(args))
    return enrollment_uri(url.rstrip("/"), private.public().to_text(), auth_key)


def _key_json(k: PreAuthKey, user: User | None, now: int) -> dict[str, Any]:
    return {
        "id": k.id,
        "prefix": k.prefix,
        "user": user.name if user else None,
        "user_id": k.user_id,
        "reusable": k.reusable,
        "ephemeral": k.ephemeral,
        "tags": k.tags,
        "used": k.used,
        "expiry": _iso(k.expiry_ms),
        "expiry_ms": k.expiry_ms,
        "expired": k.is_expired(now),
        "created": _iso(k.created_ms),
        "created_ms": k.created_ms,
    }


def _cmd_keys_list(args: argparse.Namespace, state: State) -> int:
    now = int(time.time() * 1000)
    keys = state.list_preauth_keys(_user_arg(state, args.user))
    if args.json:
        _print_json([_key_json(k, state.get_user(k.user_id), now) for k in keys])
        return 0
    rows = []
    for k in keys:
        user = state.get_user(k.user_id)
        rows.append(
            [
                str(k.id),
                k.prefix,
                user.name if user else "?",
                _yes(k.reusable),
                _yes(k.ephemeral),
                _yes(k.used),
                "expired" if k.is_expired(now) else _expiry(k.expiry_ms),
                ",".join(k.tags),
            ]
        )
    _table(["ID", "PREFIX", "USER", "REUSABLE", "EPHEMERAL", "USED", "EXPIRES", "TAGS"], rows)
    return 0


def _cmd_keys_expire(args: argparse.Namespace, state: State) -> int:
    key = state.expire_preauth_key(args.key)
    print("expired key %s (id %d); nodes it admitted stay" % (key.prefix, key.id))
    return 0


# -- nodes -------------------------------------------------------------------------------


def _status(n: Node, now: int) -> str:
    if not n.authorized:
        return "pending"
    if n.is_expired(now):
        return "expired"
    return "online" if n.online else "offline"


def _node_json(n: Node, state: State, now: int) -> dict[str, Any]:
    user = state.get_user(n.user_id)
    return {
        "id": n.id,
        "stable_id": n.stable_id,
        "hostname": n.hostname,
        "fqdn": n.fqdn,
        "ipv4": n.ipv4 or None,
        "ipv6": n.ipv6 or None,
        "user": user.name if user else None,
        "user_id": n.user_id,
        "tags": n.tags,
        "online": n.online,
        "status": _status(n, now),
        "last_seen": _iso(n.last_seen_ms),
        "last_seen_ms": n.last_seen_ms,
        "expiry": _iso(n.expiry_ms),
        "expiry_ms": n.expiry_ms,
        "expired": n.is_expired(now),
        "ephemeral": n.ephemeral,
        "authorized": n.authorized,
        "machine_key": n.machine_key.to_text(),
        "node_key": n.node_key.to_text(),
        "disco_key": n.disco_key.to_text() if n.disco_key else None,
        "endpoints": n.endpoints,
        "home_derp": n.home_derp,
        "os": n.hostinfo.get("OS"),
        "reported_hostname": n.hostinfo.get("Hostname"),
        "created": _iso(n.created_ms),
        "created_ms": n.created_ms,
    }


def _cmd_nodes_list(args: argparse.Namespace, state: State) -> int:
    now = int(time.time() * 1000)
    nodes = state.list_nodes()
    if args.json:
        _print_json([_node_json(n, state, now) for n in nodes])
        return 0
    rows = []
    for n in nodes:
        user = state.get_user(n.user_id)
        seen = "now" if n.online else _ago(now, n.last_seen_ms)
        rows.append(
            [
                str(n.id),
                n.hostname,
                n.fqdn.rstrip("."),
                n.ipv4 or "-",
                n.ipv6 or "-",
                user.name if user else "?",
                _status(n, now),
                seen,
                _expiry(n.expiry_ms),
                ",".join(n.tags),
            ]
        )
    _table(["ID", "NAME", "FQDN", "IPV4", "IPV6", "USER", "STATUS", "LAST SEEN", "EXPIRES", "TAGS"], rows)
    return 0


def _cmd_nodes_rename(args: argparse.Namespace, state: State) -> int:
    n = state.rename_node(args.id, args.name)
    print("renamed node %d to %s (%s)" % (n.id, n.hostname, n.fqdn))
    return 0


def _cmd_nodes_expire(args: argparse.Namespace, state: State) -> int:
    n = state.expire_node(args.id)
    print("expired the key of node %d (%s); it has to log in again" % (n.id, n.hostname))
    return 0


def _cmd_nodes_delete(args: argparse.Namespace, state: State) -> int:
    n = state.delete_node(args.id)
    print("deleted node %d (%s)" % (n.id, n.hostname))
    return 0


def _cmd_nodes_approve(args: argparse.Namespace, state: State) -> int:
    n = state.approve_node(args.id, _user_arg(state, args.user))
    print("approved node %d (%s): %s, %s" % (n.id, n.hostname, n.ipv4, n.ipv6))
    return 0


# -- policy ------------------------------------------------------------------------------


def _read_policy(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CliError("cannot read %s: %s; check the path" % (path, e.strerror)) from None
    except UnicodeDecodeError:
        raise CliError("%s is not UTF-8 text; save the policy as UTF-8" % path) from None


def _checked(path: str, state: State | None) -> tuple[str, int]:
    text = _read_policy(path)
    try:
        pol = parse_policy(text)
    except PolicyError as e:
        raise CliError("%s: %s" % (path, e)) from None
    nodes = [n for n in state.list_nodes() if n.authorized and n.ipv4] if state else []
    compiled = compile_policy(pol, nodes, state.list_users() if state else [])
    for w in compiled.warnings:
        print("meshlet-control: warning: %s: %s" % (path, w), file=sys.stderr)
    return text, len(pol.acls or [])


def _cmd_policy_check(args: argparse.Namespace, state: State | None) -> int:
    _, rules = _checked(args.file, state)
    print("%s: OK, %d rules" % (args.file, rules))
    return 0


def _cmd_policy_set(args: argparse.Namespace, state: State) -> int:
    text, rules = _checked(args.file, state)
    state.set_policy(text)
    print("policy set from %s (%d rules); a running server applies it within a second" % (args.file, rules))
    return 0


def _cmd_policy_get(args: argparse.Namespace, state: State) -> int:
    text = state.get_policy()
    if text is None:
        print(
            "meshlet-control: no policy is set, so every node may reach every other; set one with "
            "`meshlet-control policy set FILE`",
            file=sys.stderr,
        )
        return 0
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_policy_clear(args: argparse.Namespace, state: State) -> int:
    state.clear_policy()
    print("policy removed: every node may reach every other")
    return 0


_COMMANDS: dict[tuple[str, str], Callable[[argparse.Namespace, State], int]] = {
    ("users", "create"): _cmd_users_create,
    ("users", "list"): _cmd_users_list,
    ("keys", "create"): _cmd_keys_create,
    ("keys", "list"): _cmd_keys_list,
    ("keys", "expire"): _cmd_keys_expire,
    ("nodes", "list"): _cmd_nodes_list,
    ("nodes", "rename"): _cmd_nodes_rename,
    ("nodes", "expire"): _cmd_nodes_expire,
    ("nodes", "delete"): _cmd_nodes_delete,
    ("nodes", "approve"): _cmd_nodes_approve,
    ("policy", "check"): _cmd_policy_check,
    ("policy", "set"): _cmd_policy_set,
    ("policy", "get"): _cmd_policy_get,
    ("policy", "clear"): _cmd_policy_clear,
}


# -- serve -------------------------------------------------------------------------------


def load_settings(argv: Sequence[str] | None) -> Settings:
    """`serve`'s settings: defaults, then --config, then flags (argv starts after `serve`)."""
    return _settings(build_parser().parse_args(["serve", *(argv or [])]))


def _settings(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k != "command"}
    path = given.pop("config", None)
    s = config_mod.load_toml(path) if path else Settings()
    if "dns" in given:
        given["dns"] = ",".join(given["dns"])
    for name, value in given.items():
        config_mod.apply(s, name, value, "--" + name.replace("_", "-"))
    return s


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cfg = config_mod.build_serve_config(settings)
    _setup_logging(settings.verbose, settings.json_logs)
    key, created = config_mod.load_or_create_control_key(cfg.state_dir)
    if created:
        log.info("control: generated a new control key in %s", cfg.state_dir)
    state = open_state(cfg)
    try:
        asyncio.run(serve(state, key, cfg))
    except OSError as e:
        raise CliError(_bind_error(e)) from None
    finally:
        state.close()
    return 0


def open_state(cfg: ServeConfig) -> State:
    """The State `serve` runs with; records the URL and domain for admin commands, marks everyone offline."""
    state = State(
        os.path.join(cfg.state_dir, DB_FILE),
        cfg.base_domain,
        ephemeral_timeout_ms=int(cfg.ephemeral_timeout_s * 1000),
        default_key_expiry_ms=int(cfg.node_key_expiry_s * 1000),
        server_url=cfg.server_url,
    )
    state.set_meta("server_url", cfg.server_url)
    state.set_meta("base_domain", cfg.base_domain)
    state.mark_all_offline()
    return state


async def serve(
    state: State, control_key: MachinePrivate, cfg: ServeConfig, stop: asyncio.Event | None = None
) -> None:
    """Runs the embedded relay, the protocol side (app.run) and housekeeping until `stop` (or a signal)."""
    try:
        from . import app
    except ImportError as e:
        raise CliError("the protocol side is missing (%s); reinstall meshlet" % e) from None
    relay = None
    if cfg.derp is not None:
        from .derp import start_embedded

        relay = await start_embedded(cfg.derp, cfg.state_dir)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    log.info(
        "control: server URL %s, base domain %s, %d DERP region(s)",
        cfg.server_url,
        cfg.base_domain,
        len(cfg.derp_map.get("Regions", {})),
    )
    main_task = asyncio.ensure_future(app.run(state, control_key, cfg))
    tasks = [main_task, asyncio.ensure_future(_housekeeping(state)), asyncio.ensure_future(stop.wait())]
    try:
        done, _ = await asyncio.wait({main_task, tasks[2]}, return_when=asyncio.FIRST_COMPLETED)
        if main_task in done:
            main_task.result()
        log.info("control: shutting down")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if relay is not None:
            await relay.close()


async def _housekeeping(state: State) -> None:
    """Picks up admin commands' changes and does the time-driven work (ephemeral clean-up, expiry)."""
    while True:
        try:
            state.refresh()
            state.tick()
        except Exception:  # noqa: BLE001 - keep serving; the next round may succeed
            log.exception("control: housekeeping failed")
        await asyncio.sleep(HOUSEKEEPING_S)


def _setup_logging(verbose: bool, json_logs: bool) -> None:
    from meshlet_derp import log as derp_log

    derp_log.setup(verbose, json_logs)
    ours = logging.getLogger("meshlet_control")
    ours.handlers[:] = logging.getLogger("meshlet_derp").handlers
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    ours.propagate = False


def _bind_error(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (
            "cannot listen: %s; another process has the port: pick another with --listen, --derp-port or "
            "--stun-port" % (e.strerror or e)
        )
    if e.errno == errno.EACCES:
        return "cannot listen: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
    if e.errno == errno.EADDRNOTAVAIL:
        return "cannot listen: %s; the --listen address is not on this machine" % (e.strerror or e)
    return "cannot start: %s" % e


# -- output ------------------------------------------------------------------------------


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in [headers] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def _iso(ms: int) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) if ms else "-"


def _expiry(ms: int) -> str:
    return "never" if not ms else _date(ms)


def _ago(now: int, ms: int) -> str:
    if not ms:
        return "never"
    s = max(0, (now - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return "%d%s ago" % (s // size, unit)
    return "%ds ago" % s


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
