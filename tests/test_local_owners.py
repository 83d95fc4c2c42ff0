"""Who runs what (DESIGN §5 "Where a wake runs", §9.1): the hub's own supervisor spawns only agents of local
owners. Any other owner's wake waits for that owner's listener (`waiting_for_listener`) and expires, which
the causer sees; the operator marks owners local with the real CLI, and an existing home keeps working."""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.book import Ending
from agent_rooms_mcp.embedded import embedded_supervisor
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.run_states import Outcome, RunState, StopSignal
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.store import schema
from agent_rooms_mcp.store.database import Store
from tests.conftest import World
from tests.wakeworld import Fakes, ended, post, runs, supervisor, until


async def cli(world: World, *args: str) -> dict[str, Any]:
    """The real `agent-rooms` CLI, in a process of its own, on the world's home."""
    done = await anyio.run_process(
        [sys.executable, "-m", "agent_rooms_mcp", *args, "--json"],
        env={"AGENT_ROOMS_HOME": str(world.settings.home), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def with_wake(world: World, **caps: Any) -> World:
    """The same world (same home), its supervisor set differently."""
    settings: Settings = world.settings
    return replace(world, settings=replace(settings, wake=replace(settings.wake, **caps)))


async def list_runs(world: World, agent: str) -> list[dict[str, Any]]:
    async with world.client(agent) as c:
        r = await c.call_tool("list_runs", {})
    assert not r.is_error, r.content
    return r.structured_content["runs"]  # type: ignore[index,no-any-return]


@pytest.mark.invariant(99)
async def test_the_hub_never_spawns_an_agent_of_an_owner_who_is_not_local(woken: World, fakes: Fakes) -> None:
    assert (await cli(woken, "owner", "set", "alice", "--no-local"))["local"] is False
    world = with_wake(woken, listener_wait_s=0.5, lease_s=0.6)
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot please")
        # Nobody here will wake it now: it is queued for alice's listener, never reported woken.
        assert posted["mentions"][0]["outcome"] == "queued"
        assert runs(world, "alice-bot")[0]["state"] == "waiting_for_listener"
        [run] = await until(lambda: ended(world, "alice-bot"), "the wake expires")
    assert (run["state"], run["outcome"], run["pid"], run["started_at"]) == ("expired", "expired", None, None)
    assert fakes.calls() == []  # the supervisor ran all along and spawned nothing
    # The causer (alice's own agent here) sees how it ended.
    [seen] = await list_runs(world, "alice-claude")
    assert (seen["run_id"], seen["state"], seen["outcome"]) == (run["run_id"], "expired", "expired")
    assert [r["action"] for r in world.audit_rows() if r["action"].startswith("run.")][-1] == "run.expire"


OPERATOR = Actor("operator", "op", via="cli")


@pytest.mark.invariant(99)
async def test_a_follow_up_after_the_owner_stopped_being_local_waits_for_their_listener(woken: World) -> None:
    """A rate-limited run's follow-up is a new wake: it waits where its owner's wakes wait now, not on the hub
    (found by a hostile review: it was queued for the hub's supervisor whatever the owner had become)."""
    async with Hub.open(woken.settings) as hub:
        book = embedded_supervisor(hub).book
        await post(woken, "alice-claude", "@alice-bot please")
        claimed = await book.claim()
        assert claimed is not None
        await hub.accounts.set_owner_local(OPERATOR, "alice", False)
        limited = Ending(RunState.FAILED, Outcome.RATE_LIMIT, StopSignal.NONE, None)
        await book.finish(claimed.run_id, claimed.lease, limited)
        assert runs(woken, "alice-bot")[-1]["state"] == "waiting_for_listener"
        assert await book.claim() is None


@pytest.mark.invariant(99)
async def test_a_wake_requeued_after_a_lapsed_lease_is_never_claimed_for_an_owner_no_longer_local(woken: World) -> None:
    async with Hub.open(woken.settings) as hub:
        book = embedded_supervisor(hub).book
        await post(woken, "alice-claude", "@alice-bot please")
        assert await book.claim() is not None
        await hub.accounts.set_owner_local(OPERATOR, "alice", False)
        await hub.store.write(lambda c: c.execute("UPDATE runs SET lease_until = '2000-01-01T00:00:00.000000Z'"))
        await book.recover()
        assert runs(woken, "alice-bot")[-1]["state"] == "waiting_for_listener"
        assert await book.claim() is None


@pytest.mark.invariant(99)
async def test_a_queued_row_of_an_owner_who_is_not_local_is_never_claimed(woken: World) -> None:
    """The claim itself asks whether the owner is local, whatever path left a row `queued`."""
    async with Hub.open(woken.settings) as hub:
        book = embedded_supervisor(hub).book
        await post(woken, "alice-claude", "@alice-bot please")
        await hub.store.write(lambda c: c.execute("UPDATE owners SET local = 0 WHERE handle = 'alice'"))
        assert runs(woken, "alice-bot")[-1]["state"] == "queued"
        assert await book.claim() is None


async def test_marking_an_owner_local_hands_their_waiting_wakes_to_the_hub(woken: World, fakes: Fakes) -> None:
    await cli(woken, "owner", "set", "alice", "--no-local")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot please")
        assert runs(woken, "alice-bot")[0]["state"] == "waiting_for_listener"
        listed = await cli(woken, "owner", "list")
        assert {o["handle"]: o["local"] for o in listed["owners"]} == {"alice": False, "bob": True, "carol": True}
        assert (await cli(woken, "owner", "set", "alice", "--local"))["local"] is True
        [run] = await until(lambda: ended(woken, "alice-bot"), "the hub runs it")
    assert (run["state"], run["outcome"]) == ("completed", "ok") and len(fakes.calls()) == 1
    [row] = [r for r in woken.audit_rows() if r["action"] == "owner.set"][-1:]
    assert json.loads(row["detail"]) == {"local": True, "wakes": 1}


async def test_a_new_owner_is_not_local_unless_the_operator_says_so(woken: World) -> None:
    assert (await cli(woken, "owner", "add", "dave"))["local"] is False
    assert (await cli(woken, "owner", "add", "erin", "--local"))["local"] is True


async def test_a_home_made_before_owners_were_local_keeps_waking_its_agents(tmp_path: Path) -> None:
    """The migration marks every existing owner local: what woke before still wakes."""
    db = tmp_path / "hub.db"
    before = schema.MIGRATIONS.index(schema._V_RUNS_BOOK)
    conn = sqlite3.connect(db)
    for script in schema.MIGRATIONS[:before]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version = {before}")
    conn.execute("INSERT INTO owners (owner_id, handle, created_at) VALUES ('own_old', 'old', 'then')")
    conn.commit()
    conn.close()
    async with Store.open(db, busy_timeout_ms=5000) as store:
        local = await store.read(lambda c: c.execute("SELECT local FROM owners WHERE owner_id = 'own_old'").fetchone())
    assert local[0] == 1
