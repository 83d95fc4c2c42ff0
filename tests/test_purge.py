"""The purge (DESIGN §6): what is past retention is gone from the rows, the run files, and the database's bytes.

"30 days later" is the purge's own clock moved forward (`Purge(..., clock=...)`), never a sleep. What is
archived is archived by the kill switches themselves (`agent delete`, `room quarantine`).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from agent_rooms_mcp import owner_actions
from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.models import PurgeReport
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services.purge import KINDS, Purge
from tests.conftest import OPERATOR, World

DAY = timedelta(days=1)


def later(days: float):  # type: ignore[no-untyped-def]
    """A clock `days` ahead of the real one."""
    return lambda: datetime.now(UTC) + timedelta(days=days)


async def archive_agent(world: World, handle: str) -> None:
    async with world.hub() as hub:
        await hub.containment.delete_agent(OPERATOR, handle)


async def quarantine_room(world: World, name: str) -> None:
    async with world.hub() as hub:
        await hub.containment.quarantine_room(OPERATOR, name)


async def export(world: World, handle: str) -> dict[str, object]:
    """The owner's export of an agent, deleted ones included (the operator acts for every owner)."""
    async with world.hub() as hub:
        done = await owner_actions.perform(hub, Human(OPERATOR), "agent.export", {"handle": handle})
    return dict(done.model_dump())


async def post(world: World, hub: Hub, agent: str, room: str, text: str) -> int:
    caller = await hub.auth.authenticate(world.tokens[agent], MCP_KINDS, transport="test")
    return (await hub.messages.post(caller, room, text, [], None)).seq


async def ended_run(world: World, agent: str, room: str, secret: str, ended: datetime) -> str:
    """A run of `agent` in `room` that ended at `ended`, with the directory and log a supervisor leaves."""
    await world.run_token(agent, room)
    conn = sqlite3.connect(world.db)
    with conn:
        (run_id,) = conn.execute(
            "UPDATE runs SET state = 'completed', outcome = 'ok', ended_at = ?"
            " WHERE agent_id = (SELECT agent_id FROM agents WHERE handle = ?) AND ended_at IS NULL RETURNING run_id",
            (iso(ended), agent),
        ).fetchone()
    conn.close()
    for root, name in ((world.settings.runs_dir, "mcp.json"), (world.settings.run_logs_dir, "events.jsonl")):
        (root / run_id).mkdir(parents=True)
        (root / run_id / name).write_text(json.dumps({"text": secret}))
    return run_id


def wal(world: World) -> Path:
    return world.db.with_name("hub.db-wal")


def database_bytes(world: World) -> bytes:
    """The database file and its WAL, as anyone reading the disk would see them."""
    return b"".join(p.read_bytes() for p in (world.db, wal(world)) if p.exists())


def count(world: World, sql: str, args: tuple[object, ...] = ()) -> int:
    return int(world.sql(sql, args)[0][0])


def removed(report: PurgeReport) -> dict[str, int]:
    return {k: n for k, n in report.removed.items() if n}


@pytest.fixture
async def archived(world: World) -> AsyncIterator[dict[str, str]]:
    """A quarantined room and a deleted agent, each holding a sentinel found nowhere else, plus the runs."""
    marks = {k: f"{k}-{secrets.token_hex(12)}" for k in ("room", "agent", "room_file", "task", "agent_run", "old_run")}
    # Another process's idle connection, as a serving hub's would be: with it open, closing a hub neither
    # checkpoints nor deletes the WAL, so what the posts below wrote stays in the WAL file's bytes.
    keeper = sqlite3.connect(world.db)
    keeper.execute("SELECT count(*) FROM meta").fetchall()
    async with world.hub() as hub:
        # bobs-den is quarantined: a message, a file and a task hold sentinels.
        await post(world, hub, "bob-claude", "bobs-den", f"poisoned: {marks['room']}")
        caller = await hub.auth.authenticate(world.tokens["bob-codex"], MCP_KINDS, transport="test")
        await hub.files.share(caller, "bobs-den", "payload.txt", marks["room_file"], None, None)
        await hub.tasks.create(caller, "bobs-den", "do it", marks["task"], None)
        # alice-codex is deleted: its message in the lobby, which goes on living (others post after it).
        await post(world, hub, "alice-codex", "lobby", f"contaminated: {marks['agent']}")
        await post(world, hub, "alice-claude", "lobby", "the lobby goes on")
    now = datetime.now(UTC)
    ids = {
        "agent_run": await ended_run(world, "alice-codex", "lobby", marks["agent_run"], now),
        # A live agent's run that ended two days ago: its files go once it is past retention, its row stays.
        "old_run": await ended_run(world, "alice-claude", "shared", marks["old_run"], now - 2 * DAY),
    }
    # The workdir the supervisor makes for an agent that has none of its own, with what its CLI left there.
    workdir = world.settings.home / "workdirs" / "alice-codex"
    workdir.mkdir(parents=True)
    (workdir / "notes.md").write_text(marks["agent_run"])
    await archive_agent(world, "alice-codex")
    await quarantine_room(world, "bobs-den")
    yield {**marks, **{f"{k}_id": v for k, v in ids.items()}}
    keeper.close()


@pytest.mark.invariant(49, 50, 52)
@pytest.mark.parametrize("vacuum", [True, False], ids=["vacuumed", "secure_delete_alone"])
async def test_thirty_days_later_the_purge_leaves_no_row_file_or_byte_of_what_it_removed(
    world: World, archived: dict[str, str], vacuum: bool
) -> None:
    sentinels = [archived[k] for k in ("room", "agent", "room_file", "task")]
    audit_before = [tuple(r) for r in world.audit_rows()]
    # Until the purge, the deleted agent is in its owner's export.
    assert (await export(world, "alice-codex"))["deleted_at"]
    # The sentinels are on disk now, in the WAL too: the checks below could fail.
    assert all(s.encode() in wal(world).read_bytes() for s in sentinels)
    # Whether the file is rewritten afterwards or not, the bytes are gone: secure_delete zeroed them in place.
    limits = replace(world.settings.limits, purge_vacuum_free_fraction=0.0 if vacuum else 2.0)
    settings = replace(world.settings, limits=limits)
    async with world.hub() as hub:
        checkpoint = await hub.checkpoints.issue(OPERATOR)
        audit_before = [tuple(r) for r in world.audit_rows()]
        # Not yet past retention (the oldest thing here ended two days ago): nothing goes.
        assert removed(await Purge(hub.store, settings, later(27)).run(OPERATOR)) == {}
        report = await Purge(hub.store, settings, later(31)).run(OPERATOR)
        # Not a byte of the sentinels is left in the database or its WAL, while the hub still has them open.
        assert wal(world).stat().st_size == 0
        on_disk = database_bytes(world)
        assert [s for s in sentinels if s.encode() in on_disk] == []

    assert removed(report) == {
        "rooms": 1, "agents": 1, "messages": 2, "files": 1, "tasks": 1, "runs": 1, "tokens": 2, "passports": 2,
        "run_dirs": 2, "run_logs": 2, "workdirs": 1,
    }  # fmt: skip
    assert report.wal_truncated and report.vacuumed is vacuum
    # The rows are gone.
    assert count(world, "SELECT count(*) FROM rooms WHERE name = 'bobs-den'") == 0
    assert count(world, "SELECT count(*) FROM agents WHERE handle = 'alice-codex'") == 0
    assert count(world, "SELECT count(*) FROM runs WHERE run_id = ?", (archived["agent_run_id"],)) == 0
    # ... but not the handle's retirement, and not the live agent's run, only its files.
    assert count(world, "SELECT count(*) FROM retired_handles WHERE handle = 'alice-codex'") == 1
    assert count(world, "SELECT count(*) FROM runs WHERE run_id = ?", (archived["old_run_id"],)) == 1
    for run in (archived["agent_run_id"], archived["old_run_id"]):
        assert not (settings.runs_dir / run).exists() and not (settings.run_logs_dir / run).exists()
    assert not (settings.home / "workdirs" / "alice-codex").exists()
    assert (settings.home / "workdirs").is_dir()
    # The audit log lost nothing, gained one metadata-only row, and verifies.
    after = world.audit_rows()
    assert [tuple(r) for r in after[: len(audit_before)]] == audit_before
    assert [r["action"] for r in after[len(audit_before) :]] == ["purge"]
    assert json.loads(after[-1]["detail"])["messages"] == 2
    assert world.chain_verifies()
    async with world.hub() as hub:
        held = await hub.checkpoints.hold(hub.checkpoints.read([checkpoint.token], "checkpoint"))
    assert held.verdict.ok and held.covered_rows == len(audit_before)
    assert [s for s in sentinels if s.encode() in database_bytes(world)] == []
    # The lobby lives on, without the deleted agent's message.
    assert [r["text"] for r in world.sql("SELECT text FROM messages m JOIN rooms r USING (room_id)"
                                         " WHERE r.name = 'lobby'")] == ["the lobby goes on"]  # fmt: skip

    # A second purge is a no-op: nothing removed, nothing changed, no audit row.
    fingerprint, rows = world.fingerprint(), len(after)
    async with world.hub() as hub:
        again = await Purge(hub.store, settings, later(31)).run(OPERATOR)
    assert removed(again) == {} and not again.vacuumed and not again.wal_truncated
    assert world.fingerprint() == fingerprint and len(world.audit_rows()) == rows
    assert world.chain_verifies()
    # The purged agent is gone from its owner's export too.
    with pytest.raises(RoomsError) as gone:
        await export(world, "alice-codex")
    assert gone.value.code is ErrorCode.NOT_FOUND
    # The purged agent's token, presented again, is refused like any unknown one.
    async with world.hub() as hub:
        with pytest.raises(RoomsError) as refused:
            await hub.auth.authenticate(world.tokens["alice-codex"], MCP_KINDS, transport="test")
    assert refused.value.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.invariant(52)
async def test_a_dry_run_counts_exactly_what_a_purge_removes_and_changes_nothing(
    world: World, archived: dict[str, str]
) -> None:
    fingerprint, rows = world.fingerprint(), len(world.audit_rows())
    async with world.hub() as hub:
        dry = await Purge(hub.store, world.settings, later(31)).run(OPERATOR, dry_run=True)
        assert world.fingerprint() == fingerprint and len(world.audit_rows()) == rows
        assert (world.settings.runs_dir / archived["agent_run_id"]).exists()
        assert archived["room"].encode() in database_bytes(world)
        real = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
    assert dry.dry_run and not dry.vacuumed and not dry.wal_truncated
    assert dry.removed == real.removed and removed(real)


async def test_the_purge_command_reports_counts_per_kind_and_respects_retention(
    world: World, archived: dict[str, str]
) -> None:
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}

    async def purge(*args: str, **extra: str) -> Result:
        # On a thread: the command runs an event loop of its own.
        def invoke() -> Result:
            return CliRunner().invoke(cli, ["purge", *args], env={**env, **extra}, catch_exceptions=False)

        return await anyio.to_thread.run_sync(invoke)

    today = await purge("--json")
    assert today.exit_code == 0, today.stderr
    report = json.loads(today.stdout)
    assert list(report["removed"]) == list(KINDS)
    # Archived today: kept; only the files of the run that ended two days ago would go after 30 days.
    assert {k: n for k, n in report["removed"].items() if n} == {}
    # With retention at zero (the limit's own environment switch), everything archived goes.
    now = await purge("--dry-run", AGENT_ROOMS_LIMIT_RETENTION_S="0")
    assert now.exit_code == 0 and now.stdout.startswith("would remove (archived or ended before ")
    assert "1 rooms" in now.stdout and "1 agents" in now.stdout
    assert count(world, "SELECT count(*) FROM rooms WHERE name = 'bobs-den'") == 1


async def test_a_deleted_agents_message_that_is_its_rooms_latest_is_blanked_so_its_seq_is_never_reused(
    world: World,
) -> None:
    sentinel = f"last-word-{secrets.token_hex(12)}"
    async with world.hub() as hub:
        seq = await post(world, hub, "alice-codex", "lobby", sentinel)
    await archive_agent(world, "alice-codex")
    async with world.hub() as hub:
        first = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
        assert first.deferred == {"agents_holding_a_rooms_latest": 1}
        assert sentinel.encode() not in database_bytes(world)
        # The agent holds nothing but that blank row, and the next post does not take its seq.
        tokens = "SELECT count(*) FROM tokens t JOIN agents a USING (agent_id) WHERE a.handle = 'alice-codex'"
        assert count(world, tokens) == 0
        assert await post(world, hub, "alice-claude", "lobby", "after") == seq + 1
        second = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
    assert removed(second) == {"agents": 1, "messages": 1}
    assert count(world, "SELECT count(*) FROM agents WHERE handle = 'alice-codex'") == 0
    assert world.chain_verifies()


async def test_a_room_whose_run_has_not_confirmed_its_end_waits_for_it(world: World) -> None:
    # A run on a listener that went silent: `stop_pending` until it confirms its processes are gone.
    await world.run_token("bob-claude", "bobs-den")
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute("UPDATE runs SET state = 'stop_pending' WHERE room_id = (SELECT room_id FROM rooms"
                     " WHERE name = 'bobs-den')")  # fmt: skip
    conn.close()
    await quarantine_room(world, "bobs-den")
    async with world.hub() as hub:
        report = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
    assert report.deferred == {"rooms_with_unfinished_runs": 1} and report.removed["rooms"] == 0
    assert count(world, "SELECT count(*) FROM rooms WHERE name = 'bobs-den'") == 1


async def test_a_serving_hub_purges_on_its_own(world: World, archived: dict[str, str]) -> None:
    limits = replace(world.settings.limits, retention_s=0, purge_first_s=0)
    sentinel = archived["agent"].encode()
    async with open_http_app(replace(world.settings, limits=limits)):
        # Until the purge is done, not only committed: its rows go in one transaction, and its compaction (the
        # WAL truncated) follows. Stopping the hub in between, as waiting on the rows alone did on a loaded
        # machine, cancels the compaction and leaves the purged bytes in the WAL until the next purge.
        with anyio.fail_after(60):
            while count(world, "SELECT count(*) FROM agents WHERE handle = 'alice-codex'") or sentinel in (
                database_bytes(world)
            ):
                await anyio.sleep(0.05)
    assert count(world, "SELECT count(*) FROM rooms WHERE name = 'bobs-den'") == 0
    [row] = [r for r in world.audit_rows() if r["action"] == "purge"]
    assert (row["actor_kind"], row["actor_id"]) == ("system", "purge")
    assert world.chain_verifies()
    assert sentinel not in database_bytes(world)


async def test_the_purge_removes_only_what_a_run_could_have_made_and_never_follows_a_link(
    world: World, tmp_path: Path
) -> None:
    runs = world.settings.runs_dir
    runs.mkdir()
    outside = tmp_path / "owners-files"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    # A left-over run directory no run owns, a link shaped like one, and something else entirely.
    stray, link = runs / ("run_" + "a" * 22), runs / ("run_" + "b" * 22)
    stray.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    (runs / "README").write_text("not a run")
    async with world.hub() as hub:
        soon = await Purge(hub.store, world.settings, later(29)).run(OPERATOR)
        assert soon.removed["run_dirs"] == 0  # by their own age, not yet past retention
        report = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
    assert report.removed["run_dirs"] == 2
    assert not stray.exists() and not os.path.lexists(link)
    assert (outside / "precious").read_text() == "keep me" and (runs / "README").exists()


@pytest.mark.invariant(50)
async def test_a_wal_a_reader_kept_from_truncating_is_cleared_by_the_next_purge(world: World) -> None:
    """The first purge's WAL truncate is blocked by a reader; the next purge, with nothing left to remove,
    still truncates it, so `purge` again is the way out the command advises."""
    sentinel = "SENTINEL-" + secrets.token_hex(16)
    async with world.hub() as hub:
        await post(world, hub, "alice-codex", "lobby", "before")
        await post(world, hub, "alice-claude", "lobby", sentinel)
        await post(world, hub, "alice-codex", "lobby", "after")  # the sentinel is not the room's latest
    await archive_agent(world, "alice-claude")
    reader = sqlite3.connect(world.db, isolation_level=None)
    try:
        async with world.hub() as hub:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM messages").fetchone()
            first = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
            reader.execute("COMMIT")
            second = await Purge(hub.store, world.settings, later(31)).run(OPERATOR)
    finally:
        reader.close()
    assert first.removed["messages"] >= 1 and not first.wal_truncated
    assert second.removed["messages"] == 0 and second.wal_truncated
    assert sentinel.encode() not in database_bytes(world)
