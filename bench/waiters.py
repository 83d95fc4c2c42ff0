"""Idle long-polls (DESIGN §11, invariant 84): what 1,000 waiting `wait_for_messages` calls cost; part of `make bench`.

On a fresh hub, the real server (`python -m agent_rooms_mcp serve --http`, supervisor off) is measured in
two states, in one run:

- none: no waiter. Server CPU over an idle window, then `post_message` latency and server CPU per post
  for another owner's agent (bob-claude) posting in its own room, sequential calls on one keep-alive
  connection (bench/raw_client.py).
- waiting: N calls of `wait_for_messages` (alice-codex in `lobby`, timeout 50 s), one connection each,
  all in flight; after a settling second, the same two measures again.
Then the fan-out: one post into `lobby`, timed until the last of the N waiters has its answer (each
answer is checked to hold that message), repeated (the waiters wait again after that post) and the median taken.
Its baseline: bench/echo_server.py, the bare SDK server served the same way, with N keep-alive connections each
sending one echo call at once, timed until the last answer. Then a room's own fan-out: 50 of the connections
wait in `lobby` and the rest in another room; a post into `lobby` is timed until the last of its 50 is
answered, and the others are checked to be still waiting.

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


async def _measure(
    pid: int,
    port: int,
    tokens: dict[str, str],
    waiters: int,
    idle_s: float,
    posts: int,
    reps: int,
    room_waiters: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {"none": {}, "waiting": {}}
    await asyncio.sleep(SETTLE_S)
    result["none"]["idle_cores"] = await _idle_cores(pid, idle_s)
    result["none"].update(await _posts(pid, port, tokens[OTHER], posts))

    conns = [await Connection.open(port) for _ in range(waiters)]
    try:
        measured: list[float] = []
        after = 0
        for rep in range(reps):
            # The first time the N are parked, the idle CPU and posts beside them are measured too.
            beside = result["waiting"] if rep == 0 else None
            ms, after = await _fan_out(
                pid, port, conns, tokens[WAITER], "lobby", after, tokens[POSTER], rep, beside,
                (port, tokens[OTHER], posts, idle_s),
            )  # fmt: skip
            measured.append(ms)
        result["fan_out_last_ms"] = statistics.median(measured)
        result["fan_out_ms"] = measured
        if room_waiters and waiters > room_waiters:
            result["room"] = await _room_fan_out(pid, port, conns, tokens, room_waiters, after, reps)
    finally:
        for c in conns:
            await c.close()
    return result


async def _fan_out(
    pid: int,
    port: int,
    conns: list[Connection],
    waiter_token: str,
    room: str,
    after: int,
    poster_token: str,
    rep: int,
    measure_beside: dict[str, Any] | None,
    beside: tuple[int, str, int, float],
) -> tuple[float, int]:
    """Every connection waits in room after seq `after`; once they are parked, one post; milliseconds until the
    last waiter has its answer (each checked to hold that message), and the post's seq."""
    wait = tool_call(
        port, "wait_for_messages", {"room": room, "after": after, "timeout_s": WAIT_TIMEOUT_S}, token=waiter_token
    )
    answered: list[float] = []

    async def one(conn: Connection) -> bytes:
        body = await conn.call(wait)
        answered.append(time.perf_counter())
        return body

    tasks = [asyncio.create_task(one(c)) for c in conns]
    text = f"wake up {rep}"
    try:
        await _quiet(pid)  # every request read, authenticated and parked
        if any(t.done() for t in tasks):
            raise RuntimeError(f"a waiter answered before the post: {next(t for t in tasks if t.done()).result()!r}")
        if measure_beside is not None:
            b_port, b_token, b_posts, b_idle = beside
            measure_beside["idle_cores"] = await _idle_cores(pid, b_idle)
            measure_beside.update(await _posts(pid, b_port, b_token, b_posts))
        post = tool_call(port, "post_message", {"room": room, "text": text}, token=poster_token)
        # A fresh connection, as before the first fan-out: one left idle through the measures beside the waiters
        # would have been closed by the server's keep-alive timeout.
        poster = await Connection.open(port)
        t0 = time.perf_counter()
        try:
            seq = json.loads(await poster.call(post))["result"]["structuredContent"]["seq"]
        finally:
            await poster.close()
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_TIMEOUT_S)
    finally:
        for t in tasks:
            t.cancel()
    missed = sum(text.encode() not in b for b in bodies)
    if missed:
        raise RuntimeError(f"{missed} waiters answered without the message (timed out?)")
    return (max(answered) - t0) * 1e3, int(seq)


async def _room_fan_out(
    pid: int,
    port: int,
    conns: list[Connection],
    tokens: dict[str, str],
    in_room: int,
    after: int,
    reps: int,
) -> dict[str, Any]:
    """`in_room` waiters in lobby and the rest idle in another room: a post into lobby, timed until the last of
    lobby's waiters is answered, while the others' calls stay unanswered (checked)."""
    read = tool_call(port, "read_messages", {"room": OTHER_ROOM, "limit": 1}, token=tokens[OTHER])
    reader = await Connection.open(port)
    try:
        latest = json.loads(await reader.call(read))["result"]["structuredContent"]["messages"][-1]["seq"]
    finally:
        await reader.close()
    idle_wait = tool_call(
        port, "wait_for_messages", {"room": OTHER_ROOM, "after": latest, "timeout_s": WAIT_TIMEOUT_S},
        token=tokens[OTHER],
    )  # fmt: skip
    idle = [asyncio.create_task(c.call(idle_wait)) for c in conns[in_room:]]
    try:
        measured = []
        for rep in range(reps):
            ms, after = await _fan_out(pid, port, conns[:in_room], tokens[WAITER], "lobby", after, tokens[POSTER],
                                       100 + rep, None, (0, "", 0, 0.0))  # fmt: skip
            measured.append(ms)
            if any(t.done() for t in idle):
                raise RuntimeError("a waiter in another room was answered by a post into lobby")
    finally:
        for t in idle:
            t.cancel()
    return {"in_room": in_room, "idle_elsewhere": len(idle), "last_ms": statistics.median(measured), "ms": measured}


async def echo_burst(port: int, calls: int, reps: int) -> dict[str, Any]:
    """The fan-out's baseline: the bare SDK echo server, `calls` keep-alive connections each sending one echo call
    at once; milliseconds from the first send until the last answer, median over reps. Each rep opens its
    connections afresh (untimed): ones answered a rep ago may have met the server's keep-alive timeout when the
    previous burst took seconds."""
    request = tool_call(port, "echo", {"text": "wake up"})
    warm = await Connection.open(port)
    try:
        for _ in range(8):  # warm the server's code paths, as the hub's are by then
            await warm.call(request)
    finally:
        await warm.close()
    measured = []
    for _ in range(reps):
        conns = [await Connection.open(port) for _ in range(calls)]
        try:
            await asyncio.sleep(SETTLE_S / 2)
            t0 = time.perf_counter()
            await asyncio.gather(*(c.call(request) for c in conns))
            measured.append((time.perf_counter() - t0) * 1e3)
        finally:
            for c in conns:
                await c.close()
    return {"calls": calls, "last_ms": statistics.median(measured), "ms": measured}


def run(
    waiters: int = 1000, idle_s: float = 3.0, posts: int = 200, reps: int = 3, room_waiters: int = 50
) -> dict[str, Any]:
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
        echo_port = free_port()
        echo = Server("waiters-echo", [sys.executable, str(BENCH / "echo_server.py"), str(echo_port)], env, echo_port,
                      Path(tmp))  # fmt: skip
        try:
            server.wait_ready()
            echo.wait_ready()
            result = asyncio.run(_measure(server.proc.pid, port, tokens, waiters, idle_s, posts, reps, room_waiters))
            result["echo"] = asyncio.run(echo_burst(echo_port, waiters, reps))
        except BaseException:
            print(f"--- server log tail ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
            echo.stop()
    result["fan_out_ratio_to_echo"] = result["fan_out_last_ms"] / result["echo"]["last_ms"]
    result["method"] = {
        "waiters": waiters, "idle_s": idle_s, "posts": posts, "settle_s": SETTLE_S, "reps": reps,
        "room_waiters": room_waiters,
    }  # fmt: skip
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
    e = r["echo"]
    print(
        f"a post -> the last of {n} waiters answered: {r['fan_out_last_ms']:.0f} ms (median of "
        f"{len(r['fan_out_ms'])}); the bare SDK server answering {e['calls']} echo calls sent at once: "
        f"{e['last_ms']:.0f} ms; ratio {r['fan_out_ratio_to_echo']:.2f}×"
    )
    if "room" in r:
        q = r["room"]
        print(
            f"a post -> the last of {q['in_room']} waiters in its room answered ({q['idle_elsewhere']} idle in "
            f"another room): {q['last_ms']:.1f} ms (median of {len(q['ms'])})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--waiters", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3, help="fan-outs measured (the median is reported)")
    ap.add_argument("--room-waiters", type=int, default=50, help="waiters in the posted room, the rest elsewhere")
    a = ap.parse_args()
    r = run(a.waiters, a.idle_seconds, a.posts, a.reps, a.room_waiters)
    print_table(r)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
