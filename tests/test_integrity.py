"""Authority re-checked inside writes, removal, one audit row per change, bodies kept out of the audit log,
and the stdio line cap (invariants 29, 34, 54, 60, 66)."""

from __future__ import annotations

import json
import os
import re
import sys

import anyio
import pytest

from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.home import write_private_file
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code


@pytest.mark.invariant(29)
async def test_a_removed_agent_gets_nothing_of_the_room_from_any_read_path(world: World, mode: str) -> None:
    async with world.client("alice-codex", mode) as codex:
        assert not (await codex.call_tool("read_messages", {"room": "lobby"})).is_error
        async with world.hub() as hub:
            await hub.rooms.remove_agent(OPERATOR, "lobby", "alice-codex")
        for tool, args in (
            ("get_room", {"room": "lobby"}),
            ("read_messages", {"room": "lobby"}),
            ("wait_for_messages", {"room": "lobby", "after": 0, "timeout_s": 1}),
            ("list_files", {"room": "lobby"}),
            ("post_message", {"room": "lobby", "text": "still here?"}),
        ):
            r = await codex.call_tool(tool, args)
            assert error_code(r) == "NOT_FOUND", tool
        rooms = (await codex.call_tool("list_rooms", {})).structured_content["rooms"]
    assert rooms == []


@pytest.mark.invariant(34)
async def test_a_write_authenticated_before_a_revoke_is_refused_inside_its_transaction(world: World) -> None:
    async with world.hub() as hub:
        caller = await hub.auth.authenticate(world.tokens["alice-claude"], MCP_KINDS, transport="test")
        await hub.accounts.revoke_token(OPERATOR, world.token_ids["alice-claude"])
        before = world.fingerprint()
        with pytest.raises(RoomsError) as raised:
            await hub.messages.post(caller, "lobby", "sent after the revoke committed", [], None)
        assert raised.value.code is ErrorCode.UNAUTHENTICATED
        assert world.fingerprint() == before
        caller = await hub.auth.authenticate(world.tokens["alice-admin"], MCP_KINDS, transport="test")
        await hub.accounts.set_scopes(OPERATOR, "alice-admin", frozenset())
        before = world.fingerprint()
        with pytest.raises(RoomsError) as raised:
            await hub.files.share(caller, "lobby", "late.txt", "x", None, None)
        assert raised.value.code is ErrorCode.FORBIDDEN_SCOPE
    assert world.fingerprint() == before


@pytest.mark.invariant(54)
async def test_each_change_writes_exactly_one_audit_row_and_a_failure_none(world: World) -> None:
    start = len(world.audit_rows())
    async with world.client("alice-claude") as c:
        await c.call_tool("post_message", {"room": "lobby", "text": "one"})
        await c.call_tool("share_file", {"room": "lobby", "name": "f.txt", "content": "two"})
        await c.call_tool("read_messages", {"room": "lobby"})
        await c.call_tool("post_message", {"room": "lobby", "text": "x", "reply_to": 99})
    rows = world.audit_rows()[start:]
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("message.post", "ok"),
        ("file.share", "ok"),
        ("tool.post_message", "denied"),
    ]


@pytest.mark.invariant(60)
async def test_audit_rows_hold_no_bodies_or_secrets_and_utc_times(world: World) -> None:
    sentinel = "SENTINEL-7f3a-body-text"
    async with world.client("alice-claude") as c:
        await c.call_tool("post_message", {"room": "lobby", "text": sentinel})
        await c.call_tool("share_file", {"room": "lobby", "name": "s.txt", "content": sentinel})
    async with world.client(None, token=world.tokens["alice-claude"][:-2] + "xx") as c:
        await c.call_tool("whoami", {})
    dump = json.dumps([dict(r) for r in world.sql("SELECT ts, actor_id, target, reason, detail FROM audit")])
    assert sentinel not in dump
    for token in world.tokens.values():
        assert token not in dump and token[4:] not in dump
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["ts"]) for r in world.audit_rows())


@pytest.mark.invariant(66)
async def test_a_stdio_line_over_the_cap_is_refused_and_the_server_keeps_serving(world: World) -> None:
    token_file = world.settings.home / "tokens" / "alice-claude.token"
    write_private_file(token_file, world.tokens["alice-claude"].encode())
    env = {**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_file)}
    huge = json.dumps(
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "post_message", "arguments": {
            "room": "lobby", "text": "x" * (5 * 1024 * 1024)}}}
    )  # fmt: skip
    follow_up = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
    }
    ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    replies: dict[int, dict] = {}
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve"]
    with anyio.fail_after(60):
        async with await anyio.open_process(argv, env=env) as proc:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            for line in (json.dumps(hello), json.dumps(ready), huge, json.dumps(follow_up)):
                await proc.stdin.send(line.encode() + b"\n")
            buffered = b""
            # Stdin stays open until the follow-up is answered: EOF would end the session first.
            async for chunk in proc.stdout:
                buffered += chunk
                for line in buffered.split(b"\n")[:-1]:
                    message = json.loads(line)
                    replies[message.get("id")] = message
                buffered = buffered.rsplit(b"\n", 1)[-1]
                if 8 in replies:
                    break
            await proc.stdin.aclose()
            stderr = b"".join([chunk async for chunk in proc.stderr]).decode()
    # The oversized request is answered, not silently dropped, with the code and text the bridge answers it with.
    cap = world.settings.limits.stdio_line_bytes
    assert replies[7]["error"] == {"code": -32600, "message": f"TOO_LARGE: a message line is at most {cap} bytes"}
    assert "stdio.line_too_large" in stderr
    assert world.sql("SELECT count(*) AS n FROM messages")[0]["n"] == 0
    assert replies[8]["result"]["structuredContent"]["agent"]["handle"] == "alice-claude"
