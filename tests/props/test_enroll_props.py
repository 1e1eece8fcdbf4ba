"""Enrollment codes: build/parse round trip; anything else parses or raises EnrollCodeError only."""

import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from meshlet import enroll
from meshlet.key import MachinePublic
from meshlet_testing.garbage import parses_or_rejects

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t),
    st.sampled_from(["[::1]", "[2001:db8::7]"]),
)
_server = st.builds(
    lambda scheme, host, port, path: scheme + "://" + host + (":%d" % port if port else "") + path,
    st.sampled_from(["http", "https"]),
    _host,
    st.one_of(st.none(), st.integers(1, 65535)),
    st.sampled_from(["", "/base", "/a/b"]),
)
_key = st.binary(min_size=32, max_size=32).filter(lambda b: any(b)).map(MachinePublic)
_auth = st.one_of(
    st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)
)


@given(_server, _key, _auth)
def test_build_then_parse_is_the_identity(server: str, key: MachinePublic, auth: str | None) -> None:
    text = enroll.build(server, key, auth)
    assert enroll.parse(text) == enroll.EnrollCode(server, key, auth)


@given(_server, _key, _auth)
def test_the_standard_parser_reads_what_build_writes(
    server: str, key: MachinePublic, auth: str | None
) -> None:
    parts = urllib.parse.urlsplit(enroll.build(server, key, auth))
    q = urllib.parse.parse_qs(parts.query, strict_parsing=True)
    assert parts.scheme == "meshlet" and parts.netloc == "enroll"
    assert q["server"] == [server] and q["key"] == [key.to_text()]
    assert q.get("authkey") == (None if auth is None else [auth])


@given(_server, _key, _auth)
def test_the_control_cli_and_build_agree(server: str, key: MachinePublic, auth: str | None) -> None:
    query = {"server": server, "key": key.to_text()}
    if auth is not None:
        query["authkey"] = auth
    cli = "meshlet://enroll?" + urllib.parse.urlencode(query, safe=":/", quote_via=urllib.parse.quote)
    assert cli == enroll.build(server, key, auth)


@given(st.text(max_size=200))
def test_garbage_text_parses_or_raises_a_typed_error(text: str) -> None:
    parses_or_rejects(enroll.parse, text)


_pieces = st.sampled_from(
    ["meshlet://enroll?", "server=", "key=", "authkey=", "&", "=", "%", "%4", "%41", "%C3", "+", "http://", "https://",
     "[", "]", ":", "/", "@", "#", "?", "h", "0", "mkey:", "ab" * 32, " ", "\x00", "\u00e9"]
)  # fmt: skip


@given(st.lists(_pieces, max_size=16).map("".join))
def test_near_miss_codes_parse_or_raise_a_typed_error(text: str) -> None:
    parses_or_rejects(enroll.parse, text)
    parses_or_rejects(enroll.split_control_url, text)
