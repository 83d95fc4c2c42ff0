"""Timestamps: `now_utc` formats the second once and appends the microseconds; its text must be exactly what
`iso(datetime.now(UTC))` gives, since rows stamped by either are compared as strings."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from agent_rooms_mcp.clock import iso, now_utc


def test_now_utc_is_the_iso_text_of_the_moment_it_was_read() -> None:
    for _ in range(2_000):
        before, stamp, after = iso(datetime.now(UTC)), now_utc(), iso(datetime.now(UTC))
        assert before <= stamp <= after


@pytest.mark.parametrize(
    "instants_ns",
    [
        # Across a second, a minute, a day and a year, each read floored to the microsecond as datetime.now() does.
        [1_700_000_000_999_999_999, 1_700_000_001_000_000_000, 1_700_000_001_000_000_999],
        [1_767_225_599_999_999_000, 1_767_225_600_000_000_000],  # 2025-12-31T23:59:59.999999Z -> 2026
        [1_700_000_005_000_001_000, 1_700_000_004_000_000_000],  # the clock stepped back a second
    ],
)
def test_now_utc_renews_its_second_whenever_the_clock_moves(
    monkeypatch: pytest.MonkeyPatch, instants_ns: list[int]
) -> None:
    for ns in instants_ns:
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        expected = iso(datetime.fromtimestamp(ns // 1000 / 1_000_000, UTC).replace(microsecond=ns // 1000 % 1_000_000))
        assert now_utc() == expected
