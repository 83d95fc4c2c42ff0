"""`make bench` keeps working: every DESIGN §11 row at the smallest sizes; and under the sandbox, its sandbox part,
at its smallest, run as a process by whoever runs the suite (as root its fakes run as RUN_AS, inside the sandbox
and outside it). The bench once stopped waking anything, unseen, when the sandbox landed; this would have said so.
Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.sandboxhost import AS_ROOT
from tests.wakeworld import skip_without_sandbox

ROOT = Path(__file__).resolve().parent.parent


def test_the_sandbox_bench_runs_and_a_sandboxed_runs_daemon_ends_with_its_stop(tmp_path: Path) -> None:
    skip_without_sandbox("the sandbox bench compares runs inside the sandbox with runs outside it")
    out = tmp_path / "sandbox.json"
    argv = [sys.executable, "bench/sandbox.py", "--wakes", "1", "--stops", "1", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(out.read_text())["summary"]
    rows = {(e["mode"], e["measure"]): e for e in summary["modes"]}
    # Each mode this host allows woke and stopped a fake (as root only the sandbox: a root hub runs nothing
    # unsandboxed), and every measure of the sandboxed run was taken.
    for mode in ("sandbox",) if AS_ROOT else ("sandbox", "no sandbox"):
        assert rows[mode, "commit → exec"]["n"] == 1
        assert rows[mode, "stop call → SIGINT"]["n"] == 1
    assert (("no sandbox", "commit → exec") not in rows) == AS_ROOT
    # The bench watched the sandboxed run's every process, the daemon its fake double-forked included (the
    # spawned bwrap, the namespace's init, the CLI, the daemon, and with a network of its own the egress relay's
    # loopback listener), and none outlived the stop.
    escapes = rows["sandbox", "runs with a process that escaped"]
    assert escapes["escaped"] == 0 and escapes["processes_per_run"] >= 4
    assert rows["sandbox", "stop call → every process gone"]["n"] == 1
    ways = {e["way"] for e in summary["probe"]}
    assert "spawn true" in ways and any(way.startswith("probe (bwrap true") for way in ways)


def test_make_bench_gives_every_design_row_with_its_baseline_at_the_smallest_sizes(tmp_path: Path) -> None:
    """bench/run.py --quick end to end at its smallest (one short round, a few waiters, one cold start of each server, a
    small room): the HTTP cells with read_messages, the fan-outs beside their echo baseline, the cold start and the
    room-size read, and the closing table of DESIGN §11's rows, every row measured but the listener's (skipped
    here: bench/listener.py has its own runs). Nothing here is timed: each part checks its answers itself."""
    out = tmp_path / "results.json"
    argv = [
        sys.executable, "bench/run.py", "--quick", "--rounds", "1", "--seconds", "0.1", "--conns", "1",
        "--memory-seconds", "0", "--skip-wake", "--skip-listener", "--skip-containment", "--skip-sandbox",
        "--skip-instructions",
        "--waiters", "6", "--room-waiters", "2", "--fan-outs", "1", "--coldstarts", "1", "--big-room", "500",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    result = json.loads(out.read_text())
    assert {e["tool"] for e in result["http"]} >= {"echo", "whoami", "post_message", "read_messages"}
    rows = {r["measure"]: r for r in result["summary"]}
    unmeasured = sorted(m for m, r in rows.items() if r["verdict"] == "not measured")
    assert unmeasured == ["stop via a listener, call → SIGINT, p50", "wake via a listener, commit → CLI exec, p50"]
    assert len(rows) == 11 and all(
        r["verdict"] in {"met", "within limit", "OVER LIMIT", "not measured"} for r in rows.values()
    )
    # Each ratio row stands beside its baseline, measured in this run.
    for measure in ("read_messages (20) ÷ echo, HTTP, 1 conn", "a post → the last of 6 waiters answered ÷ 6 echo calls",
                    "stdio cold start ÷ bare SDK server's, to first tools/list",
                    "latest 50 of a room at 500 messages ÷ at 1,000"):  # fmt: skip
        assert rows[measure]["baseline"] > 0 and rows[measure]["ratio"] > 0, rows[measure]
    assert rows["a post → the last of 2 waiters in its room answered"]["ours"] > 0
    assert b"DESIGN \xc2\xa711, this run" in done.stdout
