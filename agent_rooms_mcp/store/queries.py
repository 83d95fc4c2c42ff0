"""Queries that load the facts services and `policy` judge; no rule is decided here. Each takes the connection
of the caller's transaction."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from agent_rooms_mcp import policy
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.principals import Caller, Scope, held_scopes
from agent_rooms_mcp.run_states import RunState
from agent_rooms_mcp.store.rows import AgentRow, MemberAgent, ModeInForce, OwnerRow, RoomRow, TaskRow

# A room's latest message seq, read off the (room_id, seq) index instead of a counter every post rewrites.
LATEST_SEQ = "(SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.room_id = r.room_id) AS latest_seq"


def room_for_member(conn: sqlite3.Connection, ref: str, caller: Caller) -> RoomRow:
    """The room by id or name, if the caller's agent is a member and its credential reaches the room (a run
    token only its run's room); else NOT_FOUND, the same as a missing room (invariants 27, 87)."""
    row = conn.execute(
        f"SELECT r.*, {LATEST_SEQ} FROM rooms r JOIN room_agents x ON x.room_id = r.room_id AND x.agent_id = ?"
        " WHERE (r.room_id = ? OR r.name = ?) AND r.quarantined_at IS NULL",
        (caller.agent_id, ref, ref),
    ).fetchone()
    if row is None or not policy.reaches_room(caller, row["room_id"]):
        raise not_found("room", ref)
    return RoomRow.from_row(row)


def room(conn: sqlite3.Connection, ref: str) -> RoomRow:
    row = conn.execute(
        # A quarantined room answers as one that never existed (DESIGN §6, invariant 51).
        f"SELECT r.*, {LATEST_SEQ} FROM rooms r WHERE (r.room_id = ? OR r.name = ?) AND r.quarantined_at IS NULL",
        (ref, ref),
    ).fetchone()
    if row is None:
        raise not_found("room", ref)
    return RoomRow.from_row(row)


def owner(conn: sqlite3.Connection, ref: str) -> OwnerRow:
    # A removed owner answers as one that never existed (DESIGN §6).
    row = conn.execute(
        "SELECT * FROM owners WHERE (owner_id = ? OR handle = ?) AND removed_at IS NULL", (ref, ref)
    ).fetchone()
    if row is None:
        raise not_found("owner", ref)
    return OwnerRow.from_row(row)


# An agent with its owner's handle: `AgentRow`'s columns.
AGENT = "SELECT a.*, o.handle AS owner_handle FROM agents a JOIN owners o ON o.owner_id = a.owner_id"


def agent(conn: sqlite3.Connection, ref: str) -> AgentRow:
    """An active agent by id or handle; a deleted one answers as one that never existed (DESIGN §6)."""
    row = conn.execute(AGENT + " WHERE (a.agent_id = ? OR a.handle = ?) AND a.status = 'active'", (ref, ref)).fetchone()
    if row is None:
        raise not_found("agent", ref)
    return AgentRow.from_row(row)


def active_agents(conn: sqlite3.Connection, owner_id: str | None = None) -> list[AgentRow]:
    """Every active agent by handle, or only `owner_id`'s."""
    sql = AGENT + " WHERE a.status = 'active' AND a.owner_id = coalesce(?, a.owner_id) ORDER BY a.handle"
    return [AgentRow.from_row(r) for r in conn.execute(sql, (owner_id,))]


_MEMBERS = (
    "SELECT a.agent_id, a.handle, a.tool, a.scopes, a.owner_id, o.handle AS owner_handle"
    " FROM room_agents m JOIN agents a ON a.agent_id = m.agent_id JOIN owners o ON o.owner_id = a.owner_id"
    " WHERE m.room_id = ? AND a.status = 'active'"
)


def room_members(conn: sqlite3.Connection, room_id: str) -> list[MemberAgent]:
    return [MemberAgent.from_row(r) for r in conn.execute(_MEMBERS + " ORDER BY a.handle", (room_id,))]


def recheck_caller(conn: sqlite3.Connection, caller: Caller, scope: Scope) -> None:
    """Inside a write: the credential and scope still hold now, not only when the call began (invariant 34).
    The facts are loaded here as `authenticate` loads them; `policy.credential_holds` judges them."""
    row = conn.execute(
        "SELECT a.scopes, t.run_id, t.expires_at, r.state AS run_state FROM tokens t"
        " JOIN agents a ON a.agent_id = t.agent_id LEFT JOIN runs r ON r.run_id = t.run_id"
        " WHERE t.token_id = ? AND t.revoked_at IS NULL AND a.status = 'active'",
        (caller.token_id,),
    ).fetchone()
    now = (
        None
        if row is None
        else policy.CredentialNow(
            expired=datetime.fromisoformat(row["expires_at"]) <= datetime.now(UTC),
            # A run token whose run row is gone has no live run: it must not pass as an agent's own token.
            run_state=None if row["run_id"] is None else (row["run_state"] or "missing"),
            scopes=held_scopes(row["scopes"], row["run_id"]),
        )
    )
    policy.credential_holds(now, scope)


def active_grant(conn: sqlite3.Connection, from_owner: str, to_owner: str) -> str | None:
    """The id of the active grant by which from_owner lets to_owner's agents propose work to its agents."""
    row = conn.execute(
        "SELECT grant_id FROM grants WHERE from_owner = ? AND to_owner = ? AND revoked_at IS NULL",
        (from_owner, to_owner),
    ).fetchone()
    return None if row is None else str(row["grant_id"])


def owners_verified(conn: sqlite3.Connection, *owner_ids: str) -> bool:
    wanted = set(owner_ids)
    marks = ",".join("?" * len(wanted))
    verified = conn.execute(
        f"SELECT count(*) FROM owners WHERE owner_id IN ({marks}) AND verified_at IS NOT NULL", tuple(wanted)
    ).fetchone()[0]
    return bool(verified == len(wanted))


def consent_mode(conn: sqlite3.Connection, room_id: str, owner_id: str) -> ModeInForce | None:
    row = conn.execute(
        "SELECT mode, collaborator_id, set_at FROM consent_modes WHERE room_id = ? AND owner_id = ?",
        (room_id, owner_id),
    ).fetchone()
    return None if row is None else ModeInForce.from_row(row)


def owner_joined(conn: sqlite3.Connection, room_id: str, owner_id: str) -> str | None:
    """When owner_id joined the room, or None if it is not in it."""
    row = conn.execute(
        "SELECT joined_at FROM room_owners WHERE room_id = ? AND owner_id = ?", (room_id, owner_id)
    ).fetchone()
    return None if row is None else str(row["joined_at"])


def member_agent(conn: sqlite3.Connection, room_id: str, handle: str) -> MemberAgent:
    """An active agent in the room by handle; NOT_FOUND whether it is unknown or simply elsewhere."""
    row = conn.execute(_MEMBERS + " AND (a.handle = ? OR a.agent_id = ?)", (room_id, handle, handle)).fetchone()
    if row is None:
        raise not_found("agent in this room", handle)
    return MemberAgent.from_row(row)


def target_agent(conn: sqlite3.Connection, ref: str) -> MemberAgent:
    """An active agent by id or handle, as the consent and wake services judge it, wherever it is a member."""
    return agent(conn, ref).member()


def task_for_member(conn: sqlite3.Connection, ref: str, caller: Caller) -> TaskRow:
    """The task if the caller is in its room (a run token: its run's room); NOT_FOUND otherwise, as for a task
    that does not exist."""
    row = conn.execute(
        "SELECT t.* FROM tasks t JOIN room_agents m ON m.room_id = t.room_id AND m.agent_id = ? WHERE t.task_id = ?",
        (caller.agent_id, ref),
    ).fetchone()
    if row is None or not policy.reaches_room(caller, row["room_id"]):
        raise not_found("task")
    return TaskRow.from_row(row)


def task(conn: sqlite3.Connection, task_id: str) -> TaskRow | None:
    """The task by id, wherever it is (a wake's re-check: the wake already names its room), or None."""
    row = conn.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else TaskRow.from_row(row)


def run_hold(conn: sqlite3.Connection, run_id: str) -> policy.RunHold | None:
    """Who holds the run now and whether a stop was asked for; None for a run that does not exist."""
    row = conn.execute(
        "SELECT state, lease_holder, lease_epoch, stop_requested_at FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if row is None:
        return None
    return policy.RunHold(
        state=RunState(row["state"]),
        holder=row["lease_holder"],
        lease=row["lease_epoch"],
        stop_requested=row["stop_requested_at"] is not None,
    )


def display_names(conn: sqlite3.Connection, ids: set[str], owner_id: str | None) -> dict[str, str]:
    """Owner and agent handles and room names for the ids in `ids`, for a person reading them (`audit tail`).
    `owner_id` None is the operator, who sees every name; an owner sees only their own handle, agents in the
    rooms they are in and those rooms: naming any other id would tell them it exists (invariant 82)."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    wanted = sorted(ids)
    joined = "SELECT room_id FROM room_owners WHERE owner_id = ?"
    found = conn.execute(
        f"SELECT owner_id, handle FROM owners WHERE owner_id IN ({marks}) AND (? IS NULL OR owner_id = ?)",
        (*wanted, owner_id, owner_id),
    ).fetchall()
    found += conn.execute(
        f"SELECT agent_id, handle FROM agents WHERE agent_id IN ({marks}) AND (? IS NULL OR owner_id = ?"
        f" OR agent_id IN (SELECT agent_id FROM room_agents WHERE room_id IN ({joined})))",
        (*wanted, owner_id, owner_id, owner_id),
    ).fetchall()
    found += conn.execute(
        f"SELECT room_id, name FROM rooms WHERE room_id IN ({marks}) AND (? IS NULL OR room_id IN ({joined}))",
        (*wanted, owner_id, owner_id),
    ).fetchall()
    return {str(row[0]): str(row[1]) for row in found}
