"""A cgroup per run (DESIGN §5 "Process containment"): real processes in real cgroups of this machine.

Each mechanism is tried where the OS grants it and skipped, with the reason printed, where it does not: this
machine and CI are root on a hybrid host (cgroup v1 pids and freezer, an empty cgroup2 at
/sys/fs/cgroup/unified), so "cgroup1" runs here, and cgroup v2's freeze-and-kill runs on that cgroup2 without
a pids controller (the fork-bomb bound is then skipped). A user's systemd scope and a delegated v2 subtree are
skipped here and run where they exist.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.services.stopping import stop_and_wait
from agent_rooms_mcp.settings import WakeSettings
from agent_rooms_mcp.wake import cgroups
from agent_rooms_mcp.wake.cgroups import Containment, Mechanism, RunCgroup, detect, open_run_cgroup
from agent_rooms_mcp.wake.process import Finished, run_process, start_time
from tests.conftest import OPERATOR, World
from tests.test_wake_guards import PAST, execute
from tests.test_wake_process import CHILD, DEADLINE_S, FAST, Probe, assert_dead, assert_reaped, stat_of
from tests.wakeworld import Fakes, ended, gone, post, runs, supervisor, until

pytestmark = pytest.mark.anyio

PIDS_MAX = 24  # small: the fork bomb reaches it at once and costs the shared box little


def _v2_without_pids() -> Containment | str:
    """cgroup v2's own freeze and kill, on a v2 hierarchy that lacks the pids controller (a hybrid host)."""
    mount = cgroups._v2_mount(cgroups._mounts())
    if mount is None:
        return "no cgroup2 hierarchy is mounted"
    if os.geteuid() != 0 or not os.access(mount, os.W_OK):
        return f"{mount}: not writable by this user"
    if "pids" in cgroups._words(mount / "cgroup.controllers"):
        return f"{mount} has the pids controller: the cgroup2 case covers it"
    parent = mount / cgroups.PARENT_NAME
    return Containment(Mechanism.CGROUP2, f"cgroup v2 at {parent} without pids", parents=(parent,), pids_max=0)


def granted(name: str) -> Containment:
    """The named mechanism prepared as the supervisor prepares it, or a skip that says why it is not here."""
    if name == "cgroup2-no-pids":
        found = _v2_without_pids()
        if isinstance(found, str):
            pytest.skip(f"cgroup v2 freeze/kill: {found}")
        return found.prepare()
    found = detect(name, PIDS_MAX)
    if found.mechanism.value != name:
        pytest.skip(f"{name} is not granted on this machine: {found.why}")
    prepared = found.prepare()
    assert prepared.mechanism.value == name, prepared.why
    return prepared


MECHANISMS = ["cgroup1", "cgroup2", "cgroup2-no-pids", "systemd-scope"]


@pytest.fixture(params=MECHANISMS)
def containment(request: pytest.FixtureRequest) -> Containment:
    return granted(str(request.param))


@pytest.fixture(params=[m for m in MECHANISMS if m != "cgroup2-no-pids"])
def bounded(request: pytest.FixtureRequest) -> Containment:
    """Only the mechanisms that bound a run's processes (a fork bomb without a bound would take the box)."""
    return granted(str(request.param))


def run_name() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


@contextmanager
def reaping(pids: list[int]) -> Iterator[None]:
    """Whatever a failed test left running is killed, so one failure does not leave a daemon behind."""
    try:
        yield
    finally:
        for pid in pids:
            if (stat := stat_of(pid)) is not None and stat[0] != "Z":
                os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def removing(cgroup: RunCgroup) -> AsyncIterator[None]:
    """A test that failed before the code under test removed its cgroup still leaves nothing behind."""
    try:
        yield
    finally:
        await cgroup.remove()  # kills what is left; no-op once removed


async def run_in(cgroup: RunCgroup, mode: str, probe: Probe, env: dict[str, str] | None = None) -> Finished:
    with anyio.fail_after(DEADLINE_S):
        return await run_process(
            [*cgroup.prefix(), sys.executable, str(CHILD), mode],
            prompt=b"",
            env=dict(os.environ) if env is None else env,
            cwd=Path(__file__).parent,
            on_event=probe.on_event,
            is_terminal=lambda e: e.get("type") == "result",
            stop=probe.stop,
            limits=FAST,
            on_spawn=probe.spawned.append,
            on_signal=probe.signals.append,
            cgroup=cgroup,
        )


def dirs_of(cgroup: RunCgroup) -> list[Path]:
    return [d for d in vars(cgroup).values() if isinstance(d, Path)]


async def assert_removed(cgroup: RunCgroup) -> None:
    """No directory of the run's cgroup is left (the parents stay, shared by every run)."""
    if cgroup.mechanism is Mechanism.SYSTEMD_SCOPE:
        with anyio.move_on_after(5):  # systemd collects the scope once it is empty, in its own time
            while any(d.exists() for d in dirs_of(cgroup)):
                await anyio.sleep(0.05)
    left = [d for d in dirs_of(cgroup) if d.exists()]
    assert left == [], f"cgroup directories left behind: {left}"


@pytest.fixture
async def opened(containment: Containment) -> AsyncIterator[RunCgroup]:
    async with open_run_cgroup(containment, run_name()) as cgroup:
        assert cgroup is not None, containment.why
        yield cgroup
    await assert_removed(cgroup)


@pytest.mark.invariant(89)
# One fork bomb at a time (one xdist worker): a stop's check looks for any fork_bomb process on the host.
@pytest.mark.xdist_group("fork-bomb")
async def test_a_fork_bomb_is_bounded_by_pids_max_and_nothing_of_it_outlives_the_stop(bounded: Containment) -> None:
    marker = uuid.uuid4().hex
    probe = Probe()
    async with open_run_cgroup(bounded, run_name()) as cgroup:
        assert cgroup is not None

        async def stop_once_refused() -> None:
            await probe.first.wait()
            # The kernel refused a fork for the cgroup's bound: the bomb is at its ceiling and stays there.
            while not refused_in(dirs_of(cgroup)):
                await anyio.sleep(0.05)
            probe.events.append({"type": "_members", "n": len(cgroup.members())})
            probe.stop.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_once_refused)
            done = await run_in(cgroup, "fork_bomb", probe, env={**os.environ, "BOMB_MARKER": marker})
        members_at_ceiling = probe.events[-1]["n"]
        assert 1 < members_at_ceiling <= PIDS_MAX
        # The last step of the ladder: the bomb ignores SIGINT and SIGTERM, and its children are in sessions
        # of their own, so only the cgroup reaches them.
        assert probe.signals == ["SIGINT", "SIGTERM", "SIGKILL"] and done.stop_signal == "SIGKILL"
        assert cgroup.members() == []
    await assert_removed(cgroup)
    assert_reaped(probe.spawned[0])
    assert carrying(marker) == [], "a process of the bomb outlived the stop"


def carrying(marker: str) -> list[int]:
    """Live processes whose environment holds the marker: every process of one test's bomb, wherever it went."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if marker.encode() in Path(f"/proc/{name}/environ").read_bytes():
                stat = stat_of(int(name))
                if stat is not None and stat[0] != "Z":
                    found.append(int(name))
        except OSError:
            continue
    return found


@pytest.mark.invariant(89)
async def test_a_double_forked_setsid_grandchild_is_killed_through_the_cgroup_at_the_last_step(
    opened: RunCgroup,
) -> None:
    probe = Probe(stop_on_first=True)
    escaped: list[int] = []
    with reaping(escaped):
        done = await run_in(opened, "double_fork_stubborn", probe)
        escaped.append(probe.grandchild())
        assert probe.signals == ["SIGINT", "SIGTERM", "SIGKILL"] and done.stop_signal == "SIGKILL"
        assert_reaped(probe.spawned[0])
        await assert_dead(probe.grandchild())
        assert opened.members() == []


@pytest.mark.invariant(89)
async def test_a_normal_end_ends_every_process_in_the_cgroup(opened: RunCgroup) -> None:
    probe = Probe()
    escaped: list[int] = []
    with reaping(escaped):
        done = await run_in(opened, "double_fork_then_exit", probe)
        escaped.append(probe.grandchild())
        # Never signalled: the CLI ended by itself, and its end ended the daemon it left.
        assert (done.returncode, done.stop_signal, done.saw_terminal) == (0, "none", True)
        await assert_dead(probe.grandchild())
        assert opened.members() == []


async def test_the_cli_runs_inside_the_cgroup_under_the_pid_it_was_spawned_with(opened: RunCgroup) -> None:
    seen: list[list[int]] = []
    probe = Probe(stop_on_first=True)

    def on_event(event: dict[str, Any]) -> None:
        seen.append(opened.members())  # the child waits for our SIGINT: it is alive while we look
        probe.on_event(event)

    with anyio.fail_after(DEADLINE_S):
        done = await run_process(
            [*opened.prefix(), sys.executable, str(CHILD), "hang"],
            prompt=b"",
            env=dict(os.environ),
            cwd=Path(__file__).parent,
            on_event=on_event,
            is_terminal=lambda e: e.get("type") == "result",
            stop=probe.stop,
            limits=FAST,
            on_spawn=probe.spawned.append,
            cgroup=opened,
        )
    assert (done.returncode, done.stop_signal) == (0, "SIGINT")
    # The join execs the CLI in place: the PID the supervisor records is the CLI's, and it is in the cgroup.
    assert probe.events[0] == {"type": "started", "pid": probe.spawned[0]}
    assert probe.spawned[0] in seen[0]


async def test_a_cgroup_that_cannot_be_joined_fails_the_run_instead_of_running_it_outside(
    containment: Containment,
) -> None:
    if containment.mechanism is Mechanism.SYSTEMD_SCOPE:
        pytest.skip("a systemd scope is made by systemd-run itself: there is no directory to take away")
    cgroup = containment.open(run_name())
    assert cgroup is not None
    await cgroup.remove()  # gone before the spawn: the join cannot write its PID anywhere
    probe = Probe()
    done = await run_in(cgroup, "ok", probe)
    assert done.returncode == 125 and probe.events == []  # the CLI never ran
    await assert_removed(cgroup)


def test_detection_follows_the_order_of_design_and_can_be_switched_off() -> None:
    order = [Mechanism.CGROUP2, Mechanism.CGROUP1, Mechanism.SYSTEMD_SCOPE]
    first = next((m for m in order if detect(m.value).mechanism is m), Mechanism.PROCESS_GROUP)
    assert detect("auto").mechanism is first
    off = detect("off")
    assert off.mechanism is Mechanism.PROCESS_GROUP and "AGENT_ROOMS_CGROUP=off" in off.why
    assert off.open("run_1") is None  # no cgroup: the process-group sweep alone (test_wake_process.py)
    with pytest.raises(ValueError, match="AGENT_ROOMS_CGROUP: 'v3'"):
        detect("v3")


def test_a_run_id_that_is_no_plain_name_gets_no_cgroup() -> None:
    found = detect("auto", PIDS_MAX)
    if found.mechanism is Mechanism.PROCESS_GROUP:
        pytest.skip(f"no cgroup is granted here: {found.why}")
    assert found.prepare().open("../../escape") is None


def test_the_settings_name_the_mechanism_and_the_bound() -> None:
    assert (WakeSettings.from_env({}).cgroup, WakeSettings.from_env({}).run_pids_max) == ("auto", 512)
    env = {"AGENT_ROOMS_CGROUP": "off", "AGENT_ROOMS_LIMIT_RUN_PIDS_MAX": "64"}
    assert (WakeSettings.from_env(env).cgroup, WakeSettings.from_env(env).run_pids_max) == ("off", 64)
    with pytest.raises(ValueError, match="AGENT_ROOMS_LIMIT_RUN_PIDS_MAX: not a positive whole number: 'lots'"):
        WakeSettings.from_env({"AGENT_ROOMS_LIMIT_RUN_PIDS_MAX": "lots"})


# --- through the supervisor: a woken fake CLI, stopped by its owner ---------------------------------------------


def running_cmdline(*words: str) -> list[int]:
    """Live processes whose command line holds every one of words (a fork keeps its parent's command line)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w.encode() in argv for w in words) and (stat := stat_of(int(name))) is not None and stat[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.invariant(89)
@pytest.mark.xdist_group("fork-bomb")
@pytest.mark.parametrize("scenario", ["fork_bomb", "daemon"])
async def test_an_owner_stop_ends_every_process_of_the_woken_cli_and_removes_its_cgroup(
    woken: World, fakes: Fakes, scenario: str
) -> None:
    contained = detect("auto", PIDS_MAX)
    if contained.mechanism is Mechanism.PROCESS_GROUP:
        pytest.skip(f"no cgroup is granted here, and a fork bomb without one would take the box: {contained.why}")
    woken.settings = replace(woken.settings, wake=replace(woken.settings.wake, run_pids_max=PIDS_MAX))
    fakes.scenario(scenario)
    escaped: list[int] = []
    with reaping(escaped):
        async with supervisor(woken):
            await post(woken, "alice-claude", "@alice-bot make it all")
            [call] = await until(fakes.calls, "the fake CLI is up")
            # A sandboxed fake's pids are its PID namespace's: only a host pid may be killed here if left.
            if call.get("pid_ns") in (None, os.readlink("/proc/self/ns/pid")):
                escaped.append(call.get("daemon_pid") or call["bomb_pid"])
            [run] = await until(lambda: [r for r in runs(woken, "alice-bot") if r["pid"]], "the run has its pid")
            dirs = [p / run["run_id"] for p in contained.parents]
            if scenario == "fork_bomb" and contained.mechanism is not Mechanism.SYSTEMD_SCOPE:
                await until(lambda: refused_in(dirs), "the bomb reaches pids.max")
            async with woken.hub() as hub:
                done = await stop_and_wait(hub.runs, hub.store, hub.settings.wake, OPERATOR, "alice-bot", None)
        [stopped] = done.stopped
        assert (stopped.state, stopped.stop_signal) == ("stopped", "SIGKILL")
        if scenario == "fork_bomb":
            assert running_cmdline(str(CHILD), "fork_bomb") == []
        else:
            await until(lambda: gone(call, "daemon_pid"), "the daemon is gone", DEADLINE_S)
        left = [d for d in dirs if d.exists()]
        assert left == [], f"cgroup directories left behind: {left}"


def refused_in(dirs: list[Path]) -> bool:
    """The pids controller refused a fork for the bound (pids.events "max N", N > 0)."""
    for d in dirs:
        try:
            words = (d / "pids.events").read_text().split()
        except OSError:
            continue
        return "max" in words and int(words[words.index("max") + 1]) > 0
    return False


@pytest.mark.invariant(89)
async def test_recovery_empties_and_removes_the_cgroup_a_crashed_supervisor_left(woken: World) -> None:
    """What a crashed holder leaves: its CLI and a daemon the CLI double-forked, both in the run's cgroup, and a
    run with an expired lease. Recovery kills the CLI by PID and the daemon through the cgroup, then removes it."""
    contained = detect("auto")
    if contained.mechanism is Mechanism.PROCESS_GROUP:
        pytest.skip(f"no cgroup is granted here: {contained.why}")
    if contained.mechanism is Mechanism.SYSTEMD_SCOPE:
        pytest.skip("a systemd scope ends with its supervisor's session: nothing is left to recover")
    await post(woken, "alice-claude", "@alice-bot hello")
    [queued] = runs(woken, "alice-bot")
    cgroup = contained.prepare().open(queued["run_id"])
    assert cgroup is not None
    # The "CLI" joins the cgroup as a run's first process does, double-forks a daemon out of its session (a
    # subshell starts it and exits: no PPID link leads back), and waits.
    cli = subprocess.Popen(
        [*cgroup.prefix(), "sh", "-c", '(setsid sleep 600 </dev/null >/dev/null 2>&1 & echo "$!"); exec sleep 600'],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert cli.stdout is not None
    with cli.stdout:
        escaped = [cli.pid, int(cli.stdout.readline())]
    try:
        async with removing(cgroup):
            # The subshell is gone once it has printed; the daemon and the CLI stay, both in the cgroup.
            await until(lambda: sorted(cgroup.members()) == sorted(escaped), "the subshell exits", deadline_s=10)
            execute(
                woken,
                "UPDATE runs SET state = 'running', lease_holder = 'sup_dead', lease_until = ?, started_at = ?,"
                " pid = ?, pid_start = ?",
                (PAST, PAST, cli.pid, start_time(cli.pid)),
            )
            async with supervisor(woken):
                [run] = await until(lambda: ended(woken, "alice-bot"), "recovery")
            assert run["state"] == "lost"
            assert cli.wait(timeout=10) == -9
            await assert_dead(escaped[1])
            await assert_removed(cgroup)
    finally:
        cli.kill()  # a no-op once reaped
        cli.wait()


async def test_a_supervisor_start_removes_only_the_old_empty_cgroups_a_crashed_one_left(
    containment: Containment,
) -> None:
    if containment.mechanism is Mechanism.SYSTEMD_SCOPE:
        pytest.skip("systemd collects an empty scope itself")
    stale, young = containment.open(run_name()), containment.open(run_name())
    assert stale is not None and young is not None
    async with removing(stale), removing(young):
        an_hour_ago = time.time() - 3600
        for d in dirs_of(stale):
            os.utime(d, (an_hour_ago, an_hour_ago))
        containment.prepare()
        assert [d for d in dirs_of(stale) if d.exists()] == []
        # One made a moment ago may be about to be joined by its run's first process (another hub's, say).
        assert all(d.exists() for d in dirs_of(young))
