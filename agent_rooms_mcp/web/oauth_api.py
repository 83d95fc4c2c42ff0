"""The OAuth 2.1 endpoints of public mode (DESIGN §9.4): thin ASGI over `services/oauth.py`.

- `GET /.well-known/oauth-authorization-server` (RFC 8414) and `GET /.well-known/oauth-protected-resource/mcp`
  (RFC 9728): the metadata a client discovers from the 401 at /mcp.
- `GET /authorize`: validates and stores the request, then sends the browser to the console's approval page
  (a cross-site arrival carries no SameSite=Strict cookie, so the page continues same-site).
- `POST /token`, `POST /register` (RFC 7591, limited per source and in all), `POST /revoke` (RFC 7009).

Served only in public mode: the issuer and the resource are the public URL's. Errors are OAuth's JSON
(`{"error", "error_description"}`); nothing here authenticates an MCP caller, which stays BearerGate's alone.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import anyio
import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_rooms_mcp import policy
from agent_rooms_mcp.auth.failures import AuthRateLimited, source_of
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.public import BindRefused, Exposure, is_loopback
from agent_rooms_mcp.services.oauth import AuthorizeRedirected, AuthorizeRefused, OAuthError
from agent_rooms_mcp.settings import Settings

log = structlog.get_logger("agent_rooms_mcp.oauth_api")

AS_METADATA = "/.well-known/oauth-authorization-server"
RESOURCE_METADATA = "/.well-known/oauth-protected-resource/mcp"
# Where a client that missed the 401's pointer looks next (the MCP authorization spec's fallback): the same.
_RESOURCE_METADATA_ROOT = "/.well-known/oauth-protected-resource"
_PATHS = frozenset(
    {AS_METADATA, RESOURCE_METADATA, _RESOURCE_METADATA_ROOT, "/authorize", "/token", "/register", "/revoke"}
)
_BODY_CAP = 64 * 1024  # an OAuth request is a short form or a small JSON document
_HOUR = 3600.0
_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
_TRANSPORT = "oauth"


def check_test_allowance(settings: Settings, exposure: Exposure) -> None:
    """The test suite's loopback allowance for metadata documents must never reach a hub others can reach:
    BindRefused unless the public URL is itself a loopback one (or there is none)."""
    if settings.oauth_cimd_test_ca is not None and exposure.public is not None and not is_loopback(exposure.public[1]):
        raise BindRefused(
            "AGENT_ROOMS_OAUTH_ALLOW_LOOPBACK_CIMD_FOR_TESTS is for the test suite only: unset it to serve"
            f" {exposure.issuer}"
        )


def resource_metadata_url(exposure: Exposure) -> str | None:
    issuer = exposure.issuer
    return None if issuer is None else issuer + RESOURCE_METADATA


class _Answer(Exception):
    """An answer made before the service had its say. `audited`: its refusal is already in the audit log (a
    failed authentication at /token) or already reported to the refusal trace."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: tuple[tuple[bytes, bytes], ...] = (),
        *,
        audited: bool = False,
    ) -> None:
        self.status, self.body, self.headers, self.audited = status, body, headers, audited


@dataclass
class _Asked:
    """What one request at an endpoint was, for the audit trace of its refusal."""

    action: str = ""
    address: str | None = None
    client_id: str | None = None
    refused: str | None = None  # the OAuth error it was refused with


# The audit action of a refusal at each endpoint.
_ACTIONS = {
    "/register": "oauth.client.register",
    "/authorize": "oauth.authorize",
    "/token": "oauth.token",
    "/revoke": "oauth.revoke",
}


class _Window:
    """Events in the last hour, per key and in all: the limits of /register and /authorize per source, keyed as
    every per-source count is (auth/failures.source_of: an IPv6 peer by its /64, which one host commonly holds).

    They live in this process's memory: a restart forgets them, and each process serving the same database
    counts its own. That is enough because what bounds the database is counted in it and shared: /register's
    limit in all (services/oauth.py counts the registrations of the last hour) and the requests waiting at
    once (`oauth_requests_pending_max`). These windows only spread the work between sources, and nobody outside
    can restart the hub."""

    def __init__(self, per_key: int, overall: int) -> None:
        self._per_key, self._overall = per_key, overall
        self._keys: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def admit(self, key: str) -> bool:
        now = anyio.current_time()
        for q in (self._all, *self._keys.values()):
            while q and q[0] <= now - _HOUR:
                q.popleft()
        self._keys = {k: q for k, q in self._keys.items() if q}
        mine = self._keys.setdefault(key, deque())
        if len(mine) >= self._per_key or len(self._all) >= self._overall:
            return False
        mine.append(now)
        self._all.append(now)
        return True


class OAuthApi:
    def __init__(self, hub: Hub, exposure: Exposure) -> None:
        assert exposure.issuer is not None and exposure.resource is not None  # mounted in public mode only
        self._hub = hub
        self._exposure = exposure
        self._issuer: str = exposure.issuer
        self._resource: str = exposure.resource
        limits = hub.settings.limits
        self._registrations = _Window(limits.oauth_register_per_source_per_h, limits.oauth_register_per_h)
        self._authorizations = _Window(limits.oauth_authorize_per_source_per_h, limits.oauth_authorize_per_h)

    @staticmethod
    def serves(path: str) -> bool:
        return path in _PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = _Asked()
        try:
            status, body, headers = await self._handle(scope, receive, asked)
        except _Answer as a:
            status, body, headers = a.status, a.body, a.headers
        except OAuthError as e:
            status, body, headers = e.status, {"error": e.error, "error_description": e.description}, _NO_STORE
            if e.status == 429:
                headers = (*headers, (b"retry-after", b"3600"))
        except Exception as e:
            log.error("oauth_api.internal_error", path=scope.get("path"), error=type(e).__name__)
            status, body, headers = 500, {"error": "server_error"}, _NO_STORE
        if asked.refused is not None:
            # Every refusal at an endpoint leaves its trace (bounded under a flood): the error code, the source,
            # the client id as named; never a code, verifier or token.
            try:
                await self._hub.oauth.refusals.refused(
                    asked.action, asked.refused, address=asked.address, client_id=asked.client_id
                )
            except Exception as e:  # the caller still gets its answer; the failure to audit it is logged
                log.error("oauth_api.refusal_unaudited", action=asked.action, error=type(e).__name__)
        await _respond(send, status, body, headers)

    async def _handle(
        self, scope: Scope, receive: Receive, asked: _Asked
    ) -> tuple[int, dict[str, Any], tuple[tuple[bytes, bytes], ...]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = (scope.get("client") or (None,))[0]
        refusal = self._exposure.refusal(peer, headers)
        if refusal is not None:  # the front door's refusal (Host, Origin), as for every other path
            raise _Answer(refusal[0], {"error": refusal[1]})
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == AS_METADATA:
            return 200, self._server_metadata(), ()
        if method == "GET" and path in (RESOURCE_METADATA, _RESOURCE_METADATA_ROOT):
            return 200, self._resource_metadata(), ()
        asked.address = self._exposure.client_address(peer, headers)
        asked.action = _ACTIONS.get(path, "oauth.request")
        try:
            return await self._endpoint(scope, receive, headers, asked)
        except _Answer as a:
            if not a.audited and a.status >= 400:
                asked.refused = str(a.body.get("error", "refused")).lower()
            raise
        except OAuthError as e:
            asked.refused = e.error.lower()
            raise

    async def _endpoint(
        self, scope: Scope, receive: Receive, headers: Mapping[str, str], asked: _Asked
    ) -> tuple[int, dict[str, Any], tuple[tuple[bytes, bytes], ...]]:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/authorize":
            params = _single(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
            asked.client_id = params.get("client_id")
            if not self._authorizations.admit(source_of(asked.address, _TRANSPORT)):
                raise _Answer(429, {"error": "RATE_LIMITED"}, ((b"retry-after", b"3600"),))
            try:
                location = await self._hub.oauth.authorize(params, self._resource)
            except AuthorizeRedirected as e:
                asked.refused = e.error
                raise _Answer(302, {}, ((b"location", e.location.encode()), *_NO_STORE), audited=True) from None
            except AuthorizeRefused as e:
                # Not redirected: the client or its redirect URI is the very thing not trusted (RFC 6749 §4.1.2.1).
                raise _Answer(400, {"error": e.error, "error_description": e.description}) from None
            if location.startswith("/"):  # our own approval page, at the public URL
                location = self._issuer + location
            raise _Answer(302, {}, ((b"location", location.encode()), *_NO_STORE))
        if method != "POST":
            raise _Answer(405, {"error": "invalid_request", "error_description": f"{method} {path}: not allowed"})
        if path == "/register":
            if not self._registrations.admit(source_of(asked.address, _TRANSPORT)):
                raise _Answer(429, {"error": "RATE_LIMITED"}, ((b"retry-after", b"3600"),))
            return 201, await self._hub.oauth.register(await _json(receive, headers)), _NO_STORE
        form = await _form(receive, headers)
        asked.client_id = form.get("client_id")
        if path == "/token":
            try:
                return 200, await self._hub.oauth.token(form, self._resource), _NO_STORE
            except OAuthError as e:
                if e.error != "invalid_grant":
                    raise
                # A code or refresh token that did not work is a failed authentication: counted and audited by
                # the same limiter as /mcp's (bounded rows), so guessing at /token meets the same 429.
                presented = form.get("refresh_token") or form.get("code")
                refused = await self._hub.auth.refuse(
                    f"oauth_{form.get('grant_type', 'none')}", presented, transport=_TRANSPORT, address=asked.address
                )
                if isinstance(refused, AuthRateLimited):
                    raise _Answer(
                        429,
                        {"error": "RATE_LIMITED"},
                        ((b"retry-after", str(refused.retry_after_s).encode()),),
                        audited=True,
                    ) from None
                raise _Answer(e.status, {"error": e.error, "error_description": e.description}, _NO_STORE,
                              audited=True) from None  # fmt: skip
        # /revoke: the same answer whatever it found (RFC 7009 §2.2); a revoke that revoked nothing is a refusal.
        if not await self._hub.oauth.revoke(form):
            asked.refused = "not_revoked"
        return 200, {}, _NO_STORE

    def _server_metadata(self) -> dict[str, Any]:
        issuer = self._issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": issuer + "/authorize",
            "token_endpoint": issuer + "/token",
            "registration_endpoint": issuer + "/register",
            "revocation_endpoint": issuer + "/revoke",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": _scopes(),
            "authorization_response_iss_parameter_supported": True,
            # Client ID metadata documents are preferred; registration is the fallback (DESIGN §9.4).
            "client_id_metadata_document_supported": True,
        }

    def _resource_metadata(self) -> dict[str, Any]:
        return {
            "resource": self._resource,
            "authorization_servers": [self._issuer],
            "scopes_supported": _scopes(),
            "bearer_methods_supported": ["header"],
        }


def _scopes() -> list[str]:
    return sorted(s.value for s in policy.OAUTH_SCOPES)


def _single(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Request parameters, each at most once (RFC 6749 §3.1, §3.2)."""
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise OAuthError("invalid_request", f"{name}: given more than once")
        params[name] = value
    return params


async def _read(receive: Receive, headers: Mapping[str, str]) -> bytes:
    length = headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > _BODY_CAP:
        raise OAuthError("invalid_request", f"body: at most {_BODY_CAP} bytes", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _BODY_CAP:
            raise OAuthError("invalid_request", f"body: at most {_BODY_CAP} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _form(receive: Receive, headers: Mapping[str, str]) -> dict[str, str]:
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send the parameters as application/x-www-form-urlencoded")
    raw = await _read(receive, headers)
    try:
        return _single(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "body: not a form") from None


async def _json(receive: Receive, headers: Mapping[str, str]) -> dict[str, Any]:
    raw = await _read(receive, headers)
    try:
        body = json.loads(raw)
    except ValueError:
        raise OAuthError("invalid_client_metadata", "body: not JSON") from None
    if not isinstance(body, dict):
        raise OAuthError("invalid_client_metadata", "body: must be a JSON object")
    return body


async def _respond(send: Send, status: int, body: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...]) -> None:
    payload = b"" if status == 302 else json.dumps(body).encode()
    headers = [(b"content-length", str(len(payload)).encode()), *extra]
    if payload:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def with_oauth(app: ASGIApp, api: OAuthApi) -> ASGIApp:
    """One ASGI app: the OAuth endpoints beside everything else."""

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and OAuthApi.serves(scope["path"]):
            await api(scope, receive, send)
        else:
            await app(scope, receive, send)

    return routed
