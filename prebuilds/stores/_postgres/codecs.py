"""
PostgresStore's rows and records: the rows of ``sql.py`` decoded, through
the builders every store shares (``stores._common``: the JSON shape of
schedules and parameters, the facts, the checks). A stored preset that does
not decode is an :class:`~prebuilds.InvalidPreset`, reported, never raised,
by ``read_pool``.
"""

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


_UTC = timezone.utc
_T = TypeVar("_T")


def utc(value: datetime) -> datetime:
    """*value* in UTC (the session's time zone may be any)."""
    return value.astimezone(_UTC)


def utc_opt(value: datetime | None) -> datetime | None:
    """:func:`utc`, None kept."""
    return None if value is None else value.astimezone(_UTC)


def jsonb(value: list[list[Any]]) -> Jsonb:
    """A JSON column's value (``stores._common``'s shape) for psycopg."""
    return Jsonb(value)


def template(row: Sequence[Any]) -> Template:
    """A row of ``GET_TEMPLATE``, or the template's columns of a preset row."""
    return Template(
        id=row[0],
        active_version_id=row[1],
        name=row[2],
        organization_id=row[3],
        deleted=row[4],
        deprecated=row[5],
        default_ttl=row[6],
    )


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
    return Instance(
        id=row[0],
        preset_id=row[1],
        template_id=row[2],
        template_version_id=row[3],
        owner_id=row[4],
        name=row[5],
        created_at=utc(row[6]),
        ready=row[7],
        lifecycle=Lifecycle(
            autostart_schedule=row[8],
            next_start_at=utc_opt(row[9]),
            ttl=row[10],
            deadline=utc_opt(row[11]),
            max_deadline=utc_opt(row[12]),
            dormant_at=utc_opt(row[13]),
            deleting_at=utc_opt(row[14]),
            last_used_at=utc_opt(row[15]),
        ),
        deleted=row[16],
        claimed_at=utc_opt(row[17]),
        latest_transition=Transition(row[18]),
        latest_status=BuildStatus(row[19]),
    )


def build(row: Sequence[Any]) -> Build:
    """A row of ``GET_BUILD``, ``LIST_BUILDS`` or ``FAIL_STUCK`` (its fence cut)."""
    return Build(
        id=row[0],
        instance_id=row[1],
        preset_id=row[2],
        template_version_id=row[3],
        transition=Transition(row[4]),
        status=BuildStatus(row[5]),
        build_number=row[6],
        initiator_id=row[7],
        created_at=utc(row[8]),
        started_at=utc_opt(row[9]),
        finished_at=utc_opt(row[10]),
        error_kind=row[11],
        error=row[12],
    )


class RowMemo(Generic[_T]):
    """
    Rows decoded by the last read, kept for the next: a row equal to one
    read last time gets the record decoded then (records are immutable), so
    a steady pool costs a dictionary look-up per row instead of a decoding
    and its validation. Only the last read's rows are kept.
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
