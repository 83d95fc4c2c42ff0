"""The `mcp add | get | list | remove` subcommands of the fake `claude` and `codex` (research/mcp-sdk.md §4.1,
§4.3, and the real CLIs' answers: Claude Code 2.1.197, Codex 0.171.0).

They take the real argument shapes and write the real files: Claude Code's `~/.claude.json` (user scope at
top level, local scope under `projects[cwd]`, or `$CLAUDE_CONFIG_DIR/.claude.json`) and `.mcp.json` (project
scope), Codex's `$CODEX_HOME/config.toml` (default `~/.codex`). Like the real ones, Claude's `add` refuses a
name its scope already holds and Codex's `add` replaces it.

Knobs: FAKE_CLAUDEAI_CONNECTORS, a JSON list of [name, url]: connectors synced from a Claude.ai account, shown
by `claude mcp list` as `claude.ai NAME: URL` unless `disableClaudeAiConnectors` is true in settings.json.
FAKE_CLI_LOG: a file each invocation's argv is appended to (one JSON line), so a test sees what ran.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any


def _log(tool: str, argv: list[str]) -> None:
    path = os.environ.get("FAKE_CLI_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "argv": argv}) + "\n")


def _home() -> Path:
    return Path(os.environ["HOME"])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# Claude Code ---------------------------------------------------------------------------------------------


def _claude_json() -> Path:
    config_dir = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(config_dir) / ".claude.json" if config_dir else _home() / ".claude.json"


def _claude_settings() -> Path:
    config_dir = os.environ.get("CLAUDE_CONFIG_DIR")
    return (Path(config_dir) if config_dir else _home() / ".claude") / "settings.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


SCOPE_WORDS = {"user": "user config", "local": "local config", "project": "project config"}


def _table(scope: str, data: dict[str, Any], create: bool) -> dict[str, Any] | None:
    if scope == "user":
        return data.setdefault("mcpServers", {}) if create else data.get("mcpServers")
    if scope == "local":
        project = data.setdefault("projects", {}).setdefault(os.getcwd(), {}) if create else None
        if project is None:
            project = data.get("projects", {}).get(os.getcwd())
            return None if project is None else project.get("mcpServers")
        return project.setdefault("mcpServers", {})
    return data.setdefault("mcpServers", {}) if create else data.get("mcpServers")


def _scope_file(scope: str) -> Path:
    return Path(os.getcwd()) / ".mcp.json" if scope == "project" else _claude_json()


def _all_claude() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for scope in ("local", "project", "user"):
        table = _table(scope, _load(_scope_file(scope)), create=False) or {}
        found += [(scope, name, entry) for name, entry in table.items()]
    return found


def claude(argv: list[str]) -> int:
    _log("claude", ["mcp", *argv])
    if not argv:
        print("Usage: claude mcp [options] [command]", file=sys.stderr)
        return 1
    command, rest = argv[0], argv[1:]
    if command == "add":
        return _claude_add(rest)
    if command == "get":
        return _claude_get(rest)
    if command == "remove":
        return _claude_remove(rest)
    if command == "list":
        return _claude_list()
    print(f"error: unknown command '{command}'", file=sys.stderr)
    return 1


def _claude_add(argv: list[str]) -> int:
    scope, transport, env, headers, positional = "local", "stdio", [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1 :]
            break
        if arg in ("-s", "--scope", "-t", "--transport"):
            value = argv[i + 1]
            if arg in ("-s", "--scope"):
                scope = value
            else:
                transport = value
            i += 2
            continue
        if arg in ("-e", "--env", "-H", "--header"):
            # commander's variadic `<values...>`: every following word that is not an option.
            target = env if arg in ("-e", "--env") else headers
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                target.append(argv[i])
                i += 1
            continue
        if arg.startswith("-"):
            print(f"error: unknown option '{arg}'", file=sys.stderr)
            return 1
        positional.append(arg)
        i += 1
    if scope not in SCOPE_WORDS:
        print(f"Invalid scope: {scope}. Must be one of: local, user, project", file=sys.stderr)
        return 1
    if len(positional) < 2:
        print("error: missing required argument 'name'" if not positional else "error: missing required argument "
              "'commandOrUrl'", file=sys.stderr)  # fmt: skip
        return 1
    name, target_or_command, args = positional[0], positional[1], positional[2:]
    env_map: dict[str, str] = {}
    for pair in env:
        if not re.fullmatch(r"[^=]+=.*", pair):
            print(f"Invalid environment variable format: {pair}", file=sys.stderr)
            return 1
        key, value = pair.split("=", 1)
        env_map[key] = value
    header_map: dict[str, str] = {}
    for header in headers:
        key, sep, value = header.partition(":")
        if not sep:
            print(f"Invalid header format: {header}", file=sys.stderr)
            return 1
        header_map[key.strip()] = value.strip()
    path = _scope_file(scope)
    data = _load(path)
    table = _table(scope, data, create=True)
    assert table is not None
    if name in table:
        print(f"MCP server {name} already exists in {SCOPE_WORDS[scope]}", file=sys.stderr)
        return 1
    if transport == "stdio":
        table[name] = {"type": "stdio", "command": target_or_command, "args": args, "env": env_map}
        said = f"Added stdio MCP server {name} with command: {' '.join([target_or_command, *args])}"
    else:
        entry: dict[str, Any] = {"type": transport, "url": target_or_command}
        if header_map:
            entry["headers"] = header_map
        table[name] = entry
        said = f"Added {transport.upper()} MCP server {name} with URL: {target_or_command}"
    _write(path, json.dumps(data, indent=2))
    print(f"{said} to {SCOPE_WORDS[scope]}\nFile modified: {path}")
    return 0


def _claude_get(argv: list[str]) -> int:
    name = argv[0] if argv else ""
    for scope, found, entry in _all_claude():
        if found == name:
            print(f"{name}:\n  Scope: {SCOPE_WORDS[scope]}\n  Type: {entry.get('type', 'stdio')}")
            if "url" in entry:
                print(f"  URL: {entry['url']}")
            else:
                print(f"  Command: {entry.get('command')}\n  Args: {' '.join(entry.get('args', []))}")
            return 0
    names = ", ".join(n for _, n, _ in _all_claude())
    print(f'No MCP server named "{name}". Configured servers: {names}', file=sys.stderr)
    return 1


def _claude_remove(argv: list[str]) -> int:
    name, scope = argv[0] if argv else "", None
    if "-s" in argv:
        scope = argv[argv.index("-s") + 1]
    for where in [scope] if scope else ["local", "project", "user"]:
        path = _scope_file(where)
        data = _load(path)
        table = _table(where, data, create=False)
        if table and name in table:
            del table[name]
            _write(path, json.dumps(data, indent=2))
            print(f"Removed MCP server {name} from {SCOPE_WORDS[where]}\nFile modified: {path}")
            return 0
    print(f"No MCP server found with name: {name}", file=sys.stderr)
    return 1


def _health(entry: dict[str, Any]) -> str:
    command = entry.get("command")
    if command is None or (os.path.isfile(command) and os.access(command, os.X_OK)):
        return "✔ Connected"
    return "✘ Failed to connect"


def _claude_list() -> int:
    print("Checking MCP server health…\n")
    for _, name, entry in _all_claude():
        if "url" in entry:
            print(f"{name}: {entry['url']} (HTTP) - {_health(entry)}")
        else:
            print(f"{name}: {' '.join([entry.get('command', ''), *entry.get('args', [])])} - {_health(entry)}")
    if not _load(_claude_settings()).get("disableClaudeAiConnectors"):
        for name, url in json.loads(os.environ.get("FAKE_CLAUDEAI_CONNECTORS") or "[]"):
            print(f"claude.ai {name}: {url} - ✔ Connected")
    return 0


# Codex ---------------------------------------------------------------------------------------------------


def _codex_config() -> Path:
    return Path(os.environ.get("CODEX_HOME") or _home() / ".codex") / "config.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for Codex's config: scalars and arrays, tables as `[a.b]` sections."""
    lines = [f"{_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        if isinstance(v, dict):
            section = f"{prefix}.{_key(k)}" if prefix else _key(k)
            body = _dump_toml(v, section)
            scalars = any(not isinstance(x, dict) for x in v.values())
            out += (f"\n[{section}]\n" if scalars else "") + body
    return out


def codex(argv: list[str]) -> int:
    _log("codex", ["mcp", *argv])
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    path = _codex_config()
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    servers = data.setdefault("mcp_servers", {})
    if command == "add":
        name, env, url, bearer, cmd = rest[0], {}, None, None, []
        i = 1
        while i < len(rest):
            if rest[i] == "--":
                cmd = rest[i + 1 :]
                break
            if rest[i] == "--env":
                key, _, value = rest[i + 1].partition("=")
                env[key] = value
            elif rest[i] == "--url":
                url = rest[i + 1]
            elif rest[i] == "--bearer-token-env-var":
                bearer = rest[i + 1]
            else:
                print(f"error: unexpected argument '{rest[i]}' found", file=sys.stderr)
                return 2
            i += 2
        if (url is None) == (not cmd):
            print("error: exactly one of --url or -- COMMAND is required", file=sys.stderr)
            return 2
        entry: dict[str, Any] = {}
        if url is not None:
            entry["url"] = url
            if bearer:
                entry["bearer_token_env_var"] = bearer
        else:
            entry["command"], entry["args"] = cmd[0], cmd[1:]
            if env:
                entry["env"] = env
        servers[name] = entry
        _write(path, _dump_toml(data))
        print(f"Added global MCP server '{name}'.")
        return 0
    if command == "get":
        name = rest[0] if rest else ""
        if name not in servers:
            print(f"Error: No MCP server named '{name}' found.", file=sys.stderr)
            return 1
        e = servers[name]
        transport = (
            {"type": "streamable_http", "url": e["url"], "bearer_token_env_var": e.get("bearer_token_env_var")}
            if "url" in e
            else {"type": "stdio", "command": e["command"], "args": e.get("args", []), "env": e.get("env")}
        )
        print(json.dumps({"name": name, "enabled": True, "transport": transport}, indent=2))
        return 0
    if command == "remove":
        name = rest[0] if rest else ""
        if name in servers:
            del servers[name]
            _write(path, _dump_toml(data))
            print(f"Removed global MCP server '{name}'.")
        else:
            print(f"No MCP server named '{name}' found.")
        return 0
    if command == "list":
        if not servers:
            print("No MCP servers configured yet. Try `codex mcp add my-tool -- my-command`.")
        for name, e in servers.items():
            print(f"{name}  {e.get('url') or e.get('command')}")
        return 0
    print(f"error: unrecognized subcommand '{command}'", file=sys.stderr)
    return 2
