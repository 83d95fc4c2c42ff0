"""Who a caller is and what it reaches: scopes, a run token's one room, its credential inside a write, and
whose words cross an owner boundary. Pure functions over facts the services load; no I/O, no clock, no awaits.

Rules are numbered after DESIGN and checked in that order: the order decides which code a caller sees.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_rooms_mcp.errors import forbidden_scope, unauthenticated
from agent_rooms_mcp.ids import AgentId, OwnerId, RoomId, RunId
from agent_rooms_mcp.models import Relation
from agent_rooms_mcp.principals import Caller, Scope, Viewer


def require_scope(caller: Caller, scope: Scope) -> None:
    """DESIGN §2: a call without its tool's scope gets FORBIDDEN_SCOPE, before anything is looked up."""
    if scope not in caller.scopes:
        raise forbidden_scope(scope.value)


def run_room(caller: Caller) -> RoomId | None:
    """The one room a run token may see and act in, or None for an agent's own token (DESIGN §2).

    Every room a run was not woken in answers as if the agent were not a member (NOT_FOUND, invariant 87),
    and every listing it makes is cut to this room.
    """
    return caller.run_room_id if caller.run_id is not None else None


def reaches_room(caller: Caller, room_id: RoomId) -> bool:
    """May this credential see room_id, given that its agent is a member? A run only its own room."""
    bound = run_room(caller)
    return bound is None or bound == room_id


def may_use_run_socket(caller: Caller, socket_run_id: RunId) -> bool:
    """A run's bridge socket (DESIGN §5) admits that run's token and no other credential: not another run's,
    not the agent's own. Anything else is refused like a bad token (401), since the socket is the run's alone.
    """
    return caller.run_id is not None and caller.run_id == socket_run_id


def owns_agent(caller: Caller, agent_owner_id: OwnerId) -> bool:
    """An agent acts on its own owner's agents only; any other answers NOT_FOUND, as a missing one (invariant 82)."""
    return agent_owner_id == caller.owner_id


def relation(caller: Viewer, agent_id: AgentId, owner_id: OwnerId) -> Relation:
    """DESIGN §3 provenance: how the author of an item stands to the caller."""
    if agent_id == caller.agent_id:
        return "self"
    if owner_id == caller.owner_id:
        return "same_owner"
    return "cross_owner"


# A run token lives while its run does: queued runs have none yet, and an ended run's token is dead.
RUN_TOKEN_LIVE_STATES = frozenset({"running", "stopping"})


@dataclass(frozen=True, slots=True)
class CredentialNow:
    """A credential as it stands inside a write transaction, for `credential_holds` (invariant 34)."""

    expired: bool
    run_state: str | None  # the run's state for a run token, None for an agent's own token
    scopes: frozenset[Scope]  # what it holds now: the agent's scopes, narrowed for a run token


def credential_holds(now: CredentialNow | None, scope: Scope) -> None:
    """Inside a write, the credential and scope must still hold, not only when the call began: a revoked or
    expired token, a stopped agent (None: no live token row) or an ended run answers UNAUTHENTICATED, a lost
    scope FORBIDDEN_SCOPE."""
    if now is None or now.expired or (now.run_state is not None and now.run_state not in RUN_TOKEN_LIVE_STATES):
        raise unauthenticated("revoked_during_call")
    if scope not in now.scopes:
        raise forbidden_scope(scope.value)


def whose_words_cross(causers: frozenset[OwnerId], target_owner_id: OwnerId) -> tuple[OwnerId, ...]:
    """DESIGN §4 "Causers": every owner whose words reach the target's agent other than its own owner, in a
    fixed order. Empty means nothing crosses an owner boundary and there is nothing to consent to."""
    return tuple(sorted(c for c in causers if c != target_owner_id))
