"""The policy as pure functions: boundaries at exactly 60/90 days, time zones, exemptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest

from lifecycle.processes.inactive_accounts.rules import Account, Decision, Policy, decide
from tests.support import clock

AS_OF = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
days_ago = partial(clock.days_ago, before=AS_OF)


@pytest.mark.parametrize(
    ("last_visit", "expected"),
    [
        (days_ago(60), Decision.ACTIVE),  # exactly 60 days: not *more than* 60
        (days_ago(60) - SECOND, Decision.WARN),
        (days_ago(59), Decision.ACTIVE),
        (days_ago(400), Decision.WARN),
    ],
)
def test_warning_threshold(last_visit: datetime, expected: Decision) -> None:
    assert decide(Account(last_visit_at=last_visit), AS_OF) is expected


@pytest.mark.parametrize(
    ("warned", "expected"),
    [
        (days_ago(30), Decision.DELETE),  # the warning is exactly 30 days old
        (days_ago(30) + SECOND, Decision.WAIT),
        (days_ago(31), Decision.DELETE),
    ],
)
def test_grace_period_after_warning(warned: datetime, expected: Decision) -> None:
    account = Account(last_visit_at=days_ago(95), deletion_warning_sent_at=warned)
    assert decide(account, AS_OF) is expected


def test_long_inactive_user_still_gets_the_full_grace_period() -> None:
    account = Account(last_visit_at=days_ago(500), deletion_warning_sent_at=days_ago(1))
    assert decide(account, AS_OF) is Decision.WAIT


def test_exactly_90_days_inactive_with_old_warning_is_deleted() -> None:
    account = Account(last_visit_at=days_ago(90), deletion_warning_sent_at=days_ago(30))
    assert decide(account, AS_OF) is Decision.DELETE


def test_visit_after_warning_cancels_it() -> None:
    account = Account(last_visit_at=days_ago(5), deletion_warning_sent_at=days_ago(40))
    assert decide(account, AS_OF) is Decision.ACTIVE
    relapsed = Account(last_visit_at=days_ago(61), deletion_warning_sent_at=days_ago(100))
    assert decide(relapsed, AS_OF) is Decision.WARN


@pytest.mark.parametrize(
    "account",
    [
        Account(last_visit_at=days_ago(200), lifetime_deal=True),
        Account(last_visit_at=days_ago(200), free_trial_ends_at=AS_OF + SECOND),
        Account(last_visit_at=days_ago(200), subscription_status="active"),
        Account(last_visit_at=days_ago(200), subscription_status="past_due"),
        Account(
            last_visit_at=days_ago(200),
            subscription_status="canceled",
            subscription_ends_at=AS_OF + DAY,
        ),
        Account(
            last_visit_at=days_ago(200),
            deletion_warning_sent_at=days_ago(40),
            subscription_status="active",
        ),
    ],
)
def test_paying_users_and_running_trials_are_exempt(account: Account) -> None:
    assert decide(account, AS_OF) is Decision.EXEMPT


def test_ended_trial_and_subscription_do_not_exempt() -> None:
    account = Account(
        last_visit_at=days_ago(61),
        free_trial_ends_at=AS_OF,
        subscription_status="canceled",
        subscription_ends_at=AS_OF - SECOND,
    )
    assert decide(account, AS_OF) is Decision.WARN


def test_time_zones_compare_as_instants() -> None:
    tokyo = timezone(timedelta(hours=9))
    last_visit = (AS_OF - timedelta(days=60)).astimezone(tokyo)
    assert decide(Account(last_visit_at=last_visit), AS_OF) is Decision.ACTIVE
    assert (
        decide(Account(last_visit_at=last_visit - SECOND), AS_OF.astimezone(tokyo)) is Decision.WARN
    )


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(Account(last_visit_at=days_ago(1)), AS_OF.replace(tzinfo=None))


def test_policy_needs_a_grace_period() -> None:
    with pytest.raises(ValueError, match="longer than warn_after"):
        Policy(warn_after=60 * DAY, delete_after=60 * DAY)
    assert Policy(warn_after=7 * DAY, delete_after=21 * DAY).grace == 14 * DAY


def test_undelivered_warning_is_no_notice_until_the_user_visits() -> None:
    bounced = Account(last_visit_at=days_ago(200), warning_undeliverable_at=days_ago(100))
    assert decide(bounced, AS_OF) is Decision.UNDELIVERABLE  # never deleted on its strength
    back = Account(last_visit_at=days_ago(61), warning_undeliverable_at=days_ago(100))
    assert decide(back, AS_OF) is Decision.WARN  # a visit since: warned again when due
    # With the `delete` setting the attempt was recorded as the warning too.
    noticed = Account(
        last_visit_at=days_ago(200),
        warning_undeliverable_at=days_ago(31),
        deletion_warning_sent_at=days_ago(31),
    )
    assert decide(noticed, AS_OF) is Decision.DELETE
