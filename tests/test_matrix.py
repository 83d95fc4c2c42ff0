"""Every tool against every kind of caller, through a real client: the answer comes from an independent
table, and every denial changes nothing but the audit log (STYLE P14, invariants 21, 22, 27, 28, 31)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from mcp import Client

from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.server import TOOLS
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code

OK = "ok"
F = "FORBIDDEN_SCOPE"
CALLERS = ("member", "manager", "no_scopes", "non_member", "revoked", "run_token")
AGENT_OF = {
    "member": "alice-claude",
    "manager": "alice-admin",
    "no_scopes": "alice-mute",
    "non_member": "bob-claude",
    "revoked": "alice-codex",
    "run_token": "alice-admin",  # a run token of the manager: `manage` and `consent` are withheld
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
    "create_invite": {"member": F, "manager": OK, "no_scopes": F, "non_member": F, "run_token": F},
    # The lobby task was created by the member, unassigned: only its creator acts on it (DESIGN §4).
    "create_task": READS,
    "assign_task": {"member": OK, "manager": F, "no_scopes": F, "non_member": "NOT_FOUND"},
    "list_tasks": READS,
    "update_task": {"member": OK, "manager": F, "no_scopes": F, "non_member": "NOT_FOUND"},
    # approve_all widens the default task_by_task: an owner action, refused to any agent (invariant 106).
    "set_consent_mode": {"member": F, "manager": F, "no_scopes": F, "non_member": F, "run_token": F},
    # Nobody here holds `consent`: scope comes first.
    "list_pending_consents": {"member": F, "manager": F, "no_scopes": F, "non_member": F},
    "accept_task": {"member": F, "manager": F, "no_scopes": F, "non_member": F},
    "reject_task": {"member": F, "manager": F, "no_scopes": F, "non_member": F},
    # Runs of the caller's own owner; stopping needs `manage` (withheld from run tokens).
    "list_runs": {"member": OK, "manager": OK, "no_scopes": F, "non_member": OK},
    "stop_agent": {"member": F, "manager": OK, "no_scopes": F, "non_member": F, "run_token": F},
}
for row in EXPECTED.values():
    row["revoked"] = "UNAUTHENTICATED"
    # A run token acts as its agent (the manager) with `manage` and `consent` withheld.
    row.setdefault("run_token", row["manager"])

WRITES = {
    "post_message",
    "share_file",
    "create_invite",
    "create_task",
    "assign_task",
    "update_task",
    "set_consent_mode",
}


def args_for(tool: str, file_id: str, task_id: str = "task_x") -> dict[str, Any]:
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
        "create_task": {"room": "lobby", "title": "a task"},
        "assign_task": {"task": task_id, "assignee": "alice-codex"},
        "list_tasks": {"room": "lobby"},
        "update_task": {"task": task_id, "status": "in_progress"},
        "set_consent_mode": {"room": "lobby", "mode": "approve_all"},
        "list_pending_consents": {},
        "accept_task": {"task": task_id},
        "reject_task": {"task": task_id, "reason": "no"},
        "list_runs": {},
        "stop_agent": {"agent": "alice-codex"},
    }[tool]


async def prepare(world: World) -> tuple[str, str]:
    """A file and an unassigned task in the lobby, a revoked credential, and a run token."""
    async with world.client("alice-claude") as c:
        shared = await c.call_tool("share_file", {"room": "lobby", "name": "seed.txt", "content": "seed"})
        task = await c.call_tool("create_task", {"room": "lobby", "title": "seed task"})
    async with world.hub() as hub:
        await hub.accounts.revoke_token(OPERATOR, world.token_ids["alice-codex"])
    world.tokens["run_token"] = await world.run_token("alice-admin", "lobby")
    return str(shared.structured_content["file_id"]), str(task.structured_content["task_id"])


def client_for(world: World, caller: str, mode: str) -> Client:
    if caller == "run_token":
        return world.client(None, mode, token=world.tokens["run_token"])
    return world.client(AGENT_OF[caller], mode)


@pytest.mark.invariant(21, 22, 27, 55)
@pytest.mark.parametrize("tool, caller", [(t, c) for t in EXPECTED for c in CALLERS])
async def test_tool_against_caller(world: World, mode: str, tool: str, caller: str) -> None:
    file_id, task_id = await prepare(world)
    before, audit_before = world.fingerprint(), len(world.audit_rows())
    args = args_for(tool, file_id, task_id)
    async with client_for(world, caller, mode) as c:
        result = await c.call_tool(tool, args)
    expected = EXPECTED[tool][caller]
    audit_after = world.audit_rows()
    if expected == OK:
        assert not result.is_error, result.content
        assert (world.fingerprint() != before) == (tool in WRITES)
    else:
        assert result.is_error
        assert error_code(result) == expected
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
            assert denial["target"] == (args.get("room") or args.get("task") or args.get("agent"))


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
    assert error_code(r) == "NOT_FOUND"


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
        "share_file", "list_files", "read_file", "create_invite", "create_task", "assign_task", "list_tasks",
        "update_task", "set_consent_mode", "list_pending_consents", "accept_task", "reject_task", "list_runs",
        "stop_agent",
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
    assert error_code(big_file) == "TOO_LARGE"
    assert error_code(bad_page) == "INVALID_ARGUMENT"
    assert bad_type.content[0].text.startswith("INVALID_ARGUMENT: after")
    assert world.fingerprint() == before


# Cross-owner: the same tools in "shared", where alice's agents offer work to bob's. Written from DESIGN
# §4: the caller's `task` scope, then a grant from the target's owner, then both owners verified; deciding
# needs `consent` on an agent of the target's owner (never a run token); strangers get NOT_FOUND.
# post_message always succeeds; its expected value is the outcome of its mention of bob-codex (invoke).
CROSS_CALLERS = {
    "alice_granted": "alice-claude",
    "alice_no_grant": "alice-claude",
    "alice_unverified": "alice-claude",
    "alice_no_task": "alice-claude",
    "bob_assignee": "bob-claude",
    "bob_consent": "bob-admin",
    "bob_run_token": "bob-admin",
    "carol_consent": "carol-admin",
}
NF = "NOT_FOUND"
CROSS_EXPECTED: dict[str, dict[str, str]] = {
    "create_task": {
        "alice_granted": OK,
        "alice_no_grant": "NO_GRANT",
        "alice_unverified": "IDENTITY_UNVERIFIED",
        "alice_no_task": F,
        "bob_assignee": OK,  # bob's agent giving bob's agent work: nothing crosses
        "bob_consent": NF,
        "bob_run_token": NF,
        "carol_consent": NF,
    },
    "assign_task": {  # the unassigned task alice-claude made, to bob-claude
        "alice_granted": OK,
        "alice_no_grant": "NO_GRANT",
        "alice_unverified": "IDENTITY_UNVERIFIED",
        "alice_no_task": F,
        "bob_assignee": F,  # neither its creator nor its assignee
        "bob_consent": NF,
        "bob_run_token": NF,
        "carol_consent": NF,
    },
    "update_task": {  # the pending task offered to bob-claude, moved to in_progress
        "alice_granted": OK,  # its creator
        "alice_no_grant": OK,
        "alice_unverified": OK,
        "alice_no_task": F,
        "bob_assignee": "CONSENT_PENDING",
        "bob_consent": NF,
        "bob_run_token": NF,
        "carol_consent": NF,
    },
    "accept_task": {
        "alice_granted": F,
        "alice_no_grant": F,
        "alice_unverified": F,
        "alice_no_task": F,
        "bob_assignee": F,
        "bob_consent": OK,
        "bob_run_token": F,
        "carol_consent": NF,
    },
    "list_pending_consents": {
        "alice_granted": F,
        "alice_no_grant": F,
        "alice_unverified": F,
        "alice_no_task": F,
        "bob_assignee": F,
        "bob_consent": OK,
        "bob_run_token": F,
        "carol_consent": OK,  # an empty list: nothing waits on carol
    },
    "post_message": {
        "alice_granted": "pending_consent",
        "alice_no_grant": "refused:NO_GRANT",
        "alice_unverified": "refused:IDENTITY_UNVERIFIED",
        "alice_no_task": "refused:FORBIDDEN_SCOPE",
        "bob_assignee": "woken",  # bob's own agent, which holds invoke
        "bob_consent": NF,
        "bob_run_token": NF,
        "carol_consent": NF,
    },
}
CROSS_EXPECTED["reject_task"] = CROSS_EXPECTED["accept_task"]
CROSS_WRITES = {"create_task", "assign_task", "update_task", "accept_task", "reject_task", "post_message"}


async def prepare_cross(world: World, caller: str) -> dict[str, str]:
    """bob grants alice; alice-claude offers bob-claude a task (pending) and makes one unassigned; then
    the caller's situation is set up: the grant revoked, alice unverified, a scope removed, a run token."""
    await world.trust("bob", "alice")
    async with world.client("alice-claude") as c:
        offered = await c.call_tool("create_task", {"room": "shared", "title": "offer", "assignee": "bob-claude"})
        loose = await c.call_tool("create_task", {"room": "shared", "title": "loose"})
    async with world.hub() as hub:
        if caller == "alice_no_grant":
            await hub.grants.revoke(OPERATOR, "bob", "alice")
        elif caller == "alice_unverified":
            await hub.accounts.unverify_owner(OPERATOR, "alice")
        elif caller == "alice_no_task":
            await hub.accounts.set_scopes(OPERATOR, "alice-claude", parse_scopes("read,post"))
        elif caller == "bob_run_token":
            world.tokens["bob_run_token"] = await world.run_token("bob-admin", "bobs-den")
        elif caller == "carol_consent":
            scopes = parse_scopes("read,post,task,consent")
            await hub.accounts.add_agent(OPERATOR, "carol-admin", "carol", AgentTool.CLAUDE, scopes, None)
            issued = await hub.accounts.issue_token(OPERATOR, "carol-admin", timedelta(hours=1))
            world.tokens["carol-admin"] = issued.token
    return {
        "proposal": offered.structured_content["proposal_id"],
        "offered": offered.structured_content["task_id"],
        "loose": loose.structured_content["task_id"],
    }


def cross_args(tool: str, ids: dict[str, str]) -> dict[str, Any]:
    return {
        "create_task": {"room": "shared", "title": "more", "assignee": "bob-claude"},
        "assign_task": {"task": ids["loose"], "assignee": "bob-claude"},
        "update_task": {"task": ids["offered"], "status": "in_progress"},
        "accept_task": {"task": ids["proposal"]},
        "reject_task": {"task": ids["proposal"], "reason": "not now"},
        "list_pending_consents": {},
        "post_message": {"room": "shared", "text": "please look @bob-codex"},
    }[tool]


@pytest.mark.invariant(21, 23, 24, 43)
@pytest.mark.parametrize("tool, caller", [(t, c) for t in CROSS_EXPECTED for c in CROSS_CALLERS])
async def test_cross_owner_tool_against_caller(world: World, mode: str, tool: str, caller: str) -> None:
    ids = await prepare_cross(world, caller)
    before, audit_before = world.fingerprint(), len(world.audit_rows())
    args = cross_args(tool, ids)
    token = world.tokens["bob_run_token"] if caller == "bob_run_token" else None
    async with world.client(None if token else CROSS_CALLERS[caller], mode, token=token) as c:
        result = await c.call_tool(tool, args)
    expected = CROSS_EXPECTED[tool][caller]
    new_audit = world.audit_rows()[audit_before:]
    if tool == "post_message" and expected != NF:
        assert not result.is_error, result.content
        [mention] = result.structured_content["mentions"]
        outcome, _, code = expected.partition(":")
        assert (mention["outcome"], mention["code"]) == (outcome, code or None)
        assert (mention["proposal_id"] is not None) == (outcome == "pending_consent")
    elif expected == OK:
        assert not result.is_error, result.content
        assert (world.fingerprint() != before) == (tool in CROSS_WRITES)
    else:
        assert error_code(result) == expected, result.content
        assert world.fingerprint() == before, "a denied call changed something"
        [denial] = new_audit
        assert (denial["outcome"], denial["action"]) == ("denied", f"tool.{tool}")
        assert denial["target"] == (args.get("room") or args.get("task"))
