"""One way to call a third-party HTTP API: explicit timeouts, retries where they can help.

Timeouts, connection errors, 429 and 5xx are retried with exponential backoff and jitter,
honouring ``Retry-After``, within a time budget per call; once it is spent the call raises
:class:`~lifecycle.errors.DependencyDown` naming the API. A request that is not idempotent
(``idempotent=False``: a POST that creates something at an API that takes no idempotency key)
is retried only when it certainly was not acted on (no connection, 408, 425, 429, 503); after a
read timeout, a dropped connection or another 5xx it raises :class:`OutcomeUnknown` at once,
since sending it again could act twice. 401 and 403 raise
:class:`AuthenticationFailed` (a :class:`~lifecycle.errors.ConfigError`: a wrong or expired
token is fixed in settings, not by retrying); any other 4xx raises :class:`RequestRejected`.
Errors name the API and the path, never headers, query strings or bodies we sent.

Tests pass ``transport=`` (or point ``base_url`` at a local server); nothing is patched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from lifecycle.errors import ConfigError, DependencyDown, PermanentError, TransientError
from lifecycle.privacy import redact

#: Seconds to connect, and to wait for each read, write or pool slot.
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: Status codes worth asking again.
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Of those, the answers that say the request was not acted on (RFC 9110, RFC 6585, RFC 8470).
NOT_ACTED_ON = frozenset({408, 425, 429, 503})
#: Transport errors raised before the request could reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_BODY_LIMIT = 200


class RequestRejected(PermanentError):
    """The API refused this request (a 4xx other than 401, 403, 408, 425, 429)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationFailed(ConfigError):
    """401 or 403: the credentials in settings are wrong, expired or lack a permission."""


class OutcomeUnknown(TransientError):
    """A request that is not idempotent may or may not have been acted on (a read timeout, a
    dropped connection, a 5xx after it was sent): it was not sent again."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one call: ``attempts`` at most, waiting at most ``budget`` seconds."""

    attempts: int = 5
    first_delay: float = 0.5  # doubles after every attempt
    max_delay: float = 30.0  # cap on one wait, Retry-After included
    budget: float = 120.0  # total waiting per call, after which the call gives up
    jitter: float = 0.5  # each wait is scaled by a random factor in [1 - jitter, 1 + jitter]

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """The wait before attempt ``attempt + 1`` (attempts count from 1)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        base = min(self.first_delay * 2 ** (attempt - 1), self.max_delay)
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


def retry_after_seconds(
    response: httpx.Response, now: Callable[[], float] = time.time
) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError):
        return None


class HttpClient:
    """An httpx client for one API (``name`` appears in errors and logs)."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = True,
        before_attempt: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying what is worth retrying; a 2xx or 3xx response, or an error.

        With ``idempotent=False`` a failure after which the API may have acted raises
        :class:`OutcomeUnknown` instead of sending the request again.
        ``before_attempt(attempt)`` runs before every attempt (numbered from 1); whatever it
        raises ends the call there, so a caller can re-check, right before each try, that the
        request is still wanted.
        """
        waited = 0.0
        for attempt in range(1, self._retry.attempts + 1):
            retry_after: float | None = None
            if before_attempt is not None:
                before_attempt(attempt)
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                problem = f"{type(exc).__name__} on {method} {path}"
                if not idempotent and not isinstance(exc, _NOT_SENT):
                    raise OutcomeUnknown(f"{self.name}: {problem}; not sent again") from None
            else:
                if response.status_code not in RETRIED_STATUSES:
                    return self._checked(response, method, path)
                problem = f"HTTP {response.status_code} on {method} {path}"
                if not idempotent and response.status_code not in NOT_ACTED_ON:
                    raise OutcomeUnknown(f"{self.name}: {problem}; not sent again")
                retry_after = retry_after_seconds(response)
            if attempt == self._retry.attempts:
                break
            delay = self._retry.delay(attempt, retry_after, self._rng)
            if waited + delay > self._retry.budget:
                problem += (
                    f" (would wait {delay:.1f} s more, past the {self._retry.budget:.0f} s budget)"
                )
                break
            self._sleep(delay)
            waited += delay
        raise DependencyDown(self.name, f"{problem} after {attempt} attempts", exhausted=True)

    def _checked(self, response: httpx.Response, method: str, path: str) -> httpx.Response:
        status = response.status_code
        if status < 400:
            return response
        detail = f"{self.name} answered {status} to {method} {path}: {_body(response)}"
        if status in (401, 403):
            raise AuthenticationFailed(detail + "; check the API credentials in settings")
        raise RequestRejected(detail, status=status)

    def close(self) -> None:
        self._client.close()


def _body(response: httpx.Response) -> str:
    """The start of the response body, with addresses masked, on one line."""
    return " ".join(redact(response.text[:_BODY_LIMIT]).split()) or "(empty body)"
