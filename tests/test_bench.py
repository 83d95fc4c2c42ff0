"""`make bench` keeps working under the sandbox: its sandbox part, at its smallest, run as a process by whoever
runs the suite (as root its fakes run as RUN_AS, inside the sandbox and outside it). The bench once stopped
waking anything, unseen, when the sandbox landed; this would have said so. Nothing here is timed."""

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
