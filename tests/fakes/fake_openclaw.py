"""A fake `openclaw` (2026.9.6) for hermetic supervisor tests: research/wake.md §3 and §7.1.

Only `openclaw agent exec --message-file - --cwd DIR --json [--session-id ID] [--timeout S]` is faked: the
prompt comes on stdin and one JSON envelope is printed at the end (no streaming).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from common import Fake, Interrupted, Terminated, read_stdin, sleep_forever, uuid7

VALUE_FLAGS = {"--message-file", "--cwd", "--session-id", "--timeout", "--model", "--state-dir"}
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
    return o


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
    if s in ("ok", "dump_env"):
        fake.log(**({"env": dict(os.environ)} if s == "dump_env" else {}))
        usage = {"input": 1, "output": 1, "total": 2}
        ok = {"ok": True, "status": "ok", "final": "done", "payloads": [{"text": "done"}], "usage": usage}
        fake.emit(envelope(session_id, **ok, costUsd=0))
        return 0
    if s == "rate_limit":
        fake.log()
        error = {"message": "rate limit", "kind": "rate_limit"}
        fake.emit({"ok": False, "status": "error", "error": error, "model": None, "provider": None})
        return 1
    if s in ("hang", "ignore_sigint"):
        fake.log()
        fake.on_sigint("ignore" if s == "ignore_sigint" else "raise")
        fake.on_sigterm("raise")
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
