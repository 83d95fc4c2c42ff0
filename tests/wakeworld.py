"""Shared by the wake tests: fake CLIs for one test, a world whose hub wakes agents with them, a running
supervisor, and polling the database for a run's end (a deadline bounds a broken run; nothing is timed)."""

from __future__ import annotations

import json
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
from tests.conftest import OPERATOR, World, build_world
from tests.fakes.common import write_wrapper

FINAL = ("completed", "failed", "stopped", "lost", "withdrawn", "expired")


class Fakes:
    """Fake CLIs for one test: a scenario file the test may change between wakes, and their FAKE_LOG."""

    def __init__(self, root: Path) -> None:
        self.scenario_file, self.log = root / "scenario", root / "fake.log"
        env = {"FAKE_SCENARIO_FILE": str(self.scenario_file), "FAKE_LOG": str(self.log)}
        self.bins = {tool: str(write_wrapper(tool, root / "bin", env=env)) for tool in ("claude", "codex", "openclaw")}

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
    caps = WakeSettings(
        claude_bin=fakes.bins["claude"],
        codex_bin=fakes.bins["codex"],
        openclaw_bin=fakes.bins["openclaw"],
        grace_int_s=1.0,
        grace_term_s=1.0,
        after_result_s=2.0,
        poll_s=0.05,
    )
    world = await build_world(tmp_path / "home", caps)
    async with world.hub() as hub:
        for handle, tool in (("alice-bot", AgentTool.CLAUDE), ("alice-cx", AgentTool.CODEX)):
            scopes = parse_scopes("read,post,task,invoke")
            await hub.accounts.add_agent(OPERATOR, handle, "alice", tool, scopes, str(tmp_path / handle))
            (tmp_path / handle).mkdir()
            issued = await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))
            world.tokens[handle] = issued.token
            await hub.rooms.add_agent(OPERATOR, "lobby", handle)
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
