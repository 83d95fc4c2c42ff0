"""Shared by the wake tests: fake CLIs for one test, a world whose hub wakes agents with them, a running
supervisor, and polling the database for a run's end (a deadline bounds a broken run; nothing is timed)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.wake.supervisor import Supervisor
from tests.conftest import AGENTS, OPERATOR, World, build_world
from tests.fakes.common import FAKES_DIR, write_wrapper
from tests.sandboxhost import AS_ROOT, RUN_AS, give_to_run_as, sandbox_problem, wake_settings_env

FINAL = ("completed", "failed", "stopped", "lost", "withdrawn", "expired")


def skip_without_sandbox(why: str) -> None:
    """Skip, saying why, where no sandbox can start; where CI installed bubblewrap
    (AGENT_ROOMS_REQUIRE_BWRAP=1), fail instead: a broken install must not pass unseen."""
    if (problem := sandbox_problem()) is None:
        return
    if os.environ.get("AGENT_ROOMS_REQUIRE_BWRAP") == "1":
        pytest.fail(f"AGENT_ROOMS_REQUIRE_BWRAP=1 but {problem}")
    pytest.skip(f"{why}: {problem}")


def wake_caps(fakes: Fakes, **overrides: Any) -> WakeSettings:
    """A supervisor's settings for the fake CLIs, whoever runs the suite: as root the CLIs run as `nobody`, and
    in the sandbox they see the fakes' scripts (read-only) and their scenario and log directory."""
    if AS_ROOT:
        skip_without_sandbox("as root, woken CLIs run only as an unprivileged user inside the sandbox")
    return WakeSettings(
        claude_bin=fakes.bins["claude"],
        codex_bin=fakes.bins["codex"],
        openclaw_bin=fakes.bins["openclaw"],
        run_as=RUN_AS,
        sandbox_ro=(str(FAKES_DIR),),
        sandbox_rw=(str(fakes.root),),
        **overrides,
    )


def wake_env(fakes: Fakes) -> dict[str, str]:
    """`wake_caps` as a separate process (a hub or listener) reads it from its environment."""
    return wake_settings_env(wake_caps(fakes))


async def unsandboxed_unless_available(hub: Hub, *handles: str) -> None:
    """Where bubblewrap cannot run (a non-root machine without it), the wake tests' agents run with the sandbox
    off, the operator's explicit choice: everything but the sandbox is still tested there."""
    if sandbox_problem() is not None:
        for handle in handles:
            await hub.accounts.set_agent(OPERATOR, handle, sandbox=False)


def gone(call: dict[str, Any], key: str = "pid") -> bool:
    """Has the process a fake reported (its own pid, or another it logged under `key`) ended? A sandboxed
    fake's pids are its PID namespace's, meaningless here: it has ended when no process of that namespace is
    left, which also says everything it started ended with it."""
    own = os.readlink("/proc/self/ns/pid")
    if call.get("pid_ns") in (None, own):
        return not _alive(int(call[key]))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == call["pid_ns"] and _alive(int(pid)):
                return False
        except OSError:
            continue
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, OSError):
        return False


# The same choice for a listener's agents, as a line of listen.toml.
SANDBOX = 'sandbox = "off"' if sandbox_problem() is not None else 'sandbox = "on"'


class Fakes:
    """Fake CLIs for one test: a scenario file the test may change between wakes, and their FAKE_LOG."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scenario_file, self.log = root / "scenario", root / "fake.log"
        self.escapes_file = root / "escapes.json"  # the `escape` scenario's attempts (tests/fakes/escapes.py)
        env = {"FAKE_SCENARIO_FILE": str(self.scenario_file), "FAKE_LOG": str(self.log),
               "FAKE_ESCAPES_FILE": str(self.escapes_file)}  # fmt: skip
        self.bins = {tool: str(write_wrapper(tool, root / "bin", env=env)) for tool in ("claude", "codex", "openclaw")}
        give_to_run_as(root)

    def scenario(self, name: str) -> None:
        self.scenario_file.write_text(name)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
async def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path / "fakes")


@pytest.fixture
async def woken(tmp_path: Path, fakes: Fakes) -> World:
    """A world whose hub wakes agents with the fake CLIs; alice-bot (claude) and alice-cx (codex) hold invoke."""
    caps = wake_caps(fakes, grace_int_s=1.0, grace_term_s=1.0, after_result_s=2.0, poll_s=0.05)
    world = await build_world(tmp_path / "home", caps)
    async with world.hub() as hub:
        for handle, tool in (("alice-bot", AgentTool.CLAUDE), ("alice-cx", AgentTool.CODEX)):
            scopes = parse_scopes("read,post,task,invoke")
            (tmp_path / handle).mkdir()
            give_to_run_as(tmp_path / handle)
            await hub.accounts.add_agent(OPERATOR, handle, "alice", tool, scopes, str(tmp_path / handle))
            issued = await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))
            world.tokens[handle] = issued.token
            await hub.rooms.add_agent(OPERATOR, "lobby", handle)
        await unsandboxed_unless_available(hub, *AGENTS, "alice-bot", "alice-cx")
    fakes.scenario("ok")
    return world


@asynccontextmanager
async def supervisor(world: World) -> AsyncIterator[Supervisor]:
    async with Hub.open(world.settings) as hub, supervising(hub) as sup:
        assert sup is not None
        yield sup


async def until(check: Callable[[], Any], what: str, deadline_s: float = 120) -> Any:
    """Poll the database until `check` is truthy. The deadline only bounds a broken run; it asserts nothing
    about speed."""
    with anyio.fail_after(deadline_s):
        while not (value := check()):
            await anyio.sleep(0.05)
    return value


def runs(world: World, agent: str) -> list[sqlite3.Row]:
    return world.sql(
        "SELECT r.* FROM runs r JOIN agents a ON a.agent_id = r.agent_id WHERE a.handle = ? ORDER BY r.created_at",
        (agent,),
    )


def ended(world: World, agent: str, n: int = 1) -> list[sqlite3.Row] | None:
    rows = runs(world, agent)
    return rows if len(rows) >= n and all(r["state"] in FINAL for r in rows[:n]) else None


async def post(world: World, agent: str, text: str, room: str = "lobby") -> dict[str, Any]:
    async with world.client(agent) as c:
        r = await c.call_tool("post_message", {"room": room, "text": text})
    assert not r.is_error, r.content
    return r.structured_content  # type: ignore[return-value]
