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
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

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


def bounded_protocol(limits: Limits) -> type[BoundedH11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this server's limits."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"limits": limits})
