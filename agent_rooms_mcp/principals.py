"""Who is calling: scopes, tools, and the frozen `Caller` resolved afresh on every call (DESIGN §2)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.errors import invalid
from agent_rooms_mcp.ids import AgentId, OwnerId, RoomId, RunId


class Scope(StrEnum):
    READ = "read"
    POST = "post"
    TASK = "task"
    INVOKE = "invoke"
    CONSENT = "consent"
    MANAGE = "manage"


DEFAULT_SCOPES = frozenset({Scope.READ, Scope.POST, Scope.TASK})
# A run token acts for a woken run, never for the owner: it cannot decide consent or manage (DESIGN §2).
RUN_WITHHELD = frozenset({Scope.CONSENT, Scope.MANAGE})


class AgentTool(StrEnum):
    CLAUDE = "claude"
    CODEX = "codex"
    OPENCLAW = "openclaw"
    CHAT = "chat"
    OTHER = "other"


HANDLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_handle(handle: str) -> None:
    """INVALID_ARGUMENT unless `handle` has the one shape of owner and agent handles, wherever it is given."""
    if not HANDLE_RE.fullmatch(handle):
        raise invalid("handle", "use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit")


def parse_scopes(text: str) -> frozenset[Scope]:
    """'read,post' -> {READ, POST}; unknown names raise ValueError naming them."""
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = names - {s.value for s in Scope}
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))} (known: {', '.join(Scope)})")
    return frozenset(Scope(n) for n in names)


def held_scopes(stored: str, run_id: str | None) -> frozenset[Scope]:
    """The scopes a credential holds: the agent's stored ones, narrowed for a run token."""
    scopes = stored_scopes(stored)
    return scopes - RUN_WITHHELD if run_id is not None else scopes


@functools.lru_cache(maxsize=64)
def stored_scopes(stored: str) -> frozenset[Scope]:
    """A stored scope list (an agent's, or an OAuth grant's) as scopes. A pure function of the text, read afresh
    from its row on every call, so each spelling is parsed once: `Scope(name)` goes through the enum's metaclass,
    ~7,000 instructions a name, and every authentication and every write's re-check parses one list."""
    return frozenset(Scope(s) for s in stored.split(",") if s)


def format_scopes(scopes: frozenset[Scope]) -> str:
    return ",".join(s.value for s in Scope if s in scopes)


class Viewer(Protocol):
    """Whoever a result is rendered for: an agent's `Caller`, or an owner at the CLI (`OwnerViewer`)."""

    @property
    def agent_id(self) -> AgentId: ...

    @property
    def owner_id(self) -> OwnerId: ...


# An owner at the CLI reads as no agent: no item is ever theirs as "self".
NO_AGENT = AgentId("")


@dataclass(frozen=True, slots=True)
class OwnerViewer:
    """An owner reading at the CLI: every agent's item is "same_owner" or "cross_owner" to them, never "self"."""

    owner_id: OwnerId
    agent_id: AgentId = NO_AGENT


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated agent for the span of one call. Never stored, never cached."""

    agent_id: AgentId
    handle: str
    tool: AgentTool
    owner_id: OwnerId
    owner_handle: str
    owner_verified: bool
    scopes: frozenset[Scope]
    token_id: str
    run_id: RunId | None = None
    # A run token acts only in the room whose message or task woke its run (DESIGN §2, invariant 87).
    run_room_id: RoomId | None = None

    @property
    def actor(self) -> Actor:
        return Actor("agent", self.agent_id, self.owner_id, self.token_id)


@dataclass(frozen=True, slots=True)
class Human:
    """A person taking owner actions (DESIGN §2): the operator at the hub's CLI, who may act for any owner,
    or an owner on an enrolled device (§9.1), who acts only on their own things."""

    actor: Actor
    owner_id: OwnerId | None = None  # None: the operator
    device_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.owner_id is None
