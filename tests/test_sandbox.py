"""The sandbox every woken CLI runs in (DESIGN §5, issue 14 item 5b), tried the way a prompt-injected CLI
would: a fake Claude that attempts each escape, then replies in the room through the bridge. Every attempt
must fail, the positive controls must work (so the test can fail), and the run must still complete.

Where bubblewrap cannot run at all, the tests that need it say so and skip; the fail-closed tests run
everywhere, since they need the sandbox not to start."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_rooms_mcp.embedded import supervising
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.wake.egress import network_namespace_problem
from tests.conftest import OPERATOR, World, build_world
from tests.wakeworld import (
    AS_ROOT,
    Fakes,
    ended,
    give_to_run_as,
    gone,
    post,
    runs,
    skip_without_sandbox,
    supervisor,
    until,
    wake_caps,
)

QUICK: dict[str, Any] = {"grace_int_s": 0.5, "grace_term_s": 0.5, "after_result_s": 2.0, "poll_s": 0.05}


@pytest.fixture
def needs_sandbox() -> None:
    skip_without_sandbox("no sandbox can start here")


needs_bwrap = pytest.mark.usefixtures("needs_sandbox")


async def sandbox_world(tmp_path: Path, fakes: Fakes, **caps: Any) -> World:
    """A hub that wakes alice-bot (claude, its workdir a git checkout) and bob-bot, an agent of another owner
    whose workdir holds a secret; the owner's home has the files an attacker wants."""
    world = await build_world(tmp_path / "home", wake_caps(fakes, **{**QUICK, **caps}))
    for handle, owner in (("alice-bot", "alice"), ("bob-bot", "bob")):
        workdir = tmp_path / "work" / handle
        (workdir / ".git" / "hooks").mkdir(parents=True)
        (workdir / ".git" / "config").write_text("[core]\n")
        (workdir / "secret.txt").write_text(f"{handle}'s own secret\n")
        give_to_run_as(workdir)
        async with world.hub() as hub:
            await hub.accounts.add_agent(OPERATOR, handle, owner, AgentTool.CLAUDE, parse_scopes("read,post,invoke"),
                                         str(workdir))  # fmt: skip
            world.tokens[handle] = (await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))).token
            await hub.rooms.add_agent(OPERATOR, "lobby" if owner == "alice" else "bobs-den", handle)
    # The owner's secrets, readable by the run-as user on the host (a directory of /tmp's own, not pytest's
    # 0700 one): only the sandbox stands between them and the CLI.
    owner_home = decoy_home(tmp_path)
    for name, text in ((".ssh/id_ed25519", "PRIVATE KEY"), (".claude.json", "{}"), (".claude/settings.json", "{}")):
        (owner_home / name).parent.mkdir(parents=True, exist_ok=True)
        (owner_home / name).write_text(text)
        (owner_home / name).chmod(0o666)
    for d in (owner_home / ".ssh", owner_home / ".claude"):
        d.chmod(0o777)
    fakes.scenario("escape")
    return world


def decoy_home(tmp_path: Path) -> Path:
    """A directory every user can enter, named in tmp_path (pytest's own directories are 0700 root's)."""
    link = tmp_path / "owner-home"
    if not link.exists():
        made = Path(tempfile.mkdtemp(prefix="agent-rooms-decoy-"))
        made.chmod(0o755)
        atexit.register(shutil.rmtree, made, True)
        link.symlink_to(made)
    return link.resolve()


def readable_by_run_as(path: Path) -> bool:
    """Could the run-as user read `path` on the host, with no sandbox in the way? (As root: otherwise the
    file's own mode, not the sandbox, would be what the test saw refuse the read.)"""
    if not AS_ROOT:
        return os.access(path, os.R_OK)
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def attempts(fakes: Fakes, *tried: tuple[str, str | Path]) -> None:
    fakes.escapes_file.write_text(json.dumps([{"kind": k, "target": str(t)} for k, t in tried]))
    give_to_run_as(fakes.escapes_file)


def outcome(fakes: Fakes) -> dict[str, dict[str, Any]]:
    [call] = fakes.calls()
    return {f"{e['kind']} {e['target']}": e for e in call["escapes"]}


@contextmanager
def host_listeners(tmp_path: Path) -> Iterator[tuple[int, Path, str]]:
    """A loopback TCP port, a Unix socket and an abstract Unix socket of the host, all listening."""
    with (
        socket.create_server(("127.0.0.1", 0)) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract,
    ):
        path = tmp_path / "host.sock"
        unix.bind(str(path))
        unix.listen()
        os.chmod(path, 0o777)  # reachable by any user: only the sandbox may stand in the way
        name = f"agent-rooms-test-{os.getpid()}-{tmp_path.name}"
        abstract.bind("\0" + name)  # abstract: no file, no mode; only a network namespace stands in the way
        abstract.listen()
        yield tcp.getsockname()[1], path, "@" + name


def sleepers(marker: str) -> list[int]:
    """Host processes running `sleep <marker>`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()]:
            found.append(int(pid))
    return found


@needs_bwrap
@pytest.mark.invariant(89)
@pytest.mark.invariant(100)
async def test_a_woken_cli_reaches_nothing_but_its_workdir_config_and_bridge(tmp_path: Path, fakes: Fakes) -> None:
    world = await sandbox_world(tmp_path, fakes)
    home, alice_work, bob_work = world.settings.home, tmp_path / "work" / "alice-bot", tmp_path / "work" / "bob-bot"
    owner_home = decoy_home(tmp_path)
    assert readable_by_run_as(owner_home / ".ssh" / "id_ed25519")  # so the sandbox is what must refuse it
    # Where the host gives the sandbox a network of its own, host ports and abstract sockets are out of reach
    # too (else doctor's wake.network lists the ports: tests/test_egress.py).
    own_network = network_namespace_problem(shutil.which("bwrap")) is None
    marker = "987.654321"
    with host_listeners(tmp_path) as (port, host_socket, abstract):
        attempts(
            fakes,
            # what must work: the run's own workdir and config, so the test can fail
            ("write", alice_work / "notes.txt"),
            ("read", alice_work / "secret.txt"),
            ("whoami", "-"),
            # what must not
            ("read", world.db),
            ("read", home / "keys"),
            ("read", owner_home / ".ssh" / "id_ed25519"),
            ("read", owner_home / ".claude.json"),
            ("read", Path.home() / ".ssh"),
            ("read", bob_work / "secret.txt"),
            ("read", "/etc/shadow"),
            ("write", owner_home / ".claude" / "settings.json"),
            ("write", alice_work / ".git" / "hooks" / "pre-commit"),
            ("write", alice_work / ".git" / "config"),
            ("write", tmp_path / "outside.txt"),
            ("write", "/usr/local/bin/evil"),
            ("connect_unix", host_socket),
            ("rename", alice_work / ".git"),
            *([("connect_tcp", port), ("connect_unix", abstract)] if own_network else []),
            ("fork_away", marker),
        )
        async with supervisor(world):
            await post(world, "alice-claude", "@alice-bot please look")
            [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    [call] = fakes.calls()
    assert call.get("posted_seq") is not None, call  # it replied in the room through the bridge
    tried = outcome(fakes)
    for ok in (f"write {alice_work / 'notes.txt'}", f"read {alice_work / 'secret.txt'}", "whoami -"):
        assert tried[ok]["ok"], tried[ok]
    who = json.loads(tried["whoami -"]["detail"])
    assert who["cap_eff"] == "0000000000000000"
    assert who["uid"] != 0 or not AS_ROOT
    controls = {f"write {alice_work / 'notes.txt'}", f"read {alice_work / 'secret.txt'}", "whoami -",
                f"fork_away {marker}"}  # fmt: skip
    refused = {k: v for k, v in tried.items() if k not in controls}
    assert len(refused) == 14 + 2 * own_network
    for what, how in refused.items():
        assert not how["ok"], f"{what} should have failed inside the sandbox: {how}"
    # Nothing of it reached the host: the hooks, the owner's settings, the host's /tmp.
    assert not (alice_work / ".git" / "hooks" / "pre-commit").exists()
    assert (alice_work / ".git" / "config").read_text() == "[core]\n"
    assert (owner_home / ".claude" / "settings.json").read_text() == "{}"
    assert not (tmp_path / "outside.txt").exists()
    assert not (alice_work / ".git.x").exists() and not (alice_work / ".git" / "hooks" / "hooks").exists()
    assert (alice_work / "notes.txt").exists()  # the one place it may write
    # The double-forked, setsid'd sleeper ended with the run's PID namespace.
    assert tried[f"fork_away {marker}"]["ok"]
    await until(lambda: not sleepers(marker), "the forked-away process is gone", 10)


@needs_bwrap
@pytest.mark.invariant(89)
async def test_a_constrained_run_writes_nowhere_not_even_its_workdir(tmp_path: Path, fakes: Fakes) -> None:
    world = await sandbox_world(tmp_path, fakes, contain=True)  # Claude wakes read-only (DESIGN §5)
    alice_work = tmp_path / "work" / "alice-bot"
    attempts(fakes, ("read", alice_work / "secret.txt"), ("write", alice_work / "notes.txt"),
             ("mkdir", alice_work / ".claude"))  # fmt: skip
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot please look")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    tried = outcome(fakes)
    assert tried[f"read {alice_work / 'secret.txt'}"]["ok"]
    assert not tried[f"write {alice_work / 'notes.txt'}"]["ok"]
    assert not tried[f"mkdir {alice_work / '.claude'}"]["ok"]
    assert not (alice_work / "notes.txt").exists()


@needs_bwrap
async def test_a_hook_file_created_in_the_workdir_is_moved_aside(tmp_path: Path, fakes: Fakes) -> None:
    """bwrap can bind read-only only what exists: a `.claude/` the run creates is moved out of the workdir
    when it ends, into the run's log directory, so the owner's next Claude never runs its hooks."""
    world = await sandbox_world(tmp_path, fakes)
    alice_work = tmp_path / "work" / "alice-bot"
    attempts(fakes, ("mkdir", alice_work / ".claude"), ("write", alice_work / ".claude" / "settings.json"),
             ("write", alice_work / ".envrc"))  # fmt: skip
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot please look")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("completed", "ok")
    assert all(e["ok"] for e in outcome(fakes).values())  # it could write them, inside its own workdir
    assert not (alice_work / ".claude").exists() and not (alice_work / ".envrc").exists()
    aside = world.settings.run_logs_dir / run["run_id"] / "moved-aside"
    assert (aside / ".claude" / "settings.json").exists() and (aside / ".envrc").exists()


@pytest.mark.invariant(101)
async def test_a_failing_probe_fails_the_run_and_never_runs_it_unsandboxed(tmp_path: Path, fakes: Fakes) -> None:
    world = await sandbox_world(tmp_path, fakes)
    broken = replace(world.settings, wake=replace(world.settings.wake, bwrap=str(tmp_path / "no-bwrap")))
    async with Hub.open(broken) as hub, supervising(hub):
        await post(world, "alice-claude", "@alice-bot please look")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "sandbox_unavailable")
    assert fakes.calls() == []  # the CLI never ran


@pytest.mark.invariant(101)
async def test_a_cross_owner_wake_without_a_working_sandbox_is_sandbox_required(tmp_path: Path, fakes: Fakes) -> None:
    """bob's agent in alice's room, woken by alice's words once bob accepts: with its sandbox off, and then with
    the sandbox broken, it is refused `sandbox_required` and never runs."""
    world = await sandbox_world(tmp_path, fakes)
    async with world.hub() as hub:
        await hub.rooms.add_agent(OPERATOR, "shared", "bob-bot")
        await hub.accounts.set_agent(OPERATOR, "bob-bot", sandbox=False)
    await world.trust("bob", "alice")
    no_bwrap = replace(world.settings, wake=replace(world.settings.wake, bwrap=str(tmp_path / "no-bwrap")))
    for attempt, settings in enumerate((world.settings, no_bwrap)):
        if attempt == 1:
            async with world.hub() as hub:
                await hub.accounts.set_agent(OPERATOR, "bob-bot", sandbox=True)
        async with Hub.open(settings) as hub, supervising(hub):
            posted = await post(world, "alice-claude", f"@bob-bot please look ({attempt})", room="shared")
            [mention] = posted["mentions"]
            assert mention["outcome"] == "pending_consent", mention
            async with world.client("bob-admin") as c:
                accepted = await c.call_tool("accept_task", {"task": mention["proposal_id"]})
            assert not accepted.is_error, accepted.content
            done = await until(lambda n=attempt + 1: ended(world, "bob-bot", n), "the wake ends")
        assert (done[attempt]["state"], done[attempt]["outcome"]) == ("failed", "sandbox_required")
    assert fakes.calls() == []


@pytest.mark.skipif(not AS_ROOT, reason="only a supervisor running as root needs AGENT_ROOMS_RUN_AS")
async def test_a_root_supervisor_without_a_run_as_user_refuses_root_refused(tmp_path: Path, fakes: Fakes) -> None:
    world = await sandbox_world(tmp_path, fakes)
    for run_as in ("", "root", "0", "no-such-user-here"):
        settings = replace(world.settings, wake=replace(world.settings.wake, run_as=run_as))
        async with Hub.open(settings) as hub, supervising(hub):
            n = len(runs(world, "alice-bot")) + 1
            await post(world, "alice-claude", f"@alice-bot please look ({run_as})")
            done = await until(lambda n=n: ended(world, "alice-bot", n), "the wake ends")
        assert (done[-1]["state"], done[-1]["outcome"]) == ("failed", "root_refused"), run_as
    assert fakes.calls() == []


@needs_bwrap
async def test_a_stop_interrupts_the_cli_inside_the_sandbox_not_the_sandbox(tmp_path: Path, fakes: Fakes) -> None:
    """DESIGN §5: SIGINT goes to the CLI's own PID (read from bwrap's --info-fd). Sent to bwrap it would kill
    without grace, and the namespace's init ignores it: only the CLI's own handler writes the interrupted turn
    (the fake does so on SIGINT alone), which keeps the session resumable."""
    world = await sandbox_world(tmp_path, fakes)
    fakes.scenario("hang")
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot wait here")
        [running] = await until(lambda: [r for r in runs(world, "alice-bot") if r["pid"]] or None, "the CLI runs")
        await until(fakes.calls, "the fake is up")
        async with world.hub() as hub:
            await hub.runs.stop_as_owner(OPERATOR, "alice-bot", None)
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["stop_signal"]) == ("stopped", "SIGINT")
    events = (world.settings.run_logs_dir / run["run_id"] / "events.jsonl").read_text()
    assert "[Request interrupted by user]" in events
    assert gone(fakes.calls()[0]) and running["pid"]


@needs_bwrap
async def test_a_hook_file_that_is_a_symlink_fails_the_run_closed(tmp_path: Path, fakes: Fakes) -> None:
    """A protected name that is a symlink would bind its target, wherever that is: the run never starts."""
    world = await sandbox_world(tmp_path, fakes)
    alice_work = tmp_path / "work" / "alice-bot"
    (alice_work / ".claude").symlink_to(tmp_path)
    async with supervisor(world):
        await post(world, "alice-claude", "@alice-bot please look")
        [run] = await until(lambda: ended(world, "alice-bot"), "the run ends")
    assert (run["state"], run["outcome"]) == ("failed", "sandbox_unavailable")
    assert fakes.calls() == []


@pytest.mark.invariant(101)
def test_who_runs_where_is_one_rule_for_the_hub_and_a_listener() -> None:
    """policy.spawn_refusal, every case: another owner's wake needs the sandbox; a root supervisor runs only
    sandboxed CLIs, and only as its run-as user."""
    from agent_rooms_mcp import policy

    cases = {
        # (as_root, run_as_set, cross_owner, sandbox): outcome
        (False, False, False, True): None,
        (False, False, False, False): None,  # the operator's confirmed choice, for the owner's own wakes
        (False, False, True, False): "sandbox_required",
        (False, False, True, True): None,
        (True, True, False, True): None,
        (True, False, False, True): "root_refused",
        (True, True, False, False): "root_refused",
        (True, True, True, False): "sandbox_required",
        (True, False, True, True): "root_refused",
    }
    for (as_root, run_as_set, cross_owner, sandbox), expected in cases.items():
        got = policy.spawn_refusal(as_root=as_root, run_as_set=run_as_set, cross_owner=cross_owner, sandbox=sandbox)
        assert got == expected, (as_root, run_as_set, cross_owner, sandbox, got)
