"""Owners, devices and the operator (DESIGN §2, §9.1): who acts for which owner, what only the operator does,
which device a device may revoke, and the owner's rules for bringing owners and agents into rooms."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from agent_rooms_mcp.errors import ErrorCode, RoomsError, forbidden, invalid, not_found, unauthenticated
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.principals import Human

# Owner actions from a device (DESIGN §2, §9.1). The operator at the hub's CLI acts for any owner; an owner on
# a device acts only on their own things. Naming another owner as yourself is FORBIDDEN_SCOPE (owners are no
# secret: the device knows who it is); naming another owner's agent, token, room or device is NOT_FOUND, as
# for one that does not exist (invariant 82).

# What only the operator does, on the hub's machine: a device asking for one of these is refused by name.
OPERATOR_ACTIONS = frozenset(
    {
        "owner.add",
        "owner.enroll",
        "owner.verify",
        "owner.unverify",
        "owner.list",
        "owner.remove",
        "agent.env.set",
        "agent.env.unset",
        "agent.env.list",
        "room.remove",
        "run.log",
        "audit.verify",
        "audit.checkpoint",
        "purge",
        "room.quarantine",
        "room.export",
    }
)


def acts_for(who: Human, owner_id: OwnerId) -> bool:
    """Whether `who` may act on things of owner `owner_id`."""
    return who.owner_id is None or who.owner_id == owner_id


def acting_for(who: Human, owner_id: OwnerId, owner_is_local: bool) -> Human:
    """Who acts on a thing of owner `owner_id`, as its audit rows will say (DESIGN §2): the operator acting
    for an owner who is not local to the hub acts on that owner's behalf; anyone else acts as themselves."""
    if who.is_operator and not owner_is_local:
        return Human(replace(who.actor, on_behalf_of=owner_id), who.owner_id, who.device_id)
    return who


def require_self(who: Human, owner_id: OwnerId, handle: str) -> None:
    """`who` names owner `handle` as the one acting (`--owner`, `--from`, `--by`): only themselves."""
    if not acts_for(who, owner_id):
        raise forbidden(f"this device acts for its own owner only, not for {handle}")


def require_own(who: Human, owner_id: OwnerId, kind: str, ref: str | None = None) -> None:
    """`who` names a thing of owner `owner_id` (as `ref`): another owner's looks missing (invariant 82)."""
    if not acts_for(who, owner_id):
        raise not_found(kind, ref)


def require_not_operator_action(name: str) -> None:
    if name in OPERATOR_ACTIONS:
        raise forbidden(
            f"{name} is an operator action: run with the agent-rooms CLI on the hub's machine; ask the hub's operator"
        )


def require_operator(what: str) -> None:
    """Something only the operator sets, on the hub's machine (DESIGN §5: a hub-spawned run's workdir)."""
    raise forbidden(f"{what} is the operator's to set, on the hub's machine")


def may_revoke_device(who: Human, device_owner_id: OwnerId, device_id: str) -> None:
    """The operator revokes any device; a device revokes only itself (DESIGN §9.1): another device of the same
    owner is a console or operator action, another owner's device does not exist for it."""
    if who.is_operator or who.device_id == device_id:
        return
    require_own(who, device_owner_id, "device", device_id)
    if who.device_id is None and who.actor.via == "console":  # the owner at the console: any device of theirs
        return
    raise forbidden("a device may revoke only itself; revoke another one at the console or on the hub's machine")


def device_holds(revoked: bool, expired: bool) -> None:
    """Inside a write an owner action makes from a device, the device must still be enrolled: one revoked or
    gone idle since its request authenticated answers UNAUTHENTICATED, and the write rolls back."""
    if revoked or expired:
        raise unauthenticated("device_revoked_during_call")


def require_owner_in_room(in_room: bool, field: str, owner: str, room: str, way_out: str = "") -> None:
    """The operator acts for an owner in a room (a consent mode, an invite, an agent brought in directly) only
    if that owner is in it; anyone else comes in through an invite."""
    if not in_room:
        raise invalid(field, f"{owner} is not in room {room}{way_out}")


def require_own_agent(agent_owner_id: OwnerId, owner_id: OwnerId, agent: str) -> None:
    """An owner brings only their own agents into a room; another owner's come with that owner's invite."""
    if agent_owner_id != owner_id:
        raise invalid("agent", f"{agent} does not belong to this owner")


def require_accept_adds_agents(named: Iterable[str], already_in_room: Iterable[str], room: str) -> None:
    """An invite accept must bring at least one of the owner's agents into the room: the code is one-time, so
    an accept that would add nothing (no agent named, or every named agent a member already) is refused and
    the code stays usable. Room access is by agent, so an owner with no agent there has nothing to join with."""
    named, present = list(named), set(already_in_room)
    if not named:
        raise invalid("agents", "name at least one of your agents to bring in (--agent HANDLE); the code stays unused")
    if all(handle in present for handle in named):
        raise RoomsError(
            ErrorCode.CONFLICT,
            f"{', '.join(named)} already in room {room}: accepting would add nothing; the code stays unused",
        )
