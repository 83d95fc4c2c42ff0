"""The hash-chained, append-only audit log: append inside a caller's transaction, verify the chain.

Rows hold metadata only (ids, codes, hashes), never message bodies or secrets (DESIGN §6).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent_rooms_mcp.auth.tokens import INVITE_PREFIX, CredentialKind
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.encoding import pae

_DOMAIN = b"agent-rooms/audit/v1"
GENESIS = bytes(32)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: an agent (with the credential used), the operator at the CLI, or nobody known."""

    kind: str  # agent | operator | owner | anonymous | system
    id: str | None = None
    owner_id: str | None = None
    cred_id: str | None = None
    # The path a human action came by (DESIGN §2): `cli` on the hub's machine, `device`, `console`.
    via: str | None = None
    # The owner the operator acted for, when that owner is not a local one (DESIGN §2): the row then shows in
    # that owner's audit tail, since the operator of a shared hub can act as any owner.
    on_behalf_of: str | None = None


ANONYMOUS = Actor("anonymous")
ON_BEHALF_OF = "on_behalf_of"


def _opt(value: str | None) -> bytes:
    # None and "" must hash differently, or a field could be blanked without breaking the chain.
    return b"" if value is None else b"=" + value.encode()


def row_hash(prev: bytes, seq: int, row: Mapping[str, Any]) -> bytes:
    # `via` came later: a row without one hashes exactly as rows did before it existed, so old chains still
    # verify, and a row with one hashes it too (blanking it breaks the chain).
    via = row["via"] if "via" in row.keys() else None  # noqa: SIM118 (sqlite3.Row has keys(), not __contains__)
    tail = () if via is None else (b"via", via.encode())
    return hashlib.sha256(
        pae(
            _DOMAIN,
            prev,
            seq.to_bytes(8, "big"),
            row["ts"].encode(),
            row["actor_kind"].encode(),
            _opt(row["actor_id"]),
            _opt(row["owner_id"]),
            row["action"].encode(),
            _opt(row["target"]),
            row["outcome"].encode(),
            _opt(row["reason"]),
            _opt(row["cred_id"]),
            row["detail"].encode(),
            *tail,
        )
    ).digest()


def append(
    conn: sqlite3.Connection,
    actor: Actor,
    action: str,
    *,
    target: str | None = None,
    outcome: str = "ok",
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one row in the caller's transaction (its BEGIN IMMEDIATE serialises the chain)."""
    last = conn.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    detail = dict(detail or {})
    if actor.on_behalf_of is not None:
        # In the detail, which the chain already covers: no column, and every older row hashes as it did.
        detail[ON_BEHALF_OF] = actor.on_behalf_of
    row = {
        "ts": now_utc(),
        "actor_kind": actor.kind,
        "actor_id": actor.id,
        "owner_id": actor.owner_id,
        "action": action,
        "target": target,
        "outcome": outcome,
        "reason": reason,
        "cred_id": actor.cred_id,
        "detail": _detail_json(detail),
        "via": actor.via,
    }
    # Bound by position: named parameters cost a name lookup each, on every write of the hub.
    conn.execute(_INSERT, (seq, *row.values(), prev, row_hash(prev, seq, row)))
    return seq


# The columns in `append`'s row order, then the chain's two.
_INSERT = (
    "INSERT INTO audit (seq, ts, actor_kind, actor_id, owner_id, action, target, outcome, reason, cred_id, detail, via,"
    " prev_hash, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The detail's one spelling (keys sorted, no spaces). One encoder made once: `json.dumps` with options builds a
# new one per call, a sixth of an append.
_detail_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


# The ids `tokens.new_id` makes: a known prefix and 128 random bits. Anything else a caller names is kept
# only if it is shaped like a handle or a room name; credentials are checked first, since a lowercase
# token or invite code would pass for a handle.
_ID_RE = re.compile(
    r"(?:agt|cln|csn|dep|dev|enr|file|grant|invite|msg|oac|own|prop|room|run|task|tok)_[A-Za-z0-9_-]{22}"
)
_SECRET_PREFIXES = (*(kind.value for kind in CredentialKind), INVITE_PREFIX)
_HASHED_HEX_CHARS = 16


def safe_target(value: str) -> str:
    """What an audit row may keep of a target a caller supplied (DESIGN §6): a well-formed id, handle or name
    as it is, anything else (a token or invite code pasted by a confused model, any text) as a hash prefix
    that still lets rows about the same value be matched."""
    from agent_rooms_mcp.principals import HANDLE_RE  # here, not at the top: principals imports Actor from us

    if not value.startswith(_SECRET_PREFIXES) and (_ID_RE.fullmatch(value) or HANDLE_RE.fullmatch(value)):
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:_HASHED_HEX_CHARS]


def _denial(
    actor: Actor, action: str, reason: str, detail: Mapping[str, Any] | None, target: str | None
) -> Callable[[sqlite3.Connection], int]:
    kept = None if target is None else safe_target(target)
    return lambda conn: append(conn, actor, action, target=kept, outcome="denied", reason=reason, detail=detail)


class Writer(Protocol):
    """What the audit log needs of the store (`store.database.Store`): a write transaction of its own. Said as
    a protocol, so the audit chain stays below the store it is kept in (tests/test_project.py's layering)."""

    async def write(self, fn: Callable[[sqlite3.Connection], int], *, notify: bool = ...) -> int: ...


async def record_denial(
    store: Writer,
    actor: Actor,
    action: str,
    reason: str,
    *,
    detail: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> None:
    """The one path by which a refused call leaves its audit row, whatever refused it (a tool, the gate, the
    HTTP bearer layer, a CLI command, a service): a transaction of its own, after the denied work rolled
    back, so the row survives the rollback and nothing the denied call did is kept (DESIGN §6).

    A denial's target is whatever the caller supplied, so it passes through `safe_target` here, once for
    every caller of this function."""
    await store.write(_denial(actor, action, reason, detail, target))


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify(conn: sqlite3.Connection, after: tuple[int, bytes] = (0, GENESIS)) -> Verdict:
    """Walk the chain from seq 1: gapless, each prev_hash the previous row_hash, each row_hash recomputes.
    `after`: a row already verified, (seq, row_hash): walk only the rows after it."""
    (count, prev), expected = after, after[0] + 1
    for row in conn.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq", (after[0],)):
        seq = row["seq"]
        if seq != expected:
            return Verdict(False, count, expected, f"row {expected} is missing")
        if bytes(row["prev_hash"]) != prev:
            return Verdict(False, count, seq, "prev_hash does not match the previous row")
        if bytes(row["row_hash"]) != row_hash(prev, seq, row):
            return Verdict(False, count, seq, "row_hash does not match the row's contents")
        prev, expected, count = bytes(row["row_hash"]), expected + 1, count + 1
    return Verdict(True, count)


def head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """The log's last row: its seq (the row count of a gapless log) and its row_hash."""
    last = conn.execute("SELECT seq, row_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(last[0]), bytes(last[1])) if last else (0, GENESIS)


def held_to(conn: sqlite3.Connection, rows: int, head_hash: bytes) -> Verdict:
    """Whether the log still holds the `rows` rows a checkpoint saw, row `rows` hashing to `head_hash`.

    Beside `verify` this catches what the chain alone cannot: rows cut off the end (what is left still
    chains), and a log whose hashes were recomputed after an edit (re-chained), or whose last row was
    rewritten with a fresh hash. Either way row `rows` no longer hashes as it did when it was signed."""
    count = head(conn)[0]
    row = conn.execute("SELECT row_hash FROM audit WHERE seq = ?", (rows,)).fetchone()
    if row is None:
        cut = f"the log holds {count} rows, a checkpoint covers {rows}: rows were cut off its end"
        return Verdict(False, count, count + 1, cut)
    if bytes(row[0]) != head_hash:
        rewritten = f"row {rows} is not the row a checkpoint signed: the log up to it was rewritten and re-chained"
        return Verdict(False, count, rows, rewritten)
    return Verdict(True, count)


def tail(conn: sqlite3.Connection, n: int, owner_id: str | None = None) -> list[dict[str, Any]]:
    """The latest n rows, or the latest n rows about one owner: their own actions, their agents', and the
    operator's on their behalf."""
    rows = conn.execute(
        "SELECT seq, ts, actor_kind, actor_id, owner_id, action, target, outcome, reason, cred_id, via, detail"
        f" FROM audit WHERE ?1 IS NULL OR owner_id = ?1 OR json_extract(detail, '$.{ON_BEHALF_OF}') = ?1"
        " ORDER BY seq DESC LIMIT ?2",
        (owner_id, n),
    ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in reversed(rows)]
