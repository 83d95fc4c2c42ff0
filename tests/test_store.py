"""The store under another process's write lock: writes wait off the event loop, reads go on (DESIGN §8)."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.models import PostedMessage
from agent_rooms_mcp.store.schema import MIGRATIONS
from tests.conftest import World


async def test_a_write_waits_for_another_writer_while_reads_go_on(world: World) -> None:
    other = sqlite3.connect(world.db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the file's write lock
    posted: list[PostedMessage] = []
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")

        async def post() -> None:
            posted.append(await hub.messages.post(caller, "lobby", "after the other writer", [], None))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post)
                await anyio.sleep(0.3)  # give the post every chance to (wrongly) finish or fail
                assert posted == []
                # The event loop is free meanwhile: reads are answered.
                page = await hub.messages.read(caller, "lobby", None, 10)
                assert page.messages == []
                other.execute("COMMIT")
    other.close()
    assert [p.seq for p in posted] == [1]
    assert [r["text"] for r in world.sql("SELECT text FROM messages")] == ["after the other writer"]


async def test_a_write_cancelled_while_waiting_still_leaves_the_store_usable(world: World) -> None:
    other = sqlite3.connect(world.db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")

        async def cancelled_post() -> None:
            with anyio.move_on_after(0.2):
                await hub.messages.post(caller, "lobby", "cancelled", [], None)

        async def other_process_commits_later() -> None:
            await anyio.sleep(0.5)
            other.execute("COMMIT")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled_post)
                tg.start_soon(other_process_commits_later)
            # The cancelled caller lost only its result: the writer takes the next transaction cleanly.
            nxt = await hub.messages.post(caller, "lobby", "next", [], None)
    other.close()
    texts = [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")]
    assert texts[-1] == "next" and nxt.seq == len(texts)


@pytest.mark.invariant(53)
async def test_every_connection_has_secure_delete_on(world: World) -> None:
    async with world.hub() as hub:
        assert await hub.store.write(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0]) == 1
        assert await hub.store.read(lambda c: c.execute("PRAGMA secure_delete").fetchone()[0]) == 1


async def test_processes_starting_together_on_a_fresh_database_migrate_it_once(tmp_path: Path) -> None:
    """Each process reads the schema version only while it holds the migration lock."""
    db = tmp_path / "hub.db"
    script = (
        "import anyio, sys; from pathlib import Path; from agent_rooms_mcp.store.database import Store\n"
        "async def main():\n"
        "    async with Store.open(Path(sys.argv[1])) as store:\n"
        "        print(await store.read(lambda c: c.execute('PRAGMA user_version').fetchone()[0]))\n"
        "anyio.run(main)\n"
    )
    argv = [sys.executable, "-c", script, str(db)]
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            results: list[subprocess.CompletedProcess[bytes]] = []

            async def start() -> None:
                results.append(await anyio.run_process(argv, check=False))

            for _ in range(4):
                tg.start_soon(start)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    assert {r.stdout.strip() for r in results} == {str(len(MIGRATIONS)).encode()}
    assert stat.S_IMODE(db.with_name("hub.db.migrate-lock").stat().st_mode) == 0o600


async def test_a_post_that_mentions_nobody_still_wakes_a_wait_for_any_commit(world: World) -> None:
    """Such a post wakes only the room watcher, not the supervisor's poll (`Store.notify_changed(pollers=False)`):
    a listener's long poll, which waits for any commit, is still told, through the watcher."""
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        with anyio.fail_after(5):  # far inside the wait's own 60 s: only the post can end it
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.store.wait_any_change, 60)
                await anyio.lowlevel.checkpoint()  # the wait begins: it is counted before it first blocks
                await hub.messages.post(caller, "lobby", "nobody mentioned", [], None)


async def test_a_post_that_mentions_a_member_wakes_the_pollers_at_once(world: World) -> None:
    """A mention can queue a run: the supervisor's wait (`wait_changed`) is woken by the commit itself."""
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.store.wait_changed, 60)
                await anyio.lowlevel.checkpoint()  # the wait begins: it is counted before it first blocks
                await hub.messages.post(caller, "lobby", "over to you", ["alice-codex"], None)


async def test_authentication_goes_on_while_a_write_waits_on_the_writers_thread(world: World) -> None:
    """`read_one` (every authentication) reads on the writer's connection while no write holds it. While a write
    waits for another process's lock on aiosqlite's thread, that connection is the thread's: the read goes to the
    reader instead. Were it sent to the writer, it would wait behind the thread inside SQLite with the event
    loop stopped, and the other process's commit below could never come."""
    other = sqlite3.connect(world.db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    posted: list[PostedMessage] = []
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        rooms = await hub.rooms.count_for(caller)

        async def post() -> None:
            posted.append(await hub.messages.post(caller, "lobby", "after the other writer", [], None))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post)
                await anyio.sleep(0.3)
                assert posted == []  # the post waits on the thread, holding the write lock
                again = await hub.auth.authenticate(world.tokens["bob-claude"], MCP_KINDS, transport="test")
                assert again.handle == "bob-claude"
                assert await hub.rooms.count_for(caller) == rooms  # the other single read, the same way
                other.execute("COMMIT")
    other.close()
    assert [p.seq for p in posted] == [1]


# Another process that is recovering the WAL index: it holds the shm file's WRITE (byte 120) and RECOVER
# (byte 122) locks, fcntl locks as SQLite's unix VFS takes them, with the index's two header copies not
# (yet) agreeing. A connection starting a read then gets SQLITE_BUSY_RECOVERY, an *extended* busy code,
# until the recovery ends (here after `hold` seconds, the header restored).
_RECOVERING = textwrap.dedent(
    """
    import fcntl, os, sys, time
    shm, hold = sys.argv[1], float(sys.argv[2])
    fd = os.open(shm, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 122)
    before = os.pread(fd, 4, 8)  # iChange of the first header copy
    os.pwrite(fd, bytes(b ^ 0xFF for b in before), 8)
    print("recovering", flush=True)
    time.sleep(hold)
    os.pwrite(fd, before, 8)
    os.close(fd)
    """
)


@contextmanager
def _recovering(world: World) -> Iterator[None]:
    """Another process recovering the WAL for 0.3 s from when this yields; a call made meanwhile must not fail
    at once with SQLITE_BUSY_RECOVERY (an extended code, whose low byte is SQLITE_BUSY)."""
    shm = world.db.with_name(world.db.name + "-shm")
    with subprocess.Popen([sys.executable, "-c", _RECOVERING, str(shm), "0.3"], stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None and p.stdout.readline().strip() == "recovering"
        try:
            yield
        except sqlite3.OperationalError as e:
            raise AssertionError(f"the call failed at once: {e.sqlite_errorname}") from e


async def test_a_single_read_waits_out_another_process_recovering_the_wal(world: World) -> None:
    """`Store.read_one` reads on the writer's connection, which waits for nothing (busy_timeout 0). A read during
    another process's WAL recovery is asked again of the reader, which waits it out, and the call is answered."""
    async with world.hub() as hub:
        await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")  # WAL + shm exist
        with _recovering(world), anyio.fail_after(10):
            caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
    assert caller.handle == "alice-claude"


async def test_a_write_waits_out_another_process_recovering_the_wal(world: World) -> None:
    """BEGIN IMMEDIATE during another process's WAL recovery: like plain SQLITE_BUSY, the write goes to the
    writer's thread to wait its busy_timeout, and the post is made."""
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        with _recovering(world), anyio.fail_after(10):
            posted = await hub.messages.post(caller, "lobby", "during recovery", [], None)
    assert posted.seq == 1


async def test_a_single_read_refuses_any_statement_but_a_select(world: World) -> None:
    """`read_one` runs on the writer's connection, which has no `query_only` guard: it takes a SELECT and nothing
    else, and a refused statement changes nothing."""
    async with world.hub() as hub:
        with pytest.raises(ValueError, match="single SELECT"):
            await hub.store.read_one("DELETE FROM messages")
        with pytest.raises(ValueError, match="single SELECT"):
            await hub.store.read_one("UPDATE agents SET status = 'deleted'")
    assert world.sql("SELECT count(*) AS n FROM agents WHERE status = 'deleted'")[0]["n"] == 0
