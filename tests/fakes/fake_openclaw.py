"""A fake `openclaw` (2026.9.6) for hermetic supervisor tests: research/wake.md §3 and §7.1.

Only `openclaw agent exec --message-file - --cwd DIR --json [--session-id ID] [--timeout S] [--config PATH]` is
faked: the prompt comes on stdin and one JSON envelope is printed at the end (no streaming). MCP servers come
from the config file's `mcp.servers` (docs: gateway/configuration-reference "MCP"); a `$include` must name an
existing file. The "ok"-like scenarios call back into the agent-rooms server found there, as the real CLI's
embedded runtime would, starting it with OpenClaw's environment plus the server's `env`.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from common import Fake, Hooks, Interrupted, McpServer, Terminated, read_stdin, run_callback, sleep_forever, uuid7

SERVER = "agent-rooms"
VALUE_FLAGS = {"--message-file", "--cwd", "--session-id", "--timeout", "--model", "--state-dir", "--config"}
BOOL_FLAGS = {"--json", "--auth-env-only"}


class ArgvError(Exception):
    pass


def parse_argv(argv: list[str]) -> dict[str, Any]:
    if argv[:2] != ["agent", "exec"]:
        raise ArgvError(f"fake-openclaw: only `openclaw agent exec ...` is faked, got {argv[:2]}")
    o: dict[str, Any] = {}
    args, i = argv[2:], 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in BOOL_FLAGS and not eq:
            o[flag[2:]] = True
        elif flag in VALUE_FLAGS:
            if not eq and i + 1 >= len(args):
                raise ArgvError(f"error: option '{flag} <value>' argument missing")
            if not eq:
                i += 1
            o[flag[2:]] = inline if eq else args[i]
        elif arg.startswith("-"):
            raise ArgvError(f"error: unknown option '{flag}'")
        else:
            raise ArgvError(f"fake-openclaw: unexpected argument {arg!r}: the prompt must come on stdin")
        i += 1
    if o.get("message-file") != "-":
        raise ArgvError("fake-openclaw: --message-file - is required (prompt on stdin)")
    if not o.get("json"):
        raise ArgvError("fake-openclaw: --json is required")
    if not o.get("cwd"):
        raise ArgvError("fake-openclaw: --cwd DIR is required")
    if not os.path.isdir(o["cwd"]):
        raise ArgvError(f"error: --cwd {o['cwd']}: not a directory")
    if "timeout" in o:
        try:
            o["timeout"] = float(o["timeout"])
        except ValueError:
            raise ArgvError(f"error: option '--timeout <seconds>' argument '{o['timeout']}' is invalid") from None
    if "config" in o:
        o["mcp"] = load_config(o["config"])
    return o


def load_config(value: str) -> McpServer | None:
    """The agent-rooms entry of the config's mcp.servers, or None when it names none."""
    path = Path(value)
    try:
        st = path.stat()
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArgvError(f"Config invalid: {value}: {exc}") from None
    if st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
        raise ArgvError(f"fake-openclaw: --config {value} must be a regular 0600 file: it names a token file")
    include = config.get("$include")
    if include is not None and not (isinstance(include, str) and Path(include).is_file()):
        raise ArgvError(f"Config invalid: $include {include!r}: file not found")
    entry = ((config.get("mcp") or {}).get("servers") or {}).get(SERVER)
    if entry is None:
        return None
    args, env = entry.get("args") or [], entry.get("env") or {}
    if not isinstance(entry.get("command"), str) or not all(isinstance(a, str) for a in args):
        raise ArgvError(f"Config invalid: mcp.servers.{SERVER}: command must be a string, args strings")
    return McpServer(command=entry["command"], args=list(args), env={**os.environ, **env})


def envelope(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "provider": "fake", "sessionId": session_id, **fields}


def run(fake: Fake) -> int:
    try:
        o = parse_argv(fake.argv)
    except ArgvError as exc:
        return fake.fail(str(exc))
    prompt = read_stdin()
    session_id = o.get("session-id") or uuid7()
    fake.log_fields.update(stdin=prompt, session_id=session_id, openclaw_cwd=o["cwd"])
    if not prompt.strip():
        return fake.fail("error: empty message")
    s = fake.scenario
    if s in ("ok", "dump_env", "reply"):
        dump = {"env": dict(os.environ)} if s == "dump_env" else {}
        final = "done"
        server = o.get("mcp")
        if server is not None and (s == "reply" or fake.knob("FAKE_REPLY", "1") != "0"):
            cb = run_callback(fake, server, prompt, Hooks())
            fake.log(**cb.log_fields(), **dump)
            final = cb.summary()
            if cb.error and s == "reply":
                error = {"message": final, "kind": "tool"}
                fake.emit(envelope(session_id, ok=False, status="error", final=final, payloads=[], error=error))
                return 1
        elif s == "reply":
            return fake.fail(f"fake-openclaw: no mcp.servers.{SERVER} in --config")
        fake.log(**dump)
        usage = {"input": 1, "output": 1, "total": 2}
        ok = {"ok": True, "status": "ok", "final": final, "payloads": [{"text": final}], "usage": usage}
        fake.emit(envelope(session_id, **ok, costUsd=0))
        return 0
    if s == "rate_limit":
        fake.log()
        error = {"message": "rate limit", "kind": "rate_limit"}
        fake.emit({"ok": False, "status": "error", "error": error, "model": None, "provider": None})
        return 1
    if s in ("hang", "ignore_sigint"):
        # Handlers first, then the log line: a test waits for the line before it signals (tests/test_fakes.py).
        fake.on_sigint("ignore" if s == "ignore_sigint" else "raise")
        fake.on_sigterm("raise")
        fake.log()
        timeout = o.get("timeout")
        try:
            sleep_forever(timeout if timeout is not None else 600)
        except Interrupted:
            return 130
        except Terminated:
            return 143
        if timeout is not None:
            error = {"message": f"timed out after {timeout:g}s", "kind": "timeout"}
            fake.emit(envelope(session_id, ok=False, status="timeout", final="", payloads=[], error=error))
            return 2
        return 0
    return fake.fail(f"fake-openclaw: unknown FAKE_SCENARIO {s!r}", 2)


def main() -> int:
    fake = Fake.start("openclaw")
    try:
        return run(fake)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
