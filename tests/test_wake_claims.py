"""Signed wake claims (DESIGN §9.1): a listener acts only on a claim the pinned issuer key signed for it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from nacl.signing import SigningKey

from agent_rooms_mcp.auth.passports import PassportIssuer
from agent_rooms_mcp.auth.wake_claims import SKEW, ClaimRefused, sign_claim, verify_claim
from agent_rooms_mcp.book import CauseText, Claimed
from agent_rooms_mcp.encoding import b64url_decode, b64url_encode

KEY = SigningKey.generate()
DEP = "dep_test"
CLAIM = Claimed(
    run_id="run_1", agent_id="agt_1", handle="bob-coder", owner_id="own_b", tool="claude", workdir="/srv/x",
    room_id="room_1", room_name="lobby", trigger="mention", cause_id="msg_1", caused_by="agt_a",
    causers=("own_a", "own_b"), constrained=True, depth=1, resume_session=None,
    words=CauseText("hello", "alice-claude", "alice", True), run_token="arr_secret", env={"K": "v"}, lease=3,
)  # fmt: skip


def test_a_claim_round_trips_without_the_variables() -> None:
    token = sign_claim(KEY, DEP, CLAIM, "lst_a", timedelta(seconds=30))
    back = verify_claim(token, KEY.verify_key, DEP, "lst_a")
    assert back == replace(CLAIM, env={})
    assert (back.run_id, back.causers, back.words, back.env, back.lease) == ("run_1", ("own_a", "own_b"),
                                                                           CLAIM.words, {}, 3)  # fmt: skip
    assert b'"K"' not in b64url_decode(token.split(".")[2])


@pytest.mark.invariant(104)
def test_a_listener_refuses_a_claim_altered_in_transit_signed_by_another_key_or_for_another_listener() -> None:
    token = sign_claim(KEY, DEP, CLAIM, "lst_a", timedelta(seconds=30))
    body = bytearray(b64url_decode(token.split(".")[2]))
    body[body.index(b"/srv/x")] = ord("/") + 1  # one byte of the workdir changed on the way
    altered = ".".join([*token.split(".")[:2], b64url_encode(bytes(body)), *token.split(".")[3:]])
    other = sign_claim(SigningKey.generate(), DEP, CLAIM, "lst_a", timedelta(seconds=30))
    cases = {
        "altered": (altered, DEP, "lst_a"),
        "another key": (other, DEP, "lst_a"),
        "another deployment": (token, "dep_other", "lst_a"),
        "another listener": (token, DEP, "lst_b"),
        "expired": (sign_claim(KEY, DEP, CLAIM, "lst_a", -SKEW - timedelta(seconds=1)), DEP, "lst_a"),
        "garbage": ("v4.public.AAAA", DEP, "lst_a"),
        # Signed, but naming a path where a directory name belongs.
        "a path for a run id": (
            sign_claim(KEY, DEP, replace(CLAIM, run_id="../../x"), "lst_a", timedelta(seconds=30)),
            DEP,
            "lst_a",
        ),
        "a wrong type": (
            sign_claim(KEY, DEP, replace(CLAIM, lease="3"), "lst_a", timedelta(seconds=30)),  # type: ignore[arg-type]
            DEP,
            "lst_a",
        ),
    }
    for name, (presented, dep, holder) in cases.items():
        with pytest.raises(ClaimRefused):
            verify_claim(presented, KEY.verify_key, dep, holder)
            pytest.fail(name)


@pytest.mark.invariant(104)
def test_nothing_else_the_hub_signs_verifies_as_a_claim() -> None:
    """A passport is signed with the same key: its purpose differs, so it never passes for a claim."""
    passport, _ = PassportIssuer(KEY, DEP).issue(agent_id="agt_1", owner_id="own_b", tool="claude", epoch=1,
                                                  ttl=timedelta(hours=1))  # fmt: skip
    with pytest.raises(ClaimRefused):
        verify_claim(passport, KEY.verify_key, DEP, "lst_a")
