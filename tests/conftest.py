"""A real hub on a real SQLite file, populated through the services, and real MCP clients on it."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.home import write_private_file
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.hub import Hub, init_home
from agent_rooms_mcp.principals import AgentTool, parse_scopes
from agent_rooms_mcp.server import create_server
from agent_rooms_mcp.settings import DEFAULT_LIMITS, Settings, WakeSettings

# The wake tests' fixtures (fake CLIs, a world that wakes agents) live beside their helpers.
pytest_plugins = ("tests.wakeworld",)

OPERATOR = Actor("operator", "test-operator")
NO_SUPERVISOR = WakeSettings(enabled=False)
# The suite makes far more calls per agent and minute than an agent may (DESIGN §9.3). Tests of other things
# run with the per-agent buckets out of their way, in process and in every server process they start (whose
# limits come from the environment); tests/test_ratelimit.py sets the limits it tests.
SUITE_RATES = {f"rate_{kind}_per_min": 10**6 for kind in ("posts", "file_writes", "task_writes", "reads")}
for _name, _value in SUITE_RATES.items():
    os.environ.setdefault(f"AGENT_ROOMS_LIMIT_{_name.upper()}", str(_value))
HTTP_BASE = "http://127.0.0.1:8765"

# handle -> (owner, scopes)
AGENTS: dict[str, tuple[str, str]] = {
    "alice-claude": ("alice", "read,post,task"),
    "alice-codex": ("alice", "read,post,task"),
    "alice-admin": ("alice", "read,post,task,manage"),
    "alice-mute": ("alice", ""),
    "bob-claude": ("bob", "read,post,task"),
    "bob-codex": ("bob", "read,post,task,invoke"),
    "bob-admin": ("bob", "read,post,task,consent,manage"),
    "carol-claude": ("carol", "read,post,task"),
}
# room -> (creating owner, its agents); bob joins "shared" through an invite.
ROOMS: dict[str, tuple[str, list[str]]] = {
    "lobby": ("alice", ["alice-claude", "alice-codex", "alice-admin", "alice-mute"]),
    "shared": ("alice", ["alice-claude", "alice-admin"]),
    "bobs-den": ("bob", ["bob-claude", "bob-codex"]),
}
# Bob's agents that come into "shared" with his invite; bob-admin decides for him from outside it.
SHARED_BOB_AGENTS = ["bob-claude", "bob-codex"]


@dataclass
class World:
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)

    @property
    def db(self) -> Path:
        return self.settings.db_path

    def settings_for(self, token: str | None) -> Settings:
        return replace(self.settings, stdio_token=token)

    def client(self, agent: str | None, mode: str = "auto", *, token: str | None = None) -> Client:
        """An in-memory MCP client session acting as `agent` (or with a raw `token`)."""
        settings = self.settings_for(token if agent is None else self.tokens[agent])
        server = create_server(lambda _: Hub.open(settings))
        # raise_exceptions surfaces crashes outside tool bodies; it is unusable in legacy mode.
        return Client(server, mode=mode, raise_exceptions=mode == "auto")

    @asynccontextmanager
    async def session(self, agent: str, transport: str, mode: str) -> AsyncIterator[Client]:
        """A real MCP session as `agent` over `transport`: memory, stdio (a subprocess) or http (in-process ASGI)."""
        token = self.tokens[agent]
        if transport == "memory":
            async with self.client(agent, mode) as c:
                yield c
        elif transport == "stdio":
            token_file = self.settings.home / "tokens" / f"{agent}.token"
            if not token_file.exists():
                write_private_file(token_file, token.encode())
            env = {
                **os.environ,
                "AGENT_ROOMS_HOME": str(self.settings.home),
                "AGENT_ROOMS_TOKEN_FILE": str(token_file),
                "AGENT_ROOMS_SUPERVISOR": "1" if self.settings.wake.enabled else "0",
            }
            params = StdioServerParameters(command=sys.executable, args=["-m", "agent_rooms_mcp", "serve"], env=env)
            async with Client(params, mode=mode) as c:
                yield c
        else:
            async with open_http_app(self.settings) as app:
                http = httpx2.AsyncClient(
                    transport=httpx2.ASGITransport(app=app), headers={"Authorization": f"Bearer {token}"}
                )
                async with http, Client(streamable_http_client(f"{HTTP_BASE}/mcp", http_client=http), mode=mode) as c:
                    yield c

    @asynccontextmanager
    async def hub(self) -> AsyncIterator[Hub]:
        async with Hub.open(self.settings) as hub:
            yield hub

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    def chain_verifies(self) -> bool:
        """Whether the audit log's hash chain, read straight from the file, is intact."""
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return audit.verify(conn).ok
        finally:
            conn.close()

    def fingerprint(self) -> str:
        return fingerprint(self.db)

    async def run_token(self, agent: str, room: str) -> str:
        """A run token of `agent`, for a run recorded as running in `room` (as the supervisor would mint)."""
        run_id = "run_" + hashlib.sha256(f"{agent}/{room}".encode()).hexdigest()[:22]
        conn = sqlite3.connect(self.db)
        with conn:
            conn.execute(
                "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained,"
                " depth, state, created_at) SELECT ?, a.agent_id, a.owner_id, r.room_id, 'mention', 'msg_test',"
                " a.agent_id, 0, 1, 'running', '2026-01-01T00:00:00.000000Z' FROM agents a, rooms r"
                " WHERE a.handle = ? AND r.name = ?",
                (run_id, agent, room),
            )
        conn.close()
        async with self.hub() as hub:
            issued = await hub.accounts.issue_run_token(
                OPERATOR, agent, run_id, timedelta(hours=1), holder=None, lease=0
            )
        return issued.token

    async def trust(self, giver: str, taker: str) -> None:
        """Verify both owners and grant: `giver` lets `taker`'s agents propose work to its agents."""
        async with self.hub() as hub:
            for owner in (giver, taker):
                await hub.accounts.verify_owner(OPERATOR, owner, "test")
            await hub.grants.add(OPERATOR, giver, taker)

    def audit_rows(self) -> list[sqlite3.Row]:
        return self.sql("SELECT * FROM audit ORDER BY seq")


def fingerprint(db: Path) -> str:
    """A hash of every table of the hub's database but the audit log and its bookkeeping: equal before and
    after means nothing changed."""
    conn = sqlite3.connect(db)
    try:
        h = hashlib.sha256()
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for table in tables:
            # The audit log, and the failed-authentication counters a refusal is allowed to move.
            # So are the rate-limit buckets every call, a read included, draws on.
            if table in ("audit", "auth_failures", "rate_buckets"):
                continue
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                h.update(repr((table, row)).encode())
        return h.hexdigest()
    finally:
        conn.close()


async def _populate(home: Path) -> World:
    world = World(Settings(home=home, limits=replace(DEFAULT_LIMITS, **SUITE_RATES), wake=NO_SUPERVISOR))
    await init_home(world.settings, OPERATOR)
    async with world.hub() as hub:
        # Local owners: the wake tests' hub spawns their agents itself (DESIGN §5 "Where a wake runs").
        for owner in ("alice", "bob", "carol"):
            await hub.accounts.add_owner(OPERATOR, owner, local=True)
        for handle, (owner, scopes) in AGENTS.items():
            await hub.accounts.add_agent(OPERATOR, handle, owner, AgentTool.CLAUDE, parse_scopes(scopes), None)
            issued = await hub.accounts.issue_token(OPERATOR, handle, timedelta(days=1))
            world.tokens[handle], world.token_ids[handle] = issued.token, issued.token_id
        for room, (owner, agents) in ROOMS.items():
            await hub.rooms.create(OPERATOR, room, owner, agents)
        invite = await hub.invites.create_as_owner(OPERATOR, "shared", "alice", 3600)
        await hub.invites.accept(OPERATOR, invite.code, "bob", SHARED_BOB_AGENTS)
    return world


# Every test's world is the same hub (keys, schema, agents and their tokens, rooms, an invite), and building it
# costs a third of a second of CPU: a tenth of the suite. Each test process builds it once and each test gets a
# copy of its files in its own home. Nothing in them names the home's path; the copies share keys and ids.
# The directory goes when the process ends (TemporaryDirectory's finalizer).
_TEMPLATE: list[tuple[World, tempfile.TemporaryDirectory[str]]] = []


async def build_world(home: Path, wake: WakeSettings = NO_SUPERVISOR) -> World:
    """Without a supervisor unless `wake` asks for one: a mention of an invoke agent then only queues."""
    if not _TEMPLATE:
        scratch = tempfile.TemporaryDirectory(prefix="agent-rooms-world-")
        _TEMPLATE.append((await _populate(Path(scratch.name) / "home"), scratch))
    template = _TEMPLATE[0][0]
    # The hub is closed, so the database is one file (its WAL checkpointed); copy2 keeps the 0600/0700 modes.
    shutil.copytree(template.settings.home, home, symlinks=True)
    settings = replace(template.settings, home=home, wake=wake)
    return World(settings, tokens=dict(template.tokens), token_ids=dict(template.token_ids))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """The hub runs on asyncio (uvicorn, aiosqlite). anyio's plugin would run every test on each backend it
    finds installed, and Selenium (the console's browser tests) brings trio along."""
    return "asyncio"


@pytest.fixture
async def world(tmp_path: Path) -> World:
    return await build_world(tmp_path / "home")


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: 2026-07-28 (auto) and the initialize handshake (legacy)."""
    return str(request.param)


@pytest.fixture(params=["memory", "stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)
