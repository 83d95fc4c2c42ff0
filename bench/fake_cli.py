"""A minimal fake `claude` for the wake bench (bench/wake.py): Claude's stream-json init and result lines, and
the moments the bench measures, appended as JSON lines to BENCH_FAKE_LOG.

It is started through a bash wrapper that bench/wake.py writes, which records `$EPOCHREALTIME` as its first
command (BENCH_EXEC_T: the child's exec, give or take bash's own start-up) and then execs this script with
`python -I -S`. Two modes, read from the file BENCH_FAKE_MODE at start:

- ok:   read the prompt, print init and a successful result, exit 0 (no call back into the hub);
- hang: the same init, then wait for SIGINT; the handler's first act is to take `time.time()`, then it
        prints Claude's interrupted result and exits 0, as the real CLI does (research/wake.md §4).
- hang_tool: hang, with a tool shell (`sleep`) in a session of its own started before init, its PID recorded;
- wedged: hang_tool, but SIGINT and SIGTERM are ignored: only the ladder's last step (SIGKILL) ends it.
- orphan: hang, after leaving behind a daemon as a tool's shell can: double-forked, in a session of its own,
        its standard streams on /dev/null, so neither our process group nor our pipes lead to it. Its pid is
        logged with ours and our PID namespace's id: the bench's stop series wait until both are gone.

Only the standard library: the interpreter starts without `site`, and the bench's variables come from the
wrapper, since the supervisor scrubs the environment it hands on.
"""

import time

T_PY = time.time()  # first instruction of the script, before any other import

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402


def record(path: str, **fields: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(fields) + "\n").encode())
    finally:
        os.close(fd)


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def daemon() -> int:
    """Start `sleep 600` double-forked and setsid'd; returns its pid once its parent has exited."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.execv("/bin/sleep", ["sleep", "600"])
        os.write(write_end, str(grandchild).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        pid = int(f.read())
    os.waitpid(middle, 0)  # the middle process is gone: the daemon's parent is now an init
    return pid


def main() -> int:
    log = os.environ["BENCH_FAKE_LOG"]
    try:
        with open(os.environ["BENCH_FAKE_MODE"]) as f:
            mode = f.read().strip() or "ok"
    except OSError:
        mode = "ok"
    argv = sys.argv[1:]
    session = ""
    for flag in ("--session-id", "--resume"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            session = argv[argv.index(flag) + 1]
    run_id = os.environ.get("AGENT_ROOMS_RUN_ID", "")
    exec_t = float(os.environ.get("BENCH_EXEC_T", "nan").replace(",", "."))

    def interrupted(_signum: int, _frame: object) -> None:
        t = time.time()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        record(log, event="sigint", run_id=run_id, pid=os.getpid(), t=t)
        emit({"type": "result", "subtype": "error_during_execution", "is_error": True, "session_id": session})
        os._exit(0)

    tool = 0
    if mode in ("hang_tool", "wedged"):
        import subprocess  # only here: the other modes start faster without it

        tool = subprocess.Popen(["sleep", "120"], start_new_session=True, stdin=subprocess.DEVNULL).pid
    orphan = None
    if mode in ("hang", "hang_tool", "orphan"):
        signal.signal(signal.SIGINT, interrupted)
    elif mode == "wedged":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "orphan":
        orphan = daemon()
    sys.stdin.read()  # the prompt, up to EOF
    # The supervisor checks that Claude connected our MCP server; this fake does not start it (no callback).
    servers = [{"name": "agent-rooms", "status": "connected"}]
    emit({"type": "system", "subtype": "init", "session_id": session, "tools": [], "mcp_servers": servers})
    pid_ns = os.readlink("/proc/self/ns/pid")
    record(log, event="start", run_id=run_id, pid=os.getpid(), mode=mode, t_exec=exec_t, t_py=T_PY, tool=tool,
           orphan=orphan, pid_ns=pid_ns)  # fmt: skip
    if mode != "ok":
        deadline = time.monotonic() + 120  # a bound, should the bench die before stopping us
        while time.monotonic() < deadline:
            time.sleep(1.0)  # a signal interrupts the sleep and the handler runs at once (PEP 475)
        return 1
    emit({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}})
    emit({"type": "result", "subtype": "success", "is_error": False, "result": "ok", "session_id": session})
    return 0


if __name__ == "__main__":
    sys.exit(main())
