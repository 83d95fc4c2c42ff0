"""`agent-rooms connect --apply / --check` (DESIGN §9) against fake `claude` and `codex` CLIs on PATH that take
the real `mcp add|get|list|remove` arguments and write the real files (tests/fakes/mcp_config.py), in a
throwaway HOME. What a test reads back is the client's own file, as the client would.

The real CLIs from npm are driven the same way in test_connect_real.py when they are installed."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from agent_rooms_mcp.cli import cli
from tests.fakes.common import write_wrapper

URL = "http://127.0.0.1:8765/mcp"


class Machine:
    """A person's machine: a hub home, a HOME holding the clients' configuration, a project directory, and
    the fake CLIs first on PATH."""

    def __init__(self, root: Path) -> None:
        self.home = root / "hub"
        self.user = root / "user"
        self.project = self.user / "project"
        self.bin = root / "bin"
        self.cli_log = root / "cli.log"
        self.project.mkdir(parents=True)
        self.connectors: list[list[str]] = []
        for tool in ("claude", "codex"):
            write_wrapper(tool, self.bin)

    @property
    def env(self) -> dict[str, str]:
        return {
            "AGENT_ROOMS_HOME": str(self.home),
            "HOME": str(self.user),
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "AGENT_ROOMS_CLAUDE_BIN": str(self.bin / "claude"),
            "AGENT_ROOMS_CODEX_BIN": str(self.bin / "codex"),
            "FAKE_CLI_LOG": str(self.cli_log),
            "FAKE_CLAUDEAI_CONNECTORS": json.dumps(self.connectors),
            "CLAUDE_CONFIG_DIR": "",
            "CODEX_HOME": "",
            "AGENT_ROOMS_TOKEN": "",
        }

    def ar(self, *args: str, **env: str) -> Result:
        return CliRunner().invoke(cli, list(args), env={**self.env, **env}, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        done = self.ar(*args)
        assert done.exit_code == 0, (args, done.stdout, done.stderr)
        return done

    @property
    def claude_json(self) -> Path:
        return self.user / ".claude.json"

    @property
    def codex_toml(self) -> Path:
        return self.user / ".codex" / "config.toml"

    def claude_user_entries(self) -> dict[str, Any]:
        return json.loads(self.claude_json.read_text()).get("mcpServers", {})

    def codex_entries(self) -> dict[str, Any]:
        return tomllib.loads(self.codex_toml.read_text()).get("mcp_servers", {})

    def commands_run(self) -> list[list[str]]:
        if not self.cli_log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.cli_log.read_text().splitlines()]

    def token(self, agent: str) -> str:
        return (self.home / "tokens" / f"{agent}.token").read_text().strip()

    def check(self, *flags: str) -> tuple[int, dict[str, dict[str, Any]]]:
        done = self.ar("connect", "--check", "--json", *flags)
        return done.exit_code, {c["id"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    m = Machine(tmp_path)
    monkeypatch.chdir(m.project)  # `.mcp.json` and local scope are the working directory's
    m.ok("init")
    m.ok("owner", "add", "alice", "--json")
    m.ok("agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude", "--json")
    m.ok("agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex", "--json")
    yield m


def apply(m: Machine, agent: str, client: str, *flags: str) -> dict[str, Any]:
    done = m.ok("connect", agent, "--client", client, "--apply", "--json", *flags)
    return json.loads(done.stdout)


@pytest.mark.parametrize("client", ["claude", "codex"])
@pytest.mark.parametrize("over", ["stdio", "http"])
def test_apply_adds_a_user_scope_entry_without_the_token_and_a_second_apply_changes_nothing(
    machine: Machine, client: str, over: str
) -> None:
    m = machine
    agent = f"alice-{client}"
    flags = ["--http", URL] if over == "http" else []
    assert apply(m, agent, client, *flags)["outcome"] == "added"
    token = m.token(agent)
    config = m.claude_json if client == "claude" else m.codex_toml
    held = config.read_text()
    assert token not in held and "art_" not in held
    entry = (m.claude_user_entries() if client == "claude" else m.codex_entries())["agent-rooms"]
    if over == "stdio":
        assert entry["args"] == ["serve"] and entry["command"].endswith("agent-rooms")
        assert entry["env"] == {
            "AGENT_ROOMS_HOME": str(m.home),
            "AGENT_ROOMS_TOKEN_FILE": str(m.home / "tokens" / f"{agent}.token"),
        }
    elif client == "claude":
        assert entry == {"type": "http", "url": URL, "headers": {"Authorization": "Bearer ${AGENT_ROOMS_TOKEN}"}}
    else:
        assert entry == {"url": URL, "bearer_token_env_var": "AGENT_ROOMS_TOKEN"}
    added = m.commands_run()
    assert [a[:2] for a in added] == [["mcp", "add"]]
    if client == "claude":
        assert added[0][2:4] == ["--scope", "user"]
    # Again, with nothing changed: no client command runs, no byte of its file moves.
    assert apply(m, agent, client, *flags)["outcome"] == "unchanged"
    assert m.commands_run() == added and config.read_text() == held
    assert (m.home / "clients.json").stat().st_mode & 0o777 == 0o600
    code, checks = m.check()
    assert code == 0 and {c["status"] for c in checks.values()} == {"ok"}, checks


@pytest.mark.parametrize("client", ["claude", "codex"])
def test_apply_asks_before_replacing_an_entry_of_that_name_and_yes_replaces_it(machine: Machine, client: str) -> None:
    m = machine
    subprocess.run([str(m.bin / client), "mcp", "add", *(["--scope", "user"] if client == "claude" else []),
                    "agent-rooms", "--", "/usr/bin/someone-elses", "serve"], check=True, env=m.env, cwd=m.project,
                   capture_output=True)  # fmt: skip
    config = m.claude_json if client == "claude" else m.codex_toml
    before = config.read_text()
    # No terminal to ask on and no --yes: refused, the other entry untouched.
    refused = m.ar("connect", f"alice-{client}", "--client", client, "--apply")
    assert refused.exit_code == 2 and "--yes" in refused.stderr and "replace" in refused.stderr
    assert config.read_text() == before
    assert apply(m, f"alice-{client}", client, "--yes")["outcome"] == "replaced"
    entries = m.claude_user_entries() if client == "claude" else m.codex_entries()
    assert entries["agent-rooms"]["command"].endswith("agent-rooms") and len(entries) == 1


def test_apply_with_a_client_that_is_not_installed_says_so(machine: Machine) -> None:
    m = machine
    done = m.ar("connect", "alice-claude", "--apply", AGENT_ROOMS_CLAUDE_BIN=str(m.bin / "no-claude"))
    assert done.exit_code == 1 and done.stderr.startswith("CLIENT:") and "not installed" in done.stderr
    assert not (m.home / "clients.json").exists()


def test_the_printed_http_line_stores_a_reference_not_the_token(machine: Machine) -> None:
    """The printed `claude mcp add … -H` line, run by a shell as a person would paste it, leaves
    `${AGENT_ROOMS_TOKEN}` in ~/.claude.json: a `$(cat FILE)` would have stored the token itself."""
    m = machine
    printed = m.ok("connect", "alice-claude", "--client", "claude", "--http", URL)
    line = printed.stdout.strip()
    assert "$(cat" not in line and "--scope user" in line
    assert "export AGENT_ROOMS_TOKEN=" in printed.stderr
    subprocess.run(["sh", "-c", line], check=True, env={**m.env, "AGENT_ROOMS_TOKEN": m.token("alice-claude")},
                   cwd=m.project, capture_output=True)  # fmt: skip
    held = m.claude_json.read_text()
    assert "${AGENT_ROOMS_TOKEN}" in held and m.token("alice-claude") not in held
    quick = m.ok("quickstart").stdout
    assert "$(cat" not in quick.split("export AGENT_ROOMS_TOKEN=")[-1].split("\n", 1)[1]


def test_check_reports_a_missing_token_file_and_a_revoked_token(machine: Machine) -> None:
    m = machine
    apply(m, "alice-claude", "claude")
    token_file = m.home / "tokens" / "alice-claude.token"
    token_file.rename(token_file.with_suffix(".moved"))
    code, checks = m.check()
    assert code == 1 and checks["clients.token"]["status"] == "fail"
    assert "missing" in checks["clients.token"]["message"] and "connect alice-claude" in checks["clients.token"]["fix"]
    token_file.with_suffix(".moved").rename(token_file)
    token_id = json.loads(m.ok("token", "list", "alice-claude", "--json").stdout)["tokens"][0]["token_id"]
    m.ok("token", "revoke", token_id, "--json")
    code, checks = m.check()
    assert code == 1 and "revoked" in checks["clients.token"]["message"]
    assert m.token("alice-claude") not in json.dumps(checks)
    # A new token: the entry reads the file, so it needs no change, and the drift is gone.
    rotated = m.ok("connect", "alice-claude", "--new-token")
    assert "reads the new token from" in rotated.stderr
    code, checks = m.check()
    assert code == 0 and checks["clients.entries"]["status"] == "ok", checks


def test_check_reports_an_http_token_in_the_environment_that_was_revoked(machine: Machine) -> None:
    m = machine
    apply(m, "alice-claude", "claude", "--http", URL)
    old = m.token("alice-claude")
    rotated = m.ok("connect", "alice-claude", "--new-token")
    assert "export AGENT_ROOMS_TOKEN=" in rotated.stderr
    done = m.ar("connect", "--check", "--json", AGENT_ROOMS_TOKEN=old)
    checks = {c["id"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.exit_code == 1 and "AGENT_ROOMS_TOKEN in this shell is revoked" in checks["clients.token"]["message"]
    assert m.ar("connect", "--check", AGENT_ROOMS_TOKEN=m.token("alice-claude")).exit_code == 0


def test_check_reports_a_second_entry_for_the_same_hub(machine: Machine) -> None:
    m = machine
    apply(m, "alice-claude", "claude")
    # The README's line pasted as well, at the default (local) scope, under another name.
    subprocess.run([str(m.bin / "claude"), "mcp", "add", "rooms", "-e", f"AGENT_ROOMS_HOME={m.home}", "--",
                    str(m.bin / "agent-rooms"), "serve"], check=True, env=m.env, cwd=m.project,
                   capture_output=True)  # fmt: skip
    code, checks = m.check()
    assert code == 1 and checks["clients.duplicate"]["status"] == "fail"
    assert (
        "'agent-rooms'" in checks["clients.duplicate"]["message"]
        and "'rooms'" in checks["clients.duplicate"]["message"]
    )


def test_check_reports_a_literal_token_in_any_client_file_without_quoting_it(machine: Machine) -> None:
    m = machine
    m.ok("connect", "alice-claude")
    token = m.token("alice-claude")
    (m.project / ".mcp.json").write_text(json.dumps({"mcpServers": {"hub": {
        "type": "http", "url": URL, "headers": {"Authorization": f"Bearer {token}"}}}}))  # fmt: skip
    code, checks = m.check()
    literal = checks["clients.literal_token"]
    assert code == 1 and literal["status"] == "fail"
    assert "mcpServers.hub.headers.Authorization" in literal["message"] and ".mcp.json" in literal["message"]
    assert token not in json.dumps(checks)
    (m.project / ".mcp.json").unlink()
    m.codex_toml.parent.mkdir(parents=True)
    m.codex_toml.write_text(f'[mcp_servers.hub]\nurl = "{URL}"\nbearer_token = "{token}"\n')
    code, checks = m.check()
    assert code == 1 and "mcp_servers.hub.bearer_token" in checks["clients.literal_token"]["message"]


def test_check_reports_an_entry_changed_or_gone_since_apply(machine: Machine) -> None:
    m = machine
    apply(m, "alice-codex", "codex")
    subprocess.run([str(m.bin / "codex"), "mcp", "add", "agent-rooms", "--", "/elsewhere/agent-rooms", "serve"],
                   check=True, env=m.env, capture_output=True)  # fmt: skip
    code, checks = m.check()
    assert code == 1 and "changed" in checks["clients.entries"]["message"]
    assert "--apply" in checks["clients.entries"]["fix"]
    subprocess.run([str(m.bin / "codex"), "mcp", "remove", "agent-rooms"], check=True, env=m.env, capture_output=True)
    code, checks = m.check()
    assert code == 1 and "gone" in checks["clients.entries"]["message"]


def test_a_synced_claude_ai_connector_beside_the_entry_is_drift_and_yes_turns_connectors_off(machine: Machine) -> None:
    m = machine
    public = "https://hub.example.com/mcp"
    apply(m, "alice-claude", "claude", "--http", public)
    m.connectors.append(["agent rooms", public])
    m.connectors.append(["Unrelated", "https://elsewhere.example/mcp"])
    code, checks = m.check()
    connector = checks["clients.connector"]
    assert code == 1 and connector["status"] == "fail" and "claude.ai agent rooms" in connector["message"]
    assert "Unrelated" not in connector["message"] and "disableClaudeAiConnectors" in connector["fix"]
    settings = m.user / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"theme": "dark"}))
    fixed = m.ar("connect", "--check", "--yes")
    assert fixed.exit_code == 0, fixed.stdout
    assert json.loads(settings.read_text()) == {"theme": "dark", "disableClaudeAiConnectors": True}


def test_check_and_apply_refuse_what_they_cannot_do(machine: Machine) -> None:
    m = machine
    assert m.ar("connect", "alice-claude", "--client", "json", "--apply").exit_code == 2
    assert m.ar("connect", "--apply").exit_code == 2
    assert m.ar("connect", "--check", "--apply").exit_code == 2
    assert m.ar("connect", "nobody", "--apply").stderr.startswith("NOT_FOUND")
    assert m.commands_run() == []
