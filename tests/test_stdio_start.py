"""A stdio hub answers the handshake and the tool list before its hub has opened (DESIGN §11, cold start), and
nothing else: a request that needs the hub waits for it, and a client that never lists the tools still gets one.

Real `python -m agent_rooms_mcp serve` processes over their pipes; no time is asserted, only what is answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from agent_rooms_mcp.home import write_private_file
from tests.conftest import World

REPO = Path(__file__).resolve().parent.parent
ALICE = "alice-claude"
HELLO = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}  # fmt: skip
READY = {"jsonrpc": "2.0", "method": "notifications/initialized"}
# A bound on a hung server, not a timing assertion: the test fails rather than waiting for ever.
STUCK_S = 60


def _serve(world: World, errlog: IO[bytes], token: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
    env["AGENT_ROOMS_HOME"] = str(world.settings.home)
    if token is not None:
        path = world.settings.tokens_dir / "agent.token"
        write_private_file(path, token.encode("ascii"))
        env["AGENT_ROOMS_TOKEN_FILE"] = str(path)
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve"]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog)


def _send(stdin: IO[bytes] | None, *messages: dict[str, Any]) -> None:
    assert stdin is not None
    stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    stdin.flush()


def _answer(stdout: IO[bytes] | None, rpc_id: int) -> dict[str, Any]:
    assert stdout is not None
    while True:
        line = stdout.readline()
        assert line, f"the server closed stdout before answering request {rpc_id}"
        message: dict[str, Any] = json.loads(line)
        if message.get("id") == rpc_id:
            return message


async def test_a_call_sent_with_the_handshake_waits_for_the_hub_and_is_answered_by_it(
    world: World, tmp_path: Path
) -> None:
    """No tools/list first: the call itself opens the hub, and is authenticated by it."""
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    with (tmp_path / "stderr.log").open("wb") as errlog, _serve(world, errlog, world.tokens[ALICE]) as proc:
        try:
            _send(proc.stdin, HELLO, READY, call)
            assert "result" in _answer(proc.stdout, 1)
            answer = _answer(proc.stdout, 2)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(STUCK_S)
    result = answer["result"]
    assert not result.get("isError"), result
    assert result["structuredContent"]["agent"]["handle"] == ALICE


async def test_a_client_that_never_lists_the_tools_still_gets_its_hub(world: World, tmp_path: Path) -> None:
    """The hub opens on its own after the handshake: here it says, as it opens, that this process has no
    credential (the supervisor and housekeeping start with it)."""
    log = tmp_path / "stderr.log"
    with log.open("wb") as errlog, _serve(world, errlog, None) as proc:
        try:
            _send(proc.stdin, HELLO, READY)
            assert "result" in _answer(proc.stdout, 1)
            for _ in range(STUCK_S * 10):
                if "stdio.no_credential" in log.read_text() or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert "stdio.no_credential" in log.read_text(), log.read_text()[-2000:]
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(STUCK_S)
    assert proc.returncode == 0, log.read_text()[-2000:]
