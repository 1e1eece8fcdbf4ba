"""Key types: text forms, roles that never mix, secrets that never print."""

from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.key import (
    DiscoPrivate,
    DiscoPublic,
    MachinePrivate,
    MachinePublic,
    NodePrivate,
    NodePublic,
    clamp,
)
from meshlet_testing.raises import raises
from meshlet_testing.rand import FakeRandom
from meshlet_testing.vectors import unhex

# RFC 7748 §6.1, Alice.
ALICE_PRIV = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PUB = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = unhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_text_forms_carry_the_role_prefix():
    assert NodePublic(ALICE_PUB).to_text() == "nodekey:" + ALICE_PUB.hex()
    assert DiscoPublic(ALICE_PUB).to_text() == "discokey:" + ALICE_PUB.hex()
    assert MachinePublic(ALICE_PUB).to_text() == "mkey:" + ALICE_PUB.hex()
    assert NodePrivate(ALICE_PRIV).to_text() == "privkey:" + ALICE_PRIV.hex()


def test_text_round_trip_and_uppercase_hex():
    text = "nodekey:" + ALICE_PUB.hex()
    assert NodePublic.from_text(text) == NodePublic(ALICE_PUB)
    assert NodePublic.from_text("nodekey:" + ALICE_PUB.hex().upper()) == NodePublic(ALICE_PUB)
    priv = MachinePrivate.from_text("privkey:" + ALICE_PRIV.hex())
    assert priv.raw_private() == ALICE_PRIV


def test_wrong_prefix_or_length_is_rejected():
    raises(RemoteProtocolError, "bad_key_text", NodePublic.from_text, "mkey:" + ALICE_PUB.hex())
    raises(RemoteProtocolError, "bad_key_text", NodePublic.from_text, "nodekey:" + ALICE_PUB.hex()[:-2])
    raises(RemoteProtocolError, "bad_key_text", NodePublic.from_text, "nodekey:" + "zz" * 32)
    raises(RemoteProtocolError, "bad_key_text", DiscoPublic.from_text, "")
    raises(LocalProtocolError, "bad_length", NodePublic, b"\x00" * 31)


def test_roles_are_never_equal():
    assert NodePublic(ALICE_PUB) != DiscoPublic(ALICE_PUB)
    assert NodePublic(ALICE_PUB) != ALICE_PUB
    assert NodePrivate(ALICE_PRIV) != MachinePrivate(ALICE_PRIV)


def test_public_from_private_and_shared_secret():
    alice = NodePrivate(ALICE_PRIV)
    assert alice.public() == NodePublic(ALICE_PUB)
    assert alice.shared_secret(NodePublic(BOB_PUB)) == SHARED


def test_shared_secret_refuses_a_key_of_another_role():
    raises(LocalProtocolError, "wrong_key_role", NodePrivate(ALICE_PRIV).shared_secret, DiscoPublic(BOB_PUB))


def test_private_keys_never_show_their_bytes():
    priv = DiscoPrivate(ALICE_PRIV)
    for text in (repr(priv), str(priv)):
        assert ALICE_PRIV.hex() not in text
        assert "secret" in text


def test_private_keys_compare_by_value_and_are_unhashable():
    assert NodePrivate(ALICE_PRIV) == NodePrivate(bytes(ALICE_PRIV))
    assert NodePrivate(ALICE_PRIV) != NodePrivate(bytes(32))
    try:
        hash(NodePrivate(ALICE_PRIV))
    except TypeError:
        return
    raise AssertionError("private keys must not be hashable")


def test_public_keys_work_as_dict_keys():
    peers = {NodePublic(ALICE_PUB): "alice"}
    assert peers[NodePublic(bytes(ALICE_PUB))] == "alice"


def test_generated_keys_are_clamped_and_deterministic_under_fake_random():
    a = NodePrivate.generate(FakeRandom(7))
    b = NodePrivate.generate(FakeRandom(7))
    assert a == b
    raw = a.raw_private()
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
    assert clamp(raw) == raw


def test_short_forms_for_logs():
    assert NodePublic(ALICE_PUB).short() == "[hSDwC]"
    assert DiscoPublic(ALICE_PUB).short() == "d:8520f0098930a754"
    assert NodePublic(ALICE_PUB).wireguard_short() == "peer(hSDw\u2026bTmo)"


def test_wireguard_base64_forms():
    pub = NodePublic(ALICE_PUB)
    assert pub.to_base64() == "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
    assert NodePublic.from_base64(pub.to_base64()) == pub
    priv = NodePrivate(ALICE_PRIV)
    assert NodePrivate.from_base64(priv.to_base64()) == priv
    raises(RemoteProtocolError, "bad_key_text", NodePublic.from_base64, "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo")
    raises(RemoteProtocolError, "bad_key_text", NodePublic.from_base64, "!" * 43 + "=")


def test_zero_key():
    assert NodePublic.zero().is_zero()
    assert NodePublic.zero().to_text() == "nodekey:" + "0" * 64
    assert not NodePublic(ALICE_PUB).is_zero()
