"""Who may do what: pure functions over facts the services load. No I/O, no clock, no awaits."""

from __future__ import annotations

from agent_rooms_mcp.errors import forbidden_scope
from agent_rooms_mcp.models import Relation
from agent_rooms_mcp.principals import Caller, Scope


def require_scope(caller: Caller, scope: Scope) -> None:
    """DESIGN §2: a call without its tool's scope gets FORBIDDEN_SCOPE, before anything is looked up."""
    if scope not in caller.scopes:
        raise forbidden_scope(scope.value)


def relation(caller: Caller, agent_id: str, owner_id: str) -> Relation:
    """DESIGN §3 provenance: how the author of an item stands to the caller."""
    if agent_id == caller.agent_id:
        return "self"
    if owner_id == caller.owner_id:
        return "same_owner"
    return "cross_owner"
