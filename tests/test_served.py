"""The real `agent-rooms serve --http` process, as `make run` starts it, answering a real SDK client."""

from __future__ import annotations

import socket

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import World
from tests.hubprocess import serve_http


async def test_served_http_answers_both_eras_and_refuses_without_a_token(world: World) -> None:
    async with serve_http(world.settings.home) as served:
        async with httpx2.AsyncClient() as raw:
            refused = await raw.post(served.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401
        for mode in ("auto", "legacy"):
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {world.tokens['alice-claude']}"})
            async with http, Client(streamable_http_client(served.mcp, http_client=http), mode=mode) as c:
                who = await c.call_tool("whoami", {})
                posted = await c.call_tool("post_message", {"room": "lobby", "text": f"over {mode} http"})
            assert who.structured_content["agent"]["handle"] == "alice-claude"
            assert not posted.is_error
    assert [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")] == [
        "over auto http",
        "over legacy http",
    ]


async def test_healthz_answers_200_without_credentials_and_says_nothing_else(world: World) -> None:
    """DESIGN §9.5: a monitor's probe. Only GET, only that path, and the Host check still holds."""
    async with serve_http(world.settings.home) as served, httpx2.AsyncClient() as raw:
        before = world.sql("SELECT count(*) FROM audit")[0][0]
        health = await raw.get(f"{served.base}/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        # Nothing was counted against anyone: no failed authentication, no audit row.
        assert world.sql("SELECT count(*) FROM audit")[0][0] == before
        assert not world.sql("SELECT 1 FROM auth_failures")
        # Anything else there still needs a credential, and a foreign Host is refused as everywhere.
        assert (await raw.post(f"{served.base}/healthz")).status_code == 401
        assert (await raw.get(f"{served.base}/healthz/x")).status_code == 401
        assert (await raw.get(f"{served.base}/healthz", headers={"Host": "evil.example"})).status_code == 421


async def test_a_hub_that_could_not_take_its_port_is_not_taken_for_whatever_listens_there(world: World) -> None:
    """`serve_http` picks a port that was free a moment ago; when another server (another test's) has taken it
    since, our hub refuses to start, and the test must learn so rather than go on talking to the other one."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(AssertionError, match="cannot listen"):
            async with serve_http(world.settings.home, port=port):
                pass
