"""Who may act on a task on the board, how its status moves, and when handing it over wakes its assignee."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent_rooms_mcp.errors import ErrorCode, RoomsError, conflict, forbidden
from agent_rooms_mcp.ids import AgentId
from agent_rooms_mcp.policy.consent import ConsentState
from agent_rooms_mcp.policy.core import require_scope
from agent_rooms_mcp.principals import Caller, Scope


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


@dataclass(frozen=True, slots=True)
class TaskAction:
    """Facts about an agent acting on an existing task: a status change, a note, an edit or a reassignment."""

    actor: Caller
    creator_id: AgentId
    assignee_id: AgentId | None
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


def may_reassign(
    target_agent_id: AgentId, assignee_id: AgentId | None, consent_state: ConsentState, target: str
) -> None:
    """Asking the same agent again renews a request still open or turned down (say, after a new grant); work
    its owner already agreed to needs no asking."""
    if target_agent_id == assignee_id and consent_state in (ConsentState.AUTO, ConsentState.ACCEPTED):
        raise conflict(f"the task is already assigned to {target}")


def task_wakes(state: ConsentState, assignee_id: AgentId, actor_agent_id: AgentId) -> bool:
    """Agreed work wakes its assignee (its owner's own, or accepted), unless the assignee is the one handing
    it over: an agent never wakes itself."""
    return state in (ConsentState.AUTO, ConsentState.ACCEPTED) and assignee_id != actor_agent_id
