"""What agents and owners see and do with runs (DESIGN §5 Stop, §3.1 `list_runs`, `stop_agent`): list
them, read one, and ask for a stop, which the supervisor holding the run carries out."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from agent_rooms_mcp import audit, policy
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.errors import not_found
from agent_rooms_mcp.models import RunInfo, RunList, StoppedRun, StopResult
from agent_rooms_mcp.principals import Caller, OwnerViewer, Scope, Viewer
from agent_rooms_mcp.run_states import Outcome, RunState, StopSignal
from agent_rooms_mcp.services.render import cut_page, notice, render_columns
from agent_rooms_mcp.services.runs import RUNS_SELECT
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store import queries
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import AgentRow


class Runs:
    """What agents and owners see and do: list runs, ask for a stop."""

    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def list_runs(
        self, caller: Caller, *, agent: str | None, room: str | None, state: str | None, after: int, limit: int
    ) -> RunList:
        policy.require_scope(caller, Scope.READ)
        # Runs of the caller's owner only: another owner's runs are not the caller's business; a run
        # token sees only its own room's (invariant 87).
        return await self._store.read(
            lambda conn: self._page(
                conn, caller, caller.owner_id, policy.run_room(caller), agent, room, state, after, limit
            )
        )

    async def list_as_owner(self, owner_id: str | None, *, after: int, limit: int) -> RunList:
        """`agent-rooms run list`: an owner's runs, newest first (the operator's: every owner's when None)."""
        return await self._store.read(
            lambda conn: self._page(conn, None, owner_id, None, None, None, None, after, limit)
        )

    def _page(
        self,
        conn: sqlite3.Connection,
        viewer: Viewer | None,
        owner_id: str | None,
        run_room: str | None,
        agent: str | None,
        room: str | None,
        state: str | None,
        after: int,
        limit: int,
    ) -> RunList:
        sql, args = (
            # A quarantined room's runs are gone for everyone, as the room is (DESIGN §6).
            RUNS_SELECT + " WHERE r.owner_id = coalesce(?, r.owner_id) AND r.room_id = coalesce(?, r.room_id)"
            " AND m.quarantined_at IS NULL",
            list[object]([owner_id, run_room]),
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
        runs, boundary = _infos(viewer, rows[:limit])
        empty = RunList(runs=[], boundary=boundary, notice=notice(boundary), next_after=after, has_more=True)
        cut = cut_page(self._limits, empty, runs, [r["position"] for r in rows], len(rows), after)
        return empty.model_copy(
            update={"runs": runs[: cut.kept], "next_after": cut.next_after, "has_more": cut.has_more}
        )

    async def stop_as_agent(self, caller: Caller, agent_ref: str, run_id: str | None) -> StopResult:
        policy.require_scope(caller, Scope.MANAGE)

        def run(conn: sqlite3.Connection) -> StopResult:
            queries.recheck_caller(conn, caller, Scope.MANAGE)
            agent = queries.agent(conn, agent_ref)
            # Another owner's agent answers as a missing one: a refusal must not confirm that a handle exists.
            if not policy.owns_agent(caller, agent.owner_id):
                raise not_found("agent", agent_ref)
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
            row = conn.execute(RUNS_SELECT + " WHERE r.run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise not_found("run", run_id)
            [info], _ = _infos(None, [row])
            return info

        return await self._store.read(run)


def _request_stop(conn: sqlite3.Connection, actor: Actor, agent: AgentRow, run_id: str | None) -> StopResult:
    """Wakes nobody holds end at once (nothing to signal); running ones are marked `stopping` for the
    supervisor that holds them, which sends the signals and records how the run ended."""
    live = (RunState.QUEUED, RunState.WAITING_FOR_LISTENER, RunState.RUNNING, RunState.STOPPING)
    sql, args = (
        f"SELECT * FROM runs WHERE agent_id = ? AND state IN ({', '.join('?' * len(live))})",
        [agent.agent_id, *live],
    )
    if run_id is not None:
        sql += " AND run_id = ?"
        args.append(run_id)
    now, stopped = now_utc(), []
    rows = conn.execute(sql, args).fetchall()
    if run_id is not None and not rows:
        raise not_found("run of this agent still queued or running", run_id)
    for row in rows:
        if row["state"] in (RunState.QUEUED, RunState.WAITING_FOR_LISTENER):
            conn.execute(
                "UPDATE runs SET state = ?, stop_signal = ?, outcome = ?, ended_at = ?, stop_requested_at = ?"
                " WHERE run_id = ?",
                (RunState.STOPPED, StopSignal.NONE, Outcome.STOPPED, now, now, row["run_id"]),
            )
            stopped.append(StoppedRun(run_id=row["run_id"], stop_signal=StopSignal.NONE, state=RunState.STOPPED))
        else:
            conn.execute(
                "UPDATE runs SET state = ?, stop_requested_at = coalesce(stop_requested_at, ?) WHERE run_id = ?",
                (RunState.STOPPING, now, row["run_id"]),
            )
            signal = StopSignal(row["stop_signal"] or StopSignal.NONE)
            stopped.append(StoppedRun(run_id=row["run_id"], stop_signal=signal, state=RunState.STOPPING))
    audit.append(conn, actor, "agent.stop", target=agent.agent_id, detail={"runs": [s.run_id for s in stopped]})
    return StopResult(stopped=stopped)


def as_their_owners_see(conn: sqlite3.Connection, where: str, args: Sequence[object]) -> list[RunInfo]:
    """The runs `where` selects (a condition on `RUNS_SELECT`, and its order), each as its own owner sees it:
    for the overviews that read across owners (services/overview.py)."""
    infos, _ = _infos(None, conn.execute(RUNS_SELECT + where, args).fetchall())
    return infos


def _infos(viewer: Viewer | None, rows: Sequence[sqlite3.Row]) -> tuple[list[RunInfo], str | None]:
    """Runs as `viewer` sees them, or (None) each as its own owner does. An outcome and a session id are what
    the agent's CLI reported: its words, rendered like any other free text (a CLI may quote whatever its
    prompt held)."""
    if viewer is None:
        each = [_infos(OwnerViewer(row["owner_id"]), [row]) for row in rows]
        # Each run's words are its own owner's agent's: never another owner's, so no envelope is needed.
        return [info for infos, _ in each for info in infos], next((b for _, b in each if b), None)
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
