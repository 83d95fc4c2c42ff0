"""Signed wake claims (DESIGN §9.1): what a listener is handed for each wake it claims, signed by the hub.

A claim carries everything the listener's supervisor will act on (run id, agent, room, causers, constrained,
the words to give the CLI, the run token, the lease) for one listener (`holder`), until `exp`. It is a PASETO
v4.public token signed with the hub's issuer key under a purpose of its own: the implicit assertion names
wake claims and the deployment, so neither a passport nor anything else the hub signs verifies as a claim,
nor a claim as anything else. The listener verifies it with the key pinned at `login` and refuses a claim
that does not verify, is for another listener or has expired, before anything is spawned.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from agent_rooms_mcp.auth.paseto import PasetoError, k4_pid, sign_v4_public, verify_v4_public
from agent_rooms_mcp.book import CauseText, Claimed

_PURPOSE = b"agent-rooms/wake-claim/v1|"
# A listener's clock may run ahead of the hub's by this much before a fresh claim reads as expired.
SKEW = timedelta(seconds=30)
# The run id and the handle name directories on the listener's machine: plain names, never a path.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ClaimRefused(Exception):
    """A claim the listener must not act on; str(e) names why, for its log."""


def _implicit(deployment_id: str) -> bytes:
    return _PURPOSE + deployment_id.encode()


def sign_claim(key: SigningKey, deployment_id: str, claimed: Claimed, holder: str, ttl: timedelta) -> str:
    # The variables never cross: a listener opens its owner's own, sealed on its machine (DESIGN §9.1).
    body = {k: v for k, v in asdict(claimed).items() if k != "env"}
    body["holder"] = holder
    body["exp"] = (datetime.now(UTC) + ttl).isoformat()
    message = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    footer = json.dumps({"kid": k4_pid(key.verify_key)}, separators=(",", ":")).encode()
    return sign_v4_public(key, message, footer=footer, implicit=_implicit(deployment_id))


def verify_claim(token: str, key: VerifyKey, deployment_id: str, holder: str) -> Claimed:
    """The claim, if it verifies against `key` (the one pinned at login), is this listener's and is still
    current; ClaimRefused otherwise. Its `env` is empty: the caller fills in the owner's own variables."""
    footer = json.dumps({"kid": k4_pid(key)}, separators=(",", ":")).encode()
    try:
        body = json.loads(verify_v4_public(token, key, implicit=_implicit(deployment_id), expected_footer=footer))
    except PasetoError as e:
        raise ClaimRefused(f"signature: {e}") from None
    except ValueError:
        raise ClaimRefused("malformed") from None
    if not isinstance(body, dict):
        raise ClaimRefused("malformed")
    if body.pop("holder", None) != holder:
        raise ClaimRefused("for another listener")
    try:
        if datetime.fromisoformat(str(body.pop("exp"))) + SKEW <= datetime.now(UTC):
            raise ClaimRefused("expired")
        return _claimed(body)
    except (KeyError, TypeError, ValueError) as e:
        raise ClaimRefused(f"malformed: {type(e).__name__}") from None


def _claimed(body: dict[str, Any]) -> Claimed:
    words = body.pop("words")
    claimed = Claimed(**{**body, "words": CauseText(**words), "causers": tuple(body["causers"]), "env": {}})
    # Signed means the hub wrote it, not that it is well formed: a wrong type must not reach a spawn, and the
    # run id names a directory here, so it must be one (never `../..`).
    for name, kind in (("run_id", str), ("agent_id", str), ("handle", str), ("tool", str), ("lease", int),
                       ("constrained", bool), ("depth", int), ("run_token", str), ("room_name", str),
                       ("trigger", str), ("cause_id", str), ("owner_id", str)):  # fmt: skip
        if not isinstance(getattr(claimed, name), kind):
            raise TypeError(name)
    words = claimed.words
    if not all(isinstance(x, str) for x in (*claimed.causers, words.text, words.author, words.owner)):
        raise TypeError("words")
    if not (claimed.resume_session is None or isinstance(claimed.resume_session, str)):
        raise TypeError("resume_session")
    if not _NAME.fullmatch(claimed.run_id) or not _NAME.fullmatch(claimed.handle):
        raise ValueError("run_id or handle")
    return claimed
