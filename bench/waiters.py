"""Idle long-polls (DESIGN §11, invariant 84): what 1,000 waiting `wait_for_messages` calls cost; part of `make bench`.

On a fresh hub, the real server (`python -m agent_rooms_mcp serve --http`, supervisor off) is measured in
two states, in one run:

- none: no waiter. Server CPU over an idle window, then `post_message` latency and server CPU per post
  for another owner's agent (bob-claude) posting in its own room, sequential calls on one keep-alive
  connection (bench/raw_client.py).
- waiting: N calls of `wait_for_messages` (alice-codex in `lobby`, timeout 50 s), one connection each,
  all in flight; after a settling second, the same two measures again.
Then the fan-out: one post into `lobby`, timed until the last of the N waiters has its answer (each
answer is checked to hold that message).

The per-agent wait cap and the connection cap are raised for the run (AGENT_ROOMS_LIMIT_*), since one
agent holds every waiter here: the cost of an idle waiter is what is measured, not the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_client import Connection, tool_call
from world import OPERATOR, UNLIMITED_RATES, build_hub

from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.settings import Settings

BENCH = Path(__file__).resolve().parent
WAITER, POSTER, OTHER = "alice-codex", "alice-claude", "bob-claude"
OTHER_ROOM = "bobs-room"
WAIT_TIMEOUT_S = 50
SETTLE_S = 1.0
QUIET_CORES, QUIET_MAX_S = 0.05, 8.0
# The posts of one state stop after this long, so that waiters that slow them down do not time out first.
POSTS_MAX_S = 10.0


async def _other_room(home: Path) -> None:
    async with Hub.open(Settings(home=home)) as hub:
        await hub.rooms.create(OPERATOR, OTHER_ROOM, "bob", [OTHER])


def _cpu(pid: int) -> float:
    from run import process_cpu

    return process_cpu(pid)


async def _idle_cores(pid: int, seconds: float) -> float:
    cpu0, t0 = _cpu(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (_cpu(pid) - cpu0) / (time.perf_counter() - t0)


async def _quiet(pid: int) -> None:
    """Until the server has answered its backlog: a window under QUIET_CORES, or QUIET_MAX_S passed (waiters
    that poll never get quiet, and must not time out before the fan-out)."""
    deadline = time.perf_counter() + QUIET_MAX_S
    while await _idle_cores(pid, SETTLE_S / 2) > QUIET_CORES and time.perf_counter() < deadline:
        pass


async def _posts(pid: int, port: int, token: str, n: int) -> dict[str, float]:
    conn = await Connection.open(port)
    request = tool_call(port, "post_message", {"room": OTHER_ROOM, "text": "beside the waiters"}, token=token)
    latencies = []
    try:
        for _ in range(3):  # warm-up
            await conn.call(request)
        cpu0 = _cpu(pid)
        until = time.perf_counter() + POSTS_MAX_S
        while len(latencies) < n and time.perf_counter() < until:
            t = time.perf_counter()
            await conn.call(request)
            latencies.append(time.perf_counter() - t)
        cpu = _cpu(pid) - cpu0
        n = len(latencies)
    finally:
        await conn.close()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3,
        "server_cpu_us_post": cpu / n * 1e6,
        "posts": n,
    }


async def _measure(pid: int, port: int, tokens: dict[str, str], waiters: int, idle_s: float, posts: int) -> dict:
    result: dict[str, Any] = {"none": {}, "waiting": {}}
    await asyncio.sleep(SETTLE_S)
    result["none"]["idle_cores"] = await _idle_cores(pid, idle_s)
    result["none"].update(await _posts(pid, port, tokens[OTHER], posts))

    wait = tool_call(
        port, "wait_for_messages", {"room": "lobby", "after": 0, "timeout_s": WAIT_TIMEOUT_S}, token=tokens[WAITER]
    )
    conns = [await Connection.open(port) for _ in range(waiters)]
    answered: list[float] = []

    async def one(conn: Connection) -> bytes:
        body = await conn.call(wait)
        answered.append(time.perf_counter())
        return body

    tasks = [asyncio.create_task(one(c)) for c in conns]
    try:
        await _quiet(pid)  # every request read, authenticated and parked
        if any(t.done() for t in tasks):
            raise RuntimeError(f"a waiter answered before the post: {next(t for t in tasks if t.done()).result()!r}")
        result["waiting"]["idle_cores"] = await _idle_cores(pid, idle_s)
        result["waiting"].update(await _posts(pid, port, tokens[OTHER], posts))
        poster = await Connection.open(port)
        t0 = time.perf_counter()
        await poster.call(tool_call(port, "post_message", {"room": "lobby", "text": "wake up"}, token=tokens[POSTER]))
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_TIMEOUT_S)
        await poster.close()
    finally:
        for t in tasks:
            t.cancel()
        for c in conns:
            await c.close()
    missed = sum(b"wake up" not in b for b in bodies)
    if missed:
        raise RuntimeError(f"{missed} waiters answered without the message (timed out?)")
    result["fan_out_last_ms"] = (max(answered) - t0) * 1e3
    return result


def run(waiters: int = 1000, idle_s: float = 3.0, posts: int = 200) -> dict[str, Any]:
    from run import Server, free_port

    with tempfile.TemporaryDirectory(prefix="agent-rooms-waiters-") as tmp:
        home = Path(tmp) / "home"
        tokens = asyncio.run(build_hub(home))
        asyncio.run(_other_room(home))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
        env.update(
            AGENT_ROOMS_HOME=str(home),
            AGENT_ROOMS_SUPERVISOR="0",
            AGENT_ROOMS_LIMIT_WAITS_PER_AGENT=str(waiters + 8),
            AGENT_ROOMS_LIMIT_HTTP_CONNECTIONS=str(waiters + 64),
            **UNLIMITED_RATES,
            PYTHONPATH=os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p),
        )
        port = free_port()
        argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(port)]
        server = Server("waiters-hub", argv, env, port, Path(tmp))
        try:
            server.wait_ready()
            result = asyncio.run(_measure(server.proc.pid, port, tokens, waiters, idle_s, posts))
        except BaseException:
            print(f"--- server log tail ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    result["method"] = {"waiters": waiters, "idle_s": idle_s, "posts": posts, "settle_s": SETTLE_S}
    return result


def print_table(r: dict[str, Any]) -> None:
    n = r["method"]["waiters"]
    print(f"\nIdle long-polls: {n} wait_for_messages in flight vs none (one server, one run)")
    print("| state | server cores while idle | post_message p50 ms | p99 ms | server CPU µs/post | posts |")
    print("|---|---|---|---|---|---|")
    for state in ("none", "waiting"):
        s = r[state]
        print(
            f"| {state if state == 'none' else f'{n} waiters'} | {s['idle_cores']:.3f} | {s['p50_ms']:.2f} |"
            f" {s['p99_ms']:.2f} | {s['server_cpu_us_post']:.0f} | {s['posts']} |"
        )
    print(f"a post -> the last of {n} waiters answered: {r['fan_out_last_ms']:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--waiters", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--posts", type=int, default=200)
    a = ap.parse_args()
    r = run(a.waiters, a.idle_seconds, a.posts)
    print_table(r)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
