"""Backup and restore of the hub's database (DESIGN §9.5, invariant 107).

A backup is SQLite's online copy, taken while the hub serves (store/backup.py). A restore replaces the database
only while no process has it open, and first ends every credential in the restored copy (store/credentials.py)
unless told to keep them: a restore must not bring back a token, a device or a code revoked since the backup.
The restore's own audit row is appended to the restored log, so the log still verifies and says it happened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import now_utc
from agent_rooms_mcp.home import secure_database_files
from agent_rooms_mcp.models import Restored
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.store.backup import BackupRefused, backup_file, copy_database, held_alone
from agent_rooms_mcp.store.credentials import CREDENTIAL_TABLES, revoke_all
from agent_rooms_mcp.store.database import migrate
from agent_rooms_mcp.store.schema import MIGRATIONS

log = structlog.get_logger("agent_rooms_mcp.backup")


def backup(settings: Settings, dest: Path) -> Path:
    """Copy the hub's database to `dest` (0600), consistent while it serves; the path written."""
    if not settings.db_path.exists():
        raise BackupRefused(f"no hub at {settings.home}; nothing to back up")
    backup_file(settings.db_path, dest)
    log.info("backup.written", dest=str(dest))
    return dest


def _checked_source(source: Path) -> sqlite3.Connection:
    """The backup, opened read-only, if it is a hub database this version can run."""
    if not source.is_file():
        raise BackupRefused(f"{source}: no such file")
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        [(verdict,)] = conn.execute("PRAGMA quick_check").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        [(version,)] = conn.execute("PRAGMA user_version").fetchall()
    except sqlite3.DatabaseError as e:
        conn.close()
        raise BackupRefused(f"{source} is not an agent-rooms backup ({e})") from None
    if verdict != "ok" or not {"meta", "audit", "tokens"} <= tables:
        conn.close()
        raise BackupRefused(f"{source} is not an agent-rooms backup, or is damaged ({verdict})")
    if version > len(MIGRATIONS):
        conn.close()
        raise BackupRefused(
            f"{source} is of schema {version}, newer than this agent-rooms knows ({len(MIGRATIONS)}); upgrade first"
        )
    return conn


def restore(settings: Settings, source: Path, operator: Actor, *, keep_credentials: bool) -> Restored:
    """Replace the hub's database with the backup `source`; refused while any process has it open.

    The copy is prepared beside the database (migrated to this version's schema, its credentials ended, the
    restore audited) and only then written over it, so an interrupted restore leaves the old database whole."""
    db = settings.db_path
    if not settings.home.is_dir():
        raise BackupRefused(f"no hub home at {settings.home}; run: agent-rooms init")
    src = _checked_source(source)
    work = db.with_name(db.name + ".restoring")
    try:
        with held_alone(db):
            for leftover in (work, work.with_name(work.name + "-journal")):
                leftover.unlink(missing_ok=True)
            copy_database(src, work)
            conn = sqlite3.connect(work, isolation_level=None)
            try:
                migrate(conn, db.with_name(db.name + ".migrate-lock"), backup_first=False)
                conn.execute("BEGIN IMMEDIATE")
                revoked = {} if keep_credentials else revoke_all(conn, now_utc())
                seq = audit.append(
                    conn,
                    operator,
                    "hub.restore",
                    detail={"source": source.name, "kept_credentials": keep_credentials, "revoked": revoked},
                )
                conn.execute("COMMIT")
                target = sqlite3.connect(db, isolation_level=None)
                try:
                    # Through SQLite, not a rename: it takes the file's locks and leaves no stale WAL behind.
                    conn.backup(target, pages=-1)
                finally:
                    target.close()
            finally:
                conn.close()
            secure_database_files(db)
    finally:
        src.close()
        work.unlink(missing_ok=True)
    log.warning("hub.restored", source=str(source), kept_credentials=keep_credentials, revoked=revoked)
    what = {c.table: c.what for c in CREDENTIAL_TABLES}
    return Restored(
        source=str(source),
        kept_credentials=keep_credentials,
        revoked={what[t]: n for t, n in revoked.items()},
        audit_seq=seq,
    )
