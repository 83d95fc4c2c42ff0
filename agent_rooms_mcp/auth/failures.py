"""Failed authentication: a limit per source and credential, a global budget beside it, and a bounded trace
in the audit log (DESIGN §6, §9.3; invariants 68, 85).

Each failure is counted in `auth_failures` by window (a minute by default), source, the first 8 bytes of the
presented credential's SHA-256, and reason. That table is the limit's state: a restart does not reset it,
and the processes sharing one database share it.

The trace of a flood stays bounded and the chain append-only. A source's first few failures in a window
(`failed_auth_rows_per_source`) get their own audit rows at once (the reason, and whose credential it was
when the token is known); later ones are only counted; once the window is over, one summary row per source
with more than one failure holds the count and the reasons, and the window's counters are deleted. The
summary waits for the window to close because an audit row can never be updated: a row written at the first
failure could not hold the final count, which would then live only in a deletable table, outside the chain.
A closed window is summarised by the next failure or the next start of a
hub (every CLI command opens one, `audit tail` included).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from agent_rooms_mcp import audit
from agent_rooms_mcp.clock import iso
from agent_rooms_mcp.errors import ErrorCode, RoomsError, unauthenticated
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store.database import Store

# Sources past `failed_auth_sources_per_window` in one window are counted together under this one.
OVERFLOW_SOURCE = "*"
AUTH_ACTION = "auth.authenticate"
SUMMARY_ACTION = "auth.failures"
_SYSTEM = audit.Actor("system")
_KEY_PREFIX_BYTES = 8
_IPV6_SOURCE_PREFIX = 64


class AuthRateLimited(RoomsError):
    """RATE_LIMITED for a failed authentication over its limit; HTTP answers it with 429 and Retry-After."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"too many failed authentications; retry in {retry_after_s} s",
            audit_reason="rate_limited",
            retry_after_ms=retry_after_s * 1000,
        )
        self.retry_after_s = retry_after_s  # HTTP's Retry-After is in whole seconds


@dataclass(frozen=True, slots=True)
class Attempt:
    transport: str
    source: str
    key_prefix: bytes


def source_of(address: str | None, transport: str) -> str:
    """What failures are counted against: the peer's address, an IPv6 peer's /64 (one host commonly holds a
    whole /64, so counting per address would let it rotate past the limit), or, where there is no address,
    the transport's name (stdio)."""
    if address is None:
        return transport
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


def attempt_of(credential: str | None, transport: str, address: str | None) -> Attempt:
    presented = (credential or "").encode("utf-8", "surrogatepass")
    return Attempt(transport, source_of(address, transport), hashlib.sha256(presented).digest()[:_KEY_PREFIX_BYTES])


class FailedAuth:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits

    async def fail(self, attempt: Attempt, reason: str, actor: audit.Actor) -> RoomsError:
        """Count one failure (auditing it if it is its source's first in the window) and return the error to
        answer it with: RATE_LIMITED past the limit of its source and credential or past the global budget,
        UNAUTHENTICATED otherwise."""
        start, retry_after_s = self._window()
        on_key, overall = await self._store.write(lambda conn: self._count(conn, start, attempt, reason, actor))
        if on_key > self._limits.failed_auth_limit or overall > self._limits.failed_auth_global_limit:
            return AuthRateLimited(retry_after_s)
        return unauthenticated(reason)

    async def summarise_closed_windows(self) -> int:
        """Write the summary rows of every window that is over; the number written."""
        start, _ = self._window()
        pending = await self._store.read(
            lambda conn: conn.execute("SELECT 1 FROM auth_failures WHERE window_start < ? LIMIT 1", (start,)).fetchone()
        )
        return 0 if pending is None else await self._store.write(lambda conn: self._summarise(conn, start))

    def _window(self) -> tuple[str, int]:
        """The current window's start (as text that sorts by time) and the whole seconds until it ends."""
        now, length = time.time(), self._limits.failed_auth_window_s
        start = now - now % length
        return iso(datetime.fromtimestamp(start, UTC)), max(1, math.ceil(start + length - now))

    def _count(
        self, conn: sqlite3.Connection, start: str, attempt: Attempt, reason: str, actor: audit.Actor
    ) -> tuple[int, int]:
        self._summarise(conn, start)
        overall = conn.execute("SELECT coalesce(sum(failures), 0) FROM auth_failures WHERE window_start = ?", (start,))
        total = int(overall.fetchone()[0])
        source = attempt.source
        earlier = conn.execute(
            "SELECT coalesce(sum(failures), 0) FROM auth_failures WHERE window_start = ? AND source = ?",
            (start, source),
        ).fetchone()[0]
        if earlier == 0 and self._sources(conn, start) >= self._limits.failed_auth_sources_per_window:
            source, earlier = OVERFLOW_SOURCE, self._limits.failed_auth_rows_per_source
        # Past the global budget every failure is refused anyway: one counter per source, not one per credential
        # tried, keeps the table as bounded as the audit log.
        prefix = attempt.key_prefix if total < self._limits.failed_auth_global_limit else b""
        conn.execute(
            "INSERT INTO auth_failures (window_start, source, key_prefix, reason, failures) VALUES (?, ?, ?, ?, 1)"
            " ON CONFLICT DO UPDATE SET failures = failures + 1",
            (start, source, prefix, reason),
        )
        if earlier < self._limits.failed_auth_rows_per_source:
            transport = {"transport": attempt.transport}
            audit.append(conn, actor, AUTH_ACTION, target=source, outcome="denied", reason=reason, detail=transport)
        on_key = conn.execute(
            "SELECT sum(failures) FROM auth_failures WHERE window_start = ? AND source = ? AND key_prefix = ?",
            (start, source, prefix),
        ).fetchone()[0]
        return int(on_key), total + 1

    @staticmethod
    def _sources(conn: sqlite3.Connection, start: str) -> int:
        return int(
            conn.execute(
                "SELECT count(DISTINCT source) FROM auth_failures WHERE window_start = ? AND source != ?",
                (start, OVERFLOW_SOURCE),
            ).fetchone()[0]
        )

    def _summarise(self, conn: sqlite3.Connection, before: str) -> int:
        """One row per source of each window that started before `before`, then forget those windows."""
        rows = conn.execute(
            "SELECT window_start, source, reason, sum(failures) AS n FROM auth_failures WHERE window_start < ?"
            " GROUP BY window_start, source, reason ORDER BY window_start, source, reason",
            (before,),
        ).fetchall()
        if not rows:
            return 0
        windows: dict[tuple[str, str], dict[str, int]] = {}
        for row in rows:
            windows.setdefault((row[0], row[1]), {})[row[2]] = int(row[3])
        written = 0
        for (window_start, source), reasons in windows.items():
            failures = sum(reasons.values())
            # A lone failure's own row says it all; the overflow source never had one.
            if failures > 1 or source == OVERFLOW_SOURCE:
                detail = {
                    "window_start": window_start,
                    "window_s": self._limits.failed_auth_window_s,
                    "failures": failures,
                    "reasons": reasons,
                }
                audit.append(conn, _SYSTEM, SUMMARY_ACTION, target=source, outcome="denied", detail=detail)
                written += 1
        conn.execute("DELETE FROM auth_failures WHERE window_start < ?", (before,))
        return written
