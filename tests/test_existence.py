"""Existence never leaks (DESIGN §3, invariant 82): for every tool and every id-like argument, naming a thing
that exists but is not the caller's gets the very answer that naming nothing gets, code and words alike.

The caller is an agent of alice holding every scope, so no scope check answers first. The hidden things are
bob's and carol's: a room alice is not in, a file and a task there, a proposal between them, bob's agents
and one of their runs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.store import queries
from tests.conftest import AGENTS, OPERATOR, World

CALLER = "alice-all"
MISSING = {"room": "room_doesnotexist", "task": "task_doesnotexist", "file": "file_doesnotexist"}


@dataclass(frozen=True)
class Hidden:
    room_id: str
    file_id: str
    task_id: str
    proposal_id: str
    run_id: str
    own_task_id: str


async def hide_things(world: World) -> Hidden:
    """alice-all (every scope) in the lobby; in bobs-den, out of its sight, a file, a task offered to carol
    (a pending proposal) and a running run of bob-codex."""
    async with world.hub() as hub:
        scopes = parse_scopes("read,post,task,invoke,consent,manage")
        await hub.accounts.add_agent(OPERATOR, CALLER, "alice", AgentTool.CLAUDE, scopes, None)
        world.tokens[CALLER] = (await hub.accounts.issue_token(OPERATOR, CALLER, timedelta(hours=1))).token
        await hub.rooms.add_agent(OPERATOR, "lobby", CALLER)
        invite = await hub.invites.create_as_owner(OPERATOR, "bobs-den", "bob", 3600)
        await hub.invites.accept(OPERATOR, invite.code, "carol", ["carol-claude"])
    await world.trust("carol", "bob")
    async with world.client("bob-claude") as bob:
        shared = await bob.call_tool("share_file", {"room": "bobs-den", "name": "b.txt", "content": "bob's"})
        offered = await bob.call_tool(
            "create_task", {"room": "bobs-den", "title": "for carol", "assignee": "carol-claude"}
        )
    assert offered.structured_content["proposal_id"], offered.content
    async with world.client(CALLER) as me:
        own = await me.call_tool("create_task", {"room": "lobby", "title": "mine"})
    await world.run_token("bob-codex", "bobs-den")
    [room] = world.sql("SELECT room_id FROM rooms WHERE name = 'bobs-den'")
    [run] = world.sql("SELECT run_id FROM runs")
    return Hidden(
        room_id=room["room_id"],
        file_id=shared.structured_content["file_id"],
        task_id=offered.structured_content["task_id"],
        proposal_id=offered.structured_content["proposal_id"],
        run_id=run["run_id"],
        own_task_id=own.structured_content["task_id"],
    )


def room_case(tool: str, **rest: Any) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    return (tool, "room", {"room": "{room_id}", **rest}, {"room": MISSING["room"], **rest})


# (tool, the id-like argument, arguments naming a hidden thing, the same naming nothing). "{...}" fields are
# filled from `Hidden`.
CASES = [
    room_case("get_room"),
    ("get_room", "room-by-name", {"room": "bobs-den"}, {"room": "no-such-room"}),
    room_case("post_message", text="hi"),
    room_case("read_messages"),
    room_case("wait_for_messages", after=0, timeout_s=1),
    room_case("share_file", name="a.txt", content="x"),
    room_case("list_files"),
    room_case("read_file", file_id="{file_id}"),
    ("read_file", "file_id", {"room": "lobby", "file_id": "{file_id}"}, {"room": "lobby", "file_id": "file_nope"}),
    room_case("create_invite"),
    room_case("create_task", title="t"),
    ("create_task", "assignee", {"room": "lobby", "title": "t", "assignee": "bob-claude"},
     {"room": "lobby", "title": "t", "assignee": "nobody-at-all"}),
    room_case("list_tasks"),
    ("assign_task", "task", {"task": "{task_id}", "assignee": "alice-claude"},
     {"task": MISSING["task"], "assignee": "alice-claude"}),
    ("assign_task", "assignee", {"task": "{own_task_id}", "assignee": "bob-claude"},
     {"task": "{own_task_id}", "assignee": "nobody-at-all"}),
    ("update_task", "task", {"task": "{task_id}", "status": "in_progress"},
     {"task": MISSING["task"], "status": "in_progress"}),
    ("accept_task", "task", {"task": "{task_id}"}, {"task": MISSING["task"]}),
    ("accept_task", "proposal", {"task": "{proposal_id}"}, {"task": "prop_doesnotexist"}),
    ("reject_task", "task", {"task": "{task_id}", "reason": "no"}, {"task": MISSING["task"], "reason": "no"}),
    ("reject_task", "proposal", {"task": "{proposal_id}", "reason": "no"}, {"task": "prop_nope", "reason": "no"}),
    room_case("set_consent_mode", mode="task_by_task"),
    ("set_consent_mode", "collaborator", {"room": "lobby", "mode": "trust_collaborator", "collaborator": "bob"},
     {"room": "lobby", "mode": "trust_collaborator", "collaborator": "nobody-at-all"}),
    room_case("list_pending_consents"),
    ("list_runs", "agent", {"agent": "bob-codex"}, {"agent": "nobody-at-all"}),
    ("list_runs", "room", {"room": "{room_id}"}, {"room": MISSING["room"]}),
    ("stop_agent", "agent", {"agent": "bob-codex"}, {"agent": "nobody-at-all"}),
    ("stop_agent", "run_id", {"agent": "alice-claude", "run_id": "{run_id}"},
     {"agent": "alice-claude", "run_id": "run_doesnotexist"}),
]  # fmt: skip


def fill(args: dict[str, Any], hidden: Hidden) -> dict[str, Any]:
    return {k: v.format(**vars(hidden)) if isinstance(v, str) else v for k, v in args.items()}


def answer(result: Any) -> Any:
    """What the caller learns: the error text and fields, or a success's content."""
    return (result.is_error, [c.text for c in result.content], result.structured_content)


@pytest.mark.invariant(82, 31, 27)
@pytest.mark.parametrize(
    ("tool", "argument", "hidden_args", "missing_args"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
async def test_exists_but_not_yours_answers_as_does_not_exist(
    world: World, tool: str, argument: str, hidden_args: dict[str, Any], missing_args: dict[str, Any]
) -> None:
    hidden = await hide_things(world)
    async with world.client(CALLER) as me:
        before = world.fingerprint()
        to_hidden = await me.call_tool(tool, fill(hidden_args, hidden))
        assert world.fingerprint() == before, "naming another's thing changed something"
        to_nothing = await me.call_tool(tool, fill(missing_args, hidden))
    assert answer(to_hidden) == answer(to_nothing)
    # A success here is an empty listing (list_runs filters); everything else is a refusal.
    assert to_hidden.is_error or to_hidden.structured_content["runs"] == []


@pytest.mark.invariant(82)
async def test_a_mention_of_an_agent_elsewhere_is_refused_as_one_that_does_not_exist(world: World) -> None:
    await hide_things(world)
    async with world.client(CALLER) as me:
        r = await me.call_tool("post_message", {"room": "lobby", "text": "hi", "mentions": ["bob-codex", "no-one"]})
    elsewhere, nobody = r.structured_content["mentions"]
    assert (elsewhere["outcome"], elsewhere["code"]) == (nobody["outcome"], nobody["code"]) == ("refused", "NOT_FOUND")


@pytest.mark.invariant(82)
async def test_audit_tails_names_show_an_owner_only_what_that_owner_can_see(world: World) -> None:
    """`audit tail` puts handles in place of ids; for an owner's device only its own handle, the rooms it is in
    and the agents there: a name for any other id would say that it exists."""
    conn = sqlite3.connect(world.db)
    conn.row_factory = sqlite3.Row
    try:
        ids = {r[0] for r in conn.execute("SELECT owner_id FROM owners UNION SELECT agent_id FROM agents")}
        ids |= {r[0] for r in conn.execute("SELECT room_id FROM rooms")}
        [bob] = [r[0] for r in conn.execute("SELECT owner_id FROM owners WHERE handle = 'bob'")]
        seen_by_bob = set(queries.display_names(conn, ids, bob).values())
        seen_by_operator = set(queries.display_names(conn, ids, None).values())
    finally:
        conn.close()
    assert seen_by_bob == {
        "bob",
        "bob-claude",
        "bob-codex",
        "bob-admin",
        "alice-claude",
        "alice-admin",
        "shared",
        "bobs-den",
    }
    assert seen_by_operator == {"alice", "bob", "carol", "lobby", "shared", "bobs-den", *AGENTS}
