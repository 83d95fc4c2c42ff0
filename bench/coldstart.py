"""stdio cold start (DESIGN §11): our stdio `serve` against a bare SDK stdio server; part of `make bench`.

What a client pays each time it launches the hub over stdio (Claude Code does, per session): from spawning
`python -m agent_rooms_mcp serve` (a real home, the agent's token in a 0600 file named by
AGENT_ROOMS_TOKEN_FILE, as `agent-rooms connect` configures a client) until the `initialize` answer, and until
the first `tools/list` answer. The baseline is bench/echo_server.py --stdio (`MCPServer.run("stdio")`), spawned
and driven the same way. The two are interleaved run by run (order alternated), the ratio taken within each
pair, and the medians reported. The process's CPU (its own and its children's, from wait4) is reported too.

`--instructions` counts instead, under callgrind, the instructions each server runs from its start to its first
`tools/list` answer (dumped there with callgrind_control): deterministic, where the timed figures move with the
box's load. It takes a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world import AGENT, build_hub

BENCH = Path(__file__).resolve().parent
HELLO = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "agent-rooms-bench", "version": "0"},
    },
}
READY = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
# A start that hangs is a failure, not a long wait: the process is killed after this long.
STUCK_S = 60.0


def _send(stdin: IO[bytes], *messages: dict[str, Any]) -> None:
    stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
    stdin.flush()


def _reply(stdout: IO[bytes], rpc_id: int) -> dict[str, Any]:
    while True:
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the server closed stdout before answering request {rpc_id}")
        message = json.loads(line)
        if message.get("id") == rpc_id:
            if "result" not in message:
                raise RuntimeError(f"request {rpc_id} failed: {message}")
            return dict(message["result"])


def start_once(argv: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """One spawn: seconds to the initialize answer and to the first tools/list answer, and the process's CPU."""
    with log.open("ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    watchdog = threading.Timer(STUCK_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        _send(proc.stdin, HELLO)
        _reply(proc.stdout, 1)
        initialized = time.perf_counter() - t0
        _send(proc.stdin, READY, LIST)
        tools = _reply(proc.stdout, 2)["tools"]
        listed = time.perf_counter() - t0
        if not tools:
            raise RuntimeError("tools/list answered no tools")
        proc.stdin.close()  # EOF on stdin ends a stdio server
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        watchdog.cancel()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    return {
        "initialize_s": initialized,
        "tools_list_s": listed,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "tools": len(tools),
    }


def instructions_to_list(argv: list[str], env: dict[str, str], out: Path) -> int:
    """Instructions one start under callgrind runs up to its first tools/list answer."""
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no"]
    with (out.parent / f"{out.name}.log").open("ab") as err:
        proc = subprocess.Popen(grind + argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        _send(proc.stdin, HELLO)
        _reply(proc.stdout, 1)
        _send(proc.stdin, READY, LIST)
        _reply(proc.stdout, 2)
        subprocess.run(["callgrind_control", "--dump=listed", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.close()
        proc.wait(STUCK_S * 5)  # valgrind is slow to finish too
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    for f in out.parent.glob(f"{out.name}.{proc.pid}*"):
        lines = f.read_text(errors="replace").splitlines()
        if "desc: Trigger: dump listed" in lines:
            return int(next(line for line in lines if line.startswith("totals:")).split()[1])
    raise RuntimeError(f"callgrind wrote no dump at the tools/list answer for {argv}")


def run(runs: int = 12, *, instructions: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agent-rooms-coldstart-") as tmp:
        home = Path(tmp) / "home"
        tokens = asyncio.run(build_hub(home))
        token_file = Path(tmp) / f"{AGENT}.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(tokens[AGENT])
        # PYTHONDONTWRITEBYTECODE (set on some machines) is dropped: with it the untimed first start writes no
        # .pyc, so every timed start compiled our ~100 modules from source again (an editable install has none)
        # while the SDK's site-packages came compiled from pip: 1.8× the SDK's start rather than 1.4×, measured
        # side by side. An installed hub has its .pyc files.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("AGENT_ROOMS_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update(
            AGENT_ROOMS_HOME=str(home),
            AGENT_ROOMS_TOKEN_FILE=str(token_file),
            PYTHONPATH=os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p),
        )
        argvs = {
            "ours": [sys.executable, "-m", "agent_rooms_mcp", "serve"],
            "sdk": [sys.executable, str(BENCH / "echo_server.py"), "--stdio"],
        }
        # One start of each first, untimed: the first spawn after a build pays for compiling .pyc files (and ours
        # for writing its tools' schemas beside them, tool_cache.py), as an installed hub's first start does.
        for name, argv in argvs.items():
            start_once(argv, env, Path(tmp) / f"{name}.log")
        if instructions:
            counts = {name: instructions_to_list(argv, env, Path(tmp) / name) for name, argv in argvs.items()}
            return {"method": {"instructions": True}, "instructions_to_list": counts}
        rows: list[dict[str, Any]] = []
        for r in range(runs):
            order = ("ours", "sdk") if r % 2 == 0 else ("sdk", "ours")
            for name in order:
                try:
                    cell = start_once(argvs[name], env, Path(tmp) / f"{name}.log")
                except BaseException:
                    tail = (Path(tmp) / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
                    print(f"--- {name} stderr tail ---\n" + "\n".join(tail), file=sys.stderr)
                    raise
                rows.append({"run": r, "server": name, **cell})
            print(
                f"  cold start {r + 1}/{runs}: ours {rows[-2 if order[0] == 'ours' else -1]['tools_list_s'] * 1e3:.0f}"
                f" ms, sdk {rows[-1 if order[0] == 'ours' else -2]['tools_list_s'] * 1e3:.0f} ms (to tools/list)",
                file=sys.stderr,
                flush=True,
            )
    return {"method": {"runs": runs}, "summary": summarize(rows), "raw": rows}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("initialize_s", "tools_list_s", "cpu_s"):
        ours = {r["run"]: r[key] for r in rows if r["server"] == "ours"}
        sdk = {r["run"]: r[key] for r in rows if r["server"] == "sdk"}
        ratios = [ours[k] / sdk[k] for k in ours if k in sdk]
        out[key] = {
            "ours_median": statistics.median(ours.values()),
            "sdk_median": statistics.median(sdk.values()),
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        }
    return out


def print_table(r: dict[str, Any]) -> None:
    if "instructions_to_list" in r:
        ours, sdk = r["instructions_to_list"]["ours"], r["instructions_to_list"]["sdk"]
        print("\nstdio cold start: instructions from spawn to the first tools/list answer (callgrind)")
        print(f"ours {ours / 1e9:.3f} G, bare SDK {sdk / 1e9:.3f} G: {ours / sdk:.3f}×")
        return
    print(f"\nstdio cold start: spawn -> answer, median of {r['method']['runs']} interleaved runs each")
    print("| to | ours ms | bare SDK ms | ratio [min–max] |")
    print("|---|---|---|---|")
    for key, label in (("initialize_s", "initialize"), ("tools_list_s", "first tools/list"), ("cpu_s", "CPU (s→ms)")):
        s = r["summary"][key]
        ratio = s["ratio"]
        print(
            f"| {label} | {s['ours_median'] * 1e3:.0f} | {s['sdk_median'] * 1e3:.0f} | "
            f"{ratio['median']:.2f} [{ratio['min']:.2f}–{ratio['max']:.2f}] |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    ap.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead")
    a = ap.parse_args()
    r = run(a.runs, instructions=a.instructions)
    print_table(r)
    if a.out is not None:
        a.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
