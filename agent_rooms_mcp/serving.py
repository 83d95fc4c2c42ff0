"""uvicorn's h11 protocol with the bounds it lacks: a request head and body must arrive in time, and open
connections are capped (DESIGN §9 "HTTP long-lived connections are bounded", invariant 84).

uvicorn arms no timer before a request head is complete (its keep-alive timer runs only between
requests, and stops at the first byte), and `limit_concurrency` counts only complete heads, so a
thousand connections that each send half a head hold the server forever. This lives in the protocol
because nothing above it (ASGI) sees a request before its head is whole.

At the cap a new connection does not simply bounce: the oldest connection waiting for a head (one that
sent part of a head first, then an idle keep-alive one) is closed to make room, so connections that
only hold sockets cannot lock out a client that sends a real request. Only when every connection is
busy with a request is the newcomer closed.

Told to stop (SIGTERM: `systemctl stop`), `Server` ends in bounded time. uvicorn tells the connections it
has to close, then waits for all of them; but a connection its loop accepted in the same turn as it began to
stop is made (`connection_made`) only after that, was never told, and was answered with keep-alive for as long
as its client kept asking: a listener, asking its next long poll at once, held the server for ever. Such a
connection is closed as it is made. Long polls in flight are answered at once (`on_stop`), so closing does not
wait on them, and `timeout_graceful_shutdown` bounds whatever else a request holds.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from agent_rooms_mcp.settings import DEFAULT_LIMITS, Limits

log = structlog.get_logger("agent_rooms_mcp.serving")


class BoundedH11Protocol(H11Protocol):
    """One connection. `limits` is set by `bounded_protocol` on a subclass per server."""

    limits: ClassVar[Limits] = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._phase = ""
        # Bytes of a head have arrived and the head is not complete yet.
        self._partial = False
        # Since when this connection has been waiting for a head (the eviction order at the cap).
        self._waiting_since = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if isinstance(self.server_state, StoppingState) and self.server_state.stopping:
            # Made after uvicorn told every connection to close: told now, as those were (it closes at once,
            # its request unread), or its client's next request would keep it open, and the server with it.
            log.info("http.connection_closed", reason="server_stopping")
            self.shutdown()
            return
        self._waiting_since = self.loop.time()
        self._arm("head", self.limits.http_head_timeout_s)
        if len(self.connections) > self.limits.http_connections and not self._evict_one():
            log.warning("http.connection_refused", reason="all_connections_busy", open=len(self.connections))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head() and not self._partial:
            self._partial = True
            if self._phase != "head":
                # A keep-alive connection starts its next head: from now it has head_timeout_s to finish it.
                self._arm("head", self.limits.http_head_timeout_s)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._partial = False
            if self._phase != "body":
                self._arm("body", self.limits.http_body_timeout_s)
        elif state is not h11.IDLE:
            # The request is complete (or the connection is closing): the app takes its time from here.
            self._partial = False
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn's keep-alive timer now bounds the idle time until the next head's first byte.
        self._waiting_since = self.loop.time()
        self._partial = False
        self._disarm()

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a head, partial heads first; False if none waits."""
        waiting = [c for c in self.connections if c is not self and isinstance(c, BoundedH11Protocol)]
        waiting = [c for c in waiting if c._awaiting_head() and not c.transport.is_closing()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: (not c._partial, c._waiting_since))
        log.info("http.connection_evicted", partial_head=oldest._partial, open=len(self.connections))
        oldest._close()
        return True

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, ""

    def _expire(self) -> None:
        log.info("http.timeout", phase=self._phase)
        self._timer = None
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class StoppingState(ServerState):
    """uvicorn's state shared by a server's connections, with whether the server has begun to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False


class Server(uvicorn.Server):
    """uvicorn's server, with `BoundedH11Protocol` knowing when it stops. `on_stop` runs as the stop begins,
    before uvicorn waits on the connections: the app answers its long polls there."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._state = StoppingState()
        self.server_state = self._state
        self._on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._state.stopping = True
        log.info("http.stopping", connections=len(self._state.connections))
        if self._on_stop is not None:
            self._on_stop()
        await super().shutdown(sockets)


def bounded_protocol(limits: Limits) -> type[BoundedH11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this server's limits."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})
