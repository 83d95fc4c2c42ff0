"""In-memory figures (information only, DESIGN §11): `mcp.Client(server)` in this one process, auto mode.

Process CPU per call (time.process_time, every thread of the process: client, server and the SQLite
threads) for the bare server's `echo` and `echo_sync` and for our server's `whoami`, `post_message` and
`read_messages` (20, after 20 posts), one caller,
interleaved round by round. Logging is configured as `agent-rooms serve` does (structlog JSON on
stderr at INFO), so the gate's per-call line is paid here too; run.py sends stderr to a file.

Usage: AGENT_ROOMS_HOME=... AGENT_ROOMS_TOKEN=... python bench/inmemory.py ROUNDS SECONDS
       -> one JSON document on stdout
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import echo_server  # bench/echo_server.py: bench/ is sys.path[0] when run as a script
from mcp import Client

from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import Settings

WARMUP_S = 0.3
TEXT = "hello from the agent-rooms bench, " + "x" * 30


async def cell(call: Callable[[], Awaitable[Any]], seconds: float) -> dict[str, Any]:
    deadline = time.perf_counter() + WARMUP_S
    warmup_calls = 0
    while time.perf_counter() < deadline:
        await call()
        warmup_calls += 1
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        await call()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"calls": n, "warmup_calls": warmup_calls, "calls_s": n / wall, "cpu_us_call": cpu / n * 1e6}


async def main(rounds: int, seconds: float) -> list[dict[str, Any]]:
    settings = Settings.from_env()  # the hub at AGENT_ROOMS_HOME, acting with AGENT_ROOMS_TOKEN
    ours = create_server(lambda _: Hub.open(settings))
    rows: list[dict[str, Any]] = []
    async with Client(echo_server.build()) as echo, Client(ours) as hub:

        async def call_echo() -> None:
            result = await echo.call_tool("echo", {"text": TEXT})
            if result.is_error:
                raise RuntimeError(f"echo failed: {result}")

        async def call_echo_sync() -> None:
            result = await echo.call_tool("echo_sync", {"text": TEXT})
            if result.is_error:
                raise RuntimeError(f"echo_sync failed: {result}")

        async def call_whoami() -> None:
            result = await hub.call_tool("whoami", {})
            if result.is_error:
                raise RuntimeError(f"whoami failed: {result}")

        async def call_post() -> None:
            result = await hub.call_tool("post_message", {"room": "lobby", "text": TEXT})
            if result.is_error:
                raise RuntimeError(f"post_message failed: {result}")

        async def call_read() -> None:
            result = await hub.call_tool("read_messages", {"room": "lobby", "limit": 20})
            if result.is_error:
                raise RuntimeError(f"read_messages failed: {result}")

        for _ in range(20):  # every read_messages reads a full page of 20
            await call_post()
        calls = {
            "echo": call_echo,
            "echo_sync": call_echo_sync,
            "whoami": call_whoami,
            "post_message": call_post,
            "read_messages": call_read,
        }
        order = list(calls)
        for r in range(rounds):
            k = r % len(order)
            for tool in order[k:] + order[:k]:  # rotate, so no tool always runs first
                rows.append({"round": r, "tool": tool, **await cell(calls[tool], seconds)})
    return rows


if __name__ == "__main__":
    configure_logging(json=True)
    print(json.dumps(anyio.run(main, int(sys.argv[1]), float(sys.argv[2]))))
