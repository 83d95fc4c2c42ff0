"""The audit trace of refused OAuth requests at /register, /authorize, /token and /revoke (DESIGN §6, §9.4):
each kind of refusal leaves its row, and a flood leaves a bounded number.

Anyone on the internet may send these requests, so the trace is bounded the way failed authentication's is
(auth/failures.py). Time is cut into windows (`oauth_refusal_window_s`). In a window, a source's refusal of a
kind (endpoint and OAuth error) not yet seen from it gets its own row through the one denial path
(`audit.record_denial`), up to `oauth_refusal_rows_per_source` rows; at most `oauth_refusal_sources_per_window`
sources get rows, and the rest are counted together under `*`. Every refusal is counted; once the window is
over, one summary row per source that had refusals without rows of their own holds the counts by kind. So a
window writes at most sources × rows + sources + 1 rows, whatever the flood; a source sending the same refusal
(a rate-limited client retrying, say) writes one row a window.

Unlike failed authentication, a refusal here spends no limit (the endpoints' own limits are in
web/oauth_api.py), and the counts live in this process's memory: a flood of anonymous requests takes the one
write lock only for its first rows, not once per request. The summary of a window is written by the next
refusal after it, or by the hub's periodic OAuth sweep, whichever comes first; when the hub closes, the counts
of the window under way are written as its summary so far (`close`), so a window cut by a restart may have two
summaries per source, each counting its own refusals. A summary that fails to be written keeps its window's
counts for the next try. What a crash loses is the counts not yet summarised, never a first row (written at
once); nobody outside can crash or restart the hub.

A row names the OAuth error, the source (an address, an IPv6 peer's /64) and the client id (through
`safe_target`: an id kept, anything else hashed) or a metadata-document client's host; never a code, verifier,
token or secret, which the caller does not even pass here.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import structlog

from agent_rooms_mcp import audit
from agent_rooms_mcp.auth.failures import source_of
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store.database import Store

OVERFLOW_SOURCE = "*"
SUMMARY_ACTION = "oauth.refusals"
_SYSTEM = audit.Actor("system", "oauth")
_TRANSPORT = "oauth"
# A host name as DNS spells one: kept in a row as it is (a metadata-document client is known by its host).
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
# Windows over whose summaries could not be written yet (the database failing): kept for the next try, the oldest
# dropped past this many (each window's counts are bounded by `oauth_refusal_sources_per_window`).
_UNWRITTEN_MAX = 16

log = structlog.get_logger("agent_rooms_mcp.oauth_refusals")


@dataclass
class _Window:
    start: float
    counts: dict[str, Counter[str]] = field(default_factory=dict)  # source -> "action reason" -> refusals
    rows: Counter[str] = field(default_factory=Counter)  # source -> rows written
    seen: set[tuple[str, str]] = field(default_factory=set)  # (source, "action reason") with a row


class RefusalTrace:
    def __init__(self, store: Store, limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock
        self._window = _Window(self._start())
        self._unwritten: list[_Window] = []  # windows over, oldest first, whose summaries are not written yet

    def _start(self, now: float | None = None) -> float:
        now, length = self._clock() if now is None else now, self._limits.oauth_refusal_window_s
        return now - now % length

    async def refused(self, action: str, reason: str, *, address: str | None, client_id: str | None) -> None:
        """Count one refusal: `action` the endpoint's audit action, `reason` the OAuth error (a code of ours,
        never the caller's text), `address` the peer, `client_id` as the caller named it."""
        self._roll()
        window, limits = self._window, self._limits
        source = source_of(address, _TRANSPORT)
        if source not in window.counts and len(window.counts) >= limits.oauth_refusal_sources_per_window:
            source = OVERFLOW_SOURCE
        kind = f"{action} {reason}"
        window.counts.setdefault(source, Counter())[kind] += 1
        row = (
            source != OVERFLOW_SOURCE
            and (source, kind) not in window.seen
            and window.rows[source] < limits.oauth_refusal_rows_per_source
        )
        if row:
            window.seen.add((source, kind))
            window.rows[source] += 1
        # Every change to the window is made before the first await: concurrent refusals each see the other's.
        await self._write_unwritten()
        if row:
            detail: dict[str, str] = {"source": source}
            host = _host(client_id)
            if host is not None:
                detail["client_host"] = host
            await audit.record_denial(self._store, audit.ANONYMOUS, action, reason, detail=detail, target=client_id)

    async def flush(self, now: float | None = None) -> None:
        """Write the summaries of a window that is over, if no refusal since has (the hub's sweep calls this, with
        its own `now`, a Unix time)."""
        self._roll(now)
        await self._write_unwritten()

    async def close(self) -> None:
        """Write what is counted and not yet written, the window under way included (its summary so far): the
        hub calls this as it closes, when the counts would otherwise go with the process."""
        self._keep(self._window)
        self._window = _Window(self._window.start)
        await self._write_unwritten()

    def _roll(self, now: float | None = None) -> None:
        """Start a new window if the current one is over; the one that ended waits to be summarised."""
        start = self._start(now)
        if start != self._window.start:
            ended, self._window = self._window, _Window(start)
            self._keep(ended)

    def _keep(self, ended: _Window) -> None:
        if not any(sum(c.values()) > ended.rows[s] for s, c in ended.counts.items()):
            return  # every refusal in it has its own row: nothing to summarise
        self._unwritten.append(ended)
        if len(self._unwritten) > _UNWRITTEN_MAX:
            dropped = self._unwritten.pop(0)
            log.error("oauth.refusals_dropped", refusals=sum(sum(c.values()) for c in dropped.counts.values()))

    async def _write_unwritten(self) -> None:
        """Summarise the windows waiting, oldest first. Each is taken before the await, so concurrent callers never
        write one twice; one that fails to be written goes back, its counts kept for the next try."""
        while self._unwritten:
            ended = self._unwritten.pop(0)
            try:
                await self._summarise(ended)
            except Exception:
                self._unwritten.insert(0, ended)
                raise

    async def _summarise(self, ended: _Window) -> None:
        window_s = self._limits.oauth_refusal_window_s

        def run(conn: sqlite3.Connection) -> int:
            written = 0
            for source, kinds in sorted(ended.counts.items()):
                refusals = sum(kinds.values())
                if refusals <= ended.rows[source]:  # each of them has its own row already
                    continue
                detail = {
                    "window_start": iso(datetime.fromtimestamp(ended.start, UTC)),
                    "window_s": window_s,
                    "refusals": refusals,
                    "kinds": dict(sorted(kinds.items())),
                }
                audit.append(conn, _SYSTEM, SUMMARY_ACTION, target=source, outcome="denied", detail=detail)
                written += 1
            return written

        await self._store.write(run)


def _host(client_id: str | None) -> str | None:
    """A metadata-document client's host (what the approval page shows of it), if it is shaped like one."""
    if not client_id or not client_id.startswith("https://"):
        return None
    try:
        host = (urlsplit(client_id).hostname or "").lower()
    except ValueError:
        return None
    return host if _HOST_RE.fullmatch(host) else None
