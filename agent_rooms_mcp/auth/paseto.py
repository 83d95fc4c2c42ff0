"""PASETO v4.public tokens (Ed25519 over PAE) and PASERK k4.pid key identifiers, built on PyNaCl alone.

Parsing is deliberately strict: anything that is not byte-for-byte what the signer would emit is refused.
"""

from __future__ import annotations

import hmac

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.signing

from agent_rooms_mcp.encoding import EncodingError, b64url_decode, b64url_encode, pae

_HEADER = "v4.public."
_SIG_LEN = 64


class PasetoError(Exception):
    """Any failure to parse or verify. str(e) is a short machine reason for the audit log only,
    one of: "bad_header", "malformed", "bad_signature", "footer_too_large", "footer_mismatch"."""


def _decode(text: str) -> bytes:
    # A badly encoded part is a bad token: it fails with the token's own reason, like every other refusal.
    try:
        return b64url_decode(text)
    except EncodingError:
        raise PasetoError("malformed") from None


def _split(token: str) -> tuple[str, str]:
    # Exact, case-sensitive prefix: version and purpose are never negotiated from attacker input.
    if not token.startswith(_HEADER):
        raise PasetoError("bad_header")
    parts = token[len(_HEADER) :].split(".")
    if len(parts) == 1:
        return parts[0], ""
    # An empty trailing footer segment is not something sign_v4_public produces, so it is refused.
    if len(parts) != 2 or not parts[1]:
        raise PasetoError("malformed")
    return parts[0], parts[1]


def sign_v4_public(key: nacl.signing.SigningKey, message: bytes, *, footer: bytes = b"", implicit: bytes = b"") -> str:
    sig = key.sign(pae(_HEADER.encode(), message, footer, implicit)).signature
    token = _HEADER + b64url_encode(message + sig)
    return token + "." + b64url_encode(footer) if footer else token


def untrusted_footer(token: str, *, max_len: int = 256) -> bytes:
    _, encoded = _split(token)
    # Bound the work before decoding: the footer is read before any signature has been checked.
    if len(encoded) * 3 // 4 > max_len:
        raise PasetoError("footer_too_large")
    return _decode(encoded)


def verify_v4_public(
    token: str,
    key: nacl.signing.VerifyKey,
    *,
    implicit: bytes = b"",
    expected_footer: bytes | None = None,
) -> bytes:
    body_b64, footer_b64 = _split(token)
    body = _decode(body_b64)
    footer = _decode(footer_b64)
    if len(body) < _SIG_LEN:
        raise PasetoError("malformed")
    message, sig = body[:-_SIG_LEN], body[-_SIG_LEN:]
    if expected_footer is not None and not hmac.compare_digest(footer, expected_footer):
        raise PasetoError("footer_mismatch")
    # libsodium refuses non-canonical S and small-order or non-canonical public keys on its own.
    try:
        key.verify(pae(_HEADER.encode(), message, footer, implicit), sig)
    except nacl.exceptions.BadSignatureError:
        raise PasetoError("bad_signature") from None
    return message


def k4_pid(key: nacl.signing.VerifyKey) -> str:
    # PASERK IDs hash the header together with the full serialized key so IDs of other types never collide.
    paserk = "k4.pid." + "k4.public." + b64url_encode(bytes(key))
    digest = nacl.hash.blake2b(paserk.encode(), digest_size=33, encoder=nacl.encoding.RawEncoder)
    return "k4.pid." + b64url_encode(digest)
