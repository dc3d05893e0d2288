"""
The SQLite store's rows and records, both ways.

Datetimes are exact integer microseconds since the Unix epoch (UTC),
timedeltas integer microseconds, IDs canonical UUID text, enums their
values, schedules and parameters JSON lists of pairs. A value that cannot be
decoded raises :class:`~prebuilds.exceptions.InvalidInputError` naming the
field (a stored preset: reported in ``invalid_presets``) or, inside
:func:`decoding`, :class:`~prebuilds.exceptions.StoreError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from prebuilds._model import InvalidPreset, Transition
from prebuilds._records import Build, BuildStatus, Instance, Lifecycle, Template
from prebuilds._validate import check_aware
from prebuilds.exceptions import InvalidInputError, StoreError
from prebuilds.stores._common import (
    decode_enum,
    decode_parameters,
    decode_schedules,
    invalid_preset,
    pooled_instance,
    preset_facts,
)


if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from prebuilds._pool import PooledInstance, PresetFacts

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: A claim's cut-off when nothing expires: before every instant.
NO_CUTOFF = _INT64_MIN

# -- values --------------------------------------------------------------------------


def to_us(field: str, value: datetime) -> int:
    """An aware datetime as exact integer microseconds since the epoch."""
    check_aware(field, value)
    return (value - _EPOCH) // _US


def opt_to_us(field: str, value: datetime | None) -> int | None:
    """:func:`to_us`, None kept."""
    return None if value is None else to_us(field, value)


def delta_us(field: str, value: timedelta | None) -> int | None:
    """A timedelta as integer microseconds (SQLite integers are 64-bit)."""
    if value is None:
        return None
    micros = value // _US
    if not _INT64_MIN <= micros <= _INT64_MAX:
        raise InvalidInputError(field, value, "too large for the SQLite store")
    return micros


def from_us(field: str, value: object) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    if type(value) is not int:
        raise InvalidInputError(field, value, "must be integer microseconds")
    try:
        return _EPOCH + value * _US
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def _opt_from_us(field: str, value: object) -> datetime | None:
    return None if value is None else from_us(field, value)


def _opt_delta(field: str, value: object) -> timedelta | None:
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidInputError(field, value, "must be integer microseconds")
    try:
        return value * _US
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def _uuid(field: str, value: object) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInputError(field, value, "must be a UUID") from None


def _opt_uuid(field: str, value: object) -> UUID | None:
    return None if value is None else _uuid(field, value)


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Turn a row that cannot be decoded into a :class:`StoreError`."""
    try:
        yield
    except (ValueError, TypeError, OverflowError) as e:
        raise StoreError(f"corrupt {what} row in the SQLite store: {e}") from e


# -- rows ------------------------------------------------------------------------------


def template_from_row(row: Sequence[Any]) -> Template:
    """A ``sql.GET_TEMPLATE`` row (or the template part of a preset row)."""
    (tid, active, name, org, deleted, deprecated, default_ttl) = row
    return Template(
        id=_uuid("id", tid),
        active_version_id=_uuid("active_version_id", active),
        name=name,
        organization_id=_opt_uuid("organization_id", org),
        deleted=bool(deleted),
        deprecated=bool(deprecated),
        default_ttl=_opt_delta("default_ttl", default_ttl),
    )


def facts_from_row(row: Sequence[Any], template: Template | None = None) -> PresetFacts:
    """
    A ``sql.READ_PRESET`` row: the preset and its template (*template*, if
    given, is that part of the row already decoded).

    Raises:
        InvalidInputError: the stored configuration is not valid.
    """
    return preset_facts(
        id=_uuid("id", row[0]),
        template_id=_uuid("template_id", row[1]),
        template_version_id=_uuid("template_version_id", row[2]),
        desired_instances=row[3],
        name=row[4],
        ttl=_opt_delta("ttl", row[5]),
        scheduling_timezone=row[6],
        schedules=decode_schedules(row[7]),
        parameters=decode_parameters(row[8]),
        template=template_from_row(row[12:]) if template is None else template,
        status=row[9],
        last_invalidated_at=_opt_from_us("last_invalidated_at", row[10]),
        stamp=row[11],
    )


def pooled_from_row(row: Sequence[Any]) -> PooledInstance:
    """A ``sql.POOL_INSTANCES`` row."""
    return pooled_instance(
        id=_uuid("id", row[0]),
        preset_id=_uuid("preset_id", row[1]),
        template_id=_uuid("template_id", row[2]),
        template_version_id=_uuid("template_version_id", row[3]),
        name=row[4],
        created_at=from_us("created_at", row[5]),
        ready=row[6],
        latest_build_id=_uuid("latest_build_id", row[7]),
        latest_transition=row[8],
        latest_status=row[9],
        latest_number=row[10],
        latest_created_at=from_us("latest_created_at", row[11]),
    )


def instance_from_row(row: Sequence[Any]) -> Instance:
    """A row of ``sql.INSTANCE_COLUMNS``."""
    return Instance(
        id=_uuid("id", row[0]),
        preset_id=_uuid("preset_id", row[1]),
        template_id=_uuid("template_id", row[2]),
        template_version_id=_uuid("template_version_id", row[3]),
        owner_id=_uuid("owner_id", row[4]),
        name=row[5],
        created_at=from_us("created_at", row[6]),
        ready=bool(row[7]),
        lifecycle=Lifecycle(
            autostart_schedule=row[8],
            next_start_at=_opt_from_us("next_start_at", row[9]),
            ttl=_opt_delta("ttl", row[10]),
            deadline=_opt_from_us("deadline", row[11]),
            max_deadline=_opt_from_us("max_deadline", row[12]),
            dormant_at=_opt_from_us("dormant_at", row[13]),
            deleting_at=_opt_from_us("deleting_at", row[14]),
            last_used_at=_opt_from_us("last_used_at", row[15]),
        ),
        deleted=bool(row[16]),
        claimed_at=_opt_from_us("claimed_at", row[17]),
        # An instance without a build (written by hand) reads as queued.
        latest_transition=(
            Transition.START
            if row[18] is None
            else decode_enum(Transition, "transition", row[18])
        ),
        latest_status=(
            BuildStatus.PENDING
            if row[19] is None
            else decode_enum(BuildStatus, "status", row[19])
        ),
    )


def build_from_row(row: Sequence[Any]) -> Build:
    """A row of the build columns."""
    return Build(
        id=_uuid("id", row[0]),
        instance_id=_uuid("instance_id", row[1]),
        preset_id=_uuid("preset_id", row[2]),
        template_version_id=_uuid("template_version_id", row[3]),
        transition=decode_enum(Transition, "transition", row[4]),
        status=decode_enum(BuildStatus, "status", row[5]),
        build_number=row[6],
        initiator_id=_uuid("initiator_id", row[7]),
        created_at=from_us("created_at", row[8]),
        started_at=_opt_from_us("started_at", row[9]),
        finished_at=_opt_from_us("finished_at", row[10]),
        error_kind=row[11],
        error=row[12],
    )


# -- the pool, decoded once per row ---------------------------------------------------------


class PoolDecoder:
    """
    Decodes the rows of a pool read, reusing what the last read decoded
    from an equal row: a steady pool is decoded once, not on every pass.

    The records are immutable and decoding is a function of the row alone,
    so an equal row stands for an equal record, whoever wrote it (another
    process, a hand edit). Only the last read's rows are kept.
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
                key = tuple(row[12:])  # templates repeat: decode each once
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
