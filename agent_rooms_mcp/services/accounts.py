"""Owners, agents and their tokens: human-only actions the CLI performs as the operator (DESIGN §2)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.passports import Claims, PassportIssuer
from agent_rooms_mcp.auth.tokens import CredentialKind, new_id, new_token, secret_hash
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.envrules import check_extra, check_new
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid, not_found
from agent_rooms_mcp.models import (
    AgentEnvList,
    AgentInfo,
    AgentList,
    IssuedToken,
    OwnerInfo,
    OwnerList,
    TokenInfo,
    TokenList,
)
from agent_rooms_mcp.principals import AgentTool, Scope, check_handle, format_scopes
from agent_rooms_mcp.services import runs
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import AgentRow, OwnerRow
from agent_rooms_mcp.vault import AGENT_ENV, Vault


def _owner_info(row: OwnerRow) -> OwnerInfo:
    return OwnerInfo(
        owner_id=row.owner_id,
        handle=row.handle,
        created_at=row.created_at,
        verified=row.verified_at is not None,
        verified_at=row.verified_at,
        verified_method=row.verified_method,
        local=row.local,
    )


def checked_workdir(workdir: str, hub_home: Path) -> str:
    """An agent's workdir as stored: absolute and an existing directory now, so a typo is caught when it is
    typed, not at the first wake (which would end `workdir_missing`), and none that would show a woken CLI
    what its sandbox hides (checked again at every spawn)."""
    path = Path(workdir).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_dir():
        raise invalid("workdir", f"{workdir!r} is not an existing directory: create it first, or give another")
    resolved = path.resolve()
    if why := policy.workdir_exposure(resolved, hub_home=hub_home.resolve(), user_home=Path.home().resolve()):
        raise invalid("workdir", f"{why}: give a project directory of its own")
    return str(resolved)


# Where each kind of handle lives, the condition a live one meets, and what became of one no longer live.
_HANDLES = {
    "owner": ("owners", "removed_at IS NULL", "a removed owner"),
    "agent": ("agents", "status = 'active'", "a deleted agent"),
}


def _require_new_handle(conn: sqlite3.Connection, kind: Literal["owner", "agent"], handle: str) -> None:
    """CONFLICT for a handle in use, and for one ever used: a removed owner's or a deleted agent's handle is
    retired for good (DESIGN §6), so whoever knew it never meets someone else under it. The retired list
    outlives the purge of the archived row."""
    table, live, gone = _HANDLES[kind]
    if conn.execute(f"SELECT 1 FROM {table} WHERE handle = ? AND {live}", (handle,)).fetchone():
        raise RoomsError(ErrorCode.CONFLICT, f"{kind} {handle!r} already exists")
    if conn.execute(
        f"SELECT 1 FROM {table} WHERE handle = ? UNION SELECT 1 FROM retired_handles WHERE kind = ? AND handle = ?",
        (handle, kind, handle),
    ).fetchone():
        raise RoomsError(
            ErrorCode.CONFLICT,
            f"{kind} handle {handle!r} belonged to {gone} and is never reused; choose another handle",
        )


def agent_info(agent: AgentRow) -> AgentInfo:
    return AgentInfo(
        agent_id=agent.agent_id,
        handle=agent.handle,
        owner=agent.owner_handle,
        tool=agent.tool.value,
        scopes=[s.value for s in Scope if s in agent.scopes],
        workdir=agent.workdir,
        sandbox=agent.sandbox,
        created_at=agent.created_at,
    )


def _env_names(conn: sqlite3.Connection, agent: AgentRow) -> AgentEnvList:
    names = [
        r[0] for r in conn.execute("SELECT name FROM agent_env WHERE agent_id = ? ORDER BY name", (agent.agent_id,))
    ]
    return AgentEnvList(agent=agent.handle, names=names)


class Accounts:
    def __init__(self, store: Store, issuer: PassportIssuer, limits: Limits, vault: Vault) -> None:
        self._store = store
        self._issuer = issuer
        self._limits = limits
        self._vault = vault

    # Variables an owner gives one agent's woken CLI: sealed at rest, names only ever shown.

    async def set_env(self, operator: Actor, agent_ref: str, name: str, value: str) -> AgentEnvList:
        def run(conn: sqlite3.Connection) -> AgentEnvList:
            agent = queries.agent(conn, agent_ref)
            try:
                check_extra(name, value, agent.tool)
            except ValueError as e:
                raise invalid("name", str(e)) from None
            try:
                check_new(agent_ref, name, value)
            except ValueError as e:
                raise invalid("value", str(e)) from None
            sealed = self._vault.seal(AGENT_ENV, f"{agent.agent_id}/{name}", value)
            conn.execute(
                "INSERT INTO agent_env (agent_id, name, sealed, set_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (agent_id, name) DO UPDATE SET sealed = excluded.sealed, set_at = excluded.set_at",
                (agent.agent_id, name, sealed, now_utc()),
            )
            audit.append(conn, operator, "agent.env.set", target=agent.agent_id, detail={"name": name})
            return _env_names(conn, agent)

        return await self._store.write(run)

    async def unset_env(self, operator: Actor, agent_ref: str, name: str) -> AgentEnvList:
        def run(conn: sqlite3.Connection) -> AgentEnvList:
            agent = queries.agent(conn, agent_ref)
            gone = conn.execute(
                "DELETE FROM agent_env WHERE agent_id = ? AND name = ?", (agent.agent_id, name)
            ).rowcount
            if not gone:
                raise not_found("variable for this agent")
            audit.append(conn, operator, "agent.env.unset", target=agent.agent_id, detail={"name": name})
            return _env_names(conn, agent)

        return await self._store.write(run)

    async def env_names(self, agent_ref: str) -> AgentEnvList:
        return await self._store.read(lambda conn: _env_names(conn, queries.agent(conn, agent_ref)))

    async def env_for_run(self, agent_id: str) -> dict[str, str]:
        """The agent's variables, opened for one spawn. Raises HomeError (no master key) or VaultError
        (a value that does not open): the run then fails, it never starts without or with wrong values."""
        rows = await self._store.read(
            lambda c: c.execute("SELECT name, sealed FROM agent_env WHERE agent_id = ?", (agent_id,)).fetchall()
        )
        return {r["name"]: self._vault.open(AGENT_ENV, f"{agent_id}/{r['name']}", r["sealed"]) for r in rows}

    async def add_owner(self, operator: Actor, handle: str, *, local: bool = False) -> OwnerInfo:
        """A new owner. `local`: their agents are spawned by this hub's own supervisor (DESIGN §5)."""
        check_handle(handle)

        def run(conn: sqlite3.Connection) -> OwnerInfo:
            _require_new_handle(conn, "owner", handle)
            owner_id = new_id("own")
            conn.execute(
                "INSERT INTO owners (owner_id, handle, created_at, local) VALUES (?, ?, ?, ?)",
                (owner_id, handle, now_utc(), int(local)),
            )
            audit.append(conn, operator, "owner.add", target=owner_id, detail={"local": local})
            return _owner_info(queries.owner(conn, owner_id))

        return await self._store.write(run)

    async def list_owners(self) -> OwnerList:
        sql = "SELECT * FROM owners WHERE removed_at IS NULL ORDER BY handle"
        return await self._store.read(
            lambda c: OwnerList(owners=[_owner_info(OwnerRow.from_row(r)) for r in c.execute(sql)])
        )

    async def set_owner_local(self, operator: Actor, handle: str, local: bool) -> OwnerInfo:
        """Mark whether this hub spawns the owner's agents (DESIGN §5, an operator action). Their waiting
        wakes move with the mark in the same transaction: to the hub's queue, or to wait for a listener."""

        def run(conn: sqlite3.Connection) -> OwnerInfo:
            owner = queries.owner(conn, handle)
            conn.execute("UPDATE owners SET local = ? WHERE owner_id = ?", (int(local), owner.owner_id))
            moved = runs.rehome_waiting_wakes(conn, owner.owner_id, local=local)
            audit.append(conn, operator, "owner.set", target=owner.owner_id, detail={"local": local, "wakes": moved})
            return _owner_info(queries.owner(conn, owner.owner_id))

        return await self._store.write(run, notify=True)

    async def verify_owner(self, operator: Actor, handle: str, method: str) -> OwnerInfo:
        def run(conn: sqlite3.Connection) -> OwnerInfo:
            owner = queries.owner(conn, handle)
            conn.execute(
                "UPDATE owners SET verified_at = ?, verified_method = ?, verified_by = ? WHERE owner_id = ?",
                (now_utc(), method, operator.id, owner.owner_id),
            )
            audit.append(conn, operator, "owner.verify", target=owner.owner_id, detail={"method": method})
            return _owner_info(queries.owner(conn, owner.owner_id))

        return await self._store.write(run)

    async def unverify_owner(self, operator: Actor, handle: str) -> OwnerInfo:
        """Withdraw a verification: from the next call on, cross-owner work with this owner is refused
        with IDENTITY_UNVERIFIED, grants or not (DESIGN §4)."""

        def run(conn: sqlite3.Connection) -> OwnerInfo:
            owner = queries.owner(conn, handle)
            if owner.verified_at is not None:
                conn.execute(
                    "UPDATE owners SET verified_at = NULL, verified_method = NULL, verified_by = NULL"
                    " WHERE owner_id = ?",
                    (owner.owner_id,),
                )
                audit.append(conn, operator, "owner.unverify", target=owner.owner_id)
            return _owner_info(queries.owner(conn, owner.owner_id))

        return await self._store.write(run)

    async def add_agent(
        self,
        operator: Actor,
        handle: str,
        owner_ref: str,
        tool: AgentTool,
        scopes: frozenset[Scope],
        workdir: str | None,
    ) -> AgentInfo:
        check_handle(handle)
        if workdir is not None:
            workdir = checked_workdir(workdir, self._store.path.parent)

        def run(conn: sqlite3.Connection) -> AgentInfo:
            owner = queries.owner(conn, owner_ref)
            _require_new_handle(conn, "agent", handle)
            agent_id = new_id("agt")
            conn.execute(
                "INSERT INTO agents (agent_id, handle, owner_id, tool, scopes, workdir, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (agent_id, handle, owner.owner_id, tool.value, format_scopes(scopes), workdir, now_utc()),
            )
            audit.append(
                conn,
                operator,
                "agent.add",
                target=agent_id,
                detail={"owner_id": owner.owner_id, "tool": tool.value, "scopes": format_scopes(scopes)},
            )
            return agent_info(queries.agent(conn, agent_id))

        return await self._store.write(run)

    async def set_agent(
        self,
        operator: Actor,
        agent_ref: str,
        *,
        workdir: str | None = None,
        tool: AgentTool | None = None,
        sandbox: bool | None = None,
    ) -> AgentInfo:
        """Change where the agent's woken runs work, which CLI it is, or whether they run sandboxed; what is
        None stays. One audit row says what changed (a workdir only that it did: the audit log keeps no paths)."""
        if workdir is not None:
            workdir = checked_workdir(workdir, self._store.path.parent)

        def run(conn: sqlite3.Connection) -> AgentInfo:
            agent = queries.agent(conn, agent_ref)
            changes = {
                name: value
                for name, value in (
                    ("workdir", workdir and "changed"),
                    ("tool", tool and tool.value),
                    ("sandbox", sandbox),
                )
                if value is not None
            }
            if not changes:
                raise invalid("changes", "say what to change: --workdir DIR, --tool TOOL or --sandbox on|off")
            conn.execute(
                "UPDATE agents SET workdir = coalesce(?, workdir), tool = coalesce(?, tool),"
                " sandbox = coalesce(?, sandbox) WHERE agent_id = ?",
                (workdir, tool and tool.value, None if sandbox is None else int(sandbox), agent.agent_id),
            )
            audit.append(conn, operator, "agent.set", target=agent.agent_id, detail=changes)
            return agent_info(queries.agent(conn, agent.agent_id))

        return await self._store.write(run)

    async def list_agents(self) -> AgentList:
        return await self._store.read(lambda c: AgentList(agents=[agent_info(a) for a in queries.active_agents(c)]))

    async def set_scopes(self, operator: Actor, agent_ref: str, scopes: frozenset[Scope]) -> AgentInfo:
        def run(conn: sqlite3.Connection) -> AgentInfo:
            agent = queries.agent(conn, agent_ref)
            conn.execute("UPDATE agents SET scopes = ? WHERE agent_id = ?", (format_scopes(scopes), agent.agent_id))
            audit.append(
                conn,
                operator,
                "agent.scopes",
                target=agent.agent_id,
                detail={"from": format_scopes(agent.scopes), "to": format_scopes(scopes)},
            )
            return agent_info(queries.agent(conn, agent.agent_id))

        return await self._store.write(run)

    async def issue_token(self, operator: Actor, agent_ref: str, ttl: timedelta) -> IssuedToken:
        """A new passport and the one bearer token bound to it. The token is returned once, never stored."""
        return await self._mint(operator, agent_ref, ttl, run_id=None)

    async def issue_run_token(
        self, actor: Actor, agent_ref: str, run_id: str, ttl: timedelta, *, holder: str | None, lease: int
    ) -> IssuedToken:
        """A token for one woken run: it holds the agent's scopes but `consent` and `manage`, and the
        supervisor revokes it when the run ends (DESIGN §2). Minted only while the claim (`holder`,
        `lease`) still holds the run and no stop was asked for (policy.run_token_refusal)."""
        return await self._mint(actor, agent_ref, ttl, run_id=run_id, held_by=(holder, lease))

    async def _mint(
        self,
        actor: Actor,
        agent_ref: str,
        ttl: timedelta,
        *,
        run_id: str | None,
        held_by: tuple[str | None, int] | None = None,
    ) -> IssuedToken:
        longest = self._limits.token_ttl_max_s
        if not timedelta(0) < ttl <= timedelta(seconds=longest):
            raise invalid("ttl", f"must be positive and at most {longest // 86400} days")
        token = new_token(CredentialKind.AGENT if run_id is None else CredentialKind.RUN)

        def run(conn: sqlite3.Connection) -> IssuedToken:
            agent = queries.agent(conn, agent_ref)
            if run_id is not None and held_by is not None:
                refusal = policy.run_token_refusal(queries.run_hold(conn, run_id), *held_by)
                if refusal is not None:
                    raise RoomsError(ErrorCode.CONFLICT, f"no token for run {run_id}: {refusal}")
            now = datetime.now(UTC)
            claims = record_passport(conn, self._issuer, agent, ttl, now)
            issued, expires = iso(now), iso(claims.exp)
            token_id = new_id("tok")
            conn.execute(
                "INSERT INTO tokens (token_id, token_hash, agent_id, jti, run_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, secret_hash(token), agent.agent_id, claims.jti, run_id, issued, expires),
            )
            detail = {"token_id": token_id} if run_id is None else {"token_id": token_id, "run_id": run_id}
            audit.append(conn, actor, "token.issue", target=agent.agent_id, detail=detail)
            return IssuedToken(token=token, token_id=token_id, agent=agent.handle, expires_at=expires)

        return await self._store.write(run)

    async def list_tokens(self, agent_ref: str | None) -> TokenList:
        def run(conn: sqlite3.Connection) -> TokenList:
            sql = (
                "SELECT t.token_id, t.created_at, t.expires_at, t.revoked_at, a.handle FROM tokens t"
                " JOIN agents a ON a.agent_id = t.agent_id WHERE t.run_id IS NULL AND a.status = 'active'"
                # An OAuth family mints an access token an hour: it is listed by its newest one.
                " AND (t.grant_id IS NULL OR t.token_id = (SELECT n.token_id FROM tokens n"
                " WHERE n.grant_id = t.grant_id ORDER BY n.created_at DESC LIMIT 1))"
            )
            args: tuple[str, ...] = ()
            if agent_ref is not None:
                sql += " AND t.agent_id = ?"
                args = (queries.agent(conn, agent_ref).agent_id,)
            now = now_utc()
            return TokenList(
                tokens=[
                    TokenInfo(
                        token_id=r["token_id"],
                        agent=r["handle"],
                        created_at=r["created_at"],
                        expires_at=r["expires_at"],
                        status="revoked" if r["revoked_at"] else "expired" if r["expires_at"] <= now else "active",
                    )
                    for r in conn.execute(sql + " ORDER BY t.created_at", args)
                ]
            )

        return await self._store.read(run)

    async def token_status(self, token: str) -> TokenInfo | None:
        """The standing of the agent token whose secret this is (a token file's), None if the hub never
        issued it: a read for `connect --check` and `doctor`, which judge a client's token without using it."""

        def run(conn: sqlite3.Connection) -> TokenInfo | None:
            row = conn.execute(
                "SELECT t.token_id, t.created_at, t.expires_at, t.revoked_at, a.handle, a.status FROM tokens t"
                " JOIN agents a ON a.agent_id = t.agent_id WHERE t.token_hash = ? AND t.run_id IS NULL",
                (secret_hash(token),),
            ).fetchone()
            if row is None:
                return None
            dead = row["revoked_at"] or row["status"] != "active"
            return TokenInfo(
                token_id=row["token_id"],
                agent=row["handle"],
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                status="revoked" if dead else "expired" if row["expires_at"] <= now_utc() else "active",
            )

        return await self._store.read(run)

    async def revoke_secret(self, operator: Actor, token: str) -> None:
        """Revoke the token whose secret this is, if the hub knows it (a token file being replaced)."""
        row = await self._store.read(
            lambda c: c.execute("SELECT token_id FROM tokens WHERE token_hash = ?", (secret_hash(token),)).fetchone()
        )
        if row is not None:
            await self.revoke_token(operator, row["token_id"])

    async def revoke_token(self, operator: Actor, token_id: str) -> TokenInfo:
        def run(conn: sqlite3.Connection) -> TokenInfo:
            row = conn.execute(
                "SELECT t.*, a.handle FROM tokens t JOIN agents a ON a.agent_id = t.agent_id WHERE t.token_id = ?",
                (token_id,),
            ).fetchone()
            if row is None:
                raise not_found("token", token_id)
            if row["revoked_at"] is None:
                now = now_utc()
                conn.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ?", (now, token_id))
                # A revocation row beside the audit row, in the same transaction (DESIGN §6, invariant 48).
                revocation = record_revocation(conn, "token", token_id, "token_revoke", now)
                detail = {"token_id": token_id, "revocation_id": revocation}
                audit.append(conn, operator, "token.revoke", target=row["agent_id"], detail=detail)
                if row["grant_id"] is not None:
                    # An OAuth access token's family goes with it, or its refresh token would mint the next.
                    from agent_rooms_mcp.services.oauth import revoke_grant  # oauth.py imports this module

                    revoke_grant(conn, row["grant_id"], now, operator, "token_revoke")
            return TokenInfo(
                token_id=token_id,
                agent=row["handle"],
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                status="revoked",
            )

        return await self._store.write(run)


def record_passport(
    conn: sqlite3.Connection, issuer: PassportIssuer, agent: AgentRow, ttl: timedelta, now: datetime
) -> Claims:
    """Issue `agent`'s passport at its current epoch and record it, in the caller's transaction: every credential
    (a bearer or run token, an OAuth grant) stands on one, and `authenticate()` finds it by its jti."""
    passport, claims = issuer.issue(
        agent_id=agent.agent_id,
        owner_id=agent.owner_id,
        tool=agent.tool,
        epoch=agent.cred_epoch,
        ttl=ttl,
        now=now,
    )
    conn.execute(
        "INSERT INTO passports (jti, agent_id, passport, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (claims.jti, agent.agent_id, passport, iso(now), iso(claims.exp)),
    )
    return claims


def record_revocation(conn: sqlite3.Connection, kind: str, subject_id: str, cause: str, now: str) -> str:
    """One row in `revocations` for a token, an agent's every credential, a room's run tokens or an owner,
    written in the revoking transaction (DESIGN §6); its id goes into the audit row beside it."""
    revocation_id = new_id("rev")
    conn.execute(
        "INSERT INTO revocations (revocation_id, kind, subject_id, cause, created_at) VALUES (?, ?, ?, ?, ?)",
        (revocation_id, kind, subject_id, cause, now),
    )
    return revocation_id
