"""The `agent-rooms` command against a real home: human-only actions, output shapes, file modes, audit."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result
from mcp import Client
from mcp.types import CallToolResult

from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import Settings


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def ar(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"AGENT_ROOMS_HOME": str(home)}, catch_exceptions=False)


def ok_json(home: Path, *args: str) -> dict:
    r = ar(home, *args, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def populated(home: Path) -> Path:
    assert ar(home, "init").exit_code == 0
    ok_json(home, "owner", "add", "alice")
    ok_json(home, "agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude")
    ok_json(home, "room", "create", "lobby", "--owner", "alice", "--agent", "alice-claude")
    return home


@pytest.mark.invariant(72)
def test_init_makes_a_private_home_whatever_the_umask(home: Path) -> None:
    env = {**os.environ, "AGENT_ROOMS_HOME": str(home)}
    cmd = [sys.executable, "-c", "import os; os.umask(0); from agent_rooms_mcp.cli import main; main()", "init"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)
    # A write leaves the WAL and SHM files on disk too: they must be private as well.
    subprocess.run([*cmd[:-1], "owner", "add", "alice"], env=env, check=True, capture_output=True, timeout=60)
    for d in (home, home / "keys", home / "tokens"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = [home / "keys" / "issuer.paserk", *home.glob("hub.db*")]
    assert len(files) >= 2
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_init_is_idempotent_and_keeps_the_key(home: Path) -> None:
    assert "initialised" in ar(home, "init").stdout
    key = (home / "keys" / "issuer.paserk").read_bytes()
    assert "already initialised" in ar(home, "init").stdout
    assert (home / "keys" / "issuer.paserk").read_bytes() == key


@pytest.mark.invariant(73)
@pytest.mark.parametrize("spoil", ["group_readable", "world_readable", "symlink"])
def test_server_refuses_an_unsafe_key_file(home: Path, spoil: str) -> None:
    populated(home)
    key = home / "keys" / "issuer.paserk"
    if spoil == "symlink":
        real = home / "keys" / "real.paserk"
        key.rename(real)
        key.symlink_to(real)
    else:
        key.chmod(0o640 if spoil == "group_readable" else 0o604)
    r = ar(home, "owner", "list")
    assert r.exit_code == 1
    assert "HOME:" in r.stderr and "issuer.paserk" in r.stderr


def test_room_lines_count_one_agent_in_the_singular(home: Path) -> None:
    populated(home)
    ok_json(home, "agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex")
    made = ar(home, "room", "create", "den", "--owner", "alice", "--agent", "alice-claude")
    assert made.exit_code == 0 and made.stdout.rstrip().endswith("with 1 agent"), made.stdout
    added = ar(home, "room", "add", "den", "--agent", "alice-codex")
    assert added.stdout.strip() == "alice-codex is in den (2 agents)", added.stdout


def test_quickstart_is_idempotent_and_mints_nothing_the_second_time(home: Path) -> None:
    first = ar(home, "quickstart")
    assert first.exit_code == 0, first.stderr
    token_file = next((home / "tokens").glob("*.token"))
    token = token_file.read_text()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    second = ar(home, "quickstart")
    assert "claude mcp add --scope user agent-rooms" in second.stdout
    assert token_file.read_text() == token
    assert len(ok_json(home, "token", "list")["tokens"]) == 1
    assert token.strip() not in first.stdout + second.stdout  # printed lines read the file, never paste it


def test_every_next_step_quickstart_prints_runs_as_printed_and_the_second_agent_joins_the_lobby(
    tmp_path: Path,
) -> None:
    """A new user copies quickstart's lines into a shell whose PATH lacks the venv (before following the PATH
    advice): each `agent-rooms` line must run as printed, and the Codex agent it suggests must end up in the lobby."""
    home = tmp_path / "home"
    env = {"AGENT_ROOMS_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    script = str(Path(sys.executable).parent / "agent-rooms")
    first = subprocess.run([script, "quickstart"], env=env, capture_output=True, text=True, timeout=120, check=True)
    steps = [line.strip() for line in first.stdout.splitlines() if line.startswith(f"  {script} ")]
    assert [s.split()[1] for s in steps] == ["agent", "room", "connect", *["owner"] * 4, "invite"], first.stdout
    assert [s.split()[2] for s in steps[3:7]] == ["add", "verify", "verify", "enroll"]
    # Another person's whole way in: an owner, both owners verified (DESIGN §4) and a code for their machine
    # here, then on their machine (their own `agent-rooms`, so the bare name) login, their agent, joining the
    # lobby, the grant without which a mention of their agent is refused NO_GRANT, a listener, and consent.
    theirs = [line.strip() for line in first.stdout.splitlines() if line.startswith("    agent-rooms ")]
    kinds = ["login", "agent", "invite", "grant", "listen", "consent", "consent"]
    assert [t.split()[1] for t in theirs] == kinds, first.stdout
    assert theirs[0].startswith("agent-rooms login http://127.0.0.1:8765 --code enr_")
    assert "--owner bob" in theirs[1] and "invoke" in theirs[1] and "--owner bob --agent bob-claude" in theirs[2]
    assert theirs[3].startswith("agent-rooms grant add --from bob --to ") and "cross_owner = true" in theirs[4]
    assert theirs[6].startswith("agent-rooms consent accept prop_... --owner bob")
    for step in steps:
        done = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    codex = steps[0].split()[3]
    assert codex.endswith("-codex")
    conn = sqlite3.connect(home / "hub.db")
    members = {
        r[0]
        for r in conn.execute(
            "SELECT a.handle FROM room_agents m JOIN agents a USING (agent_id) JOIN rooms r USING (room_id)"
            " WHERE r.name = 'lobby'"
        )
    }
    conn.close()
    assert codex in members and len(members) == 2
    # Run again, it offers no line that would now collide with what the first run's lines made.
    again = subprocess.run([script, "quickstart"], env=env, capture_output=True, text=True, timeout=120, check=True)
    steps = [line.strip() for line in again.stdout.splitlines() if line.startswith(f"  {script} ")]
    assert [s.split()[1] for s in steps] == ["connect", "owner", "invite"], again.stdout  # bob exists, both verified
    for step in steps:
        done = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (step, done.stdout, done.stderr)


def test_quickstart_names_the_operators_own_agent_and_never_brings_the_operator_in(home: Path) -> None:
    """A second owner whose agent sorts first (bob-claude before zed-claude) joined: a second quickstart still
    connects the operator's own agent, and the person it offers to bring in is bob, never the operator."""
    me = {"AGENT_ROOMS_HOME": str(home), "LOGNAME": "zed", "USER": "zed"}

    def quickstart() -> str:
        done = CliRunner().invoke(cli, ["quickstart"], env=me, catch_exceptions=False)
        assert done.exit_code == 0, done.stderr
        return done.stdout

    assert "created owner zed, agent zed-claude" in quickstart()
    ok_json(home, "owner", "add", "bob")
    ok_json(home, "agent", "add", "bob-claude", "--owner", "bob", "--tool", "claude")
    out = quickstart()
    assert "Connect Claude Code as zed-claude " in out and "connect zed-claude --client claude --apply" in out
    assert "tokens/zed-claude.token" in out and "tokens/bob-claude.token" not in out
    assert "agent add zed-codex --owner zed" in out
    assert "another person (bob here" in out and "owner add bob" not in out and "enroll zed" not in out
    assert "invite create lobby --by zed" in out and "--owner zed" not in out.split("another person")[1]
    assert 'owner verify bob --method "in person"' in out and 'owner verify zed --method "in person"' in out
    assert "agent-rooms grant add --from bob --to zed" in out
    assert "consent list --owner bob" in out and "consent accept prop_... --owner bob" in out
    assert not (home / "tokens" / "bob-claude.token").exists()  # nothing minted for another owner's agent
    # Once both are verified and bob has granted zed, those lines are done and are no longer offered.
    ok_json(home, "owner", "verify", "bob")
    ok_json(home, "owner", "verify", "zed")
    ok_json(home, "grant", "add", "--from", "bob", "--to", "zed")
    out = quickstart()
    assert "owner verify" not in out and "grant add" not in out and "consent accept prop_... --owner bob" in out


def test_quickstarts_lines_for_another_person_lead_a_first_mention_to_consent_not_no_grant(tmp_path: Path) -> None:
    """Every line quickstart prints for bringing in bob, followed (his machine's as the operator may run them
    here): zed's agent's first mention of bob-claude waits on bob's consent
    instead of being refused NO_GRANT, `consent list --owner bob` shows it, and accepting it queues the wake."""
    home = tmp_path / "home"
    env = {"AGENT_ROOMS_HOME": str(home), "LOGNAME": "zed", "USER": "zed", "PATH": "/usr/bin:/bin"}
    script = str(Path(sys.executable).parent / "agent-rooms")
    out = subprocess.run([script, "quickstart"], env=env, capture_output=True, text=True, timeout=120, check=True)
    here = [line.strip().split("    #")[0] for line in out.stdout.splitlines() if line.startswith(f"  {script} owner")]
    theirs = [line.strip().split("    #")[0] for line in out.stdout.splitlines() if line.startswith("    agent-rooms ")]
    [invite] = [line.strip().split("    #")[0] for line in out.stdout.splitlines() if " invite create " in line]
    code = ok_json(home, *invite.split()[1:])["code"]
    [agent, accept, grant] = [t for t in theirs if t.split()[1] in ("agent", "invite", "grant")]
    for step in [*here, *(t.replace("agent-rooms", script, 1) for t in (agent, accept, grant))]:
        done = subprocess.run(["bash", "-c", step.replace("inv_...", code)], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    settings = replace(Settings.from_env(env), stdio_token=(home / "tokens" / "zed-claude.token").read_text().strip())

    async def mention() -> CallToolResult:
        async with Client(create_server(lambda _: Hub.open(settings))) as c:
            return await c.call_tool("post_message", {"room": "lobby", "text": "@bob-claude please look"})

    posted = anyio.run(mention)
    assert not posted.is_error, posted.content
    [mention] = posted.structured_content["mentions"]  # type: ignore[index]
    assert mention["outcome"] == "pending_consent", mention
    [line] = [t for t in theirs if t.startswith("agent-rooms consent list")]
    waiting = ok_json(home, *line.split()[1:])["proposals"]
    assert [(p["target"], p["kind"]) for p in waiting] == [("bob-claude", "wake")]
    [accept] = [t for t in theirs if t.startswith("agent-rooms consent accept")]
    args = accept.replace("prop_...", waiting[0]["proposal_id"]).split()[1:]
    assert ok_json(home, *args)["consent_state"] == "accepted"


def test_quickstart_prints_the_bare_command_when_path_finds_this_installation(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {"AGENT_ROOMS_HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["agent-rooms", "quickstart", "--http", "http://127.0.0.1:8800/mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "\n  agent-rooms room add lobby --agent " in out
    assert "http://127.0.0.1:8800/mcp" in out  # `make run PORT=8800` passes its URL on


@pytest.mark.parametrize(
    "args, said",
    [
        (["agent", "scopes", "bob-codx", "read"], "no such agent 'bob-codx' (agent-rooms agent list)"),
        (["room", "add", "lobbby", "--agent", "alice-claude"], "no such room 'lobbby' (agent-rooms room list)"),
        (["invite", "create", "lobby", "--by", "zed"], "no such owner 'zed' (agent-rooms owner list)"),
        (["token", "revoke", "tok_" + "A" * 22], f"no such token 'tok_{'A' * 22}' (agent-rooms token list)"),
        (["device", "revoke", "dev_" + "A" * 22], f"no such device 'dev_{'A' * 22}' (agent-rooms device list)"),
        (
            ["consent", "accept", "prop_" + "A" * 22, "--owner", "alice"],
            f"no such task or proposal 'prop_{'A' * 22}' (agent-rooms consent list --owner alice)",
        ),
        (["run", "log", "run_" + "A" * 22], f"no such run 'run_{'A' * 22}'"),
    ],
    ids=["agent", "room", "owner", "token", "device", "proposal", "run"],
)
def test_a_not_found_names_the_value_refused_and_the_command_that_lists_the_valid_ones(
    home: Path, args: list[str], said: str
) -> None:
    populated(home)
    r = ar(home, *args)
    assert r.exit_code == 1 and r.stderr.strip().startswith(f"NOT_FOUND: {said}"), r.stderr
    assert json.loads(ar(home, *args, "--json").stdout) == {"code": "NOT_FOUND", "message": r.stderr.strip()[11:]}


@pytest.mark.invariant(18)
def test_a_not_found_quotes_only_id_and_handle_shaped_references_never_a_token_or_free_text(home: Path) -> None:
    populated(home)
    token = ok_json(home, "token", "issue", "alice-claude")["token"]
    for args in (["token", "revoke", token], ["agent", "scopes", "Bob <b@x>; rm -rf", "read"]):
        r = ar(home, *args)
        assert r.exit_code == 1 and r.stderr.startswith("NOT_FOUND: no such "), r.stderr
        assert args[2] not in r.stderr and "'" not in r.stderr, r.stderr


def test_token_issue_prints_once_and_revoke_marks_it(home: Path) -> None:
    populated(home)
    issued = ok_json(home, "token", "issue", "alice-claude")
    assert set(issued) == {"token", "token_id"} and issued["token"].startswith("art_")
    ok_json(home, "token", "revoke", issued["token_id"])
    [listed] = ok_json(home, "token", "list", "alice-claude")["tokens"]
    assert listed["status"] == "revoked"
    assert issued["token"] not in ar(home, "token", "list").stdout


def test_errors_are_code_and_message_on_stderr_or_json_on_stdout(home: Path) -> None:
    populated(home)
    plain = ar(home, "owner", "add", "alice")
    assert plain.exit_code == 1
    assert plain.stderr.strip() == "CONFLICT: owner 'alice' already exists"
    as_json = ar(home, "owner", "add", "alice", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {"code": "CONFLICT", "message": "owner 'alice' already exists"}
    assert ar(home, "agent", "add", "x", "--owner", "alice", "--tool", "emacs").exit_code == 2
    bad_scope = ar(home, "agent", "add", "x", "--owner", "alice", "--tool", "codex", "--scopes", "read,root")
    assert bad_scope.exit_code == 1 and bad_scope.stderr.startswith("INVALID_ARGUMENT: scopes")


def test_giving_invoke_needs_confirmation_in_scripts(home: Path) -> None:
    populated(home)
    refused = ar(home, "agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex", "--scopes", "read,invoke")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert "alice-codex" not in ar(home, "agent", "list").stdout
    ok_json(
        home, "agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex", "--scopes", "read,invoke", "--yes"
    )
    assert ar(home, "agent", "scopes", "alice-claude", "read,invoke").exit_code == 2


def test_connect_prints_each_client_config_with_the_token_in_a_private_file(home: Path) -> None:
    populated(home)
    claude = ar(home, "connect", "alice-claude", "--client", "claude")
    token_file = home / "tokens" / "alice-claude.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert claude.stdout.startswith("claude mcp add --scope user agent-rooms -e AGENT_ROOMS_HOME=")
    assert f"AGENT_ROOMS_TOKEN_FILE={token_file}" in claude.stdout and claude.stdout.rstrip().endswith(" serve")
    http = ar(home, "connect", "alice-claude", "--client", "claude", "--http", "http://127.0.0.1:8765/mcp")
    assert "'Authorization: Bearer ${AGENT_ROOMS_TOKEN}'" in http.stdout and "$(cat" not in http.stdout
    assert f'export AGENT_ROOMS_TOKEN="$(cat {token_file})"' in http.stderr
    codex = ar(home, "connect", "alice-claude", "--client", "codex").stdout
    assert "[mcp_servers.agent-rooms]" in codex and 'args = ["serve"]' in codex
    codex_http = ar(home, "connect", "alice-claude", "--client", "codex", "--http", "http://127.0.0.1:8765/mcp").stdout
    assert 'bearer_token_env_var = "AGENT_ROOMS_TOKEN"' in codex_http
    entry = json.loads(ar(home, "connect", "alice-claude", "--client", "json").stdout)["mcpServers"]["agent-rooms"]
    assert entry["args"] == ["serve"] and entry["env"]["AGENT_ROOMS_TOKEN_FILE"] == str(token_file)
    everything = claude.stdout + http.stdout + codex + codex_http + json.dumps(entry)
    assert token not in everything
    assert ar(home, "connect", "nobody").stderr.startswith("NOT_FOUND")


@pytest.mark.invariant(56, 57)
def test_audit_verify_passes_clean_and_names_the_first_bad_row(home: Path) -> None:
    populated(home)
    clean = ar(home, "audit", "verify")
    assert clean.exit_code == 0 and clean.stdout.startswith("ok: 4 rows")
    conn = sqlite3.connect(home / "hub.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET reason = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 2")
    # Someone with the file drops the guard and edits a row.
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET target = 'room_forged' WHERE seq = 3")
    conn.commit()
    edited = ar(home, "audit", "verify", "--json")
    assert edited.exit_code == 1
    assert json.loads(edited.stdout)["first_bad_seq"] == 3
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit WHERE seq = 2")
    conn.commit()
    conn.close()
    deleted = ar(home, "audit", "verify")
    assert deleted.exit_code == 1 and "seq 2" in deleted.stderr


def test_audit_verify_detects_reordered_rows(home: Path) -> None:
    populated(home)
    conn = sqlite3.connect(home / "hub.db")
    conn.execute("DROP TRIGGER audit_no_update")
    rows = conn.execute("SELECT seq, action, target FROM audit WHERE seq IN (2, 3)").fetchall()
    for (seq, _, _), (_, action, target) in zip(rows, reversed(rows), strict=True):
        conn.execute("UPDATE audit SET action = ?, target = ? WHERE seq = ?", (action, target, seq))
    conn.commit()
    conn.close()
    assert json.loads(ar(home, "audit", "verify", "--json").stdout)["first_bad_seq"] == 2


def test_audit_tail_shows_metadata(home: Path) -> None:
    populated(home)
    rows = json.loads(ar(home, "audit", "tail", "-n", "2", "--json").stdout)
    assert [r["action"] for r in rows] == ["agent.add", "room.create"]
    assert "room.create" in ar(home, "audit", "tail").stdout


def test_audit_tail_shows_a_person_handles_and_names_and_json_keeps_the_ids(home: Path) -> None:
    populated(home)
    rows = json.loads(ar(home, "audit", "tail", "--json").stdout)
    by_action = {r["action"]: r for r in rows}
    assert by_action["agent.add"]["target"].startswith("agt_") and by_action["room.create"]["target"].startswith(
        "room_"
    )
    text = ar(home, "audit", "tail").stdout
    assert ": agent.add alice-claude ok" in text and ": room.create lobby ok" in text and ": owner.add alice ok" in text
    for r in rows:  # no id of something the operator can name shows raw
        for value in (r["target"], r["owner_id"]):
            assert value is None or value not in text, value


def test_a_new_token_file_revokes_the_token_it_replaces(home: Path) -> None:
    populated(home)
    ar(home, "connect", "alice-claude")
    first = (home / "tokens" / "alice-claude.token").read_text().strip()
    ar(home, "connect", "alice-claude", "--new-token")
    second = (home / "tokens" / "alice-claude.token").read_text().strip()
    statuses = sorted(t["status"] for t in ok_json(home, "token", "list", "alice-claude")["tokens"])
    assert first != second and statuses == ["active", "revoked"]


def test_connect_refuses_a_token_file_others_can_read(home: Path) -> None:
    populated(home)
    ar(home, "connect", "alice-claude")
    (home / "tokens" / "alice-claude.token").chmod(0o644)
    r = ar(home, "connect", "alice-claude")
    assert r.exit_code == 1 and r.stderr.startswith("HOME:") and "chmod 600" in r.stderr


@pytest.mark.parametrize("ttl", ["9999999999d", "1w", "-5d", "1.5h"])
def test_nonsense_token_lifetimes_are_usage_errors_not_tracebacks(home: Path, ttl: str) -> None:
    populated(home)
    r = ar(home, "token", "issue", "alice-claude", "--ttl", ttl)
    assert r.exit_code == 2 and "--ttl" in r.stderr


def test_token_lifetimes_are_capped(home: Path) -> None:
    populated(home)
    r = ar(home, "token", "issue", "alice-claude", "--ttl", "367d")
    assert r.exit_code == 1 and r.stderr.startswith("INVALID_ARGUMENT: ttl")
    assert ar(home, "token", "issue", "alice-claude", "--ttl", "366d").exit_code == 0


def test_a_mistyped_command_is_offered_the_one_meant(tmp_path: Path) -> None:
    # A process of its own: in this one, earlier tests have loaded commands the lazy group would suggest anyway.
    env = {"AGENT_ROOMS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "agent_rooms_mcp", "lisen"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "No such command 'lisen'" in done.stderr and "'listen'" in done.stderr, done.stderr
