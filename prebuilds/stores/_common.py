"""
What every reference store shares: the JSON shape of schedules and
parameters, the builders of facts and build requests from stored values
(a store's codec reads a row into plain values; these decode and validate
them alike for every store, with an
:class:`~prebuilds.exceptions.InvalidInputError` naming the field), and fencing.
"""

from __future__ import annotations

import enum
import json

from datetime import timezone
from typing import TYPE_CHECKING, Any, TypeVar

from prebuilds._model import InvalidPreset, PrebuildSchedule, PresetStatus, Transition
from prebuilds._pool import PooledInstance, PresetFacts
from prebuilds._records import (
    BuildRequest,
    BuildStatus,
    Instance,
    Lease,
    Lifecycle,
    PresetConfig,
    unchecked_evolve,
)
from prebuilds.exceptions import InvalidInputError, LeadershipLostError


if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime
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
    """Stored schedules (JSON text or decoded); InvalidInputError if not valid."""
    return tuple(
        PrebuildSchedule(cron=cron, instances=instances)
        for cron, instances in _pairs("schedules", raw)
    )


def decode_parameters(raw: object) -> tuple[tuple[str, str], ...]:
    """Stored parameters (JSON text or decoded); InvalidInputError if not valid."""
    pairs = _pairs("parameters", raw)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidInputError(
                "parameters", raw, "must be [name, value] string pairs"
            )
    return tuple(pairs)


def decode_enum(kind: type[_E], field: str, raw: object) -> _E:
    """A member of *kind* from its stored value (or itself), or InvalidInputError."""
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInputError(field, raw, f"unknown {kind.__name__}") from None


# -- builders: InvalidInputError naming a column that is not valid ------------------


def preset_facts(
    *,
    template: Template,
    status: object,
    last_invalidated_at: datetime | None,
    stamp: int | None,
    schedules: Any,
    parameters: Any,
    **config: Any,
) -> PresetFacts:
    """
    A stored preset's facts, from its columns (*config*: the other fields of
    ``PresetConfig``; the JSON ones as text, decoded JSON or
    records) and its template; the calculator's view is built too, so a preset
    it could not take is refused here.
    """
    if isinstance(schedules, (str, bytes, list)):
        schedules = decode_schedules(schedules)
    if isinstance(parameters, (str, bytes, list)):
        parameters = decode_parameters(parameters)
    facts = PresetFacts(
        config=PresetConfig(schedules=schedules, parameters=parameters, **config),
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
    *, ready: object, latest_transition: object, latest_status: object, **fields: Any
) -> PooledInstance:
    """
    A pooled instance with its latest build (*fields*: the other fields of
    ``PooledInstance``; *ready*: a bool or 0/1).
    """
    return PooledInstance(
        ready=bool(ready),
        latest_transition=decode_enum(Transition, "transition", latest_transition),
        latest_status=decode_enum(BuildStatus, "status", latest_status),
        **fields,
    )


def claimed_instance(
    *,
    instance_id: UUID,
    template_id: UUID,
    created_at: datetime,
    preset_id: UUID,
    version_id: UUID,
    user_id: UUID,
    name: str,
    lifecycle: Lifecycle,
    now: datetime,
) -> Instance:
    """
    The instance a claim took: its ID, template and creation time as the
    claim's statement returned them, the rest what the claim wrote (a claimed
    instance is ready and its latest build a successful start).
    """
    return Instance(
        id=instance_id,
        preset_id=preset_id,
        template_id=template_id,
        template_version_id=version_id,
        owner_id=user_id,
        name=name,
        created_at=created_at,
        ready=True,
        lifecycle=lifecycle,
        claimed_at=now.astimezone(timezone.utc),
        latest_transition=Transition.START,
        latest_status=BuildStatus.SUCCEEDED,
    )


def build_request(
    *, transition: object, parameters: Any = (), **fields: Any
) -> BuildRequest:
    """
    What the provisioner is asked to do (*fields*: the other fields of
    ``BuildRequest``; *parameters*: the JSON column or pairs).
    """
    if isinstance(parameters, (str, bytes, list)):
        parameters = decode_parameters(parameters)
    return BuildRequest(
        transition=decode_enum(Transition, "transition", transition),
        parameters=parameters,
        **fields,
    )


def start_requests(
    ids: Sequence[tuple[UUID, UUID]], names: Sequence[str], **fields: Any
) -> list[BuildRequest]:
    """
    The start requests of a batch: one per (instance ID, build ID) of *ids*
    and name of *names*, the first built from *fields* (as
    :func:`build_request`), the rest sharing its decoded fields.
    """
    (instance_id, build_id), *rest = ids
    first = build_request(
        build_id=build_id,
        instance_id=instance_id,
        transition=Transition.START,
        name=names[0],
        **fields,
    )
    return [first] + [
        unchecked_evolve(first, build_id=b, instance_id=i, name=name)
        for (i, b), name in zip(rest, names[1:], strict=True)
    ]


# -- fencing ---------------------------------------------------------------------------


def fence_token(lease: Lease | None) -> str | None:
    """
    The token a fenced write checks (None: unfenced).

    Raises:
        InvalidInputError: *lease* is neither None nor a :class:`Lease`.
        LeadershipLostError: *lease* was never held.
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
