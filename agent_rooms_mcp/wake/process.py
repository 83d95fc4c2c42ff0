"""Run one coding CLI headless: prompt on stdin, JSON events from stdout, and a stop that leaves nothing behind.

The facts this module is built on were observed on the real CLIs (research/wake.md §4):

- SIGINT is the CLIs' native interrupt and keeps the session resumable, so a stop starts there and
  only escalates (SIGTERM, then SIGKILL) when the CLI does not exit in time.
- The CLIs start tool shells in sessions of their own, so a process-group kill misses them, and a
  SIGKILLed Claude leaves its tool shells running under init. Every descendant is therefore
  remembered (PID plus start time) while the run is alive, and whatever is still running when the
  leader is gone is killed by PID.
- The exit code says little (Claude exits 0 after SIGINT), so this layer only reports what happened:
  which events were read, whether a terminal one was among them, and which signal we sent last.

Nothing here knows which CLI it runs; adapters build the argv and judge the events.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import ByteReceiveStream, Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from agent_rooms_mcp.wake.cgroups import RunCgroup

__all__ = ["Finished", "ProcessLimits", "descendants", "run_process"]

log = structlog.get_logger("agent_rooms_mcp.wake")

# How often the descendant snapshot is refreshed while the run is alive. A tool shell that lives
# shorter than this and outlives the leader can be missed; the event-line refresh narrows that gap.
_SCAN_EVERY_S = 0.5
# An event line triggers a refresh at most this often: a scan reads every /proc/<pid>/stat, which
# is cheap once but not per line of a fast stream.
_SCAN_ON_EVENT_EVERY_S = 0.1
# When our caller is cancelled or a callback fails, nobody waits for a graceful interrupt.
_QUICK_GRACE_S = 1.0
# After the leader exits, how long its remaining output may take to arrive. Bounds the case of a
# process we never saw keeping the pipes open.
_DRAIN_AFTER_EXIT_S = 2.0
# A stray can fork between a scan and the kill; a few passes catch its children as well.
_SWEEP_PASSES = 3


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    line_bytes: int = 1 << 20  # one JSON event line
    total_bytes: int = 64 << 20  # all stdout
    stderr_tail_bytes: int = 64 << 10
    grace_int_s: float = 10.0  # SIGINT -> SIGTERM
    grace_term_s: float = 5.0  # SIGTERM -> SIGKILL of group + snapshotted descendants
    after_result_s: float = 10.0  # a CLI may hang after its terminal event
    idle_s: float = 600.0  # no output at all for this long: stop
    wall_s: float = 7200.0  # the run's time limit (DESIGN §5: default 2 h)


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int | None
    # "SIGINT" | "SIGTERM" | "SIGKILL" | "none": the last signal WE sent to the leader or its group.
    # Strays killed after the leader exited by itself are logged, not reported here.
    stop_signal: str
    # Why we stopped it: "requested" | "idle" | "wall" | "line_too_long" | "output_cap" | "after_result" | None.
    reason: str | None
    stderr_tail: bytes
    saw_terminal: bool  # a terminal event (per is_terminal) was read


# --- /proc snapshots -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stat:
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks since boot: with the PID, it names one process even after PID reuse


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # The command name (field 2) is in parentheses and may itself contain ")" or spaces.
        fields = raw.rsplit(b")", 1)[1].split()
        return _Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None  # gone between listdir and open, or not a process we can read


def _scan() -> dict[int, _Stat]:
    table: dict[int, _Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _read_stat(int(name))) is not None:
            table[int(name)] = stat
    return table


def _below(roots: Iterable[int], table: Mapping[int, _Stat]) -> list[int]:
    """Every process descended from one of roots, through PPID links, roots excluded."""
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    seen = set(roots)
    stack = list(seen)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                stack.append(child)
    return found


def start_time(pid: int) -> int | None:
    """When pid started (clock ticks since boot): with the pid, it names one process even after reuse."""
    stat = _read_stat(pid)
    return None if stat is None else stat.start


def kill_left_behind(pid: int, started: int) -> int:
    """SIGKILL a CLI whose supervisor died (and whatever of its session and descendants is still there), if
    pid still names the process that was started then. Returns how many processes were signalled."""
    table = _scan()
    leader = table.get(pid)
    if leader is None or leader.start != started:
        return 0  # gone, or the pid now names someone else's process
    doomed = {pid, *_below([pid], table), *(p for p, st in table.items() if st.sid == pid or st.pgid == pid)}
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    log.info("wake.orphan_killed", pid=pid, count=len(doomed))
    return len(doomed)


def descendants(pid: int) -> list[int]:
    """A snapshot of pid's descendants from /proc PPID links (pid itself excluded)."""
    return _below([pid], _scan())


class _Strays:
    """Every process a run started, remembered with its start time, so that a recycled PID is never killed."""

    def __init__(self, leader: int) -> None:
        self._leader = leader
        stat = _read_stat(leader)
        self._leader_start = stat.start if stat is not None else None
        self._known: dict[int, int] = {}  # pid -> start time

    def _same(self, table: Mapping[int, _Stat], pid: int, start: int) -> bool:
        stat = table.get(pid)
        return stat is not None and stat.start == start

    def absorb(self, table: Mapping[int, _Stat]) -> None:
        """Add what table shows of the run: the leader's descendants, its group and session, and
        descendants of anything already remembered (a tool shell reparented to init keeps forking)."""
        self._known = {pid: start for pid, start in self._known.items() if self._same(table, pid, start)}
        leader = table.get(self._leader)
        # If the leader's PID now names another process, it was reaped and reused; its group and
        # session IDs then belong to someone else. While any member of our group or session lives,
        # the kernel does not hand the PID out again, so an absent leader leaves those IDs ours.
        leader_is_ours = leader is None or leader.start == self._leader_start
        roots = list(self._known)
        if leader is not None and leader_is_ours:
            roots.append(self._leader)
        found = _below(roots, table)
        if leader_is_ours:
            found += [pid for pid, s in table.items() if self._leader in (s.pgid, s.sid)]
        for pid in found:
            if pid != self._leader:
                self._known.setdefault(pid, table[pid].start)

    def alive(self, table: Mapping[int, _Stat]) -> list[int]:
        """Remembered processes still running (a zombie is dead already: its parent, or init, reaps it)."""
        return [pid for pid, start in self._known.items() if self._same(table, pid, start) and table[pid].state != "Z"]


# --- one run -------------------------------------------------------------------------------------------------


def _parse(line: bytes) -> dict[str, Any] | None:
    """A JSON object, or None: CLIs print debug text on stdout too (the Claude SDK skips it the same way)."""
    text = line.strip()
    if not text.startswith(b"{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8; RecursionError, deep nesting
        return None
    return value if isinstance(value, dict) else None


class _Run:
    """The state of one child: what was read, why it is being stopped, and which signal went last."""

    def __init__(
        self,
        proc: Process,
        limits: ProcessLimits,
        on_signal: Callable[[str], None] | None,
        cgroup: RunCgroup | None,
        interrupt_pid: Callable[[], int | None] | None = None,
    ) -> None:
        self._proc = proc
        self._cgroup = cgroup
        self._interrupt_pid = interrupt_pid
        self._limits = limits
        self._on_signal = on_signal
        self._strays = _Strays(proc.pid)
        self._log = log.bind(pid=proc.pid)
        self.reason: str | None = None
        self.stop_signal = "none"
        self.saw_terminal = False
        self.failure: Exception | None = None  # raised by a callback; re-raised once the child is gone
        self._stop_wanted = anyio.Event()
        self._stderr_done = anyio.Event()
        self._tail = bytearray()
        self._total = 0
        self._last_output = anyio.current_time()
        self._last_event_scan = -math.inf
        self._reader = anyio.CancelScope()
        self._tg: TaskGroup | None = None

    def finished(self) -> Finished:
        return Finished(
            returncode=self._proc.returncode,
            stop_signal=self.stop_signal,
            reason=self.reason,
            stderr_tail=bytes(self._tail),
            saw_terminal=self.saw_terminal,
        )

    # -- the whole run --

    async def follow(
        self,
        prompt: bytes,
        stop: anyio.Event,
        on_event: Callable[[dict[str, Any]], None],
        is_terminal: Callable[[dict[str, Any]], bool],
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._feed, prompt)
            tg.start_soon(self._drain_stderr)
            tg.start_soon(self._track)
            tg.start_soon(self._stopper)
            tg.start_soon(self._stop_when_set, stop)
            tg.start_soon(self._watch_wall)
            tg.start_soon(self._watch_idle)
            tg.start_soon(self._watch_exit)
            with self._reader:
                await self._read(on_event, is_terminal)
            if self.failure is None:
                await self._proc.wait()
                with anyio.move_on_after(_DRAIN_AFTER_EXIT_S):
                    await self._stderr_done.wait()  # the last stderr lines explain a failure best
            tg.cancel_scope.cancel()

    async def close(self) -> None:
        """Make sure the leader is reaped and nothing it started still runs. Call shielded."""
        if self._proc.returncode is None:
            # Only on cancellation or a failed callback: no time for the graceful interrupt.
            await self._escalate([(signal.SIGTERM, min(_QUICK_GRACE_S, self._limits.grace_term_s))])
        await self._proc.wait()
        await self._sweep()
        await self._proc.aclose()

    # -- stopping --

    def request_stop(self, reason: str) -> None:
        # The first reason wins; a process that already exited is not being stopped by us.
        if self.reason is None and self._proc.returncode is None:
            self.reason = reason
            self._stop_wanted.set()

    async def _stopper(self) -> None:
        await self._stop_wanted.wait()
        limits = self._limits
        await self._escalate([(signal.SIGINT, limits.grace_int_s), (signal.SIGTERM, limits.grace_term_s)])

    async def _escalate(self, ladder: Sequence[tuple[signal.Signals, float]]) -> None:
        """Signal the leader only (the CLI then stops its own tools in order), then kill everything."""
        for sig, grace in ladder:
            if self._proc.returncode is not None:
                return
            # Under a sandbox the gentle steps go to the CLI itself, not to the sandbox that leads (which
            # would kill without grace); one whose CLI is not known yet has nothing to interrupt: kill it.
            target = self._proc.pid if self._interrupt_pid is None else self._interrupt_pid()
            if target is None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
            self._sent(sig)
            with anyio.move_on_after(grace):
                await self._proc.wait()
                return
        await self._kill_all()

    async def _kill_all(self) -> None:
        await self._refresh()  # snapshot before the leader dies: its children are reparented then
        if self._proc.returncode is None:
            # The group ID is the leader's PID (start_new_session). It cannot be reused while the
            # leader is unreaped, and asyncio sets returncode as it reaps, so this targets our group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._sent(signal.SIGKILL)
        await self._sweep()

    def _sent(self, sig: signal.Signals) -> None:
        self.stop_signal = sig.name
        self._log.info("wake.signal", signal=sig.name, reason=self.reason)
        if self._on_signal is not None:
            try:
                self._on_signal(sig.name)
            except Exception:
                # A failing observer must not break the escalation that is already under way.
                self._log.exception("wake.on_signal_failed")

    async def _sweep(self) -> None:
        """Kill every remembered process still running. Only called once the leader is gone or being killed."""
        if self._cgroup is not None:
            # Frozen and emptied first: it holds what the snapshots below cannot see (a double fork whose
            # middle process exited before any scan, so no PPID link leads back to the run).
            await self._cgroup.kill()
        killed = 0
        for _ in range(_SWEEP_PASSES):
            table = await anyio.to_thread.run_sync(_scan)
            self._strays.absorb(table)
            alive = self._strays.alive(table)
            if not alive:
                break
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed += len(alive)
        if killed:
            self._log.warning("wake.strays_killed", signal="SIGKILL", count=killed)

    async def _refresh(self) -> None:
        # In a worker thread: one scan reads a file per process on the machine.
        self._strays.absorb(await anyio.to_thread.run_sync(_scan))

    # -- background tasks --

    async def _feed(self, prompt: bytes) -> None:
        # Concurrent with reading stdout: a prompt larger than the pipe buffer would otherwise
        # deadlock against a child that writes before it has read everything.
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            try:
                if prompt:
                    await stdin.send(prompt)
            finally:
                await stdin.aclose()  # EOF ends the prompt

    async def _drain_stderr(self) -> None:
        # Always drained: a full stderr pipe blocks the child. Only a tail is kept, for diagnostics.
        stderr = self._proc.stderr
        assert stderr is not None
        keep = self._limits.stderr_tail_bytes
        try:
            async for chunk in stderr:
                self._tail += chunk
                if len(self._tail) > keep:
                    del self._tail[: len(self._tail) - keep]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._stderr_done.set()

    async def _track(self) -> None:
        while True:
            await self._refresh()
            await anyio.sleep(_SCAN_EVERY_S)

    async def _stop_when_set(self, stop: anyio.Event) -> None:
        await stop.wait()
        self.request_stop("requested")

    async def _watch_wall(self) -> None:
        await anyio.sleep(self._limits.wall_s)
        self.request_stop("wall")

    async def _watch_idle(self) -> None:
        while True:
            remaining = self._last_output + self._limits.idle_s - anyio.current_time()
            if remaining <= 0:
                self.request_stop("idle")
                return
            await anyio.sleep(remaining)

    async def _watch_exit(self) -> None:
        await self._proc.wait()
        # Kill what the leader left behind now, not at the end: an orphan holding our stdout
        # would otherwise keep the reader waiting for an EOF that never comes.
        await self._sweep()
        await anyio.sleep(_DRAIN_AFTER_EXIT_S)
        self._reader.cancel()

    async def _wait_after_result(self) -> None:
        with anyio.move_on_after(self._limits.after_result_s):
            await self._proc.wait()
            return
        self.request_stop("after_result")

    # -- stdout --

    def _took(self, nbytes: int) -> bool:
        """Count output; False once the total cap is passed."""
        self._last_output = anyio.current_time()
        self._total += nbytes
        if self._total > self._limits.total_bytes:
            self.request_stop("output_cap")
            return False
        return True

    async def _read(
        self, on_event: Callable[[dict[str, Any]], None], is_terminal: Callable[[dict[str, Any]], bool]
    ) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        stream = BufferedByteReceiveStream(stdout)
        while True:
            at_eof = False
            try:
                line = await stream.receive_until(b"\n", self._limits.line_bytes)
                size = len(line) + 1
            except anyio.DelimiterNotFound:
                self.request_stop("line_too_long")
                # Skip to the end of that line and go on: what the CLI prints while it stops
                # (Claude's interrupted result) is still worth reading.
                if not self._took(len(stream.buffer)) or not await self._skip_line(stream):
                    break
                continue
            except anyio.IncompleteRead:
                line, size, at_eof = stream.buffer, len(stream.buffer), True  # a last line without "\n"
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            if not self._took(size):
                break
            event = _parse(line)
            if event is not None and not await self._dispatch(event, on_event, is_terminal):
                return
            if at_eof:
                return
        await self._discard(stream)

    async def _dispatch(
        self,
        event: dict[str, Any],
        on_event: Callable[[dict[str, Any]], None],
        is_terminal: Callable[[dict[str, Any]], bool],
    ) -> bool:
        now = anyio.current_time()
        if now - self._last_event_scan >= _SCAN_ON_EVENT_EVERY_S:
            # An event often announces a tool call: remember what it started while the PPID
            # links still lead back to the leader.
            self._last_event_scan = now
            await self._refresh()
        try:
            on_event(event)
            terminal = not self.saw_terminal and is_terminal(event)
        except Exception as exc:
            self.failure = exc
            return False
        if terminal:
            self.saw_terminal = True
            assert self._tg is not None
            self._tg.start_soon(self._wait_after_result)
        return True

    async def _skip_line(self, stream: BufferedByteReceiveStream) -> bool:
        """Drop bytes through the next newline; False at EOF or past the total cap."""
        if held := len(stream.buffer):
            await stream.receive(held)  # holds no newline (receive_until would have returned the line)
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return False
            end = chunk.find(b"\n")
            if end >= 0:
                stream.feed_data(chunk[end + 1 :])  # the buffer is empty: this becomes its start
                return self._took(end + 1)
            if not self._took(len(chunk)):
                return False

    async def _discard(self, stream: ByteReceiveStream) -> None:
        # Past a cap we still read, so the child never blocks on a full pipe while it is being stopped.
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            while True:
                await stream.receive()
                self._last_output = anyio.current_time()


async def run_process(
    argv: Sequence[str],
    *,
    prompt: bytes,
    env: Mapping[str, str],
    cwd: str | Path,
    on_event: Callable[[dict[str, Any]], None],
    is_terminal: Callable[[dict[str, Any]], bool],
    stop: anyio.Event,
    limits: ProcessLimits = ProcessLimits(),
    on_spawn: Callable[[int], None] | None = None,
    on_signal: Callable[[str], None] | None = None,
    pass_fds: Sequence[int] = (),
    interrupt_pid: Callable[[], int | None] | None = None,
    cgroup: RunCgroup | None = None,
) -> Finished:
    """Run argv in its own session with prompt on stdin, calling on_event for each JSON object line.

    Returns once the child has exited and been reaped and every process it started is gone. `cgroup` is the
    run's own (argv already joins it), emptied with every sweep; its removal is the caller's. If the
    calling task is cancelled, or a callback raises, the child is stopped quickly (SIGTERM, then
    SIGKILL) before the cancellation or the callback's exception propagates.

    `interrupt_pid` names the process the stop ladder's SIGINT and SIGTERM go to when that is not the leader
    (a sandboxed CLI, whose leader is bwrap); None from it means there is none yet, and the ladder goes
    straight to killing everything. `pass_fds` are kept open in the child (bwrap's `--info-fd`).
    """
    # Shielded: a cancellation that lands mid-spawn would leave a child nobody holds. Deferred,
    # it lands at the first checkpoint below instead, where the finally stops the child.
    with anyio.CancelScope(shield=True):
        proc = await anyio.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            # Own session and group (PGID = PID): nothing the CLI starts shares the server's group,
            # and a Ctrl-C in the owner's terminal does not reach it.
            start_new_session=True,
            pass_fds=pass_fds,
        )
    run = _Run(proc, limits, on_signal, cgroup, interrupt_pid)
    try:
        if on_spawn is not None:
            on_spawn(proc.pid)
        await run.follow(prompt, stop, on_event, is_terminal)
    finally:
        with anyio.CancelScope(shield=True):
            await run.close()
    if run.failure is not None:
        raise run.failure
    return run.finished()
