"""Owner actions (DESIGN §2), each once: a named function (hub, who, args) -> result model.

The CLI on the hub's machine runs one in-process as the operator; the CLI on an enrolled device sends its
name and arguments to the owner API, which runs the same function as that device's owner. Each calls the
same service with the same arguments and writes the same audit row; only the row's actor and `via` differ
(and the operator acting for an owner who is not local says for whom: `on_behalf_of`, DESIGN §2).
An owner on a device acts only on their own things: each function resolves what it is given and asks
`policy` before the service writes. What it resolves never changes owner (an agent's, a token's), so the
check and the write may sit in two transactions; whether an owner is in a room is re-checked by the service.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.content import UNENCODABLE, unencodable_field
from agent_rooms_mcp.errors import RoomsError, invalid, not_found
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.ids import OwnerId
from agent_rooms_mcp.models import (
    AgentExport,
    AgentInfo,
    AgentList,
    AuditRows,
    ConsentModeSet,
    ConsoleLink,
    DecisionResult,
    DeviceInfo,
    DeviceList,
    GrantInfo,
    GrantList,
    Invite,
    InviteAccepted,
    IssuedToken,
    OwnerStatus,
    ProposalList,
    Receipt,
    RoomList,
    RoomSummary,
    RunInfo,
    RunList,
    StatusReport,
    StopResult,
    TokenList,
    TokenRevoked,
)
from agent_rooms_mcp.principals import AgentTool, Human, Scope, parse_scopes
from agent_rooms_mcp.services import stopping
from agent_rooms_mcp.settings import INT_MAX
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import guarded_writes

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class OwnerAction(Generic[A, R]):
    name: str
    args: type[A]
    result: type[R]
    fn: Callable[[Hub, Human, A], Awaitable[R]]


ACTIONS: dict[str, OwnerAction[Any, Any]] = {}


def _action(
    name: str, args: type[A], result: type[R]
) -> Callable[[Callable[[Hub, Human, A], Awaitable[R]]], Callable[[Hub, Human, A], Awaitable[R]]]:
    def register(fn: Callable[[Hub, Human, A], Awaitable[R]]) -> Callable[[Hub, Human, A], Awaitable[R]]:
        ACTIONS[name] = OwnerAction(name, args, result, fn)
        return fn

    return register


def lookup(name: str) -> OwnerAction[Any, Any]:
    """The action called `name`; an operator action is refused by name, anything else is NOT_FOUND."""
    policy.require_not_operator_action(name)
    found = ACTIONS.get(name)
    if found is None:
        raise not_found("owner action")
    return found


def parse_args(action: OwnerAction[A, Any], raw: object) -> A:
    unencodable = unencodable_field(raw)
    if unencodable is not None:  # as for a tool's arguments (gate.py): never as far as SQLite
        raise invalid(unencodable, UNENCODABLE)
    try:
        return action.args.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "arguments"
        raise invalid(field, first["msg"]) from None


async def perform(hub: Hub, who: Human, name: str, raw: object) -> BaseModel:
    """Run one owner action on its arguments as JSON would carry them; a refusal is audited in a transaction
    of its own after the refused one rolled back, as every refused human action is (DESIGN §6)."""
    try:
        action = lookup(name)
        args = parse_args(action, raw)
        if who.device_id is None:  # the operator, on the hub's own machine
            result: BaseModel = await action.fn(hub, who, args)
        else:
            # Each write re-checks the device in its own transaction: the action's checks and its writes
            # come after the request authenticated, and a revoke in between must stop them.
            with guarded_writes(hub.devices.still_active(who.device_id)):
                result = await action.fn(hub, who, args)
        return result
    except RoomsError as e:
        # The name came off the wire: only a known action's name goes into the row's action; any other is kept
        # as the target, where the audit's own rule stores it only if it is id- or handle-shaped, else hashed.
        known = name in ACTIONS or name in policy.OPERATOR_ACTIONS
        action_name = "cli." + (name if known else "unknown")
        await audit.record_denial(hub.store, who.actor, action_name, e.audit_reason, target=None if known else name)
        raise


# What each action resolves before its service writes.


async def _self(hub: Hub, who: Human, owner_ref: str) -> Human:
    """`who`, acting as the owner they name: a device may name only its own, and the operator acting for an
    owner who is not local acts on their behalf (policy.acting_for)."""
    row = await hub.store.read(lambda c: queries.owner(c, owner_ref))
    policy.require_self(who, row.owner_id, row.handle)
    return policy.acting_for(who, row.owner_id, row.local)


async def _own_agent(hub: Hub, who: Human, agent_ref: str) -> Human:
    """`who`, acting on an agent of their own (or, the operator, on anyone's)."""

    def read(c: sqlite3.Connection) -> tuple[OwnerId, bool]:
        owner_id = queries.agent(c, agent_ref).owner_id
        return owner_id, bool(queries.owner(c, owner_id).local)

    owner_id, local = await hub.store.read(read)
    policy.require_own(who, owner_id, "agent", agent_ref)
    return policy.acting_for(who, owner_id, local)


async def acting_on_agent(hub: Hub, who: Human, agent_ref: str) -> Human:
    """`who` acting on agent `agent_ref`, as its audit rows must say, for a command that is no action of this
    module (`connect` minting the agent's token file); NOT_FOUND for an agent that is not there."""
    return await _own_agent(hub, who, agent_ref)


async def _self_with_agents(hub: Hub, who: Human, owner_ref: str, agents: list[str]) -> Human:
    """`who` acts as `owner_ref` with these agents of theirs: another owner's agent looks missing, exactly as
    one that does not exist (invariant 82), before the service's own rule could name it as someone else's."""
    acting = await _self(hub, who, owner_ref)
    for agent in agents:
        await _own_agent(hub, who, agent)
    return acting


async def _own_token(hub: Hub, who: Human, token_id: str) -> Human:
    def read(c: sqlite3.Connection) -> tuple[OwnerId, bool]:
        row = c.execute(
            "SELECT a.owner_id, o.local FROM tokens t JOIN agents a ON a.agent_id = t.agent_id"
            " JOIN owners o ON o.owner_id = a.owner_id"
            " WHERE t.token_id = ? AND t.run_id IS NULL AND a.status = 'active'",
            (token_id,),
        ).fetchone()
        if row is None:
            raise not_found("token", token_id)
        return OwnerId(row["owner_id"]), bool(row["local"])

    owner_id, local = await hub.store.read(read)
    policy.require_own(who, owner_id, "token", token_id)
    return policy.acting_for(who, owner_id, local)


async def _own_room(hub: Hub, who: Human, room_ref: str) -> None:
    """A room `who`'s owner is in; any other room looks missing."""
    if who.owner_id is None:
        return
    owner_id = who.owner_id

    def read(c: sqlite3.Connection) -> None:
        room = queries.room(c, room_ref)
        if queries.owner_joined(c, room.room_id, owner_id) is None:
            raise not_found("room", room_ref)

    await hub.store.read(read)


async def _handle(hub: Hub, owner_id: str) -> str:
    return str((await hub.store.read(lambda c: queries.owner(c, owner_id))).handle)


# Agents.


class AgentAdd(Args):
    handle: str
    owner: str
    tool: AgentTool
    scopes: str
    workdir: str | None = None


@_action("agent.add", AgentAdd, AgentInfo)
async def agent_add(hub: Hub, who: Human, a: AgentAdd) -> AgentInfo:
    who = await _self(hub, who, a.owner)
    if a.workdir is not None and not who.is_operator:
        # Where a hub-spawned run works is the operator's to say (DESIGN §5); a listener decides its own.
        policy.require_operator("--workdir")
    return await hub.accounts.add_agent(who.actor, a.handle, a.owner, a.tool, _scopes(a.scopes), a.workdir)


class AgentSet(Args):
    handle: str
    workdir: str | None = None
    tool: AgentTool | None = None
    sandbox: bool | None = None


@_action("agent.set", AgentSet, AgentInfo)
async def agent_set(hub: Hub, who: Human, a: AgentSet) -> AgentInfo:
    who = await _own_agent(hub, who, a.handle)
    if not who.is_operator:
        # A hub-spawned run's workdir and sandbox are the operator's to set (DESIGN §5); a listener's owner
        # sets them in listen.toml on their own machine.
        if a.workdir is not None:
            policy.require_operator("--workdir")
        if a.sandbox is not None:
            policy.require_operator("--sandbox")
    return await hub.accounts.set_agent(who.actor, a.handle, workdir=a.workdir, tool=a.tool, sandbox=a.sandbox)


def _scopes(text: str) -> frozenset[Scope]:
    try:
        return parse_scopes(text)
    except ValueError as e:
        raise invalid("scopes", str(e)) from None


class AgentScopes(Args):
    handle: str
    scopes: str


@_action("agent.scopes", AgentScopes, AgentInfo)
async def agent_scopes(hub: Hub, who: Human, a: AgentScopes) -> AgentInfo:
    who = await _own_agent(hub, who, a.handle)
    return await hub.accounts.set_scopes(who.actor, a.handle, _scopes(a.scopes))


class NoArgs(Args):
    pass


@_action("agent.list", NoArgs, AgentList)
async def agent_list(hub: Hub, who: Human, a: NoArgs) -> AgentList:
    agents = await hub.accounts.list_agents()
    if who.owner_id is None:
        return agents
    mine = await _handle(hub, who.owner_id)
    return AgentList(agents=[x for x in agents.agents if x.owner == mine])


class AgentStop(Args):
    handle: str
    run_id: str | None = None
    wait: bool = True


@_action("agent.stop", AgentStop, StopResult)
async def agent_stop(hub: Hub, who: Human, a: AgentStop) -> StopResult:
    who = await _own_agent(hub, who, a.handle)
    return await stopping.stop_and_wait(
        hub.runs, hub.store, hub.settings.wake, who.actor, a.handle, a.run_id, wait=a.wait
    )


class AgentDelete(Args):
    handle: str


@_action("agent.delete", AgentDelete, Receipt)
async def agent_delete(hub: Hub, who: Human, a: AgentDelete) -> Receipt:
    """Delete an agent of the owner's own (DESIGN §6); another owner's looks missing (invariant 82)."""
    who = await _own_agent(hub, who, a.handle)
    return await hub.containment.delete_agent(who.actor, a.handle)


class AgentExportArgs(Args):
    handle: str


@_action("agent.export", AgentExportArgs, AgentExport)
async def agent_export(hub: Hub, who: Human, a: AgentExportArgs) -> AgentExport:
    """An agent's record for its owner, a deleted one too: the only lookup that finds an archived agent, and
    only for its own owner (or the operator); anyone else gets NOT_FOUND, as for a handle never used."""

    def read(c: sqlite3.Connection) -> tuple[str, OwnerId]:
        row = c.execute(
            "SELECT agent_id, owner_id FROM agents WHERE agent_id = ? OR handle = ?", (a.handle, a.handle)
        ).fetchone()
        if row is None:
            raise not_found("agent", a.handle)
        return str(row["agent_id"]), OwnerId(row["owner_id"])

    agent_id, owner_id = await hub.store.read(read)
    policy.require_own(who, owner_id, "agent", a.handle)
    return await hub.containment.export_agent(agent_id)


# Tokens.


class TokenIssue(Args):
    agent: str
    ttl_s: int = Field(gt=0, le=INT_MAX)


@_action("token.issue", TokenIssue, IssuedToken)
async def token_issue(hub: Hub, who: Human, a: TokenIssue) -> IssuedToken:
    who = await _own_agent(hub, who, a.agent)
    # Clamped just past the longest lifetime before it becomes a timedelta (which overflows near 2^46 s): the
    # service then refuses it with the limit in its message, as for any other lifetime too long.
    ttl_s = min(a.ttl_s, hub.settings.limits.token_ttl_max_s + 1)
    return await hub.accounts.issue_token(who.actor, a.agent, timedelta(seconds=ttl_s))


class TokenListArgs(Args):
    agent: str | None = None


@_action("token.list", TokenListArgs, TokenList)
async def token_list(hub: Hub, who: Human, a: TokenListArgs) -> TokenList:
    if a.agent is not None:
        await _own_agent(hub, who, a.agent)
    tokens = await hub.accounts.list_tokens(a.agent)
    if who.owner_id is None or a.agent is not None:
        return tokens
    mine = {x.handle for x in (await agent_list(hub, who, NoArgs())).agents}
    return TokenList(tokens=[t for t in tokens.tokens if t.agent in mine])


class TokenRevoke(Args):
    token_id: str


@_action("token.revoke", TokenRevoke, TokenRevoked)
async def token_revoke(hub: Hub, who: Human, a: TokenRevoke) -> TokenRevoked:
    who = await _own_token(hub, who, a.token_id)
    return await hub.containment.revoke_token(hub.accounts, who.actor, a.token_id)


# Grants: an owner grants and revokes from themselves only.


class GrantChange(Args):
    giver: str
    taker: str


@_action("grant.add", GrantChange, GrantInfo)
async def grant_add(hub: Hub, who: Human, a: GrantChange) -> GrantInfo:
    who = await _self(hub, who, a.giver)
    return await hub.grants.add(who.actor, a.giver, a.taker)


@_action("grant.revoke", GrantChange, GrantInfo)
async def grant_revoke(hub: Hub, who: Human, a: GrantChange) -> GrantInfo:
    who = await _self(hub, who, a.giver)
    return await hub.grants.revoke(who.actor, a.giver, a.taker)


class GrantListArgs(Args):
    owner: str | None = None
    include_revoked: bool = False


@_action("grant.list", GrantListArgs, GrantList)
async def grant_list(hub: Hub, who: Human, a: GrantListArgs) -> GrantList:
    owner = a.owner
    if who.owner_id is not None:  # a device sees the grants given by or to its own owner
        owner = await _handle(hub, who.owner_id) if owner is None else owner
        await _self(hub, who, owner)
    return await hub.grants.list_grants(owner, include_revoked=a.include_revoked)


# Consent: decisions and modes for the owner's own agents.


class ConsentModeArgs(Args):
    room: str
    mode: str
    owner: str
    collaborator: str | None = None


@_action("consent.mode", ConsentModeArgs, ConsentModeSet)
async def consent_mode(hub: Hub, who: Human, a: ConsentModeArgs) -> ConsentModeSet:
    who = await _self(hub, who, a.owner)
    return await hub.consent.set_mode_as_owner(who.actor, a.room, a.owner, a.mode, a.collaborator)


class ConsentListArgs(Args):
    owner: str
    room: str | None = None
    after: int = Field(default=0, ge=0, le=INT_MAX)


@_action("consent.list", ConsentListArgs, ProposalList)
async def consent_list(hub: Hub, who: Human, a: ConsentListArgs) -> ProposalList:
    who = await _self(hub, who, a.owner)
    return await hub.consent.pending_for_owner(a.owner, a.room, a.after, hub.settings.limits.page_max)


class ConsentDecide(Args):
    ref: str
    owner: str
    reason: str | None = None
    # The payload hash the console's page showed: a decision on anything else is CONFLICT (DESIGN §9.2).
    payload_sha256: str | None = None


@_action("consent.accept", ConsentDecide, DecisionResult)
async def consent_accept(hub: Hub, who: Human, a: ConsentDecide) -> DecisionResult:
    who = await _self(hub, who, a.owner)
    return await hub.consent.decide_as_owner(
        who.actor, a.owner, a.ref, accept=True, reason=None, shown=a.payload_sha256
    )


@_action("consent.reject", ConsentDecide, DecisionResult)
async def consent_reject(hub: Hub, who: Human, a: ConsentDecide) -> DecisionResult:
    who = await _self(hub, who, a.owner)
    return await hub.consent.decide_as_owner(
        who.actor, a.owner, a.ref, accept=False, reason=a.reason, shown=a.payload_sha256
    )


# Rooms and invites.


class RoomCreate(Args):
    name: str
    owner: str
    agents: list[str] = []


@_action("room.create", RoomCreate, RoomSummary)
async def room_create(hub: Hub, who: Human, a: RoomCreate) -> RoomSummary:
    who = await _self_with_agents(hub, who, a.owner, a.agents)
    return await hub.rooms.create(who.actor, a.name, a.owner, list(a.agents))


class RoomAdd(Args):
    room: str
    agent: str


@_action("room.add", RoomAdd, RoomSummary)
async def room_add(hub: Hub, who: Human, a: RoomAdd) -> RoomSummary:
    who = await _own_agent(hub, who, a.agent)
    await _own_room(hub, who, a.room)
    return await hub.rooms.add_agent(who.actor, a.room, a.agent)


@_action("room.list", NoArgs, RoomList)
async def room_list(hub: Hub, who: Human, a: NoArgs) -> RoomList:
    rooms = await hub.rooms.list_all()
    if who.owner_id is None:
        return rooms
    owner_id = who.owner_id
    joined = await hub.store.read(
        lambda c: {r[0] for r in c.execute("SELECT room_id FROM room_owners WHERE owner_id = ?", (owner_id,))}
    )
    return RoomList(rooms=[r for r in rooms.rooms if r.room_id in joined], next_after=0, has_more=False)


class InviteCreate(Args):
    room: str
    by: str
    ttl_s: int


@_action("invite.create", InviteCreate, Invite)
async def invite_create(hub: Hub, who: Human, a: InviteCreate) -> Invite:
    who = await _self(hub, who, a.by)
    return await hub.invites.create_as_owner(who.actor, a.room, a.by, a.ttl_s)


class InviteConfirm(Args):
    invite_id: str
    owner: str | None = None


@_action("invite.confirm", InviteConfirm, Invite)
async def invite_confirm(hub: Hub, who: Human, a: InviteConfirm) -> Invite:
    owner = a.owner
    if who.owner_id is not None:  # the service then confirms only an invite of this owner's agents
        owner = await _handle(hub, who.owner_id) if owner is None else owner
    if owner is not None:
        who = await _self(hub, who, owner)
    return await hub.invites.confirm(who.actor, a.invite_id, owner)


class InviteAccept(Args):
    code: str
    owner: str
    agents: list[str] = []


@_action("invite.accept", InviteAccept, InviteAccepted)
async def invite_accept(hub: Hub, who: Human, a: InviteAccept) -> InviteAccepted:
    who = await _self_with_agents(hub, who, a.owner, a.agents)
    return await hub.invites.accept(who.actor, a.code, a.owner, list(a.agents))


# The owner's own audit trail, and devices.


class AuditTail(Args):
    count: int = Field(default=20, ge=1, le=10_000)


@_action("audit.tail", AuditTail, AuditRows)
async def audit_tail(hub: Hub, who: Human, a: AuditTail) -> AuditRows:
    def read(c: sqlite3.Connection) -> AuditRows:
        rows = audit.tail(c, a.count, who.owner_id)
        named = {r[k] for r in rows for k in ("actor_id", "owner_id", "target") if isinstance(r[k], str)}
        named |= {r["detail"][audit.ON_BEHALF_OF] for r in rows if audit.ON_BEHALF_OF in r["detail"]}
        return AuditRows(rows=rows, names=queries.display_names(c, named, who.owner_id))

    return await hub.store.read(read)


@_action("device.list", NoArgs, DeviceList)
async def device_list(hub: Hub, who: Human, a: NoArgs) -> DeviceList:
    return await hub.devices.list_devices(who)


class DeviceRevoke(Args):
    device_id: str | None = None


@_action("device.revoke", DeviceRevoke, DeviceInfo)
async def device_revoke(hub: Hub, who: Human, a: DeviceRevoke) -> DeviceInfo:
    return await hub.devices.revoke(who, a.device_id)


# `status` (DESIGN §9.5): one screen per owner, each part read through the service that owns it.


class StatusArgs(Args):
    owner: str | None = None


@_action("status", StatusArgs, StatusReport)
async def status(hub: Hub, who: Human, a: StatusArgs) -> StatusReport:
    """Every owner for the operator (or the one named); on a device, its own owner only (policy.require_self)."""
    owners = (await hub.accounts.list_owners()).owners
    if a.owner is not None or who.owner_id is not None:
        ref = a.owner if a.owner is not None else await _handle(hub, who.owner_id or "")
        await _self(hub, who, ref)  # a device names only its own owner
        owners = [o for o in owners if ref in (o.handle, o.owner_id)]
    agents = (await hub.accounts.list_agents()).agents
    devices = (await hub.devices.list_devices(who)).devices
    limit = hub.settings.limits.page_max
    screens = []
    for o in owners:
        screens.append(
            OwnerStatus(
                owner=o,
                agents=[x for x in agents if x.owner == o.handle],
                runs=await hub.overview.live_runs(o.owner_id),
                consents_waiting_on_owner=(await hub.consent.pending_for_owner(o.handle, None, 0, limit)).proposals,
                consents_waiting_on_others=await hub.overview.outgoing_proposals(o.owner_id),
                grants=(await hub.grants.list_grants(o.handle, include_revoked=False)).grants,
                devices=[d for d in devices if d.owner == o.handle],
                listeners=await hub.overview.listeners(o.owner_id, hub.settings.wake.lease_s),
            )
        )
    return StatusReport(owners=screens)


# The console (DESIGN §9.2): a one-time login link, minted on the hub's machine or through a device.


class ConsoleLinkArgs(Args):
    owner: str
    # Where the owner's browser reaches the hub: the CLI's --url on the hub, the enrolled hub's URL on a device.
    base_url: str = Field(pattern=r"^https?://[^\s/?#]+/?$")


@_action("console.link", ConsoleLinkArgs, ConsoleLink)
async def console_link(hub: Hub, who: Human, a: ConsoleLinkArgs) -> ConsoleLink:
    """A login link for the owner `who` acts as; the operator minting one for an owner who is not local is
    audited as acting on that owner's behalf (policy.acting_for)."""
    who = await _self(hub, who, a.owner)
    return await hub.console.mint_link(who, a.owner, a.base_url)


# Runs (DESIGN §9.5 `run list`, `run log`): an owner sees their own agents' runs; another's look missing.


class RunListArgs(Args):
    owner: str | None = None
    after: int = Field(default=0, ge=0, le=INT_MAX)
    limit: int = Field(default=50, ge=1, le=200)


@_action("run.list", RunListArgs, RunList)
async def run_list(hub: Hub, who: Human, a: RunListArgs) -> RunList:
    """Runs newest first: a device's own owner's; the operator's, every owner's or those of `owner`."""
    owner_id = who.owner_id
    if a.owner is not None:
        row = await hub.store.read(lambda c: queries.owner(c, a.owner or ""))
        policy.require_self(who, row.owner_id, row.handle)
        owner_id = row.owner_id
    return await hub.runs.list_as_owner(owner_id, after=a.after, limit=min(a.limit, hub.settings.limits.page_max))


class RunGet(Args):
    run_id: str


@_action("run.get", RunGet, RunInfo)
async def run_get(hub: Hub, who: Human, a: RunGet) -> RunInfo:
    """One run's record: its state, and why it ended or never started (its outcome)."""
    owner_id = await hub.store.read(
        lambda c: (
            (row := c.execute("SELECT owner_id FROM runs WHERE run_id = ?", (a.run_id,)).fetchone())
            and OwnerId(row["owner_id"])
        )
    )
    if not owner_id:
        raise not_found("run", a.run_id)
    policy.require_own(who, owner_id, "run", a.run_id)
    return await hub.runs.get(a.run_id)
