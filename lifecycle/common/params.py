"""Flow parameter types: strict, bounded, and titled for the Prefect UI's run form.

Numbers and booleans are strict (``true`` is not 1, ``10.5`` is not 10); an instant is an ISO
8601 string (as the UI and ``prefect deployment run -p`` send it) or a datetime, never a bare
number. Bounds go into the type (``Annotated[StrictInt, Field(ge=1, le=10)]``), the title and
default into :func:`titled`, the description into the flow's docstring.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float):  # bool is an int too
        raise ValueError("must be an ISO 8601 date-time with a time zone, not a number")
    return value


#: An instant, e.g. "2026-11-01T03:00:00Z".
Instant = Annotated[datetime, BeforeValidator(_not_a_number)]


def titled(default: Any, title: str) -> Any:
    """A parameter default with the label the Prefect UI shows for it."""
    return Field(default, json_schema_extra={"title": title})
