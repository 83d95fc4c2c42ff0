"""Byte encodings shared by signing, sealing and the audit chain: unpadded base64url and PAE.

General helpers with no policy in them, kept out of `auth/` so that the audit log, the vault and the home
can use them without importing the authentication package.
"""

from __future__ import annotations

import base64
import re

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class EncodingError(ValueError):
    """Text that is not the one canonical unpadded base64url spelling of some bytes. str(e) is "malformed"."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    # urlsafe_b64decode silently drops foreign characters and ignores trailing bits, which would let
    # many spellings of one token verify; the alphabet check plus the round trip make it one-to-one.
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise EncodingError("malformed")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(data) != text:
        raise EncodingError("malformed")
    return data


def pae(*pieces: bytes) -> bytes:
    """PASETO's pre-authentication encoding: each piece length-prefixed, so no two lists encode alike."""
    # PASETO clears the top bit of each length so that implementations with signed 64-bit integers agree; a
    # Python length is at most sys.maxsize (2**63 - 1), whose top bit is clear already. Every audit row hashes
    # one of these, so it is built with the cheapest calls (to_bytes, not struct.pack with a mask).
    out = [len(pieces).to_bytes(8, "little")]
    for piece in pieces:
        out.append(len(piece).to_bytes(8, "little"))
        out.append(piece)
    return b"".join(out)
