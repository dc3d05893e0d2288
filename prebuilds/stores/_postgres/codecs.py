"""PostgresStore's rows of ``sql.py`` decoded to records (through ``stores._common``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

import attrs

from psycopg.types.json import Jsonb

from prebuilds._model import InvalidPreset, Transition
from prebuilds._pool import PooledInstance, PresetFacts
from prebuilds._records import (
    Build,
    BuildStatus,
    Instance,
    Lifecycle,
    PresetConfig,
    Template,
)
from prebuilds.exceptions import InvalidInputError
from prebuilds.stores import _common as common
from prebuilds.stores._postgres import sql


_UTC = timezone.utc
_T = TypeVar("_T")
#: The columns of ``sql._PRESET_COLUMNS`` before the template's, and of
#: ``POOL_INSTANCES``: named as the fields they are read into.
_PRESET = (
    *(f.name for f in attrs.fields(PresetConfig)),
    *("status", "last_invalidated_at", "stamp"),
)
_POOL = tuple(f.name for f in attrs.fields(PooledInstance))


def utc(value: datetime) -> datetime:
    """*value* in UTC (the session's time zone may be any)."""
    return value.astimezone(_UTC)


def _named(columns: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
    """*row*'s values by column name, datetimes in UTC."""
    return {
        name: value.astimezone(_UTC) if isinstance(value, datetime) else value
        for name, value in zip(columns, row, strict=True)
    }


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
    split = len(_PRESET)
    return common.preset_facts(
        **_named(_PRESET, row[:split]), template=template(row[split:])
    )


def preset_or_invalid(row: Sequence[Any]) -> PresetFacts | InvalidPreset:
    """The preset of *row*, or why it cannot be read."""
    try:
        return preset_facts(row)
    except InvalidInputError as e:
        return common.invalid_preset(row[0], e)


def pooled(row: Sequence[Any]) -> PooledInstance:
    """A row of ``POOL_INSTANCES``."""
    return common.pooled_instance(**_named(_POOL, row))


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
