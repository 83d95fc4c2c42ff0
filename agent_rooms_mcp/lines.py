"""Reading JSON-RPC lines from a pipe with a size cap and bounded memory (DESIGN §3.2: stdio line 4 MiB).

Shared by `serve` over stdio and by `agent-rooms bridge`; it imports nothing of the hub, so the bridge can
use it without loading the store.
"""

from __future__ import annotations

import json
import re
from typing import BinaryIO

import anyio
import structlog

log = structlog.get_logger("agent_rooms_mcp.stdio")

# The method of the stand-in for a request whose line was too long: its answer is an error naming the cap.
TOO_LARGE_METHOD = "agent-rooms/request-too-large"
DISCARD_CHUNK = 64 * 1024
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
            line = await self._readline(DISCARD_CHUNK)
        log.warning("stdio.line_too_large", limit=self._limit)
        # Only an id before "params" is the request's own: one inside the arguments must not be answered.
        found = _REQUEST_ID.search(head.split(b'"params"', 1)[0])
        if found is None:
            return "\n"  # an unparseable line: the SDK logs and drops it
        stand_in = {"jsonrpc": "2.0", "id": json.loads(found.group(1)), "method": TOO_LARGE_METHOD}
        return json.dumps(stand_in) + "\n"
