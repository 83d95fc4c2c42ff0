"""stdio transport: the SDK's stdio streams fed by a line reader with a size cap and bounded memory, and a hub that
opens once the client has its tool list.

The SDK reads stdin with an unbounded `async for line`; one huge line would be held whole in memory
(`lines.BoundedLines` instead).

A client that launches the hub (Claude Code, per session) waits for the `initialize` answer and the tool list, and
neither needs the hub (DESIGN §11: cold start). So the SDK serves from the start, and the hub (its services, the
store, the supervisor, housekeeping) opens after the tool list has gone out, or as soon as a message needs it, or
`OPEN_WITHIN_S` after the start for a client that never lists the tools, whichever comes first; not at all for a
client that leaves before it has. Until it has opened, a request that could use it waits in front of the SDK, and
every message after it waits behind it: no call is ever answered by a hub that has not opened, and the first call
still authenticates against the store.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any

import anyio
import structlog
from mcp.server.runner import serve_dual_era_loop
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import ContextSendStream, create_context_streams
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from mcp.types import JSONRPCError, JSONRPCRequest, JSONRPCResponse, RequestId

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.hub import OPEN_IMPORTS, Hub
from agent_rooms_mcp.lines import DISCARD_CHUNK, BoundedLines
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.unreadable import answer_for

log = structlog.get_logger("agent_rooms_mcp.stdio")

_HINT = "set AGENT_ROOMS_TOKEN_FILE (a 0600 file) or AGENT_ROOMS_TOKEN; see `agent-rooms connect AGENT`"

# The requests the SDK answers without the hub. Any other request waits until the hub has opened. `server/discover`
# is a 2026-07-28 client's opening request, in place of `initialize` (the SDK answers it from the server's own state).
NEEDS_NO_HUB = frozenset({"initialize", "server/discover", "ping", "tools/list"})
# A client that never lists the tools still gets the supervisor and housekeeping this soon after the start.
OPEN_WITHIN_S = 1.0
# When stdin ends, the SDK cancels the calls still in flight. A call the doorway held for the hub would so be lost
# where, with the hub open, it would have been answered at once (a one-shot `printf … | agent-rooms serve`): the
# end of stdin is passed on once every call sent before it has its answer, or after this long (a long poll).
ANSWER_BEFORE_END_S = 5.0


@asynccontextmanager
async def _checked_hub(settings: Settings) -> AsyncIterator[Hub]:
    """Open the hub and say once, on stderr, if this process's credential will not work.

    The server still serves: the client lists our tools and every call explains itself as UNAUTHENTICATED.
    """
    # Imported here: the supervisor's and housekeeping's modules are loaded as the hub opens, after the tool list.
    from agent_rooms_mcp.embedded import supervising
    from agent_rooms_mcp.housekeeping import housekeeping

    async with Hub.open(settings) as hub, supervising(hub), housekeeping(hub):
        if settings.stdio_token is None:
            log.warning("stdio.no_credential", hint=_HINT, problem=settings.stdio_token_problem)
        else:
            try:
                await hub.auth.authenticate(settings.stdio_token, MCP_KINDS, transport="stdio")
            except RoomsError:
                log.warning("stdio.credential_rejected", hint="the token is unknown, expired or revoked; " + _HINT)
        yield hub


def _prepare(leaving: threading.Event) -> None:
    """Load what opening the hub imports (its services and store, the supervisor, housekeeping), one module at a
    time, and no further once the client has left: one that only lists the tools (a client checking its servers)
    should not pay for a hub it will never call."""
    for name in (*OPEN_IMPORTS, "agent_rooms_mcp.embedded", "agent_rooms_mcp.housekeeping"):
        if leaving.is_set():
            return
        importlib.import_module(name)


class _OpeningHub(Hub):
    """The lifespan state the SDK is handed before the hub has opened: every attribute read is the opened hub's.

    Nothing reads one before then: `_Doorway` lets through only the requests in NEEDS_NO_HUB until the hub has
    opened, and none of those reach our code. A read before that is a wiring bug, and fails loudly."""

    def __init__(self) -> None:  # a Hub with nothing of its own: it only points at the hub once that has opened
        object.__setattr__(self, "_opened", None)

    def open_as(self, hub: Hub) -> None:
        object.__setattr__(self, "_opened", hub)

    def __getattr__(self, name: str) -> Any:
        hub = object.__getattribute__(self, "_opened")
        if hub is None:
            raise RuntimeError(f"hub.{name} was read before the hub opened")
        return getattr(hub, name)


class _Doorway:
    """Between stdin and the SDK: holds the first request that needs the hub, and everything after it, until the
    hub has opened; asks for the hub to open at once when it holds one, and when the tool list has been answered.
    Answers itself a line that is not a message (unreadable.py), which the SDK would drop without an answer."""

    def __init__(self, line_limit: int) -> None:
        self._line_limit = line_limit
        self.wanted = anyio.Event()  # open the hub now
        self.opened = anyio.Event()
        self._listing: set[RequestId] = set()  # ids of tools/list requests not answered yet
        self._held = False  # whether a request ever waited here for the hub
        self._unanswered: set[RequestId] = set()  # ids of requests passed on and not answered yet
        self._all_answered = anyio.Event()
        self._all_answered.set()

    async def forward(
        self,
        source: ReadStream[SessionMessage | Exception],
        sink: ContextSendStream[SessionMessage | Exception],
        answers: WriteStream[SessionMessage],
    ) -> None:
        async with sink:
            line = 0  # the SDK's reader sends one item per line of stdin: a message, or what reading it raised
            async for item in source:
                line += 1
                refusal = answer_for(item, line, self._line_limit)
                if refusal is not None:
                    if isinstance(item, Exception):  # a line over the cap was logged as it was skipped (lines.py)
                        log.warning("stdio.unreadable_line", line=line, error=refusal.error.code)
                    # Through the SDK's own writer: it writes one whole message at a time, so this cannot
                    # interleave with an answer of the SDK's.
                    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):  # the SDK has stopped
                        await answers.send(SessionMessage(refusal))
                    continue
                if isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCRequest):
                    method = item.message.method
                    if method == "tools/list":
                        self._listing.add(item.message.id)
                    elif method not in NEEDS_NO_HUB and not self.opened.is_set():
                        self._held = True
                        self.wanted.set()
                        await self.opened.wait()
                    self._unanswered.add(item.message.id)
                    self._all_answered = anyio.Event()
                await sink.send(item)
            if self._held:  # see ANSWER_BEFORE_END_S
                with anyio.move_on_after(ANSWER_BEFORE_END_S):
                    await self._all_answered.wait()

    def answered(self, item: SessionMessage) -> None:
        if not isinstance(item.message, JSONRPCResponse | JSONRPCError):
            return
        self._unanswered.discard(item.message.id)
        if not self._unanswered:
            self._all_answered.set()
        if item.message.id in self._listing:
            self._listing.discard(item.message.id)
            self.wanted.set()  # the client has what it needs to start: the hub opens behind its answer


class _Answers:
    """The SDK's write stream, telling the doorway what went out."""

    def __init__(self, inner: WriteStream[SessionMessage], doorway: _Doorway) -> None:
        self._inner, self._doorway = inner, doorway

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item)
        self._doorway.answered(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _Answers:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def serve_stdio(settings: Settings) -> None:
    mcp = create_server(lambda _: _checked_hub(settings))
    # MCPServer has no public way to run on custom streams: the low-level server does (mcp-sdk.md).
    lowlevel = mcp._lowlevel_server
    hub, doorway = _OpeningHub(), _Doorway(settings.limits.stdio_line_bytes)
    failed: list[Exception] = []
    served = anyio.Event()  # the SDK's loop has ended: the hub closes
    leaving = threading.Event()  # the same, for `_prepare` on its worker thread
    forwarding = anyio.CancelScope()

    async def open_hub(scope: anyio.CancelScope) -> None:
        with anyio.move_on_after(OPEN_WITHIN_S):
            await doorway.wanted.wait()
        if served.is_set():
            return  # the client left before anything needed the hub
        try:
            # The hub's modules are loaded on a worker thread: on the event loop they would hold it for tens of
            # milliseconds, and the tool list just answered would wait in the SDK's stdout writer until they had.
            await anyio.to_thread.run_sync(_prepare, leaving)
            if served.is_set():
                return
            # The server's own lifespan (GatedServer keeps the hub it opened for its refusals' audit rows).
            async with lowlevel.lifespan(lowlevel) as opened:
                hub.open_as(opened)
                doorway.opened.set()
                # Closed when serving ends, not by cancellation: under a cancelled scope every await of the close
                # would be cancelled too, the store's writer thread left to report into a closed event loop.
                await served.wait()
        except Exception as e:  # raised as itself after the server stops, as it was when the hub opened first
            failed.append(e)
            scope.cancel()

    async def forward(reader: ReadStream[SessionMessage | Exception], sink: Any, answers: _Answers) -> None:
        with forwarding:
            await doorway.forward(reader, sink, answers)

    # Read our own duplicate of fd 0 so the line cap applies; the SDK still owns stdout.
    raw = os.fdopen(os.dup(0), "rb", buffering=DISCARD_CHUNK)
    async with stdio_server(stdin=BoundedLines(raw, settings.limits.stdio_line_bytes)) as (reader, writer):  # type: ignore[arg-type]
        passed, received = create_context_streams[SessionMessage | Exception](0)
        answers = _Answers(writer, doorway)
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward, reader, passed, answers)
            tg.start_soon(open_hub, tg.cancel_scope)
            await serve_dual_era_loop(
                lowlevel,
                received,
                answers,
                lifespan_state=hub,
                init_options=lowlevel.create_initialization_options(),
            )
            served.set()
            leaving.set()
            doorway.wanted.set()  # an open that has not begun need not wait out OPEN_WITHIN_S to see it
            forwarding.cancel()  # stdin has ended, or the SDK stopped serving without it: nothing more to pass on
        if failed:  # inside stdio_server, so that its reader of stdin is cancelled too
            raise failed[0]
