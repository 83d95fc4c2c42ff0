"""Every result is bounded (DESIGN §3, invariants 65 and 81), through real MCP clients.

Every list pages with `limit` and an `after` cursor and ends at `Limits.page_bytes` of *encoded* answer:
the structured content and the SDK's JSON text rendering of it, as the client receives them. Text that JSON
escapes (quotes, backslashes, newlines) is the worst case: it costs up to six times its raw size there.
Every integer argument has an upper bound, so 2^70 is INVALID_ARGUMENT naming the field, never a crash.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from agent_rooms_mcp.auth.tokens import new_id
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.models import Author, MentionOutcome, Message
from agent_rooms_mcp.results import item_bytes
from agent_rooms_mcp.services.messages import page_hint
from agent_rooms_mcp.settings import DEFAULT_LIMITS as L
from tests.conftest import OPERATOR, World

# Twice escaped in the answer: a quote is 2 bytes in the structured content and 4 in the text rendering.
HOSTILE = '"\\\n' * 10_000
NOW = "2026-01-01T00:00:00.000000Z"


def answer_bytes(r: CallToolResult) -> int:
    """The result as the client received it (only the fields sent), encoded again as the server's transport does."""
    return len(r.model_dump_json(by_alias=True, exclude_unset=True).encode())


async def page_all(
    c: Client, tool: str, args: dict[str, Any], key: str, ident: Callable[[dict[str, Any]], Any]
) -> tuple[list[Any], list[int]]:
    """Every item of a listing, paged with `after` = the previous `next_after`; and each page's answer size."""
    seen: list[Any] = []
    sizes: list[int] = []
    after: int | None = None
    while True:
        r = await c.call_tool(tool, {**args, **({"after": after} if after is not None else {})})
        assert not r.is_error, r.content
        page = r.structured_content
        assert page is not None
        sizes.append(answer_bytes(r))
        seen += [ident(item) for item in page[key]]
        if not page["has_more"]:
            return seen, sizes
        assert page[key], "a page that says has_more must move on"
        after = page["next_after"]


def insert_files(world: World, room: str, agent: str, names: list[str]) -> list[str]:
    """Many files at once, straight into the store (sharing 3,000 through the tool is not what is tested)."""
    conn = sqlite3.connect(world.db)
    with conn:
        (room_id,) = conn.execute("SELECT room_id FROM rooms WHERE name = ?", (room,)).fetchone()
        (agent_id,) = conn.execute("SELECT agent_id FROM agents WHERE handle = ?", (agent,)).fetchone()
        rows = [
            (new_id("file"), room_id, name, None, 1, hashlib.sha256(b"x").hexdigest(), b"x", agent_id, NOW)
            for name in names
        ]
        conn.executemany(
            "INSERT INTO files (file_id, room_id, name, media_type, size, sha256, content, agent_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()
    return [r[0] for r in rows]


@pytest.mark.invariant(81)
@pytest.mark.invariant(65)
async def test_thousands_of_files_with_escape_heavy_names_page_within_the_cap_without_loss(world: World) -> None:
    names = [f"{i:05d}" + '"' * 120 + "\\" * 120 for i in range(3_000)]
    ids = insert_files(world, "lobby", "alice-codex", names)
    async with world.client("alice-claude") as c:
        first = await c.call_tool("list_files", {"room": "lobby", "limit": 200})
        seen, sizes = await page_all(c, "list_files", {"room": "lobby", "limit": 200}, "files", lambda f: f["file_id"])
    assert first.structured_content["has_more"] is True
    assert max(sizes) <= L.page_bytes
    # The byte cap, not the count, ended the pages: 200 of these names would be far more than 256 KiB.
    assert len(sizes) > len(ids) // 200 + 1
    assert seen == ids


@pytest.mark.invariant(81)
@pytest.mark.invariant(65)
async def test_messages_of_escape_heavy_text_page_within_the_cap_without_loss(world: World) -> None:
    async with world.client("alice-claude") as c:
        posted = [
            (await c.call_tool("post_message", {"room": "lobby", "text": HOSTILE})).structured_content["seq"]
            for _ in range(5)
        ]
        latest = await c.call_tool("read_messages", {"room": "lobby"})
        waited = await c.call_tool("wait_for_messages", {"room": "lobby", "after": 0})
        seen, sizes = await page_all(c, "read_messages", {"room": "lobby", "limit": 50}, "messages", lambda m: m["seq"])
    for r in (latest, waited):
        assert answer_bytes(r) <= L.page_bytes and r.structured_content["has_more"] is True
    assert max(sizes) <= L.page_bytes
    assert seen == posted


@pytest.mark.invariant(81)
@pytest.mark.invariant(65)
async def test_tasks_of_escape_heavy_text_page_within_the_cap_without_loss(world: World) -> None:
    body = HOSTILE[: L.message_bytes]
    async with world.client("alice-claude") as c:
        made = [
            (await c.call_tool("create_task", {"room": "lobby", "title": '"' * 200, "body": body})).structured_content[
                "number"
            ]
            for _ in range(5)
        ]
        seen, sizes = await page_all(c, "list_tasks", {"room": "lobby"}, "tasks", lambda t: t["number"])
    assert max(sizes) <= L.page_bytes and len(sizes) > 1
    assert seen == made


@pytest.mark.invariant(81)
@pytest.mark.invariant(65)
async def test_pending_consents_of_escape_heavy_text_page_within_the_cap_without_loss(world: World) -> None:
    await world.trust("bob", "alice")
    text = "@bob-codex " + HOSTILE[: L.message_bytes - 20]
    async with world.client("alice-claude") as alice:
        outcomes = [
            (await alice.call_tool("post_message", {"room": "shared", "text": text})).structured_content["mentions"]
            for _ in range(5)
        ]
    proposals = [o[0]["proposal_id"] for o in outcomes]
    assert all(proposals)
    async with world.client("bob-admin") as bob:
        seen, sizes = await page_all(bob, "list_pending_consents", {}, "proposals", lambda p: p["proposal_id"])
    assert max(sizes) <= L.page_bytes and len(sizes) > 1
    assert seen == proposals


@pytest.mark.invariant(81)
async def test_rooms_runs_and_members_page_with_after_and_limit_without_loss(world: World) -> None:
    async with world.hub() as hub:
        for i in range(30):
            await hub.rooms.create(OPERATOR, f"room-{i:02d}", "alice", ["alice-claude"])
    conn = sqlite3.connect(world.db)
    with conn:
        runs = [f"run_{i:04d}" for i in range(30)]
        conn.executemany(
            "INSERT INTO runs (run_id, agent_id, owner_id, room_id, trigger, cause_id, caused_by, constrained,"
            " depth, state, created_at) SELECT ?, a.agent_id, a.owner_id, r.room_id, 'mention', 'msg_test',"
            " a.agent_id, 0, 1, 'completed', '2026-01-01T00:00:00.000000Z' FROM agents a, rooms r"
            " WHERE a.handle = 'alice-codex' AND r.name = 'lobby'",
            [(run,) for run in runs],
        )
    conn.close()
    async with world.client("alice-claude") as c:
        rooms, _ = await page_all(c, "list_rooms", {"limit": 7}, "rooms", lambda r: r["name"])
        listed, _ = await page_all(c, "list_runs", {"limit": 7}, "runs", lambda r: r["run_id"])
        members, _ = await page_all(c, "get_room", {"room": "lobby", "limit": 3}, "members", lambda m: m["handle"])
    assert sorted(rooms) == sorted(["lobby", "shared", *(f"room-{i:02d}" for i in range(30))])
    assert len(rooms) == len(set(rooms))
    # Newest first.
    assert listed == runs[::-1]
    assert members == ["alice-claude", "alice-codex", "alice-admin", "alice-mute"]


def _integer_fields(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, its integer schema) of every integer argument, plain or optional (anyOf with null)."""
    found = []
    for name, prop in schema.get("properties", {}).items():
        for option in [prop, *prop.get("anyOf", [])]:
            if option.get("type") == "integer":
                found.append((name, option))
    return found


def _valid_filler(name: str, prop: dict[str, Any]) -> Any:
    """A value the schema accepts for a required argument that is not the one under test."""
    if "enum" in prop:
        return prop["enum"][0]
    if prop.get("type") == "integer":
        return prop.get("minimum", 0)
    return "lobby" if name == "room" else "x"


@pytest.mark.invariant(81)
async def test_every_integer_argument_of_every_tool_is_bounded_and_out_of_range_changes_nothing(
    world: World,
) -> None:
    before = world.fingerprint()
    checked = []
    async with world.client("alice-admin") as c:
        for tool in (await c.list_tools()).tools:
            schema = tool.input_schema
            required = set(schema.get("required", []))
            for field, prop in _integer_fields(schema):
                base = {n: _valid_filler(n, p) for n, p in schema["properties"].items() if n in required and n != field}
                assert prop.get("maximum", float("inf")) <= 2**53 - 1, (tool.name, field)
                bad_values = [2**70] + ([-1] if "minimum" in prop else [])
                for value in bad_values:
                    r = await c.call_tool(tool.name, {**base, field: value})
                    assert r.is_error, (tool.name, field, value)
                    assert r.content[0].text.startswith(f"INVALID_ARGUMENT: {field}"), (tool.name, r.content[0].text)
                    checked.append((tool.name, field, value))
    assert world.fingerprint() == before
    # The lists' cursors and sizes, read_file's offset, post_message's reply_to among them.
    assert {("list_files", "after"), ("read_file", "offset"), ("post_message", "reply_to")} <= {
        (t, f) for t, f, _ in checked
    }


@pytest.mark.invariant(65)
def test_the_cheap_bound_read_messages_trusts_is_never_below_the_exact_size() -> None:
    """read_messages skips exact measuring when the cheap bounds fit; they must bound every kind of text."""
    texts = ["", "plain", HOSTILE[:3000], "é字😀" * 500, "\x01\x1f\x7f\u2028" * 500, "<<>>&" * 500, '"\\' * 500]
    messages: list[Message] = []
    for text in texts:
        # The largest mentions a message can carry: long handles, long codes, a proposal and a run each.
        largest = MentionOutcome(
            handle="h" * 63,
            outcome="pending_consent",
            code="CONSTRAINED_RUNTIME_REQUIRED",
            proposal_id=new_id("prop"),
            run_id=new_id("run"),
        )
        small = MentionOutcome(handle="h", outcome="lost")
        every_flag = ["bidi", "zero_width", "tag_chars", "control", "ansi", "ignorable"]
        for mentions, flags in itertools.product(([], [largest] * 40, [small] * 40), ([], every_flag)):
            message = Message(
                message_id=new_id("msg"),
                seq=2**53 - 1,
                author=Author(handle="h" * 63, owner="o" * 63, tool="openclaw"),
                relation="cross_owner",
                created_at=now_utc(),
                mentions=mentions,
                reply_to=2**53 - 1,
                text=text,
                flags=flags,
            )
            shaped = message.model_dump(mode="json")  # read_messages builds this shape directly
            assert page_hint([shaped]) >= item_bytes(message), text[:20]
            messages.append(message)
    assert page_hint([m.model_dump(mode="json") for m in messages]) >= sum(item_bytes(m) for m in messages)


@pytest.mark.invariant(81)
@pytest.mark.invariant(65)
async def test_a_largest_task_beside_twenty_long_wake_reasons_stays_within_the_cap(world: World) -> None:
    """Everything in a list_tasks answer counts: its largest task, and the wake requests shown beside it."""
    await world.trust("bob", "alice")
    reason = '"' * L.note_chars
    async with world.client("alice-claude") as alice, world.client("bob-admin") as bob:
        for _ in range(20):
            posted = await alice.call_tool("post_message", {"room": "shared", "text": "@bob-codex look"})
            [mention] = posted.structured_content["mentions"]
            rejected = await bob.call_tool("reject_task", {"task": mention["proposal_id"], "reason": reason})
            assert not rejected.is_error, rejected.content
        task = await alice.call_tool(
            "create_task", {"room": "shared", "title": '"' * L.task_title_chars, "body": HOSTILE[: L.message_bytes]}
        )
        number = task.structured_content["number"]
        noted = await alice.call_tool("update_task", {"task": task.structured_content["task_id"], "note": reason})
        assert not noted.is_error, noted.content
        r = await alice.call_tool("list_tasks", {"room": "shared"})
    assert answer_bytes(r) <= L.page_bytes
    assert [t["number"] for t in r.structured_content["tasks"]] == [number]
    assert r.structured_content["wake_requests"], "the room left after the task still shows the newest requests"
