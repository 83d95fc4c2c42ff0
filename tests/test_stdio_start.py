"""A stdio hub answers the handshake and the tool list before its hub has opened (DESIGN §11, cold start), and
nothing else: a request that needs the hub waits for it, and a client that never lists the tools still gets one.
How it ends: a call sent just before stdin closes is answered, a closed stdin ends it cleanly, and a hub that
cannot open ends it without waiting for stdin.

Real `python -m agent_rooms_mcp serve` processes over their pipes; no time is asserted, only what is answered."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.hub import OPEN_IMPORTS, Hub
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
LIST = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
# How long a process whose hub failed may take to end: a bound on a hang, it ends at once.
ENDS_WITHIN_S = 30


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


def _call(rpc_id: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def _answers(stdout: bytes) -> dict[Any, dict[str, Any]]:
    return {m.get("id"): m for m in (json.loads(line) for line in stdout.splitlines() if line.strip())}


async def test_a_call_written_just_before_stdin_closes_is_still_answered(world: World, tmp_path: Path) -> None:
    """A one-shot client (`printf '…' | agent-rooms serve`) writes its requests and closes stdin. Its call waits
    for the hub, and the end of stdin right behind it would have the SDK cancel the call in flight: the post made,
    audited and logged, its answer never written. The end is passed on once the call is answered
    (stdio.ANSWER_BEFORE_END_S)."""
    with (tmp_path / "stderr.log").open("wb") as errlog, _serve(world, errlog, world.tokens[ALICE]) as proc:
        _send(proc.stdin, HELLO, READY, _call(2, "post_message", room="lobby", text="one shot"))
        out, _ = proc.communicate(timeout=STUCK_S)
    assert [r["text"] for r in world.sql("SELECT text FROM messages")] == ["one shot"]
    answers = _answers(out)
    assert 1 in answers
    assert 2 in answers, "the post was made, but its answer never came"
    assert not answers[2]["result"].get("isError"), answers[2]


async def test_a_client_closing_stdin_ends_the_serve_cleanly(world: World, tmp_path: Path) -> None:
    """Stdin closed after a call: exit 0 and nothing on stderr but the log lines. Closed under a cancelled scope,
    the hub would have aiosqlite's close of the writer cancelled, its thread reporting into a closed event loop
    ("Event loop is closed" on stderr): it closes when serving ends instead."""
    log = tmp_path / "stderr.log"
    with log.open("wb") as errlog, _serve(world, errlog, world.tokens[ALICE]) as proc:
        _send(proc.stdin, HELLO, READY, LIST, _call(2, "whoami"))
        assert proc.stdout is not None
        seen: set[Any] = set()
        while 2 not in seen:
            line = proc.stdout.readline()
            assert line, "the server closed stdout before answering"
            seen.add(json.loads(line).get("id"))
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(STUCK_S)
    assert proc.returncode == 0, log.read_text()[-2000:]
    stray = [line for line in log.read_text().splitlines() if line and not line.startswith("{")]
    assert stray == [], "\n".join(stray[-20:])


async def test_a_serve_whose_hub_cannot_open_ends_without_waiting_for_stdin(world: World, tmp_path: Path) -> None:
    """A database that cannot be opened: the handshake and the tool list are answered, then the process ends (the
    error on stderr) and the client sees its server go. A read of stdin blocked on a non-daemon thread would keep
    the interpreter alive until the client closed stdin (lines.BoundedLines reads on a daemon thread)."""
    world.db.write_bytes(b"not a database" * 1000)
    log = tmp_path / "stderr.log"
    with log.open("wb") as errlog, _serve(world, errlog, world.tokens[ALICE]) as proc:
        try:
            _send(proc.stdin, HELLO, READY, LIST, _call(2, "whoami"))
            for _ in range(ENDS_WITHIN_S * 10):
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            ended = proc.poll() is not None
        finally:
            proc.kill()
            proc.wait(STUCK_S)
    assert "file is not a database" in log.read_text()
    assert ended, "the hub failed to open, and the process is still running with stdin open"


async def test_a_2026_client_is_answered_its_discovery_and_tool_list_before_the_hub_opens(
    world: World, tmp_path: Path
) -> None:
    """A 2026-07-28 client opens with `server/discover`, not `initialize`: it is answered, and the tool list after it,
    without the hub, here one that cannot open."""
    world.db.write_bytes(b"not a database" * 1000)
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta}}
    with (tmp_path / "stderr.log").open("wb") as errlog, _serve(world, errlog, world.tokens[ALICE]) as proc:
        try:
            _send(proc.stdin, discover, listing)
            assert "2026-07-28" in _answer(proc.stdout, 1)["result"]["supportedVersions"]
            assert _answer(proc.stdout, 2)["result"]["tools"]
        finally:
            proc.kill()
            proc.wait(STUCK_S)


def test_the_modules_loaded_ahead_of_the_hub_are_those_its_opening_imports() -> None:
    """A stdio start loads `OPEN_IMPORTS` on a worker thread so that `Hub.open` finds them loaded and does not hold
    the event loop importing them; the list is kept by hand beside `Hub.open`'s own imports, so it is held to them."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Hub.open.__wrapped__)))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported == set(OPEN_IMPORTS)
