"""attrs validators that raise InvalidInputError naming the field and value."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prebuilds.exceptions import InvalidInputError


def check_aware(field: str, value: datetime) -> datetime:
    """
    Return *value* if it is a timezone-aware datetime.

    Raises:
        InvalidInputError: *value* is naive or not a datetime.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(field, value, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(field, value, "must be timezone-aware")
    return value


def aware(_inst: object, attribute: Any, value: datetime) -> None:
    """Validate that a datetime field is timezone-aware."""
    check_aware(attribute.name, value)


def optional_aware(_inst: object, attribute: Any, value: datetime | None) -> None:
    """Validate that an optional datetime field is None or timezone-aware."""
    if value is not None:
        check_aware(attribute.name, value)


def non_negative(_inst: object, attribute: Any, value: Any) -> None:
    """Validate that an int field is a non-negative int (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(attribute.name, value, "must be an int")
    if value < 0:
        raise InvalidInputError(attribute.name, value, "must be >= 0")


def optional_non_negative_delta(
    _inst: object, attribute: Any, value: timedelta | None
) -> None:
    """Validate that an optional timedelta field is None or >= 0."""
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise InvalidInputError(attribute.name, value, "must be a timedelta")
    if value < timedelta(0):
        raise InvalidInputError(attribute.name, value, "must be >= 0")
