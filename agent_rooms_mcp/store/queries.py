"""Small named queries shared by services. Each takes the connection of the caller's transaction."""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp.errors import forbidden_scope, not_found, unauthenticated
from agent_rooms_mcp.principals import Caller, Scope

# A room's latest message seq, read off the (room_id, seq) index instead of a counter every post rewrites.
LATEST_SEQ = "(SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.room_id = r.room_id) AS latest_seq"


def room_for_member(conn: sqlite3.Connection, ref: str, agent_id: str) -> sqlite3.Row:
    """The room by id or name, if agent_id is a member; else NOT_FOUND, the same as a missing room."""
    row = conn.execute(
        f"SELECT r.*, {LATEST_SEQ} FROM rooms r JOIN room_agents x ON x.room_id = r.room_id AND x.agent_id = ?"
        " WHERE r.room_id = ? OR r.name = ?",
        (agent_id, ref, ref),
    ).fetchone()
    if row is None:
        raise not_found("room")
    return row


def room(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    row = conn.execute(
        f"SELECT r.*, {LATEST_SEQ} FROM rooms r WHERE r.room_id = ? OR r.name = ?", (ref, ref)
    ).fetchone()
    if row is None:
        raise not_found("room")
    return row


def owner(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM owners WHERE owner_id = ? OR handle = ?", (ref, ref)).fetchone()
    if row is None:
        raise not_found("owner")
    return row


def agent(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    row = conn.execute(
        "SELECT a.*, o.handle AS owner_handle FROM agents a JOIN owners o ON o.owner_id = a.owner_id"
        " WHERE (a.agent_id = ? OR a.handle = ?) AND a.status = 'active'",
        (ref, ref),
    ).fetchone()
    if row is None:
        raise not_found("agent")
    return row


def room_members(conn: sqlite3.Connection, room_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle"
        " FROM room_agents m JOIN agents a ON a.agent_id = m.agent_id JOIN owners o ON o.owner_id = a.owner_id"
        " WHERE m.room_id = ? AND a.status = 'active' ORDER BY a.handle",
        (room_id,),
    ).fetchall()


def recheck_caller(conn: sqlite3.Connection, caller: Caller, scope: Scope) -> None:
    """Inside a write: the credential and scope still hold now, not only when the call began (invariant 34)."""
    row = conn.execute(
        "SELECT a.scopes FROM tokens t JOIN agents a ON a.agent_id = t.agent_id"
        " WHERE t.token_id = ? AND t.revoked_at IS NULL AND a.status = 'active'",
        (caller.token_id,),
    ).fetchone()
    if row is None:
        raise unauthenticated("revoked_during_call")
    if scope.value not in row["scopes"].split(","):
        raise forbidden_scope(scope.value)
