"""Grants between owners (DESIGN §4): human-only, made and revoked at the CLI, never by an agent.

A grant from Bob to Alice lets Alice's agents propose work to Bob's agents and mention them so they
would wake; Bob's consent mode then decides whether each proposal waits for him.
"""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.models import GrantInfo, GrantList
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

_GRANTS = (
    "SELECT g.*, f.handle AS from_handle, t.handle AS to_handle FROM grants g"
    " JOIN owners f ON f.owner_id = g.from_owner JOIN owners t ON t.owner_id = g.to_owner"
)


def _info(row: sqlite3.Row) -> GrantInfo:
    return GrantInfo(
        grant_id=row["grant_id"],
        from_owner=row["from_handle"],
        to_owner=row["to_handle"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        active=row["revoked_at"] is None,
    )


class Grants:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, operator: Actor, from_ref: str, to_ref: str) -> GrantInfo:
        def run(conn: sqlite3.Connection) -> GrantInfo:
            giver, taker = queries.owner(conn, from_ref), queries.owner(conn, to_ref)
            policy.may_grant(
                policy.GrantRequest(
                    giver_id=giver.owner_id,
                    taker_id=taker.owner_id,
                    giver=giver.handle,
                    taker=taker.handle,
                    unverified=tuple(o.handle for o in (giver, taker) if o.verified_at is None),
                    already_granted=queries.active_grant(conn, giver.owner_id, taker.owner_id) is not None,
                )
            )
            grant_id = new_id("grant")
            conn.execute(
                "INSERT INTO grants (grant_id, from_owner, to_owner, created_at) VALUES (?, ?, ?, ?)",
                (grant_id, giver.owner_id, taker.owner_id, now_utc()),
            )
            audit.append(
                conn,
                operator,
                "grant.add",
                target=grant_id,
                detail={"from": giver.owner_id, "to": taker.owner_id},
            )
            return _info(conn.execute(_GRANTS + " WHERE g.grant_id = ?", (grant_id,)).fetchone())

        return await self._store.write(run)

    async def revoke(self, operator: Actor, from_ref: str, to_ref: str) -> GrantInfo:
        """From the next call on, cross-owner work across it is refused and its pending proposals can
        no longer be accepted (invariant 25); they stay listed, and may still be rejected."""

        def run(conn: sqlite3.Connection) -> GrantInfo:
            giver, taker = queries.owner(conn, from_ref), queries.owner(conn, to_ref)
            grant_id = queries.active_grant(conn, giver.owner_id, taker.owner_id)
            if grant_id is None:
                raise not_found("active grant")
            conn.execute("UPDATE grants SET revoked_at = ? WHERE grant_id = ?", (now_utc(), grant_id))
            audit.append(
                conn,
                operator,
                "grant.revoke",
                target=grant_id,
                detail={"from": giver.owner_id, "to": taker.owner_id},
            )
            return _info(conn.execute(_GRANTS + " WHERE g.grant_id = ?", (grant_id,)).fetchone())

        return await self._store.write(run)

    async def list_grants(self, owner_ref: str | None, *, include_revoked: bool) -> GrantList:
        def run(conn: sqlite3.Connection) -> GrantList:
            sql, args = _GRANTS + " WHERE 1", []
            if owner_ref is not None:
                owner_id = queries.owner(conn, owner_ref).owner_id
                sql += " AND (g.from_owner = ? OR g.to_owner = ?)"
                args += [owner_id, owner_id]
            if not include_revoked:
                sql += " AND g.revoked_at IS NULL"
            return GrantList(grants=[_info(r) for r in conn.execute(sql + " ORDER BY g.created_at", args)])

        return await self._store.read(run)
