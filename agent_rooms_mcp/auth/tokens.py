"""Credential formats and random ids: bearer secrets of each kind, invite codes, and unguessable row ids.

Only a secret's SHA-256 is ever stored (DESIGN §2, §3). A leaf that imports nothing of ours, so the services
and the audit log may use it although it is filed under `auth/` (tests/test_project.py pins both).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from enum import StrEnum

INVITE_PREFIX = "inv_"
INVITE_RE = re.compile(r"inv_[A-Za-z0-9_-]{32}")


class CredentialKind(StrEnum):
    """Each kind of credential has a prefix of its own, so an entry point refuses a kind that does not
    belong there from the string alone, before it looks anything up (DESIGN §2, invariant 105)."""

    AGENT = "art_"  # an agent's bearer token
    RUN = "arr_"  # one woken run's token
    DEVICE = "ard_"  # an owner's enrolled device: the owner API, never MCP
    OAUTH_ACCESS = "aro_"  # the Claude.ai connector's access token
    OAUTH_REFRESH = "arf_"  # its refresh token: only ever at /token


# Where MCP tools are served (/mcp, stdio, in-memory): agents and runs.
MCP_KINDS = frozenset({CredentialKind.AGENT, CredentialKind.RUN})
# /mcp in public mode also takes the Claude.ai connector's access tokens, bound to that URL (DESIGN §9.4).
PUBLIC_MCP_KINDS = MCP_KINDS | {CredentialKind.OAUTH_ACCESS}
# Every kind is its prefix and 256 random bits in base64url.
_CREDENTIAL_RE = re.compile("(" + "|".join(kind.value for kind in CredentialKind) + ")[A-Za-z0-9_-]{43}")
# By prefix: a dict lookup, where calling the enum on its value walks the enum machinery on every call.
_KIND_OF_PREFIX = {kind.value: kind for kind in CredentialKind}


def credential_kind(credential: str) -> CredentialKind | None:
    """The kind a well-formed credential claims by its prefix; None for anything malformed."""
    found = _CREDENTIAL_RE.fullmatch(credential)
    return None if found is None else _KIND_OF_PREFIX[found.group(1)]


def holds_credential(text: str) -> bool:
    """Whether `text` holds anything shaped like one of our credentials (a client's config file must not)."""
    return _CREDENTIAL_RE.search(text) is not None


def new_token(kind: CredentialKind) -> str:
    return kind.value + secrets.token_urlsafe(32)  # 256 bits


def new_invite_code() -> str:
    return INVITE_PREFIX + secrets.token_urlsafe(24)  # 192 bits


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_id(prefix: str) -> str:
    """Ids that grant nothing but must not be guessable either: 128 random bits."""
    return f"{prefix}_{secrets.token_urlsafe(16)}"
