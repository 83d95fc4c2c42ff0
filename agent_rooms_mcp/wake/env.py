"""The environment a woken CLI starts with: what `envrules` lets through, then what the run sets.

The rules (allowlist, denylist, the provider keys an owner may configure) live in `agent_rooms_mcp/envrules.py`,
where the services check an owner's variables too; this module builds one child's environment with them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from agent_rooms_mcp.envrules import BASE_ALLOW, TOOL_ALLOW, check_extra, check_tool, is_denied

__all__ = ["scrubbed_env"]

# What a run sets itself; `extra` may not replace these, since the wake depth is a spawn cap.
_RUN_ID = "AGENT_ROOMS_RUN_ID"
_DEPTH = "AGENT_ROOMS_WAKE_DEPTH"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # lstat, not stat: a symlink planted at this path would send the CLI's temp files elsewhere.
    if not stat.S_ISDIR(path.lstat().st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, and the directory may already exist
    return path


def scrubbed_env(
    parent: Mapping[str, str],
    *,
    tool: str,
    run_dir: Path,
    run_id: str,
    depth: int,
    extra: Mapping[str, str] = MappingProxyType({}),
) -> dict[str, str]:
    """The environment for one woken CLI. Creates <run_dir>/tmp (mode 0700) for its TMPDIR.

    Raises ValueError for an unknown tool, or for an `extra` name that is denied for this tool or
    not a valid variable name; the message names the variable, never its value.
    """
    check_tool(tool)
    if depth < 0:
        raise ValueError(f"wake depth must be >= 0, got {depth}")
    for name, value in extra.items():
        check_extra(name, value, tool)

    allow = BASE_ALLOW | TOOL_ALLOW[tool]
    env = {name: value for name, value in parent.items() if name in allow and not is_denied(name)}
    env.setdefault("TZ", "UTC")
    env["TERM"] = "dumb"  # no colour codes or cursor movement in output we parse
    env["NO_COLOR"] = "1"
    env["TMPDIR"] = os.fspath(_private_dir(run_dir / "tmp"))
    if tool == "claude":
        env["DISABLE_AUTOUPDATER"] = "1"  # a wake must not rewrite the binary under a running supervisor
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    env.update(extra)
    # Last, so nothing above can replace them: the MCP bridge and the depth cap rely on both.
    env[_RUN_ID] = run_id
    env[_DEPTH] = str(depth)
    return env
