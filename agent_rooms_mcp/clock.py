"""UTC timestamps in one text form, so they sort and compare as strings in SQL and Python alike."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_utc() -> str:
    return iso(datetime.now(UTC))
