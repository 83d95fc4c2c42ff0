"""The woken CLI's environment: allowlist, then denylist, then what the run sets (research/wake.md §5)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_rooms_mcp.envrules import BASE_ALLOW, RUN_SETS, TOOL_ALLOW, is_denied
from agent_rooms_mcp.wake.env import scrubbed_env
from agent_rooms_mcp.wake.process import run_process

TOOLS = sorted(TOOL_ALLOW)
CHILD = Path(__file__).parent / "fakes" / "child.py"

# One planted sentinel per denylist family, plus parent-agent markers and our own variables.
SENTINELS = {
    "AWS_SECRET_ACCESS_KEY": "aws",
    "GITHUB_TOKEN": "gh",
    "SSH_AUTH_SOCK": "/tmp/agent.sock",
    "KUBECONFIG": "/root/.kube/config",
    "NPM_TOKEN": "npm",
    "DATABASE_URL": "postgres://u:p@h/db",
    "VAULT_TOKEN": "vault",
    "MY_API_KEY": "mine",
    "CLAUDECODE": "1",
    "CLAUDE_CODE_MESSAGING_TOKEN": "msg",
    "CLAUDE_CODE_SESSION_ID": "sess",
    "CODEX_THREAD_ID": "thread",
    "OPENCLAW_SHELL": "exec",
    "MCP_SERVER_NAME": "x",
    "AGENT_ROOMS_HOME": "/srv/rooms",
    "AGENT_ROOMS_TOKEN": "tok",
    "AGENT_ROOMS_RUN_ID": "parent-run",
    "AGENT_ROOMS_WAKE_DEPTH": "0",
    "LD_PRELOAD": "/evil.so",
    "PYTHONPATH": "/evil",
    "NODE_OPTIONS": "--require /evil.js",
    "ANTHROPIC_API_KEY": "sk-ant",
    "OPENAI_API_KEY": "sk-oai",
    "CODEX_API_KEY": "sk-codex",
    "CLAUDE_CODE_OAUTH_TOKEN": "oauth",
}
SETS = {"TZ", "TERM", "NO_COLOR", "TMPDIR", "AGENT_ROOMS_RUN_ID", "AGENT_ROOMS_WAKE_DEPTH"}
CLAUDE_SETS = {"DISABLE_AUTOUPDATER", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"}
PARENT = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/o",
    "LANG": "C.UTF-8",
    "USER": "o",
    "EDITOR": "vi",  # harmless, but not on the allowlist either
    "CLAUDE_CONFIG_DIR": "/home/o/.claude",
    "CODEX_HOME": "/home/o/.codex",
    "OPENCLAW_HOME": "/home/o/.openclaw",
    **SENTINELS,
}


def scrub(tool: str, tmp_path: Path, *, parent: dict[str, str] = PARENT, **kw: Any) -> dict[str, str]:
    return scrubbed_env(parent, tool=tool, run_dir=tmp_path / "run", run_id="run-1", depth=1, **kw)


@pytest.mark.parametrize("tool", TOOLS)
def test_sentinels_do_not_pass(tool: str, tmp_path: Path) -> None:
    env = scrub(tool, tmp_path)
    for name, value in SENTINELS.items():
        assert env.get(name) != value, name
    assert env["AGENT_ROOMS_RUN_ID"] == "run-1" and env["AGENT_ROOMS_WAKE_DEPTH"] == "1"


@pytest.mark.parametrize("tool", TOOLS)
def test_names_are_the_allowlist_and_what_the_run_sets(tool: str, tmp_path: Path) -> None:
    env = scrub(tool, tmp_path)
    assert set(env) <= BASE_ALLOW | TOOL_ALLOW[tool] | SETS | (CLAUDE_SETS if tool == "claude" else set())
    assert {"PATH", "HOME", "LANG", "USER"} <= set(env)
    assert "EDITOR" not in env
    assert (env["TERM"], env["NO_COLOR"], env["TZ"]) == ("dumb", "1", "UTC")
    assert (env.get("DISABLE_AUTOUPDATER") == "1") == (tool == "claude")


def test_config_dirs_pass_only_to_their_tool(tmp_path: Path) -> None:
    assert scrub("claude", tmp_path)["CLAUDE_CONFIG_DIR"] == "/home/o/.claude"
    assert scrub("codex", tmp_path)["CODEX_HOME"] == "/home/o/.codex"
    assert scrub("openclaw", tmp_path)["OPENCLAW_HOME"] == "/home/o/.openclaw"
    assert "CLAUDE_CONFIG_DIR" not in scrub("codex", tmp_path)
    assert "CODEX_HOME" not in scrub("claude", tmp_path)


def test_parent_timezone_is_kept(tmp_path: Path) -> None:
    assert scrub("codex", tmp_path, parent={**PARENT, "TZ": "Europe/Paris"})["TZ"] == "Europe/Paris"


def test_tmpdir_is_private(tmp_path: Path) -> None:
    (tmp_path / "run" / "tmp").mkdir(parents=True, mode=0o755)  # an existing, too open directory is tightened
    (tmp_path / "run" / "tmp").chmod(0o755)
    env = scrub("claude", tmp_path)
    tmp = Path(env["TMPDIR"])
    assert tmp == tmp_path / "run" / "tmp"
    assert tmp.is_dir() and stat.S_IMODE(tmp.stat().st_mode) == 0o700


def test_tmpdir_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tmp").symlink_to(tmp_path)
    with pytest.raises(NotADirectoryError):
        scrub("claude", tmp_path)


@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ("claude", "ANTHROPIC_API_KEY"),
        ("claude", "ANTHROPIC_AUTH_TOKEN"),
        ("claude", "CLAUDE_CODE_OAUTH_TOKEN"),
        ("claude", "ANTHROPIC_BASE_URL"),
        ("codex", "CODEX_API_KEY"),
        ("codex", "OPENAI_API_KEY"),
        ("openclaw", "OPENROUTER_API_KEY"),
        ("openclaw", "GEMINI_API_KEY"),
    ],
)
def test_provider_keys_pass_for_their_tool(tool: str, name: str, tmp_path: Path) -> None:
    assert scrub(tool, tmp_path, extra={name: "k"})[name] == "k"


@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ("codex", "ANTHROPIC_API_KEY"),
        ("openclaw", "CLAUDE_CODE_OAUTH_TOKEN"),
        ("claude", "OPENAI_API_KEY"),
        ("claude", "OPENROUTER_API_KEY"),
        ("codex", "GEMINI_API_KEY"),
        ("claude", "anthropic_api_key"),  # case matters for the exemption, not for the denylist
        ("openclaw", "AWS_SECRET_ACCESS_KEY"),
        ("openclaw", "MCP_API_KEY"),  # a marker family is never a provider key
    ],
)
def test_provider_keys_are_denied_for_other_tools(tool: str, name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=name):
        scrub(tool, tmp_path, extra={name: "k"})


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "LD_PRELOAD", "CLAUDECODE", "DATABASE_URL", "SSH_AUTH_SOCK"])
def test_denied_extra_raises_naming_it(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=name) as caught:
        scrub("claude", tmp_path, extra={name: "value-never-shown"})
    assert "value-never-shown" not in str(caught.value)


@pytest.mark.parametrize("name", ["AGENT_ROOMS_WAKE_DEPTH", "AGENT_ROOMS_RUN_ID", "agent_rooms_home"])
def test_extra_cannot_set_our_variables(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=name):
        scrub("codex", tmp_path, extra={name: "0"})


@pytest.mark.parametrize("name", ["A=B", "", "1X", "X Y"])
def test_extra_names_must_be_variable_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        scrub("codex", tmp_path, extra={name: "v"})


def test_allowed_extra_is_added(tmp_path: Path) -> None:
    env = scrub("claude", tmp_path, extra={"IS_SANDBOX": "1", "PROJECT_NOTE": "staging"})
    assert env["IS_SANDBOX"] == "1" and env["PROJECT_NOTE"] == "staging"


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("name", sorted(RUN_SETS))
def test_extra_cannot_replace_what_every_run_sets(tool: str, name: str, tmp_path: Path) -> None:
    # PATH above all: the CLI is found on the spawning process's PATH, and an agent's own PATH left its woken
    # CLI (or the interpreter it starts with) unfound, reported `cli_not_found` as if it were not installed.
    with pytest.raises(ValueError, match=f"{name} is set by agent-rooms for every run") as caught:
        scrub(tool, tmp_path, extra={name: "/opt/elsewhere"})
    assert "/opt/elsewhere" not in str(caught.value)


def test_unknown_tool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aider"):
        scrub("aider", tmp_path)


@pytest.mark.parametrize("name", [*SENTINELS, "github_token", "Aws_Region", "PGPASSWORD", "DO_TOKEN", "BASH_ENV"])
def test_denylist_matches(name: str) -> None:
    if name in {"AGENT_ROOMS_RUN_ID", "AGENT_ROOMS_WAKE_DEPTH"}:
        assert not is_denied(name)  # ours: set by the run, never copied from the parent
    else:
        assert is_denied(name)


# Sorted: BASE_ALLOW is a set, and every xdist worker must collect the same tests in the same order.
@pytest.mark.parametrize(
    "name", [*sorted(BASE_ALLOW), "CLAUDE_CONFIG_DIR", "CODEX_HOME", "OPENCLAW_HOME", "ANTHROPIC_BASE_URL"]
)
def test_denylist_spares_the_allowlist(name: str) -> None:
    assert not is_denied(name)


async def test_child_sees_only_the_scrubbed_names(tmp_path: Path) -> None:
    # End to end (invariant 70 of security.md): plant the sentinels in a real parent environment.
    parent = {**os.environ, **SENTINELS}
    env = scrub("claude", tmp_path, parent=parent)
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        done = await run_process(
            [sys.executable, str(CHILD), "env"],
            prompt=b"",
            env=env,
            cwd=tmp_path,
            on_event=events.append,
            is_terminal=lambda e: e.get("type") == "result",
            stop=anyio.Event(),
        )
    assert done.returncode == 0, done.stderr_tail
    names = set(events[0]["names"])
    # Python itself may add LC_CTYPE (PEP 538 locale coercion); it is on the allowlist.
    assert names <= BASE_ALLOW | TOOL_ALLOW["claude"] | SETS | CLAUDE_SETS
    assert names.isdisjoint(set(SENTINELS) - {"AGENT_ROOMS_RUN_ID", "AGENT_ROOMS_WAKE_DEPTH"})
