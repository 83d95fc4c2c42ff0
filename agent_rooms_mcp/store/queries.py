"""Small named queries shared by services. Each takes the connection of the caller's transaction."""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp.errors import not_found


def room_for_member(conn: sqlite3.Connection, ref: str, agent_id: str) -> sqlite3.Row:
    """The room by id or name, if agent_id is a member; else NOT_FOUND, the same as a missing room."""
    row = conn.execute(
        "SELECT r.* FROM rooms r JOIN room_agents m ON m.room_id = r.room_id AND m.agent_id = ?"
        " WHERE r.room_id = ? OR r.name = ?",
        (agent_id, ref, ref),
    ).fetchone()
    if row is None:
        raise not_found("room")
    return row


def room(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM rooms WHERE room_id = ? OR name = ?", (ref, ref)).fetchone()
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
