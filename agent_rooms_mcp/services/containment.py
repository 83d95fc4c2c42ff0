"""Kill switches (DESIGN §6): delete an agent, quarantine a room, revoke a token, each with a receipt.

Each switch is one transaction that revokes, withdraws, ends memberships, marks runs for the stop ladder and
writes its revocation row and audit rows. Only after it committed does the receipt get written, and only
from what can be shown: every credential named is looked up as `authenticate()` would look it up, on a fresh
connection (auth/authenticator.prove_refused), and every run is waited for as `agent stop` waits for it
(services/stopping), so a run is called stopped only once its supervisor recorded that its processes are gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta

import anyio

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.authenticator import prove_refused
from agent_rooms_mcp.auth.passports import PassportIssuer
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.models import (
    AgentExport,
    ArchivedMembership,
    ArchivedToken,
    CredentialReceipt,
    Receipt,
    RoomArchive,
    RunReceipt,
    TokenRevoked,
    WithdrawnItem,
)
from agent_rooms_mcp.run_states import FINAL_STATES, HELD_STATES, WAITING_STATES, RunState, sql_words
from agent_rooms_mcp.services import stopping
from agent_rooms_mcp.services.accounts import Accounts, agent_info, record_revocation
from agent_rooms_mcp.services.devices import prove_devices_refused
from agent_rooms_mcp.services.listeners import release_device
from agent_rooms_mcp.services.run_control import Runs
from agent_rooms_mcp.services.withdrawal import withdraw
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import AgentRow

_LIVE_RUNS = sql_words(*WAITING_STATES, *HELD_STATES)
_WAITING = sql_words(*WAITING_STATES)


class Containment:
    def __init__(self, store: Store, issuer: PassportIssuer, runs: Runs, caps: WakeSettings) -> None:
        self._store = store
        self._issuer = issuer
        self._runs = runs
        self._caps = caps

    async def delete_agent(self, actor: Actor, agent_ref: str) -> Receipt:
        """In one transaction: every token of the agent (its own and its runs') revoked and its credential epoch
        raised, so no passport of it holds; memberships ended; waiting wakes and pending proposals withdrawn;
        running ones marked for the stop ladder; a revocation row and an audit row (invariant 48). The row
        stays, archived: every lookup but its owner's export answers NOT_FOUND from then on (invariant 49)."""

        def run(conn: sqlite3.Connection) -> _Done:
            agent = queries.agent(conn, agent_ref)
            return _delete_agent(conn, actor, agent, now_utc(), "agent_deleted")

        done = await self._store.write(run, notify=True)
        return await self._receipt("agent.delete", done)

    async def remove_owner(self, actor: Actor, owner_ref: str, device_idle_s: int) -> Receipt:
        """An operator action, in one transaction: `agent delete` of each of the owner's agents (each with its
        own revocation and audit rows), their devices revoked (their listeners' runs stop_pending, as a
        device revoke leaves them), every grant to and from them revoked, their room memberships ended,
        their unused enrollment codes, console sessions and links, and the invites they gave voided; the owner
        archived and the handle retired (DESIGN §6)."""

        def run(conn: sqlite3.Connection) -> _Done:
            owner = queries.owner(conn, owner_ref)
            owner_id, now = str(owner.owner_id), now_utc()
            done = _Done(owner_id, str(owner.handle), now)
            for agent in queries.active_agents(conn, owner_id):
                done.absorb(_delete_agent(conn, actor, agent, now, "owner_removed"))
            for device in conn.execute(
                "UPDATE devices SET revoked_at = ? WHERE owner_id = ? AND revoked_at IS NULL RETURNING device_id",
                (now, owner_id),
            ).fetchall():
                done.stop_pending += release_device(conn, actor, device["device_id"], now)
            # A run its listener holds ends only when that listener says so: reported as it stands, not waited on.
            done.stopping = [r for r in done.stopping if r not in done.stop_pending]
            done.device_ids = [
                r["device_id"] for r in conn.execute("SELECT device_id FROM devices WHERE owner_id = ?", (owner_id,))
            ]
            conn.execute(
                "UPDATE enrollments SET expires_at = ? WHERE owner_id = ? AND used_at IS NULL AND expires_at > ?",
                (now, owner_id, now),
            )
            # The console (DESIGN §9.2) is a way in as the owner: their sessions end and their unused login
            # links are spent, as their devices are revoked.
            conn.execute("UPDATE console_links SET used_at = ? WHERE owner_id = ? AND used_at IS NULL", (now, owner_id))
            for row in conn.execute(
                "UPDATE console_sessions SET revoked_at = ? WHERE owner_id = ? AND revoked_at IS NULL"
                " RETURNING session_id",
                (now, owner_id),
            ).fetchall():
                done.withdrawn.append(WithdrawnItem(kind="console_session", id=row["session_id"]))
            for grant in conn.execute(
                "UPDATE grants SET revoked_at = ? WHERE (from_owner = ? OR to_owner = ?) AND revoked_at IS NULL"
                " RETURNING grant_id",
                (now, owner_id, owner_id),
            ).fetchall():
                done.withdrawn.append(WithdrawnItem(kind="grant", id=grant["grant_id"]))
            done.withdrawn += _withdraw_proposals(
                conn, "(proposer_owner_id = ? OR target_owner_id = ?)", (owner_id, owner_id), now
            )
            # Their invites would otherwise still let someone in on their word after they are gone: an
            # invite is the inviting owner's say-so (invites.owner_id), pending confirmation or not.
            for row in conn.execute(
                "UPDATE invites SET withdrawn_at = ? WHERE owner_id = ? AND used_at IS NULL AND withdrawn_at IS NULL"
                " AND expires_at > ? RETURNING invite_id, (SELECT name FROM rooms r WHERE r.room_id = invites.room_id)",
                (now, owner_id, now),
            ).fetchall():
                done.withdrawn.append(WithdrawnItem(kind="invite", id=row[0], room=row[1]))
            for room in conn.execute(
                "DELETE FROM room_owners WHERE owner_id = ? RETURNING room_id", (owner_id,)
            ).fetchall():
                done.withdrawn.append(WithdrawnItem(kind="room_membership", id=room["room_id"]))
            conn.execute("UPDATE owners SET removed_at = ? WHERE owner_id = ?", (now, owner_id))
            conn.execute(
                "INSERT OR IGNORE INTO retired_handles (kind, handle, retired_at) VALUES ('owner', ?, ?)",
                (owner.handle, now),
            )
            revocation = record_revocation(conn, "owner", owner_id, "owner_remove", now)
            detail = {**done.detail(revocation), "devices": len(done.device_ids)}
            audit.append(conn, actor, "owner.remove", target=owner_id, detail=detail)
            return done

        done = await self._store.write(run, notify=True)
        return await self._receipt("owner.remove", done, device_idle_s=device_idle_s)

    async def quarantine_room(self, actor: Actor, room_ref: str) -> Receipt:
        """In one transaction: every waiting wake of the room withdrawn and every running one marked for the stop
        ladder, its run tokens revoked, all agent memberships ended, pending proposals and invites withdrawn, a
        revocation row and an audit row; from then on the room answers NOT_FOUND to everyone (invariant 51)."""

        def run(conn: sqlite3.Connection) -> _Done:
            room = queries.room(conn, room_ref)
            room_id, now = str(room.room_id), now_utc()
            done = _Done(room_id, str(room.name), now)
            _withdraw_runs(conn, actor, done, "room_id = ?", (room_id,), "room_quarantined")
            done.token_ids += _revoke_tokens(
                conn, "run_id IN (SELECT run_id FROM runs WHERE room_id = ?)", (room_id,), now
            )
            conn.execute("UPDATE rooms SET quarantined_at = ? WHERE room_id = ?", (now, room_id))
            done.withdrawn += _end_memberships(conn, "x.room_id = ?", (room_id,), "room_quarantined", now)
            done.withdrawn += _withdraw_proposals(conn, "room_id = ?", (room_id,), now)
            for row in conn.execute(
                "UPDATE invites SET withdrawn_at = ? WHERE room_id = ? AND used_at IS NULL AND withdrawn_at IS NULL"
                " AND expires_at > ? RETURNING invite_id",
                (now, room_id, now),
            ).fetchall():
                done.withdrawn.append(WithdrawnItem(kind="invite", id=row["invite_id"], room=room.name))
            revocation = record_revocation(conn, "room", room_id, "room_quarantine", now)
            audit.append(conn, actor, "room.quarantine", target=room_id, detail=done.detail(revocation))
            return done

        done = await self._store.write(run, notify=True)
        return await self._receipt("room.quarantine", done)

    async def revoke_token(self, accounts: Accounts, actor: Actor, token_id: str) -> TokenRevoked:
        """One token revoked (the agent's others untouched), with the proof that it is now refused."""
        info = await accounts.revoke_token(actor, token_id)
        done = _Done(token_id, token_id, now_utc())
        done.token_ids.append(token_id)
        receipt = await self._receipt("token.revoke", done)
        return TokenRevoked(**receipt.model_dump(), **info.model_dump())

    async def export_room(self, room_ref: str) -> RoomArchive:
        """A room's archive, quarantined or not, for its owners' review (an operator action)."""

        def run(conn: sqlite3.Connection) -> RoomArchive:
            room = conn.execute("SELECT * FROM rooms WHERE room_id = ? OR name = ?", (room_ref, room_ref)).fetchone()
            if room is None:
                raise not_found("room", room_ref)
            room_id = room["room_id"]

            def rows(sql: str) -> list[dict[str, object]]:
                return [dict(r) for r in conn.execute(sql, (room_id,))]

            owners = rows(
                "SELECT o.owner_id, o.handle, x.joined_at FROM room_owners x JOIN owners o ON o.owner_id = x.owner_id"
                " WHERE x.room_id = ? ORDER BY x.joined_at"
            )
            members = [
                dict(r)
                for r in conn.execute(
                    "SELECT a.agent_id, a.handle, x.joined_at, NULL AS ended_at, NULL AS reason FROM room_agents x"
                    " JOIN agents a ON a.agent_id = x.agent_id WHERE x.room_id = ?"
                    " UNION ALL SELECT a.agent_id, a.handle, e.joined_at, e.ended_at, e.reason"
                    " FROM ended_memberships e JOIN agents a ON a.agent_id = e.agent_id WHERE e.room_id = ?"
                    " ORDER BY 3",
                    (room_id, room_id),
                )
            ]
            return RoomArchive(
                room_id=room_id,
                name=room["name"],
                created_at=room["created_at"],
                quarantined_at=room["quarantined_at"],
                owners=[{k: str(v) for k, v in o.items()} for o in owners],
                members=[{k: None if v is None else str(v) for k, v in m.items()} for m in members],
                messages=rows(
                    "SELECT m.seq, m.message_id, a.handle AS agent, m.text, m.mentions, m.reply_to, m.created_at"
                    " FROM messages m JOIN agents a ON a.agent_id = m.agent_id WHERE m.room_id = ? ORDER BY m.seq"
                ),
                tasks=rows(
                    "SELECT task_id, number, title, body, status, consent_state, creator_id, assignee_id, note,"
                    " created_at, updated_at FROM tasks WHERE room_id = ? ORDER BY number"
                ),
                files=rows(
                    "SELECT file_id, name, media_type, size, sha256, agent_id, created_at FROM files"
                    " WHERE room_id = ? ORDER BY created_at"
                ),
            )

        return await self._store.read(run)

    async def export_agent(self, agent_id: str) -> AgentExport:
        """An agent's record, deleted or not, by id (its owner resolved and checked by the caller)."""

        def run(conn: sqlite3.Connection) -> AgentExport:
            row = conn.execute(queries.AGENT + " WHERE a.agent_id = ?", (agent_id,)).fetchone()
            if row is None:
                raise not_found("agent", agent_id)
            memberships = conn.execute(
                "SELECT m.name AS room, x.joined_at, NULL AS ended_at, NULL AS reason FROM room_agents x"
                " JOIN rooms m ON m.room_id = x.room_id WHERE x.agent_id = ?"
                " UNION ALL SELECT m.name, e.joined_at, e.ended_at, e.reason FROM ended_memberships e"
                " JOIN rooms m ON m.room_id = e.room_id WHERE e.agent_id = ? ORDER BY 2",
                (agent_id, agent_id),
            ).fetchall()
            tokens = conn.execute(
                "SELECT token_id, run_id, created_at, expires_at, revoked_at FROM tokens WHERE agent_id = ?"
                " ORDER BY created_at",
                (agent_id,),
            ).fetchall()
            return AgentExport(
                agent=agent_info(AgentRow.from_row(row)),
                status=row["status"],
                deleted_at=row["deleted_at"],
                memberships=[ArchivedMembership(**dict(m)) for m in memberships],
                tokens=[ArchivedToken(**dict(t)) for t in tokens],
            )

        return await self._store.read(run)

    async def _receipt(self, action: str, done: _Done, *, device_idle_s: int = 0) -> Receipt:
        # The proof runs on a fresh connection of its own, off the event loop: it may wait on the file.
        answers = await anyio.to_thread.run_sync(prove_refused, self._store.path, self._issuer, done.token_ids)
        credentials = [
            CredentialReceipt(
                token_id=token_id,
                kind="agent_token" if done.run_of.get(token_id) is None else "run_token",
                run_id=done.run_of.get(token_id),
                refused=answer is not None,
                answer=answer or "accepted",
            )
            for token_id, answer in answers.items()
        ]
        if done.device_ids:
            idle = timedelta(seconds=device_idle_s)
            proved = await anyio.to_thread.run_sync(prove_devices_refused, self._store.path, done.device_ids, idle)
            credentials += [
                CredentialReceipt(
                    token_id=device_id,
                    kind="device",
                    run_id=None,
                    refused=answer is not None,
                    answer=answer or "accepted",
                )
                for device_id, answer in proved.items()
            ]
        runs = await self._wait(done.stopping, also=done.stop_pending)
        return Receipt(
            action=action,  # type: ignore[arg-type]
            subject_id=done.subject_id,
            subject=done.subject,
            at=done.at,
            credentials=credentials,
            runs=[*done.ended, *runs],
            withdrawn=done.withdrawn,
            proven=all(c.refused for c in credentials) and all(r.processes_gone for r in runs),
        )

    async def _wait(self, run_ids: Sequence[str], *, also: Sequence[str] = ()) -> list[RunReceipt]:
        """Each run marked for the stop ladder, as it ended, or as it stands when the ladder's time is up; and
        the runs `also` names (a revoked device's, whose end only its listener can report) as they stand."""
        await stopping.wait_for_end(self._runs, self._store, self._caps, run_ids)
        run_ids = [*run_ids, *also]

        def read(conn: sqlite3.Connection) -> list[RunReceipt]:
            out = []
            for run_id in run_ids:
                row = conn.execute(
                    "SELECT r.run_id, r.state, r.stop_signal, r.lease_holder, a.handle, l.seen_at FROM runs r"
                    " JOIN agents a ON a.agent_id = r.agent_id LEFT JOIN listeners l ON l.holder = r.lease_holder"
                    " WHERE r.run_id = ?",
                    (run_id,),
                ).fetchone()
                gone = row["state"] in FINAL_STATES
                out.append(
                    RunReceipt(
                        run_id=run_id,
                        agent=row["handle"],
                        # Not confirmed ended: never called stopped (DESIGN §6).
                        state=row["state"] if gone else RunState.STOP_PENDING,
                        stop_signal=stopping.signal_of(row["stop_signal"]),
                        processes_gone=gone,
                        listener=None if gone or row["seen_at"] is None else row["lease_holder"],
                        last_contact=None if gone else row["seen_at"],
                    )
                )
            return out

        return await self._store.read(read)


class _Done:
    """What one kill switch's transaction did, for its audit row and its receipt."""

    def __init__(self, subject_id: str, subject: str, at: str) -> None:
        self.subject_id, self.subject, self.at = subject_id, subject, at
        self.token_ids: list[str] = []
        self.run_of: dict[str, str] = {}
        self.withdrawn: list[WithdrawnItem] = []
        self.stopping: list[str] = []  # runs the stop ladder ends
        self.ended: list[RunReceipt] = []  # wakes withdrawn before any process existed
        self.device_ids: list[str] = []
        self.stop_pending: list[str] = []  # runs of a revoked device's listener: their end comes from it

    def absorb(self, other: _Done) -> None:
        self.token_ids += other.token_ids
        self.run_of.update(other.run_of)
        self.withdrawn += other.withdrawn
        self.stopping += other.stopping
        self.ended += other.ended

    def detail(self, revocation: str) -> dict[str, object]:
        return {
            "revocation_id": revocation,
            "tokens": len(self.token_ids),
            "runs_stopping": self.stopping,
            "withdrawn": {kind: sum(1 for w in self.withdrawn if w.kind == kind)
                          for kind in ("membership", "wake", "proposal", "invite", "grant", "room_membership")},
        }  # fmt: skip


def _delete_agent(conn: sqlite3.Connection, actor: Actor, agent: AgentRow, now: str, reason: str) -> _Done:
    """One agent's delete, inside the caller's transaction: its `agent.delete` audit row says what it did."""
    agent_id = agent.agent_id
    done = _Done(agent_id, agent.handle, now)
    _withdraw_runs(conn, actor, done, "agent_id = ?", (agent_id,), reason)
    # Wakes its words caused that have not started: a contaminated agent's words must not start anyone's CLI
    # once it is deleted (a run already under way goes on; its owner can stop it).
    caused = f"run_id IN (SELECT run_id FROM runs WHERE caused_by = ? AND state IN ({_WAITING}))"
    _withdraw_runs(conn, actor, done, caused, (agent_id,), reason)
    done.token_ids += _revoke_tokens(conn, "agent_id = ?", (agent_id,), now)
    # The epoch too: a passport of it, wherever a copy is, names an epoch that is no longer current.
    conn.execute(
        "UPDATE agents SET status = 'deleted', deleted_at = ?, cred_epoch = cred_epoch + 1 WHERE agent_id = ?",
        (now, agent_id),
    )
    conn.execute(
        "INSERT OR IGNORE INTO retired_handles (kind, handle, retired_at) VALUES ('agent', ?, ?)",
        (agent.handle, now),
    )
    done.withdrawn += _end_memberships(conn, "x.agent_id = ?", (agent_id,), reason, now)
    done.withdrawn += _withdraw_proposals(conn, "(proposer_id = ? OR target_id = ?)", (agent_id, agent_id), now)
    revocation = record_revocation(conn, "agent", agent_id, "agent_delete", now)
    audit.append(conn, actor, "agent.delete", target=agent_id, detail=done.detail(revocation))
    return done


def _withdraw_runs(
    conn: sqlite3.Connection, actor: Actor, done: _Done, where: str, args: tuple[str, ...], reason: str
) -> None:
    """Waiting wakes end `withdrawn` now; held runs are marked for their supervisor's stop ladder (the one
    `agent stop` uses) and lose their tokens in this transaction (services/withdrawal.withdraw)."""
    rows = conn.execute(
        f"SELECT r.run_id, r.state, r.room_id, a.handle, m.name FROM runs r JOIN agents a ON a.agent_id = r.agent_id"
        f" JOIN rooms m ON m.room_id = r.room_id WHERE r.{where} AND r.state IN ({_LIVE_RUNS})",
        args,
    ).fetchall()
    for row in rows:
        withdraw(conn, row["run_id"], row["state"], reason, done.at)
        if row["state"] in WAITING_STATES:
            done.withdrawn.append(WithdrawnItem(kind="wake", id=row["run_id"], room=row["name"]))
            done.ended.append(
                RunReceipt(
                    run_id=row["run_id"],
                    agent=row["handle"],
                    state=RunState.WITHDRAWN,
                    stop_signal=stopping.signal_of(None),
                    processes_gone=True,  # none was ever started
                )
            )
        else:
            done.stopping.append(row["run_id"])
    # A run whose stop only its listener can confirm is reported as it stands: never as stopped, and a receipt
    # holding one is not proven (DESIGN §6).
    done.stop_pending += [
        r["run_id"]
        for r in conn.execute(f"SELECT run_id FROM runs r WHERE r.{where} AND r.state = 'stop_pending'", args)
        if r["run_id"] not in done.stop_pending
    ]
    if rows:
        audit.append(conn, actor, "run.withdraw", target=done.subject_id,
                     detail={"reason": reason, "runs": [r["run_id"] for r in rows]})  # fmt: skip
    for row in conn.execute(
        f"SELECT token_id, run_id FROM tokens WHERE run_id IN (SELECT run_id FROM runs WHERE {where})", args
    ):
        done.run_of[row["token_id"]] = row["run_id"]


def _revoke_tokens(conn: sqlite3.Connection, where: str, args: tuple[str, ...], now: str) -> list[str]:
    """Revoke every live token matching `where`; the ids of those this switch revoked (a held run's token
    revoked a moment earlier by its withdrawal, at the same `now`, among them), which the receipt must
    prove refused. Tokens revoked before, by something else, are not this switch's to claim."""
    conn.execute(f"UPDATE tokens SET revoked_at = ? WHERE {where} AND revoked_at IS NULL", (now, *args))
    rows = conn.execute(
        f"SELECT token_id FROM tokens WHERE {where} AND revoked_at = ? ORDER BY created_at", (*args, now)
    ).fetchall()
    return [r["token_id"] for r in rows]


def _end_memberships(
    conn: sqlite3.Connection, where: str, args: tuple[str, ...], reason: str, now: str
) -> list[WithdrawnItem]:
    """Memberships move to `ended_memberships`: gone for every query, kept for the archive."""
    rows = conn.execute(
        f"SELECT x.room_id, x.agent_id, x.joined_at, m.name FROM room_agents x JOIN rooms m ON m.room_id = x.room_id"
        f" WHERE {where}",
        args,
    ).fetchall()
    for row in rows:
        conn.execute(
            "INSERT INTO ended_memberships (room_id, agent_id, joined_at, ended_at, reason) VALUES (?, ?, ?, ?, ?)",
            (row["room_id"], row["agent_id"], row["joined_at"], now, reason),
        )
        conn.execute("DELETE FROM room_agents WHERE room_id = ? AND agent_id = ?", (row["room_id"], row["agent_id"]))
    return [WithdrawnItem(kind="membership", id=r["agent_id"], room=r["name"]) for r in rows]


def _withdraw_proposals(conn: sqlite3.Connection, where: str, args: tuple[str, ...], now: str) -> list[WithdrawnItem]:
    rows = conn.execute(
        f"UPDATE proposals SET state = 'withdrawn', decided_at = ? WHERE {where} AND state = 'pending'"
        " RETURNING proposal_id, room_id",
        (now, *args),
    ).fetchall()
    names = {r["room_id"]: r["name"] for r in conn.execute("SELECT room_id, name FROM rooms")} if rows else {}
    return [WithdrawnItem(kind="proposal", id=r["proposal_id"], room=names.get(r["room_id"])) for r in rows]
