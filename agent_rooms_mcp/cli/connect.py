"""`agent-rooms connect`: the exact client configuration for an agent, with its token kept in a 0600 file.

The token is never printed into a prompt or a config: clients read it from the file, or from an
environment variable the user fills from the file.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from agent_rooms_mcp.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8765/mcp"


def command_path() -> str:
    """The absolute path of this installation's `agent-rooms`, so clients need no PATH changes."""
    beside = Path(sys.executable).parent / "agent-rooms"
    if beside.exists():
        return str(beside)
    return shutil.which("agent-rooms") or "agent-rooms"


def token_file(settings: Settings, agent: str) -> Path:
    return settings.tokens_dir / f"{agent}.token"


def claude_stdio(settings: Settings, agent: str) -> str:
    env = {"AGENT_ROOMS_HOME": str(settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_file(settings, agent))}
    flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in env.items())
    return f"claude mcp add agent-rooms {flags} -- {shlex.quote(command_path())} serve"


def claude_http(settings: Settings, agent: str, url: str) -> str:
    # $(cat …) runs in the user's shell at add time: the token goes from the file into Claude's config.
    header = f'"Authorization: Bearer $(cat {shlex.quote(str(token_file(settings, agent)))})"'
    return f"claude mcp add --transport http agent-rooms {url} -H {header}"


def codex_toml(settings: Settings, agent: str, url: str | None) -> str:
    if url is not None:
        return (
            f'# export AGENT_ROOMS_TOKEN="$(cat {token_file(settings, agent)})" before starting codex\n'
            "[mcp_servers.agent-rooms]\n"
            f"url = {json.dumps(url)}\n"
            'bearer_token_env_var = "AGENT_ROOMS_TOKEN"\n'
        )
    return (
        "[mcp_servers.agent-rooms]\n"
        f"command = {json.dumps(command_path())}\n"
        'args = ["serve"]\n'
        "[mcp_servers.agent-rooms.env]\n"
        f"AGENT_ROOMS_HOME = {json.dumps(str(settings.home))}\n"
        f"AGENT_ROOMS_TOKEN_FILE = {json.dumps(str(token_file(settings, agent)))}\n"
    )


def mcp_json(settings: Settings, agent: str, url: str | None) -> str:
    if url is not None:
        entry: dict[str, object] = {
            "type": "http",
            "url": url,
            "headers": {"Authorization": "Bearer ${AGENT_ROOMS_TOKEN}"},
        }
    else:
        entry = {
            "type": "stdio",
            "command": command_path(),
            "args": ["serve"],
            "env": {"AGENT_ROOMS_HOME": str(settings.home), "AGENT_ROOMS_TOKEN_FILE": str(token_file(settings, agent))},
        }
    return json.dumps({"mcpServers": {"agent-rooms": entry}}, indent=2)
