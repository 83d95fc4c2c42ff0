"""`agent-rooms status` (DESIGN §9.5): one screen per owner, built from the services' own reads, on the hub's
machine (the operator sees every owner) and on an enrolled device (its own owner only)."""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services.devices import device_actor
from tests.conftest import OPERATOR, World
from tests.test_remote_cli import HubMachine, enrolled
from tests.test_remote_cli import hub as remote_hub  # noqa: F401 (the fixture, by the name below)
from tests.wakeworld import post


def invoke(home: Path, *args: str) -> Result:
    """On a thread of its own: the command runs an event loop of its own, not this test's."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, cli, list(args), env={"AGENT_ROOMS_HOME": str(home)}).result()


def screens(home: Path, *args: str) -> dict[str, dict[str, Any]]:
    done = invoke(home, "status", "--json", *args)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    return {s["owner"]["handle"]: s for s in json.loads(done.stdout)["owners"]}


async def test_each_owner_screen_holds_agents_runs_consents_both_ways_grants_devices_and_listeners(
    world: World,
) -> None:
    async with world.hub() as hub:
        for owner in ("alice", "bob"):
            await hub.accounts.verify_owner(OPERATOR, owner, "in person")
        await hub.grants.add(OPERATOR, "bob", "alice")  # alice's agents may propose work to bob's
        await hub.accounts.set_owner_local(OPERATOR, "bob", False)  # bob's agents wake on his own machine
        code = (await hub.devices.enroll(OPERATOR, "bob", "http://127.0.0.1:1")).code
        login = await hub.devices.redeem(code, "bob-laptop")
        owners = {o.handle: o.owner_id for o in (await hub.accounts.list_owners()).owners}
        device = Human(device_actor(owners["bob"], login.device_id), owners["bob"], login.device_id)
        held = ["bob-claude"]
        await hub.listeners.hello(
            device, "lst_holder1", "bobs-laptop", held, take_over=False, max_running=1, max_running_per_agent=1
        )
    async with world.client("alice-claude") as c:
        made = await c.call_tool("create_task", {"room": "shared", "title": "review", "assignee": "bob-claude"})
    assert not made.is_error, made.content
    proposal = made.structured_content["proposal_id"]  # type: ignore[index]
    await post(world, "bob-claude", "@bob-codex look", room="bobs-den")  # waits for bob's listener

    every = screens(world.settings.home)
    assert sorted(every) == ["alice", "bob", "carol"]
    alice, bob = every["alice"], every["bob"]
    assert {a["handle"]: a["scopes"] for a in bob["agents"]}["bob-codex"] == ["read", "post", "task", "invoke"]
    assert [(r["agent"], r["state"]) for r in bob["runs"]] == [("bob-codex", "waiting_for_listener")]
    assert [p["proposal_id"] for p in bob["consents_waiting_on_owner"]] == [proposal]
    assert [(p["proposal_id"], p["target_owner"]) for p in alice["consents_waiting_on_others"]] == [(proposal, "bob")]
    assert alice["consents_waiting_on_owner"] == [] and bob["consents_waiting_on_others"] == []
    assert (
        [(g["from_owner"], g["to_owner"]) for g in bob["grants"]]
        == [("bob", "alice")]
        == [(g["from_owner"], g["to_owner"]) for g in alice["grants"]]
    )
    assert [d["name"] for d in bob["devices"]] == ["bob-laptop"] and alice["devices"] == []
    [listener] = bob["listeners"]
    assert (listener["holder"], listener["device"], listener["agents"]) == ("lst_holder1", "bob-laptop", ["bob-claude"])
    assert listener["host"].endswith("bobs-laptop") and alice["listeners"] == []
    assert list(screens(world.settings.home, "--owner", "bob")) == ["bob"]
    text = invoke(world.settings.home, "status", "--owner", "bob").stdout
    for said in ("bob (verified; agents woken by their listener)", "waiting_for_listener", proposal, "bob-laptop"):
        assert said in text, text
    missing = invoke(world.settings.home, "status", "--owner", "nobody")
    assert missing.exit_code == 1 and missing.stderr.startswith("NOT_FOUND")


async def test_on_a_device_status_shows_its_own_owner_only(remote_hub: HubMachine, tmp_path: Path) -> None:  # noqa: F811
    hub = remote_hub
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    await bob.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    before = hub.fingerprint()
    mine = await bob.ok("status")
    assert [s["owner"]["handle"] for s in mine["owners"]] == ["bob"]
    assert [a["handle"] for a in mine["owners"][0]["agents"]] == ["bob-claude"]
    assert [d["name"] for d in mine["owners"][0]["devices"]] == ["bob-laptop"]
    # Another owner's screen is refused, as any action for another owner is; a read changes nothing.
    await bob.refused("FORBIDDEN_SCOPE", "status", "--owner", "alice")
    assert hub.fingerprint() == before


async def test_status_lists_the_listeners_that_matter_not_every_one_that_ever_ran(world: World) -> None:
    """A listener live now (heard from within the lease time) or holding an agent is shown; one long gone and
    holding nothing, and any of a revoked device, are history, kept in the audit log, not in `status`."""
    async with world.hub() as hub:
        await hub.accounts.set_owner_local(OPERATOR, "bob", False)
        owners = {o.handle: o.owner_id for o in (await hub.accounts.list_owners()).owners}
        devices = {}
        for name in ("bob-laptop", "bob-old-vm"):
            code = (await hub.devices.enroll(OPERATOR, "bob", "http://127.0.0.1:1")).code
            login = await hub.devices.redeem(code, name)
            devices[name] = Human(device_actor(owners["bob"], login.device_id), owners["bob"], login.device_id)
        for holder, device, agents in (
            ("lst_gone_long_ago", "bob-laptop", []),  # a Ctrl-C'd listener of yesterday
            ("lst_on_the_vm", "bob-old-vm", ["bob-codex"]),
            ("lst_live_now", "bob-laptop", ["bob-claude"]),
        ):
            await hub.listeners.hello(
                devices[device], holder, "host", agents, take_over=False, max_running=1, max_running_per_agent=1
            )
        await hub.devices.revoke(Human(OPERATOR), devices["bob-old-vm"].device_id or "")
    long_ago = "2026-01-01T00:00:00.000000Z"
    conn = sqlite3.connect(world.db)
    with conn:  # as if it last said hello long ago
        conn.execute("UPDATE listeners SET seen_at = ?, started_at = ? WHERE holder = 'lst_gone_long_ago'",
                     (long_ago, long_ago))  # fmt: skip
    conn.close()
    [bob] = screens(world.settings.home, "--owner", "bob").values()
    assert [(x["holder"], x["agents"]) for x in bob["listeners"]] == [("lst_live_now", ["bob-claude"])]
