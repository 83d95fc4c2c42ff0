"""`make bench`: every row of DESIGN §11's table in one run, each beside its baseline, and a summary of them all.

One run does, on a fresh hub in a temporary home:
1. in-memory (`mcp.Client(server)`, one process, information only): process CPU per call;
2. HTTP: the real server (`python -m agent_rooms_mcp serve --http`, i.e. uvicorn with `HttpHub`) and
   bench/echo_server.py, each in its own process, driven by bench/raw_client.py over loopback keep-alive
   connections. Server CPU is the server process's utime+stime (/proc/<pid>/stat) over the timed window,
   divided by the calls that came back 200 without `"isError":true`. The tools: whoami, post_message and
   read_messages (the latest 20 of `lobby`, pre-filled with PREFILL posts);
3. wake and stop latency of the supervisor with a fake CLI (bench/wake.py; `--wake-only`, `--skip-wake`);
4. 1,000 idle `wait_for_messages` calls: the server's CPU while they wait and `post_message` latency beside
   them, against none, the fan-out of one post to all of them against the bare SDK server answering as many echo
   calls sent at once, and a post to the 50 waiters of its room while the rest wait elsewhere (bench/waiters.py;
   `--skip-waiters`).
5. wake and stop latency through `agent-rooms listen` over HTTP and HTTPS (Caddy), against the hub's own
   supervisor, and an idle listener's cost (bench/listener.py; `--listener-only`, `--skip-listener`).
6. stop latency with a cgroup per run against the process-group sweep alone (bench/containment.py;
   `--containment-only`, `--skip-containment`).
7. what the sandbox adds to a wake and a stop, against `--sandbox off` in the same run, and its probe's cost
   per spawn (bench/sandbox.py; `--sandbox-only`, `--skip-sandbox`).
8. stdio cold start, spawn -> `initialize` and -> first `tools/list`, against a bare SDK stdio server
   (bench/coldstart.py; `--skip-coldstart`).
9. server CPU to read the latest 50 of a room at 1 M messages against a room at 1 k (bench/bigroom.py;
   `--skip-bigroom`).
10. the HTTP rows again as instructions per call under callgrind, which the box's noise does not move
   (bench/instructions.py; `--skip-instructions`; skipped, saying so, without valgrind).
It ends with one table of DESIGN §11's rows: ours, the baseline, the ratio, the target, the limit, met or not.
`--quick` runs every part with fewer rounds, for development (its figures are rougher, not different).

The box is noisy, so tools are interleaved within each round (order rotated) and every ratio is
computed within one round, then the median over rounds is reported with its [min-max].
Prints tables and writes bench/results.json. An over-budget ratio is reported, not turned into a failing
exit code: on a shared 2-core VM one run is evidence, not a gate. It fails only if a call fails.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bigroom
import coldstart
import containment
import instructions
import listener
import sandbox
import waiters
import wake
from raw_client import Connection, tool_call
from world import AGENT, ROOM, UNLIMITED_RATES, build_hub

BENCH = Path(__file__).resolve().parent
TOOLS = ("echo", "echo_sync", "echo_page", "whoami", "post_message", "read_messages")
# Served by bench/echo_server.py; each is a column of ratios. echo_page, the SDK sending read_messages' answer, is
# served over HTTP only (the in-memory rows have no such column).
BASELINES = ("echo", "echo_sync", "echo_page")
INMEMORY_TOOLS = tuple(t for t in TOOLS if t != "echo_page")
TEXT = "hello from the agent-rooms bench, " + "x" * 30
WARMUP_S = 0.4
# DESIGN §11, over HTTP: (aim, must not exceed), as server CPU per call ÷ echo's.
BUDGET = {"whoami": (1.2, 1.35), "post_message": (1.4, 1.7), "read_messages": (1.5, 1.8)}
# read_messages reads a page of this many; `lobby` holds at least this many before anything is timed.
READ_PAGE = 20
PREFILL = READ_PAGE
PACKAGES = (
    "mcp",
    "mcp-types",
    "uvicorn",
    "starlette",
    "h11",
    "httptools",
    "uvloop",
    "httpx2",
    "anyio",
    "aiosqlite",
    "pydantic",
    "pydantic-core",
    "pynacl",
    "structlog",
    "orjson",
    "agent-rooms-mcp",
)


# --- machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions,
        "loadavg_at_start": os.getloadavg(),
        "git_commit": commit or None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --- processes ----------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of every thread of pid, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    user, system = process_times(pid)
    return user + system


def process_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of pid, in seconds: user and kernel time apart."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, logdir: Path) -> None:
        self.name, self.port = name, port
        self.profiled = "cProfile" in argv
        self.log = logdir / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=BENCH.parent)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout_s}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            # uvicorn shuts down gracefully, then re-raises the signal: SIGINT becomes KeyboardInterrupt, which
            # lets cProfile write its file; SIGTERM's default action would not.
            self.proc.send_signal(signal.SIGINT if self.profiled else signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def python_argv(args: list[str], profile: Path | None, name: str) -> list[str]:
    if profile is None:
        return [sys.executable, *args]
    return [sys.executable, "-m", "cProfile", "-o", str(profile / f"{name}.prof"), *args]


# --- HTTP ---------------------------------------------------------------------------------------


async def sanity(servers: dict[str, Server], requests: dict[str, bytes]) -> None:
    """One call per tool, checked in full, before anything is timed."""
    for tool in TOOLS:
        server = servers["echo" if tool in BASELINES else "hub"]
        conn = await Connection.open(server.port)
        try:
            result = json.loads(await conn.call(requests[tool]))["result"]
        finally:
            await conn.close()
        structured = result.get("structuredContent") or {}
        ok = {
            "echo": lambda r, s: r["content"][0]["text"] == TEXT,
            "echo_sync": lambda r, s: r["content"][0]["text"] == TEXT,
            "echo_page": lambda r, s: len(s.get("messages", [])) == READ_PAGE,
            "whoami": lambda r, s: s.get("agent", {}).get("handle") == AGENT,
            "post_message": lambda r, s: isinstance(s.get("seq"), int) and s["seq"] >= 1,
            "read_messages": lambda r, s: len(s.get("messages", [])) == READ_PAGE,
        }[tool](result, structured)
        if not ok:
            raise RuntimeError(f"unexpected {tool} result: {result}")


async def http_cell(server: Server, request: bytes, conc: int, seconds: float) -> dict[str, float]:
    conns = [await Connection.open(server.port) for _ in range(conc)]
    latencies: list[float] = []

    async def loop(conn: Connection, deadline: float, record: bool) -> int:
        n = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await conn.call(request)
            n += 1
            if record:
                latencies.append(time.perf_counter() - t)
        return n

    try:
        warm_until = time.perf_counter() + WARMUP_S
        warmup_calls = sum(await asyncio.gather(*(loop(c, warm_until, False) for c in conns)))
        (user0, sys0), client0, t0 = process_times(server.proc.pid), time.process_time(), time.perf_counter()
        counts = await asyncio.gather(*(loop(c, t0 + seconds, True) for c in conns))
        wall = time.perf_counter() - t0
        (user1, sys1), client = process_times(server.proc.pid), time.process_time() - client0
        user, system = user1 - user0, sys1 - sys0
        cpu = user + system
    finally:
        for c in conns:
            await c.close()
    n = sum(counts)
    latencies.sort()
    return {
        "calls": n,
        "warmup_calls": warmup_calls,
        "calls_s": n / wall,
        "server_cpu_us_call": cpu / n * 1e6,
        # Kernel time apart: our calls make system calls echo's do not (SQLite's WAL read locks, the log line's
        # write), which instructions under callgrind leave out (docs/PERFORMANCE.md).
        "server_user_us_call": user / n * 1e6,
        "server_sys_us_call": system / n * 1e6,
        "server_cores": cpu / wall,
        "client_cpu_us_call": client / n * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    }


async def http_rounds(
    home: Path, token: str, rounds: int, seconds: float, concs: list[int], logdir: Path, profile: Path | None
) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
    env["AGENT_ROOMS_HOME"] = str(home)
    env.update(UNLIMITED_RATES)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p)
    echo_port, hub_port = free_port(), free_port()
    servers: dict[str, Server] = {}
    try:
        servers["echo"] = Server(
            "echo",
            python_argv([str(BENCH / "echo_server.py"), str(echo_port)], profile, "echo"),
            env,
            echo_port,
            logdir,
        )
        hub_args = ["-m", "agent_rooms_mcp", "serve", "--http", "--host", "127.0.0.1", "--port", str(hub_port)]
        servers["hub"] = Server("hub", python_argv(hub_args, profile, "hub"), env, hub_port, logdir)
        for s in servers.values():
            s.wait_ready()
        requests = {
            "echo": tool_call(echo_port, "echo", {"text": TEXT}),
            "echo_sync": tool_call(echo_port, "echo_sync", {"text": TEXT}),
            "echo_page": tool_call(echo_port, "echo_page", {"text": TEXT}),
            "whoami": tool_call(hub_port, "whoami", {}, token=token),
            "post_message": tool_call(hub_port, "post_message", {"room": ROOM, "text": TEXT}, token=token),
            "read_messages": tool_call(hub_port, "read_messages", {"room": ROOM, "limit": READ_PAGE}, token=token),
        }
        conn = await Connection.open(hub_port)
        try:
            for _ in range(PREFILL):  # so that every read_messages, the first included, reads a full page
                await conn.call(requests["post_message"])
        finally:
            await conn.close()
        await sanity(servers, requests)
        rows = []
        for r in range(rounds):
            for conc in concs:
                k = r % len(TOOLS)
                for tool in TOOLS[k:] + TOOLS[:k]:  # rotate, so no tool always runs first
                    server = servers["echo" if tool in BASELINES else "hub"]
                    cell = await http_cell(server, requests[tool], conc, seconds)
                    rows.append({"round": r, "conc": conc, "tool": tool, **cell})
                    print(
                        f"  http round {r + 1}/{rounds} conns={conc:<2} {tool:<12} {cell['calls_s']:7.0f} calls/s"
                        f"  server {cell['server_cpu_us_call']:6.0f} µs/call"
                        f" ({cell['server_sys_us_call']:4.0f} of it kernel)",
                        file=sys.stderr,
                        flush=True,
                    )
        return rows
    except BaseException:
        for s in servers.values():
            print(f"--- {s.name} log tail ---\n{s.tail()}", file=sys.stderr)
        raise
    finally:
        for s in servers.values():
            s.stop()


# --- in-memory ----------------------------------------------------------------------------------


def inmemory_rounds(home: Path, token: str, rounds: int, seconds: float, logdir: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
    env.update(AGENT_ROOMS_HOME=str(home), AGENT_ROOMS_TOKEN=token, **UNLIMITED_RATES)
    log = logdir / "inmemory.log"
    with log.open("wb") as err:
        done = subprocess.run(
            [sys.executable, str(BENCH / "inmemory.py"), str(rounds), str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=BENCH.parent,
            timeout=60 + rounds * len(INMEMORY_TOOLS) * (seconds + 1),
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"bench/inmemory.py exited with {done.returncode}:\n{tail}")
    return list(json.loads(done.stdout))


def check_posts(home: Path, rows: list[dict[str, Any]], sanity_posts: int) -> int:
    """Every post_message counted (and warm-up) must be one message row and one `message.post` audit row."""
    expected = sanity_posts + sum(r["calls"] + r["warmup_calls"] for r in rows if r["tool"] == "post_message")
    conn = sqlite3.connect(f"file:{home / 'hub.db'}?mode=ro", uri=True)
    try:
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        audited = conn.execute("SELECT count(*) FROM audit WHERE action = 'message.post'").fetchone()[0]
    finally:
        conn.close()
    if messages != expected or audited != expected:
        raise RuntimeError(f"counted {expected} posts, but the hub has {messages} messages and {audited} audit rows")
    return expected


# --- summary ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict[str, Any]], cpu_key: str, concs: list[int | None]) -> list[dict[str, Any]]:
    """Per (conc, tool): medians over rounds; the ratio to echo is taken within each round first."""
    out = []
    for conc in concs:
        sub = [r for r in rows if r.get("conc") == conc]
        by_round = {(r["round"], r["tool"]): r for r in sub}
        for tool in TOOLS:
            mine = [r for r in sub if r["tool"] == tool]
            if not mine:  # echo_page, in memory
                continue
            entry: dict[str, Any] = {
                "conc": conc,
                "tool": tool,
                "calls_s": spread([r["calls_s"] for r in mine]),
                "cpu_us_call": spread([r[cpu_key] for r in mine]),
            }
            for base in BASELINES:
                ratios = [
                    r[cpu_key] / by_round[(r["round"], base)][cpu_key] for r in mine if (r["round"], base) in by_round
                ]
                if ratios:
                    entry[f"ratio_to_{base}"] = spread(ratios)
            if tool in BUDGET and cpu_key == "server_cpu_us_call":
                aim, limit = BUDGET[tool]
                median = entry["ratio_to_echo"]["median"]
                entry["budget"] = {
                    "aim": aim,
                    "limit": limit,
                    "within_limit": median <= limit,
                    "within_aim": median <= aim,
                }
            if "p50_ms" in mine[0]:
                entry["p50_ms"] = statistics.median(r["p50_ms"] for r in mine)
                entry["p99_ms"] = statistics.median(r["p99_ms"] for r in mine)
                entry["client_cpu_us_call"] = statistics.median(r["client_cpu_us_call"] for r in mine)
            out.append(entry)
    return out


def fmt(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} [{s['min']:,.{digits}f}–{s['max']:,.{digits}f}]"


def print_tables(http: list[dict[str, Any]], memory: list[dict[str, Any]]) -> None:
    print("\nHTTP: raw keep-alive client -> uvicorn, 1 process each; median [min–max] over rounds")
    print(
        "| conns | tool | calls/s | server CPU µs/call | ÷ echo | budget (aim / limit) | ÷ echo_sync | ÷ echo_page"
        " | p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for e in http:
        budget = ""
        if "budget" in e:
            b = e["budget"]
            verdict = "within aim" if b["within_aim"] else "within limit" if b["within_limit"] else "OVER LIMIT"
            budget = f"{b['aim']}× / {b['limit']}×: {verdict}"
        print(
            f"| {e['conc']} | {e['tool']} | {fmt(e['calls_s'])} | {fmt(e['cpu_us_call'])} | "
            f"{fmt(e['ratio_to_echo'], 2)} | {budget} | {fmt(e['ratio_to_echo_sync'], 2)} | "
            f"{fmt(e['ratio_to_echo_page'], 2)} | {e['p50_ms']:.2f} |"
        )
    if memory:
        print("\nIn-memory: mcp.Client(server) in one process, 1 caller (information only)")
        print("| tool | calls/s | process CPU µs/call | ÷ echo | ÷ echo_sync |")
        print("|---|---|---|---|---|")
        for e in memory:
            print(
                f"| {e['tool']} | {fmt(e['calls_s'])} | {fmt(e['cpu_us_call'])} | {fmt(e['ratio_to_echo'], 2)} | "
                f"{fmt(e['ratio_to_echo_sync'], 2)} |"
            )


# --- DESIGN §11, row by row ---------------------------------------------------------------------


def _row(
    measure: str,
    ours: float | None,
    baseline: float | None,
    unit: str,
    target: float,
    limit: float,
    *,
    judged: float | None = None,
    strict: bool = False,
    also: bool = True,
) -> dict[str, Any]:
    """One row of the summary. `judged` is what the target and limit apply to (the ratio when there is a
    baseline, else ours); `also` is a further condition of the limit (the fan-out's ≤ 1 s)."""
    ratio = ours / baseline if ours is not None and baseline else None
    value = judged if judged is not None else ratio if baseline is not None else ours
    verdict = "not measured"
    if value is not None:
        met = value < target if strict else value <= target
        verdict = "met" if met and also else "within limit" if value <= limit and also else "OVER LIMIT"
    return {
        "measure": measure,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio if judged is None else judged,
        "unit": unit,
        "target": target,
        "limit": limit,
        "verdict": verdict,
    }


def design_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """DESIGN §11's table from this run's results; a part that was skipped is `not measured`."""
    rows = []
    http = {(e["conc"], e["tool"]): e for e in result.get("http", [])}
    for tool, label in (
        ("whoami", "whoami"),
        ("post_message", "post_message"),
        ("read_messages", "read_messages (20)"),
    ):
        aim, limit = BUDGET[tool]
        for conc in result["method"]["http_conns"]:
            e, echo = http.get((conc, tool)), http.get((conc, "echo"))
            ours = e["cpu_us_call"]["median"] if e else None
            base = echo["cpu_us_call"]["median"] if echo else None
            judged = e["ratio_to_echo"]["median"] if e else None  # the median of per-round ratios
            rows.append(_row(f"{label} ÷ echo, HTTP, {conc} conn", ours, base, "µs server CPU/call", aim, limit,
                             judged=judged))  # fmt: skip
    w = result.get("waiters")
    n = w["method"]["waiters"] if w else 1000
    rows.append(
        _row(f"server CPU of {n:,} idle wait_for_messages", w["waiting"]["idle_cores"] if w else None, None,
             "cores", 0.01, 0.02)
    )  # fmt: skip
    fan, echo_burst = (w["fan_out_last_ms"], w["echo"]["last_ms"]) if w else (None, None)
    rows.append(
        _row(f"a post → the last of {n:,} waiters answered ÷ {n:,} echo calls", fan, echo_burst, "ms", 1.2, 1.5,
             also=fan is None or fan <= 1000)
    )  # fmt: skip
    room = w.get("room") if w else None
    rows.append(
        _row(f"a post → the last of {room['in_room'] if room else 50} waiters in its room answered",
             room["last_ms"] if room else None, None, "ms", 20, 50)
    )  # fmt: skip
    c = result.get("coldstart")
    for key, label in (("initialize_s", "initialize"), ("tools_list_s", "first tools/list")):
        s = c["summary"][key] if c else None
        rows.append(
            _row(f"stdio cold start ÷ bare SDK server's, to {label}", s["ours_median"] * 1e3 if s else None,
                 s["sdk_median"] * 1e3 if s else None, "ms", 1.1, 1.2, judged=s["ratio"]["median"] if s else None)
        )  # fmt: skip
    b = result.get("bigroom")
    big = b["method"]["big"] if b else 1_000_000
    rows.append(
        _row(f"latest 50 of a room at {big:,} messages ÷ at 1,000", b["cpu_us_read"]["big"] if b else None,
             b["cpu_us_read"]["small"] if b else None, "µs server CPU/read", 1.1, 1.2,
             judged=b["ratio"]["median"] if b else None)
    )  # fmt: skip
    lst = {(e["series"], e["measure"]): e for e in (result.get("listener") or {}).get("summary", [])}
    for series, measure, label, aim, limit in (
        ("wake, listener over HTTP", "commit → exec", "wake via a listener, commit → CLI exec, p50", 300, 1000),
        ("stop, listener over HTTP", "stop call → SIGINT", "stop via a listener, call → SIGINT, p50", 1000, 2000),
    ):
        e = lst.get((series, measure))
        rows.append(_row(label, e["p50"] if e else None, None, "ms", aim, limit, strict=True))
    return rows


def print_summary(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    load = os.getloadavg()
    print(
        f"\nDESIGN §11, this run: {info['nproc']} CPUs ({info['cpu_model']}), load at start "
        f"{info['loadavg_at_start'][0]:.2f}, now {load[0]:.2f}"
    )
    print("| measure | ours | baseline | ratio | target | must not exceed | met? |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ours = "—" if r["ours"] is None else f"{r['ours']:,.{3 if r['unit'] == 'cores' else 1}f} {r['unit']}"
        base = "—" if r["baseline"] is None else f"{r['baseline']:,.1f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        x = "×" if r["baseline"] is not None or r["ratio"] is not None else f" {r['unit']}"
        limit = f"{r['limit']}{x}" + (", and ≤ 1 s" if "echo calls" in r["measure"] else "")
        target = f"{'<' if 'p50' in r['measure'] else '≤'} {r['target']}{x}"
        print(f"| {r['measure']} | {ours} | {base} | {ratio} | {target} | {limit} | {r['verdict']} |")


def print_answer_cost(http: list[dict[str, Any]]) -> None:
    """read_messages beside echo_page, the SDK alone sending an answer of the same size: how much of its ratio to
    echo is the size of its answer, which the SDK's own work on it sets, and how much is ours."""
    page = {e["conc"]: e for e in http if e["tool"] == "echo_page"}
    for e in http:
        if e["tool"] == "read_messages" and e["conc"] in page:
            print(
                f"for reference, {e['conc']} conn: read_messages ÷ echo {e['ratio_to_echo']['median']:.2f}×, "
                f"÷ echo_page {e['ratio_to_echo_page']['median']:.2f}×; echo_page (the SDK sending the same page) "
                f"÷ echo {page[e['conc']]['ratio_to_echo']['median']:.2f}×"
            )


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds; every figure is a median over them (>= 3)")
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per cell, after a warm-up")
    ap.add_argument("--conns", default="1,8", help="HTTP keep-alive connections per cell, comma-separated")
    ap.add_argument("--memory-seconds", type=float, default=1.0, help="timed seconds per in-memory cell (0: skip)")
    ap.add_argument("--profile", type=Path, help="run both servers under cProfile, writing DIR/{hub,echo}.prof")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    ap.add_argument("--wake-only", action="store_true", help="only the wake/stop latency bench (bench/wake.py)")
    ap.add_argument("--skip-wake", action="store_true", help="everything but the wake/stop latency bench")
    ap.add_argument("--wakes", type=int, default=60, help="wakes per wake-latency series")
    ap.add_argument("--stops", type=int, default=40, help="stops per stop-latency series")
    ap.add_argument("--skip-waiters", action="store_true", help="skip the idle long-poll bench (bench/waiters.py)")
    ap.add_argument("--waiters", type=int, default=1000, help="idle wait_for_messages calls in the long-poll bench")
    ap.add_argument("--listener-only", action="store_true", help="only the listener bench (bench/listener.py)")
    ap.add_argument("--skip-listener", action="store_true", help="skip the listener bench")
    ap.add_argument("--containment-only", action="store_true", help="only the cgroup stop bench (bench/containment.py)")
    ap.add_argument("--skip-containment", action="store_true", help="skip the cgroup stop bench")
    ap.add_argument("--sandbox-only", action="store_true", help="only the sandbox bench (bench/sandbox.py)")
    ap.add_argument("--skip-sandbox", action="store_true", help="skip the sandbox bench")
    ap.add_argument("--sandbox-wakes", type=int, default=20, help="wakes per mode in the sandbox bench")
    ap.add_argument("--sandbox-stops", type=int, default=12, help="stops per mode in the sandbox bench")
    ap.add_argument("--fan-outs", type=int, default=3, help="fan-outs measured per series in the waiters bench")
    ap.add_argument("--room-waiters", type=int, default=50, help="of --waiters, how many wait in the posted room")
    ap.add_argument("--skip-coldstart", action="store_true", help="skip the stdio cold-start bench")
    ap.add_argument("--coldstarts", type=int, default=12, help="interleaved stdio starts of each server")
    ap.add_argument("--skip-bigroom", action="store_true", help="skip the room-size bench (bench/bigroom.py)")
    ap.add_argument("--skip-instructions", action="store_true", help="skip the callgrind count (bench/instructions.py)")
    ap.add_argument("--big-room", type=int, default=1_000_000, help="messages in the big room of the room-size bench")
    ap.add_argument("--quick", action="store_true", help="every part with fewer rounds and samples, for development")
    a = ap.parse_args()
    if a.quick:  # fewer of everything, except what was given explicitly
        quick = {"rounds": 3, "seconds": 0.6, "memory_seconds": 0.3, "wakes": 10, "stops": 6, "sandbox_wakes": 4,
                 "sandbox_stops": 3, "fan_outs": 1, "coldstarts": 4}  # fmt: skip
        for name, value in quick.items():
            if getattr(a, name) == ap.get_default(name):
                setattr(a, name, value)
    if a.wake_only and a.skip_wake:
        ap.error("--wake-only and --skip-wake exclude each other")
    if a.listener_only and (a.skip_listener or a.wake_only):
        ap.error("--listener-only excludes --skip-listener and --wake-only")
    if a.sandbox_only and (a.skip_sandbox or a.wake_only or a.listener_only):
        ap.error("--sandbox-only excludes --skip-sandbox, --wake-only and --listener-only")
    if a.rounds < 1 or a.seconds <= 0:
        ap.error("--rounds must be >= 1 and --seconds > 0")
    concs = [int(c) for c in a.conns.split(",")]
    started = time.monotonic()
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}, "
        f"load {info['loadavg_at_start'][0]:.2f}",
        file=sys.stderr,
    )
    if a.wake_only:
        return part_only(a.out, info, "wake", lambda: wake.run(a.wakes, a.stops), started)
    if a.listener_only:
        return part_only(a.out, info, "listener", listener.run, started)
    if a.containment_only:
        return part_only(a.out, info, "containment", containment.run, started)
    if a.sandbox_only:
        return part_only(a.out, info, "sandbox", lambda: sandbox.run(a.sandbox_wakes, a.sandbox_stops), started)
    if a.profile is not None:
        a.profile.mkdir(parents=True, exist_ok=True)
        a.profile = a.profile.resolve()
    with tempfile.TemporaryDirectory(prefix="agent-rooms-bench-") as tmp:
        home, logdir = Path(tmp) / "home", Path(tmp)
        tokens = asyncio.run(build_hub(home))
        memory_rows = []
        if a.memory_seconds > 0:
            print(f"in-memory: {a.rounds} rounds × {len(INMEMORY_TOOLS)} tools × {a.memory_seconds}s", file=sys.stderr)
            memory_rows = inmemory_rounds(home, tokens[AGENT], a.rounds, a.memory_seconds, logdir)
        print(f"http: {a.rounds} rounds × conns {concs} × {len(TOOLS)} tools × {a.seconds}s", file=sys.stderr)
        http_rows = asyncio.run(http_rounds(home, tokens[AGENT], a.rounds, a.seconds, concs, logdir, a.profile))
        # The HTTP sanity post and prefill, and the in-memory prefill (bench/inmemory.py) when it ran.
        posts = check_posts(home, memory_rows + http_rows, sanity_posts=1 + PREFILL + (PREFILL if memory_rows else 0))
        print(f"check: {posts} posts counted = messages stored = message.post audit rows", file=sys.stderr)
    http = summarize(http_rows, "server_cpu_us_call", list(concs))
    memory = summarize(memory_rows, "cpu_us_call", [None]) if memory_rows else []
    print_tables(http, memory)
    wake_result = None if a.skip_wake else wake.run(a.wakes, a.stops)
    waiters_result = (
        None
        if a.skip_waiters
        else waiters.run(
            a.waiters, 1.0 if a.quick else 3.0, 50 if a.quick else 200, reps=a.fan_outs, room_waiters=a.room_waiters
        )
    )
    if waiters_result is not None:
        waiters.print_table(waiters_result)
    coldstart_result = None if a.skip_coldstart else coldstart.run(a.coldstarts)
    if coldstart_result is not None:
        coldstart.print_table(coldstart_result)
    bigroom_rounds, bigroom_seconds = (3, 0.5) if a.quick else (5, 1.0)
    bigroom_result = None if a.skip_bigroom else bigroom.run(a.big_room, 1_000, bigroom_rounds, bigroom_seconds)
    if bigroom_result is not None:
        bigroom.print_table(bigroom_result)
    instructions_result = None if a.skip_instructions else instructions.run(20 if a.quick else 100)
    listener_result = None if a.skip_listener else listener.run()
    containment_result = None if a.skip_containment else containment.run()
    sandbox_result = None if a.skip_sandbox else sandbox.run(a.sandbox_wakes, a.sandbox_stops)
    elapsed = time.monotonic() - started
    result = {
        "machine": info,
        "method": {
            "rounds": a.rounds,
            "seconds_per_cell": a.seconds,
            "warmup_s": WARMUP_S,
            "http_conns": concs,
            "memory_seconds_per_cell": a.memory_seconds,
            "profiled": a.profile is not None,
            "budget_over_http": {k: {"aim": v[0], "limit": v[1]} for k, v in BUDGET.items()},
        },
        "http": http,
        "inmemory": memory,
        "raw": {"http": http_rows, "inmemory": memory_rows},
        "posts_checked": posts,
        "elapsed_s": round(elapsed, 1),
    }
    if wake_result is not None:
        result["wake"] = wake_result
    if waiters_result is not None:
        result["waiters"] = waiters_result
    if listener_result is not None:
        result["listener"] = listener_result
    if containment_result is not None:
        result["containment"] = containment_result
    if sandbox_result is not None:
        result["sandbox"] = sandbox_result
    if coldstart_result is not None:
        result["coldstart"] = coldstart_result
    if bigroom_result is not None:
        result["bigroom"] = bigroom_result
    if instructions_result is not None:
        result["instructions"] = instructions_result
    result["summary"] = design_rows(result)
    print_summary(result["summary"], info)
    print_answer_cost(http)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out} ({elapsed:.0f}s)")
    over = [e for e in http if "budget" in e and not e["budget"]["within_limit"]]
    for e in over:
        print(
            f"OVER BUDGET: {e['tool']} at {e['conc']} conns costs {e['ratio_to_echo']['median']:.2f}× echo "
            f"(limit {e['budget']['limit']}×)"
        )
    return 0


def part_only(out: Path, info: dict[str, Any], part: str, bench: Callable[[], dict[str, Any]], started: float) -> int:
    """One part alone (the wake or the listener bench): its results replace that entry of an existing results
    file."""
    result = bench()
    try:
        document = json.loads(out.read_text())
    except (OSError, ValueError):
        document = {}
    document[part] = {"machine": info, **result}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
