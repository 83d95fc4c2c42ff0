"""One denial path: every refusal, the gate's own included, leaves its audit row the same way (DESIGN §6)."""

from __future__ import annotations

import ast
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp import audit
from agent_rooms_mcp.gate import GATE_ACTION
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.server import create_server, existing_hub
from tests.conftest import HTTP_BASE, World
from tests.tool_errors import error_code

PACKAGE = Path(__file__).resolve().parent.parent / "agent_rooms_mcp"


def last_seq(world: World) -> int:
    return int(world.sql("SELECT coalesce(max(seq), 0) FROM audit")[0][0])


def rows_after(world: World, seq: int) -> list[sqlite3.Row]:
    return world.sql("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (seq,))


def assert_gate_denial(world: World, seq: int, reason: str, tool: str) -> None:
    """Exactly one new row: the gate's refusal, by nobody known, naming the tool, and the chain intact."""
    rows = rows_after(world, seq)
    assert [(r["action"], r["outcome"], r["reason"], r["actor_kind"]) for r in rows] == [
        (GATE_ACTION, "denied", reason, "anonymous")
    ]
    assert rows[0]["target"] == audit.safe_target(tool)
    assert world.chain_verifies()


@pytest.mark.anyio
@pytest.mark.invariant(55)
async def test_a_call_without_a_request_context_is_refused_and_audited(world: World) -> None:
    server = create_server(lambda _: Hub.open(world.settings_for(world.tokens["alice-claude"])))
    before, seq = world.fingerprint(), last_seq(world)
    # A session holds the server's hub open; the call below bypasses it, as in-process code could.
    async with Client(server):
        result = await server.call_tool("post_message", {"room": "lobby", "text": "hello"})
    assert error_code(result) == "UNAUTHENTICATED"  # type: ignore[arg-type]
    assert world.fingerprint() == before
    assert_gate_denial(world, seq, "no_request", "post_message")


@pytest.mark.anyio
async def test_a_call_with_no_hub_open_is_refused_and_writes_nowhere(world: World) -> None:
    server = create_server(lambda _: Hub.open(world.settings))
    seq = last_seq(world)
    result = await server.call_tool("whoami", {})
    assert error_code(result) == "UNAUTHENTICATED"  # type: ignore[arg-type]
    assert rows_after(world, seq) == []


@pytest.mark.anyio
@pytest.mark.invariant(55)
async def test_an_http_request_that_skipped_the_bearer_layer_is_refused_and_audited(world: World) -> None:
    """The MCP app mounted without our bearer layer (a wiring mistake): no caller on the request, so the gate
    refuses every tool call, and says so in the audit log."""
    before = world.fingerprint()
    async with Hub.open(world.settings) as hub:
        mcp = create_server(existing_hub(hub))
        app = mcp.streamable_http_app(json_response=True)
        async with mcp.session_manager.run():
            http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
            async with http, Client(streamable_http_client(f"{HTTP_BASE}/mcp", http_client=http)) as c:
                seq = last_seq(world)
                result = await c.call_tool("read_messages", {"room": "lobby"})
    assert error_code(result) == "UNAUTHENTICATED"
    assert world.fingerprint() == before
    assert_gate_denial(world, seq, "no_http_caller", "read_messages")


@pytest.mark.anyio
@pytest.mark.invariant(55)
async def test_a_crash_while_authenticating_is_refused_as_gate_failed_and_audited(world: World) -> None:
    # A server configured with a credential that is not text (a broken embedding, not any client's doing):
    # authentication itself crashes, and the caller sees only UNAUTHENTICATED.
    broken: Any = 12345
    settings = replace(world.settings, stdio_token=broken)
    before, seq = world.fingerprint(), last_seq(world)
    async with Client(create_server(lambda _: Hub.open(settings)), mode="auto") as c:
        result = await c.call_tool("whoami", {})
    assert error_code(result) == "UNAUTHENTICATED"
    assert "12345" not in str(result.content)
    assert world.fingerprint() == before
    assert_gate_denial(world, seq, "gate_failed", "whoami")


@pytest.mark.anyio
@pytest.mark.invariant(55)
async def test_a_refused_tool_call_writes_one_denial_row_after_the_rollback(world: World) -> None:
    """The tool path, for contrast: the same one writer, naming the agent, the tool and the target."""
    before, seq = world.fingerprint(), last_seq(world)
    async with world.client("alice-mute") as c:
        result = await c.call_tool("post_message", {"room": "lobby", "text": "hi"})
    assert error_code(result) == "FORBIDDEN_SCOPE"
    assert world.fingerprint() == before
    rows = rows_after(world, seq)
    assert [(r["action"], r["outcome"], r["actor_kind"], r["target"]) for r in rows] == [
        ("tool.post_message", "denied", "agent", "lobby")
    ]


def _denial_writers(path: Path) -> list[str]:
    """Where a module writes a denied row itself: `audit.append(..., outcome="denied")` or audit's builder."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append":
            denied = [k for k in node.keywords if k.arg == "outcome" and getattr(k.value, "value", None) == "denied"]
            found += [f"{path.name}:{node.lineno}" for _ in denied]
        if isinstance(node, ast.Attribute) and node.attr in ("denial", "_denial"):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_only_the_audit_module_writes_denial_rows() -> None:
    """Every refusal goes through `audit.record_denial`. The other writers are the flood counters:
    authentication's failure counter, the per-agent rate limiter and the OAuth endpoints' refusal trace, each of
    which must count and audit a refusal in the same transaction as its counter (or its window's summary), so a
    flood leaves a bounded number of rows."""
    writers = {
        str(p.relative_to(PACKAGE)): _denial_writers(p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "audit.py" and _denial_writers(p)
    }
    assert set(writers) <= {"auth/failures.py", "ratelimit.py", "services/oauth_refusals.py"}, writers
