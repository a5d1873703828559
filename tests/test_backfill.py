"""Which instants a backfill replays, and what it refuses."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from lifecycle.common.backfill import backfill_instants
from lifecycle.errors import ConfigError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def instants(start: date, end: date, step_days: int = 1, max_runs: int = 366) -> list[datetime]:
    return backfill_instants(
        start=start, end=end, step_days=step_days, hour_utc=3, now=NOW, max_runs=max_runs
    )


def test_one_instant_per_step_in_date_order() -> None:
    assert instants(date(2026, 11, 20), date(2026, 11, 22)) == [
        datetime(2026, 11, 20, 3, tzinfo=UTC),
        datetime(2026, 11, 21, 3, tzinfo=UTC),
        datetime(2026, 11, 22, 3, tzinfo=UTC),
    ]
    assert [i.day for i in instants(date(2026, 11, 1), date(2026, 11, 10), step_days=3)] == [
        1,
        4,
        7,
        10,
    ]
    assert instants(date(2026, 11, 27), date(2026, 11, 27)) == [
        datetime(2026, 11, 27, 3, tzinfo=UTC)  # today at 03:00 is already past
    ]


@pytest.mark.parametrize(
    ("start", "end", "max_runs", "message"),
    [
        (date(2026, 11, 22), date(2026, 11, 20), 366, "before start"),
        (date(2026, 11, 20), date(2026, 11, 28), 366, "in the future"),
        (date(2025, 1, 1), date(2026, 11, 1), 366, "LIFECYCLE_BACKFILL__MAX_RUNS=366"),
        (date(2026, 11, 1), date(2026, 11, 10), 5, "10 runs is more than"),
    ],
)
def test_bad_ranges_are_refused(start: date, end: date, max_runs: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        instants(start, end, max_runs=max_runs)
