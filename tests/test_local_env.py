"""An owner's agent variables on their own machine (DESIGN §5, §9.1; invariant 94): sealed in that machine's home
under its own master key, opened only for the agent and name they were set for, and never sent to the hub.

The CLI tests run a real hub process (`serve --http`, its own home) and an owner's machine enrolled by code
(another `AGENT_ROOMS_HOME` and `HOME`), each command a process of its own, as in tests/test_remote_cli.py.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.errors import RoomsError
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.local_env import ENV_FILE, LocalEnv
from agent_rooms_mcp.models import AgentEnvList
from agent_rooms_mcp.vault import VaultError, create_master_key
from tests.hubprocess import CLI, serve_http
from tests.test_remote_cli import Done, HubCli, HubMachine, Machine, enrolled

SECRET = "sk-local-" + "5" * 24
SEALED_HERE = "(sealed on this machine; never sent to the hub)"


def stored(home: Path) -> dict[str, dict[str, str]]:
    agents: dict[str, dict[str, str]] = json.loads((home / ENV_FILE).read_text())["agents"]
    return agents


def write_stored(home: Path, agents: dict[str, dict[str, str]]) -> None:
    (home / ENV_FILE).write_text(json.dumps({"agents": agents}))


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


# The store itself: real files in a temporary home.


@pytest.mark.invariant(94)
def test_a_value_round_trips_sealed_in_a_private_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = LocalEnv(home)
    assert env.set("bob-coder", "OPENAI_API_KEY", SECRET) == ["OPENAI_API_KEY"]
    assert env.set("bob-coder", "CODEX_API_KEY", "second") == ["CODEX_API_KEY", "OPENAI_API_KEY"]
    assert env.open_for("bob-coder", "codex") == {"OPENAI_API_KEY": SECRET, "CODEX_API_KEY": "second"}
    assert env.names("bob-coder") == ["CODEX_API_KEY", "OPENAI_API_KEY"]
    # Another agent has nothing, and nothing is needed to say so.
    assert env.open_for("bob-other", "codex") == {} and env.names("bob-other") == []

    for private in (home / ENV_FILE, home / "keys" / "master.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # The value is nowhere in clear in the home, nor is a temporary file left behind.
    assert files_holding(home, SECRET.encode()) == []
    assert sorted(p.name for p in home.iterdir()) == [".agent-env.lock", ENV_FILE, "keys"]

    assert env.unset("bob-coder", "OPENAI_API_KEY") == ["CODEX_API_KEY"]
    assert env.unset("bob-coder", "CODEX_API_KEY") == []
    assert stored(home) == {}


@pytest.mark.invariant(94)
def test_a_sealed_value_moved_to_another_agent_or_name_does_not_open(tmp_path: Path) -> None:
    env = LocalEnv(tmp_path)
    env.set("bob-coder", "OPENAI_API_KEY", SECRET)
    sealed = stored(tmp_path)["bob-coder"]["OPENAI_API_KEY"]
    for handle, name in (("bob-other", "OPENAI_API_KEY"), ("bob-coder", "CODEX_API_KEY")):
        write_stored(tmp_path, {handle: {name: sealed}})
        os.chmod(tmp_path / ENV_FILE, 0o600)
        with pytest.raises(VaultError) as refused:
            env.open_for(handle, "codex")
        assert SECRET not in str(refused.value)
    # Tampered bytes, or text that is not base64url at all, do not open either.
    flipped = ("A" if sealed[0] != "A" else "B") + sealed[1:]
    for broken in (flipped, "not base64url!"):
        write_stored(tmp_path, {"bob-coder": {"OPENAI_API_KEY": broken}})
        with pytest.raises(VaultError):
            env.open_for("bob-coder", "codex")


@pytest.mark.invariant(94)
def test_a_wrong_or_missing_master_key_opens_nothing(tmp_path: Path) -> None:
    env = LocalEnv(tmp_path)
    env.set("bob-coder", "OPENAI_API_KEY", SECRET)
    key = tmp_path / "keys" / "master.key"
    create_master_key(key)  # another key in its place
    with pytest.raises(VaultError):
        LocalEnv(tmp_path).open_for("bob-coder", "codex")
    key.unlink()
    with pytest.raises(HomeError, match="no master key"):
        LocalEnv(tmp_path).open_for("bob-coder", "codex")
    # Nor does a set quietly make a new key that would strand the values sealed under the old one.
    with pytest.raises(HomeError, match=r"move .* away"):
        LocalEnv(tmp_path).set("bob-coder", "CODEX_API_KEY", "x")
    assert not key.exists() and list(stored(tmp_path)["bob-coder"]) == ["OPENAI_API_KEY"]


def test_an_unsafe_or_foreign_file_is_not_used(tmp_path: Path) -> None:
    env = LocalEnv(tmp_path)
    env.set("bob-coder", "OPENAI_API_KEY", SECRET)
    os.chmod(tmp_path / ENV_FILE, 0o644)
    with pytest.raises(HomeError, match="chmod 600"):
        env.open_for("bob-coder", "codex")
    with pytest.raises(HomeError):  # nor written over: a set reads it first
        env.set("bob-coder", "CODEX_API_KEY", "x")
    os.chmod(tmp_path / ENV_FILE, 0o600)
    (tmp_path / ENV_FILE).write_text("[1, 2]")
    with pytest.raises(HomeError, match="not an agent variables file"):
        env.names("bob-coder")
    (tmp_path / ENV_FILE).unlink()
    (tmp_path / ENV_FILE).symlink_to(tmp_path / "keys" / "master.key")
    with pytest.raises(HomeError, match="symlink"):
        env.open_for("bob-coder", "codex")


def test_concurrent_sets_lose_nothing_and_share_one_master_key(tmp_path: Path) -> None:
    # Each writer reads, adds and replaces the whole file: without the lock they would drop each other's
    # variables, trip over one temporary file, or each make a master key the others' values do not open with.
    failures: list[BaseException] = []

    def writer(i: int) -> None:
        env = LocalEnv(tmp_path)  # one instance each, as separate commands would have
        for j in range(15):
            try:
                env.set("bob-coder", f"V{i}_{j}_API_KEY", f"value-{i}-{j}")
            except Exception as e:  # collected, then asserted on below
                failures.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    opened = LocalEnv(tmp_path).open_for("bob-coder", "openclaw")
    assert opened == {f"V{i}_{j}_API_KEY": f"value-{i}-{j}" for i in range(6) for j in range(15)}


def test_names_are_checked_like_the_hub_and_fully_once_the_tool_is_known(tmp_path: Path) -> None:
    env = LocalEnv(tmp_path)
    # Without the tool, a name some tool may be given is taken...
    env.set("bob-claude", "OPENAI_API_KEY", SECRET)
    env.set("bob-claude", "ANTHROPIC_API_KEY", "for-claude")
    # ...and refused where the tool is known: an OpenAI key handed to Claude Code is a leak, not a login.
    with pytest.raises(HomeError) as refused:
        env.open_for("bob-claude", "claude")
    message = str(refused.value)
    assert "OPENAI_API_KEY is denied for claude" in message and SECRET not in message
    assert "agent-rooms agent env unset bob-claude OPENAI_API_KEY" in message
    env.unset("bob-claude", "OPENAI_API_KEY")
    assert env.open_for("bob-claude", "claude") == {"ANTHROPIC_API_KEY": "for-claude"}
    # With the tool, the full check at once.
    with pytest.raises(RoomsError, match="denied for claude"):
        env.set("bob-claude", "OPENAI_API_KEY", SECRET, tool="claude")
    with pytest.raises(RoomsError, match="handle"):
        env.set("Bob Claude", "ANTHROPIC_API_KEY", SECRET)
    with pytest.raises(RoomsError) as missing:
        env.unset("bob-claude", "NOT_SET")
    assert missing.value.code == "NOT_FOUND" and "NOT_SET" in missing.value.message
    assert env.names("bob-claude") == ["ANTHROPIC_API_KEY"]


# The CLI on a device, against a real hub process.


@dataclass
class Network:
    hub: HubMachine
    bob: Machine
    server: anyio.abc.Process

    async def stop_hub(self) -> None:
        self.server.terminate()
        await self.server.wait()


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    machine = HubCli(tmp_path, "hub")
    assert (await machine.ar("init")).code == 0
    await machine.ok("owner", "add", "bob")
    await machine.ok("agent", "add", "bob-coder", "--owner", "bob", "--tool", "codex")
    await machine.ok("agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    async with serve_http(machine.home) as served:
        hub = HubMachine(machine, served.base)
        yield Network(hub, await enrolled(hub, tmp_path, "bob-laptop"), served.process)


async def on_device(bob: Machine, *args: str, stdin: str = "") -> Done:
    done = await anyio.run_process([*CLI, *args], input=stdin.encode(), env=bob.env, check=False)
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


async def on_hub(hub: HubMachine, *args: str, stdin: str = "") -> Done:
    env = {"AGENT_ROOMS_HOME": str(hub.machine.home)}
    r = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args), input=stdin, env=env))
    return Done(r.exit_code, r.stdout, r.stderr)


def hub_state(hub: HubMachine) -> tuple[object, ...]:
    """Everything a request from Bob's device would move: rows written, and his device's last use."""
    return (
        hub.sql("SELECT count(*) FROM audit")[0][0],
        hub.sql("SELECT count(*) FROM agent_env")[0][0],
        [tuple(r) for r in hub.sql("SELECT device_id, last_used_at FROM devices")],
    )


@pytest.mark.invariant(94)
async def test_agent_env_on_a_device_stays_on_that_machine_and_never_reaches_the_hub(network: Network) -> None:
    hub, bob = network.hub, network.bob
    before = hub_state(hub)

    done = await on_device(bob, "agent", "env", "set", "bob-coder", "OPENAI_API_KEY", stdin=SECRET + "\n")
    assert done.code == 0, done.err
    assert done.out.strip() == f"bob-coder: OPENAI_API_KEY {SEALED_HERE}"
    assert "listener.env.set" in done.err and "bob-coder" in done.err and SECRET not in done.out + done.err
    # The hub, up and answering, got nothing: no row, no use of Bob's device, the value in no file of its home.
    assert hub_state(hub) == before
    assert files_holding(hub.machine.home, SECRET.encode()) == []

    # With the hub gone (its URL now a closed port) every env command still works: none of them asks it.
    await network.stop_hub()
    done = await on_device(bob, "agent", "env", "set", "bob-coder", "CODEX_API_KEY", "--json", stdin="two\n")
    assert done.code == 0, done.err
    assert json.loads(done.out) == {"agent": "bob-coder", "names": ["CODEX_API_KEY", "OPENAI_API_KEY"]}
    listed = await on_device(bob, "agent", "env", "list", "bob-coder", "--json")
    assert AgentEnvList.model_validate_json(listed.out) == AgentEnvList(
        agent="bob-coder", names=["CODEX_API_KEY", "OPENAI_API_KEY"]
    )
    unset = await on_device(bob, "agent", "env", "unset", "bob-coder", "CODEX_API_KEY", "--json")
    assert json.loads(unset.out) == {"agent": "bob-coder", "names": ["OPENAI_API_KEY"]}
    missing = await on_device(bob, "agent", "env", "unset", "bob-coder", "CODEX_API_KEY", "--json")
    assert missing.code == 1 and json.loads(missing.out)["code"] == "NOT_FOUND"
    assert "CODEX_API_KEY" in json.loads(missing.out)["message"]
    # Whereas an owner action that does go to the hub fails for want of it: the env commands are no exception
    # that happens to be cached.
    offline = await on_device(bob, "agent", "list", "--json")
    assert offline.code == 1, offline.out

    # On Bob's machine: sealed, 0600, and opened for his listener exactly as set (the line stripped, as today).
    assert LocalEnv(bob.home).open_for("bob-coder", "codex") == {"OPENAI_API_KEY": SECRET}
    assert stat.S_IMODE((bob.home / ENV_FILE).stat().st_mode) == 0o600
    assert files_holding(bob.home, SECRET.encode()) == []
    assert hub_state(hub) == before

    # The same JSON shape as the hub's own `agent env list`.
    at_hub = await on_hub(hub, "agent", "env", "list", "bob-coder", "--json")
    assert json.loads(at_hub.out).keys() == json.loads(listed.out).keys()


async def test_a_name_the_hub_refuses_is_refused_the_same_way_on_a_device(network: Network) -> None:
    hub, bob = network.hub, network.bob
    refusals = (("1BAD", "v"), ("AGENT_ROOMS_TOKEN", "v"), ("LD_PRELOAD", "v"), ("FOO", "a\0b"), ("PATH", "/x"))
    said: dict[str, str] = {}
    for name, value in (*refusals, ("PROJECT_NOTE", "")):
        there = await on_hub(hub, "agent", "env", "set", "bob-claude", name, "--json", stdin=value)
        here = await on_device(bob, "agent", "env", "set", "bob-claude", name, "--json", stdin=value)
        refused_there, refused_here = json.loads(there.out), json.loads(here.out)
        assert there.code == here.code == 1, (name, there.out, here.out)
        assert refused_there["code"] == refused_here["code"] == "INVALID_ARGUMENT"
        # The hub names the agent's tool; the device, not knowing it, says every tool refuses the name.
        assert refused_here["message"].startswith(refused_there["message"]), (refused_there, refused_here)
        said[name] = refused_here["message"]
    # What the walk set (finding 12): each refusal names the variable, why, and the way out.
    assert said["PATH"].startswith("name: environment variable PATH is set by agent-rooms for every run"), said
    assert "AGENT_ROOMS_CLAUDE_BIN" in said["PATH"]
    assert said["PROJECT_NOTE"] == (
        "value: environment variable PROJECT_NOTE has an empty value: give it one, or remove it with: "
        "agent-rooms agent env unset bob-claude PROJECT_NOTE"
    )
    assert not (bob.home / ENV_FILE).exists()
    assert hub.sql("SELECT count(*) FROM agent_env")[0][0] == 0


async def test_on_the_hubs_machine_agent_env_still_goes_to_the_hubs_vault(network: Network) -> None:
    hub = network.hub
    done = await on_hub(hub, "agent", "env", "set", "bob-claude", "ANTHROPIC_API_KEY", stdin=SECRET)
    assert done.code == 0 and done.out.strip() == "bob-claude: ANTHROPIC_API_KEY"
    assert [r["name"] for r in hub.sql("SELECT name FROM agent_env")] == ["ANTHROPIC_API_KEY"]
    assert hub.sql("SELECT count(*) FROM audit WHERE action = 'agent.env.set'")[0][0] == 1
    assert not (hub.machine.home / ENV_FILE).exists()
