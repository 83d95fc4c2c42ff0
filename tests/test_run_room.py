"""A run token acts only in the room that woke its run (DESIGN §2, invariant 87).

alice-claude is a member of "lobby" and "shared"; its run is woken in "lobby". Through a real MCP client
holding the run token the supervisor's own service mints, every room-taking tool answers for "shared"
exactly as for "bobs-den", a room the agent is not in at all, and every listing shows "lobby" only.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent_rooms_mcp.auth.tokens import CredentialKind
from tests.conftest import World
from tests.tool_errors import error_code

AGENT = "alice-claude"
WOKEN_IN, OTHER_OF_ITS_ROOMS, NOT_ITS_ROOM = "lobby", "shared", "bobs-den"


def room_calls(room: str, file_id: str) -> dict[str, dict[str, Any]]:
    """Every tool that takes a room, with arguments that succeed in the run's own room."""
    return {
        "get_room": {"room": room},
        "post_message": {"room": room, "text": "hello"},
        "read_messages": {"room": room},
        "wait_for_messages": {"room": room, "after": 0, "timeout_s": 1},
        "share_file": {"room": room, "name": "a.txt", "content": "x"},
        "list_files": {"room": room},
        "read_file": {"room": room, "file_id": file_id},
        "create_invite": {"room": room},
        "create_task": {"room": room, "title": "a task"},
        "list_tasks": {"room": room},
        "set_consent_mode": {"room": room, "mode": "task_by_task"},
        "list_pending_consents": {"room": room},
    }


# Tools whose scope a run token never holds (`manage`, `consent`): refused before the room is looked at.
WITHHELD = {"create_invite", "set_consent_mode", "list_pending_consents"}


async def seed(world: World) -> tuple[str, dict[str, str]]:
    """A message, a file and a task in each of the agent's rooms (by its own token); the run token last."""
    files = {}
    async with world.client(AGENT) as c:
        for room in (WOKEN_IN, OTHER_OF_ITS_ROOMS):
            await c.call_tool("post_message", {"room": room, "text": f"seed in {room}"})
            shared = await c.call_tool("share_file", {"room": room, "name": "seed.txt", "content": room})
            files[room] = shared.structured_content["file_id"]
            await c.call_tool("create_task", {"room": room, "title": f"seed task in {room}"})
    return await world.run_token(AGENT, WOKEN_IN), files


@pytest.mark.invariant(87)
async def test_run_tokens_are_minted_with_their_own_prefix(world: World) -> None:
    token, _ = await seed(world)
    assert token.startswith(CredentialKind.RUN.value)


@pytest.mark.invariant(87, 27)
@pytest.mark.parametrize("tool", list(room_calls("x", "f")))
async def test_a_run_token_gets_not_found_in_every_other_room_of_its_agent(world: World, tool: str) -> None:
    token, files = await seed(world)
    # The file of the other room is named by its real id: even that must not let the run in.
    elsewhere = room_calls(OTHER_OF_ITS_ROOMS, files[OTHER_OF_ITS_ROOMS])[tool]
    stranger = room_calls(NOT_ITS_ROOM, files[OTHER_OF_ITS_ROOMS])[tool]
    async with world.client(None, token=token) as run:
        before = world.fingerprint()
        denied = await run.call_tool(tool, elsewhere)
        assert world.fingerprint() == before, "a denied call changed something"
        as_non_member = await run.call_tool(tool, stranger)
        at_home = await run.call_tool(tool, room_calls(WOKEN_IN, files[WOKEN_IN])[tool])
    assert denied.is_error
    assert denied.content[0].text == as_non_member.content[0].text
    assert denied.structured_content == as_non_member.structured_content
    if tool in WITHHELD:
        assert error_code(denied) == "FORBIDDEN_SCOPE"
    else:
        assert denied.content[0].text == "NOT_FOUND: no such room"
        assert not at_home.is_error, at_home.content  # the run works in its own room: the test is not vacuous


@pytest.mark.invariant(87, 31)
@pytest.mark.parametrize("tool", ["assign_task", "update_task"])
async def test_a_run_token_cannot_reach_a_task_of_another_room_by_its_id(world: World, tool: str) -> None:
    token, _ = await seed(world)
    [task] = world.sql(
        "SELECT t.task_id FROM tasks t JOIN rooms r USING (room_id) WHERE r.name = ?", (OTHER_OF_ITS_ROOMS,)
    )
    args = {"assign_task": {"assignee": "alice-codex"}, "update_task": {"status": "in_progress"}}[tool]
    before = world.fingerprint()
    async with world.client(None, token=token) as run:
        denied = await run.call_tool(tool, {"task": task["task_id"], **args})
        missing = await run.call_tool(tool, {"task": "task_doesnotexist", **args})
    assert world.fingerprint() == before
    assert denied.content[0].text == missing.content[0].text == "NOT_FOUND: no such task"


@pytest.mark.invariant(87, 28)
async def test_every_listing_of_a_run_token_is_limited_to_its_room(world: World) -> None:
    token, _ = await seed(world)
    await world.run_token(AGENT, OTHER_OF_ITS_ROOMS)  # another run of the same agent, elsewhere
    async with world.client(None, token=token) as run:
        rooms = (await run.call_tool("list_rooms", {})).structured_content["rooms"]
        who = (await run.call_tool("whoami", {})).structured_content
        runs = (await run.call_tool("list_runs", {})).structured_content["runs"]
        asked_elsewhere = (await run.call_tool("list_runs", {"room": OTHER_OF_ITS_ROOMS})).structured_content["runs"]
        pending = await run.call_tool("list_pending_consents", {})
    assert [r["name"] for r in rooms] == [WOKEN_IN]
    assert who["rooms"] == 1 and who["run_id"] is not None  # whoami itself still answers
    assert {r["room"] for r in runs} == {WOKEN_IN}
    assert asked_elsewhere == []
    # A run never holds `consent`: it lists no pending work in any room.
    assert error_code(pending) == "FORBIDDEN_SCOPE"
    # The agent's own token still sees both rooms and both runs: the limit is the run's, not the agent's.
    async with world.client(AGENT) as agent:
        mine = (await agent.call_tool("list_rooms", {})).structured_content["rooms"]
        all_runs = (await agent.call_tool("list_runs", {})).structured_content["runs"]
    assert {r["name"] for r in mine} == {WOKEN_IN, OTHER_OF_ITS_ROOMS}
    assert {r["room"] for r in all_runs} == {WOKEN_IN, OTHER_OF_ITS_ROOMS}
