"""The purge (DESIGN §6): remove what is past retention, so deleted and quarantined content is gone for good.

What goes, once archived or ended longer ago than `Limits.retention_s`:
- a quarantined room, with everything in it (messages, files, tasks, proposals, invites, runs, memberships);
- a deleted agent, with its credentials, variables, memberships, proposals, the tasks it created, the files and
  messages it posted, its runs and the runs it caused, and the default workdir the hub made for it;
- ended runs' directories (`runs/RUN`, with its token file and MCP config) and logs (`run-logs/RUN`), and
  such directories left with no run at all.

Never the audit log: its rows are metadata, and the chain must still verify afterwards. Nor the records that
outlive the thing they are about by design (`revocations`, `retired_handles`: a handle is never reused).

A message or task number is the room's highest-so-far, read as max() (`store/queries.py`): deleting the
room's latest one would hand its number to the next post, and a reader already past it would miss that post.
Such a row is blanked instead of deleted, and its agent stays (archived, holding nothing) until a later purge
finds the room has moved on.

Deleted rows' bytes must not survive in the file or its WAL: every connection has `secure_delete` on, and
after a purge that removed rows the WAL is truncated, and the file vacuumed when much of it is free
(`Store.compact`). A dry run does
the same deletes in a transaction it rolls back, so its counts are exactly what a real run would remove.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import structlog

from agent_rooms_mcp import audit
from agent_rooms_mcp.audit import Actor
from agent_rooms_mcp.clock import Clock, iso, system_clock
from agent_rooms_mcp.models import PurgeReport
from agent_rooms_mcp.run_states import FINAL_STATES
from agent_rooms_mcp.settings import Settings
from agent_rooms_mcp.store.database import Store

log = structlog.get_logger("agent_rooms_mcp.purge")

# The names `tokens.new_id("run")` makes: the purge removes only directories a run could have made under
# `runs/` and `run-logs/`, never whatever else someone put beside them (a workdir it removes is named by the
# purged agent's own row).
_RUN_DIR = re.compile(r"run_[A-Za-z0-9_-]{22}")
_FINAL = tuple(sorted(s.value for s in FINAL_STATES))
_FINAL_SQL = ", ".join(f"'{s}'" for s in _FINAL)
_IDS = "(SELECT value FROM json_each(:ids))"


@dataclass(frozen=True, slots=True)
class _Removed:
    """What the database part removed: counts per kind, and what the file part must remove after the commit."""

    counts: Counter[str]
    deferred: Counter[str]
    paths: tuple[tuple[str, Path], ...]  # (kind, path) to remove once the transaction committed


class _RolledBack(Exception):
    """Carries a dry run's counts out of the transaction it rolls back."""

    def __init__(self, removed: _Removed) -> None:
        super().__init__("dry run")
        self.removed = removed


class Purge:
    def __init__(self, store: Store, settings: Settings, clock: Clock = system_clock) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

    def _wal_left(self) -> bool:
        wal = self._store.path.with_name(self._store.path.name + "-wal")
        return wal.exists() and wal.stat().st_size > 0

    async def run(self, actor: Actor, *, dry_run: bool = False) -> PurgeReport:
        cutoff = iso(self._clock() - timedelta(seconds=self._settings.limits.retention_s))
        try:
            removed = await self._store.write(lambda conn: self._rows(conn, actor, cutoff, dry_run))
        except _RolledBack as e:
            removed = e.removed
        counts = removed.counts
        if not dry_run:
            # After the commit: a directory goes only once no row points at it. One that cannot be removed
            # now is found again by the next purge.
            await anyio.to_thread.run_sync(_remove_all, removed.paths)
        vacuumed = wal_truncated = False
        if not dry_run and (any(counts[k] for k in ROW_KINDS) or self._wal_left()):
            # Also when nothing was removed but a WAL is left: one an earlier purge could not truncate (a reader
            # held it) may still hold purged bytes, and this is the "purge again" that clears them.
            vacuumed, wal_truncated = await self._store.compact(self._settings.limits.purge_vacuum_free_fraction)
        if not dry_run and +counts:
            log.info("purge.done", **dict(counts), vacuumed=vacuumed, wal_truncated=wal_truncated)
        return PurgeReport(
            dry_run=dry_run,
            cutoff=cutoff,
            removed={k: counts[k] for k in KINDS},
            deferred=dict(sorted(removed.deferred.items())),
            vacuumed=vacuumed,
            wal_truncated=wal_truncated,
        )

    def _rows(self, conn: sqlite3.Connection, actor: Actor, cutoff: str, dry_run: bool) -> _Removed:
        counts: Counter[str] = Counter()
        deferred: Counter[str] = Counter()
        run_ids: list[str] = []
        rooms = _archived(conn, "rooms", "room_id", "quarantined_at", cutoff, "r.room_id = x.room_id")
        deferred["rooms_with_unfinished_runs"] = rooms.held
        if rooms.ids:
            run_ids += _purge_rooms(conn, json.dumps(rooms.ids), counts)
        agents = _archived(
            conn, "agents", "agent_id", "deleted_at", cutoff, "r.agent_id = x.agent_id OR r.caused_by = x.agent_id"
        )
        deferred["agents_with_unfinished_runs"] = agents.held
        workdirs: list[str] = []
        if agents.ids:
            ids = json.dumps(agents.ids)
            query = f"SELECT handle FROM agents WHERE agent_id IN {_IDS} AND workdir IS NULL"
            workdirs = [r[0] for r in conn.execute(query, {"ids": ids})]
            run_ids += _purge_agents(conn, ids, counts, deferred)
            workdirs = [h for h in workdirs if not _exists(conn, "agents", "handle = ?", (h,))]
        paths = self._files(conn, set(run_ids), workdirs, cutoff)
        counts.update(kind for kind, _ in paths)
        removed = _Removed(counts, +deferred, paths)
        if dry_run:
            raise _RolledBack(removed)
        if +counts:
            # One row per purge that removed anything, counts only: which rooms and agents went is already in
            # the rows of their quarantine and deletion.
            audit.append(conn, actor, "purge", detail={"cutoff": cutoff, **{k: counts[k] for k in KINDS if counts[k]}})
        return removed

    def _files(
        self, conn: sqlite3.Connection, purged_runs: set[str], workdirs: list[str], cutoff: str
    ) -> tuple[tuple[str, Path], ...]:
        """Run directories and logs of purged and long-ended runs, and those no run owns any more; the default
        workdirs of purged agents. Only names are listed here, inside the transaction; the trees go after it."""
        s = self._settings
        ended = conn.execute("SELECT run_id FROM runs WHERE ended_at IS NOT NULL AND ended_at <= ?", (cutoff,))
        gone = purged_runs | {r[0] for r in ended}
        known = {r[0] for r in conn.execute("SELECT run_id FROM runs")}
        paths: list[tuple[str, Path]] = []
        for kind, root in (("run_dirs", s.runs_dir), ("run_logs", s.run_logs_dir)):
            for entry in _entries(root):
                name = entry.name
                if not _RUN_DIR.fullmatch(name):
                    continue
                # A directory no run owns was left by a run whose row is gone: past retention by its own age.
                if name in gone or (name not in known and _older_than(entry, cutoff)):
                    paths.append((kind, Path(entry.path)))
        paths += [("workdirs", s.home / "workdirs" / h) for h in workdirs if os.path.lexists(s.home / "workdirs" / h)]
        return tuple(paths)


# Every kind a report names, rows first; a report lists them all, zero or not, so scripts can rely on the keys.
ROW_KINDS = ("rooms", "agents", "messages", "files", "tasks", "proposals", "invites", "runs", "tokens", "passports")
KINDS = (*ROW_KINDS, "run_dirs", "run_logs", "workdirs")


@dataclass(frozen=True, slots=True)
class _Archived:
    ids: list[str]
    held: int  # past retention, but a run of theirs has not ended (a silent listener's stop_pending among them)


def _archived(conn: sqlite3.Connection, table: str, key: str, since: str, cutoff: str, touches: str) -> _Archived:
    rows = conn.execute(
        f"SELECT x.{key}, EXISTS (SELECT 1 FROM runs r WHERE ({touches}) AND r.state NOT IN ({_FINAL_SQL}))"
        f" FROM {table} x WHERE x.{since} IS NOT NULL AND x.{since} <= ? ORDER BY x.{key}",
        (cutoff,),
    ).fetchall()
    return _Archived([r[0] for r in rows if not r[1]], sum(1 for r in rows if r[1]))


def _delete(conn: sqlite3.Connection, counts: Counter[str], kind: str | None, sql: str, ids: str) -> None:
    n = conn.execute(sql, {"ids": ids}).rowcount
    if kind:
        counts[kind] += n


def _run_credentials(conn: sqlite3.Connection, runs: str, counts: Counter[str]) -> None:
    """The run tokens of runs about to go, and their passports."""
    jtis = json.dumps([r[0] for r in conn.execute(f"SELECT jti FROM tokens WHERE run_id IN {_IDS}", {"ids": runs})])
    _delete(conn, counts, "tokens", f"DELETE FROM tokens WHERE run_id IN {_IDS}", runs)
    _delete(
        conn, counts, "passports",
        f"DELETE FROM passports WHERE jti IN {_IDS}"
        " AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.jti = passports.jti)",
        jtis,
    )  # fmt: skip


def _purge_rooms(conn: sqlite3.Connection, ids: str, counts: Counter[str]) -> list[str]:
    run_ids = [r[0] for r in conn.execute(f"SELECT run_id FROM runs WHERE room_id IN {_IDS}", {"ids": ids})]
    _run_credentials(conn, json.dumps(run_ids), counts)
    # Children before parents: foreign keys are on.
    for kind, table in (
        ("proposals", "proposals"), ("runs", "runs"), ("tasks", "tasks"), ("messages", "messages"), ("files", "files"),
        ("invites", "invites"), (None, "consent_modes"), (None, "room_agents"), (None, "room_owners"),
        (None, "ended_memberships"), ("rooms", "rooms"),
    ):  # fmt: skip
        _delete(conn, counts, kind, f"DELETE FROM {table} WHERE room_id IN {_IDS}", ids)
    return run_ids


# A message or task that is its room's latest: blanked and kept, so its number is never handed out again.
_LATEST_MESSAGE = "seq = (SELECT max(x.seq) FROM messages x WHERE x.room_id = messages.room_id)"
_LATEST_TASK = "number = (SELECT max(x.number) FROM tasks x WHERE x.room_id = tasks.room_id)"


def _purge_agents(conn: sqlite3.Connection, ids: str, counts: Counter[str], deferred: Counter[str]) -> list[str]:
    run_ids = [
        r[0]
        for r in conn.execute(f"SELECT run_id FROM runs WHERE agent_id IN {_IDS} OR caused_by IN {_IDS}", {"ids": ids})
    ]
    runs = json.dumps(run_ids)
    _run_credentials(conn, runs, counts)
    _delete(conn, counts, "tokens", f"DELETE FROM tokens WHERE agent_id IN {_IDS}", ids)
    # An agent's OAuth grants (the Claude.ai connector) and their codes and refresh tokens go with it.
    grants = f"(SELECT grant_id FROM oauth_grants WHERE agent_id IN {_IDS})"
    for table in ("oauth_codes", "oauth_refresh"):
        _delete(conn, counts, None, f"DELETE FROM {table} WHERE grant_id IN {grants}", ids)
    _delete(conn, counts, None, f"DELETE FROM oauth_grants WHERE agent_id IN {_IDS}", ids)
    _delete(conn, counts, "passports", f"DELETE FROM passports WHERE agent_id IN {_IDS}", ids)
    for table in ("agent_env", "listener_holds", "rate_buckets", "room_agents", "ended_memberships"):
        _delete(conn, counts, None, f"DELETE FROM {table} WHERE agent_id IN {_IDS}", ids)
    _delete(conn, counts, "runs", f"DELETE FROM runs WHERE run_id IN {_IDS}", runs)
    # Tasks it created go (with their proposals); on other agents' tasks, its assignment and its note go.
    created = f"creator_id IN {_IDS}"
    _delete(
        conn, counts, "proposals",
        f"DELETE FROM proposals WHERE proposer_id IN {_IDS} OR target_id IN {_IDS}"
        f" OR task_id IN (SELECT task_id FROM tasks WHERE {created})",
        ids,
    )  # fmt: skip
    conn.execute(
        f"UPDATE tasks SET assignee_id = NULL, assignee_owner_id = NULL WHERE assignee_id IN {_IDS}", {"ids": ids}
    )
    conn.execute(f"UPDATE tasks SET note = NULL, note_by = NULL WHERE note_by IN {_IDS}", {"ids": ids})
    _delete(conn, counts, "tasks", f"DELETE FROM tasks WHERE {created} AND NOT {_LATEST_TASK}", ids)
    conn.execute(
        f"UPDATE tasks SET title = '', body = '' WHERE {created} AND (title != '' OR body != '')", {"ids": ids}
    )
    _delete(conn, counts, "files", f"DELETE FROM files WHERE agent_id IN {_IDS}", ids)
    _delete(conn, counts, "messages", f"DELETE FROM messages WHERE agent_id IN {_IDS} AND NOT {_LATEST_MESSAGE}", ids)
    conn.execute(
        f"UPDATE messages SET text = '', mentions = '[]' WHERE agent_id IN {_IDS} AND (text != '' OR mentions != '[]')",
        {"ids": ids},
    )
    # An agent whose blanked row is still its room's latest stays, holding nothing, until the room moves on.
    keeps = (
        "EXISTS (SELECT 1 FROM messages m WHERE m.agent_id = agents.agent_id)"
        " OR EXISTS (SELECT 1 FROM tasks t WHERE t.creator_id = agents.agent_id)"
    )
    deferred["agents_holding_a_rooms_latest"] += conn.execute(
        f"SELECT count(*) FROM agents WHERE agent_id IN {_IDS} AND ({keeps})", {"ids": ids}
    ).fetchone()[0]
    _delete(conn, counts, "agents", f"DELETE FROM agents WHERE agent_id IN {_IDS} AND NOT ({keeps})", ids)
    return run_ids


def _exists(conn: sqlite3.Connection, table: str, where: str, args: tuple[str, ...]) -> bool:
    return bool(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {where})", args).fetchone()[0] == 1)


def _entries(root: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _older_than(entry: os.DirEntry[str], cutoff: str) -> bool:
    mtime = entry.stat(follow_symlinks=False).st_mtime
    return iso(datetime.fromtimestamp(mtime, UTC)) <= cutoff


def _remove_all(paths: tuple[tuple[str, Path], ...]) -> None:
    """Remove each directory tree (or a stray file or symlink there, never what it points to)."""
    for _, target in paths:
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # another hub process's purge got there first
        except OSError as e:
            log.warning("purge.remove_failed", path=str(target), error=type(e).__name__)
