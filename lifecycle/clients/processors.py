"""Third parties that erase a user's analytics data: start a deletion, then ask how it goes.

A :class:`DeletionProcessor` starts an asynchronous deletion for some user ids and returns the
vendor's operation id, then answers status calls with pending, complete or failed. The one
implementation, :class:`RestProcessor`, is driven by a :class:`RestContract` (paths, body
template, where the JSON holds the operation id and the status, the meaning of each status
value), so a vendor is a configuration, not code. Ready contracts: :func:`mixpanel_contract`,
:func:`segment_contract`, and :data:`SIMULATOR_CONTRACT` (the local processor simulator's,
also the defaults of ``kind: rest``).

An answer in a shape the contract does not describe (not JSON, no status, a status value we do
not know, no operation id) raises :class:`SchemaChanged`: never read as "still pending".
Calls go through :class:`~lifecycle.clients.http.HttpClient` (timeouts, retries with backoff
and jitter, Retry-After, errors by kind). A start call is not idempotent at any of these
vendors (none takes an idempotency key), so it is never sent twice by a retry: a lost answer
raises :class:`~lifecycle.clients.http.OutcomeUnknown` and the caller reconciles.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from lifecycle.clients.http import HttpClient, RetryPolicy
from lifecycle.errors import ConfigError, PermanentError
from lifecycle.settings import (
    MixpanelSettings,
    ProcessorSettings,
    RestProcessorSettings,
    SegmentSettings,
)

USER_IDS = "{user_ids}"
DEFAULT_RETRY = RetryPolicy()
#: Pages of a vendor's listing read at most when reconciling one start.
MAX_LISTING_PAGES = 20


class OperationState(StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class OperationStatus:
    state: OperationState
    vendor_status: str  # the value as the vendor wrote it


@dataclass(frozen=True)
class ListedOperation:
    """One operation in a vendor's listing: enough to recognise a start whose answer was lost."""

    operation_id: str
    user_ids: frozenset[str]
    created_at: datetime | None


class SchemaChanged(PermanentError):
    """The API answered in a shape the contract does not describe: fix the contract (or ask
    the vendor); retrying will not help, and the operation is not assumed pending."""


class DeletionProcessor(Protocol):
    """A third party that deletes a user's data asynchronously."""

    name: str

    def start(self, user_ids: Sequence[str]) -> str:
        """Start deleting these users; the vendor's operation id."""
        ...

    def status(self, operation_id: str) -> OperationStatus: ...

    @property
    def can_list(self) -> bool:
        """Whether :meth:`recent` can find operations we started but never recorded."""
        ...

    def recent(self, since: datetime) -> Iterator[ListedOperation]:
        """Operations created since ``since`` (as far as the vendor lists them)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Listing:
    """Where a vendor lists recent operations, and the fields of each."""

    path: str
    items: str
    operation_id: str
    user_ids: str
    created_at: str
    next_cursor: str
    cursor_param: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestContract:
    """How one REST API starts deletions and reports on them."""

    start_path: str
    status_path: str  # holds "{operation_id}"
    body: Mapping[str, Any]  # the string "{user_ids}" stands for the list of ids
    operation_id_paths: tuple[str, ...]  # dotted JSON paths, tried in order
    status_at: str  # dotted JSON path of the status value
    states: Mapping[str, OperationState]  # every status value the vendor documents
    query: Mapping[str, str] = field(default_factory=dict)  # sent with every call
    listing: Listing | None = None

    def start_body(self, user_ids: Sequence[str]) -> Any:
        return _fill(self.body, list(user_ids))


# --- the ready contracts -------------------------------------------------------------------------


def _states(
    pending: Sequence[str], complete: Sequence[str], failed: Sequence[str]
) -> dict[str, OperationState]:
    return (
        dict.fromkeys(pending, OperationState.PENDING)
        | dict.fromkeys(complete, OperationState.COMPLETE)
        | dict.fromkeys(failed, OperationState.FAILED)
    )


#: The local processor simulator (lifecycle.clients.simulator), and the defaults of kind "rest".
SIMULATOR_CONTRACT = RestContract(
    start_path="/deletions",
    status_path="/deletions/{operation_id}",
    body={"user_ids": USER_IDS},
    operation_id_paths=("id",),
    status_at="status",
    states=_states(["pending", "running"], ["complete"], ["failed"]),
    listing=Listing(
        path="/deletions",
        items="deletions",
        operation_id="id",
        user_ids="user_ids",
        created_at="created_at",
        next_cursor="next",
        cursor_param="cursor",
    ),
)


def rest_contract(settings: RestProcessorSettings) -> RestContract:
    """``kind: rest``: the contract the settings describe (listing in the simulator's shape)."""
    listing = SIMULATOR_CONTRACT.listing
    assert listing is not None
    return RestContract(
        start_path=settings.start_path,
        status_path=settings.status_path,
        body=settings.body,
        operation_id_paths=tuple(settings.operation_id_paths),
        status_at=settings.status_field,
        states=_states(settings.pending, settings.complete, settings.failed),
        listing=(
            None
            if settings.list_path is None
            else Listing(**{**vars(listing), "path": settings.list_path})
        ),
    )


# Mixpanel GDPR API v3, data deletions. Sources (checked 2026-11):
#   https://docs.mixpanel.com/reference/gdpr-api (prose: create with curl
#     ".../api/app/data-deletions/v3.0/?token=<project token>", body {"distinct_ids": [...],
#     "compliance_type": "GDPR"}, "up to 1999 distinct IDs", "1 request per second", 429)
#   https://docs.mixpanel.com/openapi/gdpr.openapi.yaml (servers mixpanel / eu.mixpanel /
#     in.mixpanel; bearer OAuthToken; POST /data-deletions/v3.0 -> 201 JobCreated
#     {"status": "ok", "results": {"task_id": ...}}; GET /data-deletions/v3.0/{tracking_id}
#     -> {"status": "ok", "results": {"status": PENDING|STAGING|STARTED|SUCCESS|FAILURE|REVOKED|
#     NOT_FOUND|UNKNOWN, ...}})
# The prose reference shows the create answer as a list, results[0].tracking_id: both shapes
# are read. No listing endpoint and no idempotency key are documented.
MIXPANEL_HOSTS = {
    "us": "https://mixpanel.com/api/app",
    "eu": "https://eu.mixpanel.com/api/app",
    "in": "https://in.mixpanel.com/api/app",
}


def mixpanel_contract(settings: MixpanelSettings) -> RestContract:
    project_token = settings.project_token
    if project_token is None:
        raise ConfigError(f"processor {settings.name!r} (mixpanel) needs project_token")
    return RestContract(
        start_path="/data-deletions/v3.0/",
        status_path="/data-deletions/v3.0/{operation_id}",
        body={"distinct_ids": USER_IDS, "compliance_type": settings.compliance_type},
        operation_id_paths=("results.task_id", "results.0.tracking_id"),
        status_at="results.status",
        # UNKNOWN: "an error occurred while locating the task": asked again (and escalated
        # if it lasts). NOT_FOUND and REVOKED: the task will never run, so it failed.
        states=_states(
            ["PENDING", "STAGING", "STARTED", "UNKNOWN"],
            ["SUCCESS"],
            ["FAILURE", "REVOKED", "NOT_FOUND"],
        ),
        query={"token": project_token.get_secret_value()},
    )


# Segment Public API, Deletion and Suppression (workspace regulations). Sources (checked 2026-11):
#   https://docs.segmentapis.com/tag/Deletion-and-Suppression and the generated SDK
#   https://github.com/segmentio/public-api-sdk-python (docs/DeletionAndSuppressionApi.md;
#   models create_workspace_regulation200_response, get_regulation_v1_output, regulation,
#   list_workspace_regulations_v1_output, regulation_list_entry_v1, pagination_output):
#   POST /regulations {"regulationType", "subjectType": "USER_ID", "subjectIds"} -> 200
#   {"data": {"regulateId"}}; GET /regulations/{regulateId} -> {"data": {"regulation":
#   {"overallStatus": FAILED|FINISHED|INITIALIZED|INVALID|NOT_SUPPORTED|PARTIAL_SUCCESS|
#   RUNNING, ...}}}; GET /regulations -> {"data": {"regulations": [{"id", "subjects",
#   "createdAt", ...}], "pagination": {"next"}}}, past 90 days only; pagination.count and
#   pagination.cursor query parameters (https://docs.segmentapis.com/tag/Pagination).
#   Hosts: https://docs.segmentapis.com/tag/Getting-Started. At most 5000 subject ids per call
#   and 600 create calls a minute: https://segment.com/docs/privacy/user-deletion-and-suppression/
# No idempotency key is documented; the listing is what reconciles a lost answer.
SEGMENT_HOSTS = {"us": "https://api.segmentapis.com", "eu": "https://eu1.api.segmentapis.com"}


def segment_contract(settings: SegmentSettings) -> RestContract:
    return RestContract(
        start_path="/regulations",
        status_path="/regulations/{operation_id}",
        body={
            "regulationType": settings.regulation_type,
            "subjectType": "USER_ID",
            "subjectIds": USER_IDS,
        },
        operation_id_paths=("data.regulateId",),
        status_at="data.regulation.overallStatus",
        # PARTIAL_SUCCESS and FAILED may hide a destination that kept the data: a person looks.
        states=_states(
            ["INITIALIZED", "RUNNING"],
            ["FINISHED"],
            ["FAILED", "INVALID", "NOT_SUPPORTED", "PARTIAL_SUCCESS"],
        ),
        listing=Listing(
            path="/regulations",
            items="data.regulations",
            operation_id="id",
            user_ids="subjects",
            created_at="createdAt",
            next_cursor="data.pagination.next",
            cursor_param="pagination.cursor",
            params={"regulationTypes": settings.regulation_type, "pagination.count": "100"},
        ),
    )


def contract_for(settings: ProcessorSettings) -> tuple[str, RestContract]:
    """(base URL, contract) of a configured processor."""
    if isinstance(settings, MixpanelSettings):
        return settings.base_url or MIXPANEL_HOSTS[settings.region], mixpanel_contract(settings)
    if isinstance(settings, SegmentSettings):
        return settings.base_url or SEGMENT_HOSTS[settings.region], segment_contract(settings)
    if isinstance(settings, RestProcessorSettings):
        return settings.base_url, rest_contract(settings)
    raise ConfigError(f"processor {settings.name!r}: unknown kind")


# --- the implementation --------------------------------------------------------------------------


class Pacer:
    """At most ``rate`` calls per second from every thread that shares it."""

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate_per_second
        self._next = float("-inf")
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> None:
        """Wait for this caller's slot (slots are handed out in order, one interval apart)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


class RestProcessor:
    """A :class:`DeletionProcessor` over a REST API described by a :class:`RestContract`."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        token: SecretStr,
        contract: RestContract,
        timeout_seconds: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_per_second: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self.contract = contract
        self._pacer = Pacer(rate_per_second) if rate_per_second else None
        self._new_client = lambda: HttpClient(
            name=f"processor {name}",
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {token.get_secret_value()}",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(timeout_seconds),
            retry=retry,
            transport=transport,
        )
        self._local = threading.local()
        self._clients: list[HttpClient] = []
        self._lock = threading.Lock()

    @property
    def _http(self) -> HttpClient:
        """This thread's client. One per thread, not one shared: httpcore's shared pool makes
        every thread take its lock and scan its connections per request, which cost about
        half again as much CPU per call at 32-64 threads (benchmarks/consent_polling.py)."""
        client: HttpClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            with self._lock:
                self._clients.append(client)
        return client

    def start(self, user_ids: Sequence[str]) -> str:
        response = self._call(
            "POST",
            self.contract.start_path,
            json=self.contract.start_body(user_ids),
            idempotent=False,
        )
        answer = self._json(response, "start")
        for path in self.contract.operation_id_paths:
            value = _dig(answer, path)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
        raise SchemaChanged(
            f"{self.name}: the start answer holds no operation id at "
            f"{' or '.join(self.contract.operation_id_paths)} (keys: {_shape(answer)})"
        )

    def status(self, operation_id: str) -> OperationStatus:
        path = self.contract.status_path.format(operation_id=quote(operation_id, safe=""))
        answer = self._json(self._call("GET", path), "status")
        value = _dig(answer, self.contract.status_at)
        if not isinstance(value, str):
            raise SchemaChanged(
                f"{self.name}: the status answer has no {self.contract.status_at!r} string "
                f"(keys: {_shape(answer)})"
            )
        state = self.contract.states.get(value)
        if state is None:
            raise SchemaChanged(
                f"{self.name}: unknown status value {value[:40]!r} at "
                f"{self.contract.status_at!r}; known: {sorted(self.contract.states)}"
            )
        return OperationStatus(state=state, vendor_status=value)

    @property
    def can_list(self) -> bool:
        return self.contract.listing is not None

    def recent(self, since: datetime) -> Iterator[ListedOperation]:
        listing = self.contract.listing
        if listing is None:
            return
        params = dict(listing.params)
        for _ in range(MAX_LISTING_PAGES):
            answer = self._json(self._call("GET", listing.path, params=params), "listing")
            items = _dig(answer, listing.items)
            if not isinstance(items, list):
                raise SchemaChanged(f"{self.name}: the listing has no list at {listing.items!r}")
            oldest: datetime | None = None
            for item in items:
                operation = _listed(item, listing, self.name)
                if operation.created_at is not None:
                    oldest = min(oldest or operation.created_at, operation.created_at)
                yield operation
            cursor = _dig(answer, listing.next_cursor)
            if not cursor or (oldest is not None and oldest < since):
                return
            params[listing.cursor_param] = str(cursor)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._pacer is not None:
            self._pacer.wait()
        params = {**self.contract.query, **kwargs.pop("params", {})}
        return self._http.request(method, path, params=params or None, **kwargs)

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "no content type")
            raise SchemaChanged(
                f"{self.name}: the {what} answer (HTTP {response.status_code}, {kind[:60]}) "
                "is not JSON"
            ) from None


def _listed(item: Any, listing: Listing, name: str) -> ListedOperation:
    operation_id = _dig(item, listing.operation_id)
    user_ids = _dig(item, listing.user_ids)
    if not isinstance(operation_id, str | int) or not isinstance(user_ids, list):
        raise SchemaChanged(
            f"{name}: a listed operation lacks {listing.operation_id!r} or {listing.user_ids!r}"
        )
    created = _dig(item, listing.created_at)
    try:
        created_at = datetime.fromisoformat(created) if isinstance(created, str) else None
    except ValueError:
        created_at = None
    if created_at is not None and created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return ListedOperation(
        operation_id=str(operation_id),
        user_ids=frozenset(str(user_id) for user_id in user_ids),
        created_at=created_at,
    )


def open_processor(
    settings: ProcessorSettings,
    *,
    resolve_secret: Callable[[str], SecretStr] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> RestProcessor:
    """The configured processor, its token read from settings or from a secret block."""
    token = settings.token
    if token is None and settings.token_block is not None:
        if resolve_secret is None:
            raise ConfigError(
                f"processor {settings.name!r} reads its token from the Prefect Secret block "
                f"{settings.token_block!r}, which only a Prefect task can resolve"
            )
        token = resolve_secret(settings.token_block)
    if token is None or not token.get_secret_value().strip():
        raise ConfigError(f"processor {settings.name!r} has no token")
    base_url, contract = contract_for(settings)
    return RestProcessor(
        name=settings.name,
        base_url=base_url,
        token=token,
        contract=contract,
        timeout_seconds=settings.timeout_seconds,
        retry=RetryPolicy(budget=settings.retry_budget_seconds),
        rate_per_second=settings.rate_per_second,
        transport=transport,
    )


def _fill(template: Any, user_ids: list[str]) -> Any:
    """``template`` with the string "{user_ids}" replaced by the list of ids, at any depth."""
    if template == USER_IDS:
        return user_ids
    if isinstance(template, Mapping):
        return {key: _fill(value, user_ids) for key, value in template.items()}
    if isinstance(template, list):
        return [_fill(value, user_ids) for value in template]
    return template


def _dig(data: Any, path: str) -> Any:
    """The value at a dotted path ("results.0.tracking_id"), or None."""
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _shape(answer: Any) -> str:
    """The top-level keys of an answer (never its values: they may name people)."""
    if isinstance(answer, Mapping):
        return ", ".join(sorted(str(key) for key in answer)[:10]) or "none"
    return type(answer).__name__
