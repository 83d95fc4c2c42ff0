"""Who may do what: pure functions over facts the services load. No I/O, no clock, no awaits.

Rules are numbered after DESIGN and checked in that order: the order decides which code a caller sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from agent_rooms_mcp.errors import (
    ErrorCode,
    RoomsError,
    conflict,
    forbidden,
    forbidden_scope,
    invalid,
    not_found,
    unauthenticated,
)
from agent_rooms_mcp.models import Relation
from agent_rooms_mcp.principals import AgentTool, Caller, Human, Scope, Viewer
from agent_rooms_mcp.run_states import Outcome, RunState


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


class TaskStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


# Forward along open -> in_progress -> done, back from in_progress to open (work handed back), and
# cancelled from anywhere not finished. done and cancelled are final.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.OPEN: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.OPEN, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.DONE: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def require_scope(caller: Caller, scope: Scope) -> None:
    """DESIGN §2: a call without its tool's scope gets FORBIDDEN_SCOPE, before anything is looked up."""
    if scope not in caller.scopes:
        raise forbidden_scope(scope.value)


def run_room(caller: Caller) -> str | None:
    """The one room a run token may see and act in, or None for an agent's own token (DESIGN §2).

    Every room a run was not woken in answers as if the agent were not a member (NOT_FOUND, invariant 87),
    and every listing it makes is cut to this room.
    """
    return caller.run_room_id if caller.run_id is not None else None


def reaches_room(caller: Caller, room_id: str) -> bool:
    """May this credential see room_id, given that its agent is a member? A run only its own room."""
    bound = run_room(caller)
    return bound is None or bound == room_id


def may_use_run_socket(caller: Caller, socket_run_id: str) -> bool:
    """A run's bridge socket (DESIGN §5) admits that run's token and no other credential: not another run's,
    not the agent's own. Anything else is refused like a bad token (401), since the socket is the run's alone.
    """
    return caller.run_id is not None and caller.run_id == socket_run_id


def owns_agent(caller: Caller, agent_owner_id: str) -> bool:
    """An agent acts on its own owner's agents only; any other answers NOT_FOUND, as a missing one (invariant 82)."""
    return agent_owner_id == caller.owner_id


def relation(caller: Viewer, agent_id: str, owner_id: str) -> Relation:
    """DESIGN §3 provenance: how the author of an item stands to the caller."""
    if agent_id == caller.agent_id:
        return "self"
    if owner_id == caller.owner_id:
        return "same_owner"
    return "cross_owner"


# A run token lives while its run does: queued runs have none yet, and an ended run's token is dead.
RUN_TOKEN_LIVE_STATES = frozenset({"running", "stopping"})


@dataclass(frozen=True, slots=True)
class CredentialNow:
    """A credential as it stands inside a write transaction, for `credential_holds` (invariant 34)."""

    expired: bool
    run_state: str | None  # the run's state for a run token, None for an agent's own token
    scopes: frozenset[Scope]  # what it holds now: the agent's scopes, narrowed for a run token


def credential_holds(now: CredentialNow | None, scope: Scope) -> None:
    """Inside a write, the credential and scope must still hold, not only when the call began: a revoked or
    expired token, a stopped agent (None: no live token row) or an ended run answers UNAUTHENTICATED, a lost
    scope FORBIDDEN_SCOPE."""
    if now is None or now.expired or (now.run_state is not None and now.run_state not in RUN_TOKEN_LIVE_STATES):
        raise unauthenticated("revoked_during_call")
    if scope not in now.scopes:
        raise forbidden_scope(scope.value)


def device_holds(revoked: bool, expired: bool) -> None:
    """Inside a write an owner action makes from a device, the device must still be enrolled: one revoked or
    gone idle since its request authenticated answers UNAUTHENTICATED, and the write rolls back."""
    if revoked or expired:
        raise unauthenticated("device_revoked_during_call")


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
    collaborator_id: str | None = None
    # trust_room trusts the owners who were in the room when the mode was set, not later arrivals:
    # anyone with `manage` in the room can invite a stranger, and that must not widen the trust.
    proposer_trusted_by_room: bool = False


def starts_accepted(standing: Standing, proposer_owner_id: str) -> bool:
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


def agent_may_set_mode(current: Standing, chosen: ConsentMode, collaborator_id: str | None) -> None:
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

    owner_id: str
    grant_id: str | None  # the active grant from the target's owner to this owner
    verified: bool  # this owner and the target's owner both
    standing: Standing  # the target owner's mode, as it stands towards this owner


@dataclass(frozen=True, slots=True)
class CrossOwner:
    """Facts about one agent acting on another's agent: giving it a task, or mentioning it so it would wake."""

    actor: Caller
    target_owner_id: str
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

    decider_owner_id: str
    proposal_state: ProposalState
    proposer_owner_id: str
    target_owner_id: str
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


@dataclass(frozen=True, slots=True)
class TaskAction:
    """Facts about an agent acting on an existing task: a status change, a note, an edit or a reassignment."""

    actor: Caller
    creator_id: str
    assignee_id: str | None
    status: TaskStatus
    consent_state: ConsentState


def act_on_task(f: TaskAction, *, new_status: TaskStatus | None = None, edits: bool = False) -> None:
    """Only the creator or the assignee acts on a task; the assignee only once its owner agreed."""
    is_creator = f.actor.agent_id == f.creator_id
    is_assignee = f.assignee_id is not None and f.actor.agent_id == f.assignee_id
    # 1. Scope, then whose task it is.
    require_scope(f.actor, Scope.TASK)
    if not (is_creator or is_assignee):
        raise forbidden("only the task's creator or its assignee may change it")
    # 2. Finished tasks stay finished.
    if f.status not in (TaskStatus.OPEN, TaskStatus.IN_PROGRESS):
        raise conflict(f"the task is {f.status}; it cannot change any more")
    # 3. The title and body are the creator's words.
    if edits and not is_creator:
        raise forbidden("only the task's creator may edit its title or body")
    # 4. Acting on work the owner has not accepted would conscript the owner's agent (DESIGN §7).
    if not is_creator and f.consent_state == ConsentState.PENDING:
        raise RoomsError(ErrorCode.CONSENT_PENDING, "your owner has not accepted this task yet")
    if not is_creator and f.consent_state == ConsentState.REJECTED:
        raise conflict("your owner rejected this task")
    # 5. The status moves along the board.
    if new_status is not None and new_status not in TRANSITIONS[f.status]:
        raise conflict(f"a task cannot go from {f.status} to {new_status}")


# Owner actions from a device (DESIGN §2, §9.1). The operator at the hub's CLI acts for any owner; an owner on
# a device acts only on their own things. Naming another owner as yourself is FORBIDDEN_SCOPE (owners are no
# secret: the device knows who it is); naming another owner's agent, token, room or device is NOT_FOUND, as
# for one that does not exist (invariant 82).

# What only the operator does, on the hub's machine: a device asking for one of these is refused by name.
OPERATOR_ACTIONS = frozenset(
    {
        "owner.add",
        "owner.enroll",
        "owner.verify",
        "owner.unverify",
        "owner.list",
        "owner.remove",
        "agent.env.set",
        "agent.env.unset",
        "agent.env.list",
        "room.remove",
        "run.log",
        "audit.verify",
        "audit.checkpoint",
        "purge",
        "room.quarantine",
        "room.export",
    }
)


def acts_for(who: Human, owner_id: str) -> bool:
    """Whether `who` may act on things of owner `owner_id`."""
    return who.owner_id is None or who.owner_id == owner_id


def acting_for(who: Human, owner_id: str, owner_is_local: bool) -> Human:
    """Who acts on a thing of owner `owner_id`, as its audit rows will say (DESIGN §2): the operator acting
    for an owner who is not local to the hub acts on that owner's behalf; anyone else acts as themselves."""
    if who.is_operator and not owner_is_local:
        return Human(replace(who.actor, on_behalf_of=owner_id), who.owner_id, who.device_id)
    return who


def require_self(who: Human, owner_id: str, handle: str) -> None:
    """`who` names owner `handle` as the one acting (`--owner`, `--from`, `--by`): only themselves."""
    if not acts_for(who, owner_id):
        raise forbidden(f"this device acts for its own owner only, not for {handle}")


def require_own(who: Human, owner_id: str, kind: str) -> None:
    """`who` names a thing of owner `owner_id`: another owner's looks missing (invariant 82)."""
    if not acts_for(who, owner_id):
        raise not_found(kind)


def require_not_operator_action(name: str) -> None:
    if name in OPERATOR_ACTIONS:
        raise forbidden(f"{name} is an operator action: run it with the agent-rooms CLI on the hub's machine")


def require_operator(what: str) -> None:
    """Something only the operator sets, on the hub's machine (DESIGN §5: a hub-spawned run's workdir)."""
    raise forbidden(f"{what} is the operator's to set, on the hub's machine")


def may_revoke_device(who: Human, device_owner_id: str, device_id: str) -> None:
    """The operator revokes any device; a device revokes only itself (DESIGN §9.1): another device of the same
    owner is a console or operator action, another owner's device does not exist for it."""
    if who.is_operator or who.device_id == device_id:
        return
    require_own(who, device_owner_id, "device")
    raise forbidden("a device may revoke only itself; revoke another one at the console or on the hub's machine")


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


def mention_effect(actor_agent_id: str, member_agent_id: str, *, others_cross: bool) -> MentionEffect:
    """DESIGN §3.1: mentioning oneself only notifies; an agent whose owner's words are the only ones in the
    post is woken as its owner's own; any other owner's words make it a request. Whether a tool can be spawned
    at all is asked only after that request is judged, so a refusal reveals nothing about the target."""
    if actor_agent_id == member_agent_id:
        return MentionEffect.NOTIFY
    return MentionEffect.PROPOSE if others_cross else MentionEffect.WAKE


def whose_words_cross(causers: frozenset[str], target_owner_id: str) -> tuple[str, ...]:
    """DESIGN §4 "Causers": every owner whose words reach the target's agent other than its own owner, in a
    fixed order. Empty means nothing crosses an owner boundary and there is nothing to consent to."""
    return tuple(sorted(c for c in causers if c != target_owner_id))


def may_decide(caller: Caller) -> None:
    """Only an agent holding `consent` decides for its owner, and never from a woken run: a run acts on
    someone's words, and letting it decide would let those words consent to themselves (DESIGN §2).
    `held_scopes` already withholds the scope from run tokens; this holds even if that changed."""
    require_scope(caller, Scope.CONSENT)
    if caller.run_id is not None:
        raise forbidden_scope(Scope.CONSENT.value)


def sees_proposal(viewer_owner_id: str, target_owner_id: str, *, viewer_in_room: bool) -> bool:
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
# The operator's and owners' rules for consent modes, rooms, grants and tasks handed on.
# ---------------------------------------------------------------------------------------------------------------


def check_mode_choice(
    chosen: ConsentMode,
    owner_id: str,
    *,
    collaborator: str | None,
    collaborator_id: str | None,
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
    previous: tuple[ConsentMode, str | None] | None, chosen: ConsentMode, collaborator_id: str | None
) -> bool:
    """Setting the mode already in force (task_by_task when none was ever set) changes nothing: above all it
    must not move trust_room's moment forward and so silently trust owners who arrived since."""
    if previous is None:
        return chosen is ConsentMode.TASK_BY_TASK
    return previous == (chosen, collaborator_id)


def require_owner_in_room(in_room: bool, field: str, owner: str, room: str, way_out: str = "") -> None:
    """The operator acts for an owner in a room (a consent mode, an invite, an agent brought in directly) only
    if that owner is in it; anyone else comes in through an invite."""
    if not in_room:
        raise invalid(field, f"{owner} is not in room {room}{way_out}")


def require_own_agent(agent_owner_id: str, owner_id: str, agent: str) -> None:
    """An owner brings only their own agents into a room; another owner's come with that owner's invite."""
    if agent_owner_id != owner_id:
        raise invalid("agent", f"{agent} does not belong to this owner")


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """Facts about one owner granting another: handles for the messages, who is unverified, any active grant."""

    giver_id: str
    taker_id: str
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
            f"verify {' and '.join(f.unverified)} first: agent-rooms owner verify HANDLE",
        )
    if f.already_granted:
        raise conflict(f"{f.giver} already grants {f.taker}")


def may_reassign(target_agent_id: str, assignee_id: str | None, consent_state: ConsentState, target: str) -> None:
    """Asking the same agent again renews a request still open or turned down (say, after a new grant); work
    its owner already agreed to needs no asking."""
    if target_agent_id == assignee_id and consent_state in (ConsentState.AUTO, ConsentState.ACCEPTED):
        raise conflict(f"the task is already assigned to {target}")


def task_wakes(state: ConsentState, assignee_id: str, actor_agent_id: str) -> bool:
    """Agreed work wakes its assignee (its owner's own, or accepted), unless the assignee is the one handing
    it over: an agent never wakes itself."""
    return state in (ConsentState.AUTO, ConsentState.ACCEPTED) and assignee_id != actor_agent_id


# --- Runs and wakes (DESIGN §5, §6) ------------------------------------------------------------------------

# The tools a supervisor can start headless; `chat` and `other` agents are pull-only and never spawned.
SPAWNABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX, AgentTool.OPENCLAW})
# The tools whose wake can run read-only. OpenClaw has no read-only mode to hold a wake another owner caused.
CONSTRAINABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX})


def waiting_state(owner_local: bool) -> RunState:
    """Where a new wake waits (DESIGN §5 "Where a wake runs"): the hub's own supervisor spawns only local
    owners' agents; any other owner's wake waits for that owner's listener. Without this rule a remote owner
    could point an agent at `/` with the sandbox off and run code on the hub."""
    return RunState.QUEUED if owner_local else RunState.WAITING_FOR_LISTENER


def listener_refusal(*, named: bool, wake: bool, cross_owner: bool, accepts_cross_owner: bool,
                     sandboxed: bool, workdir_inside_root: bool) -> str | None:  # fmt: skip
    """Why a listener refuses a claimed wake by its owner's local policy (DESIGN §9.1, listen.toml), or None.
    The hub's word never widens it: an agent the file does not name, or says may not be woken, never runs;
    a wake another owner's words caused runs only where the file accepts them, and only in a sandbox (DESIGN
    §5: else `sandbox_required`, a failed run); a workdir must lie under the allowed root when the run
    starts. Any other reason becomes the run's `withdrawn:` outcome, which the causer sees."""
    if not named:
        return "not_in_local_policy"
    if not wake:
        return "not_wakeable_here"
    if cross_owner and not accepts_cross_owner:
        return "cross_owner_refused_here"
    if (refused := sandbox_refusal(cross_owner=cross_owner, sandbox=sandboxed)) is not None:
        return refused
    if not workdir_inside_root:
        return "workdir_outside_root"
    return None


def cross_owner_wake(owner_id: str, causers: Iterable[str], words_cross_owner: bool) -> bool:
    """Did anyone but the agent's own owner cause this wake, or write the words it carries?"""
    return words_cross_owner or any(causer != owner_id for causer in causers)


def sandbox_refusal(*, cross_owner: bool, sandbox: bool) -> Outcome | None:
    """DESIGN §5: a wake with any causer other than its own owner runs only inside a sandbox; an agent whose
    owner turned its sandbox off is then refused, never run open. The same rule on the hub and a listener."""
    return Outcome.SANDBOX_REQUIRED if cross_owner and not sandbox else None


def spawn_refusal(*, as_root: bool, run_as_set: bool, cross_owner: bool, sandbox: bool) -> Outcome | None:
    """Why a supervisor refuses to start this CLI at all (DESIGN §5), or None. Never root: a root supervisor
    starts CLIs only as its configured unprivileged user, and only in the sandbox, which alone can give that
    user the run's own directory without opening the hub's home to it."""
    if (refused := sandbox_refusal(cross_owner=cross_owner, sandbox=sandbox)) is not None:
        return refused  # what another owner's wake needed, said to its causer first
    if as_root and not (run_as_set and sandbox):
        return Outcome.ROOT_REFUSED
    return None


def sandbox_broken(*, cross_owner: bool) -> Outcome:
    """What a run whose sandbox probe failed ends with: it never runs unsandboxed (`sandbox_unavailable`), and
    a wake another owner caused says that it needed one (`sandbox_required`, which its causer sees)."""
    return Outcome.SANDBOX_REQUIRED if cross_owner else Outcome.SANDBOX_UNAVAILABLE


# What no workdir may be or lie in: the kernel's and the system's own trees.
_SYSTEM_TREES = tuple(Path(p) for p in ("/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/boot", "/var/run"))


def workdir_exposure(workdir: Path, *, hub_home: Path, user_home: Path, own_default: Path | None = None) -> str | None:
    """Why a sandboxed run must not work in `workdir` (resolved), or None. Bound read-write, a workdir of `/`,
    of a home or of the hub's home would hand the CLI everything the sandbox hides: keys, the database, the
    owner's own ~/.claude. The one exception is the run's own default workdir (`own_default`, under the hub's
    home), which only the supervisor passes: no agent may be pointed at another's, which a purge removes."""
    if own_default is not None and workdir == own_default:
        return None
    for secret in (hub_home, user_home):
        if workdir == secret:
            return f"{workdir} is a home ({secret}), which no woken CLI may see"
        if workdir in secret.parents:
            return f"{workdir} contains {secret}, which no woken CLI may see"
    if hub_home in workdir.parents:
        return f"{workdir} lies inside the hub's home {hub_home}"
    for tree in _SYSTEM_TREES:
        if workdir == tree or tree in workdir.parents:
            return f"{workdir} is a system directory"
    return None


def spawnable(tool: AgentTool) -> bool:
    return tool in SPAWNABLE


def constrainable(tool: AgentTool) -> bool:
    """Can a wake of this tool run read-only? Tools never spawned have nothing to constrain."""
    return tool in CONSTRAINABLE or tool not in SPAWNABLE


@dataclass(frozen=True, slots=True)
class WakeTask:
    """A task wake's task, as loaded where the wake is re-checked."""

    status: TaskStatus | None  # None: the task is gone
    still_assigned: bool  # assigned to the woken agent, under the proposal the wake runs
    payload_bound: bool  # the wake holds the hash of the words agreed to
    words_unchanged: bool  # the task's words still hash to it


@dataclass(frozen=True, slots=True)
class WakeFacts:
    """Everything a wake needed when it was proposed, loaded again where it is claimed or while it runs
    (DESIGN §4 "Starts means the claim")."""

    agent_active: bool
    holds_invoke: bool
    member: bool  # the agent is still in the wake's room
    room_quarantined: bool
    crossers: tuple[Crosser, ...]  # every causer's owner other than the agent's own
    runs_proposal: bool  # the wake runs an accepted proposal
    proposal_accepted: bool  # that proposal still stands accepted
    auto_accepted: bool  # a consent mode, not a person, accepted it
    task: WakeTask | None  # set for a task wake


def withdrawal_reason(f: WakeFacts, *, started: bool) -> str | None:
    """Why a wake may no longer run (the `withdrawn:<reason>` it ends with), or None.

    Before the start (`started` False) that includes the consent mode that auto-accepted it, and the task
    still open and assigned to it; during the run, only the changes that stop it: the agent, `invoke`,
    membership, quarantine, a grant or verification, the proposal, the task cancelled or its words edited.
    A reassignment during a run is stopped where it happens, so the run that hands its own task on is not
    stopped by it."""
    if not f.agent_active:
        return "agent_deleted"
    if not f.holds_invoke:
        return "invoke_revoked"
    if not f.member:
        return "membership_ended"
    if f.room_quarantined:
        return "room_quarantined"
    if any(c.grant_id is None for c in f.crossers):
        return "grant_revoked"
    if not all(c.verified for c in f.crossers):
        return "identity_unverified"
    if f.runs_proposal:
        if not f.proposal_accepted:
            return "consent_withdrawn"
        if not started and f.auto_accepted and not still_accepted(f.crossers):
            return "consent_mode_changed"
    if f.task is not None:
        if f.task.status is None or f.task.status == TaskStatus.CANCELLED:
            return "task_cancelled"
        if not started and f.task.status == TaskStatus.DONE:
            return "task_done"
        if not started and not f.task.still_assigned:
            return "reassigned"
        if not f.task.payload_bound:  # queued before wakes were bound: what was agreed cannot be shown
            return "payload_unbound"
        if not f.task.words_unchanged:
            return "edited"
    return None


@dataclass(frozen=True, slots=True)
class RunHold:
    """Who holds a run now, loaded where its token is minted."""

    state: RunState
    holder: str | None
    lease: int
    stop_requested: bool


def run_token_refusal(now: RunHold | None, holder: str | None, lease: int) -> str | None:
    """Why no token may be minted for a run claimed by (`holder`, `lease`), or None.

    The token is minted just after the claim, in a transaction of its own. A quarantine, delete, stop or
    another supervisor's recovery landing between the two revoked the tokens the run had then, none; a token
    minted after would outlive the switch that ended its run (invariants 77, 93, 103)."""
    if now is None:
        return "the run no longer exists"
    if now.state != RunState.RUNNING or now.stop_requested:
        return f"the run is {now.state.value}{' with a stop asked for' if now.stop_requested else ''}"
    if (now.holder, now.lease) != (holder, lease):
        return "another claim holds the run now"
    return None


# DESIGN §5, Network: where a sandboxed run's egress proxy lets the CLI go. Each CLI's model API (Codex's
# ChatGPT login calls chatgpt.com's backend and refreshes at auth.openai.com), the hosts of the base URLs
# its environment names, and the hub when the bridge reaches it over the network (a listener's runs).
MODEL_API_HOSTS: Mapping[AgentTool, frozenset[tuple[str, int]]] = {
    AgentTool.CLAUDE: frozenset({("api.anthropic.com", 443)}),
    AgentTool.CODEX: frozenset({("api.openai.com", 443), ("chatgpt.com", 443), ("auth.openai.com", 443)}),
}
BASE_URL_VARS: Mapping[AgentTool, tuple[str, ...]] = {
    AgentTool.CLAUDE: ("ANTHROPIC_BASE_URL",),
    AgentTool.CODEX: ("OPENAI_BASE_URL",),
    AgentTool.OPENCLAW: ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"),
}
# OpenClaw talks to whichever providers the owner gave it keys for (research/wake.md §3, --auth-env-only):
# a provider's API host is reachable when its key variable is in the run's environment.
OPENCLAW_PROVIDER_HOSTS: Mapping[str, tuple[str, int]] = {
    "ANTHROPIC_API_KEY": ("api.anthropic.com", 443),
    "OPENAI_API_KEY": ("api.openai.com", 443),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com", 443),
    "GOOGLE_API_KEY": ("generativelanguage.googleapis.com", 443),
    "OPENROUTER_API_KEY": ("openrouter.ai", 443),
    "MISTRAL_API_KEY": ("api.mistral.ai", 443),
    "GROQ_API_KEY": ("api.groq.com", 443),
    "XAI_API_KEY": ("api.x.ai", 443),
}


def _url_host(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, or None for anything else (the CLI would fail on it anyway)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def allowed_hosts(tool: AgentTool, env: Mapping[str, str], hub_url: str | None) -> frozenset[tuple[str, int]]:
    """The (host, port) pairs a sandboxed run of `tool` may reach through its egress proxy.

    `env` is the run's own environment (its base URL and provider key variables); `hub_url` the hub's
    URL when the run's bridge goes over the network, None when it uses the run directory's socket.
    """
    hosts = set(MODEL_API_HOSTS.get(tool, frozenset()))
    if tool == AgentTool.OPENCLAW:
        named = {OPENCLAW_PROVIDER_HOSTS[name] for name in env if name in OPENCLAW_PROVIDER_HOSTS}
        # No key in the environment: its stored auth profiles are Anthropic's or OpenAI's.
        hosts |= named or {("api.anthropic.com", 443), ("api.openai.com", 443)}
    for name in BASE_URL_VARS.get(tool, ()):
        if (where := _url_host(env.get(name, ""))) is not None:
            hosts.add(where)
    if hub_url is not None and (where := _url_host(hub_url)) is not None:
        hosts.add(where)
    return frozenset(hosts)
