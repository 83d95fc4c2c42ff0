"""A room's size (DESIGN §11): server CPU to read a room's latest 50 at 1 M messages ÷ at 1 k; part of `make bench`.

One hub holds two rooms of alice-claude's, `big` (1,000,000 messages by default) and `small` (1,000). The
messages are written straight into the real schema with one `executemany` in one transaction: a read bench
needs rows, not a million posts' audit rows (messages carry no hash chain; the audit chain, which reads verify
nowhere, is left as the services wrote it). The real server (`serve --http`, supervisor off) then answers
`read_messages(room, limit=50)` for each room, interleaved round by round on one keep-alive connection, and the
ratio of server CPU per read is taken within each round. The hub file lives in the run's temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_client import Connection, tool_call
from world import AGENT, OPERATOR, UNLIMITED_RATES, build_hub

from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.settings import Settings

BENCH = Path(__file__).resolve().parent
PAGE = 50
TEXT = "a message in a long room, as long as a short chat line: " + "x" * 20
ROOMS = ("big", "small")


async def _rooms(home: Path) -> None:
    async with Hub.open(Settings(home=home)) as hub:
        for room in ROOMS:
            await hub.rooms.create(OPERATOR, room, "alice", [AGENT])


def fill(db: Path, room: str, n: int) -> float:
    """n messages by alice-claude into room, seq 1..n, in one transaction; returns the seconds it took."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (room_id,) = conn.execute("SELECT room_id FROM rooms WHERE name = ?", (room,)).fetchone()
        (agent_id,) = conn.execute("SELECT agent_id FROM agents WHERE handle = ?", (AGENT,)).fetchone()
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        prefix = "msg_" + secrets.token_hex(8)

        def rows() -> Iterator[tuple[Any, ...]]:
            for seq in range(1, n + 1):
                yield (f"{prefix}{seq:016x}", room_id, seq, agent_id, TEXT, "[]", None, created, None)

        conn.execute("PRAGMA synchronous = OFF")  # a bench fixture: nothing to keep if the box dies mid-fill
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO messages (message_id, room_id, seq, agent_id, text, mentions, reply_to, created_at,"
            " mention_outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.perf_counter() - t0


async def _sanity(port: int, requests: dict[str, bytes], sizes: dict[str, int]) -> None:
    conn = await Connection.open(port)
    try:
        for room, request in requests.items():
            page = json.loads(await conn.call(request))["result"]["structuredContent"]
            seqs = [m["seq"] for m in page["messages"]]
            if seqs != list(range(sizes[room] - PAGE + 1, sizes[room] + 1)):
                raise RuntimeError(f"read_messages in {room} returned seqs {seqs[:3]}…{seqs[-3:]}")
    finally:
        await conn.close()


async def _rounds(server: Any, requests: dict[str, bytes], rounds: int, seconds: float) -> list[dict[str, Any]]:
    from run import http_cell

    rows = []
    for r in range(rounds):
        for room in ROOMS if r % 2 == 0 else ROOMS[::-1]:
            cell = await http_cell(server, requests[room], 1, seconds)
            rows.append({"round": r, "room": room, **cell})
            print(
                f"  room size round {r + 1}/{rounds} {room:<5} {cell['calls_s']:6.0f} reads/s"
                f"  server {cell['server_cpu_us_call']:5.0f} µs/read",
                file=sys.stderr,
                flush=True,
            )
    return rows


def run(big: int = 1_000_000, small: int = 1_000, rounds: int = 5, seconds: float = 1.0) -> dict[str, Any]:
    from run import Server, free_port

    sizes = {"big": big, "small": small}
    with tempfile.TemporaryDirectory(prefix="agent-rooms-bigroom-") as tmp:
        home = Path(tmp) / "home"
        tokens = asyncio.run(build_hub(home))
        asyncio.run(_rooms(home))
        fill_s = {room: fill(home / "hub.db", room, n) for room, n in sizes.items()}
        print(f"  filled big ({big:,}) in {fill_s['big']:.1f}s, small ({small:,}) in {fill_s['small']:.1f}s",
              file=sys.stderr)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
        env.update(
            AGENT_ROOMS_HOME=str(home),
            AGENT_ROOMS_SUPERVISOR="0",
            **UNLIMITED_RATES,
            PYTHONPATH=os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p),
        )
        port = free_port()
        argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--port", str(port)]
        server = Server("bigroom-hub", argv, env, port, Path(tmp))
        try:
            server.wait_ready()
            requests = {
                room: tool_call(port, "read_messages", {"room": room, "limit": PAGE}, token=tokens[AGENT])
                for room in ROOMS
            }
            asyncio.run(_sanity(port, requests, sizes))
            rows = asyncio.run(_rounds(server, requests, rounds, seconds))
        except BaseException:
            print(f"--- server log tail ---\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    by = {(r["round"], r["room"]): r for r in rows}
    ratios = [by[r, "big"]["server_cpu_us_call"] / by[r, "small"]["server_cpu_us_call"] for r in range(rounds)]
    return {
        "method": {"big": big, "small": small, "page": PAGE, "rounds": rounds, "seconds_per_cell": seconds},
        "fill_s": fill_s,
        "cpu_us_read": {
            room: statistics.median(r["server_cpu_us_call"] for r in rows if r["room"] == room) for room in ROOMS
        },
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "raw": rows,
    }


def print_table(r: dict[str, Any]) -> None:
    m = r["method"]
    print(f"\nRoom size: read_messages(limit={m['page']}), server CPU per read, median of {m['rounds']} rounds")
    print("| room | messages | server CPU µs/read |")
    print("|---|---|---|")
    for room in ROOMS:
        print(f"| {room} | {m[room]:,} | {r['cpu_us_read'][room]:.0f} |")
    q = r["ratio"]
    print(f"{m['big']:,} ÷ {m['small']:,}: {q['median']:.2f}× [{q['min']:.2f}–{q['max']:.2f}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    a = ap.parse_args()
    r = run(a.big, a.small, a.rounds, a.seconds)
    print_table(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
