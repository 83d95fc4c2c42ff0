"""Reads that look across the hub for the operator's and owners' overviews (DESIGN §9.5): `doctor`'s stale runs
and invoke agents in shared rooms, and `status`'s runs, outgoing consents and listeners of one owner. Reads
only: no audit row, no write."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.models import ListenerInfo, OutgoingProposal, RunInfo
from agent_rooms_mcp.principals import Scope
from agent_rooms_mcp.run_states import HELD_STATES, WAITING_STATES, RunState, sql_words
from agent_rooms_mcp.services.run_control import as_their_owners_see
from agent_rooms_mcp.store.database import Store

_WAITING, _HELD = sql_words(*WAITING_STATES), sql_words(*HELD_STATES)
_LIVE = sql_words(*WAITING_STATES, *HELD_STATES, RunState.STOP_PENDING)


@dataclass(frozen=True)
class SharedInvoke:
    """An agent that can be woken, runs unsandboxed on this hub, and sits in a room another owner is in."""

    agent: str
    owner: str
    room: str
    others: int


class Overview:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def stale_runs(self, older_than_s: int) -> list[RunInfo]:
        """Runs that should have moved on: waiting longer than `older_than_s`, or held by a supervisor whose
        lease ran out that long ago (nobody is watching them)."""
        cutoff = iso(datetime.now(UTC) - timedelta(seconds=older_than_s))

        def run(conn: sqlite3.Connection) -> list[RunInfo]:
            return as_their_owners_see(
                conn,
                f" WHERE (r.state IN ({_WAITING}) AND r.created_at < ?)"
                f" OR (r.state IN ({_HELD}) AND coalesce(r.lease_until, r.created_at) < ?) ORDER BY r.created_at",
                (cutoff, cutoff),
            )

        return await self._store.read(run)

    async def live_runs(self, owner_id: str) -> list[RunInfo]:
        """An owner's runs that have not ended: queued, waiting for a listener, running or stopping."""

        def run(conn: sqlite3.Connection) -> list[RunInfo]:
            return as_their_owners_see(
                conn, f" WHERE r.owner_id = ? AND r.state IN ({_LIVE}) ORDER BY r.created_at", (owner_id,)
            )

        return await self._store.read(run)

    async def invoke_in_shared_rooms(self) -> list[SharedInvoke]:
        """Agents of local owners that hold `invoke`, run unsandboxed, and sit in a room another owner is in:
        room content from others reaches a CLI running with its owner's permissions (DESIGN §2)."""

        def run(conn: sqlite3.Connection) -> list[SharedInvoke]:
            rows = conn.execute(
                "SELECT a.handle, a.scopes, o.handle AS owner, m.name AS room,"
                " (SELECT count(*) FROM room_owners x WHERE x.room_id = m.room_id AND x.owner_id <> a.owner_id)"
                " AS others"
                " FROM agents a JOIN owners o ON o.owner_id = a.owner_id"
                " JOIN room_agents ra ON ra.agent_id = a.agent_id JOIN rooms m ON m.room_id = ra.room_id"
                " WHERE a.status = 'active' AND a.sandbox = 0 AND o.local = 1 AND m.quarantined_at IS NULL"
                " ORDER BY a.handle, m.name"
            ).fetchall()
            return [
                SharedInvoke(r["handle"], r["owner"], r["room"], r["others"])
                for r in rows
                if r["others"] > 0 and Scope.INVOKE.value in r["scopes"].split(",")
            ]

        return await self._store.read(run)

    async def outgoing_proposals(self, owner_id: str) -> list[OutgoingProposal]:
        """Proposals this owner's agents made that wait on another owner's decision."""

        def run(conn: sqlite3.Connection) -> list[OutgoingProposal]:
            rows = conn.execute(
                "SELECT p.proposal_id, p.kind, p.created_at, m.name AS room, pa.handle AS proposer,"
                " ta.handle AS target, tow.handle AS target_owner"
                " FROM proposals p JOIN rooms m ON m.room_id = p.room_id"
                " JOIN agents pa ON pa.agent_id = p.proposer_id JOIN agents ta ON ta.agent_id = p.target_id"
                " JOIN owners tow ON tow.owner_id = p.target_owner_id"
                " WHERE p.proposer_owner_id = ? AND p.state = 'pending' ORDER BY p.created_at",
                (owner_id,),
            ).fetchall()
            return [OutgoingProposal(**dict(r)) for r in rows]  # the columns are named as its fields

        return await self._store.read(run)

    async def listeners(self, owner_id: str, live_s: float) -> list[ListenerInfo]:
        """The owner's listeners that matter now, with the agents each holds now: those heard from within
        `live_s` (the lease time) or still holding an agent, of devices not revoked. A listener that stopped,
        crashed or was replaced long ago is history (its `listener.*` audit rows keep it), not status."""
        now = datetime.now(UTC)
        fresh, current = iso(now - timedelta(seconds=live_s)), iso(now)

        def run(conn: sqlite3.Connection) -> list[ListenerInfo]:
            rows = conn.execute(
                "SELECT * FROM (SELECT l.holder, l.host, l.started_at, l.seen_at, d.name AS device,"
                " (SELECT group_concat(a.handle, ',') FROM listener_holds h JOIN agents a ON a.agent_id = h.agent_id"
                "  WHERE h.holder = l.holder AND h.until > ?) AS held"
                " FROM listeners l JOIN devices d ON d.device_id = l.device_id"
                " WHERE l.owner_id = ? AND d.revoked_at IS NULL)"
                " WHERE held IS NOT NULL OR seen_at >= ? ORDER BY seen_at DESC",
                (current, owner_id, fresh),
            ).fetchall()
            return [
                ListenerInfo(
                    holder=r["holder"],
                    device=r["device"],
                    host=r["host"],
                    started_at=r["started_at"],
                    seen_at=r["seen_at"],
                    agents=sorted(r["held"].split(",")) if r["held"] else [],
                )
                for r in rows
            ]

        return await self._store.read(run)
