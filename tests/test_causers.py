"""Whose words cross (DESIGN §4 "Causers", invariants 78 and 102): grants and consent are judged for every
owner whose words reach another owner's agent, not only the one who hands them on, and a run carries the
owners whose words caused it into everything it writes.

The Carol attack: Bob trusts Carol; Alice, whom Bob never granted, gives her task to Carol's agent, which
hands it on to Bob's invoke agent. The transitive one: a run woken by Alice's words mentions another of its
own owner's agents.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.settings import WakeSettings
from tests.conftest import OPERATOR, World, build_world
from tests.test_consent import Calls, add_agent, join
from tests.wakeworld import runs


@pytest.fixture
async def mcp(world: World) -> AsyncIterator[Calls]:
    async with AsyncExitStack() as stack:
        yield Calls(world, stack)


def owner_ids(world: World, *handles: str) -> str:
    """The causers column as stored: owner ids, sorted, as JSON."""
    ids = [world.sql("SELECT owner_id FROM owners WHERE handle = ?", (h,))[0][0] for h in handles]
    return json.dumps(sorted(ids))


async def bob_mode(world: World, mode: str, collaborator: str | None = None) -> None:
    async with world.hub() as hub:
        await hub.consent.set_mode_as_owner(OPERATOR, "shared", "bob", mode, collaborator)


async def carol_holds_alices_task(world: World, mcp: Calls) -> dict[str, Any]:
    """Carol (whom Bob trusts) is in "shared"; Alice's task reaches Carol's agent with Carol's consent."""
    await world.trust("carol", "alice")
    await world.trust("bob", "carol")
    await join(world, "shared", "carol", ["carol-claude"])
    await add_agent(world, "carol-desk", "carol", "read,consent")
    task = await mcp.ok("alice-claude", "create_task", {"room": "shared", "title": "alice's words",
                                                        "body": "run this", "assignee": "carol-claude"})  # fmt: skip
    await mcp.ok("carol-desk", "accept_task", {"task": task["proposal_id"]})
    return task


@pytest.mark.invariant(78)
@pytest.mark.parametrize("mode", ["trust_collaborator", "approve_all"])
async def test_a_task_handed_on_needs_bobs_grant_to_its_creator(world: World, mcp: Calls, mode: str) -> None:
    task = await carol_holds_alices_task(world, mcp)
    await bob_mode(world, mode, "carol" if mode == "trust_collaborator" else None)
    code = await mcp.refused("carol-claude", "assign_task", {"task": task["task_id"], "assignee": "bob-codex"})
    assert code == "NO_GRANT"
    assert runs(world, "bob-codex") == []


@pytest.mark.invariant(78)
async def test_trusting_the_hander_does_not_accept_the_creators_words(world: World, mcp: Calls) -> None:
    task = await carol_holds_alices_task(world, mcp)
    await world.trust("bob", "alice")
    await bob_mode(world, "trust_collaborator", "carol")
    handed = await mcp.ok("carol-claude", "assign_task", {"task": task["task_id"], "assignee": "bob-codex"})
    assert handed["consent_state"] == "pending"
    assert runs(world, "bob-codex") == []
    [shown] = (await mcp.ok("bob-admin", "list_pending_consents", {}))["proposals"]
    assert (shown["proposal_id"], shown["causers"]) == (handed["proposal_id"], ["alice", "carol"])
    # Bob's acceptance covers both owners' words: the wake carries them both, constrained.
    await mcp.ok("bob-admin", "accept_task", {"task": handed["proposal_id"]})
    [run] = runs(world, "bob-codex")
    assert (run["state"], run["constrained"], run["causers"]) == ("queued", 1, owner_ids(world, "alice", "carol"))


@pytest.mark.invariant(78)
async def test_the_creators_verification_is_needed_too(world: World, mcp: Calls) -> None:
    task = await carol_holds_alices_task(world, mcp)
    await world.trust("bob", "alice")
    async with world.hub() as hub:
        await hub.accounts.unverify_owner(OPERATOR, "alice")
    code = await mcp.refused("carol-claude", "assign_task", {"task": task["task_id"], "assignee": "bob-codex"})
    assert code == "IDENTITY_UNVERIFIED"


async def bobs_run_for_alice(world: World, mcp: Calls) -> str:
    """A run of bob-codex woken by Alice's accepted task, as the supervisor would hold it: its run token."""
    await world.trust("bob", "alice")
    task = await mcp.ok("alice-claude", "create_task", {"room": "shared", "title": "t", "body": "b",
                                                        "assignee": "bob-codex"})  # fmt: skip
    await mcp.ok("bob-admin", "accept_task", {"task": task["proposal_id"]})
    [run] = runs(world, "bob-codex")
    assert run["causers"] == owner_ids(world, "alice")
    async with world.hub() as hub:
        # Claimed: running, as the supervisor leaves it.
        await hub.store.write(lambda c: c.execute("UPDATE runs SET state = 'running' WHERE run_id = ?",
                                                  (run["run_id"],)))  # fmt: skip
        await hub.accounts.add_agent(
            OPERATOR, "bob-helper", "bob", AgentTool.CLAUDE, parse_scopes("read,post,task,invoke"), None
        )
        await hub.rooms.add_agent(OPERATOR, "shared", "bob-helper")
        issued = await hub.accounts.issue_run_token(
            OPERATOR, "bob-codex", run["run_id"], timedelta(hours=1), holder=None, lease=0
        )
    return issued.token


@pytest.mark.invariant(102)
@pytest.mark.parametrize(
    "mode, outcome", [("task_by_task", "pending_consent"), ("approve_all", "woken")], ids=["asks", "accepted"]
)
async def test_a_run_caused_by_alice_mentions_its_own_owners_agent_as_alices_words(
    world: World, mcp: Calls, mode: str, outcome: str
) -> None:
    token = await bobs_run_for_alice(world, mcp)
    await bob_mode(world, mode)
    async with world.client(None, token=token) as run:
        posted = await run.call_tool("post_message", {"room": "shared", "text": "@bob-helper do what alice said"})
    [mention] = posted.structured_content["mentions"]
    assert mention["outcome"] == outcome
    woken = runs(world, "bob-helper")
    if outcome == "woken":
        [helper] = woken
        assert (helper["constrained"], helper["causers"]) == (1, owner_ids(world, "alice", "bob"))
        assert helper["depth"] == 2
    else:
        assert woken == []
        [shown] = (await mcp.ok("bob-admin", "list_pending_consents", {}))["proposals"]
        assert shown["causers"] == ["alice", "bob"]


@pytest.mark.invariant(102)
async def test_a_task_a_run_writes_carries_its_causers(world: World, mcp: Calls) -> None:
    token = await bobs_run_for_alice(world, mcp)
    async with world.client(None, token=token) as run:
        made = await run.call_tool("create_task", {"room": "shared", "title": "from alice, really", "body": "x",
                                                   "assignee": "bob-helper"})  # fmt: skip
    assert made.structured_content["consent_state"] == "pending"
    [task] = world.sql("SELECT causers FROM tasks WHERE task_id = ?", (made.structured_content["task_id"],))
    assert task["causers"] == owner_ids(world, "alice", "bob")
    assert runs(world, "bob-helper") == []


@pytest.mark.invariant(102)
async def test_mentions_coalesce_only_with_the_same_causers_and_constraint(world: World, mcp: Calls) -> None:
    token = await bobs_run_for_alice(world, mcp)
    await bob_mode(world, "approve_all")
    for text in ("@bob-helper one", "@bob-helper two"):
        await mcp.ok("bob-claude", "post_message", {"room": "shared", "text": text})
    [own] = runs(world, "bob-helper")
    async with world.client(None, token=token) as run:
        await run.call_tool("post_message", {"room": "shared", "text": "@bob-helper three"})
        await run.call_tool("post_message", {"room": "shared", "text": "@bob-helper four"})
    queued = [(r["constrained"], r["causers"]) for r in runs(world, "bob-helper")]
    assert queued == [(0, owner_ids(world, "bob")), (1, owner_ids(world, "alice", "bob"))]
    assert own["run_id"] == runs(world, "bob-helper")[0]["run_id"]


@pytest.mark.invariant(102)
async def test_another_owners_wakes_are_charged_to_that_owners_queue(tmp_path: Path) -> None:
    """Alice, whom Bob accepts without asking, fills the queue cap with wakes of Bob's agent: the cap is
    charged to her, and Bob's own agents can still be woken."""
    world = await build_world(tmp_path / "home", WakeSettings(enabled=False, max_queued_per_owner=2))
    await world.trust("bob", "alice")
    await bob_mode(world, "approve_all")
    async with AsyncExitStack() as stack:
        mcp = Calls(world, stack)
        for n in range(3):
            task = await mcp.ok("alice-claude", "create_task", {"room": "shared", "title": f"t{n}", "body": "b",
                                                                "assignee": "bob-codex"})  # fmt: skip
            assert task["consent_state"] == "accepted"
        assert len(runs(world, "bob-codex")) == 2  # the third was refused SPAWN_CAP, charged to alice
        posted = await mcp.ok("bob-claude", "post_message", {"room": "bobs-den", "text": "@bob-codex mine"})
    assert posted["mentions"][0]["outcome"] in ("woken", "queued")
    assert len(runs(world, "bob-codex")) == 3


@pytest.mark.invariant(102)
async def test_a_runs_request_accepted_later_still_counts_towards_the_wake_depth(world: World, mcp: Calls) -> None:
    """A run at the depth cap asks another owner's consent to wake: accepting it must not restart the chain."""
    token = await bobs_run_for_alice(world, mcp)
    async with world.hub() as hub:
        await hub.store.write(lambda c: c.execute("UPDATE runs SET depth = 3 WHERE state = 'running'"))
    async with world.client(None, token=token) as run:
        posted = await run.call_tool("post_message", {"room": "shared", "text": "@bob-helper and again"})
    [mention] = posted.structured_content["mentions"]
    assert mention["outcome"] == "pending_consent"
    await mcp.ok("bob-admin", "accept_task", {"task": mention["proposal_id"]})
    assert runs(world, "bob-helper") == []
    [accepted] = [json.loads(r["detail"]) for r in world.audit_rows() if r["action"] == "consent.accept"][-1:]
    assert accepted["wake"] == "refused"
