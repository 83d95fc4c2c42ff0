"""Passports: PASETO v4.public tokens the hub signs for each agent credential (DESIGN §2).

The claims bind a credential to an agent, its owner, its tool and its credential epoch; the footer
names the signing key by its PASERK id; the implicit assertion binds it to this deployment.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nacl.signing import SigningKey

from agent_rooms_mcp.auth.paseto import (
    PasetoError,
    k4_pid,
    sign_v4_public,
    untrusted_footer,
    verify_v4_public,
)

_VERIFIED_CACHE_SIZE = 4096


class PassportRejected(Exception):
    """str(e) is the machine reason for the audit row."""


@dataclass(frozen=True, slots=True)
class Claims:
    agent_id: str
    owner_id: str
    tool: str
    jti: str
    epoch: int
    exp: datetime


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PassportIssuer:
    """Signs and checks passports with the hub's one issuer key."""

    def __init__(self, key: SigningKey, deployment_id: str, *, skew_s: int = 10) -> None:
        self._key = key
        self._verify_key = key.verify_key
        self.kid = k4_pid(key.verify_key)
        self._footer = json.dumps({"kid": self.kid}, separators=(",", ":")).encode()
        self._implicit = deployment_id.encode()
        self._audience = f"agent-rooms:{deployment_id}"
        self._skew = timedelta(seconds=skew_s)
        # A passport is immutable signed bytes: verifying the same bytes with the same key always gives
        # the same answer, so a good verdict is kept. Revocation, expiry, agent state, epoch and scopes
        # are still read from the database on every call (DESIGN §2); a changed passport is a new key here.
        self._verified: dict[str, tuple[Claims, datetime]] = {}

    def issue(
        self,
        *,
        agent_id: str,
        owner_id: str,
        tool: str,
        epoch: int,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> tuple[str, Claims]:
        now = now or datetime.now(UTC)
        jti = "pp_" + secrets.token_urlsafe(16)
        body = {
            "iss": self._audience,
            "aud": self._audience,
            "sub": agent_id,
            "own": owner_id,
            "tool": tool,
            "epoch": epoch,
            "jti": jti,
            "iat": _rfc3339(now),
            "nbf": _rfc3339(now),
            "exp": _rfc3339(now + ttl),
        }
        message = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        token = sign_v4_public(self._key, message, footer=self._footer, implicit=self._implicit)
        claims = Claims(agent_id, owner_id, tool, jti, epoch, now + ttl)
        return token, claims

    def check(self, token: str, now: datetime | None = None) -> Claims:
        """Verify signature, key id, deployment and time window; raise PassportRejected with the reason."""
        verified = self._verified.get(token)
        if verified is None:
            verified = self._verify(token)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = verified
        claims, nbf = verified
        # The time window is checked on every call; only the signature's verdict on these exact bytes is kept.
        now = now or datetime.now(UTC)
        if now < nbf - self._skew:
            raise PassportRejected("passport_not_yet_valid")
        if now > claims.exp + self._skew:
            raise PassportRejected("passport_expired")
        return claims

    def _verify(self, token: str) -> tuple[Claims, datetime]:
        try:
            footer = json.loads(untrusted_footer(token))
            # Only our own key is ever tried: a foreign kid is refused, not looked up (invariant 3).
            if not isinstance(footer, dict) or footer.get("kid") != self.kid:
                raise PassportRejected("unknown_kid")
            body = json.loads(verify_v4_public(token, self._verify_key, implicit=self._implicit))
        except PasetoError as e:
            raise PassportRejected(f"passport_{e}") from e
        except (ValueError, UnicodeDecodeError) as e:
            raise PassportRejected("passport_malformed") from e
        if not isinstance(body, dict):
            raise PassportRejected("passport_malformed")
        if body.get("iss") != self._audience or body.get("aud") != self._audience:
            raise PassportRejected("wrong_deployment")
        try:
            nbf = datetime.fromisoformat(body["nbf"])
            exp = datetime.fromisoformat(body["exp"])
            claims = Claims(
                str(body["sub"]),
                str(body["own"]),
                str(body["tool"]),
                str(body["jti"]),
                int(body["epoch"]),
                exp,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PassportRejected("passport_malformed") from e
        return claims, nbf
