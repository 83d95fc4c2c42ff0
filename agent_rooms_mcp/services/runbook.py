"""The wake book over the store (DESIGN §5): what the embedded supervisor asks of the hub, in process.

It claims a queued wake (re-checking everything the wake needed, reading the words that were accepted,
opening the agent's sealed variables and minting the run's token), records the run's start, session and
end, renews and recovers leases, and reports stop requests. Every state change writes its audit row in
the same transaction (invariant 85). An owner's listener will implement the same `WakeBook` over HTTPS.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.book import BookUnavailable, CauseText, Claimed, Ending, LeaseLost, LeftBehind
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.models import Relation
from agent_rooms_mcp.principals import AgentTool
from agent_rooms_mcp.run_states import HELD_STATES, WAITING_STATES, Outcome, RunState, Trigger, sql_words, withdrawn
from agent_rooms_mcp.services import crossing
from agent_rooms_mcp.services.accounts import Accounts
from agent_rooms_mcp.services.render import said
from agent_rooms_mcp.services.runs import RUNS_SELECT, STARTABLE, expire_waiting, startable_args, waiting_state_of
from agent_rooms_mcp.services.withdrawal import revoke_run_tokens, withdraw, withdrawal
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import AbandonedRun, ClaimRow, WakeRow
from agent_rooms_mcp.vault import VaultError

log = structlog.get_logger("agent_rooms_mcp.wake")

_SYSTEM = "system"
# A run whose holder is gone, found by its lease: held, or marked stop_pending by a device revoke (DESIGN
# §9.1: the hub asked, only the listener could confirm; once its lease passes it is `lost`).
_ABANDONABLE = sql_words(*HELD_STATES, RunState.STOP_PENDING)
ABANDONED_COLUMNS = "run_id, pid, pid_start, spawned_at, agent_id, owner_id, lease_holder, lease_host, withdraw_reason"


@contextmanager
def _busy_is_unavailable() -> Iterator[None]:
    """A database locked past the busy timeout (another process's long write) is the book being unavailable
    for now, which the supervisor rides out, not a failure of its own."""
    try:
        yield
    except sqlite3.OperationalError as e:
        raise BookUnavailable(str(e)) from e


class LocalWakeBook:
    """The `WakeBook` of a supervisor embedded in a serving process: every call is a store transaction."""

    def __init__(self, store: Store, caps: WakeSettings, accounts: Accounts, *, holder: str, host: str) -> None:
        self._store = store
        self._caps = caps
        self._accounts = accounts
        self._holder = holder
        self._host = host
        self._seen = -1  # the data_version last acted on: the first look always acts

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def host(self) -> str:
        return self._host

    @property
    def _actor(self) -> Actor:
        return Actor(_SYSTEM, self._holder)

    def _lease(self) -> str:
        return iso(datetime.now(UTC) + timedelta(seconds=self._caps.lease_s))

    async def wait_for_work(self, timeout_s: float) -> bool:
        # SQLite's data_version moves with every commit of another connection (this process's writer
        # included), so polling it often costs one pragma when nothing happened; a commit of this process
        # wakes the wait at once.
        deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
        while True:
            version = self._store.data_version()
            if version != self._seen:
                self._seen = version
                return True
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                return False
            await self._store.wait_changed(min(left, self._caps.poll_s))

    async def recover(self) -> list[LeftBehind]:
        """Runs whose holder's lease ran out: never started -> queued again; started -> `lost`, and the CLI
        of each such run that ran on this host, for the caller to make sure it is gone. A process on another
        host is not ours to kill: its pid here names some unrelated process. Wakes that waited for their
        owner's listener longer than `listener_wait_s` end `expired`, which their causer sees."""

        def run(conn: sqlite3.Connection) -> list[LeftBehind]:
            now = now_utc()
            if self._expires:
                self._expire(conn, now)
            rows = conn.execute(
                f"SELECT {ABANDONED_COLUMNS} FROM runs WHERE state IN ({_ABANDONABLE}) AND lease_until < ?"
                + self._recovers,
                (now, *self._recovers_args),
            ).fetchall()
            abandoned = [AbandonedRun.from_row(r) for r in rows]
            return [left for gone in abandoned if (left := self.end_abandoned(conn, gone, now)) is not None]

        with _busy_is_unavailable():
            return await self._store.write(run)

    def end_abandoned(self, conn: sqlite3.Connection, run: AbandonedRun, now: str) -> LeftBehind | None:
        """A held run whose holder is gone (its lease ran out, or its listener restarted): never spawned ->
        waiting again; its spawn reported -> `lost` (DESIGN §9.1: never run twice), with its CLI returned
        when it ran on this host, for the caller to make sure it is gone. A process on another host is not
        ours to kill: its pid here names some unrelated process."""
        revoke_run_tokens(conn, run.run_id, now)  # a token minted before the crash dies too
        detail = {"run_id": run.run_id, "lease_holder": run.lease_holder, "lease_host": run.lease_host}
        spawned = run.spawned_at is not None or run.pid is not None
        if not spawned and run.withdraw_reason is not None:
            # Withdrawn before its CLI ever started: it ends so, rather than queue again.
            withdraw(conn, run.run_id, RunState.QUEUED, run.withdraw_reason, now)
            audit.append(conn, self._actor, "run.withdraw", target=run.agent_id,
                         detail={**detail, "reason": run.withdraw_reason})  # fmt: skip
            return None
        if not spawned:
            # Back to where its owner's wakes wait now: the owner may have stopped being local.
            conn.execute(
                "UPDATE runs SET state = ?, lease_holder = NULL, lease_host = NULL, lease_until = NULL,"
                " started_at = NULL WHERE run_id = ?",
                (waiting_state_of(conn, run.owner_id), run.run_id),
            )
            audit.append(conn, self._actor, "run.requeue", target=run.agent_id, detail=detail)
            return None
        conn.execute(
            "UPDATE runs SET state = ?, outcome = ?, ended_at = ?, lease_holder = NULL, lease_until = NULL"
            " WHERE run_id = ?",
            (RunState.LOST, Outcome.LOST, now, run.run_id),
        )
        audit.append(conn, self._actor, "run.lost", target=run.agent_id, detail=detail)
        # A lease written before leases named their host was written on the hub's own machine.
        ours = run.lease_host == self._host or (run.lease_host is None and self._expires)
        if run.pid is not None and run.pid_start is not None and ours:
            return LeftBehind(run.run_id, run.pid, run.pid_start)
        return None

    def _expire(self, conn: sqlite3.Connection, now: str) -> None:
        expire_waiting(conn, self._caps, self._actor, now)

    async def claim(self) -> Claimed | None:
        """The oldest queued run that no cap holds back, now held by this supervisor; None if there is none.

        "Starts" means this claim (DESIGN §4): in its transaction every condition the wake needed is checked
        again, a wake that fails one ends `withdrawn` with the reason (audited) and the next is looked at,
        and the words the run will be given are read from what was accepted. Then the agent's variables are
        opened and the run's token minted: a run holds both before it spawns anything."""
        with _busy_is_unavailable():
            claimed = await self._claim()
        return None if claimed is None else await self._equip(claimed)

    # Where the wakes this book claims wait, and which of them it may start now: the hub's own supervisor
    # starts local owners' queued wakes (a listener's book, services/listeners.py, says otherwise).
    _waits_in = RunState.QUEUED
    # Which abandoned runs this book's recovery ends (an SQL condition on `runs` and its arguments), and
    # whether it also expires wakes that waited too long for a listener: the hub's own supervisor does both,
    # for everyone; a listener only for its own device's runs.
    _recovers = ""
    _expires = True

    @property
    def _recovers_args(self) -> tuple[object, ...]:
        return ()

    def _startable(self, now: datetime) -> tuple[str, dict[str, object]]:
        return STARTABLE, startable_args(self._caps, now)

    async def _claim(self) -> Claimed | None:
        # Most looks find nothing: a read costs far less than taking the write lock to find that out.
        if not await self._store.read(
            lambda c: c.execute("SELECT 1 FROM runs WHERE state = ?", (self._waits_in,)).fetchone()
        ):
            return None

        def run(conn: sqlite3.Connection) -> Claimed | None:
            now = datetime.now(UTC)
            while True:
                startable, args = self._startable(now)
                first = RUNS_SELECT + " WHERE" + startable + " ORDER BY r.created_at LIMIT 1"
                row = conn.execute(first, args).fetchone()
                if row is None:
                    return None
                claim = ClaimRow.from_row(row)
                wake = claim.wake
                reason = withdrawal(conn, wake, started=False)
                words = _words(conn, wake) if reason is None else None
                if words is None:
                    reason = reason or "payload_missing"
                    withdraw(conn, wake.run_id, RunState.QUEUED, reason, iso(now))
                    audit.append(conn, self._actor, "run.withdraw", target=wake.agent_id,
                                 detail={"run_id": wake.run_id, "reason": reason})  # fmt: skip
                    continue
                return self._hold(conn, claim, words, now)

        return await self._store.write(run)

    async def _equip(self, claimed: Claimed) -> Claimed:
        """Open the agent's variables and mint the run's token. Neither failing leaves the claim dangling:
        the supervisor ends a run without variables `env_unavailable` and one without a token as unable
        to reach the hub."""
        try:
            # Sealed at rest; without the master key the run fails closed rather than start without them.
            env: dict[str, str] | None = await self._open_env(claimed.agent_id)
        except (HomeError, VaultError) as e:
            log.warning(
                "run.env_refused", run_id=claimed.run_id, agent=claimed.handle, error=type(e).__name__, why=str(e)
            )
            return replace(claimed, env=None)
        try:
            issued = await self._accounts.issue_run_token(
                self._actor,
                claimed.agent_id,
                claimed.run_id,
                timedelta(seconds=self._caps.run_limit_s),
                holder=self._holder,
                lease=claimed.lease,
            )
        except Exception as e:  # the supervisor ends it; a claim must never leave a run held and idle
            log.warning("run.token_refused", run_id=claimed.run_id, error=type(e).__name__)
            return replace(claimed, env=env)
        return replace(claimed, env=env, run_token=issued.token)

    async def _open_env(self, agent_id: str) -> dict[str, str]:
        return await self._accounts.env_for_run(agent_id)

    def _hold(self, conn: sqlite3.Connection, claim: ClaimRow, words: CauseText, now: datetime) -> Claimed:
        wake = claim.wake
        [lease] = conn.execute(
            "UPDATE runs SET state = ?, lease_holder = ?, lease_host = ?, lease_until = ?, started_at = ?,"
            " lease_epoch = lease_epoch + 1 WHERE run_id = ? RETURNING lease_epoch",
            (RunState.RUNNING, self._holder, self._host, self._lease(), iso(now), wake.run_id),
        ).fetchone()
        audit.append(conn, self._actor, "run.claim", target=wake.agent_id,
                     detail={"run_id": wake.run_id, "host": self._host})  # fmt: skip
        # A constrained session may hold another owner's words: an unconstrained run never resumes
        # it, so each kind of run continues its own kind of session.
        last = conn.execute(
            "SELECT session_id, session_host FROM runs WHERE agent_id = ? AND session_id IS NOT NULL"
            " AND constrained = ? ORDER BY started_at DESC LIMIT 1",
            (wake.agent_id, claim.constrained),
        ).fetchone()
        return Claimed(
            run_id=wake.run_id,
            agent_id=wake.agent_id,
            handle=claim.handle,
            owner_id=wake.owner_id,
            tool=claim.tool.value,
            workdir=claim.workdir,
            room_id=wake.room_id,
            room_name=claim.room_name,
            trigger=wake.trigger.value,
            cause_id=wake.cause_id,
            caused_by=claim.caused_by,
            causers=tuple(sorted(wake.causers)),
            constrained=claim.constrained,
            depth=claim.depth,
            resume_session=self._resumable(last),
            words=words,
            retry=claim.resume,
            lease=lease,
            sandbox=claim.sandbox,
        )

    def _resumable(self, last: sqlite3.Row | None) -> str | None:
        """The agent's last session, if this supervisor can resume it. A CLI keeps its sessions on the machine
        that ran it (in that home's CLI configuration): one made on another device, or on the hub, is not
        there, and resuming it would end the run "No conversation found". Then the run starts afresh. ""
        marks a session the CLI lost. A session recorded before sessions named their host was the hub's."""
        # Nor one a CLI would read as an option ("--resume ID"): a listener's report before its API refused those.
        if last is None or not last["session_id"] or str(last["session_id"]).startswith("-"):
            return None
        host = last["session_host"]
        here = host == self._host or (host is None and self._expires)
        return str(last["session_id"]) if here else None

    def _held(self, conn: sqlite3.Connection, run_id: str, lease: int, sets: str, args: tuple[object, ...]) -> None:
        """Apply `sets` to the run only while this claim holds it: this holder, this claim's epoch, a held
        state. Otherwise the lease ran out and another supervisor's recovery ended or re-queued the run
        (perhaps claimed anew since): nothing is written over it, and the caller hears `LeaseLost`."""
        changed = conn.execute(
            f"UPDATE runs SET {sets} WHERE run_id = ? AND lease_holder = ? AND lease_epoch = ?"
            f" AND state IN ({sql_words(*HELD_STATES)})",
            (*args, run_id, self._holder, lease),
        ).rowcount
        if not changed:
            log.warning("run.lease_lost", run_id=run_id, holder=self._holder, lease=lease)
            raise LeaseLost(f"run {run_id} is no longer held by {self._holder} under lease {lease}")

    async def spawning(self, run_id: str, lease: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            # The spawn is the state change the reader sees (DESIGN §9.1: reported before the exec), so its
            # audit row is written here; the pid that follows only helps a recovery find the process.
            self._held(conn, run_id, lease, "spawned_at = coalesce(spawned_at, ?)", (now_utc(),))
            row = conn.execute("SELECT agent_id, trigger, cause_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            audit.append(
                conn,
                self._actor,
                "run.spawn",
                target=row["agent_id"],
                detail={"run_id": run_id, "trigger": row["trigger"], "cause_id": row["cause_id"]},
            )

        with _busy_is_unavailable():
            await self._store.write(run)

    async def started(self, run_id: str, lease: int, pid: int, pid_start: int | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            self._held(conn, run_id, lease, "pid = ?, pid_start = ?", (pid, pid_start))

        with _busy_is_unavailable():
            await self._store.write(run)

    async def session(self, run_id: str, lease: int, session_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            # Where the session lives: the host of the lease that ran it (a listener's names its device).
            self._held(conn, run_id, lease, "session_id = ?, session_host = lease_host", (session_id,))
            row = conn.execute("SELECT agent_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            # "" records a session the CLI lost: the next wake starts afresh.
            audit.append(conn, self._actor, "run.session", target=row["agent_id"],
                         detail={"run_id": run_id, "session_id": session_id or None})  # fmt: skip

        with _busy_is_unavailable():
            await self._store.write(run)

    async def renew(self) -> dict[str, int]:
        # Extending a lease changes no state a reader sees (the run stays where it was): no audit row. Only
        # runs still held are extended (a run recovered from this holder is in another state or queued with
        # no holder), and they are named, so the supervisor stops the CLI of any run it lost.
        with _busy_is_unavailable():
            return await self._store.write(
                lambda c: {
                    r[0]: r[1]
                    for r in c.execute(
                        "UPDATE runs SET lease_until = ? WHERE lease_holder = ?"
                        f" AND state IN ({sql_words(*HELD_STATES)}) RETURNING run_id, lease_epoch",
                        (self._lease(), self._holder),
                    )
                }
            )

    async def stop_requests(self) -> set[str]:
        """The runs this supervisor holds that must stop: asked to, or withdrawn because something their
        wake needed has changed since it started (invariant 103), which is marked here, audited."""
        with _busy_is_unavailable():
            return await self._stop_requests()

    def withdrawn_runs(self, conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
        """(run id, agent id, reason) of each running run this holder holds whose wake no longer stands:
        something it needed changed since it started (invariant 103). The one scan for both books' uses."""
        rows = conn.execute(
            "SELECT * FROM runs WHERE lease_holder = ? AND state = ?", (self._holder, RunState.RUNNING)
        ).fetchall()
        return [
            (r["run_id"], r["agent_id"], why)
            for r in rows
            if (why := withdrawal(conn, WakeRow.from_row(r), started=True))
        ]

    async def _stop_requests(self) -> set[str]:
        if await self._store.read(self.withdrawn_runs):

            def mark(conn: sqlite3.Connection) -> None:
                now = now_utc()
                for run_id, agent_id, reason in self.withdrawn_runs(conn):  # again, under the write lock
                    withdraw(conn, run_id, RunState.RUNNING, reason, now)
                    audit.append(conn, self._actor, "run.withdraw", target=agent_id,
                                 detail={"run_id": run_id, "reason": reason})  # fmt: skip

            await self._store.write(mark)
        return await self._store.read(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT run_id FROM runs WHERE lease_holder = ? AND state = ?", (self._holder, RunState.STOPPING)
                )
            }
        )

    async def finish(self, run_id: str, lease: int, ending: Ending) -> None:
        """Record how a run ended and revoke its token. A run stopped because its wake was withdrawn ends
        `withdrawn`. A rate-limited run (`failed`, outcome `rate_limit`) puts its (owner, tool) into back-off
        (until the provider's reset time when known) and queues a follow-up that resumes the session once
        the back-off passes."""
        reset_at = datetime.fromisoformat(ending.reset_at) if ending.reset_at else None

        def run(conn: sqlite3.Connection) -> None:
            now = now_utc()
            row = conn.execute(
                "SELECT r.*, a.tool FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE r.run_id = ?", (run_id,)
            ).fetchone()
            if row is None:  # no such run: certainly not held by this claim
                raise LeaseLost(f"run {run_id} is not held by {self._holder}")
            final, ended_as = ending.state, ending.outcome
            # Withdrawn whether the signal ended it or the CLI finished first: its causer sees why (DESIGN §5).
            if row["withdraw_reason"] is not None:
                final, ended_as = RunState.WITHDRAWN, withdrawn(row["withdraw_reason"])
            # Fenced: a holder that lost the run must neither end it again nor revoke its new holder's token.
            self._held(conn, run_id, lease, "state = ?, outcome = ?, stop_signal = ?, ended_at = ?,"
                       " lease_holder = NULL, lease_host = NULL, lease_until = NULL",
                       (final, ended_as, ending.stop_signal, now))  # fmt: skip
            revoke_run_tokens(conn, run_id, now)
            detail: dict[str, object] = {"run_id": run_id, "state": final, "outcome": ended_as}
            detail["stop_signal"] = ending.stop_signal
            if ending.input_tokens or ending.output_tokens or ending.tool_counts:
                detail["usage"] = {
                    "input_tokens": ending.input_tokens,
                    "output_tokens": ending.output_tokens,
                    "cost_usd_micros": ending.cost_usd_micros,
                    "tools": ending.tool_counts,
                }
            if ended_as == Outcome.RATE_LIMIT:
                detail["follow_up"] = self._back_off(conn, WakeRow.from_row(row), AgentTool(row["tool"]), reset_at, now)
            elif final == RunState.COMPLETED:
                conn.execute("DELETE FROM backoffs WHERE owner_id = ? AND tool = ?", (row["owner_id"], row["tool"]))
            audit.append(conn, self._actor, "run.end", target=row["agent_id"], detail=detail)

        # notify: a run ending frees a cap, so this process's supervisor looks for the next wake at once.
        with _busy_is_unavailable():
            await self._store.write(run, notify=True)

    def _back_off(
        self, conn: sqlite3.Connection, run: WakeRow, tool: AgentTool, reset_at: datetime | None, now: str
    ) -> str | None:
        """Back-off for the run's (owner, tool), and the follow-up run queued to resume it (None when the
        agent already has a queued wake, which will resume the session anyway)."""
        tries = conn.execute(
            "SELECT attempts FROM backoffs WHERE owner_id = ? AND tool = ?", (run.owner_id, tool)
        ).fetchone()
        retry_at = iso(backoff_until(datetime.now(UTC), reset_at, tries["attempts"] if tries else 0, self._caps))
        conn.execute(
            "INSERT INTO backoffs (owner_id, tool, not_before, attempts) VALUES (?, ?, ?, 1)"
            " ON CONFLICT (owner_id, tool) DO UPDATE SET not_before = excluded.not_before,"
            " attempts = attempts + 1",
            (run.owner_id, tool, retry_at),
        )
        if conn.execute(
            f"SELECT 1 FROM runs WHERE agent_id = ? AND state IN ({sql_words(*WAITING_STATES)})", (run.agent_id,)
        ).fetchone():
            return None
        follow_up = new_id("run")
        # The follow-up carries what bound the original: its causers, its accepted payload, its constraint.
        conn.execute(
            "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers,"
            " proposal_id, payload_sha256, constrained, depth, state, resume, not_before, created_at)"
            " SELECT ?, agent_id, owner_id, room_id, trigger, cause_id, caused_by, causers, proposal_id,"
            " payload_sha256, constrained, depth, ?, 1, ?, ? FROM runs WHERE run_id = ?",
            (follow_up, waiting_state_of(conn, run.owner_id), retry_at, now, run.run_id),
        )
        audit.append(conn, self._actor, "run.follow_up", target=run.agent_id,
                     detail={"run_id": follow_up, "after": run.run_id, "not_before": retry_at})  # fmt: skip
        return follow_up


def _words(conn: sqlite3.Connection, run: WakeRow) -> CauseText | None:
    """The words a claimed run is given: an accepted proposal's payload, a task's agreed words (the hash
    `withdrawal` checked proves the row still holds them), or the message that mentioned it. None when
    they are gone."""
    foreign = bool(crossing.others(run.causers, run.owner_id))
    payload = None
    if run.proposal_id is not None:
        stored = conn.execute(
            "SELECT payload, payload_sha256 FROM proposals WHERE proposal_id = ?", (run.proposal_id,)
        ).fetchone()
        if stored is None or crossing.canonical(json.loads(stored["payload"]))[1] != stored["payload_sha256"]:
            return None
        payload = json.loads(stored["payload"])
    if run.trigger == Trigger.TASK:
        task = conn.execute("SELECT * FROM tasks WHERE task_id = ?", (run.cause_id,)).fetchone()
        if task is None:
            return None
        words = payload or {"title": task["title"], "body": task["body"]}
        text, author_id = f"{words['title']}\n\n{words['body']}", task["creator_id"]
    else:
        message_id = payload["message_id"] if payload and run.trigger == Trigger.WAKE_PROPOSAL else run.cause_id
        message = conn.execute(
            "SELECT text, agent_id FROM messages WHERE room_id = ? AND message_id = ?", (run.room_id, message_id)
        ).fetchone()
        if message is None:
            return None
        text, author_id = (payload["text"] if payload else message["text"]), message["agent_id"]
    author = conn.execute(
        "SELECT a.handle, a.owner_id, o.handle AS owner_handle FROM agents a"
        " JOIN owners o ON o.owner_id = a.owner_id WHERE a.agent_id = ?",
        (author_id,),
    ).fetchone()
    cross = foreign or author["owner_id"] != run.owner_id
    return rendered(CauseText(text, author["handle"], author["owner_handle"], cross))


def rendered(words: CauseText) -> CauseText:
    """The words as the woken CLI reads them: sanitised, and enveloped when another owner wrote them, by
    the same rendering as every tool result's free text. Done at the claim, on the hub, so a supervisor
    anywhere is handed exactly what its CLI will read and never renders another owner's words itself."""
    relation: Relation = "cross_owner" if words.cross_owner else "same_owner"
    [shown], _ = said([(words.text, words.author, words.owner, relation)])
    return replace(words, text=shown.text)


def backoff_until(now: datetime, reset_at: datetime | None, attempts: int, caps: WakeSettings) -> datetime:
    """wake.md §6.4: a known reset time plus up to 30 s of jitter, else an exponential wait from 30 s up to
    30 min, half fixed and half random, so owners' retries spread out rather than arrive together. The reset
    time is a run's word (a listener's report, a CLI's output): it counts only within `backoff_min_s` and
    `backoff_max_s` from now."""
    if reset_at is not None:
        earliest, latest = now + timedelta(seconds=caps.backoff_min_s), now + timedelta(seconds=caps.backoff_max_s)
        return min(max(reset_at, earliest), latest) + timedelta(seconds=random.uniform(0, 30))
    base = min(1800.0, 30.0 * 2 ** min(attempts, 10))
    return now + timedelta(seconds=base / 2 + random.uniform(0, base / 2))
