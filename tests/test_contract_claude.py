"""Contract tier (research/wake.md §7.3): the wake supervisor drives the REAL Claude Code CLI, whose model is a
fake Anthropic Messages API on loopback (tests/fake_anthropic.py). No network, no account.

Opt-in by presence: skipped unless a `claude` binary is found (AGENT_ROOMS_TEST_CLAUDE_BIN, else PATH), e.g.
`npm install @anthropic-ai/claude-code@2.1.330` and PATH=<that>/node_modules/.bin:$PATH. It catches CLI drift
that the stub CLIs of tests/fakes cannot: renamed flags, changed events, a changed MCP or permission contract.

The supervisor scrubs the CLI's environment, so the fake API's address and key reach it only as the owner's
per-agent variables (set_env), as does a throwaway CLAUDE_CONFIG_DIR. As root, Claude refuses
--dangerously-skip-permissions unless IS_SANDBOX=1, which the supervisor never passes by itself: full mode is
shown refused as root without it, and working when the owner sets it for the agent.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.wake.supervisor import SYSTEM_PROMPT
from tests.conftest import OPERATOR, World, build_world
from tests.fake_anthropic import FakeAnthropic, Hang, Reply, Request, Text, ToolUse
from tests.wakeworld import RUN_AS, ended, give_to_run_as, post, runs, supervisor, unsandboxed_unless_available, until

CLAUDE = os.environ.get("AGENT_ROOMS_TEST_CLAUDE_BIN") or shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="no Claude Code CLI (PATH or AGENT_ROOMS_TEST_CLAUDE_BIN)")

ROOT = os.geteuid() == 0
POST = "mcp__agent-rooms__post_message"
HELLO = "hello from real claude"
FINAL = "posted the hello"
DEADLINE_S = 60  # bounds a broken run only; the real CLI starts in about a second


def model(request: Request) -> Reply:
    """The fake model: answers a tool result with a final text, "say hello" with a post_message call, and
    "work forever" by hanging mid-stream."""
    # 2.1.330 appends a role "system" message (the environment) after the user's turn: skip it.
    turns = [m for m in request.body.get("messages") or [] if m.get("role") != "system"] or [{}]
    last = turns[-1].get("content")
    blocks = last if isinstance(last, list) else [{"type": "text", "text": str(last)}]
    if any(b.get("type") == "tool_result" for b in blocks):
        return Text(FINAL)
    said = " ".join(str(b.get("text", "")) for b in blocks)
    if "work forever" in said:
        return Hang()
    if "say hello" in said:
        return ToolUse(POST, {"room": "lobby", "text": HELLO})
    return Text("nothing to do")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(model) as api:
        yield api


async def real_world(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, *, contain: bool, sandbox: bool
) -> World:
    """A hub whose supervisor wakes alice-bot (claude, invoke) with the real CLI, pointed at the fake API."""
    assert CLAUDE is not None
    # The supervisor passes the server's HOME through: make it a throwaway one, nothing of the developer's.
    monkeypatch.setenv("HOME", str(tmp_path / "home-dir"))
    (tmp_path / "home-dir").mkdir()
    caps = WakeSettings(
        claude_bin=CLAUDE, contain=contain, grace_int_s=10.0, grace_term_s=3.0, after_result_s=5.0, poll_s=0.05,
        run_as=RUN_AS,  # as root, the CLI runs as an unprivileged user (DESIGN §5)
    )  # fmt: skip
    world = await build_world(tmp_path / "home", caps)
    workdir = tmp_path / "alice-bot"
    workdir.mkdir()
    give_to_run_as(workdir)
    async with world.hub() as hub:
        await hub.accounts.add_agent(
            OPERATOR, "alice-bot", "alice", AgentTool.CLAUDE, parse_scopes("read,post,task,invoke"), str(workdir)
        )
        world.tokens["alice-bot"] = (await hub.accounts.issue_token(OPERATOR, "alice-bot", timedelta(days=1))).token
        await unsandboxed_unless_available(hub, "alice-bot")
        await hub.rooms.add_agent(OPERATOR, "lobby", "alice-bot")
        variables = {
            "ANTHROPIC_API_KEY": "sk-ant-fake",
            "ANTHROPIC_BASE_URL": fake.url,
            "CLAUDE_CONFIG_DIR": str(tmp_path / "claude-config"),
        }
        if sandbox:
            variables["IS_SANDBOX"] = "1"
        for name, value in variables.items():
            await hub.accounts.set_env(OPERATOR, "alice-bot", name, value)
    return world


def events(world: World, run_id: str) -> list[dict[str, Any]]:
    path = world.settings.run_logs_dir / run_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stderr(world: World, run_id: str) -> str:
    return (world.settings.run_logs_dir / run_id / "stderr.log").read_text(errors="replace")


def explain(world: World, run: Any) -> str:
    """What the real CLI did, for an assertion message."""
    kinds = [(e.get("type"), e.get("subtype")) for e in events(world, run["run_id"])]
    return f"run {dict(run)}\nevents {kinds}\nstderr {stderr(world, run['run_id'])[-2000:]}"


def user_blocks(calls: list[Request]) -> list[dict[str, Any]]:
    """The content blocks of every user turn the model was shown, first request first."""
    return [
        b
        for c in calls
        for m in c.body.get("messages") or []
        if m.get("role") == "user" and isinstance(m.get("content"), list)
        for b in m["content"]
    ]


def room_text(world: World, seq: int) -> tuple[str, str]:
    [row] = world.sql("SELECT m.text, a.handle FROM messages m JOIN agents a USING (agent_id) WHERE seq = ?", (seq,))
    return row["handle"], row["text"]


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def carrying(run_id: str) -> list[int]:
    """Live processes whose environment names this run: the CLI and the MCP server it started."""
    needle = f"AGENT_ROOMS_RUN_ID={run_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if needle in Path(f"/proc/{name}/environ").read_bytes().split(b"\0") and alive(int(name)):
                    found.append(int(name))
            except OSError:
                continue
    return found


MODES = [pytest.param(True, False, id="contain"), pytest.param(False, False, id="full")]


@pytest.mark.parametrize(("contain", "sandbox"), MODES)
async def test_a_mention_wakes_the_real_cli_which_posts_through_our_mcp_server_and_resumes(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, contain: bool, sandbox: bool
) -> None:
    world = await real_world(tmp_path, fake, monkeypatch, contain=contain, sandbox=sandbox)
    async with supervisor(world):
        posted = await post(world, "alice-claude", "@alice-bot please say hello")
        [first] = await until(lambda: ended(world, "alice-bot"), "the first run ends", DEADLINE_S)
        assert (first["state"], first["outcome"]) == ("completed", "ok"), explain(world, first)
        await post(world, "alice-claude", "@alice-bot say hello again")
        _, second = await until(lambda: ended(world, "alice-bot", 2), "the second run ends", DEADLINE_S)
    assert (second["state"], second["outcome"]) == ("completed", "ok"), explain(world, second)

    # 1. The model saw our stdin prompt in its messages and our framing in its system prompt.
    calls = fake.messages()
    opening = calls[0]
    shown = json.dumps(opening.body["messages"])
    for words in ("please say hello", "room: lobby", f"trigger: mention {posted['message_id']}", "@alice-claude"):
        assert words in shown, words
    assert SYSTEM_PROMPT in json.dumps(opening.body["system"])
    assert opening.path.startswith("/v1/messages") and opening.headers["x-api-key"] == "sk-ant-fake"
    # Our MCP server's tools reached the model under their MCP names: loaded, or (full mode, 2.1.330) deferred
    # behind ToolSearch and only named in a system message; a direct call of a deferred tool still ran.
    loaded = {t.get("name") for t in opening.body.get("tools") or []}
    assert POST in loaded or POST in json.dumps(opening.body["messages"])
    if contain:
        assert POST in loaded  # with --tools Read,Grep,Glob nothing is deferred

    # The CLI called our MCP server (from the run's 0600 mcp.json, with the run token): the reply is in the room
    # as the agent, and the model got the tool's result back before its final text.
    handle, text = room_text(world, posted["seq"] + 1)
    assert (handle, text) == ("alice-bot", HELLO)
    result = next(b for b in user_blocks(calls) if b.get("type") == "tool_result")
    assert not result.get("is_error"), result
    assert json.loads(result["content"])["seq"] == posted["seq"] + 1, result
    mcp_json = world.settings.runs_dir / first["run_id"] / "mcp.json"
    assert oct(mcp_json.stat().st_mode & 0o777) == "0o600"
    first_events = events(world, first["run_id"])
    init = first_events[0]
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert {"name": "agent-rooms", "status": "connected"}.items() <= next(
        s for s in init["mcp_servers"] if s["name"] == "agent-rooms"
    ).items()
    if contain:
        # wake.md §0.2: only the reading built-ins exist, and our MCP tools run pre-approved under dontAsk.
        assert init["permissionMode"] == "dontAsk"
        assert {t for t in init["tools"] if not t.startswith("mcp__")} == {"Glob", "Grep", "Read"}
    else:
        assert init["permissionMode"] == "bypassPermissions"
    final = first_events[-1]
    assert (final["type"], final["subtype"], final["is_error"], final["result"]) == ("result", "success", False, FINAL)
    assert final["permission_denials"] == []

    # The session is the one the supervisor chose (--session-id), and the CLI reported the same one.
    assert first["session_id"] and init["session_id"] == final["session_id"] == first["session_id"]

    # 2. The second mention resumed it: same session, and the model saw the first conversation again.
    assert second["session_id"] == first["session_id"]
    assert events(world, second["run_id"])[0]["session_id"] == first["session_id"]
    history = json.dumps(calls[-1].body["messages"])
    assert "please say hello" in history and HELLO in history and FINAL in history and "say hello again" in history
    assert room_text(world, posted["seq"] + 3) == ("alice-bot", HELLO)  # seq +2 is the second mention
    # Neither CLI nor the MCP server it started outlived its run.
    for run in (first, second):
        await until(lambda run=run: not carrying(run["run_id"]), "nothing of the run is left", 10)


@pytest.mark.skipif(not ROOT, reason="Claude refuses --dangerously-skip-permissions only as root")
async def test_as_root_the_real_cli_runs_unprivileged_and_needs_no_is_sandbox(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §5 "Never root": a root hub starts the CLI as AGENT_ROOMS_RUN_AS, so Claude's refusal to skip
    permissions as root never fires, and the supervisor never sets IS_SANDBOX."""
    world = await real_world(tmp_path, fake, monkeypatch, contain=False, sandbox=False)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot please say hello")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends", DEADLINE_S)
    assert (run["state"], run["outcome"]) == ("completed", "ok"), explain(world, run)
    assert "root/sudo privileges" not in stderr(world, run["run_id"])
    assert fake.messages()


async def test_stop_interrupts_the_real_cli_mid_stream(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await real_world(tmp_path, fake, monkeypatch, contain=True, sandbox=False)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot work forever")
        await until(fake.hanging.is_set, "the model hangs mid-stream", DEADLINE_S)
        [running] = await until(lambda: (r := runs(world, "alice-bot")) and r[0]["pid"] and r, "pid recorded")
        assert alive(running["pid"])
        async with world.client("alice-admin") as admin:
            stopped = await admin.call_tool("stop_agent", {"agent": "alice-bot"})
        assert [s["state"] for s in stopped.structured_content["stopped"]] == ["stopping"]
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends", DEADLINE_S)
    # SIGINT sufficed: Claude's own interrupt, no escalation.
    assert (run["state"], run["outcome"], run["stop_signal"]) == ("stopped", "stopped", "SIGINT"), explain(world, run)
    assert not alive(running["pid"])
    await until(lambda: not carrying(run["run_id"]), "nothing of the run is left", 10)
    final = events(world, run["run_id"])[-1]
    assert (final["type"], final["subtype"], final["is_error"]) == ("result", "error_during_execution", True)
    assert final["terminal_reason"] == "aborted_streaming" and final["session_id"] == run["session_id"]


async def test_a_stopped_session_is_resumed_with_the_interrupted_turn_in_its_history(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await real_world(tmp_path, fake, monkeypatch, contain=True, sandbox=False)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot work forever")
        await until(fake.hanging.is_set, "the model hangs mid-stream", DEADLINE_S)
        async with world.hub() as hub:
            await hub.runs.stop_as_owner(OPERATOR, "alice-bot", None)
        [stopped] = await until(lambda: ended(world, "alice-bot"), "the run ends", DEADLINE_S)
        await post(world, "alice-claude", "@alice-bot now say hello")
        _, resumed = await until(lambda: ended(world, "alice-bot", 2), "the second run ends", DEADLINE_S)
    assert (stopped["state"], stopped["stop_signal"]) == ("stopped", "SIGINT")
    assert (resumed["state"], resumed["outcome"]) == ("completed", "ok"), explain(world, resumed)
    assert resumed["session_id"] == stopped["session_id"]
    history = json.dumps(fake.messages()[-1].body["messages"])
    # The partial answer and Claude's interrupt marker were kept (wake.md §1.4), then the new prompt.
    assert "work forever" in history and Hang().text in history and "[Request interrupted by user]" in history
    assert "now say hello" in history


async def test_a_run_that_never_started_does_not_poison_the_next_wake(
    tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await real_world(tmp_path, fake, monkeypatch, contain=True, sandbox=False)
    # The first mention arrives while the CLI is not installed yet ...
    missing = replace(world.settings.wake, claude_bin=str(tmp_path / "not-installed" / "claude"))
    async with supervisor(World(replace(world.settings, wake=missing), world.tokens)):
        await post(world, "alice-claude", "@alice-bot please say hello")
        [never] = await until(lambda: ended(world, "alice-bot"), "the run ends", DEADLINE_S)
    assert (never["state"], never["outcome"]) == ("failed", "cli_not_found"), dict(never)
    # ... and once it is, the next mention must start a session, not resume one that was never created.
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot please say hello")
        _, second = await until(lambda: ended(world, "alice-bot", 2), "the second run ends", DEADLINE_S)
    assert (second["state"], second["outcome"]) == ("completed", "ok"), explain(world, second)
