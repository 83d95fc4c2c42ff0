"""Each credential kind is accepted only where it belongs (DESIGN §2, invariant 105).

MCP (HTTP /mcp, stdio, in-memory) takes `art_` agent tokens and `arr_` run tokens. A device (`ard_`) or
OAuth (`arf_`, and `aro_` until the connector exists) credential is refused from its prefix alone, before
the database is asked anything; to show the refusal is not merely "unknown", each is stored as if it were
a valid token of alice-claude, so a lookup would have let it in. A token whose prefix lies about its row
(an agent's token spelled `arr_`, a run's spelled `art_`) is refused as well. Every refusal is the one
public answer of every failure.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from agent_rooms_mcp.auth.tokens import MCP_KINDS, CredentialKind, secret_hash
from agent_rooms_mcp.errors import RoomsError
from tests.conftest import World
from tests.test_auth import (
    JSON_HEADERS,
    agent_row,
    assert_401,
    assert_denied,
    assert_one_denial,
    last_audit_seq,
    raw_http,
    stdio_session,
    token_file,
    tool_call,
)

ALICE = "alice-claude"


def secret(kind: CredentialKind) -> str:
    return kind.value + secrets.token_urlsafe(32)


def store_as_alices(world: World, credential: str, run_id: str | None = None) -> None:
    """Record `credential` as one more live token of alice-claude, on her current passport."""
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute(
            "INSERT INTO tokens (token_id, token_hash, agent_id, jti, run_id, created_at, expires_at)"
            " SELECT ?, ?, agent_id, jti, ?, created_at, expires_at FROM tokens WHERE token_id = ?",
            ("tok_" + secrets.token_urlsafe(16), secret_hash(credential), run_id, world.token_ids[ALICE]),
        )
    conn.close()


async def device_token(world: World) -> str:
    credential = secret(CredentialKind.DEVICE)
    store_as_alices(world, credential)
    return credential


async def refresh_token(world: World) -> str:
    credential = secret(CredentialKind.OAUTH_REFRESH)
    store_as_alices(world, credential)
    return credential


async def oauth_access_token(world: World) -> str:
    """Accepted nowhere yet: the connector that mints and stores them is later work."""
    credential = secret(CredentialKind.OAUTH_ACCESS)
    store_as_alices(world, credential)
    return credential


async def agent_token_spelled_as_a_run_token(world: World) -> str:
    credential = secret(CredentialKind.RUN)
    store_as_alices(world, credential)
    return credential


async def run_token_spelled_as_an_agent_token(world: World) -> str:
    await world.run_token(ALICE, "lobby")  # a running run of alice-claude
    [run] = world.sql("SELECT run_id FROM runs")
    credential = secret(CredentialKind.AGENT)
    store_as_alices(world, credential, run["run_id"])
    return credential


Setup = Callable[[World], Awaitable[str]]
# (setup, whether the refusal could name alice: only once her row was read, which a foreign kind never is)
CASES = [
    pytest.param(device_token, False, id="ard_-device"),
    pytest.param(refresh_token, False, id="arf_-oauth-refresh"),
    pytest.param(oauth_access_token, False, id="aro_-before-the-connector"),
    pytest.param(agent_token_spelled_as_a_run_token, True, id="arr_-of-an-agent"),
    pytest.param(run_token_spelled_as_an_agent_token, True, id="art_-of-a-run"),
]


def assert_denial_names(world: World, seq: int, transport: str, actor_known: bool) -> None:
    row = assert_one_denial(world, seq, "wrong_credential_kind", transport=transport)
    expected = agent_row(world, ALICE)["agent_id"] if actor_known else None
    assert row["actor_id"] == expected


@pytest.mark.invariant(105, 14)
@pytest.mark.parametrize(("setup", "actor_known"), CASES)
async def test_a_credential_of_the_wrong_kind_is_refused_in_memory_and_over_http(
    world: World, setup: Setup, actor_known: bool
) -> None:
    credential = await setup(world)
    before, seq = world.fingerprint(), last_audit_seq(world)
    async with world.client(None, token=credential) as c:
        assert_denied(await c.call_tool("whoami", {}))
    assert_denial_names(world, seq, "stdio", actor_known)
    seq = last_audit_seq(world)
    async with raw_http(world) as client:
        r = await client.post(
            "/mcp", json=tool_call("post_message", {"room": "lobby", "text": "hi"}), headers={
                **JSON_HEADERS, "Authorization": f"Bearer {credential}"}
        )  # fmt: skip
    assert_401(r)
    assert_denial_names(world, seq, "http", actor_known)
    assert world.fingerprint() == before


@pytest.mark.invariant(105)
@pytest.mark.parametrize("setup", [device_token, agent_token_spelled_as_a_run_token])
async def test_a_credential_of_the_wrong_kind_is_refused_by_a_real_stdio_server(
    world: World, setup: Setup, tmp_path: Path
) -> None:
    credential = await setup(world)
    seq = last_audit_seq(world)
    with (tmp_path / "stderr.log").open("w") as errlog, anyio.fail_after(60):
        async with stdio_session(world, token_file(world, credential), errlog) as c:
            assert_denied(await c.call_tool("whoami", {}))
    # The server checks its credential once at start (to say so on stderr) and again on the call.
    reasons = {(r["action"], r["reason"]) for r in world.sql("SELECT * FROM audit WHERE seq > ?", (seq,))}
    assert reasons == {("auth.authenticate", "wrong_credential_kind")}


@pytest.mark.invariant(105)
async def test_a_foreign_kind_is_refused_before_any_lookup(world: World) -> None:
    """Every statement the hub's connections run is traced: a foreign kind never reads the tokens table, while
    an unknown agent token does (so the trace would have seen a lookup)."""
    device, refresh = await device_token(world), await refresh_token(world)
    unknown_agent_token = secret(CredentialKind.AGENT)
    statements: list[str] = []
    async with world.hub() as hub:
        connections = [hub.store._reader, hub.store._writer._conn]
        for conn in connections:
            conn.set_trace_callback(statements.append)
        try:
            looked_up = {}
            for credential in (device, refresh, unknown_agent_token):
                statements.clear()
                with pytest.raises(RoomsError):
                    await hub.auth.authenticate(credential, MCP_KINDS, transport="test")
                looked_up[credential[:4]] = [s for s in statements if "tokens" in s]
        finally:
            for conn in connections:
                conn.set_trace_callback(None)
    assert looked_up["ard_"] == looked_up["arf_"] == []
    assert looked_up["art_"], "the trace saw no lookup even for an agent token: it proves nothing"


@pytest.mark.invariant(105)
async def test_tokens_are_minted_with_the_prefix_of_their_kind(world: World) -> None:
    assert world.tokens[ALICE].startswith(CredentialKind.AGENT.value)
    assert (await world.run_token(ALICE, "lobby")).startswith(CredentialKind.RUN.value)
    assert {CredentialKind.AGENT, CredentialKind.RUN} == MCP_KINDS
