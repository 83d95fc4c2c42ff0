"""Backup and restore (DESIGN §9.5, invariant 107), through the real CLI in processes of its own: a backup taken
while another client writes is whole and private; a restore refuses over a running hub, revokes every
credential the backup held unless told to keep them, audits itself, and leaves a log that verifies. Before a
migration changes an older schema, the same copy is taken beside the database."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from agent_rooms_mcp.store import schema
from agent_rooms_mcp.store.credentials import CREDENTIAL_TABLES
from agent_rooms_mcp.store.database import Store
from tests.conftest import OPERATOR, World


async def cli(world: World, *args: str) -> tuple[int, dict[str, Any]]:
    """`agent-rooms ARGS --json` in a process of its own on the world's home: (exit code, its JSON)."""
    done = await anyio.run_process(
        [sys.executable, "-m", "agent_rooms_mcp", *args, "--json"],
        env={"AGENT_ROOMS_HOME": str(world.settings.home), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return done.returncode, json.loads(done.stdout or b"{}")


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    return path


async def whoami_works(world: World, agent: str) -> bool:
    async with world.client(None, token=world.tokens[agent]) as c:
        r = await c.call_tool("whoami", {})
    return not r.is_error


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


@pytest.mark.invariant(107)
async def test_a_backup_taken_under_load_restores_to_a_hub_whose_audit_verifies(world: World, tmp_path: Path) -> None:
    dest = private_dir(tmp_path / "backups") / "hub.backup"
    posted = 0
    done = anyio.Event()

    async def load() -> None:
        nonlocal posted
        async with world.client("alice-claude") as c:
            while not done.is_set():
                r = await c.call_tool("post_message", {"room": "lobby", "text": f"busy {posted}"})
                assert not r.is_error, r.content
                posted += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        with anyio.fail_after(60):  # only bounds a hang
            while posted < 5:
                await anyio.sleep(0.01)
        code, written = await cli(world, "backup", str(dest))
        before = posted
        while posted < before + 5:  # the load went on after the backup: those rows must not come back
            await anyio.sleep(0.01)
        done.set()
    assert code == 0, written
    assert written["path"] == str(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not list(dest.parent.glob(".*partial"))
    in_backup = count(dest, "SELECT count(*) FROM messages")
    assert 5 <= in_backup < count(world.db, "SELECT count(*) FROM messages")

    # A token minted after the backup, and alice's own from before it: neither works after the restore.
    async with world.hub() as hub:
        later = await hub.accounts.issue_token(OPERATOR, "alice-claude", timedelta(hours=1))
    assert await whoami_works(world, "alice-claude")

    code, restored = await cli(world, "restore", str(dest), "--yes")
    assert code == 0, restored
    assert restored["kept_credentials"] is False and restored["revoked"]["bearer and run tokens"] >= 1
    assert count(world.db, "SELECT count(*) FROM messages") == in_backup
    assert count(world.db, "SELECT count(*) FROM tokens WHERE revoked_at IS NULL") == 0
    code, verdict = await cli(world, "audit", "verify")
    assert code == 0 and verdict["ok"] is True, verdict
    assert not await whoami_works(world, "alice-claude")
    async with world.client(None, token=later.token) as c:
        r = await c.call_tool("whoami", {})
    assert r.is_error and r.content[0].text.startswith("UNAUTHENTICATED")  # type: ignore[union-attr]
    [row] = [r for r in world.audit_rows() if r["action"] == "hub.restore"]
    assert json.loads(row["detail"])["kept_credentials"] is False
    assert stat.S_IMODE(world.db.stat().st_mode) == 0o600


@pytest.mark.invariant(107)
async def test_keep_credentials_keeps_them_and_says_so_in_the_audit(world: World, tmp_path: Path) -> None:
    dest = private_dir(tmp_path / "backups") / "hub.backup"
    assert (await cli(world, "backup", str(dest)))[0] == 0
    code, restored = await cli(world, "restore", str(dest), "--yes", "--keep-credentials")
    assert code == 0 and restored["kept_credentials"] is True and restored["revoked"] == {}, restored
    assert await whoami_works(world, "alice-claude")
    [row] = [r for r in world.audit_rows() if r["action"] == "hub.restore"]
    assert json.loads(row["detail"])["kept_credentials"] is True


@pytest.mark.invariant(107)
async def test_a_restore_over_a_running_hub_is_refused_and_changes_nothing(world: World, tmp_path: Path) -> None:
    dest = private_dir(tmp_path / "backups") / "hub.backup"
    assert (await cli(world, "backup", str(dest)))[0] == 0
    before = world.fingerprint()
    async with world.hub():  # a serving process has the database open
        code, refused = await cli(world, "restore", str(dest), "--yes")
    assert code == 1 and refused["code"] == "CONFLICT", refused
    assert "has" in refused["message"] and "open" in refused["message"]
    assert world.fingerprint() == before
    assert await whoami_works(world, "alice-claude")


@pytest.mark.invariant(107)
async def test_a_backup_is_refused_into_a_directory_others_can_read_and_never_overwrites(
    world: World, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    code, refused = await cli(world, "backup", str(shared / "hub.backup"))
    assert code == 1 and refused["code"] == "INVALID_ARGUMENT" and str(shared) in refused["message"], refused
    assert list(shared.iterdir()) == []
    mine = private_dir(tmp_path / "mine")
    (mine / "hub.backup").write_text("keep me")
    code, refused = await cli(world, "backup", str(mine / "hub.backup"))
    assert code == 1 and refused["code"] == "CONFLICT", refused
    assert (mine / "hub.backup").read_text() == "keep me"


async def test_a_file_that_is_no_backup_is_refused_before_anything_changes(world: World, tmp_path: Path) -> None:
    junk = private_dir(tmp_path / "b") / "junk"
    junk.write_bytes(b"not a database at all" * 100)
    before = world.fingerprint()
    code, refused = await cli(world, "restore", str(junk), "--yes")
    assert code == 1 and refused["code"] == "INVALID_ARGUMENT", refused
    assert world.fingerprint() == before


def test_every_credential_table_is_one_the_schema_has() -> None:
    """The registry names real tables (a renamed one would silently stop being revoked)."""
    conn = sqlite3.connect(":memory:")
    for script in schema.MIGRATIONS:
        conn.executescript(script)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {c.table for c in CREDENTIAL_TABLES} <= tables
    for c in CREDENTIAL_TABLES:
        conn.execute(c.revoke, {"now": "2026-01-01T00:00:00.000000Z"})


async def test_an_older_schema_is_backed_up_beside_the_database_before_it_migrates(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    older = len(schema.MIGRATIONS) - 1
    conn = sqlite3.connect(db)
    for script in schema.MIGRATIONS[:older]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {older}")
    conn.execute("INSERT INTO owners (owner_id, handle, created_at, local) VALUES ('own_old', 'old', 'then', 1)")
    conn.commit()
    conn.close()
    with capture_logs() as logs:
        async with Store.open(db, busy_timeout_ms=5000):
            pass
    [copy] = list(tmp_path.glob(f"hub.db.v{older}-*.bak"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert count(copy, "PRAGMA user_version") == older
    assert count(copy, "SELECT count(*) FROM owners WHERE handle = 'old'") == 1
    assert count(db, "PRAGMA user_version") == len(schema.MIGRATIONS)
    [said] = [e for e in logs if e["event"] == "store.upgrade_backup"]
    assert said["backup"] == str(copy) and said["from_version"] == older
    # Opening it again (or a fresh database) copies nothing more.
    async with Store.open(db, busy_timeout_ms=5000):
        pass
    async with Store.open(tmp_path / "fresh.db", busy_timeout_ms=5000):
        pass
    assert len(list(tmp_path.glob("*.bak"))) == 1
