"""The audit log under a hostile caller (DESIGN §6, §8, §9.3): no credential kept in a target, no row
rewritten by an out-of-order insert, a bounded trace of a failed-authentication flood, and a store that
writes again after a COMMIT failed (invariants 68, 85, 86)."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agent_rooms_mcp import audit
from agent_rooms_mcp.http import open_http_app
from agent_rooms_mcp.hub import Hub
from agent_rooms_mcp.settings import DEFAULT_LIMITS
from agent_rooms_mcp.store.database import Store
from tests.conftest import HTTP_BASE, OPERATOR, World
from tests.test_auth import INITIALIZE


def database_bytes(world: World) -> bytes:
    """Everything SQLite keeps on disk for the hub: the main file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in (world.db, Path(f"{world.db}-wal")) if p.exists())


# --------------------------------------------------------------------------------------------------------------
# 12. A denied call's target is kept only when it is a well-formed id, handle or name


@pytest.mark.invariant(85)
async def test_a_credential_passed_as_a_room_is_never_stored_in_the_audit_log(world: World) -> None:
    token = world.tokens["bob-claude"]
    async with world.hub() as hub:
        code = (await hub.invites.create_as_owner(OPERATOR, "lobby", "alice", 3600)).code
    seq = int(world.sql("SELECT max(seq) FROM audit")[0][0])
    async with world.client("alice-claude") as c:
        for secret in (token, code):
            r = await c.call_tool("get_room", {"room": secret})
            assert r.is_error and r.content[0].text.startswith("NOT_FOUND"), r.content  # type: ignore[union-attr]
        # The control: a room name the caller may not see is still named in its denial row.
        assert (await c.call_tool("get_room", {"room": "bobs-den"})).is_error
    rows = world.sql("SELECT target, outcome FROM audit WHERE seq > ? ORDER BY seq", (seq,))
    assert [r["outcome"] for r in rows] == ["denied"] * 3
    assert [r["target"] for r in rows[:2]] == [audit.safe_target(token), audit.safe_target(code)]
    assert all(r["target"].startswith("sha256:") for r in rows[:2])
    assert rows[2]["target"] == "bobs-den"
    stored = database_bytes(world)
    for secret in (token, code):
        assert secret.encode() not in stored
    assert world.chain_verifies()


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("lobby", True),
        ("alice-codex", True),
        ("room_" + "A" * 22, True),
        ("task_" + "a-b_" * 5 + "xy", True),
        ("art_" + "a" * 43, False),  # lowercase throughout: shaped like a handle too, still a token
        ("inv_" + "b" * 32, False),
        ("Lobby", False),
        ("lobby; DROP TABLE audit", False),
        ("room_short", True),  # a name a room may well have
        ("x" * 64, False),
    ],
)
def test_safe_target_keeps_ids_handles_and_names_and_hashes_anything_else(value: str, kept: bool) -> None:
    stored = audit.safe_target(value)
    assert (stored == value) is kept
    if not kept:
        assert stored.startswith("sha256:") and value not in stored


# --------------------------------------------------------------------------------------------------------------
# 13. Only the next row may be inserted into the audit table


def _last(conn: sqlite3.Connection) -> sqlite3.Row:
    return conn.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone()


def _forged(conn: sqlite3.Connection, seq: int, prev: bytes) -> dict[str, object]:
    """A row as an attacker with the file would write it, hashed correctly so only its place is wrong."""
    row = {
        "ts": "2026-01-01T00:00:00.000000Z",
        "actor_kind": "operator",
        "actor_id": "nobody",
        "owner_id": None,
        "action": "hub.rewritten",
        "target": None,
        "outcome": "ok",
        "reason": None,
        "cred_id": None,
        "detail": "{}",
    }
    return {**row, "seq": seq, "prev_hash": prev, "row_hash": audit.row_hash(prev, seq, row)}


_NAMES = [
    "seq",
    "ts",
    "actor_kind",
    "actor_id",
    "owner_id",
    "action",
    "target",
    "outcome",
    "reason",
    "cred_id",
    "detail",
    "prev_hash",
    "row_hash",
]
_COLUMNS = ", ".join(_NAMES)
_VALUES = ", ".join(f":{n}" for n in _NAMES)


@pytest.mark.invariant(85)
@pytest.mark.parametrize(
    ("verb", "place"),
    [
        pytest.param("INSERT OR REPLACE INTO", "first", id="insert-or-replace-first-row"),
        pytest.param("INSERT OR REPLACE INTO", "last", id="insert-or-replace-last-row"),
        pytest.param("REPLACE INTO", "last", id="replace-into"),
        pytest.param("INSERT INTO", "gap", id="insert-with-a-gap"),
        pytest.param("INSERT INTO", "wrong-prev", id="next-seq-wrong-prev-hash"),
        pytest.param("INSERT OR IGNORE INTO", "gap", id="insert-or-ignore-with-a-gap"),
    ],
)
@pytest.mark.parametrize("recursive_triggers", [False, True])
async def test_an_out_of_order_insert_into_the_audit_log_is_refused(
    world: World, verb: str, place: str, recursive_triggers: bool
) -> None:
    conn = sqlite3.connect(world.db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA recursive_triggers={int(recursive_triggers)}")
    try:
        before = [tuple(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
        last = _last(conn)
        first = conn.execute("SELECT * FROM audit WHERE seq = 1").fetchone()
        seq, prev = {
            "first": (1, bytes(audit.GENESIS)),
            "last": (last["seq"], bytes(last["prev_hash"])),
            "gap": (last["seq"] + 2, bytes(last["row_hash"])),
            "wrong-prev": (last["seq"] + 1, bytes(first["row_hash"])),
        }[place]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"{verb} audit ({_COLUMNS}) VALUES ({_VALUES})", _forged(conn, seq, prev))
        assert [tuple(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")] == before
    finally:
        conn.close()
    assert world.chain_verifies()


@pytest.mark.invariant(85)
async def test_the_next_row_is_still_appended_and_the_chain_verifies(world: World) -> None:
    # The control: the trigger lets exactly the next row through, by hand or through the service.
    conn = sqlite3.connect(world.db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        last = _last(conn)
        conn.execute(
            f"INSERT INTO audit ({_COLUMNS}) VALUES ({_VALUES})",
            _forged(conn, last["seq"] + 1, bytes(last["row_hash"])),
        )
    finally:
        conn.close()
    async with world.client("alice-claude") as c:
        assert not (await c.call_tool("post_message", {"room": "lobby", "text": "after"})).is_error
    assert world.chain_verifies()


def test_a_row_hashes_as_it_always_has() -> None:
    """Known answers, computed before the append path was made cheaper: every chain already written must still
    verify, so the bytes hashed (PAE over the fields, `via` only when set) may never change."""
    row: dict[str, Any] = {
        "ts": "2026-12-07T18:00:00.123456Z", "actor_kind": "agent", "actor_id": "agt_1", "owner_id": "own_1",
        "action": "message.post", "target": "room_1", "outcome": "ok", "reason": None, "cred_id": "tok_1",
        "detail": '{"mentions":0,"message_id":"msg_1","seq":7}', "via": None,
    }  # fmt: skip
    assert audit.row_hash(bytes(range(32)), 42, row).hex() == (
        "425d3407e91cbaed5fcbaccb90ae72c7a063626ef081281fd535767733f371b7"
    )
    assert audit.row_hash(bytes(range(32)), 43, {**row, "via": "cli", "reason": ""}).hex() == (
        "800d37cfbb398d4f4b45600c2666ebc24fac7b53fc5da32e35cd77b95ed577bc"
    )


async def test_an_appended_row_keeps_its_detail_in_one_spelling(world: World) -> None:
    """Keys sorted, no spaces: the detail text is hashed into the chain, so its spelling is part of the row."""
    conn = sqlite3.connect(world.db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("BEGIN IMMEDIATE")
    seq = audit.append(conn, OPERATOR, "test.detail", detail={"b": [1, "é"], "a": {"z": None, "y": True}})
    conn.execute("COMMIT")
    [row] = conn.execute("SELECT detail, via FROM audit WHERE seq = ?", (seq,)).fetchall()
    conn.close()
    assert row["detail"] == '{"a":{"y":true,"z":null},"b":[1,"\\u00e9"]}'
    assert row["via"] is None
    assert world.chain_verifies()


# --------------------------------------------------------------------------------------------------------------
# 15. A failed COMMIT rolls back and leaves the writer able to write


def _orphan_agent(conn: sqlite3.Connection) -> None:
    """A write whose foreign key is checked only at COMMIT, where it fails: COMMIT itself raises."""
    conn.execute("PRAGMA defer_foreign_keys=ON")
    conn.execute(
        "INSERT INTO agents (agent_id, handle, owner_id, tool, scopes, created_at)"
        " VALUES ('agt_orphan', 'orphan', 'own_nobody', 'claude', '', '2026-01-01T00:00:00.000000Z')"
    )


@pytest.mark.invariant(86)
async def test_a_failed_commit_rolls_back_and_the_next_write_succeeds(world: World) -> None:
    async with Store.open(world.db) as store:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await store.write(_orphan_agent)
        assert world.sql("SELECT count(*) FROM agents WHERE handle = 'orphan'")[0][0] == 0
        # The file's write lock is free again: another connection (another process) takes it at once.
        other = sqlite3.connect(world.db, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
        # And this store writes again, on its own connection.
        seq = await store.write(lambda conn: audit.append(conn, OPERATOR, "test.after_failed_commit"))
    assert world.sql("SELECT action FROM audit WHERE seq = ?", (seq,))[0][0] == "test.after_failed_commit"
    assert world.chain_verifies()


# --------------------------------------------------------------------------------------------------------------
# 14. Failed authentication: limited per source and credential, a global budget, a bounded audit trace

JSON_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
POST = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "post_message", "arguments": {"room": "lobby", "text": "let me in"}},
}
# A window that does not close while a test runs (windows are aligned to multiples of their length), so
# nothing here depends on the clock; a test "closes" it by reopening the hub with the default window.
NEVER_CLOSES_S = 10**9


def limited(world: World, **limits: int) -> World:
    """The same world, with failed-authentication limits set for one test."""
    fields = {"failed_auth_window_s": NEVER_CLOSES_S, **limits}
    return replace(world, settings=replace(world.settings, limits=replace(world.settings.limits, **fields)))


async def close_the_window(world: World) -> None:
    """Start a hub with the default one-minute window: the test's window began long before the current
    minute, so it is over, and its summary is written at the start as after any restart."""
    default = replace(world.settings.limits, failed_auth_window_s=DEFAULT_LIMITS.failed_auth_window_s)
    async with Hub.open(replace(world.settings, limits=default)):
        pass


def unknown_token() -> str:
    return "art_" + secrets.token_urlsafe(32)


@asynccontextmanager
async def hub_over_http(world: World) -> AsyncIterator[Callable[[str, str | None], Awaitable[httpx2.Response]]]:
    """The HTTP hub in-process; `send(source address, token)` posts a message as that peer with that bearer."""
    async with open_http_app(world.settings) as app:

        async def send(address: str, token: str | None, body: dict[str, Any] = POST) -> httpx2.Response:
            transport = httpx2.ASGITransport(app=app, client=(address, 40000))
            headers = JSON_HEADERS if token is None else {**JSON_HEADERS, "Authorization": f"Bearer {token}"}
            async with httpx2.AsyncClient(transport=transport, base_url=HTTP_BASE) as client:
                return await client.post("/mcp", json=body, headers=headers)

        yield send


def audit_after(world: World, seq: int) -> list[sqlite3.Row]:
    return world.sql("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (seq,))


def last_seq(world: World) -> int:
    return int(world.sql("SELECT max(seq) FROM audit")[0][0])


def assert_rate_limited(r: httpx2.Response) -> None:
    assert (r.status_code, r.json()) == (429, {"error": "RATE_LIMITED"}), r.text
    assert 1 <= int(r.headers["retry-after"]) <= NEVER_CLOSES_S


@pytest.mark.invariant(68)
async def test_failed_authentication_is_limited_per_source_and_credential_and_survives_a_restart(
    world: World,
) -> None:
    world = limited(world)
    bad, before = unknown_token(), world.fingerprint()
    async with hub_over_http(world) as send:
        for _ in range(world.settings.limits.failed_auth_limit):
            assert (await send("203.0.113.7", bad)).status_code == 401
        assert_rate_limited(await send("203.0.113.7", bad))
        # Separately: the same credential from another source, and a valid one from this source, go on.
        assert (await send("203.0.113.8", bad)).status_code == 401
        ok = await send("203.0.113.7", world.tokens["alice-claude"], INITIALIZE)
        assert ok.status_code == 200, ok.text
    # A restart forgets nothing: the limit is kept in the database.
    async with hub_over_http(world) as send:
        assert_rate_limited(await send("203.0.113.7", bad))
    assert world.fingerprint() == before
    assert world.sql("SELECT count(*) FROM messages")[0][0] == 0


@pytest.mark.invariant(68)
async def test_the_global_budget_refuses_every_source_past_it_but_never_a_valid_credential(world: World) -> None:
    world = limited(world, failed_auth_global_limit=5)
    async with hub_over_http(world) as send:
        for n in range(5):
            assert (await send(f"198.51.100.{n}", unknown_token())).status_code == 401
        assert_rate_limited(await send("198.51.100.99", unknown_token()))
        ok = await send("198.51.100.99", world.tokens["alice-claude"], INITIALIZE)
    assert ok.status_code == 200, ok.text


@pytest.mark.invariant(68)
async def test_ipv6_sources_are_counted_per_64(world: World) -> None:
    world = limited(world, failed_auth_limit=2)
    bad, seq = unknown_token(), last_seq(world)
    async with hub_over_http(world) as send:
        assert (await send("2001:db8::1", bad)).status_code == 401
        assert (await send("2001:db8::2:3", bad)).status_code == 401
        assert_rate_limited(await send("2001:db8::ffff:1", bad))
        assert (await send("2001:db8:0:1::1", bad)).status_code == 401
    assert [r["target"] for r in audit_after(world, seq)] == ["2001:db8::/64"] * 3 + ["2001:db8:0:1::/64"]


@pytest.mark.invariant(68)
async def test_stdio_failures_count_against_the_source_stdio(world: World) -> None:
    world = limited(world, failed_auth_limit=3)
    async with world.client(None, token=unknown_token()) as c:
        answers = [await c.call_tool("whoami", {}) for _ in range(4)]
    assert [r.content[0].text.split(":")[0] for r in answers] == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]  # type: ignore[union-attr]
    assert {r["target"] for r in world.sql("SELECT target FROM audit WHERE action = 'auth.authenticate'")} == {"stdio"}


@pytest.mark.invariant(85)
async def test_a_flood_of_failed_authentications_adds_a_bounded_number_of_audit_rows(world: World) -> None:
    flood, few = 1000, world.settings.limits.failed_auth_rows_per_source
    world, seq = limited(world), last_seq(world)
    async with hub_over_http(world) as send:
        answers = [(await send("192.0.2.10", unknown_token())).status_code for _ in range(flood)]
    global_budget = world.settings.limits.failed_auth_global_limit
    assert answers == [401] * global_budget + [429] * (flood - global_budget)
    rows = audit_after(world, seq)
    assert [(r["action"], r["target"], r["reason"]) for r in rows] == [
        ("auth.authenticate", "192.0.2.10", "unknown_token")
    ] * few
    # Once the window is over, one summary row holds the count, and the counters are gone.
    await close_the_window(world)
    rows = audit_after(world, seq)
    assert len(rows) == few + 1
    summary = rows[-1]
    assert (summary["action"], summary["target"], summary["outcome"]) == ("auth.failures", "192.0.2.10", "denied")
    assert json.loads(summary["detail"])["failures"] == flood
    assert json.loads(summary["detail"])["reasons"] == {"unknown_token": flood}
    assert world.sql("SELECT count(*) FROM auth_failures")[0][0] == 0
    assert world.chain_verifies()


@pytest.mark.invariant(85)
async def test_sources_past_the_cap_share_one_summary_row(world: World) -> None:
    world, seq = limited(world, failed_auth_sources_per_window=2, failed_auth_rows_per_source=1), last_seq(world)
    async with hub_over_http(world) as send:
        for n in range(6):
            assert (await send(f"192.0.2.{n % 4}", unknown_token())).status_code == 401
    assert [r["target"] for r in audit_after(world, seq)] == ["192.0.2.0", "192.0.2.1"]
    await close_the_window(world)
    summaries = {
        r["target"]: json.loads(r["detail"])["failures"]
        for r in audit_after(world, seq)
        if r["action"] == "auth.failures"
    }
    assert summaries == {"192.0.2.0": 2, "192.0.2.1": 2, "*": 2}
    assert world.chain_verifies()
