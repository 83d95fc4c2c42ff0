"""Consent modes (DESIGN §4): per room, per owner, for that owner's own agents; set by the owner at the CLI,
or tightened (never widened) by an agent holding `manage`.
"""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import invalid
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.models import ConsentModeSet
from agent_rooms_mcp.policy import ConsentMode
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.rows import RoomRow


def set_mode(
    conn: sqlite3.Connection,
    actor: Actor,
    room: RoomRow,
    owner_id: OwnerId,
    mode: str,
    collaborator: str | None,
    *,
    tighten_only: bool = False,
) -> ConsentModeSet:
    """`tighten_only`: an agent sets it, and may only make it stricter (invariant 106)."""
    try:
        chosen = ConsentMode(mode)
    except ValueError:
        raise invalid("mode", f"one of {', '.join(ConsentMode)}") from None
    found = (
        conn.execute(
            "SELECT owner_id FROM owners WHERE handle = ? OR owner_id = ?", (collaborator, collaborator)
        ).fetchone()
        if collaborator and chosen is ConsentMode.TRUST_COLLABORATOR
        else None
    )
    collaborator_id = None if found is None else OwnerId(found["owner_id"])
    policy.check_mode_choice(
        chosen,
        owner_id,
        collaborator=collaborator,
        collaborator_id=collaborator_id,
        collaborator_in_room=collaborator_id is not None
        and queries.owner_joined(conn, room.room_id, collaborator_id) is not None,
    )
    previous = queries.consent_mode(conn, room.room_id, owner_id)
    in_force = None if previous is None else (previous.mode, previous.collaborator_id)
    if policy.mode_unchanged(in_force, chosen, collaborator_id):
        return _mode_set(conn, room, owner_id, chosen, collaborator_id)
    if tighten_only:
        # Loaded for the collaborator being named, so the rule can tell whether the mode in force trusts it.
        current = crossing.standing(conn, room.room_id, owner_id, collaborator_id or owner_id)
        policy.agent_may_set_mode(current, chosen, collaborator_id)
    # Applies to proposals made from now on; pending ones keep waiting for a decision (invariant 46).
    conn.execute(
        "INSERT INTO consent_modes (room_id, owner_id, mode, collaborator_id, set_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (room_id, owner_id) DO UPDATE SET mode = excluded.mode,"
        " collaborator_id = excluded.collaborator_id, set_at = excluded.set_at",
        (room.room_id, owner_id, chosen.value, collaborator_id, now_utc()),
    )
    audit.append(
        conn,
        actor,
        "consent.mode",
        target=room.room_id,
        detail={
            "owner_id": owner_id,
            "mode": chosen.value,
            "previous": previous.mode.value if previous else ConsentMode.TASK_BY_TASK.value,
            "collaborator_id": collaborator_id,
        },
    )
    return _mode_set(conn, room, owner_id, chosen, collaborator_id)


def _mode_set(
    conn: sqlite3.Connection, room: RoomRow, owner_id: str, chosen: ConsentMode, collaborator_id: str | None
) -> ConsentModeSet:
    owner = queries.owner(conn, owner_id)
    return ConsentModeSet(
        room=room.name,
        room_id=room.room_id,
        owner=owner.handle,
        mode=chosen.value,
        collaborator=queries.owner(conn, collaborator_id).handle if collaborator_id else None,
    )
