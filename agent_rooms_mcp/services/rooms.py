"""Rooms and membership (DESIGN §3): listing and reading for agents, creating and adding for the operator."""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.models import Member, RoomDetail, RoomList, RoomSummary
from agent_rooms_mcp.policy import ConsentMode
from agent_rooms_mcp.principals import HANDLE_RE, Caller, Scope
from agent_rooms_mcp.services.render import cut_page
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

_SUMMARY = (
    f"SELECT r.rowid AS position, r.room_id, r.name, {queries.LATEST_SEQ},"
    " (SELECT count(*) FROM room_agents x JOIN agents a ON a.agent_id = x.agent_id"
    "   WHERE x.room_id = r.room_id AND a.status = 'active') AS member_count FROM rooms r"
)

_MEMBER_PAGE = (
    "SELECT m.rowid AS position, a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle"
    " FROM room_agents m JOIN agents a ON a.agent_id = m.agent_id JOIN owners o ON o.owner_id = a.owner_id"
    " WHERE m.room_id = ? AND a.status = 'active' AND m.rowid > ? ORDER BY m.rowid LIMIT ?"
)


def _summary_of(conn: sqlite3.Connection, room_id: str) -> RoomSummary:
    return _summary(conn.execute(_SUMMARY + " WHERE r.room_id = ?", (room_id,)).fetchone())


def _summary(row: sqlite3.Row) -> RoomSummary:
    return RoomSummary(
        room_id=row["room_id"],
        name=row["name"],
        member_count=row["member_count"],
        latest_seq=row["latest_seq"],
    )


class Rooms:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def list_rooms(self, caller: Caller, after: int, limit: int) -> RoomList:
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> RoomList:
            # In the order the rooms were made, so the rowid is the cursor.
            rows = conn.execute(
                _SUMMARY + " JOIN room_agents m ON m.room_id = r.room_id AND m.agent_id = ?"
                " WHERE r.room_id = coalesce(?, r.room_id) AND r.rowid > ? ORDER BY r.rowid LIMIT ?",
                (caller.agent_id, policy.run_room(caller), after, limit + 1),
            ).fetchall()
            rooms = [_summary(r) for r in rows[:limit]]
            empty = RoomList(rooms=[], next_after=after, has_more=True)
            cut = cut_page(self._limits, empty, rooms, [r["position"] for r in rows], len(rows), after)
            return RoomList(rooms=rooms[: cut.kept], next_after=cut.next_after, has_more=cut.has_more)

        return await self._store.read(run)

    async def get(self, caller: Caller, ref: str, after: int, limit: int) -> RoomDetail:
        """The room, with one page of its members in the order they joined (a room has no cap on members)."""
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> RoomDetail:
            room = queries.room_for_member(conn, ref, caller)
            mode = queries.consent_mode(conn, room.room_id, caller.owner_id)
            rows = conn.execute(_MEMBER_PAGE, (room.room_id, after, limit + 1)).fetchall()
            members = [
                Member(
                    handle=m["handle"],
                    owner=m["owner_handle"],
                    tool=m["tool"],
                    relation=policy.relation(caller, m["agent_id"], m["owner_id"]),
                )
                for m in rows[:limit]
            ]
            empty = RoomDetail(
                room_id=room.room_id,
                name=room.name,
                created_at=room.created_at,
                members=[],
                consent_mode=mode.mode.value if mode else ConsentMode.TASK_BY_TASK.value,
                latest_seq=room.latest_seq,
                next_after=after,
                has_more=True,
            )
            cut = cut_page(self._limits, empty, members, [m["position"] for m in rows], len(rows), after)
            return empty.model_copy(
                update={"members": members[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
            )

        return await self._store.read(run)

    async def count_for(self, caller: Caller) -> int:
        # A run token counts only its run's room, as list_rooms shows it (invariant 87).
        row = await self._store.read_one(
            "SELECT count(*) FROM room_agents WHERE agent_id = ? AND room_id = coalesce(?, room_id)",
            (caller.agent_id, policy.run_room(caller)),
        )
        return int(row[0]) if row is not None else 0

    # Operator (CLI) actions: human-only, never MCP tools (DESIGN §2).

    async def create(self, operator: Actor, name: str, owner_ref: str, agent_refs: list[str]) -> RoomSummary:
        if not HANDLE_RE.fullmatch(name):
            raise invalid("name", "use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit")
        if name.startswith("room_"):
            raise invalid("name", "names starting with 'room_' are kept for room ids")

        def run(conn: sqlite3.Connection) -> RoomSummary:
            owner = queries.owner(conn, owner_ref)
            if conn.execute("SELECT 1 FROM rooms WHERE name = ?", (name,)).fetchone():
                raise RoomsError(ErrorCode.CONFLICT, f"a room named {name!r} already exists")
            room_id, now = new_id("room"), now_utc()
            conn.execute(
                "INSERT INTO rooms (room_id, name, created_by, created_at) VALUES (?, ?, ?, ?)",
                (room_id, name, owner.owner_id, now),
            )
            conn.execute(
                "INSERT INTO room_owners (room_id, owner_id, joined_at) VALUES (?, ?, ?)",
                (room_id, owner.owner_id, now),
            )
            for ref in agent_refs:
                add_member_agent(conn, room_id, owner.owner_id, ref, now)
            audit.append(
                conn,
                operator,
                "room.create",
                target=room_id,
                detail={"owner_id": owner.owner_id, "agents": len(agent_refs)},
            )
            return _summary_of(conn, room_id)

        return await self._store.write(run)

    async def add_agent(self, operator: Actor, room_ref: str, agent_ref: str) -> RoomSummary:
        def run(conn: sqlite3.Connection) -> RoomSummary:
            room = queries.room(conn, room_ref)
            agent = queries.agent(conn, agent_ref)
            # Only an owner already in the room brings agents in directly; others need an invite.
            in_room = queries.owner_joined(conn, room.room_id, agent.owner_id) is not None
            way_out = "; bring them in with an invite"
            policy.require_owner_in_room(in_room, "agent", agent.owner_handle, room.name, way_out)
            add_member_agent(conn, room.room_id, agent.owner_id, agent.agent_id, now_utc())
            audit.append(
                conn,
                operator,
                "room.add_agent",
                target=room.room_id,
                detail={"agent_id": agent.agent_id},
            )
            return _summary_of(conn, room.room_id)

        return await self._store.write(run)

    async def remove_agent(self, operator: Actor, room_ref: str, agent_ref: str) -> RoomSummary:
        """From the next call on, the agent gets nothing of this room from any read path (invariant 29)."""

        def run(conn: sqlite3.Connection) -> RoomSummary:
            room, agent = queries.room(conn, room_ref), queries.agent(conn, agent_ref)
            gone = conn.execute(
                "DELETE FROM room_agents WHERE room_id = ? AND agent_id = ?", (room.room_id, agent.agent_id)
            ).rowcount
            if not gone:
                raise invalid("agent", f"{agent.handle} is not in room {room.name}")
            audit.append(conn, operator, "room.remove_agent", target=room.room_id, detail={"agent_id": agent.agent_id})
            return _summary_of(conn, room.room_id)

        return await self._store.write(run)

    async def list_all(self) -> RoomList:
        return await self._store.read(
            # The operator's own listing at the terminal: every room, in one document.
            lambda c: RoomList(
                rooms=[_summary(r) for r in c.execute(_SUMMARY + " WHERE r.quarantined_at IS NULL ORDER BY r.name")],
                next_after=0,
                has_more=False,
            )
        )


def add_member_agent(conn: sqlite3.Connection, room_id: str, owner_id: OwnerId, agent_ref: str, now: str) -> str:
    """Add one of owner_id's own agents to the room (agents of another owner are refused)."""
    agent = queries.agent(conn, agent_ref)
    policy.require_own_agent(agent.owner_id, owner_id, agent.handle)
    conn.execute(
        "INSERT OR IGNORE INTO room_agents (room_id, agent_id, joined_at) VALUES (?, ?, ?)",
        (room_id, agent.agent_id, now),
    )
    return agent.agent_id
