"""Proposals (DESIGN §4): judging a cross-owner request, recording it, closing it, and listing what waits.

A proposal is one cross-owner request: a task offered to another owner's agent, or a mention that would
wake one. Its facts are loaded inside the caller's write transaction and judged by `policy`; the tasks
and messages services open proposals in their own transactions through `judge` and `record_proposal`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from agent_rooms_mcp import policy
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.ids import AgentId, GrantId, MessageId, OwnerId, ProposalId, RoomId, RunId, TaskId
from agent_rooms_mcp.models import PAYLOAD_TEXT_FIELDS, Proposal, ProposalList, ProposerRef
from agent_rooms_mcp.policy import ConsentState, ProposalKind, ProposalState
from agent_rooms_mcp.principals import Caller, Viewer
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.services.render import cut_page, notice, render
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.rows import MemberAgent

PROPOSALS = (
    "SELECT p.rowid AS position, p.*, r.name AS room_name,"
    " a.handle, o.handle AS owner_handle, t.handle AS target_handle,"
    " w.agent_id AS w_agent_id, w.handle AS w_handle, w.tool AS w_tool, w.owner_id AS w_owner_id,"
    " wo.handle AS w_owner_handle"
    " FROM proposals p JOIN rooms r ON r.room_id = p.room_id"
    " JOIN agents a ON a.agent_id = p.proposer_id JOIN owners o ON o.owner_id = p.proposer_owner_id"
    " JOIN agents t ON t.agent_id = p.target_id"
    # Who wrote the words: a task's creator (who may not be the agent handing it on), else the proposer.
    " LEFT JOIN tasks k ON k.task_id = p.task_id"
    " JOIN agents w ON w.agent_id = coalesce(k.creator_id, p.proposer_id) JOIN owners wo ON wo.owner_id = w.owner_id"
)


@dataclass(frozen=True, slots=True)
class ProposalRow:
    """One stored proposal as the consent services use it, loaded by `PROPOSALS`."""

    position: int  # its rowid: the order proposals were made in, and the listing's cursor
    proposal_id: ProposalId
    kind: ProposalKind
    state: ProposalState
    room_id: RoomId
    room_name: str
    proposer_id: AgentId
    proposer_handle: str
    proposer_owner_id: OwnerId
    proposer_owner_handle: str
    target_id: AgentId
    target_handle: str
    target_owner_id: OwnerId
    grant_ids: tuple[GrantId, ...]  # every grant it was made under
    causers: crossing.Causers  # every owner whose words it carries
    run_id: RunId | None  # the run that made it, if a run did
    task_id: TaskId | None
    payload: str  # canonical JSON, as hashed
    payload_sha256: str
    created_at: str
    writer: dict[str, str]  # who wrote the words, as `render` takes an author

    @classmethod
    def of(cls, r: sqlite3.Row) -> ProposalRow:
        return cls(
            position=r["position"],
            proposal_id=ProposalId(r["proposal_id"]),
            kind=ProposalKind(r["kind"]),
            state=ProposalState(r["state"]),
            room_id=RoomId(r["room_id"]),
            room_name=r["room_name"],
            proposer_id=AgentId(r["proposer_id"]),
            proposer_handle=r["handle"],
            proposer_owner_id=OwnerId(r["proposer_owner_id"]),
            proposer_owner_handle=r["owner_handle"],
            target_id=AgentId(r["target_id"]),
            target_handle=r["target_handle"],
            target_owner_id=OwnerId(r["target_owner_id"]),
            grant_ids=tuple(GrantId(g) for g in json.loads(r["grant_ids"] or "[]")),
            causers=crossing.loads(r["causers"]),
            run_id=None if r["run_id"] is None else RunId(r["run_id"]),
            task_id=None if r["task_id"] is None else TaskId(r["task_id"]),
            payload=r["payload"],
            payload_sha256=r["payload_sha256"],
            created_at=r["created_at"],
            writer={
                "agent_id": r["w_agent_id"],
                "handle": r["w_handle"],
                "tool": r["w_tool"],
                "owner_id": r["w_owner_id"],
                "owner_handle": r["w_owner_handle"],
            },
        )


def cross_owner(
    conn: sqlite3.Connection, actor: Caller, room_id: str, target: MemberAgent, causers: crossing.Causers
) -> policy.CrossOwner:
    """Facts for `policy.propose` about `target`, the agent asked. `causers` are
    every owner whose words the request carries: the actor's owner, a task's authors, a run's causers."""
    return policy.CrossOwner(
        actor=actor,
        target_owner_id=target.owner_id,
        target_scopes=target.scopes,
        crossers=crossing.crossers(conn, room_id, target.owner_id, causers),
        target_constrainable=policy.constrainable(target.tool),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a cross-owner request starts, whose words it carries, and the grants it crosses (none when
    only the target owner's own words are in it)."""

    state: ConsentState
    causers: crossing.Causers
    grant_ids: tuple[GrantId, ...] = ()


def judge(
    conn: sqlite3.Connection,
    actor: Caller,
    room_id: str,
    target: MemberAgent,
    *,
    wake: bool,
    causers: crossing.Causers,
) -> Verdict:
    """`policy.propose` on facts loaded now, inside the caller's transaction. Raises its refusal."""
    facts = cross_owner(conn, actor, room_id, target, causers)
    state = policy.propose(facts, wake=wake)
    return Verdict(state, causers, tuple(GrantId(c.grant_id) for c in facts.crossers if c.grant_id is not None))


@dataclass(frozen=True, slots=True)
class Offer:
    """What a new proposal asks: of whom, in which room, about what."""

    kind: ProposalKind
    room_id: RoomId
    target: MemberAgent
    payload: dict[str, Any]
    task_id: TaskId | None = None
    message_id: MessageId | None = None


def record_proposal(conn: sqlite3.Connection, actor: Caller, offer: Offer, verdict: Verdict) -> ProposalId:
    """Write a proposal as judged: pending, or accepted by the target owner's standing mode."""
    if not verdict.grant_ids:
        raise RuntimeError("a cross-owner proposal without a grant: policy.propose admits none")
    state = verdict.state
    text, digest = crossing.canonical(offer.payload)
    proposal_id, now = ProposalId(new_id("prop")), now_utc()
    by_mode = state == ConsentState.ACCEPTED
    conn.execute(
        "INSERT INTO proposals (proposal_id, kind, room_id, proposer_id, proposer_owner_id, target_id,"
        " target_owner_id, grant_id, grant_ids, causers, run_id, task_id, message_id, payload, payload_sha256,"
        " state, decided_by, decided_via, created_at, decided_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            proposal_id,
            offer.kind.value,
            offer.room_id,
            actor.agent_id,
            actor.owner_id,
            offer.target.agent_id,
            offer.target.owner_id,
            verdict.grant_ids[0],
            json.dumps(verdict.grant_ids),
            crossing.dumps(verdict.causers),
            actor.run_id,
            offer.task_id,
            offer.message_id,
            text,
            digest,
            state.value,
            offer.target.owner_id if by_mode else None,
            "mode" if by_mode else None,
            now,
            now if by_mode else None,
        ),
    )
    return proposal_id


def close_proposal(conn: sqlite3.Connection, proposal_id: str | None, state: ProposalState) -> None:
    """A changed or cancelled task leaves its pending proposal `superseded` or `withdrawn`: no decision
    can land on words the proposer no longer stands behind."""
    if proposal_id is not None:
        conn.execute(
            "UPDATE proposals SET state = ?, decided_at = ? WHERE proposal_id = ? AND state = 'pending'",
            (state.value, now_utc(), proposal_id),
        )


def pending(
    conn: sqlite3.Connection, limits: Limits, viewer: Viewer, room_ref: str | None, after: int, limit: int
) -> ProposalList:
    """One page of what waits on the viewer's owner's decision, oldest first, bounded like every list."""
    sql = PROPOSALS + " WHERE p.target_owner_id = ? AND p.state = 'pending'"
    args: list[str] = [viewer.owner_id]
    if room_ref is not None:
        room = queries.room(conn, room_ref)
        if queries.owner_joined(conn, room.room_id, viewer.owner_id) is None:
            raise not_found("room", room_ref)
        sql += " AND p.room_id = ?"
        args.append(room.room_id)
    # In the order they were made, so the rowid is the cursor.
    fetched = conn.execute(sql + " AND p.rowid > ? ORDER BY p.rowid LIMIT ?", (*args, after, limit + 1)).fetchall()
    rows = [ProposalRow.of(r) for r in fetched[:limit]]
    payloads = [json.loads(r.payload) for r in rows]
    # Every proposal crossed an owner boundary: each text field is rendered as the proposer's words.
    items = [(r, p, f) for r, p in zip(rows, payloads, strict=True) for f in PAYLOAD_TEXT_FIELDS if f in p]
    rendered, boundary = render(viewer, [r.writer for r, _, _ in items], [p[f] for _, p, f in items])
    for (_, payload, field), shown in zip(items, rendered, strict=True):
        payload[field] = shown.text
    proposals = [
        Proposal(
            proposal_id=r.proposal_id,
            kind=r.kind.value,
            room=r.room_name,
            room_id=r.room_id,
            proposer=ProposerRef(agent=r.proposer_handle, owner=r.proposer_owner_handle),
            target=r.target_handle,
            task_id=r.task_id,
            causers=_owner_handles(conn, r.causers),
            payload=payload,
            payload_sha256=r.payload_sha256,
            created_at=r.created_at,
        )
        for r, payload in zip(rows, payloads, strict=True)
    ]
    empty = ProposalList(proposals=[], next_after=after, has_more=True, boundary=boundary, notice=notice(boundary))
    cut = cut_page(limits, empty, proposals, [r.position for r in rows], len(fetched), after)
    return empty.model_copy(
        update={"proposals": proposals[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
    )


def _owner_handles(conn: sqlite3.Connection, owner_ids: crossing.Causers) -> list[str]:
    """Every owner whose words a proposal carries, by handle: the target's owner decides on all of them."""
    marks = ",".join("?" * len(owner_ids))
    rows = conn.execute(f"SELECT handle FROM owners WHERE owner_id IN ({marks}) ORDER BY handle", tuple(owner_ids))
    return [r["handle"] for r in rows]
