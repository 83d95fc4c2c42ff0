"""The consent service (DESIGN §4): its calls for agents and for owners at the CLI, in one transaction each.

The work is done in its three parts: `consent_modes` (each owner's mode per room), `proposals` (judging,
recording and listing cross-owner requests) and `decisions` (accepting or rejecting one). Every who-may
rule they apply is in `policy`.
"""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp import content, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.errors import invalid, too_large
from agent_rooms_mcp.ids import AgentId, OwnerId
from agent_rooms_mcp.models import ConsentModeSet, DecisionResult, ProposalList
from agent_rooms_mcp.principals import Caller, OwnerViewer, Scope
from agent_rooms_mcp.services import consent_modes, decisions, proposals
from agent_rooms_mcp.settings import Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store


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
            return consent_modes.set_mode(
                conn, caller.actor, room, caller.owner_id, mode, collaborator, tighten_only=True
            )

        return await self._store.write(run)

    async def set_mode_as_owner(
        self, operator: Actor, room_ref: str, owner_ref: str, mode: str, collaborator: str | None
    ) -> ConsentModeSet:
        def run(conn: sqlite3.Connection) -> ConsentModeSet:
            room, owner = queries.room(conn, room_ref), queries.owner(conn, owner_ref)
            in_room = queries.owner_joined(conn, room.room_id, owner.owner_id) is not None
            policy.require_owner_in_room(in_room, "owner", owner.handle, room.name)
            return consent_modes.set_mode(conn, operator, room, owner.owner_id, mode, collaborator)

        return await self._store.write(run)

    # What waits on an owner's say-so.

    async def pending_for_agent(self, caller: Caller, room_ref: str | None, after: int, limit: int) -> ProposalList:
        # A run token never holds `consent` (RUN_WITHHELD), so no run lists pending work, in its room or any
        # other: the scope check is its room binding here (invariant 87).
        policy.require_scope(caller, Scope.CONSENT)
        return await self._store.read(
            lambda conn: proposals.pending(conn, self._limits, caller, room_ref, after, limit)
        )

    async def pending_for_owner(self, owner_ref: str, room_ref: str | None, after: int, limit: int) -> ProposalList:
        """One page, from the cursor `after`: the same page size and byte bound as the tool's."""

        def run(conn: sqlite3.Connection) -> ProposalList:
            viewer = OwnerViewer(queries.owner(conn, owner_ref).owner_id)
            return proposals.pending(conn, self._limits, viewer, room_ref, after, min(limit, self._limits.page_max))

        return await self._store.read(run)

    # Decisions: final, audited, bound to the payload each proposal carries.

    async def decide_as_agent(self, caller: Caller, ref: str, *, accept: bool, reason: str | None) -> DecisionResult:
        policy.may_decide(caller)
        self._check_reason(accept, reason)
        decider = decisions.Decider(OwnerId(caller.owner_id), caller.actor, "agent", AgentId(caller.agent_id))

        def run(conn: sqlite3.Connection) -> DecisionResult:
            queries.recheck_caller(conn, caller, Scope.CONSENT)
            proposal = decisions.proposal_for(conn, ref, caller, accept=accept)
            return decisions.decide(conn, self._caps, decider, proposal, accept, reason)

        return await self._store.write(run, notify=True)

    async def decide_as_owner(
        self, operator: Actor, owner_ref: str, ref: str, *, accept: bool, reason: str | None, shown: str | None = None
    ) -> DecisionResult:
        """`shown`: the payload hash the deciding page showed (the console's form); any other is CONFLICT."""
        self._check_reason(accept, reason)

        def run(conn: sqlite3.Connection) -> DecisionResult:
            owner = queries.owner(conn, owner_ref)
            # A person decides at the hub's CLI, on a device, or at the console: the row says which.
            decider = decisions.Decider(OwnerId(owner.owner_id), operator, operator.via or "cli", None)
            proposal = decisions.proposal_for(conn, ref, OwnerViewer(owner.owner_id), accept=accept)
            policy.require_shown_payload(shown, proposal.payload_sha256)
            return decisions.decide(conn, self._caps, decider, proposal, accept, reason)

        return await self._store.write(run, notify=True)
