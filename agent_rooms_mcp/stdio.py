"""stdio transport: the SDK's stdio streams fed by a line reader with a size cap and bounded memory.

The SDK reads stdin with an unbounded `async for line`; one huge line would be held whole in memory
(`lines.BoundedLines` instead).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from mcp.server.stdio import stdio_server

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.housekeeping import housekeeping
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.lines import DISCARD_CHUNK, BoundedLines
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import Settings

log = structlog.get_logger("agent_rooms_mcp.stdio")

_HINT = "set AGENT_ROOMS_TOKEN_FILE (a 0600 file) or AGENT_ROOMS_TOKEN; see `agent-rooms connect AGENT`"


@asynccontextmanager
async def _checked_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Open the hub and say once, on stderr, if this process's credential will not work.

    The server still serves: the client lists our tools and every call explains itself as UNAUTHENTICATED.
    """
    async with Hub.open(settings) as hub, supervising(hub), housekeeping(hub):
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
    raw = os.fdopen(os.dup(0), "rb", buffering=DISCARD_CHUNK)
    async with stdio_server(stdin=BoundedLines(raw, settings.limits.stdio_line_bytes)) as (reader, writer):  # type: ignore[arg-type]
        # MCPServer has no public way to run on custom streams: the low-level server does (mcp-sdk.md).
        lowlevel = mcp._lowlevel_server
        await lowlevel.run(reader, writer, lowlevel.create_initialization_options())
