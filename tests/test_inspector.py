"""The real MCP Inspector CLI (a TypeScript-SDK client) against our server, over stdio and over a real
`agent-rooms serve --http` process, in both protocol eras: it lists the tools, shows a success, and shows a
tool error as its code, not as a complaint that the error does not match the tool's outputSchema
(upstream typescript-sdk#1943; invariant 88).

The Inspector and the Node 22 it needs are pinned in tests/inspector/package-lock.json and installed once
with `npm ci` into .cache/inspector/ (ignored by git). Without npm or its registry the tests skip, saying
why; CI sets AGENT_ROOMS_REQUIRE_INSPECTOR=1 so that there a missing Inspector fails instead.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.gate import ERROR_META_KEY
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.server import TOOLS
from tests.conftest import World
from tests.hubprocess import serve_http
from tests.npmpins import NODE, NpmPins

# On one xdist worker: the module's Inspector is installed and its fixture built once, not once per worker.
pytestmark = pytest.mark.xdist_group("inspector")
LAUNCHER = Path("node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js")
PINNED = NpmPins(Path(__file__).parent / "inspector", "MCP Inspector", "AGENT_ROOMS_REQUIRE_INSPECTOR", LAUNCHER)
# A generous bound for a loaded two-core machine, not an expectation: 1-3 s a call.
CALL_TIMEOUT_S = 180
CONNECT_TIMEOUT_MS = 120_000
# What a TypeScript-SDK client says when structuredContent does not match the tool's outputSchema.
SCHEMA_COMPLAINT = "must have required property"
ERAS = ("legacy", "modern")
TOOL_IS_ERROR_EXIT = 5  # the Inspector CLI's exit status for a tool result with isError: true


@dataclass(frozen=True)
class Inspector:
    node: Path
    launcher: Path
    home: Path

    async def run(self, target: list[str], *args: str) -> tuple[int, dict[str, Any], str]:
        """(exit status, the JSON it printed on stdout or {}, its stderr) of one `--cli` invocation."""
        argv = [str(self.node), str(self.launcher), "--cli", "--format", "json", "-q"]
        argv += ["--connect-timeout", str(CONNECT_TIMEOUT_MS), *target, *args]
        # Its catalog, client config and any OAuth state go under a scratch HOME, never the user's.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.home)}
        with anyio.fail_after(CALL_TIMEOUT_S):
            done = await anyio.run_process(argv, env=env, check=False)
        out = done.stdout.decode()
        return done.returncode, json.loads(out) if out.strip() else {}, done.stderr.decode()


@pytest.fixture(scope="module")
def inspector(tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    home = PINNED.install()
    return Inspector(home / NODE, home / LAUNCHER, tmp_path_factory.mktemp("inspector-home"))


async def show_tools_a_success_and_a_coded_error(inspector: Inspector, target: list[str]) -> None:
    rc, listed, err = await inspector.run(target, "--method", "tools/list")
    assert rc == 0, err
    assert {t["name"] for t in listed["result"]["tools"]} == {fn.__name__ for fn, _ in TOOLS}
    for era in ERAS:
        call = ("--protocol-era", era, "--method", "tools/call", "--tool-name", "read_messages", "--tool-args-json")
        rc, fine, err = await inspector.run(target, *call, json.dumps({"room": "lobby"}))
        assert rc == 0, (era, err)
        assert fine["result"]["structuredContent"]["messages"] == []

        rc, failed, err = await inspector.run(target, *call, json.dumps({"room": "nowhere"}))
        assert SCHEMA_COMPLAINT not in err, (era, err)
        assert rc == TOOL_IS_ERROR_EXIT, (era, err)
        result = failed["result"]
        assert result["isError"] is True and "structuredContent" not in result
        assert [c["text"] for c in result["content"]] == ["NOT_FOUND: no such room"]
        assert result["_meta"][ERROR_META_KEY] == {"code": "NOT_FOUND", "message": "no such room"}


@pytest.mark.invariant(88)
async def test_the_inspector_shows_an_error_code_over_stdio(world: World, inspector: Inspector) -> None:
    token_file = world.settings.home / "tokens" / "alice-claude.token"
    write_private_file(token_file, world.tokens["alice-claude"].encode())
    target = [
        *("-e", f"AGENT_ROOMS_HOME={world.settings.home}"),
        *("-e", f"AGENT_ROOMS_TOKEN_FILE={token_file}"),
        *("-e", "AGENT_ROOMS_SUPERVISOR=0"),
        *(sys.executable, "-m", "agent_rooms_mcp", "serve"),
    ]
    await show_tools_a_success_and_a_coded_error(inspector, target)


@pytest.mark.invariant(88)
async def test_the_inspector_shows_an_error_code_over_http(world: World, inspector: Inspector) -> None:
    async with serve_http(world.settings.home) as served:
        target = [served.mcp, *("--header", f"Authorization: Bearer {world.tokens['alice-claude']}")]
        await show_tools_a_success_and_a_coded_error(inspector, target)
