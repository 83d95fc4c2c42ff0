"""Wake and stop latency of the supervisor (DESIGN §5) with a fake `claude` (bench/fake_cli.py); part of `make bench`.

Series, each on a fresh hub in a temporary home, every run on the real supervisor with default caps:

- wake, same process: a Hub with `supervising(hub)` in this process; the mention is posted through that same
  Hub (`hub.messages.post`), so the commit's in-process notify reaches the supervisor at once.
- wake, across processes: the supervisor in `python -m agent_rooms_mcp serve --http` (a separate process); the
  mention is posted through this process's own Hub, so only the supervisor's poll (`poll_s`, 0.25 s) finds it.
- wake, over HTTP: the same server, the mention sent as a `post_message` call over HTTP, so it commits in the
  supervisor's own process (the production path for a client talking to that server).
- stop, same process / across processes / over HTTP: a hanging fake, then `hub.runs.stop_as_owner` (what
  `agent-rooms agent stop` calls) on the local Hub, or the `stop_agent` tool over HTTP. Measured to SIGINT
  arriving in the child and to the run's `ended_at` (the moment the supervisor records it `stopped`).

Times: the commit is `time.time()` right after the post returns (for HTTP, once the response is read);
the exec is `$EPOCHREALTIME` taken by the fake's bash wrapper as its first command; SIGINT is `time.time()`
taken first thing in the fake's handler; claim and end are the run's `started_at` and `ended_at` columns.
All are CLOCK_REALTIME on one machine. Every wake and stop waits for the previous run to end (an idle
supervisor), and a random delay before each post or stop spreads them over the poll's phase. Owners rotate
so none reaches 6 spawns in a minute (the default cap). Any wake not `woken`, any run not `completed` (wake)
or `stopped` by SIGINT (stop), fails the bench.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.auth.tokens import MCP_KINDS
from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub, init_home
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.principals import AgentTool, Caller, parse_scopes
from agent_rooms_mcp.settings import Settings, WakeSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests/sandboxhost.py, shared with the wake tests
from raw_client import Connection, tool_call
from world import UNLIMITED_RATES

from tests.sandboxhost import AS_ROOT, RUN_AS, give_to_run_as, sandbox_problem, wake_settings_env

BENCH = Path(__file__).resolve().parent
OPERATOR = Actor("operator", "bench-operator")
FINAL = ("stopped", "completed", "failed", "rate_limited", "lost")
DEFAULTS = WakeSettings()
POLL_S = DEFAULTS.poll_s
OWNERS = 40
# Spawns per owner in any 61 s: one under the default cap, so a claim is never held back by it.
SPAWNS_PER_OWNER = DEFAULTS.spawns_per_minute_per_owner - 1
WAIT_S = 30.0  # bounds every wait: a broken run fails the bench, it does not hang it
TICK_S = 0.005  # how often the bench looks for what it waits on (the times themselves come from the fake)
# The issue's aims, in ms: (series, measure) -> aim.
AIMS = {
    ("wake, same process", "commit → exec"): 50.0,
    ("wake, over HTTP", "commit → exec"): 50.0,
    ("wake, across processes", "commit → exec"): 300.0,
    ("stop, same process", "stop call → SIGINT"): 100.0,
    ("stop, across processes", "stop call → SIGINT"): 100.0,
    ("stop, over HTTP", "stop call → SIGINT"): 100.0,
}


def ts(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# --- world --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One owner's two agents and their room: `poster` mentions (and stops) `bot`, which holds invoke."""

    owner: str
    poster: str
    bot: str
    room: str
    token: str  # the poster's


async def build_world(home: Path, workroot: Path, owners: int = OWNERS) -> list[Pair]:
    """`owners` pairs. Their bots run sandboxed, the default, where bubblewrap starts here; elsewhere with the
    sandbox off (`agent set --sandbox off`, the operator's choice), as the wake tests do (`sandboxed()`)."""
    settings = Settings(home=home)
    await init_home(settings, OPERATOR)
    pairs = []
    async with Hub.open(settings) as hub:
        for i in range(owners):
            owner = f"owner{i:02d}"
            poster, bot, room = f"{owner}-poster", f"{owner}-bot", f"room{i:02d}"
            await hub.accounts.add_owner(OPERATOR, owner, local=True)  # this hub spawns their agents
            scopes = parse_scopes("read,post,task,manage")
            await hub.accounts.add_agent(OPERATOR, poster, owner, AgentTool.CLAUDE, scopes, None)
            workdir = workroot / bot
            workdir.mkdir(parents=True)
            give_to_run_as(workdir)
            scopes = parse_scopes("read,post,task,invoke")
            await hub.accounts.add_agent(OPERATOR, bot, owner, AgentTool.CLAUDE, scopes, str(workdir))
            if not sandboxed():
                await hub.accounts.set_agent(OPERATOR, bot, sandbox=False)
            token = (await hub.accounts.issue_token(OPERATOR, poster, timedelta(days=1))).token
            await hub.rooms.create(OPERATOR, room, owner, [poster, bot])
            pairs.append(Pair(owner, poster, bot, room, token))
    return pairs


def sandboxed() -> bool:
    """Do the bench's woken fakes run in the sandbox (bubblewrap starts here), as a user's would by default?"""
    return sandbox_problem() is None


def open_to_run_as(root: Path) -> None:
    """As root, let the run-as user through the bench's temporary directory (created 0700): an unsandboxed
    run reaches its fake and workdir at their host paths. Inside the sandbox bwrap makes the parents itself."""
    if AS_ROOT:
        root.chmod(0o755)


class Rotation:
    """Hands out pairs round-robin, skipping an owner that already has SPAWNS_PER_OWNER spawns in 61 s."""

    def __init__(self, pairs: list[Pair]) -> None:
        self._pairs = pairs
        self._next = 0
        self._spawns: dict[str, deque[float]] = {p.owner: deque() for p in pairs}

    async def take(self) -> Pair:
        while True:
            now = time.monotonic()
            for k in range(len(self._pairs)):
                pair = self._pairs[(self._next + k) % len(self._pairs)]
                spawns = self._spawns[pair.owner]
                while spawns and now - spawns[0] > 61:
                    spawns.popleft()
                if len(spawns) < SPAWNS_PER_OWNER:
                    self._next = (self._next + k + 1) % len(self._pairs)
                    spawns.append(now)
                    return pair
            await anyio.sleep(1.0)


def fake_python() -> str:
    """The interpreter the fake runs on. As root, the system's: the run-as user must reach it without the
    sandbox's runtime binds too (this one may live under /root, as pyenv's does), and every series uses the
    same one so that sandboxed and unsandboxed runs compare. It needs only the standard library."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    return system if AS_ROOT and system is not None else sys.executable


class FakeCli:
    """bench/fake_cli.py behind a bash wrapper that notes the exec time; its records, by (event, run_id)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.log, self.mode_file, self.bin = root / "fake.log", root / "mode", root / "bin" / "claude"
        self.bin.parent.mkdir()
        self.log.touch()
        exported = {"BENCH_FAKE_LOG": str(self.log), "BENCH_FAKE_MODE": str(self.mode_file)}
        lines = [
            "#!/bin/bash",
            "BENCH_EXEC_T=$EPOCHREALTIME",  # first: a bash builtin, no fork
            "export BENCH_EXEC_T " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exported.items()),
            f'exec {shlex.quote(fake_python())} -I -S {shlex.quote(str(BENCH / "fake_cli.py"))} "$@"',
        ]
        self.bin.write_text("\n".join(lines) + "\n")
        self.bin.chmod(0o755)
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._offset = 0
        self.mode("ok")
        self.root = root
        give_to_run_as(root)  # as root the fake runs as RUN_AS, and appends to its log

    def caps(self, **overrides: Any) -> WakeSettings:
        """Default caps but the fake claude; as root its runs go to RUN_AS (DESIGN §5 "Never root"). In the
        sandbox the fake sees this bench's scripts read-only and its own directory (mode, log) read-write."""
        return WakeSettings(claude_bin=str(self.bin), run_as=RUN_AS, sandbox_ro=(str(BENCH),),
                            sandbox_rw=(str(self.root),), **overrides)  # fmt: skip

    def env(self) -> dict[str, str]:
        """`caps()` for a separate process (a hub, a listener)."""
        return wake_settings_env(self.caps())

    def mode(self, name: str) -> None:
        self.mode_file.write_text(name)

    def _read(self) -> None:
        with self.log.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            rec = json.loads(line)
            self._records[(rec["event"], rec["run_id"])] = rec

    async def wait(self, event: str, run_id: str) -> dict[str, Any]:
        with anyio.fail_after(WAIT_S):
            while True:
                self._read()
                if (event, run_id) in self._records:
                    return self._records[(event, run_id)]
                await anyio.sleep(TICK_S)


# --- the ways in: where the mention is posted and the stop is asked from ------------------------


class Side(Protocol):
    async def post(self, pair: Pair, text: str) -> tuple[str, str]:
        """Post; returns (message_id, the mention's outcome)."""
        ...

    async def stop(self, pair: Pair) -> None: ...

    async def run_of(self, message_id: str) -> dict[str, Any] | None: ...


class HubSide:
    """Through a Hub in this process: the supervisor's own (same process) or another one (across processes)."""

    def __init__(self, hub: Hub, callers: dict[str, Caller]) -> None:
        self.hub, self._callers = hub, callers

    async def post(self, pair: Pair, text: str) -> tuple[str, str]:
        posted = await self.hub.messages.post(self._callers[pair.poster], pair.room, text, [], None)
        return posted.message_id, posted.mentions[0].outcome

    async def stop(self, pair: Pair) -> None:
        await self.hub.runs.stop_as_owner(OPERATOR, pair.bot, None)

    async def run_of(self, message_id: str) -> dict[str, Any] | None:
        return await run_row(self.hub, message_id)


class HttpSide:
    """`post_message` and `stop_agent` over HTTP to the serving process; runs are read through a local Hub."""

    def __init__(self, hub: Hub, port: int) -> None:
        self.hub, self._port = hub, port

    async def _call(self, pair: Pair, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        # A connection per call: uvicorn closes one idle for 5 s, and the series between two HTTP ones is longer.
        conn = await Connection.open(self._port)
        try:
            body = await conn.call(tool_call(self._port, tool, arguments, token=pair.token))
        finally:
            await conn.close()
        return json.loads(body)["result"]["structuredContent"]

    async def post(self, pair: Pair, text: str) -> tuple[str, str]:
        posted = await self._call(pair, "post_message", {"room": pair.room, "text": text})
        return posted["message_id"], posted["mentions"][0]["outcome"]

    async def stop(self, pair: Pair) -> None:
        await self._call(pair, "stop_agent", {"agent": pair.bot})

    async def run_of(self, message_id: str) -> dict[str, Any] | None:
        return await run_row(self.hub, message_id)


async def run_row(hub: Hub, message_id: str) -> dict[str, Any] | None:
    def read(conn: Any) -> dict[str, Any] | None:
        row = conn.execute("SELECT * FROM runs WHERE cause_id = ?", (message_id,)).fetchone()
        return dict(row) if row is not None else None

    return await hub.store.read(read)


async def wait_run(side: Side, message_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    with anyio.fail_after(WAIT_S):
        while True:
            run = await side.run_of(message_id)
            if run is not None and done(run):
                return run
            await anyio.sleep(TICK_S)


# --- series -------------------------------------------------------------------------------------


async def wake_series(
    side: Side, rotation: Rotation, fake: FakeCli, n: int, jitter_s: float, outcome_is: str = "woken"
) -> list[dict[str, float]]:
    """`outcome_is`: the mention's outcome when the post returns ("queued" for a wake a listener will claim)."""
    fake.mode("ok")
    rows = []
    for i in range(n):
        pair = await rotation.take()
        await anyio.sleep(random.uniform(0, jitter_s))
        t_call = time.time()
        message_id, outcome = await side.post(pair, f"@{pair.bot} wake {i}")
        t_commit = time.time()
        if outcome != outcome_is:
            raise RuntimeError(f"mention of {pair.bot} was {outcome!r}, not {outcome_is!r}")
        run = await wait_run(side, message_id, lambda r: r["state"] in FINAL)
        if run["state"] != "completed":
            raise RuntimeError(f"wake run {run['run_id']} ended {run['state']}/{run['outcome']}")
        start = await fake.wait("start", run["run_id"])
        rows.append(
            {
                "commit → exec": (start["t_exec"] - t_commit) * 1e3,
                # created_at is taken inside the post's transaction: an upper bound where the commit is
                # only seen late (over HTTP, t_commit is when the response has been read).
                "enqueued → exec": (start["t_exec"] - ts(run["created_at"])) * 1e3,
                "commit → claim": (ts(run["started_at"]) - t_commit) * 1e3,
                "claim → exec": (start["t_exec"] - ts(run["started_at"])) * 1e3,
                "exec → fake's first Python line": (start["t_py"] - start["t_exec"]) * 1e3,
                "post call": (t_commit - t_call) * 1e3,
            }
        )
    return rows


async def stop_series(
    side: Side, rotation: Rotation, fake: FakeCli, n: int, jitter_s: float, outcome_is: str = "woken"
) -> list[dict[str, float]]:
    fake.mode("hang")
    rows = []
    for i in range(n):
        pair = await rotation.take()
        message_id, outcome = await side.post(pair, f"@{pair.bot} hang {i}")
        if outcome != outcome_is:
            raise RuntimeError(f"mention of {pair.bot} was {outcome!r}, not {outcome_is!r}")
        run = await wait_run(side, message_id, lambda r: True)  # the run row is written with the post
        await fake.wait("start", run["run_id"])  # the handler is in place
        await anyio.sleep(random.uniform(0, jitter_s))
        t_stop = time.time()
        await side.stop(pair)
        t_returned = time.time()
        run = await wait_run(side, message_id, lambda r: r["state"] in FINAL)
        t_seen = time.time()
        if (run["state"], run["stop_signal"]) != ("stopped", "SIGINT"):
            raise RuntimeError(f"stopped run {run['run_id']} ended {run['state']}/{run['stop_signal']}")
        sigint = await fake.wait("sigint", run["run_id"])
        rows.append(
            {
                "stop call → SIGINT": (sigint["t"] - t_stop) * 1e3,
                "stop call → recorded stopped": (ts(run["ended_at"]) - t_stop) * 1e3,
                "SIGINT → recorded stopped": (ts(run["ended_at"]) - sigint["t"]) * 1e3,
                "stop call": (t_returned - t_stop) * 1e3,
                "stop call → bench saw stopped": (t_seen - t_stop) * 1e3,
            }
        )
    return rows


async def spawn_floor(fake: FakeCli, n: int) -> list[dict[str, float]]:
    """open_process (as run_process calls it) of a bash script whose first command is `$EPOCHREALTIME`."""
    script = fake.bin.parent / "floor"
    script.write_text('#!/bin/bash\nT=$EPOCHREALTIME\necho "$T"\n')
    script.chmod(0o755)
    rows = []
    for _ in range(n):
        t0 = time.time()
        async with await anyio.open_process([str(script)], start_new_session=True) as proc:
            assert proc.stdout is not None
            out = b""
            async for chunk in proc.stdout:
                out += chunk
        rows.append({"open_process → exec": (float(out.decode().strip().replace(",", ".")) - t0) * 1e3})
    return rows


async def warm(side: Side, rotation: Rotation, fake: FakeCli, outcome_is: str = "woken") -> None:
    """One uncounted wake and one uncounted stop: first calls pay for imports and caches."""
    await wake_series(side, rotation, fake, 1, 0.0, outcome_is)
    await stop_series(side, rotation, fake, 1, 0.0, outcome_is)


# --- the two settings ---------------------------------------------------------------------------


async def callers(hub: Hub, pairs: list[Pair]) -> dict[str, Caller]:
    return {p.poster: await hub.auth.authenticate(p.token, MCP_KINDS, transport="bench") for p in pairs}


async def same_process(root: Path, n_wake: int, n_stop: int) -> dict[str, list[dict[str, float]]]:
    home = root / "home-same"
    pairs = await build_world(home, root / "work-same")
    fake = FakeCli(root / "fake-same")
    # Default caps and poll; only the binary differs, as AGENT_ROOMS_CLAUDE_BIN would set it.
    settings = Settings(home=home, wake=fake.caps())
    out: dict[str, list[dict[str, float]]] = {}
    async with Hub.open(settings) as hub, supervising(hub) as supervisor:
        assert supervisor is not None
        side = HubSide(hub, await callers(hub, pairs))
        rotation = Rotation(pairs)
        await warm(side, rotation, fake)
        out["open_process floor"] = await spawn_floor(fake, n_wake)
        out["wake, same process"] = await wake_series(side, rotation, fake, n_wake, 0.05)
        out["stop, same process"] = await stop_series(side, rotation, fake, n_stop, POLL_S)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrubbed_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without its AGENT_ROOMS_ settings, for a hub or a machine of `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_")}
    env.update(AGENT_ROOMS_HOME=str(home), **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p)
    return env


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not listen on {port}") from None
            await anyio.sleep(0.05)


@asynccontextmanager
async def hub_server(home: Path, fake: FakeCli, log: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    """`serve --http` on `home` (defaults but the fake claude and the raised rates), as (process, port);
    its log's tail is printed if the block fails."""
    port = free_port()
    env = scrubbed_env(home, **fake.env(), **UNLIMITED_RATES)
    argv = [sys.executable, "-m", "agent_rooms_mcp", "serve", "--http", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out_file:
        proc = subprocess.Popen(argv, env=env, stdout=out_file, stderr=subprocess.STDOUT, cwd=BENCH.parent)
    try:
        await wait_port(port, proc)
        yield proc, port
    except BaseException:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        print(f"--- hub server log tail ({log.name}) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_process(proc)


async def across_processes(root: Path, n_wake: int, n_stop: int) -> dict[str, list[dict[str, float]]]:
    home = root / "home-across"
    pairs = await build_world(home, root / "work-across")
    fake = FakeCli(root / "fake-across")
    out: dict[str, list[dict[str, float]]] = {}
    async with hub_server(home, fake, root / "wake-server.log") as (_proc, port):
        # This process runs no supervisor: the server's is the only one.
        settings = Settings(home=home, wake=WakeSettings(enabled=False))
        async with Hub.open(settings) as hub:
            remote, http = HubSide(hub, await callers(hub, pairs)), HttpSide(hub, port)
            rotation = Rotation(pairs)
            await warm(http, rotation, fake)
            await warm(remote, rotation, fake)
            out["wake, over HTTP"] = await wake_series(http, rotation, fake, n_wake, 0.05)
            out["wake, across processes"] = await wake_series(remote, rotation, fake, n_wake, POLL_S)
            out["stop, over HTTP"] = await stop_series(http, rotation, fake, n_stop, POLL_S)
            out["stop, across processes"] = await stop_series(remote, rotation, fake, n_stop, POLL_S)
    return out


# --- summary ------------------------------------------------------------------------------------


def quantiles(values: list[float]) -> dict[str, float]:
    s = sorted(values)

    def rank(q: float) -> float:  # nearest rank: with fewer than 100 samples, p99 is the maximum
        return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]

    return {"n": len(s), "min": s[0], "p50": statistics.median(s), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1]}


def summarize(raw: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    out = []
    for series, rows in raw.items():
        for measure in rows[0]:
            entry: dict[str, Any] = {"series": series, "measure": measure, **quantiles([r[measure] for r in rows])}
            aim = AIMS.get((series, measure))
            if aim is not None:
                entry["aim_ms"] = aim
                entry["p50_within_aim"] = entry["p50"] <= aim
                entry["p99_within_aim"] = entry["p99"] <= aim
            out.append(entry)
    return out


def print_table(summary: list[dict[str, Any]]) -> None:
    print("\nWake and stop latency (ms), fake claude CLI, default caps and poll_s")
    print("| series | measure | n | p50 | p90 | p99 | max | aim | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in summary:
        aim = verdict = ""
        if "aim_ms" in e:
            aim = f"< {e['aim_ms']:.0f}"
            verdict = (
                "p99 within"
                if e["p99_within_aim"]
                else "p50 within, p99 over"
                if e["p50_within_aim"]
                else "OVER (p50 and p99)"
            )
        print(
            f"| {e['series']} | {e['measure']} | {e['n']} | {e['p50']:.1f} | {e['p90']:.1f} | {e['p99']:.1f} | "
            f"{e['max']:.1f} | {aim} | {verdict} |"
        )


def unwakeable() -> str | None:
    """Why this host can wake nothing for the bench, or None: a root hub runs CLIs only in the sandbox."""
    if AS_ROOT and not sandboxed():
        return f"as root CLIs run only in the sandbox, and {sandbox_problem()}"
    return None


def run(n_wake: int = 60, n_stop: int = 40) -> dict[str, Any]:
    """Both settings, in fresh temporary homes; prints the table and returns the results."""
    started = time.monotonic()
    if (why := unwakeable()) is not None:
        print(f"wake bench: skipped, {why}", file=sys.stderr, flush=True)
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="agent-rooms-wake-bench-") as tmp:
        root = Path(tmp)
        open_to_run_as(root)
        # The in-process supervisor logs as `serve` does (JSON lines), into a file rather than our terminal.
        configure_logging(json=True)
        log_file = (root / "wake-same.log").open("w")
        # Not cached: a logger cached on this file would keep writing to it after it is closed, and the later
        # in-process parts (containment, sandbox) then failed with "I/O operation on closed file".
        structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=log_file), cache_logger_on_first_use=False)
        try:
            print(f"wake bench, same process: {n_wake} wakes, {n_stop} stops", file=sys.stderr, flush=True)
            raw = anyio.run(same_process, root, n_wake, n_stop)
        finally:
            structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
            log_file.close()
        print(f"wake bench, across processes: 2 × {n_wake} wakes, 2 × {n_stop} stops", file=sys.stderr, flush=True)
        raw |= anyio.run(across_processes, root, n_wake, n_stop)
    summary = summarize(raw)
    print_table(summary)
    return {
        "method": {
            "wakes_per_series": n_wake,
            "stops_per_series": n_stop,
            "owners": OWNERS,
            "spawns_per_owner_per_minute_max": SPAWNS_PER_OWNER,
            "poll_s": POLL_S,
            "caps": "defaults (WakeSettings())",
            "sandbox": "on" if sandboxed() else f"off: {sandbox_problem()}",
            "run_as": RUN_AS or None,
            "aims_ms": {f"{s}: {m}": v for (s, m), v in AIMS.items()},
        },
        "summary": summary,
        "raw": raw,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def part_main(
    argv: list[str] | None, doc: str, name: str, bench: Callable[[int, int], dict[str, Any]], wakes: int, stops: int
) -> int:
    """A bench part run alone (`python bench/<part>.py`): its wake and stop counts, and an optional JSON file."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--wakes", type=int, default=wakes, help="wakes per series")
    ap.add_argument("--stops", type=int, default=stops, help="stops per series")
    ap.add_argument("--out", type=Path, help="also write the results here as JSON")
    a = ap.parse_args(argv)
    result = bench(a.wakes, a.stops)
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name} bench took {result.get('elapsed_s', 0):.0f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return part_main(argv, __doc__, "wake", run, 60, 40)


if __name__ == "__main__":
    sys.exit(main())
