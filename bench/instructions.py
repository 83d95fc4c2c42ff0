"""Instructions per call under callgrind: the HTTP rows of DESIGN §11 counted, not timed.

On a shared 2-core VM the same cell's CPU time moves ±20-40 % from round to round, and under another session's
load much more. Valgrind's callgrind counts the instructions a process executes, which do not depend on what else
the machine does: the same code, inputs and environment give the same count (seen here twice, with the other core
loaded). It is not CPU time (cache misses and syscalls' kernel time are not in it), so it complements the timed
rows rather than replacing them; a change that moves one and not the other is worth a second look.

Both servers run under `valgrind --tool=callgrind --instr-atstart=no`, each in its own process, served exactly as
in the timed rows (`serve --http`, bench/echo_server.py). After a warm-up, collection is switched on with
`callgrind_control -i on` around N calls sent over one keep-alive connection by bench/raw_client.py, then off,
and the counters are dumped: instructions ÷ N, per tool, ÷ echo's. Our server runs with its supervisor off
(`AGENT_ROOMS_SUPERVISOR=0`): callgrind counts every instruction of the process while it collects, and the
supervisor's 20 looks a second would add what a slower run's longer seconds hold, which is not a count of the
calls.

Skipped, saying so, where valgrind is not installed (Debian: `apt-get install valgrind`).

Usage: python bench/instructions.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from raw_client import Connection, tool_call
from wake import free_port, wait_port
from world import AGENT, ROOM, UNLIMITED_RATES, build_hub

BENCH = Path(__file__).resolve().parent
TEXT = "hello from the agent-rooms bench, " + "x" * 30
PREFILL = 25  # posts before the reads, so read_messages returns a full page of 20


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _dumped(out: Path, name: str) -> int:
    """The instruction total of the dump named `name` among callgrind's files under `out`."""
    for f in out.glob("*.[0-9]*"):
        lines = f.read_text(errors="replace").splitlines()
        if f"desc: Trigger: dump {name}" in lines:
            return int(next(line for line in lines if line.startswith("totals:")).split()[1])
    raise RuntimeError(f"callgrind wrote no dump named {name}")


async def _measure(calls: int) -> dict[str, float]:
    home, out = Path(tempfile.mkdtemp(prefix="ar-bench-cg-")), Path(tempfile.mkdtemp(prefix="ar-bench-cg-out-"))
    tokens = await build_hub(home)
    env = {**os.environ, **UNLIMITED_RATES, "AGENT_ROOMS_HOME": str(home), "AGENT_ROOMS_SUPERVISOR": "0"}
    hub_port, echo_port = free_port(), free_port()
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    py = sys.executable
    hub = subprocess.Popen(
        [*grind, f"--callgrind-out-file={out / 'hub'}", py, "-m", "agent_rooms_mcp", "serve", "--http",
         "--host", "127.0.0.1", "--port", str(hub_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=BENCH.parent,
    )  # fmt: skip
    echo = subprocess.Popen(
        [*grind, f"--callgrind-out-file={out / 'echo'}", py, str(BENCH / "echo_server.py"), str(echo_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=BENCH.parent,
    )  # fmt: skip
    try:
        # Under valgrind a server takes a minute or more to start.
        await wait_port(hub_port, hub, timeout_s=300)
        await wait_port(echo_port, echo, timeout_s=300)
        token = tokens[AGENT]
        arguments: dict[str, dict[str, Any]] = {
            "whoami": {},
            "post_message": {"room": ROOM, "text": TEXT},
            "read_messages": {"room": ROOM, "limit": 20},
        }
        requests = {
            "echo": (echo, echo_port, tool_call(echo_port, "echo", {"text": TEXT})),
            # The SDK alone sending read_messages' answer (bench/echo_server.py), for reference beside it.
            "echo_page": (echo, echo_port, tool_call(echo_port, "echo_page", {"text": TEXT})),
        }
        for tool, args in arguments.items():
            requests[tool] = (hub, hub_port, tool_call(hub_port, tool, args, token=token))
        conn = await Connection.open(hub_port)
        for _ in range(PREFILL):
            await conn.call(requests["post_message"][2])
        await conn.close()
        for name, (proc, port, request) in requests.items():
            # A connection per tool, opened just before: under valgrind a slow minute elsewhere would let an idle
            # one meet uvicorn's keep-alive timeout.
            conn = await Connection.open(port)
            for _ in range(10):
                await conn.call(request)
            _control(proc.pid, "-i", "on")
            for _ in range(calls):
                await conn.call(request)
            _control(proc.pid, "-i", "off")
            _control(proc.pid, "-d", name)
            await conn.close()
        return {name: _dumped(out, name) / calls for name in requests}
    finally:
        for proc in (hub, echo):
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def run(calls: int = 100) -> dict[str, Any]:
    """Instructions per call of each tool over HTTP and its ratio to echo's, or why it was skipped."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian: apt-get install valgrind)"
        print(f"instructions: skipped: {reason}")
        return {"skipped": reason}
    print(f"instructions: {calls} calls per tool under callgrind (a few minutes)")
    counts = asyncio.run(_measure(calls))
    echo = counts["echo"]
    rows = [
        {"tool": tool, "instructions_per_call": round(n), "ratio_to_echo": round(n / echo, 3)}
        for tool, n in counts.items()
    ]
    print("\nHTTP, instructions per call under callgrind (deterministic; not CPU time)")
    print("| tool | instructions per call | ÷ echo |\n|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['instructions_per_call']:,} | {r['ratio_to_echo']:.2f} |")
    return {"calls": calls, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100, help="calls per tool while counting")
    run(ap.parse_args().calls)


if __name__ == "__main__":
    main()
