"""
PostgresStore's rows and records: decoding the rows of ``sql.py`` into
records, and the JSON the preset columns hold.

Schedules are stored as a JSON list of ``[cron, instances]`` pairs and
parameters as a list of ``[name, value]`` pairs (the shape every store
uses). A stored preset that does not decode is an
:class:`~prebuilds.InvalidPreset`, reported, never raised, by ``read_pool``.
"""

from __future__ import annotations

import json

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from psycopg.types.json import Jsonb

from prebuilds._model import InvalidPreset, PrebuildSchedule, PresetStatus, Transition
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


_UTC = timezone.utc
_T = TypeVar("_T")


def utc(value: datetime) -> datetime:
    """*value* in UTC (the session's time zone may be any)."""
    return value.astimezone(_UTC)


def utc_opt(value: datetime | None) -> datetime | None:
    """:func:`utc`, None kept."""
    return None if value is None else value.astimezone(_UTC)


# -- JSON ---------------------------------------------------------------------------
def schedules_json(config: PresetConfig) -> Jsonb:
    """The preset's schedules as stored."""
    return Jsonb([[s.cron, s.instances] for s in config.schedules])


def parameters_json(parameters: tuple[tuple[str, str], ...]) -> Jsonb:
    """The preset's parameters as stored."""
    return Jsonb([[name, value] for name, value in parameters])


def _json(text: str) -> Any:
    """A JSON column read as text (most are empty lists: skip the parser)."""
    return [] if text == "[]" else json.loads(text)


def _pairs(field: str, text: str, kinds: tuple[type, type]) -> list[tuple[Any, Any]]:
    """A stored list of pairs whose items are of *kinds* (never a bool)."""
    raw = _json(text)
    if not isinstance(raw, list):
        raise InvalidInputError(field, raw, "must be a JSON list")
    pairs = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2  # noqa: PLR2004
            or not all(
                isinstance(x, kind) and not isinstance(x, bool)
                for x, kind in zip(item, kinds, strict=True)
            )
        ):
            kind = " and ".join(k.__name__ for k in kinds)
            raise InvalidInputError(field, item, f"must be a pair of {kind}")
        pairs.append((item[0], item[1]))
    return pairs


def parameters(text: str) -> tuple[tuple[str, str], ...]:
    """Stored parameters as pairs."""
    return tuple(_pairs("parameters", text, (str, str)))


# -- rows -----------------------------------------------------------------------------
def template(row: Sequence[Any]) -> Template:
    """A row of ``GET_TEMPLATE``."""
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
    try:
        status = PresetStatus(row[9])
    except ValueError:
        raise InvalidInputError("status", row[9], "unknown preset status") from None
    config = PresetConfig(
        id=row[0],
        template_id=row[1],
        template_version_id=row[2],
        desired_instances=row[3],
        name=row[4],
        ttl=row[5],
        scheduling_timezone=row[6],
        schedules=[
            PrebuildSchedule(cron=cron, instances=n)
            for cron, n in _pairs("schedules", row[7], (str, int))
        ],
        parameters=parameters(row[8]),
    )
    return PresetFacts(
        config=config,
        template=Template(
            id=row[1],
            active_version_id=row[12],
            name=row[13],
            organization_id=row[14],
            deleted=row[15],
            deprecated=row[16],
            default_ttl=row[17],
        ),
        status=status,
        last_invalidated_at=utc_opt(row[10]),
        stamp=row[11],
    )


def preset_or_invalid(row: Sequence[Any]) -> PresetFacts | InvalidPreset:
    """The preset of *row*, or why it cannot be read."""
    try:
        return preset_facts(row)
    except InvalidInputError as e:
        return InvalidPreset(
            preset_id=row[0], field=e.field, value=repr(e.value), reason=e.reason
        )


def pooled(row: Sequence[Any]) -> PooledInstance:
    """A row of ``POOL_INSTANCES``."""
    return PooledInstance(
        id=row[0],
        preset_id=row[1],
        template_id=row[2],
        template_version_id=row[3],
        name=row[4],
        created_at=utc(row[5]),
        ready=row[6],
        latest_build_id=row[7],
        latest_transition=Transition(row[8]),
        latest_status=BuildStatus(row[9]),
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
