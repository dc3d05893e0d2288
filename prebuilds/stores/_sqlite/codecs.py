"""
The SQLite store's rows as records, and values as parameters (encodings:
see ``sql``). A value that cannot be decoded raises
:class:`~prebuilds.exceptions.InvalidInputError` naming the field (a stored
preset: reported in ``invalid_presets``) or, inside :func:`decoding`,
:class:`~prebuilds.exceptions.StoreError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID, SafeUUID

from prebuilds._model import InvalidPreset, Transition
from prebuilds._records import Build, BuildStatus, Instance, Lifecycle, Template
from prebuilds._validate import check_aware
from prebuilds.exceptions import InvalidInputError, StoreError
from prebuilds.stores import _common as common
from prebuilds.stores._common import (
    decode_enum,
    decode_parameters,
    decode_schedules,
    invalid_preset,
    pooled_instance,
    preset_facts,
)
from prebuilds.stores._sqlite import sql


if TYPE_CHECKING:
    import enum

    from collections.abc import Callable, Iterator, Sequence

    from prebuilds._pool import PooledInstance, PresetFacts

    _Decode = Callable[[str, Any], Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UUID_DIGITS = 32
_new = object.__new__
_set = object.__setattr__

#: A claim's cut-off when nothing expires: before every instant.
NO_CUTOFF = _INT64_MIN

# -- values --------------------------------------------------------------------------


def to_us(field: str, value: datetime) -> int:
    """An aware datetime as exact integer microseconds since the epoch."""
    check_aware(field, value)
    return (value - _EPOCH) // _US


def encode(field: str, value: object) -> object:
    """A record's value as a parameter (SQLite integers are 64-bit)."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return to_us(field, value)
    if isinstance(value, timedelta):
        micros = value // _US
        if not _INT64_MIN <= micros <= _INT64_MAX:
            raise InvalidInputError(field, value, "too large for the SQLite store")
        return micros
    return value


def _delta(field: str, value: object) -> timedelta:
    if type(value) is not int:
        raise InvalidInputError(field, value, "must be integer microseconds")
    try:
        return value * _US
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def from_us(field: str, value: object) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    delta = _delta(field, value)
    try:
        return _EPOCH + delta
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def _uuid(field: str, value: object) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInputError(field, value, "must be a UUID") from None


def _optional(decode: _Decode) -> _Decode:
    return lambda field, value: None if value is None else decode(field, value)


def _enum(kind: type[enum.Enum], field: str, default: object = None) -> _Decode:
    """*kind*'s member, reported as *field*; None reads as *default* if given."""

    def decode(_: str, value: object) -> object:
        if value is None and default is not None:
            return default
        return decode_enum(kind, field, value)

    return decode


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn a row that cannot be decoded into a :class:`StoreError`."""
    try:
        yield
    except (ValueError, TypeError, OverflowError) as e:
        raise StoreError(f"corrupt {what} row in the SQLite store: {e}") from e


# -- rows ------------------------------------------------------------------------------

#: How a column is read, by its name; a column not named is taken as it is.
_READ: dict[str, _Decode] = {
    **dict.fromkeys(
        sql.names(
            "id, preset_id, template_id, template_version_id, owner_id, instance_id,"
            "initiator_id, active_version_id, latest_build_id"
        ),
        _uuid,
    ),
    "organization_id": _optional(_uuid),
    **dict.fromkeys(sql.names("ready, deleted, deprecated"), lambda _, v: bool(v)),
    **dict.fromkeys(sql.names("ttl, default_ttl"), _optional(_delta)),
    **dict.fromkeys(sql.names("created_at, latest_created_at"), from_us),
    **dict.fromkeys(
        sql.names(
            "next_start_at, deadline, max_deadline, dormant_at, deleting_at,"
            "last_used_at, claimed_at, started_at, finished_at, last_invalidated_at"
        ),
        _optional(from_us),
    ),
    "schedules": lambda _, v: decode_schedules(v),
    "parameters": lambda _, v: decode_parameters(v),
}
_TEMPLATE = sql.names(sql.TEMPLATE_COLUMNS)
_PRESET = sql.names(sql.PRESET_COLUMNS)
_POOL = sql.names(sql.POOL_COLUMNS)
_INSTANCE = sql.names(sql.INSTANCE_COLUMNS)
_LIFECYCLE = sql.names(sql.LIFECYCLE_COLUMNS)
_BUILD = sql.names(sql.BUILD_COLUMNS)
# An instance without a build (written by hand) reads as queued.
_INSTANCE_READ = {
    "latest_transition": _enum(Transition, "transition", Transition.START),
    "latest_status": _enum(BuildStatus, "status", BuildStatus.PENDING),
}
_BUILD_READ = {
    "transition": _enum(Transition, "transition"),
    "status": _enum(BuildStatus, "status"),
}


def _fields(
    columns: Sequence[str], row: Sequence[Any], read: dict[str, _Decode] | None = None
) -> dict[str, Any]:
    """*row*'s values by column name, decoded (*read* before :data:`_READ`)."""
    read = read or {}
    return {
        name: read.get(name, _READ.get(name, _as_is))(name, value)
        for name, value in zip(columns, row, strict=True)
    }


def _as_is(_: str, value: object) -> object:
    return value


def template_from_row(row: Sequence[Any]) -> Template:
    """A row of ``sql.TEMPLATE_COLUMNS``."""
    return Template(**_fields(_TEMPLATE, row))


def facts_from_row(row: Sequence[Any], template: Template | None = None) -> PresetFacts:
    """
    A ``sql.READ_PRESET`` row (*template*: its template part, decoded already).

    Raises:
        InvalidInputError: the stored configuration is not valid.
    """
    split = len(_PRESET)
    fields = _fields(_PRESET, row[:split])
    if template is None:
        template = template_from_row(row[split:])
    return preset_facts(**fields, template=template)


def pooled_from_row(row: Sequence[Any]) -> PooledInstance:
    """A ``sql.POOL_INSTANCES`` row."""
    return pooled_instance(**_fields(_POOL, row))


def instance_from_row(row: Sequence[Any]) -> Instance:
    """A row of ``sql.INSTANCE_COLUMNS``."""
    fields = _fields(_INSTANCE, row, _INSTANCE_READ)
    lifecycle = Lifecycle(**{name: fields.pop(name) for name in _LIFECYCLE})
    return Instance(**fields, lifecycle=lifecycle)


def claimed_id(row: Sequence[Any]) -> UUID:
    """
    The ID a lean claim's ``RETURNING id`` row holds: what ``UUID(text)``
    gives, built as :mod:`uuid` builds it (``UUID(text)`` looks for prefixes
    and braces the store never writes, a tenth of a claim's Python time).

    Raises:
        ValueError: the text is not 32 hex digits and hyphens.
    """
    text = row[0]
    digits = text.replace("-", "")
    if len(digits) != _UUID_DIGITS:
        raise ValueError(f"badly formed UUID {text!r}")
    claimed = _new(UUID)
    _set(claimed, "int", int(digits, 16))
    _set(claimed, "is_safe", SafeUUID.unknown)
    return claimed


def claimed_instance(  # noqa: PLR0917 - what the claim wrote
    row: Sequence[Any],
    preset_id: UUID,
    version_id: UUID,
    user_id: UUID,
    name: str,
    lifecycle: Lifecycle,
    now: datetime,
) -> Instance:
    """The instance a claim took, from its ``sql.CLAIMED_COLUMNS`` row."""
    return common.claimed_instance(
        instance_id=UUID(row[0]),
        template_id=UUID(row[1]),
        created_at=from_us("created_at", row[2]),
        preset_id=preset_id,
        version_id=version_id,
        user_id=user_id,
        name=name,
        lifecycle=lifecycle,
        now=now,
    )


def build_from_row(row: Sequence[Any]) -> Build:
    """A row of ``sql.BUILD_COLUMNS``."""
    return Build(**_fields(_BUILD, row, _BUILD_READ))


# -- the pool, decoded once per row ---------------------------------------------------------


class PoolDecoder:
    """
    Decodes a pool read's rows, reusing the last read's record for an equal
    row (decoding is a function of the row alone), so that a steady pool is
    decoded once. Only the last read's rows are kept.
    """

    __slots__ = ("_instances", "_presets")

    def __init__(self) -> None:
        self._presets: dict[Any, tuple[Any, PresetFacts | InvalidPreset]] = {}
        self._instances: dict[Any, tuple[Any, PooledInstance]] = {}

    def presets(
        self, rows: Sequence[Sequence[Any]]
    ) -> tuple[list[PresetFacts], list[InvalidPreset]]:
        """The presets of ``sql.POOL_PRESETS`` rows, and those not valid."""
        templates: dict[Any, Template] = {}

        def decode(row: Sequence[Any]) -> PresetFacts | InvalidPreset:
            try:
                key = tuple(row[len(_PRESET) :])  # templates repeat: decode each once
                template = templates.get(key)
                if template is None:
                    template = templates[key] = template_from_row(key)
                return facts_from_row(row, template)
            except InvalidInputError as e:
                return invalid_preset(_uuid("id", row[0]), e)

        self._presets, items = _reuse(self._presets, rows, decode)
        valid = [i for i in items if not isinstance(i, InvalidPreset)]
        return valid, [i for i in items if isinstance(i, InvalidPreset)]

    def instances(self, rows: Sequence[Sequence[Any]]) -> list[PooledInstance]:
        """The instances of ``sql.POOL_INSTANCES`` rows."""
        self._instances, items = _reuse(self._instances, rows, pooled_from_row)
        return items


_T = TypeVar("_T")


def _reuse(
    known: dict[Any, tuple[Any, _T]],
    rows: Sequence[Sequence[Any]],
    decode: Callable[[Sequence[Any]], _T],
) -> tuple[dict[Any, tuple[Any, _T]], list[_T]]:
    """Decode *rows* (keyed by their first column), reusing *known*'s equal rows."""
    kept: dict[Any, tuple[Any, _T]] = {}
    items: list[_T] = []
    for row in rows:
        seen = known.get(row[0])
        item = seen[1] if seen is not None and seen[0] == row else decode(row)
        kept[row[0]] = (row, item)
        items.append(item)
    return kept, items
