"""`meshlet-control`: admin commands on a temporary state directory, their --json shapes and one-line errors,
the serve settings and DERP map, the control key file, and `serve` itself with the embedded relay."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from meshlet.key import MachinePrivate, NodePrivate
from meshlet_control import cli, config
from meshlet_control.state import Change, State

KEY_RE = re.compile(r"^mlt-auth-[a-z0-9]{12}-[a-z0-9]{32}$")


@pytest.fixture
def sd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    d = str(tmp_path / "state")
    monkeypatch.setenv(config.STATE_DIR_ENV, d)
    return d


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshlet-control: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def add_node(sd: str, host: str, user: str = "alice", **kw: Any) -> int:
    """Registers a node the way the running server would, through State on the same file."""
    st = State(os.path.join(sd, config.DB_FILE), base_domain=None)
    u = st.user_by_name(user) or st.create_user(user)
    key = st.create_preauth_key(u, **kw)
    node = st.register(
        MachinePrivate.generate(os.urandom).public(),
        NodePrivate.generate(os.urandom).public(),
        None,
        key.key,
        {"Hostname": host, "OS": "linux"},
    ).node
    st.close()
    assert node is not None
    return node.id


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["serve", "--help"], ["keys", "create", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "examples:",
        "--state-dir",
        "--listen",
        "--server-url",
        "--derp-port",
        "--stun-port",
        "--qr",
        "--ephemeral-timeout",
        "MESHLET_CONTROL_STATE_DIR",
    ):
        assert word in out, word
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["nodes", "rename", "x", "y"])
    assert e.value.code == 2


def test_users(sd: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert ok(capsys, "users", "create", "alice") == "created user alice (id 1)\n"
    ok(capsys, "users", "create", "bob", "--state-dir", sd)
    assert [u["name"] for u in json.loads(ok(capsys, "users", "list", "--json"))] == ["alice", "bob"]
    assert set(json.loads(ok(capsys, "users", "list", "--json"))[0]) == {
        "id",
        "name",
        "display_name",
        "created",
        "created_ms",
    }
    table = ok(capsys, "users", "list").splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED"] and table[1].split()[:2] == ["1", "alice"]
    fails(capsys, ["users", "create", "alice"], "already exists", "users list")
    fails(capsys, ["users", "create", "Alice Smith"], "not allowed", "lowercase")


def test_keys(sd: str, capsys: pytest.CaptureFixture[str]) -> None:
    key = ok(capsys, "keys", "create").strip()
    assert KEY_RE.match(key)
    ok(capsys, "users", "create", "alice")
    made = json.loads(
        ok(
            capsys,
            "keys",
            "create",
            "--user",
            "alice",
            "--reusable",
            "--ephemeral",
            "--tag",
            "tag:ci",
            "--tag",
            "tag:web",
            "--expiry",
            "24h",
            "--json",
        )
    )
    assert KEY_RE.match(made["key"]) and made["prefix"] == made["key"][:21]
    assert (made["user"], made["reusable"], made["ephemeral"], made["tags"], made["used"]) == (
        "alice",
        True,
        True,
        ["tag:ci", "tag:web"],
        False,
    )
    assert made["expiry_ms"] - made["created_ms"] == 24 * 3_600_000 and made["enroll_uri"] is None
    listed = json.loads(ok(capsys, "keys", "list", "--json"))
    assert [k["user"] for k in listed] == ["default", "alice"]
    assert all("key" not in k for k in listed) and listed[1]["prefix"] == made["prefix"]
    assert len(json.loads(ok(capsys, "keys", "list", "--user", "alice", "--json"))) == 1
    assert "mlt-auth-" in ok(capsys, "keys", "list")
    assert "expired key %s" % made["prefix"] in ok(capsys, "keys", "expire", made["prefix"])
    assert json.loads(ok(capsys, "keys", "list", "--json"))[1]["expired"] is True
    ok(capsys, "keys", "expire", key)
    fails(capsys, ["keys", "expire", "mlt-auth-000000000000"], "no pre-auth key", "keys list")
    fails(capsys, ["keys", "create", "--user", "carol"], "no user 'carol'", "users create carol")
    fails(capsys, ["keys", "create", "--expiry", "soon"], "not a duration", "24h")
    fails(capsys, ["keys", "create", "--tag", "ci"], "tag:")
    assert json.loads(ok(capsys, "keys", "create", "--expiry", "0", "--json"))["expiry"] is None


def test_keys_create_qr_carries_the_enrollment_uri(sd: str, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["keys", "create", "--qr"], "--server-url", "serve")
    out = ok(capsys, "keys", "create", "--qr", "--server-url", "http://192.0.2.10:8080/")
    key = out.splitlines()[0]
    control, _ = config.load_or_create_control_key(sd)
    uri = "meshlet://enroll?server=http://192.0.2.10:8080&key=%s&authkey=%s" % (
        control.public().to_text(),
        key,
    )
    assert "enrollment URI: " + uri in out and "\u2588" in out  # the QR code, in block characters
    parts = urllib.parse.urlsplit(uri)
    assert parts.scheme == "meshlet" and parts.netloc == "enroll"
    assert urllib.parse.parse_qs(parts.query) == {
        "server": ["http://192.0.2.10:8080"],
        "key": [control.public().to_text()],
        "authkey": [key],
    }
    st = State(os.path.join(sd, config.DB_FILE))
    st.set_meta("server_url", "https://ctrl.example.com")  # what `serve` records
    st.close()
    made = json.loads(ok(capsys, "keys", "create", "--json"))
    assert made["enroll_uri"].startswith("meshlet://enroll?server=https://ctrl.example.com&key=mkey:")
    assert made["enroll_uri"].endswith("&authkey=" + made["key"])


def test_nodes(sd: str, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["nodes", "list"], "no database", "--state-dir")
    a = add_node(sd, "Pi 4")
    b = add_node(sd, "builder", user="bob", tags=["tag:ci"], ephemeral=True)
    nodes = json.loads(ok(capsys, "nodes", "list", "--json"))
    assert [n["hostname"] for n in nodes] == ["pi-4", "builder"]
    first = nodes[0]
    assert {
        "id",
        "hostname",
        "fqdn",
        "ipv4",
        "ipv6",
        "user",
        "online",
        "last_seen",
        "expiry",
        "tags",
        "status",
        "machine_key",
        "node_key",
        "ephemeral",
        "authorized",
    } <= set(first)
    assert (first["fqdn"], first["ipv4"], first["ipv6"], first["user"], first["online"], first["status"]) == (
        "pi-4.meshlet.internal.",
        "100.64.0.1",
        "fd7a:115c:a1e0::1",
        "alice",
        False,
        "offline",
    )
    assert nodes[1]["tags"] == ["tag:ci"] and nodes[1]["ephemeral"] and nodes[1]["expiry"] is None
    table = ok(capsys, "nodes", "list")
    assert (
        table.splitlines()[0].split()[:4] == ["ID", "NAME", "FQDN", "IPV4"]
        and "pi-4.meshlet.internal" in table
    )
    assert (
        ok(capsys, "nodes", "rename", str(a), "pi").strip()
        == "renamed node %d to pi (pi.meshlet.internal.)" % a
    )
    fails(capsys, ["nodes", "rename", str(b), "pi"], "taken by node %d" % a)
    fails(capsys, ["nodes", "rename", str(b), "no_way"], "not a valid node name")
    ok(capsys, "nodes", "expire", str(a))
    assert json.loads(ok(capsys, "nodes", "list", "--json"))[0]["status"] == "expired"
    ok(capsys, "nodes", "delete", str(b))
    assert [n["id"] for n in json.loads(ok(capsys, "nodes", "list", "--json"))] == [a]
    for cmd in ("rename", "expire", "delete", "approve"):
        fails(
            capsys,
            ["nodes", cmd, "99"] + (["x"] if cmd == "rename" else []),
            "no node with id 99",
            "nodes list",
        )


def test_nodes_approve(sd: str, capsys: pytest.CaptureFixture[str]) -> None:
    st = State(os.path.join(sd, config.DB_FILE), server_url="http://ctrl:8080")
    res = st.register(
        MachinePrivate.generate(os.urandom).public(),
        NodePrivate.generate(os.urandom).public(),
        None,
        None,
        {"Hostname": "kiosk"},
    )
    st.close()
    assert res.node is not None and res.auth_url == "http://ctrl:8080/register/%d" % res.node.id
    assert json.loads(ok(capsys, "nodes", "list", "--json"))[0]["status"] == "pending"
    ok(capsys, "users", "create", "carol")
    out = ok(capsys, "nodes", "approve", str(res.node.id), "--user", "carol")
    assert out.strip() == "approved node 1 (kiosk): 100.64.0.1, fd7a:115c:a1e0::1"
    node = json.loads(ok(capsys, "nodes", "list", "--json"))[0]
    assert (node["status"], node["user"]) == ("offline", "carol")
    fails(capsys, ["nodes", "approve", "1"], "already approved")


POLICY = """// the lab's policy
{
  "groups": {"group:admins": ["alice@"]},
  "acls": [
    {"action": "accept", "src": ["group:admins"], "dst": ["*:*"]},
    {"action": "accept", "src": ["carol@"], "dst": ["*:22"]},
  ],
}
"""


def test_policy(sd: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "acl.hujson"
    good.write_text(POLICY)
    assert ok(capsys, "policy", "check", str(good)).strip() == "%s: OK, 2 rules" % good  # no database needed
    add_node(sd, "pi")
    code, out, err = run(capsys, "policy", "check", str(good))
    assert code == 0 and "OK, 2 rules" in out and "warning" in err and "'carol' does not exist" in err
    bad = tmp_path / "bad.hujson"
    bad.write_text(POLICY.replace('group:admins"]', 'group:ops"]'))
    line = fails(
        capsys, ["policy", "check", str(bad)], "group 'group:ops' is not defined", 'add it to "groups"'
    )
    assert line.startswith("meshlet-control: %s: line 5, column 34: " % bad)
    fails(capsys, ["policy", "set", str(bad)], "line 5, column 34")
    fails(capsys, ["policy", "check", str(tmp_path / "missing")], "cannot read", "check the path")
    code, out, err = run(capsys, "policy", "get")
    assert (code, out) == (0, "") and "no policy is set" in err
    assert "policy set from" in ok(capsys, "policy", "set", str(good))
    assert ok(capsys, "policy", "get") == POLICY
    ok(capsys, "policy", "clear")
    assert run(capsys, "policy", "get")[1] == ""


def test_state_dir_flag_wins_over_the_environment(
    sd: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    other = str(tmp_path / "other")
    ok(capsys, "--state-dir", other, "users", "create", "alice")
    ok(capsys, "users", "create", "bob", "--state-dir", other)
    assert os.path.exists(os.path.join(other, config.DB_FILE)) and not os.path.exists(sd)
    assert len(json.loads(ok(capsys, "users", "list", "--json", "--state-dir", other))) == 2


# -- serve settings -----------------------------------------------------------------------


def test_serve_settings_defaults_toml_and_flags(tmp_path: Any) -> None:
    cfg = config.build_serve_config(cli.load_settings(["--state-dir", str(tmp_path)]))
    assert (cfg.listen_host, cfg.listen_port, cfg.server_url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert cfg.derp_map == {
        "omitDefaultRegions": True,
        "Regions": {
            "900": {
                "RegionID": 900,
                "RegionCode": "mlt",
                "RegionName": "meshlet",
                "Nodes": [
                    {
                        "Name": "900a",
                        "RegionID": 900,
                        "HostName": "127.0.0.1",
                        "IPv4": "127.0.0.1",
                        "IPv6": "none",
                        "DERPPort": 3340,
                        "STUNPort": 3478,
                        "InsecureForTests": True,
                    }
                ],
            }
        },
    }
    assert cfg.ephemeral_timeout_s == 1800 and cfg.map_keepalive_s == 60 and cfg.dns == []
    assert (
        cfg.derp is not None and cfg.derp.self_signed and cfg.derp.certfile.endswith("derp-tls-127.0.0.1.crt")
    )
    toml = tmp_path / "control.toml"
    toml.write_text(
        'listen = "0.0.0.0:9000"\nserver-url = "http://192.0.2.10:9000"\ndns = ["1.1.1.1"]\n'
        'ephemeral_timeout = "30s"\nderp_port = 4443\nstun_port = 0\n'
    )
    cfg = config.build_serve_config(
        cli.load_settings(
            [
                "--config",
                str(toml),
                "--dns",
                "9.9.9.9",
                "--dns",
                "8.8.8.8,1.0.0.1",
                "--derp-hostname",
                "derp.lab",
            ]
        )
    )
    assert (cfg.listen_host, cfg.listen_port, cfg.server_url) == ("0.0.0.0", 9000, "http://192.0.2.10:9000")
    assert cfg.dns == ["9.9.9.9", "8.8.8.8", "1.0.0.1"] and cfg.ephemeral_timeout_s == 30
    node = cfg.derp_map["Regions"]["900"]["Nodes"][0]
    assert (node["HostName"], node["DERPPort"], node["STUNPort"]) == (
        "derp.lab",
        4443,
        -1,
    ) and "IPv4" not in node
    plain = config.build_serve_config(cli.load_settings(["--derp-http", "--derp-region-id", "901"]))
    assert plain.derp_map["Regions"]["901"]["Nodes"][0]["InsecureForTests"] and not plain.derp.self_signed
    none = config.build_serve_config(cli.load_settings(["--derp", "none"]))
    assert none.derp is None and none.derp_map["Regions"] == {}


def test_serve_settings_errors_name_the_fix(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def bad(argv: list[str], *words: str) -> None:
        with pytest.raises(config.ConfigError) as e:
            config.build_serve_config(cli.load_settings(argv))
        for w in words:
            assert w in str(e.value), str(e.value)

    bad(["--listen", "0.0.0.0:8080"], "--server-url", "http://192.0.2.10:8080")
    bad(["--listen", "8080"], "HOST:PORT")
    bad(["--listen", "::1:8080"], "brackets")
    bad(["--server-url", "ftp://x"], "http(s)://HOST")
    bad(["--base-domain", "127.0.0.1"], "contains the server's own name")
    bad(["--base-domain", "home.local"], "mDNS")
    bad(["--ephemeral-timeout", "a while"], "not a duration")
    bad(["--dns", "one.one.one.one"], "not an IP address")
    bad(["--map-keepalive-s", "300"], "120 s")
    bad(["--derp-region-id", "5"], "900-999")
    bad(["--tls-cert", "x.pem"], "--tls-key")
    bad(["--tls-cert", "x.pem", "--tls-key", "y.pem"], "does not exist")
    toml = tmp_path / "c.toml"
    toml.write_text("lisen = 1\n")
    bad(["--config", str(toml)], "lisen", "known settings")
    toml.write_text('derp_port = "3340"\n')
    bad(["--config", str(toml)], "derp_port", "int")
    derpmap = tmp_path / "derp.json"
    derpmap.write_text(json.dumps({"Regions": {"900": {"RegionID": 900, "Nodes": []}}}))
    bad(["--derp-map-file", str(derpmap)], "--derp-region-id")
    derpmap.write_text(json.dumps({"Regions": {"901": {"RegionID": 902}}}))
    bad(["--derp-map-file", str(derpmap), "--derp", "none"], "RegionID")
    derpmap.write_text(json.dumps({"Regions": {"901": {"RegionID": 901, "Nodes": []}}}))
    cfg = config.build_serve_config(cli.load_settings(["--derp-map-file", str(derpmap)]))
    assert sorted(cfg.derp_map["Regions"]) == ["900", "901"]
    # and through main(): one line, exit 1
    assert cli.main(["serve", "--listen", "0.0.0.0:1", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_durations() -> None:
    assert [
        config.parse_duration_ms(t) for t in ("0", "90", "90s", "30m", "24h", "7d", "1h30m", "500ms")
    ] == [0, 90_000, 90_000, 1_800_000, 86_400_000, 604_800_000, 5_400_000, 500]
    for t in ("", "1y", "h", "1h 30m", "-1s"):
        with pytest.raises(config.ConfigError):
            config.parse_duration_ms(t)


def test_control_key_is_made_once_with_mode_0600(tmp_path: Any) -> None:
    d = str(tmp_path / "st")
    key, created = config.load_or_create_control_key(d)
    path = os.path.join(d, config.CONTROL_KEY_FILE)
    assert created and os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        assert f.read().startswith("privkey:")
    again, created = config.load_or_create_control_key(d)
    assert not created and again == key
    os.chmod(path, 0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        config.load_or_create_control_key(d)
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        f.write("garbage")
    with pytest.raises(config.ConfigError, match="move it away"):
        config.load_or_create_control_key(d)


# -- serve --------------------------------------------------------------------------------


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _http_get(port: int, path: str, tls: bool = False) -> bytes:
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            break
        except OSError:
            await asyncio.sleep(0.05)
    writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path.encode())
    data = await reader.read()
    writer.close()
    return data


def test_serve_runs_control_relay_and_housekeeping(tmp_path: Any) -> None:
    ports = _free_port(), _free_port(), _free_port(socket.SOCK_DGRAM)
    sd = str(tmp_path / "st")
    cfg = config.build_serve_config(
        cli.load_settings(
            [
                "--listen",
                "127.0.0.1:%d" % ports[0],
                "--derp-port",
                str(ports[1]),
                "--stun-port",
                str(ports[2]),
                "--state-dir",
                sd,
            ]
        )
    )
    key, _ = config.load_or_create_control_key(sd)
    state = cli.open_state(cfg)
    seen: list[Change] = []
    state.subscribe(seen.append)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(cli.serve(state, key, cfg, stop))
        body = (await _http_get(ports[0], "/key?v=130")).split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["publicKey"] == key.public().to_text()
        assert (await _http_get(ports[1], "/derp/probe", tls=True)).startswith(b"HTTP/1.1 200")
        admin = State(os.path.join(sd, config.DB_FILE), base_domain=None)  # an admin command, meanwhile
        admin.set_policy('{"acls": []}')
        admin.close()
        for _ in range(60):
            if seen:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(scenario())
    finally:
        state.close()
    assert [c.kind for c in seen] == ["policy_changed"]
    st = State(os.path.join(sd, config.DB_FILE), base_domain=None)
    assert (
        st.get_meta("server_url") == "http://127.0.0.1:%d" % ports[0] and st.base_domain == "meshlet.internal"
    )
    st.close()
    assert {
        "control.sqlite",
        "control_private.key",
        "derp-tls-127.0.0.1.crt",
        "derp-tls-127.0.0.1.key",
        "derp_server_private.key",
    } <= set(os.listdir(sd))


def test_python_m_meshlet_control() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshlet_control", "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.startswith("meshlet-control ")
