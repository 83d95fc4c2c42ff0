"""Stop latency with a cgroup per run against without (DESIGN §5 "Process containment"); part of `make bench`.

The same supervisor (same process, bench/wake.py's world and fake `claude`) runs in two settings, alternated
round by round so the noisy box weighs on both alike:

- "cgroup": `AGENT_ROOMS_CGROUP=auto`, i.e. the mechanism this machine grants (printed; with none granted the
  series is skipped and says so);
- "sweep": `AGENT_ROOMS_CGROUP=off`, the process-group and descendant sweep alone (the baseline).

Series, each a stop by the owner (`hub.runs.stop_as_owner`, what `agent stop` calls) of a fake CLI that has
started a tool shell (`sleep`) in a session of its own:

- "exits on SIGINT": the CLI exits at the ladder's first step; the tool shell is left for the kill after exit;
- "SIGKILL step": the CLI ignores SIGINT and SIGTERM, so the ladder reaches its last step. Both graces are
  0.25 s here (not the default 10 s and 5 s), so the kill itself is what differs.

Measured: the share of stops that a process outlived (the CLI or its tool shell still running 5 s after the
stop call; it is then killed by the bench), stop call → every process gone (/proc shows neither, or only
zombies; over the stops nothing outlived), stop call → recorded stopped, and, for the wakes that started
these runs, commit → exec (the join adds a `sh` exec before the CLI's). Each round's ratio is cgroup ÷
sweep of that round's medians; the table gives the median ratio over rounds with its [min-max].
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.wake.cgroups import Mechanism, detect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wake import FINAL, FakeCli, HubSide, Rotation, build_world, callers, ts, wait_run

SERIES = {"exits on SIGINT": "hang_tool", "SIGKILL step": "wedged"}
GRACE_S = 0.25
TICK_S = 0.002
# A process still running this long after the stop call has outlived the stop (the ladder here is 0.5 s).
OUTLIVED_S = 5.0
GONE = "stop call → every process gone"
OUTLIVED = "stops a process outlived (share)"


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


async def stop_once(side: HubSide, rotation: Rotation, fake: FakeCli, mode: str, i: int) -> dict[str, float | None]:
    fake.mode(mode)
    pair = await rotation.take()
    message_id, outcome = await side.post(pair, f"@{pair.bot} {mode} {i}")
    t_commit = time.time()
    if outcome != "woken":
        raise RuntimeError(f"mention of {pair.bot} was {outcome!r}")
    run = await wait_run(side, message_id, lambda r: True)
    start = await fake.wait("start", run["run_id"])
    pids = [start["pid"], start["tool"]]
    t_stop = time.time()
    await side.stop(pair)
    with anyio.move_on_after(OUTLIVED_S):
        while not all(gone(p) for p in pids):
            await anyio.sleep(TICK_S)
    t_gone = time.time()
    left = [p for p in pids if not gone(p)]
    for pid in left:  # an escaped tool shell: counted, then killed, so the next stop starts clean
        os.kill(pid, signal.SIGKILL)
    run = await wait_run(side, message_id, lambda r: r["state"] in FINAL)
    want = "SIGKILL" if mode == "wedged" else "SIGINT"
    if (run["state"], run["stop_signal"]) != ("stopped", want):
        raise RuntimeError(f"run {run['run_id']} ended {run['state']}/{run['stop_signal']}, not stopped/{want}")
    return {
        # None where a process outlived the stop: that stop has no "every process gone" time.
        GONE: None if left else (t_gone - t_stop) * 1e3,
        "stop call → recorded stopped": (ts(run["ended_at"]) - t_stop) * 1e3,
        "commit → exec": (start["t_exec"] - t_commit) * 1e3,
        OUTLIVED: float(bool(left)),
    }


async def one_setting(
    home: Path, pairs: list[Any], fake: FakeCli, cgroup: str, per_series: int
) -> dict[str, list[dict[str, float | None]]]:
    wake = fake.caps(cgroup=cgroup, grace_int_s=GRACE_S, grace_term_s=GRACE_S)
    out: dict[str, list[dict[str, float | None]]] = {}
    async with Hub.open(Settings(home=home, wake=wake)) as hub, supervising(hub) as supervisor:
        assert supervisor is not None
        side, rotation = HubSide(hub, await callers(hub, pairs)), Rotation(pairs)
        await stop_once(side, rotation, fake, "hang_tool", -1)  # uncounted: imports, caches, the cgroup parents
        for name, mode in SERIES.items():
            out[name] = [await stop_once(side, rotation, fake, mode, i) for i in range(per_series)]
    return out


def median_of(rows: list[dict[str, float | None]], measure: str) -> float:
    """The median over the stops that have the measure (NaN if none has: every stop was outlived)."""
    values = [v for r in rows if (v := r[measure]) is not None]
    if measure == OUTLIVED:
        return statistics.fmean(values)  # the round's share of stops that a process outlived
    return statistics.median(values) if values else math.nan


async def rounds(root: Path, n_rounds: int, per_series: int) -> list[dict[str, Any]]:
    home = root / "home"
    pairs = await build_world(home, root / "work")
    fake = FakeCli(root / "fake")
    out = []
    for r in range(n_rounds):
        order = ["auto", "off"] if r % 2 == 0 else ["off", "auto"]
        got = {cgroup: await one_setting(home, pairs, fake, cgroup, per_series) for cgroup in order}
        out.append({"cgroup": got["auto"], "sweep": got["off"]})
    return out


def summarize(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for series in SERIES:
        for measure in raw[0]["cgroup"][series][0]:
            with_cg = [median_of(r["cgroup"][series], measure) for r in raw]
            without = [median_of(r["sweep"][series], measure) for r in raw]
            if measure == OUTLIVED:  # a share of all stops (rounds are equal in size), not a latency
                table.append({"series": series, "measure": measure, "cgroup": statistics.fmean(with_cg),
                              "sweep": statistics.fmean(without)})  # fmt: skip
                continue
            ratios = [a / b for a, b in zip(with_cg, without, strict=True) if b > 0 and not math.isnan(a + b)]
            table.append(
                {
                    "series": series,
                    "measure": measure,
                    "cgroup": statistics.median(with_cg),
                    "sweep": statistics.median(without),
                    "ratio": statistics.median(ratios) if ratios else math.nan,
                    "ratio_min": min(ratios, default=math.nan),
                    "ratio_max": max(ratios, default=math.nan),
                }
            )
    return table


def print_table(mechanism: str, summary: list[dict[str, Any]], n_rounds: int, per_series: int) -> None:
    print(f"\nStop latency, a cgroup per run ({mechanism}) against the process-group sweep alone (ms);")
    print(f"{n_rounds} rounds × {per_series} stops a series and setting, median of round medians; graces {GRACE_S} s")
    print("| series | measure | cgroup | sweep | cgroup ÷ sweep [min-max] |")
    print("|---|---|---|---|---|")
    for e in summary:
        if e["measure"] == OUTLIVED:
            print(f"| {e['series']} | {e['measure']} | {e['cgroup']:.0%} | {e['sweep']:.0%} | |")
            continue
        print(
            f"| {e['series']} | {e['measure']} | {e['cgroup']:.1f} | {e['sweep']:.1f} | "
            f"{e['ratio']:.2f} [{e['ratio_min']:.2f}-{e['ratio_max']:.2f}] |"
        )


def run(n_rounds: int = 4, per_series: int = 8) -> dict[str, Any]:
    started = time.monotonic()
    found = detect()
    if found.mechanism is Mechanism.PROCESS_GROUP:
        print(f"\ncontainment bench skipped: no cgroup is granted here ({found.why})")
        return {"skipped": found.why}
    print(f"containment bench: {found.mechanism.value}, {n_rounds} rounds", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="agent-rooms-containment-bench-") as tmp:
        raw = anyio.run(rounds, Path(tmp), n_rounds, per_series)
    summary = summarize(raw)
    print_table(found.mechanism.value, summary, n_rounds, per_series)
    return {
        "mechanism": found.mechanism.value,
        "why": found.why,
        "method": {"rounds": n_rounds, "stops_per_series": per_series, "graces_s": GRACE_S, "baseline": "cgroup off"},
        "summary": summary,
        "raw": raw,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    result = run()
    print(f"\ncontainment bench took {result.get('elapsed_s', 0):.0f}s")
