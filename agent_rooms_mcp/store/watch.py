"""Long-poll wake-ups: by room (a waiter sleeps on its room's event and costs nothing while it sleeps), and
for any commit at all (a listener's long poll, which judges for itself what the commit means to it).

One watcher per process looks for commits: at once when this process says it committed, else every
`watch_s` (another process, a stdio server or the CLI, may have written the same file), and not at all
while nobody waits. A look is one `PRAGMA data_version` when nothing moved; when it moved, the waiters for
any commit are told, one query reads the latest seq of the rooms that have waiters, and only the rooms
whose seq grew are woken, each once (DESIGN §9, invariant 84).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import anyio
import structlog

log = structlog.get_logger("agent_rooms_mcp.store")

_LATEST = (
    "SELECT w.value AS room_id,"
    " (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.room_id = w.value) AS latest_seq"
    " FROM json_each(?) w"
)


@dataclass(slots=True)
class _Room:
    seq: int
    waiters: int = 0
    moved: anyio.Event = field(default_factory=anyio.Event)


class RoomWatch:
    """The rooms somebody waits on, the count of those waiting for any commit, and the one task that wakes
    them all. `moved` is called when a look finds the database changed while someone waits for any commit."""

    def __init__(self, reader: sqlite3.Connection, watch_s: float, moved: Callable[[], None]) -> None:
        # The reader is used between other reads on the loop's thread, never inside one: no await
        # separates a statement here from its result.
        self._reader = reader
        self._watch_s = watch_s
        self._rooms: dict[str, _Room] = {}
        self._any_waiters = 0
        self._moved = moved
        self._poked = anyio.Event()
        self._seen_version = -1

    @contextmanager
    def wanting_any(self) -> Iterator[None]:
        """While inside, each commit of any process is announced through `moved` (within `watch_s`)."""
        if not self._any_waiters and not self._rooms:
            # The watcher slept: changes count from now, not from its last look, or a commit from before
            # this wait began would be announced as new.
            with suppress(sqlite3.OperationalError):
                self._seen_version = self._version()
        self._any_waiters += 1
        self._poked.set()  # the watcher may be asleep with nobody to watch for
        try:
            yield
        finally:
            self._any_waiters -= 1

    def poke(self) -> None:
        """This process committed: look now rather than at the next tick. With nobody waiting a look would find
        nothing to do, and a waiter that comes later pokes for itself, so the watcher is left asleep (a wake-up
        is a task step and a fresh timer on every post)."""
        if self._rooms or self._any_waiters:
            self._poked.set()

    async def wait_past(self, room_id: str, seq: int) -> int:
        """Return the room's latest seq once it is greater than `seq` (the caller bounds the wait)."""
        room = self._rooms.get(room_id)
        if room is None:
            # A fresh look, so a message committed since the caller's read is not missed.
            room = self._rooms[room_id] = _Room(self._latest([room_id]).get(room_id, 0))
            self._poked.set()  # the watcher may be asleep with no rooms to watch
        room.waiters += 1
        try:
            while room.seq <= seq:
                await room.moved.wait()
            return room.seq
        finally:
            room.waiters -= 1
            if room.waiters == 0 and self._rooms.get(room_id) is room:
                del self._rooms[room_id]

    async def run(self) -> None:
        """The watcher: until cancelled. With no waiters it sleeps until the first one comes."""
        while True:
            if not self._rooms and not self._any_waiters:
                await self._poked.wait()
            self._poked = anyio.Event()
            try:
                self._look()
            except sqlite3.OperationalError as e:
                # A file busy past the reader's timeout must not end the hub's task group: look again next tick.
                log.warning("store.watch_busy", error=str(e))
                self._seen_version = -1
            with anyio.move_on_after(self._watch_s):
                await self._poked.wait()

    def _version(self) -> int:
        return int(self._reader.execute("PRAGMA data_version").fetchone()[0])

    def _look(self) -> None:
        if not self._rooms and not self._any_waiters:
            return
        version = self._version()
        if version == self._seen_version:
            return
        self._seen_version = version
        if self._any_waiters:
            self._moved()
        if not self._rooms:
            return
        for room_id, latest in self._latest(list(self._rooms)).items():
            room = self._rooms.get(room_id)
            if room is not None and latest > room.seq:
                room.seq = latest
                moved, room.moved = room.moved, anyio.Event()
                moved.set()

    def _latest(self, room_ids: list[str]) -> dict[str, int]:
        rows = self._reader.execute(_LATEST, (json.dumps(room_ids),)).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}
