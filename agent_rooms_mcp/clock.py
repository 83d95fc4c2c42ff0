"""UTC timestamps in one text form, so they sort and compare as strings in SQL and Python alike."""

from __future__ import annotations

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
    return iso(datetime.now(UTC))
