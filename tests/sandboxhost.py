"""What this machine lets a woken CLI do, shared by the wake tests (tests/wakeworld.py) and the benchmarks
(bench/wake.py, bench/listener.py): whether bubblewrap starts here, which user a root supervisor runs CLIs as,
and handing that user the directories a CLI writes in. No pytest here: the bench imports it as a plain module.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from agent_rooms_mcp.settings import WakeSettings

# DESIGN §5 "Never root": a root supervisor runs CLIs only as an unprivileged user, here Debian's `nobody`.
AS_ROOT = os.geteuid() == 0
RUN_AS = "nobody" if AS_ROOT else ""


@functools.cache
def sandbox_problem() -> str | None:
    """Why woken CLIs cannot run in bubblewrap on this machine, or None when they can."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [bwrap, "--unshare-pid", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    if not AS_ROOT:
        probe[1:1] = ["--unshare-user"]
    done = subprocess.run(probe, capture_output=True, check=False)
    return None if done.returncode == 0 else f"bwrap cannot start a sandbox here: {done.stderr.decode().strip()}"


def give_to_run_as(*paths: Path) -> None:
    """As root, hand directories a woken CLI writes in (its workdir, the fakes' log) to the run-as user."""
    if not AS_ROOT:
        return
    user = pwd.getpwnam(RUN_AS)
    for top in paths:
        for found in (top, *top.rglob("*")):
            os.lchown(found, user.pw_uid, user.pw_gid)


def wake_settings_env(caps: WakeSettings) -> dict[str, str]:
    """The CLI and sandbox part of `caps` as a separate process (a hub or listener) reads it from its
    environment (`WakeSettings.from_env`)."""
    return {
        "AGENT_ROOMS_CLAUDE_BIN": caps.claude_bin,
        "AGENT_ROOMS_CODEX_BIN": caps.codex_bin,
        "AGENT_ROOMS_OPENCLAW_BIN": caps.openclaw_bin,
        "AGENT_ROOMS_RUN_AS": caps.run_as,
        "AGENT_ROOMS_SANDBOX_RO": os.pathsep.join(caps.sandbox_ro),
        "AGENT_ROOMS_SANDBOX_RW": os.pathsep.join(caps.sandbox_rw),
    }
