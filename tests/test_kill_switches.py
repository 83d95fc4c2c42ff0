"""Kill switches with proven receipts (DESIGN §6): `agent delete`, `room quarantine`, `token revoke`.

Delete and quarantine run through the real `agent-rooms` command, in a process of its own, while a fake CLI
run is in flight under a real supervisor: one wedged in a tool whose shell called setsid, so only SIGKILL
and the sweep end it. What each receipt claims is checked against the world: processes, credentials over
stdio and HTTP, NOT_FOUND for former members, the audit chain.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from agent_rooms_mcp import owner_actions
from agent_rooms_mcp.auth.authenticator import prove_refused
from agent_rooms_mcp.cli.common import receipt_text
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.models import ConsoleLink
from agent_rooms_mcp.principals import Human
from agent_rooms_mcp.services.console_sessions import ConsoleDenied
from agent_rooms_mcp.services.devices import DeviceDenied
from agent_rooms_mcp.settings import WakeSettings
from tests.conftest import OPERATOR, World, build_world
from tests.test_auth import assert_401, in_session, open_legacy_session, raw_http, tool_call
from tests.test_devices import bearer, enroll, login, served
from tests.wakeworld import Fakes, gone, post, runs, supervisor, until

pytestmark = pytest.mark.anyio


async def cli(world: World, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The `agent-rooms` command in a process of its own, on the world's home."""
    env = {**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home)}
    return await anyio.run_process(
        [sys.executable, "-m", "agent_rooms_mcp", *args], env=env, check=False, stdin=subprocess.DEVNULL
    )


async def cli_json(world: World, *args: str) -> dict[str, Any]:
    done = await cli(world, *args, "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def alive(pid: int) -> bool:
    """Whether `pid` names a process that still runs (a zombie waiting for its reaper has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def token_ids(world: World, agent: str) -> set[str]:
    rows = world.sql(
        "SELECT t.token_id FROM tokens t JOIN agents a ON a.agent_id = t.agent_id WHERE a.handle = ?", (agent,)
    )
    return {r["token_id"] for r in rows}


async def wedged_run(woken: World, fakes: Fakes) -> tuple[sqlite3.Row, dict[str, Any]]:
    """alice-bot woken in the lobby, wedged in a tool whose shell called setsid: the run, and the fake's log line
    naming that shell (`gone` follows it, in the sandbox's PID namespace too)."""
    fakes.scenario("tool_orphan")
    await post(woken, "alice-claude", "@alice-bot a long job")
    await until(lambda: any(r["state"] == "running" and r["pid"] for r in runs(woken, "alice-bot")), "the CLI is up")
    call = await until(lambda: next((c for c in fakes.calls() if c.get("orphan_pid")), None), "shell")
    [run] = runs(woken, "alice-bot")
    assert alive(run["pid"]) and not gone(call, "orphan_pid")
    return run, call


URL = "http://127.0.0.1:8765"


def console_code(link: ConsoleLink) -> str:
    """The `LINK.SECRET` code a console login link carries in its query."""
    return parse_qs(urlsplit(link.url).query)["code"][0]


async def tool_error(world: World, agent: str, transport: str, tool: str, args: dict[str, Any]) -> str:
    async with world.session(agent, transport, "auto") as c:
        r = await c.call_tool(tool, args)
    assert r.is_error, r.structured_content
    text: str = r.content[0].text  # type: ignore[union-attr]
    return text


@pytest.mark.invariant(48, 49, 90)
async def test_agent_delete_mid_run_ends_its_processes_and_every_credential_with_a_proven_receipt(
    woken: World, fakes: Fakes
) -> None:
    token = woken.tokens["alice-bot"]
    # The stdio server runs no supervisor of its own: the in-process one holds the run.
    quiet = World(replace(woken.settings, wake=replace(woken.settings.wake, enabled=False)), woken.tokens)
    async with (
        supervisor(woken),
        quiet.session("alice-bot", "stdio", "auto") as stdio,
        raw_http(woken) as http,
    ):
        run, orphan = await wedged_run(woken, fakes)
        # Long-lived sessions over stdio and HTTP, working before the delete.
        session = await open_legacy_session(http, token)
        assert not (await stdio.call_tool("whoami", {})).is_error
        ok = await http.post("/mcp", json=tool_call("whoami", {}), headers=in_session(token, session))
        assert ok.status_code == 200 and not ok.json()["result"]["isError"]
        seq = woken.sql("SELECT max(seq) AS s FROM audit")[0]["s"]
        receipt = await cli_json(woken, "agent", "delete", "alice-bot", "--yes")
        # The agent's token is refused on its next call in each session.
        refused = await stdio.call_tool("whoami", {})
        assert refused.is_error and refused.content[0].text.startswith("UNAUTHENTICATED")  # type: ignore[union-attr]
        assert_401(await http.post("/mcp", json=tool_call("whoami", {}), headers=in_session(token, session)))

    # Every process of the run is gone, the setsid shell too, and the receipt says how it ended.
    assert not alive(run["pid"])
    await until(lambda: gone(orphan, "orphan_pid"), "the setsid shell is gone", 10)
    assert receipt["proven"] is True
    [stopped] = receipt["runs"]
    assert stopped["run_id"] == run["run_id"] and stopped["processes_gone"] is True
    assert (stopped["state"], stopped["stop_signal"]) == ("withdrawn", "SIGKILL")
    # Each credential of the agent, its own and its run's, named and proven refused.
    named = {c["token_id"]: c for c in receipt["credentials"]}
    assert set(named) == token_ids(woken, "alice-bot") and len(named) == 2
    assert {(c["kind"], c["refused"], c["answer"]) for c in named.values()} == {
        ("agent_token", True, "token_revoked"),
        ("run_token", True, "token_revoked"),
    }
    assert {(w["kind"], w["room"]) for w in receipt["withdrawn"]} == {("membership", "lobby")}

    # One transaction: the revocation row, the agent's end and its audit rows, then the supervisor's.
    actions = [r["action"] for r in woken.sql("SELECT action FROM audit WHERE seq > ? ORDER BY seq", (seq,))]
    assert actions[:2] == ["run.withdraw", "agent.delete"] and actions.count("agent.delete") == 1
    assert woken.chain_verifies()
    [revocation] = woken.sql("SELECT * FROM revocations WHERE kind = 'agent'")
    [row] = woken.sql("SELECT agent_id, status, deleted_at FROM agents WHERE handle = 'alice-bot'")
    assert (revocation["subject_id"], revocation["cause"]) == (row["agent_id"], "agent_delete")
    assert row["status"] == "deleted" and row["deleted_at"] == receipt["at"]

    # Nothing of it answers others: it is gone from the room, the agent list, and `agent stop`.
    members = await _members(woken, "alice-claude", "lobby")
    assert "alice-bot" not in members and "alice-claude" in members
    stop = await cli(woken, "agent", "stop", "alice-bot", "--json")
    assert json.loads(stop.stdout)["code"] == "NOT_FOUND"
    listed = await cli_json(woken, "agent", "list")
    assert "alice-bot" not in {a["handle"] for a in listed["agents"]}
    # The handle is never given out again.
    again = await cli(woken, "agent", "add", "alice-bot", "--owner", "alice", "--tool", "claude", "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["code"] == "CONFLICT"
    assert "never reused" in json.loads(again.stdout)["message"]


async def _members(world: World, agent: str, room: str) -> set[str]:
    async with world.client(agent) as c:
        r = await c.call_tool("get_room", {"room": room})
    assert not r.is_error, r.content
    return {m["handle"] for m in r.structured_content["members"]}  # type: ignore[index]


@pytest.mark.invariant(51, 90)
async def test_quarantine_mid_run_stops_the_room_and_it_answers_like_a_room_that_never_existed(
    woken: World, fakes: Fakes
) -> None:
    async with woken.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)
    async with supervisor(woken):
        run, orphan = await wedged_run(woken, fakes)
        before = {r["agent_id"] for r in woken.sql("SELECT x.agent_id FROM room_agents x JOIN rooms r USING (room_id)"
                                                    " WHERE r.name = 'lobby'")}  # fmt: skip
        receipt = await cli_json(woken, "room", "quarantine", "lobby", "--yes")

    assert not alive(run["pid"])
    await until(lambda: gone(orphan, "orphan_pid"), "the setsid shell is gone", 10)
    assert receipt["proven"] is True
    [stopped] = receipt["runs"]
    assert (stopped["run_id"], stopped["state"], stopped["processes_gone"]) == (run["run_id"], "withdrawn", True)
    [credential] = receipt["credentials"]
    assert (credential["kind"], credential["run_id"], credential["refused"]) == ("run_token", run["run_id"], True)
    withdrawn = {(w["kind"], w["id"]) for w in receipt["withdrawn"]}
    assert {i for k, i in withdrawn if k == "membership"} == before and ("invite", invite.invite_id) in withdrawn
    assert (
        woken.sql("SELECT count(*) AS n FROM room_agents x JOIN rooms r USING (room_id) WHERE r.name = 'lobby'")[0]["n"]
        == 0
    )
    assert woken.chain_verifies()

    # Former members get exactly what a name that never existed gets.
    for tool, args in (
        ("read_messages", {}),
        ("post_message", {"text": "hello?"}),
        ("get_room", {}),
        ("list_files", {}),
    ):
        quarantined = await tool_error(woken, "alice-claude", "memory", tool, {"room": "lobby", **args})
        never = await tool_error(woken, "alice-claude", "memory", tool, {"room": "no-such-room", **args})
        assert quarantined == never and quarantined.startswith("NOT_FOUND"), (tool, quarantined)
    rooms = await cli_json(woken, "room", "list")
    assert "lobby" not in {r["name"] for r in rooms["rooms"]}
    for args in (("room", "add", "lobby", "--agent", "alice-claude"), ("invite", "create", "lobby", "--by", "alice")):
        refused = await cli(woken, *args, "--json")
        assert json.loads(refused.stdout)["code"] == "NOT_FOUND", args
    accept = await cli(woken, "invite", "accept", invite.code, "--owner", "bob", "--json")
    assert json.loads(accept.stdout)["code"] == "INVITE_INVALID"

    # The operator's export still reads the archive, members and messages included.
    out = woken.settings.home / "lobby.json"
    done = await cli(woken, "room", "export", "lobby", "--out", str(out))
    assert done.returncode == 0, done.stderr
    archive = json.loads(out.read_text())
    assert archive["quarantined_at"] and {m["agent_id"] for m in archive["members"]} == before
    assert any(m["text"] == "@alice-bot a long job" for m in archive["messages"])
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.invariant(90)
async def test_token_revoke_proves_the_token_refused_without_counting_a_failed_authentication(world: World) -> None:
    spare = await cli_json(world, "token", "issue", "alice-claude")
    failures = world.sql("SELECT * FROM auth_failures")
    seq = world.sql("SELECT max(seq) AS s FROM audit")[0]["s"]
    receipt = await cli_json(world, "token", "revoke", world.token_ids["alice-claude"])
    assert receipt["status"] == "revoked" and receipt["proven"] is True
    assert receipt["credentials"] == [
        {
            "token_id": world.token_ids["alice-claude"],
            "kind": "agent_token",
            "run_id": None,
            "refused": True,
            "answer": "token_revoked",
        }
    ]
    # The proof is a lookup, not an authentication: one audit row (the revoke's), no failure counted.
    assert [r["action"] for r in world.sql("SELECT action FROM audit WHERE seq > ?", (seq,))] == ["token.revoke"]
    assert world.sql("SELECT * FROM auth_failures") == failures
    assert len(world.sql("SELECT * FROM revocations WHERE subject_id = ?", (world.token_ids["alice-claude"],))) == 1
    # The revoked token fails its next call; the agent's other token goes on working.
    assert (await tool_error(world, "alice-claude", "memory", "whoami", {})).startswith("UNAUTHENTICATED")
    async with world.client(None, token=spare["token"]) as c:
        assert not (await c.call_tool("whoami", {})).is_error


@pytest.mark.invariant(90)
async def test_the_proof_answers_accepted_for_a_credential_that_still_works(world: World) -> None:
    """The proof can fail: a token nobody revoked is found accepted, so a receipt could never claim it."""
    async with world.hub() as hub:
        issuer = hub.containment._issuer
    live, gone = world.token_ids["alice-claude"], world.token_ids["bob-claude"]
    async with world.hub() as hub:
        await hub.accounts.revoke_token(OPERATOR, gone)
    assert prove_refused(world.db, issuer, [live, gone, "tok_nothing"]) == {
        live: None,
        gone: "token_revoked",
        "tok_nothing": "unknown_token",
    }


async def test_a_run_whose_end_nobody_confirms_is_reported_stop_pending_never_stopped(tmp_path: Path) -> None:
    # No supervisor holds alice's run, and bob's is held by his laptop's listener, which has gone quiet:
    # the ladder's time passes and neither end is recorded.
    quick = WakeSettings(enabled=False, grace_int_s=0.1, grace_term_s=0.1, lease_s=0.3, poll_s=0.05)
    world = await build_world(tmp_path / "home", quick)
    await world.run_token("alice-claude", "lobby")
    await world.run_token("bob-claude", "bobs-den")
    code = await enroll(world, "bob")
    async with world.hub() as hub:
        device = await hub.devices.redeem(code, "laptop")
    seen = "2026-01-01T00:00:00.000000Z"
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute(
            "INSERT INTO listeners (holder, device_id, owner_id, host, max_running, max_running_per_agent,"
            " started_at, seen_at) SELECT 'lis_quiet', ?, owner_id, 'laptop', 1, 1, ?, ? FROM owners"
            " WHERE handle = 'bob'",
            (device.device_id, seen, seen),
        )
        conn.execute("UPDATE runs SET lease_holder = 'lis_quiet' WHERE agent_id IN"
                     " (SELECT agent_id FROM agents WHERE handle = 'bob-claude')")  # fmt: skip
    conn.close()
    async with world.hub() as hub:
        alices = await hub.containment.delete_agent(OPERATOR, "alice-claude")
        bobs = await hub.containment.delete_agent(OPERATOR, "bob-claude")
    for receipt, listener, contact in ((alices, None, None), (bobs, "lis_quiet", seen)):
        [run] = receipt.runs
        assert (run.state, run.processes_gone, receipt.proven) == ("stop_pending", False, False)
        assert (run.listener, run.last_contact) == (listener, contact)
        # Its credentials are refused all the same: only the processes' end is unconfirmed.
        assert all(c.refused for c in receipt.credentials) and len(receipt.credentials) == 2
    # What the command prints says so (and it exits 1 on a receipt not proven).
    text = receipt_text(bobs)
    assert "stop_pending" in text and "lis_quiet" in text and text.endswith("NOT PROVEN: see the lines above")


async def test_a_queued_wake_is_withdrawn_by_the_delete(woken: World) -> None:
    await post(woken, "alice-claude", "@alice-bot when you can")  # no supervisor: the wake only queues
    [queued] = runs(woken, "alice-bot")
    async with woken.hub() as hub:
        receipt = await hub.containment.delete_agent(OPERATOR, "alice-bot")
    assert ("wake", queued["run_id"]) in {(w.kind, w.id) for w in receipt.withdrawn}
    [run] = runs(woken, "alice-bot")
    assert (run["state"], run["outcome"]) == ("withdrawn", "withdrawn:agent_deleted")
    assert receipt.proven and [r.processes_gone for r in receipt.runs] == [True]


async def test_denied_kill_switches_change_nothing(world: World) -> None:
    code = await enroll(world)  # bob's laptop
    async with world.hub() as hub:
        device = await hub.devices.redeem(code, "laptop")
        bob = await hub.devices.authenticate(device.credential)
        before = world.fingerprint()
        denied = {
            ("agent.delete", "alice-claude"): ErrorCode.NOT_FOUND,  # another owner's agent looks missing
            ("agent.delete", "nobody-here"): ErrorCode.NOT_FOUND,
            ("token.revoke", world.token_ids["alice-claude"]): ErrorCode.NOT_FOUND,
            ("room.quarantine", "bobs-den"): ErrorCode.FORBIDDEN_SCOPE,  # an operator action
            ("room.export", "bobs-den"): ErrorCode.FORBIDDEN_SCOPE,
            ("owner.remove", "alice"): ErrorCode.FORBIDDEN_SCOPE,
        }
        for (name, ref), code_wanted in denied.items():
            key = {"agent.delete": "handle", "token.revoke": "token_id", "owner.remove": "handle"}.get(name, "room")
            with pytest.raises(RoomsError) as refused:
                await owner_actions.perform(hub, bob, name, {key: ref})
            assert refused.value.code is code_wanted, name
        with pytest.raises(RoomsError) as refused:
            await hub.containment.quarantine_room(OPERATOR, "no-such-room")
        assert refused.value.code is ErrorCode.NOT_FOUND
    assert world.fingerprint() == before
    # Without --yes and without a terminal the command refuses before anything.
    before = world.fingerprint()
    for args in (("agent", "delete", "alice-claude"), ("room", "quarantine", "lobby")):
        refused_cli = await cli(world, *args)
        assert refused_cli.returncode == 2 and b"--yes" in refused_cli.stderr, args
    assert world.fingerprint() == before


async def test_the_owner_api_deletes_an_owners_own_agent_with_its_receipt(world: World) -> None:
    async with served(world.settings) as api:
        credential = (await login(api, await enroll(world))).json()["credential"]  # bob's laptop
        before = world.fingerprint()
        theirs = await api.post(
            "/owner/v1/actions/agent.delete", json={"handle": "alice-claude"}, headers=bearer(credential)
        )
        assert theirs.status_code == 404 and world.fingerprint() == before
        r = await api.post("/owner/v1/actions/agent.delete", json={"handle": "bob-codex"}, headers=bearer(credential))
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["proven"] and {c["answer"] for c in receipt["credentials"]} == {"token_revoked"}
    [row] = world.sql("SELECT actor_kind, via FROM audit WHERE action = 'agent.delete'")
    assert (row["actor_kind"], row["via"]) == ("owner", "device")


@pytest.mark.invariant(49)
async def test_a_deleted_agent_shows_only_in_its_owners_export(world: World) -> None:
    async with world.hub() as hub:
        await hub.containment.delete_agent(OPERATOR, "bob-codex")
    bobs, alices = await enroll(world, "bob"), await enroll(world, "alice")
    async with world.hub() as hub:
        bob = await hub.devices.authenticate((await hub.devices.redeem(bobs, "bob-laptop")).credential)
        alice = await hub.devices.authenticate((await hub.devices.redeem(alices, "alice-laptop")).credential)
        # Its owner sees the archive: the memberships it had, ended by the delete, and its revoked tokens.
        mine = (await owner_actions.perform(hub, bob, "agent.export", {"handle": "bob-codex"})).model_dump()
        assert (mine["status"], mine["agent"]["handle"]) == ("deleted", "bob-codex") and mine["deleted_at"]
        assert {(m["room"], m["reason"]) for m in mine["memberships"]} == {
            ("bobs-den", "agent_deleted"),
            ("shared", "agent_deleted"),
        }
        assert mine["tokens"] and all(t["revoked_at"] for t in mine["tokens"])
        # Anyone else meets what a handle never used meets; bob's own listings no longer show it either.
        answers = []
        for ref in ("bob-codex", "never-was"):
            with pytest.raises(RoomsError) as refused:
                await owner_actions.perform(hub, alice, "agent.export", {"handle": ref})
            answers.append((refused.value.code, refused.value.message))
        assert answers[0] == answers[1] and answers[0][0] is ErrorCode.NOT_FOUND
        listed = (await owner_actions.perform(hub, bob, "agent.list", {})).model_dump()
        assert "bob-codex" not in {a["handle"] for a in listed["agents"]}
        tokens = (await owner_actions.perform(hub, bob, "token.list", {})).model_dump()
        assert "bob-codex" not in {t["agent"] for t in tokens["tokens"]}
    members = await _members(world, "bob-claude", "bobs-den")
    assert members == {"bob-claude"}
    # The operator's CLI reads the export too.
    exported = await cli(world, "agent", "export", "bob-codex")
    assert json.loads(exported.stdout)["status"] == "deleted"


@pytest.mark.invariant(48, 90)
async def test_owner_remove_deletes_every_agent_and_revokes_devices_and_grants_with_a_proven_receipt(
    world: World,
) -> None:
    await world.trust("bob", "alice")
    await world.trust("alice", "bob")
    code = await enroll(world, "bob")
    async with world.hub() as hub:
        device = await hub.devices.redeem(code, "laptop")
    bobs = {r["agent_id"] for r in world.sql("SELECT x.agent_id FROM room_agents x JOIN agents a USING (agent_id)"
                                             " JOIN owners o USING (owner_id) WHERE o.handle = 'bob'")}  # fmt: skip
    tokens = set().union(*(token_ids(world, h) for h in ("bob-claude", "bob-codex", "bob-admin")))
    async with world.hub() as hub:
        invite = await hub.invites.create_as_owner(OPERATOR, "shared", "bob", 3600)
        alices = await hub.invites.create_as_owner(OPERATOR, "shared", "alice", 3600)
        # Bob at the console: one session open, one login link not yet used.
        session = await hub.console.redeem(
            console_code(await hub.console.mint_link(Human(OPERATOR), "bob", URL)), secure=False
        )
        unused = console_code(await hub.console.mint_link(Human(OPERATOR), "bob", URL))
    seq = world.sql("SELECT max(seq) AS s FROM audit")[0]["s"]

    receipt = await cli_json(world, "owner", "remove", "bob", "--yes")

    assert receipt["proven"] is True and receipt["subject"] == "bob"
    answers = {c["token_id"]: (c["kind"], c["answer"]) for c in receipt["credentials"]}
    assert answers == {
        **{t: ("agent_token", "token_revoked") for t in tokens},
        device.device_id: ("device", "device_revoked"),
    }
    withdrawn = [(w["kind"], w["id"]) for w in receipt["withdrawn"]]
    assert sorted(k for k, _ in withdrawn if k == "grant") == ["grant", "grant"]
    assert [i for k, i in withdrawn if k == "console_session"] == [session.session_id]
    async with world.hub() as hub:
        with pytest.raises(ConsoleDenied, match="console_session_revoked"):
            await hub.console.authenticate(session.cookie)
        with pytest.raises(ConsoleDenied, match="used_console_link"):
            await hub.console.redeem(unused, secure=False)
    # The invite Bob gave is void with him; Alice's to the same room still stands.
    assert [i for k, i in withdrawn if k == "invite"] == [invite.invite_id]
    assert {i for k, i in withdrawn if k == "membership"} == bobs
    assert {w["id"] for w in receipt["withdrawn"] if w["kind"] == "room_membership"} == {
        r["room_id"] for r in world.sql("SELECT room_id FROM rooms WHERE name IN ('bobs-den', 'shared')")
    }
    actions = [r["action"] for r in world.sql("SELECT action FROM audit WHERE seq > ? ORDER BY seq", (seq,))]
    assert actions == ["agent.delete"] * 3 + ["owner.remove"]
    assert world.chain_verifies()
    assert world.sql("SELECT count(*) AS n FROM grants WHERE revoked_at IS NULL")[0]["n"] == 0

    # Refused in practice: the device and every agent token; the owner gone and the handle retired.
    async with world.hub() as hub:
        with pytest.raises(DeviceDenied):
            await hub.devices.authenticate(device.credential)
    assert (await tool_error(world, "bob-claude", "memory", "whoami", {})).startswith("UNAUTHENTICATED")
    listed = await cli_json(world, "owner", "list")
    assert "bob" not in {o["handle"] for o in listed["owners"]}
    again = await cli(world, "owner", "add", "bob", "--json")
    assert json.loads(again.stdout)["code"] == "CONFLICT" and "never reused" in json.loads(again.stdout)["message"]
    adopt = await cli(world, "agent", "add", "bob-new", "--owner", "bob", "--tool", "claude", "--json")
    assert json.loads(adopt.stdout)["code"] == "NOT_FOUND"
    for code, answer in ((invite.code, "INVITE_INVALID"), (alices.code, None)):
        accepted = await cli(world, "invite", "accept", code, "--owner", "carol", "--agent", "carol-claude", "--json")
        assert json.loads(accepted.stdout).get("code") == answer, accepted.stdout


@pytest.mark.invariant(51)
async def test_a_quarantined_rooms_tasks_and_files_answer_former_members_as_missing_ones_do(world: World) -> None:
    async with world.client("alice-claude") as c:
        task = (await c.call_tool("create_task", {"room": "lobby", "title": "t"})).structured_content
        shared = await c.call_tool("share_file", {"room": "lobby", "name": "a.txt", "content": "alice's"})
    file_id = shared.structured_content["file_id"]  # type: ignore[index]
    async with world.hub() as hub:
        await hub.containment.quarantine_room(OPERATOR, "lobby")
    calls = [
        ("update_task", {"task": task["task_id"], "status": "done"}, {"task": "task_doesnotexist", "status": "done"}),  # type: ignore[index]
        (
            "assign_task",
            {"task": task["task_id"], "assignee": "alice-codex"},
            {"task": "task_doesnotexist", "assignee": "alice-codex"},
        ),  # type: ignore[index]
        ("read_file", {"room": "lobby", "file_id": file_id}, {"room": "no-such-room", "file_id": "file_doesnotexist"}),
        ("list_tasks", {"room": "lobby"}, {"room": "no-such-room"}),
    ]
    before = world.fingerprint()
    for tool, hidden, missing in calls:
        gone = await tool_error(world, "alice-claude", "memory", tool, hidden)
        never = await tool_error(world, "alice-claude", "memory", tool, missing)
        assert gone == never and gone.startswith("NOT_FOUND"), (tool, gone, never)
    assert world.fingerprint() == before


async def test_a_pending_proposal_of_a_deleted_agent_is_withdrawn_with_it(world: World) -> None:
    await world.trust("alice", "bob")
    async with world.client("bob-claude") as bob:
        offered = await bob.call_tool(
            "create_task", {"room": "shared", "title": "for alice", "assignee": "alice-claude"}
        )
    proposal = offered.structured_content["proposal_id"]  # type: ignore[index]
    assert world.sql("SELECT state FROM proposals WHERE proposal_id = ?", (proposal,))[0]["state"] == "pending"
    async with world.hub() as hub:
        receipt = await hub.containment.delete_agent(OPERATOR, "bob-claude")
    assert ("proposal", proposal) in {(w.kind, w.id) for w in receipt.withdrawn}
    assert world.sql("SELECT state FROM proposals WHERE proposal_id = ?", (proposal,))[0]["state"] == "withdrawn"


@pytest.mark.invariant(48)
async def test_a_deleted_agents_words_start_nobodys_cli(woken: World) -> None:
    """A wake the deleted agent's mention queued is withdrawn with it: its words never reach a CLI."""
    await post(woken, "alice-claude", "@alice-bot please run this for me")
    [queued] = runs(woken, "alice-bot")
    assert queued["state"] in ("queued", "waiting_for_listener")
    receipt = await cli_json(woken, "agent", "delete", "alice-claude", "--yes")
    [run] = runs(woken, "alice-bot")
    assert run["state"] == "withdrawn"
    assert ("wake", run["run_id"]) in {(w["kind"], w["id"]) for w in receipt["withdrawn"]}


@pytest.mark.invariant(51)
async def test_a_run_only_its_listener_can_end_is_never_reported_stopped_and_leaves_no_proof(world: World) -> None:
    await world.run_token("bob-claude", "bobs-den")
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute("UPDATE runs SET state = 'stop_pending', lease_holder = 'lis_x', spawned_at = started_at")
    conn.close()
    for args in (("room", "quarantine", "bobs-den"), ("agent", "delete", "bob-claude")):
        done = await cli(world, *args, "--yes", "--json")
        receipt = json.loads(done.stdout)
        assert done.returncode == 1 and receipt["proven"] is False, (args, receipt)
        assert [r["state"] for r in receipt["runs"]] == ["stop_pending"], (args, receipt)


async def test_a_quarantined_rooms_runs_are_gone_from_list_runs(world: World) -> None:
    await world.run_token("bob-claude", "bobs-den")
    async with world.hub() as hub:
        await hub.containment.quarantine_room(OPERATOR, "bobs-den")
    async with world.client("bob-codex") as c:
        listed = await c.call_tool("list_runs", {})
    assert listed.structured_content["runs"] == []  # type: ignore[index]
