"""Hostile review of session 8's speed changes (issue 19): each test here failed on main when written."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import anyio

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from tests.conftest import World

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


async def test_a_single_read_waits_out_another_process_recovering_the_wal(world: World) -> None:
    """`Store.read_one` reads on the writer's connection (busy_timeout 0) and is meant to fall back to the
    reader (busy_timeout 1 s) when SQLite makes the read wait: "SQLite can make even a read wait in rare cases
    (another process recovering the WAL)". But the fallback compares `sqlite_errorcode`, which Python sets to
    the *extended* code, with plain SQLITE_BUSY (5): a read during another process's recovery fails at once
    with SQLITE_BUSY_RECOVERY (261) and the call crashes, where the reader would have waited it out."""
    async with world.hub() as hub:
        await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")  # WAL + shm exist
        shm = world.db.with_name(world.db.name + "-shm")
        with subprocess.Popen(
            [sys.executable, "-c", _RECOVERING, str(shm), "0.3"], stdout=subprocess.PIPE, text=True
        ) as other:
            assert other.stdout is not None and other.stdout.readline().strip() == "recovering"
            try:
                with anyio.fail_after(10):
                    caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
            except sqlite3.OperationalError as e:
                raise AssertionError(f"the read failed at once: {e.sqlite_errorname}") from e
        assert caller.handle == "alice-claude"


async def test_a_write_waits_out_another_process_recovering_the_wal(world: World) -> None:
    """The same comparison in `_begin_if_free` (older than this session, the same pattern): BEGIN IMMEDIATE
    during another process's WAL recovery fails with SQLITE_BUSY_RECOVERY, which is not sent to the writer's
    thread to wait its busy_timeout but raised: the post crashes instead of waiting 0.3 s."""
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        shm = world.db.with_name(world.db.name + "-shm")
        with subprocess.Popen(
            [sys.executable, "-c", _RECOVERING, str(shm), "0.3"], stdout=subprocess.PIPE, text=True
        ) as other:
            assert other.stdout is not None and other.stdout.readline().strip() == "recovering"
            try:
                with anyio.fail_after(10):
                    posted = await hub.messages.post(caller, "lobby", "during recovery", [], None)
            except sqlite3.OperationalError as e:
                raise AssertionError(f"the write failed at once: {e.sqlite_errorname}") from e
        assert posted.seq == 1
