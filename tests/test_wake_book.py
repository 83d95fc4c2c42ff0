"""The wake book (DESIGN §5): the supervisor does everything through it, so the same supervisor can run
against a hub it reaches only over HTTPS. What crosses it survives JSON; a lease names its host, and
recovery kills a left-behind process only on its own host."""

from __future__ import annotations

import ast
import dataclasses
import json
import socket
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import anyio
import pytest

import agent_rooms_mcp.wake.supervisor as supervisor_module
from agent_rooms_mcp import book as book_module
from agent_rooms_mcp.book import CauseText, Claimed, Ending, LeftBehind, WakeBook
from agent_rooms_mcp.embedded import embedded_supervisor
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.wake.process import start_time
from agent_rooms_mcp.wake.supervisor import Supervisor
from tests.conftest import World
from tests.test_wake_guards import PAST, execute
from tests.wakeworld import Fakes, ended, post, runs, until

WIRE_TYPES = (CauseText, Claimed, LeftBehind, Ending)
# What the supervisor must never reach for: the hub, accounts, the vault, the store or SQL (DESIGN §5).
# The services too: what a supervisor needs of them (the words, rendered) comes through the book.
FORBIDDEN = ("agent_rooms_mcp.hub", "agent_rooms_mcp.services", "agent_rooms_mcp.vault", "agent_rooms_mcp.store",
             "agent_rooms_mcp.auth", "sqlite3", "aiosqlite")  # fmt: skip


def test_the_supervisor_imports_nothing_but_the_book_of_the_hub() -> None:
    tree = ast.parse(Path(supervisor_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    reached = sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert reached == [], reached
    assert "agent_rooms_mcp.book" in imported


def _wire_leaf(kind: Any) -> bool:
    """A type a JSON body carries as is: str, int, bool, None, or a tuple / str map / union of them."""
    origin = typing.get_origin(kind)
    if kind in (str, int, bool, type(None)):
        return True
    if origin in (tuple, dict, typing.Union, types.UnionType):
        return all(a is Ellipsis or _wire_leaf(a) for a in typing.get_args(kind))
    return kind in WIRE_TYPES


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
def test_every_type_crossing_the_book_is_plain_data(kind: type) -> None:
    hints = typing.get_type_hints(kind, vars(book_module))
    assert {f: h for f, h in hints.items() if not _wire_leaf(h)} == {}


def _to_wire(value: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))


def _from_wire(kind: type, doc: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(kind, vars(book_module))
    fields = {}
    for name, value in doc.items():
        hint = hints[name]
        if hint in WIRE_TYPES:
            value = _from_wire(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        fields[name] = value
    return kind(**fields)


class JsonWireBook:
    """Another implementation of the book, as a remote listener's will be: every call's arguments and answer
    cross as JSON text, so anything that does not survive JSON breaks the run. It reaches the hub through
    the local book, as the HTTP implementation will through the hub's endpoint."""

    def __init__(self, inner: WakeBook) -> None:
        self._inner = inner
        self.calls: list[str] = []

    @property
    def holder(self) -> str:
        return str(_to_wire(self._inner.holder))

    @property
    def host(self) -> str:
        return str(_to_wire(self._inner.host))

    async def claim(self) -> Claimed | None:
        self.calls.append("claim")
        claimed = await self._inner.claim()
        return None if claimed is None else _from_wire(Claimed, _to_wire(claimed))

    async def spawning(self, run_id: str, lease: int) -> None:
        self.calls.append("spawning")
        await self._inner.spawning(*_to_wire([run_id, lease]))

    async def started(self, run_id: str, lease: int, pid: int, pid_start: int | None) -> None:
        self.calls.append("started")
        await self._inner.started(*_to_wire([run_id, lease, pid, pid_start]))

    async def session(self, run_id: str, lease: int, session_id: str) -> None:
        self.calls.append("session")
        await self._inner.session(*_to_wire([run_id, lease, session_id]))

    async def renew(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in _to_wire(await self._inner.renew()).items()}

    async def stop_requests(self) -> set[str]:
        return set(_to_wire(sorted(await self._inner.stop_requests())))

    async def finish(self, run_id: str, lease: int, ending: Ending) -> None:
        self.calls.append("finish")
        await self._inner.finish(*_to_wire([run_id, lease]), _from_wire(Ending, _to_wire(ending)))

    async def recover(self) -> list[LeftBehind]:
        return [_from_wire(LeftBehind, _to_wire(left)) for left in await self._inner.recover()]

    async def wait_for_work(self, timeout_s: float) -> bool:
        return bool(_to_wire(await self._inner.wait_for_work(_to_wire(timeout_s))))


async def test_the_same_supervisor_runs_a_wake_through_a_book_that_speaks_only_json(woken: World, fakes: Fakes) -> None:
    fakes.scenario("reply")
    async with Hub.open(woken.settings) as hub, anyio.create_task_group() as tg:
        embedded = embedded_supervisor(hub)
        wire = JsonWireBook(embedded.book)
        tg.start_soon(Supervisor(wire, embedded.local, embedded.open_bridge).run)
        await post(woken, "alice-claude", "@alice-bot please answer")
        [run] = await until(lambda: ended(woken, "alice-bot"), "the run ends")
        tg.cancel_scope.cancel()
    assert (run["state"], run["outcome"]) == ("completed", "ok"), dict(run)
    assert run["pid"] and run["session_id"]
    # The fake CLI replied in the room with the run token the claim carried across the wire.
    replies = woken.sql(
        "SELECT m.text FROM messages m JOIN agents a ON a.agent_id = m.agent_id WHERE a.handle = 'alice-bot'"
    )
    assert replies, "the woken CLI did not reply in the room"
    assert {"claim", "spawning", "started", "session", "finish"} <= set(wire.calls)
    # The spawn is reported before the CLI is executed (DESIGN §9.1), so before its pid is.
    assert wire.calls.index("spawning") < wire.calls.index("started")
    # What crossed back of the run's use: token counts and tool names with counts, no event body.
    [end] = [json.loads(r["detail"]) for r in woken.audit_rows() if r["action"] == "run.end"]
    usage = end["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (10, 5)
    assert usage["tools"] and all(n > 0 for n in usage["tools"].values())
    assert any("post_message" in name for name in usage["tools"]), usage


async def test_a_lease_names_its_host(woken: World, fakes: Fakes) -> None:
    fakes.scenario("hang")
    async with Hub.open(woken.settings) as hub, anyio.create_task_group() as tg:
        tg.start_soon(embedded_supervisor(hub).run)
        await post(woken, "alice-claude", "@alice-bot start")
        [run] = await until(lambda: (r := runs(woken, "alice-bot")) and r[0]["pid"] and r, "the run is running")
        tg.cancel_scope.cancel()
    assert run["lease_host"] == socket.gethostname()


async def test_recovery_kills_a_left_behind_process_only_on_its_own_host(woken: World) -> None:
    """Two runs whose holder crashed, each with a live process: one leased on this host, one on another.
    The same recovery ends both `lost`; it kills only its own host's process (a pid names nothing on
    another machine)."""
    here = subprocess.Popen(["sleep", "600"], start_new_session=True)
    there = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        for agent, proc, host in (("alice-bot", here, socket.gethostname()), ("alice-cx", there, "another-machine")):
            await post(woken, "alice-claude", f"@{agent} hello")
            execute(
                woken,
                "UPDATE runs SET state = 'running', lease_holder = 'sup_dead', lease_host = ?, lease_until = ?,"
                " started_at = ?, pid = ?, pid_start = ?"
                " WHERE agent_id = (SELECT agent_id FROM agents WHERE handle = ?)",
                (host, PAST, PAST, proc.pid, start_time(proc.pid), agent),
            )
        async with Hub.open(woken.settings) as hub, anyio.create_task_group() as tg:
            tg.start_soon(embedded_supervisor(hub).run)
            await until(lambda: ended(woken, "alice-bot") and ended(woken, "alice-cx"), "recovery")
            await until(lambda: here.poll() is not None, "this host's orphan is killed")
            tg.cancel_scope.cancel()
        assert [r["state"] for r in runs(woken, "alice-bot") + runs(woken, "alice-cx")] == ["lost", "lost"]
        # Recovery kills in one synchronous pass: had it meant to kill the other host's pid, it would have.
        assert here.returncode == -9 and there.poll() is None
    finally:
        for proc in (here, there):
            proc.kill()
            proc.wait()


def test_usage_and_tool_counts_are_read_from_each_clis_events_and_stay_bounded() -> None:
    from agent_rooms_mcp.principals import AgentTool
    from agent_rooms_mcp.wake.adapters import ADAPTERS, MAX_TOOL_NAMES, TOOL_NAME_CHARS, Reading

    codex = Reading()
    for event in (
        {"type": "item.completed", "item": {"type": "mcp_tool_call", "server": "agent-rooms", "tool": "post_message"}},
        {"type": "item.completed", "item": {"type": "command_execution", "command": "ls"}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "words are not counted"}},
        {"type": "turn.completed", "usage": {"input_tokens": 7, "output_tokens": 3}},
    ):
        ADAPTERS[AgentTool.CODEX].read(event, codex)
    assert (codex.tools, codex.input_tokens, codex.output_tokens) == (
        {"agent-rooms.post_message": 1, "shell": 1},
        7,
        3,
    )
    flood = Reading()
    for i in range(MAX_TOOL_NAMES + 10):
        block = {"type": "tool_use", "name": f"{i}{'x' * 100}"}
        ADAPTERS[AgentTool.CLAUDE].read({"type": "assistant", "message": {"content": [block]}}, flood)
    assert len(flood.tools) == MAX_TOOL_NAMES + 1 and flood.tools["_other"] == 10
    assert all(len(n) <= TOOL_NAME_CHARS for n in flood.tools)
    assert sum(flood.tools.values()) == MAX_TOOL_NAMES + 10
    bogus = Reading()
    ADAPTERS[AgentTool.CLAUDE].read({"type": "result", "usage": {"input_tokens": -4, "output_tokens": True}}, bogus)
    assert (bogus.input_tokens, bogus.output_tokens) == (0, 0)
