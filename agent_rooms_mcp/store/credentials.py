"""Every table that holds a credential, once (DESIGN §9.5 `restore`, invariant 107).

A restore brings back a database as it was at its backup, with every credential that was live then: a token
revoked since, a device removed since, a session that was ended. So a restore revokes them all unless told to
keep them. A table that holds a way in joins this registry by adding a row; nothing else lists them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CredentialTable:
    """A table of credentials and how to end every live one of them. `revoke` is one SQL statement taking
    `:now`; its row count is what the restore's audit row reports."""

    table: str
    what: str  # in plain words, for the restore's receipt
    revoke: str


CREDENTIAL_TABLES: tuple[CredentialTable, ...] = (
    # Bearer tokens and run tokens alike: a run token is a token row with its run_id.
    CredentialTable("tokens", "bearer and run tokens", "UPDATE tokens SET revoked_at = :now WHERE revoked_at IS NULL"),
    CredentialTable("devices", "device credentials", "UPDATE devices SET revoked_at = :now WHERE revoked_at IS NULL"),
    # An enrollment code not yet used would enroll a new device: spent, as a used one is.
    CredentialTable("enrollments", "enrollment codes", "UPDATE enrollments SET used_at = :now WHERE used_at IS NULL"),
    # An invite code used or withdrawn since the backup would work again: withdrawn, as a quarantine does.
    CredentialTable(
        "invites",
        "invite codes",
        "UPDATE invites SET withdrawn_at = :now WHERE used_at IS NULL AND withdrawn_at IS NULL",
    ),
    # The owner console (DESIGN §9.2): its sessions, and login links not yet used.
    CredentialTable(
        "console_sessions",
        "console sessions",
        "UPDATE console_sessions SET revoked_at = :now WHERE revoked_at IS NULL",
    ),
    CredentialTable(
        "console_links", "console login links", "UPDATE console_links SET used_at = :now WHERE used_at IS NULL"
    ),
    # The Claude.ai connector (DESIGN §9.4): its access tokens are `tokens` rows (above); a revoked grant ends its
    # refresh tokens, and a code not yet exchanged is spent (a spent code presented again revokes nothing live).
    CredentialTable(
        "oauth_grants", "OAuth connector grants", "UPDATE oauth_grants SET revoked_at = :now WHERE revoked_at IS NULL"
    ),
    CredentialTable("oauth_codes", "OAuth codes", "UPDATE oauth_codes SET used_at = :now WHERE used_at IS NULL"),
)


def revoke_all(conn: sqlite3.Connection, now: str) -> dict[str, int]:
    """End every live credential of every registered table present in this database, in the caller's
    transaction; how many rows each table had revoked."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    return {c.table: conn.execute(c.revoke, {"now": now}).rowcount for c in CREDENTIAL_TABLES if c.table in present}
