"""Bearer secrets: `art_` tokens and invite codes. Only their SHA-256 is ever stored (DESIGN §2, §3)."""

from __future__ import annotations

import hashlib
import re
import secrets

TOKEN_PREFIX = "art_"
TOKEN_RE = re.compile(r"art_[A-Za-z0-9_-]{43}")
INVITE_PREFIX = "inv_"
INVITE_RE = re.compile(r"inv_[A-Za-z0-9_-]{32}")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 bits


def new_invite_code() -> str:
    return INVITE_PREFIX + secrets.token_urlsafe(24)  # 192 bits


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_id(prefix: str) -> str:
    """Ids that grant nothing but must not be guessable either: 128 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"
