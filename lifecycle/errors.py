"""The one error hierarchy: what went wrong decides whether it is retried.

- :class:`ConfigError`: bad settings, parameters or schema, a missing table or bucket. Raised
  before anything changes, and never retried: the message says what to fix.
- :class:`TransientError`: a dependency is slow, throttled or briefly away. Retried with backoff.
- :class:`PermanentError`: retrying will not help this item (a rejected address, an object the
  store refuses to delete). Recorded per item; the run goes on and fails visibly at the end.

Errors raised by other libraries (a dropped database connection, say) count as transient.
"""

from __future__ import annotations


class LifecycleError(RuntimeError):
    """Base of every error lifecycle raises on purpose."""


class ConfigError(LifecycleError):
    """Something to fix in settings, parameters or the database before the run can work."""


class TransientError(LifecycleError):
    """Worth trying again later."""


class PermanentError(LifecycleError):
    """Trying again will not help."""


class DependencyDown(TransientError):
    """A dependency kept failing (timeouts, 5xx, throttling) past its retries: the batch stops.

    ``exhausted`` means the retries within the time budget are spent, so it must not be
    retried further: the run fails, naming the dependency.
    """

    def __init__(self, dependency: str, detail: str, *, exhausted: bool = False) -> None:
        super().__init__(f"{dependency} is not answering: {detail}")
        self.dependency = dependency
        self.exhausted = exhausted


class RunAborted(ConfigError):
    """A safety limit stopped the run before it changed anything."""


class RunFailed(PermanentError):
    """Some items failed; everything else was processed, and the summary says which."""


def is_retryable(exc: BaseException) -> bool:
    """Transient errors and foreign exceptions are retried; our other kinds never are, and
    neither is a dependency whose retry budget is spent."""
    if isinstance(exc, DependencyDown) and exc.exhausted:
        return False
    return isinstance(exc, TransientError) or not isinstance(exc, LifecycleError)
