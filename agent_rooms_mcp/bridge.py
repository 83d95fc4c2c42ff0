"""`agent-rooms bridge`: the MCP server a woken CLI launches, holding only its run token (DESIGN §5).

The CLI speaks MCP over the bridge's stdin and stdout; the bridge forwards each JSON-RPC message to the
hub's streamable HTTP endpoint, over the Unix socket the supervisor serves for this run alone
(`AGENT_ROOMS_BRIDGE_SOCKET`) or over HTTPS (`AGENT_ROOMS_HUB_URL`, a listener's runs). It reads the run
token from `AGENT_ROOMS_TOKEN_FILE` (a 0600 file) and nothing else: it never opens the database, the
hub's home or the issuer key, and imports nothing of the store, so a sandbox can hide all of those from
the woken CLI and still leave it a way to the room (invariant 100).

Why a raw relay and not an SDK client plus an SDK server (decided on evidence, research/mcp-sdk.md):
- The CLIs speak both protocol eras over stdio (Claude Code 2.1.330 the stateless 2026-07-28 one with
  `server/discover`; Codex and older clients the initialize handshake). The hub's HTTP endpoint already
  serves both eras, so forwarding each message as one POST keeps whatever era the CLI chose; a proxy
  would have to pick one era towards the hub and translate the other.
- The hub's answers, tool errors and JSON-RPC errors alike, reach the CLI byte for byte: a proxy would
  re-validate and re-wrap them, and its own failures would read as the hub's.
- `import mcp.shared.inbound` alone took 1.6 s on the loaded test box against 0.2 s for `httpx2`; the
  bridge starts once per wake, before the CLI can read the room.
What the relay must know of the protocol is small and lives here: the session id of the handshake era
(replayed when the hub expires an idle session), the routing headers of the stateless era, JSON or SSE
answers, notifications that get no answer, and the stateless era's cancellation (closing the POST). It
opens no standalone GET stream: the hub sends nothing unasked, and every answer comes on its request's POST.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import structlog

from agent_rooms_mcp.home import check_private_file
from agent_rooms_mcp.lines import DISCARD_CHUNK, TOO_LARGE_METHOD, BoundedLines, too_large_message
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.sockets import SUN_PATH_MAX

log = structlog.get_logger("agent_rooms_mcp.bridge")

TOKEN_FILE_ENV = "AGENT_ROOMS_TOKEN_FILE"
SOCKET_ENV = "AGENT_ROOMS_BRIDGE_SOCKET"
HUB_URL_ENV = "AGENT_ROOMS_HUB_URL"
# Passed to a listener's bridge so it trusts the same certificates the listener does (a private CA, say);
# the sandbox binds what they name, read-only.
TRUST_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR")

# The wire names of the SDK's streamable HTTP transport (mcp.shared.inbound, mcp_types), kept here so the
# bridge need not import the SDK; tests/test_bridge.py checks they still match it.
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

# JSON-RPC error codes of the bridge's own answers (the implementation-defined range of JSON-RPC 2.0).
HUB_UNREACHABLE = -32000
HUB_REFUSED = -32001
INVALID_REQUEST = -32600
# A socket or URL that does not answer within this long is reported, not waited on.
CONNECT_TIMEOUT_S = 10.0
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_REINIT_ID = "agent-rooms-bridge-reinitialize"


class BridgeError(Exception):
    """The bridge cannot start; the message names the variable or file and the fix."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the hub's MCP endpoint is: a URL, reached over a Unix socket when `uds` is set."""

    url: str
    uds: str | None
    label: str  # named in every error about reaching it


def target_from_env(env: Mapping[str, str]) -> Target:
    socket, url = env.get(SOCKET_ENV), env.get(HUB_URL_ENV)
    if socket and url:
        raise BridgeError(f"set only one of {SOCKET_ENV} and {HUB_URL_ENV}")
    if socket:
        # The Host must be one the hub's gate accepts (loopback names); the socket decides where it goes.
        return Target("http://localhost/mcp", socket, f"unix:{socket}")
    if url:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host:
            raise BridgeError(f"{HUB_URL_ENV}={url!r} is not an https:// URL")
        if parts.scheme == "http" and not _loopback(host):
            # The run token would cross the network in clear text.
            raise BridgeError(f"{HUB_URL_ENV}={url!r}: plain http is allowed only to loopback; use https://")
        path = parts.path.rstrip("/")
        path = path if path.endswith("/mcp") else path + "/mcp"
        full = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        return Target(full, None, full)
    raise BridgeError(f"set {SOCKET_ENV} (a woken run's socket) or {HUB_URL_ENV} (https://HUB)")


def read_token(env: Mapping[str, str]) -> str:
    name = env.get(TOKEN_FILE_ENV)
    if not name:
        raise BridgeError(f"set {TOKEN_FILE_ENV} to the run's 0600 token file")
    path = Path(name)
    try:
        check_private_file(path)  # a token others can read is refused, as the hub refuses such key files
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BridgeError(f"{TOKEN_FILE_ENV}: {e}") from None
    if not token:
        raise BridgeError(f"{TOKEN_FILE_ENV}: {path} is empty")
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _header_value(value: str) -> str:
    """The SDK's encoding of a routing header: printable ASCII as is, anything else base64 in a sentinel."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not value.startswith("=?base64?"):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def _error(request_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class _Out:
    """stdout, one whole line at a time whichever task writes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._lock = anyio.Lock()

    async def line(self, data: bytes) -> None:
        if b"\n" in data or b"\r" in data:
            try:  # one message, one line
                data = json.dumps(json.loads(data), separators=(",", ":")).encode()
            except ValueError:
                log.warning("bridge.unparseable_answer")  # a line break inside it would split it in two
                return
        async with self._lock:
            await anyio.to_thread.run_sync(self._write, data + b"\n")

    async def message(self, message: dict[str, Any]) -> None:
        await self.line(json.dumps(message, separators=(",", ":")).encode())

    def _write(self, data: bytes) -> None:
        self._raw.write(data)
        self._raw.flush()


class Relay:
    """One CLI's MCP connection, relayed to the hub message by message."""

    def __init__(self, client: httpx2.AsyncClient, target: Target, token: str, out: _Out, limit: int) -> None:
        self._client = client
        self._target = target
        self._token = token
        self._out = out
        self._limit = limit
        # The handshake era: the hub's session, the version it negotiated, and what opened the session (the
        # hub closes idle sessions; the relay opens a new one the same way rather than fail the CLI's call).
        self._session: str | None = None
        self._version: str | None = None
        self._initialize: dict[str, Any] | None = None
        self._initialized: dict[str, Any] | None = None
        self._reopen = anyio.Lock()
        # The stateless era has no client-to-server notifications on HTTP: cancelling closes the POST.
        self._in_flight: dict[str, anyio.CancelScope] = {}
        self._stateless = False  # the CLI speaks the 2026-07-28 era (seen on its first request)

    async def handle(self, text: str, tg: anyio.abc.TaskGroup) -> None:
        text = text.strip()
        if not text:
            return
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            # Not ours to judge: the hub answers a malformed message the way it answers any client.
            tg.start_soon(self._forward_raw, text.encode())
            return
        method, request_id = message.get("method"), message.get("id")
        if method == TOO_LARGE_METHOD:
            await self._out.message(_error(request_id, INVALID_REQUEST, too_large_message(self._limit)))
            return
        if method is None or request_id is None:
            if method == "notifications/initialized":
                self._initialized = message
            if self._stateless and method is not None:
                # The 2026-07-28 HTTP wire takes no notifications from a client: a cancellation closes its
                # request's POST, and anything else has nowhere to go.
                if method == "notifications/cancelled":
                    self._cancel(message)
                return
            tg.start_soon(self._notify, message)
            return
        if self._modern(message) is not None:
            self._stateless = True
        if method == "initialize":
            self._initialize = message
        scope = anyio.CancelScope()
        key = json.dumps(request_id)
        self._in_flight[key] = scope
        tg.start_soon(self._request, message, scope, key)

    def _cancel(self, message: dict[str, Any]) -> None:
        """A stateless-era cancellation ends its request's POST (the hub sees the stream close)."""
        params = message.get("params")
        scope = self._in_flight.get(json.dumps(params.get("requestId"))) if isinstance(params, dict) else None
        if scope is not None:
            scope.cancel()

    @staticmethod
    def _modern(message: dict[str, Any]) -> str | None:
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        version = meta.get(VERSION_META_KEY) if isinstance(meta, dict) else None
        return version if isinstance(version, str) else None

    def _headers(self, message: dict[str, Any] | None) -> dict[str, str]:
        headers = {
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "authorization": f"Bearer {self._token}",
        }
        version = self._modern(message) if message is not None else None
        if version is not None and message is not None:
            # The stateless era routes on headers that repeat the body (the hub checks that they agree).
            method = str(message.get("method") or "")
            headers[VERSION_HEADER] = version
            if method:
                headers[METHOD_HEADER] = method
            key = NAME_BEARING_METHODS.get(method)
            name = (message.get("params") or {}).get(key) if key else None
            if isinstance(name, str):
                headers[NAME_HEADER] = _header_value(name)
            # Our tools declare no `x-mcp-header` parameters, so no Mcp-Param-* headers are owed.
            return headers
        if self._session is not None:
            headers[SESSION_HEADER] = self._session
        if self._version is not None and (message is None or message.get("method") != "initialize"):
            headers[VERSION_HEADER] = self._version
        return headers

    async def _notify(self, message: dict[str, Any]) -> None:
        """A notification or a response to the hub: nothing comes back to the CLI, errors go to the log."""
        try:
            response = await self._client.post(self._target.url, json=message, headers=self._headers(message))
        except httpx2.TransportError as e:
            log.warning("bridge.unreachable", hub=self._target.label, error=type(e).__name__)
            return
        if response.status_code >= 400:
            log.warning("bridge.notification_refused", status=response.status_code)

    async def _forward_raw(self, body: bytes) -> None:
        try:
            response = await self._client.post(self._target.url, content=body, headers=self._headers(None))
            if response.content.strip():
                await self._out.line(response.content.strip())
        except (httpx2.TransportError, ValueError) as e:
            log.warning("bridge.raw_failed", hub=self._target.label, error=type(e).__name__)

    async def _request(self, message: dict[str, Any], scope: anyio.CancelScope, key: str) -> None:
        request_id = message["id"]
        try:
            with scope:
                answered = await self._post(message)
                if answered == "session_gone" and await self._reopen_session():
                    answered = await self._post(message)
                if answered == "session_gone":
                    answered = "NOT_FOUND: the hub ended this MCP session and did not open another"
                if answered is not None:
                    await self._out.message(_error(request_id, HUB_REFUSED, answered))
        except httpx2.TransportError as e:
            why = f"agent-rooms bridge: cannot reach the hub at {self._target.label}: {type(e).__name__}: {e}"
            await self._out.message(_error(request_id, HUB_UNREACHABLE, why.rstrip(": ")))
        finally:
            if self._in_flight.get(key) is scope:
                del self._in_flight[key]

    async def _post(self, message: dict[str, Any]) -> str | None:
        """POST one request and relay its answer. None when answered; else why not, for an error."""
        async with self._client.stream(
            "POST", self._target.url, json=message, headers=self._headers(message)
        ) as response:
            status = response.status_code
            if status == 404 and self._session is not None and self._modern(message) is None:
                return "session_gone"
            if status >= 400:
                return await self._refusal(response, message["id"])
            if message.get("method") == "initialize":
                self._session = response.headers.get(SESSION_HEADER) or self._session
            kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind == "application/json":
                body = await self._body(response)
                if body is None:
                    return f"TOO_LARGE: the hub's answer is over {self._limit} bytes"
                self._learn_version(message, body)
                await self._out.line(body)
                return None
            if kind == "text/event-stream":
                async for data in self._events(response):
                    self._learn_version(message, data)
                    await self._out.line(data)
                return None
            return f"the hub at {self._target.label} answered HTTP {status} with no JSON-RPC message"

    def _learn_version(self, message: dict[str, Any], body: bytes) -> None:
        if message.get("method") != "initialize":
            return
        try:
            version = (json.loads(body).get("result") or {}).get("protocolVersion")
        except (ValueError, AttributeError):
            return
        if isinstance(version, str):
            self._version = version

    async def _refusal(self, response: httpx2.Response, request_id: Any) -> str | None:
        """A refusal before any tool ran (401, 413, 429...): the hub's own JSON-RPC error if it sent one,
        else its code and status, so the CLI reads the same code a direct client would."""
        body = await self._body(response) or b""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "jsonrpc" in parsed:
            await self._out.message({**parsed, "id": request_id})
            return None
        code = parsed.get("error") if isinstance(parsed, dict) and isinstance(parsed.get("error"), str) else None
        retry = response.headers.get("retry-after")
        tail = f"; retry after {retry} s" if retry else ""
        status = response.status_code
        return f"{code or f'HTTP_{status}'}: the hub at {self._target.label} answered HTTP {status}{tail}"

    async def _body(self, response: httpx2.Response) -> bytes | None:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks).strip()

    async def _events(self, response: httpx2.Response) -> AsyncIterator[bytes]:
        """The data of each server-sent event, bounded like a stdio line; priming events carry none."""
        data: list[str] = []
        size = 0
        async for line in response.aiter_lines():
            if not line:
                if data:
                    yield "\n".join(data).encode()
                data, size = [], 0
                continue
            field, _, value = line.partition(":")
            if field == "data":
                value = value[1:] if value.startswith(" ") else value
                size += len(value)
                if size > self._limit:
                    log.warning("bridge.event_too_large", limit=self._limit)
                    data, size = [], 0
                    continue
                data.append(value)
        if data:
            yield "\n".join(data).encode()

    async def _reopen_session(self) -> bool:
        """The hub closed an idle session: open another with the CLI's own handshake, once for all waiters."""
        gone = self._session
        async with self._reopen:
            if self._session != gone:
                return True  # another request already reopened it
            if self._initialize is None:
                return False
            self._session = None
            opening = {**self._initialize, "id": _REINIT_ID}
            response = await self._client.post(self._target.url, json=opening, headers=self._headers(opening))
            if response.status_code >= 400 or not response.headers.get(SESSION_HEADER):
                return False
            self._session = response.headers[SESSION_HEADER]
            if self._initialized is not None:
                await self._client.post(
                    self._target.url, json=self._initialized, headers=self._headers(self._initialized)
                )
            log.info("bridge.session_reopened")
            return True

    async def close(self) -> None:
        """The CLI closed stdin: end the hub's session as a client would."""
        if self._session is None:
            return
        with anyio.move_on_after(CONNECT_TIMEOUT_S):
            with contextlib.suppress(httpx2.TransportError):
                await self._client.delete(self._target.url, headers=self._headers(None))


async def relay(stdin: BinaryIO, stdout: BinaryIO, target: Target, token: str, limits: Limits) -> None:
    """Relay until the CLI closes stdin, then end the hub's session; requests in flight are abandoned."""
    transport = httpx2.AsyncHTTPTransport(uds=target.uds) if target.uds else None
    timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=None)  # a long-poll or a subscription may wait long
    async with httpx2.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False) as client:
        session = Relay(client, target, token, _Out(stdout), limits.stdio_line_bytes)
        async with anyio.create_task_group() as tg:
            async for line in BoundedLines(stdin, limits.stdio_line_bytes):
                await session.handle(line, tg)
            tg.cancel_scope.cancel()
        await session.close()


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    configure_logging()  # stderr: stdout carries the protocol
    try:
        target, token = target_from_env(env), read_token(env)
        limits = Limits.from_env(env)
    except (BridgeError, ValueError) as e:
        sys.stderr.write(f"agent-rooms bridge: {e}\n")
        return 2
    if target.uds is not None and len(os.fsencode(target.uds)) > SUN_PATH_MAX:
        # sun_path holds 108 bytes; from the socket's own directory its name is short. The bridge does
        # nothing else with paths after this, so its working directory is free to change.
        os.chdir(os.path.dirname(target.uds))
        target = Target(target.url, os.path.basename(target.uds), target.label)
    stdin = os.fdopen(os.dup(0), "rb", buffering=DISCARD_CHUNK)
    stdout = os.fdopen(os.dup(1), "wb", buffering=0)
    log.info("bridge.start", hub=target.label)
    anyio.run(relay, stdin, stdout, target, token, limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
