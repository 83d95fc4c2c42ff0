"""Signed audit checkpoints (DESIGN §6): the audit log's row count and head hash at a moment, signed by the hub.

The hash chain alone proves rows were not edited in place, but not that none were cut off the end, nor that
someone with the file did not recompute every hash after an edit. A checkpoint pins (rows, head) with the
issuer key; the owner keeps a copy away from the hub, and `audit verify --checkpoint` holds the log to it.

Each checkpoint names the previous one (its rows, head and the digest of its token), so a series of them
proves the log only ever grew. It is a PASETO v4.public token under a purpose of its own: the implicit
assertion names audit checkpoints and the deployment, so a checkpoint never verifies as a passport or a wake
claim, nor they as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from agent_rooms_mcp.auth.paseto import PasetoError, k4_pid, sign_v4_public, untrusted_footer, verify_v4_public
from agent_rooms_mcp.encoding import EncodingError, b64url_decode

_PURPOSE = b"agent-rooms/audit-checkpoint/v1|"
_VERSION = 1
_SIG_LEN = 64


class CheckpointRefused(Exception):
    """A checkpoint this hub will not hold its log to; str(e) says why in words an operator can act on."""


@dataclass(frozen=True, slots=True)
class Previous:
    """The checkpoint a new one extends: what it covered, and the digest of its token."""

    rows: int
    head: str  # hex of the row_hash of row `rows`
    digest: str  # "sha256:" + hex of the previous token's text


@dataclass(frozen=True, slots=True)
class Checkpoint:
    deployment_id: str
    rows: int
    head: str  # hex of the row_hash of row `rows`
    at: str  # UTC, clock.iso
    prev: Previous | None

    def previous_of_next(self, token: str) -> Previous:
        """What the checkpoint after this one (whose token is `token`) records as its previous."""
        return Previous(self.rows, self.head, digest(token))


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _implicit(deployment_id: str) -> bytes:
    return _PURPOSE + deployment_id.encode()


def _footer(key: VerifyKey) -> bytes:
    return json.dumps({"kid": k4_pid(key)}, separators=(",", ":")).encode()


def sign_checkpoint(key: SigningKey, checkpoint: Checkpoint) -> str:
    body: dict[str, Any] = {
        "v": _VERSION,
        "dep": checkpoint.deployment_id,
        "rows": checkpoint.rows,
        "head": checkpoint.head,
        "at": checkpoint.at,
        "prev": None,
    }
    if checkpoint.prev is not None:
        p = checkpoint.prev
        body["prev"] = {"rows": p.rows, "head": p.head, "digest": p.digest}
    message = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return sign_v4_public(key, message, footer=_footer(key.verify_key), implicit=_implicit(checkpoint.deployment_id))


def read_checkpoint(token: str, key: VerifyKey, deployment_id: str) -> Checkpoint:
    """The checkpoint, if `key` signed it for this deployment as an audit checkpoint; CheckpointRefused
    otherwise, saying whether it is another key's, another deployment's, or not a checkpoint at all."""
    token = token.strip()
    try:
        footer = json.loads(untrusted_footer(token))
    except (PasetoError, ValueError):
        raise CheckpointRefused("not a PASETO v4.public token: not an audit checkpoint") from None
    ours = k4_pid(key)
    if not isinstance(footer, dict) or footer.get("kid") != ours:
        kid = footer.get("kid") if isinstance(footer, dict) else None
        raise CheckpointRefused(f"signed by another key ({kid or 'no key id'}), not this hub's issuer key ({ours})")
    try:
        body = json.loads(verify_v4_public(token, key, implicit=_implicit(deployment_id), expected_footer=_footer(key)))
    except PasetoError as e:
        raise CheckpointRefused(_why_not(token, deployment_id, str(e))) from None
    except ValueError:
        raise CheckpointRefused("signed, but its body is not JSON") from None
    try:
        return _checkpoint(body, deployment_id)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointRefused(f"signed, but malformed ({e})") from None


def _why_not(token: str, deployment_id: str, reason: str) -> str:
    """Words for a signature that fails under this deployment's checkpoint purpose. The body is read
    unverified, only to choose the words: nothing in it is trusted."""
    claimed = None
    try:
        raw = b64url_decode(token.split(".")[2])[:-_SIG_LEN]
        body = json.loads(raw)
        if isinstance(body, dict) and body.get("v") == _VERSION:
            claimed = body.get("dep")
    except (EncodingError, IndexError, ValueError):
        pass
    if isinstance(claimed, str) and claimed != deployment_id:
        return f"it is for deployment {claimed}, not this hub's {deployment_id}"
    if reason == "bad_signature":
        return "its signature does not verify: it was altered, or it is not an audit checkpoint (a passport?)"
    return f"it does not verify ({reason})"


def _checkpoint(body: Any, deployment_id: str) -> Checkpoint:
    # Signed means this hub wrote it; the shape is still checked so a wrong type never reaches a comparison.
    if not isinstance(body, dict) or body.get("v") != _VERSION or body.get("dep") != deployment_id:
        raise ValueError("version or deployment")
    rows, head, at, prev = body["rows"], body["head"], body["at"], body["prev"]
    if not (isinstance(rows, int) and rows >= 1 and _is_hash(head) and isinstance(at, str)):
        raise TypeError("rows, head or at")
    previous = None
    if prev is not None:
        p_rows, p_head, p_digest = prev["rows"], prev["head"], prev["digest"]
        if not (isinstance(p_rows, int) and 1 <= p_rows <= rows and _is_hash(p_head) and isinstance(p_digest, str)):
            raise TypeError("prev")
        previous = Previous(p_rows, p_head, p_digest)
    return Checkpoint(deployment_id, rows, head, at, previous)


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
