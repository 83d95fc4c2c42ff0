"""`connect --apply` with the real Claude Code and Codex CLIs from npm, when they are installed (issue 18).

Install them with `npm install --prefix /tmp/clis @anthropic-ai/claude-code @openai/codex` and point
AGENT_ROOMS_TEST_CLAUDE_BIN / AGENT_ROOMS_TEST_CODEX_BIN at `/tmp/clis/node_modules/.bin/claude` / `codex`
(or put them on PATH); otherwise these tests are skipped, saying which is missing. Each runs in a throwaway
HOME: nothing touches your own ~/.claude.json or ~/.codex. `claude mcp list` health-checks each server
without a model or a login.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from agent_rooms_mcp.cli import cli
from tests.hubprocess import serve_http

CLAUDE = os.environ.get("AGENT_ROOMS_TEST_CLAUDE_BIN") or shutil.which("claude")
CODEX = os.environ.get("AGENT_ROOMS_TEST_CODEX_BIN") or shutil.which("codex")
needs_claude = pytest.mark.skipif(
    CLAUDE is None, reason="Claude Code is not installed (set AGENT_ROOMS_TEST_CLAUDE_BIN or put claude on PATH)"
)
needs_codex = pytest.mark.skipif(
    CODEX is None, reason="Codex is not installed (set AGENT_ROOMS_TEST_CODEX_BIN or put codex on PATH)"
)
CLI_DEADLINE_S = 240


class Box:
    def __init__(self, root: Path) -> None:
        self.home, self.user = root / "hub", root / "user"
        self.user.mkdir(parents=True)

    def env(self, **more: str) -> dict[str, str]:
        path = ":".join(str(Path(b).parent) for b in (CLAUDE, CODEX) if b) + f":{Path(sys.executable).parent}"
        return {
            "AGENT_ROOMS_HOME": str(self.home),
            "HOME": str(self.user),
            "PATH": f"{path}:/usr/bin:/bin",
            "AGENT_ROOMS_CLAUDE_BIN": CLAUDE or "claude",
            "AGENT_ROOMS_CODEX_BIN": CODEX or "codex",
            "CLAUDE_CONFIG_DIR": "",
            "CODEX_HOME": "",
            "AGENT_ROOMS_TOKEN": "",
            **more,
        }

    def ar(self, *args: str, **env: str) -> dict[str, Any]:
        done = CliRunner().invoke(cli, [*args, "--json"], env=self.env(**env), catch_exceptions=False)
        assert done.exit_code == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def run(self, *argv: str, **env: str) -> str:
        done = subprocess.run(
            argv, env=self.env(**env), cwd=self.user, capture_output=True, text=True, timeout=CLI_DEADLINE_S
        )
        return done.stdout + done.stderr

    def token(self, agent: str) -> str:
        return (self.home / "tokens" / f"{agent}.token").read_text().strip()


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Box:
    b = Box(tmp_path)
    monkeypatch.chdir(b.user)
    assert CliRunner().invoke(cli, ["init"], env=b.env()).exit_code == 0
    b.ar("owner", "add", "alice")
    b.ar("agent", "add", "alice-claude", "--owner", "alice", "--tool", "claude")
    b.ar("agent", "add", "alice-codex", "--owner", "alice", "--tool", "codex")
    return b


def claude_user_entries(box: Box) -> dict[str, Any]:
    return json.loads((box.user / ".claude.json").read_text()).get("mcpServers", {})


@needs_claude
def test_real_claude_apply_stdio_is_user_scope_connected_and_idempotent(box: Box) -> None:
    assert CLAUDE is not None
    assert box.ar("connect", "alice-claude", "--client", "claude", "--apply")["outcome"] == "added"
    entry = claude_user_entries(box)["agent-rooms"]
    assert entry["type"] == "stdio" and entry["args"] == ["serve"]
    assert box.token("alice-claude") not in (box.user / ".claude.json").read_text()
    listed = box.run(CLAUDE, "mcp", "list")
    assert "agent-rooms:" in listed and "Connected" in listed.split("agent-rooms:")[1].splitlines()[0], listed
    assert box.ar("connect", "alice-claude", "--client", "claude", "--apply")["outcome"] == "unchanged"
    assert claude_user_entries(box) == {"agent-rooms": entry}
    assert box.ar("connect", "--check")["ok"]


@needs_claude
async def test_real_claude_apply_http_connects_to_a_served_hub_through_the_environment(box: Box) -> None:
    assert CLAUDE is not None
    claude = CLAUDE
    async with serve_http(box.home) as served:
        # The CLI runs its own event loop, and the client its own process: both off this test's loop.
        def apply() -> dict[str, Any]:
            return box.ar("connect", "alice-claude", "--client", "claude", "--http", served.mcp, "--apply")

        assert (await anyio.to_thread.run_sync(apply))["outcome"] == "added"
        held = (box.user / ".claude.json").read_text()
        assert "${AGENT_ROOMS_TOKEN}" in held and box.token("alice-claude") not in held
        token = box.token("alice-claude")
        listed = await anyio.to_thread.run_sync(lambda: box.run(claude, "mcp", "list", AGENT_ROOMS_TOKEN=token))
        line = listed.split("agent-rooms:")[1].splitlines()[0]
        assert "Connected" in line, listed
        assert (await anyio.to_thread.run_sync(apply))["outcome"] == "unchanged"


@needs_codex
def test_real_codex_apply_is_read_back_by_codex_and_idempotent(box: Box) -> None:
    assert CODEX is not None
    assert box.ar("connect", "alice-codex", "--client", "codex", "--apply")["outcome"] == "added"
    got = subprocess.run([CODEX, "mcp", "get", "agent-rooms", "--json"], env=box.env(), cwd=box.user,
                         capture_output=True, text=True, timeout=CLI_DEADLINE_S, check=True)  # fmt: skip
    shown = json.loads(got.stdout)
    assert shown["transport"]["type"] == "stdio" and shown["transport"]["args"] == ["serve"]
    config = box.user / ".codex" / "config.toml"
    held = config.read_text()
    assert box.token("alice-codex") not in held
    assert box.ar("connect", "alice-codex", "--client", "codex", "--apply")["outcome"] == "unchanged"
    assert config.read_text() == held
    url = "http://127.0.0.1:8765/mcp"
    changed = box.ar("connect", "alice-codex", "--client", "codex", "--http", url, "--apply", "--yes")
    assert changed["outcome"] == "replaced"
    assert tomllib.loads(config.read_text())["mcp_servers"]["agent-rooms"] == {
        "url": url,
        "bearer_token_env_var": "AGENT_ROOMS_TOKEN",
    }
