"""Withdrawing wakes (DESIGN §4, §6): the facts a wake needed, loaded again where it is claimed and while it
runs, judged by `policy.withdrawal_reason`; and the writes that end a withdrawn wake or stop its run."""

from __future__ import annotations

import sqlite3

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.principals import Scope, held_scopes
from agent_rooms_mcp.run_states import HELD_STATES, WAITING_STATES, RunState, Trigger, sql_words, withdrawn
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.rows import TaskRow, WakeRow


def room_quarantined(conn: sqlite3.Connection, room_id: str) -> bool:
    """The one place the claim and a running wake ask whether their room was quarantined (DESIGN §6)."""
    row = conn.execute("SELECT quarantined_at FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    return row is None or row["quarantined_at"] is not None


def wake_facts(conn: sqlite3.Connection, run: WakeRow) -> policy.WakeFacts:
    """What `policy.withdrawal_reason` judges, read in the caller's transaction."""
    agent = conn.execute("SELECT status, scopes FROM agents WHERE agent_id = ?", (run.agent_id,)).fetchone()
    member = conn.execute(
        "SELECT 1 FROM room_agents WHERE room_id = ? AND agent_id = ?", (run.room_id, run.agent_id)
    ).fetchone()
    crossers = crossing.crossers(conn, run.room_id, run.owner_id, run.causers)
    proposal = None
    if run.proposal_id is not None:
        proposal = conn.execute(
            "SELECT state, decided_via FROM proposals WHERE proposal_id = ?", (run.proposal_id,)
        ).fetchone()
    task = None
    if run.trigger == Trigger.TASK:
        row = queries.task(conn, run.cause_id)
        task = policy.WakeTask(
            status=row.status if row else None,
            still_assigned=bool(row and row.assignee_id == run.agent_id and row.proposal_id == run.proposal_id),
            payload_bound=run.payload_sha256 is not None,
            words_unchanged=bool(row and crossing.task_digest(row, run.agent_id) == run.payload_sha256),
        )
    return policy.WakeFacts(
        agent_active=agent is not None and agent["status"] == "active",
        holds_invoke=agent is not None and Scope.INVOKE in held_scopes(agent["scopes"], None),
        member=member is not None,
        room_quarantined=room_quarantined(conn, run.room_id),
        crossers=tuple(crossers),
        runs_proposal=run.proposal_id is not None,
        proposal_accepted=proposal is not None and proposal["state"] == "accepted",
        auto_accepted=proposal is not None and proposal["decided_via"] == "mode",
        task=task,
    )


def withdrawal(conn: sqlite3.Connection, run: WakeRow, *, started: bool) -> str | None:
    """Why a wake may no longer run, re-checked against everything it needed (DESIGN §4), or None."""
    return policy.withdrawal_reason(wake_facts(conn, run), started=started)


def withdraw_task_wakes(
    conn: sqlite3.Connection, actor: Actor, task: TaskRow, reason: str, *, keep_run_id: str | None
) -> None:
    """An edit, reassignment or cancellation of a task withdraws the wakes it queued, in the same
    transaction, and asks the supervisor to stop those already running (invariant 77). The run making the
    change (`keep_run_id`, an assignee handing its own task on) goes on."""
    rows = conn.execute(
        f"SELECT run_id, state FROM runs WHERE trigger = ? AND cause_id = ?"
        f" AND state IN ({sql_words(*WAITING_STATES, *HELD_STATES)}) AND run_id IS NOT ?",
        (Trigger.TASK, task.task_id, keep_run_id),
    ).fetchall()
    if not rows:
        return
    now = now_utc()
    for row in rows:
        withdraw(conn, row["run_id"], row["state"], reason, now)
    audit.append(
        conn,
        actor,
        "run.withdraw",
        target=task.room_id,
        detail={"task_id": task.task_id, "reason": reason, "runs": [r["run_id"] for r in rows]},
    )


def withdraw(conn: sqlite3.Connection, run_id: str, state: str, reason: str, now: str) -> None:
    """A wake nobody holds ends `withdrawn` at once; a running one is marked for the supervisor to stop,
    and ends `withdrawn` when it has."""
    if state in WAITING_STATES:
        conn.execute(
            "UPDATE runs SET state = ?, outcome = ?, withdraw_reason = ?, ended_at = ? WHERE run_id = ?",
            (RunState.WITHDRAWN, withdrawn(reason), reason, now, run_id),
        )
    else:
        conn.execute(
            "UPDATE runs SET state = ?, withdraw_reason = coalesce(withdraw_reason, ?),"
            " stop_requested_at = coalesce(stop_requested_at, ?) WHERE run_id = ?",
            (RunState.STOPPING, reason, now, run_id),
        )
        # The stop ladder takes seconds; the run's words stop counting now, so its token dies with the
        # withdrawal rather than when the process does (invariants 77, 103).
        revoke_run_tokens(conn, run_id, now)


def revoke_run_tokens(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE run_id = ? AND revoked_at IS NULL", (now, run_id))
