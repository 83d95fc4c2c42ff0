"""A copy of the database taken while it serves (DESIGN §9.5 `backup`), and the lock that says it is in use.

One function makes every copy: `agent-rooms backup FILE`, the copy taken beside the database before a
migration changes an older schema, and the copy a restore prepares before it replaces the database.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_rooms_mcp.home import PRIVATE_FILE


class BackupRefused(Exception):
    """A backup or restore that must not go ahead; the message names the file and the way out. `code` is
    DESIGN §7's: CONFLICT when something in the way must move first (a hub running, a file there)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


def open_lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".open-lock")


@contextmanager
def held_open(db_path: Path) -> Iterator[None]:
    """Held (shared) by every process while it has the database open: a restore takes it exclusively, so it
    never replaces a database under a running hub, and no hub opens one while it is being replaced."""
    fd = os.open(open_lock_path(db_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def held_alone(db_path: Path) -> Iterator[None]:
    """The database, with no process of ours having it open, for as long as the block runs; BackupRefused
    at once if any has (a hub serving, a stdio session, another command)."""
    fd = os.open(open_lock_path(db_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupRefused(
                f"a hub (or another agent-rooms process) has {db_path} open; stop it (serve, stdio sessions,"
                " listeners of this home), then restore again",
                "CONFLICT",
            ) from None
        yield
    finally:
        os.close(fd)


def refuse_shared_directory(dest: Path) -> None:
    """A backup holds every message and every credential's hash: never written where others may list it."""
    parent = dest.parent.resolve()
    mode = parent.stat().st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise BackupRefused(
            f"{parent} can be read or written by other users (mode {stat.S_IMODE(mode):o}); write the backup into"
            f" a private directory (chmod 700 {parent}, or choose another)"
        )


def copy_database(source: sqlite3.Connection, dest: Path) -> None:
    """Copy the database `source` is open on into the new file `dest`, 0600, with SQLite's online backup.

    In one step, so the copy is one snapshot: a step-wise backup starts over whenever another connection
    writes, and under a steady load would never finish. A WAL reader blocks no writer, so the hub keeps
    serving meanwhile. The copy is written beside `dest` and renamed into place once whole and checked, so
    a failed backup never leaves a half file under the name asked for."""
    if dest.exists() or dest.is_symlink():
        raise BackupRefused(f"{dest} already exists; choose a new file name", "CONFLICT")
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # whatever the umask
    os.close(fd)
    try:
        copy = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(copy, pages=-1)
            # One self-contained file: no -wal beside it to lose when the copy is moved.
            copy.execute("PRAGMA journal_mode=DELETE")
            [(verdict,)] = copy.execute("PRAGMA quick_check").fetchall()
            if verdict != "ok":
                raise BackupRefused(f"the copy failed SQLite's check ({verdict}); nothing was written to {dest}")
        finally:
            copy.close()
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def backup_file(db_path: Path, dest: Path) -> None:
    """`agent-rooms backup FILE`: the database at `db_path`, read-only, copied to `dest` (see copy_database)."""
    refuse_shared_directory(dest)
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        copy_database(source, dest)
    finally:
        source.close()
