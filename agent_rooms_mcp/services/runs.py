"""Woken runs in the database (DESIGN §5): the durable outbox other services write into, what agents and
owners see of runs, stop requests, and the narrow interface the supervisor drives (claim, start, finish).

The supervisor talks to runs only through `RunBook`, so that a listener on an owner's machine can later
drive the same supervisor against a remote hub.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.models import RunInfo, RunList, StoppedRun, StopResult
from agent_rooms_mcp.principals import AgentTool, Caller, OwnerViewer, Scope, Viewer, held_scopes
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.services.render import cut_page, notice, render_columns
from agent_rooms_mcp.settings import Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

SPAWNABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX, AgentTool.OPENCLAW})
# OpenClaw has no read-only mode to hold a wake another owner caused (DESIGN §5).
CONSTRAINABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX})
# The run states (DESIGN §7, models.RunState) a run never leaves.
FINAL = ("completed", "failed", "stopped", "lost", "withdrawn", "expired")

_RUNS = (
    "SELECT r.rowid AS position, r.*, a.handle, a.tool, a.workdir, m.name AS room_name, o.handle AS owner_handle"
    " FROM runs r"
    " JOIN agents a ON a.agent_id = r.agent_id JOIN rooms m ON m.room_id = r.room_id"
    " JOIN owners o ON o.owner_id = r.owner_id"
)

# The one statement of DESIGN §5's caps: a queued run r (of agent a) may start now if no cap or back-off
# holds it. `claim` picks by it and `enqueue` reports by it, so the two cannot disagree.
_STARTABLE = (
    # A deleted agent's wake is picked too: the claim's re-check ends it `withdrawn`, so it never waits forever.
    " r.state = 'queued' AND (r.not_before IS NULL OR r.not_before <= :now)"
    " AND (SELECT count(*) FROM runs x WHERE x.state IN ('running', 'stopping')) < :all"
    " AND (SELECT count(*) FROM runs x WHERE x.agent_id = r.agent_id AND x.state IN ('running', 'stopping')) < :agent"
    " AND (SELECT count(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.state IN ('running', 'stopping')) < :owner"
    " AND (SELECT count(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.started_at >= :minute_ago) < :per_minute"
    " AND NOT EXISTS (SELECT 1 FROM backoffs b WHERE b.owner_id = r.owner_id AND b.tool = a.tool"
    "      AND b.not_before > :now)"
)


# Queued wakes charged to :owner: those its words caused in another owner's agents, and its own agents'
# wakes no other owner's words caused.
_QUEUED_CHARGED_TO = (
    "SELECT count(*) FROM runs r WHERE r.state = 'queued' AND ("
    " EXISTS (SELECT 1 FROM json_each(r.causers) j WHERE j.value = :owner AND j.value <> r.owner_id)"
    " OR (r.owner_id = :owner AND NOT EXISTS (SELECT 1 FROM json_each(r.causers) j WHERE j.value <> r.owner_id)))"
)


def _startable_args(caps: WakeSettings, now: datetime) -> dict[str, object]:
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

    trigger: str  # mention | task | wake_proposal
    cause_id: str
    room_id: str
    by_agent_id: str
    by_run_id: str | None  # set when a woken run caused it: its depth counts
    causers: crossing.Causers  # every owner whose words it carries (DESIGN §4 "Causers")
    proposal_id: str | None = None  # the accepted proposal it runs, if another owner's words are in it
    payload_sha256: str | None = None  # a task wake: the hash of the payload agreed to


@dataclass(frozen=True, slots=True)
class Enqueued:
    outcome: Literal["woken", "queued", "notified", "refused"]
    code: str | None = None


def constrainable(tool: AgentTool) -> bool:
    """Can a wake of this tool run read-only? Tools never spawned have nothing to constrain."""
    return tool in CONSTRAINABLE or tool not in SPAWNABLE


def wakes(target: sqlite3.Row) -> bool:
    """Would waking reach this agent at all: it holds `invoke` and its tool can be spawned."""
    return Scope.INVOKE in held_scopes(target["scopes"], None) and AgentTool(target["tool"]) in SPAWNABLE


def enqueue(conn: sqlite3.Connection, caps: WakeSettings, target: sqlite3.Row, cause: Cause) -> Enqueued:
    """Write the wake for `target` in the caller's transaction (the durable outbox), or say why not.

    target: agent_id, owner_id, tool, scopes. The wake carries its causers and is constrained when any of
    them is another owner than the target's (invariant 102). A mention joins a queued mention wake of the
    same agent and room only when both carry the same causers and constraint (DESIGN §5): merging must
    neither widen a run nor hide whose words are in it. A task wake is bound to its payload, so never merges.
    """
    if not wakes(target):
        return Enqueued("notified")
    depth = 1
    constrained = bool(crossing.others(cause.causers, target["owner_id"]))
    if cause.by_run_id is not None:
        row = conn.execute("SELECT depth, constrained FROM runs WHERE run_id = ?", (cause.by_run_id,)).fetchone()
        depth = (row["depth"] if row else 0) + 1
        # A constrained run may carry another owner's words: whatever it wakes stays constrained.
        constrained = constrained or bool(row and row["constrained"])
    if depth > caps.max_depth:
        return Enqueued("refused", "SPAWN_CAP")
    causers = crossing.dumps(cause.causers)
    if (
        cause.trigger == "mention"
        and conn.execute(
            "SELECT 1 FROM runs WHERE agent_id = ? AND state = 'queued' AND trigger = 'mention' AND room_id = ?"
            " AND causers = ? AND constrained = ?",
            (target["agent_id"], cause.room_id, causers, int(constrained)),
        ).fetchone()
    ):
        return Enqueued("queued")
    # The queue cap is charged to the owners whose words ask (DESIGN §5): one owner cannot fill another's queue.
    for owner_id in crossing.others(cause.causers, target["owner_id"]) or (target["owner_id"],):
        if conn.execute(_QUEUED_CHARGED_TO, {"owner": owner_id}).fetchone()[0] >= caps.max_queued_per_owner:
            return Enqueued("refused", "SPAWN_CAP")
    run_id = new_id("run")
    conn.execute(
        "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers, proposal_id,"
        " payload_sha256, constrained, depth, state, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
        (
            run_id,
            target["agent_id"],
            target["owner_id"],
            cause.room_id,
            cause.trigger,
            cause.cause_id,
            cause.by_agent_id,
            causers,
            cause.proposal_id,
            cause.payload_sha256,
            int(constrained),
            depth,
            now_utc(),
        ),
    )
    # `queued` when a cap or a back-off will keep it waiting (DESIGN §5: "over a cap: queued").
    startable = conn.execute(
        "SELECT 1 FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE r.run_id = :run_id AND" + _STARTABLE,
        {"run_id": run_id, **_startable_args(caps, datetime.now(UTC))},
    ).fetchone()
    return Enqueued("woken" if startable else "queued")


def _infos(viewer: Viewer, rows: Sequence[sqlite3.Row]) -> tuple[list[RunInfo], str | None]:
    """Runs as their owner sees them. An outcome and a session id are what the agent's CLI reported: its
    words, rendered like any other free text (a CLI may quote whatever its prompt held)."""
    shown, boundary = render_columns(viewer, rows, ("outcome", "session_id"))
    infos = [
        RunInfo(
            run_id=row["run_id"],
            agent=row["handle"],
            room=row["room_name"],
            trigger=row["trigger"],
            cause_id=row["cause_id"],
            state=row["state"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            outcome=cols["outcome"].text if "outcome" in cols else None,
            stop_signal=row["stop_signal"],
            session_id=cols["session_id"].text if "session_id" in cols else None,
            constrained=bool(row["constrained"]),
        )
        for row, cols in zip(rows, shown, strict=True)
    ]
    return infos, boundary


def room_quarantined(conn: sqlite3.Connection, room_id: str) -> bool:
    """The one place the claim and a running wake ask whether their room was quarantined (DESIGN §6).
    No quarantine exists yet; when it does, its check goes here and every wake obeys it."""
    del conn, room_id
    return False


def withdrawal(conn: sqlite3.Connection, run: sqlite3.Row, *, started: bool) -> str | None:
    """Why a wake may no longer run, re-checked against everything it needed when it was proposed (DESIGN
    §4 "Starts means the claim"), or None. Before the start (`started` False) that includes the consent
    mode that auto-accepted it, and the task still open and assigned to it; during the run, the changes
    that stop it: the agent, `invoke`, membership, a grant or verification, the task cancelled or its words
    edited. A reassignment during a run is stopped where it happens (`withdraw_task_wakes`), so the run
    that hands its own task on is not stopped by it."""
    owner_id = run["owner_id"]
    agent = conn.execute("SELECT status, scopes FROM agents WHERE agent_id = ?", (run["agent_id"],)).fetchone()
    if agent is None or agent["status"] != "active":
        return "agent_deleted"
    if Scope.INVOKE not in held_scopes(agent["scopes"], None):
        return "invoke_revoked"
    if not conn.execute(
        "SELECT 1 FROM room_agents WHERE room_id = ? AND agent_id = ?", (run["room_id"], run["agent_id"])
    ).fetchone():
        return "membership_ended"
    if room_quarantined(conn, run["room_id"]):
        return "room_quarantined"
    crossers = crossing.crossers(conn, run["room_id"], owner_id, crossing.loads(run["causers"]))
    if any(c.grant_id is None for c in crossers):
        return "grant_revoked"
    if not all(c.verified for c in crossers):
        return "identity_unverified"
    if run["proposal_id"] is not None:
        proposal = conn.execute(
            "SELECT state, decided_via FROM proposals WHERE proposal_id = ?", (run["proposal_id"],)
        ).fetchone()
        if proposal is None or proposal["state"] != "accepted":
            return "consent_withdrawn"
        if not started and proposal["decided_via"] == "mode" and not policy.still_accepted(crossers):
            return "consent_mode_changed"
    if run["trigger"] == "task":
        task = conn.execute("SELECT * FROM tasks WHERE task_id = ?", (run["cause_id"],)).fetchone()
        if task is None or task["status"] == "cancelled":
            return "task_cancelled"
        if not started and task["status"] == "done":
            return "task_done"
        if not started and (task["assignee_id"] != run["agent_id"] or task["proposal_id"] != run["proposal_id"]):
            return "reassigned"
        if run["payload_sha256"] is None:  # queued before wakes were bound: what was agreed cannot be shown
            return "payload_unbound"
        if crossing.task_digest(task, run["agent_id"]) != run["payload_sha256"]:
            return "edited"
    return None


def withdraw_task_wakes(
    conn: sqlite3.Connection, actor: Actor, task: sqlite3.Row, reason: str, *, keep_run_id: str | None
) -> None:
    """An edit, reassignment or cancellation of a task withdraws the wakes it queued, in the same
    transaction, and asks the supervisor to stop those already running (invariant 77). The run making the
    change (`keep_run_id`, an assignee handing its own task on) goes on."""
    rows = conn.execute(
        "SELECT run_id, state FROM runs WHERE trigger = 'task' AND cause_id = ?"
        " AND state IN ('queued', 'running', 'stopping') AND run_id IS NOT ?",
        (task["task_id"], keep_run_id),
    ).fetchall()
    if not rows:
        return
    now = now_utc()
    for row in rows:
        _withdraw(conn, row["run_id"], row["state"], reason, now)
    audit.append(
        conn,
        actor,
        "run.withdraw",
        target=task["room_id"],
        detail={"task_id": task["task_id"], "reason": reason, "runs": [r["run_id"] for r in rows]},
    )


def _withdraw(conn: sqlite3.Connection, run_id: str, state: str, reason: str, now: str) -> None:
    """A queued wake ends `withdrawn` at once; a running one is marked for the supervisor to stop, and
    ends `withdrawn` when it has."""
    if state == "queued":
        conn.execute(
            "UPDATE runs SET state = 'withdrawn', outcome = ?, withdraw_reason = ?, ended_at = ? WHERE run_id = ?",
            (f"withdrawn:{reason}", reason, now, run_id),
        )
    else:
        conn.execute(
            "UPDATE runs SET state = 'stopping', withdraw_reason = coalesce(withdraw_reason, ?),"
            " stop_requested_at = coalesce(stop_requested_at, ?) WHERE run_id = ?",
            (reason, now, run_id),
        )
        # The stop ladder takes seconds; the run's words stop counting now, so its token dies with the
        # withdrawal rather than when the process does (invariants 77, 103).
        _revoke_run_tokens(conn, run_id, now)


class Runs:
    """What agents and owners see and do: list runs, ask for a stop."""

    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def list(
        self, caller: Caller, *, agent: str | None, room: str | None, state: str | None, after: int, limit: int
    ) -> RunList:
        policy.require_scope(caller, Scope.READ)

        def run(conn: sqlite3.Connection) -> RunList:
            # Runs of the caller's owner only: another owner's runs are not the caller's business; a run
            # token sees only its own room's (invariant 87).
            sql, args = (
                _RUNS + " WHERE r.owner_id = ? AND r.room_id = coalesce(?, r.room_id)",
                list[object]([caller.owner_id, policy.run_room(caller)]),
            )
            if agent is not None:
                sql += " AND (a.handle = ? OR a.agent_id = ?)"
                args += [agent, agent]
            if room is not None:
                sql += " AND (m.name = ? OR m.room_id = ?)"
                args += [room, room]
            if state is not None:
                sql += " AND r.state = ?"
                args.append(state)
            if after:
                # Newest first, so the page after a cursor holds the runs made before it.
                sql += " AND r.rowid < ?"
                args.append(after)
            rows = conn.execute(sql + " ORDER BY r.rowid DESC LIMIT ?", (*args, limit + 1)).fetchall()
            runs, boundary = _infos(caller, rows[:limit])
            empty = RunList(runs=[], boundary=boundary, notice=notice(boundary), next_after=after, has_more=True)
            cut = cut_page(self._limits, empty, runs, [r["position"] for r in rows], len(rows), after)
            return empty.model_copy(
                update={"runs": runs[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
            )

        return await self._store.read(run)

    async def stop_as_agent(self, caller: Caller, agent_ref: str, run_id: str | None) -> StopResult:
        policy.require_scope(caller, Scope.MANAGE)

        def run(conn: sqlite3.Connection) -> StopResult:
            queries.recheck_caller(conn, caller, Scope.MANAGE)
            agent = queries.agent(conn, agent_ref)
            # Another owner's agent answers as a missing one: a refusal must not confirm that a handle exists.
            if not policy.owns_agent(caller, agent["owner_id"]):
                raise not_found("agent")
            return _request_stop(conn, caller.actor, agent, run_id)

        return await self._store.write(run, notify=True)

    async def stop_as_owner(self, operator: Actor, agent_ref: str, run_id: str | None) -> StopResult:
        # notify: a supervisor in this process signals at once; others see the request on their next look.
        return await self._store.write(
            lambda conn: _request_stop(conn, operator, queries.agent(conn, agent_ref), run_id), notify=True
        )

    async def states(self, run_ids: Sequence[str]) -> dict[str, str]:
        marks = ",".join("?" * len(run_ids))
        return await self._store.read(
            lambda c: {
                r["run_id"]: r["state"]
                for r in c.execute(f"SELECT run_id, state FROM runs WHERE run_id IN ({marks})", run_ids)
            }
        )

    async def get(self, run_id: str) -> RunInfo:
        def run(conn: sqlite3.Connection) -> RunInfo:
            row = conn.execute(_RUNS + " WHERE r.run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise not_found("run")
            [info], _ = _infos(OwnerViewer(row["owner_id"]), [row])
            return info

        return await self._store.read(run)


def _request_stop(conn: sqlite3.Connection, actor: Actor, agent: sqlite3.Row, run_id: str | None) -> StopResult:
    """Queued runs end at once (nothing to signal); running ones are marked `stopping` for the supervisor
    that holds them, which sends the signals and records how the run ended."""
    sql, args = (
        "SELECT * FROM runs WHERE agent_id = ? AND state IN ('queued', 'running', 'stopping')",
        [agent["agent_id"]],
    )
    if run_id is not None:
        sql += " AND run_id = ?"
        args.append(run_id)
    now, stopped = now_utc(), []
    rows = conn.execute(sql, args).fetchall()
    if run_id is not None and not rows:
        raise not_found("run of this agent still queued or running")
    for row in rows:
        if row["state"] == "queued":
            conn.execute(
                "UPDATE runs SET state = 'stopped', stop_signal = 'none', outcome = 'stopped', ended_at = ?,"
                " stop_requested_at = ? WHERE run_id = ?",
                (now, now, row["run_id"]),
            )
            stopped.append(StoppedRun(run_id=row["run_id"], stop_signal="none", state="stopped"))
        else:
            conn.execute(
                "UPDATE runs SET state = 'stopping', stop_requested_at = coalesce(stop_requested_at, ?)"
                " WHERE run_id = ?",
                (now, row["run_id"]),
            )
            stopped.append(StoppedRun(run_id=row["run_id"], stop_signal=row["stop_signal"] or "none", state="stopping"))
    audit.append(conn, actor, "agent.stop", target=agent["agent_id"], detail={"runs": [s.run_id for s in stopped]})
    return StopResult(stopped=stopped)


@dataclass(frozen=True, slots=True)
class CauseText:
    """The words that woke a run, fixed when it was claimed, and who wrote them."""

    text: str
    author: str
    owner: str
    cross_owner: bool  # another owner wrote them, or another owner's words caused them


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run the supervisor now holds, with what it needs to start the CLI."""

    run_id: str
    agent_id: str
    handle: str
    owner_id: str
    tool: AgentTool
    workdir: str | None
    room_id: str
    room_name: str
    trigger: str
    cause_id: str
    caused_by: str
    causers: crossing.Causers
    constrained: bool
    depth: int
    resume_session: str | None  # the agent's last session, to resume
    words: CauseText  # read in the claim's transaction: the accepted payload, never a later edit
    retry: bool = False  # a follow-up after a rate limit: continue, never replay the original request


_SYSTEM = "system"


class RunBook:
    """The supervisor's whole view of the store: claim a queued run, record its start and end, renew its
    lease, read stop requests, and recover runs whose holder died. Every state change it makes writes its
    audit row in the same transaction (invariant 85)."""

    def __init__(self, store: Store, caps: WakeSettings, holder: str) -> None:
        self._store = store
        self._caps = caps
        self.holder = holder

    @property
    def _actor(self) -> Actor:
        return Actor(_SYSTEM, self.holder)

    def _lease(self) -> str:
        return iso(datetime.now(UTC) + timedelta(seconds=self._caps.lease_s))

    async def recover(self) -> list[tuple[int, int]]:
        """Runs whose holder's lease ran out: never started -> queued again; started -> `lost`, and the
        (pid, start time) of each such CLI, for the caller to make sure it is gone."""

        def run(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            now = now_utc()
            lost = []
            for row in conn.execute(
                "SELECT run_id, pid, pid_start, agent_id, lease_holder, withdraw_reason FROM runs"
                " WHERE state IN ('running', 'stopping') AND lease_until < ?",
                (now,),
            ).fetchall():
                _revoke_run_tokens(conn, row["run_id"], now)  # a token minted before the crash dies too
                detail = {"run_id": row["run_id"], "lease_holder": row["lease_holder"]}
                if row["pid"] is None and row["withdraw_reason"] is not None:
                    # Withdrawn before its CLI ever started: it ends so, rather than queue again.
                    _withdraw(conn, row["run_id"], "queued", row["withdraw_reason"], now)
                    audit.append(conn, self._actor, "run.withdraw", target=row["agent_id"],
                                 detail={**detail, "reason": row["withdraw_reason"]})  # fmt: skip
                elif row["pid"] is None:
                    conn.execute(
                        "UPDATE runs SET state = 'queued', lease_holder = NULL, lease_until = NULL, started_at = NULL"
                        " WHERE run_id = ?",
                        (row["run_id"],),
                    )
                    audit.append(conn, self._actor, "run.requeue", target=row["agent_id"], detail=detail)
                else:
                    conn.execute(
                        "UPDATE runs SET state = 'lost', outcome = 'lost', ended_at = ? WHERE run_id = ?",
                        (now, row["run_id"]),
                    )
                    audit.append(conn, self._actor, "run.lost", target=row["agent_id"], detail=detail)
                    if row["pid_start"] is not None:
                        lost.append((row["pid"], row["pid_start"]))
            return lost

        return await self._store.write(run)

    async def claim(self) -> Claimed | None:
        """The oldest queued run that no cap holds back, now held by this supervisor; None if there is none.

        "Starts" means this claim (DESIGN §4): in its transaction every condition the wake needed is checked
        again, a wake that fails one ends `withdrawn` with the reason (audited) and the next is looked at,
        and the words the run will be given are read from what was accepted."""
        caps = self._caps
        # Most looks find nothing: a read costs far less than taking the write lock to find that out.
        if not await self._store.read(lambda c: c.execute("SELECT 1 FROM runs WHERE state = 'queued'").fetchone()):
            return None

        def run(conn: sqlite3.Connection) -> Claimed | None:
            now = datetime.now(UTC)
            while True:
                row = conn.execute(
                    _RUNS + " WHERE" + _STARTABLE + " ORDER BY r.created_at LIMIT 1", _startable_args(caps, now)
                ).fetchone()
                if row is None:
                    return None
                reason = withdrawal(conn, row, started=False)
                words = _words(conn, row) if reason is None else None
                if words is None:
                    reason = reason or "payload_missing"
                    _withdraw(conn, row["run_id"], "queued", reason, iso(now))
                    audit.append(conn, self._actor, "run.withdraw", target=row["agent_id"],
                                 detail={"run_id": row["run_id"], "reason": reason})  # fmt: skip
                    continue
                return self._hold(conn, row, words, now)

        return await self._store.write(run)

    def _hold(self, conn: sqlite3.Connection, row: sqlite3.Row, words: CauseText, now: datetime) -> Claimed:
        conn.execute(
            "UPDATE runs SET state = 'running', lease_holder = ?, lease_until = ?, started_at = ? WHERE run_id = ?",
            (self.holder, self._lease(), iso(now), row["run_id"]),
        )
        audit.append(conn, self._actor, "run.claim", target=row["agent_id"], detail={"run_id": row["run_id"]})
        # A constrained session may hold another owner's words: an unconstrained run never resumes
        # it, so each kind of run continues its own kind of session.
        last = conn.execute(
            "SELECT session_id FROM runs WHERE agent_id = ? AND session_id IS NOT NULL AND constrained = ?"
            " ORDER BY started_at DESC LIMIT 1",
            (row["agent_id"], row["constrained"]),
        ).fetchone()
        return Claimed(
            run_id=row["run_id"],
            agent_id=row["agent_id"],
            handle=row["handle"],
            owner_id=row["owner_id"],
            tool=AgentTool(row["tool"]),
            workdir=row["workdir"],
            room_id=row["room_id"],
            room_name=row["room_name"],
            trigger=row["trigger"],
            cause_id=row["cause_id"],
            caused_by=row["caused_by"],
            causers=crossing.loads(row["causers"]),
            constrained=bool(row["constrained"]),
            depth=row["depth"],
            resume_session=(last["session_id"] or None) if last else None,  # "" marks a session lost
            words=words,
            retry=bool(row["resume"]),
        )

    async def started(self, run_id: str, pid: int, pid_start: int | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE run_id = ?", (pid, pid_start, run_id))
            row = conn.execute("SELECT agent_id, trigger, cause_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            audit.append(
                conn,
                self._actor,
                "run.spawn",
                target=row["agent_id"],
                detail={"run_id": run_id, "trigger": row["trigger"], "cause_id": row["cause_id"]},
            )

        await self._store.write(run)

    async def session(self, run_id: str, session_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET session_id = ? WHERE run_id = ?", (session_id, run_id))
            row = conn.execute("SELECT agent_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            # "" records a session the CLI lost: the next wake starts afresh.
            audit.append(conn, self._actor, "run.session", target=row["agent_id"],
                         detail={"run_id": run_id, "session_id": session_id or None})  # fmt: skip

        await self._store.write(run)

    async def renew(self) -> None:
        # Extending a lease changes no state a reader sees (the run stays where it was): no audit row.
        await self._store.write(
            lambda c: c.execute(
                "UPDATE runs SET lease_until = ? WHERE lease_holder = ? AND state IN ('running', 'stopping')",
                (self._lease(), self.holder),
            )
        )

    async def stop_requests(self) -> set[str]:
        """The runs this supervisor holds that must stop: asked to, or withdrawn because something their
        wake needed has changed since it started (invariant 103), which is marked here, audited."""

        def changed(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            rows = conn.execute(
                "SELECT * FROM runs WHERE lease_holder = ? AND state = 'running'", (self.holder,)
            ).fetchall()
            return [(r["run_id"], r["agent_id"], why) for r in rows if (why := withdrawal(conn, r, started=True))]

        if await self._store.read(changed):

            def mark(conn: sqlite3.Connection) -> None:
                now = now_utc()
                for run_id, agent_id, reason in changed(conn):  # again, under the write lock
                    _withdraw(conn, run_id, "running", reason, now)
                    audit.append(conn, self._actor, "run.withdraw", target=agent_id,
                                 detail={"run_id": run_id, "reason": reason})  # fmt: skip

            await self._store.write(mark)
        return await self._store.read(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT run_id FROM runs WHERE lease_holder = ? AND state = 'stopping'", (self.holder,)
                )
            }
        )

    async def finish(
        self,
        run_id: str,
        *,
        state: str,
        outcome: str,
        stop_signal: str,
        reset_at: datetime | None = None,
    ) -> None:
        """Record how a run ended and revoke its token. A run stopped because its wake was withdrawn ends
        `withdrawn`. A rate-limited run (`failed`, outcome `rate_limit`) puts its (owner, tool) into back-off
        (until the provider's reset time when known) and queues a follow-up that resumes the session once
        the back-off passes."""

        def run(conn: sqlite3.Connection) -> None:
            now = now_utc()
            row = conn.execute(
                "SELECT r.*, a.tool FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE r.run_id = ?", (run_id,)
            ).fetchone()
            final, ended_as = state, outcome
            # Withdrawn whether the signal ended it or the CLI finished first: its causer sees why (DESIGN §5).
            if row["withdraw_reason"] is not None:
                final, ended_as = "withdrawn", f"withdrawn:{row['withdraw_reason']}"
            conn.execute(
                "UPDATE runs SET state = ?, outcome = ?, stop_signal = ?, ended_at = ?, lease_holder = NULL,"
                " lease_until = NULL WHERE run_id = ?",
                (final, ended_as, stop_signal, now, run_id),
            )
            _revoke_run_tokens(conn, run_id, now)
            detail: dict[str, object] = {"run_id": run_id, "state": final, "outcome": ended_as}
            detail["stop_signal"] = stop_signal
            if ended_as == RATE_LIMIT:
                detail["follow_up"] = self._back_off(conn, row, reset_at, now)
            elif final == "completed":
                conn.execute("DELETE FROM backoffs WHERE owner_id = ? AND tool = ?", (row["owner_id"], row["tool"]))
            audit.append(conn, self._actor, "run.end", target=row["agent_id"], detail=detail)

        await self._store.write(run)

    def _back_off(self, conn: sqlite3.Connection, row: sqlite3.Row, reset_at: datetime | None, now: str) -> str | None:
        """Back-off for the run's (owner, tool), and the follow-up run queued to resume it (None when the
        agent already has a queued wake, which will resume the session anyway)."""
        tries = conn.execute(
            "SELECT attempts FROM backoffs WHERE owner_id = ? AND tool = ?", (row["owner_id"], row["tool"])
        ).fetchone()
        retry_at = iso(backoff_until(datetime.now(UTC), reset_at, tries["attempts"] if tries else 0))
        conn.execute(
            "INSERT INTO backoffs (owner_id, tool, not_before, attempts) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (owner_id, tool) DO UPDATE SET not_before = excluded.not_before,"
            " attempts = attempts + 1",
            (row["owner_id"], row["tool"], retry_at),
        )
        if conn.execute("SELECT 1 FROM runs WHERE agent_id = ? AND state = 'queued'", (row["agent_id"],)).fetchone():
            return None
        follow_up = new_id("run")
        # The follow-up carries what bound the original: its causers, its accepted payload, its constraint.
        conn.execute(
            "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers,"
            " proposal_id, payload_sha256, constrained, depth, state, resume, not_before, created_at)"
            " SELECT ?, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers, proposal_id,"
            " payload_sha256, constrained, depth, 'queued', 1, ?, ? FROM runs WHERE run_id = ?",
            (follow_up, retry_at, now, row["run_id"]),
        )
        audit.append(conn, self._actor, "run.follow_up", target=row["agent_id"],
                     detail={"run_id": follow_up, "after": row["run_id"], "not_before": retry_at})  # fmt: skip
        return follow_up


RATE_LIMIT = "rate_limit"


def _words(conn: sqlite3.Connection, run: sqlite3.Row) -> CauseText | None:
    """The words a claimed run is given: an accepted proposal's payload, a task's agreed words (the hash
    `withdrawal` checked proves the row still holds them), or the message that mentioned it. None when
    they are gone."""
    causers = crossing.loads(run["causers"])
    foreign = bool(crossing.others(causers, run["owner_id"]))
    payload = None
    if run["proposal_id"] is not None:
        stored = conn.execute(
            "SELECT payload, payload_sha256 FROM proposals WHERE proposal_id = ?", (run["proposal_id"],)
        ).fetchone()
        if stored is None or crossing.canonical(json.loads(stored["payload"]))[1] != stored["payload_sha256"]:
            return None
        payload = json.loads(stored["payload"])
    if run["trigger"] == "task":
        task = conn.execute("SELECT * FROM tasks WHERE task_id = ?", (run["cause_id"],)).fetchone()
        if task is None:
            return None
        words = payload or {"title": task["title"], "body": task["body"]}
        text, author_id = f"{words['title']}\n\n{words['body']}", task["creator_id"]
    else:
        message_id = payload["message_id"] if payload and run["trigger"] == "wake_proposal" else run["cause_id"]
        message = conn.execute(
            "SELECT text, agent_id FROM messages WHERE room_id = ? AND message_id = ?", (run["room_id"], message_id)
        ).fetchone()
        if message is None:
            return None
        text, author_id = (payload["text"] if payload else message["text"]), message["agent_id"]
    author = conn.execute(
        "SELECT a.handle, a.owner_id, o.handle AS owner_handle FROM agents a"
        " JOIN owners o ON o.owner_id = a.owner_id WHERE a.agent_id = ?",
        (author_id,),
    ).fetchone()
    return CauseText(text, author["handle"], author["owner_handle"], foreign or author["owner_id"] != run["owner_id"])


def backoff_until(now: datetime, reset_at: datetime | None, attempts: int) -> datetime:
    """wake.md §6.4: a known reset time plus up to 30 s of jitter, else an exponential wait from 30 s up to
    30 min, half fixed and half random, so owners' retries spread out rather than arrive together."""
    if reset_at is not None:
        return max(reset_at, now) + timedelta(seconds=random.uniform(0, 30))
    base = min(1800.0, 30.0 * 2 ** min(attempts, 10))
    return now + timedelta(seconds=base / 2 + random.uniform(0, base / 2))


def _revoke_run_tokens(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE run_id = ? AND revoked_at IS NULL", (now, run_id))
