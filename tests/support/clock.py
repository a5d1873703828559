"""One "now" for the test session, and instants relative to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NOW = datetime.now(UTC)


def days_ago(days: float, before: datetime = NOW) -> datetime:
    return before - timedelta(days=days)
