"""
Every value prebuilds accepts is checked here: the bounds, small checkers that
raise InvalidInputError naming the field and the value, and attrs validators
built from them.

The bounds are those every reference store can hold and read back (memory,
SQLite, PostgreSQL); ``docs/limits.md`` tabulates them and says why.
"""

from __future__ import annotations

import enum
import math

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from uuid import UUID

from prebuilds.exceptions import InvalidInputError


_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.Enum)

#: The largest pool: ``desired_instances``, a schedule's ``instances``, the
#: reconciler's ``hard_limit`` and ``max_workers``.
MAX_INSTANCES = 10_000
#: The largest count a snapshot may carry (a store counts rows): a 64-bit
#: integer, what SQLite's INTEGER and PostgreSQL's ``count(*)`` hold.
MAX_COUNT = 2**63 - 1
#: The largest build number: PostgreSQL's ``integer`` column.
MAX_BUILD_NUMBER = 2**31 - 1
#: The longest duration (TTLs, intervals, timeouts): 36,500 days, about a
#: century.
MAX_DURATION = timedelta(days=36_500)
#: The earliest and latest instants (both included), in UTC.
MIN_DATETIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_DATETIME = datetime(9000, 1, 1, tzinfo=timezone.utc)
#: The longest name, time zone, cron spec, parameter name or error kind.
MAX_NAME_LENGTH = 255
#: The longest parameter value, error message or event detail.
MAX_TEXT_LENGTH = 65_536
#: The most schedules, and the most parameters, of one preset.
MAX_SCHEDULES = 256
MAX_PARAMETERS = 256

_MAX_SECONDS = MAX_DURATION.total_seconds()


# -- checkers: (field, value) -> the value, or InvalidInputError -------------------


def check_uuid(field: str, value: object) -> UUID:
    """
    Return *value* if it is a :class:`uuid.UUID`.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, UUID):
        raise InvalidInputError(field, value, "must be a uuid.UUID")
    return value


def check_optional_uuid(field: str, value: object) -> UUID | None:
    """*value* if it is None or a :class:`uuid.UUID`."""
    return None if value is None else check_uuid(field, value)


def check_bool(field: str, value: object) -> bool:
    """
    Return *value* if it is a bool (not an int, not a string).

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, bool):
        raise InvalidInputError(field, value, "must be a bool")
    return value


def check_int(
    field: str, value: object, *, minimum: int = 0, maximum: int = MAX_COUNT
) -> int:
    """
    Return *value* if it is an int (not a bool) in ``[minimum, maximum]``.

    Raises:
        InvalidInputError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, value, "must be an int")
    if not minimum <= value <= maximum:
        raise InvalidInputError(
            field, value, f"must be between {minimum} and {maximum}"
        )
    return value


def check_str(
    field: str,
    value: object,
    *,
    max_length: int = MAX_NAME_LENGTH,
    required: bool = False,
) -> str:
    """
    Return *value* if it is a string a store can hold: at most *max_length*
    characters, non-empty if *required*, no NUL character, no lone surrogate.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, str):
        raise InvalidInputError(field, value, "must be a string")
    if required and not value:
        raise InvalidInputError(field, value, "must not be empty")
    if len(value) > max_length:
        raise InvalidInputError(
            field, value, f"must be at most {max_length} characters"
        )
    if "\x00" in value:
        raise InvalidInputError(field, value, "must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidInputError(
                field, value, "must be valid Unicode (no lone surrogates)"
            ) from None
    return value


def check_optional_str(
    field: str, value: object, *, max_length: int = MAX_NAME_LENGTH
) -> str | None:
    """*value* if it is None or a string :func:`check_str` accepts."""
    return None if value is None else check_str(field, value, max_length=max_length)


def check_aware(field: str, value: object) -> datetime:
    """
    Return *value* if it is a timezone-aware datetime between
    :data:`MIN_DATETIME` and :data:`MAX_DATETIME`.

    Raises:
        InvalidInputError: *value* is naive, out of range or not a datetime.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(field, value, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(field, value, "must be timezone-aware")
    if not MIN_DATETIME <= value <= MAX_DATETIME:
        raise InvalidInputError(
            field, value, "must be between 1970-01-01 and 9000-01-01 UTC"
        )
    return value


def check_optional_aware(field: str, value: object) -> datetime | None:
    """*value* if it is None or a datetime :func:`check_aware` accepts."""
    return None if value is None else check_aware(field, value)


def check_delta(field: str, value: object, *, positive: bool = False) -> timedelta:
    """
    Return *value* if it is a :class:`~datetime.timedelta` from 0 (excluded
    if *positive*) to :data:`MAX_DURATION`.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, timedelta):
        raise InvalidInputError(field, value, "must be a timedelta")
    if positive and value <= timedelta(0):
        raise InvalidInputError(field, value, "must be > 0")
    if value < timedelta(0):
        raise InvalidInputError(field, value, "must be >= 0")
    if value > MAX_DURATION:
        raise InvalidInputError(field, value, "must be at most 36500 days")
    return value


def check_optional_delta(
    field: str, value: object, *, positive: bool = False
) -> timedelta | None:
    """*value* if it is None or a timedelta :func:`check_delta` accepts."""
    return None if value is None else check_delta(field, value, positive=positive)


def check_seconds(field: str, value: object) -> float:
    """
    Return *value* if it is a finite number of seconds, > 0 and at most
    :data:`MAX_DURATION`.

    Raises:
        InvalidInputError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(field, value, "must be a number of seconds")
    if not (math.isfinite(value) and 0 < value <= _MAX_SECONDS):
        raise InvalidInputError(
            field, value, f"must be > 0 and at most {_MAX_SECONDS:.0f} seconds"
        )
    return value


def check_enum(field: str, value: object, kind: type[_E]) -> _E:
    """
    Return *value* if it is a member of *kind*.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, kind):
        raise InvalidInputError(field, value, f"must be a {kind.__name__}")
    return value


def check_instance(field: str, value: object, kind: type[_T]) -> _T:
    """
    Return *value* if it is an instance of *kind* (a record).

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, kind):
        raise InvalidInputError(field, value, f"must be a {kind.__name__}")
    return value


def check_items(
    field: str, values: object, kind: type[_T], *, max_items: int = MAX_COUNT
) -> tuple[_T, ...]:
    """
    Return *values* if it is a tuple of at most *max_items* instances of
    *kind*.

    Raises:
        InvalidInputError: on the tuple, or on the first wrong item.
    """
    if not isinstance(values, tuple):
        raise InvalidInputError(
            field, values, f"must be a collection of {kind.__name__}"
        )
    if len(values) > max_items:
        raise InvalidInputError(field, values, f"must hold at most {max_items} items")
    for item in values:
        if not isinstance(item, kind):
            raise InvalidInputError(field, item, f"must be a {kind.__name__}")
    return values


def check_parameters(field: str, value: object) -> tuple[tuple[str, str], ...]:
    """
    Return *value* if it is a tuple of at most :data:`MAX_PARAMETERS`
    ``(name, value)`` string pairs with distinct, non-empty names.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(value, tuple):
        raise InvalidInputError(field, value, "must be (name, value) string pairs")
    if len(value) > MAX_PARAMETERS:
        raise InvalidInputError(
            field, value, f"must hold at most {MAX_PARAMETERS} pairs"
        )
    names: set[str] = set()
    for pair in value:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2  # noqa: PLR2004
            or not all(isinstance(p, str) for p in pair)
        ):
            raise InvalidInputError(field, pair, "must be (name, value) string pairs")
        name, text = pair
        check_str(field, name, required=True)
        check_str(field, text, max_length=MAX_TEXT_LENGTH)
        if name in names:
            raise InvalidInputError(field, name, "names a parameter twice")
        names.add(name)
    return value


def clean_text(text: str) -> str:
    """
    *text* made storable: NUL characters and lone surrogates escaped, cut to
    :data:`MAX_TEXT_LENGTH` characters. For error messages the library
    records from exceptions it did not write.
    """
    if "\x00" in text or not text.isascii():
        text = text.replace("\x00", "\\x00").encode(errors="backslashreplace").decode()
    return text[:MAX_TEXT_LENGTH]


def tuple_of(value: Any) -> Any:
    """
    For converters: any iterable but a string as a tuple; anything else as
    it is, for the field's validator to refuse by name.
    """
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return tuple(value)
    return value


# -- attrs validators ------------------------------------------------------------


def uuid_(_inst: object, attribute: Any, value: Any) -> None:
    """A :class:`uuid.UUID`."""
    check_uuid(attribute.name, value)


def optional_uuid(_inst: object, attribute: Any, value: Any) -> None:
    """None or a :class:`uuid.UUID`."""
    check_optional_uuid(attribute.name, value)


def flag(_inst: object, attribute: Any, value: Any) -> None:
    """A bool."""
    check_bool(attribute.name, value)


def instances(_inst: object, attribute: Any, value: Any) -> None:
    """A pool size: an int from 0 to :data:`MAX_INSTANCES`."""
    check_int(attribute.name, value, maximum=MAX_INSTANCES)


def count(_inst: object, attribute: Any, value: Any) -> None:
    """A count: an int from 0 to :data:`MAX_COUNT`."""
    check_int(attribute.name, value)


def aware(_inst: object, attribute: Any, value: Any) -> None:
    """A timezone-aware datetime in range."""
    check_aware(attribute.name, value)


def optional_aware(_inst: object, attribute: Any, value: Any) -> None:
    """None or a timezone-aware datetime in range."""
    check_optional_aware(attribute.name, value)


def optional_duration(_inst: object, attribute: Any, value: Any) -> None:
    """None or a timedelta from 0 to :data:`MAX_DURATION`."""
    check_optional_delta(attribute.name, value)


def name(_inst: object, attribute: Any, value: Any) -> None:
    """A name, possibly empty: at most :data:`MAX_NAME_LENGTH` characters."""
    check_str(attribute.name, value)


def required_name(_inst: object, attribute: Any, value: Any) -> None:
    """A non-empty name of at most :data:`MAX_NAME_LENGTH` characters."""
    check_str(attribute.name, value, required=True)


def optional_name(_inst: object, attribute: Any, value: Any) -> None:
    """None or a name."""
    check_optional_str(attribute.name, value)


def text(_inst: object, attribute: Any, value: Any) -> None:
    """A text of at most :data:`MAX_TEXT_LENGTH` characters."""
    check_str(attribute.name, value, max_length=MAX_TEXT_LENGTH)


def optional_text(_inst: object, attribute: Any, value: Any) -> None:
    """None or a text of at most :data:`MAX_TEXT_LENGTH` characters."""
    check_optional_str(attribute.name, value, max_length=MAX_TEXT_LENGTH)


def string(_inst: object, attribute: Any, value: Any) -> None:
    """Any string (a description that is never stored)."""
    if not isinstance(value, str):
        raise InvalidInputError(attribute.name, value, "must be a string")


def parameters(_inst: object, attribute: Any, value: Any) -> None:
    """``(name, value)`` string pairs."""
    check_parameters(attribute.name, value)


def enum_of(kind: type[enum.Enum]) -> Any:
    """A validator: a member of *kind*."""

    def validate(_inst: object, attribute: Any, value: Any) -> None:
        check_enum(attribute.name, value, kind)

    return validate


def instance_of(kind: type[Any]) -> Any:
    """A validator: an instance of *kind*."""

    def validate(_inst: object, attribute: Any, value: Any) -> None:
        check_instance(attribute.name, value, kind)

    return validate


def optional_instance_of(kind: type[Any]) -> Any:
    """A validator: None or an instance of *kind*."""

    def validate(_inst: object, attribute: Any, value: Any) -> None:
        if value is not None:
            check_instance(attribute.name, value, kind)

    return validate


def items_of(kind: type[Any], *, max_items: int = MAX_COUNT) -> Any:
    """A validator: a tuple of instances of *kind*."""

    def validate(_inst: object, attribute: Any, value: Any) -> None:
        check_items(attribute.name, value, kind, max_items=max_items)

    return validate
