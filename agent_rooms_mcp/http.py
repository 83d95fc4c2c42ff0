"""Streamable HTTP at /mcp: Host and Origin checks, the bearer check, body caps, then the SDK's app; and
`GET /healthz`, answered 200 after the Host and Origin checks, without a credential.

The bearer check runs once per request before anything is parsed, and answers every failure with
the same 401 (DESIGN §2). Only the Authorization header counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_rooms_mcp import audit, models, policy
from agent_rooms_mcp.auth.failures import AuthRateLimited
from agent_rooms_mcp.auth.tokens import MCP_KINDS, PUBLIC_MCP_KINDS, CredentialKind
from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.gate import HTTP_CALLER_KEY
from agent_rooms_mcp.housekeeping import housekeeping
from agent_rooms_mcp.http_sessions import Sessions
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.ids import RunId
from agent_rooms_mcp.principals import Caller
from agent_rooms_mcp.public import Exposure
from agent_rooms_mcp.server import create_server, existing_hub
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.web.console import Console
from agent_rooms_mcp.web.oauth_api import OAuthApi, check_test_allowance, resource_metadata_url, with_oauth
from agent_rooms_mcp.web.owner_api import OwnerApi, beside

log = structlog.get_logger("agent_rooms_mcp.http")

_SESSION_HEADER = b"mcp-session-id"
HEALTH_PATH = "/healthz"


class BearerGate:
    """Pure ASGI middleware in front of the MCP app."""

    def __init__(
        self,
        app: ASGIApp,
        hub: Hub,
        exposure: Exposure,
        *,
        only_run: RunId | None = None,
        transport: str = "http",
    ) -> None:
        self._app = app
        self._hub = hub
        self._exposure = exposure
        self._hosts = exposure.hosts
        # A run's bridge socket (run_socket.py): that run's token only, and named so in the audit.
        self._only_run = only_run
        self._transport = transport
        self._body_cap = hub.settings.limits.http_body_bytes
        self._retry_after = str(hub.settings.limits.http_retry_after_s).encode()
        # Public mode: /mcp also takes OAuth access tokens issued for it, and its 401 tells a client where to
        # find the authorization server (DESIGN §9.4); elsewhere the plain `Bearer` of DESIGN §2.
        self._audience = exposure.resource
        self._kinds = PUBLIC_MCP_KINDS if self._audience is not None else MCP_KINDS
        metadata = resource_metadata_url(exposure)
        self._challenge = b"Bearer" if metadata is None else f'Bearer resource_metadata="{metadata}"'.encode()
        # Legacy-era sessions, capped per agent and in all (http_sessions.py).
        self._sessions = Sessions(hub.settings.limits, self._terminate_session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = (scope.get("client") or (None,))[0]
        refusal = self._exposure.refusal(peer, headers)
        if refusal is not None:
            log.info("http.refused", peer=peer, code=refusal[1])
            await _respond(send, refusal[0], {"error": refusal[1]})
            return
        if scope["path"] == HEALTH_PATH and scope["method"] == "GET":
            # DESIGN §9.5: a monitor's probe needs no credential, so it is answered before the bearer check,
            # and it says that the hub serves and nothing else.
            await _respond(send, 200, {"status": "ok"})
            return
        length = headers.get("content-length") or "0"
        if not length.isdigit():
            await _respond(send, 400, {"error": "INVALID_ARGUMENT"})
            return
        if int(length) > self._body_cap:
            await _respond(send, 413, {"error": "TOO_LARGE"})
            return
        query = scope.get("query_string", b"").decode("latin-1").lower()
        # Whom a failed authentication counts against: forwarded headers count only from a named proxy.
        address = self._exposure.client_address(peer, headers)
        if query and ("token" in query or "bearer" in query or any(k.value in query for k in CredentialKind)):
            refused = await self._hub.auth.refuse(
                "credential_in_query", None, transport=self._transport, address=address
            )
            await _drain(receive, self._body_cap)
            await _auth_failed(send, refused, self._challenge)
            return
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        presented = credential.strip() if scheme.lower() == "bearer" else None
        try:
            caller = await self._hub.auth.authenticate(
                presented, self._kinds, transport=self._transport, address=address, audience=self._audience
            )
            if self._only_run is not None and not policy.may_use_run_socket(caller, self._only_run):
                raise await self._hub.auth.refuse(
                    "not_this_runs_socket", presented, transport=self._transport, address=address, actor=caller.actor
                )
        except RoomsError as e:
            await _drain(receive, self._body_cap)
            await _auth_failed(send, e, self._challenge)
            return
        public = headers.get(_SESSION_HEADER.decode())
        session = None if public is None else self._sessions.get(public, caller.agent_id)
        if public is not None:
            if session is None:
                reason = "session_of_another_agent" if self._sessions.known(public) else "unknown_session"
                await self._refuse(reason, caller)
                await _drain(receive, self._body_cap)
                await _respond(send, 404, {"error": "NOT_FOUND"})
                return
            scope = {**scope, "headers": _with_header(scope["headers"], _SESSION_HEADER, session.sdk_id.encode())}
        opening = public is None and _may_open_session(scope, headers)
        if opening and not await self._sessions.admit(caller.agent_id):
            await _drain(receive, self._body_cap)
            await _respond(send, 429, {"error": "RATE_LIMITED"}, ((b"retry-after", self._retry_after),))
            return
        scope.setdefault("state", {})[HTTP_CALLER_KEY] = caller

        async def send_translated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                for key, value in headers:
                    if key.lower() == _SESSION_HEADER:
                        mine = self._sessions.publish(value.decode("latin-1"), caller.agent_id).encode()
                        message = {**message, "headers": _with_header(headers, _SESSION_HEADER, mine)}
                ended = message["status"] == 404 or (scope["method"] == "DELETE" and message["status"] < 300)
                if public is not None and ended:
                    self._sessions.forget(public)  # the SDK ended it (expired, or the client's DELETE)
            await send(message)

        if session is not None:
            session.in_flight += 1
        try:
            await self._app(scope, receive, send_translated)
        finally:
            if opening:
                self._sessions.opened(caller.agent_id)
            if session is not None:
                session.in_flight -= 1
                session.last_used = anyio.current_time()

    async def _terminate_session(self, sdk_id: str) -> None:
        """End the SDK's session as its client would: a DELETE through the SDK's own app."""
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "DELETE",
            "scheme": "http",
            "path": "/mcp",
            "raw_path": b"/mcp",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", self._hosts[0].encode()), (_SESSION_HEADER, sdk_id.encode())],
            "client": None,
            "server": None,
            "state": {},
        }

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def discard(message: Message) -> None:
            pass

        await self._app(scope, receive, discard)

    async def _refuse(self, reason: str, caller: Caller | None = None) -> None:
        actor = caller.actor if caller is not None else audit.ANONYMOUS
        await audit.record_denial(
            self._hub.store, actor, "auth.authenticate", reason, detail={"transport": self._transport}
        )
        log.info("auth.denied", reason=reason, transport=self._transport)


def _may_open_session(scope: Scope, headers: dict[str, str]) -> bool:
    """A legacy-era POST without a session id (an initialize) opens a session; the 2026-07-28 era
    names its protocol version in a header and has no sessions."""
    version = headers.get("mcp-protocol-version")
    return scope["method"] == "POST" and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS)


def _with_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, value if k.lower() == name else v) for k, v in headers]


async def _drain(receive: Receive, cap: int) -> None:
    """Read, and drop, the body of a request answered without it (up to `cap`, the body limit its length was
    checked against). A connection closed with the request unread is reset by the kernel, and a proxy in front
    may then lose the answer it was relaying: behind Caddy a 429's body was cut off that way."""
    read = 0
    while read <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _respond(send: Send, status: int, body: dict[str, str], extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _auth_failed(send: Send, e: RoomsError, challenge: bytes) -> None:
    if isinstance(e, AuthRateLimited):  # DESIGN §9.3: 429 with Retry-After, before any tool runs
        await _respond(send, 429, {"error": "RATE_LIMITED"}, ((b"retry-after", str(e.retry_after_s).encode()),))
    else:
        # Identical for every reason: the reason is in the audit row only (DESIGN §2, §9.4, invariant 14).
        await _respond(send, 401, {"error": "UNAUTHENTICATED"}, ((b"www-authenticate", challenge),))


@asynccontextmanager
async def open_http_app(settings: Settings, *, exposure: Exposure | None = None) -> AsyncIterator[ASGIApp]:
    """The ASGI app with its hub open and the SDK's session manager running (tests drive it in-process).
    `exposure`: public mode's hosts, origins and proxies (public.py); loopback only by default."""
    async with open_http_hub(settings, exposure=exposure) as (_, app):
        yield app


@asynccontextmanager
async def open_http_hub(settings: Settings, *, exposure: Exposure | None = None) -> AsyncIterator[tuple[Hub, ASGIApp]]:
    """`open_http_app`'s app with the hub it serves (`serve --http` ends the hub's long polls as it stops)."""
    exposure = exposure or Exposure()
    check_test_allowance(settings, exposure)
    models.build_all()  # deferred for a stdio start's sake (models.py); a served hub builds them before serving
    async with Hub.open(settings) as hub, supervising(hub), housekeeping(hub), mcp_app(hub, exposure=exposure) as app:
        # The owner API (DESIGN §9.1) sits beside /mcp, with a gate of its own: devices, never agents.
        # So does the owner console (DESIGN §9.2): a session cookie of an owner, never a bearer credential.
        served = beside(app, OwnerApi(hub, exposure), Console(hub, exposure))
        # Public mode: the hub is the authorization server of its own /mcp (DESIGN §9.4).
        yield hub, (served if exposure.issuer is None else with_oauth(served, OAuthApi(hub, exposure)))


@asynccontextmanager
async def mcp_app(
    hub: Hub,
    *,
    exposure: Exposure | None = None,
    only_run: RunId | None = None,
    transport: str = "http",
) -> AsyncIterator[ASGIApp]:
    """The gated MCP app on an open hub: `serve --http`'s, and each run's bridge socket's (`only_run`), so both
    authenticate, answer errors and audit the same way."""
    exposure = exposure or Exposure()
    mcp = create_server(existing_hub(hub))
    hosts = exposure.hosts
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{h}:*" for h in hosts] + list(hosts),
        allowed_origins=[f"{scheme}://{h}{port}" for scheme, h in exposure.origins for port in (":*", "")],
    )
    inner = mcp.streamable_http_app(
        json_response=True,
        transport_security=security,
        max_request_body_size=hub.settings.limits.http_body_bytes,
        # Backstops to our own caps in BearerGate, which close sessions through the SDK.
        session_idle_timeout=hub.settings.limits.http_session_idle_s,
        max_sessions=hub.settings.limits.http_sessions,
    )
    async with mcp.session_manager.run():
        yield BearerGate(inner, hub, exposure, only_run=only_run, transport=transport)


class HttpHub:
    """For uvicorn: the app of `open_http_app`, opened and closed by the ASGI lifespan protocol.

    Plain ASGI rather than a Starlette router in front: every request would pay for the routing."""

    def __init__(self, settings: Settings, exposure: Exposure | None = None) -> None:
        self._settings = settings
        self._exposure = exposure
        self._app: ASGIApp | None = None
        self._hub: Hub | None = None

    def stop_long_polls(self) -> None:
        """The server begins to stop: its long polls answer now rather than hold it (serving.Server's on_stop)."""
        if self._hub is not None:
            self._hub.store.end_long_polls()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self._app is not None:
            await self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            async with open_http_hub(self._settings, exposure=self._exposure) as (hub, app):
                self._hub, self._app = hub, app
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                self._hub, self._app = None, None
        except Exception as e:
            # Startup failed (an unsafe key file, no hub): uvicorn prints this and exits.
            await send({"type": "lifespan.startup.failed", "message": str(e)})
            return
        await send({"type": "lifespan.shutdown.complete"})
