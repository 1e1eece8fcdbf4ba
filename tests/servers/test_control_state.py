"""State: registration semantics (headscale's, control.md §6.3), names, addresses, expiry, ephemeral
clean-up, change notifications, and admin changes made by another process."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import pytest

from meshlet.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate, NodePublic
from meshlet_control import db as db_mod
from meshlet_control import ipalloc, names
from meshlet_control.state import TAGGED_DEVICES, Change, State, StateError

T0 = 1_764_496_800_000  # 2025-11-30T10:00:00Z
HOUR = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def machine() -> MachinePublic:
    return MachinePrivate.generate(os.urandom).public()


def nodekey() -> NodePublic:
    return NodePrivate.generate(os.urandom).public()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Any) -> str:
    return str(tmp_path / "state" / "control.sqlite")


@pytest.fixture
def st(path: str, clock: Clock) -> Any:
    s = State(path, now_ms=clock, ephemeral_timeout_ms=30_000, server_url="http://ctrl:8080")
    yield s
    s.close()


def events(st: State) -> list[Change]:
    out: list[Change] = []
    st.subscribe(out.append)
    return out


def join(st: State, key: str, host: str = "pi", **kw: Any) -> Any:
    return st.register(machine(), nodekey(), None, key, {"Hostname": host}, **kw)


# -- pre-auth keys --------------------------------------------------------------------


def test_single_use_key_admits_one_machine_and_every_restart_of_it(st: State) -> None:
    alice = st.create_user("alice")
    key = st.create_preauth_key(alice)
    assert key.key.startswith("mlt-auth-") and len(key.key) == 9 + 12 + 1 + 32
    m, nk = machine(), nodekey()
    first = st.register(m, nk, None, key.key, {"Hostname": "pi"})
    assert first.error is None and first.created and first.auth_url is None
    assert first.node is not None and first.node.authorized and first.node.user_id == alice.id
    for _ in range(3):  # tsnet registers again, with the same key, on every start
        again = st.register(m, nk, None, key.key, {"Hostname": "pi"})
        assert again.error is None and not again.created
        assert (
            again.node is not None and again.node.id == first.node.id and again.node.ipv4 == first.node.ipv4
        )
    second = st.register(machine(), nodekey(), None, key.key, {"Hostname": "other"})
    assert (second.node, second.error) == (None, "authkey already used")
    assert [k.used for k in st.list_preauth_keys()] == [True]
    assert len(st.list_nodes()) == 1


def test_restart_survives_an_expired_key_but_new_machines_do_not(st: State, clock: Clock) -> None:
    key = st.create_preauth_key(st.create_user("alice"), expiry_ms=T0 + HOUR)
    m, nk = machine(), nodekey()
    assert st.register(m, nk, None, key.key, {}).error is None
    clock.now += 2 * HOUR
    assert st.register(m, nk, None, key.key, {}).error is None
    assert st.register(machine(), nodekey(), None, key.key, {}).error == "authkey expired"


def test_reusable_key_admits_many_machines(st: State) -> None:
    key = st.create_preauth_key(st.create_user("alice"), reusable=True)
    results = [join(st, key.key, "web") for _ in range(5)]
    assert all(r.error is None and r.created for r in results)
    assert [n.hostname for n in st.list_nodes()] == ["web", "web-1", "web-2", "web-3", "web-4"]
    assert st.list_preauth_keys()[0].used is False


@pytest.mark.parametrize(
    "text", ["nonsense", "tskey-auth-abc", "mlt-auth-aaaaaaaaaaaa", "mlt-auth-" + "a" * 12 + "-" + "b" * 32]
)
def test_unknown_or_tampered_keys_are_invalid(st: State, text: str) -> None:
    real = st.create_preauth_key(st.create_user("alice"))
    assert join(st, text).error == "invalid authkey"
    tampered = real.key[:-1] + ("a" if real.key[-1] != "a" else "b")
    assert join(st, tampered).error == "invalid authkey"


def test_keys_are_stored_only_as_hashes(st: State, path: str) -> None:
    key = st.create_preauth_key(st.create_user("alice"))
    st.db.conn.execute("PRAGMA wal_checkpoint(FULL)")
    with open(path, "rb") as f:
        raw = f.read()
    assert key.key.encode() not in raw and key.prefix.encode() in raw
    listed = st.list_preauth_keys()[0]
    assert listed.key == key.prefix + "-***" and listed.prefix == key.prefix


def test_expire_key_by_id_prefix_or_whole_key(st: State, clock: Clock) -> None:
    alice = st.create_user("alice")
    keys = [st.create_preauth_key(alice, reusable=True) for _ in range(3)]
    for ref in (str(keys[0].id), keys[1].prefix, keys[2].key):
        assert st.expire_preauth_key(ref).expiry_ms == clock.now
    assert join(st, keys[0].key).error == "authkey expired"
    with pytest.raises(StateError, match="keys list"):
        st.expire_preauth_key("mlt-auth-zzzzzzzzzzzz")


def test_key_tags_are_checked(st: State) -> None:
    alice = st.create_user("alice")
    with pytest.raises(StateError, match="tag:server"):
        st.create_preauth_key(alice, tags=["server"])
    st.set_policy('{"tagOwners": {"tag:server": ["alice@"]}, "acls": []}')
    with pytest.raises(StateError, match="tagOwners"):
        st.create_preauth_key(alice, tags=["tag:db"])
    assert st.create_preauth_key(alice, tags=["tag:server"]).tags == ["tag:server"]


# -- expiry, tags, logout -------------------------------------------------------------


def test_tagged_nodes_never_expire_and_belong_to_their_tags(path: str, clock: Clock) -> None:
    st = State(path, now_ms=clock, default_key_expiry_ms=180 * 24 * HOUR)
    alice = st.create_user("alice")
    plain = join(st, st.create_preauth_key(alice).key, "laptop").node
    tagged = join(st, st.create_preauth_key(alice, tags=["tag:ci"]).key, "runner").node
    asked = join(st, st.create_preauth_key(alice).key, "short", requested_expiry_ms=T0 + HOUR).node
    assert plain.expiry_ms == T0 + 180 * 24 * HOUR and not plain.tags
    assert tagged.expiry_ms == 0 and tagged.tags == ["tag:ci"]
    assert asked.expiry_ms == T0 + HOUR
    assert st.owner(tagged) == TAGGED_DEVICES and st.owner(plain) == alice
    st.close()


def test_zero_default_expiry_means_never(st: State) -> None:
    assert join(st, st.create_preauth_key(st.create_user("a")).key).node.expiry_ms == 0


def test_expired_node_learns_it_on_restart_and_a_spent_key_cannot_renew_it(st: State, clock: Clock) -> None:
    key = st.create_preauth_key(st.create_user("alice"))
    m, nk = machine(), nodekey()
    node = st.register(m, nk, None, key.key, {}).node
    st.expire_node(node.id)
    clock.now += 1
    restart = st.register(m, nk, None, None, {})
    assert restart.node is not None and restart.node.is_expired(clock.now) and restart.error is None
    # the client rotates its node key after expiry; the single-use key is spent by now
    assert st.register(m, nodekey(), nk, key.key, {}).error == "authkey already used"
    fresh = st.create_preauth_key(st.get_user(node.user_id))
    renewed = st.register(m, nodekey(), nk, fresh.key, {}).node
    assert renewed.id == node.id and renewed.ipv4 == node.ipv4 and not renewed.is_expired(clock.now)


def test_logout_expires_the_node_and_deletes_an_ephemeral_one(st: State, clock: Clock) -> None:
    alice = st.create_user("alice")
    seen = events(st)
    m1, nk1 = machine(), nodekey()
    st.register(m1, nk1, None, st.create_preauth_key(alice).key, {})
    m2, nk2 = machine(), nodekey()
    eph = st.register(m2, nk2, None, st.create_preauth_key(alice, ephemeral=True).key, {}).node
    out = st.register(m1, nk1, None, None, {}, requested_expiry_ms=123_000)  # the client's logout: Unix 123
    assert out.logged_out and out.node is not None and out.node.expiry_ms == clock.now
    gone = st.register(m2, nk2, None, "anything", {}, requested_expiry_ms=123_000)
    assert gone.logged_out and st.get_node(eph.id) is None
    assert (seen[-1].kind, seen[-1].node_id) == ("node_removed", eph.id)
    thief = st.register(machine(), nk1, None, None, {}, requested_expiry_ms=123_000)
    assert thief.error is not None and not thief.logged_out


# -- node keys ------------------------------------------------------------------------


def test_node_key_rotation(st: State, clock: Clock) -> None:
    alice = st.create_user("alice")
    reusable = st.create_preauth_key(alice, reusable=True)
    m, nk = machine(), nodekey()
    node = st.register(m, nk, None, reusable.key, {}).node
    seen = events(st)
    nk2 = nodekey()
    rotated = st.register(m, nk2, nk, reusable.key, {}).node  # with a valid key: updated in place
    assert rotated.id == node.id and rotated.node_key == nk2 and st.node_by_node_key(nk) is None
    assert seen[-1].kind == "node_changed" and seen[-1].fields["node_key"] == nk2
    nk3 = nodekey()
    seamless = st.register(m, nk3, nk2, None, {})  # no key: seamless renewal of a live node
    assert seamless.auth_url is None and seamless.node.node_key == nk3
    assert st.node_by_node_key(nk3).id == node.id


def test_a_node_key_of_another_machine_is_refused(st: State) -> None:
    key = st.create_preauth_key(st.create_user("alice"), reusable=True)
    nk = nodekey()
    assert st.register(machine(), nk, None, key.key, {}).error is None
    assert st.register(machine(), nk, None, key.key, {}).error == "node key already in use by another machine"


def test_a_machine_moves_to_the_user_whose_key_it_presents(st: State) -> None:
    alice, bob = st.create_user("alice"), st.create_user("bob")
    m = machine()
    first = st.register(m, nodekey(), None, st.create_preauth_key(alice).key, {"Hostname": "box"}).node
    moved = st.register(m, nodekey(), None, st.create_preauth_key(bob).key, {"Hostname": "box"}).node
    assert (moved.id, moved.user_id, moved.hostname, moved.ipv4) == (first.id, bob.id, "box", first.ipv4)


# -- interactive registration ----------------------------------------------------------


def test_interactive_registration_waits_for_approval(st: State, clock: Clock) -> None:
    seen = events(st)
    m, nk = machine(), nodekey()
    res = st.register(m, nk, None, None, {"Hostname": "kiosk"})
    node = res.node
    assert res.auth_url == "http://ctrl:8080/register/%d" % node.id and res.created
    assert not node.authorized and node.ipv4 == "" and node.addresses == [] and seen == []
    again = st.register(m, nk, None, None, {"Hostname": "kiosk"}, followup=res.auth_url)
    assert again.auth_url == res.auth_url and not again.node.authorized
    approved = st.approve_node(node.id, st.create_user("carol"))
    assert (
        approved.authorized
        and approved.ipv4 == "100.64.0.1"
        and approved.user_id == st.user_by_name("carol").id
    )
    assert [(c.kind, c.node_id) for c in seen] == [("node_added", node.id)]
    done = st.register(m, nk, None, None, {}, followup=res.auth_url)
    assert done.auth_url is None and done.node.authorized
    with pytest.raises(StateError, match="already approved"):
        st.approve_node(node.id)


def test_unapproved_registrations_are_dropped_after_a_while(st: State, clock: Clock) -> None:
    node = st.register(machine(), nodekey(), None, None, {}).node
    clock.now += st.pending_timeout_ms
    assert st.tick() == [] and st.get_node(node.id) is None


def test_known_machine_with_a_new_node_key_and_no_auth_goes_back_to_pending(st: State) -> None:
    key = st.create_preauth_key(st.create_user("alice"))
    m = machine()
    node = st.register(m, nodekey(), None, key.key, {}).node
    seen = events(st)
    res = st.register(m, nodekey(), None, None, {})
    assert res.auth_url and not res.node.authorized and res.node.ipv4 == node.ipv4
    assert [(c.kind, c.fields) for c in seen] == [("node_removed", {"authorized": False})]
    assert st.visible_peers(node.id) == [] and not st.may_see(node.id, node.id)


# -- ephemeral nodes ------------------------------------------------------------------


def test_ephemeral_node_is_deleted_after_the_offline_timeout(st: State, clock: Clock) -> None:
    key = st.create_preauth_key(st.create_user("alice"), reusable=True, ephemeral=True)
    node = join(st, key.key).node
    assert node.ephemeral
    st.set_online(node.id, True)
    clock.now += HOUR
    assert st.tick() == []  # online: never collected
    st.set_online(node.id, False)
    clock.now += 29_999
    assert st.tick() == [] and st.get_node(node.id) is not None
    assert st.next_deadline_ms() == clock.now + 1
    clock.now += 1
    assert [(c.kind, c.node_id) for c in st.tick()] == [("node_removed", node.id)]
    assert st.get_node(node.id) is None and st.list_nodes() == []


def test_ephemeral_request_flag_and_never_connected_nodes(st: State, clock: Clock) -> None:
    key = st.create_preauth_key(st.create_user("alice"))
    node = join(st, key.key, ephemeral=True).node  # tsnet's Ephemeral option, with an ordinary key
    assert node.ephemeral
    clock.now += 30_000
    assert [c.kind for c in st.tick()] == ["node_removed"]


def test_reconnecting_in_time_keeps_an_ephemeral_node(st: State, clock: Clock) -> None:
    node = join(st, st.create_preauth_key(st.create_user("a"), ephemeral=True).key).node
    st.set_online(node.id, True)
    st.set_online(node.id, False)
    clock.now += 20_000
    st.set_online(node.id, True)
    clock.now += 60_000
    assert st.tick() == [] and st.get_node(node.id) is not None


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostname,label",
    [
        ("pi4", "pi4"),
        ("My Laptop.local", "my-laptop"),
        ("web.example.com", "web-example-com"),
        ("nas.lan", "nas"),
        ("UPPER_case__name", "upper-case-name"),
        ("--x--", "x"),
        ("Über Höst!!", "ber-h-st"),
        ("a" * 80, "a" * 63),
        ("a" * 62 + "-b", "a" * 62),
        ("", "node-00010203"),
        ("!!!", "node-00010203"),
    ],
)
def test_hostnames_are_sanitised(hostname: str, label: str) -> None:
    assert names.sanitize_hostname(hostname, bytes(range(32)).hex()) == label
    assert names.valid_label(label)


def test_names_are_unique_and_stable(st: State) -> None:
    key = st.create_preauth_key(st.create_user("alice"), reusable=True)
    long = "x" * 70
    made = [join(st, key.key, h).node for h in ("web", "Web", "web", long, long)]
    assert [n.hostname for n in made[:3]] == ["web", "web-1", "web-2"]
    assert made[3].hostname == "x" * 63 and made[4].hostname == "x" * 61 + "-1"
    assert made[0].fqdn == "web.meshlet.internal."
    seen = events(st)
    st.rename_node(made[1].id, "Printer")
    assert seen[-1].fields == {"name": "printer.meshlet.internal."}
    with pytest.raises(StateError, match="taken by node %d" % made[0].id):
        st.rename_node(made[2].id, "web")
    with pytest.raises(StateError, match="not a valid node name"):
        st.rename_node(made[2].id, "-bad-")
    # a later hostname change reported by the client does not rename the node
    st.update_from_map_request(made[0].id, None, None, {"Hostname": "elsewhere"}, None)
    assert st.get_node(made[0].id).hostname == "web"


def test_base_domain_is_checked(path: str) -> None:
    with pytest.raises(StateError, match="mDNS"):
        State(path, base_domain="corp.local")
    st = State(path, base_domain="Tail.Example.")
    assert st.base_domain == "tail.example"
    st.close()


# -- addresses ------------------------------------------------------------------------


def test_addresses_are_sequential_unique_and_survive_a_restart(path: str, clock: Clock) -> None:
    st = State(path, now_ms=clock)
    key = st.create_preauth_key(st.create_user("alice"), reusable=True)
    nodes = [join(st, key.key).node for _ in range(3)]
    assert [(n.ipv4, n.ipv6) for n in nodes] == [
        ("100.64.0.%d" % i, "fd7a:115c:a1e0::%d" % i) for i in (1, 2, 3)
    ]
    assert nodes[0].addresses == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    st.delete_node(nodes[1].id)
    assert join(st, key.key).node.ipv4 == "100.64.0.4"  # no reuse within a run
    st.close()
    st = State(path, now_ms=clock)
    assert {n.ipv4 for n in st.list_nodes()} == {"100.64.0.1", "100.64.0.3", "100.64.0.4"}
    assert join(st, key.key).node.ipv4 == "100.64.0.2"  # after a restart, the first free one (headscale)
    more = [join(st, key.key).node for _ in range(200)]
    all_nodes = st.list_nodes()
    assert len({n.ipv4 for n in all_nodes}) == len({n.ipv6 for n in all_nodes}) == len(all_nodes) == 204
    assert more[-1].ipv4 == "100.64.0.204"
    st.close()


def test_the_allocator_skips_reserved_addresses_and_wraps() -> None:
    a = ipalloc.IPAllocator()
    a.v4.cursor = int(ipalloc.ipaddress.IPv4Address("100.100.100.98"))
    a.v6.cursor = int(ipalloc.ipaddress.IPv6Address("fd7a:115c:a1e0::51"))
    assert a.allocate() == ("100.100.100.99", "fd7a:115c:a1e0::52")
    assert a.allocate() == ("100.100.100.101", "fd7a:115c:a1e0::54")  # quad-100 in both families
    a.v4.cursor = int(ipalloc.ipaddress.IPv4Address("100.115.91.254"))
    assert a.allocate()[0] == "100.115.91.255"
    assert a.allocate()[0] == "100.115.94.0"  # 100.115.92.0/23, ChromeOS
    small = ipalloc.IPAllocator(
        v4=ipalloc.ipaddress.ip_network("10.0.0.0/30"), v6=ipalloc.ipaddress.ip_network("fd00::/126")
    )
    assert small.allocate() == ("10.0.0.1", "fd00::1")
    assert small.allocate() == ("10.0.0.2", "fd00::2")
    small.release("10.0.0.1")
    small.release("fd00::1")
    assert small.allocate() == ("10.0.0.1", "fd00::1")  # wrapped around
    with pytest.raises(ipalloc.AddressesExhausted):
        small.allocate()


# -- the map long-poll's updates and notifications ------------------------------------


def test_change_notifications(st: State, clock: Clock) -> None:
    key = st.create_preauth_key(st.create_user("alice"), reusable=True)
    seen = events(st)
    node = join(st, key.key).node
    assert seen[-1] == Change("node_added", node.id)
    disco = DiscoPrivate.generate(os.urandom).public()
    info = {"Hostname": "pi", "NetInfo": {"PreferredDERP": 900}}
    c = st.update_from_map_request(node.id, disco, ["192.0.2.1:41641"], info, None)
    assert c is not None and c.kind == "node_changed" and c is seen[-1]
    assert c.fields == {
        "disco_key": disco,
        "endpoints": ["192.0.2.1:41641"],
        "hostinfo": info,
        "home_derp": 900,
    }
    assert st.update_from_map_request(node.id, disco, ["192.0.2.1:41641"], info, None) is None  # nothing new
    c = st.update_from_map_request(node.id, None, None, {"Hostname": "pi", "OS": "linux"}, None)
    assert c.fields == {"hostinfo": {"Hostname": "pi", "OS": "linux", "NetInfo": {"PreferredDERP": 900}}}
    assert st.update_from_map_request(node.id, None, None, None, 901).fields == {"home_derp": 901}
    clock.now += 5
    assert st.set_online(node.id, True).fields == {"online": True, "last_seen": T0 + 5}
    assert st.set_online(node.id, True) is None
    st.rename_node(node.id, "pi5")
    st.expire_node(node.id)
    st.set_policy('{"acls": []}')
    st.delete_node(node.id)
    assert [(c.kind, sorted(c.fields)) for c in seen[-4:]] == [
        ("node_changed", ["name"]),
        ("node_changed", ["expired", "expiry"]),
        ("policy_changed", []),
        ("node_removed", []),
    ]
    assert st.update_from_map_request(node.id, None, [], None, None) is None  # gone


def test_a_failing_subscriber_does_not_stop_the_others(st: State) -> None:
    def broken(c: Change) -> None:
        raise RuntimeError("boom")

    st.subscribe(broken)
    seen = events(st)
    unsubscribe = st.subscribe(seen.append)
    unsubscribe()
    join(st, st.create_preauth_key(st.create_user("a")).key)
    assert [c.kind for c in seen] == ["node_added"]


def test_key_expiry_is_announced_once_when_it_passes(path: str, clock: Clock) -> None:
    st = State(path, now_ms=clock, default_key_expiry_ms=HOUR)
    node = join(st, st.create_preauth_key(st.create_user("a")).key).node
    seen = events(st)
    assert st.next_deadline_ms() == T0 + HOUR
    clock.now += HOUR
    assert [c.fields for c in st.tick()] == [{"expired": True}] and len(seen) == 1
    assert st.tick() == []
    assert st.get_node(node.id).is_expired(clock.now)
    st.close()


def test_admin_changes_from_another_process_are_announced(path: str, clock: Clock) -> None:
    server = State(path, now_ms=clock)
    key = server.create_preauth_key(server.create_user("alice"), reusable=True)
    a, b = join(server, key.key, "a").node, join(server, key.key, "b").node
    pending = server.register(machine(), nodekey(), None, None, {"Hostname": "c"}).node
    seen = events(server)
    assert server.refresh() == []
    admin = State(path, base_domain=None, now_ms=clock)  # `meshlet-control nodes ...`
    admin.rename_node(a.id, "alpha")
    admin.delete_node(b.id)
    admin.approve_node(pending.id)
    admin.set_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}')
    admin.close()
    changes = server.refresh()
    assert [(c.kind, c.node_id) for c in changes] == [
        ("node_changed", a.id),
        ("node_removed", b.id),
        ("node_added", pending.id),
        ("policy_changed", None),
    ]
    assert changes == seen and changes[0].fields == {"name": "alpha.meshlet.internal."}
    assert server.refresh() == []
    # the admin process's allocator starts from the bottom, as after a restart: b's address is free again
    assert server.get_node(pending.id).ipv4 == "100.64.0.2"
    assert server.packet_filter(a.id)[0]["DstPorts"][0]["Ports"] == {"First": 22, "Last": 22}
    assert join(server, key.key, "d").node.ipv4 == "100.64.0.3"  # the server's allocator saw that
    server.close()


def test_mark_all_offline_at_start(path: str, clock: Clock) -> None:
    st = State(path, now_ms=clock)
    node = join(st, st.create_preauth_key(st.create_user("a")).key).node
    st.set_online(node.id, True)
    st.close()
    st = State(path, now_ms=clock)
    assert st.get_node(node.id).online
    st.mark_all_offline()
    assert not st.get_node(node.id).online
    st.close()


# -- policy through State -------------------------------------------------------------


def test_packet_filter_and_peers_follow_the_policy(st: State) -> None:
    alice, bob = st.create_user("alice"), st.create_user("bob")
    st.set_policy("""{
        "groups": {"group:admins": ["alice@"]},
        "tagOwners": {"tag:server": ["group:admins"]},
        "acls": [{"action": "accept", "src": ["group:admins"], "dst": ["tag:server:22"]}],
    }""")
    laptop = join(st, st.create_preauth_key(alice).key, "laptop").node
    server = join(st, st.create_preauth_key(alice, tags=["tag:server"]).key, "server").node
    phone = join(st, st.create_preauth_key(bob).key, "phone").node
    assert st.packet_filter(server.id) == [
        {
            "SrcIPs": [laptop.ipv4, laptop.ipv6],
            "DstPorts": [{"IP": ip, "Ports": {"First": 22, "Last": 22}} for ip in (server.ipv4, server.ipv6)],
        }
    ]
    assert st.packet_filter(laptop.id) == [] and st.packet_filter(phone.id) == []
    assert [n.id for n in st.visible_peers(laptop.id)] == [server.id]
    assert [n.id for n in st.visible_peers(server.id)] == [laptop.id]
    assert st.visible_peers(phone.id) == [] and not st.may_see(phone.id, laptop.id)
    st.clear_policy()
    assert [n.id for n in st.visible_peers(phone.id)] == [laptop.id, server.id]


# -- the database ---------------------------------------------------------------------


def test_database_file_mode_wal_and_migrations(path: str) -> None:
    st = State(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert st.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert st.db.schema_version() == db_mod.MIGRATIONS[-1][0]
    st.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(db_mod.DatabaseError, match="upgrade meshlet-control"):
        State(path)


def test_users(st: State) -> None:
    alice = st.create_user("alice")
    assert st.get_user(alice.id) == alice == st.user_by_name("alice") and st.list_users() == [alice]
    with pytest.raises(StateError, match="already exists"):
        st.create_user("alice")
    with pytest.raises(StateError, match="lowercase"):
        st.create_user("Alice Smith")
    assert st.default_user().name == "default" and st.default_user().id == st.default_user().id
