"""The real MCP Inspector CLI (a TypeScript-SDK client) against our server, over stdio and over a real
`agent-rooms serve --http` process, in both protocol eras: it lists the tools, shows a success, and shows a
tool error as its code, not as a complaint that the error does not match the tool's outputSchema
(upstream typescript-sdk#1943; invariant 88).

The Inspector and the Node 22 it needs are pinned in tests/inspector/package-lock.json and installed once
with `npm ci` into .cache/inspector/ (ignored by git). Without npm or its registry the tests skip, saying
why; CI sets AGENT_ROOMS_REQUIRE_INSPECTOR=1 so that there a missing Inspector fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import pytest

from agent_rooms_mcp.gate import ERROR_META_KEY
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.server import TOOLS
from tests.conftest import World
from tests.hubprocess import serve_http

# On one xdist worker: the module's Inspector is installed and its fixture built once, not once per worker.
pytestmark = pytest.mark.xdist_group("inspector")
PINS = Path(__file__).parent / "inspector"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "inspector"
NODE = Path("node_modules/node/bin/node")
LAUNCHER = Path("node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js")
REQUIRED = "AGENT_ROOMS_REQUIRE_INSPECTOR"
# Generous bounds for a loaded two-core machine, not expectations: about 30 s to install, 1-3 s a call.
PING_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 900
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


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRED):
        pytest.fail(f"{reason} ({REQUIRED} is set)")
    pytest.skip(reason)


def _install() -> Path:
    """The pinned Inspector, installed once per lock file; a half-done install is never reused."""
    pins = [PINS / "package.json", PINS / "package-lock.json"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in pins)).hexdigest()[:16]
    home = CACHE / key
    if (home / LAUNCHER).exists() and (home / NODE).exists():
        return home
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed: the MCP Inspector checks need it")
    try:
        ping = subprocess.run(
            [npm, "ping", "--fetch-retries=0", f"--fetch-timeout={PING_TIMEOUT_S * 1000 // 2}"],
            capture_output=True,
            text=True,
            timeout=PING_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable("the npm registry did not answer `npm ping`: the MCP Inspector checks need it")
    if ping.returncode != 0:
        said = [line for line in ping.stderr.splitlines() if line.startswith("npm error")] or ["no error text"]
        _unavailable(f"the npm registry is unreachable ({said[0]}): the MCP Inspector checks need it")
    staging = CACHE / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for p in pins:
        shutil.copy(p, staging / p.name)
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=staging,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    try:
        staging.rename(home)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return home


@pytest.fixture(scope="module")
def inspector(tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    home = _install()
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
