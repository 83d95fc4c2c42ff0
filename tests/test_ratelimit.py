"""Per-agent abuse limits (DESIGN §9.3, invariant 67): token buckets per agent and kind of call, held in the
database so every server process on it draws on the same one. Real MCP sessions throughout."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult

from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.ratelimit import DENIED_ACTION, SUMMARY_ACTION
from tests.conftest import World
from tests.tool_errors import error_code, error_detail

ALICE = "alice-claude"


def limited(world: World, **limits: int) -> World:
    return replace(world, settings=replace(world.settings, limits=replace(world.settings.limits, **limits)))


def post(n: int) -> dict[str, Any]:
    return {"room": "lobby", "text": f"post {n}"}


def assert_rate_limited(r: CallToolResult, per_min: int) -> None:
    detail = error_detail(r)
    assert detail["code"] == "RATE_LIMITED", detail
    # An empty bucket of `per_min` a minute has its next token within a minute.
    assert 0 < detail["retry_after_ms"] <= 60_000
    assert f"over {per_min} " in detail["message"]


def rate_rows(world: World) -> list[dict[str, Any]]:
    rows = world.sql("SELECT * FROM audit WHERE action IN (?, ?) ORDER BY seq", (DENIED_ACTION, SUMMARY_ACTION))
    return [dict(r) for r in rows]


def messages(world: World) -> list[str]:
    return [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")]


@pytest.mark.invariant(55, 67)
@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_past_the_burst_a_post_is_rate_limited_changing_nothing(world: World, transport: str) -> None:
    world = limited(world, rate_posts_per_min=3)
    async with world.session(ALICE, transport, "auto") as c:
        for n in range(3):
            assert not (await c.call_tool("post_message", post(n))).is_error
        before = world.fingerprint()
        refused = [await c.call_tool("post_message", post(n)) for n in range(3, 7)]
        for r in refused:
            assert_rate_limited(r, 3)
        assert world.fingerprint() == before
        # Other kinds of call have buckets of their own.
        assert not (await c.call_tool("read_messages", {"room": "lobby"})).is_error
    assert messages(world) == ["post 0", "post 1", "post 2"]
    # A flood of refusals leaves one row for its first, naming who, what and why...
    [denied] = rate_rows(world)
    assert (denied["action"], denied["outcome"], denied["reason"], denied["target"]) == (
        DENIED_ACTION,
        "denied",
        "rate_limited",
        ALICE,
    )
    assert '"bucket":"posts"' in denied["detail"]
    # ...and once a call is allowed again (here: a hub with a far higher limit), one summary with the count.
    async with limited(world, rate_posts_per_min=10**9).session(ALICE, transport, "auto") as c:
        assert not (await c.call_tool("post_message", post(7))).is_error
    rows = rate_rows(world)
    assert [r["action"] for r in rows] == [DENIED_ACTION, SUMMARY_ACTION]
    assert '"refused":4' in rows[1]["detail"]


@pytest.mark.invariant(67)
async def test_reads_and_file_writes_have_their_own_buckets(world: World) -> None:
    world = limited(world, rate_reads_per_min=4, rate_file_writes_per_min=1)
    async with world.client(ALICE) as c:
        for _ in range(4):
            assert not (await c.call_tool("whoami", {})).is_error
        assert_rate_limited(await c.call_tool("list_rooms", {}), 4)
        share = {"room": "lobby", "name": "a.txt", "content": "a"}
        assert not (await c.call_tool("share_file", share)).is_error
        before = world.fingerprint()
        assert_rate_limited(await c.call_tool("share_file", {**share, "name": "b.txt"}), 1)
        assert world.fingerprint() == before
        assert not (await c.call_tool("post_message", post(0))).is_error
    # Another agent of the same owner is not held back by this one's buckets.
    async with world.client("alice-codex") as c:
        assert not (await c.call_tool("whoami", {})).is_error


@pytest.mark.invariant(67)
async def test_two_hubs_on_one_database_draw_on_one_bucket_exactly_when_every_call_settles(world: World) -> None:
    world = limited(world, rate_posts_per_min=4, rate_local_calls=1)
    async with world.client(ALICE) as a, world.client(ALICE) as b:
        answers = [await (a if n % 2 else b).call_tool("post_message", post(n)) for n in range(6)]
    assert [r.is_error for r in answers] == [False] * 4 + [True] * 2
    assert {error_code(r) for r in answers[4:]} == {"RATE_LIMITED"}
    assert len(messages(world)) == 4


@asynccontextmanager
async def stdio_server(world: World, env: dict[str, str]) -> AsyncIterator[Client]:
    token_file = world.settings.home / "tokens" / f"{ALICE}.token"
    if not token_file.exists():
        write_private_file(token_file, world.tokens[ALICE].encode())
    full_env = {
        **os.environ,
        "AGENT_ROOMS_HOME": str(world.settings.home),
        "AGENT_ROOMS_TOKEN_FILE": str(token_file),
        "AGENT_ROOMS_SUPERVISOR": "0",
        **env,
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_rooms_mcp", "serve"], env=full_env)
    async with Client(params) as c:
        yield c


@pytest.mark.invariant(67)
async def test_two_server_processes_share_the_bucket(world: World) -> None:
    """Two stdio server processes of one agent, with the default credit per process: once one has spent the
    burst, the other is refused too (the limit is not per process)."""
    env = {"AGENT_ROOMS_LIMIT_RATE_POSTS_PER_MIN": "5"}
    async with stdio_server(world, env) as a, stdio_server(world, env) as b:
        first = [await a.call_tool("post_message", post(n)) for n in range(6)]
        second = await b.call_tool("post_message", post(6))
    assert [r.is_error for r in first] == [False] * 5 + [True]
    assert_rate_limited(first[5], 5)
    assert_rate_limited(second, 5)
    assert len(messages(world)) == 5
