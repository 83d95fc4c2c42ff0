"""A fake `codex` (Codex CLI 0.169.0) for hermetic supervisor tests: research/wake.md §2 and §7.1.

Run as `python fake_codex.py exec --json ... -` (see common.write_wrapper). It checks the argv the supervisor
builds (§0.3), reads the prompt from stdin, keeps a rollout under
$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<ts>-<thread_id>.jsonl, and prints `--json` events per FAKE_SCENARIO.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common import (
    FLOOD_BYTES,
    Fake,
    Hooks,
    Interrupted,
    McpServer,
    append_jsonl,
    now_iso,
    read_jsonl,
    read_stdin,
    run_callback,
    sleep_forever,
    uuid7,
)

SERVER = "agent_rooms"
RATE_LIMIT = "exceeded retry limit, last status: 429 Too Many Requests"
OVERLOADED = "Selected model is at capacity. Please try a different model."
AUTH = "unexpected status 401 Unauthorized: Incorrect API key provided"
SANDBOXES = ("read-only", "workspace-write", "danger-full-access")
OK_LIKE = {"ok", "reply", "dump_env", "hang_after_result", "garbage"}
USAGE = "\n\nUsage: codex exec [OPTIONS] [PROMPT]\n\nFor more information, try '--help'."


class ArgvError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def toml_value(text: str) -> Any:
    """Codex parses a -c value as TOML and falls back to the raw string when that fails."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = [p.strip().strip('"') for p in key.split(".")]
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def take_value(o: dict[str, Any], flag: str, value: str) -> None:
    if flag in ("-s", "--sandbox"):
        if value not in SANDBOXES:
            raise ArgvError(f"error: invalid value '{value}' for '--sandbox <SANDBOX_MODE>'{USAGE}")
        o["sandbox"] = value
    elif flag in ("-m", "--model"):
        o["model"] = value
    elif flag in ("-c", "--config"):
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise ArgvError(f"Error: Invalid override (missing '='): {value}", 1)
        o["overrides"].append(value)
        set_dotted(o["config"], key.strip(), toml_value(raw.strip()))


def parse_argv(argv: list[str]) -> dict[str, Any]:
    if argv[:1] != ["exec"]:
        raise ArgvError(f"fake-codex: only `codex exec ...` is faked, got {argv[:1]}")
    o: dict[str, Any] = {"config": {}, "overrides": [], "positionals": []}
    args, i = argv[1:], 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in ("-s", "--sandbox", "-m", "--model", "--color", "-c", "--config"):
            if not eq:
                if i + 1 >= len(args):
                    raise ArgvError(f"error: a value is required for '{flag}' but none was supplied{USAGE}")
                i += 1
                inline = args[i]
            take_value(o, flag, inline)
        elif flag in ("--json", "--experimental-json") and not eq:
            o["json"] = True
        elif flag == "--skip-git-repo-check" and not eq:
            o["skip_git"] = True
        elif flag in ("--dangerously-bypass-approvals-and-sandbox", "--yolo") and not eq:
            o["bypass"] = True
        elif arg == "-" or not arg.startswith("-"):
            o["positionals"].append(arg)
        else:
            raise ArgvError(f"error: unexpected argument '{flag}' found{USAGE}")
        i += 1
    return o


def mcp_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    entry = (config.get("mcp_servers") or {}).get(SERVER)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ArgvError(f"Error loading config: mcp_servers.{SERVER}: expected a table", 1)
    command, args, env = entry.get("command"), entry.get("args", []), entry.get("env", {})
    if not isinstance(command, str) or not command:
        raise ArgvError(f"Error loading config: mcp_servers.{SERVER}.command: expected a string, got {command!r}", 1)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ArgvError(f"Error loading config: mcp_servers.{SERVER}.args: expected an array of strings", 1)
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ArgvError(f"Error loading config: mcp_servers.{SERVER}.env: expected a table of strings", 1)
    return {"command": command, "args": args, "env": env}


class Codex:
    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.scenario = fake.scenario
        self.opts: dict[str, Any] = {}
        self.thread_id = ""
        self.rollout: Path | None = None
        self.items = 0

    def validate(self) -> dict[str, Any]:
        o = parse_argv(self.fake.argv)
        if o.get("bypass") and o.get("sandbox"):
            raise ArgvError(
                "error: the argument '--dangerously-bypass-approvals-and-sandbox' cannot be used with "
                f"'--sandbox <SANDBOX_MODE>'{USAGE}"
            )
        if not o.get("json"):
            raise ArgvError("fake-codex: --json is required")
        if not o.get("skip_git"):
            raise ArgvError("Not inside a trusted directory and --skip-git-repo-check was not specified.", 1)
        if o.get("bypass"):
            o["mode"] = "full"
        elif o.get("sandbox") == "read-only":
            o["mode"] = "contain"
        else:
            raise ArgvError(
                "fake-codex: need --dangerously-bypass-approvals-and-sandbox (full) or --sandbox read-only (contain)"
            )
        pos = o["positionals"]
        if pos == ["-"]:
            o["resume"] = None
        elif len(pos) == 3 and pos[0] == "resume" and pos[2] == "-":
            o["resume"] = pos[1]
        else:
            raise ArgvError(f"fake-codex: positionals must be `-` or `resume <thread_id> -` (prompt on stdin): {pos}")
        o["mcp"] = mcp_settings(o["config"])
        return o

    # events -----------------------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        self.fake.emit(event)
        if self.rollout is not None and event["type"] in ("turn.completed", "turn.failed", "item.completed"):
            append_jsonl(self.rollout, {"timestamp": now_iso(), "type": "event_msg", "payload": event})

    def item(self, body: dict[str, Any], *, started: bool = False) -> dict[str, Any]:
        item = {"id": f"item_{self.items}", **body}
        if not started:
            self.items += 1
        self.emit({"type": "item.started" if started else "item.completed", "item": item})
        return item

    def start(self) -> None:
        self.emit({"type": "thread.started", "thread_id": self.thread_id})
        self.emit({"type": "turn.started"})

    def completed(self, text: str) -> int:
        self.item({"type": "agent_message", "text": text})
        usage = {"input_tokens": 10, "cached_input_tokens": 0, "cache_write_input_tokens": 0, "output_tokens": 5}
        self.emit({"type": "turn.completed", "usage": {**usage, "reasoning_output_tokens": 0}})
        return 0

    def failed(self, message: str, *, error_line: bool = True) -> int:
        if error_line:
            self.emit({"type": "error", "message": message})
        self.emit({"type": "turn.failed", "error": {"message": message}})
        return 1

    # run --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.opts = self.validate()
        except ArgvError as exc:
            return self.fake.fail(str(exc), exc.code)
        prompt = read_stdin()
        self.fake.log_fields.update(stdin=prompt, mode=self.opts["mode"], config=self.opts["config"])
        if not prompt.strip():
            return self.fake.fail("No prompt provided via stdin.")
        home = os.environ.get("CODEX_HOME") or (
            str(Path(os.environ["HOME"]) / ".codex") if os.environ.get("HOME") else None
        )
        if home is None:
            return self.fake.fail("fake-codex: neither CODEX_HOME nor HOME is set")
        sessions = Path(home) / "sessions"
        resume = self.opts["resume"]
        if resume:
            found = sorted(sessions.glob(f"*/*/*/rollout-*-{resume}.jsonl")) if sessions.is_dir() else []
            if self.scenario == "resume_missing" or not found:
                return self.fake.fail(f"Error: thread/resume: no rollout found for thread id {resume}")
            self.thread_id, self.rollout = resume, found[0]
            history = read_jsonl(self.rollout)
            turns = sum(1 for h in history if h.get("type") == "user_message")
            aborted = any(h.get("type") == "turn_aborted" for h in history)
            self.fake.log_fields.update(resumed=True, turn=turns + 1, prior_interrupted=aborted)
        else:
            if self.scenario == "resume_missing":
                return self.fake.fail("Error: thread/resume: no rollout found for thread id (none)")
            self.thread_id = uuid7()
            stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
            self.rollout = sessions / time.strftime("%Y/%m/%d") / f"rollout-{stamp}-{self.thread_id}.jsonl"
            meta = {"id": self.thread_id, "cwd": os.getcwd(), "cli_version": "0.169.0"}
            append_jsonl(self.rollout, {"timestamp": now_iso(), "type": "session_meta", "payload": meta})
            self.fake.log_fields.update(resumed=False, turn=1, prior_interrupted=False)
        self.fake.log_fields["thread_id"] = self.thread_id
        append_jsonl(self.rollout, {"timestamp": now_iso(), "type": "user_message", "message": prompt})
        return self.scenario_run(prompt)

    def scenario_run(self, prompt: str) -> int:
        s = self.scenario
        if s in OK_LIKE:
            return self.ok(prompt)
        if s in ("hang", "ignore_sigint"):
            return self.hang()
        self.fake.log()
        if s == "rate_limit":
            self.start()
            self.emit({"type": "error", "message": f"Reconnecting... 1/1 ({RATE_LIMIT})"})
            return self.failed(RATE_LIMIT)
        if s == "usage_limit":
            self.start()
            return self.failed(f"You’ve hit your usage limit. Try again at {self.reset_time()}.")
        if s == "overloaded":
            self.start()
            return self.failed(OVERLOADED)
        if s == "auth":
            self.start()
            return self.failed(AUTH)
        if s == "flood":
            self.start()
            return self.completed("x" * FLOOD_BYTES)
        if s == "no_newline":
            self.start()
            self.fake.raw('{"type":"item.completed","item":{"id":"item_0","type":"agent_message","text":"cut')
            return 0
        return self.fake.fail(f"fake-codex: unknown FAKE_SCENARIO {s!r}", 2)

    def reset_time(self) -> str:
        reset_in = self.fake.knob("FAKE_RESET_IN")
        if not reset_in:
            return "9:13 AM"
        try:
            tz = ZoneInfo(os.environ.get("TZ") or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            tz = ZoneInfo("UTC")
        when = datetime.fromtimestamp(time.time() + int(reset_in), tz)
        return f"{when.hour % 12 or 12}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}"

    def ok(self, prompt: str) -> int:
        mcp = self.opts["mcp"]
        wanted = self.scenario == "reply" or self.fake.knob("FAKE_REPLY", "1") != "0"
        dump = {"env": dict(os.environ)} if self.scenario == "dump_env" else {}
        if mcp is None or not wanted:
            self.fake.log(**dump)
            self.start()
            if self.scenario == "reply":
                return self.failed(f"fake-codex: no -c mcp_servers.{SERVER}.command given")
            return self.after_ok("done")
        # Codex hands its MCP servers only HOME, LANG and PATH plus the configured env (wake.md §2.7).
        base = {k: os.environ[k] for k in ("HOME", "LANG", "PATH") if k in os.environ}
        server = McpServer(command=mcp["command"], args=mcp["args"], env={**base, **mcp["env"]})
        self.start()
        cb = run_callback(self.fake, server, prompt, CodexHooks(self))
        self.fake.log(**cb.log_fields(), **dump)
        if cb.error and self.scenario == "reply":
            return self.failed(f"fake-codex: agent_rooms callback failed: {cb.error}")
        return self.after_ok(cb.summary())

    def after_ok(self, text: str) -> int:
        if self.scenario == "garbage":
            self.fake.raw("[codex] WARN sandbox: landlock unavailable; this line is not JSON\n")
            self.fake.raw("{not json either\n")
        self.completed(text)
        if self.scenario == "hang_after_result":
            self.fake.on_sigint("raise")
            try:
                sleep_forever()
            except Interrupted:
                return 1
        return 0

    def hang(self) -> int:
        self.fake.log()
        # A one-shot ctrl_c listener: the first SIGINT interrupts the turn, later ones do nothing.
        self.fake.on_sigint("ignore" if self.scenario == "ignore_sigint" else "raise")
        try:
            self.start()
            self.item(
                {
                    "type": "command_execution",
                    "command": "/bin/bash -lc 'tail -f /dev/null'",
                    "aggregated_output": "",
                    "exit_code": None,
                    "status": "in_progress",
                },
                started=True,
            )
            sleep_forever()
        except Interrupted:
            if self.rollout is not None:
                append_jsonl(self.rollout, {"timestamp": now_iso(), "type": "turn_aborted", "reason": "interrupted"})
            time.sleep(0.05)
            return 1  # no terminal event on interrupt
        return 0


class CodexHooks(Hooks):
    """Render the callback as Codex does: mcp_tool_call items (no raw results on stdout)."""

    def __init__(self, codex: Codex) -> None:
        self.c = codex

    def body(self, tool: str, arguments: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "type": "mcp_tool_call",
            "server": SERVER,
            "tool": tool,
            "arguments": arguments,
            "result": None,
            "error": None,
            "status": status,
        }

    def call_started(self, tool: str, arguments: dict[str, Any]) -> None:
        self.c.item(self.body(tool, arguments, "in_progress"), started=True)

    def call_finished(self, tool: str, arguments: dict[str, Any], ok: bool, summary: str) -> None:
        body = self.body(tool, arguments, "completed" if ok else "failed")
        if not ok:
            body["error"] = {"message": summary}
        self.c.item(body)


def main() -> int:
    if sys.argv[1:2] == ["mcp"]:  # configuration, not a run: `codex mcp add|get|list|remove`
        import mcp_config

        return mcp_config.codex(sys.argv[2:])
    if sys.argv[1:2] in (["--version"], ["-V"]):
        print("codex-cli 0.169.0")
        return 0
    fake = Fake.start("codex")
    try:
        return Codex(fake).run()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
