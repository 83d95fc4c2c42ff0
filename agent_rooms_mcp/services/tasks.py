"""The task board (DESIGN §4): tasks in a room, handed between agents, with consent where owners differ.

Each call is one transaction: load the task and the facts, let `policy` judge, write the task and any
proposal, append one audit row. A task given to another owner's agent carries a proposal whose
payload (title, body, assignee) is what that owner decides on; changing any of it makes a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from agent_rooms_mcp import audit, content, policy
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import invalid, too_large
from agent_rooms_mcp.ids import ProposalId, RoomId, TaskId
from agent_rooms_mcp.models import Author, Task, TaskList, TaskView, WakeRequest
from agent_rooms_mcp.policy import ConsentState, ProposalKind, ProposalState, TaskStatus
from agent_rooms_mcp.principals import Caller, Scope
from agent_rooms_mcp.results import result_bytes
from agent_rooms_mcp.run_states import Trigger
from agent_rooms_mcp.services import crossing, proposals, runs, withdrawal
from agent_rooms_mcp.services.render import cut_page, flags_of, notice, render, within_bytes
from agent_rooms_mcp.settings import Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import MemberAgent, TaskRow

_TASKS = (
    "SELECT t.*, r.name AS room_name, p.reason AS consent_reason, p.decided_via, p.decided_by,"
    " c.handle AS c_handle, c.tool AS c_tool, co.handle AS c_owner,"
    " a.handle AS a_handle, a.tool AS a_tool, ao.handle AS a_owner,"
    " n.handle AS n_handle, n.tool AS n_tool, n.owner_id AS n_owner_id, nbo.handle AS n_owner,"
    " d.handle AS d_handle, d.tool AS d_tool"
    " FROM tasks t JOIN rooms r ON r.room_id = t.room_id"
    " JOIN agents c ON c.agent_id = t.creator_id JOIN owners co ON co.owner_id = t.creator_owner_id"
    " LEFT JOIN agents a ON a.agent_id = t.assignee_id LEFT JOIN owners ao ON ao.owner_id = t.assignee_owner_id"
    " LEFT JOIN agents n ON n.agent_id = t.note_by LEFT JOIN owners nbo ON nbo.owner_id = n.owner_id"
    " LEFT JOIN proposals p ON p.proposal_id = t.proposal_id LEFT JOIN agents d ON d.agent_id = p.decided_by"
)


# The caller's owner's requests to wake another owner's agents in a room, newest first.
_WAKES = (
    "SELECT p.proposal_id, p.message_id, p.state, p.reason, p.created_at, p.decided_at, p.decided_by,"
    " p.target_owner_id, t.handle AS t_handle, o.handle AS t_owner, d.handle AS d_handle, d.tool AS d_tool"
    " FROM proposals p JOIN agents t ON t.agent_id = p.target_id JOIN owners o ON o.owner_id = p.target_owner_id"
    " LEFT JOIN agents d ON d.agent_id = p.decided_by"
    " WHERE p.kind = 'wake' AND p.room_id = ? AND p.proposer_owner_id = ? ORDER BY p.created_at DESC LIMIT 20"
)


class Tasks:
    def __init__(self, store: Store, limits: Limits, caps: WakeSettings) -> None:
        self._store = store
        self._limits = limits
        self._caps = caps

    def _check_texts(self, title: str | None, body: str | None, note: str | None) -> None:
        # Blank as readers will see it: a title of invisible characters is no title.
        if title is not None and not content.sanitize(title).text.strip():
            raise invalid("title", "must not be blank")
        if title is not None and len(title) > self._limits.task_title_chars:
            raise too_large("title", self._limits.task_title_chars, "characters")
        if body is not None and len(body.encode("utf-8", "surrogatepass")) > self._limits.message_bytes:
            raise too_large("body", self._limits.message_bytes)
        if note is not None and len(note) > self._limits.note_chars:
            raise too_large("note", self._limits.note_chars, "characters")

    async def create(self, caller: Caller, room_ref: str, title: str, body: str, assignee: str | None) -> TaskView:
        policy.require_scope(caller, Scope.TASK)
        self._check_texts(title, body, None)

        def run(conn: sqlite3.Connection) -> TaskView:
            queries.recheck_caller(conn, caller, Scope.TASK)
            room = queries.room_for_member(conn, room_ref, caller)
            target = queries.member_agent(conn, room.room_id, assignee) if assignee else None
            # The words are the caller's, and, written from a woken run, those of every owner that caused it.
            causers = crossing.of_writer(conn, caller)
            verdict = (
                proposals.judge(conn, caller, room.room_id, target, wake=False, causers=causers)
                if target is not None
                else proposals.Verdict(ConsentState.AUTO, causers)
            )
            task_id, now = new_id("task"), now_utc()
            number = conn.execute(
                "SELECT coalesce(max(number), 0) + 1 FROM tasks WHERE room_id = ?", (room.room_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO tasks (task_id, room_id, number, title, body, creator_id, creator_owner_id,"
                " assignee_id, assignee_owner_id, status, consent_state, causers, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?)",
                (
                    task_id,
                    room.room_id,
                    number,
                    title,
                    body,
                    caller.agent_id,
                    caller.owner_id,
                    target.agent_id if target else None,
                    target.owner_id if target else None,
                    verdict.state.value,
                    crossing.dumps(causers),
                    now,
                    now,
                ),
            )
            proposal_id = _offer(conn, self._caps, caller, room.room_id, task_id, title, body, target, verdict)
            audit.append(
                conn,
                caller.actor,
                "task.create",
                target=room.room_id,
                detail={
                    "task_id": task_id,
                    "assignee_id": target and target.agent_id,
                    **_consent(verdict.state, proposal_id),
                },
            )
            return self._view(conn, caller, task_id)

        return await self._store.write(run, notify=True)

    async def assign(self, caller: Caller, task_ref: str, assignee: str) -> TaskView:
        policy.require_scope(caller, Scope.TASK)

        def run(conn: sqlite3.Connection) -> TaskView:
            queries.recheck_caller(conn, caller, Scope.TASK)
            task = queries.task_for_member(conn, task_ref, caller)
            policy.act_on_task(_action(caller, task))
            target = queries.member_agent(conn, task.room_id, assignee)
            policy.may_reassign(target.agent_id, task.assignee_id, task.consent_state, target.handle)
            # Handed on, the task carries its authors' words and the hander's (invariant 78).
            causers = task.causers | crossing.of_writer(conn, caller)
            verdict = proposals.judge(conn, caller, task.room_id, target, wake=False, causers=causers)
            # A new assignee is a new request: the old one's pending proposal no longer stands, and the wake
            # the old assignee was given is withdrawn (the run handing the task on goes on).
            proposals.close_proposal(conn, task.proposal_id, ProposalState.SUPERSEDED)
            withdrawal.withdraw_task_wakes(conn, caller.actor, task, "reassigned", keep_run_id=caller.run_id)
            proposal_id = _offer(
                conn, self._caps, caller, task.room_id, task.task_id, task.title, task.body, target, verdict
            )
            state = verdict.state
            conn.execute(
                "UPDATE tasks SET assignee_id = ?, assignee_owner_id = ?, consent_state = ?, proposal_id = ?,"
                " status = 'open', updated_at = ? WHERE task_id = ?",
                (target.agent_id, target.owner_id, state.value, proposal_id, now_utc(), task.task_id),
            )
            audit.append(
                conn,
                caller.actor,
                "task.assign",
                target=task.room_id,
                detail={"task_id": task.task_id, "assignee_id": target.agent_id, **_consent(state, proposal_id)},
            )
            return self._view(conn, caller, task.task_id)

        return await self._store.write(run, notify=True)

    async def update(
        self,
        caller: Caller,
        task_ref: str,
        status: str | None,
        note: str | None,
        title: str | None,
        body: str | None,
    ) -> TaskView:
        policy.require_scope(caller, Scope.TASK)
        if status is None and note is None and title is None and body is None:
            raise invalid("status", "give a status, a note, or a new title or body")
        new_status = _status(status)
        self._check_texts(title, body, note)

        def run(conn: sqlite3.Connection) -> TaskView:
            queries.recheck_caller(conn, caller, Scope.TASK)
            task = queries.task_for_member(conn, task_ref, caller)
            moved = new_status if new_status is not None and new_status != task.status else None
            new_title = task.title if title is None else title
            new_body = task.body if body is None else body
            edited = (new_title, new_body) != (task.title, task.body)
            policy.act_on_task(_action(caller, task), new_status=moved, edits=edited)
            state, proposal_id = task.consent_state, task.proposal_id
            # Every owner who ever set the title or body stays among the task's causers.
            causers = task.causers | (crossing.of_writer(conn, caller) if edited else set())
            if moved == TaskStatus.CANCELLED:
                # Cancelled work is withdrawn from whoever was woken for it, queued or running (invariant 77).
                withdrawal.withdraw_task_wakes(conn, caller.actor, task, "task_cancelled", keep_run_id=caller.run_id)
            if moved in (TaskStatus.DONE, TaskStatus.CANCELLED):
                # A finished task asks nothing of anyone any more: no decision may land on it.
                proposals.close_proposal(conn, proposal_id, ProposalState.WITHDRAWN)
            elif edited and task.assignee_id is not None:
                # The owner agreed to the old words, not these: the edit is a new proposal (invariant 45), and
                # the wake queued for the old words is withdrawn, before it starts or while it runs (77).
                withdrawal.withdraw_task_wakes(conn, caller.actor, task, "edited", keep_run_id=caller.run_id)
                target = queries.member_agent(conn, task.room_id, task.assignee_id)
                verdict = proposals.judge(conn, caller, task.room_id, target, wake=False, causers=causers)
                proposals.close_proposal(conn, proposal_id, ProposalState.SUPERSEDED)
                proposal_id = _offer(
                    conn, self._caps, caller, task.room_id, task.task_id, new_title, new_body, target, verdict
                )
                state = verdict.state
            conn.execute(
                "UPDATE tasks SET status = ?, title = ?, body = ?, consent_state = ?, proposal_id = ?, causers = ?,"
                " note = coalesce(?, note), note_by = CASE WHEN ? IS NULL THEN note_by ELSE ? END, updated_at = ?"
                " WHERE task_id = ?",
                (
                    (moved or task.status).value,
                    new_title,
                    new_body,
                    state.value,
                    proposal_id,
                    crossing.dumps(causers),
                    note,
                    note,
                    caller.agent_id,
                    now_utc(),
                    task.task_id,
                ),
            )
            audit.append(
                conn,
                caller.actor,
                "task.update",
                target=task.room_id,
                detail={
                    "task_id": task.task_id,
                    "status": [task.status.value, (moved or task.status).value],
                    "edited": edited,
                    "note": note is not None,
                    **_consent(state, proposal_id),
                },
            )
            return self._view(conn, caller, task.task_id)

        return await self._store.write(run, notify=True)

    async def list_tasks(
        self,
        caller: Caller,
        room_ref: str,
        *,
        status: str | None,
        assignee: str | None,
        consent_state: str | None,
        after: int,
        limit: int,
    ) -> TaskList:
        policy.require_scope(caller, Scope.READ)
        filters = ""
        args: list[str] = []
        if status is not None:
            filters += " AND t.status = ?"
            args.append(_parse_status(status).value)
        if consent_state is not None:
            try:
                args.append(ConsentState(consent_state).value)
            except ValueError:
                raise invalid("consent_state", f"one of {', '.join(ConsentState)}") from None
            filters += " AND t.consent_state = ?"
        if assignee is not None:
            filters += " AND a.handle = ?"
            args.append(assignee)

        def run(conn: sqlite3.Connection) -> TaskList:
            room = queries.room_for_member(conn, room_ref, caller)
            rows = conn.execute(
                _TASKS + " WHERE t.room_id = ? AND t.number > ?" + filters + " ORDER BY t.number LIMIT ?",
                (room.room_id, after, *args, limit + 1),
            ).fetchall()
            wakes = conn.execute(_WAKES, (room.room_id, caller.owner_id)).fetchall()
            tasks, requests, boundary = _render(caller, rows[:limit], wakes)
            empty = TaskList(
                tasks=[],
                next_after=after,
                has_more=True,
                wake_requests=[],
                boundary=boundary,
                notice=notice(boundary),
            )
            cut = cut_page(self._limits, empty, tasks, [t.number for t in tasks], len(rows), after)
            page = empty.model_copy(
                update={"tasks": tasks[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
            )
            # The wake requests are a glance at the newest, not a list to page through: they get the room the
            # tasks leave, so twenty long reasons cannot push a page past the cap.
            room_left = self._limits.page_bytes - self._limits.result_frame_bytes - result_bytes(page)
            shown = within_bytes(requests, room_left, keep_one=False)
            return page.model_copy(update={"wake_requests": requests[:shown]})

        return await self._store.read(run)

    def _view(self, conn: sqlite3.Connection, caller: Caller, task_id: str) -> TaskView:
        [task], _, boundary = _render(caller, conn.execute(_TASKS + " WHERE t.task_id = ?", (task_id,)).fetchall())
        return TaskView(**task.model_dump(), boundary=boundary, notice=notice(boundary))


def _status(status: str | None) -> TaskStatus | None:
    return None if status is None else _parse_status(status)


def _parse_status(status: str) -> TaskStatus:
    try:
        return TaskStatus(status)
    except ValueError:
        raise invalid("status", f"one of {', '.join(TaskStatus)}") from None


def _consent(state: ConsentState, proposal_id: str | None) -> dict[str, Any]:
    return {"consent_state": state.value, "proposal_id": proposal_id}


def _offer(
    conn: sqlite3.Connection,
    caps: WakeSettings,
    caller: Caller,
    room_id: RoomId,
    task_id: str,
    title: str,
    body: str,
    target: MemberAgent | None,
    verdict: proposals.Verdict,
) -> ProposalId | None:
    """Hand the task to `target`: the proposal when another owner's words cross to its agent (None when
    none does), and the wake, in this transaction, once the work is agreed (same owner, or accepted). The
    wake is bound to the payload agreed to and carries every owner whose words are in it."""
    if target is None:
        return None
    payload = crossing.task_payload(task_id, room_id, title, body, target.agent_id)
    proposal_id = None
    if verdict.state != ConsentState.AUTO:
        offer = proposals.Offer(
            kind=ProposalKind.TASK, room_id=room_id, target=target, payload=payload, task_id=TaskId(task_id)
        )
        proposal_id = proposals.record_proposal(conn, caller, offer, verdict)
        conn.execute("UPDATE tasks SET proposal_id = ? WHERE task_id = ?", (proposal_id, task_id))
    if policy.task_wakes(verdict.state, target.agent_id, caller.agent_id):
        cause = runs.Cause(
            Trigger.TASK,
            task_id,
            room_id,
            caller.agent_id,
            caller.run_id,
            causers=verdict.causers,
            proposal_id=proposal_id,
            payload_sha256=crossing.canonical(payload)[1],
        )
        runs.enqueue(conn, caps, target, cause)
    return proposal_id


def _action(caller: Caller, task: TaskRow) -> policy.TaskAction:
    return policy.TaskAction(
        actor=caller,
        creator_id=task.creator_id,
        assignee_id=task.assignee_id,
        status=task.status,
        consent_state=task.consent_state,
    )


def _render(
    caller: Caller,
    rows: Sequence[sqlite3.Row],
    wakes: Sequence[sqlite3.Row] = (),
) -> tuple[list[Task], list[WakeRequest], str | None]:
    """Each task's title and body are its creator's words, its note its note-taker's, and a rejection's
    reason its assignee's owner's: each is sanitised, and enveloped if another owner wrote it. The
    reasons given on wake requests are rendered in the same pass, so one boundary serves the result."""
    sources: list[dict[str, Any]] = []
    texts: list[str] = []
    for r in rows:
        creator = _who(r["creator_id"], r["c_handle"], r["c_tool"], r["creator_owner_id"], r["c_owner"])
        sources += [creator, creator]
        texts += [r["title"], r["body"]]
        if r["note"] is not None:
            sources.append(_who(r["note_by"], r["n_handle"], r["n_tool"], r["n_owner_id"], r["n_owner"]))
            texts.append(r["note"])
        if r["consent_reason"] is not None:
            # Decided by one of the owner's agents, or by the owner at the CLI.
            handle, tool = (r["d_handle"], r["d_tool"]) if r["d_handle"] else (r["a_owner"], "cli")
            sources.append(_who(r["decided_by"], handle, tool, r["assignee_owner_id"], r["a_owner"]))
            texts.append(r["consent_reason"])
    for w in wakes:
        if w["reason"] is not None:
            handle, tool = (w["d_handle"], w["d_tool"]) if w["d_handle"] else (w["t_owner"], "cli")
            sources.append(_who(w["decided_by"], handle, tool, w["target_owner_id"], w["t_owner"]))
            texts.append(w["reason"])
    rendered, boundary = render(caller, sources, texts)
    shown = iter(rendered)
    tasks = []
    for r in rows:
        title, body = next(shown), next(shown)
        note = next(shown) if r["note"] is not None else None
        reason = next(shown) if r["consent_reason"] is not None else None
        tasks.append(
            Task(
                task_id=r["task_id"],
                room=r["room_name"],
                room_id=r["room_id"],
                number=r["number"],
                title=title.text,
                body=body.text,
                creator=title.author,
                relation=title.relation,
                assignee=Author(handle=r["a_handle"], owner=r["a_owner"], tool=r["a_tool"]) if r["a_handle"] else None,
                status=r["status"],
                consent_state=r["consent_state"],
                proposal_id=r["proposal_id"],
                consent_reason=reason.text if reason else None,
                note=note.text if note else None,
                note_by=note.author if note else None,
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                flags=flags_of(title, body, note, reason),
            )
        )
    requests = [
        WakeRequest(
            proposal_id=w["proposal_id"],
            message_id=w["message_id"],
            target=w["t_handle"],
            state=w["state"],
            reason=next(shown).text if w["reason"] is not None else None,
            created_at=w["created_at"],
            decided_at=w["decided_at"],
        )
        for w in wakes
    ]
    return tasks, requests, boundary


def _who(agent_id: str, handle: str, tool: str, owner_id: str, owner_handle: str) -> dict[str, Any]:
    return {"agent_id": agent_id, "handle": handle, "tool": tool, "owner_id": owner_id, "owner_handle": owner_handle}
