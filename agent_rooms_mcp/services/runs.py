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

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.models import RunInfo, RunList, StoppedRun, StopResult
from agent_rooms_mcp.principals import AgentTool, Caller, OwnerViewer, Scope, Viewer, held_scopes
from agent_rooms_mcp.services.render import cut_page, notice, render_columns
from agent_rooms_mcp.settings import Limits, WakeSettings
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store

SPAWNABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX, AgentTool.OPENCLAW})
# OpenClaw has no read-only mode to hold a wake another owner caused (DESIGN §5).
CONSTRAINABLE = frozenset({AgentTool.CLAUDE, AgentTool.CODEX})
FINAL = ("stopped", "completed", "failed", "rate_limited", "lost")

_RUNS = (
    "SELECT r.rowid AS position, r.*, a.handle, a.tool, a.workdir, m.name AS room_name, o.handle AS owner_handle"
    " FROM runs r"
    " JOIN agents a ON a.agent_id = r.agent_id JOIN rooms m ON m.room_id = r.room_id"
    " JOIN owners o ON o.owner_id = r.owner_id"
)

# The one statement of DESIGN §5's caps: a queued run r (of agent a) may start now if no cap or back-off
# holds it. `claim` picks by it and `enqueue` reports by it, so the two cannot disagree.
_STARTABLE = (
    " r.state = 'queued' AND a.status = 'active' AND (r.not_before IS NULL OR r.not_before <= :now)"
    " AND (SELECT count(*) FROM runs x WHERE x.state IN ('running', 'stopping')) < :all"
    " AND (SELECT count(*) FROM runs x WHERE x.agent_id = r.agent_id AND x.state IN ('running', 'stopping')) < :agent"
    " AND (SELECT count(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.state IN ('running', 'stopping')) < :owner"
    " AND (SELECT count(*) FROM runs x WHERE x.owner_id = r.owner_id AND x.started_at >= :minute_ago) < :per_minute"
    " AND NOT EXISTS (SELECT 1 FROM backoffs b WHERE b.owner_id = r.owner_id AND b.tool = a.tool"
    "      AND b.not_before > :now)"
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


@dataclass(frozen=True, slots=True)
class Enqueued:
    outcome: str  # woken | queued | notified | refused
    code: str | None = None


def constrainable(tool: AgentTool) -> bool:
    """Can a wake of this tool run read-only? Tools never spawned have nothing to constrain."""
    return tool in CONSTRAINABLE or tool not in SPAWNABLE


def wakes(target: sqlite3.Row) -> bool:
    """Would waking reach this agent at all: it holds `invoke` and its tool can be spawned."""
    return Scope.INVOKE in held_scopes(target["scopes"], None) and AgentTool(target["tool"]) in SPAWNABLE


def enqueue(
    conn: sqlite3.Connection, caps: WakeSettings, target: sqlite3.Row, cause: Cause, *, constrained: bool
) -> Enqueued:
    """Write the wake for `target` in the caller's transaction (the durable outbox), or say why not.

    target: agent_id, owner_id, tool, scopes. Coalesces: while the agent has a queued run, another
    mention joins it instead of queueing a second one.
    """
    if not wakes(target):
        return Enqueued("notified")
    depth = 1
    if cause.by_run_id is not None:
        row = conn.execute("SELECT depth, constrained FROM runs WHERE run_id = ?", (cause.by_run_id,)).fetchone()
        depth = (row["depth"] if row else 0) + 1
        # A constrained run may carry another owner's words: whatever it wakes stays constrained.
        constrained = constrained or bool(row and row["constrained"])
    if depth > caps.max_depth:
        return Enqueued("refused", "SPAWN_CAP")
    queued = conn.execute(
        "SELECT run_id, constrained FROM runs WHERE agent_id = ? AND state = 'queued'", (target["agent_id"],)
    ).fetchone()
    if queued:
        # Joining a queued run must not widen it: if either request needs a constrained run, it is one.
        if constrained and not queued["constrained"]:
            conn.execute("UPDATE runs SET constrained = 1 WHERE run_id = ?", (queued["run_id"],))
        return Enqueued("queued")
    waiting = conn.execute(
        "SELECT count(*) FROM runs WHERE owner_id = ? AND state = 'queued'", (target["owner_id"],)
    ).fetchone()[0]
    if waiting >= caps.max_queued_per_owner:
        return Enqueued("refused", "SPAWN_CAP")
    run_id = new_id("run")
    conn.execute(
        "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained, depth,"
        " state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
        (
            run_id,
            target["agent_id"],
            target["owner_id"],
            cause.room_id,
            cause.trigger,
            cause.cause_id,
            cause.by_agent_id,
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

    async def states(self, run_ids: list[str]) -> dict[str, str]:
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
    constrained: bool
    depth: int
    resume_session: str | None  # the agent's last session, to resume
    retry: bool = False  # a follow-up after a rate limit: continue, never replay the original request


@dataclass(frozen=True, slots=True)
class CauseText:
    text: str
    author: str
    owner: str
    cross_owner: bool


class RunBook:
    """The supervisor's whole view of the store: claim a queued run, record its start and end, renew its
    lease, read stop requests, and recover runs whose holder died."""

    def __init__(self, store: Store, caps: WakeSettings, holder: str) -> None:
        self._store = store
        self._caps = caps
        self.holder = holder

    def _lease(self) -> str:
        return iso(datetime.now(UTC) + timedelta(seconds=self._caps.lease_s))

    async def recover(self) -> list[tuple[int, int]]:
        """Runs whose holder's lease ran out: never started -> queued again; started -> `lost`, and the
        (pid, start time) of each such CLI, for the caller to make sure it is gone."""

        def run(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            now = now_utc()
            lost = []
            for row in conn.execute(
                "SELECT run_id, pid, pid_start, agent_id FROM runs"
                " WHERE state IN ('running', 'stopping') AND lease_until < ?",
                (now,),
            ).fetchall():
                _revoke_run_tokens(conn, row["run_id"], now)  # a token minted before the crash dies too
                if row["pid"] is None:
                    conn.execute(
                        "UPDATE runs SET state = 'queued', lease_holder = NULL, lease_until = NULL, started_at = NULL"
                        " WHERE run_id = ?",
                        (row["run_id"],),
                    )
                else:
                    conn.execute(
                        "UPDATE runs SET state = 'lost', outcome = 'lost', ended_at = ? WHERE run_id = ?",
                        (now, row["run_id"]),
                    )
                    audit.append(conn, Actor("system", self.holder), "run.lost", target=row["agent_id"],
                                 detail={"run_id": row["run_id"]})  # fmt: skip
                    if row["pid_start"] is not None:
                        lost.append((row["pid"], row["pid_start"]))
            return lost

        return await self._store.write(run)

    async def claim(self) -> Claimed | None:
        """The oldest queued run that no cap holds back, now held by this supervisor; None if there is none."""
        caps = self._caps
        # Most looks find nothing: a read costs far less than taking the write lock to find that out.
        if not await self._store.read(lambda c: c.execute("SELECT 1 FROM runs WHERE state = 'queued'").fetchone()):
            return None

        def run(conn: sqlite3.Connection) -> Claimed | None:
            now = datetime.now(UTC)
            # A wake waits in the queue; the agent's owner may take `invoke` away meanwhile. Then it ends.
            conn.execute(
                "UPDATE runs SET state = 'failed', outcome = 'invoke_revoked', ended_at = ? WHERE state = 'queued'"
                " AND agent_id IN (SELECT agent_id FROM agents WHERE instr(',' || scopes || ',', ',invoke,') = 0)",
                (iso(now),),
            )
            row = conn.execute(
                _RUNS + " WHERE" + _STARTABLE + " ORDER BY r.created_at LIMIT 1", _startable_args(caps, now)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE runs SET state = 'running', lease_holder = ?, lease_until = ?, started_at = ? WHERE run_id = ?",
                (self.holder, self._lease(), iso(now), row["run_id"]),
            )
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
                constrained=bool(row["constrained"]),
                depth=row["depth"],
                resume_session=(last["session_id"] or None) if last else None,  # "" marks a session lost
                retry=bool(row["resume"]),
            )

        return await self._store.write(run)

    async def cause(self, run: Claimed) -> CauseText:
        """The words that woke the run and who wrote them: the message, the task, or the proposal's message."""

        def load(conn: sqlite3.Connection) -> CauseText:
            if run.trigger == "task":
                row = conn.execute(
                    "SELECT t.title || char(10) || char(10) || t.body AS text, a.handle, o.handle AS owner_handle,"
                    " a.owner_id FROM tasks t JOIN agents a ON a.agent_id = t.creator_id"
                    " JOIN owners o ON o.owner_id = a.owner_id WHERE t.task_id = ?",
                    (run.cause_id,),
                ).fetchone()
            else:
                message_id = run.cause_id
                if run.trigger == "wake_proposal":
                    payload = conn.execute(
                        "SELECT payload FROM proposals WHERE proposal_id = ?", (run.cause_id,)
                    ).fetchone()
                    message_id = json.loads(payload["payload"])["message_id"] if payload else ""
                row = conn.execute(
                    "SELECT m.text, a.handle, o.handle AS owner_handle, a.owner_id FROM messages m"
                    " JOIN agents a ON a.agent_id = m.agent_id JOIN owners o ON o.owner_id = a.owner_id"
                    " WHERE m.room_id = ? AND m.message_id = ?",
                    (run.room_id, message_id),
                ).fetchone()
            if row is None:
                return CauseText("", "unknown", "unknown", cross_owner=True)
            return CauseText(row["text"], row["handle"], row["owner_handle"], row["owner_id"] != run.owner_id)

        return await self._store.read(load)

    async def started(self, run_id: str, pid: int, pid_start: int | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE run_id = ?", (pid, pid_start, run_id))
            row = conn.execute("SELECT agent_id, trigger, cause_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            audit.append(
                conn,
                Actor("system", self.holder),
                "run.spawn",
                target=row["agent_id"],
                detail={"run_id": run_id, "trigger": row["trigger"], "cause_id": row["cause_id"]},
            )

        await self._store.write(run)

    async def session(self, run_id: str, session_id: str) -> None:
        await self._store.write(
            lambda c: c.execute("UPDATE runs SET session_id = ? WHERE run_id = ?", (session_id, run_id))
        )

    async def renew(self) -> None:
        await self._store.write(
            lambda c: c.execute(
                "UPDATE runs SET lease_until = ? WHERE lease_holder = ? AND state IN ('running', 'stopping')",
                (self._lease(), self.holder),
            )
        )

    async def stop_requests(self) -> set[str]:
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
        """Record how a run ended and revoke its token. A rate-limited run puts its (owner, tool) into
        back-off (until the provider's reset time when known) and queues a follow-up that resumes the
        session once the back-off passes."""

        def run(conn: sqlite3.Connection) -> None:
            now = now_utc()
            row = conn.execute(
                "SELECT r.*, a.tool FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE r.run_id = ?", (run_id,)
            ).fetchone()
            retry_at = None
            if state == "rate_limited":
                tries = conn.execute(
                    "SELECT attempts FROM backoffs WHERE owner_id = ? AND tool = ?", (row["owner_id"], row["tool"])
                ).fetchone()
                retry_at = iso(backoff_until(datetime.now(UTC), reset_at, tries["attempts"] if tries else 0))
            conn.execute(
                "UPDATE runs SET state = ?, outcome = ?, stop_signal = ?, ended_at = ?, lease_holder = NULL,"
                " lease_until = NULL WHERE run_id = ?",
                (state, outcome, stop_signal, now, run_id),
            )
            _revoke_run_tokens(conn, run_id, now)
            if state == "rate_limited" and retry_at is not None:
                conn.execute(
                    "INSERT INTO backoffs (owner_id, tool, not_before, attempts) VALUES (?, ?, ?, 1)"
                    " ON CONFLICT (owner_id, tool) DO UPDATE SET not_before = excluded.not_before,"
                    " attempts = attempts + 1",
                    (row["owner_id"], row["tool"], retry_at),
                )
                if not conn.execute(
                    "SELECT 1 FROM runs WHERE agent_id = ? AND state = 'queued'", (row["agent_id"],)
                ).fetchone():
                    conn.execute(
                        "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by,"
                        " constrained, depth, state, resume, not_before, created_at)"
                        " SELECT ?, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained, depth,"
                        " 'queued', 1, ?, ? FROM runs WHERE run_id = ?",
                        (new_id("run"), retry_at, now, run_id),
                    )
            elif state == "completed":
                conn.execute("DELETE FROM backoffs WHERE owner_id = ? AND tool = ?", (row["owner_id"], row["tool"]))
            audit.append(
                conn,
                Actor("system", self.holder),
                "run.end",
                target=row["agent_id"],
                detail={"run_id": run_id, "state": state, "outcome": outcome, "stop_signal": stop_signal},
            )

        await self._store.write(run)


def backoff_until(now: datetime, reset_at: datetime | None, attempts: int) -> datetime:
    """wake.md §6.4: a known reset time plus up to 30 s of jitter, else an exponential wait from 30 s up to
    30 min, half fixed and half random, so owners' retries spread out rather than arrive together."""
    if reset_at is not None:
        return max(reset_at, now) + timedelta(seconds=random.uniform(0, 30))
    base = min(1800.0, 30.0 * 2 ** min(attempts, 10))
    return now + timedelta(seconds=base / 2 + random.uniform(0, base / 2))


def _revoke_run_tokens(conn: sqlite3.Connection, run_id: str, now: str) -> None:
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE run_id = ? AND revoked_at IS NULL", (now, run_id))
