"""The fake claude / codex / openclaw CLIs keep the contract of research/wake.md §7.1 that supervisor tests rely on."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.home import write_private_file
from tests.conftest import World
from tests.fakes.common import FAKES_DIR, SCRIPTS, write_wrapper

PROMPT = "You were mentioned.\nroom: lobby\ntrigger: @alice-codex please summarise the thread\n"
MCP = "mcp_config.json"


class Env:
    """A throwaway HOME / CLAUDE_CONFIG_DIR / CODEX_HOME, a FAKE_LOG, and a minimal environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir(parents=True)
        self.log = root / "fake.log"
        self.base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "home"),
            "CLAUDE_CONFIG_DIR": str(root / "claude"),
            "CODEX_HOME": str(root / "codex"),
            "FAKE_LOG": str(self.log),
            "FAKE_REPLY": "0",
        }
        self.mcp_config({"agent-rooms": {"type": "stdio", "command": "/bin/false", "args": []}})

    def mcp_config(self, servers: dict[str, Any]) -> Path:
        path = self.root / MCP
        path.unlink(missing_ok=True)
        write_private_file(path, json.dumps({"mcpServers": servers}).encode())
        return path

    def env(self, scenario: str = "ok", **extra: str) -> dict[str, str]:
        return {**self.base, "FAKE_SCENARIO": scenario, **extra}

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def claude_argv(self, *, session: str | None = None, resume: str | None = None, contain: bool = False) -> list[str]:
        argv = ["-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--resume", resume] if resume else ["--session-id", session or str(uuid.uuid4())]
        argv += ["--strict-mcp-config", "--mcp-config", str(self.root / MCP)]
        if contain:
            argv += [
                "--tools",
                "Read,Grep,Glob",
                "--permission-mode",
                "dontAsk",
                "--allowedTools",
                "mcp__agent-rooms__*",
            ]
        else:
            argv += ["--dangerously-skip-permissions"]
        return [*argv, "--append-system-prompt", "framing", "--disallowedTools", "ScheduleWakeup,CronCreate,Monitor"]


def codex_argv(*extra: str, contain: bool = False, resume: str | None = None) -> list[str]:
    argv = ["exec", "--json", "--skip-git-repo-check"]
    argv += ["--sandbox", "read-only"] if contain else ["--dangerously-bypass-approvals-and-sandbox"]
    argv += ["-c", "shell_environment_policy.inherit=core", *extra]
    return argv + (["resume", resume, "-"] if resume else ["-"])


def openclaw_argv(cwd: Path, *extra: str) -> list[str]:
    return ["agent", "exec", "--message-file", "-", "--cwd", str(cwd), "--json", *extra]


@pytest.fixture
def fx(tmp_path: Path) -> Env:
    return Env(tmp_path)


def run(tool: str, argv: list[str], fx: Env, env: dict[str, str], prompt: str = PROMPT) -> tuple[int, list, str]:
    """Run a fake to completion: (exit code, parsed JSON lines, stderr). Non-JSON lines come back as str."""
    cmd = [sys.executable, str(FAKES_DIR / SCRIPTS[tool]), *argv]
    p = subprocess.run(cmd, input=prompt.encode(), capture_output=True, env=env, cwd=fx.cwd, timeout=30, check=False)
    lines: list[Any] = []
    for raw in p.stdout.decode().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            lines.append(raw)
    return p.returncode, lines, p.stderr.decode()


class Live:
    """A fake running in the background, read line by line with a deadline."""

    def __init__(self, tool: str, argv: list[str], fx: Env, env: dict[str, str], prompt: str = PROMPT) -> None:
        cmd = [sys.executable, str(FAKES_DIR / SCRIPTS[tool]), *argv]
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=fx.cwd
        )
        assert self.p.stdin is not None
        self.p.stdin.write(prompt.encode())
        self.p.stdin.close()
        self.buf = b""

    def line(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next JSON line, or None at EOF."""
        deadline = time.monotonic() + timeout
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "no line in time"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return json.loads(raw)

    def rest(self, timeout: float = 10) -> list[dict[str, Any]]:
        out = []
        while (ev := self.line(timeout)) is not None:
            out.append(ev)
        return out

    def wait(self, timeout: float = 10) -> int:
        return self.p.wait(timeout)

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for stream in (self.p.stdout, self.p.stderr):
            assert stream is not None
            stream.close()


# --- claude --------------------------------------------------------------------------------------------------


def test_claude_version_probe(fx: Env) -> None:
    code, lines, _ = run("claude", ["-v"], fx, fx.env(), prompt="")
    assert (code, lines) == (0, ["2.1.330 (Claude Code)"])


def test_claude_ok_keeps_a_transcript_and_resumes_it(fx: Env) -> None:
    sid = str(uuid.uuid4())
    code, lines, _ = run("claude", fx.claude_argv(session=sid), fx, fx.env())
    assert code == 0
    init, assistant, result = lines
    assert (init["type"], init["subtype"], init["session_id"], init["cwd"]) == ("system", "init", sid, str(fx.cwd))
    assert init["mcp_servers"] == [{"name": "agent-rooms", "status": "connected", "source": "dynamic"}]
    assert "Bash" in init["tools"] and "ScheduleWakeup" not in init["tools"]
    assert assistant["message"]["content"] == [{"type": "text", "text": "done"}]
    assert (result["type"], result["subtype"], result["is_error"], result["terminal_reason"]) == (
        "result",
        "success",
        False,
        "completed",
    )
    transcript = fx.root / "claude" / "projects" / str(fx.cwd).replace("/", "-").replace("_", "-") / f"{sid}.jsonl"
    assert transcript.exists()

    code, _, err = run("claude", fx.claude_argv(session=sid), fx, fx.env())
    assert (code, err.strip()) == (1, f"Error: Session ID {sid} is already in use.")

    code, lines, _ = run("claude", fx.claude_argv(resume=sid, contain=True), fx, fx.env(), prompt="continue")
    assert code == 0 and {ev["session_id"] for ev in lines} == {sid}
    assert lines[0]["tools"] == ["Glob", "Grep", "Read"] and lines[0]["permissionMode"] == "dontAsk"

    missing = str(uuid.uuid4())
    code, lines, err = run("claude", fx.claude_argv(resume=missing), fx, fx.env())
    [result] = lines
    assert code == 1 and result["subtype"] == "error_during_execution" and result["is_error"]
    assert result["errors"] == [f"No conversation found with session ID: {missing}"]

    first, clash, resumed, gone = fx.records()
    assert first["stdin"] == PROMPT and first["cwd"] == str(fx.cwd) and first["tool"] == "claude"
    assert (first["session_id"], first["turn"], first["mode"]) == (sid, 1, "full")
    assert "error" in clash
    assert (resumed["resumed"], resumed["turn"], resumed["mode"], resumed["stdin"]) == (True, 2, "contain", "continue")
    assert gone["error"].startswith("No conversation found")


@pytest.mark.parametrize(
    ("argv", "stderr"),
    [
        (["-p", "--output-format", "stream-json"], "Error: When using --print, --output-format=stream-json requires"),
        (["-p", "--output-format", "json", "--verbose"], "fake-claude: --output-format stream-json is required"),
        (["-p", "--output-format", "stream-json", "--verbose", "--bogus"], "error: unknown option '--bogus'"),
        (["-p", "--output-format", "stream-json", "--verbose", "hello"], "fake-claude: unexpected argument 'hello'"),
        (["-p", "--output-format", "stream-json", "--verbose", "--session-id", "x"], "Error: Invalid session ID."),
    ],
)
def test_claude_rejects_bad_argv(fx: Env, argv: list[str], stderr: str) -> None:
    code, lines, err = run("claude", argv, fx, fx.env())
    assert (code, lines) == (1, []) and err.startswith(stderr)
    [record] = fx.records()
    assert record["stdin"] is None and record["error"].startswith(stderr)


def test_claude_checks_mode_and_mcp_config(fx: Env) -> None:
    argv = [*fx.claude_argv(contain=True), "--dangerously-skip-permissions"]
    assert run("claude", argv, fx, fx.env())[2].startswith("fake-claude: full mode is --dangerously-skip-permissions")
    argv = [a if a != "Read,Grep,Glob" else "Read,Bash" for a in fx.claude_argv(contain=True)]
    assert run("claude", argv, fx, fx.env())[2].startswith("fake-claude: need --dangerously-skip-permissions")
    (fx.root / MCP).chmod(0o644)
    assert "must be a regular 0600 file" in run("claude", fx.claude_argv(), fx, fx.env())[2]
    (fx.root / MCP).chmod(0o600)
    argv = fx.claude_argv()
    argv[argv.index("--mcp-config") + 1] = '{"mcpServers":{}}'
    assert "inline JSON" in run("claude", argv, fx, fx.env())[2]
    code, _, err = run("claude", fx.claude_argv(), fx, fx.env("root_refusal"))
    assert (code, err.strip()) == (
        1,
        "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
    )
    assert run("claude", fx.claude_argv(), fx, fx.env("root_refusal", IS_SANDBOX="1"))[0] == 0


def test_claude_hang_sigint_is_a_graceful_resumable_stop(fx: Env) -> None:
    sid = str(uuid.uuid4())
    live = Live("claude", fx.claude_argv(session=sid), fx, fx.env("hang"))
    try:
        assert live.line()["subtype"] == "init"
        live.p.send_signal(signal.SIGINT)
        partial, marker, result = live.rest()
        assert live.wait() == 0
    finally:
        live.close()
    assert partial["type"] == "assistant" and partial["message"]["content"][0]["type"] == "text"
    assert marker["type"] == "user" and marker["message"]["content"][0]["text"] == "[Request interrupted by user]"
    assert (result["subtype"], result["is_error"], result["terminal_reason"]) == (
        "error_during_execution",
        True,
        "aborted_streaming",
    )
    code, lines, _ = run("claude", fx.claude_argv(resume=sid), fx, fx.env(), prompt="continue the task")
    assert code == 0 and lines[-1]["subtype"] == "success"
    assert fx.records()[-1]["prior_interrupted"] is True


@pytest.mark.parametrize("scenario", ["hang", "ignore_sigint"])
def test_claude_sigterm_exits_143_silently(fx: Env, scenario: str) -> None:
    live = Live("claude", fx.claude_argv(), fx, fx.env(scenario))
    try:
        assert live.line()["subtype"] == "init"
        if scenario == "ignore_sigint":
            live.p.send_signal(signal.SIGINT)
            with pytest.raises(subprocess.TimeoutExpired):
                live.wait(0.3)
        live.p.send_signal(signal.SIGTERM)
        assert live.rest() == [] and live.wait() == 143
    finally:
        live.close()


def test_claude_tool_orphan_leaves_a_sleep_in_its_own_session(fx: Env) -> None:
    live = Live("claude", fx.claude_argv(), fx, fx.env("tool_orphan"))
    orphan = 0
    try:
        assert live.line()["subtype"] == "init"
        orphan = fx.records()[0]["orphan_pid"]
        assert os.getsid(orphan) == orphan != os.getsid(live.p.pid)
        for sig in (signal.SIGINT, signal.SIGTERM):
            live.p.send_signal(sig)
        with pytest.raises(subprocess.TimeoutExpired):
            live.wait(0.3)
        live.p.kill()
        live.wait()
        assert Path(f"/proc/{orphan}").exists()  # what a supervisor's descendant sweep must catch
    finally:
        live.close()
        if orphan:
            os.kill(orphan, signal.SIGKILL)


@pytest.mark.parametrize(
    ("scenario", "status", "error"),
    [("rate_limit", 429, "rate_limit"), ("overloaded", 529, "server_error"), ("auth", None, "authentication_failed")],
)
def test_claude_api_errors(fx: Env, scenario: str, status: int | None, error: str) -> None:
    code, lines, _ = run("claude", fx.claude_argv(), fx, fx.env(scenario))
    assert code == 1
    retries = [ev for ev in lines if ev.get("subtype") == "api_retry"]
    assert len(retries) == (2 if status else 0) and all(r["error_status"] == status for r in retries)
    assistant, result = lines[-2:]
    assert (assistant["error"], assistant["api_error_status"]) == (error, status)
    assert (result["subtype"], result["is_error"], result["terminal_reason"], result["api_error_status"]) == (
        "success",
        True,
        "api_error",
        status,
    )


def test_claude_usage_limit_carries_resets_at(fx: Env) -> None:
    before = int(time.time())
    code, lines, _ = run("claude", fx.claude_argv(), fx, fx.env("usage_limit", FAKE_RESET_IN="120"))
    [event] = [ev for ev in lines if ev["type"] == "rate_limit_event"]
    assert code == 1 and event["rate_limit_info"]["status"] == "rejected"
    assert before + 120 <= event["rate_limit_info"]["resetsAt"] <= int(time.time()) + 120
    assert lines[-2]["message"]["content"][0]["text"].startswith("You've hit your limit · resets ")
    assert lines[-1]["is_error"] and lines[-1]["api_error_status"] == 429


def test_claude_stream_oddities(fx: Env) -> None:
    code, lines, _ = run("claude", fx.claude_argv(), fx, fx.env("garbage"))
    assert code == 0 and [x for x in lines if isinstance(x, str)] and lines[-1]["subtype"] == "success"
    code, lines, _ = run("claude", fx.claude_argv(), fx, fx.env("mcp_failed"))
    assert code == 0 and lines[0]["mcp_servers"][0]["status"] == "failed"
    code, lines, _ = run("claude", fx.claude_argv(), fx, fx.env("flood"))
    assert code == 0 and len(lines[1]["message"]["content"][0]["text"]) == 4 << 20
    live = Live("claude", fx.claude_argv(), fx, fx.env("hang_after_result"))
    try:
        assert [ev["type"] for ev in (live.line(), live.line(), live.line())] == ["system", "assistant", "result"]
        with pytest.raises(subprocess.TimeoutExpired):
            live.wait(0.3)
        live.p.send_signal(signal.SIGTERM)
        assert live.wait() == 143
    finally:
        live.close()


def test_wrapper_execs_in_place_and_hides_its_own_variables(fx: Env, tmp_path: Path) -> None:
    scenario_file = tmp_path / "scenario"
    scenario_file.write_text("dump_env\n")
    wrapper = write_wrapper(
        "claude", tmp_path / "bin", env={"FAKE_LOG": str(fx.log), "FAKE_SCENARIO_FILE": str(scenario_file)}
    )
    assert wrapper.stat().st_mode & 0o777 == 0o755
    env = {"PATH": "/usr/bin:/bin", "CLAUDE_CONFIG_DIR": fx.base["CLAUDE_CONFIG_DIR"], "SENTINEL_TOKEN": "x"}
    p = subprocess.run(
        [str(wrapper), *fx.claude_argv()], input=b"hi", capture_output=True, env=env, cwd=fx.cwd, check=False
    )
    assert p.returncode == 0, p.stderr
    scenario_file.write_text("rate_limit")
    with subprocess.Popen(
        [str(wrapper), *fx.claude_argv()], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=fx.cwd
    ) as p2:
        p2.communicate(b"hi")
    assert p2.returncode == 1
    dumped, limited = fx.records()
    assert dumped["env_names"] == sorted(env) and dumped["env"] == env and dumped["scenario"] == "dump_env"
    assert limited["scenario"] == "rate_limit" and limited["env_names"] == sorted(env)
    assert limited["pid"] == p2.pid  # exec: signals sent to the wrapper's PID reach the fake


# --- codex ---------------------------------------------------------------------------------------------------


def test_codex_ok_resume_and_config_overrides(fx: Env) -> None:
    extra = [
        "-c",
        'mcp_servers.agent_rooms.command="/usr/bin/python3"',
        "-c",
        'mcp_servers.agent_rooms.args=["-m","agent_rooms_mcp.bridge","--run-file","/r/run.json"]',
        "-c",
        'mcp_servers.agent_rooms.env={AGENT_ROOMS_RUN_ID="run_1"}',
        "-m",
        "gpt-5.5",
    ]
    code, lines, _ = run("codex", codex_argv(*extra), fx, fx.env())
    assert code == 0
    assert [ev["type"] for ev in lines] == ["thread.started", "turn.started", "item.completed", "turn.completed"]
    thread = lines[0]["thread_id"]
    assert uuid.UUID(thread).version == 7 and lines[2]["item"] == {
        "id": "item_0",
        "type": "agent_message",
        "text": "done",
    }
    [rollout] = (fx.root / "codex" / "sessions").glob(f"*/*/*/rollout-*-{thread}.jsonl")

    code, lines, _ = run("codex", codex_argv(contain=True, resume=thread), fx, fx.env(), prompt="continue")
    assert code == 0 and lines[0] == {"type": "thread.started", "thread_id": thread}
    code, _, err = run("codex", codex_argv(resume=str(uuid.uuid4())), fx, fx.env())
    assert code == 1 and "no rollout found" in err

    first, resumed, _ = fx.records()
    assert first["config"]["mcp_servers"]["agent_rooms"] == {
        "command": "/usr/bin/python3",
        "args": ["-m", "agent_rooms_mcp.bridge", "--run-file", "/r/run.json"],
        "env": {"AGENT_ROOMS_RUN_ID": "run_1"},
    }
    assert first["config"]["shell_environment_policy"] == {"inherit": "core"} and first["mode"] == "full"
    assert (resumed["thread_id"], resumed["turn"], resumed["mode"]) == (thread, 2, "contain")
    assert rollout.exists()


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        (["exec", "--json", "--full-auto", "-"], 2, "error: unexpected argument '--full-auto' found"),
        (["exec", "--json", "--yolo", "-"], 1, "Not inside a trusted directory"),
        (["exec", "--skip-git-repo-check", "--yolo", "-"], 2, "fake-codex: --json is required"),
        (["exec", "--json", "--skip-git-repo-check", "-"], 2, "fake-codex: need --dangerously-bypass"),
        (["exec", "--json", "--skip-git-repo-check", "--yolo", "do it"], 2, "fake-codex: positionals must be"),
        (
            [*codex_argv("-c", "mcp_servers.agent_rooms.command=python3", "-c", "mcp_servers.agent_rooms.args=x")],
            1,
            "Error loading config: mcp_servers.agent_rooms.args",
        ),
    ],
)
def test_codex_rejects_bad_argv(fx: Env, argv: list[str], code: int, stderr: str) -> None:
    got, lines, err = run("codex", argv, fx, fx.env())
    assert (got, lines) == (code, []) and err.startswith(stderr), err


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("rate_limit", "exceeded retry limit, last status: 429 Too Many Requests"),
        ("usage_limit", "You’ve hit your usage limit. Try again at 9:13 AM."),
        ("overloaded", "Selected model is at capacity. Please try a different model."),
    ],
)
def test_codex_failures(fx: Env, scenario: str, message: str) -> None:
    code, lines, _ = run("codex", codex_argv(), fx, fx.env(scenario))
    assert code == 1 and lines[-2:] == [
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    ]
    if scenario == "rate_limit":
        assert lines[2]["message"] == f"Reconnecting... 1/1 ({message})"


def test_codex_hang_sigint_exits_1_without_a_terminal_event(fx: Env) -> None:
    live = Live("codex", codex_argv(), fx, fx.env("hang"))
    try:
        assert [live.line()["type"] for _ in range(3)] == ["thread.started", "turn.started", "item.started"]
        live.p.send_signal(signal.SIGINT)
        assert live.rest() == [] and live.wait() == 1
    finally:
        live.close()
    thread = fx.records()[0]["thread_id"]
    code, lines, _ = run("codex", codex_argv(resume=thread), fx, fx.env(), prompt="continue")
    assert code == 0 and lines[0]["thread_id"] == thread and fx.records()[-1]["prior_interrupted"] is True


def test_codex_garbage_and_dump_env(fx: Env) -> None:
    code, lines, _ = run("codex", codex_argv(), fx, fx.env("garbage"))
    assert code == 0 and any(isinstance(x, str) for x in lines) and lines[-1]["type"] == "turn.completed"
    code, _, _ = run("codex", codex_argv(), fx, fx.env("dump_env", SECRET_TOKEN="s"))
    assert code == 0 and "SECRET_TOKEN" in fx.records()[-1]["env_names"]


# --- openclaw ------------------------------------------------------------------------------------------------


def test_openclaw_envelopes(fx: Env) -> None:
    code, [ok], _ = run("openclaw", openclaw_argv(fx.cwd, "--session-id", "s1"), fx, fx.env())
    assert code == 0 and (ok["ok"], ok["status"], ok["final"], ok["sessionId"]) == (True, "ok", "done", "s1")
    assert ok["payloads"] == [{"text": "done"}]
    code, [err], _ = run("openclaw", openclaw_argv(fx.cwd), fx, fx.env("rate_limit"))
    assert code == 1 and err["status"] == "error" and err["error"]["kind"] == "rate_limit"
    code, [timed_out], _ = run("openclaw", openclaw_argv(fx.cwd, "--timeout", "0.2"), fx, fx.env("hang"))
    assert code == 2 and timed_out["status"] == "timeout"
    code, lines, err_text = run("openclaw", ["agent", "exec", "--json", "--cwd", str(fx.cwd), "hi"], fx, fx.env())
    assert code == 1 and lines == [] and "prompt must come on stdin" in err_text
    assert fx.records()[0]["stdin"] == PROMPT


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_openclaw_hang_signals(fx: Env, sig: signal.Signals, code: int) -> None:
    live = Live("openclaw", openclaw_argv(fx.cwd), fx, fx.env("hang"))
    try:
        # A bound for a loaded machine: a signal sent before the fake's handlers are in place kills it outright.
        deadline = time.monotonic() + 120
        while not fx.log.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the log line is written once the handlers are in place
        assert fx.log.exists(), "the fake never said its handlers were in place"
        live.p.send_signal(sig)
        assert live.rest() == [] and live.wait() == code
    finally:
        live.close()


# --- the callback into a real hub ----------------------------------------------------------------------------


def hub_server(world: World, tmp_path: Path, agent: str) -> dict[str, Any]:
    token_file = tmp_path / f"{agent}.token"
    write_private_file(token_file, world.tokens[agent].encode())
    env = {"AGENT_ROOMS_HOME": str(world.settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_file)}
    return {"type": "stdio", "command": sys.executable, "args": ["-m", "agent_rooms_mcp", "serve"], "env": env}


async def run_async(tool: str, argv: list[str], fx: Env, env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    cmd = [sys.executable, str(FAKES_DIR / SCRIPTS[tool]), *argv]
    with anyio.fail_after(120):
        p = await anyio.run_process(cmd, input=PROMPT.encode(), env=env, cwd=fx.cwd, check=False)
    assert not p.stderr or p.returncode == 0, p.stderr.decode()
    return p.returncode, [json.loads(line) for line in p.stdout.decode().splitlines()]


def tool_uses(lines: list[dict[str, Any]]) -> list[str]:
    return [
        b["name"]
        for ev in lines
        if ev["type"] == "assistant"
        for b in ev["message"]["content"]
        if b["type"] == "tool_use"
    ]


async def test_fakes_call_back_into_a_real_hub(world: World, tmp_path: Path) -> None:
    """Three wakes at once (to keep the suite fast): Claude as alice-codex and Codex as alice-claude post in the
    lobby; Claude in contain mode without the mcp__agent-rooms rule, as alice-admin, is denied both calls."""
    claude, codex, denied = (Env(tmp_path / name) for name in ("claude", "codex", "denied"))
    claude.mcp_config({"agent-rooms": hub_server(world, tmp_path, "alice-codex")})
    denied.mcp_config({"agent-rooms": hub_server(world, tmp_path, "alice-admin")})
    server = hub_server(world, tmp_path, "alice-claude")
    env_toml = "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in server["env"].items()) + "}"
    overrides = [
        "-c",
        f"mcp_servers.agent_rooms.command={json.dumps(server['command'])}",
        "-c",
        f"mcp_servers.agent_rooms.args={json.dumps(server['args'])}",
        "-c",
        f"mcp_servers.agent_rooms.env={env_toml}",
    ]
    contain = [a for a in denied.claude_argv(contain=True) if a not in ("--allowedTools", "mcp__agent-rooms__*")]
    jobs = {
        "claude": ("claude", claude.claude_argv(), claude),
        "codex": ("codex", codex_argv(*overrides), codex),
        "denied": ("claude", contain, denied),
    }
    out: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    async def one(name: str) -> None:
        tool, argv, fx = jobs[name]
        out[name] = await run_async(tool, argv, fx, fx.env("reply"))

    async with anyio.create_task_group() as tg:
        for name in jobs:
            tg.start_soon(one, name)
    assert {name: code for name, (code, _) in out.items()} == {"claude": 0, "codex": 0, "denied": 0}, out

    lines = out["claude"][1]
    assert lines[0]["mcp_servers"][0]["status"] == "connected" and "mcp__agent-rooms__post_message" in lines[0]["tools"]
    assert tool_uses(lines) == ["mcp__agent-rooms__whoami", "mcp__agent-rooms__post_message"]
    [by_claude] = claude.records()
    assert f"posted seq={by_claude['posted_seq']}" in lines[-2]["message"]["content"][0]["text"]
    assert lines[-1]["subtype"] == "success" and not lines[-1]["is_error"]
    assert "run_id" in by_claude and by_claude["room"] == "lobby"  # None for a plain token

    lines = out["codex"][1]
    calls = [ev["item"] for ev in lines if ev["type"] == "item.completed" and ev["item"]["type"] == "mcp_tool_call"]
    assert [(c["tool"], c["status"], c["result"]) for c in calls] == [
        ("whoami", "completed", None),
        ("post_message", "completed", None),
    ]
    assert lines[-1]["type"] == "turn.completed"
    [by_codex] = codex.records()

    lines = out["denied"][1]
    assert [d["tool_name"] for d in lines[-1]["permission_denials"]] == tool_uses(lines)
    assert tool_uses(lines) == ["mcp__agent-rooms__whoami", "mcp__agent-rooms__post_message"]
    assert denied.records()[0]["denied"] == ["whoami", "post_message"]

    rows = world.sql(
        "SELECT m.seq, m.text, a.handle FROM messages m JOIN agents a USING (agent_id) JOIN rooms r USING (room_id) "
        "WHERE r.name = 'lobby' ORDER BY m.seq"
    )
    text = "done: @alice-codex please summarise the thread"
    assert sorted(tuple(r) for r in rows) == sorted(
        [(by_claude["posted_seq"], text, "alice-codex"), (by_codex["posted_seq"], text, "alice-claude")]
    )
