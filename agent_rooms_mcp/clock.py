"""UTC timestamps in one text form, so they sort and compare as strings in SQL and Python alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

# What reads the time where a test must be able to move it (the purge's "30 days later"): a function the
# caller passes in, the system clock unless told otherwise.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_utc() -> str:
    """`iso(datetime.now(UTC))`, the same text from the same clock at a third of the cost: every write stamps
    its rows with it (a post twice, its message and its audit row), and formatting a datetime is most of that.
    The part up to the second is formatted once per second; the microseconds are appended."""
    global _second
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)  # floored, as datetime.now() floors
    stamp = _second
    if stamp[0] != second:
        stamp = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return f"{stamp[1]}{micro:06d}Z"


# The last second `now_utc` formatted, and its text; replaced whole, so no reader sees half of one.
_second: tuple[int, str] = (-1, "")
