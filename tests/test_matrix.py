"""Every tool against every kind of caller, through a real client: the answer comes from an independent
table, and every denial changes nothing but the audit log (STYLE P14, invariants 21, 22, 27, 28, 31)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_rooms_mcp.server import TOOLS
from tests.conftest import OPERATOR, World

OK = "ok"
CALLERS = ("member", "manager", "no_scopes", "non_member", "revoked")
AGENT_OF = {
    "member": "alice-claude",
    "manager": "alice-admin",
    "no_scopes": "alice-mute",
    "non_member": "bob-claude",
    "revoked": "alice-codex",
}
# Written from DESIGN §3.1, not from the code: scope first, then membership (NOT_FOUND).
READS = {"member": OK, "manager": OK, "no_scopes": "FORBIDDEN_SCOPE", "non_member": "NOT_FOUND"}
EXPECTED: dict[str, dict[str, str]] = {
    "whoami": {"member": OK, "manager": OK, "no_scopes": OK, "non_member": OK},
    "list_rooms": {"member": OK, "manager": OK, "no_scopes": "FORBIDDEN_SCOPE", "non_member": OK},
    "get_room": READS,
    "post_message": READS,
    "read_messages": READS,
    "wait_for_messages": READS,
    "share_file": READS,
    "list_files": READS,
    "read_file": READS,
    "create_invite": {
        "member": "FORBIDDEN_SCOPE",
        "manager": OK,
        "no_scopes": "FORBIDDEN_SCOPE",
        "non_member": "FORBIDDEN_SCOPE",
    },
}
for row in EXPECTED.values():
    row["revoked"] = "UNAUTHENTICATED"

WRITES = {"post_message", "share_file", "create_invite"}


def args_for(tool: str, file_id: str) -> dict[str, Any]:
    return {
        "whoami": {},
        "list_rooms": {},
        "get_room": {"room": "lobby"},
        "post_message": {"room": "lobby", "text": "hello"},
        "read_messages": {"room": "lobby"},
        "wait_for_messages": {"room": "lobby", "after": 0, "timeout_s": 1},
        "share_file": {"room": "lobby", "name": "a.txt", "content": "x"},
        "list_files": {"room": "lobby"},
        "read_file": {"room": "lobby", "file_id": file_id},
        "create_invite": {"room": "lobby"},
    }[tool]


async def prepare(world: World) -> str:
    """A file in the lobby to read, and a revoked credential."""
    async with world.client("alice-claude") as c:
        shared = await c.call_tool("share_file", {"room": "lobby", "name": "seed.txt", "content": "seed"})
    async with world.hub() as hub:
        await hub.accounts.revoke_token(OPERATOR, world.token_ids["alice-codex"])
    return str(shared.structured_content["file_id"])


@pytest.mark.invariant(21, 22, 27, 55)
@pytest.mark.parametrize("tool, caller", [(t, c) for t in EXPECTED for c in CALLERS])
async def test_tool_against_caller(world: World, mode: str, tool: str, caller: str) -> None:
    file_id = await prepare(world)
    before, audit_before = world.fingerprint(), len(world.audit_rows())
    async with world.client(AGENT_OF[caller], mode) as c:
        result = await c.call_tool(tool, args_for(tool, file_id))
    expected = EXPECTED[tool][caller]
    audit_after = world.audit_rows()
    if expected == OK:
        assert not result.is_error, result.content
        assert (world.fingerprint() != before) == (tool in WRITES)
    else:
        assert result.is_error
        assert result.structured_content["code"] == expected
        assert result.content[0].text.startswith(f"{expected}: ")
        assert world.fingerprint() == before, "a denied call changed something"
        [denial] = audit_after[audit_before:]
        assert denial["outcome"] == "denied"
        assert denial["reason"]
        if caller == "revoked":
            assert denial["action"] == "auth.authenticate"
        else:
            # Names who was refused what, and where (invariant 55).
            assert (denial["action"], denial["actor_id"]) == (f"tool.{tool}", world_agent_id(world, AGENT_OF[caller]))
            assert denial["target"] == args_for(tool, file_id).get("room")


def world_agent_id(world: World, handle: str) -> str:
    return str(world.sql("SELECT agent_id FROM agents WHERE handle = ?", (handle,))[0]["agent_id"])


def test_matrix_covers_every_tool() -> None:
    assert set(EXPECTED) == {tool.__name__ for tool, _ in TOOLS}


@pytest.mark.invariant(27, 31)
async def test_hidden_room_and_missing_room_look_the_same(world: World) -> None:
    async with world.client("bob-claude") as bob:
        hidden = await bob.call_tool("read_messages", {"room": "lobby"})
        missing = await bob.call_tool("read_messages", {"room": "no-such-room"})
        by_id = await bob.call_tool("get_room", {"room": "room_doesnotexist"})
    assert hidden.content[0].text == missing.content[0].text == by_id.content[0].text == "NOT_FOUND: no such room"


@pytest.mark.invariant(31)
async def test_a_file_id_from_another_room_grants_nothing(world: World) -> None:
    async with world.client("bob-claude") as bob:
        shared = await bob.call_tool("share_file", {"room": "bobs-den", "name": "secret.txt", "content": "bob only"})
    file_id = shared.structured_content["file_id"]
    async with world.client("alice-claude") as alice:
        r = await alice.call_tool("read_file", {"room": "lobby", "file_id": file_id})
    assert r.structured_content["code"] == "NOT_FOUND"


@pytest.mark.invariant(28)
async def test_listings_never_reveal_rooms_the_caller_is_not_in(world: World) -> None:
    async with world.client("bob-claude") as bob:
        rooms = (await bob.call_tool("list_rooms", {})).structured_content["rooms"]
        who = (await bob.call_tool("whoami", {})).structured_content
    assert sorted(r["name"] for r in rooms) == ["bobs-den", "shared"]
    assert who["rooms"] == 2


@pytest.mark.invariant(32, 33, 64)
async def test_tool_list_is_the_documented_one_and_identical_for_every_caller(world: World) -> None:
    listings = []
    for agent in ("alice-claude", "bob-claude", "alice-mute"):
        async with world.client(agent) as c:
            listings.append(json.dumps([t.model_dump(mode="json") for t in (await c.list_tools()).tools]))
    async with world.client(None, token="art_not-a-real-token") as c:
        listings.append(json.dumps([t.model_dump(mode="json") for t in (await c.list_tools()).tools]))
    assert len(set(listings)) == 1
    names = {t["name"] for t in json.loads(listings[0])}
    assert names == {
        "whoami", "list_rooms", "get_room", "post_message", "read_messages", "wait_for_messages",
        "share_file", "list_files", "read_file", "create_invite",
    }  # fmt: skip
    # Human-only actions have no tool (DESIGN §2).
    for human_only in ("scope", "grant", "accept_invite", "revoke", "verify", "add_agent", "delete"):
        assert not any(human_only in n for n in names)


@pytest.mark.invariant(65)
async def test_oversized_arguments_are_refused_with_too_large_and_change_nothing(world: World, mode: str) -> None:
    before = world.fingerprint()
    async with world.client("alice-claude", mode) as c:
        long_text = await c.call_tool("post_message", {"room": "lobby", "text": "x" * (32 * 1024 + 1)})
        wide_text = await c.call_tool("post_message", {"room": "lobby", "text": "é" * (16 * 1024 + 1)})
        big_file = await c.call_tool("share_file", {"room": "lobby", "name": "b", "content": "x" * (1024 * 1024 + 1)})
        bad_page = await c.call_tool("read_messages", {"room": "lobby", "limit": 201})
        bad_type = await c.call_tool("read_messages", {"room": "lobby", "after": "zero"})
    # One wording whichever check caught it: the SDK's length in characters or ours in UTF-8 bytes.
    assert (
        long_text.content[0].text
        == wide_text.content[0].text
        == "TOO_LARGE: text: larger than the limit of 32768 bytes"
    )
    assert big_file.structured_content["code"] == "TOO_LARGE"
    assert bad_page.structured_content["code"] == "INVALID_ARGUMENT"
    assert bad_type.content[0].text.startswith("INVALID_ARGUMENT: after")
    assert world.fingerprint() == before
