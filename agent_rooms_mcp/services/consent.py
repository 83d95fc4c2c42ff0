"""Cross-owner consent (DESIGN §4): consent modes, proposals, and the target owner's decisions on them.

A proposal is one cross-owner request (a task offered to another owner's agent, or a mention that
would wake one). Its facts are loaded inside the caller's write transaction and judged by `policy`;
the same functions serve the tasks and messages services, which open proposals in their own
transactions, and the decisions below.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from agent_rooms_mcp import audit, content, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import conflict, forbidden_scope, invalid, not_found, too_large
from agent_rooms_mcp.models import (
    PAYLOAD_TEXT_FIELDS,
    ConsentModeSet,
    DecisionResult,
    Proposal,
    ProposalList,
    ProposerRef,
)
from agent_rooms_mcp.policy import ConsentMode, ConsentState
from agent_rooms_mcp.principals import AgentTool, Caller, OwnerViewer, Scope, Viewer, held_scopes
from agent_rooms_mcp.run_states import Trigger
from agent_rooms_mcp.services import crossing, runs
from agent_rooms_mcp.services.render import cut_page, notice, render
from agent_rooms_mcp.settings import Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

_PROPOSALS = (
    "SELECT p.rowid AS position, p.*, r.name AS room_name,"
    " a.agent_id, a.handle, a.tool, a.owner_id, o.handle AS owner_handle,"
    " t.handle AS target_handle,"
    " w.agent_id AS w_agent_id, w.handle AS w_handle, w.tool AS w_tool, w.owner_id AS w_owner_id,"
    " wo.handle AS w_owner_handle"
    " FROM proposals p JOIN rooms r ON r.room_id = p.room_id"
    " JOIN agents a ON a.agent_id = p.proposer_id JOIN owners o ON o.owner_id = p.proposer_owner_id"
    " JOIN agents t ON t.agent_id = p.target_id"
    # Who wrote the words: a task's creator (who may not be the agent handing it on), else the proposer.
    " LEFT JOIN tasks k ON k.task_id = p.task_id"
    " JOIN agents w ON w.agent_id = coalesce(k.creator_id, p.proposer_id) JOIN owners wo ON wo.owner_id = w.owner_id"
)


# The hash a decision is bound to (kept here by name: the tests and the tasks service use it).
canonical = crossing.canonical


def cross_owner(
    conn: sqlite3.Connection, actor: Caller, room_id: str, target: sqlite3.Row, causers: crossing.Causers
) -> policy.CrossOwner:
    """Facts for `policy.propose`; target is a member row (agent_id, scopes, owner_id, tool). `causers` are
    every owner whose words the request carries: the actor's owner, a task's authors, a run's causers."""
    return policy.CrossOwner(
        actor=actor,
        target_owner_id=target["owner_id"],
        target_scopes=held_scopes(target["scopes"], None),
        crossers=crossing.crossers(conn, room_id, target["owner_id"], causers),
        target_constrainable=policy.constrainable(AgentTool(target["tool"])),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a cross-owner request starts, whose words it carries, and the grants it crosses (none when
    only the target owner's own words are in it)."""

    state: ConsentState
    causers: crossing.Causers
    grant_ids: tuple[str, ...] = ()


def judge(
    conn: sqlite3.Connection,
    actor: Caller,
    room_id: str,
    target: sqlite3.Row,
    *,
    wake: bool,
    causers: crossing.Causers,
) -> Verdict:
    """`policy.propose` on facts loaded now, inside the caller's transaction. Raises its refusal."""
    facts = cross_owner(conn, actor, room_id, target, causers)
    state = policy.propose(facts, wake=wake)
    return Verdict(state, causers, tuple(c.grant_id for c in facts.crossers if c.grant_id is not None))


@dataclass(frozen=True, slots=True)
class Offer:
    """What a new proposal asks: of whom, in which room, about what."""

    kind: str  # task | wake
    room_id: str
    target: sqlite3.Row
    payload: dict[str, Any]
    task_id: str | None = None
    message_id: str | None = None


def record_proposal(conn: sqlite3.Connection, actor: Caller, offer: Offer, verdict: Verdict) -> str:
    """Write a proposal as judged: pending, or accepted by the target owner's standing mode."""
    if not verdict.grant_ids:
        raise RuntimeError("a cross-owner proposal without a grant: policy.propose admits none")
    state = verdict.state
    text, digest = canonical(offer.payload)
    proposal_id, now = new_id("prop"), now_utc()
    by_mode = state == ConsentState.ACCEPTED
    conn.execute(
        "INSERT INTO proposals (proposal_id, kind, room_id, proposer_id, proposer_owner_id, target_id,"
        " target_owner_id, grant_id, grant_ids, causers, run_id, task_id, message_id, payload, payload_sha256,"
        " state, decided_by, decided_via, created_at, decided_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            proposal_id,
            offer.kind,
            offer.room_id,
            actor.agent_id,
            actor.owner_id,
            offer.target["agent_id"],
            offer.target["owner_id"],
            verdict.grant_ids[0],
            json.dumps(verdict.grant_ids),
            crossing.dumps(verdict.causers),
            actor.run_id,
            offer.task_id,
            offer.message_id,
            text,
            digest,
            state.value,
            offer.target["owner_id"] if by_mode else None,
            "mode" if by_mode else None,
            now,
            now if by_mode else None,
        ),
    )
    return proposal_id


def close_proposal(conn: sqlite3.Connection, proposal_id: str | None, state: str) -> None:
    """A changed or cancelled task leaves its pending proposal `superseded` or `withdrawn`: no decision
    can land on words the proposer no longer stands behind."""
    if proposal_id is not None:
        conn.execute(
            "UPDATE proposals SET state = ?, decided_at = ? WHERE proposal_id = ? AND state = 'pending'",
            (state, now_utc(), proposal_id),
        )


@dataclass(frozen=True, slots=True)
class Decider:
    """Who decides: an agent holding `consent` for its owner, or that owner at the CLI."""

    owner_id: str
    actor: Actor
    via: str  # agent | cli
    agent_id: str | None  # the agent that decided, shown to the proposer beside the reason


class Consent:
    def __init__(self, store: Store, limits: Limits, caps: WakeSettings) -> None:
        self._store = store
        self._limits = limits
        self._caps = caps

    def _check_reason(self, accept: bool, reason: str | None) -> None:
        """A rejection says why, in a sentence or a paragraph; the proposer reads it."""
        if accept:
            return
        if reason is None or not content.sanitize(reason).text.strip():
            raise invalid("reason", "say why; the proposer sees it")
        if len(reason) > self._limits.note_chars:
            raise too_large("reason", self._limits.note_chars, "characters")

    # Consent modes (DESIGN §4): per room, per owner, for that owner's own agents.

    async def set_mode_as_agent(
        self, caller: Caller, room_ref: str, mode: str, collaborator: str | None
    ) -> ConsentModeSet:
        policy.require_scope(caller, Scope.MANAGE)

        def run(conn: sqlite3.Connection) -> ConsentModeSet:
            queries.recheck_caller(conn, caller, Scope.MANAGE)
            room = queries.room_for_member(conn, room_ref, caller)
            return _set_mode(conn, caller.actor, room, caller.owner_id, mode, collaborator, tighten_only=True)

        return await self._store.write(run)

    async def set_mode_as_owner(
        self, operator: Actor, room_ref: str, owner_ref: str, mode: str, collaborator: str | None
    ) -> ConsentModeSet:
        def run(conn: sqlite3.Connection) -> ConsentModeSet:
            room, owner = queries.room(conn, room_ref), queries.owner(conn, owner_ref)
            if queries.owner_joined(conn, room["room_id"], owner["owner_id"]) is None:
                raise invalid("owner", f"{owner['handle']} is not in room {room['name']}")
            return _set_mode(conn, operator, room, owner["owner_id"], mode, collaborator)

        return await self._store.write(run)

    # What waits on an owner's say-so.

    async def pending_for_agent(self, caller: Caller, room_ref: str | None, after: int, limit: int) -> ProposalList:
        # A run token never holds `consent` (RUN_WITHHELD), so no run lists pending work, in its room or any
        # other: the scope check is its room binding here (invariant 87).
        policy.require_scope(caller, Scope.CONSENT)
        return await self._store.read(lambda conn: _pending(conn, self._limits, caller, room_ref, after, limit))

    async def pending_for_owner(self, owner_ref: str, room_ref: str | None, limit: int) -> ProposalList:
        def run(conn: sqlite3.Connection) -> ProposalList:
            viewer = OwnerViewer(queries.owner(conn, owner_ref)["owner_id"])
            return _pending(conn, self._limits, viewer, room_ref, 0, limit)

        return await self._store.read(run)

    # Decisions: final, audited, bound to the payload each proposal carries.

    async def decide_as_agent(self, caller: Caller, ref: str, *, accept: bool, reason: str | None) -> DecisionResult:
        policy.require_scope(caller, Scope.CONSENT)
        self._check_reason(accept, reason)
        if caller.run_id is not None:  # held_scopes already withholds it; a run never decides, whatever changes
            raise forbidden_scope(Scope.CONSENT.value)
        decider = Decider(caller.owner_id, caller.actor, "agent", caller.agent_id)

        def run(conn: sqlite3.Connection) -> DecisionResult:
            queries.recheck_caller(conn, caller, Scope.CONSENT)
            return _decide(conn, self._caps, decider, _proposal_for(conn, ref, caller, accept=accept), accept, reason)

        return await self._store.write(run, notify=True)

    async def decide_as_owner(
        self, operator: Actor, owner_ref: str, ref: str, *, accept: bool, reason: str | None
    ) -> DecisionResult:
        self._check_reason(accept, reason)

        def run(conn: sqlite3.Connection) -> DecisionResult:
            owner = queries.owner(conn, owner_ref)
            decider = Decider(owner["owner_id"], operator, "cli", None)
            proposal = _proposal_for(conn, ref, OwnerViewer(owner["owner_id"]), accept=accept)
            return _decide(conn, self._caps, decider, proposal, accept, reason)

        return await self._store.write(run, notify=True)


def _set_mode(
    conn: sqlite3.Connection,
    actor: Actor,
    room: sqlite3.Row,
    owner_id: str,
    mode: str,
    collaborator: str | None,
    *,
    tighten_only: bool = False,
) -> ConsentModeSet:
    """`tighten_only`: an agent sets it, and may only make it stricter (invariant 106)."""
    try:
        chosen = ConsentMode(mode)
    except ValueError:
        raise invalid("mode", f"one of {', '.join(ConsentMode)}") from None
    collaborator_id = None
    if chosen == ConsentMode.TRUST_COLLABORATOR:
        if not collaborator:
            raise invalid("collaborator", "trust_collaborator needs the owner you trust")
        found = conn.execute(
            "SELECT owner_id FROM owners WHERE handle = ? OR owner_id = ?", (collaborator, collaborator)
        ).fetchone()
        # Only owners in the room can be named: naming must not tell who else has an account on the hub.
        if found is None or queries.owner_joined(conn, room["room_id"], found["owner_id"]) is None:
            raise invalid("collaborator", "name an owner who is in this room")
        collaborator_id = found["owner_id"]
        if collaborator_id == owner_id:
            raise invalid("collaborator", "name another owner; your own agents never need consent")
    elif collaborator:
        raise invalid("collaborator", "only trust_collaborator names a collaborator")
    previous = queries.consent_mode(conn, room["room_id"], owner_id)
    unchanged = (
        previous is not None and (previous["mode"], previous["collaborator_id"]) == (chosen.value, collaborator_id)
    ) or (previous is None and chosen == ConsentMode.TASK_BY_TASK)
    if unchanged:
        # Setting the mode it already has changes nothing: above all it must not move trust_room's
        # moment forward and so silently trust owners who arrived since.
        return _mode_set(conn, room, owner_id, chosen, collaborator_id)
    if tighten_only:
        # Loaded for the collaborator being named, so the rule can tell whether the mode in force trusts it.
        current = crossing.standing(conn, room["room_id"], owner_id, collaborator_id or owner_id)
        policy.agent_may_set_mode(current, chosen, collaborator_id)
    # Applies to proposals made from now on; pending ones keep waiting for a decision (invariant 46).
    conn.execute(
        "INSERT INTO consent_modes (room_id, owner_id, mode, collaborator_id, set_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (room_id, owner_id) DO UPDATE SET mode = excluded.mode,"
        " collaborator_id = excluded.collaborator_id, set_at = excluded.set_at",
        (room["room_id"], owner_id, chosen.value, collaborator_id, now_utc()),
    )
    audit.append(
        conn,
        actor,
        "consent.mode",
        target=room["room_id"],
        detail={
            "owner_id": owner_id,
            "mode": chosen.value,
            "previous": previous["mode"] if previous else ConsentMode.TASK_BY_TASK.value,
            "collaborator_id": collaborator_id,
        },
    )
    return _mode_set(conn, room, owner_id, chosen, collaborator_id)


def _mode_set(
    conn: sqlite3.Connection, room: sqlite3.Row, owner_id: str, chosen: ConsentMode, collaborator_id: str | None
) -> ConsentModeSet:
    owner = queries.owner(conn, owner_id)
    return ConsentModeSet(
        room=room["name"],
        room_id=room["room_id"],
        owner=owner["handle"],
        mode=chosen.value,
        collaborator=queries.owner(conn, collaborator_id)["handle"] if collaborator_id else None,
    )


def _pending(
    conn: sqlite3.Connection, limits: Limits, viewer: Viewer, room_ref: str | None, after: int, limit: int
) -> ProposalList:
    sql, args = _PROPOSALS + " WHERE p.target_owner_id = ? AND p.state = 'pending'", [viewer.owner_id]
    if room_ref is not None:
        room = queries.room(conn, room_ref)
        if queries.owner_joined(conn, room["room_id"], viewer.owner_id) is None:
            raise not_found("room")
        sql += " AND p.room_id = ?"
        args.append(room["room_id"])
    # In the order they were made, so the rowid is the cursor.
    fetched = conn.execute(sql + " AND p.rowid > ? ORDER BY p.rowid LIMIT ?", (*args, after, limit + 1)).fetchall()
    rows = fetched[:limit]
    payloads = [json.loads(r["payload"]) for r in rows]
    # Every proposal crossed an owner boundary: each text field is rendered as the proposer's words.
    items = [(r, p, f) for r, p in zip(rows, payloads, strict=True) for f in PAYLOAD_TEXT_FIELDS if f in p]
    rendered, boundary = render(viewer, [_writer(r) for r, _, _ in items], [p[f] for _, p, f in items])
    for (_, payload, field), shown in zip(items, rendered, strict=True):
        payload[field] = shown.text
    proposals = [
        Proposal(
            proposal_id=r["proposal_id"],
            kind=r["kind"],
            room=r["room_name"],
            room_id=r["room_id"],
            proposer=ProposerRef(agent=r["handle"], owner=r["owner_handle"]),
            target=r["target_handle"],
            task_id=r["task_id"],
            causers=_owner_handles(conn, crossing.loads(r["causers"])),
            payload=payload,
            payload_sha256=r["payload_sha256"],
            created_at=r["created_at"],
        )
        for r, payload in zip(rows, payloads, strict=True)
    ]
    empty = ProposalList(proposals=[], next_after=after, has_more=True, boundary=boundary, notice=notice(boundary))
    cut = cut_page(limits, empty, proposals, [r["position"] for r in rows], len(fetched), after)
    return empty.model_copy(
        update={"proposals": proposals[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
    )


def _owner_handles(conn: sqlite3.Connection, owner_ids: crossing.Causers) -> list[str]:
    """Every owner whose words a proposal carries, by handle: the target's owner decides on all of them."""
    marks = ",".join("?" * len(owner_ids))
    rows = conn.execute(f"SELECT handle FROM owners WHERE owner_id IN ({marks}) ORDER BY handle", tuple(owner_ids))
    return [r["handle"] for r in rows]


def _writer(row: sqlite3.Row) -> dict[str, str]:
    return {
        "agent_id": row["w_agent_id"],
        "handle": row["w_handle"],
        "tool": row["w_tool"],
        "owner_id": row["w_owner_id"],
        "owner_handle": row["w_owner_handle"],
    }


def _proposal_for(conn: sqlite3.Connection, ref: str, viewer: Viewer, *, accept: bool) -> sqlite3.Row:
    """A proposal by its id, or a task's current one by the task id. NOT_FOUND unless the viewer's owner
    is its target or the viewer is in its room: a stranger learns nothing, not even that it exists."""
    if ref.startswith("task_"):
        task = conn.execute(
            "SELECT room_id, proposal_id, assignee_owner_id FROM tasks WHERE task_id = ?", (ref,)
        ).fetchone()
        if task is None or (
            task["assignee_owner_id"] != viewer.owner_id and not _sees_room(conn, viewer, task["room_id"])
        ):
            raise not_found("task or proposal")
        if task["proposal_id"] is None:
            raise conflict("this task crosses no owner boundary; it needs no consent")
        # A task id names whatever the task asks now. Once it has changed (a new assignee, new words),
        # a decision must name the proposal that was reviewed, or it could land on words never seen.
        asks = conn.execute("SELECT count(*) FROM proposals WHERE task_id = ?", (ref,)).fetchone()[0]
        if asks > 1 and accept:
            raise conflict("this task changed since it was first proposed; accept the proposal_id you reviewed")
        ref = task["proposal_id"]
    row = conn.execute(_PROPOSALS + " WHERE p.proposal_id = ?", (ref,)).fetchone()
    if row is None or (row["target_owner_id"] != viewer.owner_id and not _sees_room(conn, viewer, row["room_id"])):
        raise not_found("task or proposal")
    return row


def _present(conn: sqlite3.Connection, proposal: sqlite3.Row) -> bool:
    members = {m["agent_id"]: m for m in queries.room_members(conn, proposal["room_id"])}
    proposer = members.get(proposal["proposer_id"])
    return (
        proposer is not None
        and proposal["target_id"] in members
        and Scope.TASK in held_scopes(proposer["scopes"], None)
    )


def _sees_room(conn: sqlite3.Connection, viewer: Viewer, room_id: str) -> bool:
    """An agent sees a room it is in; an owner at the CLI (no agent) one they joined."""
    if not viewer.agent_id:
        return queries.owner_joined(conn, room_id, viewer.owner_id) is not None
    return bool(
        conn.execute(
            "SELECT 1 FROM room_agents WHERE room_id = ? AND agent_id = ?", (room_id, viewer.agent_id)
        ).fetchone()
    )


def _decide(
    conn: sqlite3.Connection,
    caps: WakeSettings,
    decider: Decider,
    proposal: sqlite3.Row,
    accept: bool,
    reason: str | None,
) -> DecisionResult:
    target = queries.agent(conn, proposal["target_id"])
    proposer_owner, target_owner = proposal["proposer_owner_id"], proposal["target_owner_id"]
    causers = crossing.loads(proposal["causers"])
    grant_ids = json.loads(proposal["grant_ids"])
    marks = ",".join("?" * len(grant_ids))
    revoked = conn.execute(
        f"SELECT count(*) FROM grants WHERE grant_id IN ({marks}) AND revoked_at IS NOT NULL", grant_ids
    ).fetchone()[0]
    state = policy.decide(
        policy.Decision(
            decider_owner_id=decider.owner_id,
            proposal_state=proposal["state"],
            proposer_owner_id=proposer_owner,
            target_owner_id=target_owner,
            target_scopes=held_scopes(target["scopes"], None),
            wake=proposal["kind"] == "wake",
            grant_active=bool(grant_ids) and revoked == 0,
            owners_verified=queries.owners_verified(conn, target_owner, *causers),
            parties_present=_present(conn, proposal),
            target_constrainable=policy.constrainable(AgentTool(target["tool"])),
        ),
        accept=accept,
    )
    now = now_utc()
    conn.execute(
        "UPDATE proposals SET state = ?, decided_by = ?, decided_via = ?, reason = ?, decided_at = ?"
        " WHERE proposal_id = ?",
        (state.value, decider.agent_id or decider.owner_id, decider.via, reason, now, proposal["proposal_id"]),
    )
    if proposal["task_id"] is not None:
        conn.execute(
            "UPDATE tasks SET consent_state = ?, updated_at = ? WHERE task_id = ? AND proposal_id = ?",
            (state.value, now, proposal["task_id"], proposal["proposal_id"]),
        )
    woke = None
    if state == ConsentState.ACCEPTED:
        # Accepted work wakes its agent, if it may be woken: the wake row rides in this transaction, bound
        # to the payload just accepted and carrying every owner whose words it holds.
        cause = runs.Cause(
            trigger=Trigger.TASK if proposal["kind"] == "task" else Trigger.WAKE_PROPOSAL,
            cause_id=proposal["task_id"] or proposal["proposal_id"],
            room_id=proposal["room_id"],
            by_agent_id=proposal["proposer_id"],
            by_run_id=proposal["run_id"],  # a run's request keeps counting towards the wake depth once accepted
            causers=causers,
            proposal_id=proposal["proposal_id"],
            payload_sha256=proposal["payload_sha256"],
        )
        woke = runs.enqueue(conn, caps, target, cause).outcome
    audit.append(
        conn,
        decider.actor,
        f"consent.{'accept' if accept else 'reject'}",
        target=proposal["room_id"],
        detail={
            "proposal_id": proposal["proposal_id"],
            "kind": proposal["kind"],
            "task_id": proposal["task_id"],
            "payload_sha256": proposal["payload_sha256"],
            "owner_id": decider.owner_id,
            "via": decider.via,
            "wake": woke,
        },
    )
    return DecisionResult(
        proposal_id=proposal["proposal_id"],
        kind=proposal["kind"],
        task_id=proposal["task_id"],
        consent_state=state.value,
    )
