"""One-time codes `ID.SECRET`, a device's enrollment code and a console login link: how one is issued, read and
redeemed, the same for both (DESIGN §9.1, §9.2).

The id (128 random bits, like every id) finds the row, so a wrong secret counts against that one code whichever
source tries it, and the code is void after `failures_max` of them; the secret (192 bits) is stored only as a
hash, and the code is spent by the transaction that redeems it. What a redeemed code opens (a device, a console
session) is its caller's.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent_rooms_mcp.auth.tokens import new_id, secret_hash
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.ids import OwnerId

_SECRET_BYTES = 24  # 192 bits


@dataclass(frozen=True, slots=True)
class CodeKind:
    """Where one kind of code is kept, and the words its refusals are audited under."""

    prefix: str  # of its id
    table: str  # columns: <key>, owner_id, secret_hash, device_id, created_at, expires_at, failures, used_at
    key: str
    noun: str  # a refusal is malformed_, unknown_, used_, void_ or expired_ and this
    wrong_secret: str  # the refusal of a wrong secret

    def refused(self, why: str) -> str:
        return f"{why}_{self.noun}"


ENROLLMENT = CodeKind("enr", "enrollments", "enrollment_id", "enrollment_code", "wrong_enrollment_secret")
CONSOLE_LINK = CodeKind("cln", "console_links", "link_id", "console_link", "wrong_console_link_secret")


@dataclass(frozen=True, slots=True)
class Issued:
    code_id: str
    code: str  # `ID.SECRET`, shown once and never stored
    expires_at: str


@dataclass(frozen=True, slots=True)
class CodeRow:
    """A code redeemed (or still usable), and whose it is."""

    code_id: str
    owner_id: OwnerId
    owner_handle: str
    device_id: str | None  # a console link minted on a device: revoking the device ends what the link opened


def issue(
    conn: sqlite3.Connection, kind: CodeKind, owner_id: str, now: datetime, ttl: timedelta, device_id: str | None
) -> Issued:
    """A new code of `kind` for `owner_id`, written in the caller's transaction (its audit row is the caller's)."""
    code_id, secret = new_id(kind.prefix), secrets.token_urlsafe(_SECRET_BYTES)
    expires = iso(now + ttl)
    conn.execute(
        f"INSERT INTO {kind.table} ({kind.key}, owner_id, secret_hash, device_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (code_id, owner_id, secret_hash(secret), device_id, iso(now), expires),
    )
    return Issued(code_id, f"{code_id}.{secret}", expires)


def split(kind: CodeKind, code: str) -> tuple[str, str] | None:
    """(id, secret) of a code of this kind's shape; None for any other string, refused before any lookup."""
    code_id, dot, secret = code.partition(".")
    if not dot or not code_id.startswith(kind.prefix + "_") or not secret.isascii():
        return None
    return code_id, secret


def _read(conn: sqlite3.Connection, kind: CodeKind, code_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT c.*, o.handle AS owner_handle FROM {kind.table} c JOIN owners o ON o.owner_id = c.owner_id"
        f" WHERE c.{kind.key} = ?",
        (code_id,),
    ).fetchone()
    return row


def _refusal(kind: CodeKind, row: sqlite3.Row | None, secret: str, now: str, failures_max: int) -> str | None:
    """Why this code cannot be redeemed now, in the order a refusal is audited; None when it can."""
    if row is None:
        return kind.refused("unknown")
    if row["used_at"] is not None:
        return kind.refused("used")
    if row["failures"] >= failures_max:
        return kind.refused("void")
    if row["expires_at"] <= now:
        return kind.refused("expired")
    if not secrets.compare_digest(bytes(row["secret_hash"]), secret_hash(secret)):
        return kind.wrong_secret
    return None


def _code_row(kind: CodeKind, row: sqlite3.Row) -> CodeRow:
    return CodeRow(row[kind.key], OwnerId(row["owner_id"]), str(row["owner_handle"]), row["device_id"])


def usable(conn: sqlite3.Connection, kind: CodeKind, code: str, now: str, failures_max: int) -> CodeRow | None:
    """The code's row if redeeming it now would succeed, else None; a read, so a wrong secret is not counted
    (192 bits leave nothing to guess)."""
    parts = split(kind, code)
    if parts is None:
        return None
    row = _read(conn, kind, parts[0])
    if row is None or _refusal(kind, row, parts[1], now, failures_max) is not None:
        return None
    return _code_row(kind, row)


def redeem(
    conn: sqlite3.Connection, kind: CodeKind, code_id: str, secret: str, now: str, failures_max: int
) -> CodeRow | str:
    """Spend the code in the caller's transaction, or the reason it is refused. A wrong secret is counted on its
    code: the caller must return the reason rather than raise, so that the count commits."""
    row = _read(conn, kind, code_id)
    refusal = _refusal(kind, row, secret, now, failures_max)
    if refusal == kind.wrong_secret:
        conn.execute(f"UPDATE {kind.table} SET failures = failures + 1 WHERE {kind.key} = ?", (code_id,))
    if refusal is not None or row is None:
        return refusal or kind.refused("unknown")
    conn.execute(f"UPDATE {kind.table} SET used_at = ? WHERE {kind.key} = ?", (now, code_id))
    return _code_row(kind, row)
