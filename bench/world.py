"""A small populated hub in a fresh home, built through the services like `tests/conftest.build_world`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.hub import Hub, init_home
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.settings import Settings

OPERATOR = Actor("operator", "bench-operator")
AGENT = "alice-claude"
ROOM = "lobby"
SCOPES = parse_scopes("read,post,task")
# The bench calls far faster than an agent may (DESIGN §9.3's per-agent buckets): the limits are raised out of
# its way, while every call still pays for being counted.
UNLIMITED_RATES = {
    f"AGENT_ROOMS_LIMIT_RATE_{kind}_PER_MIN": str(10**9) for kind in ("POSTS", "FILE_WRITES", "TASK_WRITES", "READS")
}


async def build_hub(home: Path) -> dict[str, str]:
    """Owners alice and bob, four agents, room `lobby` with alice-claude in it; returns handle -> token."""
    settings = Settings(home=home)
    await init_home(settings, OPERATOR)
    tokens: dict[str, str] = {}
    async with Hub.open(settings) as hub:
        for owner in ("alice", "bob"):
            await hub.accounts.add_owner(OPERATOR, owner)
        for handle, owner in (("alice-claude", "alice"), ("alice-codex", "alice"), ("bob-claude", "bob")):
            await hub.accounts.add_agent(OPERATOR, handle, owner, AgentTool.CLAUDE, SCOPES, None)
            tokens[handle] = (await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))).token
        await hub.rooms.create(OPERATOR, ROOM, "alice", ["alice-claude", "alice-codex"])
    return tokens
