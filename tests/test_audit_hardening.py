"""The audit log under a hostile caller (DESIGN §6, §8, §9.3): no credential kept in a target, no row
rewritten by an out-of-order insert, a bounded trace of a failed-authentication flood, and a store that
writes again after a COMMIT failed (invariants 68, 85, 86)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent_rooms_mcp import audit
from agent_rooms_mcp.store.database import Store
from tests.conftest import OPERATOR, World


def database_bytes(world: World) -> bytes:
    """Everything SQLite keeps on disk for the hub: the main file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in (world.db, Path(f"{world.db}-wal")) if p.exists())


def chain_verifies(world: World) -> bool:
    conn = sqlite3.connect(world.db)
    conn.row_factory = sqlite3.Row
    try:
        return audit.verify(conn).ok
    finally:
        conn.close()


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
    assert chain_verifies(world)


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
    assert chain_verifies(world)


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
    assert chain_verifies(world)


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
    assert chain_verifies(world)
