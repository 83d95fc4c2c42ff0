"""Listeners, hub side (DESIGN §9.1): the wake book an owner's listener reaches over HTTPS.

A listener is one `agent-rooms listen` process on an enrolled device, named by a random holder id. It says
which of its owner's agents it will run (`hello`); it then holds each agent no other listener holds (one at a
time, under a fencing epoch, so two listeners never claim the same agent's wakes), claims only its owner's
wakes of the agents it holds, and reports through the same book as the hub's own supervisor (`ListenerBook`,
the store's book with the listener's claim rule). Each claim goes out signed with the issuer key
(`auth/wake_claims.py`); the agent's variables never do, since the listener keeps its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial

import anyio
import structlog
from nacl.signing import SigningKey

from agent_rooms_mcp import audit
from agent_rooms_mcp.auth.wake_claims import sign_claim
from agent_rooms_mcp.clock import iso, now_utc
from agent_rooms_mcp.errors import ErrorCode, RoomsError, invalid
from agent_rooms_mcp.models import Abandoned, HeldElsewhere, ListenerHello
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.run_states import HELD_STATES, RunState, sql_words
from agent_rooms_mcp.services.accounts import Accounts
from agent_rooms_mcp.services.runbook import ABANDONED_COLUMNS, LocalWakeBook
from agent_rooms_mcp.services.runs import LISTENER_STARTABLE, RUNS_SELECT, startable_args
from agent_rooms_mcp.services.withdrawal import revoke_run_tokens
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.store.database import Store
from agent_rooms_mcp.store.rows import AbandonedRun, ListenerRow

log = structlog.get_logger("agent_rooms_mcp.listeners")

_HELD = sql_words(*HELD_STATES)
# A listener re-checks its hold and its wakes at least this often while it waits: time alone frees wakes
# (a back-off or a spawn-rate minute passing), which no commit announces.
_RECHECK_S = 1.0
# Listener processes one device may run at once (a laptop's, restarted; not a flood of hellos).
_LIVE_PER_DEVICE = 4


class ListenerBook(LocalWakeBook):
    """The store's wake book as one listener sees it: it starts only its owner's wakes waiting for a
    listener, of agents it holds, under its own running caps; it never opens the agent's variables."""

    _waits_in = RunState.WAITING_FOR_LISTENER

    # A listener's recovery ends only its own device's abandoned runs (a restart's, a crash's), never another
    # owner's, and expires nobody's wakes: that sweep is the hub's own supervisor's.
    _recovers = " AND lease_holder IN (SELECT holder FROM listeners WHERE device_id = ?)"
    _expires = False

    def __init__(
        self, store: Store, caps: WakeSettings, accounts: Accounts, row: ListenerRow, *, key: SigningKey, dep: str
    ) -> None:
        super().__init__(store, caps, accounts, holder=row.holder, host=row.host)
        self._device_id = row.device_id
        self._owner_id = row.owner_id
        self._max_running = row.max_running
        self._max_per_agent = row.max_running_per_agent
        self._key = key
        self._deployment_id = dep

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def _recovers_args(self) -> tuple[object, ...]:
        return (self._device_id,)

    def _startable(self, now: datetime) -> tuple[str, dict[str, object]]:
        args = startable_args(self._caps, now)
        args.update(all=self._max_running, agent=self._max_per_agent, holder=self.holder, owner_id=self._owner_id)
        return LISTENER_STARTABLE, args

    async def _open_env(self, agent_id: str) -> dict[str, str]:
        # The variables stay on the owner's machine (DESIGN §9.1): only the run's token is minted here.
        return {}

    async def signed_claim(self) -> str | None:
        """The next wake this listener may start, claimed and signed for it alone; None when there is none."""
        claimed = await self.claim()
        if claimed is None:
            return None
        return sign_claim(self._key, self._deployment_id, claimed, self.holder, timedelta(seconds=self._caps.lease_s))

    async def renew(self) -> dict[str, int]:
        held = await super().renew()
        until, now = self._lease(), now_utc()

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE listener_holds SET until = ? WHERE holder = ?", (until, self.holder))
            conn.execute("UPDATE listeners SET seen_at = ? WHERE holder = ?", (now, self.holder))

        await self._store.write(run)
        return held

    async def wait_for_work(self, timeout_s: float) -> bool:
        """True as soon as this listener has something to do: a wake it may claim, a run it must stop, or
        a change while it holds running runs (whose wakes may need withdrawing); False after timeout_s."""
        start = seen = self._store.data_version()
        looked = -_RECHECK_S  # look at once
        # Over at the timeout, or at once when the server stops (the listener asks again, of the next hub).
        with self._store.long_poll(timeout_s):
            while True:
                now, version = anyio.current_time(), self._store.data_version()
                # A commit of any process is looked at at once (the store's one watch for every waiting
                # listener sees another process's within watch_s); without one, time-freed wakes every _RECHECK_S.
                if version != seen or now - looked >= _RECHECK_S:
                    seen, looked = version, now
                    if await self._store.read(partial(self._has_work, changed=version != start)):
                        return True
                await self._store.wait_any_change(_RECHECK_S)
        return False

    def _has_work(self, conn: sqlite3.Connection, *, changed: bool) -> bool:
        startable, args = self._startable(datetime.now(UTC))
        if conn.execute(RUNS_SELECT + " WHERE" + startable + " LIMIT 1", args).fetchone():
            return True
        held = conn.execute(
            f"SELECT state FROM runs WHERE lease_holder = ? AND state IN ({_HELD})", (self.holder,)
        ).fetchall()
        if any(r["state"] == RunState.STOPPING for r in held):
            return True
        # A change while it runs something may withdraw a run's wake (invariant 103): judged here, by the
        # scan the book's stop_requests makes, so a busy room costs the listener no request per commit.
        return changed and bool(self.withdrawn_runs(conn))


class Listeners:
    def __init__(
        self, store: Store, caps: WakeSettings, accounts: Accounts, key: SigningKey, deployment_id: str
    ) -> None:
        self._store = store
        self._caps = caps
        self._accounts = accounts
        self._key = key
        self._deployment_id = deployment_id
        self._waiting: set[str] = set()

    async def hello(
        self,
        who: Human,
        holder: str,
        host: str,
        agents: list[str],
        *,
        take_over: bool,
        max_running: int,
        max_running_per_agent: int,
    ) -> ListenerHello:
        """Register this listener and hold each named agent of its owner that no other live listener holds.
        A hold of the same device on the same host is this listener restarted: it is taken over, and the
        runs the old process held end as the book's recovery ends them (spawned: `lost`, and their CLIs
        named for the new process to make sure they are gone; not spawned: waiting again). `take_over`
        takes every named agent from whichever listener holds it, audited, so the owner sees it."""
        device_id, owner_id = _device_of(who)
        if not holder.startswith("lst_") or not 8 <= len(holder) <= 64 or not holder.isascii():
            raise invalid("holder", "a listener's holder id is lst_ and random characters")
        if not host or len(host) > 255 or not host.isprintable():
            raise invalid("host", "name this listener's host in at most 255 printable characters")
        # The hub names the host, with the device in it: a listener's word alone must never make its runs
        # look like processes of the hub's own machine, whose recovery would then kill those pids there.
        host = f"{device_id}@{host}"
        if not 1 <= max_running <= 64 or not 1 <= max_running_per_agent <= max_running:
            raise invalid("max_running", "give caps between 1 and 64, per agent at most the total")
        lease = iso(datetime.now(UTC) + timedelta(seconds=self._caps.lease_s))

        def run(conn: sqlite3.Connection) -> ListenerHello:
            now = now_utc()
            known = conn.execute("SELECT device_id FROM listeners WHERE holder = ?", (holder,)).fetchone()
            if known is not None and known["device_id"] != device_id:
                raise RoomsError(ErrorCode.FORBIDDEN_SCOPE, "that holder id belongs to another device's listener")
            if known is None:
                self._admit(conn, who, device_id, holder, host, now)
            conn.execute(
                "INSERT INTO listeners (holder, device_id, owner_id, host, max_running, max_running_per_agent,"
                " started_at, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (holder) DO UPDATE SET"
                " seen_at = excluded.seen_at",
                (holder, device_id, owner_id, host, max_running, max_running_per_agent, now, now),
            )
            row = _listener(conn, holder)
            assert row is not None  # written just above, in this transaction
            book = ListenerBook(self._store, self._caps, self._accounts, row, key=self._key, dep=self._deployment_id)
            answer = ListenerHello(holder=holder, lease_s=self._caps.lease_s)
            for handle in agents:
                agent = conn.execute(
                    "SELECT agent_id, owner_id FROM agents WHERE handle = ? AND status = 'active'", (handle,)
                ).fetchone()
                if agent is None or agent["owner_id"] != owner_id:  # another owner's agent is not here to see
                    answer.unknown.append(handle)
                    continue
                hold = conn.execute(
                    "SELECT h.*, l.device_id, l.host, d.name AS device FROM listener_holds h"
                    " JOIN listeners l ON l.holder = h.holder JOIN devices d ON d.device_id = l.device_id"
                    " WHERE h.agent_id = ?",
                    (agent["agent_id"],),
                ).fetchone()
                if hold is not None and hold["holder"] != holder:
                    restart = hold["device_id"] == device_id and hold["host"] == host
                    if hold["until"] > now and not restart and not take_over:
                        answer.elsewhere.append(HeldElsewhere(agent=handle, device=hold["device"], host=hold["host"]))
                        continue
                    answer.left_behind += self._release(conn, book, hold["holder"], agent["agent_id"], now)
                    audit.append(conn, who.actor, "listener.take_over", target=agent["agent_id"],
                                 detail={"holder": holder, "from_device": hold["device_id"],
                                         "restart": restart, "explicit": take_over})  # fmt: skip
                elif hold is None:
                    audit.append(conn, who.actor, "listener.hold", target=agent["agent_id"], detail={"holder": holder})
                epoch = (hold["epoch"] if hold is not None else 0) + (hold is None or hold["holder"] != holder)
                conn.execute(
                    "INSERT INTO listener_holds (agent_id, holder, epoch, until) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (agent_id) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch,"
                    " until = excluded.until",
                    (agent["agent_id"], holder, epoch, lease),
                )
                answer.held.append(handle)
            return answer

        return await self._store.write(run)

    def _admit(self, conn: sqlite3.Connection, who: Human, device_id: str, holder: str, host: str, now: str) -> None:
        """A new listener process of this device: audited, and bounded, since each hello with a fresh holder
        id would otherwise add a row for ever. Rows of the device's listeners gone a day, holding nothing,
        are dropped; at most `_LIVE_PER_DEVICE` may be live at once."""
        day_ago = iso(datetime.now(UTC) - timedelta(days=1))
        conn.execute(
            "DELETE FROM listeners WHERE device_id = ? AND seen_at < ?"
            " AND holder NOT IN (SELECT holder FROM listener_holds)"
            " AND holder NOT IN (SELECT lease_holder FROM runs WHERE lease_holder IS NOT NULL)",
            (device_id, day_ago),
        )
        fresh = iso(datetime.now(UTC) - timedelta(seconds=self._caps.lease_s))
        [live] = conn.execute(
            "SELECT count(*) FROM listeners WHERE device_id = ? AND seen_at >= ?", (device_id, fresh)
        ).fetchone()
        if live >= _LIVE_PER_DEVICE:
            raise RoomsError(ErrorCode.CONFLICT, f"{live} listeners of this device run already; stop one first")
        audit.append(conn, who.actor, "listener.start", target=device_id, detail={"holder": holder, "host": host})

    def _release(
        self, conn: sqlite3.Connection, book: ListenerBook, old: str, agent_id: str, now: str
    ) -> list[Abandoned]:
        rows = conn.execute(
            f"SELECT {ABANDONED_COLUMNS} FROM runs WHERE lease_holder = ? AND agent_id = ? AND state IN ({_HELD})",
            (old, agent_id),
        ).fetchall()
        left = [book.end_abandoned(conn, AbandonedRun.from_row(row), now) for row in rows]
        return [Abandoned(run_id=x.run_id, pid=x.pid, pid_start=x.pid_start) for x in left if x is not None]

    async def bye(self, who: Human, holder: str) -> list[str]:
        """A listener stopping cleanly (Ctrl-C) lets go of its agents at once, so another listener of the
        owner may hold them without waiting for the lease to pass. An agent with a run this listener still
        holds (its end not reported) stays held until that run's lease passes, as for a listener that died.
        Returns the handles let go."""
        book = await self.book(who, holder)  # refused for another device's holder

        def run(conn: sqlite3.Connection) -> list[str]:
            now = now_utc()
            rows = conn.execute(
                "SELECT h.agent_id, a.handle FROM listener_holds h JOIN agents a ON a.agent_id = h.agent_id"
                " WHERE h.holder = ? AND h.until > ? AND h.agent_id NOT IN"
                f" (SELECT agent_id FROM runs WHERE lease_holder = ? AND state IN ({_HELD}))",
                (holder, now, holder),
            ).fetchall()
            for row in rows:
                # Its lease ends now, as if it had lapsed: the row and its epoch stay, so the next listener's
                # hello takes it over exactly as it would after the lease time.
                conn.execute(
                    "UPDATE listener_holds SET until = ? WHERE agent_id = ? AND holder = ?",
                    (now, row["agent_id"], holder),
                )
            if rows:
                audit.append(conn, who.actor, "listener.release", target=book.device_id,
                             detail={"holder": holder, "holds": len(rows), "reason": "stopped"})  # fmt: skip
            return sorted(r["handle"] for r in rows)

        return await self._store.write(run)

    @contextmanager
    def waiting(self, holder: str) -> Iterator[None]:
        """One long poll at a time per listener: each holds a connection for up to 25 s, and the hub's
        connections are shared by every owner."""
        if holder in self._waiting:
            raise RoomsError(ErrorCode.RATE_LIMITED, "this listener is waiting already", retry_after_ms=1000)
        self._waiting.add(holder)
        try:
            yield
        finally:
            self._waiting.discard(holder)

    async def book(self, who: Human, holder: str) -> ListenerBook:
        """The book of this device's listener `holder`; refused for a holder of another device."""
        device_id, _ = _device_of(who)
        row = await self._store.read(lambda c: _listener(c, holder))
        if row is None or row.device_id != device_id:
            # Not a refusal of the device (that is a 401): the listener says hello again and goes on.
            raise RoomsError(ErrorCode.CONFLICT, "no listener of this device has that holder id; say hello")
        return ListenerBook(self._store, self._caps, self._accounts, row, key=self._key, dep=self._deployment_id)


def _listener(conn: sqlite3.Connection, holder: str) -> ListenerRow | None:
    row = conn.execute("SELECT * FROM listeners WHERE holder = ?", (holder,)).fetchone()
    return None if row is None else ListenerRow.from_row(row)


def _device_of(who: Human) -> tuple[str, str]:
    if who.device_id is None or who.owner_id is None:
        raise RoomsError(ErrorCode.FORBIDDEN_SCOPE, "only an enrolled device runs a listener (agent-rooms login)")
    return who.device_id, who.owner_id


def release_device(conn: sqlite3.Connection, actor: audit.Actor, device_id: str, now: str) -> list[str]:
    """A device revoked (DESIGN §9.1): in the revoking transaction, every run its listeners hold loses its
    token and is marked `stop_pending` (the hub asked for the stop but cannot see it happen: the listener
    stops them on its next request's 401), and its holds end so another listener of the owner may take
    the agents. Returns the runs."""
    rows = conn.execute(
        f"SELECT run_id, agent_id, spawned_at, pid FROM runs WHERE state IN ({_HELD}) AND lease_holder IN"
        " (SELECT holder FROM listeners WHERE device_id = ?)",
        (device_id,),
    ).fetchall()
    for row in rows:
        revoke_run_tokens(conn, row["run_id"], now)
        if row["spawned_at"] is None and row["pid"] is None:
            # Never executed: its lease ends now, and the next recovery puts the wake back to wait.
            conn.execute("UPDATE runs SET lease_until = ? WHERE run_id = ?", (now, row["run_id"]))
            continue
        # Its lease stays: when it passes, recovery ends the run `lost`, the end nobody could confirm.
        conn.execute(
            "UPDATE runs SET state = ?, stop_requested_at = coalesce(stop_requested_at, ?) WHERE run_id = ?",
            (RunState.STOP_PENDING, now, row["run_id"]),
        )
        audit.append(conn, actor, "run.stop_pending", target=row["agent_id"],
                     detail={"run_id": row["run_id"], "reason": "device_revoked"})  # fmt: skip
    released = conn.execute(
        "DELETE FROM listener_holds WHERE holder IN (SELECT holder FROM listeners WHERE device_id = ?)", (device_id,)
    ).rowcount
    if released:
        audit.append(conn, actor, "listener.release", target=device_id, detail={"holds": released})
    return [r["run_id"] for r in rows]
