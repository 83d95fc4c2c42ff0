"""Invites: one winner under any concurrency, one answer for every invalid code (invariants 35-39)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter

import anyio
import pytest

from agent_rooms_mcp.errors import ErrorCode, RoomsError
from tests.conftest import OPERATOR, World


async def _accept(world: World, code: str, owner: str, agents: list[str]) -> str:
    async with world.hub() as hub:
        try:
            await hub.invites.accept(OPERATOR, code, owner, agents)
        except RoomsError as e:
            return e.code.value
    return "won"


@pytest.mark.invariant(36)
async def test_twenty_concurrent_accepts_have_exactly_one_winner(world: World) -> None:
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
    outcomes: list[str] = []

    async def one() -> None:
        outcomes.append(await _accept(world, invite.code, "carol", ["carol-claude"]))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    assert Counter(outcomes) == {"won": 1, ErrorCode.INVITE_INVALID.value: 19}
    assert (
        len(world.sql("SELECT * FROM room_agents m JOIN agents a USING (agent_id) WHERE a.handle='carol-claude'")) == 1
    )


@pytest.mark.invariant(36)
async def test_concurrent_accepts_across_processes_have_exactly_one_winner(world: World) -> None:
    """Inside one process the writer thread serialises accepts; across processes only the SQL claim does."""
    code = await _create_code(world)
    env = {**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home)}
    argv = [
        sys.executable,
        "-m",
        "agent_rooms_mcp",
        "invite",
        "accept",
        code,
        "--owner",
        "carol",
        "--agent",
        "carol-claude",
    ]
    argv.append("--json")
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    results = await anyio.to_thread.run_sync(lambda: [p.communicate(timeout=120) for p in procs])
    codes = [json.loads(out).get("code", "won") for out, _ in results]
    assert Counter(codes) == {"won": 1, "INVITE_INVALID": 5}, [err for _, err in results]


async def _create_code(world: World) -> str:
    async with world.hub() as hub:
        return (await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)).code


@pytest.mark.invariant(37)
async def test_unknown_expired_and_used_codes_get_the_identical_answer(world: World) -> None:
    async with world.hub() as hub:
        used = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
        await hub.invites.accept(OPERATOR, used.code, "carol", ["carol-claude"])
        expired = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
    # The expiry is moved into the past directly: no sleeping in tests.
    conn = sqlite3.connect(world.db)
    conn.execute("UPDATE invites SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE used_at IS NULL")
    conn.commit()
    conn.close()
    messages = set()
    for code in (used.code, expired.code, "inv_" + "A" * 32, "not-even-a-code"):
        async with world.hub() as hub:
            with pytest.raises(RoomsError) as raised:
                await hub.invites.accept(OPERATOR, code, "carol", [])
        messages.add(str(raised.value))
    assert messages == {"INVITE_INVALID: this invite code is not valid"}
    reasons = [
        r["reason"] for r in world.sql("SELECT reason FROM audit WHERE action='invite.accept' AND outcome='denied'")
    ]
    assert reasons == ["used_code", "expired_code", "unknown_code", "malformed_code"]


@pytest.mark.invariant(35, 38)
async def test_invite_codes_are_long_and_only_their_hash_is_stored(world: World) -> None:
    async with world.client("alice-admin") as admin:
        r = await admin.call_tool("create_invite", {"room": "lobby", "ttl_s": 600})
    async with world.hub() as hub:
        code = (await hub.invites.confirm(OPERATOR, r.structured_content["invite_id"], "alice")).code
    assert code.startswith("inv_") and len(code) - 4 >= 32  # 192 bits of base64url
    wal = world.db.with_name("hub.db-wal")
    raw = world.db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert code.encode() not in raw
    async with world.hub() as hub:
        accepted = await hub.invites.accept(OPERATOR, code, "carol", ["carol-claude"])
    assert accepted.room == "lobby"
    [row] = world.sql("SELECT count(*) AS n FROM audit WHERE action='invite.accept' AND outcome='ok'")
    assert row["n"] == 2  # the world's own invite into "shared", and this one


@pytest.mark.invariant(38)
async def test_accepting_cannot_bring_in_another_owners_agent_and_then_changes_nothing(world: World) -> None:
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
    before = world.fingerprint()
    async with world.hub() as hub:
        with pytest.raises(RoomsError) as raised:
            await hub.invites.accept(OPERATOR, invite.code, "carol", ["bob-claude"])
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert world.fingerprint() == before  # the code is still unused, no membership was made
    assert await _accept(world, invite.code, "carol", ["carol-claude"]) == "won"


@pytest.mark.invariant(38)
async def test_an_accept_that_would_add_nothing_is_refused_and_leaves_the_code_usable(world: World) -> None:
    """One-time codes: an accept naming no agent, or only agents already in the room, must not spend the code."""
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "shared", "alice", 3600)
    before = world.fingerprint()
    # Bob is in `shared` with both his agents already; no agent at all adds nothing either.
    env = {**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home)}
    for agents, code, words in (
        ([], "INVALID_ARGUMENT", "--agent"),
        (["bob-claude", "bob-codex"], "CONFLICT", "bob-claude, bob-codex already in room shared"),
    ):
        argv = [sys.executable, "-m", "agent_rooms_mcp", "invite", "accept", invite.code, "--owner", "bob", "--json"]
        for agent in agents:
            argv += ["--agent", agent]
        done = await anyio.run_process(argv, env=env, check=False)
        answer = json.loads(done.stdout)
        assert done.returncode == 1 and answer["code"] == code and words in answer["message"], answer
        assert "the code stays unused" in answer["message"]
        assert world.fingerprint() == before  # nothing joined, the code is not marked used
    # The very same code then brings in someone it adds.
    assert await _accept(world, invite.code, "carol", ["carol-claude"]) == "won"
    [row] = world.sql(
        "SELECT count(*) AS n FROM room_agents m JOIN agents a USING (agent_id) JOIN rooms r USING (room_id)"
        " WHERE a.handle = 'carol-claude' AND r.name = 'shared'"
    )
    assert row["n"] == 1
    denied = world.sql("SELECT reason FROM audit WHERE action = 'cli.invite.accept' AND outcome = 'denied'")
    assert [r["reason"] for r in denied] == ["invalid_argument", "conflict"]


@pytest.mark.invariant(39)
async def test_pending_invites_per_room_are_capped(world: World) -> None:
    async with world.hub() as hub:
        for _ in range(world.settings.limits.pending_invites_per_room):
            await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
        before = world.fingerprint()
        with pytest.raises(RoomsError) as raised:
            await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
    assert raised.value.code is ErrorCode.CONFLICT
    assert world.fingerprint() == before
