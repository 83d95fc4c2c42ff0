"""Agent secrets at rest (DESIGN §8, invariant 74): sealed with the master key, bound to their row and
purpose, never stored or shown in plaintext, and a hub without the key fails closed."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.home import HomeError
from agent_rooms_mcp.vault import AGENT_ENV, Vault, VaultError, create_master_key
from tests.conftest import World
from tests.wakeworld import Fakes, ended, post, supervisor, until

SECRET = "sk-test-" + "7" * 24


async def cli_in(world: World, *args: str, stdin: str | None = None) -> tuple[int, str]:
    """The real CLI, on a thread of its own: it runs its own event loop, as it does from a shell."""
    env = {"AGENT_ROOMS_HOME": str(world.settings.home)}
    r = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli, list(args), input=stdin, env=env))
    return r.exit_code, r.stdout + r.stderr


@pytest.mark.invariant(74)
def test_a_sealed_value_opens_only_for_its_own_row_and_purpose(tmp_path: Path) -> None:
    create_master_key(tmp_path / "master.key")
    vault = Vault(tmp_path / "master.key")
    sealed = vault.seal(AGENT_ENV, "agt_a/KEY", SECRET)
    assert SECRET.encode() not in sealed
    assert vault.open(AGENT_ENV, "agt_a/KEY", sealed) == SECRET
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    for purpose, row, blob in (
        (AGENT_ENV, "agt_b/KEY", sealed),  # another agent's row
        (AGENT_ENV, "agt_a/OTHER", sealed),  # another variable
        ("another-purpose", "agt_a/KEY", sealed),
        (AGENT_ENV, "agt_a/KEY", tampered),
    ):
        with pytest.raises(VaultError):
            vault.open(purpose, row, blob)
    create_master_key(tmp_path / "other.key")
    with pytest.raises(VaultError):
        Vault(tmp_path / "other.key").open(AGENT_ENV, "agt_a/KEY", sealed)


@pytest.mark.invariant(74)
def test_without_a_safe_master_key_nothing_opens(tmp_path: Path) -> None:
    with pytest.raises(HomeError):
        Vault(tmp_path / "missing.key").seal(AGENT_ENV, "agt_a/KEY", SECRET)
    create_master_key(tmp_path / "master.key")
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(HomeError):
        Vault(tmp_path / "master.key").seal(AGENT_ENV, "agt_a/KEY", SECRET)


@pytest.mark.invariant(18, 70, 74)
async def test_an_owner_gives_one_agent_a_key_and_only_its_wakes_see_it(woken: World, fakes: Fakes) -> None:
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "ANTHROPIC_API_KEY", stdin=SECRET + "\n")
    assert code == 0, out
    code, out = await cli_in(woken, "agent", "env", "list", "alice-bot", "--json")
    assert json.loads(out) == {"agent": "alice-bot", "names": ["ANTHROPIC_API_KEY"]}
    # A name that looks like somebody else's credential is refused, whatever the agent.
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "AWS_SECRET_ACCESS_KEY", stdin="x\n")
    assert code == 1 and out.startswith("INVALID_ARGUMENT")
    fakes.scenario("dump_env")
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot @alice-cx env please")
        await until(lambda: ended(woken, "alice-bot") and ended(woken, "alice-cx"), "both runs end")
    by_tool = {c["tool"]: c for c in fakes.calls()}
    assert by_tool["claude"]["env"]["ANTHROPIC_API_KEY"] == SECRET
    assert "ANTHROPIC_API_KEY" not in by_tool["codex"]["env_names"]
    # The secret is nowhere at rest in plaintext, nor in the audit log.
    home = woken.settings.home
    for path in [p for p in home.rglob("*") if p.is_file() and "runs" not in p.parts]:
        assert SECRET.encode() not in path.read_bytes(), path
    assert all(SECRET not in (row["detail"] or "") for row in woken.audit_rows())


@pytest.mark.invariant(74)
async def test_a_hub_that_lost_its_master_key_fails_the_run_closed(woken: World, fakes: Fakes) -> None:
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "ANTHROPIC_API_KEY", stdin=SECRET)
    assert code == 0, out
    woken.settings.master_key_path.unlink()
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot go")
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "env_unavailable")
    assert fakes.calls() == []  # never started without, or with the wrong, values
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "ANTHROPIC_API_KEY", stdin=SECRET)
    assert code == 1 and "master key" in out


async def test_a_variable_every_run_sets_is_refused_and_one_stored_before_fails_closed_saying_so(
    woken: World, fakes: Fakes
) -> None:
    # The walk (finding 12): `agent env set bob-claude PATH` was taken, and the next wake ended `cli_not_found`
    # ("install it, or set AGENT_ROOMS_CLAUDE_BIN"), though the CLI was installed: the agent's PATH hid it.
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "PATH", stdin="/opt/elsewhere\n")
    assert code == 1 and out.startswith("INVALID_ARGUMENT: name: environment variable PATH is set by agent-rooms")
    assert "/opt/elsewhere" not in out
    code, out = await cli_in(woken, "agent", "env", "set", "alice-bot", "PROJECT_NOTE", stdin="")
    assert code == 1 and "PROJECT_NOTE has an empty value" in out and "agent env unset alice-bot PROJECT_NOTE" in out
    assert woken.sql("SELECT count(*) FROM agent_env")[0][0] == 0

    # A PATH stored before the rule: the wake fails closed, as env_unavailable, and never runs the CLI.
    [agent_id] = [r["agent_id"] for r in woken.sql("SELECT agent_id FROM agents WHERE handle = 'alice-bot'")]
    sealed = Vault(woken.settings.master_key_path).seal(AGENT_ENV, f"{agent_id}/PATH", "/opt/elsewhere")
    with sqlite3.connect(woken.db) as conn:
        conn.execute(
            "INSERT INTO agent_env (agent_id, name, sealed, set_at) VALUES (?, ?, ?, ?)",
            (agent_id, "PATH", sealed, "2026-12-07T00:00:00Z"),
        )
    async with supervisor(woken):
        await post(woken, "alice-claude", "@alice-bot go")
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "env_unavailable")
    assert fakes.calls() == []
    code, out = await cli_in(woken, "run", "log", run["run_id"])
    assert code == 0 and "one is no longer allowed" in out and "agent env list" in out, out
