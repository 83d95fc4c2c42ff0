"""The project keeps its promises about itself: layering, documentation, examples, invariant coverage."""

from __future__ import annotations

import ast
import doctest
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from agent_rooms_mcp import logs
from agent_rooms_mcp.cli import cli
from agent_rooms_mcp.errors import ErrorCode
from agent_rooms_mcp.server import TOOLS
from tests.invariants import DOC_COMMAND, INVARIANTS, render_doc

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
README = (ROOT / "README.md").read_text()

BANNED = {  # where -> imports it must never make (DESIGN §10: transport -> auth -> service -> store)
    # Rules are pure functions over loaded facts: nothing of the layers that load them, call them or serve them.
    "agent_rooms_mcp/policy": (
        "agent_rooms_mcp.store", "agent_rooms_mcp.services", "agent_rooms_mcp.web", "agent_rooms_mcp.cli",
        "agent_rooms_mcp.wake", "agent_rooms_mcp.server", "agent_rooms_mcp.http", "aiosqlite", "anyio", "mcp",
    ),
    "agent_rooms_mcp/content.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    "agent_rooms_mcp/services": (
        "agent_rooms_mcp.server", "agent_rooms_mcp.cli", "agent_rooms_mcp.http", "agent_rooms_mcp.wake", "mcp"
    ),
    "agent_rooms_mcp/store": (
        "agent_rooms_mcp.services", "agent_rooms_mcp.server", "agent_rooms_mcp.cli", "agent_rooms_mcp.auth",
        "agent_rooms_mcp.wake", "mcp",
    ),
    # auth -> store is downward (auth resolves a principal by reading the store); auth -> services is not.
    "agent_rooms_mcp/auth": ("agent_rooms_mcp.services", "agent_rooms_mcp.server", "agent_rooms_mcp.cli", "mcp"),
    # What services, the store and the audit chain share sits below auth, never inside it.
    "agent_rooms_mcp/audit.py": (
        "agent_rooms_mcp.auth", "agent_rooms_mcp.store", "agent_rooms_mcp.services", "agent_rooms_mcp.wake", "mcp"
    ),
    "agent_rooms_mcp/vault.py": ("agent_rooms_mcp.auth", "agent_rooms_mcp.store", "agent_rooms_mcp.services", "mcp"),
    "agent_rooms_mcp/home.py": ("agent_rooms_mcp.auth", "agent_rooms_mcp.store", "agent_rooms_mcp.services", "mcp"),
    "agent_rooms_mcp/encoding.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    "agent_rooms_mcp/envrules.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    "agent_rooms_mcp/auth/tokens.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    # A woken CLI's MCP server holds the run token and nothing of the hub (DESIGN §5, invariant 100).
    "agent_rooms_mcp/bridge.py": ("agent_rooms_mcp.store", "agent_rooms_mcp.services", "agent_rooms_mcp.hub", "mcp"),
    "agent_rooms_mcp/lines.py": ("agent_rooms_mcp.store", "agent_rooms_mcp.services", "agent_rooms_mcp.hub", "mcp"),
    # A supervisor works through the wake book alone (DESIGN §5): never the hub, services, store, vault or auth.
    "agent_rooms_mcp/wake": (
        "agent_rooms_mcp.hub", "agent_rooms_mcp.services", "agent_rooms_mcp.store", "agent_rooms_mcp.vault",
        "agent_rooms_mcp.auth", "agent_rooms_mcp.server", "agent_rooms_mcp.cli", "sqlite3", "aiosqlite", "mcp",
    ),
    # A sandboxed CLI's command prefix runs before every sandboxed CLI: the standard library, then (in its
    # relay child) anyio and the socket helper; nothing that reads the hub's home or settings (wake/relay.py).
    "agent_rooms_mcp/wake/relay.py": (
        "agent_rooms_mcp.store", "agent_rooms_mcp.services", "agent_rooms_mcp.hub", "agent_rooms_mcp.settings",
        "agent_rooms_mcp.home", "agent_rooms_mcp.logs", "structlog", "mcp",
    ),
    "agent_rooms_mcp/sockets.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    # What crosses the wake book and the run words: leaves every layer (and a remote listener) can use.
    "agent_rooms_mcp/book.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
    "agent_rooms_mcp/run_states.py": ("agent_rooms_mcp", "aiosqlite", "anyio", "mcp"),
}  # fmt: skip
# Leaves every layer may import although they are filed under a banned package: each has its own row
# above that keeps it a leaf (credential formats and id minting import nothing of ours).
LEAVES = ("agent_rooms_mcp.auth.tokens",)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (a function-level import counts), and for `from m import x`
    also `m.x`, so that `from agent_rooms_mcp import wake` is seen as importing `agent_rooms_mcp.wake`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {n for n in names if not any(n == leaf or n.startswith(leaf + ".") for leaf in LEAVES)}


# Which pieces of work exist in the code: the core hub, the task board ("consent"), the supervisor ("wake").
BUILT = {"core", "consent", "wake", "hardening"}


@pytest.mark.parametrize("where, banned", BANNED.items())
def test_layers_import_one_way(where: str, banned: tuple[str, ...]) -> None:
    root = ROOT / where
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        names = imported_names(path)
        assert not {m for m in names if m.startswith(banned)}, path


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "agent_rooms_mcp").rglob("*.py")))
def test_every_module_says_what_it_holds_in_its_first_line(path: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / path).read_text()))
    assert doc and len(doc.splitlines()[0].split()) >= 4, f"{path}: open with a docstring saying what it holds"


def command_paths(group: click.Group, prefix: str = "") -> Iterator[str]:
    # Through list_commands and get_command, as help and completion see them: the top group loads lazily.
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{prefix}{name} is listed but does not load"
        if isinstance(command, click.Group):
            yield from command_paths(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


@pytest.mark.parametrize("path", sorted(command_paths(cli)))
def test_cli_command_is_documented_and_has_help(path: str) -> None:
    assert f"`agent-rooms {path}" in README
    command: click.Command = cli
    for part in path.split():
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), part)
        assert found is not None
        command = found
    assert command.help and len(command.help.split()) >= 4


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_code_is_documented(code: ErrorCode) -> None:
    assert f"`{code}`" in README


@pytest.mark.parametrize("tool", [t for t, _ in TOOLS], ids=lambda t: t.__name__)
def test_tool_is_documented_with_a_real_sentence(tool: object) -> None:
    name = tool.__name__  # type: ignore[attr-defined]
    assert f"| `{name}` |" in README
    doc = tool.__doc__ or ""  # type: ignore[attr-defined]
    assert doc.strip().endswith(".") and len(doc.split()) >= 8


def test_readme_opens_with_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:15])
    assert "make run" in head and "make test" in head


def test_every_security_invariant_of_built_work_has_a_test() -> None:
    owed = {inv.number for inv in INVARIANTS if inv.issues & BUILT}
    cited = {
        int(n)
        for p in TESTS.rglob("test_*.py")
        for marks in re.findall(r"invariant\(([\d, ]+)\)", p.read_text())
        for n in marks.split(",")
    }
    assert owed - cited == set()


def test_docs_invariants_is_the_rendering_of_the_rows_and_the_tests_tags() -> None:
    shipped = (ROOT / "docs" / "INVARIANTS.md").read_text()
    assert shipped == render_doc(TESTS), f"docs/INVARIANTS.md is stale: run {DOC_COMMAND}"


# What a user reads ships with the project: a link or a repository path the README or docs name must exist in the
# checkout, and nothing points at the design notes that live beside the repository.
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_REPO_PATH = re.compile(r"`((?:docs|examples|tests|bench|agent_rooms_mcp)/[^`\s<>*]*)`")
_OUTSIDE = re.compile(r"\bDESIGN\b|\.\./|shared/research")


def unshipped(text: str, base: Path) -> list[str]:
    """Links and repository paths in `text` (a file in `base`) that do not exist, and mentions of files that
    live outside the repository."""
    links = [t.split("#")[0] for t in _LINK.findall(text) if "://" not in t and not t.startswith("#")]
    named = [base / t for t in links if t] + [ROOT / t for t in _REPO_PATH.findall(text)]
    missing = sorted(
        str(p.relative_to(ROOT)) for p in named if not (p.exists() and p.resolve().is_relative_to(ROOT.resolve()))
    )
    return missing + [m.group(0) for m in _OUTSIDE.finditer(text)]


def test_the_checker_of_shipped_names_catches_what_it_is_for() -> None:
    planted = "see [the design](../shared/DESIGN.md), `docs/NOPE.md` and [ok](docs/WAKE.md) and DESIGN §5"
    assert unshipped(planted, ROOT) == ["../shared/DESIGN.md", "docs/NOPE.md", "../", "DESIGN", "DESIGN"]


# docs/PERFORMANCE.md is the benchmark's developer notes (it names its own output, bench/results.json): not here.
@pytest.mark.parametrize(
    "doc", ["README.md", "CHANGELOG.md", "docs/THREAT_MODEL.md", "docs/WAKE.md", "docs/INVARIANTS.md"]
)
def test_the_readme_and_docs_name_only_files_that_ship(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text()
    if doc == "docs/INVARIANTS.md":  # its rows name tests, checked by the test above
        text = text.split("| # |")[0]
    assert unshipped(text, path.parent) == []


def test_make_run_serves_where_port_and_host_say_and_shows_progress_and_the_path_line() -> None:
    """`make run PORT=…` once ignored PORT; its install ran with pip --quiet (minutes of silence); and nothing
    said how to reach `agent-rooms` outside the checkout."""
    env = {"PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        ["make", "-n", "-B", "run", "PORT=8800", "HOST=127.0.0.2"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "quickstart --http http://127.0.0.2:8800/mcp" in run.stdout
    assert "serve --http --host 127.0.0.2 --port 8800" in run.stdout
    assert f'export PATH="{ROOT / ".venv" / "bin"}:$PATH"' in run.stdout
    [pip] = [line for line in run.stdout.splitlines() if "pip install" in line]
    assert "--quiet" not in pip and " -q" not in pip


def test_redaction_doctest() -> None:
    assert doctest.testmod(logs).failed == 0


def test_examples_match_what_connect_prints() -> None:
    stdio_toml = (ROOT / "examples" / "codex-config.toml").read_text()
    assert 'args = ["serve"]' in stdio_toml and "AGENT_ROOMS_TOKEN_FILE" in stdio_toml
    assert 'bearer_token_env_var = "AGENT_ROOMS_TOKEN"' in stdio_toml
    claude = (ROOT / "examples" / "claude-stdio.sh").read_text()
    assert "claude mcp add --scope user agent-rooms" in claude and "-- " in claude and " serve" in claude
    http = (ROOT / "examples" / "claude-http.sh").read_text()
    # A shell `$(cat FILE)` in the header would store the token itself in ~/.claude.json (issue 18).
    assert "'Authorization: Bearer ${AGENT_ROOMS_TOKEN}'" in http and "Bearer $(cat" not in http


def test_the_two_agent_demo_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "two_agents.py")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
        # A bound for a loaded machine (the suite runs on several workers beside other work), not a speed check.
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "5. the room holds 2 messages" in done.stdout


# What a stdio `serve` must not load at start (DESIGN §11's cold start): the console's templates, our HTTP app and
# its web layers, a run's socket (the first spawn imports it), the other commands' modules and what only they use.
# uvicorn and starlette are not on the list: the SDK's own server imports them (mcp.server.streamable_http).
STDIO_SERVE_NEVER_IMPORTS = (
    "jinja2",
    "agent_rooms_mcp.http",
    "agent_rooms_mcp.web",
    "agent_rooms_mcp.run_socket",
    "agent_rooms_mcp.serving",
    "agent_rooms_mcp.doctor",
    "agent_rooms_mcp.listener",
    "agent_rooms_mcp.clients",
    "agent_rooms_mcp.remote",
    "agent_rooms_mcp.owner_actions",
    *(f"agent_rooms_mcp.cli.{m}" for m in ("hubcmds", "connect", "agent", "listen", "device", "console", "room")),
)


_packages = tuple(f"{m}." for m in STDIO_SERVE_NEVER_IMPORTS)


def test_a_stdio_serve_imports_neither_the_http_stack_nor_the_other_commands(tmp_path: Path) -> None:
    """Every module a real `python -m agent_rooms_mcp serve` imports, from spawn through `initialize`, the first
    `tools/list` and a call (the hub open, the supervisor running), as `-X importtime` lists them: an assertion on
    imports, not on time."""
    env = {"PATH": "/usr/bin:/bin", "AGENT_ROOMS_HOME": str(tmp_path / "home"), "AGENT_ROOMS_SUPERVISOR": "1"}
    subprocess.run([sys.executable, "-m", "agent_rooms_mcp", "init"], env=env, check=True, capture_output=True)
    hello = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }  # fmt: skip
    lines = [
        hello,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        # Answered once the hub has opened (UNAUTHENTICATED: no token): a client that leaves right after the list
        # never gets the hub opened for it (stdio.py), and the supervisor's imports are part of what is checked.
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}},
    ]
    argv = [sys.executable, "-X", "importtime", "-m", "agent_rooms_mcp", "serve"]
    with subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
        proc.stdin.flush()
        answer: dict[str, Any] = {}
        listed: dict[str, Any] = {}
        while answer.get("id") != 3:
            line = proc.stdout.readline()
            assert line, "the server closed stdout before answering tools/list and the call"
            answer = json.loads(line)
            listed = answer if answer.get("id") == 2 else listed
        proc.stdin.close()  # EOF ends a stdio server
        stderr = proc.stderr.read().decode()
    assert listed["result"]["tools"], stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "agent_rooms_mcp.stdio" in imported and "agent_rooms_mcp.wake.supervisor" in imported  # the real path
    assert sorted(m for m in imported if m in STDIO_SERVE_NEVER_IMPORTS or m.startswith(_packages)) == []


def test_make_run_beyond_loopback_is_refused_before_quickstart_prints_lines_for_it(tmp_path: Path) -> None:
    """`make run HOST=0.0.0.0` printed paste-able `http://0.0.0.0:…/mcp` lines, then serve refused to bind."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AGENT_ROOMS_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        ["make", "run", "HOST=0.0.0.0", "PORT=19103"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0 and "0.0.0.0" not in run.stdout, run.stdout
    assert "HOST=0.0.0.0 is beyond it" in run.stderr and "Public mode" in run.stderr, run.stderr
    assert not (tmp_path / "home").exists()  # quickstart never ran
