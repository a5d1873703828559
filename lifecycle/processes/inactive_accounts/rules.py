"""The inactive-account policy as pure functions of (user, as_of).

The SQL in :mod:`lifecycle.accounts` expresses the same rules so the database can select and
claim users atomically; ``tests/test_rules_sql.py`` checks both agree on the same users.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

#: Subscription statuses that count as paying whatever the end date says.
ACTIVE_SUBSCRIPTION_STATUSES = frozenset({"active", "past_due"})


class Decision(StrEnum):
    EXEMPT = "exempt"  # paying or on a running free trial
    ACTIVE = "active"  # visited recently enough: nothing to do
    WARN = "warn"  # inactive past the warning threshold, no warning pending
    WAIT = "wait"  # warned, grace period still running
    UNDELIVERABLE = "undeliverable"  # the warning could not be delivered: no notice, no deletion
    DELETE = "delete"  # warned, grace period over, no visit since


@dataclass(frozen=True)
class Policy:
    """Warn after ``warn_after`` of inactivity; delete ``grace`` after the warning."""

    warn_after: timedelta = timedelta(days=60)
    delete_after: timedelta = timedelta(days=90)

    def __post_init__(self) -> None:
        if self.warn_after <= timedelta(0):
            raise ValueError("warn_after must be positive")
        if self.delete_after <= self.warn_after:
            raise ValueError("delete_after must be longer than warn_after")

    @property
    def grace(self) -> timedelta:
        return self.delete_after - self.warn_after


@dataclass(frozen=True)
class Account:
    """The fields of a user that the policy reads. All datetimes are timezone-aware."""

    last_visit_at: datetime
    deletion_warning_sent_at: datetime | None = None
    warning_undeliverable_at: datetime | None = None
    free_trial_ends_at: datetime | None = None
    lifetime_deal: bool = False
    subscription_status: str = "none"
    subscription_ends_at: datetime | None = None


def is_exempt(account: Account, as_of: datetime) -> bool:
    """Paying users and running free trials are never warned or deleted."""
    if account.lifetime_deal:
        return True
    if account.free_trial_ends_at is not None and account.free_trial_ends_at > as_of:
        return True
    if account.subscription_status in ACTIVE_SUBSCRIPTION_STATUSES:
        return True
    return account.subscription_ends_at is not None and account.subscription_ends_at > as_of


def since_last_visit(account: Account, moment: datetime | None) -> bool:
    """Whether ``moment`` (a warning, a failed one) happened after the last visit: a visit
    cancels what came before it."""
    return moment is not None and account.last_visit_at < moment


def warning_pending(account: Account) -> bool:
    """A warning counts until the user visits again."""
    return since_last_visit(account, account.deletion_warning_sent_at)


def decide(account: Account, as_of: datetime, policy: Policy = Policy()) -> Decision:
    """What the sweep should do with this account at ``as_of``."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if is_exempt(account, as_of):
        return Decision.EXEMPT
    if warning_pending(account):
        sent = account.deletion_warning_sent_at
        assert sent is not None
        grace_over = sent <= as_of - policy.grace
        long_inactive = account.last_visit_at <= as_of - policy.delete_after
        return Decision.DELETE if grace_over and long_inactive else Decision.WAIT
    if since_last_visit(account, account.warning_undeliverable_at):
        return Decision.UNDELIVERABLE
    if account.last_visit_at < as_of - policy.warn_after:
        return Decision.WARN
    return Decision.ACTIVE
