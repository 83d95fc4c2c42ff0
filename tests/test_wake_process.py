"""The process layer of the wake supervisor against a scripted child (tests/fakes/child.py).

Maps to research/wake.md §7.2: stop by SIGINT and its escalation, nothing left running after a
run (tool shells in their own sessions included), no zombie, the post-result grace, the caps, and
cancellation of the supervising task.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.wake.process import Finished, ProcessLimits, descendants, run_process

CHILD = Path(__file__).parent / "fakes" / "child.py"
# Tiny graces keep the suite fast; idle and wall stay out of the way unless a test is about them.
FAST = ProcessLimits(grace_int_s=0.5, grace_term_s=0.5, after_result_s=0.5, idle_s=60.0, wall_s=60.0)
DEADLINE_S = 20  # a hung run fails the test instead of hanging the suite


@dataclass
class Probe:
    """Records what run_process reports, and can ask for a stop once the first event is read."""

    stop_on_first: bool = False
    flag: Path | None = None  # created on the "spawned" event (see child.py wait_for_flag)
    fail_on_first: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    spawned: list[int] = field(default_factory=list)
    stop: anyio.Event = field(default_factory=anyio.Event)
    first: anyio.Event = field(default_factory=anyio.Event)

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.fail_on_first:
            raise RuntimeError("observer failed")
        if self.flag is not None and event.get("type") == "spawned":
            self.flag.touch()
        if self.stop_on_first:
            self.stop.set()
        self.first.set()

    @property
    def types(self) -> list[str]:
        return [e.get("type", "?") for e in self.events]

    def grandchild(self) -> int:
        return next(e["pid"] for e in self.events if e.get("type") == "spawned")


async def run(
    mode: str,
    probe: Probe,
    *,
    limits: ProcessLimits = FAST,
    prompt: bytes = b"hello",
    env: dict[str, str] | None = None,
) -> Finished:
    with anyio.fail_after(DEADLINE_S):
        return await run_process(
            [sys.executable, str(CHILD), mode],
            prompt=prompt,
            env=dict(os.environ) if env is None else env,
            cwd=Path(__file__).parent,
            on_event=probe.on_event,
            is_terminal=lambda e: e.get("type") == "result",
            stop=probe.stop,
            limits=limits,
            on_spawn=probe.spawned.append,
            on_signal=probe.signals.append,
        )


def stat_of(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[1])


def assert_reaped(pid: int) -> None:
    """The leader is no child of ours any more, alive or zombie: run_process waited for it."""
    stat = stat_of(pid)
    assert stat is None or stat[1] != os.getpid(), f"leader {pid} not reaped: {stat}"


async def assert_dead(pid: int) -> None:
    """A grandchild is gone or a zombie (dead; init reaps it, and may take its time)."""
    with anyio.move_on_after(5):
        while (stat := stat_of(pid)) is not None and stat[0] != "Z":
            await anyio.sleep(0.05)
    assert stat is None or stat[0] == "Z", f"process {pid} still running: {stat}"


async def test_prompt_arrives_on_stdin_and_events_in_order() -> None:
    probe = Probe()
    prompt = b"wake up " + b"x" * (1 << 20)  # larger than a pipe buffer
    done = await run("ok", probe, prompt=prompt)
    assert probe.events == [{"type": "prompt", "size": len(prompt), "head": prompt[:32].decode()}, {"type": "result"}]
    assert done == Finished(returncode=0, stop_signal="none", reason=None, stderr_tail=b"", saw_terminal=True)
    assert probe.signals == []
    [pid] = probe.spawned
    assert_reaped(pid)


async def test_non_json_lines_are_skipped() -> None:
    probe = Probe()
    done = await run("garbage", probe)
    assert probe.types == ["one", "two", "result"]
    assert done.returncode == 0 and done.saw_terminal and done.reason is None


async def test_last_line_without_newline_is_read() -> None:
    probe = Probe()
    done = await run("no_newline", probe)
    assert probe.types == ["one", "tail"]
    assert done.returncode == 0 and not done.saw_terminal


async def test_stop_sends_sigint_to_the_leader_only() -> None:
    probe = Probe(stop_on_first=True)
    done = await run("hang", probe)
    assert probe.signals == ["SIGINT"]
    assert probe.types == ["started", "interrupted"]  # what the CLI prints while it stops is still read
    assert done == Finished(returncode=0, stop_signal="SIGINT", reason="requested", stderr_tail=b"", saw_terminal=False)
    assert probe.spawned == [probe.events[0]["pid"]]
    assert_reaped(probe.spawned[0])


async def test_ignored_sigint_escalates_to_sigterm() -> None:
    probe = Probe(stop_on_first=True)
    done = await run("ignore_sigint", probe)
    assert probe.signals == ["SIGINT", "SIGTERM"]
    assert (done.returncode, done.stop_signal, done.reason) == (-15, "SIGTERM", "requested")
    assert_reaped(probe.spawned[0])


async def test_ignored_sigterm_escalates_to_sigkill() -> None:
    probe = Probe(stop_on_first=True)
    done = await run("ignore_all", probe)
    assert probe.signals == ["SIGINT", "SIGTERM", "SIGKILL"]
    assert (done.returncode, done.stop_signal, done.reason) == (-9, "SIGKILL", "requested")
    assert_reaped(probe.spawned[0])


async def test_tool_shell_left_behind_after_sigint_is_killed() -> None:
    # The orphan also holds our stdout: the run must not wait for an EOF it would never send.
    probe = Probe(stop_on_first=True)
    done = await run("tool_orphan", probe)
    assert (done.returncode, done.stop_signal) == (0, "SIGINT")
    assert_reaped(probe.spawned[0])
    await assert_dead(probe.grandchild())


async def test_tool_shell_in_its_own_session_is_killed_with_the_group() -> None:
    probe = Probe(stop_on_first=True)
    done = await run("tool_orphan_stubborn", probe)
    assert (done.returncode, done.stop_signal) == (-9, "SIGKILL")
    assert_reaped(probe.spawned[0])
    await assert_dead(probe.grandchild())


async def test_orphan_of_a_normal_exit_is_killed(tmp_path: Path) -> None:
    probe = Probe(flag=tmp_path / "flag")
    env = {**os.environ, "CHILD_FLAG": str(probe.flag)}
    done = await run("orphan_then_exit", probe, env=env)
    assert done == Finished(returncode=0, stop_signal="none", reason=None, stderr_tail=b"", saw_terminal=True)
    assert probe.signals == []  # the leader was never signalled; the orphan is killed by PID
    assert_reaped(probe.spawned[0])
    await assert_dead(probe.grandchild())


async def test_hang_after_result_is_stopped_and_counts_as_finished() -> None:
    probe = Probe()
    done = await run("hang_after_result", probe)
    assert done.saw_terminal
    assert (done.reason, done.stop_signal, done.returncode) == ("after_result", "SIGINT", 0)
    assert_reaped(probe.spawned[0])


async def test_line_over_the_cap_stops_the_run_and_is_skipped() -> None:
    probe = Probe()
    done = await run("flood", probe, limits=replace(FAST, line_bytes=64 << 10))
    assert done.reason == "line_too_long"
    assert probe.types == ["after", "interrupted"]  # reading resumes after the oversized line
    assert (done.stop_signal, done.returncode) == ("SIGINT", 0)


async def test_total_output_cap_stops_the_run() -> None:
    probe = Probe()
    done = await run("chatty", probe, limits=replace(FAST, total_bytes=64 << 10))
    assert done.reason == "output_cap"
    assert done.stop_signal == "SIGINT"
    assert 0 < len(probe.events) < 20_000
    assert sum(len(str(e)) for e in probe.events) < 128 << 10


async def test_idle_watchdog_stops_a_silent_run() -> None:
    probe = Probe()
    done = await run("hang", probe, limits=replace(FAST, idle_s=0.3))
    # No returncode check: counted from spawn, the limit may fire before the child's handler is in place.
    assert (done.reason, done.stop_signal) == ("idle", "SIGINT")


async def test_wall_clock_limit_stops_the_run() -> None:
    probe = Probe()
    done = await run("hang", probe, limits=replace(FAST, wall_s=0.3))
    # No returncode check: counted from spawn, the limit may fire before the child's handler is in place.
    assert (done.reason, done.stop_signal) == ("wall", "SIGINT")


async def test_stderr_keeps_only_a_tail() -> None:
    probe = Probe()
    done = await run("noisy_stderr", probe, limits=replace(FAST, stderr_tail_bytes=1000))
    assert len(done.stderr_tail) == 1000
    assert done.stderr_tail.endswith(b"END")


async def test_cancelled_caller_leaves_no_process() -> None:
    probe = Probe()
    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "tool_orphan_stubborn", probe)
            await probe.first.wait()
            tg.cancel_scope.cancel()
    assert probe.signals == ["SIGTERM", "SIGKILL"]  # no graceful interrupt for a cancelled caller
    assert_reaped(probe.spawned[0])
    await assert_dead(probe.grandchild())


async def test_failing_observer_stops_the_child_and_propagates() -> None:
    probe = Probe(fail_on_first=True)
    with pytest.raises(RuntimeError, match="observer failed"):
        await run("hang", probe)
    assert_reaped(probe.spawned[0])


async def test_descendants_follows_ppid_links() -> None:
    async with await anyio.open_process(["sleep", "60"]) as proc:
        try:
            assert proc.pid in descendants(os.getpid())
            assert descendants(proc.pid) == []
        finally:
            proc.kill()
