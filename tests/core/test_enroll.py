"""Enrollment codes: docs/control.md's example, what the control server's CLI writes, and bad codes."""

from meshlet.enroll import EnrollCode, EnrollCodeError, build, parse, split_control_url
from meshlet.key import MachinePublic
from meshlet_testing.raises import raises

_MKEY = "mkey:04c77a28" + "00" * 26 + "d10b"
_KEY = MachinePublic.from_text(_MKEY)
_AUTH = "mlt-auth-qa2prt1lfozy-i4k9abcdefghijklmnopqrstuvwdxiw"
_CODE = "meshlet://enroll?server=http://192.0.2.10:8080&key=" + _MKEY + "&authkey=" + _AUTH


def test_the_example_of_docs_control_md():
    code = parse(_CODE)
    assert code.server == "http://192.0.2.10:8080"
    assert code.server_key == _KEY and code.auth_key == _AUTH
    assert build("http://192.0.2.10:8080", _KEY, _AUTH) == _CODE


def test_percent_encoding_round_trips_and_standard_encoders_are_read():
    code = build("https://ctrl.example.com/base", _KEY, "k+y&=%")
    assert (
        code
        == "meshlet://enroll?server=https://ctrl.example.com/base&key=" + _MKEY + "&authkey=k%2By%26%3D%25"
    )
    assert parse(code) == EnrollCode("https://ctrl.example.com/base", _KEY, "k+y&=%")
    # A form encoder writes ':' and '/' encoded, and lowercase hex; both mean the same.
    form = "meshlet://enroll?authkey=" + _AUTH + "&server=http%3a%2f%2f192.0.2.10%3A8080&key=" + _MKEY
    assert parse(form) == parse(_CODE)


def test_whitespace_case_trailing_slash_unknown_parameters():
    code = parse(
        "  MESHLET://Enroll?server=http://h.example:80/&key="
        + _MKEY.upper().replace("MKEY", "mkey")
        + "&v=2\n"
    )
    assert code.server == "http://h.example:80" and code.server_key == _KEY and code.auth_key is None


def test_an_interactive_code_has_no_auth_key():
    text = build("http://[2001:db8::1]:8080", _KEY, None)
    assert text == "meshlet://enroll?server=http://%5B2001:db8::1%5D:8080&key=" + _MKEY  # as urlencode writes
    code = parse(text)
    assert code.server == "http://[2001:db8::1]:8080" and code.auth_key is None


def _bad(text, words):
    e = raises(EnrollCodeError, "bad_enroll_code", parse, text)
    assert words in e.detail, (e.detail, words)


def test_bad_codes_say_what_is_wrong():
    _bad("https://ctrl.example.com/?key=" + _MKEY, "starts with meshlet://enroll?")
    _bad("meshlet://enroll?key=" + _MKEY + "&authkey=x", "server parameter")
    _bad("meshlet://enroll?server=http://h&authkey=x", "key parameter")
    _bad("meshlet://enroll?server=ftp://h&key=" + _MKEY, "http:// or https://")
    _bad("meshlet://enroll?server=http://&key=" + _MKEY, "no usable host")
    _bad("meshlet://enroll?server=http://h:99999&key=" + _MKEY, "port")
    _bad("meshlet://enroll?server=http://u:p@h&key=" + _MKEY, "user name")
    _bad("meshlet://enroll?server=http://h&key=nodekey:" + "11" * 32, "mkey:")
    _bad("meshlet://enroll?server=http://h&key=mkey:" + "zz" * 32, "hex")
    _bad("meshlet://enroll?server=http://h&key=mkey:" + "00" * 32, "zero key")
    _bad("meshlet://enroll?server=http://h&key=" + _MKEY + "&authkey=", "authkey is empty")
    _bad("meshlet://enroll?server=http://h&key=" + _MKEY + "&authkey=a%20b", "spaces")
    _bad("meshlet://enroll?server=http://h&key=" + _MKEY + "&authkey=%zz", "two hex digits")
    _bad("meshlet://enroll?server=http://h&key=" + _MKEY + "&authkey=%C3%A9", "non-ASCII")
    _bad("meshlet://enroll?server=http://h&server=http://i&key=" + _MKEY, "server appears twice")
    _bad("meshlet://enroll?server=http://h&key=" + _MKEY + "#x", "fragment")
    _bad("meshlet://enroll?" + "x" * 5000, "longer")


def test_build_refuses_what_parse_would():
    raises(EnrollCodeError, "bad_enroll_code", build, "ctrl.example.com", _KEY, "k")
    raises(EnrollCodeError, "bad_enroll_code", build, "http://h", MachinePublic.zero(), "k")
    raises(EnrollCodeError, "bad_enroll_code", build, "http://h", _KEY, "")


def test_split_control_url():
    assert split_control_url("http://192.0.2.10:8080") == ("http", "192.0.2.10", 8080)
    assert split_control_url("https://ctrl.example.com") == ("https", "ctrl.example.com", 443)
    assert split_control_url("HTTP://h/path") == ("http", "h", 80)
    assert split_control_url("http://[::1]:9") == ("http", "::1", 9)
    assert split_control_url("https://[2001:db8::2]") == ("https", "2001:db8::2", 443)
    for bad in ("", "h:80", "http://h:", "http://h:0", "http://h:x", "http://[::1", "http://[::1]x",
                "http://h?q", "http://a b", "http://[]:80", "http://a:b:c"):  # fmt: skip
        raises(EnrollCodeError, "bad_control_url", split_control_url, bad)
