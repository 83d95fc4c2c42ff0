"""More of the wake supervisor end to end (DESIGN §5, research/wake.md §7.2): caps under a burst, wake depth,
cross-owner and contained runs, time limits, the CLIs' odd endings, stopping, the `agent stop` and `run log`
commands, and who sees which runs. A real hub, real MCP calls and the real supervisor spawning the fake CLIs;
the tests wait for what the database shows, never for time to pass."""

from __future__ import annotations

import gc
import io
import json
import os
import sqlite3
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import structlog
from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from tests.conftest import AGENTS, OPERATOR, World, build_world
from tests.fakes.common import write_wrapper
from tests.tool_errors import error_detail
from tests.wakeworld import (
    FINAL,
    Fakes,
    ended,
    give_to_run_as,
    gone,
    post,
    runs,
    supervisor,
    unsandboxed_unless_available,
    until,
    wake_caps,
)

# Short graces so a stop that must escalate does so within a second or two.
QUICK: dict[str, Any] = {"grace_int_s": 0.5, "grace_term_s": 0.5, "after_result_s": 2.0, "poll_s": 0.05}
INVOKE = "read,post,task,invoke"


# --- helpers ---------------------------------------------------------------------------------------------------


def rewrap(fakes: Fakes, tool: str, **knobs: str) -> None:
    """Rewrite the fake `tool`'s wrapper in place with extra knobs (the supervisor scrubs FAKE_* from the
    environment, so knobs ride in the wrapper). Later spawns of the same path see them."""
    env = {"FAKE_SCENARIO_FILE": str(fakes.scenario_file), "FAKE_LOG": str(fakes.log), **knobs}
    write_wrapper(tool, Path(fakes.bins[tool]).parent, env=env)


async def add_agent(
    world: World, handle: str, owner: str, tool: AgentTool, rooms: list[str], *, scopes: str = INVOKE
) -> None:
    """An agent with a token and its own work directory, member of `rooms`."""
    workdir = world.settings.home.parent / "work" / handle
    workdir.mkdir(parents=True)
    give_to_run_as(workdir)
    async with world.hub() as hub:
        await hub.accounts.add_agent(OPERATOR, handle, owner, tool, parse_scopes(scopes), str(workdir))
        await unsandboxed_unless_available(hub, handle)
        world.tokens[handle] = (await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))).token
        for room in rooms:
            await hub.rooms.add_agent(OPERATOR, room, handle)


async def wake_world(tmp_path: Path, fakes: Fakes, *, reply: bool = True, **caps: Any) -> World:
    """conftest's world with a supervisor that spawns the fakes, plus alice-bot (claude) and alice-cx (codex),
    both holding invoke, in lobby. reply=False: the fakes finish without calling back into the hub (faster)."""
    if not reply:
        for tool in fakes.bins:
            rewrap(fakes, tool, FAKE_REPLY="0")
    settings = wake_caps(fakes, **{**QUICK, **caps})
    world = await build_world(tmp_path / "home", settings)
    async with world.hub() as hub:
        await unsandboxed_unless_available(hub, *AGENTS)
    await add_agent(world, "alice-bot", "alice", AgentTool.CLAUDE, ["lobby"])
    await add_agent(world, "alice-cx", "alice", AgentTool.CODEX, ["lobby"])
    fakes.scenario("ok")
    return world


async def call(world: World, agent: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    async with world.client(agent) as c:
        r = await c.call_tool(tool, arguments)
    return bool(r.is_error), error_detail(r) if r.is_error else r.structured_content or {}


def one_call(fakes: Fakes, **match: Any) -> dict[str, Any]:
    """The single FAKE_LOG line whose fields match."""
    [found] = [c for c in fakes.calls() if all(c.get(k) == v for k, v in match.items())]
    return found


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # reaped between the two looks
        return False


def running(world: World, agent: str) -> sqlite3.Row | None:
    """The agent's run once its CLI is up (a pid recorded), else None."""
    rows = [r for r in runs(world, agent) if r["state"] == "running" and r["pid"]]
    return rows[0] if rows else None


def when(iso_text: str) -> datetime:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00"))


def all_final(world: World) -> bool:
    return all(r["state"] in FINAL for r in world.sql("SELECT state FROM runs"))


# --- 1. caps under a burst ---------------------------------------------------------------------------------------


class Peaks:
    """The most the database ever showed at once, over many samples."""

    def __init__(self) -> None:
        self.total = 0
        self.per_owner = 0
        self.per_agent = 0
        self.queued_per_agent = 0
        self.queued_per_owner = 0
        self.samples = 0

    def sample(self, world: World) -> int:
        # One statement: one consistent snapshot of the WAL database.
        rows = world.sql("SELECT owner_id, agent_id, state FROM runs WHERE state IN ('running', 'stopping', 'queued')")
        live = [r for r in rows if r["state"] != "queued"]
        queued = [r for r in rows if r["state"] == "queued"]
        self.total = max(self.total, len(live))
        self.per_owner = max(self.per_owner, *Counter(r["owner_id"] for r in live).values(), 0)
        self.per_agent = max(self.per_agent, *Counter(r["agent_id"] for r in live).values(), 0)
        self.queued_per_owner = max(self.queued_per_owner, *Counter(r["owner_id"] for r in queued).values(), 0)
        self.queued_per_agent = max(self.queued_per_agent, *Counter(r["agent_id"] for r in queued).values(), 0)
        self.samples += 1
        return len(live)


@pytest.mark.invariant(69)
async def test_caps_hold_under_a_burst_of_mentions(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, max_queued_per_owner=3)
    async with world.hub() as hub:
        await hub.rooms.create(OPERATOR, "carols", "carol", ["carol-claude"])
    workers = {
        "alice": ["aw1", "aw2", "aw3", "aw4"],
        "bob": ["bw1", "bw2", "bw3"],
        "carol": ["cw1", "cw2"],
    }
    homes = {"alice": ["lobby", "shared"], "bob": ["bobs-den"], "carol": ["carols"]}
    for owner, handles in workers.items():
        for handle in handles:
            await add_agent(world, handle, owner, AgentTool.CLAUDE, homes[owner])
    # Who mentions whom where: several authors, several rooms, every worker more than once. Alice's workers
    # come first, so that without the per-owner cap her runs alone would fill the global one.
    plan = [
        ("alice-claude", "lobby", "aw1"),
        ("alice-codex", "lobby", "aw2"),
        ("alice-admin", "shared", "aw3"),
        ("alice-claude", "shared", "aw4"),
        ("bob-claude", "bobs-den", "bw1"),
        ("bob-codex", "bobs-den", "bw2"),
        ("bob-claude", "bobs-den", "bw3"),
        ("carol-claude", "carols", "cw1"),
        ("carol-claude", "carols", "cw2"),
    ]
    burst = [plan[i % len(plan)] for i in range(50)]
    fakes.scenario("hang")
    peaks = Peaks()
    outcomes: dict[str, list[tuple[str, str | None]]] = {}

    async def sampler() -> None:
        while True:
            peaks.sample(world)
            await anyio.sleep(0.01)  # a sampling cadence, not a synchronisation

    async with supervisor(world):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            async with AsyncExitStack() as stack:
                authors = dict.fromkeys(a for a, _, _ in burst)
                clients = {a: await stack.enter_async_context(world.client(a)) for a in authors}
                for author, room, target in burst:
                    r = await clients[author].call_tool("post_message", {"room": room, "text": f"@{target} please"})
                    assert not r.is_error, r.content
                    [m] = r.structured_content["mentions"]
                    outcomes.setdefault(target, []).append((m["outcome"], m["code"]))
                    peaks.sample(world)
            # Six runs could go (two per owner), so the global cap is what holds them at four.
            await until(lambda: peaks.sample(world) >= 4 and len(fakes.calls()) >= 4, "the global cap is filled")
            enough = peaks.samples + 100  # go on sampling over many supervisor polls past the burst
            await until(lambda: peaks.samples >= enough, "more samples")
            tg.cancel_scope.cancel()

        assert peaks.samples > 150
        assert (peaks.total, peaks.per_owner, peaks.per_agent) == (4, 2, 1)
        assert peaks.queued_per_agent <= 1 and peaks.queued_per_owner <= 3
        seen = [o for target in outcomes.values() for o in target]
        assert set(seen) <= {("woken", None), ("queued", None), ("refused", "SPAWN_CAP")}
        # Mentions of a busy agent joined one follow-up: never more than one run now plus one queued per agent
        # (a worker whose every mention met a full queue has none).
        assert ("queued", None) in seen
        for handles in workers.values():
            for handle in handles:
                assert len(runs(world, handle)) <= 2, handle
        # Alice's four workers need more than three queued runs between them: the queue bound refuses the rest.
        assert ("refused", "SPAWN_CAP") in [o for h in workers["alice"] for o in outcomes[h]]

        # Stop everything: queued runs end at once, running ones are interrupted, and every run ends.
        async with world.hub() as hub:
            for handles in workers.values():
                for handle in handles:
                    await hub.runs.stop_as_owner(OPERATOR, handle, None)
        await until(lambda: all_final(world), "every run ends")
    states = Counter(r["state"] for r in world.sql("SELECT state FROM runs"))
    assert set(states) == {"stopped"}, states


# --- 2. wake depth ---------------------------------------------------------------------------------------------


async def test_a_chain_of_wakes_stops_at_depth_three(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes)
    # Each woken agent's reply mentions the other one: a ping-pong only the depth cap ends.
    rewrap(fakes, "claude", FAKE_REPLY_TEXT="@alice-cx next")
    rewrap(fakes, "codex", FAKE_REPLY_TEXT="@alice-bot next")
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot go")
        assert posted["mentions"][0]["outcome"] == "woken"
        await until(lambda: ended(world, "alice-bot", 2) and ended(world, "alice-cx", 1), "three runs end")
    chain = world.sql(
        "SELECT a.handle, r.depth, r.state, r.caused_by FROM runs r JOIN agents a USING (agent_id) ORDER BY r.depth"
    )
    assert [(r["handle"], r["depth"]) for r in chain] == [("alice-bot", 1), ("alice-cx", 2), ("alice-bot", 3)]
    assert {r["state"] for r in chain} == {"completed"}
    # The depth-3 run did post its "@alice-cx next": the message is there, the wake was refused.
    last = world.sql(
        "SELECT m.message_id, m.text FROM messages m JOIN agents a USING (agent_id) WHERE a.handle = 'alice-bot'"
        " ORDER BY m.seq"
    )
    assert [m["text"] for m in last] == ["@alice-cx next", "@alice-cx next"]
    [audited] = [
        json.loads(r["detail"])
        for r in world.audit_rows()
        if r["action"] == "message.post" and json.loads(r["detail"])["message_id"] == last[-1]["message_id"]
    ]
    # The audit row says the mention was refused (per handle, or as a count in the older shape).
    assert audited.get("outcomes", {}).get("alice-cx") == "refused" or audited.get("refused") == 1, audited
    # What the depth-3 run saw: SPAWN_CAP. Ask again as that run, with a run token for it.
    [claimed] = world.sql("SELECT run_id, lease_holder, lease_epoch FROM runs WHERE depth = 3")
    depth3 = claimed["run_id"]
    # A run token works only while its run runs: put the finished depth-3 run back in that state.
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute("UPDATE runs SET state = 'running' WHERE run_id = ?", (depth3,))
    conn.close()
    async with world.hub() as hub:
        token = await hub.accounts.issue_run_token(
            OPERATOR,
            "alice-bot",
            depth3,
            timedelta(minutes=5),
            holder=claimed["lease_holder"],
            lease=claimed["lease_epoch"],
        )
    async with world.client(None, token=token.token) as c:
        r = await c.call_tool("post_message", {"room": "lobby", "text": "@alice-cx one more"})
    assert not r.is_error, r.content
    assert r.structured_content["mentions"] == [
        {"handle": "alice-cx", "outcome": "refused", "code": "SPAWN_CAP", "proposal_id": None, "run_id": None}
    ]
    assert world.sql("SELECT count(*) AS n FROM runs WHERE depth > 3")[0]["n"] == 0
    assert len(world.sql("SELECT run_id FROM runs")) == 3


# --- 3. cross-owner wakes: pending until accepted, then constrained ----------------------------------------------


@pytest.mark.invariant(42)
async def test_a_cross_owner_wake_waits_for_consent_then_runs_constrained(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    await add_agent(world, "alice-helper", "alice", AgentTool.CLAUDE, ["shared"])
    await add_agent(world, "bob-cx", "bob", AgentTool.CODEX, ["shared"])
    await world.trust("bob", "alice")
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@bob-codex please review", room="shared")
        [m] = posted["mentions"]
        assert (m["handle"], m["outcome"]) == ("bob-codex", "pending_consent") and m["proposal_id"]
        # Something the supervisor must do meanwhile, so that "nothing for bob-codex" is not merely "not yet".
        await post(world, "alice-claude", "@alice-helper meanwhile", room="shared")
        await until(lambda: ended(world, "alice-helper"), "alice's own wake ends")
        assert runs(world, "bob-codex") == []
        assert [c["cwd"] for c in fakes.calls()] == [str(world.settings.home.parent / "work" / "alice-helper")]

        failed, decided = await call(world, "bob-admin", "accept_task", {"task": m["proposal_id"]})
        assert not failed and decided["consent_state"] == "accepted", decided
        [run] = await until(lambda: ended(world, "bob-codex"), "the accepted wake runs")
    assert (run["state"], run["trigger"], run["cause_id"], run["constrained"]) == (
        "completed", "wake_proposal", m["proposal_id"], 1
    )  # fmt: skip
    argv = one_call(fakes, tool="claude", session_id=run["session_id"])["argv"]
    assert flag(argv, "--tools") == "Read,Grep,Glob" and flag(argv, "--permission-mode") == "dontAsk"
    assert "--dangerously-skip-permissions" not in argv
    failed, listed = await call(world, "bob-claude", "list_runs", {})
    assert not failed
    [info] = listed["runs"]
    assert (info["agent"], info["trigger"], info["constrained"], info["room"]) == (
        "bob-codex", "wake_proposal", True, "shared"
    )  # fmt: skip

    # Bob's Codex agent, woken by alice: read-only sandbox, model shells see only the core environment.
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@bob-cx please look", room="shared")
        [m] = posted["mentions"]
        assert m["outcome"] == "pending_consent"
        failed, _ = await call(world, "bob-admin", "accept_task", {"task": m["proposal_id"]})
        assert not failed
        [cx] = await until(lambda: ended(world, "bob-cx"), "bob-cx's run ends")
    assert (cx["state"], cx["constrained"]) == ("completed", 1)
    [codex] = [c for c in fakes.calls() if c["tool"] == "codex"]
    assert flag(codex["argv"], "--sandbox") == "read-only"
    assert "--dangerously-bypass-approvals-and-sandbox" not in codex["argv"]
    assert "shell_environment_policy.inherit=core" in codex["argv"]


# --- 4. a tool that cannot run constrained ------------------------------------------------------------------------


async def test_another_owners_openclaw_agent_is_refused_constrained_runtime_required(
    tmp_path: Path, fakes: Fakes
) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    await add_agent(world, "bob-claw", "bob", AgentTool.OPENCLAW, ["shared"])
    await add_agent(world, "alice-helper", "alice", AgentTool.CLAUDE, ["shared"])
    await world.trust("bob", "alice")
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@bob-claw hello", room="shared")
        assert posted["mentions"] == [
            {
                "handle": "bob-claw",
                "outcome": "refused",
                "code": "CONSTRAINED_RUNTIME_REQUIRED",
                "proposal_id": None,
                "run_id": None,
            }
        ]
        failed, task = await call(
            world, "alice-claude", "create_task", {"room": "shared", "title": "do it", "assignee": "bob-claw"}
        )
        assert failed and task["code"] == "CONSTRAINED_RUNTIME_REQUIRED", task
        await post(world, "alice-claude", "@alice-helper meanwhile", room="shared")
        await until(lambda: ended(world, "alice-helper"), "alice's own wake ends")
    assert runs(world, "bob-claw") == []
    assert [c["tool"] for c in fakes.calls()] == ["claude"]
    assert world.sql("SELECT count(*) AS n FROM tasks")[0]["n"] == 0
    assert world.sql("SELECT count(*) AS n FROM proposals")[0]["n"] == 0


# --- 5. AGENT_ROOMS_WAKE_CONTAIN ------------------------------------------------------------------------------------


async def test_contain_mode_makes_claude_wakes_read_only_and_leaves_codex_alone(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False, contain=True)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot @alice-cx look")
        [bot] = await until(lambda: ended(world, "alice-bot"), "claude's run ends")
        [cx] = await until(lambda: ended(world, "alice-cx"), "codex's run ends")
    assert (bot["state"], bot["constrained"], cx["state"], cx["constrained"]) == ("completed", 0, "completed", 0)
    claude, codex = one_call(fakes, tool="claude"), one_call(fakes, tool="codex")
    assert flag(claude["argv"], "--tools") == "Read,Grep,Glob" and claude["mode"] == "contain"
    assert flag(claude["argv"], "--permission-mode") == "dontAsk"
    assert "--dangerously-skip-permissions" not in claude["argv"]
    assert "--dangerously-bypass-approvals-and-sandbox" in codex["argv"] and "--sandbox" not in codex["argv"]


# --- 6. the time limit ----------------------------------------------------------------------------------------------


@pytest.mark.invariant(71)
async def test_a_run_past_its_time_limit_is_stopped_with_its_descendants(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, run_limit_s=1.5)
    fakes.scenario("tool_orphan")  # a tool shell in a session of its own; the CLI ignores SIGINT and SIGTERM
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot work on it")
        [orphan] = await until(lambda: [c for c in fakes.calls() if c.get("orphan_pid")], "the tool started")
        [run] = await until(lambda: ended(world, "alice-bot"), "the time limit ends the run")
    assert (run["state"], run["outcome"], run["stop_signal"]) == ("stopped", "time_limit", "SIGKILL")
    await until(lambda: gone(orphan, "orphan_pid"), "the tool shell is gone", 10)
    assert gone(orphan)
    [token] = world.sql("SELECT revoked_at FROM tokens WHERE run_id = ?", (run["run_id"],))
    assert token["revoked_at"] is not None


# --- 7. how runs end ------------------------------------------------------------------------------------------------


async def test_a_cli_that_hangs_after_its_result_completes_and_is_ended(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False, after_result_s=0.5)
    fakes.scenario("hang_after_result")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot quick one")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    [c] = fakes.calls()
    await until(lambda: gone(c), "the CLI is gone", 10)


async def test_non_json_lines_are_skipped(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    fakes.scenario("garbage")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot @alice-cx noisy")
        await until(lambda: ended(world, "alice-bot") and ended(world, "alice-cx"), "both runs end")
    assert [(r["state"], r["outcome"]) for r in runs(world, "alice-bot") + runs(world, "alice-cx")] == [
        ("completed", "ok"),
        ("completed", "ok"),
    ]


async def test_a_flood_line_stops_the_run_and_the_hub_goes_on(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    fakes.scenario("flood")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot flood")
        [run] = await until(lambda: ended(world, "alice-bot"), "the flooding run ends")
        assert (run["state"], run["outcome"]) == ("stopped", "output_cap")
        [c] = fakes.calls()
        await until(lambda: gone(c), "the flooding CLI is gone", 10)
        fakes.scenario("ok")
        await post(world, "alice-claude", "@alice-cx still there?")
        [after] = await until(lambda: ended(world, "alice-cx"), "the next run ends")
    assert after["state"] == "completed"
    # What the run kept of its events stays bounded.
    events = world.settings.run_logs_dir / run["run_id"] / "events.jsonl"
    assert events.stat().st_size <= (1 << 20) + 200


async def test_an_auth_failure_fails_and_is_not_retried(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    fakes.scenario("auth")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot try")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "auth")
    # The follow-up of a rate limit is written with the run's end: for auth there is none, and no back-off.
    assert len(runs(world, "alice-bot")) == 1
    assert world.sql("SELECT * FROM backoffs") == []
    assert len(fakes.calls()) == 1


async def test_a_usage_limit_holds_the_follow_up_until_the_reset(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    rewrap(fakes, "claude", FAKE_REPLY="0", FAKE_RESET_IN="3600")
    fakes.scenario("usage_limit")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot big job")
        first = (await until(lambda: ended(world, "alice-bot"), "the run ends"))[0]
        assert (first["state"], first["outcome"]) == ("failed", "rate_limit")
        reset = datetime.fromtimestamp(one_call(fakes, tool="claude")["resets_at"], UTC)
        [backoff] = world.sql("SELECT * FROM backoffs")
        assert (backoff["tool"], backoff["owner_id"]) == ("claude", first["owner_id"])
        assert when(backoff["not_before"]) >= reset
        [_, follow_up] = runs(world, "alice-bot")
        assert (follow_up["state"], follow_up["resume"]) == ("queued", 1)
        assert when(follow_up["not_before"]) >= reset
        # The supervisor keeps going (another tool of the same owner runs) while the follow-up waits.
        fakes.scenario("ok")
        await post(world, "alice-claude", "@alice-cx meanwhile")
        await until(lambda: ended(world, "alice-cx"), "codex's run ends")
        # A new mention of the backed-off agent joins the waiting follow-up instead of spawning.
        posted = await post(world, "alice-claude", "@alice-bot again")
        assert posted["mentions"][0]["outcome"] == "queued"
        await post(world, "alice-claude", "@alice-cx and again")
        await until(lambda: ended(world, "alice-cx", 2), "codex's second run ends")
    [_, still] = runs(world, "alice-bot")
    assert (still["run_id"], still["state"], still["started_at"]) == (follow_up["run_id"], "queued", None)
    assert [c["tool"] for c in fakes.calls()].count("claude") == 1


# --- 8. stopping a queued run ---------------------------------------------------------------------------------------


async def test_stop_ends_a_queued_run_at_once_and_interrupts_the_running_one(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    fakes.scenario("hang")
    async with supervisor(world):
        first = await post(world, "alice-claude", "@alice-bot one")
        busy = await until(lambda: running(world, "alice-bot"), "the first run's CLI is up")
        await until(lambda: fakes.calls(), "the fake logged its start")
        second = await post(world, "alice-claude", "@alice-bot two")
        assert [first["mentions"][0]["outcome"], second["mentions"][0]["outcome"]] == ["woken", "queued"]
        [_, waiting] = runs(world, "alice-bot")
        assert waiting["state"] == "queued"
        failed, stopped = await call(world, "alice-admin", "stop_agent", {"agent": "alice-bot"})
        assert not failed
        by_run = {s["run_id"]: s for s in stopped["stopped"]}
        assert by_run[waiting["run_id"]] == {"run_id": waiting["run_id"], "stop_signal": "none", "state": "stopped"}
        assert by_run[busy["run_id"]]["state"] == "stopping"
        # The queued run ended in that same call: nothing to signal, nothing spawned.
        now = {r["run_id"]: r for r in runs(world, "alice-bot")}[waiting["run_id"]]
        assert (now["state"], now["stop_signal"], now["pid"]) == ("stopped", "none", None) and now["ended_at"]
        first_run, second_run = await until(lambda: ended(world, "alice-bot", 2), "the running one ends")
    assert (first_run["state"], first_run["stop_signal"]) == ("stopped", "SIGINT")
    assert (second_run["state"], second_run["started_at"]) == ("stopped", None)
    assert len(fakes.calls()) == 1


async def test_a_supervisor_shut_down_mid_run_leaves_no_process_and_no_open_file(tmp_path: Path, fakes: Fakes) -> None:
    """wake.md §7.2 #4: the serving process stops while a CLI runs. The child and its tool shell are gone, the
    run is recorded as ended, and the run's event log is closed, not left to the garbage collector."""
    world = await wake_world(tmp_path, fakes, reply=False)
    fakes.scenario("tool_orphan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with supervisor(world):
            await post(world, "alice-claude", "@alice-bot long job")
            [c] = await until(lambda: [c for c in fakes.calls() if c.get("orphan_pid")], "the tool started")
            run = await until(lambda: running(world, "alice-bot"), "the CLI is up")
        events = str(world.settings.run_logs_dir / run["run_id"] / "events.jsonl")
        still_open = [fd for fd in os.listdir("/proc/self/fd") if _target(fd) == events]
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and events in str(w.message)]
    assert gone(c) and gone(c, "orphan_pid")
    [ended_run] = runs(world, "alice-bot")
    assert ended_run["state"] in FINAL and ended_run["ended_at"]
    assert not still_open, f"the run's events.jsonl is still open after shutdown (fd {still_open})"
    assert not leaked, leaked


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


# --- 9. the CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture
def quiet_logs() -> Iterator[io.StringIO]:
    """The supervisor logs while CliRunner holds sys.stdout: keep its lines out of the command's output."""
    configured, saved = structlog.is_configured(), structlog.get_config()
    sink = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
    try:
        yield sink
    finally:
        # As it was, unconfigured included: a CLI command configures its logging only where nothing has.
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


async def agent_rooms(world: World, *args: str) -> Result:
    """`agent-rooms ARGS` in a worker thread, so this event loop keeps serving the supervisor meanwhile."""

    def invoke() -> Result:
        env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return await anyio.to_thread.run_sync(invoke)


async def test_agent_stop_and_run_log_on_the_command_line(
    tmp_path: Path, fakes: Fakes, quiet_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    errors: list[str] = []  # each command's stderr
    fakes.scenario("hang")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot work")
        run = await until(lambda: running(world, "alice-bot"), "the CLI is up")
        await until(lambda: fakes.calls(), "the fake logged its start")
        r = await agent_rooms(world, "agent", "stop", "alice-bot")
        errors.append(r.stderr)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        # It returned once the run had ended, and says so.
        [now] = runs(world, "alice-bot")
        assert (now["state"], now["stop_signal"]) == ("stopped", "SIGINT")
        header, row = r.stdout.strip().splitlines()
        assert header.split() == ["RUN_ID", "STATE", "SIGNAL"] and row.split() == [run["run_id"], "stopped", "SIGINT"]

        # --json: nothing left to stop, then a second run stopped.
        r = await agent_rooms(world, "agent", "stop", "alice-bot", "--json")
        errors.append(r.stderr)
        assert r.exit_code == 0 and json.loads(r.stdout) == {"stopped": []}
        await post(world, "alice-claude", "@alice-bot again")
        again = await until(lambda: running(world, "alice-bot"), "the second CLI is up")
        await until(lambda: len(fakes.calls()) == 2, "the fake logged its start")
        r = await agent_rooms(world, "agent", "stop", "alice-bot", "--json")
        errors.append(r.stderr)
        assert r.exit_code == 0, (r.stdout, r.stderr)
        assert json.loads(r.stdout) == {
            "stopped": [{"run_id": again["run_id"], "stop_signal": "SIGINT", "state": "stopped"}]
        }
    # The supervisor's lines went to the log, not the command's output (each stdout above is exactly the
    # command's): to this fixture's sink, or, where an earlier test of this process had its loggers cached, to
    # stderr, which is the command's own while one runs.
    logged = quiet_logs.getvalue() + capsys.readouterr().err + "".join(errors)
    assert "run.end" in logged

    r = await agent_rooms(world, "run", "log", run["run_id"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RUN_ID", "AGENT", "ROOM", "TRIGGER", "STATE", "OUTCOME"]
    assert lines[1].split() == [run["run_id"], "alice-bot", "lobby", "mention", "stopped", "stopped"]
    # Why it ended, in plain words, before the events its CLI printed.
    assert lines[2] == "status: stopped, ended: an owner stopped it (agent stop)"
    events = [json.loads(line) for line in lines[3:]]
    assert {"type": "system", "subtype": "init"}.items() <= events[0].items()
    assert events[-1]["type"] == "result"

    r = await agent_rooms(world, "run", "log", run["run_id"], "--stderr")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stdout.splitlines()[0].split()[0] == "RUN_ID" and "session_id" not in r.stdout

    r = await agent_rooms(world, "run", "log", run["run_id"], "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    info = json.loads(r.stdout)
    assert set(info) == {
        "run_id", "agent", "room", "trigger", "cause_id", "state", "created_at", "started_at", "ended_at",
        "outcome", "stop_signal", "session_id", "constrained",
    }  # fmt: skip
    assert (info["run_id"], info["state"], info["stop_signal"], info["constrained"]) == (
        run["run_id"], "stopped", "SIGINT", False
    )  # fmt: skip

    r = await agent_rooms(world, "run", "log", "run_nope", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["code"] == "NOT_FOUND"

    # A run that never started has no log yet: its status says so in text, its state is shown with --json.
    await post(world, "alice-claude", "@alice-bot when you can")  # no supervisor now: it stays queued
    waiting = runs(world, "alice-bot")[-1]
    assert waiting["state"] == "queued"
    r = await agent_rooms(world, "run", "log", waiting["run_id"])
    assert r.exit_code == 0 and "status: not started: queued" in r.stdout, (r.stdout, r.stderr)
    assert "(no events.jsonl kept for this run)" in r.stdout
    r = await agent_rooms(world, "run", "log", waiting["run_id"], "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["state"] == "queued"


async def test_run_log_says_what_happened_when_the_cli_failed_and_never_that_its_supervisor_went_away(
    tmp_path: Path, fakes: Fakes
) -> None:
    """Walk finding 3: a CLI that could not resume its session, or exited with an error none of its events
    names, ends `failed` with outcome `lost` (DESIGN §7's closed list), while its supervisor was there all
    along: the status line says what happened and where its stderr is, not "its supervisor went away"."""
    world = await wake_world(tmp_path, fakes, reply=False)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot one")
        await until(lambda: ended(world, "alice-bot"), "first run")
        fakes.scenario("resume_missing")
        await post(world, "alice-claude", "@alice-bot two")
        _, gone = await until(lambda: ended(world, "alice-bot", 2), "second run")
    assert (gone["state"], gone["outcome"], gone["session_id"]) == ("failed", "lost", "")
    r = await agent_rooms(world, "run", "log", gone["run_id"], "--stderr")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    status = r.stdout.splitlines()[2]
    assert status.startswith("status: failed, ended: the CLI could not resume the agent's last session"), status
    assert "supervisor" not in status and "No conversation found" in r.stdout

    # A CLI that prints an error and exits 1 without a result.
    broken = fakes.root / "bin" / "broken-claude"
    broken.write_text("#!/bin/sh\necho 'claude: something broke' >&2\nexit 1\n")
    broken.chmod(0o755)
    settings = replace(world.settings, wake=replace(world.settings.wake, claude_bin=str(broken)))
    async with Hub.open(settings) as hub, supervising(hub):
        await post(world, "alice-claude", "@alice-bot three")
        *_, failed = await until(lambda: ended(world, "alice-bot", 3), "the failing run ends")
    assert (failed["state"], failed["outcome"]) == ("failed", "lost")
    r = await agent_rooms(world, "run", "log", failed["run_id"])
    status = r.stdout.splitlines()[2]
    assert status == (
        "status: failed, ended: the CLI exited with an error that none of its events names; its stderr says what"
        f" it was (agent-rooms run log {failed['run_id']} --stderr, on the machine that ran it)"
    ), status
    r = await agent_rooms(world, "run", "log", failed["run_id"], "--stderr")
    assert "claude: something broke" in r.stdout


async def test_a_cli_named_by_a_relative_path_runs_the_file_that_was_checked_not_one_in_the_workdir(
    tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §5: the CLI comes from AGENT_ROOMS_CLAUDE_BIN, else the server's PATH, and is run by the path found
    there, so the run's own PATH never decides which CLI runs. A relative AGENT_ROOMS_CLAUDE_BIN (or a `.` in
    PATH) was found relative to the supervisor's directory and then executed relative to the run's: the agent's
    workdir, which holds whatever the agent (or another owner's words, in an earlier run) wrote there."""
    world = await wake_world(tmp_path, fakes, reply=False)
    checked = Path(fakes.bins["claude"])
    monkeypatch.chdir(checked.parent.parent)  # the supervisor's own directory holds bin/claude
    workdir = world.settings.home.parent / "work" / "alice-bot"
    impostor = workdir / checked.parent.name / checked.name
    impostor.parent.mkdir()
    impostor.write_text("#!/bin/sh\necho 'the workdir chose this CLI' >&2\nexit 1\n")
    impostor.chmod(0o755)
    relative = f"{checked.parent.name}/{checked.name}"
    settings = replace(world.settings, wake=replace(world.settings.wake, claude_bin=relative))
    async with Hub.open(settings) as hub, supervising(hub):
        await post(world, "alice-claude", "@alice-bot one")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    stderr = settings.run_logs_dir / run["run_id"] / "stderr.log"
    assert "the workdir chose this CLI" not in (stderr.read_text() if stderr.exists() else "")
    assert (run["state"], run["outcome"]) == ("completed", "ok"), dict(run)


# --- 10. who sees and stops which runs ------------------------------------------------------------------------------


async def test_list_runs_filters_and_other_owners_see_and_stop_nothing(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    async with world.hub() as hub:
        await hub.rooms.add_agent(OPERATOR, "shared", "alice-bot")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot @alice-cx in the lobby")
        await until(lambda: ended(world, "alice-bot"), "the first run ends")  # else the next mention joins it
        await post(world, "alice-claude", "@alice-bot in shared", room="shared")
        await until(lambda: ended(world, "alice-bot", 2) and ended(world, "alice-cx"), "three runs end")

    async def listed(caller: str, **filters: Any) -> list[dict[str, Any]]:
        failed, page = await call(world, caller, "list_runs", filters)
        assert not failed, page
        return page["runs"]

    everything = await listed("alice-claude")
    assert len(everything) == 3 and {r["state"] for r in everything} == {"completed"}
    assert [r["created_at"] for r in everything] == sorted((r["created_at"] for r in everything), reverse=True)
    assert {r["agent"] for r in await listed("alice-claude", agent="alice-bot")} == {"alice-bot"}
    assert len(await listed("alice-claude", agent="alice-bot")) == 2
    [in_shared] = await listed("alice-claude", room="shared")
    assert (in_shared["agent"], in_shared["room"]) == ("alice-bot", "shared")
    assert len(await listed("alice-claude", room="lobby", agent="alice-cx")) == 1
    assert len(await listed("alice-claude", state="completed")) == 3
    assert await listed("alice-claude", state="running") == []
    assert len(await listed("alice-claude", limit=1)) == 1
    # Another owner's agents see none of alice's runs, however they ask.
    assert await listed("bob-claude") == []
    assert await listed("bob-admin", agent="alice-bot") == []
    assert await listed("bob-claude", room="shared") == []

    # Without a supervisor, a wake waits queued; bob's manager cannot stop it, nor learn that alice-bot
    # exists (invariant 82), and nothing changes.
    await post(world, "alice-claude", "@alice-bot later")
    before = world.fingerprint()
    failed, refused = await call(world, "bob-admin", "stop_agent", {"agent": "alice-bot"})
    assert failed and refused["code"] == "NOT_FOUND", refused
    assert world.fingerprint() == before
    assert runs(world, "alice-bot")[-1]["state"] == "queued"
    # Alice's own manager can.
    failed, stopped = await call(world, "alice-admin", "stop_agent", {"agent": "alice-bot"})
    assert not failed and [s["state"] for s in stopped["stopped"]] == ["stopped"]


async def test_an_openclaw_agent_given_invoke_while_a_task_waits_is_never_spawned(tmp_path: Path, fakes: Fakes) -> None:
    world = await wake_world(tmp_path, fakes, reply=False)
    await add_agent(world, "bob-claw", "bob", AgentTool.OPENCLAW, ["shared"], scopes="read,post,task")
    await add_agent(world, "alice-helper", "alice", AgentTool.CLAUDE, ["shared"])
    await world.trust("bob", "alice")
    # Without invoke nothing would be woken, so the task may wait for bob's consent...
    failed, task = await call(
        world, "alice-claude", "create_task", {"room": "shared", "title": "do it", "assignee": "bob-claw"}
    )
    assert not failed and task["consent_state"] == "pending", task
    # ... and then bob gives the agent invoke before deciding.
    async with world.hub() as hub:
        await hub.accounts.set_scopes(OPERATOR, "bob-claw", parse_scopes(INVOKE))
    async with supervisor(world):
        failed, decided = await call(world, "bob-admin", "accept_task", {"task": task["proposal_id"]})
        await post(world, "alice-claude", "@alice-helper meanwhile", room="shared")
        await until(lambda: ended(world, "alice-helper"), "alice's own wake ends")
        await until(lambda: all_final(world), "every run ends")
    # Refused at the decision, or recorded as refused at the spawn: either way no OpenClaw process ran.
    assert [c["tool"] for c in fakes.calls()] == ["claude"]
    if failed:
        assert decided["code"] == "CONSTRAINED_RUNTIME_REQUIRED", decided
        assert runs(world, "bob-claw") == []
    else:
        [run] = runs(world, "bob-claw")
        assert (run["state"], run["outcome"], run["pid"]) == ("failed", "sandbox_required", None)
