"""What keeps a wake inside its limits when things go sideways (found by a hostile review): merged
requests, runs woken by constrained runs, run tokens of dead runs, invoke taken away while queued, and a
CLI whose supervisor crashed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp.principals import parse_scopes
from agent_rooms_mcp.wake.process import start_time
from tests import hubprocess as served
from tests.conftest import OPERATOR, World
from tests.test_wake_more import wake_world
from tests.tool_errors import error_code
from tests.wakeworld import Fakes, ended, post, runs, supervisor, until, wake_env

PAST = "2000-01-01T00:00:00.000000Z"


def execute(world: World, sql: str, args: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute(sql, args)
    conn.close()


async def bob_in_lobby_under_approve_all(world: World) -> None:
    await world.trust("alice", "bob")
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
        await hub.invites.accept(OPERATOR, invite.code, "bob", ["bob-claude"])
        await hub.consent.set_mode_as_owner(OPERATOR, "lobby", "alice", "approve_all", None)


@pytest.mark.invariant(102)
async def test_a_request_from_another_owner_never_joins_a_queued_run_of_other_causers(
    woken: World, fakes: Fakes
) -> None:
    await bob_in_lobby_under_approve_all(woken)
    fakes.scenario("hang")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot start")
        await until(lambda: (r := runs(woken, "alice-bot")) and r[0]["pid"], "the first run is running")
        own = await post(woken, "alice-claude", "@alice-bot and then this")
        foreign = await post(woken, "bob-claude", "@alice-bot and mine")
        assert [m["outcome"] for m in own["mentions"] + foreign["mentions"]] == ["queued", "queued"]
        # Merged, alice's own request would run constrained or bob's words would run unconstrained: neither.
        alice, bob = (woken.sql("SELECT owner_id FROM owners WHERE handle = ?", (h,))[0][0] for h in ("alice", "bob"))
        queued = [(r["constrained"], r["causers"]) for r in runs(woken, "alice-bot") if r["state"] == "queued"]
        assert sorted(queued) == [(0, json.dumps([alice])), (1, json.dumps([bob]))]
        async with woken.hub() as hub:
            await hub.runs.stop_as_owner(OPERATOR, "alice-bot", None)
        await until(lambda: ended(woken, "alice-bot", 3), "all end")


async def test_what_a_constrained_run_wakes_stays_constrained(woken: World) -> None:
    token = await woken.run_token("alice-bot", "lobby")
    execute(woken, "UPDATE runs SET constrained = 1")
    async with woken.client(None, token=token) as c:
        posted = await c.call_tool("post_message", {"room": "lobby", "text": "@alice-cx over to you"})
    assert posted.structured_content["mentions"][0]["outcome"] == "woken"
    [next_run] = runs(woken, "alice-cx")
    assert (next_run["constrained"], next_run["depth"]) == (1, 2)


@pytest.mark.invariant(8)
async def test_a_run_token_dies_with_its_run_even_unrevoked(woken: World) -> None:
    token = await woken.run_token("alice-bot", "lobby")
    async with woken.client(None, token=token) as c:
        assert not (await c.call_tool("whoami", {})).is_error
        execute(woken, "UPDATE runs SET state = 'lost'")  # its server crashed; nobody revoked the token
        late = await c.call_tool("whoami", {})
    assert error_code(late) == "UNAUTHENTICATED"
    assert woken.audit_rows()[-1]["reason"] == "run_ended"


async def test_taking_invoke_away_ends_the_agents_queued_wakes(woken: World, fakes: Fakes) -> None:
    await post(woken, "alice-claude", "@alice-bot later")
    async with woken.hub() as hub:
        await hub.accounts.set_scopes(OPERATOR, "alice-bot", parse_scopes("read,post,task"))
    async with supervisor(woken):
        [run] = await until(lambda: ended(woken, "alice-bot"), "the queued wake ends")
    assert (run["state"], run["outcome"]) == ("withdrawn", "withdrawn:invoke_revoked") and fakes.calls() == []


async def test_a_cli_left_behind_by_a_crashed_server_is_killed_when_its_run_is_found_lost(woken: World) -> None:
    # What a crashed holder leaves: a running CLI (in a session of its own) and a run with an expired lease.
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        await post(woken, "alice-claude", "@alice-bot hello")
        execute(
            woken,
            "UPDATE runs SET state = 'running', lease_holder = 'sup_dead', lease_until = ?, started_at = ?,"
            " pid = ?, pid_start = ?",
            (PAST, PAST, orphan.pid, start_time(orphan.pid)),
        )
        async with supervisor(woken):
            [run] = await until(lambda: ended(woken, "alice-bot"), "recovery")
        assert run["state"] == "lost"
        assert orphan.wait(timeout=10) == -9
    finally:
        orphan.kill()
        orphan.wait()


async def test_stopping_a_run_that_is_not_there_says_so(woken: World) -> None:
    async with woken.client("alice-admin") as admin:
        r = await admin.call_tool("stop_agent", {"agent": "alice-bot", "run_id": "run_nope"})
    assert error_code(r) == "NOT_FOUND"


async def test_a_server_killed_between_commit_and_spawn_leaves_the_wake_to_the_next_one(
    woken: World, fakes: Fakes
) -> None:
    """The real `serve --http`, killed with SIGKILL after it committed a mention and before it could spawn
    (its supervisor is off); the next server runs the wake, exactly once."""
    fakes.scenario("ok")

    async def serve(supervise: bool) -> anyio.abc.Process:
        port = served.free_port()
        env = {
            **os.environ,
            "AGENT_ROOMS_HOME": str(woken.settings.home),
            **wake_env(fakes),
            "AGENT_ROOMS_SUPERVISOR": "1" if supervise else "0",
        }
        argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(port)]
        process = await anyio.open_process(argv, env=env, stderr=subprocess.DEVNULL)
        with anyio.fail_after(30):
            await served.wait_listening(port)
        process.port = port  # type: ignore[attr-defined]
        return process

    first = await serve(supervise=False)
    try:
        url = f"http://127.0.0.1:{first.port}/mcp"  # type: ignore[attr-defined]
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {woken.tokens['alice-claude']}"})
        async with http, Client(streamable_http_client(url, http_client=http)) as c:
            posted = await c.call_tool("post_message", {"room": "lobby", "text": "@alice-bot please"})
        assert posted.structured_content["mentions"][0]["outcome"] == "woken"
    finally:
        first.kill()
        await first.wait()
    [queued] = runs(woken, "alice-bot")
    assert queued["state"] == "queued"
    second = await serve(supervise=True)
    try:
        [run] = await until(lambda: ended(woken, "alice-bot"), "the next server runs it")
    finally:
        second.terminate()
        await second.wait()
    assert run["state"] == "completed" and len(fakes.calls()) == 1


async def test_the_spawn_rate_is_charged_to_the_owner_whose_words_cause_the_wake(tmp_path: Path, fakes: Fakes) -> None:
    """DESIGN §5 Caps: bob's words waking alice's agents spend bob's spawns a minute, not alice's, so bob
    cannot use up the spawns alice's own agents need (and alice's own wakes never spend bob's)."""
    world = await wake_world(tmp_path, fakes, reply=False, spawns_per_minute_per_owner=1)
    await bob_in_lobby_under_approve_all(world)
    fakes.scenario("hang")
    async with supervisor(world):
        first = await post(world, "bob-claude", "@alice-bot have a look")
        assert first["mentions"][0]["outcome"] == "woken"
        await until(lambda: (r := runs(world, "alice-bot")) and r[0]["started_at"], "bob's first wake starts")
        # Bob's one spawn this minute is spent: his next wake of alice's agents waits ...
        again = await post(world, "bob-claude", "@alice-cx and you")
        assert again["mentions"][0]["outcome"] == "queued"
        # ... while alice's own words still wake her agent: her minute is untouched.
        own = await post(world, "alice-claude", "@alice-cx your own owner asks")
        assert own["mentions"][0]["outcome"] == "woken"
        await until(lambda: [r for r in runs(world, "alice-cx") if r["pid"]], "alice's own wake starts")
        alice = world.sql("SELECT owner_id FROM owners WHERE handle = 'alice'")[0][0]
        [held] = [r for r in runs(world, "alice-cx") if r["state"] == "queued"]
        [started] = [r for r in runs(world, "alice-cx") if r["state"] != "queued"]
        assert json.loads(started["causers"]) == [alice] and json.loads(held["causers"]) != [alice]
