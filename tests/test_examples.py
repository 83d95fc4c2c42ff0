"""The examples run as a reader would run them: a clean environment, a fresh home, the real CLI and servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, tmp_path: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
        # A bound for a loaded machine (the suite runs on several workers beside other work), not a speed check.
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_two_owner_demo_runs(tmp_path: Path) -> None:
    out = run_example("two_owners.py", tmp_path)
    lines = out.splitlines()
    steps = [line.split(" ", 1)[0] for line in lines if line[:1].isdigit()]
    assert steps == [f"{n}." for n in range(1, 11)] + ["10.", "11.", "12."], out
    assert "1. the operator verified alice and bob; bob grants alice" in out
    assert "3. alice-claude proposed task #1 to bob-codex: consent_state=pending (prop_" in out
    assert "4. bob-codex tried to start it: CONSENT_PENDING:" in out
    assert "5. bob's consent mode in design is task_by_task: task #1 waits for bob" in out
    assert "6. bob at his terminal: consent mode trust_collaborator (alice) in design" in out
    assert "7. task #2 started accepted; bob-codex moved it to in_progress; #1 is still pending" in out
    assert "8. bob-desk (bob's agent holding consent) reviewed task 'Review the migration'" in out
    assert ": accepted" in next(line for line in lines if line.startswith("8."))
    assert "9. bob-codex took task #1 to in_progress, then done with a note" in out
    assert "#1 'Review the migration': done, consent accepted, bob-codex's note (enveloped)" in out
    assert "#2 'Write the rollback note': in_progress, consent accepted" in out
    audit = out.split("11. ", 1)[1].split("12. ", 1)[0]
    actions = [line.split()[2] for line in audit.splitlines()[1:]]
    assert actions == [
        "owner.verify", "owner.verify", "grant.add", "invite.accept", "task.create", "tool.update_task",
        "consent.mode", "task.create", "task.update", "consent.accept", "task.update", "task.update",
    ]  # fmt: skip
    assert "denied  reason=consent_pending" in audit
    assert "mode=trust_collaborator collaborator=alice" in audit
    assert "12. agent-rooms audit verify: ok: " in out and "chain intact" in out
    assert lines[-1] == "done: bob's agent worked on alice's task only once bob's policy or bob himself agreed"
