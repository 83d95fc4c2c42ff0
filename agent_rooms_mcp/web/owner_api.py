"""The owner API at /owner/v1/: JSON over HTTP(S) for an owner's enrolled devices (DESIGN §9.1).

- `GET /owner/v1/hub`: the hub's deployment id and issuer key id (`k4.pid`), which `login` pins.
- `POST /owner/v1/login` `{"code", "name"}`: redeem an enrollment code for a device credential (shown once).
- `POST /owner/v1/listener/OP` with the same credential: the listener's wake book (`web/listener_api.py`).
- `POST /owner/v1/actions/NAME` with `Authorization: Bearer ard_…`: one owner action of `owner_actions`, its
  arguments as the JSON body; the answer is the action's result model, or `{"code", "message"}`.

Failed authentication, of a device credential or of an enrollment code, goes through the hub's failed-auth
limiter and gets the same 401 as `/mcp` (429 with Retry-After past the limit). Only `ard_` is accepted here.
An action's body is read only once its device authenticated, and each device draws on a bucket of owner
actions a minute, and another of listener requests (429 with Retry-After and `retry_after_ms` past either).
A defect answers `{"error": "INTERNAL"}` with 500, never the server's bare error page.
"""

from __future__ import annotations

import json
import math
from typing import Any

import structlog
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_rooms_mcp import audit, owner_actions
from agent_rooms_mcp.auth.failures import AuthRateLimited
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.public import Exposure
from agent_rooms_mcp.ratelimit import Bucket
from agent_rooms_mcp.services.devices import DeviceDenied
from agent_rooms_mcp.web import listener_api

log = structlog.get_logger("agent_rooms_mcp.owner_api")

PREFIX = "/owner/v1/"
CONSOLE = "/console/"
LISTENER = "listener/"
_TRANSPORT = "owner_api"
_STATUS = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN_SCOPE: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
}


class _Answer(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status, self.body, self.headers = status, body, headers


class OwnerApi:
    """Plain ASGI, like the gate in front of /mcp."""

    def __init__(self, hub: Hub, exposure: Exposure) -> None:
        self._hub = hub
        self._exposure = exposure
        self._cap = hub.settings.limits.http_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: tuple[tuple[bytes, bytes], ...] = ()
        try:
            status, body = await self._handle(scope, receive)
        except _Answer as a:
            status, body, headers = a.status, a.body, a.headers
        except Exception as e:
            # A defect must still get our JSON answer, not the server's bare one. Only the exception's type
            # is logged: its message may carry an argument (a secret, a body).
            log.error("owner_api.internal_error", path=scope.get("path"), error=type(e).__name__)
            status, body = 500, {"error": "INTERNAL"}
        await _respond(send, status, body, headers)

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = (scope.get("client") or (None,))[0]
        # The same peer, Host and Origin rules as /mcp (public.py): a browser page elsewhere gets nothing here.
        refusal = self._exposure.refusal(peer, headers)
        if refusal is not None:
            raise _Answer(refusal[0], {"error": refusal[1]})
        path, method = scope["path"], scope["method"]
        # Whom a failed authentication counts against: forwarded headers count only from a named proxy.
        address = self._exposure.client_address(peer, headers)
        if path == PREFIX + "hub" and method == "GET":
            return 200, self._hub.devices.identity().model_dump()
        if method != "POST":
            raise _Answer(405, {"error": "METHOD_NOT_ALLOWED"})
        if path == PREFIX + "login":  # no credential yet: the enrollment code is in the body
            return 200, (await self._login(await _body(receive, headers, self._cap), address)).model_dump()
        name = path.removeprefix(PREFIX + "actions/")
        if path.startswith(PREFIX + LISTENER):
            name = path.removeprefix(PREFIX)
        elif name == path:
            raise _Answer(404, {"code": "NOT_FOUND", "message": "no such path"})
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        presented = credential.strip() if scheme.lower() == "bearer" else None
        try:
            who = await self._hub.devices.authenticate(presented)
        except DeviceDenied as denied:
            raise await self._refused(denied, presented, address) from None
        try:
            if name.startswith(LISTENER):
                # A listener's long polls and lease renewals are its heartbeat, not owner actions: they draw
                # on a bucket of the device's listeners, charged before the body is read as an action's is.
                await self._hub.rates.charge_device(who, Bucket.LISTENER_REQUESTS)
                body = await _body(receive, headers, self._cap)
                return 200, await listener_api.handle(self._hub, who, name.removeprefix(LISTENER), body)
            # Charged before the body is read: a device past its bucket costs one settlement, nothing more.
            await self._hub.rates.charge_device(who)
            # Parsed only now, for an authenticated device: a stranger's body is never read (DESIGN §2).
            body = await _body(receive, headers, self._cap)
            result = await owner_actions.perform(self._hub, who, name, body)
        except RoomsError as e:
            raise _error(e) from None
        except listener_api.LeaseLostAnswer as e:
            raise _Answer(409, {"code": "CONFLICT", "message": str(e), "lease_lost": True}) from None
        except listener_api.Unavailable:
            raise _Answer(503, {"error": "UNAVAILABLE"}, ((b"retry-after", b"1"),)) from None
        return 200, result.model_dump(mode="json")

    async def _login(self, body: Any, address: str | None) -> BaseModel:
        code, name = body.get("code"), body.get("name")
        if not isinstance(code, str) or not isinstance(name, str):
            raise _error(invalid("code", "give the enrollment code and a name for this device"))
        try:
            return await self._hub.devices.redeem(code, name)
        except DeviceDenied as denied:
            raise await self._refused(denied, code, address) from None
        except RoomsError as e:
            raise _error(e) from None

    async def _refused(self, denied: DeviceDenied, presented: str | None, address: str | None) -> _Answer:
        e = await self._hub.auth.refuse(
            denied.reason, presented, transport=_TRANSPORT, address=address, actor=denied.actor
        )
        if isinstance(e, AuthRateLimited):
            return _Answer(429, {"error": "RATE_LIMITED"}, ((b"retry-after", str(e.retry_after_s).encode()),))
        # Identical for every reason, as at /mcp (DESIGN §2): the reason is in the audit row only.
        return _Answer(401, {"error": "UNAUTHENTICATED"}, ((b"www-authenticate", b"Bearer"),))


def _error(e: RoomsError) -> _Answer:
    if e.code is ErrorCode.UNAUTHENTICATED:
        # A device revoked while its request ran gets the very answer any refused credential gets.
        return _Answer(401, {"error": "UNAUTHENTICATED"}, ((b"www-authenticate", b"Bearer"),))
    body: dict[str, Any] = {"code": e.code.value, "message": e.message}
    if e.missing is not None:
        # What the device itself named, so its CLI says it back with the command that lists the valid ones,
        # as the hub's CLI does. Sent alike whether the thing is missing or hidden (invariant 82).
        # Only a handle- or id-shaped reference goes back (DESIGN §7), never a pasted secret.
        kind, ref = e.missing
        body["missing"] = {"kind": kind, "ref": ref if ref is not None and audit.safe_target(ref) == ref else None}
    headers: tuple[tuple[bytes, bytes], ...] = ()
    if e.retry_after_ms is not None:
        body["retry_after_ms"] = e.retry_after_ms
        headers = ((b"retry-after", str(math.ceil(e.retry_after_ms / 1000)).encode()),)
    return _Answer(_STATUS.get(e.code, 400), body, headers)


async def _body(receive: Receive, headers: dict[str, str], cap: int) -> Any:
    length = headers.get("content-length") or "0"
    if not length.isdigit():
        raise _Answer(400, {"code": "INVALID_ARGUMENT", "message": "content-length: not a number"})
    if int(length) > cap:
        raise _Answer(413, {"code": "TOO_LARGE", "message": f"body: larger than the limit of {cap} bytes"})
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise _Answer(413, {"code": "TOO_LARGE", "message": f"body: larger than the limit of {cap} bytes"})
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise _Answer(400, {"code": "INVALID_ARGUMENT", "message": "body: not JSON"}) from None
    if not isinstance(body, dict):
        raise _Answer(400, {"code": "INVALID_ARGUMENT", "message": "body: must be a JSON object"})
    return body


async def _respond(send: Send, status: int, body: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def beside(mcp_app: ASGIApp, api: OwnerApi, console: ASGIApp | None = None) -> ASGIApp:
    """One ASGI app: the owner API under /owner/v1/, the owner console under /console/ (and /console, sent
    there), everything else to the MCP app and its gate."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await api(scope, receive, send)
        elif console is not None and scope["type"] == "http" and scope["path"].startswith(CONSOLE.rstrip("/")):
            await console(scope, receive, send)
        else:
            await mcp_app(scope, receive, send)

    return app
