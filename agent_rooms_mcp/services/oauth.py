"""The hub as the OAuth 2.1 authorization server of its own MCP resource (DESIGN §9.4, invariants 32, 97, 105).

The web layer (web/oauth_api.py) parses forms and query strings and turns what this raises into OAuth answers;
every decision and every write is here, each in one transaction with its audit row, and every who-may rule is
asked of `policy`. Secrets (codes, access and refresh tokens) are stored only as hashes; access tokens are rows
of `tokens`, bound to the grant's passport, so `authenticate()` judges them as it judges any bearer token.

A grant is one approval by an owner: one client, one agent, the scopes chosen. Its code, its refresh tokens and
its access tokens are one family: a reused code or a reused refresh token revokes all of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.passports import PassportIssuer
from agent_rooms_mcp.auth.tokens import CredentialKind, credential_kind, new_id, new_token, secret_hash
from agent_rooms_mcp.cimd import ClientDocuments, DocumentRefused
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.principals import Human, Scope, format_scopes
from agent_rooms_mcp.services.accounts import record_passport, record_revocation
from agent_rooms_mcp.services.oauth_refusals import RefusalTrace
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.vault import Vault

log = structlog.get_logger("agent_rooms_mcp.oauth")

# An authorization code: not a credential any entry point accepts, so not a CredentialKind.
CODE_PREFIX = "arc_"
# Where /authorize sends the browser: the console's same-site approval page (DESIGN §9.2, §9.4).
CONSOLE_AUTHORIZE = "/console/authorize"
# The vault purpose under which a replaced refresh token keeps its successor pair for the grace.
_SUCCESSOR = "oauth-successor"
# RFC 7636 §4.1: a verifier is 43-128 unreserved characters; an S256 challenge is 43 base64url characters.
_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_CLIENT_NAME_CHARS = 100
_REDIRECT_URIS_MAX = 10
_ANONYMOUS = audit.ANONYMOUS


class OAuthError(Exception):
    """An OAuth error answer (RFC 6749 §5.2, RFC 7591 §3.2.2): the `error` code, a description naming the bad
    value, and the HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


class AuthorizeRefused(OAuthError):
    """An authorization request whose client or redirect URI cannot be trusted: answered on the hub's own
    page, never by a redirect (RFC 6749 §4.1.2.1)."""


class AuthorizeRedirected(OAuthError):
    """An authorization request refused with its error sent back to the client's own (validated) redirect URI,
    `iss` included (RFC 6749 §4.1.2.1, RFC 9207): `location` is that redirect."""

    def __init__(self, error: str, description: str, location: str) -> None:
        super().__init__(error, description)
        self.location = location


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    client_id: str
    kind: str  # cimd | dcr
    client_name: str
    redirect_uris: tuple[str, ...]
    application_type: str


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    """What the console's approval page shows of a stored request (DESIGN §9.4)."""

    request_id: str
    client_id: str
    client_name: str
    # A metadata-document client is shown by its client_id's host, which vouches for it; a registered client has
    # only the name it gave itself, shown marked unverified (None here).
    client_host: str | None
    redirect_uri: str
    loopback: bool
    scopes: frozenset[Scope]


def issuer_of(resource: str) -> str:
    """The issuer URL is the public URL; the resource is that plus `/mcp`."""
    return resource.removesuffix("/mcp")


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _redirect(uri: str, params: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return uri + ("&" if "?" in uri else "?") + query


def _later(now: datetime, seconds: int, cap: str | None = None) -> str:
    end = iso(now + timedelta(seconds=seconds))
    return end if cap is None else min(end, cap)


class OAuth:
    def __init__(
        self, store: Store, issuer: PassportIssuer, limits: Limits, vault: Vault, documents: ClientDocuments
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._limits = limits
        self._vault = vault
        self._documents = documents
        # Where the web layer reports every refused request, for its bounded audit trace.
        self.refusals = RefusalTrace(store, limits)

    # Registration (RFC 7591), the fallback to metadata documents. RFC 7592 (managing a registration) is not
    # offered: a client that changes registers again, and unused registrations are deleted.

    async def register(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        client = _registered_metadata(metadata)
        now = datetime.now(UTC)

        def run(conn: sqlite3.Connection) -> None:
            # The limit in all, counted from the registrations themselves: unlike the per-source count in the web
            # layer's memory, no restart resets it and every process serving this database shares it.
            hour_ago = iso(now - timedelta(hours=1))
            made = conn.execute(
                "SELECT count(*) FROM oauth_clients WHERE kind = 'dcr' AND created_at > ?", (hour_ago,)
            ).fetchone()[0]
            if made >= self._limits.oauth_register_per_h:
                raise OAuthError("RATE_LIMITED", "too many registrations this hour; try later", 429)
            _save_client(conn, client, iso(now))
            audit.append(
                conn,
                _ANONYMOUS,
                "oauth.client.register",
                target=client.client_id,
                detail={"application_type": client.application_type},
            )

        await self._store.write(run)
        return {
            "client_id": client.client_id,
            "client_id_issued_at": int(datetime.now(UTC).timestamp()),
            "client_name": client.client_name,
            "redirect_uris": list(client.redirect_uris),
            "application_type": client.application_type,
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }

    # The authorization request: validated, then stored under a random id for the console page.

    async def authorize(self, params: Mapping[str, str], resource: str) -> str:
        """The same-site page to send the browser to. Raises AuthorizeRedirected to send the error back to the
        client, or AuthorizeRefused when the client or redirect URI is not to be trusted with a redirect at all."""
        client_id = params.get("client_id") or ""
        redirect_uri = params.get("redirect_uri") or ""
        fetched = client_id.startswith("https://")
        if fetched:
            # A client ID metadata document (preferred over registration): fetched under the rules of cimd.py.
            try:
                document = await self._documents.get(client_id, urlsplit(resource).hostname)
            except DocumentRefused as refused:
                raise AuthorizeRefused("invalid_client", f"client_id's metadata document {refused}") from None
            client: ClientMetadata | None = ClientMetadata(
                document.client_id, "cimd", document.client_name, document.redirect_uris, document.application_type
            )
        else:
            client = await self._store.read(lambda c: _client(c, client_id))
        if client is None:
            raise AuthorizeRefused("invalid_client", f"client_id {client_id!r}: unknown; register it first")
        if not redirect_uri or not policy.oauth_redirect_matches(redirect_uri, client.redirect_uris):
            raise AuthorizeRefused("invalid_request", f"redirect_uri {redirect_uri!r}: not registered for this client")
        state = params.get("state")
        if state is not None and len(state.encode()) > self._limits.oauth_state_max_bytes:
            raise AuthorizeRefused("invalid_request", f"state: at most {self._limits.oauth_state_max_bytes} bytes")

        def back(error: str, description: str) -> AuthorizeRedirected:
            location = _redirect(
                redirect_uri,
                {"error": error, "error_description": description, "state": state, "iss": issuer_of(resource)},
            )
            return AuthorizeRedirected(error, description, location)

        if params.get("response_type") != "code":
            raise back("unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256":
            raise back("invalid_request", "code_challenge_method must be S256 (PKCE is required)")
        challenge = params.get("code_challenge") or ""
        if not _CHALLENGE_RE.fullmatch(challenge):
            raise back("invalid_request", "code_challenge: give the S256 challenge, 43 base64url characters")
        if params.get("resource") != resource:
            raise back("invalid_target", f"resource must be {resource}")
        scopes = policy.oauth_requested_scopes(params.get("scope"))
        if scopes is None:
            raise back("invalid_scope", "scope: ask for read, post and task only")
        request_id = new_id("oar")
        now = datetime.now(UTC)

        def run(conn: sqlite3.Connection) -> None:
            waiting = conn.execute("SELECT count(*) FROM oauth_requests WHERE expires_at > ?", (iso(now),)).fetchone()[
                0
            ]
            if waiting >= self._limits.oauth_requests_pending_max:
                raise AuthorizeRefused("temporarily_unavailable", "too many authorization requests wait; try later")
            if fetched:  # kept while the client is in use, so the approval page and /token find it
                _save_client(conn, client, iso(now))
            conn.execute(
                "INSERT INTO oauth_requests (request_id, client_id, redirect_uri, state, code_challenge, scopes,"
                " resource, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    client.client_id,
                    redirect_uri,
                    state,
                    challenge,
                    format_scopes(scopes),
                    resource,
                    iso(now),
                    _later(now, self._limits.oauth_request_ttl_s),
                ),
            )

        await self._store.write(run)
        return f"{CONSOLE_AUTHORIZE}?{urlencode({'request': request_id})}"

    async def pending(self, request_id: str) -> PendingAuthorization:
        """The stored request the approval page shows; NOT_FOUND once it expired or was decided."""

        def run(conn: sqlite3.Connection) -> PendingAuthorization:
            row = _request(conn, request_id)
            client = _client(conn, row["client_id"])
            if client is None:
                raise not_found("authorization request")
            return PendingAuthorization(
                request_id=request_id,
                client_id=client.client_id,
                client_name=client.client_name,
                client_host=urlsplit(client.client_id).hostname if client.kind == "cimd" else None,
                redirect_uri=row["redirect_uri"],
                loopback=row["redirect_uri"] not in policy.CLAUDE_CALLBACKS,
                scopes=frozenset(Scope(s) for s in row["scopes"].split(",") if s),
            )

        return await self._store.read(run)

    async def approve(self, request_id: str, who: Human, agent_ref: str, scopes: frozenset[Scope]) -> str:
        """The owner lets the client act as one of their agents with `scopes`: the redirect back to the client
        with a single-use code and `iss`. Audited; NOT_FOUND for an unknown, expired or decided request."""
        code = CODE_PREFIX + secrets.token_urlsafe(32)  # 256 bits, single use, stored hashed
        now = datetime.now(UTC)

        def run(conn: sqlite3.Connection) -> str:
            row = _request(conn, request_id)
            agent = queries.agent(conn, agent_ref)
            policy.require_own(who, agent.owner_id, "agent")
            requested = frozenset(Scope(s) for s in row["scopes"].split(",") if s)
            policy.oauth_approvable_scopes(scopes, requested, agent.scopes)
            conn.execute("DELETE FROM oauth_requests WHERE request_id = ?", (request_id,))
            ttl = timedelta(seconds=self._limits.oauth_refresh_max_s)
            claims = record_passport(conn, self._issuer, agent, ttl, now)
            grant_id = new_id("ogr")
            conn.execute(
                "INSERT INTO oauth_grants (grant_id, client_id, agent_id, jti, scopes, audience, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    grant_id,
                    row["client_id"],
                    agent.agent_id,
                    claims.jti,
                    format_scopes(scopes),
                    row["resource"],
                    iso(now),
                    iso(claims.exp),
                ),
            )
            conn.execute(
                "INSERT INTO oauth_codes (code_hash, grant_id, client_id, redirect_uri, code_challenge, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    secret_hash(code),
                    grant_id,
                    row["client_id"],
                    row["redirect_uri"],
                    row["code_challenge"],
                    _later(now, self._limits.oauth_code_ttl_s),
                ),
            )
            conn.execute(
                "UPDATE oauth_clients SET approved_at = coalesce(approved_at, ?), last_used_at = ? WHERE client_id = ?",
                (iso(now), iso(now), row["client_id"]),
            )
            audit.append(
                conn,
                who.actor,
                "oauth.approve",
                target=agent.agent_id,
                detail={"grant_id": grant_id, "client_id": row["client_id"], "scopes": format_scopes(scopes)},
            )
            return _redirect(
                row["redirect_uri"], {"code": code, "state": row["state"], "iss": issuer_of(row["resource"])}
            )

        return await self._store.write(run)

    async def deny(self, request_id: str, who: Human) -> str:
        """The owner refuses: the redirect back with `access_denied` and `iss`. Audited."""

        def run(conn: sqlite3.Connection) -> str:
            row = _request(conn, request_id)
            conn.execute("DELETE FROM oauth_requests WHERE request_id = ?", (request_id,))
            audit.append(conn, who.actor, "oauth.deny", target=row["client_id"], detail={"request_id": request_id})
            return _redirect(
                row["redirect_uri"],
                {"error": "access_denied", "state": row["state"], "iss": issuer_of(row["resource"])},
            )

        return await self._store.write(run)

    # The token endpoint.

    async def token(self, form: Mapping[str, str], resource: str) -> dict[str, Any]:
        if "resource" in form and form["resource"] != resource:
            raise OAuthError("invalid_target", f"resource must be {resource}")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            work = self._exchange_code(form)
        elif grant_type == "refresh_token":
            work = self._refresh(form)
        else:
            raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
        answer: dict[str, Any] | OAuthError = await self._store.write(work)
        if isinstance(answer, OAuthError):  # refused by a transaction that revoked a family, and committed
            raise answer
        return answer

    def _exchange_code(self, form: Mapping[str, str]) -> Any:
        code = form.get("code") or ""
        verifier = form.get("code_verifier") or ""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | OAuthError:
            now = datetime.now(UTC)
            row = conn.execute("SELECT * FROM oauth_codes WHERE code_hash = ?", (secret_hash(code),)).fetchone()
            if row is None or row["expires_at"] <= iso(now):
                raise OAuthError("invalid_grant", "code: unknown or expired; authorize again")
            if row["used_at"] is not None:
                # A code presented twice was stolen or replayed: whatever it bought dies with it (RFC 6749 §4.1.2).
                revoke_grant(conn, row["grant_id"], iso(now), _ANONYMOUS, "code_reused")
                return OAuthError("invalid_grant", "code: already used; authorize again")
            if form.get("client_id") != row["client_id"] or form.get("redirect_uri") != row["redirect_uri"]:
                raise OAuthError("invalid_grant", "client_id and redirect_uri must be those of the authorization")
            if not _VERIFIER_RE.fullmatch(verifier) or not hmac.compare_digest(s256(verifier), row["code_challenge"]):
                raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
            grant = _live_grant(conn, row["grant_id"], now)
            conn.execute("UPDATE oauth_codes SET used_at = ? WHERE code_hash = ?", (iso(now), row["code_hash"]))
            return self._mint_pair(conn, grant, now, "oauth.token.code")

        return run

    def _refresh(self, form: Mapping[str, str]) -> Any:
        presented = form.get("refresh_token") or ""

        def run(conn: sqlite3.Connection) -> dict[str, Any] | OAuthError:
            now = datetime.now(UTC)
            # Only a refresh token is a refresh token: an access token or an agent's bearer here is refused
            # from its prefix, before any lookup (invariant 105).
            if credential_kind(presented) is not CredentialKind.OAUTH_REFRESH:
                raise OAuthError("invalid_grant", "refresh_token: not a refresh token")
            row = conn.execute(
                "SELECT r.*, g.client_id FROM oauth_refresh r JOIN oauth_grants g ON g.grant_id = r.grant_id"
                " WHERE r.token_hash = ?",
                (secret_hash(presented),),
            ).fetchone()
            if row is None or row["expires_at"] <= iso(now):
                raise OAuthError("invalid_grant", "refresh_token: unknown or expired; authorize again")
            if form.get("client_id") != row["client_id"]:
                raise OAuthError("invalid_grant", "client_id is not the one this refresh token was issued to")
            grant = _live_grant(conn, row["grant_id"], now)
            grace_ends = None
            if row["replaced_at"] is not None:
                replaced = datetime.fromisoformat(row["replaced_at"])
                grace_ends = iso(replaced + timedelta(seconds=self._limits.oauth_refresh_grace_s))
            use = policy.oauth_refresh_use(row["replaced_at"], row["successor"] is not None, iso(now), grace_ends)
            if use is policy.RefreshUse.REUSE:
                revoke_grant(conn, row["grant_id"], iso(now), _ANONYMOUS, "refresh_reused")
                return OAuthError("invalid_grant", "refresh_token: already used; authorize again")
            if use is policy.RefreshUse.GRACE:
                # Claude.ai may refresh twice at once: the second gets the very pair the first got, once.
                pair: dict[str, Any] = json.loads(self._vault.open(_SUCCESSOR, row["refresh_id"], row["successor"]))
                conn.execute("UPDATE oauth_refresh SET successor = NULL WHERE refresh_id = ?", (row["refresh_id"],))
                audit.append(
                    conn,
                    _client_actor(grant),
                    "oauth.token.refresh",
                    target=grant["agent_id"],
                    detail={"grant_id": grant["grant_id"], "grace": True},
                )
                return pair
            pair = self._mint_pair(conn, grant, now, "oauth.token.refresh")
            sealed = self._vault.seal(_SUCCESSOR, row["refresh_id"], json.dumps(pair))
            conn.execute(
                "UPDATE oauth_refresh SET replaced_at = ?, successor = ? WHERE refresh_id = ?",
                (iso(now), sealed, row["refresh_id"]),
            )
            return pair

        return run

    def _mint_pair(self, conn: sqlite3.Connection, grant: sqlite3.Row, now: datetime, action: str) -> dict[str, Any]:
        """A new access token (a `tokens` row bound to the grant's passport) and a new refresh token."""
        access, refresh = new_token(CredentialKind.OAUTH_ACCESS), new_token(CredentialKind.OAUTH_REFRESH)
        token_id = new_id("tok")
        access_ends = _later(now, self._limits.oauth_access_ttl_s, grant["expires_at"])
        conn.execute(
            "INSERT INTO tokens (token_id, token_hash, agent_id, jti, run_id, created_at, expires_at, grant_id)"
            " VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
            (token_id, secret_hash(access), grant["agent_id"], grant["jti"], iso(now), access_ends, grant["grant_id"]),
        )
        conn.execute(
            "INSERT INTO oauth_refresh (refresh_id, token_hash, grant_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                new_id("orf"),
                secret_hash(refresh),
                grant["grant_id"],
                iso(now),
                _later(now, self._limits.oauth_refresh_idle_s, grant["expires_at"]),
            ),
        )
        conn.execute("UPDATE oauth_clients SET last_used_at = ? WHERE client_id = ?", (iso(now), grant["client_id"]))
        audit.append(
            conn,
            _client_actor(grant),
            action,
            target=grant["agent_id"],
            detail={"grant_id": grant["grant_id"], "token_id": token_id},
        )
        expires_in = int((datetime.fromisoformat(access_ends) - now).total_seconds())
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": " ".join(grant["scopes"].split(",")),
        }

    async def revoke(self, form: Mapping[str, str]) -> bool:
        """RFC 7009: revoking either token of a family revokes the whole family (the grant). An unknown token,
        or one issued to another client, changes nothing and is answered the same (§2.2): False."""
        token = form.get("token") or ""
        kind = credential_kind(token)
        if kind is CredentialKind.OAUTH_ACCESS:
            sql = "SELECT g.grant_id, g.client_id FROM tokens t JOIN oauth_grants g ON g.grant_id = t.grant_id"
            sql += " WHERE t.token_hash = ?"
        elif kind is CredentialKind.OAUTH_REFRESH:
            sql = "SELECT g.grant_id, g.client_id FROM oauth_refresh r JOIN oauth_grants g ON g.grant_id = r.grant_id"
            sql += " WHERE r.token_hash = ?"
        else:
            return False

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(sql, (secret_hash(token),)).fetchone()
            if row is None or row["client_id"] != form.get("client_id"):
                return False
            revoke_grant(conn, row["grant_id"], iso(datetime.now(UTC)), _ANONYMOUS, "client_revoke")
            return True

        return await self._store.write(run)

    async def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """Housekeeping: expired requests and codes, successor pairs past their grace, and clients never
        approved within a day or unused for 90 days (DESIGN §9.4); and the refusal trace's pending summaries."""
        now = now or datetime.now(UTC)
        limits = self._limits
        try:
            await self.refusals.flush(now.timestamp())
        except Exception as e:  # the audit trace's failure must not keep the leftovers below from being swept
            log.error("oauth.refusals_flush_failed", error=type(e).__name__)

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            stamp = iso(now)
            graced = iso(now - timedelta(seconds=limits.oauth_refresh_grace_s))
            unapproved = iso(now - timedelta(seconds=limits.oauth_unapproved_client_s))
            unused = iso(now - timedelta(seconds=limits.oauth_unused_client_s))
            done = {
                "requests": conn.execute("DELETE FROM oauth_requests WHERE expires_at <= ?", (stamp,)).rowcount,
                "codes": conn.execute("DELETE FROM oauth_codes WHERE expires_at <= ?", (stamp,)).rowcount,
                "successors": conn.execute(
                    "UPDATE oauth_refresh SET successor = NULL WHERE successor IS NOT NULL AND replaced_at <= ?",
                    (graced,),
                ).rowcount,
                "clients": conn.execute(
                    "DELETE FROM oauth_clients WHERE (approved_at IS NULL AND created_at <= ?)"
                    " OR coalesce(last_used_at, created_at) <= ?",
                    (unapproved, unused),
                ).rowcount,
            }
            if done["clients"]:
                audit.append(conn, Actor("system", "oauth"), "oauth.client.sweep", detail={"clients": done["clients"]})
            return done

        return await self._store.write(run)


def _client_actor(grant: sqlite3.Row) -> Actor:
    return Actor("oauth_client", grant["client_id"], grant["owner_id"], grant["grant_id"])


def _registered_metadata(metadata: Mapping[str, Any]) -> ClientMetadata:
    """A registration's metadata, checked (RFC 7591 §2): public clients only, redirect URIs DESIGN §9.4 allows."""
    uris = metadata.get("redirect_uris")
    if (
        not isinstance(uris, list)
        or not uris
        or len(uris) > _REDIRECT_URIS_MAX
        or not all(isinstance(u, str) for u in uris)
    ):
        raise OAuthError("invalid_redirect_uri", f"redirect_uris: give 1-{_REDIRECT_URIS_MAX} URIs")
    for uri in uris:
        if not policy.oauth_redirect_registrable(uri):
            raise OAuthError(
                "invalid_redirect_uri",
                f"redirect_uri {uri!r}: only Claude's callbacks and http://localhost, 127.0.0.1 or [::1] are allowed",
            )
    method = metadata.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise OAuthError("invalid_client_metadata", "token_endpoint_auth_method: only none (a public client, PKCE)")
    application_type = metadata.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise OAuthError("invalid_client_metadata", "application_type: web or native")
    if not set(metadata.get("grant_types") or ["authorization_code"]) <= {"authorization_code", "refresh_token"}:
        raise OAuthError("invalid_client_metadata", "grant_types: authorization_code and refresh_token only")
    if not set(metadata.get("response_types") or ["code"]) <= {"code"}:
        raise OAuthError("invalid_client_metadata", "response_types: code only")
    name = metadata.get("client_name", "unnamed client")
    if not isinstance(name, str) or not name.strip() or len(name) > _CLIENT_NAME_CHARS:
        raise OAuthError("invalid_client_metadata", f"client_name: 1-{_CLIENT_NAME_CHARS} characters")
    return ClientMetadata(new_id("oac"), "dcr", name.strip(), tuple(uris), application_type)


def _save_client(conn: sqlite3.Connection, client: ClientMetadata, now: str) -> None:
    conn.execute(
        "INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris, application_type, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET client_name = excluded.client_name,"
        " redirect_uris = excluded.redirect_uris, application_type = excluded.application_type",
        (
            client.client_id,
            client.kind,
            client.client_name,
            json.dumps(list(client.redirect_uris)),
            client.application_type,
            now,
        ),
    )


def _client(conn: sqlite3.Connection, client_id: str) -> ClientMetadata | None:
    row = conn.execute("SELECT * FROM oauth_clients WHERE client_id = ?", (client_id,)).fetchone()
    if row is None:
        return None
    return ClientMetadata(
        row["client_id"],
        row["kind"],
        row["client_name"],
        tuple(json.loads(row["redirect_uris"])),
        row["application_type"],
    )


def _request(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM oauth_requests WHERE request_id = ? AND expires_at > ?", (request_id, iso(datetime.now(UTC)))
    ).fetchone()
    if row is None:
        raise not_found("authorization request")
    return row


def _live_grant(conn: sqlite3.Connection, grant_id: str, now: datetime) -> sqlite3.Row:
    """The grant a code or refresh token draws on, while it and its agent live (a token dies with its agent)."""
    grant: sqlite3.Row | None = conn.execute(
        "SELECT g.*, a.status, a.owner_id, p.passport FROM oauth_grants g JOIN agents a ON a.agent_id = g.agent_id"
        " JOIN passports p ON p.jti = g.jti WHERE g.grant_id = ?",
        (grant_id,),
    ).fetchone()
    if grant is None or grant["revoked_at"] is not None or grant["expires_at"] <= iso(now):
        raise OAuthError("invalid_grant", "this authorization was revoked or has expired; authorize again")
    if grant["status"] != "active":
        raise OAuthError("invalid_grant", "the agent this authorization acts as is gone; authorize again")
    return grant


def revoke_grant(conn: sqlite3.Connection, grant_id: str, now: str, actor: Actor, reason: str) -> list[str]:
    """Revoke a family: the grant, its access tokens, its refresh tokens' successor pairs. The ids of the access
    tokens this revoked."""
    conn.execute("UPDATE oauth_grants SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL", (now, grant_id))
    conn.execute("UPDATE oauth_refresh SET successor = NULL WHERE grant_id = ?", (grant_id,))
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL", (now, grant_id))
    revoked = [
        r[0] for r in conn.execute("SELECT token_id FROM tokens WHERE grant_id = ? AND revoked_at = ?", (grant_id, now))
    ]
    agent = conn.execute("SELECT agent_id FROM oauth_grants WHERE grant_id = ?", (grant_id,)).fetchone()
    revocation = record_revocation(conn, "token", grant_id, "token_revoke", now)
    audit.append(
        conn,
        actor,
        "oauth.revoke",
        target=agent[0] if agent else None,
        detail={"grant_id": grant_id, "reason": reason, "revocation_id": revocation},
    )
    log.info("oauth.family_revoked", grant_id=grant_id, reason=reason)
    return revoked
