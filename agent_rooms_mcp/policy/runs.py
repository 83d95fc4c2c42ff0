"""Runs and wakes (DESIGN §5, §6): which tools are spawned or constrained, where a wake waits, why a
supervisor or a listener refuses one, which workdirs a sandboxed run may use, and why a wake is withdrawn."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent_rooms_mcp.policy.consent import Crosser, still_accepted
from agent_rooms_mcp.policy.tasks import TaskStatus
from agent_rooms_mcp.principals import AgentTool
from agent_rooms_mcp.run_states import Outcome, RunState

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
