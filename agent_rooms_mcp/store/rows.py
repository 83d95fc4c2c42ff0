"""Frozen row types the store loads and services hand to each other, in place of untyped `sqlite3.Row`s.

Each type names the columns its query selects and converts them once, where the row is read: ids become
their `NewType`s, stored words their enums, an agent's stored scopes a set. A service that receives one
cannot ask for a column the query never selected, and the type checker sees every field. Each has one
`from_row`, called where its query is: `store/queries.py` for facts many services share, the owning service
for its own table's (a device, a listener, an abandoned run). A row read only beside its query, by the
function that renders it, stays a `sqlite3.Row`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from agent_rooms_mcp.ids import AgentId, OwnerId, ProposalId, RoomId, RunId, TaskId
from agent_rooms_mcp.policy import ConsentMode, ConsentState, TaskStatus
from agent_rooms_mcp.principals import AgentTool, Scope, held_scopes
from agent_rooms_mcp.run_states import Trigger


@dataclass(frozen=True, slots=True)
class MemberAgent:
    """An active agent as the consent and wake services judge it: a room's member, a task's assignee, a
    mention's or a proposal's target."""

    agent_id: AgentId
    handle: str
    tool: AgentTool
    scopes: frozenset[Scope]  # the agent's own scopes (a member is never a run token: nothing is withheld)
    owner_id: OwnerId
    owner_handle: str

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> MemberAgent:
        """From a row holding the agent's columns and its owner's handle as `owner_handle`."""
        return cls(
            agent_id=AgentId(r["agent_id"]),
            handle=str(r["handle"]),
            tool=AgentTool(r["tool"]),
            scopes=held_scopes(r["scopes"], None),
            owner_id=OwnerId(r["owner_id"]),
            owner_handle=str(r["owner_handle"]),
        )


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An agent as the operator's and owners' actions read it (`queries.agent`): what it is, whose, where its
    woken runs work, and the credential epoch its next passport is issued at."""

    agent_id: AgentId
    handle: str
    owner_id: OwnerId
    owner_handle: str
    tool: AgentTool
    scopes: frozenset[Scope]  # as stored: a run token's narrowing is the authenticator's, not the row's
    workdir: str | None
    sandbox: bool
    cred_epoch: int
    created_at: str

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> AgentRow:
        """From a row holding the agent's columns and its owner's handle as `owner_handle`."""
        return cls(
            agent_id=AgentId(r["agent_id"]),
            handle=str(r["handle"]),
            owner_id=OwnerId(r["owner_id"]),
            owner_handle=str(r["owner_handle"]),
            tool=AgentTool(r["tool"]),
            scopes=held_scopes(r["scopes"], None),
            workdir=r["workdir"],
            sandbox=bool(r["sandbox"]),
            cred_epoch=int(r["cred_epoch"]),
            created_at=str(r["created_at"]),
        )

    def member(self) -> MemberAgent:
        """The same agent as the consent and wake services judge it."""
        return MemberAgent(self.agent_id, self.handle, self.tool, self.scopes, self.owner_id, self.owner_handle)


@dataclass(frozen=True, slots=True)
class ModeInForce:
    """An owner's consent mode in one room, as last set (DESIGN §4); no row means task_by_task."""

    mode: ConsentMode
    collaborator_id: OwnerId | None  # the one owner trust_collaborator trusts
    set_at: str  # trust_room trusts the owners who were in the room at this moment

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> ModeInForce:
        return cls(
            mode=ConsentMode(r["mode"]),
            collaborator_id=None if r["collaborator_id"] is None else OwnerId(r["collaborator_id"]),
            set_at=str(r["set_at"]),
        )


def load_causers(stored: str | None) -> frozenset[OwnerId]:
    """Every owner whose words a row carries, from its stored JSON list (DESIGN §4 "Causers")."""
    return frozenset(OwnerId(o) for o in json.loads(stored or "[]"))


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task on the board as the task and wake services judge it (the columns `act_on_task`, a handing-on
    and a wake's re-check read)."""

    task_id: TaskId
    room_id: RoomId
    title: str
    body: str
    creator_id: AgentId
    assignee_id: AgentId | None
    status: TaskStatus
    consent_state: ConsentState
    proposal_id: ProposalId | None  # the proposal it was last offered under, if another owner's words crossed
    causers: frozenset[OwnerId]  # every owner who ever set its title or body, and who handed it on

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> TaskRow:
        return cls(
            task_id=TaskId(r["task_id"]),
            room_id=RoomId(r["room_id"]),
            title=str(r["title"]),
            body=str(r["body"]),
            creator_id=AgentId(r["creator_id"]),
            assignee_id=None if r["assignee_id"] is None else AgentId(r["assignee_id"]),
            status=TaskStatus(r["status"]),
            consent_state=ConsentState(r["consent_state"]),
            proposal_id=None if r["proposal_id"] is None else ProposalId(r["proposal_id"]),
            causers=load_causers(r["causers"]),
        )


@dataclass(frozen=True, slots=True)
class WakeRow:
    """A wake (a row of `runs`) as its re-check reads it where it is claimed and while it runs: whose it is,
    where, what caused it and what was agreed to."""

    run_id: RunId
    agent_id: AgentId
    owner_id: OwnerId
    room_id: RoomId
    trigger: Trigger
    cause_id: str  # the message, task or proposal that caused it
    causers: frozenset[OwnerId]
    proposal_id: ProposalId | None  # the accepted proposal it runs, if another owner's words are in it
    payload_sha256: str | None  # a task wake: the hash of the words agreed to

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> WakeRow:
        return cls(
            run_id=RunId(r["run_id"]),
            agent_id=AgentId(r["agent_id"]),
            owner_id=OwnerId(r["owner_id"]),
            room_id=RoomId(r["room_id"]),
            trigger=Trigger(r["trigger"]),
            cause_id=str(r["cause_id"]),
            causers=load_causers(r["causers"]),
            proposal_id=None if r["proposal_id"] is None else ProposalId(r["proposal_id"]),
            payload_sha256=r["payload_sha256"],
        )


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A waiting wake as the wake book's claim reads it (`services/runs.RUNS_SELECT`): the wake its re-check
    judges, and what starting its agent's CLI needs."""

    wake: WakeRow
    handle: str
    tool: AgentTool
    workdir: str | None
    sandbox: bool
    room_name: str
    caused_by: AgentId
    constrained: bool  # another owner's words are in it: it runs constrained, and resumes only such a session
    depth: int
    resume: bool  # a follow-up after a rate limit: it continues the session, never replays the request

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> ClaimRow:
        return cls(
            wake=WakeRow.from_row(r),
            handle=str(r["handle"]),
            tool=AgentTool(r["tool"]),
            workdir=r["workdir"],
            sandbox=bool(r["sandbox"]),
            room_name=str(r["room_name"]),
            caused_by=AgentId(r["caused_by"]),
            constrained=bool(r["constrained"]),
            depth=int(r["depth"]),
            resume=bool(r["resume"]),
        )


@dataclass(frozen=True, slots=True)
class AbandonedRun:
    """A held run whose holder may be gone, as the wake book's recovery reads it (`runbook.ABANDONED_COLUMNS`):
    whether its CLI was ever spawned, where, and whether it was withdrawn meanwhile."""

    run_id: RunId
    agent_id: AgentId
    owner_id: OwnerId
    pid: int | None
    pid_start: int | None
    spawned_at: str | None
    lease_holder: str | None
    lease_host: str | None  # None: a lease written before leases named their host (on the hub's own machine)
    withdraw_reason: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> AbandonedRun:
        return cls(
            run_id=RunId(r["run_id"]),
            agent_id=AgentId(r["agent_id"]),
            owner_id=OwnerId(r["owner_id"]),
            pid=r["pid"],
            pid_start=r["pid_start"],
            spawned_at=r["spawned_at"],
            lease_holder=r["lease_holder"],
            lease_host=r["lease_host"],
            withdraw_reason=r["withdraw_reason"],
        )


@dataclass(frozen=True, slots=True)
class ListenerRow:
    """One listener process of a device (DESIGN §9.1), as its wake book is built from it."""

    holder: str
    device_id: str
    owner_id: OwnerId
    host: str
    max_running: int
    max_running_per_agent: int

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> ListenerRow:
        return cls(
            holder=str(r["holder"]),
            device_id=str(r["device_id"]),
            owner_id=OwnerId(r["owner_id"]),
            host=str(r["host"]),
            max_running=int(r["max_running"]),
            max_running_per_agent=int(r["max_running_per_agent"]),
        )


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """An owner's enrolled device (DESIGN §9.1), as its credential is judged and its listing shows it."""

    device_id: str
    owner_id: OwnerId
    owner_handle: str
    name: str
    created_at: str
    last_used_at: str  # recorded coarsely (`device_touch_s`): the idle expiry needs no more
    revoked_at: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> DeviceRow:
        """From a row holding the device's columns and its owner's handle as `owner_handle`."""
        return cls(
            device_id=str(r["device_id"]),
            owner_id=OwnerId(r["owner_id"]),
            owner_handle=str(r["owner_handle"]),
            name=str(r["name"]),
            created_at=str(r["created_at"]),
            last_used_at=str(r["last_used_at"]),
            revoked_at=r["revoked_at"],
        )


@dataclass(frozen=True, slots=True)
class RoomRow:
    """A room that is not quarantined, with its latest message's seq (0 before the first post)."""

    room_id: RoomId
    name: str
    created_at: str
    latest_seq: int

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> RoomRow:
        return cls(
            room_id=RoomId(r["room_id"]),
            name=str(r["name"]),
            created_at=str(r["created_at"]),
            latest_seq=int(r["latest_seq"]),
        )


@dataclass(frozen=True, slots=True)
class OwnerRow:
    """An owner who has not been removed."""

    owner_id: OwnerId
    handle: str
    created_at: str
    verified_at: str | None  # None: not identity-verified, and no grant may cross to or from them
    verified_method: str | None
    local: bool  # their agents' wakes run on the hub's own supervisor, not a listener of theirs

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OwnerRow:
        return cls(
            owner_id=OwnerId(r["owner_id"]),
            handle=str(r["handle"]),
            created_at=str(r["created_at"]),
            verified_at=r["verified_at"],
            verified_method=r["verified_method"],
            local=bool(r["local"]),
        )
