"""A fake `claude` (Claude Code 2.1.330) for hermetic supervisor tests: research/wake.md §1 and §7.1.

Run as `python fake_claude.py ARGS` (see common.write_wrapper). It checks the argv the supervisor builds
(§0.1/§0.2), reads the prompt from stdin, keeps a transcript under
$CLAUDE_CONFIG_DIR/projects/<sanitised cwd>/<session>.jsonl, and prints stream-json lines per FAKE_SCENARIO.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import escapes
from common import (
    FLOOD_BYTES,
    Callback,
    Fake,
    Hooks,
    Interrupted,
    McpServer,
    Terminated,
    append_jsonl,
    is_uuid,
    new_uuid,
    now_iso,
    read_jsonl,
    read_stdin,
    run_callback,
    sanitize_cwd,
    sleep_forever,
)

VERSION = "2.1.330"
DEFAULT_MODEL = "claude-sonnet-4-5"
SERVER = "agent-rooms"
CONTAIN_TOOLS = {"Read", "Grep", "Glob"}
ALL_TOOLS = [
    "Task",
    "Bash",
    "Glob",
    "Grep",
    "ExitPlanMode",
    "Read",
    "Edit",
    "Write",
    "NotebookEdit",
    "WebFetch",
    "TodoWrite",
    "WebSearch",
    "BashOutput",
    "KillShell",
    "SlashCommand",
    "ScheduleWakeup",
    "CronCreate",
    "Monitor",
]
PERMISSION_MODES = ["acceptEdits", "auto", "bypassPermissions", "manual", "default", "dontAsk", "plan"]
BOOL_FLAGS = {"-p": "print", "--print": "print", "--verbose": "verbose", "--strict-mcp-config": "strict_mcp"}
BOOL_FLAGS["--dangerously-skip-permissions"] = "bypass"
VALUE_FLAGS = {
    "--output-format": "output_format",
    "--session-id": "session_id",
    "--resume": "resume",
    "-r": "resume",
    "--permission-mode": "permission_mode",
    "--append-system-prompt": "append_system_prompt",
    "--model": "model",
    "--max-turns": "max_turns",
}
# commander `<values...>` options: the first value is taken as is, then every following non-dash word.
VARIADIC_FLAGS = {
    "--mcp-config": "mcp_config",
    "--tools": "tools",
    "--allowedTools": "allowed",
    "--allowed-tools": "allowed",
    "--disallowedTools": "disallowed",
    "--disallowed-tools": "disallowed",
}
INTERRUPT_MARK = "[Request interrupted by user]"
EDE = "[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"
OVERLOADED = (
    "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment. "
    "If it persists, check status.claude.com."
)
OK_LIKE = {"ok", "reply", "dump_env", "hang_after_result", "garbage"}


class ArgvError(Exception):
    pass


def split_rules(values: list[str]) -> list[str]:
    """Claude's rule tokenizer: commas and spaces outside parentheses separate rules."""
    out, cur, depth = [], "", 0
    for ch in ",".join(values):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch in ", " and depth == 0:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def parse_argv(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {name: [] for name in VARIADIC_FLAGS.values()}
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in BOOL_FLAGS and not eq:
            opts[BOOL_FLAGS[flag]] = True
        elif flag in VALUE_FLAGS or flag in VARIADIC_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ArgvError(f"error: option '{flag} <value>' argument missing")
            if flag in VALUE_FLAGS:
                opts[VALUE_FLAGS[flag]] = value
            else:
                opts[VARIADIC_FLAGS[flag]].append(value)
                while not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    i += 1
                    opts[VARIADIC_FLAGS[flag]].append(argv[i])
        elif arg.startswith("-"):
            raise ArgvError(f"error: unknown option '{flag}'")
        else:
            raise ArgvError(f"fake-claude: unexpected argument {arg!r}: the prompt must come on stdin, not argv")
        i += 1
    return opts


def load_mcp_config(values: list[str]) -> dict[str, Any]:
    if len(values) != 1:
        raise ArgvError(f"fake-claude: expected exactly one --mcp-config file, got {len(values)}")
    value = values[0]
    if value.lstrip().startswith("{"):
        raise ArgvError("fake-claude: --mcp-config must be a file: inline JSON is visible on argv (wake.md §5.4)")
    path = Path(value)
    try:
        st = path.stat()
    except OSError:
        raise ArgvError(f"Error: Invalid MCP configuration:\nMCP config file not found: {value}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        raise ArgvError(f"fake-claude: --mcp-config {value} must be a regular 0600 file (mode {st.st_mode & 0o777:o})")
    try:
        cfg = json.loads(path.read_text())
        servers = cfg["mcpServers"]
        if not isinstance(servers, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ArgvError(f"Error: Invalid MCP configuration:\n{value}: mcpServers: expected an object") from None
    return servers


def stdio_server(servers: dict[str, Any], session_id: str) -> McpServer | None:
    """The agent-rooms entry as Claude would start it: our whole environment plus its `env` (wake.md §1.7)."""
    entry = servers.get(SERVER)
    if not isinstance(entry, dict) or entry.get("type", "stdio") != "stdio" or not entry.get("command"):
        return None
    args, env = entry.get("args") or [], entry.get("env") or {}
    if not all(isinstance(a, str) for a in args) or not all(isinstance(v, str) for v in env.values()):
        return None
    markers = {
        "CLAUDECODE": "1",
        "CLAUDE_CODE_ENTRYPOINT": "sdk-cli",
        "CLAUDE_CODE_SESSION_ID": session_id,
        "CLAUDE_PROJECT_DIR": os.getcwd(),
    }
    return McpServer(command=entry["command"], args=list(args), env={**os.environ, **markers, **env})


def _tool_allowed(rules: list[str], tool: str) -> bool:
    return any(r in (f"mcp__{SERVER}", f"mcp__{SERVER}__*", tool) for r in rules)


class Claude:
    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.scenario = fake.scenario
        self.opts: dict[str, Any] = {}
        self.mode = "full"
        self.session_id = ""
        self.model = DEFAULT_MODEL
        self.cwd = os.getcwd()
        self.transcript: Path | None = None
        self.turns = 0
        self.permission_denials: list[dict[str, Any]] = []
        self.started = time.monotonic()

    # argv -----------------------------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        o = parse_argv(self.fake.argv)
        if not o.get("print"):
            raise ArgvError("fake-claude: -p/--print is required (wakes run headless)")
        if o.get("output_format") != "stream-json":
            raise ArgvError(f"fake-claude: --output-format stream-json is required, got {o.get('output_format')!r}")
        if not o.get("verbose"):
            raise ArgvError("Error: When using --print, --output-format=stream-json requires --verbose")
        if o.get("session_id") and o.get("resume"):
            raise ArgvError(
                "Error: --session-id can only be used with --continue or --resume if --fork-session is also specified."
            )
        if not o.get("session_id") and not o.get("resume"):
            raise ArgvError("fake-claude: pass --session-id <uuid> (new session) or --resume <uuid>")
        if o.get("session_id") and not is_uuid(o["session_id"]):
            raise ArgvError("Error: Invalid session ID. Must be a valid UUID.")
        if not o.get("strict_mcp"):
            raise ArgvError("fake-claude: --strict-mcp-config is required")
        if not o["mcp_config"]:
            raise ArgvError("fake-claude: --mcp-config <0600 file> is required")
        o["servers"] = load_mcp_config(o["mcp_config"])
        pm = o.get("permission_mode")
        if pm is not None and pm not in PERMISSION_MODES:
            choices = ", ".join(m for m in PERMISSION_MODES if m != "default")
            raise ArgvError(
                f"error: option '--permission-mode <mode>' argument '{pm}' is invalid. Allowed choices are {choices}."
            )
        tools = split_rules(o["tools"]) if o["tools"] else None
        if o.get("bypass"):
            if tools is not None or pm not in (None, "bypassPermissions"):
                raise ArgvError("fake-claude: full mode is --dangerously-skip-permissions alone (no --tools/dontAsk)")
            self.mode = "full"
        elif tools is not None and set(tools) == CONTAIN_TOOLS and pm == "dontAsk":
            self.mode = "contain"
        else:
            raise ArgvError(
                "fake-claude: need --dangerously-skip-permissions (full) or "
                "--tools Read,Grep,Glob --permission-mode dontAsk (contain)"
            )
        if o.get("max_turns") is not None and not o["max_turns"].isdigit():
            raise ArgvError(f"error: option '--max-turns <turns>' argument '{o['max_turns']}' is invalid.")
        if self.scenario == "root_refusal" and o.get("bypass") and os.environ.get("IS_SANDBOX") != "1":
            raise ArgvError(
                "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
            )
        o["allowed_rules"] = split_rules(o["allowed"])
        o["disallowed_rules"] = split_rules(o["disallowed"])
        return o

    # lines ------------------------------------------------------------------------------------------------

    def base(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "uuid": new_uuid()}

    def builtin_tools(self) -> list[str]:
        names = sorted(CONTAIN_TOOLS) if self.mode == "contain" else list(ALL_TOOLS)
        gone = set(self.opts["disallowed_rules"])
        return [t for t in names if t not in gone]

    def init(self, status: str | None = None, mcp_tools: list[str] | None = None) -> None:
        servers = [
            {"name": name, "status": status or "connected", "source": "dynamic"} for name in self.opts["servers"]
        ]
        tools = self.builtin_tools() + [f"mcp__{SERVER}__{t}" for t in mcp_tools or []]
        self.fake.emit(
            {
                "type": "system",
                "subtype": "init",
                "cwd": self.cwd,
                "session_id": self.session_id,
                "tools": tools,
                "mcp_servers": servers,
                "model": self.model,
                "permissionMode": "dontAsk" if self.mode == "contain" else "bypassPermissions",
                "apiKeySource": "ANTHROPIC_API_KEY" if os.environ.get("ANTHROPIC_API_KEY") else "none",
                "claude_code_version": VERSION,
                "capabilities": ["interrupt_receipt_v1"],
                "uuid": new_uuid(),
            }
        )

    def assistant(self, content: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        line = {
            "type": "assistant",
            "message": {
                "id": f"msg_{new_uuid()[:8]}",
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": extra.pop("stop_reason", "end_turn"),
            },
            "parent_tool_use_id": None,
            **self.base(),
            **extra,
        }
        self.fake.emit(line)
        return line

    def text(self, text: str, **extra: Any) -> None:
        self.assistant([{"type": "text", "text": text}], **extra)

    def user(self, content: list[dict[str, Any]]) -> None:
        self.fake.emit(
            {
                "type": "user",
                "message": {"role": "user", "content": content},
                "parent_tool_use_id": None,
                **self.base(),
            }
        )

    def result(
        self,
        text: str,
        *,
        subtype: str = "success",
        is_error: bool = False,
        terminal_reason: str = "completed",
        api_error_status: int | None = None,
        errors: list[str] | None = None,
        num_turns: int = 1,
    ) -> None:
        line: dict[str, Any] = {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": int((time.monotonic() - self.started) * 1000),
            "duration_api_ms": 1,
            "num_turns": num_turns,
            "result": text,
            "stop_reason": None if is_error else "end_turn",
            "session_id": self.session_id,
            "total_cost_usd": 0,
            "usage": {"input_tokens": 10, "output_tokens": 5},
            "modelUsage": {},
            "permission_denials": self.permission_denials,
            "terminal_reason": terminal_reason,
            "api_error_status": api_error_status,
            "uuid": new_uuid(),
        }
        if errors is not None:
            line["errors"] = errors
        self.fake.emit(line)

    def api_retry(self, status: int, error: str, attempts: int = 2) -> None:
        for attempt in range(1, attempts + 1):
            self.fake.emit(
                {
                    "type": "system",
                    "subtype": "api_retry",
                    "attempt": attempt,
                    "max_retries": attempts,
                    "retry_delay_ms": 1000 * attempt,
                    "error_status": status,
                    "error": error,
                    **self.base(),
                }
            )

    def save(self, role: str, content: Any) -> None:
        if self.transcript is not None:
            append_jsonl(
                self.transcript,
                {
                    "type": role,
                    "sessionId": self.session_id,
                    "cwd": self.cwd,
                    "message": {"role": role, "content": content},
                    "uuid": new_uuid(),
                    "timestamp": now_iso(),
                },
            )

    # run ------------------------------------------------------------------------------------------------

    def run(self) -> int:
        if self.fake.argv[:1] in (["-v"], ["--version"]):
            print(f"{VERSION} (Claude Code)", flush=True)
            self.fake.log()
            return 0
        try:
            self.opts = self.validate()
        except ArgvError as exc:
            return self.fake.fail(str(exc))
        self.model = self.opts.get("model") or DEFAULT_MODEL
        prompt = read_stdin()
        self.fake.log_fields.update(stdin=prompt, mode=self.mode)
        if not prompt.strip():
            return self.fake.fail(
                "Error: Input must be provided either through stdin or as a prompt argument when using --print"
            )
        config_dir = os.environ.get("CLAUDE_CONFIG_DIR") or (
            str(Path(os.environ["HOME"]) / ".claude") if os.environ.get("HOME") else None
        )
        if config_dir is None:
            return self.fake.fail("fake-claude: neither CLAUDE_CONFIG_DIR nor HOME is set")
        project = Path(config_dir) / "projects" / sanitize_cwd(self.cwd)
        resume = self.opts.get("resume")
        if self.scenario == "resume_missing" or (
            resume and not (is_uuid(resume) and (project / f"{resume}.jsonl").exists())
        ):
            return self.resume_missing(resume or self.opts["session_id"])
        if resume:
            self.session_id = resume
            self.transcript = project / f"{resume}.jsonl"
            history = read_jsonl(self.transcript)
            prompts = [h for h in history if h.get("type") == "user" and isinstance(h["message"]["content"], str)]
            self.fake.log_fields.update(
                resumed=True,
                turn=len(prompts) + 1,
                prior_interrupted=any(h["message"]["content"] == INTERRUPT_MARK for h in prompts),
            )
        else:
            self.session_id = self.opts["session_id"]
            self.transcript = project / f"{self.session_id}.jsonl"
            if self.transcript.exists():
                return self.fake.fail(f"Error: Session ID {self.session_id} is already in use.")
            self.fake.log_fields.update(resumed=False, turn=1, prior_interrupted=False)
        self.fake.log_fields["session_id"] = self.session_id
        self.save("user", prompt)
        return self.scenario_run(prompt)

    def resume_missing(self, wanted: str) -> int:
        message = f"No conversation found with session ID: {wanted}"
        self.session_id = new_uuid()
        self.fake.log(session_id=None, resumed=True, error=message)
        self.result("", subtype="error_during_execution", is_error=True, terminal_reason="completed", errors=[message])
        sys.stderr.write(message + "\n")
        return 1

    def scenario_run(self, prompt: str) -> int:
        s = self.scenario
        if s in OK_LIKE:
            return self.ok(prompt)
        if s == "escape":  # a prompt-injected CLI's attempts, then the ordinary reply (tests/fakes/escapes.py)
            self.fake.log_fields["escapes"] = escapes.attempt_all(self.fake.knob("FAKE_ESCAPES_FILE"))
            return self.ok(prompt)
        if s in ("hang", "ignore_sigint", "tool_orphan", "fork_bomb", "daemon"):
            return self.hang()
        if s == "rate_limit":
            self.fake.log()
            self.init()
            self.api_retry(429, "rate_limit")
            msg = "API Error: Request rejected (429) · Rate limited. Please try again later."
            return self.api_error(msg, "rate_limit", 429)
        if s == "usage_limit":
            return self.usage_limit()
        if s == "overloaded":
            self.fake.log()
            self.init()
            self.api_retry(529, "overloaded")
            return self.api_error(OVERLOADED, "server_error", 529)
        if s == "auth":
            self.fake.log()
            self.init()
            return self.api_error("Not logged in · Please run /login", "authentication_failed", None)
        if s == "mcp_failed":
            self.fake.log()
            self.init(status="failed")
            return self.finish("done")
        if s == "flood":
            self.fake.log()
            self.init()
            self.text("x" * FLOOD_BYTES)
            return self.finish("done")
        if s == "no_newline":
            self.fake.log()
            self.init()
            self.fake.raw('{"type":"assistant","message":{"content":[{"type":"text","text":"cut')
            return 0
        if s == "root_refusal":  # validation passed: IS_SANDBOX=1 or contain mode
            return self.ok(prompt)
        return self.fake.fail(f"fake-claude: unknown FAKE_SCENARIO {s!r}", 2)

    def finish(self, text: str) -> int:
        self.text(text)
        self.save("assistant", text)
        self.result(text)
        return 0

    def api_error(self, text: str, error: str, status: int | None) -> int:
        self.text(text, error=error, is_api_error_message=True, api_error_status=status, stop_reason="stop_sequence")
        self.result(text, is_error=True, terminal_reason="api_error", api_error_status=status)
        return 1

    def usage_limit(self) -> int:
        reset_in = int(self.fake.knob("FAKE_RESET_IN") or 3600)
        resets_at = int(time.time()) + reset_in
        try:
            tz = ZoneInfo(os.environ.get("TZ") or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            tz = ZoneInfo("UTC")
        when = datetime.fromtimestamp(resets_at, tz)
        hour = f"{when.hour % 12 or 12}" + (f":{when.minute:02d}" if when.minute else "")
        text = f"You've hit your limit · resets {hour}{'am' if when.hour < 12 else 'pm'} ({tz.key})"
        self.fake.log(resets_at=resets_at)
        self.init()
        self.fake.emit(
            {
                "type": "rate_limit_event",
                "rate_limit_info": {
                    "status": "rejected",
                    "resetsAt": resets_at,
                    "rateLimitType": "five_hour",
                    "overageStatus": "rejected",
                    "isUsingOverage": False,
                },
                **self.base(),
            }
        )
        return self.api_error(text, "rate_limit", 429)

    def ok(self, prompt: str) -> int:
        server = stdio_server(self.opts["servers"], self.session_id)
        wanted = self.scenario == "reply" or self.fake.knob("FAKE_REPLY", "1") != "0"
        if self.scenario == "reply" and server is None:
            self.fake.log(mcp_error="no usable stdio 'agent-rooms' entry in --mcp-config")
            self.init(status="failed")
            return self.reply_failed("no usable stdio 'agent-rooms' entry in --mcp-config")
        if server is None or not wanted:
            if self.scenario == "dump_env":
                self.fake.log(env=dict(os.environ))
            self.fake.log()
            self.init()
            return self.after_ok("done")
        cb = run_callback(self.fake, server, prompt, ClaudeHooks(self))
        fields = cb.log_fields()
        if self.scenario == "dump_env":
            fields["env"] = dict(os.environ)
        self.fake.log(**fields)
        if cb.error and self.scenario == "reply":
            return self.reply_failed(cb.error)
        return self.after_ok(cb.summary(), cb)

    def reply_failed(self, error: str) -> int:
        text = f"agent-rooms callback failed: {error}"
        self.text(text)
        self.result(text, subtype="error_during_execution", is_error=True, errors=[text])
        return 1

    def after_ok(self, text: str, cb: Callback | None = None) -> int:
        if self.scenario == "garbage":
            self.fake.raw("[SandboxDebug] sandbox profile applied; this line is not JSON\n")
            self.fake.raw("{not json either\n")
        self.text(text)
        self.save("assistant", text)
        self.result(text, num_turns=1 + (2 if cb and cb.connected else 0))
        if self.scenario == "hang_after_result":
            self.fake.on_sigint("raise")
            self.fake.on_sigterm("raise")
            try:
                sleep_forever()
            except Interrupted:
                return 0
            except Terminated:
                return 143
        return 0

    def escape(self, s: str) -> None:
        child = [sys.executable, str(Path(__file__).with_name("child.py"))]
        quiet = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if s == "fork_bomb":
            bomb = subprocess.Popen([*child, "fork_bomb"], start_new_session=True, stdout=subprocess.DEVNULL, **quiet)
            self.fake.log(bomb_pid=bomb.pid)
            return
        # child.py reports the daemon's PID first and exits; the daemon has let go of the pipe by then.
        said = subprocess.run([*child, "double_fork_then_exit"], stdout=subprocess.PIPE, timeout=30, **quiet)
        self.fake.log(daemon_pid=json.loads(said.stdout.splitlines()[0])["pid"])

    def hang(self) -> int:
        s = self.scenario
        if s in ("fork_bomb", "daemon"):
            # A tool that forks for ever (each child in a session of its own), or one that leaves a daemon
            # behind by a double fork with setsid: only the run's cgroup reaches all of them. The CLI is wedged.
            self.escape(s)
            self.fake.on_sigint("ignore")
            self.fake.on_sigterm("ignore")
        elif s == "tool_orphan":
            # A Bash tool's shell in its own session: a process-group kill of the CLI never reaches it.
            sleep = shutil.which("sleep") or "/bin/sleep"
            orphan = subprocess.Popen(
                [sleep, "600"], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            # Wedged in the tool: only SIGKILL ends it, and the sleep survives unless the supervisor sweeps it.
            # Handlers before the log line, which a test may wait for before it signals.
            self.fake.on_sigint("ignore")
            self.fake.on_sigterm("ignore")
            self.fake.log(orphan_pid=orphan.pid)
        else:
            self.fake.on_sigint("ignore" if s == "ignore_sigint" else "raise")
            self.fake.on_sigterm("raise")
            self.fake.log()
        try:
            self.init()
            sleep_forever()
        except Interrupted:
            partial = "Let me look at th"
            self.text(partial, stop_reason=None)
            self.save("assistant", partial)
            self.user([{"type": "text", "text": INTERRUPT_MARK}])
            self.save("user", INTERRUPT_MARK)
            self.result(
                "",
                subtype="error_during_execution",
                is_error=True,
                terminal_reason="aborted_streaming",
                errors=[EDE],
                num_turns=2,
            )
            return 0
        except Terminated:
            return 143
        return 0


class ClaudeHooks(Hooks):
    """Render the callback as Claude does: init after MCP connect, tool_use / tool_result pairs."""

    def __init__(self, claude: Claude) -> None:
        self.c = claude
        self.ids: dict[str, str] = {}

    def connected(self, ok: bool, tools: list[str]) -> None:
        self.c.init(status="connected" if ok else "failed", mcp_tools=tools)

    def name(self, tool: str) -> str:
        return f"mcp__{SERVER}__{tool}"

    def permitted(self, tool: str) -> bool:
        name, o = self.name(tool), self.c.opts
        if any(r in (f"mcp__{SERVER}", f"mcp__{SERVER}__*", name) for r in o["disallowed_rules"]):
            return False
        return self.c.mode == "full" or _tool_allowed(o["allowed_rules"], name)

    def tool_use(self, tool: str, arguments: dict[str, Any]) -> str:
        use_id = f"toolu_{new_uuid().replace('-', '')[:24]}"
        self.ids[tool] = use_id
        block = {"type": "tool_use", "id": use_id, "name": self.name(tool), "input": arguments}
        self.c.assistant([block], stop_reason="tool_use")
        return use_id

    def call_started(self, tool: str, arguments: dict[str, Any]) -> None:
        self.tool_use(tool, arguments)

    def call_finished(self, tool: str, arguments: dict[str, Any], ok: bool, summary: str) -> None:
        # Only a one-line summary: the raw tool result never reaches stdout.
        block = {"type": "tool_result", "tool_use_id": self.ids[tool], "content": summary, "is_error": not ok}
        self.c.user([block])

    def call_denied(self, tool: str, arguments: dict[str, Any]) -> None:
        use_id = self.tool_use(tool, arguments)
        text = (
            f"Permission to use {self.name(tool)} has been denied because Claude Code is running in don't ask "
            "mode. IMPORTANT: You *may* attempt to accomplish this action using other tools that might naturally "
            "be used to accomplish this goal."
        )
        self.c.user([{"type": "tool_result", "tool_use_id": use_id, "content": text, "is_error": True}])
        self.c.permission_denials.append({"tool_name": self.name(tool), "tool_use_id": use_id, "tool_input": arguments})


def main() -> int:
    if sys.argv[1:2] == ["mcp"]:  # configuration, not a run: `claude mcp add|get|list|remove`
        import mcp_config

        return mcp_config.claude(sys.argv[2:])
    fake = Fake.start("claude")
    try:
        return Claude(fake).run()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
