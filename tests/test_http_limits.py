"""Slow and idle clients against a real `agent-rooms serve --http` process (DESIGN §9, invariant 84)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import World
from tests.test_served import free_port, wait_listening

# Small limits for the served process, through the environment as an operator would set them.
CONNECTIONS = 16
HEAD_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
# "Eventually": far past the timeouts above, so a slow shared machine cannot fail the test.
EVENTUALLY_S = 60


@asynccontextmanager
async def served(world: World, **limits: int | float) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "AGENT_ROOMS_HOME": str(world.settings.home),
        "AGENT_ROOMS_SUPERVISOR": "0",
        **{f"AGENT_ROOMS_LIMIT_{k.upper()}": str(v) for k, v in limits.items()},
    }
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(port)]
    async with await anyio.open_process(argv, env=env) as server:
        try:
            with anyio.fail_after(30):
                await wait_listening(port)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.terminate()
            await server.wait()


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
