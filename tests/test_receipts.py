"""Receipts that settle (DESIGN §5, invariant 98): every wake a mention caused ends in a final state its causer
sees, through `list_runs` and through the mention's current outcome in `read_messages`; a wake that could not
start says why in the same words. One test per failure that used to stay silent, each through a real MCP
client, and the owner's `run list` / `run log` through the real CLI."""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.housekeeping import housekeeping
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.services.messages import _SETTLED
from agent_rooms_mcp.settings import Settings
from tests.conftest import OPERATOR, World
from tests.sandboxhost import AS_ROOT
from tests.wakeworld import Fakes, ended, post, runs, supervisor, until


def with_wake(world: World, **caps: Any) -> World:
    """The same world (same home), its supervisor set differently."""
    settings: Settings = world.settings
    return replace(world, settings=replace(settings, wake=replace(settings.wake, **caps)))


async def read_mentions(world: World, reader: str, seq: int, room: str = "lobby") -> list[dict[str, Any]]:
    """The mentions of message `seq` as `reader` reads them now, through read_messages."""
    async with world.client(reader) as c:
        r = await c.call_tool("read_messages", {"room": room, "after": seq - 1, "limit": 1})
    assert not r.is_error, r.content
    [message] = r.structured_content["messages"]  # type: ignore[index]
    assert message["seq"] == seq
    return message["mentions"]  # type: ignore[no-any-return]


async def listed(world: World, agent: str, run_id: str) -> dict[str, Any]:
    """The run as its owner's agent sees it through list_runs."""
    async with world.client(agent) as c:
        r = await c.call_tool("list_runs", {})
    assert not r.is_error, r.content
    [run] = [x for x in r.structured_content["runs"] if x["run_id"] == run_id]  # type: ignore[index]
    return run  # type: ignore[no-any-return]


async def cli(world: World, *args: str, ok: bool = True) -> tuple[int, str]:
    """The real `agent-rooms` CLI, in a process of its own, on the world's home."""
    done = await anyio.run_process(
        [sys.executable, "-m", "agent_rooms_mcp", *args],
        env={"AGENT_ROOMS_HOME": str(world.settings.home), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if ok:
        assert done.returncode == 0, done.stderr.decode()
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def settles(world: World, posted: dict[str, Any], seq: int, state: str, code: str) -> dict[str, Any]:
    """The mention in `posted` (message `seq`) now reads `state` with `code`, naming the run that list_runs
    shows in the same final state with that outcome."""
    [said] = posted["mentions"]
    [now] = await read_mentions(world, "alice-claude", seq)
    assert (now["handle"], now["outcome"], now["code"]) == (said["handle"], state, code), now
    assert now["run_id"] is not None and now["run_id"] == said["run_id"]
    run = await listed(world, "alice-claude", now["run_id"])
    assert (run["state"], run["outcome"], run["ended_at"] is not None) == (state, code, True)
    return now


@pytest.mark.invariant(98)
async def test_a_wake_whose_cli_is_missing_settles_failed_cli_not_found(woken: World, fakes: Fakes) -> None:
    broken = replace(woken.settings, wake=replace(woken.settings.wake, claude_bin=str(woken.db.parent / "nope")))
    async with Hub.open(broken) as hub, supervising(hub):
        posted = await post(woken, "alice-claude", "@alice-bot first")
        # What the poster was told at once names the run it can follow.
        assert (posted["mentions"][0]["outcome"], posted["mentions"][0]["run_id"] is not None) == ("woken", True)
        await until(lambda: ended(woken, "alice-bot"), "the run fails")
    now = await settles(woken, posted, posted["seq"], "failed", "cli_not_found")
    assert fakes.calls() == []
    # The owner's own `run log` says why, in plain words, and that it never started.
    _, text = await cli(woken, "run", "log", now["run_id"])
    assert "failed, never started: the agent's CLI was not found" in text, text
    _, table = await cli(woken, "run", "list")
    assert now["run_id"] in table and "cli_not_found" in table


@pytest.mark.invariant(98)
@pytest.mark.skipif(not AS_ROOT, reason="only a supervisor running as root refuses root_refused")
async def test_a_root_supervisor_without_a_run_as_user_settles_failed_root_refused(woken: World, fakes: Fakes) -> None:
    world = with_wake(woken, run_as="")
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot please")
        await until(lambda: ended(world, "alice-bot"), "the wake ends")
    await settles(world, posted, posted["seq"], "failed", "root_refused")
    assert fakes.calls() == []


@pytest.mark.invariant(98)
async def test_a_wake_whose_sandbox_cannot_start_settles_failed_sandbox_unavailable(woken: World, fakes: Fakes) -> None:
    async with woken.hub() as hub:
        await hub.accounts.set_agent(OPERATOR, "alice-bot", sandbox=True)
    world = with_wake(woken, bwrap=str(woken.db.parent / "no-bwrap"))
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot please")
        await until(lambda: ended(world, "alice-bot"), "the wake ends")
    await settles(world, posted, posted["seq"], "failed", "sandbox_unavailable")
    assert fakes.calls() == []


async def test_a_cli_found_but_not_executable_inside_the_run_says_where_to_look(
    woken: World, fakes: Fakes, tmp_path: Path
) -> None:
    # The walk (finding 12): the hub found `claude`, the run could not execute it ("egress-relay: cannot run
    # claude"), and `run log` said only "install it", though it was installed. A CLI whose interpreter is
    # missing fails the same way: the status line now says it may be the run that could not execute it.
    bindir = tmp_path / "broken-cli"
    bindir.mkdir()
    script = bindir / "claude"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    broken = replace(woken.settings, wake=replace(woken.settings.wake, claude_bin=str(script)))
    async with Hub.open(broken) as hub, supervising(hub):
        posted = await post(woken, "alice-claude", "@alice-bot first")
        await until(lambda: ended(woken, "alice-bot"), "the run fails")
    now = await settles(woken, posted, posted["seq"], "failed", "cli_not_found")
    _, text = await cli(woken, "run", "log", now["run_id"])
    assert "could not be executed inside the run (run log --stderr says which)" in text, text


@pytest.mark.invariant(98)
async def test_a_hanging_cli_settles_stopped_time_limit(woken: World, fakes: Fakes) -> None:
    world = with_wake(woken, run_limit_s=1.0)
    fakes.scenario("hang")
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot work on it")
        await until(lambda: ended(world, "alice-bot"), "the time limit ends the run")
    now = await settles(world, posted, posted["seq"], "stopped", "time_limit")
    _, text = await cli(world, "run", "log", now["run_id"])
    assert "stopped, ended: the run went past its time limit" in text, text


@pytest.mark.invariant(98)
async def test_a_wake_no_listener_came_for_settles_expired(woken: World, fakes: Fakes) -> None:
    await cli(woken, "owner", "set", "alice", "--no-local")
    world = with_wake(woken, listener_wait_s=0.5)
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot please")
        assert (posted["mentions"][0]["outcome"], posted["mentions"][0]["code"]) == ("queued", "waiting_for_listener")
        # Waiting is shown as waiting, not as woken, while it waits.
        [waiting] = await read_mentions(world, "alice-claude", posted["seq"])
        assert waiting["outcome"] in ("queued", "expired")
        await until(lambda: ended(world, "alice-bot"), "the wake expires")
    await settles(world, posted, posted["seq"], "expired", "expired")
    assert fakes.calls() == []


@pytest.mark.invariant(98)
async def test_a_cross_owner_wake_waiting_for_its_owners_listener_reads_so_to_the_poster_only(world: World) -> None:
    # The walk (finding 10): Alice's mention of Bob's agent, Bob's listener not running, read `queued` for the
    # hour it waited, and Alice cannot list Bob's runs. Her mention now says what it waits for, while it waits.
    async with world.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "bob", False)
        await hub.consent.set_mode_as_owner(OPERATOR, "shared", "bob", "approve_all", None)
    await world.trust("bob", "alice")
    posted = await post(world, "alice-claude", "@bob-codex please", room="shared")
    [said] = posted["mentions"]
    assert (said["outcome"], said["code"]) == ("queued", "waiting_for_listener") and said["run_id"], said
    [run] = runs(world, "bob-codex")
    assert (run["run_id"], run["state"]) == (said["run_id"], "waiting_for_listener")
    [now] = await read_mentions(world, "alice-claude", posted["seq"], room="shared")
    assert (now["outcome"], now["code"], now["run_id"]) == ("queued", "waiting_for_listener", said["run_id"])
    # Another member reads a notification only, as before (policy.sees_mention_receipts).
    [other] = await read_mentions(world, "bob-claude", posted["seq"], room="shared")
    assert (other["outcome"], other["code"], other["run_id"]) == ("notified", None, None)
    # Where it waits is read afresh: once Bob's wakes are the hub's to run, it is merely queued.
    async with world.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "bob", True)
    [now] = await read_mentions(world, "alice-claude", posted["seq"], room="shared")
    assert (now["outcome"], now["code"]) == ("queued", None)


@pytest.mark.invariant(98)
async def test_a_wake_queued_while_no_supervisor_runs_settles_expired(woken: World, fakes: Fakes) -> None:
    """A hub serving with its supervisor off (AGENT_ROOMS_SUPERVISOR=0): nothing will start the wake, and its
    expiry still ends it where the poster sees it: the serving process's housekeeping does, not a supervisor."""
    world = with_wake(woken, enabled=False, queued_wait_s=0.5, settle_every_s=0.1)
    async with Hub.open(world.settings) as hub, supervising(hub) as sup, housekeeping(hub):
        assert sup is None
        posted = await post(world, "alice-claude", "@alice-bot anyone there?")
        [said] = posted["mentions"]
        assert runs(world, "alice-bot")[0]["state"] == "queued"
        await until(lambda: ended(world, "alice-bot"), "the queued wake expires")
    await settles(world, posted, posted["seq"], "expired", "expired")
    assert said["run_id"] is not None
    assert [r["action"] for r in world.audit_rows() if r["action"].startswith("run.")][-1] == "run.expire"
    assert fakes.calls() == []


@pytest.mark.invariant(98)
async def test_a_completed_wake_reads_completed_and_a_mention_that_only_notified_stays_so(
    woken: World, fakes: Fakes
) -> None:
    async with supervisor(woken):
        posted = await post(woken, "alice-claude", "@alice-bot and @alice-admin look")
        await until(lambda: ended(woken, "alice-bot"), "the run ends")
    by_handle = {m["handle"]: m for m in await read_mentions(woken, "alice-claude", posted["seq"])}
    assert (by_handle["alice-bot"]["outcome"], by_handle["alice-bot"]["code"]) == ("completed", "ok")
    assert (by_handle["alice-admin"]["outcome"], by_handle["alice-admin"]["run_id"]) == ("notified", None)


async def test_a_coalesced_mention_follows_the_run_it_joined(woken: World) -> None:
    """Two mentions of a busy agent become one run (DESIGN §5): the second reads that run's fate too."""
    first = await post(woken, "alice-claude", "@alice-bot one")  # no supervisor: it stays queued
    second = await post(woken, "alice-claude", "@alice-bot two")
    assert second["mentions"][0]["outcome"] == "queued"
    assert second["mentions"][0]["run_id"] == first["mentions"][0]["run_id"]
    async with woken.hub() as hub:
        await hub.runs.stop_as_owner(OPERATOR, "alice-bot", None)
    for message in (first, second):
        [now] = await read_mentions(woken, "alice-claude", message["seq"])
        assert (now["outcome"], now["code"], now["run_id"]) == ("stopped", "stopped", first["mentions"][0]["run_id"])


async def test_a_page_of_mentions_is_settled_by_one_indexed_query(woken: World) -> None:
    """read_messages looks at the runs and proposals of a whole page with one statement, each part by an
    index: never a scan of the runs table, which grows with every wake."""
    conn = sqlite3.connect(woken.db)
    try:
        sql = _SETTLED.format(runs="?,?", props="?")
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, ["run_a", "run_b", "prop_a", "prop_a"])]
    finally:
        conn.close()
    assert not [step for step in plan if step.startswith("SCAN")], plan
    assert any("runs_by_cause" in step for step in plan), plan


async def test_run_list_shows_a_queued_run_as_not_started(woken: World) -> None:
    posted = await post(woken, "alice-claude", "@alice-bot later")
    run_id = posted["mentions"][0]["run_id"]
    _, out = await cli(woken, "run", "list", "--owner", "alice", "--json")
    [run] = [r for r in json.loads(out)["runs"] if r["run_id"] == run_id]
    assert run["state"] == "queued" and run["ended_at"] is None
    _, text = await cli(woken, "run", "log", run_id)
    assert "not started: queued" in text, text
    code, missing = await cli(woken, "run", "log", "run_nosuchrunatall0000000", ok=False)
    assert code == 1 and "NOT_FOUND" in missing


@pytest.mark.invariant(98)
async def test_a_mention_waiting_on_consent_follows_the_owners_decision(world: World) -> None:
    """Another owner's agent: the mention waits on its owner (pending_consent), then reads the fate of the run
    an acceptance made, or `refused` once rejected (no supervisor here: an accepted wake stays queued)."""
    await world.trust("bob", "alice")

    async def mention_bob() -> dict[str, Any]:
        async with world.client("alice-claude") as c:
            r = await c.call_tool("post_message", {"room": "shared", "text": "@bob-codex have a look"})
        assert not r.is_error, r.content
        [said] = r.structured_content["mentions"]  # type: ignore[index]
        assert said["outcome"] == "pending_consent" and said["run_id"] is None
        return {"seq": r.structured_content["seq"], "proposal_id": said["proposal_id"]}  # type: ignore[index]

    accepted, rejected = await mention_bob(), await mention_bob()
    [waiting] = await read_mentions(world, "alice-claude", accepted["seq"], room="shared")
    assert (waiting["outcome"], waiting["run_id"]) == ("pending_consent", None)
    async with world.client("bob-admin") as c:
        ok = await c.call_tool("accept_task", {"task": accepted["proposal_id"]})
        assert not ok.is_error, ok.content
        no = await c.call_tool("reject_task", {"task": rejected["proposal_id"], "reason": "busy"})
        assert not no.is_error, no.content
    [queued] = await read_mentions(world, "alice-claude", accepted["seq"], room="shared")
    [run] = world.sql("SELECT run_id, state FROM runs WHERE proposal_id = ?", (accepted["proposal_id"],))
    assert (queued["outcome"], queued["run_id"]) == ("queued", run["run_id"])
    [refused] = await read_mentions(world, "alice-claude", rejected["seq"], room="shared")
    assert (refused["outcome"], refused["run_id"]) == ("refused", None)
    async with world.hub() as hub:
        await hub.runs.stop_as_owner(OPERATOR, "bob-codex", None)
    [stopped] = await read_mentions(world, "alice-claude", accepted["seq"], room="shared")
    assert (stopped["outcome"], stopped["code"], stopped["run_id"]) == ("stopped", "stopped", run["run_id"])
    # The receipt is the poster's owner's: Bob's agent in the same room reads each mention as a notification,
    # without the run, its reason or the proposal (policy.sees_mention_receipts).
    for seq in (accepted["seq"], rejected["seq"]):
        [seen] = await read_mentions(world, "bob-claude", seq, room="shared")
        assert (seen["outcome"], seen.get("code"), seen.get("run_id"), seen.get("proposal_id")) == (
            "notified",
            None,
            None,
            None,
        ), seen


@pytest.mark.invariant(98)
async def test_an_accepted_wake_the_queue_refuses_settles_refused_spawn_cap(world: World) -> None:
    """Accepted, but the queue its causer is charged to is full: no run is made, and the mention that waited on
    the consent reads `refused` with SPAWN_CAP, not `pending_consent` or a withdrawal it never had."""
    await world.trust("bob", "alice")
    full = with_wake(world, max_queued_per_owner=0)
    async with full.client("alice-claude") as c:
        r = await c.call_tool("post_message", {"room": "shared", "text": "@bob-codex have a look"})
    assert not r.is_error, r.content
    [said] = r.structured_content["mentions"]  # type: ignore[index]
    assert said["outcome"] == "pending_consent"
    async with full.client("bob-admin") as c:
        ok = await c.call_tool("accept_task", {"task": said["proposal_id"]})
    assert not ok.is_error, ok.content
    assert not world.sql("SELECT 1 FROM runs WHERE proposal_id = ?", (said["proposal_id"],))
    [now] = await read_mentions(world, "alice-claude", r.structured_content["seq"], room="shared")  # type: ignore[index]
    assert (now["outcome"], now["code"], now["run_id"]) == ("refused", "SPAWN_CAP", None), now
