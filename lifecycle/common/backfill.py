"""Which instants a backfill replays: one ``as_of`` per step between two dates, in date order.

A backfill reruns a process as if it had run on past days (a missed schedule, an outage). It is
safe because every process re-checks its rules against ``as_of`` and the data as they are now,
and never shortens a grace period (warnings record when they were really sent).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from lifecycle.errors import ConfigError


def backfill_instants(
    *, start: date, end: date, step_days: int, hour_utc: int, now: datetime, max_runs: int
) -> list[datetime]:
    """``start`` to ``end`` (both included) every ``step_days``, at ``hour_utc`` o'clock UTC."""
    if end < start:
        raise ConfigError(f"end ({end}) is before start ({start})")
    first = datetime.combine(start, time(hour_utc), tzinfo=UTC)
    instants = []
    moment = first
    while moment.date() <= end:
        instants.append(moment)
        moment += timedelta(days=step_days)
    if instants[-1] > now:
        raise ConfigError(
            f"{instants[-1].isoformat()} is in the future: a backfill replays the past only"
        )
    if len(instants) > max_runs:
        raise ConfigError(
            f"{len(instants)} runs is more than LIFECYCLE_BACKFILL__MAX_RUNS={max_runs}; "
            "split the range, use a longer step, or raise the limit"
        )
    return instants
