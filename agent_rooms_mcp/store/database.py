"""The database: one writer connection and one reader, WAL, pragmas, migrations (DESIGN §8).

A transaction is one function of a `sqlite3.Connection`, run whole: nothing interleaves inside it.
A thread hop measured ~300 µs of server CPU per call here, several times the SQL of a call
(docs/PERFORMANCE.md), so the usual path runs on the event loop: reads always (in WAL mode a reader
never waits for a writer), and writes when the file's write lock is free at once. When another
process holds it, the write goes to aiosqlite's thread and waits there, so the loop never sleeps
in SQLite's busy handler.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio
import structlog

from agent_rooms_mcp.home import secure_database_files
from agent_rooms_mcp.settings import DEFAULT_LIMITS
from agent_rooms_mcp.store.backup import copy_database, held_open
from agent_rooms_mcp.store.schema import MIGRATIONS
from agent_rooms_mcp.store.watch import RoomWatch

T = TypeVar("T")
log = structlog.get_logger("agent_rooms_mcp.store")

READER_BUSY_TIMEOUT_MS = 1000

Guard = Callable[[sqlite3.Connection], None]
# A check every write of the current request runs first, inside its transaction (see `guarded_writes`).
_write_guard: ContextVar[Guard | None] = ContextVar("write_guard", default=None)


@contextmanager
def guarded_writes(guard: Guard) -> Iterator[None]:
    """Within this block, every `Store.write` of this task (and of tasks it starts) runs `guard` first, in the
    same transaction: a request that authenticated once (an owner's device) has its credential re-checked by
    each write it makes, however many services and transactions lie between, so a revoke that lands between
    authentication and a write stops the write. The guard raises to refuse; the transaction rolls back."""
    token = _write_guard.set(guard)
    try:
        yield
    finally:
        _write_guard.reset(token)


def _pragmas(busy_timeout_ms: int) -> str:
    return (
        "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;"
        f" PRAGMA busy_timeout={int(busy_timeout_ms)}; PRAGMA synchronous=NORMAL;"
    )


def migrate(conn: sqlite3.Connection, lock_path: Path, *, backup_first: bool = True) -> int:
    """Bring the schema to the newest version; each step commits with its user_version bump.

    Processes starting together on an old database (stdio sessions and the HTTP hub) take turns on a
    lock file, and each reads the version only once it holds the lock: otherwise two could both read
    the old version and the second would apply a migration again. A database of an older schema is first
    copied beside itself (README "Upgrading"), unless `backup_first` is off (a restore's own working copy,
    whose source file is the backup).
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _migrate_locked(conn, backup_first=backup_first)
    finally:
        os.close(fd)  # closing releases the lock


def upgrade_backup_path(db_path: Path, version: int) -> Path:
    """Where the copy taken before upgrading a database of schema `version` goes: beside it, named so."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return db_path.with_name(f"{db_path.name}.v{version}-{stamp}.bak")


def _migrate_locked(conn: sqlite3.Connection, *, backup_first: bool) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if backup_first and 0 < version < len(MIGRATIONS):
        [(_, _, file)] = conn.execute("PRAGMA database_list").fetchall()[:1]
        dest = upgrade_backup_path(Path(file), version)
        copy_database(conn, dest)
        log.warning("store.upgrade_backup", backup=str(dest), from_version=version, to_version=len(MIGRATIONS))
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript() commits any open transaction first, so BEGIN and COMMIT live in the script.
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
    conn.execute(begin)
    return _finish(conn, fn)


def _finish(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run fn in the transaction already begun; COMMIT, or ROLLBACK on any exception, COMMIT's own included.

    A COMMIT that fails (a deferred foreign key, a full disk, an I/O error) leaves the transaction open and
    the file's write lock held: without the ROLLBACK every later write of this process would fail with
    "cannot start a transaction within a transaction" (sqlite-utils' `atomic()` rolls back the same way).
    """
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (a RAISE(ROLLBACK) trigger); a second ROLLBACK would mask why.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _busy(e: sqlite3.Error) -> bool:
    """SQLITE_BUSY in any of its forms: Python gives the extended code, such as SQLITE_BUSY_RECOVERY (261) while
    another process recovers the WAL, whose low byte is the primary one."""
    return e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _begin_if_free(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE without waiting (the writer's busy_timeout is 0); False if another process writes."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if _busy(e) and not conn.in_transaction:
            return False
        raise
    return True


def _waiting_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], busy_timeout_ms: int) -> T:
    """On the writer's thread: wait up to busy_timeout_ms for the write lock, then run fn."""
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    try:
        return _in_transaction(conn, fn, "BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _compact(path: Path, busy_timeout_ms: int, vacuum_free_fraction: float) -> tuple[bool, bool]:
    """VACUUM if free pages make up `vacuum_free_fraction` of the file, then truncate the WAL; (vacuumed,
    truncated). On a connection of its own: VACUUM refuses to run on one with any statement unfinished, and the
    writer's own connection cannot promise that (a pragma's result row left unread counts)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(_pragmas(busy_timeout_ms))
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        [(free,)] = conn.execute("PRAGMA freelist_count").fetchall()
        vacuum = free >= vacuum_free_fraction * pages  # 0: always
        if vacuum:
            conn.execute("VACUUM")
        [(busy, _, _)] = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return vacuum, busy == 0
    finally:
        conn.close()


def _guarded(guard: Guard, fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    def run(conn: sqlite3.Connection) -> T:
        guard(conn)
        return fn(conn)

    return run


class Store:
    """Runs functions of a `sqlite3.Connection` as whole transactions: on the event loop when they need not
    wait, on aiosqlite's writer thread when another process holds the write lock."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: sqlite3.Connection,
        busy_timeout_ms: int,
        watch_s: float = DEFAULT_LIMITS.waiter_watch_s,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._busy_timeout_ms = busy_timeout_ms
        # One transaction at a time on the writer, wherever it runs (loop or aiosqlite's thread).
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._changed = anyio.Event()
        self._pollers = 0  # tasks in `wait_changed`: with none, a commit has nobody to wake
        # Long-polls wait here, by room, and for any process's commit (store/watch.py): one watcher for both.
        self.rooms = RoomWatch(reader, watch_s, self._wake_pollers)
        # The long polls in flight (`long_poll`), and whether the process has stopped serving them.
        self._long_polls: set[anyio.CancelScope] = set()
        self._long_polls_ended = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, busy_timeout_ms: int = 10_000, watch_s: float = DEFAULT_LIMITS.waiter_watch_s
    ) -> AsyncIterator[Store]:
        # Held while open, so `restore` never replaces the file under this process (store/backup.py).
        with held_open(path):
            async with cls._opened(path, busy_timeout_ms=busy_timeout_ms, watch_s=watch_s) as store:
                yield store

    @classmethod
    @asynccontextmanager
    async def _opened(cls, path: Path, *, busy_timeout_ms: int, watch_s: float) -> AsyncIterator[Store]:
        writer = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        try:
            writer.row_factory = sqlite3.Row
            await writer.executescript(_pragmas(busy_timeout_ms))
            await writer._execute(migrate, writer._conn, path.with_name(path.name + ".migrate-lock"))
            await writer.execute("PRAGMA busy_timeout=0")
            reader = sqlite3.connect(path, isolation_level=None)
            try:
                reader.row_factory = sqlite3.Row
                # Only WAL recovery by another process can make a reader wait: keep that wait short.
                reader.executescript(_pragmas(READER_BUSY_TIMEOUT_MS) + " PRAGMA query_only=ON;")
                secure_database_files(path)
                store = cls(path, writer, reader, busy_timeout_ms, watch_s)
                # The body's own exception is re-raised as itself, outside the task group: inside, anyio
                # would wrap it in an ExceptionGroup and callers catching RoomsError would miss it.
                failure: Exception | None = None
                async with anyio.create_task_group() as watching:
                    watching.start_soon(store.rooms.run)
                    try:
                        yield store
                    except Exception as e:
                        failure = e
                    finally:
                        watching.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            finally:
                reader.close()
        finally:
            await writer.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, notify: bool = False) -> T:
        """Run fn inside BEGIN IMMEDIATE … COMMIT; any exception rolls back. With `notify`, this process's
        waiters (long-polls, the supervisor) look again once it committed.

        BEGIN IMMEDIATE takes the file's write lock up front, so the check and the write inside fn see
        one state and no other process can write between them.
        """
        guard = _write_guard.get()
        if guard is not None:
            fn = _guarded(guard, fn)
        async with self._write_lock:
            conn = self._writer._conn
            if _begin_if_free(conn):
                result = _finish(conn, fn)
            else:
                # Held until the thread is done, even if our caller is cancelled: the lock is what keeps
                # the loop from starting a transaction on this connection while the thread is in one.
                with anyio.CancelScope(shield=True):
                    result = await self._writer._execute(_waiting_transaction, conn, fn, self._busy_timeout_ms)
        if notify:
            self.notify_changed()
        return result

    async def compact(self, vacuum_free_fraction: float) -> tuple[bool, bool]:
        """Make deleted rows' bytes unreadable from the disk (DESIGN §6 purge): `secure_delete` already zeroed
        them in the pages, the WAL's older frames still hold them, so the WAL is checkpointed and truncated to
        nothing. The file is rewritten (VACUUM) only when enough of it is free to be worth the time: VACUUM holds
        the write lock for seconds on a big file (docs/PERFORMANCE.md). (vacuumed, truncated); not truncated
        when another connection's read kept the checkpoint from finishing (the next purge tries again)."""
        # Under the write lock, so none of this process's writes waits on the VACUUM's lock in SQLite's handler.
        async with self._write_lock:
            with anyio.CancelScope(shield=True):
                done = await anyio.to_thread.run_sync(_compact, self.path, self._busy_timeout_ms, vacuum_free_fraction)
        return done

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on the read-only connection, inside one snapshot, on the event loop's thread."""
        return _in_transaction(self._reader, fn, "BEGIN")

    async def read_one(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Row | None:
        """The first row of one SELECT. A single statement reads one snapshot by itself, so it needs no BEGIN and
        COMMIT around it (each a statement of its own for the driver); anything that reads twice and needs both
        reads to agree uses `read`.

        On the writer's connection while no write holds it (nothing can take it while this runs: it never
        awaits, and aiosqlite's thread uses the connection only under the write lock). In WAL mode a commit
        empties the page cache of every connection but the one that made it: on the reader, every call after a
        post read its authentication's pages from the file again (about nine `pread`s a post). SQLite can make even
        a read wait in rare cases (another process recovering the WAL); the writer waits for nothing, so that
        read is asked again of the reader, which waits its short while."""
        if not sql.lstrip().startswith("SELECT"):
            # The writer's connection has no `query_only` guard: one statement that writes would commit here,
            # outside the write lock and the request's write guard.
            raise ValueError("read_one takes a single SELECT")
        if not self._write_lock.locked():
            try:
                row: sqlite3.Row | None = self._writer._conn.execute(sql, params).fetchone()
                return row
            except sqlite3.OperationalError as e:
                if not _busy(e):
                    raise
        row = self._reader.execute(sql, params).fetchone()
        return row

    def data_version(self) -> int:
        """Changes whenever another connection, in any process, commits to the database (SQLite's
        `PRAGMA data_version`): a poller compares it and skips its work when nothing moved."""
        return int(self._reader.execute("PRAGMA data_version").fetchone()[0])

    def notify_changed(self, *, pollers: bool = True) -> None:
        """Wake this process's pollers (the supervisor) and have the room watcher look at once. `pollers=False`:
        a commit that changed nothing a poller looks for (a post that mentioned nobody) wakes only the room
        watcher, which still tells the waiters for any commit (`wait_any_change`); the supervisor sees it at its
        next look."""
        if pollers:
            self._wake_pollers()
        self.rooms.poke()

    def _wake_pollers(self) -> None:
        # An event nobody waits on is as good as a fresh one: with no pollers there is nothing to set or replace.
        if self._pollers:
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_changed(self, timeout_s: float) -> None:
        """Return when this process commits a change, or after timeout_s (another process may have)."""
        self._pollers += 1
        try:
            with anyio.move_on_after(timeout_s):
                await self._changed.wait()
        finally:
            self._pollers -= 1

    async def wait_any_change(self, timeout_s: float) -> None:
        """Return when any process commits a change (seen within `watch_s`), or after timeout_s. However many
        wait, the one watcher of the rooms' long-polls looks for them all, and not at all while nobody waits."""
        with self.rooms.wanting_any():
            await self.wait_changed(timeout_s)

    @contextmanager
    def long_poll(self, timeout_s: float) -> Iterator[anyio.CancelScope]:
        """The scope of a client's long poll (a listener's `wait`, `wait_for_messages`): over after timeout_s,
        or as soon as the process stops serving (`end_long_polls`), so the poll answers what it has (nothing
        new) and the server, told to stop, is not held for the rest of the poll's time."""
        scope = anyio.move_on_after(timeout_s)
        if self._long_polls_ended:
            scope.cancel()
        self._long_polls.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._long_polls.discard(scope)

    def end_long_polls(self) -> None:
        """The server stops: every long poll in flight ends now, and any begun later ends at once."""
        self._long_polls_ended = True
        for scope in list(self._long_polls):
            scope.cancel()


@contextmanager
def fresh_snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection opened just for this, inside one read transaction, closed after: what the
    database file says to any process now, not what a long-lived connection of ours last saw. A receipt's
    proof that a credential is refused reads through one (DESIGN §6)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={READER_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only=ON")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()
