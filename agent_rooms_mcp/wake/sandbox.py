"""The sandbox a woken CLI runs in (DESIGN §5): bubblewrap, with exactly the mounts the contract lists.

Why each part is there:

- A PID namespace of its own: when the CLI exits, bwrap's init exits and the kernel kills every process left
  in the namespace, double-forked and `setsid`'d ones included. `--die-with-parent` ends it with the
  supervisor. The namespace's first process is bwrap's own init, which ignores SIGINT and SIGTERM, and
  bwrap outside kills without grace: the stop ladder's gentle steps therefore go to the CLI's own PID, the
  child of the init whose PID bwrap writes to `--info-fd` (`cli_pid`).
- The system read-only less the shadow files, private `/tmp`, `/dev` and `/proc`, the CLI's install
  directory and the Python the bridge runs on read-only; a per-agent configuration directory (never the
  owner's `~/.claude` or `~/.codex`: a woken Claude once wrote a hook into the owner's settings that would
  later run outside any sandbox); the workdir (read-only when constrained) with the files other tools
  execute later bound read-only inside it; the run directory. Nothing else of the host: not its home,
  `/run`, `/tmp` or sockets, but the run's own bridge socket in the run directory.
- Never root (DESIGN §5): a root supervisor starts bwrap as root, which can mount what the operator named
  without making it readable to anyone, and the CLI inside drops to the unprivileged `AGENT_ROOMS_RUN_AS`
  uid through `setpriv` with every capability gone. A normal user's bwrap uses a user namespace and
  `--cap-drop ALL`.

The sandbox fails closed: `probe` runs bwrap with the run's own mounts and `true` at every spawn, and a run
whose probe fails never starts (the supervisor ends it `sandbox_unavailable`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

__all__ = [
    "PROTECTED",
    "RunAs",
    "SandboxPlan",
    "as_user",
    "bwrap_argv",
    "cli_pid",
    "home_secrets",
    "move_aside",
    "probe",
    "probe_here",
    "read_info",
    "run_as",
    "unprotectable",
]

log = structlog.get_logger("agent_rooms_mcp.wake")

# Files inside a workdir that other tools execute later (git, Claude Code, Codex, editors, direnv): a woken
# CLI may edit the code, never what runs the next time its owner opens the repository.
PROTECTED = (
    ".git/hooks", ".git/config", ".git/commondir", ".git/config.worktree", ".git/info", ".git/modules",
    ".claude", ".mcp.json", ".codex", ".vscode", ".idea", ".envrc", ".direnv",
)  # fmt: skip
# What else the host user keeps that a CLI bound with a home-wide directory (a CLI installed in ~) must not see.
_HOME_SECRETS = (".ssh", ".gnupg", ".claude", ".claude.json", ".codex", ".aws", ".kube", ".docker", ".netrc",
                 ".config", ".local/share/keyrings")  # fmt: skip
# The system, read-only. On a merged-/usr host the top-level ones are symlinks, recreated as such.
_SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Secrets of the system itself, hidden even from a read-only /etc.
_HIDDEN = ("/etc/shadow", "/etc/gshadow", "/etc/ssl/private", "/etc/sudoers", "/etc/sudoers.d")
SETPRIV = "/usr/bin/setpriv"
ENV = "/usr/bin/env"
# How long the probe may take; bwrap itself starts in milliseconds.
PROBE_TIMEOUT_S = 10.0
# How long the sandbox may take to report its init's PID and then to start the command under it.
INFO_TIMEOUT_S = 10.0


class SandboxError(Exception):
    """The sandbox cannot run here or with these settings; the message says why, never a secret."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user a root supervisor runs CLIs as (DESIGN §5 "Never root")."""

    uid: int
    gid: int
    name: str


def run_as(spec: str) -> RunAs:
    """`AGENT_ROOMS_RUN_AS`: a user name or `UID[:GID]`. Root, or a user that does not exist, is refused."""
    spec = spec.strip()
    try:
        if spec.replace(":", "").isdigit():
            uid_text, _, gid_text = spec.partition(":")
            uid = int(uid_text)
            try:
                entry = pwd.getpwuid(uid)
                gid, name = (int(gid_text) if gid_text else entry.pw_gid), entry.pw_name
            except KeyError:
                gid, name = (int(gid_text) if gid_text else uid), uid_text
        else:
            entry = pwd.getpwnam(spec)
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    except (KeyError, ValueError):
        raise SandboxError(f"AGENT_ROOMS_RUN_AS={spec!r} names no user here: give a user name or UID[:GID]") from None
    if uid == 0 or gid == 0:
        raise SandboxError(f"AGENT_ROOMS_RUN_AS={spec!r} is root: name an unprivileged user")
    return RunAs(uid, gid, name)


def as_user(who: RunAs, argv: Sequence[str]) -> list[str]:
    """argv run as `who` with no capability at all, in any set, and none to be regained (no_new_privs). The
    kernel clears a parent-death signal when the uid changes, so it is set again once the user is `who`."""
    return [
        SETPRIV,
        f"--reuid={who.uid}",
        f"--regid={who.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        SETPRIV,
        "--pdeathsig=KILL",
        "--",
        *argv,
    ]


@dataclass(frozen=True, slots=True)
class SandboxPlan:
    """What one run's sandbox holds. Paths are absolute and bound at the same path inside."""

    workdir: Path
    run_dir: Path
    config_dir: Path  # the agent's own CLI configuration (CLAUDE_CONFIG_DIR, CODEX_HOME, its HOME)
    read_only: bool  # constrained: the workdir read-only too
    cli_dirs: tuple[Path, ...]  # where the CLI is installed, read-only
    runtime_dirs: tuple[Path, ...]  # what the bridge runs on (Python and this package), read-only
    extra_ro: tuple[Path, ...] = ()  # the operator's own additions (AGENT_ROOMS_SANDBOX_RO)
    extra_rw: tuple[Path, ...] = ()  # (AGENT_ROOMS_SANDBOX_RW): a build cache, say
    hidden: tuple[Path, ...] = ()  # the hub's home and the operator's paths, hidden on top of the system ones
    run_as: RunAs | None = None  # set when the supervisor is root
    share_net: bool = True


def runtime_dirs() -> tuple[Path, ...]:
    """The Python install and environment `agent-rooms bridge` runs on, and this package's own directory
    (an editable install points outside site-packages). Under /usr they are part of the system already."""
    import agent_rooms_mcp

    found: list[Path] = []
    package = Path(agent_rooms_mcp.__file__).parent
    for prefix in (sys.base_prefix, sys.prefix, package, Path(sys.executable).parent):
        # As given and resolved: the bridge and the relay are started by `sys.executable`'s own path, which
        # may pass through a symlink (a venv reached by a link) that the sandbox must show as well.
        for path in (Path(prefix).absolute(), Path(prefix).resolve()):
            if not _under(path, Path("/usr")) and path not in found:
                found.append(path)
    return tuple(found)


def cli_dirs(binary: str) -> tuple[Path, ...]:
    """The directory the CLI is found in and the one its real file lives in (npm links `bin/claude` into
    `lib/node_modules/...`): only those, so a CLI installed under a home shows nothing else of it."""
    found = shutil.which(binary)
    if found is None:
        return ()
    path = Path(found).absolute()
    dirs = [path.parent, path.resolve().parent]
    return tuple(dict.fromkeys(d for d in dirs if not _under(d, Path("/usr"))))


def bwrap_argv(bwrap: str, plan: SandboxPlan, command: Sequence[str], *, info_fd: int | None = None) -> list[str]:
    """The bwrap command line that runs `command` inside the sandbox `plan` describes."""
    argv = [bwrap, "--die-with-parent", "--new-session"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not plan.share_net:
        argv.append("--unshare-net")
    if plan.run_as is None:
        argv += ["--unshare-user", "--cap-drop", "ALL"]
    else:
        # Root's bwrap keeps only what setpriv needs to become the run-as user, which then drops them all.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    for top in _SYSTEM:
        path = Path(top)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            argv += ["--ro-bind", top, top]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    for path in (*plan.runtime_dirs, *plan.cli_dirs, *plan.extra_ro):
        argv += _bind("--ro-bind", path)
    for path in plan.extra_rw:
        argv += _bind("--bind", path)
    argv += _workdir(plan)
    # After every bind that could contain them (a workdir of `/`, say), before the run's own directories,
    # which lie under the hub's home: the shadow files, the operator's list and the home itself. A workdir
    # inside one of them (the default one, under the home) is bound again on top.
    hidden = (*map(Path, _HIDDEN), *plan.hidden)
    for path in hidden:
        # Sealed (mode 0000) unless one of the run's own directories is bound below it afterwards: an empty
        # but listable stand-in still answers "it exists" where a host's ~/.ssh was, and reads as a success.
        below = any(_under(own, path) for own in (plan.workdir, plan.config_dir, plan.run_dir))
        argv += _hide(path, sealed=not below)
    if any(_under(plan.workdir, path) for path in hidden):
        argv += _workdir(plan)
    argv += _bind("--bind", plan.config_dir)
    argv += _bind("--bind", plan.run_dir)
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if plan.run_as is None:
        argv += ["--chdir", str(plan.workdir)]
        inner = list(command)
    else:
        # Root's bwrap holds no CAP_DAC_OVERRIDE, so it could not enter a workdir private to the run-as user:
        # the user enters it itself, through env's own chdir, which then execs the CLI (same PID).
        inner = as_user(plan.run_as, [ENV, f"--chdir={plan.workdir}", "--", *command])
    return [*argv, "--", *inner]


def _bind(how: str, path: Path) -> list[str]:
    """Bind path at the same path, its missing parents made first: bwrap would make them 0700 root's, which
    a run-as user could not pass through (the host's own modes stay the host's business)."""
    argv: list[str] = []
    for parent in reversed(path.parents):
        if parent != Path("/") and not any(_under(parent, Path(top)) for top in _SYSTEM):
            argv += ["--perms", "0755", "--dir", str(parent)]
    return [*argv, how, str(path), str(path)]


def _workdir(plan: SandboxPlan) -> list[str]:
    how = "--ro-bind" if plan.read_only else "--bind"
    argv = _bind(how, plan.workdir)
    git = plan.workdir / ".git"
    if git.is_dir() and not git.is_symlink():
        # A mount point of its own cannot be renamed: `mv .git .x; mkdir -p .git/hooks` would otherwise leave
        # the read-only hooks behind under another name and a fresh, writable .git in their place.
        argv += [how, str(git), str(git)]
    for name in PROTECTED:
        inside = plan.workdir / name
        if os.path.lexists(inside):  # a symlink among them never gets this far (`unprotectable`)
            argv += ["--ro-bind", str(inside), str(inside)]
    if git.is_file() and not git.is_symlink():  # a worktree's `gitdir:` pointer
        argv += ["--ro-bind", str(git), str(git)]
    return argv


def unprotectable(workdir: Path) -> str | None:
    """Why this workdir's hook files cannot be held read-only, or None. A protected name that is a symlink
    (or lies under one) would bind its target, which may lie outside the workdir; such a workdir fails
    closed rather than run with its hooks writable."""
    for name in (".git", *PROTECTED):
        path = workdir
        for part in Path(name).parts:
            path = path / part
            if path.is_symlink():
                return f"{path} is a symlink: the sandbox cannot hold it read-only; replace it with the real file"
    return None


def home_secrets(home: Path) -> tuple[Path, ...]:
    """The host user's own secrets under `home`, hidden in every sandbox whatever was bound around them."""
    return tuple(home / name for name in _HOME_SECRETS)


def _hide(path: Path, *, sealed: bool) -> list[str]:
    if path.is_dir() and not path.is_symlink():
        # Empty and the sandbox's own (where the run's directories are bound below it afterwards, which needs
        # it writable and passable); nothing written there reaches the host. The CLI holds no capability, so
        # a sealed one cannot be listed or entered even by its owner.
        return [*(["--perms", "0000"] if sealed else []), "--tmpfs", str(path)]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def protected_created(workdir: Path, before: Iterable[str]) -> list[str]:
    """The protected names that did not exist when the run started and do now: a sandbox can bind only
    what exists read-only, so the supervisor moves these aside after the run instead."""
    existed = set(before)
    return [name for name in PROTECTED if name not in existed and os.path.lexists(workdir / name)]


def move_aside(workdir: Path, name: str, aside: Path) -> str:
    """Move workdir/name (created by a run) to `aside`, never through a symlink the run planted: the parent
    is opened without following links, and the name renamed relative to it. Across filesystems it is renamed
    in place to an inert name instead. Returns where it went."""
    parts = Path(name).parts
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(workdir, flags)
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags, dir_fd=fd)  # ELOOP/ENOTDIR on a symlink: nothing is moved
            os.close(fd)
            fd = inner
        try:
            os.rename(parts[-1], aside, src_dir_fd=fd)
            return str(aside)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            inert = f"{parts[-1]}.agent-rooms-moved-aside-{aside.parent.parent.name}"
            os.rename(parts[-1], inert, src_dir_fd=fd, dst_dir_fd=fd)
            return str(workdir.joinpath(*parts[:-1], inert))
    finally:
        os.close(fd)


def existing_protected(workdir: Path) -> list[str]:
    return [name for name in PROTECTED if os.path.lexists(workdir / name)]


async def probe(bwrap: str, plan: SandboxPlan) -> str | None:
    """Run `true` in a sandbox with the run's own mounts and user: None if it works, else why (bwrap's own
    words, which name paths and never secrets). Called at every spawn: a host that lost its user
    namespaces, or a workdir that moved, fails the run instead of running it unsandboxed."""
    return await anyio.to_thread.run_sync(probe_now, bwrap, plan)


def probe_now(bwrap: str, plan: SandboxPlan) -> str | None:
    """`probe`, blocking (for `doctor`)."""
    argv = bwrap_argv(bwrap, plan, ["/usr/bin/true"])
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, env={}, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not run: {type(e).__name__}"
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip()[-500:] or f"exit {done.returncode}"
    return None


def probe_here(bwrap: str, user: RunAs | None) -> str | None:
    """Can this machine start a sandbox at all, for this user? A probe over empty directories of its own."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="agent-rooms-probe-") as tmp:
        root = Path(tmp)
        for name in ("work", "run", "config"):
            (root / name).mkdir()
            if user is not None:
                os.chown(root / name, user.uid, user.gid)
        os.chmod(root, 0o755)
        plan = SandboxPlan(workdir=root / "work", run_dir=root / "run", config_dir=root / "config", read_only=False,
                           cli_dirs=(), runtime_dirs=runtime_dirs(), run_as=user)  # fmt: skip
        return probe_now(bwrap, plan)


def read_info(fd: int) -> int | None:
    """The PID of the sandbox's init, from bwrap's `--info-fd` JSON (read to EOF: bwrap closes it once
    written). Blocking: call in a worker thread. None if bwrap ended without writing it."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            data += chunk
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


async def cli_pid(init_pid: int) -> int | None:
    """The CLI's own PID: the one child of the sandbox's init (the command it runs, exec'd through setpriv).
    Waits briefly for the init to fork it; None if the sandbox ended first."""
    with anyio.move_on_after(INFO_TIMEOUT_S):
        while True:
            children = _children(init_pid)
            if children is None:
                return None
            if children:
                return children[0]
            await anyio.sleep(0.005)
    return None


def _children(pid: int) -> list[int] | None:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return None
    return [int(p) for p in text.split()]
