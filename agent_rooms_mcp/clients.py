"""The MCP clients an agent connects with (DESIGN §9): the entry `connect` wants in Claude Code or Codex, the
client's own command that adds it (`--apply`), and the drift `connect --check` and `doctor` report, one
implementation for both.

A token *value* never goes into a client's configuration: a stdio entry names the agent's 0600 token file
(AGENT_ROOMS_TOKEN_FILE), an HTTP entry the client's environment reference (`${AGENT_ROOMS_TOKEN}` in a Claude
header, `bearer_token_env_var` for Codex). Entries are read from the clients' own files (formats in the
research notes, checked against the real CLIs): `~/.claude.json` (user and local scope), `.mcp.json` in the
working directory (project scope), and Codex's `config.toml`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from agent_rooms_mcp.auth.tokens import holds_credential
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.home import check_private_file, write_private_file
from agent_rooms_mcp.models import CheckStatus, DoctorCheck, TokenInfo
from agent_rooms_mcp.settings import Settings

Client = Literal["claude", "codex"]
# How the drift checks ask the hub about a token they hold, without using it (Accounts.token_status).
TokenStatus = Callable[[str], Awaitable[TokenInfo | None]]
CLIENTS: tuple[Client, ...] = ("claude", "codex")
SERVER_NAME = "agent-rooms"
TOKEN_ENV = "AGENT_ROOMS_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8765/mcp"
# Claude Code expands this when it connects (research/mcp-sdk.md §4.1): the header holds a reference, not a token.
BEARER_REFERENCE = "Bearer ${" + TOKEN_ENV + "}"
# How `claude mcp list` names a connector synced from the user's Claude.ai account (not in any config file).
_CONNECTOR_LINE = re.compile(r"^claude\.ai (?P<name>.+?): (?P<url>\S+)")


def command_path() -> str:
    """The absolute path of this installation's `agent-rooms`, so clients need no PATH changes."""
    beside = Path(sys.executable).parent / "agent-rooms"
    if beside.exists():
        return str(beside)
    return shutil.which("agent-rooms") or "agent-rooms"


def token_file(settings: Settings, agent: str) -> Path:
    return settings.tokens_dir / f"{agent}.token"


@dataclass(frozen=True)
class Entry:
    """One MCP server entry, as either client holds it, reduced to what decides where it connects and how."""

    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    bearer_env: str | None = None  # Codex's bearer_token_env_var

    @property
    def http(self) -> bool:
        return self.url is not None

    def env_value(self, name: str) -> str | None:
        return dict(self.env).get(name)


def wanted(settings: Settings, client: Client, agent: str, url: str | None) -> Entry:
    """The entry `connect` makes for `agent` in `client`: stdio through the token file, or HTTP through the
    client's environment reference."""
    if url is None:
        env = {"AGENT_ROOMS_HOME": str(settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_file(settings, agent))}
        return Entry(command=command_path(), args=("serve",), env=tuple(sorted(env.items())))
    if client == "claude":
        return Entry(url=url, headers=(("Authorization", BEARER_REFERENCE),))
    return Entry(url=url, bearer_env=TOKEN_ENV)


def add_argv(client: Client, binary: str, name: str, entry: Entry) -> list[str]:
    """The client's own command adding `entry` as `name`, at user scope (every project), as its `--help`
    spells it. NAME comes first: `-e`/`-H` are variadic in Claude Code and would swallow it."""
    if client == "claude":
        argv = [binary, "mcp", "add", "--scope", "user"]
        if entry.url is not None:
            argv += ["--transport", "http", name, entry.url]
            for key, value in entry.headers:
                argv += ["-H", f"{key}: {value}"]
            return argv
        argv.append(name)
        for key, value in entry.env:
            argv += ["-e", f"{key}={value}"]
        return [*argv, "--", entry.command or "agent-rooms", *entry.args]
    if entry.url is not None:
        return [binary, "mcp", "add", name, "--url", entry.url, "--bearer-token-env-var", entry.bearer_env or TOKEN_ENV]
    argv = [binary, "mcp", "add", name]
    for key, value in entry.env:
        argv += ["--env", f"{key}={value}"]
    return [*argv, "--", entry.command or "agent-rooms", *entry.args]


def remove_argv(client: Client, binary: str, name: str) -> list[str]:
    return [binary, "mcp", "remove", name, "-s", "user"] if client == "claude" else [binary, "mcp", "remove", name]


def binary(settings: Settings, client: Client) -> str:
    return settings.wake.claude_bin if client == "claude" else settings.wake.codex_bin


# Reading the clients' files.


@dataclass(frozen=True)
class Found:
    """An MCP server entry found in a client's configuration."""

    client: Client
    scope: str  # user | local | project
    file: Path
    name: str
    entry: Entry


class ConfigError(Exception):
    """A client's configuration file that cannot be read: named with the reason, never quoted."""


def _text(path: Path) -> str | None:
    """A client's file, or None when there is none; unreadable is a ConfigError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None


def _json(path: Path) -> dict[str, Any] | None:
    if (text := _text(path)) is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON (line {e.lineno})") from None
    return data if isinstance(data, dict) else {}


def _toml(path: Path) -> dict[str, Any] | None:
    if (text := _text(path)) is None:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not TOML ({str(e).split('(')[0].strip()})") from None


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def _entry(raw: object) -> Entry:
    if not isinstance(raw, Mapping):
        return Entry()
    args = raw.get("args")
    url = raw.get("url")
    return Entry(
        command=str(raw["command"]) if raw.get("command") is not None else None,
        args=tuple(str(a) for a in args) if isinstance(args, list) else (),
        env=_pairs(raw.get("env")),
        url=str(url) if url is not None else None,
        headers=_pairs(raw.get("headers")),
        bearer_env=str(raw["bearer_token_env_var"]) if raw.get("bearer_token_env_var") else None,
    )


def _servers(client: Client, scope: str, file: Path, table: object) -> list[Found]:
    if not isinstance(table, Mapping):
        return []
    return [Found(client, scope, file, str(name), _entry(raw)) for name, raw in table.items()]


def claude_entries(settings: Settings, cwd: Path) -> list[Found]:
    """Claude Code's entries this directory sees: user and local scope in `~/.claude.json`, project scope in
    `.mcp.json` (research/mcp-sdk.md §4.1)."""
    path = settings.clients.claude_json
    found: list[Found] = []
    data = _json(path)
    if data is not None:
        found += _servers("claude", "user", path, data.get("mcpServers"))
        projects = data.get("projects")
        project = projects.get(str(cwd)) if isinstance(projects, Mapping) else None
        if isinstance(project, Mapping):
            found += _servers("claude", "local", path, project.get("mcpServers"))
    shared = cwd / ".mcp.json"
    project_data = _json(shared)
    if project_data is not None:
        found += _servers("claude", "project", shared, project_data.get("mcpServers"))
    return found


def codex_entries(settings: Settings) -> list[Found]:
    path = settings.clients.codex_config
    data = _toml(path)
    return [] if data is None else _servers("codex", "user", path, data.get("mcp_servers"))


def entries(settings: Settings, client: Client, cwd: Path) -> list[Found]:
    return claude_entries(settings, cwd) if client == "claude" else codex_entries(settings)


def user_entry(settings: Settings, client: Client, name: str) -> Found | None:
    """The entry called `name` at user scope, where `--apply` writes."""
    return next(
        (f for f in entries(settings, client, Path.cwd()) if f.scope == "user" and f.name == name),
        None,
    )


# What `--apply` did, kept in the home so `--check`, `--new-token` and `doctor` know its entries.


@dataclass(frozen=True)
class Applied:
    client: Client
    name: str
    agent: str
    url: str | None
    file: str
    applied_at: str


def load_applied(settings: Settings) -> list[Applied]:
    path = settings.applied_clients_path
    if not path.exists():
        return []
    check_private_file(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Applied(**row) for row in data.get("entries", [])]


def _save_applied(settings: Settings, rows: list[Applied]) -> None:
    body = json.dumps({"entries": [asdict(r) for r in rows]}, indent=2) + "\n"
    write_private_file(settings.applied_clients_path, body.encode("utf-8"))


def record_applied(settings: Settings, row: Applied) -> None:
    rows = [r for r in load_applied(settings) if (r.client, r.name) != (row.client, row.name)]
    _save_applied(settings, [*rows, row])


# Applying.


@dataclass(frozen=True)
class ApplyPlan:
    client: Client
    name: str
    entry: Entry
    existing: Found | None

    @property
    def unchanged(self) -> bool:
        return self.existing is not None and self.existing.entry == self.entry


class ClientCommandFailed(Exception):
    """The client's own command failed or was not found: its words, for the person to act on."""


def plan(settings: Settings, client: Client, agent: str, url: str | None, name: str) -> ApplyPlan:
    return ApplyPlan(client, name, wanted(settings, client, agent, url), user_entry(settings, client, name))


def _run(settings: Settings, argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=settings.limits.client_cli_timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise ClientCommandFailed(f"{argv[0]} is not installed (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ClientCommandFailed(f"`{' '.join(argv[:3])}` did not finish within "
                                  f"{settings.limits.client_cli_timeout_s}s") from None  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ClientCommandFailed(f"`{' '.join(argv[:3])}` failed: {said[-1] if said else f'exit {done.returncode}'}")
    return done.stdout


def apply(settings: Settings, step: ApplyPlan, agent: str, url: str | None) -> Found:
    """Replace (if there is one) and add the entry with the client's own commands, then read it back: the entry
    counts as applied only once the client's file holds exactly what was asked."""
    program = binary(settings, step.client)
    if step.existing is not None:
        _run(settings, remove_argv(step.client, program, step.name))
    _run(settings, add_argv(step.client, program, step.name, step.entry))
    now = user_entry(settings, step.client, step.name)
    if now is None or now.entry != step.entry:
        raise ClientCommandFailed(
            f"{program} reported success, but its configuration does not hold the entry asked for"
        )
    record_applied(settings, Applied(step.client, step.name, agent, url, str(now.file), now_utc()))
    return now


# Drift: what `connect --check` and `doctor` report, each under a stable id.

OK, WARN, FAIL = CheckStatus.OK, CheckStatus.WARN, CheckStatus.FAIL


def _check(check_id: str, status: CheckStatus, message: str, fix: str | None = None) -> DoctorCheck:
    return DoctorCheck(id=check_id, status=status, message=message, fix=fix)


def points_here(settings: Settings, found: Found, urls: set[str]) -> bool:
    """Whether an entry reaches this hub: a stdio `agent-rooms serve` of this home, or one of its URLs."""
    entry = found.entry
    if entry.url is not None:
        return entry.url.rstrip("/") in urls
    if entry.command is None or Path(entry.command).name != "agent-rooms" or "serve" not in entry.args:
        return False
    home = entry.env_value("AGENT_ROOMS_HOME")
    default = Path.home() / ".agent-rooms"
    return Path(home or default).expanduser().absolute() == settings.home


@dataclass
class Scan:
    """Every client's entries, the files that could not be read, and the files holding a credential."""

    found: list[Found] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)


def _credential_places(value: object, where: str) -> Iterator[str]:
    if isinstance(value, str):
        if holds_credential(value):
            yield where
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _credential_places(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _credential_places(v, f"{where}[{i}]")


def scan(settings: Settings, cwd: Path) -> Scan:
    result = Scan()
    for client in CLIENTS:
        try:
            result.found += entries(settings, client, cwd)
        except ConfigError as e:
            result.unreadable.append(str(e))
    files = [settings.clients.claude_json, cwd / ".mcp.json", settings.clients.codex_config]
    for path in files:
        try:
            data: object = _toml(path) if path.suffix == ".toml" else _json(path)
        except ConfigError:
            # Unparseable: look at the bytes; the report names the file, never what it holds.
            try:
                data = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
        # Where in the file (a key path): enough to find it, and the value is never quoted.
        result.credentials += [f"{path}: {p or 'text'}" for p in _credential_places(data, "")]
    return result


async def drift(
    settings: Settings, token_status: TokenStatus, cwd: Path, urls: set[str], *, list_connectors: bool = True
) -> list[DoctorCheck]:
    """Each way a client's configuration for this hub can have gone wrong, as checks (DESIGN §9)."""
    applied = load_applied(settings)
    urls = {u.rstrip("/") for u in urls} | {a.url.rstrip("/") for a in applied if a.url}
    seen = scan(settings, cwd)
    here = [f for f in seen.found if points_here(settings, f, urls)]
    checks = [_entries_check(settings, applied, seen)]
    checks.append(await _tokens_check(settings, here, applied, token_status))
    checks.append(_duplicates_check(here))
    checks.append(_literal_check(seen))
    checks.append(_connector_check(settings, here, urls, list_connectors=list_connectors))
    return checks


def _entries_check(settings: Settings, applied: list[Applied], seen: Scan) -> DoctorCheck:
    if seen.unreadable:
        return _check("clients.entries", FAIL, "; ".join(seen.unreadable), "mend or move the file it names")
    for row in applied:
        now = next((f for f in seen.found if (f.client, f.scope, f.name) == (row.client, "user", row.name)), None)
        again = f"agent-rooms connect {row.agent} --client {row.client}" + (f" --http {row.url}" if row.url else "")
        if now is None:
            return _check("clients.entries", FAIL, f"{row.client}'s entry {row.name!r}, applied {row.applied_at}, is"
                          f" gone from {row.file}", f"{again} --apply")  # fmt: skip
        if now.entry != wanted(settings, row.client, row.agent, row.url):
            return _check("clients.entries", FAIL, f"{row.client}'s entry {row.name!r} in {row.file} changed since"
                          f" `--apply` made it", f"{again} --apply (it asks before replacing)")  # fmt: skip
    if not applied:
        return _check("clients.entries", OK, "no entry made by `connect --apply` to watch")
    return _check("clients.entries", OK, f"{len(applied)} entry(ies) as `--apply` made them")


async def _tokens_check(
    settings: Settings, here: list[Found], applied: list[Applied], token_status: TokenStatus
) -> DoctorCheck:
    """Every token an entry for this hub uses: the file a stdio entry names, the file of the agent an HTTP
    entry was applied for, and AGENT_ROOMS_TOKEN in this shell when an HTTP entry will send it."""
    files: dict[Path, str] = {}
    for f in here:
        named = f.entry.env_value("AGENT_ROOMS_TOKEN_FILE")
        if named:
            files[Path(named)] = f"{f.client}'s entry {f.name!r}"
    for row in applied:
        if row.url:
            files.setdefault(token_file(settings, row.agent), f"{row.client}'s entry {row.name!r}")
    warnings: list[str] = []
    checked = 0
    for path, whose in files.items():
        try:
            check_private_file(path)
            secret = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            agent = path.name.removesuffix(".token")
            return _check("clients.token", FAIL, f"{whose} reads {path}, which is missing",
                          f"agent-rooms connect {agent} (it writes a new token file)")  # fmt: skip
        except (OSError, UnicodeDecodeError) as e:
            return _check("clients.token", FAIL, f"{whose} reads {path}: {e}", f"chmod 600 {path}")
        verdict = await _judge(settings, token_status, secret, f"the token in {path} ({whose})", path)
        if verdict.status is FAIL:
            return verdict
        if verdict.status is WARN:
            warnings.append(verdict.message)
        checked += 1
    if settings.stdio_token and any(f.entry.http for f in here):
        verdict = await _judge(settings, token_status, settings.stdio_token, f"{TOKEN_ENV} in this shell", None)
        if verdict.status is FAIL:
            return verdict
        checked += 1
    if warnings:
        return _check("clients.token", WARN, "; ".join(warnings), "agent-rooms connect AGENT --new-token")
    return _check("clients.token", OK, f"{checked} token(s) the client entries use are valid")


async def _judge(
    settings: Settings, token_status: TokenStatus, secret: str, what: str, path: Path | None
) -> DoctorCheck:
    info = await token_status(secret)
    agent = info.agent if info is not None else (path.name.removesuffix(".token") if path else "AGENT")
    fix = f"agent-rooms connect {agent} --new-token"
    if path is None:
        fix += f", then export {TOKEN_ENV} again from its token file"
    if info is None:
        return _check("clients.token", FAIL, f"{what} is no token this hub issued", fix)
    if info.status != "active":
        return _check("clients.token", FAIL, f"{what} is {info.status} (token {info.token_id})", fix)
    left = datetime.fromisoformat(info.expires_at) - datetime.now(UTC)
    if left < timedelta(seconds=settings.limits.doctor_token_warn_s):
        return _check("clients.token", WARN, f"{what} expires at {info.expires_at}", fix)
    return _check("clients.token", OK, f"{what} is valid until {info.expires_at}")


def _duplicates_check(here: list[Found]) -> DoctorCheck:
    for client in CLIENTS:
        mine = [f for f in here if f.client == client]
        if len(mine) > 1:
            where = ", ".join(f"{f.name!r} ({f.scope} scope, {f.file})" for f in mine)
            fix = f"keep one: {client} mcp remove NAME" + (" -s SCOPE" if client == "claude" else "")
            return _check("clients.duplicate", FAIL, f"{client} has {len(mine)} entries for this hub: {where}", fix)
    return _check("clients.duplicate", OK, "at most one entry per client for this hub")


def _literal_check(seen: Scan) -> DoctorCheck:
    if seen.credentials:
        return _check(
            "clients.literal_token",
            FAIL,
            "a credential is written into a client's configuration at " + "; ".join(seen.credentials),
            "revoke it (agent-rooms token list / token revoke ID), remove the entry, and add it again with "
            "agent-rooms connect AGENT --client CLIENT --apply",
        )
    return _check("clients.literal_token", OK, "no credential written into any client's configuration")


def connectors_disabled(settings: Settings) -> bool:
    try:
        data = _json(settings.clients.claude_settings)
    except ConfigError:
        return False
    return bool(data and data.get("disableClaudeAiConnectors") is True)


def disable_connectors(settings: Settings) -> Path:
    """Set `disableClaudeAiConnectors: true` in Claude Code's user settings, keeping every other key: one
    identity per Claude account (DESIGN §9.4). Done only with the person's consent."""
    path = settings.clients.claude_settings
    data = _json(path) or {}
    data["disableClaudeAiConnectors"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return path


def synced_connectors(settings: Settings) -> list[tuple[str, str]]:
    """The Claude.ai connectors Claude Code loads beside its own entries: only `claude mcp list` shows them."""
    try:
        listed = _run(settings, [settings.wake.claude_bin, "mcp", "list"])
    except ClientCommandFailed:
        return []
    found = (_CONNECTOR_LINE.match(line.strip()) for line in listed.splitlines())
    return [(m["name"], m["url"]) for m in found if m is not None]


def _connector_check(settings: Settings, here: list[Found], urls: set[str], *, list_connectors: bool) -> DoctorCheck:
    cli = [f for f in here if f.client == "claude"]
    if not cli:
        return _check("clients.connector", OK, "no Claude Code entry for this hub")
    if connectors_disabled(settings):
        return _check("clients.connector", OK, f"Claude.ai connectors are off in {settings.clients.claude_settings}")
    if not list_connectors or shutil.which(settings.wake.claude_bin) is None:
        return _check("clients.connector", OK, "Claude Code is not here to list synced connectors")
    ours = [(n, u) for n, u in synced_connectors(settings) if u.rstrip("/") in urls]
    if ours:
        names = ", ".join(f"claude.ai {n} ({u})" for n, u in ours)
        return _check(
            "clients.connector",
            FAIL,
            f"Claude Code loads the synced connector {names} beside its entry {cli[0].name!r}: two identities"
            " for one Claude account",
            f"agent-rooms connect --check --yes sets disableClaudeAiConnectors: true in"
            f" {settings.clients.claude_settings}",
        )
    return _check("clients.connector", OK, "no synced Claude.ai connector reaches this hub")


def token_env_line(settings: Settings, agent: str) -> str:
    """How a person gives an HTTP entry its token: read from the file into the environment at start, so the
    value never lands in a configuration file or the shell history."""
    return f'export {TOKEN_ENV}="$(cat {token_file(settings, agent)})"'
