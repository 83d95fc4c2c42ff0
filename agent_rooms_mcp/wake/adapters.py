"""How each coding CLI is started headless and how its events are read (research/wake.md §0-§3, §6).

An adapter builds argv (the prompt goes on stdin, secrets only into 0600 files), knows which event ends a
turn and which carries the session id, and judges how the run went from its events, never from the
exit code alone.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.principals import AgentTool
from agent_rooms_mcp.run_states import Outcome, RunState

# The MCP server a woken CLI launches: `agent-rooms bridge`, holding only the run token (DESIGN §5). Through
# `-m agent_rooms_mcp`, whose entry dispatches `bridge` before importing the rest of the CLI (__main__.py).
BRIDGE = [sys.executable, "-m", "agent_rooms_mcp", "bridge"]

# Background features outlive the turn and so outlive "stop" (wake.md §1.1).
CLAUDE_BACKGROUND = "ScheduleWakeup,CronCreate,Monitor,Bash(run_in_background:true)"
CLAUDE_READ_ONLY_TOOLS = "Read,Grep,Glob"
CLAUDE_WRITE_TOOLS = "Write,Edit,NotebookEdit,Bash,WebFetch,Task"


TOOL_NAME_CHARS = 64
MAX_TOOL_NAMES = 32


def _count(value: object) -> int:
    """A usage count from an event: a non-negative int, or 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class Reading:
    """What the events of one run said, gathered as they arrive."""

    session_id: str | None = None
    terminal: dict[str, Any] | None = None
    rate_limited: bool = False
    reset_at: datetime | None = None
    auth_failed: bool = False
    # The CLI started without our MCP server: it could not read the room or reply, so the run is stopped.
    mcp_failed: bool = False
    # A resume of a session the CLI no longer has ("No conversation found").
    session_lost: bool = False
    errors: list[str] = field(default_factory=list)
    # What the run used, as its events report it: all a listener sends the hub of them (DESIGN §9.1).
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd_micros: int = 0
    tools: dict[str, int] = field(default_factory=dict)  # tool name -> calls

    def used_tool(self, name: object) -> None:
        """Count a tool call by name; names are the CLI's words, so bounded in length and in number."""
        key = str(name)[:TOOL_NAME_CHARS]
        if key not in self.tools and len(self.tools) >= MAX_TOOL_NAMES:
            key = "_other"
        self.tools[key] = self.tools.get(key, 0) + 1


@dataclass(frozen=True, slots=True)
class Judgement:
    state: RunState  # completed | failed | stopped
    outcome: Outcome  # DESIGN §7's closed list: never a CLI's own words


@dataclass(frozen=True, slots=True)
class Plan:
    """One start of a CLI: its binary, where it runs, how it is confined, which session it continues."""

    binary: str
    workdir: Path
    run_dir: Path
    mcp_env: dict[str, str]
    read_only: bool
    resume_session: str | None
    system_prompt: str
    # The environment the CLI starts with, for where its own configuration lives (OpenClaw's precedence).
    child_env: Mapping[str, str] = field(default_factory=dict)


class Adapter(Protocol):
    tool: AgentTool

    def argv(self, plan: Plan) -> tuple[list[str], str | None]:
        """argv, and the session id chosen up front (Claude), if any."""
        ...

    def is_terminal(self, event: dict[str, Any]) -> bool: ...

    def read(self, event: dict[str, Any], reading: Reading) -> None: ...


# A shell's "command not found" / "not executable", as the CLI's wrapper (setpriv, a script) reports it.
_EXEC_FAILED = (126, 127)
# Claude's terminal reasons for a limit its run was given (wake.md §1): usage ran out, not the provider.
_USAGE_LIMITS = frozenset({"error_max_turns", "error_max_budget_usd"})
# An interrupt that reached the CLI from elsewhere than our stop: it stopped, it did not fail.
_INTERRUPTED = frozenset({"aborted_streaming", "aborted_tools"})


def judge(reading: Reading, *, stop_requested: bool, returncode: int | None) -> Judgement:
    """DESIGN §5: outcome from the final events; a stop we sent wins over whatever the CLI said after.

    Outcomes are DESIGN §7's closed list. A CLI that ended without a result, or failed in a way none of its
    events names, ends `lost`: the hub cannot tell what it did, which is what `lost` says."""
    if reading.mcp_failed:
        return Judgement(RunState.FAILED, Outcome.MCP_FAILED)
    if stop_requested:
        return Judgement(RunState.STOPPED, Outcome.STOPPED)
    if reading.rate_limited:  # the follow-up that retries it is a queued run of its own
        return Judgement(RunState.FAILED, Outcome.RATE_LIMIT)
    if reading.auth_failed:
        return Judgement(RunState.FAILED, Outcome.AUTH)
    terminal = reading.terminal
    if terminal is None:
        if returncode in _EXEC_FAILED:
            return Judgement(RunState.FAILED, Outcome.CLI_NOT_FOUND)
        return Judgement(RunState.FAILED, Outcome.LOST)
    if terminal.get("_ok"):
        return Judgement(RunState.COMPLETED, Outcome.OK)
    why = terminal.get("_why")
    if why in _USAGE_LIMITS:
        return Judgement(RunState.FAILED, Outcome.USAGE_LIMIT)
    if why in _INTERRUPTED:
        return Judgement(RunState.STOPPED, Outcome.STOPPED)
    return Judgement(RunState.FAILED, Outcome.LOST)


class Claude:
    tool = AgentTool.CLAUDE

    def argv(self, plan: Plan) -> tuple[list[str], str | None]:
        config = plan.run_dir / "mcp.json"
        _write_private_json(config, {"mcpServers": {"agent-rooms": _stdio_server(plan.mcp_env)}})
        session = plan.resume_session or str(uuid.uuid4())
        argv = [plan.binary, "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--resume", session] if plan.resume_session else ["--session-id", session]
        argv += ["--strict-mcp-config", "--mcp-config", str(config), "--append-system-prompt", plan.system_prompt]
        if plan.read_only:
            # wake.md §0.2: only reading tools exist, and only our MCP tools are pre-approved.
            argv += ["--tools", CLAUDE_READ_ONLY_TOOLS, "--permission-mode", "dontAsk"]
            argv += ["--allowedTools", "mcp__agent-rooms__*"]
            argv += ["--disallowedTools", f"{CLAUDE_WRITE_TOOLS},{CLAUDE_BACKGROUND}"]
        else:
            argv += ["--dangerously-skip-permissions", "--disallowedTools", CLAUDE_BACKGROUND]
        return argv, session

    def is_terminal(self, event: dict[str, Any]) -> bool:
        return event.get("type") == "result"

    def read(self, event: dict[str, Any], reading: Reading) -> None:
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            reading.session_id = str(event.get("session_id") or "") or reading.session_id
            # A broken MCP server does not fail a Claude run by itself (wake.md §1.2): check ours is there.
            servers = {s.get("name"): s.get("status") for s in event.get("mcp_servers") or [] if isinstance(s, dict)}
            # "pending": Claude Code 2.1.x in full mode reports its MCP servers while they still connect
            # (seen with the real CLI in the sandbox, whose bridge starts a little later): not a failure.
            reading.mcp_failed = servers.get("agent-rooms") not in ("connected", "pending")
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info") or {}
            if info.get("status") == "rejected":
                reading.rate_limited = True
                reading.reset_at = _from_unix(info.get("resetsAt"))
        elif kind == "assistant":
            for block in (event.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    reading.used_tool(block.get("name"))
            error = event.get("error") or (event.get("message") or {}).get("error")
            if error == "authentication_failed" or error == "billing_error":
                reading.auth_failed = True
            elif error == "rate_limit":
                reading.rate_limited = True
        elif kind == "result":
            if any("No conversation found" in str(e) for e in event.get("errors") or []):
                reading.session_lost = True
            status = event.get("api_error_status")
            if status in (429, 529):
                reading.rate_limited = True
            usage = event.get("usage") or {}
            if isinstance(usage, dict):  # the result carries the run's totals
                reading.input_tokens = _count(usage.get("input_tokens"))
                reading.output_tokens = _count(usage.get("output_tokens"))
            cost = event.get("total_cost_usd")
            if isinstance(cost, int | float) and 0 <= cost < 1e9:
                reading.cost_usd_micros = round(cost * 1_000_000)
            ok = event.get("subtype") == "success" and not event.get("is_error")
            why = event.get("terminal_reason") or event.get("subtype") or "error"
            reading.terminal = {"_ok": ok, "_why": why}


class Codex:
    tool = AgentTool.CODEX

    def argv(self, plan: Plan) -> tuple[list[str], str | None]:
        server = _stdio_server(plan.mcp_env)
        argv = [plan.binary, "exec", "--json", "--skip-git-repo-check"]
        argv += ["--sandbox", "read-only"] if plan.read_only else ["--dangerously-bypass-approvals-and-sandbox"]
        # Model-run shell commands see only the core environment (wake.md §2.6); paths only, no secrets.
        argv += ["-c", "shell_environment_policy.inherit=core"]
        argv += ["-c", f"mcp_servers.agent_rooms.command={_toml(server['command'])}"]
        argv += ["-c", f"mcp_servers.agent_rooms.args=[{', '.join(_toml(a) for a in server['args'])}]"]
        env = ", ".join(f"{k} = {_toml(v)}" for k, v in server["env"].items())
        argv += ["-c", f"mcp_servers.agent_rooms.env={{{env}}}"]
        argv += ["resume", plan.resume_session, "-"] if plan.resume_session else ["-"]
        return argv, None

    def is_terminal(self, event: dict[str, Any]) -> bool:
        return event.get("type") in ("turn.completed", "turn.failed")

    def read(self, event: dict[str, Any], reading: Reading) -> None:
        kind = event.get("type")
        if kind == "thread.started":
            reading.session_id = str(event.get("thread_id") or "") or reading.session_id
        elif kind == "turn.completed":
            reading.terminal = {"_ok": True}
            usage = event.get("usage") or {}
            if isinstance(usage, dict):  # per turn: a resumed exec may run more than one
                reading.input_tokens += _count(usage.get("input_tokens"))
                reading.output_tokens += _count(usage.get("output_tokens"))
        elif kind == "item.completed":
            item = event.get("item") or {}
            if isinstance(item, dict) and item.get("type") == "mcp_tool_call":
                reading.used_tool(f"{item.get('server')}.{item.get('tool')}")
            elif isinstance(item, dict) and item.get("type") == "command_execution":
                reading.used_tool("shell")
        elif kind == "turn.failed":
            message = str((event.get("error") or {}).get("message") or "")
            reading.terminal = {"_ok": False, "_why": "turn_failed"}
            _classify_text(message, reading)
        elif kind == "error":
            message = str(event.get("message") or "")
            if not message.startswith("Reconnecting"):  # the CLI retrying by itself: not terminal
                _classify_text(message, reading)


class OpenClaw:
    tool = AgentTool.OPENCLAW

    def argv(self, plan: Plan) -> tuple[list[str], str | None]:
        # OpenClaw takes MCP servers from its config file (`mcp.servers.<name>`, command/args/env). A config of
        # the run's own replaces the owner's, so it `$include`s theirs (OpenClaw deep-merges includes) and adds
        # only our server: without it a woken OpenClaw could not read the room or reply (issue 15).
        document: dict[str, Any] = {"mcp": {"servers": {"agent-rooms": _stdio_server(plan.mcp_env)}}}
        owners = openclaw_config(plan.child_env)
        if owners is not None:
            document["$include"] = str(owners)
        config = plan.run_dir / "openclaw.json"
        _write_private_json(config, document)
        argv = [plan.binary, "agent", "exec", "--message-file", "-", "--cwd", str(plan.workdir), "--json"]
        argv += ["--config", str(config)]
        if plan.resume_session:
            argv += ["--session-id", plan.resume_session]
        return argv, None

    def is_terminal(self, event: dict[str, Any]) -> bool:
        return "ok" in event and "status" in event

    def read(self, event: dict[str, Any], reading: Reading) -> None:
        if not self.is_terminal(event):
            return
        reading.session_id = str(event.get("sessionId") or "") or reading.session_id
        error = event.get("error") or {}
        if error.get("kind") == "rate_limit":
            reading.rate_limited = True
        reading.terminal = {"_ok": bool(event.get("ok")) and event.get("status") == "ok", "_why": event.get("status")}


def openclaw_config(env: Mapping[str, str]) -> Path | None:
    """The owner's OpenClaw config as the CLI would find it: OPENCLAW_CONFIG_PATH, then
    $OPENCLAW_STATE_DIR/openclaw.json, then ~/.openclaw/openclaw.json (OPENCLAW_HOME replacing HOME); None
    if there is none, since an include of a missing file would fail the run."""
    if env.get("OPENCLAW_CONFIG_PATH"):
        path = Path(env["OPENCLAW_CONFIG_PATH"])
    elif env.get("OPENCLAW_STATE_DIR"):
        path = Path(env["OPENCLAW_STATE_DIR"]) / "openclaw.json"
    elif env.get("OPENCLAW_HOME") or env.get("HOME"):
        path = Path(env.get("OPENCLAW_HOME") or env["HOME"]) / ".openclaw" / "openclaw.json"
    else:
        return None
    path = path.expanduser()
    return path if path.is_absolute() and path.is_file() else None


ADAPTERS: dict[AgentTool, Adapter] = {a.tool: a for a in (Claude(), Codex(), OpenClaw())}

_USAGE_LIMIT = re.compile(r"hit your (usage )?limit|usage limit|exceeded retry limit.*429|\b429\b|rate.?limit", re.I)
_AUTH = re.compile(r"not logged in|invalid api key|unauthori[sz]ed|authentication", re.I)


def _classify_text(message: str, reading: Reading) -> None:
    if _USAGE_LIMIT.search(message):
        reading.rate_limited = True
    elif _AUTH.search(message):
        reading.auth_failed = True


def _from_unix(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _stdio_server(env: dict[str, str]) -> dict[str, Any]:
    return {"type": "stdio", "command": BRIDGE[0], "args": BRIDGE[1:], "env": env}


def _toml(value: str) -> str:
    # A TOML basic string: JSON's escaping is a subset TOML accepts.
    return json.dumps(value)


def _write_private_json(path: Path, document: dict[str, Any]) -> None:
    write_private_file(path, json.dumps(document).encode())
