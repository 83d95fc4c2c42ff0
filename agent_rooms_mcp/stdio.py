"""stdio transport: the SDK's stdio streams fed by a line reader with a size cap and bounded memory.

The SDK reads stdin with an unbounded `async for line`; one huge line would be held whole in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO

import anyio
import structlog
from mcp.server.stdio import stdio_server

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import Settings

log = structlog.get_logger("agent_rooms_mcp.stdio")

_DISCARD_CHUNK = 64 * 1024
_REQUEST_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[A-Za-z0-9_.:-]{1,64}")')


class BoundedLines:
    """Lines of at most `limit` bytes. A longer line is skipped without being held in memory; if it was a
    request, a small stand-in with the same id takes its place so the client gets an error, not silence."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._limit = limit

    def __aiter__(self) -> BoundedLines:
        return self

    async def _readline(self, size: int) -> bytes:
        # A blocked read of stdin cannot be interrupted; at shutdown the thread is left to EOF.
        return await anyio.to_thread.run_sync(self._raw.readline, size, abandon_on_cancel=True)

    async def __anext__(self) -> str:
        line = await self._readline(self._limit + 1)
        if not line:
            raise StopAsyncIteration
        if len(line) <= self._limit or line.endswith(b"\n"):
            return line.decode("utf-8", errors="replace")
        head = line[:4096]
        while line and not line.endswith(b"\n"):
            line = await self._readline(_DISCARD_CHUNK)
        log.warning("stdio.line_too_large", limit=self._limit)
        # Only an id before "params" is the request's own: one inside the arguments must not be answered.
        found = _REQUEST_ID.search(head.split(b'"params"', 1)[0])
        if found is None:
            return "\n"  # an unparseable line: the SDK logs and drops it
        stand_in = {"jsonrpc": "2.0", "id": json.loads(found.group(1)), "method": "agent-rooms/request-too-large"}
        return json.dumps(stand_in) + "\n"


_HINT = "set AGENT_ROOMS_TOKEN_FILE (a 0600 file) or AGENT_ROOMS_TOKEN; see `agent-rooms connect AGENT`"


@asynccontextmanager
async def _checked_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Open the hub and say once, on stderr, if this process's credential will not work.

    The server still serves: the client lists our tools and every call explains itself as UNAUTHENTICATED.
    """
    async with Hub.open(settings) as hub, supervising(hub):
        if settings.stdio_token is None:
            log.warning("stdio.no_credential", hint=_HINT, problem=settings.stdio_token_problem)
        else:
            try:
                await hub.auth.authenticate(settings.stdio_token, MCP_KINDS, transport="stdio")
            except RoomsError:
                log.warning("stdio.credential_rejected", hint="the token is unknown, expired or revoked; " + _HINT)
        yield hub


async def serve_stdio(settings: Settings) -> None:
    mcp = create_server(lambda _: _checked_hub(settings))
    # Read our own duplicate of fd 0 so the line cap applies; the SDK still owns stdout.
    raw = os.fdopen(os.dup(0), "rb", buffering=_DISCARD_CHUNK)
    async with stdio_server(stdin=BoundedLines(raw, settings.limits.stdio_line_bytes)) as (reader, writer):  # type: ignore[arg-type]
        # MCPServer has no public way to run on custom streams: the low-level server does (mcp-sdk.md).
        lowlevel = mcp._lowlevel_server
        await lowlevel.run(reader, writer, lowlevel.create_initialization_options())
