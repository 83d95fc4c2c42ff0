"""Plumbing shared by the fake `claude`, `codex` and `openclaw` CLIs (research/wake.md §7.1).

The fakes run as scripts (`python tests/fakes/fake_claude.py ARGS`), so they import this module as `common`;
tests import it as `tests.fakes.common` for `write_wrapper`. Nothing heavy is imported at module level: the
`mcp` SDK is loaded only when a fake calls back into the hub, so the other scenarios start in ~50 ms.

Knobs, all read from the environment (a test may bake them into the wrapper, see `write_wrapper`):

- FAKE_SCENARIO        scenario name, default "ok"
- FAKE_SCENARIO_FILE   if set and the file exists, its stripped content overrides FAKE_SCENARIO
- FAKE_LOG             append one JSON line per invocation to this file
- FAKE_REPLY           "0" turns off the MCP callback of the "ok"-like scenarios ("reply" always calls back)
- FAKE_REPLY_TEXT      text to post instead of "done: <trigger>"
- FAKE_MCP_TIMEOUT     seconds for the whole MCP callback (default 30)
- FAKE_RESET_IN        seconds until the usage-limit reset (Claude default 3600; Codex prints 9:13 AM if unset)
- FAKE_WRAPPER_VARS    names the wrapper exported (plus PWD): left out of env_names and of children's env
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAKES_DIR = Path(__file__).resolve().parent
SCRIPTS = {"claude": "fake_claude.py", "codex": "fake_codex.py", "openclaw": "fake_openclaw.py"}
FLOOD_BYTES = 4 << 20


def write_wrapper(tool: str, directory: Path, *, env: Mapping[str, str] | None = None) -> Path:
    """Write `directory/<tool>`: a 0755 sh script that execs this interpreter on the fake (same PID).

    `env` is exported by the wrapper itself (e.g. FAKE_LOG, FAKE_SCENARIO_FILE), because a supervisor that
    scrubs the environment would drop FAKE_* names. The fake leaves those names (and the shell's PWD) out of
    `env_names` and of the environment it hands on, so a scrubbing test sees exactly what the supervisor passed.
    """
    script = FAKES_DIR / SCRIPTS[tool]
    # Launcher artefacts, hidden from the fake's view of its environment: dash always exports PWD, and
    # PYTHONCOERCECLOCALE=0 stops Python adding LC_CTYPE to a C-locale environment (PEP 538).
    exported = {"PYTHONCOERCECLOCALE": "0", **(env or {})}
    lines = ["#!/bin/sh"]
    for name, value in sorted(exported.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad variable name {name!r}")
        lines.append(f"{name}={shlex.quote(value)}; export {name}")
    hidden = " ".join(["PWD", *sorted(exported)])
    lines.append(f"FAKE_WRAPPER_VARS={shlex.quote(hidden)}; export FAKE_WRAPPER_VARS")
    lines.append(f'exec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"')
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / tool
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


# --- runtime side: used by the fake scripts -------------------------------------------------------------


class Interrupted(Exception):
    """Raised from the SIGINT handler into the main thread."""


class Terminated(Exception):
    """Raised from the SIGTERM handler into the main thread."""


def _strip_wrapper_vars() -> list[str]:
    names = os.environ.pop("FAKE_WRAPPER_VARS", "").split()
    return names


@dataclass
class Fake:
    tool: str
    argv: list[str]
    wrapper_vars: list[str]
    wrapper_env: dict[str, str]
    log_fields: dict[str, Any] = field(default_factory=dict)
    logged: bool = False

    @classmethod
    def start(cls, tool: str) -> Fake:
        names = _strip_wrapper_vars()
        wrapper_env = {n: os.environ.pop(n) for n in names if n in os.environ}
        # The knobs stay readable through self.knob() even though they left os.environ.
        return cls(tool=tool, argv=sys.argv[1:], wrapper_vars=names, wrapper_env=wrapper_env)

    def knob(self, name: str, default: str | None = None) -> str | None:
        if name in self.wrapper_env:
            return self.wrapper_env[name]
        return os.environ.get(name, default)

    @property
    def scenario(self) -> str:
        path = self.knob("FAKE_SCENARIO_FILE")
        if path:
            try:
                text = Path(path).read_text().strip()
            except OSError:
                text = ""
            if text:
                return text
        return (self.knob("FAKE_SCENARIO") or "ok").strip() or "ok"

    def env_names(self) -> list[str]:
        return sorted(os.environ)

    # output -----------------------------------------------------------------------------------------------

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def raw(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def fail(self, message: str, code: int = 1) -> int:
        """Print `message` to stderr, log the invocation with `error`, and return `code` for exit."""
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        self.log(error=message)
        return code

    # FAKE_LOG ---------------------------------------------------------------------------------------------

    def log(self, **fields: Any) -> None:
        """Append this invocation's one line to FAKE_LOG (later calls are ignored: one line per process)."""
        self.log_fields.update(fields)
        if self.logged:
            return
        self.logged = True
        path = self.knob("FAKE_LOG")
        if not path:
            return
        record = {
            "tool": self.tool,
            "argv": self.argv,
            "env_names": self.env_names(),
            "stdin": None,
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            # Which PID namespace that pid is of: a sandboxed fake has its own (tests/wakeworld.py `gone`).
            "pid_ns": os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else None,
            "scenario": self.scenario,
            **self.log_fields,
        }
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    # signals ----------------------------------------------------------------------------------------------

    def on_sigint(self, mode: str) -> None:
        """mode: "raise" (Interrupted in the main thread, once), "ignore", or "default"."""
        signal.signal(signal.SIGINT, _raise_once(Interrupted) if mode == "raise" else _disposition(mode))

    def on_sigterm(self, mode: str) -> None:
        signal.signal(signal.SIGTERM, _raise_once(Terminated) if mode == "raise" else _disposition(mode))


def _disposition(mode: str) -> Any:
    return {"ignore": signal.SIG_IGN, "default": signal.SIG_DFL}[mode]


def _raise_once(exc: type[Exception]) -> Callable[[int, Any], None]:
    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)
        raise exc()

    return handler


def sleep_forever(seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def read_stdin() -> str:
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def new_uuid() -> str:
    return str(uuid.uuid4())


def uuid7() -> str:
    """A time-ordered UUIDv7, the shape Codex and OpenClaw use for thread/session ids."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def sanitize_cwd(cwd: str) -> str:
    """Claude's project directory name: every non-alphanumeric character becomes "-"."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def append_jsonl(path: Path, *records: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


# --- the prompt ----------------------------------------------------------------------------------------

_ROOM = re.compile(r"^[ \t]*room:[ \t]*(\S[^\n]*?)[ \t]*$", re.MULTILINE | re.IGNORECASE)
_TRIGGER = re.compile(r"^[ \t]*trigger:[ \t]*([^\n]*?)[ \t]*$", re.MULTILINE | re.IGNORECASE)


def prompt_room(prompt: str) -> str | None:
    m = _ROOM.search(prompt)
    return m.group(1) if m else None


def reply_text(fake: Fake, prompt: str) -> str:
    override = fake.knob("FAKE_REPLY_TEXT")
    if override:
        return override
    m = _TRIGGER.search(prompt)
    return f"done: {m.group(1)[:40]}" if m and m.group(1) else "done"


# --- the MCP callback ------------------------------------------------------------------------------------


@dataclass
class McpServer:
    command: str
    args: list[str]
    env: dict[str, str]


@dataclass
class Callback:
    """What the fake agent did on the hub. `error` is set when anything failed; `connected` says whether
    the MCP handshake itself succeeded."""

    connected: bool = False
    tools: list[str] = field(default_factory=list)
    run_id: str | None = None
    room: str | None = None
    posted_seq: int | None = None
    denied: list[str] = field(default_factory=list)
    error: str | None = None

    def log_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_id": self.run_id, "posted_seq": self.posted_seq, "room": self.room}
        if self.denied:
            out["denied"] = self.denied
        if self.error:
            out["mcp_error"] = self.error
        return out

    def summary(self) -> str:
        if self.error:
            return f"agent-rooms callback failed: {self.error}"
        if self.posted_seq is not None:
            return f"posted seq={self.posted_seq} in room={self.room} run_id={self.run_id}"
        if self.denied:
            return f"denied: {', '.join(self.denied)} run_id={self.run_id}"
        return f"no room in the prompt; nothing posted run_id={self.run_id}"


class Hooks:
    """Event emitters the callback drives; each CLI renders them its own way."""

    def connected(self, ok: bool, tools: list[str]) -> None:
        pass

    def permitted(self, tool: str) -> bool:
        return True

    def call_started(self, tool: str, arguments: dict[str, Any]) -> None:
        pass

    def call_finished(self, tool: str, arguments: dict[str, Any], ok: bool, summary: str) -> None:
        pass

    def call_denied(self, tool: str, arguments: dict[str, Any]) -> None:
        pass


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _first_text(result: Any) -> str:
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if text:
            return str(text).splitlines()[0][:200]
    return ""


def run_callback(fake: Fake, server: McpServer, prompt: str, hooks: Hooks) -> Callback:
    """Start `server` over stdio with the mcp SDK, call whoami, then post_message in the prompt's room."""
    import anyio

    out = Callback(room=prompt_room(prompt))
    text = reply_text(fake, prompt)
    timeout = float(fake.knob("FAKE_MCP_TIMEOUT") or 30)

    async def call(client: Any, tool: str, arguments: dict[str, Any]) -> Any:
        if not hooks.permitted(tool):
            out.denied.append(tool)
            hooks.call_denied(tool, arguments)
            return None
        hooks.call_started(tool, arguments)
        result = await client.call_tool(tool, arguments)
        ok = not result.is_error
        summary = "ok" if ok else _first_text(result) or "error"
        hooks.call_finished(tool, arguments, ok, summary)
        if not ok:
            raise RuntimeError(f"{tool}: {summary}")
        return result.structured_content or {}

    async def main() -> None:
        from mcp import Client, StdioServerParameters

        params = StdioServerParameters(command=server.command, args=server.args, env=server.env)
        with anyio.fail_after(timeout):
            async with Client(params) as client:
                listed = await client.list_tools()
                out.connected = True
                out.tools = [t.name for t in listed.tools]
                hooks.connected(True, out.tools)
                me = await call(client, "whoami", {})
                if me is not None:
                    out.run_id = me.get("run_id")
                if out.room is not None:
                    posted = await call(client, "post_message", {"room": out.room, "text": text})
                    if posted is not None:
                        out.posted_seq = posted.get("seq")

    try:
        anyio.run(main)
    except Exception as exc:  # every failure becomes a line in the run, never a traceback
        leaf = _leaf(exc)
        out.error = f"{type(leaf).__name__}: {leaf}".strip().rstrip(":")
        if not out.connected:
            hooks.connected(False, [])
    return out
