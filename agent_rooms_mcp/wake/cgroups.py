"""A cgroup per run (DESIGN §5 "Process containment"): every process a run starts, double-forked or not, is
found and killed through its cgroup, and `pids.max` bounds a fork bomb.

The run's first process joins its cgroup *before* it execs the CLI (an argv prefix), so nothing the CLI
starts can be born outside it. Which mechanism the OS grants is detected once, in this order:

- "cgroup2": a cgroup v2 hierarchy with the pids controller that we may write: as root, the hierarchy's
  root; as a user, a subtree delegated to us (systemd `Delegate=yes`). The CLI's first process writes its
  PID into `<parent>/<run>/cgroup.procs`; the kill is `cgroup.freeze` then `cgroup.kill`.
- "cgroup1": root on a v1 or hybrid host, with the pids and freezer controllers mounted. The first process
  joins both; the kill freezes (so nothing forks while it is emptied), SIGKILLs each member, then thaws.
- "systemd-scope": `systemd-run --user --scope` where a user manager answers; `TasksMax` bounds forks and
  the scope's cgroup (asked of systemd) is frozen and killed like a v2 one.
- "process-group": none of those. The process layer's session, group and descendant sweep (process.py)
  is then all there is, and `doctor` warns.

The sweep in process.py runs in every case: the cgroup adds to it, it never replaces it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from agent_rooms_mcp.settings import CGROUP_CHOICES, RUN_PIDS_MAX

__all__ = ["Containment", "Mechanism", "RunCgroup", "detect", "in_force", "open_run_cgroup", "remove_left_behind"]

log = structlog.get_logger("agent_rooms_mcp.wake")

# Every run's cgroup sits under this one, so an operator sees (and `rmdir`s) ours at a glance.
PARENT_NAME = "agent-rooms"
# A run id becomes a directory (and a systemd unit) name: nothing but these characters, however the hub
# that handed it out spelled it.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
# The first process writes its PID into each file before `--`, then execs the rest. A failed write ends it
# with 125 before the CLI ever runs: a run that was to be contained never runs uncontained.
_JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
# How long a freeze may take to settle, and how long a killed cgroup may take to empty. A cgroup that is
# not empty by then is left frozen-then-thawed and killed again by the process layer's sweep; it is never
# waited on forever.
_FREEZE_S = 2.0
_EMPTY_S = 5.0
_POLL_S = 0.01
# An empty run cgroup older than this is a crashed supervisor's leftover (a run's first process joins its
# cgroup within milliseconds of its creation).
_STALE_S = 600.0
# systemd-run/systemctl answer in milliseconds when a user manager is there; a hung bus must not hang us.
_SYSTEMD_S = 10.0


class Mechanism(StrEnum):
    CGROUP2 = "cgroup2"
    CGROUP1 = "cgroup1"
    SYSTEMD_SCOPE = "systemd-scope"
    PROCESS_GROUP = "process-group"


@dataclass(frozen=True, slots=True)
class Containment:
    """The mechanism in force for this process's runs, and where their cgroups go.

    `parents`: for cgroup2, (the agent-rooms parent,); for cgroup1, (the pids parent, the freezer parent);
    empty otherwise. `why` says in a sentence what was found, for `doctor` and the log. `pids_max` 0 leaves
    the count unbounded (a v2 hierarchy without the pids controller still freezes and kills).
    """

    mechanism: Mechanism
    why: str
    parents: tuple[Path, ...] = ()
    pids_max: int = RUN_PIDS_MAX
    # cgroup2 only: the `cgroup.subtree_control` files that must hand the pids controller down before the
    # parent is usable; written once by `prepare` (never by `detect`, which `doctor` runs: it changes nothing).
    enable: tuple[Path, ...] = ()
    # cgroup2 delegated only: the leaf this process moves itself into, so its own cgroup may have children
    # with controllers (cgroup v2's rule: no processes in a cgroup that hands controllers down).
    move_self_to: Path | None = None

    def prepare(self) -> Containment:
        """Make the parents ready (once per process). On failure, the process-group sweep with the reason."""
        if self.mechanism not in (Mechanism.CGROUP2, Mechanism.CGROUP1):
            return self
        try:
            if self.move_self_to is not None:
                self.move_self_to.mkdir(exist_ok=True)
                (self.move_self_to / "cgroup.procs").write_text(str(os.getpid()))
            for subtree in self.enable:
                _enable_pids(subtree)
            for parent in self.parents:
                parent.mkdir(exist_ok=True)
            if self.mechanism is Mechanism.CGROUP2 and self.pids_max:
                _enable_pids(self.parents[0] / "cgroup.subtree_control")
            for parent in self.parents:
                _remove_stale(parent)
        except OSError as e:
            log.warning("cgroup.unavailable", mechanism=self.mechanism.value, error=str(e))
            return fallback(f"{self.mechanism.value} detected but could not be set up: {e}")
        return self

    def open(self, run_id: str, *, create: bool = True) -> RunCgroup | None:
        """Create the run's cgroup (None where there is none to create, or the OS refused it: the run then
        has the process-group sweep only, which is logged). `create=False` finds the one a crashed
        supervisor left instead (None if there is none)."""
        if self.mechanism is Mechanism.PROCESS_GROUP:
            return None
        if not _SAFE_NAME.fullmatch(run_id):
            log.warning("cgroup.bad_run_id", run_id=run_id[:120])
            return None
        if self.mechanism is Mechanism.SYSTEMD_SCOPE:
            return _ScopeCgroup(run_id, self.pids_max)
        if not create:
            dirs = [parent / run_id for parent in self.parents]
            if not any(d.is_dir() for d in dirs):
                return None
            if self.mechanism is Mechanism.CGROUP1:
                return _V1Cgroup(run_id, pids_dir=dirs[0], freezer_dir=dirs[1])
            return _V2Cgroup(run_id, dirs[0])
        made: list[Path] = []
        try:
            for parent in self.parents:
                d = parent / run_id
                d.mkdir()
                made.append(d)
            if self.pids_max:
                # The pids controller is in the first directory on both versions (v2 has one directory).
                (made[0] / "pids.max").write_text(str(self.pids_max))
        except OSError as e:
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            log.warning("cgroup.create_failed", run_id=run_id, mechanism=self.mechanism.value, error=str(e))
            return None
        if self.mechanism is Mechanism.CGROUP1:
            return _V1Cgroup(run_id, pids_dir=made[0], freezer_dir=made[1])
        return _V2Cgroup(run_id, made[0])


def _remove_stale(parent: Path) -> None:
    """Remove the empty run cgroups a supervisor that died left (its CLI died with it, by the parent-death
    signal, but nobody removed the directory; a recovery removes only those of runs it finds). Only old ones:
    another hub on this machine may have made one a moment ago that its run's first process is about to join."""
    now = time.time()
    for d in parent.iterdir():
        try:
            if d.is_dir() and _SAFE_NAME.fullmatch(d.name) and now - d.stat().st_mtime > _STALE_S and not _procs(d):
                d.rmdir()  # refused (EBUSY) if a process joined meanwhile: then it is not stale
                log.info("cgroup.stale_removed", path=str(d))
        except OSError:
            continue


def fallback(why: str) -> Containment:
    return Containment(Mechanism.PROCESS_GROUP, why)


def _enable_pids(subtree_control: Path) -> None:
    if "pids" not in subtree_control.read_text().split():
        subtree_control.write_text("+pids")


# --- one run's cgroup ------------------------------------------------------------------------------------------


class RunCgroup:
    """One run's cgroup: the argv prefix that puts the CLI in it, its members, and the kill that empties it."""

    mechanism: Mechanism

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.killed = 0  # processes this cgroup's kills have signalled, for the log

    def prefix(self) -> list[str]:
        raise NotImplementedError

    def members(self) -> list[int]:
        raise NotImplementedError

    async def kill(self) -> int:
        """Freeze, kill every member, thaw, and wait (bounded) until none is left. Returns how many were
        signalled. Safe to call again, and on an empty or removed cgroup."""
        raise NotImplementedError

    async def remove(self) -> None:
        """Kill whatever is left (a run's end ends all its processes), then remove the cgroup."""
        raise NotImplementedError

    async def _wait_empty(self) -> bool:
        with anyio.move_on_after(_EMPTY_S):
            while self.members():
                await anyio.sleep(_POLL_S)
            return True
        return False


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []  # removed already, or never made: nothing of ours is in it


def _rmdir(directory: Path) -> None:
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        # EBUSY: a member survived the kill (it should not); the directory stays for the operator to see.
        log.warning("cgroup.remove_failed", path=str(directory), error=errno.errorcode.get(e.errno or 0, str(e)))


def _join_prefix(procs_files: Sequence[Path]) -> list[str]:
    sh = shutil.which("sh") or "/bin/sh"
    return [sh, "-c", _JOIN_SCRIPT, "agent-rooms-join", *(str(p) for p in procs_files), "--"]


class _V1Cgroup(RunCgroup):
    def __init__(self, run_id: str, *, pids_dir: Path, freezer_dir: Path) -> None:
        super().__init__(run_id)
        self.mechanism = Mechanism.CGROUP1
        self.pids_dir, self.freezer_dir = pids_dir, freezer_dir

    def prefix(self) -> list[str]:
        return _join_prefix([self.pids_dir / "cgroup.procs", self.freezer_dir / "cgroup.procs"])

    def members(self) -> list[int]:
        # Both hold the same processes (joined together, children inherit both); either may be gone already.
        return sorted({*_procs(self.pids_dir), *_procs(self.freezer_dir)})

    async def kill(self) -> int:
        if not self.members():
            return 0
        state = self.freezer_dir / "freezer.state"
        try:
            state.write_text("FROZEN")
            # A v1 freeze is not instant (FREEZING until every task stopped); until then, a member may fork.
            with anyio.move_on_after(_FREEZE_S):
                while state.read_text().strip() != "FROZEN":
                    await anyio.sleep(_POLL_S)
        except OSError:
            pass  # removed meanwhile: nothing to freeze; the kill below finds nobody
        count = _kill_each(self.members())
        # A v1-frozen task holds its SIGKILL until thawed: thaw, and the kills land.
        with contextlib.suppress(OSError):
            state.write_text("THAWED")
        await self._wait_empty()
        self.killed += count
        return count

    async def remove(self) -> None:
        await self.kill()
        for d in (self.pids_dir, self.freezer_dir):
            _rmdir(d)


class _V2Cgroup(RunCgroup):
    def __init__(self, run_id: str, directory: Path | None) -> None:
        super().__init__(run_id)
        self.mechanism = Mechanism.CGROUP2
        self.dir = directory

    def prefix(self) -> list[str]:
        assert self.dir is not None
        return _join_prefix([self.dir / "cgroup.procs"])

    def members(self) -> list[int]:
        return [] if self.dir is None else _procs(self.dir)

    async def kill(self) -> int:
        members = self.members()
        if self.dir is None or not members:
            return 0
        with contextlib.suppress(OSError):
            # Frozen first, so no member forks between the listing and the kill on a kernel without
            # cgroup.kill; a v2-frozen task still dies of SIGKILL.
            (self.dir / "cgroup.freeze").write_text("1")
        try:
            (self.dir / "cgroup.kill").write_text("1")  # the kernel kills every member, new forks included
        except OSError:
            _kill_each(members)  # before Linux 5.14
        with contextlib.suppress(OSError):
            (self.dir / "cgroup.freeze").write_text("0")
        await self._wait_empty()
        self.killed += len(members)
        return len(members)

    async def remove(self) -> None:
        await self.kill()
        if self.dir is not None:
            _rmdir(self.dir)


class _ScopeCgroup(_V2Cgroup):
    """`systemd-run --user --scope`: systemd makes the cgroup (and removes the scope once it is empty); the
    kill uses the scope's cgroup directory, which the user manager delegates to us."""

    def __init__(self, run_id: str, pids_max: int) -> None:
        super().__init__(run_id, None)
        self.mechanism = Mechanism.SYSTEMD_SCOPE
        self.unit = f"agent-rooms-{run_id}.scope"
        self.pids_max = pids_max

    def prefix(self) -> list[str]:
        run = shutil.which("systemd-run") or "systemd-run"
        unit = self.unit.removesuffix(".scope")
        return [run, "--user", "--scope", "--quiet", "--collect", f"--unit={unit}", "-p",
                f"TasksMax={self.pids_max}", "--"]  # fmt: skip

    async def _resolve(self) -> None:
        if self.dir is None:
            self.dir = await anyio.to_thread.run_sync(_scope_dir, self.unit)

    async def kill(self) -> int:
        await self._resolve()
        if self.dir is None:  # systemd does not know it (never started, or gone): ask it to kill anyway
            await anyio.to_thread.run_sync(_systemctl, "kill", "--signal=SIGKILL", self.unit)
            return 0
        return await super().kill()

    async def remove(self) -> None:
        await self.kill()
        # --collect has systemd drop the unit once it is empty; a stop makes sure of it.
        await anyio.to_thread.run_sync(_systemctl, "stop", self.unit)


def _kill_each(pids: Sequence[int]) -> int:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def _systemctl(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["systemctl", "--user", *args], capture_output=True, text=True, timeout=_SYSTEMD_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _scope_dir(unit: str) -> Path | None:
    group = (_systemctl("show", "--property=ControlGroup", "--value", unit) or "").strip()
    mount = _v2_mount(_mounts())
    if not group or mount is None:
        return None
    d = mount / group.lstrip("/")
    return d if d.is_dir() else None


@asynccontextmanager
async def open_run_cgroup(containment: Containment, run_id: str) -> AsyncIterator[RunCgroup | None]:
    """The run's cgroup for the length of the block; on the way out (whatever ended it) whatever is still in
    it is killed and the cgroup removed."""
    cgroup = await anyio.to_thread.run_sync(containment.open, run_id)
    try:
        yield cgroup
    finally:
        if cgroup is not None:
            with anyio.CancelScope(shield=True):
                await cgroup.remove()
                if cgroup.killed:
                    log.info("cgroup.emptied", run_id=run_id, mechanism=cgroup.mechanism.value, count=cgroup.killed)


async def remove_left_behind(choice: str, pids_max: int, run_id: str) -> int:
    """Empty and remove the cgroup of a run whose supervisor died (recovery found it on this host): whatever
    its CLI left running there, daemons included, ends now. Returns how many processes were killed."""
    containment = await anyio.to_thread.run_sync(in_force, choice, pids_max)
    left = containment.open(run_id, create=False)
    if left is None:
        return 0
    with anyio.CancelScope(shield=True):
        await left.remove()
    if left.killed:
        log.info("cgroup.left_behind_emptied", run_id=run_id, mechanism=left.mechanism.value, count=left.killed)
    return left.killed


# --- detection -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # v1: the controllers it carries, among other options


def _mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[_Mount]:
    found: list[_Mount] = []
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        # Spaces and the like in a mount point are octal-escaped in mountinfo.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append(_Mount(Path(point), tail[0], frozenset(tail[2].split(","))))
    return found


def _v2_mount(mounts: Sequence[_Mount]) -> Path | None:
    return next((m.point for m in mounts if m.fstype == "cgroup2"), None)


def _own_v2_path(proc_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _writable(directory: Path) -> bool:
    return directory.is_dir() and os.access(directory, os.W_OK) and os.access(directory / "cgroup.procs", os.W_OK)


def _cgroup2(mounts: Sequence[_Mount], pids_max: int) -> Containment | str:
    mount = _v2_mount(mounts)
    if mount is None:
        return "no cgroup2 hierarchy is mounted"
    if os.geteuid() == 0:
        if "pids" not in _words(mount / "cgroup.controllers"):
            return f"{mount}: the pids controller is not in cgroup v2 here (it is bound to v1)"
        if not _writable(mount):
            return f"{mount}: not writable"
        return Containment(
            Mechanism.CGROUP2,
            f"cgroup v2 at {mount / PARENT_NAME} (as root), pids.max {pids_max}",
            parents=(mount / PARENT_NAME,),
            pids_max=pids_max,
            enable=(mount / "cgroup.subtree_control",),
        )
    own_path = _own_v2_path()
    if own_path is None:
        return "this process is in no cgroup v2"
    own = mount / own_path.lstrip("/")
    # After a first start this process sits in its leaf already: the delegated cgroup is the leaf's parent.
    base = own.parent if own.name == "supervisor" and (own.parent / PARENT_NAME).is_dir() else own
    if not _writable(base) or os.stat(base).st_uid != os.geteuid():
        return f"{base}: no cgroup v2 subtree is delegated to this user (systemd Delegate=yes)"
    if "pids" not in _words(base / "cgroup.controllers"):
        return f"{base}: the pids controller is not delegated"
    leaf = base / "supervisor"
    others = [p for p in _procs(base) if p != os.getpid()]
    if base == own and others:
        # Moving them would move processes that are not ours to move (a terminal's shell, say).
        return f"{base}: delegated, but shared with {len(others)} other process(es); give the hub its own"
    return Containment(
        Mechanism.CGROUP2,
        f"a delegated cgroup v2 subtree at {base / PARENT_NAME}, pids.max {pids_max}",
        parents=(base / PARENT_NAME,),
        pids_max=pids_max,
        enable=(base / "cgroup.subtree_control",),
        move_self_to=leaf if base == own else None,
    )


def _cgroup1(mounts: Sequence[_Mount], pids_max: int) -> Containment | str:
    if os.geteuid() != 0:
        return "cgroup v1 needs root (a user is granted cgroup v2 or a systemd scope)"
    roots: list[Path] = []
    for controller in ("pids", "freezer"):
        mount = next((m.point for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is None:
            return f"no cgroup v1 {controller} controller is mounted"
        if not _writable(mount):
            return f"{mount}: not writable"
        roots.append(mount / PARENT_NAME)
    return Containment(
        Mechanism.CGROUP1,
        f"cgroup v1 pids and freezer at {roots[0]} and {roots[1]}, pids.max {pids_max}",
        parents=tuple(roots),
        pids_max=pids_max,
    )


def _systemd_scope(pids_max: int) -> Containment | str:
    run = shutil.which("systemd-run")
    if run is None:
        return "no systemd-run"
    try:
        probe = subprocess.run(
            [run, "--user", "--scope", "--quiet", "--collect", "-p", f"TasksMax={pids_max}", "--", "true"],
            capture_output=True,
            text=True,
            timeout=_SYSTEMD_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemd-run --user --scope: {e}"
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"systemd-run --user --scope: {said}"
    return Containment(Mechanism.SYSTEMD_SCOPE, f"systemd-run --user --scope per run, TasksMax {pids_max}",
                       pids_max=pids_max)  # fmt: skip


def detect(choice: str = "auto", pids_max: int = RUN_PIDS_MAX) -> Containment:
    """The mechanism in force, by `choice` ("auto" tries each in DESIGN's order; a named one is that or the
    process-group sweep; "off" is the sweep). Reads only: `prepare` does the writes."""
    if choice not in CGROUP_CHOICES:
        raise ValueError(f"AGENT_ROOMS_CGROUP: {choice!r} is not one of {', '.join(CGROUP_CHOICES)}")
    if choice in ("off", Mechanism.PROCESS_GROUP):
        return fallback("switched off (AGENT_ROOMS_CGROUP=off): the process-group sweep only")
    mounts = _mounts()
    tries: dict[Mechanism, Callable[[], Containment | str]] = {
        Mechanism.CGROUP2: lambda: _cgroup2(mounts, pids_max),
        Mechanism.CGROUP1: lambda: _cgroup1(mounts, pids_max),
        Mechanism.SYSTEMD_SCOPE: lambda: _systemd_scope(pids_max),
    }
    refused: list[str] = []
    for mechanism, attempt in tries.items():
        if choice not in ("auto", mechanism):
            continue
        found = attempt()
        if isinstance(found, Containment):
            return found
        refused.append(f"{mechanism.value}: {found}")
    return fallback("; ".join(refused))


@functools.cache
def in_force(choice: str, pids_max: int) -> Containment:
    """What this process's runs get: detected and prepared once (preparing may move this process into a leaf
    of its delegated cgroup, which is done once, not per run)."""
    containment = detect(choice, pids_max).prepare()
    log.info("cgroup.in_force", mechanism=containment.mechanism.value, why=containment.why)
    return containment
