"""`listen.toml`: what a listener will run, decided on the owner's own machine (DESIGN §9.1).

    workdir_root = "/home/bob/work"          # every workdir lies under it

    [agents.bob-coder]
    workdir = "/home/bob/work/app"           # default: a directory of its own under AGENT_ROOMS_HOME
    wake = true                              # may it be woken here at all (default true)
    cross_owner = false                      # accept wakes other owners' words caused (default false)
    sandbox = "on"                           # "on" (default) or "off"

Only agents named here are run, and nothing the hub sends widens this: the hub's workdir for an agent is
never used, and cross-owner wakes run constrained whatever the hub says. The file is the owner's, 0600.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_rooms_mcp.home import HomeError, check_private_file

POLICY_FILE = "listen.toml"
_TOP = {"workdir_root", "agents"}
_AGENT = {"workdir", "wake", "cross_owner", "sandbox"}


@dataclass(frozen=True, slots=True)
class AgentRule:
    handle: str
    workdir: Path | None  # None: the listener's own directory for the agent
    wake: bool
    cross_owner: bool
    sandbox: bool


@dataclass(frozen=True, slots=True)
class ListenPolicy:
    path: Path
    workdir_root: Path
    agents: dict[str, AgentRule]

    def inside_root(self, workdir: Path) -> bool:
        """Is `workdir`, with every link followed now, under the allowed root? Checked again at each claim:
        a link swapped since the file was read must not lead a run elsewhere."""
        return workdir.resolve().is_relative_to(self.workdir_root.resolve())


def _fail(path: Path, where: str, why: str) -> HomeError:
    return HomeError(f"{path}: {where}: {why}")


def load(path: Path) -> ListenPolicy:
    """Read and check the policy; HomeError naming the key and the fix for anything wrong."""
    if not path.exists():
        raise HomeError(
            f"{path}: no listener policy. Write one (0600) naming the agents this machine runs, e.g.\n"
            '  workdir_root = "/home/you/work"\n  [agents.your-agent]\n  workdir = "/home/you/work/project"\n'
            "  cross_owner = true    # accept wakes other owners' words caused (default false: they end withdrawn)"
        )
    check_private_file(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, "syntax", str(e)) from None
    for key in doc.keys() - _TOP:
        raise _fail(path, key, f"unknown key; the keys are {', '.join(sorted(_TOP))}")
    root = _path(path, "workdir_root", doc.get("workdir_root"))
    if root is None or not root.is_dir():
        raise _fail(path, "workdir_root", "give an existing directory, as an absolute path")
    agents = doc.get("agents", {})
    if not isinstance(agents, dict) or not agents:
        raise _fail(path, "agents", "name at least one agent: [agents.HANDLE]")
    rules = {}
    for handle, table in agents.items():
        where = f"agents.{handle}"
        if not isinstance(table, dict):
            raise _fail(path, where, "must be a table")
        for key in table.keys() - _AGENT:
            raise _fail(path, f"{where}.{key}", f"unknown key; the keys are {', '.join(sorted(_AGENT))}")
        workdir = _path(path, f"{where}.workdir", table.get("workdir"))
        policy = ListenPolicy(path, root, {})
        if workdir is not None and not policy.inside_root(workdir):
            raise _fail(path, f"{where}.workdir", f"{workdir} is not under workdir_root {root}")
        sandbox = table.get("sandbox", "on")
        if sandbox not in ("on", "off"):
            raise _fail(path, f"{where}.sandbox", 'say "on" or "off"')
        rules[handle] = AgentRule(
            handle=handle,
            workdir=workdir,
            wake=_flag(path, f"{where}.wake", table.get("wake", True)),
            cross_owner=_flag(path, f"{where}.cross_owner", table.get("cross_owner", False)),
            sandbox=sandbox == "on",
        )
    return ListenPolicy(path, root, rules)


def _path(path: Path, where: str, value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(path, where, "give a path as a string")
    found = Path(value).expanduser()
    if not found.is_absolute():
        raise _fail(path, where, f"{value!r} is not an absolute path")
    return found


def _flag(path: Path, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, where, "say true or false")
    return value
