"""What the owner console shows (DESIGN §9.2): reads scoped to one owner, as plain rows for its templates.

Every read here takes the logged-in owner's id and shows only that owner's things: proposals waiting on
them, their agents' runs, rooms they are in. Room content keeps its writer and relation beside it, so a
page can mark another owner's words; it is never rendered into markup here (the templates escape it, and
never use the envelope meant for models).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_rooms_mcp import audit
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.services.proposals import PROPOSALS
from agent_rooms_mcp.services.runs import RUNS_SELECT
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

LIVE_STATES = ("queued", "running", "stopping")


@dataclass(frozen=True, slots=True)
class Pending:
    proposal_id: str
    kind: str
    room: str
    proposer: str
    proposer_owner: str
    target: str
    causers: list[str]
    payload: str  # canonical JSON, pretty-printed for reading; shown as inert text
    payload_sha256: str
    created_at: str


def _handles(conn: sqlite3.Connection, owner_ids: list[str]) -> list[str]:
    rows = conn.execute(
        f"SELECT owner_id, handle FROM owners WHERE owner_id IN ({','.join('?' * len(owner_ids))})", owner_ids
    ).fetchall()
    names = {r["owner_id"]: r["handle"] for r in rows}
    return sorted(names.get(o, o) for o in owner_ids)


def _pending(conn: sqlite3.Connection, owner_id: str, limit: int) -> list[Pending]:
    rows = conn.execute(
        PROPOSALS + " WHERE p.target_owner_id = ? AND p.state = 'pending' ORDER BY p.rowid LIMIT ?", (owner_id, limit)
    ).fetchall()
    return [
        Pending(
            proposal_id=r["proposal_id"],
            kind=r["kind"],
            room=r["room_name"],
            proposer=r["handle"],
            proposer_owner=r["owner_handle"],
            target=r["target_handle"],
            causers=_handles(conn, json.loads(r["causers"])),
            payload=json.dumps(json.loads(r["payload"]), indent=2, ensure_ascii=False),
            payload_sha256=r["payload_sha256"],
            created_at=r["created_at"],
        )
        for r in rows
    ]


def _runs(conn: sqlite3.Connection, owner_id: str, live: bool, limit: int) -> list[dict[str, Any]]:
    where = f" AND r.state IN ({','.join('?' * len(LIVE_STATES))})" if live else ""
    rows = conn.execute(
        RUNS_SELECT + " WHERE r.owner_id = ? AND m.quarantined_at IS NULL" + where + " ORDER BY r.rowid DESC LIMIT ?",
        (owner_id, *(LIVE_STATES if live else ()), limit),
    ).fetchall()
    keys = ("run_id", "handle", "room_name", "trigger", "state", "created_at", "started_at", "ended_at", "outcome")
    return [{k: r[k] for k in keys} for r in rows]


class ConsoleViews:
    def __init__(self, store: Store, run_logs_dir: Path, rows: int) -> None:
        self._store = store
        self._run_logs = run_logs_dir
        self._rows = rows

    async def owner_handle(self, owner_id: str) -> str:
        return str((await self._store.read(lambda c: queries.owner(c, owner_id))).handle)

    async def pending(self, owner_id: str) -> list[Pending]:
        return await self._store.read(lambda c: _pending(c, owner_id, self._rows))

    async def runs(self, owner_id: str, *, live: bool) -> list[dict[str, Any]]:
        return await self._store.read(lambda c: _runs(c, owner_id, live, self._rows))

    async def run_log(self, owner_id: str, run_id: str, cap: int) -> tuple[dict[str, Any], str]:
        """A run of this owner's agents and the tail of its event log; another owner's run looks missing."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(RUNS_SELECT + " WHERE r.run_id = ? AND r.owner_id = ?", (run_id, owner_id)).fetchone()
            if row is None:
                raise not_found("run")
            return {k: row[k] for k in ("run_id", "handle", "room_name", "state", "outcome")}

        info = await self._store.read(read)
        path = self._run_logs / info["run_id"] / "events.jsonl"
        text = ""
        if path.is_file():
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - cap))
                text = f.read().decode(errors="replace")
        return info, text

    async def failed_wakes(self, owner_id: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                RUNS_SELECT + " WHERE r.owner_id = ? AND r.state IN ('failed', 'lost', 'rate_limited')"
                " ORDER BY r.rowid DESC LIMIT ?",
                (owner_id, self._rows),
            ).fetchall()
            return [{k: r[k] for k in ("run_id", "handle", "room_name", "state", "outcome", "ended_at")} for r in rows]

        return await self._store.read(read)

    async def room(self, owner_id: str, room_ref: str) -> dict[str, Any]:
        """A room this owner is in: its members with their relation to the owner, and its latest messages, each
        with its writer and whether another owner wrote it. A room they are not in looks missing."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            room = queries.room(conn, room_ref)
            if queries.owner_joined(conn, room.room_id, owner_id) is None:
                raise not_found("room")
            members = conn.execute(
                "SELECT a.handle, a.tool, o.handle AS owner, a.owner_id = ? AS mine FROM room_agents ra"
                " JOIN agents a ON a.agent_id = ra.agent_id JOIN owners o ON o.owner_id = a.owner_id"
                " WHERE ra.room_id = ? ORDER BY a.handle",
                (owner_id, room.room_id),
            ).fetchall()
            messages = conn.execute(
                "SELECT * FROM (SELECT m.seq, m.text, m.created_at, a.handle, a.tool, o.handle AS owner,"
                " a.owner_id = ? AS mine FROM messages m JOIN agents a ON a.agent_id = m.agent_id"
                " JOIN owners o ON o.owner_id = a.owner_id WHERE m.room_id = ? ORDER BY m.seq DESC LIMIT ?)"
                " ORDER BY seq",
                (owner_id, room.room_id, self._rows),
            ).fetchall()
            files = conn.execute(
                "SELECT f.name, f.size, f.created_at, a.handle, o.handle AS owner, a.owner_id = ? AS mine"
                " FROM files f JOIN agents a ON a.agent_id = f.agent_id JOIN owners o ON o.owner_id = a.owner_id"
                " WHERE f.room_id = ? ORDER BY f.created_at DESC LIMIT ?",
                (owner_id, room.room_id, self._rows),
            ).fetchall()
            tasks = conn.execute(
                "SELECT t.number, t.title, t.status, t.consent_state, a.handle, o.handle AS owner,"
                " t.creator_owner_id = ? AS mine FROM tasks t JOIN agents a ON a.agent_id = t.creator_id"
                " JOIN owners o ON o.owner_id = t.creator_owner_id WHERE t.room_id = ? ORDER BY t.number DESC LIMIT ?",
                (owner_id, room.room_id, self._rows),
            ).fetchall()
            return {
                "name": room.name,
                "members": [dict(r) for r in members],
                "messages": [dict(r) for r in messages],
                "files": [dict(r) for r in files],
                "tasks": [dict(r) for r in tasks],
            }

        return await self._store.read(read)

    async def listeners(self, owner_id: str) -> dict[str, str]:
        """Agent handle -> the device whose listener holds it now."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute(
                "SELECT a.handle, d.name FROM listener_holds h JOIN listeners l ON l.holder = h.holder"
                " JOIN devices d ON d.device_id = l.device_id JOIN agents a ON a.agent_id = h.agent_id"
                " WHERE l.owner_id = ?",
                (owner_id,),
            ).fetchall()
            return {r["handle"]: r["name"] for r in rows}

        return await self._store.read(read)

    async def audit_verdict(self) -> audit.Verdict:
        return await self._store.read(audit.verify)

    async def handles(self) -> dict[str, str]:
        """Owner, agent and room ids -> handles and names, for audit rows in plain words."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            names = {r[0]: r[1] for r in conn.execute("SELECT owner_id, handle FROM owners")}
            names.update({r[0]: r[1] for r in conn.execute("SELECT agent_id, handle FROM agents")})
            names.update({r[0]: r[1] for r in conn.execute("SELECT room_id, name FROM rooms")})
            return names

        return await self._store.read(read)
