"""Consent between owners (DESIGN §4): consent modes and states, proposals and decisions, who sees and who
decides one, what a mention does, and grants. Pure functions over facts the services load."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent_rooms_mcp.errors import ErrorCode, RoomsError, conflict, forbidden, forbidden_scope, invalid
from agent_rooms_mcp.ids import AgentId, OwnerId
from agent_rooms_mcp.policy.core import require_scope
from agent_rooms_mcp.principals import Caller, Scope


class ConsentMode(StrEnum):
    TASK_BY_TASK = "task_by_task"
    APPROVE_ALL = "approve_all"
    TRUST_COLLABORATOR = "trust_collaborator"
    TRUST_ROOM = "trust_room"


class ConsentState(StrEnum):
    AUTO = "auto"
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


# Strictest first: task_by_task trusts nobody, trust_collaborator one owner, trust_room the owners present
# when it was set, approve_all everyone (DESIGN §4).
STRICTNESS: tuple[ConsentMode, ...] = (
    ConsentMode.TASK_BY_TASK,
    ConsentMode.TRUST_COLLABORATOR,
    ConsentMode.TRUST_ROOM,
    ConsentMode.APPROVE_ALL,
)


@dataclass(frozen=True, slots=True)
class Standing:
    """The target owner's consent mode in one room, as loaded inside the transaction."""

    mode: ConsentMode = ConsentMode.TASK_BY_TASK
    collaborator_id: OwnerId | None = None
    # trust_room trusts the owners who were in the room when the mode was set, not later arrivals:
    # anyone with `manage` in the room can invite a stranger, and that must not widen the trust.
    proposer_trusted_by_room: bool = False


def starts_accepted(standing: Standing, proposer_owner_id: OwnerId) -> bool:
    """DESIGN §4: the target owner's mode decides whether a cross-owner proposal starts accepted."""
    match standing.mode:
        case ConsentMode.TASK_BY_TASK:
            return False
        case ConsentMode.APPROVE_ALL:
            return True
        case ConsentMode.TRUST_COLLABORATOR:
            return standing.collaborator_id == proposer_owner_id
        case ConsentMode.TRUST_ROOM:
            return standing.proposer_trusted_by_room


def agent_may_set_mode(current: Standing, chosen: ConsentMode, collaborator_id: OwnerId | None) -> None:
    """DESIGN §2: an agent may only tighten its owner's consent mode; widening is an owner action.

    Tightening is a strictly stricter mode that trusts no one the current one does not: moving from
    trust_room to trust_collaborator is one only for a collaborator trust_room already trusted, and
    `current` is loaded for that collaborator. Setting the mode the owner already has is left to the
    caller (it changes nothing).
    """
    stricter = STRICTNESS.index(chosen) < STRICTNESS.index(current.mode)
    if chosen is ConsentMode.TRUST_COLLABORATOR:
        stricter = stricter and collaborator_id is not None and starts_accepted(current, collaborator_id)
    if not stricter:
        raise forbidden(
            "an agent may only tighten its owner's consent mode (towards task_by_task);"
            " widening it is an owner action: agent-rooms consent mode"
        )


@dataclass(frozen=True, slots=True)
class Crosser:
    """One owner whose words cross to the target's owner: the acting agent's owner, a task's authors, or a
    run's causers (DESIGN §4). Facts as loaded inside the transaction."""

    owner_id: OwnerId
    grant_id: str | None  # the active grant from the target's owner to this owner
    verified: bool  # this owner and the target's owner both
    standing: Standing  # the target owner's mode, as it stands towards this owner


@dataclass(frozen=True, slots=True)
class CrossOwner:
    """Facts about one agent acting on another's agent: giving it a task, or mentioning it so it would wake."""

    actor: Caller
    target_owner_id: OwnerId
    target_scopes: frozenset[Scope]
    # Every owner whose words cross other than the target's own, in a fixed order; empty when none does.
    crossers: tuple[Crosser, ...]
    target_constrainable: bool = True  # its tool can run read-only when another owner wakes it


def propose(f: CrossOwner, *, wake: bool) -> ConsentState:
    """May f.actor give work to (or wake) f.target, and in which consent state does that start? (DESIGN §4)"""
    # 1. Only the target owner's own words: nothing crosses a boundary, nothing to consent to.
    if not f.crossers:
        return ConsentState.AUTO
    # 2. The actor's `task` scope, before anything about the other owner is revealed.
    require_scope(f.actor, Scope.TASK)
    # 3. A standing grant from the target's owner to every owner whose words cross (a task handed on still
    #    carries its creator's words), then 4. all of them verified.
    if any(c.grant_id is None for c in f.crossers):
        raise RoomsError(ErrorCode.NO_GRANT, "the target agent's owner has not granted every owner whose words cross")
    if not all(c.verified for c in f.crossers):
        raise _unverified()
    # 5. Only an agent its owner allowed to be woken can be woken. 6. Another owner's request wakes an agent
    #    only in a constrained run; a tool that has none is refused here, where the proposer sees it, rather
    #    than accepted and then silently never woken.
    _may_wake(f.target_scopes, wake=wake, constrainable=f.target_constrainable)
    # 7. The target owner's standing mode in this room, judged for each owner: the strictest wins.
    return ConsentState.ACCEPTED if still_accepted(f.crossers) else ConsentState.PENDING


def still_accepted(crossers: tuple[Crosser, ...]) -> bool:
    """Does the target owner's mode accept, without asking, the words of every owner that crosses?"""
    return all(starts_accepted(c.standing, c.owner_id) for c in crossers)


@dataclass(frozen=True, slots=True)
class Decision:
    """Facts about a decision on one proposal, by an agent of `decider_owner_id` or that owner's CLI."""

    decider_owner_id: OwnerId
    proposal_state: ProposalState
    proposer_owner_id: OwnerId
    target_owner_id: OwnerId
    target_scopes: frozenset[Scope]
    wake: bool
    grant_active: bool  # every grant the proposal was made under, not merely some grant now
    owners_verified: bool  # the target's owner and every owner whose words cross
    # Both agents still in the room, and the proposer still holding `task`: scope and membership changes
    # take effect on the next call, a decision included.
    parties_present: bool = True
    target_constrainable: bool = True


def decide(f: Decision, *, accept: bool) -> ConsentState:
    """DESIGN §4: only the target's owner decides, once, and acceptance needs the grant to hold still."""
    # 1. Nobody decides for another owner's agents.
    if f.decider_owner_id != f.target_owner_id:
        raise forbidden("only the target agent's owner decides on this proposal")
    # 2. Decisions are final; a superseded proposal was replaced by a newer one about the same task.
    if f.proposal_state != ProposalState.PENDING:
        hint = "; decide its newest proposal instead" if f.proposal_state == ProposalState.SUPERSEDED else ""
        raise conflict(f"this proposal is already {f.proposal_state}{hint}")
    if not accept:
        return ConsentState.REJECTED
    # 3. The same conditions as when it was proposed, as they stand now: a revoked grant or a lost
    #    verification stops pending proposals from being accepted (invariant 25), and so does a proposer
    #    who lost `task` or either agent leaving the room.
    if not f.parties_present:
        raise conflict("the proposer or the target agent is no longer in the room, or the proposer lost 'task'")
    if not f.grant_active:
        raise RoomsError(ErrorCode.NO_GRANT, "a grant this was proposed under has been revoked")
    if not f.owners_verified:
        raise _unverified()
    # Rules 5 and 6 of `propose`, as they stand now: the target may have lost or gained `invoke` since.
    _may_wake(f.target_scopes, wake=f.wake, constrainable=f.target_constrainable)
    return ConsentState.ACCEPTED


# ---------------------------------------------------------------------------------------------------------------
# Proposals and decisions: their kinds and states, who sees one, who decides, what a mention does.
# ---------------------------------------------------------------------------------------------------------------


class ProposalKind(StrEnum):
    TASK = "task"  # a task given to another owner's agent
    WAKE = "wake"  # a mention that would wake another owner's agent


class ProposalState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # its task changed (new words, new assignee): a newer proposal stands instead
    WITHDRAWN = "withdrawn"  # its task finished: nothing is asked any more


class MentionEffect(StrEnum):
    """What mentioning one member of a room sets off, before any other rule is applied."""

    NOTIFY = "notify"  # the member reads it; nothing is woken
    WAKE = "wake"  # only its own owner's words: woken or queued under the wake rules, no consent asked
    PROPOSE = "propose"  # another owner's words cross: a request judged by `propose`, waiting or refused


def mention_effect(actor_agent_id: AgentId, member_agent_id: AgentId, *, others_cross: bool) -> MentionEffect:
    """DESIGN §3.1: mentioning oneself only notifies; an agent whose owner's words are the only ones in the
    post is woken as its owner's own; any other owner's words make it a request. Whether a tool can be spawned
    at all is asked only after that request is judged, so a refusal reveals nothing about the target."""
    if actor_agent_id == member_agent_id:
        return MentionEffect.NOTIFY
    return MentionEffect.PROPOSE if others_cross else MentionEffect.WAKE


def may_decide(caller: Caller) -> None:
    """Only an agent holding `consent` decides for its owner, and never from a woken run: a run acts on
    someone's words, and letting it decide would let those words consent to themselves (DESIGN §2).
    `held_scopes` already withholds the scope from run tokens; this holds even if that changed."""
    require_scope(caller, Scope.CONSENT)
    if caller.run_id is not None:
        raise forbidden_scope(Scope.CONSENT.value)


def sees_mention_receipts(viewer_owner_id: OwnerId, author_owner_id: OwnerId) -> bool:
    """What a mention did beyond notifying (woken, queued, pending consent, refused, and the run it started
    with its state and reason) is the poster's owner's receipt (DESIGN §5). Another member of the room reads
    the mention as a notification only: the run of another owner's agent, its failure codes and the
    proposals it waits on tell of that owner's machine and choices."""
    return viewer_owner_id == author_owner_id


def sees_proposal(viewer_owner_id: OwnerId, target_owner_id: OwnerId, *, viewer_in_room: bool) -> bool:
    """A proposal is visible to its target's owner and to those in its room; to anyone else it answers
    NOT_FOUND like one that does not exist (invariant 82)."""
    return target_owner_id == viewer_owner_id or viewer_in_room


def decide_by_task_id(*, crosses: bool, proposals_for_task: int, accept: bool) -> None:
    """Naming a task instead of a proposal: it must have crossed an owner boundary, and once the task changed
    (new words, a new assignee) acceptance must name the proposal that was reviewed, or it could land on
    words never seen. Rejecting by task id stays possible: it agrees to nothing."""
    if not crosses:
        raise conflict("this task crosses no owner boundary; it needs no consent")
    if proposals_for_task > 1 and accept:
        raise conflict("this task changed since it was first proposed; accept the proposal_id you reviewed")


def _may_wake(target_scopes: frozenset[Scope], *, wake: bool, constrainable: bool) -> None:
    """Rules 5 and 6 of `propose`, and again in `decide`: only an `invoke` agent is woken, and another owner's
    request may reach an `invoke` agent only if its tool can run constrained."""
    if wake and Scope.INVOKE not in target_scopes:
        raise RoomsError(ErrorCode.FORBIDDEN_SCOPE, "the target agent lacks the 'invoke' scope")
    if Scope.INVOKE in target_scopes and not constrainable:
        raise RoomsError(
            ErrorCode.CONSTRAINED_RUNTIME_REQUIRED,
            "the target agent's tool cannot run constrained, as a wake from another owner must",
        )


def _unverified() -> RoomsError:
    return RoomsError(ErrorCode.IDENTITY_UNVERIFIED, "every owner whose words cross must be identity-verified")


# ---------------------------------------------------------------------------------------------------------------
# The owners' and the operator's rules for consent modes and grants.
# ---------------------------------------------------------------------------------------------------------------


def check_mode_choice(
    chosen: ConsentMode,
    owner_id: OwnerId,
    *,
    collaborator: str | None,
    collaborator_id: OwnerId | None,
    collaborator_in_room: bool,
) -> None:
    """A consent mode names a collaborator exactly when it is trust_collaborator, and that collaborator is
    another owner in the room: naming must not tell who else has an account on the hub, so an unknown owner
    and one elsewhere get the same answer."""
    if chosen is not ConsentMode.TRUST_COLLABORATOR:
        if collaborator:
            raise invalid("collaborator", "only trust_collaborator names a collaborator")
        return
    if not collaborator:
        raise invalid("collaborator", "trust_collaborator needs the owner you trust")
    if collaborator_id is None or not collaborator_in_room:
        raise invalid("collaborator", "name an owner who is in this room")
    if collaborator_id == owner_id:
        raise invalid("collaborator", "name another owner; your own agents never need consent")


def mode_unchanged(
    previous: tuple[ConsentMode, OwnerId | None] | None, chosen: ConsentMode, collaborator_id: OwnerId | None
) -> bool:
    """Setting the mode already in force (task_by_task when none was ever set) changes nothing: above all it
    must not move trust_room's moment forward and so silently trust owners who arrived since."""
    if previous is None:
        return chosen is ConsentMode.TASK_BY_TASK
    return previous == (chosen, collaborator_id)


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """Facts about one owner granting another: handles for the messages, who is unverified, any active grant."""

    giver_id: OwnerId
    taker_id: OwnerId
    giver: str
    taker: str
    unverified: tuple[str, ...]  # handles of the two owners not yet identity-verified
    already_granted: bool


def may_grant(f: GrantRequest) -> None:
    """DESIGN §4: a grant is between two different owners, both identity-verified, and exists once."""
    if f.giver_id == f.taker_id:
        raise invalid("to", "an owner's own agents need no grant")
    if f.unverified:
        raise RoomsError(
            ErrorCode.IDENTITY_UNVERIFIED,
            # Verifying is the operator's (DESIGN §2): an owner on a device cannot run it, so the hint says whom.
            f"{' and '.join(f.unverified)} must be verified first, by the hub's operator: "
            + "; ".join(f"agent-rooms owner verify {h}" for h in f.unverified),
        )
    if f.already_granted:
        raise conflict(f"{f.giver} already grants {f.taker}")
