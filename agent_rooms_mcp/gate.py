"""The per-call boundary of every MCP tool: authentication of the caller, and argument errors as DESIGN §7 codes.

Every `tools/call` passes through `GatedServer.call_tool`, which shapes every tool error the way DESIGN §7
says. It resolves the caller before the SDK parses any argument (DESIGN §2), turns the SDK's argument and
unknown-tool errors into INVALID_ARGUMENT / TOO_LARGE / NOT_FOUND naming the field, and hands the tool
its caller through a context variable.

Why `call_tool` and not the SDK's server middleware: the SDK shapes a handler's result for the
negotiated protocol era (`resultType` on 2026-07-28 only, the serverInfo stamp) inside the handler
chain, and trusts a middleware that answers without `call_next` to do all that itself. An error
answered from middleware therefore went out in a different shape from one answered by a tool. Every
result returned from here takes the SDK's one path to the wire.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import structlog
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError

from agent_rooms_mcp import audit
from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.content import UNENCODABLE, unencodable_field
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid, too_large, unauthenticated
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Caller

log = structlog.get_logger("agent_rooms_mcp.gate")

# How a server opens (stdio, in-memory) or lends (HTTP) the hub its tools use.
HubLifespan = Callable[[MCPServer[Hub]], AbstractAsyncContextManager[Hub]]

# Where an error result carries its code for programs: `{"code", "message", "retry_after_ms"?}`.
ERROR_META_KEY = "agent-rooms/error"


@dataclass(frozen=True, slots=True)
class Call:
    """What a tool body may use for one call."""

    hub: Hub
    caller: Caller


_call: ContextVar[Call] = ContextVar("agent_rooms_call")

# Set by the HTTP bearer middleware on the ASGI scope's state; stdio and in-memory have none.
HTTP_CALLER_KEY = "agent_rooms_caller"


def current_call() -> Call:
    return _call.get()  # LookupError here is a wiring bug: every tools/call passes through `GatedServer`


def error_result(e: RoomsError) -> CallToolResult:
    """The one shape of a tool error (DESIGN §7). No `structuredContent`: clients on the TypeScript SDK
    (the MCP Inspector among them) check it against the tool's `outputSchema` even when `isError` is
    set, and would show a schema complaint instead of the code."""
    detail: dict[str, Any] = {"code": e.code.value, "message": e.message}
    if e.retry_after_ms is not None:
        detail["retry_after_ms"] = e.retry_after_ms
    return CallToolResult(
        is_error=True,
        content=[TextContent(type="text", text=f"{e.code}: {e.message}")],
        meta={ERROR_META_KEY: detail},
    )


def _argument_error(e: ValidationError) -> RoomsError:
    first = e.errors(include_input=False, include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or "arguments"
    if first["type"] == "string_too_long":
        # Over the limit in characters is over it in UTF-8 bytes too: one wording for both checks.
        return too_large(field, int((first.get("ctx") or {}).get("max_length", 0)))
    return RoomsError(ErrorCode.INVALID_ARGUMENT, f"{field}: {first['msg']}")


def _sdk_refusal(e: ToolError) -> RoomsError | None:
    """The SDK's own refusals before a tool body runs, as our codes; None for anything else."""
    if isinstance(e.__cause__, ValidationError):
        return _argument_error(e.__cause__)
    if str(e).startswith("Unknown tool"):
        return RoomsError(ErrorCode.NOT_FOUND, "no such tool; tools/list names them")
    return None


class GatedServer(MCPServer[Hub]):
    """`MCPServer` whose every tool call is authenticated first and answers errors in one shape."""

    def __init__(self, name: str, *, lifespan: HubLifespan, **kwargs: Any) -> None:
        # The hubs open under this server, newest last: a call that arrives without a request context has
        # no other way to reach the store its refusal is audited in.
        self._open_hubs: list[Hub] = []
        super().__init__(name, lifespan=self._holding(lifespan), **kwargs)

    def _holding(self, lifespan: HubLifespan) -> HubLifespan:
        @asynccontextmanager
        async def hold(server: MCPServer[Hub]) -> AsyncIterator[Hub]:
            async with lifespan(server) as hub:
                self._open_hubs.append(hub)
                try:
                    yield hub
                finally:
                    self._open_hubs.remove(hub)

        return hold

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Hub, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        started = time.perf_counter()
        # Read once: the SDK's Context is a pydantic model, and each read of it is a lookup among its private fields.
        request_context = context.request_context if context is not None else None
        hub = request_context.lifespan_context if request_context is not None else None
        try:
            if request_context is None:  # only a direct in-process call has none: nothing to authenticate it by
                raise unauthenticated("no_request")
            call = Call(request_context.lifespan_context, await _caller(request_context))
            # Per-agent abuse limits, before the tool runs: a refused call changes nothing (DESIGN §9.3).
            await call.hub.rates.charge(call.caller, name)
        except RoomsError as e:
            log.info("tool.call", tool=name, outcome="denied", error=e.code.value, ms=_ms(started))
            if e.audit_reason in _GATE_REASONS:  # authentication's own refusals are audited where they happen
                await self._audit_refusal(hub, name, e.audit_reason)
            return error_result(e)
        except Exception:
            # The SDK would send str() of anything raised here to the caller: never let it.
            log.exception("tool.gate_failed", tool=name)
            await self._audit_refusal(hub, name, "gate_failed")
            return error_result(unauthenticated("gate_failed"))
        token = _call.set(call)
        try:
            unencodable = unencodable_field(arguments)
            result: CallToolResult | InputRequiredResult
            if unencodable is not None:
                # Refused before the SDK parses: its types take such a string, and SQLite would crash on it.
                result = error_result(invalid(unencodable, UNENCODABLE))
            else:
                result = await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            # A crash: the SDK logs it and answers "Error executing tool NAME", with nothing of its text.
            log.info("tool.call", tool=name, agent_id=call.caller.agent_id, error="crash", ms=_ms(started))
            raise
        except ToolError as e:
            refusal = _sdk_refusal(e)
            if refusal is None:
                raise
            result = error_result(refusal)
        finally:
            _call.reset(token)
        error = result.meta.get(ERROR_META_KEY) if isinstance(result, CallToolResult) and result.meta else None
        log.info(
            "tool.call",
            tool=name,
            agent_id=call.caller.agent_id,
            error=error["code"] if error else None,
            ms=_ms(started),
        )
        return result

    async def _audit_refusal(self, hub: Hub | None, tool: str, reason: str) -> None:
        """The gate's own refusals (no request, no HTTP caller, a crash while authenticating) are denials
        like any other (issue 12): audited on the one denial path, by nobody known."""
        hub = hub if hub is not None else (self._open_hubs[-1] if self._open_hubs else None)
        if hub is None:  # no hub open under this server: there is no audit log to write to
            log.warning("tool.refusal_unaudited", tool=tool, reason=reason)
            return
        try:
            await audit.record_denial(hub.store, audit.ANONYMOUS, GATE_ACTION, reason, target=tool)
        except Exception:
            # The caller still gets its refusal; the failure to audit it is logged, never sent to it.
            log.exception("tool.refusal_audit_failed", tool=tool, reason=reason)


# The audit action of a refusal by the gate itself, and the reasons it writes (authentication writes its own).
GATE_ACTION = "tool.gate"
_GATE_REASONS = frozenset({"no_request", "no_http_caller"})


async def _caller(ctx: ServerRequestContext[Hub, Any]) -> Caller:
    hub = ctx.lifespan_context
    request = ctx.request
    if request is not None:
        # HTTP: the bearer middleware already authenticated this request, or it never got here.
        caller = getattr(getattr(request, "state", None), HTTP_CALLER_KEY, None)
        if not isinstance(caller, Caller):
            raise unauthenticated("no_http_caller")
        return caller
    return await hub.auth.authenticate(hub.settings.stdio_token, MCP_KINDS, transport="stdio")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
