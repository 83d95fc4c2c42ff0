"""One-time room invites (DESIGN §3): created by an owner at the CLI, or proposed by a member agent with
`manage` and confirmed by its owner at the CLI; accepted only by a human at the CLI, claimed atomically so
one code makes one set of memberships.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import INVITE_RE, new_id, new_invite_code, secret_hash
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid, invite_invalid, not_found
from agent_rooms_mcp.models import Invite, InviteAccepted, PendingInvite
from agent_rooms_mcp.principals import Caller, Scope
from agent_rooms_mcp.services.rooms import add_member_agent
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import RoomRow

_RoomFinder = Callable[[sqlite3.Connection], tuple[RoomRow, str]]


class Invites:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def create_as_agent(self, caller: Caller, room_ref: str, ttl_s: int) -> PendingInvite:
        """An agent proposes; its owner confirms in the CLI and only then is there a code (invariant 106):
        what reaches a model can never bring anyone into a room by itself."""
        policy.require_scope(caller, Scope.MANAGE)

        def member_room(conn: sqlite3.Connection) -> tuple[RoomRow, str]:
            queries.recheck_caller(conn, caller, Scope.MANAGE)
            return queries.room_for_member(conn, room_ref, caller), caller.owner_id

        invite_id, room, expires = await self._create(caller.actor, ttl_s, member_room, code=None)
        return PendingInvite(
            invite_id=invite_id,
            room=room,
            state="pending_owner",
            expires_at=expires,
            confirm_command=f"agent-rooms invite confirm {invite_id} --owner {caller.owner_handle}",
        )

    async def create_as_owner(self, operator: Actor, room_ref: str, owner_ref: str, ttl_s: int) -> Invite:
        def room_of_owner(conn: sqlite3.Connection) -> tuple[RoomRow, str]:
            room, owner = queries.room(conn, room_ref), queries.owner(conn, owner_ref)
            in_room = queries.owner_joined(conn, room.room_id, owner.owner_id) is not None
            policy.require_owner_in_room(in_room, "by", owner.handle, room.name)
            return room, owner.owner_id

        code = new_invite_code()
        invite_id, room, expires = await self._create(operator, ttl_s, room_of_owner, code=code)
        return _usable(invite_id, code, room, expires)

    async def confirm(self, operator: Actor, invite_id: str, owner_ref: str | None) -> Invite:
        """The owner confirms an invite one of their agents proposed: the code is minted now, shown once."""
        code = new_invite_code()

        def run(conn: sqlite3.Connection) -> Invite:
            owner_id = None if owner_ref is None else queries.owner(conn, owner_ref).owner_id
            now = now_utc()
            # Missing, already confirmed, expired or another owner's: one answer, as for any id (invariant 82).
            row = conn.execute(
                "UPDATE invites SET state = 'active', code_hash = ?, confirmed_at = ?"
                " WHERE invite_id = ? AND state = 'pending_owner' AND withdrawn_at IS NULL AND expires_at > ?"
                " AND owner_id = coalesce(?, owner_id) RETURNING room_id, owner_id, expires_at",
                (secret_hash(code), now, invite_id, now, owner_id),
            ).fetchone()
            if row is None:
                raise not_found("invite waiting for its owner")
            audit.append(
                conn,
                operator,
                "invite.confirm",
                target=row["room_id"],
                detail={"invite_id": invite_id, "owner_id": row["owner_id"]},
            )
            room = conn.execute("SELECT name FROM rooms WHERE room_id = ?", (row["room_id"],)).fetchone()
            return _usable(invite_id, code, room["name"], row["expires_at"])

        return await self._store.write(run)

    async def _create(
        self, actor: Actor, ttl_s: int, find_room: _RoomFinder, *, code: str | None
    ) -> tuple[str, str, str]:
        """Record an invite: active with `code`, or, with none, waiting for its owner. (id, room, expiry)."""
        lim = self._limits
        if not lim.invite_ttl_min_s <= ttl_s <= lim.invite_ttl_max_s:
            raise invalid("ttl_s", f"must be between {lim.invite_ttl_min_s} and {lim.invite_ttl_max_s} seconds")

        def run(conn: sqlite3.Connection) -> tuple[str, str, str]:
            room, owner_id = find_room(conn)
            now = datetime.now(UTC)
            pending = conn.execute(
                "SELECT count(*) FROM invites WHERE room_id = ? AND used_at IS NULL AND expires_at > ?",
                (room.room_id, iso(now)),
            ).fetchone()[0]
            if pending >= lim.pending_invites_per_room:
                raise RoomsError(
                    ErrorCode.CONFLICT,
                    f"room {room.name} already has {pending} pending invites; let some expire or be used",
                )
            invite_id, expires = new_id("invite"), iso(now + timedelta(seconds=ttl_s))
            conn.execute(
                "INSERT INTO invites (invite_id, room_id, state, code_hash, owner_id, created_by, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    invite_id,
                    room.room_id,
                    "pending_owner" if code is None else "active",
                    None if code is None else secret_hash(code),
                    owner_id,
                    actor.id or actor.kind,
                    iso(now),
                    expires,
                ),
            )
            audit.append(conn, actor, "invite.create", target=room.room_id, detail={"invite_id": invite_id})
            return invite_id, room.name, expires

        return await self._store.write(run)

    async def accept(self, operator: Actor, code: str, owner_ref: str, agent_refs: list[str]) -> InviteAccepted:
        """Claim the code and add the owner and their named agents, all in one transaction (invariant 38)."""

        def run(conn: sqlite3.Connection) -> InviteAccepted:
            owner = queries.owner(conn, owner_ref)
            now = now_utc()
            claimed = (
                conn.execute(
                    "UPDATE invites SET used_at = ?, used_by = ?"
                    " WHERE code_hash = ? AND used_at IS NULL AND withdrawn_at IS NULL AND expires_at > ?"
                    " RETURNING invite_id, room_id",
                    (now, owner.owner_id, secret_hash(code), now),
                ).fetchone()
                if INVITE_RE.fullmatch(code)
                else None
            )
            if claimed is None:
                raise invite_invalid(_why_invalid(conn, code))
            room_id = claimed["room_id"]
            room = conn.execute("SELECT name FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
            # Checked after the claim so an invalid code still gets its one answer (invariant 37); raising
            # here rolls the claim back, so a refused accept leaves the code usable.
            named = [queries.agent(conn, ref) for ref in agent_refs]
            for agent in named:
                policy.require_own_agent(agent.owner_id, owner.owner_id, agent.handle)
            present = [
                a.handle
                for a in named
                if conn.execute(
                    "SELECT 1 FROM room_agents WHERE room_id = ? AND agent_id = ?", (room_id, a.agent_id)
                ).fetchone()
            ]
            policy.require_accept_adds_agents([a.handle for a in named], present, room["name"])
            # An owner with no agent left in the room who comes back arrives anew: trust_room trusts those
            # present when it was set, and someone who left and returned was not continuously so.
            returning = not conn.execute(
                "SELECT 1 FROM room_agents x JOIN agents a ON a.agent_id = x.agent_id"
                " WHERE x.room_id = ? AND a.owner_id = ?",
                (room_id, owner.owner_id),
            ).fetchone()
            conn.execute(
                "INSERT INTO room_owners (room_id, owner_id, joined_at) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id, owner_id) DO UPDATE SET joined_at = excluded.joined_at WHERE ?",
                (room_id, owner.owner_id, now, returning),
            )
            added = [add_member_agent(conn, room_id, owner.owner_id, ref, now) for ref in agent_refs]
            audit.append(
                conn,
                operator,
                "invite.accept",
                target=room_id,
                detail={"invite_id": claimed["invite_id"], "owner_id": owner.owner_id, "agents": added},
            )
            return InviteAccepted(room_id=room_id, room=room["name"], owner=owner.handle, agents=agent_refs)

        try:
            return await self._store.write(run)
        except RoomsError as e:
            if e.code is ErrorCode.INVITE_INVALID:
                await audit.record_denial(self._store, operator, "invite.accept", e.audit_reason)
            raise


def _usable(invite_id: str, code: str, room: str, expires: str) -> Invite:
    return Invite(
        invite_id=invite_id,
        code=code,
        room=room,
        expires_at=expires,
        accept_command=f"agent-rooms invite accept {code} --owner YOUR_OWNER_HANDLE --agent YOUR_AGENT",
    )


def _why_invalid(conn: sqlite3.Connection, code: str) -> str:
    """For the audit row only: the caller sees one answer for every reason (invariant 37)."""
    if not INVITE_RE.fullmatch(code):
        return "malformed_code"
    row = conn.execute("SELECT used_at, withdrawn_at FROM invites WHERE code_hash = ?", (secret_hash(code),)).fetchone()
    if row is None:
        return "unknown_code"
    if row["withdrawn_at"]:
        return "withdrawn_code"
    return "used_code" if row["used_at"] else "expired_code"
