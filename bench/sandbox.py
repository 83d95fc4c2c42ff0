"""What the sandbox costs a woken run and what it buys at a stop (DESIGN §5, issue 14); part of `make bench`.

Alone: `python bench/run.py --sandbox-only`, or `python bench/sandbox.py`. Three measures, each against a
baseline taken in the same run, interleaved, because the box is shared and noisy:

- wake: commit of the mention → the fake CLI's exec, per mode (MODES: the sandbox on, the default, and
  `agent set --sandbox off`, the baseline). Each mode has a hub of its own with its own supervisor in this
  process; every round wakes once in each mode, in an order rotated from round to round, and the ratio to the
  baseline is taken within the round.
- stop: a fake that has left a daemon behind (bench/fake_cli.py `orphan`: double-forked, setsid'd, its streams
  on /dev/null, as a tool's shell can), then `stop_as_owner`: stop call → SIGINT in the CLI, → the CLI's
  process gone, → every process of the run gone (the supervisor's spawn, and every process of the sandbox's
  PID namespace or, unsandboxed, the CLI and its daemon), each watched through a pidfd opened before the stop.
  A process still there STOP_BOUND_S after the stop call has escaped: counted, then killed by the bench.
- probe: what the supervisor's fail-closed probe costs at every spawn: `bwrap … true` with a run's own mounts
  (`sandbox.probe_now`, what the supervisor runs), against spawning `true` the same way without bwrap.

Another containment mode (a cgroup of the run's own, say) is one more row of MODES: its agents' sandbox flag
and the WakeSettings it changes; every series, ratio and table picks it up.

As root the CLIs run as tests/sandboxhost.py's RUN_AS (DESIGN §5 "Never root"), through setpriv also with the
sandbox off; the fake and its workdirs are in a directory that user can read. Where bubblewrap cannot start
a sandbox, there is nothing to compare: the part says why and measures nothing.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.logs import configure_logging
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.wake.egress import network_namespace_problem
from agent_rooms_mcp.wake.sandbox import SandboxPlan, as_user, cli_dirs, home_secrets, probe_now, run_as, runtime_dirs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wake
from wake import OPERATOR, POLL_S, FakeCli, HubSide, Pair, Rotation, quantiles

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Mode:
    """One way of containing a woken run: its agents' `agent set --sandbox`, and what its supervisor's
    WakeSettings change from the defaults."""

    name: str
    sandbox: bool
    caps: dict[str, Any] = field(default_factory=dict)


MODES = (Mode("sandbox", sandbox=True), Mode("no sandbox", sandbox=False))
BASELINE = "no sandbox"


def unavailable(mode: Mode) -> str | None:
    """Why this host runs no CLI in `mode`, or None: a root hub runs CLIs only sandboxed (DESIGN §5, policy's
    `spawn_refusal`), so as root the unsandboxed baseline cannot be measured."""
    if wake.AS_ROOT and not mode.sandbox:
        return "as root a hub runs CLIs only in the sandbox (root_refused otherwise): run the bench as a normal user"
    return None


def modes() -> tuple[Mode, ...]:
    return tuple(m for m in MODES if unavailable(m) is None)


# Each mode's world: enough owners that none reaches the spawn cap (6 a minute) at this bench's pace.
OWNERS_PER_MODE = 12
# A process of a stopped run still running this long after the stop call has escaped the stop.
STOP_BOUND_S = 2.0
WAKE_MEASURES = ("commit → exec", "claim → exec", "claim → spawn", "spawn → exec", "exec → fake's first Python line")
STOP_MEASURES = ("stop call → SIGINT", "stop call → CLI gone", "stop call → every process gone",
                 "stop call → recorded stopped")  # fmt: skip
# The measures compared with the baseline within each round: by their difference, and by their ratio too but
# for the two split at the spawn, whose baseline can be near zero: the spawn's time is when the supervisor logs
# it, which can come a few ms after an unwrapped CLI's exec.
COMPARED = ("commit → exec", "claim → exec", "claim → spawn", "spawn → exec", "stop call → CLI gone",
            "stop call → every process gone")  # fmt: skip
NO_RATIO = ("claim → spawn", "spawn → exec")


# --- a run's processes --------------------------------------------------------------------------


def _ns_pid(pid: int) -> int | None:
    """The pid's number inside its own (innermost) PID namespace, from /proc/PID/status's NSpid."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def run_processes(spawned: int, start: dict[str, Any]) -> tuple[list[int], int]:
    """Host pids of every process of the run, and the CLI's own: the supervisor's spawn (setpriv, bwrap or the
    CLI itself), and in a sandbox every process of its PID namespace (the fake logged that namespace and its
    pids as seen inside it), else the CLI and the daemon it left."""
    own_ns = os.readlink("/proc/self/ns/pid")
    if start["pid_ns"] == own_ns:
        return sorted({spawned, start["pid"], start["orphan"]}), start["pid"]
    members, cli = {spawned}, None
    for entry in filter(str.isdigit, os.listdir("/proc")):
        pid = int(entry)
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != start["pid_ns"]:
                continue
        except OSError:
            continue
        members.add(pid)
        if _ns_pid(pid) == start["pid"]:
            cli = pid
    if cli is None:
        raise RuntimeError(f"no process of {start['pid_ns']} is the fake's pid {start['pid']}")
    return sorted(members), cli


class Exits:
    """pidfds of processes, opened while they run; `wait` notes when each exits (a zombie has exited)."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        for pid in pids:
            try:
                self.fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                self.close()
                raise RuntimeError(f"process {pid} of the run ended before the stop") from None
        self.at: dict[int, float] = {}

    def wait(self, until_monotonic: float) -> None:
        """Blocking (run it in a thread): until every process has exited or the bound has passed."""
        poller = select.poll()
        by_fd = {fd: pid for pid, fd in self.fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while len(self.at) < len(self.fds) and (left := until_monotonic - time.monotonic()) > 0:
            for fd, _ in poller.poll(min(left, 0.05) * 1e3):
                self.at[by_fd[fd]] = time.time()
                poller.unregister(fd)

    def kill_left(self) -> int:
        left = [pid for pid in self.fds if pid not in self.at]
        for pid in left:
            signal.pidfd_send_signal(self.fds[pid], signal.SIGKILL)
        return len(left)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


# --- the series ---------------------------------------------------------------------------------


@dataclass
class Contained:
    """One mode's hub, with its supervisor running in this process."""

    mode: Mode
    hub: Hub
    side: HubSide
    rotation: Rotation


@asynccontextmanager
async def contained(root: Path, fake: FakeCli) -> AsyncIterator[list[Contained]]:
    async with AsyncExitStack() as stack:
        out = []
        for i, mode in enumerate(modes()):
            home = root / f"home-{i}"
            pairs = await wake.build_world(home, root / f"work-{i}", OWNERS_PER_MODE)
            hub = await stack.enter_async_context(Hub.open(Settings(home=home, wake=fake.caps(**mode.caps))))
            for p in pairs:
                await hub.accounts.set_agent(OPERATOR, p.bot, sandbox=mode.sandbox)
            supervisor = await stack.enter_async_context(supervising(hub))
            assert supervisor is not None
            out.append(Contained(mode, hub, HubSide(hub, await wake.callers(hub, pairs)), Rotation(pairs)))
        yield out


async def one_wake(c: Contained, fake: FakeCli) -> dict[str, Any]:
    """One wake; "claim → spawn" and "spawn → exec" are filled in from the supervisors' log by `spawns`."""
    [row] = await wake.wake_series(c.side, c.rotation, fake, 1, 0.05)
    # Runs are one at a time: this hub's latest is the one just measured.
    last = await c.hub.store.read(
        lambda conn: conn.execute("SELECT run_id, started_at FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()
    )
    claim = wake.ts(last["started_at"])
    start = await fake.wait("start", last["run_id"])
    return {**row, "run_id": last["run_id"], "claim": claim, "exec": start["t_exec"]}


def spawns(raw: dict[str, list[dict[str, Any]]], log: Path) -> None:
    """Split each wake's claim → exec at the spawn, the supervisor's `run.spawn` line (logged as the process is
    started): before it the run's files, its bridge and, sandboxed, the probe; after it bwrap (or setpriv) up
    to the CLI's exec."""
    spawned = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"run.spawn"' in line:
            event = json.loads(line)
            spawned[event["run_id"]] = wake.ts(event["timestamp"])
    for m in modes():
        for row in raw[f"wake, {m.name}"]:
            at = spawned[row.pop("run_id")]
            claim, exec_t = row.pop("claim"), row.pop("exec")
            row["claim → spawn"], row["spawn → exec"] = (at - claim) * 1e3, (exec_t - at) * 1e3


async def one_stop(c: Contained, fake: FakeCli) -> dict[str, Any]:
    """Wake the `orphan` fake, stop it, and time each of its processes' exits."""
    fake.mode("orphan")
    pair: Pair = await c.rotation.take()
    message_id, outcome = await c.side.post(pair, f"@{pair.bot} leave a daemon")
    if outcome != "woken":
        raise RuntimeError(f"mention of {pair.bot} was {outcome!r}, not 'woken'")
    run = await wake.wait_run(c.side, message_id, lambda r: True)
    start = await fake.wait("start", run["run_id"])  # the daemon runs, the handler is in place
    run = await wake.wait_run(c.side, message_id, lambda r: r["pid"] is not None)
    pids, cli = run_processes(run["pid"], start)
    exits = Exits(pids)
    try:
        await anyio.sleep(random.uniform(0, POLL_S))
        t_stop = time.time()
        bound = time.monotonic() + STOP_BOUND_S
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, exits.wait, bound)
            await c.side.stop(pair)
        run = await wake.wait_run(c.side, message_id, lambda r: r["state"] in wake.FINAL)
        escaped = exits.kill_left()
    finally:
        exits.close()
    if (run["state"], run["stop_signal"]) != ("stopped", "SIGINT"):
        raise RuntimeError(f"stopped run {run['run_id']} ended {run['state']}/{run['stop_signal']}")
    sigint = await fake.wait("sigint", run["run_id"])
    return {
        "stop call → SIGINT": (sigint["t"] - t_stop) * 1e3,
        "stop call → CLI gone": (exits.at[cli] - t_stop) * 1e3 if cli in exits.at else None,
        "stop call → every process gone": None if escaped else (max(exits.at.values()) - t_stop) * 1e3,
        "stop call → recorded stopped": (wake.ts(run["ended_at"]) - t_stop) * 1e3,
        "processes": len(pids),
        "escaped": escaped,
    }


async def measure(root: Path, n_wake: int, n_stop: int) -> dict[str, list[dict[str, Any]]]:
    fake = FakeCli(root / "fake")
    raw: dict[str, list[dict[str, Any]]] = {f"wake, {m.name}": [] for m in modes()}
    raw |= {f"stop, {m.name}": [] for m in modes()}
    async with contained(root, fake) as boxes:
        for c in boxes:  # uncounted: first calls pay for imports and caches
            await wake.wake_series(c.side, c.rotation, fake, 1, 0.05)
            await one_stop(c, fake)
        for r in range(max(n_wake, n_stop)):
            k = r % len(boxes)
            order = boxes[k:] + boxes[:k]  # rotated, so no mode always runs first
            for c in order if r < n_wake else ():
                raw[f"wake, {c.mode.name}"].append({"round": r, **await one_wake(c, fake)})
            for c in order if r < n_stop else ():
                raw[f"stop, {c.mode.name}"].append({"round": r, **await one_stop(c, fake)})
            print(f"  sandbox bench round {r + 1}/{max(n_wake, n_stop)}", file=sys.stderr, flush=True)
        raw["probe"] = await anyio.to_thread.run_sync(probe_series, root, fake, max(n_wake, n_stop))
    return raw


def probe_series(root: Path, fake: FakeCli, n: int) -> list[dict[str, Any]]:
    """The supervisor's probe (`probe_now`: bwrap with the run's mounts and user, running `true`) against
    `true` spawned the same way (subprocess.run, empty environment), and as root through setpriv to the run-as
    user too; rotated within each round. Wall time and the children's CPU (RUSAGE_CHILDREN) per spawn."""
    user = run_as(wake.RUN_AS) if wake.AS_ROOT else None
    base = root / "probe"
    dirs = [base / name for name in ("home", "work", "run", "config")]
    for d in dirs:
        d.mkdir(parents=True)
    wake.give_to_run_as(*dirs[1:])
    caps = fake.caps()
    bwrap = shutil.which(caps.bwrap) or caps.bwrap
    # A network namespace of its own where the host allows one, as the supervisor gives a run's sandbox.
    own_network = network_namespace_problem(bwrap) is None
    plan = SandboxPlan(workdir=dirs[1], run_dir=dirs[2], config_dir=dirs[3], read_only=False,
                       cli_dirs=cli_dirs(caps.claude_bin), runtime_dirs=runtime_dirs(),
                       extra_ro=tuple(map(Path, caps.sandbox_ro)), extra_rw=tuple(map(Path, caps.sandbox_rw)),
                       hidden=(dirs[0], *home_secrets(Path.home())), run_as=user,
                       share_net=not own_network)  # fmt: skip
    true = shutil.which("true") or "/usr/bin/true"

    def spawn(argv: list[str]) -> str | None:
        done = subprocess.run(argv, capture_output=True, env={}, check=False)
        return None if done.returncode == 0 else f"{argv[0]} exited {done.returncode}"

    probe_name = "probe (bwrap true, own network)" if own_network else "probe (bwrap true)"
    ways = {probe_name: lambda: probe_now(bwrap, plan), "spawn true": lambda: spawn([true])}
    if user is not None:
        ways["setpriv true"] = lambda: spawn(as_user(user, [true]))
    rows = []
    names = list(ways)
    for r in range(n):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            problem = ways[name]()
            wall = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if problem is not None:
                raise RuntimeError(f"{name} failed: {problem}")
            cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
            rows.append({"round": r, "way": name, "wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3})
    return rows


# --- summary ------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    modes: list[dict[str, Any]] = []
    for m in MODES:
        for kind, measures in (("wake", WAKE_MEASURES), ("stop", STOP_MEASURES)):
            rows = raw.get(f"{kind}, {m.name}")
            if not rows:
                continue
            for measure in measures:
                values = [r[measure] for r in rows if r[measure] is not None]
                entry: dict[str, Any] = {"mode": m.name, "kind": kind, "measure": measure}
                entry |= quantiles(values) if values else {"n": 0}
                if m.name != BASELINE and measure in COMPARED and raw.get(f"{kind}, {BASELINE}"):
                    base = {r["round"]: r[measure] for r in raw[f"{kind}, {BASELINE}"]}
                    pairs = [(r[measure], base[r["round"]]) for r in rows if r[measure] is not None
                             and base.get(r["round"]) is not None]  # fmt: skip
                    if measure not in NO_RATIO:
                        entry["ratio_to_baseline"] = spread([mine / theirs for mine, theirs in pairs])
                    entry["minus_baseline_ms"] = spread([mine - theirs for mine, theirs in pairs])
                modes.append(entry)
            if kind == "stop":
                modes.append({"mode": m.name, "kind": kind, "measure": "runs with a process that escaped",
                              "n": len(rows), "escaped": sum(1 for r in rows if r["escaped"]),
                              "processes_per_run": statistics.median(r["processes"] for r in rows)})  # fmt: skip
    probe: list[dict[str, Any]] = []
    by_round = {(r["round"], r["way"]): r for r in raw["probe"]}
    for way in dict.fromkeys(r["way"] for r in raw["probe"]):
        rows = [r for r in raw["probe"] if r["way"] == way]
        entry = {"way": way, "wall_ms": quantiles([r["wall_ms"] for r in rows]),
                 "cpu_ms": spread([r["cpu_ms"] for r in rows])}  # fmt: skip
        entry["wall_ratio_to_spawn_true"] = spread(
            [r["wall_ms"] / by_round[(r["round"], "spawn true")]["wall_ms"] for r in rows]
        )
        probe.append(entry)
    return {"modes": modes, "probe": probe}


def _fmt(s: dict[str, float] | None, digits: int = 2) -> str:
    return "" if s is None else f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def print_tables(summary: dict[str, Any]) -> None:
    print(f"\nSandbox cost, same process, fake claude; ms; ratio and difference to '{BASELINE}' within each round")
    print("| mode | measure | n | p50 | p90 | max | ÷ baseline, median [min–max] | − baseline ms |")
    print("|---|---|---|---|---|---|---|---|")
    for e in summary["modes"]:
        if "escaped" in e:
            print(f"| {e['mode']} | {e['measure']} | {e['n']} | {e['escaped']} of {e['n']} "
                  f"({e['processes_per_run']:.0f} processes a run) | | | | |")  # fmt: skip
        elif e["n"] == 0:
            print(f"| {e['mode']} | {e['measure']} | 0 | | | | | |")
        else:
            print(
                f"| {e['mode']} | {e['measure']} | {e['n']} | {e['p50']:.1f} | {e['p90']:.1f} | {e['max']:.1f} | "
                f"{_fmt(e.get('ratio_to_baseline'))} | {_fmt(e.get('minus_baseline_ms'), 1)} |"
            )
    print("\nThe probe at every spawn (wall ms p50 / p90 / max; children's CPU ms, median [min–max])")
    print("| way | n | wall p50 | p90 | max | CPU ms | wall ÷ spawn true |")
    print("|---|---|---|---|---|---|---|")
    for e in summary["probe"]:
        w = e["wall_ms"]
        print(f"| {e['way']} | {w['n']} | {w['p50']:.2f} | {w['p90']:.2f} | {w['max']:.2f} | {_fmt(e['cpu_ms'])} | "
              f"{_fmt(e['wall_ratio_to_spawn_true'])} |")  # fmt: skip


def run(n_wake: int = 20, n_stop: int = 12) -> dict[str, Any]:
    """Every series in a fresh temporary directory; prints the tables and returns the results."""
    started = time.monotonic()
    method = {
        "modes": [{"name": m.name, "sandbox": m.sandbox, "caps": m.caps, "unavailable": unavailable(m)} for m in MODES],
        "baseline": BASELINE,
        "wakes_per_mode": n_wake,
        "stops_per_mode": n_stop,
        "owners_per_mode": OWNERS_PER_MODE,
        "stop_bound_s": STOP_BOUND_S,
        "run_as": wake.RUN_AS or None,
    }
    if (problem := wake.sandbox_problem()) is not None:
        print(f"sandbox bench: skipped, {problem}", file=sys.stderr, flush=True)
        return {"method": method, "skipped": problem}
    with tempfile.TemporaryDirectory(prefix="agent-rooms-sandbox-bench-") as tmp:
        root = Path(tmp)
        wake.open_to_run_as(root)
        configure_logging(json=True)
        with (root / "supervisors.log").open("w") as log_file:
            # Not cached (see bench/wake.py): a logger cached earlier on another file would miss this one.
            structlog.configure(
                logger_factory=structlog.WriteLoggerFactory(file=log_file), cache_logger_on_first_use=False
            )
            for m in MODES:
                if (why := unavailable(m)) is not None:
                    print(f"sandbox bench: mode {m.name!r} skipped, {why}", file=sys.stderr, flush=True)
            what = f"{len(modes())} modes × ({n_wake} wakes, {n_stop} stops)"
            print(f"sandbox bench: {what}", file=sys.stderr, flush=True)
            try:
                raw = anyio.run(measure, root, n_wake, n_stop)
                log_file.flush()
                spawns(raw, root / "supervisors.log")
            except BaseException:
                tail = "\n".join((root / "supervisors.log").read_text(errors="replace").splitlines()[-30:])
                print(f"--- supervisors' log tail ---\n{tail}", file=sys.stderr)
                raise
            finally:
                structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
    summary = summarize(raw)
    print_tables(summary)
    return {"method": method, "summary": summary, "raw": raw, "elapsed_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    return wake.part_main(argv, __doc__, "sandbox", run, 20, 12)


if __name__ == "__main__":
    sys.exit(main())
