"""Legacy-era (initialize handshake) sessions over HTTP: capped per agent and in all (DESIGN §9, invariant 84).

The SDK keeps up to 10,000 sessions for anyone who can open one, and any credential can: one agent
with no scopes at all could take every slot, so that every other legacy client got 503, and hold some
hundreds of MB. Here each session is tied to the agent that opened it and counted:

- Past its own cap, an agent's new session closes that agent's own least recently used idle session
  (no request in flight). Refusing instead would lock a user out for the whole idle period whenever
  their client restarted without ending its sessions (Claude Code does not send DELETE on exit); the
  evicted session's client gets 404 and, as the protocol asks, opens a new one. Only if all its
  sessions are busy is the new one refused: 429 with Retry-After.
- Past the cap in all, sessions idle past their expiry are closed first; if none is, the new session is
  refused with 429. Another agent's session is never closed to make room.

Closing means terminating the SDK's session (a DELETE through the SDK's own app), not only forgetting
our id for it. The SDK also expires sessions idle for `http_session_idle_s` by itself.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog

from agent_rooms_mcp.settings import Limits

log = structlog.get_logger("agent_rooms_mcp.http")


@dataclass(slots=True)
class Session:
    sdk_id: str
    agent_id: str
    last_used: float
    in_flight: int = 0


class Sessions:
    """Our public session ids -> the SDK's, with the agent that opened each. Ours carry 128 random bits
    (the SDK's uuid4 has 122), and an id we do not know is refused: a session id is never a credential
    (invariant 76)."""

    def __init__(self, limits: Limits, terminate: Callable[[str], Awaitable[None]]) -> None:
        self._limits = limits
        self._terminate = terminate
        self._by_public: dict[str, Session] = {}
        self._public_of: dict[str, str] = {}
        # Requests that may open a session, in flight per agent: counted so that many at once cannot
        # all pass the cap before the first one is published.
        self._opening: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_public)

    def get(self, public: str, agent_id: str) -> Session | None:
        """The session, if it is known and belongs to this agent."""
        session = self._by_public.get(public)
        return session if session is not None and session.agent_id == agent_id else None

    def known(self, public: str) -> bool:
        return public in self._by_public

    async def admit(self, agent_id: str) -> bool:
        """Make room for a new session of agent_id and reserve it; False if there is none to make.

        The counting is done before any await, so concurrent opening requests see each other."""
        now = anyio.current_time()
        closing: list[tuple[Session, str]] = []
        mine = [(s.last_used, p) for p, s in self._by_public.items() if s.agent_id == agent_id]
        if len(mine) + self._opening[agent_id] >= self._limits.http_sessions_per_agent:
            idle = [(used, p) for used, p in mine if self._by_public[p].in_flight == 0]
            if not idle:
                log.info("http.session_refused", reason="sessions_per_agent_busy", agent_id=agent_id)
                return False
            closing.append((self._drop(min(idle)[1]), "evicted_by_own_new_session"))
        if self._total() >= self._limits.http_sessions:
            expired = [p for p, s in self._by_public.items() if s.in_flight == 0 and self._expired(s, now)]
            closing += [(self._drop(p), "idle") for p in expired]
        admitted = self._total() < self._limits.http_sessions
        if admitted:
            self._opening[agent_id] += 1
        else:
            log.info("http.session_refused", reason="sessions_full", agent_id=agent_id)
        for session, reason in closing:
            log.info("http.session_closed", reason=reason, agent_id=session.agent_id)
            with anyio.CancelScope(shield=True):
                await self._terminate(session.sdk_id)
        return admitted

    def opened(self, agent_id: str) -> None:
        """The request that reserved a slot in `admit` is done (its session, if any, is published)."""
        self._opening[agent_id] -= 1
        if self._opening[agent_id] <= 0:
            del self._opening[agent_id]

    def publish(self, sdk_id: str, agent_id: str) -> str:
        """Our id for the SDK's session id (made when the SDK first hands it out)."""
        public = self._public_of.get(sdk_id)
        if public is None:
            public = self._public_of[sdk_id] = secrets.token_hex(16)
            self._by_public[public] = Session(sdk_id, agent_id, anyio.current_time())
        return public

    def forget(self, public: str) -> None:
        """The SDK ended this session (the client's DELETE, its idle expiry): stop counting it."""
        session = self._by_public.pop(public, None)
        if session is not None:
            self._public_of.pop(session.sdk_id, None)

    def _total(self) -> int:
        return len(self._by_public) + sum(self._opening.values())

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used >= self._limits.http_session_idle_s

    def _drop(self, public: str) -> Session:
        session = self._by_public[public]
        self.forget(public)
        return session
