"""`agent-rooms bridge` and each run's socket (DESIGN §5): a woken CLI reaches the hub holding only its run token.

Real parts throughout: the supervisor spawns the fake CLIs, which launch the MCP server their config names
exactly as the real CLIs would; the bridge is a real process; the hub serves each run on a real Unix socket.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from agent_rooms_mcp import bridge
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.run_socket import SOCKET_NAME
from tests.conftest import OPERATOR, World
from tests.tool_errors import error_code
from tests.wakeworld import Fakes, ended, post, runs, supervisor, until

BRIDGE = [sys.executable, "-m", "agent_rooms_mcp", "bridge"]
# What must never reach a woken run's MCP server: the hub's home and what lives in it.
HUB_ONLY = ("AGENT_ROOMS_HOME", "AGENT_ROOMS_TOKEN")


def bridge_env(token_file: Path, socket: Path | str, **extra: str) -> dict[str, str]:
    """Only what the supervisor gives the bridge: no home, no database path (PATH to find nothing else)."""
    return {"PATH": os.environ["PATH"], bridge.TOKEN_FILE_ENV: str(token_file), bridge.SOCKET_ENV: str(socket), **extra}


def own_copy(token_file: Path, where: Path) -> Path:
    """The run's token as this test's own file: a root supervisor hands the run's files to the user its CLIs
    run as, and the bridge refuses a token file another user owns."""
    copy = where / f"copy-{token_file.parent.name}.token"
    write_private_file(copy, token_file.read_bytes())
    return copy


def bridge_client(env: dict[str, str], mode: str = "auto") -> Client:
    return Client(StdioServerParameters(command=BRIDGE[0], args=BRIDGE[1:], env=env), mode=mode)


def messages(world: World) -> int:
    return int(world.sql("SELECT COUNT(*) AS n FROM messages")[0]["n"])


@asynccontextmanager
async def running(world: World, fakes: Fakes) -> AsyncIterator[dict[str, sqlite3.Row]]:
    """Woken alice-bot and alice-cx runs that hang until stopped: their sockets are served while this lasts."""
    fakes.scenario("hang")
    agents = ("alice-bot", "alice-cx")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot @alice-cx wait here")
        found: dict[str, sqlite3.Row] = {}
        for agent in agents:
            [run] = await until(lambda a=agent: [r for r in runs(world, a) if r["state"] == "running"], "run starts")
            await until((world.settings.runs_dir / run["run_id"] / SOCKET_NAME).exists, "its socket is served")
            found[agent] = run
        try:
            yield found
        finally:
            async with world.hub() as hub:
                for agent in agents:
                    await hub.runs.stop_as_owner(OPERATOR, agent, None)
            for agent in agents:
                await until(lambda a=agent: ended(world, a), "the run ends")


@pytest.mark.invariant(100)
async def test_a_woken_cli_replies_through_the_bridge_which_holds_no_home(woken: World, fakes: Fakes) -> None:
    fakes.scenario("dump_env")
    async with supervisor(woken):
        posted = await post(woken, "alice-claude", "@alice-bot hello")
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    [call] = fakes.calls()
    # The reply went through the bridge, with the run's own token: whoami named the run.
    assert call["run_id"] == run["run_id"] and call["posted_seq"] == posted["seq"] + 1
    [reply] = woken.sql(
        "SELECT a.handle FROM messages m JOIN agents a USING (agent_id) WHERE m.seq = ?", (call["posted_seq"],)
    )
    assert reply["handle"] == "alice-bot"
    # Neither the CLI nor the MCP server it launched was told where the hub's home is.
    assert not set(HUB_ONLY) & set(call["env"])
    run_dir = woken.settings.runs_dir / run["run_id"]
    server = json.loads((run_dir / "mcp.json").read_text())["mcpServers"]["agent-rooms"]
    assert server["args"] == BRIDGE[1:] and set(server["env"]) == {
        bridge.TOKEN_FILE_ENV, bridge.SOCKET_ENV, "AGENT_ROOMS_RUN_ID"
    }  # fmt: skip
    home = str(woken.settings.home)
    assert all(not v.startswith(home) or v.startswith(str(run_dir)) for v in server["env"].values())
    assert str(woken.settings.db_path) not in json.dumps(server)
    # The run's socket is gone with the run, and its directory holds what DESIGN §5 says and nothing else.
    assert not (run_dir / SOCKET_NAME).exists()
    assert sorted(os.listdir(run_dir)) == ["mcp.json", "tmp", "token"]
    assert (woken.settings.run_logs_dir / run["run_id"] / "events.jsonl").exists()


@pytest.mark.invariant(100)
def test_the_bridge_loads_nothing_of_the_store() -> None:
    code = "import sys, agent_rooms_mcp.bridge; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    hub_side = tuple(f"agent_rooms_mcp.{m}" for m in ("store", "hub", "services", "auth.authenticator", "vault", "cli"))
    assert "agent_rooms_mcp.bridge" in loaded and not [m for m in loaded if m.startswith(hub_side)]
    assert not {"sqlite3", "aiosqlite", "mcp"} & set(loaded)


@pytest.mark.invariant(100)
async def test_a_stdio_client_through_the_bridge_is_the_run_in_both_eras(
    woken: World, fakes: Fakes, tmp_path: Path
) -> None:
    async with running(woken, fakes) as both:
        run = both["alice-bot"]
        run_dir = woken.settings.runs_dir / run["run_id"]
        # A HOME and a working directory with no database anywhere: the bridge needs neither.
        empty = tmp_path / "empty-home"
        empty.mkdir()
        env = bridge_env(own_copy(run_dir / "token", tmp_path), run_dir / SOCKET_NAME, HOME=str(empty))
        for mode in ("auto", "legacy"):
            async with bridge_client(env, mode) as client:
                me = await client.call_tool("whoami", {})
                assert not me.is_error and me.structured_content["run_id"] == run["run_id"]
                # A refusal of the hub reaches the client as the hub wrote it: another room is NOT_FOUND.
                other = await client.call_tool("read_messages", {"room": "bobs-den"})
                assert error_code(other) == "NOT_FOUND"
                # While the bridge holds a session, it holds no file of the hub's home open.
                for pid in _bridge_pids(env):
                    held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
                    assert not [h for h in held if h.startswith(str(woken.settings.home))], held


def _bridge_pids(env: dict[str, str]) -> list[int]:
    """The bridge processes started with this env (their environ names this token file)."""
    marker = f"{bridge.TOKEN_FILE_ENV}={env[bridge.TOKEN_FILE_ENV]}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            continue
    assert found, "the bridge process was not found"
    return found


@pytest.mark.invariant(100)
async def test_the_run_socket_refuses_every_credential_but_its_runs_own(
    woken: World, fakes: Fakes, tmp_path: Path
) -> None:
    async with running(woken, fakes) as both:
        run = both["alice-bot"]
        run_dir = woken.settings.runs_dir / run["run_id"]
        sock = run_dir / SOCKET_NAME
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(run_dir.stat().st_mode & 0o777) == "0o700"
        mine = (run_dir / "token").read_text()
        # Another live run's token (alice-cx, woken by the same message, in the same room), the agent's own
        # token, another agent's, and a forgery: each is a credential the hub would take anywhere else.
        others = (woken.settings.runs_dir / both["alice-cx"]["run_id"] / "token").read_text()
        before, denials = messages(woken), _denials(woken)
        post_call = {"name": "post_message", "arguments": {"room": "lobby", "text": "not mine to say"}}
        # sun_path is 108 bytes and pytest's paths are long: reach the socket through its directory's descriptor.
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        uds = f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"
        for token in (others, woken.tokens["alice-bot"], woken.tokens["alice-claude"], "arr_forged"):
            async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=uds)) as http:
                answer = await http.post(
                    "http://localhost/mcp",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": post_call},
                    headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"},
                )
            assert (answer.status_code, answer.json()) == (401, {"error": "UNAUTHENTICATED"})
        os.close(dir_fd)
        # Through the bridge, the client reads the hub's code.
        wrong = tmp_path / "wrong.token"
        write_private_file(wrong, others.encode())
        with pytest.raises(Exception) as refused:  # the SDK wraps it in task groups
            async with bridge_client(bridge_env(wrong, sock)) as client:
                await client.call_tool("whoami", {})
        leaf = refused.value
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, MCPError) and str(leaf).startswith("UNAUTHENTICATED")
        # A denied call changes nothing, and each refusal left its audit row.
        assert messages(woken) == before
        assert _denials(woken) > denials
        # The other run's token still works on its own socket; this run's on this one.
        for token_file, sock_of in ((wrong, both["alice-cx"]), (own_copy(run_dir / "token", tmp_path), run)):
            env = bridge_env(token_file, woken.settings.runs_dir / sock_of["run_id"] / SOCKET_NAME)
            async with bridge_client(env) as client:
                me = await client.call_tool("whoami", {})
            assert me.structured_content["run_id"] == sock_of["run_id"]
        assert mine


def _denials(world: World) -> int:
    return int(world.sql("SELECT COUNT(*) AS n FROM audit WHERE action = 'auth.authenticate'")[0]["n"])


async def test_an_openclaw_wake_gets_the_bridge_and_replies(woken: World, fakes: Fakes, tmp_path: Path) -> None:
    async with woken.hub() as hub:
        scopes = parse_scopes("read,post,task,invoke")
        (tmp_path / "alice-oc").mkdir()
        await hub.accounts.add_agent(
            OPERATOR, "alice-oc", "alice", AgentTool.OPENCLAW, scopes, str(tmp_path / "alice-oc")
        )
        await hub.rooms.add_agent(OPERATOR, "lobby", "alice-oc")
    fakes.scenario("reply")
    async with supervisor(woken):
        posted = await post(woken, "alice-claude", "@alice-oc hello")
        [run] = await until(lambda: ended(woken, "alice-oc"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    [call] = fakes.calls()
    assert call["run_id"] == run["run_id"] and call["posted_seq"] == posted["seq"] + 1
    config = woken.settings.runs_dir / run["run_id"] / "openclaw.json"
    assert call["argv"][call["argv"].index("--config") + 1] == str(config)
    assert json.loads(config.read_text())["mcp"]["servers"]["agent-rooms"]["args"] == BRIDGE[1:]


def test_an_owners_openclaw_config_is_included_not_replaced(tmp_path: Path) -> None:
    from agent_rooms_mcp.wake.adapters import OpenClaw, Plan, openclaw_config

    (tmp_path / ".openclaw").mkdir()
    owners = tmp_path / ".openclaw" / "openclaw.json"
    assert openclaw_config({"HOME": str(tmp_path)}) is None  # none yet: nothing to include
    owners.write_text("{}")
    assert openclaw_config({"HOME": str(tmp_path)}) == owners
    assert openclaw_config({"HOME": "/nowhere", "OPENCLAW_CONFIG_PATH": str(owners)}) == owners
    plan = Plan("openclaw", tmp_path, tmp_path, {"A": "b"}, False, None, "", child_env={"HOME": str(tmp_path)})
    argv, _ = OpenClaw().argv(plan)
    written = json.loads((tmp_path / "openclaw.json").read_text())
    assert written["$include"] == str(owners) and argv[argv.index("--config") + 1] == str(tmp_path / "openclaw.json")
    assert oct((tmp_path / "openclaw.json").stat().st_mode & 0o777) == "0o600"


# --- the bridge alone ----------------------------------------------------------------------------------------


async def _one_answer(env: dict[str, str], *lines: bytes) -> dict[str, Any]:
    """Write lines to a bridge's stdin and read its first answer (a deadline only bounds a hang)."""
    async with await anyio.open_process(BRIDGE, env=env) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in lines:
            await proc.stdin.send(line + b"\n")
        buffer = b""
        with anyio.fail_after(60):
            while b"\n" not in buffer:
                buffer += await proc.stdout.receive()
        await proc.stdin.aclose()
        return json.loads(buffer.split(b"\n", 1)[0])


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    write_private_file(path, b"arr_not_checked_here")
    return path


async def test_an_unreachable_hub_is_an_error_naming_the_socket_not_a_hang(tmp_path: Path) -> None:
    missing = tmp_path / "no.sock"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    answer = await _one_answer(bridge_env(_token_file(tmp_path), missing), json.dumps(init).encode())
    assert answer["id"] == 1 and answer["error"]["code"] == bridge.HUB_UNREACHABLE
    assert f"unix:{missing}" in answer["error"]["message"]


@pytest.mark.invariant(66)
async def test_a_line_over_the_cap_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    env = bridge_env(_token_file(tmp_path), tmp_path / "no.sock", AGENT_ROOMS_LIMIT_STDIO_LINE_BYTES="1000")
    huge = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"pad":"' + b"x" * 100_000 + b'"}}'
    answer = await _one_answer(env, huge)
    assert answer["id"] == 7 and answer["error"]["message"].startswith("TOO_LARGE")


@pytest.mark.invariant(66)
async def test_a_line_over_the_cap_without_a_request_id_is_refused_with_id_null(tmp_path: Path) -> None:
    env = bridge_env(_token_file(tmp_path), tmp_path / "no.sock", AGENT_ROOMS_LIMIT_STDIO_LINE_BYTES="1000")
    answer = await _one_answer(env, b"y" * 100_000)
    assert answer["id"] is None and answer["error"] == {
        "code": bridge.INVALID_REQUEST, "message": "TOO_LARGE: a message line is at most 1000 bytes"
    }  # fmt: skip


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = _token_file(tmp_path)
    token.chmod(0o644)
    done = subprocess.run(BRIDGE, env=bridge_env(token, tmp_path / "s"), capture_output=True, text=True, input="")
    assert done.returncode == 2 and "chmod 600" in done.stderr and str(token) in done.stderr


@pytest.mark.parametrize(
    "env, problem",
    [
        ({bridge.HUB_URL_ENV: "http://hub.example.com"}, "plain http is allowed only to loopback"),
        ({bridge.HUB_URL_ENV: "ftp://hub.example.com"}, "is not an https:// URL"),
        ({bridge.HUB_URL_ENV: "https://h", bridge.SOCKET_ENV: "/s"}, "set only one"),
        ({}, "set AGENT_ROOMS_BRIDGE_SOCKET"),
    ],
)
def test_where_the_hub_is_must_be_said_safely(env: dict[str, str], problem: str) -> None:
    with pytest.raises(bridge.BridgeError, match=problem):
        bridge.target_from_env(env)


def test_hub_urls_are_reached_at_their_mcp_endpoint() -> None:
    assert bridge.target_from_env({bridge.HUB_URL_ENV: "https://hub.example/"}).url == "https://hub.example/mcp"
    assert bridge.target_from_env({bridge.HUB_URL_ENV: "http://127.0.0.1:8765/mcp"}).url == "http://127.0.0.1:8765/mcp"
    assert bridge.target_from_env({bridge.SOCKET_ENV: "/r/s"}).uds == "/r/s"


def test_the_bridges_wire_names_are_the_sdks() -> None:
    from mcp.shared.inbound import (
        MCP_METHOD_HEADER,
        MCP_NAME_HEADER,
        MCP_PROTOCOL_VERSION_HEADER,
        NAME_BEARING_METHODS,
        encode_header_value,
    )
    from mcp_types import PROTOCOL_VERSION_META_KEY

    assert (bridge.VERSION_HEADER, bridge.METHOD_HEADER, bridge.NAME_HEADER) == (
        MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER, MCP_NAME_HEADER
    )  # fmt: skip
    assert dict(NAME_BEARING_METHODS) == bridge.NAME_BEARING_METHODS
    assert bridge.VERSION_META_KEY == PROTOCOL_VERSION_META_KEY
    for value in ("whoami", "naïve", " padded", "=?base64?x?=", "tab\there"):
        assert bridge._header_value(value) == encode_header_value(value)


async def test_a_session_the_hub_closed_is_reopened_by_the_bridge(woken: World, fakes: Fakes, tmp_path: Path) -> None:
    """The hub closes legacy sessions (idle expiry, or an agent past its cap): the CLI's next call still works."""
    async with running(woken, fakes) as both:
        run_dir = woken.settings.runs_dir / both["alice-bot"]["run_id"]
        token = (run_dir / "token").read_text()
        env = bridge_env(own_copy(run_dir / "token", tmp_path), run_dir / SOCKET_NAME)
        async with bridge_client(env, "legacy") as client:
            assert not (await client.call_tool("whoami", {})).is_error
            # As many new sessions of the same run as its cap allows: the bridge's, now the least recently
            # used, is closed to make room for the last.
            dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
            transport = httpx2.AsyncHTTPTransport(uds=f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
            init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
            async with httpx2.AsyncClient(transport=transport) as http:
                for n in range(woken.settings.limits.http_sessions_per_agent):
                    opened = await http.post(
                        "http://localhost/mcp",
                        json={"jsonrpc": "2.0", "id": n, "method": "initialize", "params": init},
                        headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"},
                    )
                    assert opened.status_code == 200
            os.close(dir_fd)
            closed = _not_found(woken)
            me = await client.call_tool("whoami", {})
            assert not me.is_error and me.structured_content["run_id"] == both["alice-bot"]["run_id"]
            # The hub did refuse the closed session once (its audit row), and the bridge opened another.
            assert _not_found(woken) == closed + 1


def _not_found(world: World) -> int:
    return int(world.sql("SELECT COUNT(*) AS n FROM audit WHERE reason = 'unknown_session'")[0]["n"])


async def test_the_bridge_reaches_a_hub_over_http_by_url(world: World, tmp_path: Path) -> None:
    """A listener's runs use AGENT_ROOMS_HUB_URL (issue 15): the same relay over TCP, here to `serve --http`."""
    from tests.hubprocess import serve_http

    token = tmp_path / "token"
    write_private_file(token, world.tokens["alice-claude"].encode())
    async with serve_http(world.settings.home, env={"AGENT_ROOMS_SUPERVISOR": "0"}) as served:
        relay_env = {"PATH": os.environ["PATH"], bridge.TOKEN_FILE_ENV: str(token)}
        relay_env[bridge.HUB_URL_ENV] = served.base
        for mode in ("auto", "legacy"):
            async with bridge_client(relay_env, mode) as client:
                me = await client.call_tool("whoami", {})
                posted = await client.call_tool("post_message", {"room": "lobby", "text": f"bridged {mode}"})
            assert me.structured_content["agent"]["handle"] == "alice-claude" and not posted.is_error
    texts = [r["text"] for r in world.sql("SELECT text FROM messages ORDER BY seq")]
    assert texts == ["bridged auto", "bridged legacy"]
