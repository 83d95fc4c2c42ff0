"""Decisions on proposals (DESIGN §4): the target's owner, or an agent holding `consent` for that owner,
accepts or rejects one, once; acceptance is bound to the payload reviewed and queues the wake it allows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.ids import AgentId, OwnerId
from agent_rooms_mcp.models import DecisionResult
from agent_rooms_mcp.policy import ConsentState, ProposalKind
from agent_rooms_mcp.principals import Scope, Viewer
from agent_rooms_mcp.run_states import Trigger
from agent_rooms_mcp.services import runs
from agent_rooms_mcp.services.proposals import PROPOSALS, ProposalRow
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store import queries


@dataclass(frozen=True, slots=True)
class Decider:
    """Who decides: an agent holding `consent` for its owner, or that owner at the CLI."""

    owner_id: OwnerId
    actor: Actor
    via: str  # agent | cli | device | console
    agent_id: AgentId | None  # the agent that decided, shown to the proposer beside the reason


def proposal_for(conn: sqlite3.Connection, ref: str, viewer: Viewer, *, accept: bool) -> ProposalRow:
    """A proposal by its id, or a task's current one by the task id. NOT_FOUND unless the viewer may see it
    (`policy.sees_proposal`): a stranger learns nothing, not even that it exists."""
    asked = ref  # what the caller named, for the CLI's NOT_FOUND: the same on every path below
    if ref.startswith("task_"):
        task = conn.execute(
            "SELECT room_id, proposal_id, assignee_owner_id FROM tasks WHERE task_id = ?", (ref,)
        ).fetchone()
        if task is None or not _sees(conn, viewer, task["assignee_owner_id"], task["room_id"]):
            raise not_found("task or proposal", asked)
        asks = conn.execute("SELECT count(*) FROM proposals WHERE task_id = ?", (ref,)).fetchone()[0]
        policy.decide_by_task_id(crosses=task["proposal_id"] is not None, proposals_for_task=asks, accept=accept)
        ref = task["proposal_id"]
    row = conn.execute(PROPOSALS + " WHERE p.proposal_id = ?", (ref,)).fetchone()
    if row is None or not _sees(conn, viewer, row["target_owner_id"], row["room_id"]):
        raise not_found("task or proposal", asked)
    return ProposalRow.of(row)


def _sees(conn: sqlite3.Connection, viewer: Viewer, target_owner_id: OwnerId | None, room_id: str) -> bool:
    """The facts `policy.sees_proposal` judges: is the viewer in the room? An agent sees a room it is in;
    an owner at the CLI (no agent) one they joined."""
    if not viewer.agent_id:
        in_room = queries.owner_joined(conn, room_id, viewer.owner_id) is not None
    else:
        in_room = bool(
            conn.execute(
                "SELECT 1 FROM room_agents WHERE room_id = ? AND agent_id = ?", (room_id, viewer.agent_id)
            ).fetchone()
        )
    return policy.sees_proposal(viewer.owner_id, target_owner_id or OwnerId(""), viewer_in_room=in_room)


def _present(conn: sqlite3.Connection, proposal: ProposalRow) -> bool:
    """Both agents still in the room, and the proposer still holding `task`."""
    members = {m.agent_id: m for m in queries.room_members(conn, proposal.room_id)}
    proposer = members.get(proposal.proposer_id)
    return proposer is not None and proposal.target_id in members and Scope.TASK in proposer.scopes


def decide(
    conn: sqlite3.Connection,
    caps: WakeSettings,
    decider: Decider,
    proposal: ProposalRow,
    accept: bool,
    reason: str | None,
) -> DecisionResult:
    target = queries.target_agent(conn, proposal.target_id)
    grant_ids = list(proposal.grant_ids)
    marks = ",".join("?" * len(grant_ids))
    revoked = conn.execute(
        f"SELECT count(*) FROM grants WHERE grant_id IN ({marks}) AND revoked_at IS NOT NULL", grant_ids
    ).fetchone()[0]
    state = policy.decide(
        policy.Decision(
            decider_owner_id=decider.owner_id,
            proposal_state=proposal.state,
            proposer_owner_id=proposal.proposer_owner_id,
            target_owner_id=proposal.target_owner_id,
            target_scopes=target.scopes,
            wake=proposal.kind is ProposalKind.WAKE,
            grant_active=bool(grant_ids) and revoked == 0,
            owners_verified=queries.owners_verified(conn, proposal.target_owner_id, *proposal.causers),
            parties_present=_present(conn, proposal),
            target_constrainable=policy.constrainable(target.tool),
        ),
        accept=accept,
    )
    now = now_utc()
    conn.execute(
        "UPDATE proposals SET state = ?, decided_by = ?, decided_via = ?, reason = ?, decided_at = ?"
        " WHERE proposal_id = ?",
        (state.value, decider.agent_id or decider.owner_id, decider.via, reason, now, proposal.proposal_id),
    )
    if proposal.task_id is not None:
        conn.execute(
            "UPDATE tasks SET consent_state = ?, updated_at = ? WHERE task_id = ? AND proposal_id = ?",
            (state.value, now, proposal.task_id, proposal.proposal_id),
        )
    woke = None
    if state == ConsentState.ACCEPTED:
        # Accepted work wakes its agent, if it may be woken: the wake row rides in this transaction, bound
        # to the payload just accepted and carrying every owner whose words it holds.
        cause = runs.Cause(
            trigger=Trigger.TASK if proposal.kind is ProposalKind.TASK else Trigger.WAKE_PROPOSAL,
            cause_id=proposal.task_id or proposal.proposal_id,
            room_id=proposal.room_id,
            by_agent_id=proposal.proposer_id,
            by_run_id=proposal.run_id,  # a run's request keeps counting towards the wake depth once accepted
            causers=proposal.causers,
            proposal_id=proposal.proposal_id,
            payload_sha256=proposal.payload_sha256,
        )
        enqueued = runs.enqueue(conn, caps, target, cause)
        woke = enqueued.outcome
        if enqueued.run_id is None:  # refused or only notified: the mention waiting on it settles with that
            conn.execute(
                "UPDATE proposals SET wake_outcome = ?, wake_code = ? WHERE proposal_id = ?",
                (enqueued.outcome, enqueued.code, proposal.proposal_id),
            )
    audit.append(
        conn,
        decider.actor,
        f"consent.{'accept' if accept else 'reject'}",
        target=proposal.room_id,
        detail={
            "proposal_id": proposal.proposal_id,
            "kind": proposal.kind.value,
            "task_id": proposal.task_id,
            "payload_sha256": proposal.payload_sha256,
            "owner_id": decider.owner_id,
            "via": decider.via,
            "wake": woke,
        },
    )
    return DecisionResult(
        proposal_id=proposal.proposal_id,
        kind=proposal.kind.value,
        task_id=proposal.task_id,
        consent_state=state.value,
    )
