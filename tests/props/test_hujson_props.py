"""Properties of the HuJSON parser: comments and trailing commas change nothing; garbage only ever raises
HujsonError (and, through the policy checker, PolicyError)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet_control import hujson, policy

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_comment_text = st.text(max_size=10)
fillers = st.one_of(
    st.sampled_from(["", " ", "\n", "\t", "\r\n", "  "]),
    _comment_text.filter(lambda t: "\n" not in t).map(lambda t: "//" + t + "\n"),
    _comment_text.filter(lambda t: "*/" not in t and not t.endswith("*")).map(lambda t: "/*" + t + "*/"),
)


def to_hujson(value: Any, data: st.DataObject) -> str:
    """`value` as HuJSON, with random whitespace, comments and trailing commas between its tokens."""
    ws = lambda: data.draw(fillers)  # noqa: E731
    if isinstance(value, dict):
        members = [ws() + json.dumps(k) + ws() + ":" + to_hujson(v, data) for k, v in value.items()]
        trailing = "," if members and data.draw(st.booleans()) else ""
        return ws() + "{" + ",".join(members) + trailing + ws() + "}" + ws()
    if isinstance(value, list):
        items = [to_hujson(v, data) for v in value]
        trailing = "," if items and data.draw(st.booleans()) else ""
        return ws() + "[" + ",".join(items) + trailing + ws() + "]" + ws()
    return ws() + json.dumps(value, ensure_ascii=data.draw(st.booleans())) + ws()


@settings(deadline=None)
@given(values, st.data())
def test_comments_and_trailing_commas_change_nothing(value: Any, data: st.DataObject) -> None:
    text = to_hujson(value, data)
    want = json.loads(json.dumps(value))
    assert hujson.parse(text).value == want
    std = hujson.standardize(text)
    assert json.loads(std) == want
    assert len(std) == len(text) and std.count("\n") == text.count("\n")


@given(values)
def test_plain_json_parses_as_json_does(value: Any) -> None:
    text = json.dumps(value, indent=1)
    assert hujson.parse(text).value == json.loads(text)


@given(st.text(alphabet=st.sampled_from('{}[],:"/*\\ \n\tabtrufalsenul0123456789.-eE+'), max_size=60))
def test_garbage_is_parsed_or_rejected_with_a_position(text: str) -> None:
    try:
        hujson.parse(text)
    except hujson.HujsonError as e:
        assert 1 <= e.line <= text.count("\n") + 1 and e.column >= 1
    try:
        policy.parse_policy(text)
    except policy.PolicyError:
        pass


@settings(deadline=None)
@given(values, st.data(), st.integers(min_value=0), st.text(max_size=3))
def test_edited_documents_are_parsed_or_rejected(
    value: Any, data: st.DataObject, at: int, insert: str
) -> None:
    text = to_hujson(value, data)
    i = at % (len(text) + 1)
    for edited in (text[:i] + insert + text[i:], text[:i] + text[i + 1 :]):
        try:
            std = hujson.standardize(edited)
        except hujson.HujsonError:
            continue
        assert json.loads(std) == hujson.parse(edited).value


@given(st.text(max_size=80))
def test_policy_checker_raises_only_policy_errors(text: str) -> None:
    for candidate in (
        text,
        '{"acls": [{"action": "accept", "src": [%s], "dst": [%s]}]}'
        % (json.dumps(text), json.dumps(text + ":*")),
    ):
        try:
            policy.parse_policy(candidate)
        except policy.PolicyError:
            pass
