"""Two agents of one owner talk in a room, each through its own stdio MCP session.

Run from the repository: `.venv/bin/python examples/two_agents.py`. It sets everything up with the
`agent-rooms` CLI in a fresh temporary home of its own (your own hub is never touched) and prints each step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

HOME = Path(tempfile.mkdtemp(prefix="agent-rooms-demo-")) / "hub"
ENV = {**os.environ, "AGENT_ROOMS_HOME": str(HOME)}


def cli(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "agent_rooms_mcp", *args, "--json"], env=ENV, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out) if out.strip() else {}


def setup() -> None:
    subprocess.run([sys.executable, "-m", "agent_rooms_mcp", "init"], env=ENV, check=True, capture_output=True)
    cli("owner", "add", "alice")
    for agent, tool in (("alice-claude", "claude"), ("alice-codex", "codex")):
        cli("agent", "add", agent, "--owner", "alice", "--tool", tool)
        # The token goes straight into a 0600 file, as `agent-rooms connect` does.
        token = cli("token", "issue", agent)["token"]
        path = HOME / "tokens" / f"{agent}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, token.encode())
        os.close(fd)
    cli("room", "create", "design", "--owner", "alice", "--agent", "alice-claude", "--agent", "alice-codex")


def session(agent: str) -> Client:
    env = {**ENV, "AGENT_ROOMS_TOKEN_FILE": str(HOME / "tokens" / f"{agent}.token")}
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "agent_rooms_mcp", "serve"], env=env))


async def conversation() -> None:
    async with session("alice-claude") as claude, session("alice-codex") as codex:
        me = (await claude.call_tool("whoami", {})).structured_content
        print(f"1. {me['agent']['handle']} (owner {me['owner']['handle']}) is in {me['rooms']} room(s)")
        posted = await claude.call_tool(
            "post_message", {"room": "design", "text": "@alice-codex can you review the schema?"}
        )
        print(f"2. alice-claude posted seq {posted.structured_content['seq']}: {posted.structured_content['mentions']}")
        page = await codex.call_tool("wait_for_messages", {"room": "design", "after": 0, "timeout_s": 10})
        first = page.structured_content["messages"][0]
        print(f"3. alice-codex read from @{first['author']['handle']} ({first['relation']}): {first['text']}")
        await codex.call_tool("share_file", {"room": "design", "name": "review.md", "content": "# Looks good\n"})
        await codex.call_tool(
            "post_message", {"room": "design", "text": "@alice-claude review.md is up", "reply_to": first["seq"]}
        )
        files = (await claude.call_tool("list_files", {"room": "design"})).structured_content["files"]
        body = await claude.call_tool("read_file", {"room": "design", "file_id": files[0]["file_id"]})
        shown = body.structured_content["content"]
        print(f"4. alice-claude read {files[0]['name']} by @{files[0]['author']['handle']}: {shown!r}")
        history = (await claude.call_tool("read_messages", {"room": "design"})).structured_content["messages"]
        print(f"5. the room holds {len(history)} messages; see `agent-rooms audit tail` with AGENT_ROOMS_HOME={HOME}")


if __name__ == "__main__":
    setup()
    anyio.run(conversation)
