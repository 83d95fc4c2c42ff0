"""Slow and idle clients against a real `agent-rooms serve --http` process (DESIGN §9, invariant 84)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp.http import open_http_app
from tests.conftest import HTTP_BASE, World
from tests.hubprocess import serve_http

# Small limits for the served process, through the environment as an operator would set them.
CONNECTIONS = 16
HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
# "Eventually": far past the timeouts above, so a slow shared machine cannot fail the test.
EVENTUALLY_S = 60


@asynccontextmanager
async def served(world: World, **limits: int | float) -> AsyncIterator[str]:
    env = {"AGENT_ROOMS_SUPERVISOR": "0", **{f"AGENT_ROOMS_LIMIT_{k.upper()}": str(v) for k, v in limits.items()}}
    async with serve_http(world.settings.home, env=env) as served:
        yield served.mcp


async def half_open(port: int, head: bytes) -> anyio.abc.SocketStream:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    await stream.send(head)
    return stream


async def closed_by_server(stream: anyio.abc.SocketStream) -> bool:
    """True once the server closes the connection (EOF or reset) without having answered anything."""
    try:
        data = await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return True
    return data == b""


async def whoami(url: str, token: str) -> str:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as c:
        r = await c.call_tool("whoami", {})
    assert not r.is_error, r.content
    return str(r.structured_content["agent"]["handle"])


PARTIAL_HEAD = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.mark.invariant(84)
async def test_half_open_heads_past_the_cap_neither_lock_out_a_real_call_nor_stay_open(world: World) -> None:
    limits = {"http_connections": CONNECTIONS, "http_head_timeout_s": HEAD_TIMEOUT_S}
    async with served(world, **limits) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with anyio.fail_after(EVENTUALLY_S):
            streams = [await half_open(port, PARTIAL_HEAD) for _ in range(3 * CONNECTIONS)]
            try:
                # With every slot held by a half-sent head, a real client still gets its answer.
                assert await whoami(url, world.tokens["alice-claude"]) == "alice-claude"
                # And every half-open connection is closed by the server, none answered.
                closed = [await closed_by_server(s) for s in streams]
            finally:
                for s in streams:
                    await s.aclose()
    assert all(closed)


@pytest.mark.invariant(84)
async def test_a_body_that_never_finishes_is_cut_off(world: World) -> None:
    async with served(world, http_body_timeout_s=BODY_TIMEOUT_S) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        token = world.tokens["alice-claude"]
        head = (
            PARTIAL_HEAD
            + f"Authorization: Bearer {token}\r\nAccept: application/json, text/event-stream\r\n"
            "MCP-Protocol-Version: 2026-07-28\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        with anyio.fail_after(EVENTUALLY_S):
            stream = await half_open(port, head)
            try:
                closed = await closed_by_server(stream)
            finally:
                await stream.aclose()
            assert await whoami(url, token) == "alice-claude"
    assert closed


# Legacy-era sessions (initialize handshake), driven by raw HTTP against the in-process app.
LEGACY = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Legacy:
    """One agent's raw HTTP client of the in-process hub, opening and using legacy-era sessions."""

    def __init__(self, http: httpx2.AsyncClient, token: str) -> None:
        self._http = http
        self._headers = {**ACCEPT, "Authorization": f"Bearer {token}"}

    async def open(self) -> httpx2.Response:
        r = await self._http.post(f"{HTTP_BASE}/mcp", json=INITIALIZE, headers=self._headers)
        if r.status_code == 200:
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await self._http.post(f"{HTTP_BASE}/mcp", json=note, headers=self._session(r.headers["mcp-session-id"]))
        return r

    async def call(self, session: str, tool: str, arguments: dict[str, Any]) -> httpx2.Response:
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        return await self._http.post(f"{HTTP_BASE}/mcp", json=body, headers=self._session(session))

    async def works(self, session: str) -> bool:
        r = await self.call(session, "whoami", {})
        return r.status_code == 200 and "result" in r.json()

    def _session(self, session: str) -> dict[str, str]:
        return {**self._headers, "mcp-session-id": session, "mcp-protocol-version": LEGACY}


@asynccontextmanager
async def legacy_hub(world: World, **limits: int | float) -> AsyncIterator[Callable[[str], Legacy]]:
    settings = replace(world.settings, limits=replace(world.settings.limits, **limits))
    async with open_http_app(settings) as app:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
        async with http:
            yield lambda agent: Legacy(http, world.tokens[agent])


async def open_session(client: Legacy) -> str:
    r = await client.open()
    assert r.status_code == 200, r.text
    return str(r.headers["mcp-session-id"])


@pytest.mark.invariant(84)
async def test_an_agent_past_its_session_cap_closes_only_its_own_oldest_idle_session(world: World) -> None:
    # The SDK's own cap is `http_sessions` too: were evicted sessions only forgotten by us and left open
    # in the SDK, the sixth opening below would get the SDK's 503.
    async with legacy_hub(world, http_sessions_per_agent=2, http_sessions=5) as as_agent:
        bob, mute = as_agent("bob-claude"), as_agent("alice-mute")
        bobs = await open_session(bob)
        # An agent with no scopes at all opens session after session.
        mine = [await open_session(mute) for _ in range(8)]
        assert await bob.works(bobs)
        assert [await mute.works(s) for s in mine] == [False] * 6 + [True, True]
    refused = world.sql(
        "SELECT DISTINCT a.handle FROM audit JOIN agents a ON a.agent_id = audit.actor_id"
        " WHERE audit.reason = 'unknown_session'"
    )
    assert [r["handle"] for r in refused] == ["alice-mute"]


@pytest.mark.invariant(84)
async def test_sessions_in_all_are_capped_without_closing_another_agents(world: World) -> None:
    async with legacy_hub(world, http_sessions_per_agent=2, http_sessions=3) as as_agent:
        held = {agent: await open_session(as_agent(agent)) for agent in ("alice-claude", "alice-codex", "bob-claude")}
        refused = await as_agent("carol-claude").open()
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        for agent, session in held.items():
            assert await as_agent(agent).works(session)


@pytest.mark.invariant(84)
async def test_a_new_session_is_refused_when_all_of_the_agents_sessions_are_busy(world: World) -> None:
    async with legacy_hub(world, http_sessions_per_agent=2) as as_agent:
        codex = as_agent("alice-codex")
        busy = [await open_session(codex) for _ in range(2)]
        waits: list[httpx2.Response] = []

        async def wait(session: str) -> None:
            waits.append(await codex.call(session, "wait_for_messages", {"room": "lobby", "after": 0}))

        with anyio.fail_after(EVENTUALLY_S):
            async with anyio.create_task_group() as tg:
                for session in busy:
                    tg.start_soon(wait, session)
                await anyio.sleep(0.5)  # let both waits start; the refusal below needs them in flight
                refused = await codex.open()
                posted = await as_agent("alice-claude").call(
                    await open_session(as_agent("alice-claude")), "post_message", {"room": "lobby", "text": "go"}
                )
                assert posted.status_code == 200
        assert refused.status_code == 429
        assert [w.status_code for w in waits] == [200, 200]
        # Once they are idle again, a new session closes the oldest of them instead.
        assert (await codex.open()).status_code == 200


@pytest.mark.invariant(84)
async def test_an_idle_session_expires(world: World) -> None:
    idle_s = 1.0
    async with legacy_hub(world, http_session_idle_s=idle_s) as as_agent:
        claude = as_agent("alice-claude")
        session = await open_session(claude)
        assert await claude.works(session)
        await anyio.sleep(idle_s * 5)  # "eventually", with room to spare on a busy machine
        assert not await claude.works(session)
