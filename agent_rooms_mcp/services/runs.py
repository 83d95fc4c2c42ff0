"""Wakes in the database (DESIGN §5): the durable outbox other services write into, and the caps.

Beside it: `run_control` (what agents and owners see of runs, and stop requests), `withdrawal` (the re-check
a wake passes where it is claimed and while it runs) and `runbook` (the supervisor's wake book).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.ids import AgentId, ProposalId, RoomId, RunId
from agent_rooms_mcp.principals import Scope
from agent_rooms_mcp.run_states import (
    HELD_STATES,
    WAITING_STATES,
    Outcome,
    RunState,
    Trigger,
    sql_words,
    waiting_code,
)
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store.rows import MemberAgent

_QUEUED, _HELD, _WAITING = sql_words(RunState.QUEUED), sql_words(*HELD_STATES), sql_words(*WAITING_STATES)

RUNS_SELECT = (
    "SELECT r.rowid AS position, r.*, a.handle, a.tool, a.workdir, a.sandbox, m.name AS room_name,"
    " o.handle AS owner_handle"
    " FROM runs r"
    " JOIN agents a ON a.agent_id = r.agent_id JOIN rooms m ON m.room_id = r.room_id"
    " JOIN owners o ON o.owner_id = r.owner_id"
)


def _charged_to(run: str, owner: str) -> str:
    """SQL: is the wake `run` (a table alias) charged to `owner` (an SQL expression)? DESIGN §5 charges the
    queue and spawn-rate caps to the owners whose words caused a wake when they are others than its agent's
    owner, so one owner cannot spend another's budget; a wake no other owner's words caused is its own
    owner's charge."""
    return (
        f"(EXISTS (SELECT 1 FROM json_each({run}.causers) j WHERE j.value = {owner} AND j.value <> {run}.owner_id)"
        f" OR ({run}.owner_id = {owner}"
        f" AND NOT EXISTS (SELECT 1 FROM json_each({run}.causers) j WHERE j.value <> {run}.owner_id)))"
    )


# The owners a wake r is charged to (see _charged_to), as a one-column query.
_CHARGED_OWNERS_OF_R = (
    "SELECT j.value AS owner FROM json_each(r.causers) j WHERE j.value <> r.owner_id"
    " UNION SELECT r.owner_id WHERE NOT EXISTS (SELECT 1 FROM json_each(r.causers) k WHERE k.value <> r.owner_id)"
)

# What frees a wake wherever it runs: its not-before time passed, no spawn-rate minute of an owner it is
# charged to is full (`_charged_to`), and no back-off holds its (owner, tool).
_SPAWN_RATE_AND_BACKOFF = (
    " AND (r.not_before IS NULL OR r.not_before <= :now)"
    f" AND NOT EXISTS (SELECT 1 FROM ({_CHARGED_OWNERS_OF_R}) c WHERE"
    f"      (SELECT count(*) FROM runs x WHERE x.started_at >= :minute_ago AND {_charged_to('x', 'c.owner')})"
    "       >= :per_minute)"
    " AND NOT EXISTS (SELECT 1 FROM backoffs b WHERE b.owner_id = r.owner_id AND b.tool = a.tool"
    "      AND b.not_before > :now)"
)

# The one statement of DESIGN §5's caps for the hub's own supervisor: a queued run r (of agent a) may start
# now if no cap or back-off holds it. `claim` picks by it and `enqueue` reports by it, so the two cannot
# disagree. Running caps are where the run executes (its agent's owner); the spawn rate is charged as the
# queue is (`_charged_to`).
STARTABLE = (
    # A deleted agent's wake is picked too: the claim's re-check ends it `withdrawn`, so it never waits forever.
    f" r.state = {_QUEUED}"
    # Only a local owner's agent is ever spawned here (invariant 99), whatever state a row reached and by
    # which path: checked at the claim itself, not only where a wake is first written.
    " AND EXISTS (SELECT 1 FROM owners lo WHERE lo.owner_id = r.owner_id AND lo.local = 1)"
    f" AND (SELECT count(*) FROM runs x WHERE x.state IN ({_HELD})) < :all"
    f" AND (SELECT count(*) FROM runs x WHERE x.agent_id = r.agent_id AND x.state IN ({_HELD})) < :agent"
    f" AND (SELECT count(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.state IN ({_HELD})) < :owner"
    + _SPAWN_RATE_AND_BACKOFF
)

# The same for a listener `:holder` of owner `:owner_id` (DESIGN §9.1): only that owner's wakes waiting for a
# listener, only of agents this listener holds now, under the listener's own running caps (caps apply where
# the run executes); the spawn rate and back-offs are the hub's, since they are charged across owners.
LISTENER_STARTABLE = (
    f" r.state = {sql_words(RunState.WAITING_FOR_LISTENER)} AND r.owner_id = :owner_id"
    " AND EXISTS (SELECT 1 FROM listener_holds h WHERE h.agent_id = r.agent_id AND h.holder = :holder"
    "      AND h.until > :now)"
    f" AND (SELECT count(*) FROM runs x WHERE x.lease_holder = :holder AND x.state IN ({_HELD})) < :all"
    f" AND (SELECT count(*) FROM runs x WHERE x.agent_id = r.agent_id AND x.state IN ({_HELD})) < :agent"
    + _SPAWN_RATE_AND_BACKOFF
)

# Waiting wakes (queued here, or for a listener) charged to :owner: the queue cap counts them all.
_QUEUED_CHARGED_TO = f"SELECT count(*) FROM runs r WHERE r.state IN ({_WAITING}) AND {_charged_to('r', ':owner')}"


def waiting_state_of(conn: sqlite3.Connection, owner_id: str) -> RunState:
    """Where a wake of this owner's agent waits now: queued for the hub, or for the owner's listener."""
    row = conn.execute("SELECT local FROM owners WHERE owner_id = ?", (owner_id,)).fetchone()
    return policy.waiting_state(bool(row and row["local"]))


def rehome_waiting_wakes(conn: sqlite3.Connection, owner_id: str, *, local: bool) -> int:
    """An owner marked local (or no longer local): their waiting wakes move to where they now wait."""
    to = policy.waiting_state(local)
    frm = RunState.WAITING_FOR_LISTENER if to == RunState.QUEUED else RunState.QUEUED
    return conn.execute("UPDATE runs SET state = ? WHERE owner_id = ? AND state = ?", (to, owner_id, frm)).rowcount


def expire_waiting(conn: sqlite3.Connection, caps: WakeSettings, actor: Actor, now: str) -> int:
    """End `expired` every wake that waited past its expiry, audited, in the caller's transaction; how many.

    A wake for a listener waits `listener_wait_s` for one to come online; a wake queued for the hub's own
    supervisor waits `queued_wait_s`, which only a supervisor that is off (or stuck) lets pass. Either way its
    causer then sees `expired` (DESIGN §5 "Receipts that settle", invariant 98), never a wake queued forever."""
    clock = datetime.fromisoformat(now)
    rows = conn.execute(
        "SELECT run_id, agent_id, state FROM runs"
        " WHERE (state = ? AND created_at < ?) OR (state = ? AND created_at < ?)",
        (
            RunState.WAITING_FOR_LISTENER,
            iso(clock - timedelta(seconds=caps.listener_wait_s)),
            RunState.QUEUED,
            iso(clock - timedelta(seconds=caps.queued_wait_s)),
        ),
    ).fetchall()
    for row in rows:
        conn.execute(
            "UPDATE runs SET state = ?, outcome = ?, ended_at = ? WHERE run_id = ? AND state = ?",
            (RunState.EXPIRED, Outcome.EXPIRED, now, row["run_id"], row["state"]),
        )
        audit.append(
            conn, actor, "run.expire", target=row["agent_id"], detail={"run_id": row["run_id"], "was": row["state"]}
        )
    return len(rows)


def startable_args(caps: WakeSettings, now: datetime) -> dict[str, object]:
    return {
        "now": iso(now),
        "all": caps.max_running,
        "agent": caps.max_running_per_agent,
        "owner": caps.max_running_per_owner,
        "minute_ago": iso(now - timedelta(seconds=60)),
        "per_minute": caps.spawns_per_minute_per_owner,
    }


@dataclass(frozen=True, slots=True)
class Cause:
    """What wakes an agent: a mention (message id), a task (task id) or an accepted wake proposal."""

    trigger: Trigger
    cause_id: str
    room_id: RoomId
    by_agent_id: AgentId
    by_run_id: RunId | None  # set when a woken run caused it: its depth counts
    causers: crossing.Causers  # every owner whose words it carries (DESIGN §4 "Causers")
    proposal_id: ProposalId | None = None  # the accepted proposal it runs, if another owner's words are in it
    payload_sha256: str | None = None  # a task wake: the hash of the payload agreed to


@dataclass(frozen=True, slots=True)
class Enqueued:
    outcome: Literal["woken", "queued", "notified", "refused"]
    code: str | None = None
    # The run this wake is (or joined): its final state is the receipt its causer reads later (DESIGN §5).
    run_id: str | None = None


def wakes(target: MemberAgent) -> bool:
    """Would waking reach this agent at all: it holds `invoke` and its tool can be spawned."""
    return Scope.INVOKE in target.scopes and policy.spawnable(target.tool)


def enqueue(conn: sqlite3.Connection, caps: WakeSettings, target: MemberAgent, cause: Cause) -> Enqueued:
    """Write the wake for `target` in the caller's transaction (the durable outbox), or say why not.

    The wake carries its causers and is constrained when any of
    them is another owner than the target's (invariant 102). A mention joins a queued mention wake of the
    same agent and room only when both carry the same causers and constraint (DESIGN §5): merging must
    neither widen a run nor hide whose words are in it. A task wake is bound to its payload, so never merges.
    """
    if not wakes(target):
        return Enqueued("notified")
    depth = 1
    constrained = bool(crossing.others(cause.causers, target.owner_id))
    if cause.by_run_id is not None:
        row = conn.execute("SELECT depth, constrained FROM runs WHERE run_id = ?", (cause.by_run_id,)).fetchone()
        depth = (row["depth"] if row else 0) + 1
        # A constrained run may carry another owner's words: whatever it wakes stays constrained.
        constrained = constrained or bool(row and row["constrained"])
    if depth > caps.max_depth:
        return Enqueued("refused", "SPAWN_CAP")
    causers = crossing.dumps(cause.causers)
    state = waiting_state_of(conn, target.owner_id)
    joined = (
        conn.execute(
            "SELECT run_id FROM runs WHERE agent_id = ? AND state = ? AND trigger = ? AND room_id = ?"
            " AND causers = ? AND constrained = ?",
            (target.agent_id, state, Trigger.MENTION, cause.room_id, causers, int(constrained)),
        ).fetchone()
        if cause.trigger == Trigger.MENTION
        else None
    )
    if joined is not None:
        return Enqueued("queued", waiting_code(state), run_id=joined["run_id"])
    # The queue cap is charged to the owners whose words ask (DESIGN §5): one owner cannot fill another's queue.
    for owner_id in crossing.others(cause.causers, target.owner_id) or (target.owner_id,):
        if conn.execute(_QUEUED_CHARGED_TO, {"owner": owner_id}).fetchone()[0] >= caps.max_queued_per_owner:
            return Enqueued("refused", "SPAWN_CAP")
    run_id = new_id("run")
    conn.execute(
        "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers, proposal_id,"
        " payload_sha256, constrained, depth, state, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            target.agent_id,
            target.owner_id,
            cause.room_id,
            cause.trigger,
            cause.cause_id,
            cause.by_agent_id,
            causers,
            cause.proposal_id,
            cause.payload_sha256,
            int(constrained),
            depth,
            state,
            now_utc(),
        ),
    )
    if state != RunState.QUEUED:  # it waits for its owner's listener: nothing here will wake it now
        return Enqueued("queued", waiting_code(state), run_id=run_id)
    # `queued` when a cap or a back-off will keep it waiting (DESIGN §5: "over a cap: queued").
    startable = conn.execute(
        "SELECT 1 FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE r.run_id = :run_id AND" + STARTABLE,
        {"run_id": run_id, **startable_args(caps, datetime.now(UTC))},
    ).fetchone()
    return Enqueued("woken" if startable else "queued", run_id=run_id)
