"""The one module that uses the SDK's (provisional) server middleware: every `tools/call` passes here.

It resolves the caller before the SDK parses any argument (DESIGN §2), turns argument errors into
INVALID_ARGUMENT / TOO_LARGE naming the field (DESIGN §7), and hands the tool its caller through a
context variable. It catches everything it raises: legacy-era clients would see the raw text.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import structlog
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import CallToolResult, TextContent
from pydantic import ValidationError

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.errors import ErrorCode, RoomsError, too_large, unauthenticated
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import Caller

log = structlog.get_logger("agent_rooms_mcp.gate")


@dataclass(frozen=True, slots=True)
class Call:
    """What a tool body may use for one call."""

    hub: Hub
    caller: Caller


_call: ContextVar[Call] = ContextVar("agent_rooms_call")

# Set by the HTTP bearer middleware on the ASGI scope's state; stdio and in-memory have none.
HTTP_CALLER_KEY = "agent_rooms_caller"


def current_call() -> Call:
    return _call.get()  # LookupError here is a wiring bug: every tools/call passes through `gate`


def error_result(e: RoomsError) -> CallToolResult:
    return CallToolResult(
        is_error=True,
        content=[TextContent(type="text", text=f"{e.code}: {e.message}")],
        structured_content={"code": e.code.value, "message": e.message},
    )


def _error_text(result: HandlerResult) -> str | None:
    """The text of an error result, whether the SDK hands it back as a model or already serialised."""
    if isinstance(result, CallToolResult):
        is_error, content = result.is_error, [c.model_dump() for c in result.content[:1]]
    elif isinstance(result, dict):
        is_error, content = bool(result.get("isError")), list(result.get("content") or [])[:1]
    else:
        return None
    if not is_error:
        return None
    return str(content[0].get("text", "")) if content and isinstance(content[0], dict) else ""


def _argument_error(e: ValidationError) -> RoomsError:
    first = e.errors(include_input=False, include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or "arguments"
    if first["type"] == "string_too_long":
        # Over the limit in characters is over it in UTF-8 bytes too: one wording for both checks.
        return too_large(field, int((first.get("ctx") or {}).get("max_length", 0)))
    return RoomsError(ErrorCode.INVALID_ARGUMENT, f"{field}: {first['msg']}")


class Gate:
    """`async (ctx, call_next)` middleware; `validators` maps tool name -> its argument validator, used to
    name the bad field once the SDK has refused a call's arguments (validating twice on every call cost
    more than the argument errors it would explain)."""

    def __init__(self, validators: Mapping[str, Any]) -> None:
        self._validators = validators

    async def __call__(self, ctx: ServerRequestContext[Hub, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        started = time.perf_counter()
        name = str((ctx.params or {}).get("name", ""))
        try:
            call = Call(ctx.lifespan_context, await self._caller(ctx))
        except RoomsError as e:
            log.info("tool.call", tool=name, outcome="denied", code=e.code.value, ms=_ms(started))
            return error_result(e)
        except Exception:
            log.exception("tool.gate_failed", tool=name)
            return error_result(unauthenticated("gate_failed"))
        token = _call.set(call)
        try:
            result = await call_next(ctx)
        finally:
            _call.reset(token)
        failure = _error_text(result)
        # The SDK reports arguments it refused as "Error executing tool NAME: <pydantic text>", before the tool
        # runs; a crash inside a tool has no colon part, and our own errors start with their code.
        if failure is not None and failure.startswith(f"Error executing tool {name}: "):
            result = error_result(self._explain_arguments(name, ctx))
            failure = result.content[0].text  # type: ignore[union-attr]
        elif failure is not None and failure.startswith("Unknown tool"):
            result = error_result(RoomsError(ErrorCode.NOT_FOUND, "no such tool; tools/list names them"))
            failure = "NOT_FOUND"
        log.info(
            "tool.call",
            tool=name,
            agent_id=call.caller.agent_id,
            error=failure.split(":", 1)[0] if failure else None,
            ms=_ms(started),
        )
        return result

    def _explain_arguments(self, name: str, ctx: ServerRequestContext[Hub, Any]) -> RoomsError:
        validator = self._validators.get(name)
        try:
            if validator is not None:
                validator((ctx.params or {}).get("arguments") or {})
        except ValidationError as e:
            return _argument_error(e)
        return RoomsError(ErrorCode.INVALID_ARGUMENT, "arguments: not valid for this tool")

    async def _caller(self, ctx: ServerRequestContext[Hub, Any]) -> Caller:
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
