"""RegisterRequest and MapRequest as tsnet 1.90 sends them (control.md §6.1, §7.1, §7.2)."""

from meshlet.control import requests
from meshlet.key import DiscoPublic, NodePrivate, NodePublic

_NODE = NodePrivate(b"\x11" * 32)
_OLD = NodePublic(b"\x22" * 32)
_DISCO = DiscoPublic(b"\xd1" * 32)


def test_a_registration_with_a_pre_auth_key():
    doc = requests.register_request(_NODE, "mlt-auth-key", {"Hostname": "pi"}, ephemeral=True)
    assert doc == {
        "Version": 130,
        "NodeKey": _NODE.public().to_text(),
        "OldNodeKey": "nodekey:" + "0" * 64,
        "Expiry": "0001-01-01T00:00:00Z",
        "Followup": "",
        "Hostinfo": {"Hostname": "pi"},
        "Auth": {"AuthKey": "mlt-auth-key"},
        "Ephemeral": True,
    }


def test_a_followup_a_renewal_and_a_logout_send_no_auth_key():
    url = "http://ctrl/register/7"
    followup = requests.register_request(_NODE, None, {}, followup=url)
    assert followup["Followup"] == url and "Auth" not in followup and "Ephemeral" not in followup
    renewal = requests.register_request(_NODE, None, {}, old_node_key=_OLD)
    assert renewal["OldNodeKey"] == _OLD.to_text()
    logout = requests.register_request(_NODE, None, {}, expiry=requests.LOGOUT_TIME)
    assert logout["Expiry"] == "1970-01-01T00:02:03Z"


def test_the_long_poll_and_a_lite_update():
    poll = requests.map_request(_NODE, _DISCO, True, ["192.0.2.1:41641"], {"Hostname": "pi"}, home_derp=900)
    assert poll == {
        "Version": 130,
        "Compress": "zstd",
        "KeepAlive": True,
        "NodeKey": _NODE.public().to_text(),
        "DiscoKey": _DISCO.to_text(),
        "Stream": True,
        "OmitPeers": False,
        "Hostinfo": {"Hostname": "pi", "NetInfo": {"PreferredDERP": 900}},
        "Endpoints": ["192.0.2.1:41641"],
        "EndpointTypes": [requests.ENDPOINT_TYPE_LOCAL],
    }
    lite = requests.map_request(_NODE, _DISCO, False, [], {"NetInfo": {"LinkType": "wired"}}, 0, None)
    assert lite["Stream"] is False and lite["OmitPeers"] is True
    assert lite["Hostinfo"] == {"NetInfo": {"LinkType": "wired"}}
    assert lite["Endpoints"] == [] and lite["EndpointTypes"] == []


def test_the_callers_hostinfo_is_not_changed():
    hostinfo = {"NetInfo": {"LinkType": "wired"}}
    requests.map_request(_NODE, _DISCO, True, [], hostinfo, home_derp=1)
    assert hostinfo == {"NetInfo": {"LinkType": "wired"}}
