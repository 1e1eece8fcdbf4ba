"""StateStore: keys made once, prefs kept, damaged files named with their fix, netmap writes spared."""

import json
import os
import stat
from pathlib import Path

import pytest

from meshlet.control.netmap import NetMap
from meshlet.key import MachinePublic
from meshlet_agent.statestore import NETMAP_FILE, STATE_FILE, StateFileError, StateStore
from meshlet_testing.rand import FakeRandom


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _netmap(
    store: StateStore, peers: int = 1, online: bool = True, endpoint: str = "192.0.2.1:41641"
) -> NetMap:
    assert store.node_key is not None
    me = {"ID": 1, "Key": store.node_key.public().to_text(), "Name": "me.meshlet.internal.",
          "Addresses": ["100.64.0.1/32"], "Hostinfo": {"Hostname": "me", "NetInfo": {"PreferredDERP": 900}},
          "MachineAuthorized": True}  # fmt: skip
    nodes = [
        {"ID": 10 + i, "Key": "nodekey:%064x" % (10 + i), "Name": "p%d.meshlet.internal." % i,
         "Addresses": ["100.64.0.%d/32" % (10 + i)], "Endpoints": [endpoint], "Online": online, "HomeDERP": 900}
        for i in range(peers)
    ]  # fmt: skip
    nm = NetMap()
    nm.apply({"Node": me, "Peers": nodes, "PacketFilter": [{"SrcIPs": ["*"]}], "Domain": "meshlet.internal"})
    return nm


def test_a_new_directory_gets_a_machine_key_once(tmp_path: Path) -> None:
    d = tmp_path / "state"
    store = StateStore(str(d))
    assert _mode(d) == 0o700 and _mode(d / STATE_FILE) == 0o600
    assert store.node_key is None and not store.registered and store.old_node_key is None
    again = StateStore(str(d))
    assert again.machine_key == store.machine_key


def test_keys_come_from_the_injected_randomness(tmp_path: Path) -> None:
    a = StateStore(str(tmp_path / "a"), FakeRandom(1))
    b = StateStore(str(tmp_path / "b"), FakeRandom(1))
    assert a.machine_key == b.machine_key
    assert a.new_node_key() == b.new_node_key()


def test_node_key_life_renewal_and_logout(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    first = store.new_node_key()
    assert store.old_node_key is None and not store.registered  # nothing registered to replace
    store.node_key_accepted()
    second = store.new_node_key()
    assert store.old_node_key == first and store.node_key == second and not store.registered
    back = StateStore(str(tmp_path))
    assert back.node_key == second and back.old_node_key == first and not back.registered
    store.keep_old_node_key()
    assert store.node_key == first and store.old_node_key is None and store.registered
    store.new_node_key()
    store.node_key_accepted()
    assert store.old_node_key is None and store.registered
    store.save_netmap(_netmap(store))
    store.forget_login()
    back = StateStore(str(tmp_path))
    assert back.node_key is None and not back.registered and back.prefs.logged_out
    assert back.machine_key == store.machine_key and not (tmp_path / NETMAP_FILE).exists()


def test_prefs_are_kept(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    p = store.prefs
    p.control_url, p.server_key, p.hostname = "https://ctrl.example.com", "mkey:" + "ab" * 32, "pi"
    p.advertise_tags, p.want_running, p.accept_dns, p.ephemeral = ["tag:server"], True, False, True
    store.save()
    assert StateStore(str(tmp_path)).prefs == p


@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "Expecting"),
        ("[]", "not a JSON object"),
        ('{"version": 7}', "unknown version"),
        ('{"version": 1}', "machine_key is missing"),
        ('{"version": 1, "machine_key": "privkey:zz"}', "privkey:"),
        (
            '{"version": 1, "machine_key": "privkey:%s", "prefs": {"hostname": 3}}' % ("11" * 32),
            "prefs.hostname",
        ),
        (
            '{"version": 1, "machine_key": "privkey:%s", "prefs": {"server_key": "mkey:1"}}' % ("11" * 32),
            "mkey:",
        ),
    ],
)
def test_a_damaged_state_file_is_an_error_naming_the_file_and_the_fix(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / STATE_FILE
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(StateFileError) as e:
        StateStore(str(tmp_path))
    msg = str(e.value)
    assert str(path) in msg and "move it aside" in msg and why in msg, msg
    assert path.read_text() == text, "never regenerated behind the user's back"


def test_a_state_file_others_can_read_is_refused(tmp_path: Path) -> None:
    StateStore(str(tmp_path))
    (tmp_path / STATE_FILE).chmod(0o644)
    with pytest.raises(StateFileError, match="chmod 600"):
        StateStore(str(tmp_path))


def test_the_netmap_round_trips_through_the_cache(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.new_node_key()
    nm = _netmap(store, peers=3)
    assert store.save_netmap(nm)
    assert _mode(tmp_path / NETMAP_FILE) == 0o600
    assert StateStore(str(tmp_path)).load_netmap() == nm


def test_volatile_changes_do_not_rewrite_the_netmap(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.new_node_key()
    assert store.save_netmap(_netmap(store))
    assert not store.save_netmap(_netmap(store, online=False, endpoint="198.51.100.7:1"))
    nm = _netmap(store)
    assert nm.self_node is not None
    nm.self_node.hostinfo["NetInfo"] = {"PreferredDERP": 901, "DERPLatency": {"901-v4": 0.01}}
    assert not store.save_netmap(nm)
    assert store.save_netmap(_netmap(store, peers=2)), "a new peer is worth a write"
    assert not store.save_netmap(_netmap(store, peers=2))
    assert store.save_netmap(_netmap(store, peers=2), force=True)
    reopened = StateStore(str(tmp_path))
    assert reopened.load_netmap() is not None
    assert not reopened.save_netmap(_netmap(store, peers=2, online=False)), "the digest survives a restart"


def test_a_netmap_of_another_node_key_or_damaged_is_ignored(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.new_node_key()
    store.save_netmap(_netmap(store))
    store.new_node_key()
    assert store.load_netmap() is None
    (tmp_path / NETMAP_FILE).write_text('{"Peers": 1}')
    assert store.load_netmap() is None
    (tmp_path / NETMAP_FILE).write_bytes(b"\xff\x00")
    assert store.load_netmap() is None
    store.clear_netmap()
    store.clear_netmap()
    assert store.load_netmap() is None


def test_the_state_file_is_json_with_privkeys(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.new_node_key()
    store.prefs.server_key = MachinePublic.zero().to_text()
    store.save()
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    assert (
        doc["version"] == 1
        and doc["machine_key"].startswith("privkey:")
        and doc["node_key"].startswith("privkey:")
    )
    assert doc["registered"] is False and doc["prefs"]["server_key"].startswith("mkey:")
