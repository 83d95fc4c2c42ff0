"""Two machines, honestly separated: a real hub process (`serve --http`, its own home) and an owner's machine
(another `AGENT_ROOMS_HOME` and `HOME`) running the `agent-rooms` CLI as separate processes (DESIGN §9.1).

The owner's machine never sees the hub's home: everything it does goes through `login` and the owner API.
The operator's commands run with the CLI on the hub's home, as they would on the hub's machine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp import audit
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.clock import now_utc
from tests.conftest import fingerprint
from tests.fakes.common import write_wrapper
from tests.hubprocess import CLI, serve_http


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Machine:
    """An owner's machine: its own home and HOME, each command a process of its own."""

    def __init__(self, root: Path, name: str) -> None:
        self.home = root / name / "agent-rooms"
        (root / name).mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(root / name), "AGENT_ROOMS_HOME": str(self.home)}
        self.env.pop("AGENT_ROOMS_HUB", None)

    async def ar(self, *args: str) -> Done:
        done = await anyio.run_process([*CLI, *args], env=self.env, check=False)
        return Done(done.returncode, done.stdout.decode(), done.stderr.decode())

    async def ok(self, *args: str) -> Any:
        done = await self.ar(*args, "--json")
        assert done.code == 0, (args, done.out, done.err)
        return done.json()

    async def refused(self, code: str, *args: str) -> Done:
        done = await self.ar(*args, "--json")
        assert done.code == 1 and done.json()["code"] == code, (args, done.out, done.err)
        return done


class HubCli(Machine):
    """The hub's machine. The operator's CLI runs in-process here (the box is slow to start processes); what
    it does is not under test, only that it happens on the hub's home."""

    async def ar(self, *args: str) -> Done:
        def invoke() -> Done:
            done = CliRunner().invoke(cli, list(args), env={"AGENT_ROOMS_HOME": str(self.home)})
            return Done(done.exit_code, done.stdout, done.stderr)

        return await anyio.to_thread.run_sync(invoke)


@dataclass
class HubMachine:
    machine: Machine
    url: str

    def fingerprint(self) -> str:
        return fingerprint(self.machine.home / "hub.db")

    async def owner_id(self, handle: str) -> str:
        return next(o["owner_id"] for o in (await self.machine.ok("owner", "list"))["owners"] if o["handle"] == handle)

    async def audit(self) -> list[dict[str, Any]]:
        """Every row of the hub's audit log, as the operator reads it on the hub's machine."""
        rows: list[dict[str, Any]] = await self.machine.ok("audit", "tail", "-n", "10000")
        return rows

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.machine.home / "hub.db")
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubMachine]:
    machine = HubCli(tmp_path, "hub")
    assert (await machine.ar("init")).code == 0
    for owner in ("alice", "bob"):
        await machine.ok("owner", "add", owner)
        await machine.ok("owner", "verify", owner)
    await machine.ok("agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude")
    await machine.ok("room", "create", "lobby", "--owner", "alice", "--agent", "alice-claude")
    async with serve_http(machine.home, env=machine.env) as served:
        yield HubMachine(machine, served.base)


async def enrolled(hub: HubMachine, root: Path, name: str, owner: str = "bob") -> Machine:
    made = await hub.machine.ok("owner", "enroll", owner, "--url", hub.url)
    assert made["login_command"] == f"agent-rooms login {hub.url} --code {made['code']}"
    machine = Machine(root, name)
    logged = await machine.ok("login", hub.url, "--code", made["code"], "--name", name)
    assert logged["owner"] == owner and "credential" not in logged
    return machine


def by(rows: list[dict[str, Any]], action: str, **match: Any) -> list[dict[str, Any]]:
    """The successful audit rows of `action` whose fields (or detail keys) hold the values given."""
    return [
        r
        for r in rows
        if r["action"] == action
        and r["outcome"] == "ok"
        and all(r.get(k, r["detail"].get(k)) == v for k, v in match.items())
    ]


@pytest.mark.invariant(92, 91)
async def test_an_owner_works_from_their_own_machine_audited_via_device(hub: HubMachine, tmp_path: Path) -> None:
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    device_file = bob.home / "device.json"
    assert stat.S_IMODE(device_file.stat().st_mode) == 0o600
    kept = json.loads(device_file.read_text())
    assert kept["hub"] == hub.url and kept["issuer_kid"].startswith("k4.pid.") and kept["credential"].startswith("ard_")
    assert not (bob.home / "hub.db").exists()

    added = await bob.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    assert added["owner"] == "bob"
    await bob.ok("agent", "scopes", "bob-claude", "read,post,task")
    issued = await bob.ok("token", "issue", "bob-claude")
    assert issued["token"].startswith("art_")
    assert [t["status"] for t in (await bob.ok("token", "list"))["tokens"]] == ["active"]
    assert (await bob.ok("token", "revoke", issued["token_id"]))["status"] == "revoked"
    await bob.ok("grant", "add", "--from", "bob", "--to", "alice")
    await bob.ok("room", "create", "den", "--owner", "bob", "--agent", "bob-claude")

    # Alice (at the hub) invites Bob; Bob accepts from his machine, bringing his agent.
    invite = await hub.machine.ok("invite", "create", "lobby", "--by", "alice")
    joined = await bob.ok("invite", "accept", invite["code"], "--owner", "bob", "--agent", "bob-claude")
    assert joined["room"] == "lobby"

    # Alice's agent hands Bob's agent a task over /mcp; it waits on Bob, who accepts it from his machine.
    alice_token = (await hub.machine.ok("token", "issue", "alice-claude"))["token"]
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice_token}"})
    async with http, Client(streamable_http_client(f"{hub.url}/mcp", http_client=http)) as client:
        made = await client.call_tool("create_task", {"room": "lobby", "title": "review", "assignee": "bob-claude"})
    assert made.structured_content["consent_state"] == "pending"
    pending = (await bob.ok("consent", "list", "--owner", "bob"))["proposals"]
    assert [p["target"] for p in pending] == ["bob-claude"]
    decided = await bob.ok("consent", "accept", pending[0]["proposal_id"], "--owner", "bob")
    assert decided["consent_state"] == "accepted"
    assert hub.sql("SELECT decided_via FROM proposals")[0][0] == "device"

    # The hub's own audit log, read by the operator: each of Bob's commands left its row, via his device.
    logged, bob_id = await hub.audit(), await hub.owner_id("bob")
    done = ("agent.add", "agent.scopes", "token.issue", "token.revoke", "grant.add", "room.create", "invite.accept")
    for action in (*done, "consent.accept"):
        assert len(by(logged, action, actor_kind="owner", owner_id=bob_id, via="device")) == 1, action
    assert {r["cred_id"] for r in logged if r["via"] == "device"} == {kept["device_id"]}
    # The operator's own rows say `cli`; the chain, old rows and new, verifies.
    assert any(r["via"] == "cli" for r in logged)
    assert (await hub.machine.ok("audit", "verify"))["ok"]
    # Bob's audit tail holds Bob's rows only.
    tail = await bob.ok("audit", "tail", "-n", "500")
    bob_id = hub.sql("SELECT owner_id FROM owners WHERE handle = 'bob'")[0][0]
    assert tail and {r["owner_id"] for r in tail} == {bob_id}
    # Bob's lists are his: his agents, the rooms he is in.
    assert [a["handle"] for a in (await bob.ok("agent", "list"))["agents"]] == ["bob-claude"]
    assert sorted(r["name"] for r in (await bob.ok("room", "list"))["rooms"]) == ["den", "lobby"]


def alice_wake(hub: HubMachine) -> None:
    """A run of alice-claude's, written as a mention's wake would be (no supervisor runs in this hub)."""
    conn = sqlite3.connect(hub.machine.home / "hub.db")
    with conn:
        conn.execute(
            "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained, depth,"
            " state, created_at) SELECT 'run_alicesownrun0000000000', a.agent_id, a.owner_id, r.room_id, 'mention',"
            " 'msg_x', a.agent_id, 0, 1, 'queued', ?"
            " FROM agents a, rooms r WHERE a.handle = 'alice-claude' AND r.name = 'lobby'",
            (now_utc(),),  # new: the serving hub's housekeeping would end an old one `expired`
        )
    conn.close()


# Operator actions (DESIGN §2), as a device would type them: each refused on the device, before any request.
OPERATOR_COMMANDS = (
    ("owner", "add", "mallory"),
    ("owner", "add", "mallory", "--local"),
    ("owner", "enroll", "alice"),
    ("owner", "set", "bob", "--local"),  # a local owner's agents are spawned by the hub itself
    ("owner", "verify", "bob"),
    ("owner", "list"),
    ("room", "remove", "lobby", "--agent", "alice-claude"),
    ("backup", "hub.backup"),
    ("restore", "hub.backup", "--yes"),
    ("audit", "verify"),
    ("audit", "checkpoint"),
)


@pytest.mark.invariant(92, 105, 91)
async def test_a_device_cannot_act_as_the_operator_or_for_another_owner(hub: HubMachine, tmp_path: Path) -> None:
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    await bob.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    alice_wake(hub)
    # Runs are an owner's own (run list, run log): Alice's run looks missing to Bob, as one never made.
    assert (await bob.ok("run", "list"))["runs"] == []
    before = hub.fingerprint()
    for command in OPERATOR_COMMANDS:
        done = await bob.refused("FORBIDDEN_SCOPE", *command)
        assert "operator action" in done.json()["message"], command
    # Where a hub-spawned run works is the operator's to say, even for Bob's own agent.
    workdir = await bob.refused(
        "FORBIDDEN_SCOPE", "agent", "add", "bob-codex", "--owner", "bob", "--tool", "codex", "--workdir", "/"
    )
    assert "--workdir" in workdir.json()["message"]
    await bob.refused("FORBIDDEN_SCOPE", "agent", "add", "x", "--owner", "alice", "--tool", "claude")
    await bob.refused("NOT_FOUND", "token", "issue", "alice-claude")
    await bob.refused("FORBIDDEN_SCOPE", "grant", "add", "--from", "alice", "--to", "bob")
    await bob.refused("NOT_FOUND", "agent", "stop", "alice-claude")
    await bob.refused("FORBIDDEN_SCOPE", "consent", "accept", "prop_x", "--owner", "alice")
    [alice_run] = hub.sql("SELECT run_id FROM runs")
    await bob.refused("FORBIDDEN_SCOPE", "run", "list", "--owner", "alice")
    await bob.refused("NOT_FOUND", "run", "log", alice_run["run_id"])
    await bob.refused("NOT_FOUND", "run", "log", "run_x")
    assert hub.fingerprint() == before
    # The operator, on the hub's machine, sees everyone's, and reads why it has not started.
    assert [r["run_id"] for r in (await hub.machine.ok("run", "list"))["runs"]] == [alice_run["run_id"]]
    assert (await hub.machine.ok("run", "log", alice_run["run_id"]))["state"] == "queued"

    # The API itself refuses an operator action by name, audited as the device's.
    credential = json.loads((bob.home / "device.json").read_text())["credential"]
    async with httpx2.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {credential}"}) as http:
        refused = await http.post("/owner/v1/actions/owner.add", json={"handle": "mallory"})
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN_SCOPE"
        # And the device credential is nothing at /mcp.
        mcp = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert mcp.status_code == 401 and mcp.json() == {"error": "UNAUTHENTICATED"}
    assert hub.sql("SELECT 1 FROM audit WHERE action = 'cli.owner.add' AND via = 'device' AND outcome = 'denied'")

    # The credential goes only to the hub that issued it, whatever URL a command names.
    other = await bob.ar("--hub", "http://127.0.0.1:9", "agent", "list", "--json")
    assert other.code == 1 and other.json()["code"] == "HOME" and "enrolled with" in other.json()["message"]
    assert [a["handle"] for a in (await bob.ok("--hub", hub.url, "agent", "list"))["agents"]] == ["bob-claude"]

    # Logging in: plain http only to a loopback hub, and a wrong code gets nothing (the rest of the code
    # rules are proven in-process, in test_devices.py).
    elsewhere = Machine(tmp_path, "elsewhere")
    far = await elsewhere.refused("INVALID_ARGUMENT", "login", "http://hub.example.org", "--code", "enr_x.y")
    assert "https" in far.json()["message"]
    made = await hub.machine.ok("owner", "enroll", "bob", "--url", hub.url)
    wrong = made["code"].partition(".")[0] + "." + "A" * 32
    await elsewhere.refused("UNAUTHENTICATED", "login", hub.url, "--code", wrong)
    assert not (elsewhere.home / "device.json").exists()
    assert audit.safe_target(made["code"]).startswith("sha256:")


@pytest.mark.invariant(92)
async def test_a_revoked_device_is_refused_on_its_next_request(hub: HubMachine, tmp_path: Path) -> None:
    laptop = await enrolled(hub, tmp_path, "bob-laptop")
    desktop = await enrolled(hub, tmp_path, "bob-desktop")
    devices = (await laptop.ok("device", "list"))["devices"]
    assert sorted(d["name"] for d in devices) == ["bob-desktop", "bob-laptop"]
    ids = {d["name"]: d["device_id"] for d in devices}
    # The table marks the device it is read on: the one `device revoke` (with no id) would revoke.
    listed = (await laptop.ar("device", "list")).out
    [mine] = [line for line in listed.splitlines() if ids["bob-laptop"] in line]
    [theirs] = [line for line in listed.splitlines() if ids["bob-desktop"] in line]
    assert "bob-laptop (this device)" in mine and "(this device)" not in theirs, listed
    # A device revokes itself only.
    await desktop.refused("FORBIDDEN_SCOPE", "device", "revoke", ids["bob-laptop"])
    gone = await laptop.ok("device", "revoke")
    assert gone["device_id"] == ids["bob-laptop"] and gone["status"] == "revoked"
    assert not (laptop.home / "device.json").exists()
    # The operator revokes any; the desktop is refused on its very next request.
    await desktop.ok("agent", "list")
    await hub.machine.ok("device", "revoke", ids["bob-desktop"])
    await desktop.refused("UNAUTHENTICATED", "agent", "list")
    assert hub.sql("SELECT reason FROM audit ORDER BY seq DESC LIMIT 1")[0]["reason"] == "device_revoked"
    assert {d["status"] for d in (await hub.machine.ok("device", "list"))["devices"]} == {"revoked"}


async def test_the_operator_acting_for_an_owner_who_is_not_local_is_audited_on_their_behalf(
    hub: HubMachine, tmp_path: Path
) -> None:
    """DESIGN §2: the operator of a shared hub can act as any owner; a row says so, and that owner sees it."""
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    op = hub.machine
    await op.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    issued = await op.ok("token", "issue", "bob-claude")
    await op.ok("token", "revoke", issued["token_id"])
    await op.ok("grant", "add", "--from", "bob", "--to", "alice")
    invite = await op.ok("invite", "create", "lobby", "--by", "alice")
    await op.ok("invite", "accept", invite["code"], "--owner", "bob", "--agent", "bob-claude")
    alice_token = (await op.ok("token", "issue", "alice-claude"))["token"]
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {alice_token}"})
    async with http, Client(streamable_http_client(f"{hub.url}/mcp", http_client=http)) as client:
        await client.call_tool("create_task", {"room": "lobby", "title": "review", "assignee": "bob-claude"})
    pending = (await op.ok("consent", "list", "--owner", "bob"))["proposals"]
    await op.ok("consent", "accept", pending[0]["proposal_id"], "--owner", "bob")
    await op.ok("agent", "stop", "bob-claude")
    # `connect` mints the agent's token file, and with --new-token replaces it (revoking the old): for bob too.
    for flags in ((), ("--new-token",)):
        connected = await op.ar("connect", "bob-claude", *flags)
        assert connected.code == 0, connected.err
    # The control: for a local owner (the person at the hub) the operator acts as themselves.
    await op.ok("owner", "add", "carol", "--local")
    await op.ok("agent", "add", "carol-claude", "--owner", "carol", "--tool", "claude")

    bob_id, alice_id = [await hub.owner_id(h) for h in ("bob", "alice")]
    actions = ("agent.add", "token.issue", "token.revoke", "grant.add", "invite.accept", "consent.accept", "agent.stop")
    logged = await hub.audit()
    times = {"token.issue": 3, "token.revoke": 2}  # once each by `token`, twice and once by `connect`
    for action in actions:
        done = by(logged, action, actor_kind="operator", via="cli", on_behalf_of=bob_id)
        assert len(done) == times.get(action, 1), action
    assert by(logged, "invite.create", actor_kind="operator", on_behalf_of=alice_id)
    # Of the three agents the operator added (alice's, bob's, carol's) only carol's says for nobody.
    plain = [r for r in by(logged, "agent.add", actor_kind="operator") if "on_behalf_of" not in r["detail"]]
    assert len(plain) == 1 and len(by(logged, "agent.add", actor_kind="operator")) == 3
    assert (await op.ok("audit", "verify"))["ok"]

    # Bob sees each of them from his own machine, and nothing done for Alice.
    tail = await bob.ok("audit", "tail", "-n", "500")
    for action in actions:
        assert by(tail, action, actor_kind="operator", on_behalf_of=bob_id), action
    assert {r["detail"].get("on_behalf_of") or r["owner_id"] for r in tail} == {bob_id}
    text = await bob.ar("audit", "tail", "-n", "500")
    assert "via cli for bob: " in text.out and bob_id not in text.out  # the person reads handles, not ids


# A home that holds a hub and is logged in to another (DESIGN §9.1): `make run` first, then `login`.


async def test_after_login_owner_commands_reach_the_hub_logged_in_to_and_say_so_beside_a_hub_of_its_own(
    hub: HubMachine, tmp_path: Path
) -> None:
    laptop = Machine(tmp_path, "laptop")
    assert (await laptop.ar("init")).code == 0
    await laptop.ok("owner", "add", "me", "--local")
    made = await hub.machine.ok("owner", "enroll", "bob", "--url", hub.url)
    logged = await laptop.ar("login", hub.url, "--code", made["code"], "--name", "laptop")
    # Login says the home holds a hub too, where owner commands go from now on, and how to keep the two apart.
    assert logged.code == 0 and f"{laptop.home} also holds a hub of its own" in logged.err, logged
    assert f"now go to {hub.url}" in logged.err and "AGENT_ROOMS_HOME" in logged.err

    # An owner command goes to the hub logged in to (where bob exists), and says so on stderr.
    added = await laptop.ar("agent", "add", "bob-codex", "--owner", "bob", "--tool", "codex", "--json")
    assert added.code == 0, added
    assert f"to {hub.url} as bob" in added.err and str(laptop.home) in added.err
    assert hub.sql("SELECT 1 FROM agents WHERE handle = 'bob-codex'")
    listed = await laptop.ar("agent", "list", "--json")
    assert [a["handle"] for a in listed.json()["agents"]] == ["bob-codex"] and f"to {hub.url}" in listed.err
    # An operator command can only mean the hub here: it acts there, and says so too.
    owners = await laptop.ar("owner", "list", "--json")
    assert [o["handle"] for o in owners.json()["owners"]] == ["me"], owners
    assert f"on the hub in {laptop.home}" in owners.err and hub.url in owners.err


async def test_a_fresh_machine_is_told_to_log_in_and_a_logged_in_home_makes_no_hub_beside_it(
    hub: HubMachine, tmp_path: Path
) -> None:
    fresh = Machine(tmp_path, "fresh")
    nothing = await fresh.refused("HOME", "agent", "list")
    assert "agent-rooms init" in nothing.json()["message"]
    assert "agent-rooms login URL --code CODE" in nothing.json()["message"]

    bob = await enrolled(hub, tmp_path, "bob-laptop")
    for command in ("init", "quickstart"):
        done = await bob.ar(command)
        assert done.code == 1 and f"logged in to {hub.url} as bob" in done.err, done
        assert f"AGENT_ROOMS_HOME=DIR agent-rooms {command}" in done.err
        assert not (bob.home / "hub.db").exists()


async def test_a_device_is_told_what_it_named_and_whom_to_ask_for_an_operator_action(
    hub: HubMachine, tmp_path: Path
) -> None:
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    # NOT_FOUND names the handle as typed and the command that lists the valid ones, as on the hub.
    missing = await bob.refused("NOT_FOUND", "agent", "stop", "bob-claud")
    assert missing.json()["message"] == "no such agent 'bob-claud' (agent-rooms agent list)"
    # Alice's agent looks exactly as missing (invariant 82): the same words, naming what Bob typed.
    hidden = await bob.refused("NOT_FOUND", "agent", "stop", "alice-claude")
    assert hidden.json()["message"] == "no such agent 'alice-claude' (agent-rooms agent list)"
    # A hint naming an operator command says whom to ask: Bob cannot run it.
    await hub.machine.ok("owner", "add", "carol")
    unverified = await bob.refused("IDENTITY_UNVERIFIED", "grant", "add", "--from", "bob", "--to", "carol")
    assert (
        unverified.json()["message"]
        == "carol must be verified first, by the hub's operator: agent-rooms owner verify carol"
    )
    refused = await bob.refused("FORBIDDEN_SCOPE", "owner", "verify", "carol")
    assert (
        refused.json()["message"]
        == f"owner verify is an operator action, run on the hub's machine: ask the operator of {hub.url}"
    )


async def test_an_owner_connects_their_own_client_from_their_device_without_the_token_in_its_config(
    hub: HubMachine, tmp_path: Path
) -> None:
    bob = await enrolled(hub, tmp_path, "bob-laptop")
    write_wrapper("claude", tmp_path / "bin")
    bob.env |= {"AGENT_ROOMS_CLAUDE_BIN": str(tmp_path / "bin" / "claude"), "CLAUDE_CONFIG_DIR": ""}
    await bob.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    printed = await bob.ar("connect", "bob-claude", "--client", "claude")
    assert printed.code == 0, printed
    # The hub issued the token; it lives in this machine's 0600 file, and the entry names the variable.
    token_path = bob.home / "tokens" / "bob-claude.token"
    token = token_path.read_text().strip()
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600 and token.startswith("art_")
    assert printed.out.strip() == (
        f"claude mcp add --scope user --transport http agent-rooms {hub.url}/mcp "
        "-H 'Authorization: Bearer ${AGENT_ROOMS_TOKEN}'"
    )
    assert token not in printed.out + printed.err and f"$(cat {token_path})" in printed.err
    # The README's line for Bob: applied with the client's own command, the token nowhere in its config.
    applied = await bob.ok("connect", "bob-claude", "--client", "claude", "--apply")
    assert applied["outcome"] == "added"
    config = (bob.home.parent / ".claude.json").read_text()
    assert "${AGENT_ROOMS_TOKEN}" in config and "art_" not in config
    # And the token works at /mcp as bob-claude.
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(f"{hub.url}/mcp", http_client=http)) as client:
        who = await client.call_tool("whoami", {})
        assert not who.is_error and "bob-claude" in str(who.content)
    # --new-token replaces the file and revokes the token it held, as on the hub's machine.
    assert (await bob.ar("connect", "bob-claude", "--new-token")).code == 0
    assert token_path.read_text().strip() != token
    states = sorted(t["status"] for t in (await bob.ok("token", "list", "bob-claude"))["tokens"])
    assert states == ["active", "revoked"]
    # Another owner's agent is missing, as everywhere; --check says what to use here instead.
    missing = await bob.refused("NOT_FOUND", "connect", "alice-claude")
    assert missing.json()["message"] == "no such agent 'alice-claude' (agent-rooms agent list)"
    assert not (bob.home / "tokens" / "alice-claude.token").exists()
    check = await bob.refused("FORBIDDEN_SCOPE", "connect", "--check")
    assert "token list AGENT" in check.json()["message"]


async def test_connect_to_the_hub_logged_in_to_never_hands_it_the_token_file_of_the_hub_in_this_home(
    hub: HubMachine, tmp_path: Path
) -> None:
    """A home with a hub of its own (`make run`, `init`) keeps its agents' token files in tokens/HANDLE.token;
    after `login`, `connect HANDLE` makes an entry for the hub logged in to that reads tokens/HANDLE.token too.
    When the hub here has an agent of that handle, the file holds the hub here's token: connect found it
    'already there', minted nothing, and printed an entry that sends it to the other hub, where it is refused,
    and which any operator of that hub sees. Nor may `--new-token` overwrite it: the hub here's own client
    entry reads it."""
    laptop = Machine(tmp_path, "laptop")
    assert (await laptop.ar("init")).code == 0
    await laptop.ok("owner", "add", "me", "--local")
    await laptop.ok("agent", "add", "bob-claude", "--owner", "me", "--tool", "claude")
    assert (await laptop.ar("connect", "bob-claude", "--client", "json")).code == 0
    token_path = laptop.home / "tokens" / "bob-claude.token"
    here_token = token_path.read_text().strip()
    made = await hub.machine.ok("owner", "enroll", "bob", "--url", hub.url)
    assert (await laptop.ar("login", hub.url, "--code", made["code"], "--name", "laptop")).code == 0
    await laptop.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")  # on the hub logged in to

    for args in (("connect", "bob-claude", "--client", "json"), ("connect", "bob-claude", "--new-token")):
        done = await laptop.ar(*args)
        assert token_path.read_text().strip() == here_token, args  # the hub here's client still reads its own
        # Refused, naming the file and the way out, rather than an entry reading the hub here's token.
        assert done.code == 1 and str(token_path) in done.err and "AGENT_ROOMS_HOME" in done.err, (args, done)
