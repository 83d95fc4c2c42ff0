"""Reading JSON-RPC lines from a pipe with a size cap and bounded memory (DESIGN §3.2: stdio line 4 MiB).

Shared by `serve` over stdio and by `agent-rooms bridge`; it imports nothing of the hub, so the bridge can
use it without loading the store.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Callable
from typing import BinaryIO

import anyio
import anyio.from_thread
import anyio.lowlevel
import structlog

log = structlog.get_logger("agent_rooms_mcp.stdio")

# The method of the stand-in for a line that was too long: its answer is an error naming the cap, with the
# request's id when one was found (a request), else `id: null` (JSON-RPC's answer for a message it cannot identify).
TOO_LARGE_METHOD = "agent-rooms/request-too-large"
DISCARD_CHUNK = 64 * 1024
_REQUEST_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[A-Za-z0-9_.:-]{1,64}")')


def too_large_message(limit: int) -> str:
    return f"TOO_LARGE: a message line is at most {limit} bytes"


class BoundedLines:
    """Lines of at most `limit` bytes. A longer line is skipped without being held in memory, and a small stand-in
    takes its place, with the same id if it was a request, so the client gets an error, not silence."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._asks: queue.SimpleQueue[tuple[int, Callable[[bytes | Exception], None]]] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None

    def __aiter__(self) -> BoundedLines:
        return self

    async def _readline(self, size: int) -> bytes:
        """One read, on a daemon thread of this reader's own. A read of a pipe cannot be interrupted, and a worker
        thread blocked in one keeps the interpreter from exiting (it waits for every non-daemon thread): a server
        that stops while its client still holds stdin open (a hub that failed to open) would linger until the
        client closed it. Abandoned when the caller is cancelled; its line is then read by nobody."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_forever, name="agent-rooms stdin", daemon=True)
            self._reader.start()
        token = anyio.lowlevel.current_token()
        done = anyio.Event()
        got: list[bytes | Exception] = []

        def deliver(result: bytes | Exception) -> None:
            got.append(result)
            done.set()

        self._asks.put((size, lambda result: anyio.from_thread.run_sync(deliver, result, token=token)))
        await done.wait()
        if isinstance(got[0], Exception):
            raise got[0]
        return got[0]

    def _read_forever(self) -> None:
        while True:
            size, deliver = self._asks.get()
            try:
                result: bytes | Exception = self._raw.readline(size)
            except Exception as e:  # handed to the reader, as a worker thread would
                result = e
            try:
                deliver(result)
            except Exception:  # the event loop has ended: nobody reads any more
                return

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
        stand_in: dict[str, object] = {"jsonrpc": "2.0", "method": TOO_LARGE_METHOD}
        if found is not None:
            stand_in["id"] = json.loads(found.group(1))
        return json.dumps(stand_in) + "\n"
