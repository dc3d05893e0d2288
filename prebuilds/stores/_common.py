"""
What every reference store shares, written once: the JSON shape of
schedules and parameters, the builders of the facts and of build requests
from stored values, and fencing.

A store's codec reads a row into plain values (UUIDs, aware datetimes, the
enum's value or member, the JSON column as text or as decoded JSON) and
hands them to a builder here, which decodes and validates them the same way
for every store: a stored preset that cannot be read is an
:class:`~prebuilds.exceptions.InvalidInputError` naming the field, which
``read_pool`` reports as an :class:`~prebuilds.InvalidPreset`.
"""

from __future__ import annotations

import enum
import json

from typing import TYPE_CHECKING, Any, TypeVar

from prebuilds._model import InvalidPreset, PrebuildSchedule, PresetStatus, Transition
from prebuilds._pool import PooledInstance, PresetFacts
from prebuilds._records import BuildRequest, BuildStatus, Lease, PresetConfig
from prebuilds.exceptions import InvalidInputError, LeadershipLostError


if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime, timedelta
    from uuid import UUID

    from prebuilds._records import Template

_E = TypeVar("_E", bound=enum.Enum)

# -- the JSON shape: a list of [cron, instances], a list of [name, value] -------------


def schedules_json(schedules: Iterable[PrebuildSchedule]) -> list[list[Any]]:
    """Schedules as stored: ``[[cron, instances], ...]``."""
    return [[s.cron, s.instances] for s in schedules]


def parameters_json(parameters: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Parameters as stored: ``[[name, value], ...]``."""
    return [[name, value] for name, value in parameters]


def dumps(value: list[list[Any]]) -> str:
    """A JSON column's text (compact; ``"[]"`` when empty)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _pairs(field: str, raw: object) -> list[tuple[Any, Any]]:
    """A JSON list of two-element lists (text, bytes or decoded), as tuples."""
    reason = "must be a JSON list of pairs"
    value: object = raw
    if isinstance(raw, (str, bytes)):
        if raw in {"[]", b"[]"}:  # most presets: skip the parser
            return []
        try:
            value = json.loads(raw)
        except ValueError:
            raise InvalidInputError(field, raw, reason) from None
    if not isinstance(value, list):
        raise InvalidInputError(field, raw, reason)
    pairs: list[tuple[Any, Any]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:  # noqa: PLR2004
            raise InvalidInputError(field, raw, reason)
        pairs.append((item[0], item[1]))
    return pairs


def decode_schedules(raw: object) -> tuple[PrebuildSchedule, ...]:
    """
    Stored schedules, as JSON text or decoded JSON.

    Raises:
        InvalidInputError: they are not a list of ``[cron, instances]``, or a
            schedule is not valid.
    """
    return tuple(
        PrebuildSchedule(cron=cron, instances=instances)
        for cron, instances in _pairs("schedules", raw)
    )


def decode_parameters(raw: object) -> tuple[tuple[str, str], ...]:
    """
    Stored parameters, as JSON text or decoded JSON.

    Raises:
        InvalidInputError: they are not a list of ``[name, value]`` strings.
    """
    pairs = _pairs("parameters", raw)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidInputError(
                "parameters", raw, "must be [name, value] string pairs"
            )
    return tuple(pairs)


def decode_enum(kind: type[_E], field: str, raw: object) -> _E:
    """
    An enum member from its stored value (or the member itself).

    Raises:
        InvalidInputError: *raw* is no value of *kind*.
    """
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInputError(field, raw, f"unknown {kind.__name__}") from None


# -- builders ------------------------------------------------------------------------


def preset_facts(
    *,
    id: UUID,  # noqa: A002
    template_id: UUID,
    template_version_id: UUID,
    desired_instances: int,
    name: str,
    ttl: timedelta | None,
    scheduling_timezone: str,
    schedules: Any,
    parameters: Any,
    template: Template,
    status: object,
    last_invalidated_at: datetime | None,
    stamp: int | None,
) -> PresetFacts:
    """
    A stored preset's facts, from its columns and its template.

    *schedules* and *parameters* are the JSON columns (text or decoded JSON;
    a tuple of records is taken as it is); *status* the status' value or member. The
    facts' :attr:`~prebuilds.PresetFacts.preset` is built here, so a stored
    preset that the calculator could not take is refused here too.

    Raises:
        InvalidInputError: a column is not valid (naming it).
    """
    if isinstance(schedules, (str, bytes, list)):
        schedules = decode_schedules(schedules)
    if isinstance(parameters, (str, bytes, list)):
        parameters = decode_parameters(parameters)
    config = PresetConfig(
        id=id,
        template_id=template_id,
        template_version_id=template_version_id,
        desired_instances=desired_instances,
        name=name,
        ttl=ttl,
        scheduling_timezone=scheduling_timezone,
        schedules=schedules,
        parameters=parameters,
    )
    facts = PresetFacts(
        config=config,
        template=template,
        status=decode_enum(PresetStatus, "status", status),
        last_invalidated_at=last_invalidated_at,
        stamp=stamp,
    )
    _ = facts.preset  # the calculator's view must be valid too
    return facts


def invalid_preset(preset_id: UUID, error: InvalidInputError) -> InvalidPreset:
    """Describe a stored preset that could not be read."""
    return InvalidPreset(
        preset_id=preset_id,
        field=error.field,
        value=repr(error.value),
        reason=error.reason,
    )


def pooled_instance(
    *,
    id: UUID,  # noqa: A002
    preset_id: UUID,
    template_id: UUID,
    template_version_id: UUID,
    name: str,
    created_at: datetime,
    ready: object,
    latest_build_id: UUID,
    latest_transition: object,
    latest_status: object,
    latest_number: int,
    latest_created_at: datetime,
) -> PooledInstance:
    """
    A pooled instance with its latest build, from stored values (*ready* a
    bool or 0/1; the transition and status their values or members).

    Raises:
        InvalidInputError: a value is not valid (naming it).
    """
    return PooledInstance(
        id=id,
        preset_id=preset_id,
        template_id=template_id,
        template_version_id=template_version_id,
        name=name,
        created_at=created_at,
        ready=bool(ready),
        latest_build_id=latest_build_id,
        latest_transition=decode_enum(Transition, "transition", latest_transition),
        latest_status=decode_enum(BuildStatus, "status", latest_status),
        latest_number=latest_number,
        latest_created_at=latest_created_at,
    )


def build_request(
    *,
    build_id: UUID,
    instance_id: UUID,
    preset_id: UUID,
    template_id: UUID,
    template_version_id: UUID,
    transition: object,
    name: str,
    parameters: Any = (),
    orphan: bool = False,
) -> BuildRequest:
    """
    What the provisioner is asked to do, from stored values (*parameters*
    the preset's JSON column or the pairs; a delete carries none).

    Raises:
        InvalidInputError: a value is not valid (naming it).
    """
    if isinstance(parameters, (str, bytes, list)):
        parameters = decode_parameters(parameters)
    return BuildRequest(
        build_id=build_id,
        instance_id=instance_id,
        preset_id=preset_id,
        template_id=template_id,
        template_version_id=template_version_id,
        transition=decode_enum(Transition, "transition", transition),
        name=name,
        parameters=parameters,
        orphan=orphan,
    )


# -- fencing ---------------------------------------------------------------------------


def fence_token(lease: Lease | None) -> str | None:
    """
    The token a fenced write checks: None for an unfenced write
    (``lease=None``), else the token of *lease*.

    Raises:
        InvalidInputError: *lease* is neither None nor a :class:`Lease`.
        LeadershipLostError: *lease* was never held (nothing to fence with).
    """
    if lease is None:
        return None
    if not isinstance(lease, Lease):
        raise InvalidInputError("lease", lease, "must be a Lease or None")
    if not lease.held or not lease.token:
        msg = "the lease was not acquired: it cannot fence a write"
        raise LeadershipLostError(msg)
    return lease.token


def lost(token: str) -> LeadershipLostError:
    """The error of a fenced write whose lease no longer leads."""
    return LeadershipLostError(
        f"leadership lost: lease {token!r} no longer leads (its scope ended, "
        "it expired or another holder took over); nothing was written"
    )
