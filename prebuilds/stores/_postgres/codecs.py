"""PostgresStore's rows of ``sql.py`` decoded to records (through ``stores._common``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from psycopg.types.json import Jsonb

from prebuilds._model import InvalidPreset, Transition
from prebuilds._pool import PooledInstance, PresetFacts
from prebuilds._records import Build, BuildStatus, Instance, Lifecycle, Template
from prebuilds.exceptions import InvalidInputError
from prebuilds.stores import _common as common
from prebuilds.stores._postgres import sql


_UTC = timezone.utc
_T = TypeVar("_T")


def utc(value: datetime) -> datetime:
    """*value* in UTC (the session's time zone may be any)."""
    return value.astimezone(_UTC)


def utc_opt(value: Any) -> Any:
    """A datetime in UTC; any other value (None included) as it is."""
    return value.astimezone(_UTC) if isinstance(value, datetime) else value


def _named(columns: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
    """*row*'s values by column name, datetimes in UTC."""
    return {name: utc_opt(value) for name, value in zip(columns, row, strict=True)}


def jsonb(value: list[list[Any]]) -> Jsonb:
    """A JSON column's value (``stores._common``'s shape) for psycopg."""
    return Jsonb(value)


def template(row: Sequence[Any]) -> Template:
    """A row of ``GET_TEMPLATE``, or the template's columns of a preset row."""
    return Template(**_named(sql.TEMPLATE_COLUMNS, row))


def preset_facts(row: Sequence[Any]) -> PresetFacts:
    """
    A row of ``READ_PRESET`` or ``POOL_PRESETS``.

    Raises:
        InvalidInputError: the stored preset is not valid.
    """
    return common.preset_facts(
        id=row[0],
        template_id=row[1],
        template_version_id=row[2],
        desired_instances=row[3],
        name=row[4],
        ttl=row[5],
        scheduling_timezone=row[6],
        schedules=row[7],
        parameters=row[8],
        status=row[9],
        last_invalidated_at=utc_opt(row[10]),
        stamp=row[11],
        template=template(row[12:]),
    )


def preset_or_invalid(row: Sequence[Any]) -> PresetFacts | InvalidPreset:
    """The preset of *row*, or why it cannot be read."""
    try:
        return preset_facts(row)
    except InvalidInputError as e:
        return common.invalid_preset(row[0], e)


def pooled(row: Sequence[Any]) -> PooledInstance:
    """A row of ``POOL_INSTANCES``."""
    return common.pooled_instance(
        id=row[0],
        preset_id=row[1],
        template_id=row[2],
        template_version_id=row[3],
        name=row[4],
        created_at=utc(row[5]),
        ready=row[6],
        latest_build_id=row[7],
        latest_transition=row[8],
        latest_status=row[9],
        latest_number=row[10],
        latest_created_at=utc(row[11]),
    )


def instance(row: Sequence[Any]) -> Instance:
    """A row of ``GET_INSTANCE`` or ``LIST_INSTANCES``."""
    fields = _named(sql.INSTANCE_COLUMNS, row)
    lifecycle = {name: fields.pop(name) for name in sql.LIFECYCLE_COLUMNS}
    fields["lifecycle"] = Lifecycle(**lifecycle)
    fields["latest_transition"] = Transition(fields["latest_transition"])
    fields["latest_status"] = BuildStatus(fields["latest_status"])
    return Instance(**fields)


def build(row: Sequence[Any]) -> Build:
    """A row of ``GET_BUILD``, ``LIST_BUILDS`` or ``FAIL_STUCK`` (its fence cut)."""
    fields = _named(sql.BUILD_COLUMNS, row)
    fields["transition"] = Transition(fields["transition"])
    fields["status"] = BuildStatus(fields["status"])
    return Build(**fields)


class RowMemo(Generic[_T]):
    """
    The last read's rows and their (immutable) records, so that a row read
    again costs a dictionary look-up instead of a decoding and validation.
    """

    def __init__(self, decode: Callable[[Sequence[Any]], _T]) -> None:
        self._decode = decode
        self._last: dict[tuple[Any, ...], _T] = {}

    def decode(self, rows: Iterable[tuple[Any, ...]]) -> list[_T]:
        """Every row decoded, in order."""
        last, decode = self._last, self._decode
        kept: dict[tuple[Any, ...], _T] = {}
        out = []
        for row in rows:
            item = last.get(row)
            if item is None:
                item = decode(row)
            kept[row] = item
            out.append(item)
        self._last = kept
        return out
