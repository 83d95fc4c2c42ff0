"""The README's `claude mcp add` line with the real Claude Code CLI, when it is installed.

Install it with `npm i @anthropic-ai/claude-code` and put its bin directory on PATH, or name the binary in
AGENT_ROOMS_TEST_CLAUDE_BIN (as tests/test_contract_claude.py reads it); otherwise these tests are skipped.
`claude mcp list` health-checks each server without a model.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import World

CLAUDE = os.environ.get("AGENT_ROOMS_TEST_CLAUDE_BIN") or shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="no Claude Code CLI (PATH or AGENT_ROOMS_TEST_CLAUDE_BIN)")


async def test_claude_mcp_list_reports_the_stdio_server_connected(world: World, tmp_path: Path) -> None:
    home = tmp_path / "claude-home"
    project = home / "project"
    project.mkdir(parents=True)
    connect = [sys.executable, "-m", "agent_rooms_mcp", "connect", "alice-claude", "--client", "claude"]
    printed = await anyio.run_process(connect, env={**os.environ, "AGENT_ROOMS_HOME": str(world.settings.home)})
    line = printed.stdout.decode().strip()
    assert CLAUDE is not None
    # The printed line names this interpreter's agent-rooms; under pytest that is the venv's own script.
    assert line.startswith("claude mcp add --scope user agent-rooms ")
    env = {
        "HOME": str(home),
        "PATH": f"{Path(CLAUDE).parent}:{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    with anyio.fail_after(240):
        await anyio.run_process(["bash", "-c", line], cwd=project, env=env)
        listed = (await anyio.run_process([CLAUDE, "mcp", "list"], cwd=project, env=env)).stdout.decode()
    assert "agent-rooms" in listed and "Connected" in listed, listed
