"""The console's ASGI app: its safety headers, the cross-origin check, login, and one handler per page."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import structlog
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from agent_rooms_mcp import owner_actions, policy
from agent_rooms_mcp.auth.failures import AuthRateLimited
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Human, parse_scopes
from agent_rooms_mcp.principals import Scope as AgentScope
from agent_rooms_mcp.public import Exposure
from agent_rooms_mcp.services.console_sessions import LOGIN_PATH, MISSING_SESSION, ConsoleDenied
from agent_rooms_mcp.services.console_views import ConsoleViews
from agent_rooms_mcp.store.database import guarded_writes

log = structlog.get_logger("agent_rooms_mcp.console")

PREFIX = "/console/"
_TRANSPORT = "console"
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_STATUS = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN_SCOPE: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
}
# Characters that reorder or hide text (bidi overrides and isolates, zero-width joiners): shown as a visible
# mark in room content, so another owner's words cannot make a line read as something else.
_HIDDEN = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
AUTHORIZE_PATH = PREFIX + "authorize"
# An authorization request id as the OAuth service mints it (new_id): anything else is never echoed anywhere.
_REQUEST_ID = re.compile(r"oar_[A-Za-z0-9_-]{16,64}")
_OAUTH_SCOPE_ORDER = (AgentScope.READ, AgentScope.POST, AgentScope.TASK)
# What a page says after an action, by key: `?done=` names a key, never text, so a link someone crafted cannot
# make the console say what it did not do. An unknown key shows nothing.
DONE = {
    "consent.accepted": "the proposal is accepted.",
    "consent.rejected": "the proposal is rejected.",
    "consent.decided": "the proposal is decided; its state is below.",
    "run.stop": "stop asked; the run's state below says when it has ended.",
    "run.none": "nothing live to stop.",
    "agent.scopes": "the agent's scopes are changed.",
    "token.revoke": "the token is revoked.",
    "consent.mode": "the consent mode is set.",
    "device.revoke": "the device is revoked.",
}

Form = dict[str, str]
Page = Callable[[Request, Human, Form], Awaitable[Response]]


def inert(text: object) -> str:
    """Room content as plain characters for a template (which then escapes it): hidden controls made visible."""
    return _HIDDEN.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(text))


def environment() -> Environment:
    # autoescape=True, said explicitly: Jinja2's default is off (STYLE P18).
    env = Environment(
        loader=PackageLoader("agent_rooms_mcp.web.console", "templates"), autoescape=True, undefined=StrictUndefined
    )
    env.filters["inert"] = inert
    return env


async def logged_in_owner(hub: Hub, request: Request, cookie_name: str) -> Human:
    """The owner whose console session the request carries, or ConsoleDenied: the one way every console page
    (and later the OAuth approval page) learns who is logged in."""
    return await hub.console.authenticate(request.cookies.get(cookie_name))


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Console:
    """Plain ASGI, like the owner API beside it."""

    def __init__(self, hub: Hub, exposure: Exposure) -> None:
        self._hub = hub
        self._exposure = exposure
        # Under HTTPS (public mode) the cookie is `__Host-` and `Secure` (DESIGN §9.2, invariant 96).
        self._secure = exposure.public is not None
        self.cookie_name = "__Host-agent-rooms-console" if self._secure else "agent-rooms-console"
        # The approval page a not-logged-in owner arrived at, so the login that follows goes back to it. It
        # names a request id only (no secret: approving still needs the session), and is only ever used to
        # build a link to our own approval page.
        self.return_cookie = "__Host-agent-rooms-authorize" if self._secure else "agent-rooms-authorize"
        self._env = environment()
        limits = hub.settings.limits
        self._views = ConsoleViews(hub.store, hub.settings.run_logs_dir, limits.console_rows)
        self._cap = limits.console_form_bytes
        self._pages: dict[tuple[str, str], Page] = {
            ("GET", ""): self._home,
            ("GET", "consents"): self._consents,
            ("POST", "consents/decide"): self._decide,
            ("GET", "runs"): self._runs,
            ("GET", "runs.json"): self._runs_json,
            ("GET", "run"): self._run_log,
            ("GET", "runs/stop"): self._stop_confirm,
            ("POST", "runs/stop"): self._stop,
            ("GET", "agents"): self._agents,
            ("POST", "agents/scopes"): self._scopes,
            ("POST", "tokens/revoke"): self._revoke_token,
            ("GET", "rooms"): self._rooms,
            ("GET", "room"): self._room,
            ("GET", "grants"): self._grants,
            ("POST", "consent-mode"): self._consent_mode,
            ("GET", "devices"): self._devices,
            ("POST", "devices/revoke"): self._revoke_device,
            ("GET", "audit"): self._audit,
            ("POST", "logout"): self._logout,
            ("GET", "authorize"): self._authorize,
            ("POST", "authorize"): self._authorize_decide,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except _Refused as r:
            response = r.response
        except Exception as e:
            # Only the exception's type is logged: its message may carry a form field.
            log.error("console.internal_error", path=scope.get("path"), error=type(e).__name__)
            response = self._page("error.html", None, status=500, code="INTERNAL", message="something went wrong")
        for name, value in SECURITY_HEADERS.items():
            # setdefault: the approval page widens form-action to its one redirect origin (see _authorize).
            response.headers.setdefault(name, value)
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("origin") == "null" and headers.get("sec-fetch-site") == "same-origin":
            # Under our `Referrer-Policy: no-referrer` a browser sends `Origin: null` with its own forms; its
            # fetch metadata says where the form came from, and the cross-origin check below goes by that.
            del headers["origin"]
        peer = request.client.host if request.client else None
        refusal = self._exposure.refusal(peer, headers)
        if refusal is not None:
            return self._page("error.html", None, status=refusal[0], code=refusal[1], message="refused")
        method = request.method.upper()
        if not policy.cross_origin_allowed(
            method, headers.get("sec-fetch-site"), headers.get("origin"), headers.get("host")
        ):
            log.info("console.cross_origin_refused", path=request.url.path)
            return self._page(
                "error.html",
                None,
                status=403,
                code="CROSS_ORIGIN",
                message="this form was sent from another site; the console refused it",
            )
        path = request.url.path
        if path == PREFIX.rstrip("/"):
            return RedirectResponse(PREFIX, status_code=303)
        if path.startswith(PREFIX + "static/") and method == "GET":
            return self._static(path.removeprefix(PREFIX + "static/"))
        if path == LOGIN_PATH:
            return await self._login(request, method)
        page = self._pages.get((method, path.removeprefix(PREFIX)))
        if page is None or not path.startswith(PREFIX):
            return self._page("error.html", None, status=404, code="NOT_FOUND", message="no such page")
        try:
            who = await logged_in_owner(self._hub, request, self.cookie_name)
        except ConsoleDenied as denied:
            # A browser with no cookie at all is someone who has not logged in yet, not a failed attempt.
            if denied.reason != MISSING_SESSION:
                refused = await self._hub.auth.refuse(
                    denied.reason,
                    None,
                    transport=_TRANSPORT,
                    address=self._exposure.client_address(peer, headers),
                    actor=denied.actor,
                )
                if isinstance(refused, AuthRateLimited):
                    return self._rate_limited(refused)
            if method == "GET" and path == AUTHORIZE_PATH:
                return self._authorize_login(request)
            if method == "GET" and not path.endswith(".json"):
                return self._page("login.html", None, status=401, code=None)
            return self._page("error.html", None, status=401, code="UNAUTHENTICATED", message="log in again")
        form = await self._form(request) if method == "POST" else {}
        try:
            # Every write this request makes re-checks its session in the write's own transaction.
            assert who.actor.cred_id is not None
            with guarded_writes(self._hub.console.still_active(who.actor.cred_id)):
                return await page(request, who, form)
        except RoomsError as e:
            return self._page("error.html", who, status=_STATUS.get(e.code, 400), code=e.code.value, message=e.message)

    # Plumbing.

    def _page(self, template: str, who: Human | None, *, status: int = 200, **context: Any) -> Response:
        context["done"] = DONE.get(context.get("done") or "")
        body = self._env.get_template(template).render(logged_in=who is not None, **context)
        return HTMLResponse(body, status_code=status)

    def _rate_limited(self, e: AuthRateLimited) -> Response:
        """Past the failed-authentication limit (DESIGN §9.3): 429 with Retry-After, as at /mcp."""
        response = self._page("error.html", None, status=429, code="RATE_LIMITED", message="too many failed attempts")
        response.headers["retry-after"] = str(e.retry_after_s)
        return response

    def _static(self, name: str) -> Response:
        media = _STATIC.get(name)
        if media is None:
            return self._page("error.html", None, status=404, code="NOT_FOUND", message="no such file")
        data = resources.files("agent_rooms_mcp.web.console").joinpath("static", name).read_bytes()
        return Response(data, media_type=media)

    async def _form(self, request: Request) -> Form:
        """A urlencoded form, at most `console_form_bytes`, one value per field."""
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self._cap:
            raise _Refused(self._page("error.html", None, status=413, code="TOO_LARGE", message="form too large"))
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self._cap:
                raise _Refused(self._page("error.html", None, status=413, code="TOO_LARGE", message="form too large"))
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise _Refused(
                self._page("error.html", None, status=400, code="INVALID_ARGUMENT", message="not UTF-8")
            ) from None
        return {k: v[-1] for k, v in fields.items()}

    async def _act(self, who: Human, name: str, args: dict[str, Any]) -> Any:
        """One owner action, the very function the CLI runs (owner_actions.perform audits a refusal)."""
        return await owner_actions.perform(self._hub, who, name, args)

    async def _me(self, who: Human) -> str:
        assert who.owner_id is not None
        return await self._views.owner_handle(who.owner_id)

    @staticmethod
    def _back(to: str, done: str) -> Response:
        assert done in DONE, done  # a key of DONE: the page shows its text, never the parameter
        return RedirectResponse(PREFIX + to + "?" + urlencode({"done": done}), status_code=303)

    # Login and logout.

    async def _login(self, request: Request, method: str) -> Response:
        if method == "GET":  # a link scanner may GET this: it only shows the button
            code = request.query_params.get("code", "")
            return self._page("login.html", None, code=code, link_owner=await self._hub.console.link_owner(code))
        if method != "POST":
            return self._page("error.html", None, status=405, code="METHOD_NOT_ALLOWED", message="use the button")
        form = await self._form(request)
        try:
            login = await self._hub.console.redeem(form.get("code", ""), secure=self._secure)
        except ConsoleDenied as denied:
            headers = {k.lower(): v for k, v in request.headers.items()}
            peer = request.client.host if request.client else None
            refused = await self._hub.auth.refuse(
                denied.reason,
                form.get("code"),
                transport=_TRANSPORT,
                address=self._exposure.client_address(peer, headers),
            )
            if isinstance(refused, AuthRateLimited):
                return self._rate_limited(refused)
            return self._page("login.html", None, status=401, code=None, failed=True)
        pending = request.cookies.get(self.return_cookie, "")
        if _REQUEST_ID.fullmatch(pending):
            response = RedirectResponse(AUTHORIZE_PATH + "?" + urlencode({"request": pending}), status_code=303)
            response.delete_cookie(self.return_cookie, path="/", secure=self._secure, httponly=True, samesite="lax")
        else:
            response = RedirectResponse(PREFIX, status_code=303)
        response.set_cookie(
            self.cookie_name,
            login.cookie,
            max_age=login.max_age_s,
            path="/",
            secure=self._secure,
            httponly=True,
            samesite="strict",
        )
        return response

    async def _logout(self, request: Request, who: Human, form: Form) -> Response:
        await self._hub.console.logout(who)
        response = self._page("login.html", None, code=None, logged_out=True)
        response.delete_cookie(self.cookie_name, path="/", secure=self._secure, httponly=True, samesite="strict")
        return response

    # Pages.

    async def _home(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        me = await self._me(who)
        tokens = (await self._act(who, "token.list", {})).tokens
        return self._page(
            "home.html",
            who,
            me=me,
            pending=await self._views.pending(who.owner_id),
            live=await self._views.runs(who.owner_id, live=True),
            failed=await self._views.failed_wakes(who.owner_id),
            tokens=[t for t in tokens if t.status == "active"],
        )

    async def _consents(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        return self._page(
            "consents.html",
            who,
            me=await self._me(who),
            pending=await self._views.pending(who.owner_id),
            done=request.query_params.get("done"),
        )

    async def _decide(self, request: Request, who: Human, form: Form) -> Response:
        decision = form.get("decision")
        if decision not in ("accept", "reject"):
            raise invalid("decision", "accept or reject")
        args: dict[str, str | None] = {
            "ref": form.get("proposal_id", ""),
            "owner": await self._me(who),
            "payload_sha256": form.get("payload_sha256", ""),
        }
        if decision == "reject":
            args["reason"] = form.get("reason") or None
        done = await self._act(who, f"consent.{decision}", args)
        state = f"consent.{done.consent_state}"
        return self._back("consents", state if state in DONE else "consent.decided")

    async def _runs(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        return self._page(
            "runs.html",
            who,
            live=await self._views.runs(who.owner_id, live=True),
            recent=await self._views.runs(who.owner_id, live=False),
            done=request.query_params.get("done"),
        )

    async def _runs_json(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        live = await self._views.runs(who.owner_id, live=True)
        return Response(json.dumps({"runs": live}), media_type="application/json")

    async def _run_log(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        info, text = await self._views.run_log(
            who.owner_id, request.query_params.get("id", ""), self._hub.settings.limits.console_run_log_bytes
        )
        return self._page("run.html", who, run=info, log=text)

    async def _stop_confirm(self, request: Request, who: Human, form: Form) -> Response:
        return self._page(
            "stop.html", who, run_id=request.query_params.get("run", ""), agent=request.query_params.get("agent", "")
        )

    async def _stop(self, request: Request, who: Human, form: Form) -> Response:
        if form.get("confirm") != "stop":
            raise invalid("confirm", "press Stop on the confirmation page")
        done = await self._act(
            who, "agent.stop", {"handle": form.get("agent", ""), "run_id": form.get("run_id", ""), "wait": False}
        )
        return self._back("runs", "run.stop" if done.stopped else "run.none")

    async def _agents(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        agents = (await self._act(who, "agent.list", {})).agents
        tokens = (await self._act(who, "token.list", {})).tokens
        return self._page(
            "agents.html",
            who,
            agents=agents,
            tokens=tokens,
            listeners=await self._views.listeners(who.owner_id),
            done=request.query_params.get("done"),
        )

    async def _scopes(self, request: Request, who: Human, form: Form) -> Response:
        handle, text = form.get("handle", ""), form.get("scopes", "")
        agents = {a.handle: a for a in (await self._act(who, "agent.list", {})).agents}
        try:
            after = parse_scopes(text)
        except ValueError as e:
            raise invalid("scopes", str(e)) from None
        before = parse_scopes(",".join(agents[handle].scopes)) if handle in agents else frozenset()
        policy.require_invoke_confirmation(before, after, form.get("confirm", ""), handle)
        await self._act(who, "agent.scopes", {"handle": handle, "scopes": text})
        return self._back("agents", "agent.scopes")

    async def _revoke_token(self, request: Request, who: Human, form: Form) -> Response:
        await self._act(who, "token.revoke", {"token_id": form.get("token_id", "")})
        return self._back("agents", "token.revoke")

    async def _rooms(self, request: Request, who: Human, form: Form) -> Response:
        return self._page("rooms.html", who, rooms=(await self._act(who, "room.list", {})).rooms)

    async def _room(self, request: Request, who: Human, form: Form) -> Response:
        assert who.owner_id is not None
        room = await self._views.room(who.owner_id, request.query_params.get("name", ""))
        return self._page("room.html", who, room=room)

    async def _grants(self, request: Request, who: Human, form: Form) -> Response:
        grants = (await self._act(who, "grant.list", {})).grants
        return self._page(
            "grants.html",
            who,
            me=await self._me(who),
            grants=grants,
            rooms=(await self._act(who, "room.list", {})).rooms,
            done=request.query_params.get("done"),
        )

    async def _consent_mode(self, request: Request, who: Human, form: Form) -> Response:
        args = {
            "room": form.get("room", ""),
            "mode": form.get("mode", ""),
            "owner": await self._me(who),
            "collaborator": form.get("collaborator") or None,
        }
        await self._act(who, "consent.mode", args)
        return self._back("grants", "consent.mode")

    async def _devices(self, request: Request, who: Human, form: Form) -> Response:
        return self._page(
            "devices.html",
            who,
            devices=(await self._act(who, "device.list", {})).devices,
            done=request.query_params.get("done"),
        )

    async def _revoke_device(self, request: Request, who: Human, form: Form) -> Response:
        await self._act(who, "device.revoke", {"device_id": form.get("device_id", "")})
        return self._back("devices", "device.revoke")

    async def _audit(self, request: Request, who: Human, form: Form) -> Response:
        rows = (await self._act(who, "audit.tail", {"count": self._hub.settings.limits.console_rows})).rows
        names = await self._views.handles()
        verdict = await self._views.audit_verdict()
        return self._page("audit.html", who, rows=list(reversed(rows)), names=names, verdict=verdict)

    # The OAuth approval page (DESIGN §9.4): a client asked at /authorize; the owner picks which of their agents
    # it acts as and with which scopes, or denies. The service decides and audits; this only shows and asks.

    def _authorize_login(self, request: Request) -> Response:
        """Not logged in: say how, and remember the request so the login comes back here."""
        request_id = request.query_params.get("request", "")
        known = _REQUEST_ID.fullmatch(request_id) is not None
        response = self._page(
            "authorize_login.html",
            None,
            status=401,
            back=AUTHORIZE_PATH + "?" + urlencode({"request": request_id}) if known else None,
        )
        if known:
            # Lax, not Strict: it is set on a navigation that started at the client's site.
            response.set_cookie(
                self.return_cookie,
                request_id,
                max_age=self._hub.settings.limits.oauth_request_ttl_s,
                path="/",
                secure=self._secure,
                httponly=True,
                samesite="lax",
            )
        return response

    def _gone(self, who: Human) -> Response:
        return self._page(
            "error.html",
            who,
            status=404,
            code="NOT_FOUND",
            message="this authorization request is unknown, expired or already decided; nothing was issued."
            " Start again from the app that sent you here",
        )

    async def _authorize(self, request: Request, who: Human, form: Form) -> Response:
        request_id = request.query_params.get("request", "")
        if not _REQUEST_ID.fullmatch(request_id):
            return self._gone(who)
        try:
            pending = await self._hub.oauth.pending(request_id)
        except RoomsError as e:
            if e.code is ErrorCode.NOT_FOUND:
                return self._gone(who)
            raise
        redirect = urlsplit(pending.redirect_uri)
        port = redirect.port or (443 if redirect.scheme == "https" else 80)
        agents = [a for a in (await self._act(who, "agent.list", {})).agents]
        # Typically a chat agent: listed first and chosen by default.
        agents.sort(key=lambda a: (a.tool != "chat", a.handle))
        offered = [s for s in _OAUTH_SCOPE_ORDER if s in pending.scopes]
        response = self._page(
            "authorize.html",
            who,
            pending=pending,
            scheme=redirect.scheme,
            host=redirect.hostname or "",
            port=port,
            agents=agents,
            offered=offered,
            held={a.handle: sorted(set(a.scopes) & {s.value for s in offered}) for a in agents},
        )
        # A form's redirect is checked against form-action too (Chromium), so the approval page alone may send
        # its form on to the one redirect URI the service validated for this request, and nowhere else.
        origin = f"{redirect.scheme}://{redirect.netloc}"
        response.headers["content-security-policy"] = CSP.replace("form-action 'self'", f"form-action 'self' {origin}")
        return response

    async def _authorize_decide(self, request: Request, who: Human, form: Form) -> Response:
        request_id = form.get("request", "")
        if not _REQUEST_ID.fullmatch(request_id):
            return self._gone(who)
        decision = form.get("decision")
        try:
            if decision == "approve":
                scopes = frozenset(s for s in _OAUTH_SCOPE_ORDER if form.get(f"scope_{s.value}") == "on")
                location = await self._hub.oauth.approve(request_id, who, form.get("agent", ""), scopes)
            elif decision == "deny":
                location = await self._hub.oauth.deny(request_id, who)
            else:
                raise invalid("decision", "approve or deny")
        except RoomsError as e:
            if e.code is ErrorCode.NOT_FOUND and "authorization request" in e.message:
                return self._gone(who)
            raise
        return RedirectResponse(location, status_code=303)
