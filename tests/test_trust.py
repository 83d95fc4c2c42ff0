"""Agents cannot widen their owner's trust (DESIGN §2, invariant 106).

An agent holding `manage` may only make its owner's consent mode stricter, and an invite it creates waits
for its owner: no tool result holds a code that works, and only the owner's `invite confirm` at the CLI
mints one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.policy import ConsentMode, Standing, agent_may_set_mode
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code

MANAGER = "alice-admin"  # alice's agent with `manage`, in "lobby" and "shared"


async def set_mode(world: World, args: dict[str, Any]) -> Any:
    async with world.client(MANAGER) as c:
        return await c.call_tool("set_consent_mode", args)


def alice_mode(world: World, room: str) -> tuple[str, str | None] | None:
    rows = world.sql(
        "SELECT c.mode, o.handle FROM consent_modes c JOIN rooms r USING (room_id)"
        " JOIN owners a ON a.owner_id = c.owner_id LEFT JOIN owners o ON o.owner_id = c.collaborator_id"
        " WHERE r.name = ? AND a.handle = 'alice'",
        (room,),
    )
    return (rows[0]["mode"], rows[0]["handle"]) if rows else None


async def owner_sets(world: World, room: str, mode: str, collaborator: str | None = None) -> None:
    async with world.hub() as hub:
        await hub.consent.set_mode_as_owner(OPERATOR, room, "alice", mode, collaborator)


# (the owner's mode in "shared" before, what the agent asks for): each trusts someone the mode before did not.
WIDENINGS = [
    pytest.param(None, {"mode": "approve_all"}, id="task_by_task-to-approve_all"),
    pytest.param(None, {"mode": "trust_room"}, id="task_by_task-to-trust_room"),
    pytest.param(None, {"mode": "trust_collaborator", "collaborator": "bob"}, id="task_by_task-to-collaborator"),
    pytest.param(("trust_room", None), {"mode": "approve_all"}, id="trust_room-to-approve_all"),
    pytest.param(("trust_collaborator", "bob"), {"mode": "trust_room"}, id="collaborator-to-trust_room"),
    pytest.param(
        ("trust_collaborator", "bob"),
        {"mode": "trust_collaborator", "collaborator": "carol"},
        id="another-collaborator",
    ),
    # carol arrives after trust_room was set: trust_room never trusted her, so naming her widens.
    pytest.param(
        ("trust_room", None), {"mode": "trust_collaborator", "collaborator": "carol"}, id="late-arrival-collaborator"
    ),
]


async def carol_joins_shared(world: World) -> None:
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "shared", "alice", 3600)
        await hub.invites.accept(OPERATOR, invite.code, "carol", ["carol-claude"])


@pytest.mark.invariant(106, 46)
@pytest.mark.parametrize(("before", "asked"), WIDENINGS)
async def test_an_agent_cannot_widen_its_owners_consent_mode(
    world: World, before: tuple[str, str | None] | None, asked: dict[str, Any]
) -> None:
    if before is not None:
        await owner_sets(world, "shared", *before)
    await carol_joins_shared(world)  # after the owner's mode: trust_room does not cover her
    fingerprint, audit_before = world.fingerprint(), len(world.audit_rows())
    r = await set_mode(world, {"room": "shared", **asked})
    assert error_code(r) == "FORBIDDEN_SCOPE", r.content
    assert "only tighten" in r.content[0].text
    assert world.fingerprint() == fingerprint, "a refused widening changed something"
    [denial] = world.audit_rows()[audit_before:]
    assert (denial["action"], denial["outcome"]) == ("tool.set_consent_mode", "denied")
    assert alice_mode(world, "shared") == before


# (the owner's mode before, what the agent asks for): each trusts no one the mode before did not.
TIGHTENINGS = [
    pytest.param(("approve_all", None), {"mode": "task_by_task"}, id="approve_all-to-task_by_task"),
    pytest.param(("approve_all", None), {"mode": "trust_room"}, id="approve_all-to-trust_room"),
    pytest.param(
        ("approve_all", None), {"mode": "trust_collaborator", "collaborator": "bob"}, id="approve_all-to-collaborator"
    ),
    pytest.param(("trust_room", None), {"mode": "trust_collaborator", "collaborator": "bob"}, id="room-to-present-bob"),
    pytest.param(("trust_collaborator", "bob"), {"mode": "task_by_task"}, id="collaborator-to-task_by_task"),
]


@pytest.mark.invariant(106)
@pytest.mark.parametrize(("before", "asked"), TIGHTENINGS)
async def test_an_agent_may_tighten_its_owners_consent_mode(
    world: World, before: tuple[str, str | None], asked: dict[str, Any]
) -> None:
    await owner_sets(world, "shared", *before)
    r = await set_mode(world, {"room": "shared", **asked})
    assert not r.is_error, r.content
    assert alice_mode(world, "shared") == (asked["mode"], asked.get("collaborator"))


@pytest.mark.invariant(106)
async def test_the_owner_still_widens_at_the_cli(world: World) -> None:
    await owner_sets(world, "shared", "approve_all")
    assert alice_mode(world, "shared") == ("approve_all", None)


# --------------------------------------------------------------------------------------------------------------
# Invites an agent creates wait for the owner
# --------------------------------------------------------------------------------------------------------------

INVITE_CODE = re.compile(r"inv_[A-Za-z0-9_-]{32}")
INVALID = "INVITE_INVALID: this invite code is not valid"


async def cli_json(world: World, *args: str) -> dict[str, Any]:
    def invoke() -> Result:
        env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
        return CliRunner().invoke(cli, [*args, "--json"], env=env, catch_exceptions=False)

    result = await anyio.to_thread.run_sync(invoke)
    return dict(json.loads(result.output))


async def accept_answer(world: World, code: str) -> str:
    async with world.hub() as hub:
        try:
            await hub.invites.accept(OPERATOR, code, "carol", ["carol-claude"])
        except RoomsError as e:
            return str(e)
    return "accepted"


@pytest.mark.invariant(106, 37)
async def test_an_invite_an_agent_creates_holds_no_usable_code_and_waits_for_its_owner(world: World) -> None:
    async with world.client(MANAGER) as c:
        r = await c.call_tool("create_invite", {"room": "lobby", "ttl_s": 600})
    assert not r.is_error, r.content
    made = r.structured_content
    assert made["state"] == "pending_owner"
    assert made["confirm_command"] == f"agent-rooms invite confirm {made['invite_id']} --owner alice"
    text = json.dumps(made) + "".join(c.text for c in r.content)  # type: ignore[union-attr]
    assert INVITE_CODE.search(text) is None, "a tool result holds something shaped like an invite code"
    [row] = world.sql("SELECT state, code_hash FROM invites WHERE invite_id = ?", (made["invite_id"],))
    assert (row["state"], row["code_hash"]) == ("pending_owner", None)  # there is no code to guess or leak
    # Whatever the model tries from what it saw, the answer is the one for any unknown code.
    before = world.fingerprint()
    for attempt in (made["invite_id"], "inv_" + made["invite_id"][-32:].ljust(32, "A"), "inv_" + "A" * 32):
        assert await accept_answer(world, attempt) == INVALID
    assert world.fingerprint() == before


@pytest.mark.invariant(106)
async def test_the_owner_confirms_at_the_cli_and_only_then_is_there_a_code(world: World) -> None:
    async with world.client(MANAGER) as c:
        made = (await c.call_tool("create_invite", {"room": "lobby"})).structured_content
    before = world.fingerprint()
    # Another owner cannot confirm it, nor can anyone confirm an id that does not exist: one answer.
    not_bobs = await cli_json(world, "invite", "confirm", made["invite_id"], "--owner", "bob")
    missing = await cli_json(world, "invite", "confirm", "invite_doesnotexist", "--owner", "alice")
    assert not_bobs == missing and not_bobs["code"] == "NOT_FOUND"
    assert world.fingerprint() == before
    confirmed = await cli_json(world, "invite", "confirm", made["invite_id"], "--owner", "alice")
    code = confirmed["code"]
    assert INVITE_CODE.fullmatch(code) and confirmed["accept_command"].startswith(f"agent-rooms invite accept {code}")
    # Shown once: a second confirm finds nothing waiting, and mints nothing new.
    again = await cli_json(world, "invite", "confirm", made["invite_id"], "--owner", "alice")
    assert again == missing
    assert await accept_answer(world, code) == "accepted"
    [row] = world.sql("SELECT state, used_by FROM invites WHERE invite_id = ?", (made["invite_id"],))
    assert row["state"] == "active" and row["used_by"] is not None
    assert world.sql("SELECT count(*) AS n FROM audit WHERE action = 'invite.confirm'")[0]["n"] == 1


# --------------------------------------------------------------------------------------------------------------
# The strictness rule against an independent oracle: the set of owners each mode trusts
# --------------------------------------------------------------------------------------------------------------

# bob was in the room when the current mode was set, carol arrived after; approve_all trusts anyone at all.
ANYONE = frozenset({"bob", "carol", "a-stranger"})
CURRENT: dict[str, tuple[ConsentMode, str | None, frozenset[str]]] = {
    "task_by_task": (ConsentMode.TASK_BY_TASK, None, frozenset()),
    "collaborator-bob": (ConsentMode.TRUST_COLLABORATOR, "bob", frozenset({"bob"})),
    "collaborator-carol": (ConsentMode.TRUST_COLLABORATOR, "carol", frozenset({"carol"})),
    "trust_room-before-carol": (ConsentMode.TRUST_ROOM, None, frozenset({"bob"})),
    "approve_all": (ConsentMode.APPROVE_ALL, None, ANYONE),
}
# Set now, when both bob and carol are in the room.
CHOSEN: dict[str, tuple[ConsentMode, str | None, frozenset[str]]] = {
    "task_by_task": (ConsentMode.TASK_BY_TASK, None, frozenset()),
    "collaborator-bob": (ConsentMode.TRUST_COLLABORATOR, "bob", frozenset({"bob"})),
    "collaborator-carol": (ConsentMode.TRUST_COLLABORATOR, "carol", frozenset({"carol"})),
    "trust_room-now": (ConsentMode.TRUST_ROOM, None, frozenset({"bob", "carol"})),
    "approve_all": (ConsentMode.APPROVE_ALL, None, ANYONE),
}
PAIRS = [(c, n) for c in CURRENT for n in CHOSEN if CURRENT[c][:2] != CHOSEN[n][:2]]  # re-setting changes nothing


@pytest.mark.invariant(106)
@pytest.mark.parametrize(("current", "chosen"), PAIRS, ids=[f"{c}->{n}" for c, n in PAIRS])
def test_an_agent_may_set_a_mode_exactly_when_it_trusts_no_one_new(current: str, chosen: str) -> None:
    mode, collaborator_id, trusted_before = CURRENT[current]
    new_mode, new_collaborator, trusted_after = CHOSEN[chosen]
    # As the service loads it: the standing in force, judged for the collaborator being named.
    standing = Standing(mode, collaborator_id, proposer_trusted_by_room=new_collaborator == "bob")
    try:
        agent_may_set_mode(standing, new_mode, new_collaborator)
        allowed = True
    except RoomsError as e:
        assert e.code is ErrorCode.FORBIDDEN_SCOPE
        allowed = False
    assert allowed == (trusted_after <= trusted_before)
