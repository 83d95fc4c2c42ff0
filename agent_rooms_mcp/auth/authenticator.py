"""`authenticate(credential, kinds) -> Caller`: the one check every MCP call passes through (DESIGN §2).

Token row, passport signature, agent state and scopes are read afresh on every call, so a
revocation takes effect on the very next one. Every failure looks the same to the caller; the
reason goes to an audit row written in a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.auth.failures import FailedAuth, attempt_of
from agent_rooms_mcp.auth.passports import PassportIssuer, PassportRejected
from agent_rooms_mcp.auth.tokens import CredentialKind, credential_kind, secret_hash
from agent_rooms_mcp.errors import RoomsError, unauthenticated
from agent_rooms_mcp.ids import AgentId, OwnerId, RoomId, RunId
from agent_rooms_mcp.principals import AgentTool, Caller, Scope, held_scopes, stored_scopes
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store.database import Store, fresh_snapshot

log = structlog.get_logger("agent_rooms_mcp.auth")

_LOOKUP = """
SELECT t.token_id, t.expires_at, t.revoked_at, t.run_id, t.grant_id, p.passport, p.jti,
       a.agent_id, a.handle, a.tool, a.scopes, a.status, a.cred_epoch,
       o.owner_id, o.handle AS owner_handle, o.verified_at,
       g.scopes AS grant_scopes, g.audience, g.revoked_at AS grant_revoked_at,
       r.state AS run_state, r.room_id AS run_room_id
  FROM tokens t
  JOIN passports p ON p.jti = t.jti
  JOIN agents a ON a.agent_id = t.agent_id
  JOIN owners o ON o.owner_id = a.owner_id
  LEFT JOIN oauth_grants g ON g.grant_id = t.grant_id
  LEFT JOIN runs r ON r.run_id = t.run_id
 WHERE t.token_hash = ?
"""


class Authenticator:
    def __init__(self, store: Store, issuer: PassportIssuer, limits: Limits) -> None:
        self._store = store
        self._issuer = issuer
        self.failures = FailedAuth(store, limits)

    async def authenticate(
        self,
        credential: str | None,
        kinds: frozenset[CredentialKind],
        *,
        transport: str,
        address: str | None = None,
        audience: str | None = None,
    ) -> Caller:
        """The caller, or RoomsError: UNAUTHENTICATED, or RATE_LIMITED once this source (`address`, None on
        stdio) has failed too often. A valid credential pays nothing for the limit: failures are counted after
        the lookup, and the limit keys on the credential's hash, so others' failures never lock it out.
        `kinds`: the credential kinds this entry point accepts; any other is refused before any lookup.
        `audience`: the resource this entry point is (public mode's `https://HUB/mcp`); an OAuth access token
        issued for any other is refused, and none is accepted where there is no audience (DESIGN §9.4)."""
        try:
            return await self._resolve(credential, kinds, audience)
        except _Denied as denied:
            if denied.reason == "token_expired" and credential_kind(credential or "") is CredentialKind.OAUTH_ACCESS:
                # DESIGN §9.3: an expired OAuth access token is how Claude.ai learns to refresh, from an egress
                # many users share; counted, it would lock them all out. Audited, answered the same, not counted.
                log.info("auth.denied", reason=denied.reason, transport=transport)
                await audit.record_denial(
                    self._store, denied.actor, "auth.authenticate", denied.reason, detail={"transport": transport}
                )
                raise unauthenticated(denied.reason) from None
            raise await self.refuse(
                denied.reason, credential, transport=transport, address=address, actor=denied.actor
            ) from None

    async def refuse(
        self,
        reason: str,
        credential: str | None,
        *,
        transport: str,
        address: str | None,
        actor: audit.Actor = audit.ANONYMOUS,
    ) -> RoomsError:
        """Count a failed authentication (a transport's own refusal too, such as a token in a URL) and return
        the error to answer it with; the reason goes to the audit log only (DESIGN §7)."""
        log.info("auth.denied", reason=reason, transport=transport)
        return await self.failures.fail(attempt_of(credential, transport, address), reason, actor)

    async def _resolve(self, credential: str | None, kinds: frozenset[CredentialKind], audience: str | None) -> Caller:
        if not credential:
            raise _Denied("missing_credential")
        kind = credential_kind(credential)
        if kind is None:
            raise _Denied("malformed_credential")
        # From the prefix alone, before the database is asked anything: a device or refresh token that
        # reached /mcp is refused without ever being looked up (invariant 105).
        if kind not in kinds:
            raise _Denied("wrong_credential_kind")
        # One statement, so one snapshot by itself: no BEGIN and COMMIT around it (each a statement of its own).
        row = await self._store.read_one(_LOOKUP, (secret_hash(credential),))
        return judge(row, kind, self._issuer, datetime.now(UTC), audience)


class _Found(NamedTuple):
    """A `_LOOKUP` row, its columns by position: a `sqlite3.Row` looks a name up by comparing it with every column
    name in turn, and judging a credential reads some twenty of them on every call. The order is `_LOOKUP`'s
    (a test checks the two against each other)."""

    token_id: str
    expires_at: str
    revoked_at: str | None
    run_id: str | None
    grant_id: str | None
    passport: str
    jti: str
    agent_id: str
    handle: str
    tool: str
    scopes: str
    status: str
    cred_epoch: int
    owner_id: str
    owner_handle: str
    verified_at: str | None
    grant_scopes: str | None
    audience: str | None
    grant_revoked_at: str | None
    run_state: str | None
    run_room_id: str | None


_TOOLS = {t.value: t for t in AgentTool}


def judge(
    row: Sequence[Any] | None,
    kind: CredentialKind,
    issuer: PassportIssuer,
    now: datetime,
    audience: str | None = None,
) -> Caller:
    """The credential whose `_LOOKUP` row is `row` (None: no such hash), presented as `kind`, judged as every
    call judges it: the caller it authenticates, or `_Denied` with the reason. One function for
    `authenticate()` and for the proof a receipt gives (`prove_refused`), so what a receipt proves is what the
    next call would meet."""
    if row is None:
        raise _Denied("unknown_token")
    found = _Found._make(row)
    # The prefix must say what the row is: a run's token is `arr_`, an OAuth access token `aro_`, an
    # agent's own `art_`.
    if kind is not row_kind(found.run_id, found.grant_id):
        raise _Denied("wrong_credential_kind", found)
    if found.revoked_at is not None:
        raise _Denied("token_revoked", found)
    if found.grant_id is not None:
        # An OAuth access token: its family alive, and issued for this very resource (DESIGN §9.4).
        if found.grant_revoked_at is not None:
            raise _Denied("token_revoked", found)
        if audience is None or found.audience != audience:
            raise _Denied("wrong_audience", found)
    # A run token lives only while its run does, even if nobody was left to revoke it (a crashed server),
    # and acts only in the room that woke it.
    run_room_id = None
    if found.run_id is not None:
        if found.run_state not in ("running", "stopping"):  # None: the run's row is gone
            raise _Denied("run_ended", found)
        run_room_id = None if found.run_room_id is None else RoomId(found.run_room_id)
    if datetime.fromisoformat(found.expires_at) <= now:
        raise _Denied("token_expired", found)
    try:
        claims = issuer.check(found.passport, now)
    except PassportRejected as e:
        raise _Denied(str(e), found) from None
    if (claims.agent_id, claims.jti, claims.owner_id) != (found.agent_id, found.jti, found.owner_id):
        raise _Denied("passport_mismatch", found)
    if found.status != "active":
        raise _Denied("agent_inactive", found)
    if claims.epoch != found.cred_epoch:
        raise _Denied("stale_epoch", found)
    return Caller(
        agent_id=AgentId(found.agent_id),
        handle=found.handle,
        tool=_TOOLS[found.tool],
        owner_id=OwnerId(found.owner_id),
        owner_handle=found.owner_handle,
        owner_verified=found.verified_at is not None,
        scopes=_scopes(found),
        token_id=found.token_id,
        run_id=None if found.run_id is None else RunId(found.run_id),
        run_room_id=run_room_id,
    )


def prove_refused(db_path: Path, issuer: PassportIssuer, token_ids: Sequence[str]) -> dict[str, str | None]:
    """For each token id, why `authenticate()` now refuses it (None: it would be accepted). Run after the
    revoking transaction committed, on a connection of its own opened just for this, so the answer is what
    the database file says to any process, not what a cached connection saw. It is not a failed
    authentication: it writes no audit row, counts no failure and spends no rate limit (DESIGN §6)."""
    answers = dict[str, str | None]()
    with fresh_snapshot(db_path) as conn:
        now = datetime.now(UTC)
        for token_id in token_ids:
            found = conn.execute(
                "SELECT t.token_hash, t.run_id, t.grant_id, g.audience FROM tokens t"
                " LEFT JOIN oauth_grants g ON g.grant_id = t.grant_id WHERE t.token_id = ?",
                (token_id,),
            ).fetchone()
            if found is None:
                answers[token_id] = "unknown_token"
                continue
            kind = row_kind(found["run_id"], found["grant_id"])
            try:
                judge(conn.execute(_LOOKUP, (found["token_hash"],)).fetchone(), kind, issuer, now, found["audience"])
                answers[token_id] = None
            except _Denied as denied:
                answers[token_id] = denied.reason
    return answers


def row_kind(run_id: str | None, grant_id: str | None) -> CredentialKind:
    """The kind of credential a `tokens` row is."""
    if grant_id is not None:
        return CredentialKind.OAUTH_ACCESS
    return CredentialKind.AGENT if run_id is None else CredentialKind.RUN


def _scopes(found: _Found) -> frozenset[Scope]:
    """What the credential may do at this call: the agent's scopes now, narrowed for a run token, and for an
    OAuth token to what its owner granted and an OAuth client may ever hold (invariant 32)."""
    held = held_scopes(found.scopes, found.run_id)
    if found.grant_id is None:
        return held
    return policy.oauth_held_scopes(held, stored_scopes(found.grant_scopes or ""))


class _Denied(Exception):
    """A refusal and its reason; with the credential's row once it was found, so the audit row can name whose
    credential failed (built only for a refusal: an accepted call never needs it)."""

    def __init__(self, reason: str, found: _Found | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.found = found

    @property
    def actor(self) -> audit.Actor:
        f = self.found
        return audit.ANONYMOUS if f is None else audit.Actor("agent", f.agent_id, f.owner_id, f.token_id)
