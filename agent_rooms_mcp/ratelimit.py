"""Per-agent abuse limits (DESIGN §9.3, invariant 67): a token bucket per agent and kind of call (posts, file
writes, task writes, reads), shared by every server process on the database; and two per enrolled device
("and per device"): its owner actions at the owner API, since each refused action writes an audit row, and
its listeners' requests, each a read or a write of the hub's database.

A bucket holds up to its per-minute rate and refills continuously. Its state is a row of `rate_buckets`
(level and the time it was measured), so stdio servers, the HTTP hub and a restart all draw on the same
bucket. Writing that row on every call would cost a read-only call a write transaction, so each process
keeps a little credit of its own: it charges up to `rate_local_calls` calls against the level it last read,
then settles what it spent in one write that also reads the new level. A call that finds no credit always
settles first, so a refusal is decided on the shared state; a process can run ahead of the others by at
most `rate_local_calls - 1` calls between settlements (1 makes every call settle, exactly).

A refused call changes nothing but the bucket's refusal counter and the audit log: the first refusal of
an episode (the refusals between two allowed calls) gets its own audit row, and the episode's count goes
into one summary row once a call is allowed again, so a flood leaves two rows, not one per call.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum

import structlog

from agent_rooms_mcp import audit
from agent_rooms_mcp.errors import ErrorCode, RoomsError
from agent_rooms_mcp.principals import Caller, Human
from agent_rooms_mcp.settings import Limits
from agent_rooms_mcp.store.database import Store

log = structlog.get_logger("agent_rooms_mcp.ratelimit")

DENIED_ACTION = "rate.limited"
SUMMARY_ACTION = "rate.limited_summary"


class Bucket(StrEnum):
    POSTS = "posts"
    FILE_WRITES = "file_writes"
    TASK_WRITES = "task_writes"
    READS = "reads"
    OWNER_ACTIONS = "owner_actions"  # an enrolled device's owner actions, keyed by the device
    LISTENER_REQUESTS = "listener_requests"  # its listeners' requests, keyed by the device, a bucket apart


# Which bucket each tool draws on. Writes that are neither posts nor files (invites, consent modes, stops)
# count with task writes: they are the board's bookkeeping, not content. Anything unlisted is a read.
TOOL_BUCKETS: dict[str, Bucket] = {
    "post_message": Bucket.POSTS,
    "share_file": Bucket.FILE_WRITES,
    "create_task": Bucket.TASK_WRITES,
    "assign_task": Bucket.TASK_WRITES,
    "update_task": Bucket.TASK_WRITES,
    "accept_task": Bucket.TASK_WRITES,
    "reject_task": Bucket.TASK_WRITES,
    "create_invite": Bucket.TASK_WRITES,
    "set_consent_mode": Bucket.TASK_WRITES,
    "stop_agent": Bucket.TASK_WRITES,
}


def per_minute(limits: Limits, bucket: Bucket) -> int:
    return {
        Bucket.POSTS: limits.rate_posts_per_min,
        Bucket.FILE_WRITES: limits.rate_file_writes_per_min,
        Bucket.TASK_WRITES: limits.rate_task_writes_per_min,
        Bucket.READS: limits.rate_reads_per_min,
        Bucket.OWNER_ACTIONS: limits.rate_owner_actions_per_min,
        Bucket.LISTENER_REQUESTS: limits.rate_listener_requests_per_min,
    }[bucket]


class RateLimited(RoomsError):
    def __init__(self, bucket: Bucket, rate: int, retry_after_ms: int, whose: str = "agent") -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"over {rate} {bucket.value.replace('_', ' ')} a minute for this {whose}; retry in {retry_after_ms} ms",
            audit_reason="rate_limited",
            retry_after_ms=retry_after_ms,
        )


@dataclass(slots=True)
class _Credit:
    """This process's view of one bucket: the level at the last settlement, and what was spent since."""

    level: float = 0.0
    at: float = 0.0
    spent: int = 0


@dataclass(frozen=True, slots=True)
class _Holder:
    """Whose bucket: `key` is its row's id (an agent's, or a device's), `actor` and `target` its audit rows'."""

    key: str
    actor: audit.Actor
    target: str
    whose: str  # for the refusal's message and log: "agent" or "device"


@dataclass(frozen=True, slots=True)
class _Settled:
    allowed: bool
    level: float
    retry_after_s: float


class RateLimits:
    def __init__(self, store: Store, limits: Limits) -> None:
        self._store = store
        self._limits = limits
        self._rates = {bucket: per_minute(limits, bucket) for bucket in Bucket}
        self._credit: dict[tuple[str, Bucket], _Credit] = {}

    async def charge(self, caller: Caller, tool: str) -> None:
        """Take one call from `caller`'s bucket for `tool`, or raise RATE_LIMITED (with retry_after_ms)."""
        bucket = TOOL_BUCKETS.get(tool, Bucket.READS)
        # Most calls are answered from local credit: their holder is only named when a settlement needs it.
        if not self._spent_locally(caller.agent_id, bucket):
            await self._settle(_Holder(caller.agent_id, caller.actor, caller.handle, "agent"), bucket)

    async def charge_device(self, who: Human, bucket: Bucket = Bucket.OWNER_ACTIONS) -> None:
        """Take one call from `who`'s device's bucket (its owner actions, or its listeners' requests), or
        raise RATE_LIMITED (DESIGN §9.3 "and per device"). The two are apart: a listener busy with runs
        must not use up its owner's actions, nor a script of owner actions starve the listener."""
        if who.device_id is None:
            raise ValueError("only a device's calls are rate limited here; the operator's are not")
        if not self._spent_locally(who.device_id, bucket):
            await self._settle(_Holder(who.device_id, who.actor, who.device_id, "device"), bucket)

    def _spent_locally(self, key: str, bucket: Bucket) -> bool:
        """Take the call from this process's credit for the bucket if it has some left (see the module's text)."""
        credit = self._credit.get((key, bucket))
        if credit is None or not credit.at or credit.spent + 1 >= self._limits.rate_local_calls:
            return False
        rate = self._rates[bucket]
        level = min(float(rate), credit.level + (time.time() - credit.at) * rate / 60.0) - credit.spent
        if level < 1:
            return False
        credit.spent += 1
        return True

    async def _settle(self, holder: _Holder, bucket: Bucket) -> None:
        """Settle what this process spent of the bucket with the shared row, and take this call from it."""
        rate = self._rates[bucket]
        credit = self._credit.setdefault((holder.key, bucket), _Credit())
        now = time.time()
        spent, credit.spent = credit.spent, 0
        # A refusal settles too (one write, as a failed authentication is): each is counted where every
        # process sees it, for the episode's summary row.
        settled = await self._store.write(lambda conn: _settle(conn, holder, bucket, rate, now, spent + 1))
        credit.level, credit.at = settled.level, now
        if not settled.allowed:
            log.info("rate.limited", **{f"{holder.whose}_id": holder.key}, bucket=bucket.value)
            raise RateLimited(bucket, rate, _ms(settled.retry_after_s), holder.whose)


def _settle(conn: sqlite3.Connection, holder: _Holder, bucket: Bucket, rate: int, now: float, spend: int) -> _Settled:
    """One transaction: refill the shared bucket to `now`, pay what this process spent, and take the call
    that asked (the last of `spend`) if a whole token is left; audit a refusal and an episode's end."""
    row = conn.execute(
        "SELECT level, updated_at, refused FROM rate_buckets WHERE agent_id = ? AND bucket = ?",
        (holder.key, bucket.value),
    ).fetchone()
    refill = rate / 60.0
    level, earlier_refusals = float(rate), 0
    if row is not None:
        level = min(float(rate), row[0] + max(0.0, now - row[1]) * refill)
        earlier_refusals = int(row[2])
    level -= spend - 1  # calls already answered from local credit are paid whatever happens now
    allowed = level >= 1
    refusals = earlier_refusals
    if allowed:
        level -= 1
        if refusals > 1:  # a lone refusal's own row says it all
            detail = {"bucket": bucket.value, "per_min": rate, "refused": refusals}
            audit.append(conn, holder.actor, SUMMARY_ACTION, target=holder.target, outcome="denied", detail=detail)
        refusals = 0
    else:
        if earlier_refusals == 0:
            detail = {"bucket": bucket.value, "per_min": rate}
            audit.append(
                conn, holder.actor, DENIED_ACTION, target=holder.target, outcome="denied", reason="rate_limited",
                detail=detail,
            )  # fmt: skip
        refusals += 1
    conn.execute(
        "INSERT INTO rate_buckets (agent_id, bucket, level, updated_at, refused) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET level = excluded.level, updated_at = excluded.updated_at,"
        " refused = excluded.refused",
        (holder.key, bucket.value, level, now, refusals),
    )
    retry_after_s = 0.0 if allowed else (1 - level) / refill
    return _Settled(allowed, level, retry_after_s)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
