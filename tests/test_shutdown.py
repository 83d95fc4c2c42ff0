"""`serve --http` told to stop (SIGTERM, what `systemctl stop` sends) exits, whatever its clients hold open.

A real server process on a world's home, and clients speaking HTTP/1.1 on one TCP connection each through h11,
asking again as soon as they are answered: what a pooled client (the listener's httpx, an MCP client) does
with its connection. Each case is one that held the server for ever: a connection the server accepted just as
it began to stop, and long polls (the listener's `wait`, MCP's `wait_for_messages`) in flight.

The process is stopped (SIGSTOP) while the clients connect: the kernel completes their connections and keeps
their requests, and the server, woken with SIGTERM pending, accepts them in the same turn of its loop as it
begins to stop, so their `connection_made` runs after uvicorn told every connection it knew to close.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx2
from anyio.abc import Process, SocketStream

from agent_rooms_mcp.audit import Actor
from tests.conftest import World
from tests.hubprocess import Served, serve_http
from tests.test_remote_cli import Machine

# Generous: only to end a hang (the server exits in well under a second when it works).
EXIT_BOUND_S = 60
MODERN = "2026-07-28"
UVICORN_TICK_S = 0.1
# Long polls cut short at the stop answer within this; their own timeouts (25 s, 50 s) are longer.
LONG_POLL_CUT_S = 20
OPERATOR = Actor("operator", "op", via="cli")


class OneConnection:
    """HTTP/1.1 on one TCP connection, one request after another, as a pooled client reuses its connection."""

    def __init__(self, stream: SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._conn = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def to(cls, served: Served) -> AsyncIterator[OneConnection]:
        stream = await anyio.connect_tcp("127.0.0.1", served.port)
        async with stream:
            yield cls(stream, f"127.0.0.1:{served.port}")

    async def send(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        head = {"host": self._host, "content-type": "application/json", "content-length": str(len(payload))}
        request = h11.Request(method="POST", target=path, headers=list({**head, **headers}.items()))
        await self._stream.send(self._conn.send(request) + self._conn.send(h11.Data(data=payload)))
        await self._stream.send(self._conn.send(h11.EndOfMessage()))

    async def answer(self) -> tuple[int, dict[str, Any]] | None:
        """The next answer, or None when the server closed the connection first."""
        status, body = 0, b""
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                return None  # closed before the answer was whole
            if event is h11.NEED_DATA:
                try:
                    data = await self._stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
                self._conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()
                try:
                    return status, json.loads(body)
                except ValueError:
                    return status, {"not_json": body.decode(errors="replace")}

    async def closed(self) -> bool:
        """Whether the server closes the connection with nothing more to say (read after an answer)."""
        return await self.answer() is None


class Listener:
    """The listener API as `agent-rooms listen` uses it: a device credential and a holder said hello."""

    def __init__(self, credential: str, holder: str) -> None:
        self.headers = {"authorization": f"Bearer {credential}"}
        self.holder = holder

    async def wait(self, conn: OneConnection, timeout_ms: int) -> None:
        await conn.send("/owner/v1/listener/wait", self.headers, {"holder": self.holder, "timeout_ms": timeout_ms})


class Agent:
    """An agent's MCP client of the 2026-07-28 era: each call one POST, no session."""

    def __init__(self, token: str) -> None:
        self.headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream",
                        "mcp-protocol-version": MODERN}  # fmt: skip
        self._id = 0

    async def wait_for_messages(self, conn: OneConnection, timeout_s: int) -> None:
        self._id += 1
        arguments = {"room": "lobby", "after": 10**6, "timeout_s": timeout_s}
        meta = {"io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}}  # fmt: skip
        call = {"name": "wait_for_messages", "arguments": arguments, "_meta": meta}
        headers = {**self.headers, "mcp-method": "tools/call", "mcp-name": "wait_for_messages"}
        await conn.send("/mcp", headers, {"jsonrpc": "2.0", "id": self._id, "method": "tools/call", "params": call})


async def listener_of(world: World, served: Served, root: Path) -> Listener:
    """Alice's enrolled device (a `login` process, as on her machine), said hello as a listener holding nothing."""
    async with world.hub() as hub:
        made = await hub.devices.enroll(OPERATOR, "alice", served.base)
    machine = Machine(root, "alice-laptop")
    done = await machine.ar("login", served.base, "--code", made.code, "--name", "alice-laptop")
    assert done.code == 0, done.err
    credential = json.loads((machine.home / "device.json").read_text())["credential"]
    listener = Listener(credential, "lst_shutdown_test")
    hello = {"holder": listener.holder, "host": "laptop", "agents": [], "max_running": 1, "max_running_per_agent": 1}
    async with OneConnection.to(served) as conn:
        await conn.send("/owner/v1/listener/hello", listener.headers, hello)
        said = await conn.answer()
    assert said is not None and said[0] == 200, said
    return listener


async def keep_asking(conn: OneConnection, ask: Any, answers: list[int]) -> None:
    """Its request is sent: ask again as soon as answered, until the server closes the connection; `answers`
    collects the statuses it answered."""
    while (answer := await conn.answer()) is not None:
        answers.append(answer[0])
        try:
            await ask(conn)
        except (anyio.BrokenResourceError, h11.LocalProtocolError):
            return  # closed after its answer


async def exits(process: Process) -> int:
    with anyio.fail_after(EXIT_BOUND_S):
        return await process.wait()


@asynccontextmanager
async def stopped(process: Process) -> AsyncIterator[None]:
    """The process stopped (SIGSTOP) inside; always continued after, so nothing waits on a stopped process."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)


async def test_connections_accepted_as_the_stop_begins_are_closed_and_the_server_exits(
    world: World, tmp_path: Path
) -> None:
    """Accepted after uvicorn told its connections to close, they were never told: each kept being answered
    with keep-alive, and a client that asks again at once (a listener's next long poll) held the server for
    ever (the hang seen under load in test_listener's restart test)."""
    async with serve_http(world.settings.home) as served:
        listener = await listener_of(world, served, tmp_path)
        agent = Agent(world.tokens["alice-claude"])
        ask_listener = lambda c: listener.wait(c, 1000)  # noqa: E731
        ask_agent = lambda c: agent.wait_for_messages(c, 1)  # noqa: E731
        answers: dict[str, list[int]] = {"listener": [], "agent": []}
        async with stopped(served.process), OneConnection.to(served) as polling, OneConnection.to(served) as mcp:
            # Connected and asked, all in the kernel's buffers: the stopped server has read nothing yet.
            await ask_listener(polling)
            await ask_agent(mcp)
            # uvicorn looks whether to stop every 0.1 s (its main loop's tick): stopped longer than that, it
            # sees SIGTERM in the turn of its loop that accepts these connections, before they are made.
            await anyio.sleep(UVICORN_TICK_S * 3)
            served.process.send_signal(signal.SIGTERM)
            os.kill(served.process.pid, signal.SIGCONT)
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_asking, polling, ask_listener, answers["listener"])
                tg.start_soon(keep_asking, mcp, ask_agent, answers["agent"])
                await exits(served.process)  # -15: uvicorn raises the SIGTERM it caught again, once stopped
    # Closed unanswered: the server was stopping when they arrived (each client tries again elsewhere).
    assert answers == {"listener": [], "agent": []}


async def in_flight(probe: OneConnection, ask: Any, refused: Any) -> None:
    """Until `probe`'s request is refused for another of the same caller's being in flight: then it is."""
    while True:
        await ask(probe)
        answer = await probe.answer()
        assert answer is not None
        if refused(answer):
            return
        await anyio.sleep(0.05)  # answered: the long poll has not begun yet; nothing to wait on but time


def waiting_already(answer: tuple[int, dict[str, Any]]) -> bool:
    return answer[0] == 429


def waits_past_cap(answer: tuple[int, dict[str, Any]]) -> bool:
    result = answer[1].get("result", {})
    return bool(result.get("isError")) and "RATE_LIMITED" in json.dumps(result)


async def test_long_polls_in_flight_are_answered_as_the_stop_begins(world: World, tmp_path: Path) -> None:
    """A listener's `wait` (25 s) and an agent's `wait_for_messages` (50 s) answer what they have, nothing new,
    as soon as the server is told to stop: not at their own timeouts, however long the grace."""
    env = {"AGENT_ROOMS_LIMIT_WAITS_PER_AGENT": "1", "AGENT_ROOMS_LIMIT_HTTP_SHUTDOWN_GRACE_S": "3600"}
    async with serve_http(world.settings.home, env=env) as served:
        listener = await listener_of(world, served, tmp_path)
        agent = Agent(world.tokens["alice-claude"])
        async with (
            OneConnection.to(served) as polling,
            OneConnection.to(served) as mcp,
            OneConnection.to(served) as probe,
        ):
            await listener.wait(polling, 25_000)
            await agent.wait_for_messages(mcp, 50)
            # Each is in flight once a second of its caller's is refused for it (one at a time per listener,
            # and here one per agent).
            await in_flight(probe, lambda c: listener.wait(c, 0), waiting_already)
            await in_flight(probe, lambda c: agent.wait_for_messages(c, 1), waits_past_cap)
            served.process.send_signal(signal.SIGTERM)
            # Well inside both polls' own time: only their end at the stop answers them by then.
            with anyio.fail_after(LONG_POLL_CUT_S):
                work = await polling.answer()
                page = await mcp.answer()
                # And each connection is closed after its answer: none is left for a next request to hold.
                assert await polling.closed() and await mcp.closed()
            await exits(served.process)
    assert work == (200, {"work": False})
    assert page is not None and page[0] == 200
    assert page[1]["result"]["structuredContent"]["messages"] == []


async def test_a_stream_of_server_messages_open_does_not_hold_the_stop(world: World) -> None:
    """A legacy-era session's GET stream (an MCP client's channel for the server's own messages) stays open
    as long as its client: the server told to stop ends it rather than wait, however long the grace."""
    legacy = "2025-11-25"
    client = {"protocolVersion": legacy, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": client}
    token = world.tokens["alice-claude"]
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    env = {"AGENT_ROOMS_LIMIT_HTTP_SHUTDOWN_GRACE_S": "3600"}
    async with serve_http(world.settings.home, env=env) as served, httpx2.AsyncClient(headers=headers) as http:
        opened = await http.post(served.mcp, json=hello)
        assert opened.status_code == 200, opened.text
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": legacy}
        ready = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(served.mcp, json=ready, headers=session)).status_code == 202
        timeout = httpx2.Timeout(10, read=None)  # the stream says nothing until it ends
        async with http.stream("GET", served.mcp, headers=session, timeout=timeout) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            served.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(EXIT_BOUND_S):
                async for _ in stream.aiter_bytes():
                    pass  # until the server ends the stream
            await exits(served.process)
