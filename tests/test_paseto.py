"""PASETO v4.public and PASERK k4.pid against the official vectors, plus refusals the vectors leave out."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from agent_rooms_mcp.auth.paseto import (
    PasetoError,
    k4_pid,
    sign_v4_public,
    untrusted_footer,
    verify_v4_public,
)
from agent_rooms_mcp.encoding import EncodingError, b64url_decode, b64url_encode, pae
from agent_rooms_mcp.home import HomeError, load_issuer_key, write_private_file

VECTORS = Path(__file__).parent / "vectors"
V4 = json.loads((VECTORS / "paseto_v4_public.json").read_text(encoding="utf-8"))["tests"]
PID = json.loads((VECTORS / "paserk_k4_pid.json").read_text(encoding="utf-8"))["tests"]
SIGN_CASES = [t for t in V4 if not t["expect-fail"]]
FAIL_CASES = [t for t in V4 if t["expect-fail"]]
# Upstream spells the flag "expectfail" in one case; both spellings are honoured.
PID_OK = [t for t in PID if not t.get("expect-fail", t.get("expectfail"))]
PID_BAD = [t for t in PID if t.get("expect-fail", t.get("expectfail"))]

ED25519_L = 2**252 + 27742317777372353535851937790883648493
SUITE = SIGN_CASES[0]
SK = nacl.signing.SigningKey(bytes.fromhex(SUITE["secret-key"])[:32])
PK = SK.verify_key
HEADER = "v4.public."
BAD_HEADERS = [
    "v4.local.",
    "v3.public.",
    "v2.public.",
    "V4.PUBLIC.",
    "v4.Public.",
    " v4.public.",
    "v4.public",
]


def _names(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


def _reason(token: str, key: nacl.signing.VerifyKey = PK, **kwargs: Any) -> str:
    with pytest.raises(PasetoError) as info:
        verify_v4_public(token, key, **kwargs)
    return str(info.value)


def _token(body: bytes, footer: bytes = b"") -> str:
    return HEADER + b64url_encode(body) + ("." + b64url_encode(footer) if footer else "")


def _parts(token: str) -> tuple[bytes, bytes]:
    body, _, footer = token[len(HEADER) :].partition(".")
    return b64url_decode(body), b64url_decode(footer)


@pytest.mark.invariant(75)
@pytest.mark.parametrize("case", SIGN_CASES, ids=_names(SIGN_CASES))
def test_every_signing_vector_reproduces_the_official_token_and_verifies_to_its_payload(
    case: dict[str, Any],
) -> None:
    secret = bytes.fromhex(case["secret-key"])
    sk = nacl.signing.SigningKey(secret[:32])
    assert bytes(sk.verify_key) == secret[32:] == bytes.fromhex(case["public-key"])
    payload, footer = case["payload"].encode(), case["footer"].encode()
    implicit = case["implicit-assertion"].encode()
    assert sign_v4_public(sk, payload, footer=footer, implicit=implicit) == case["token"]
    pk = nacl.signing.VerifyKey(bytes.fromhex(case["public-key"]))
    assert verify_v4_public(case["token"], pk, implicit=implicit) == payload
    assert verify_v4_public(case["token"], pk, implicit=implicit, expected_footer=footer) == payload
    assert untrusted_footer(case["token"]) == footer


@pytest.mark.invariant(75)
@pytest.mark.parametrize("case", FAIL_CASES, ids=_names(FAIL_CASES))
def test_every_public_failure_vector_is_refused_under_any_key_it_names(case: dict[str, Any]) -> None:
    # 4-F-2 names only a symmetric key; using it (and the suite key) as a public key must still fail.
    keys = {case.get("public-key"), case.get("key"), SUITE["public-key"]} - {None}
    for hex_key in keys:
        key = nacl.signing.VerifyKey(bytes.fromhex(hex_key))
        with pytest.raises(PasetoError):
            verify_v4_public(case["token"], key, implicit=case["implicit-assertion"].encode())


@pytest.mark.invariant(75)
@pytest.mark.parametrize("case", PID_OK, ids=_names(PID_OK))
def test_every_k4_pid_vector_reproduces(case: dict[str, Any]) -> None:
    assert k4_pid(nacl.signing.VerifyKey(bytes.fromhex(case["key"]))) == case["paserk"]


@pytest.mark.parametrize("case", PID_BAD, ids=_names(PID_BAD))
def test_a_k4_pid_failure_vector_cannot_even_become_a_verify_key(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        k4_pid(nacl.signing.VerifyKey(bytes.fromhex(case["key"])))


@pytest.mark.invariant(75)
def test_a_wrong_implicit_assertion_is_refused_as_a_bad_signature() -> None:
    case = SIGN_CASES[2]
    assert case["implicit-assertion"]
    assert _reason(case["token"]) == "bad_signature"
    assert _reason(case["token"], implicit=b'{"test-vector":"4-S-2"}') == "bad_signature"
    assert _reason(SIGN_CASES[1]["token"], implicit=b"x") == "bad_signature"


@pytest.mark.invariant(75)
def test_a_single_flipped_bit_anywhere_in_body_or_footer_is_refused() -> None:
    body, footer = _parts(SIGN_CASES[1]["token"])
    for i in range(len(body) * 8):
        tampered = bytearray(body)
        tampered[i // 8] ^= 1 << (i % 8)
        assert _reason(_token(bytes(tampered), footer)) == "bad_signature"
    for i in range(len(footer) * 8):
        tampered = bytearray(footer)
        tampered[i // 8] ^= 1 << (i % 8)
        assert _reason(_token(body, bytes(tampered))) == "bad_signature"


@pytest.mark.invariant(75)
def test_a_footer_that_differs_from_the_expected_one_is_refused_before_the_signature() -> None:
    token = SIGN_CASES[1]["token"]
    expected = SIGN_CASES[1]["footer"].encode()
    assert verify_v4_public(token, PK, expected_footer=expected)
    assert _reason(token, expected_footer=expected + b" ") == "footer_mismatch"
    assert _reason(token, expected_footer=b"") == "footer_mismatch"
    assert _reason(SIGN_CASES[0]["token"], expected_footer=expected) == "footer_mismatch"


@pytest.mark.invariant(4)
@pytest.mark.parametrize("header", BAD_HEADERS)
def test_any_header_other_than_exactly_v4_public_is_refused(header: str) -> None:
    token = header + SIGN_CASES[1]["token"][len(HEADER) :]
    assert _reason(token) == "bad_header"
    with pytest.raises(PasetoError, match=r"^bad_header$"):
        untrusted_footer(token)


@pytest.mark.invariant(75)
def test_a_body_shorter_than_a_signature_is_malformed() -> None:
    body, _ = _parts(SIGN_CASES[0]["token"])
    assert _reason(_token(body[-63:])) == "malformed"
    assert _reason(HEADER) == "malformed"
    assert verify_v4_public(sign_v4_public(SK, b""), PK) == b""


@pytest.mark.invariant(75)
def test_an_oversized_footer_is_refused_by_its_encoded_length_before_decoding() -> None:
    assert untrusted_footer(sign_v4_public(SK, b"m", footer=b"f" * 256)) == b"f" * 256
    assert untrusted_footer(sign_v4_public(SK, b"m", footer=b"f" * 8), max_len=8) == b"f" * 8
    with pytest.raises(PasetoError, match=r"^footer_too_large$"):
        untrusted_footer(sign_v4_public(SK, b"m", footer=b"f" * 257))
    # Not even valid base64: only a length check made before decoding can report this reason.
    with pytest.raises(PasetoError, match=r"^footer_too_large$"):
        untrusted_footer(HEADER + "AAAA." + "!" * 100_000)


@pytest.mark.invariant(75)
def test_non_canonical_or_foreign_base64_is_refused_as_malformed() -> None:
    token = SIGN_CASES[1]["token"]
    body_b64, footer_b64 = token[len(HEADER) :].split(".")
    assert len(body_b64) % 4 in (2, 3)
    # Changing the lowest sextet bit of the last character only touches padding bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(body_b64[-1]) ^ 1]
    sloppy = body_b64[:-1] + last
    pad = "=" * (-len(body_b64) % 4)
    assert base64.urlsafe_b64decode(sloppy + pad) == base64.urlsafe_b64decode(body_b64 + pad)
    bad_tokens = [
        HEADER + sloppy + "." + footer_b64,
        HEADER + body_b64 + pad + "." + footer_b64,
        HEADER + body_b64 + "." + footer_b64 + "=",
        HEADER + body_b64.replace("_", "/").replace("-", "+") + "." + footer_b64,
        HEADER + body_b64[:10] + "\n" + body_b64[10:] + "." + footer_b64,
        HEADER + body_b64[:10] + "é" + body_b64[10:] + "." + footer_b64,
        HEADER + body_b64 + "." + footer_b64 + ".x",
        HEADER + body_b64 + ".",
    ]
    assert "_" in body_b64 or "-" in body_b64
    for bad in bad_tokens:
        assert _reason(bad) == "malformed", bad
    for text in ("QQ=", "QR", "Q", "a+b/", "QQ\n"):
        with pytest.raises(EncodingError, match=r"^malformed$"):
            b64url_decode(text)


@pytest.mark.invariant(75)
def test_a_signature_with_non_canonical_s_does_not_verify() -> None:
    token = SIGN_CASES[0]["token"]
    body, _ = _parts(token)
    r, s = body[-64:-32], int.from_bytes(body[-32:], "little")
    assert s < ED25519_L
    malleated = body[:-64] + r + (s + ED25519_L).to_bytes(32, "little")
    assert _reason(_token(malleated)) == "bad_signature"


SMALL_ORDER_KEYS = [
    bytes([1]) + bytes(31),  # identity
    bytes(32),  # y = 0, order 4
    bytes([0xEC]) + bytes([0xFF]) * 30 + bytes([0x7F]),  # y = -1, order 2
]


@pytest.mark.invariant(75)
@pytest.mark.parametrize("raw", SMALL_ORDER_KEYS, ids=["identity", "order4", "order2"])
def test_a_small_order_public_key_never_verifies_any_token(raw: bytes) -> None:
    try:
        key = nacl.signing.VerifyKey(raw)
    except ValueError:
        return
    identity = bytes([1]) + bytes(31)
    # (R = identity, S = 0) satisfies the cofactorless equation under the identity key for any message.
    forged = [_token(b"forged" + identity + bytes(32)), _token(b"forged" + raw + bytes(32))]
    for token in [*forged, *(c["token"] for c in SIGN_CASES), sign_v4_public(SK, b"hi")]:
        with pytest.raises(PasetoError):
            verify_v4_public(token, key)


def test_pae_matches_the_examples_in_the_paseto_specification() -> None:
    assert pae() == bytes(8)
    assert pae(b"") == b"\x01" + bytes(7) + bytes(8)
    assert pae(b"test") == b"\x01" + bytes(7) + b"\x04" + bytes(7) + b"test"


def test_b64url_helpers_round_trip_every_length_without_padding() -> None:
    for n in range(40):
        data = bytes(range(256))[n : n * 2 + 1] * 3
        text = b64url_encode(data)
        assert "=" not in text
        assert b64url_decode(text) == data


@pytest.mark.parametrize("body", ["QQ=", "a+b/", "Q"])
def test_an_issuer_key_that_is_not_canonical_base64url_is_refused_naming_the_file(tmp_path: Path, body: str) -> None:
    path = tmp_path / "issuer.key"
    write_private_file(path, ("k4.secret." + body).encode())
    with pytest.raises(HomeError, match=r"issuer\.key is not a k4\.secret key"):
        load_issuer_key(path)
