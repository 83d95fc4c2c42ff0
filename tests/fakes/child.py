"""A scripted child for the process-layer tests: `python child.py MODE`. Not a fake CLI, just behaviours.

Every event is one JSON line, flushed at once. Modes that print a "started" or "spawned" event have
installed their signal handlers first, so a test may signal as soon as it has read that event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def hang() -> NoReturn:
    while True:
        signal.pause()


def exit_on_sigint() -> None:
    """Like a CLI's interrupt: say so on stdout, exit 0."""

    def interrupted(signum: int, frame: object) -> None:
        emit(type="interrupted")
        os._exit(0)

    signal.signal(signal.SIGINT, interrupted)


def ignore(*sigs: signal.Signals) -> None:
    for sig in sigs:
        signal.signal(sig, signal.SIG_IGN)


def spawn_orphan() -> int:
    # Its own session, like a CLI's tool shell, so a kill of our process group misses it. It keeps
    # our stdout and stderr, so the parent's pipes stay open after we are gone.
    return subprocess.Popen(["sleep", "600"], start_new_session=True).pid


def fork_bomb() -> NoReturn:
    """Every process forks for ever, each child in a session of its own (so no group kill reaches it); a
    refused fork (the cgroup's pids.max) is waited out and tried again, as a real bomb would."""
    while True:
        try:
            if os.fork() == 0:
                os.setsid()
        except OSError:
            time.sleep(0.05)


def double_fork() -> int:
    """A daemon's escape: a middle process calls setsid, forks the grandchild and exits at once, so no PPID
    link leads back to us and no snapshot is likely to have caught the middle. The grandchild reports its PID,
    lets go of our stdout (the run's end must not wait on it) and sleeps."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            os.close(write_end)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(600)
        os._exit(0)
    os.close(write_end)
    os.waitpid(middle, 0)
    pid = int(os.read(read_end, 32))
    os.close(read_end)
    return pid


def wait_for_flag() -> None:
    # The test creates CHILD_FLAG from on_event, which run_process calls only after its descendant
    # snapshot for that line: exiting after it is the worst case that is still guaranteed covered.
    flag = Path(os.environ["CHILD_FLAG"])
    deadline = time.monotonic() + 10
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(mode: str) -> None:
    out = sys.stdout
    if mode == "ok":
        prompt = sys.stdin.buffer.read()
        emit(type="prompt", size=len(prompt), head=prompt[:32].decode(errors="replace"))
        emit(type="result")
    elif mode == "hang":
        exit_on_sigint()
        emit(type="started", pid=os.getpid())
        hang()
    elif mode == "ignore_sigint":
        ignore(signal.SIGINT)
        emit(type="started", pid=os.getpid())
        hang()
    elif mode == "ignore_all":
        ignore(signal.SIGINT, signal.SIGTERM)
        emit(type="started", pid=os.getpid())
        hang()
    elif mode == "tool_orphan":  # SIGINT: we exit, the tool shell stays behind
        exit_on_sigint()
        emit(type="spawned", pid=spawn_orphan())
        hang()
    elif mode == "tool_orphan_stubborn":  # only SIGKILL ends us, and it does not reach the tool shell
        ignore(signal.SIGINT, signal.SIGTERM)
        emit(type="spawned", pid=spawn_orphan())
        hang()
    elif mode == "orphan_then_exit":
        emit(type="spawned", pid=spawn_orphan())
        wait_for_flag()
        emit(type="result")
    elif mode == "fork_bomb":  # only SIGKILL ends us, and our children are in sessions of their own
        ignore(signal.SIGINT, signal.SIGTERM)
        emit(type="started", pid=os.getpid())
        fork_bomb()
    elif mode == "double_fork_stubborn":  # the escaped grandchild is there; only SIGKILL ends us
        ignore(signal.SIGINT, signal.SIGTERM)
        emit(type="spawned", pid=double_fork())
        hang()
    elif mode == "double_fork_then_exit":  # the escaped grandchild outlives a normal end, unless it is killed
        emit(type="spawned", pid=double_fork())
        emit(type="result")
    elif mode == "hang_after_result":
        exit_on_sigint()
        emit(type="result")
        hang()
    elif mode == "flood":  # one line far over any per-line cap, then a normal event
        # The stop arrives while the big line is still being written; finish it first, or the
        # "interrupted" event would land inside the line that is being skipped.
        state = {"ready": False, "pending": False}

        def deferred(signum: int, frame: object) -> None:
            state["pending"] = True
            if state["ready"]:
                emit(type="interrupted")
                os._exit(0)

        signal.signal(signal.SIGINT, deferred)
        big = memoryview(('{"type":"big","pad":"' + "x" * (2 << 20) + '"}\n').encode())
        while big:  # os.write, not the buffered stdout: a signal mid-write must not drop bytes
            big = big[os.write(1, big) :]
        emit(type="after")
        state["ready"] = True
        if state["pending"]:
            deferred(signal.SIGINT, None)
        hang()
    elif mode == "chatty":  # many small lines, over a small total cap
        exit_on_sigint()
        for i in range(20_000):
            out.write(json.dumps({"type": "tick", "i": i, "pad": "y" * 64}) + "\n")
        out.flush()
        hang()
    elif mode == "garbage":
        emit(type="one")
        for junk in ("[SandboxDebug] not json", "{not json", "[1, 2]", '"a string"', "", "{" + "[" * 100_000):
            print(junk)
        print('{"a":' + "[" * 50_000 + "]" * 50_000 + "}")  # valid, but deeper than json's recursion limit
        print('   {"type": "two"}   ', flush=True)
        emit(type="result")
        out.write('{"type":"trunc')  # cut off at EOF: skipped
    elif mode == "no_newline":
        emit(type="one")
        out.write('{"type":"tail"}')  # a complete object, no newline, then EOF
    elif mode == "env":
        emit(type="env", names=sorted(os.environ))
        emit(type="result")
    elif mode == "noisy_stderr":
        sys.stderr.write("e" * 200_000 + "END")
        sys.stderr.flush()
        emit(type="result")
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
