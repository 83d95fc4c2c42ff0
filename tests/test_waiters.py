"""wait_for_messages under load and under revocation: capped per agent, woken by its room, re-authorised."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.settings import Settings
from tests.conftest import HTTP_BASE, OPERATOR, World
from tests.tool_errors import error_detail

# Starting a call in another task and letting it reach its wait; the assertions hold however long this is.
LET_IT_WAIT_S = 0.5


def error_code(r: CallToolResult) -> str | None:
    return r.content[0].text.split(":", 1)[0] if r.is_error else None  # type: ignore[union-attr]


@asynccontextmanager
async def http_clients(settings: Settings, world: World, *agents: str) -> AsyncIterator[dict[str, Client]]:
    """One in-process HTTP hub and a real SDK client per agent on it (they share the hub's caps)."""
    async with open_http_app(settings) as app, AsyncExitStack() as stack:
        clients = {}
        for agent in agents:
            http = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), headers={"Authorization": f"Bearer {world.tokens[agent]}"}
            )
            await stack.enter_async_context(http)
            client = Client(streamable_http_client(f"{HTTP_BASE}/mcp", http_client=http))
            clients[agent] = await stack.enter_async_context(client)
        yield clients


async def wait_call(client: Client, results: list[CallToolResult], **args: Any) -> None:
    results.append(await client.call_tool("wait_for_messages", {"room": "lobby", "after": 0, **args}))


@pytest.mark.invariant(83)
@pytest.mark.parametrize("revoke", ["token_revoked", "run_ended"])
async def test_a_waiter_whose_credential_ends_gets_no_later_message(world: World, transport: str, revoke: str) -> None:
    if transport == "stdio":
        pytest.skip("memory and http cover the in-process waiter; stdio adds only a slower start")
    if revoke == "run_ended":
        world.tokens["alice-codex"] = await world.run_token("alice-codex", "lobby")
    results: list[CallToolResult] = []
    async with (
        world.session("alice-codex", transport, "auto") as waiter,
        world.session("alice-claude", transport, "auto") as poster,
    ):
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: wait_call(waiter, results, timeout_s=30))
                await anyio.sleep(LET_IT_WAIT_S)
                # Ended from another connection, as the CLI or a supervisor in another process would.
                if revoke == "token_revoked":
                    async with world.hub() as hub:
                        await hub.accounts.revoke_token(OPERATOR, world.token_ids["alice-codex"])
                else:
                    end_runs(world, "alice-codex")
                posted = await poster.call_tool("post_message", {"room": "lobby", "text": "after revocation"})
                assert not posted.is_error, posted.content
    [answer] = results
    assert error_code(answer) == "UNAUTHENTICATED", answer.content
    assert "after revocation" not in str(answer.model_dump())


def end_runs(world: World, handle: str) -> None:
    """What the supervisor records when a run ends (its token is then worthless, DESIGN §2)."""
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute(
            "UPDATE runs SET state = 'completed' WHERE agent_id = (SELECT agent_id FROM agents WHERE handle = ?)",
            (handle,),
        )
    conn.close()


@pytest.mark.invariant(84)
async def test_a_post_from_another_process_reaches_a_waiter(world: World) -> None:
    """The waiter's hub is not told of the commit: its watcher must see the file move."""
    results: list[CallToolResult] = []
    async with world.client("alice-codex") as waiter:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: wait_call(waiter, results, timeout_s=30))
                await anyio.sleep(LET_IT_WAIT_S)
                async with world.hub() as hub:
                    caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="stdio")
                    await hub.messages.post(caller, "lobby", "from elsewhere", [], None)
    [answer] = results
    assert [m["text"] for m in answer.structured_content["messages"]] == ["from elsewhere"]


@pytest.mark.invariant(84)
async def test_waits_past_the_per_agent_cap_are_rate_limited_and_others_still_wait(world: World) -> None:
    cap = 2
    settings = replace(world.settings, limits=replace(world.settings.limits, waits_per_agent=cap))
    held: list[CallToolResult] = []
    others: list[CallToolResult] = []
    async with http_clients(settings, world, "alice-codex", "alice-claude", "alice-admin") as c:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(cap):
                    tg.start_soon(lambda: wait_call(c["alice-codex"], held, timeout_s=30))
                tg.start_soon(lambda: wait_call(c["alice-admin"], others, timeout_s=30))
                await anyio.sleep(LET_IT_WAIT_S)
                before = world.fingerprint()
                refused = await c["alice-codex"].call_tool("wait_for_messages", {"room": "lobby", "after": 0})
                assert world.fingerprint() == before
                await c["alice-claude"].call_tool("post_message", {"room": "lobby", "text": "for the waiters"})
    assert error_code(refused) == "RATE_LIMITED", refused.content
    assert "retry after" in refused.content[0].text  # type: ignore[union-attr]
    assert error_detail(refused)["retry_after_ms"] == settings.limits.wait_retry_after_ms
    # The capped agent's own waits and another agent's wait all got the message.
    for r in [*held, *others]:
        assert [m["text"] for m in r.structured_content["messages"]] == ["for the waiters"]


@pytest.mark.invariant(84)
async def test_a_finished_wait_frees_its_slot(world: World) -> None:
    settings = replace(world.settings, limits=replace(world.settings.limits, waits_per_agent=1))
    async with http_clients(settings, world, "alice-codex") as c:
        with anyio.fail_after(20):
            for _ in range(3):
                r = await c["alice-codex"].call_tool("wait_for_messages", {"room": "lobby", "after": 0, "timeout_s": 1})
                assert not r.is_error, r.content
