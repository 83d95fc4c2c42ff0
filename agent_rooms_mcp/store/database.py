"""The database: one writer connection and one reader, WAL, pragmas, migrations (DESIGN §8).

Each aiosqlite await is a thread hop, so a whole transaction is one function run on the
connection's own thread: one hop per call, and nothing can interleave inside it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio

from agent_rooms_mcp.home import secure_database_files
from agent_rooms_mcp.store.schema import MIGRATIONS

T = TypeVar("T")


def _pragmas(busy_timeout_ms: int) -> str:
    return (
        "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;"
        f" PRAGMA busy_timeout={int(busy_timeout_ms)}; PRAGMA synchronous=NORMAL;"
    )


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; each step commits with its user_version bump."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
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
    try:
        result = fn(conn)
    except BaseException:
        # SQLite may already have rolled back (a RAISE(ROLLBACK) trigger); a second ROLLBACK would mask why.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class Store:
    """Runs functions of a `sqlite3.Connection` as transactions on the database's own threads."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._changed = anyio.Event()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, *, busy_timeout_ms: int = 10_000) -> AsyncIterator[Store]:
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            writer.row_factory = sqlite3.Row
            await writer.executescript(_pragmas(busy_timeout_ms))
            await writer._execute(migrate, writer._conn)
            reader = await aiosqlite.connect(path, isolation_level=None)
            try:
                reader.row_factory = sqlite3.Row
                await reader.executescript(_pragmas(busy_timeout_ms) + " PRAGMA query_only=ON;")
                secure_database_files(path)
                yield cls(path, writer, reader)
            finally:
                await reader.close()
        finally:
            await writer.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn inside BEGIN IMMEDIATE … COMMIT; any exception rolls back.

        The writer's thread runs one function at a time, so transactions of this process never
        interleave; BEGIN IMMEDIATE takes the file's write lock up front against other processes.
        A caller cancelled while fn runs loses only the result: the thread finishes the transaction.
        """
        return await self._writer._execute(_in_transaction, self._writer._conn, fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on the read-only connection, inside one snapshot."""
        return await self._reader._execute(_in_transaction, self._reader._conn, fn, "BEGIN")

    def notify_changed(self) -> None:
        """Wake every long-poller of this process; they re-read and go back to waiting."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self, timeout_s: float) -> None:
        """Return when this process commits a change, or after timeout_s (another process may have)."""
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()
