"""The wake supervisor end to end (DESIGN §5): a real hub, real MCP calls, the real supervisor spawning fake
CLIs (tests/fakes) that speak the real event formats and call back into the hub with their run token."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import parse_scopes
from agent_rooms_mcp.wake.process import descendants
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code
from tests.wakeworld import Fakes, ended, post, runs, supervisor, until


async def test_a_mention_wakes_the_agent_which_replies_with_its_run_token(woken: World, fakes: Fakes) -> None:
    async with supervisor(woken):
        posted = await post(woken, "alice-claude", "@alice-bot please look at the build")
        [said] = posted["mentions"]
        assert said == {"handle": "alice-bot", "outcome": "woken", "code": None, "proposal_id": None,
                        "run_id": said["run_id"]}  # fmt: skip
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert said["run_id"] == run["run_id"]
    assert (run["state"], run["outcome"], run["trigger"], run["cause_id"]) == (
        "completed", "ok", "mention", posted["message_id"]
    )  # fmt: skip
    [call] = fakes.calls()
    # The fake called whoami and post_message through `agent-rooms serve` with its run token.
    assert call["run_id"] == run["run_id"] and call["posted_seq"] == posted["seq"] + 1
    reply = woken.sql("SELECT m.text, a.handle FROM messages m JOIN agents a USING (agent_id) WHERE seq = ?",
                      (call["posted_seq"],))[0]  # fmt: skip
    assert reply["handle"] == "alice-bot"
    # The prompt came on stdin, naming the room and the trigger; argv holds no secret.
    assert "room: lobby" in call["stdin"] and "please look at the build" in call["stdin"]
    token_file = Path(woken.settings.runs_dir / run["run_id"] / "token")
    assert token_file.read_text() not in " ".join(call["argv"])
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    # The run token died with the run.
    [token] = woken.sql("SELECT revoked_at FROM tokens WHERE run_id = ?", (run["run_id"],))
    assert token["revoked_at"] is not None
    async with woken.client(None, token=token_file.read_text()) as c:
        late = await c.call_tool("whoami", {})
    assert error_code(late) == "UNAUTHENTICATED"


async def test_the_next_wake_resumes_the_same_session_in_the_same_directory(woken: World, fakes: Fakes) -> None:
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot one")
        await until(lambda: ended(woken, "alice-bot"), "first run")
        await post(woken, "alice-claude", "@alice-bot two")
        first, second = await until(lambda: ended(woken, "alice-bot", 2), "second run")
    a, b = fakes.calls()
    assert a["argv"][a["argv"].index("--session-id") + 1] == first["session_id"]
    assert b["argv"][b["argv"].index("--resume") + 1] == first["session_id"] == second["session_id"]
    assert a["cwd"] == b["cwd"]


async def test_stop_interrupts_then_the_session_stays_resumable(woken: World, fakes: Fakes) -> None:
    fakes.scenario("hang")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot work forever")
        await until(lambda: (r := runs(woken, "alice-bot")) and r[0]["pid"], "the CLI is running")
        await until(lambda: fakes.calls(), "the fake logged its start")
        async with woken.client("alice-admin") as admin:
            stopped = await admin.call_tool("stop_agent", {"agent": "alice-bot"})
        assert [s["state"] for s in stopped.structured_content["stopped"]] == ["stopping"]
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert (run["state"], run["stop_signal"]) == ("stopped", "SIGINT")
    assert run["session_id"]


@pytest.mark.parametrize("cgroup", ["auto", "off"])
async def test_stop_escalates_and_leaves_no_process_behind(woken: World, fakes: Fakes, cgroup: str) -> None:
    # With the run's cgroup where the OS grants one, and with the process-group sweep alone (the fallback).
    woken.settings = replace(woken.settings, wake=replace(woken.settings.wake, cgroup=cgroup))
    fakes.scenario("tool_orphan")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot start a tool")
        await until(lambda: [c for c in fakes.calls() if c.get("orphan_pid")], "the tool started")
        # The host's view of every process of the run (a sandboxed fake knows only its namespace's pids): the
        # tool shell in its own session is still below the run's first process, as the sandbox's init's child.
        [running] = runs(woken, "alice-bot")
        family = [running["pid"], *descendants(running["pid"])]
        assert len(family) >= 3, family  # at least the wrapper, the CLI and its tool shell
        async with woken.hub() as hub:
            await hub.runs.stop_as_owner(OPERATOR, "alice-bot", None)
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert run["state"] == "stopped"
    await until(lambda: not any(_alive(pid) for pid in family), "every process of the run is gone", 10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


async def test_outcome_is_judged_from_events_not_the_exit_code(woken: World, fakes: Fakes) -> None:
    fakes.scenario("rate_limit")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot try")
        run = (await until(lambda: ended(woken, "alice-bot"), "the run ends"))[0]
        # Back-off: a follow-up that resumes the session waits, queued, for the owner's CLI to be let through.
        [_, follow_up] = await until(lambda: len(r := runs(woken, "alice-bot")) == 2 and r, "a follow-up")
    assert (run["state"], run["outcome"]) == ("failed", "rate_limit")
    assert (follow_up["state"], follow_up["resume"]) == ("queued", 1) and follow_up["not_before"] > run["ended_at"]
    [backoff] = woken.sql("SELECT * FROM backoffs")
    assert backoff["tool"] == "claude"


async def test_codex_wakes_with_its_own_argv_and_resumes_its_thread(woken: World, fakes: Fakes) -> None:
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-cx one")
        await until(lambda: ended(woken, "alice-cx"), "first run")
        await post(woken, "alice-claude", "@alice-cx two")
        first, second = await until(lambda: ended(woken, "alice-cx", 2), "second run")
    a, b = fakes.calls()
    assert a["argv"][:3] == ["exec", "--json", "--skip-git-repo-check"]
    assert "--dangerously-bypass-approvals-and-sandbox" in a["argv"]
    assert b["argv"][-3:] == ["resume", first["session_id"], "-"]
    assert (first["state"], second["state"]) == ("completed", "completed")


async def test_no_invoke_no_spawn_and_chat_agents_are_never_spawned(woken: World, fakes: Fakes) -> None:
    async with woken.hub() as hub:
        await hub.accounts.set_scopes(OPERATOR, "alice-bot", parse_scopes("read,post"))
    async with supervisor(woken):
        posted = await post(woken, "alice-claude", "@alice-bot @alice-codex hi")
        await anyio.sleep(0.3)  # the supervisor looks several times in this span; nothing is there to claim
    assert {m["outcome"] for m in posted["mentions"]} == {"notified"}
    assert woken.sql("SELECT count(*) AS n FROM runs")[0]["n"] == 0 and fakes.calls() == []


async def test_a_wake_survives_a_server_that_died_before_spawning_it(woken: World, fakes: Fakes) -> None:
    # The event commits with no supervisor running (the server died before spawning) ...
    await post(woken, "alice-claude", "@alice-bot are you there")
    # ... and one that had claimed it but died before the spawn: its lease runs out.
    conn = sqlite3.connect(woken.db)
    with conn:
        conn.execute(
            "UPDATE runs SET state = 'running', lease_holder = 'sup_dead', lease_until = '2000-01-01T00:00:00.000000Z',"
            " started_at = '2000-01-01T00:00:00.000000Z'"
        )
    conn.close()
    async with supervisor(woken):
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert run["state"] == "completed"
    assert len(fakes.calls()) == 1  # exactly once


async def test_a_run_whose_process_vanished_is_lost(woken: World, fakes: Fakes) -> None:
    await post(woken, "alice-claude", "@alice-bot hello")
    conn = sqlite3.connect(woken.db)
    with conn:
        conn.execute(
            "UPDATE runs SET state = 'running', lease_holder = 'sup_dead', pid = 999999,"
            " lease_until = '2000-01-01T00:00:00.000000Z', started_at = '2000-01-01T00:00:00.000000Z'"
        )
    conn.close()
    async with supervisor(woken):
        [run] = await until(lambda: ended(woken, "alice-bot"), "recovery")
    assert run["state"] == "lost" and fakes.calls() == []


async def test_the_environment_is_scrubbed(woken: World, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = {"AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "x", "ANTHROPIC_API_KEY": "x", "CLAUDECODE": "1",
               "AGENT_ROOMS_TOKEN": "art_x", "MY_SERVICE_TOKEN": "x", "SSH_AUTH_SOCK": "/x"}  # fmt: skip
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    fakes.scenario("dump_env")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot env")
        await until(lambda: ended(woken, "alice-bot"), "the run ends")
    [call] = fakes.calls()
    assert not set(planted) & set(call["env_names"])
    assert {"AGENT_ROOMS_RUN_ID", "AGENT_ROOMS_WAKE_DEPTH", "TMPDIR", "PATH"} <= set(call["env_names"])


async def test_a_claude_run_without_our_mcp_server_is_stopped_as_failed(woken: World, fakes: Fakes) -> None:
    fakes.scenario("mcp_failed")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot hello")
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "mcp_failed")


@pytest.mark.invariant(85)
async def test_after_a_rate_limit_the_follow_up_resumes_and_never_replays_the_request(
    woken: World, fakes: Fakes
) -> None:
    fakes.scenario("rate_limit")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot run the migration once")
        first = (await until(lambda: ended(woken, "alice-bot"), "the rate-limited run ends"))[0]
        fakes.scenario("ok")
        # The back-off passes (the test moves the clock's marks rather than waiting for them).
        conn = sqlite3.connect(woken.db)
        with conn:
            conn.execute("UPDATE backoffs SET not_before = '2000-01-01T00:00:00.000000Z'")
            conn.execute("UPDATE runs SET not_before = '2000-01-01T00:00:00.000000Z' WHERE state = 'queued'")
        conn.close()
        _, follow_up = await until(lambda: ended(woken, "alice-bot", 2), "the follow-up ends")
    assert (first["state"], first["outcome"], follow_up["state"]) == ("failed", "rate_limit", "completed")
    retry = fakes.calls()[-1]
    assert retry["argv"][retry["argv"].index("--resume") + 1] == first["session_id"]
    assert "rate limit that interrupted" in retry["stdin"] and "run the migration once" not in retry["stdin"]
    # The supervisor's follow-up is a state change of its own, audited (invariant 85).
    [queued] = [json.loads(r["detail"]) for r in woken.audit_rows() if r["action"] == "run.follow_up"]
    assert (queued["run_id"], queued["after"]) == (follow_up["run_id"], first["run_id"])


async def test_a_wake_held_back_only_by_time_is_started_when_the_time_comes(woken: World, fakes: Fakes) -> None:
    """Nothing commits when a back-off simply runs out: the supervisor must notice the clock too."""
    await post(woken, "alice-claude", "@alice-bot later")
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    conn = sqlite3.connect(woken.db)
    with conn:
        conn.execute("UPDATE runs SET not_before = ?", (soon,))
    conn.close()
    async with supervisor(woken):
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert run["state"] == "completed" and run["started_at"] >= soon


async def test_a_cli_that_never_started_leaves_no_session_to_resume(woken: World, fakes: Fakes) -> None:
    broken = replace(woken.settings, wake=replace(woken.settings.wake, claude_bin=str(woken.db.parent / "nope")))
    async with Hub.open(broken) as hub, supervising(hub):
        await post(woken, "alice-claude", "@alice-bot first")
        [failed] = await until(lambda: ended(woken, "alice-bot"), "the run fails")
    assert (failed["state"], failed["outcome"], failed["session_id"]) == ("failed", "cli_not_found", None)
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot second")
        _, run = await until(lambda: ended(woken, "alice-bot", 2), "the second run ends")
    assert run["state"] == "completed"
    [call] = fakes.calls()
    assert "--session-id" in call["argv"] and "--resume" not in call["argv"]


async def test_a_session_made_on_another_machine_is_never_resumed_here(woken: World, fakes: Fakes) -> None:
    """A CLI keeps its sessions on the machine that ran it: a supervisor on another host (another hub
    machine, or a listener's device) starts the agent afresh instead of resuming one it does not have, then
    resumes its own (walk finding 3)."""
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot one")
        [first] = await until(lambda: ended(woken, "alice-bot"), "first run")
    elsewhere = replace(woken.settings, wake=replace(woken.settings.wake, host_id="another-machine"))
    async with Hub.open(elsewhere) as hub, supervising(hub):
        await post(woken, "alice-claude", "@alice-bot two")
        _, second = await until(lambda: ended(woken, "alice-bot", 2), "second run")
        await post(woken, "alice-claude", "@alice-bot three")
        *_, third = await until(lambda: ended(woken, "alice-bot", 3), "third run")
    assert [r["state"] for r in (first, second, third)] == ["completed"] * 3
    assert second["session_id"] not in ("", None, first["session_id"])
    assert third["session_id"] == second["session_id"]
    argvs = [c["argv"] for c in fakes.calls()]
    assert ["--resume" in a for a in argvs] == [False, False, True], argvs


async def test_a_session_the_cli_lost_is_started_afresh_next_time(woken: World, fakes: Fakes) -> None:
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot one")
        await until(lambda: ended(woken, "alice-bot"), "first run")
        fakes.scenario("resume_missing")
        await post(woken, "alice-claude", "@alice-bot two")
        await until(lambda: ended(woken, "alice-bot", 2), "second run")
        fakes.scenario("ok")
        await post(woken, "alice-claude", "@alice-bot three")
        _, lost, third = await until(lambda: ended(woken, "alice-bot", 3), "third run")
    assert (lost["state"], lost["session_id"]) == ("failed", "")
    assert third["state"] == "completed"
    assert "--session-id" in fakes.calls()[-1]["argv"]
