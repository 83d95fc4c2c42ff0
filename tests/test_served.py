"""The real `agent-rooms serve --http` process, as `make run` starts it, answering a real SDK client."""

from __future__ import annotations

import os
import socket
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import World


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int) -> None:
    while True:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.05)  # the server is still importing; nothing else to wait on
            continue
        await stream.aclose()
        return


async def test_served_http_answers_both_eras_and_refuses_without_a_token(world: World) -> None:
    port = free_port()
    env = {**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home)}
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(port)]
    async with await anyio.open_process(argv, env=env) as server:
        try:
            with anyio.fail_after(30):
                await wait_listening(port)
            url = f"http://127.0.0.1:{port}/mcp"
            async with httpx2.AsyncClient() as raw:
                refused = await raw.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            assert refused.status_code == 401
            for mode in ("auto", "legacy"):
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {world.tokens['alice-claude']}"})
                async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
                    who = await c.call_tool("whoami", {})
                    posted = await c.call_tool("post_message", {"room": "lobby", "text": f"over {mode} http"})
                assert who.structured_content["agent"]["handle"] == "alice-claude"
                assert not posted.is_error
        finally:
            server.terminate()
            await server.wait()
    assert [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")] == [
        "over auto http",
        "over legacy http",
    ]
