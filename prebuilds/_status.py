"""
Why a pool is (or is not) full: one preset's state explained in fields and
in one sentence a person reads.

:func:`explain` is pure: a preset's snapshot and the time in, a
:class:`PoolStatus` out. :func:`pool_statuses` explains every preset of a
:class:`~prebuilds.GlobalSnapshot` (invalid presets included), as
``StoreReconciler.status()`` and the ``prebuilds status`` command do.

The reason sentence is chosen by the first rule that applies, in this order
(the order is the answer to "what must change first for this pool to
fill?"):

1. ``invalid preset: …`` - the store holds a preset it cannot read;
2. ``paused: …`` - reconciliation is paused for every preset; the rest of
   the sentence is what the later rules say (``paused: 3 of 5 ready``);
3. ``draining: …`` / ``drained: …`` - the preset is inactive (template
   version no longer active, template deleted or deprecated);
4. ``validation failed: …`` - the provisioner rejected the preset;
5. ``hard-limited: …`` - the last builds all failed;
6. ``backing off until … after N failed builds``;
7. ``replacing N expired: …`` - expired instances are being deleted;
8. ``shrinking: …`` - more running than desired;
9. ``A of D ready, …`` - below target, with what is on its way;
10. ``full: D of D ready`` (``empty: none wanted`` when *desired* is 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import attrs

from prebuilds import _validate as v
from prebuilds._calculate import backoff_until, calculate_state
from prebuilds._model import (
    GlobalSnapshot,
    InvalidPreset,
    Preset,
    PresetSnapshot,
    PresetStatus,
)
from prebuilds._pool import PoolFacts, derive
from prebuilds._records import BuildStatus
from prebuilds._schedule import load_zone, next_change
from prebuilds._validate import (
    check_aware,
    check_bool,
    check_delta,
    check_instance,
    check_int,
    check_optional_str,
    check_str,
)
from prebuilds.exceptions import InvalidInputError


__all__ = [
    "PoolStatus",
    "explain",
    "pool_statuses",
    "statuses_from_facts",
    "with_last_error",
]


def _optional_change(
    _inst: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2):  # noqa: PLR2004 - a pair
        raise InvalidInputError(
            attribute.name, value, "must be a (datetime, int) pair or None"
        )
    v.check_aware(attribute.name, value[0])
    v.check_int(attribute.name, value[1], minimum=0, maximum=v.MAX_INSTANCES)


def _change(value: Any) -> Any:
    # A list from JSON or a caller is accepted as the pair it stands for.
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class PoolStatus:
    """
    One preset's pool explained: its counts, what holds it back, and a
    sentence that says why it is (or is not) full.

    Attributes:
        preset_id: The preset.
        preset_name: Its name (``""`` when unnamed or unreadable).
        template_id: Its template (``None`` for an unreadable preset).
        template_name: Its template's name.
        organization_id: The template's organisation, if any.
        at: When the status was worked out.
        desired: How many instances the pool wants now (0 when inactive or
            unreadable).
        desired_source: Where *desired* comes from: ``"base"`` (the preset's
            ``desired_instances``), ``"schedule: <cron>"`` (the schedule whose
            window contains *at*), ``"inactive"`` or ``"invalid"``.
        next_change: When the desired count next changes and to what
            (``(when, count)``, *when* in UTC), or ``None``.
        running: Running prebuilds that have not expired (ready or not).
        eligible: Of those, the ready ones a claim may take (0 when inactive).
        starting: Start builds pending or running.
        stopping: Stop builds pending or running.
        deleting: Delete builds pending or running.
        expired: Running prebuilds that expired (TTL or invalidation).
        failed_kept: Pooled instances whose latest build failed, kept as
            evidence until ``delete_failed()``.
        pending_old_versions: Queued creations of a version no longer active.
        backoff_until: Until when creation waits after failures, while it
            does; else ``None``.
        recent_failures: Failed creations within the backoff look-back.
        hard_limited: Whether the last builds all failed (creation stops).
        validation_error: Why the preset is unusable: the store's reading
            error, or the provisioner's rejection; else ``None``.
        paused: Whether reconciliation is paused.
        last_error: The last error the reconciler met for this preset, if
            it keeps one (``StoreReconciler``: until the pool is next full).
        reason: One sentence a person reads (see :func:`explain`).

    .. versionadded:: 0.2.0
    """

    preset_id: UUID = attrs.field(validator=v.uuid_)
    preset_name: str = attrs.field(default="", validator=v.name)
    template_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    template_name: str = attrs.field(default="", validator=v.name)
    organization_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    at: datetime = attrs.field(validator=v.aware)
    desired: int = attrs.field(default=0, validator=v.count)
    desired_source: str = attrs.field(default="base", validator=v.string)
    next_change: tuple[datetime, int] | None = attrs.field(
        default=None, converter=_change, validator=_optional_change
    )
    running: int = attrs.field(default=0, validator=v.count)
    eligible: int = attrs.field(default=0, validator=v.count)
    starting: int = attrs.field(default=0, validator=v.count)
    stopping: int = attrs.field(default=0, validator=v.count)
    deleting: int = attrs.field(default=0, validator=v.count)
    expired: int = attrs.field(default=0, validator=v.count)
    failed_kept: int = attrs.field(default=0, validator=v.count)
    pending_old_versions: int = attrs.field(default=0, validator=v.count)
    backoff_until: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )
    recent_failures: int = attrs.field(default=0, validator=v.count)
    hard_limited: bool = attrs.field(default=False, validator=v.flag)
    validation_error: str | None = attrs.field(default=None, validator=v.optional_text)
    paused: bool = attrs.field(default=False, validator=v.flag)
    last_error: str | None = attrs.field(default=None, validator=v.optional_text)
    reason: str = attrs.field(default="", validator=v.text)

    def to_dict(self) -> dict[str, Any]:
        """
        The status as JSON data: every field by name, UUIDs and datetimes
        (ISO 8601) as strings, *next_change* as ``{"at": …, "count": …}`` or
        ``None``.
        """
        document: dict[str, Any] = {}
        for field in attrs.fields(PoolStatus):
            value = getattr(self, field.name)
            if isinstance(value, UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif field.name == "next_change" and value is not None:
                value = {"at": value[0].isoformat(), "count": value[1]}
            document[field.name] = value
        return document


def explain(
    snapshot: PresetSnapshot | InvalidPreset,
    *,
    now: datetime,
    backoff_interval: timedelta,
    hard_limit: int = 3,
    paused: bool = False,
    failed_kept: int = 0,
    last_error: str | None = None,
    template_name: str = "",
) -> PoolStatus:
    """
    Explain one preset's pool at *now*: its counts and why it is (or is not)
    full.

    Pure: the same arguments give the same status. The counts follow
    :func:`~prebuilds.calculate_state`, the backoff
    :func:`~prebuilds.backoff_until`, the desired count and its next change
    :func:`~prebuilds.desired_instances` and :func:`~prebuilds.next_change`.

    Args:
        snapshot: The preset's snapshot, or the store's account of a preset
            it could not read (:class:`~prebuilds.InvalidPreset`).
        now: The time the status is for.
        backoff_interval: The reconciler's backoff per recent failure.
        hard_limit: The reconciler's hard limit (for the reason's wording).
        paused: Whether reconciliation is paused.
        failed_kept: Pooled instances whose latest build failed (a snapshot
            does not carry them).
        last_error: The last error met while reconciling the preset.
        template_name: The template's name (a snapshot does not carry it).

    Returns:
        The status; its ``reason`` follows the precedence in this module's
        documentation: invalid, paused, draining, validation failed,
        hard-limited, backing off, replacing expired, shrinking, below
        target, full.

    Raises:
        InvalidInputError: naming the argument: a snapshot of the wrong type,
            a naive *now*, a *backoff_interval* out of range, a negative
            count.
    """
    if not isinstance(snapshot, (PresetSnapshot, InvalidPreset)):
        raise InvalidInputError(
            "snapshot", snapshot, "must be a PresetSnapshot or an InvalidPreset"
        )
    check_aware("now", now)
    check_delta("backoff_interval", backoff_interval)
    check_int("hard_limit", hard_limit, minimum=0, maximum=v.MAX_INSTANCES)
    check_bool("paused", paused)
    check_int("failed_kept", failed_kept, minimum=0, maximum=v.MAX_COUNT)
    check_optional_str("last_error", last_error, max_length=v.MAX_TEXT_LENGTH)
    check_str("template_name", template_name, max_length=v.MAX_NAME_LENGTH)
    if isinstance(snapshot, InvalidPreset):
        error = f"{snapshot.reason} ({snapshot.field}={snapshot.value})"
        return PoolStatus(
            preset_id=snapshot.preset_id,
            template_name=template_name,
            at=now,
            desired_source="invalid",
            failed_kept=failed_kept,
            validation_error=error,
            paused=paused,
            last_error=last_error,
            reason=f"invalid preset: {error}",
        )
    preset = snapshot.preset
    state = calculate_state(snapshot, now=now)
    until = backoff_until(snapshot, backoff_interval=backoff_interval)
    if until is not None and now > until:
        until = None
    validation_error = (
        (last_error or "the provisioner rejected the preset")
        if preset.status is PresetStatus.VALIDATION_FAILED
        else None
    )
    status = PoolStatus(
        preset_id=preset.id,
        preset_name=preset.name,
        template_id=preset.template_id,
        template_name=template_name,
        organization_id=preset.organization_id,
        at=now,
        desired=state.desired,
        desired_source=_source(preset, now),
        next_change=next_change(preset, after=now) if preset.is_active else None,
        running=len(snapshot.running),
        eligible=state.eligible,
        starting=state.starting,
        stopping=state.stopping,
        deleting=state.deleting,
        expired=state.expired,
        failed_kept=failed_kept,
        pending_old_versions=snapshot.pending_count,
        backoff_until=until,
        recent_failures=snapshot.backoff.num_failed if snapshot.backoff else 0,
        hard_limited=snapshot.is_hard_limited,
        validation_error=validation_error,
        paused=paused,
        last_error=last_error,
    )
    return attrs.evolve(status, reason=_reason(status, preset, hard_limit))


def pool_statuses(
    snapshot: GlobalSnapshot,
    *,
    now: datetime,
    backoff_interval: timedelta,
    hard_limit: int = 3,
    paused: bool = False,
    template_names: Mapping[UUID, str] | None = None,
    failed_kept: Mapping[UUID, int] | None = None,
    last_errors: Mapping[UUID, str] | None = None,
) -> list[PoolStatus]:
    """
    :func:`explain` for every preset of *snapshot*, the invalid ones
    included, sorted by template name, preset name and preset ID.

    *template_names* maps a template ID to its name, *failed_kept* and
    *last_errors* map a preset ID to its count and its last error (what a
    snapshot does not carry; missing keys mean none).

    Raises:
        InvalidInputError: as :func:`explain`, or *snapshot* is not a
            GlobalSnapshot.
    """
    check_instance("snapshot", snapshot, GlobalSnapshot)
    return explain_all(
        (snapshot.filter_by_preset(preset.id, now=now) for preset in snapshot.presets),
        snapshot.invalid_presets,
        now=now,
        backoff_interval=backoff_interval,
        hard_limit=hard_limit,
        paused=paused,
        template_names=template_names,
        failed_kept=failed_kept,
        last_errors=last_errors,
    )


def explain_all(
    snapshots: Iterable[PresetSnapshot],
    invalid_presets: Iterable[InvalidPreset],
    *,
    now: datetime,
    backoff_interval: timedelta,
    hard_limit: int,
    paused: bool,
    template_names: Mapping[UUID, str] | None,
    failed_kept: Mapping[UUID, int] | None,
    last_errors: Mapping[UUID, str] | None,
) -> list[PoolStatus]:
    """:func:`pool_statuses` of presets already filtered at *now*, sorted."""
    names = template_names or {}
    kept = failed_kept or {}
    errors = last_errors or {}
    statuses = [
        explain(
            preset_snapshot,
            now=now,
            backoff_interval=backoff_interval,
            hard_limit=hard_limit,
            paused=paused,
            failed_kept=kept.get(preset_snapshot.preset.id, 0),
            last_error=errors.get(preset_snapshot.preset.id),
            template_name=names.get(preset_snapshot.preset.template_id, ""),
        )
        for preset_snapshot in snapshots
    ]
    statuses.extend(
        explain(
            invalid,
            now=now,
            backoff_interval=backoff_interval,
            hard_limit=hard_limit,
            paused=paused,
            failed_kept=kept.get(invalid.preset_id, 0),
            last_error=errors.get(invalid.preset_id),
        )
        for invalid in invalid_presets
    )
    statuses.sort(key=lambda s: (s.template_name, s.preset_name, s.preset_id))
    return statuses


def with_last_error(
    status: PoolStatus, last_error: str, *, preset: Preset | None, hard_limit: int
) -> PoolStatus:
    """
    *status* as :func:`explain` gives it with *last_error* (*preset* is the
    status's preset, ``None`` for an unreadable one), without filtering the
    snapshot again.
    """
    validation_error = status.validation_error
    if preset is not None and preset.status is PresetStatus.VALIDATION_FAILED:
        validation_error = last_error
    status = attrs.evolve(
        status, last_error=last_error, validation_error=validation_error
    )
    if preset is None:
        return status
    return attrs.evolve(status, reason=_reason(status, preset, hard_limit))


def statuses_from_facts(
    facts: PoolFacts,
    *,
    now: datetime,
    backoff_interval: timedelta,
    backoff_lookback: timedelta,
    hard_limit: int,
    paused: bool,
    last_errors: Mapping[UUID, str] | None = None,
) -> list[PoolStatus]:
    """
    :func:`pool_statuses` of a store's facts: derived at *now*
    (:func:`~prebuilds.derive`), with the template names and the failed
    instances kept that the facts carry.

    Raises:
        InvalidInputError: as :func:`~prebuilds.derive` and :func:`explain`.
    """
    snapshot = derive(
        facts, now=now, backoff_lookback=backoff_lookback, hard_limit=hard_limit
    )
    failed_kept: Counter[UUID] = Counter(
        i.preset_id for i in facts.instances if i.latest_status is BuildStatus.FAILED
    )
    return pool_statuses(
        snapshot,
        now=now,
        backoff_interval=backoff_interval,
        hard_limit=hard_limit,
        paused=paused,
        template_names={f.template.id: f.template.name for f in facts.presets},
        failed_kept=failed_kept,
        last_errors=last_errors,
    )


# -- the sentence ------------------------------------------------------------------


def _source(preset: Preset, now: datetime) -> str:
    """Where the preset's desired count comes from at *now*."""
    if not preset.is_active:
        return "inactive"
    if preset.schedules and preset.scheduling_timezone:
        local = now.astimezone(load_zone(preset.scheduling_timezone))
        for schedule in preset.schedules:
            if schedule.window.contains_local(local):
                return f"schedule: {schedule.cron}"
    return "base"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _when(moment: datetime, now: datetime) -> str:
    """*moment* in UTC: the time alone on *now*'s UTC date, else date and time."""
    utc = moment.astimezone(timezone.utc)
    clock = "%H:%M:%S" if utc.second or utc.microsecond else "%H:%M"
    same_day = utc.date() == now.astimezone(timezone.utc).date()
    return utc.strftime(clock if same_day else f"%Y-%m-%d {clock}") + " UTC"


def _progress(status: PoolStatus) -> str:
    """``A of D ready`` and what else is going on: ``, 2 starting, …``."""
    parts = [f"{status.eligible} of {status.desired} ready"]
    not_ready = status.running - status.eligible
    if not_ready:
        parts.append(f"{not_ready} not ready yet")
    if status.starting:
        parts.append(f"{status.starting} starting")
    missing = status.desired - status.running - status.starting
    if missing > 0 and not (status.paused or status.hard_limited):
        parts.append(f"{missing} to create")
    if status.deleting:
        parts.append(f"{status.deleting} deleting")
    return ", ".join(parts)


def _draining(status: PoolStatus, preset: Preset) -> str:
    left = status.running + status.expired + status.starting + status.deleting
    if left or status.pending_old_versions:
        return f"draining: {_inactive_why(preset)}, {left} left"
    return f"drained: {_inactive_why(preset)}"


def _inactive_why(preset: Preset) -> str:
    if preset.template_deleted:
        return "template deleted"
    if preset.template_deprecated:
        return "template deprecated"
    return "template version no longer active"


def _reason(status: PoolStatus, preset: Preset, hard_limit: int) -> str:
    """The first rule of the module's precedence that applies, as a sentence."""
    text = _held_back(status, preset, hard_limit) or _sized(status)
    # Paused wins, and says what the pool would be doing otherwise.
    return f"paused: {text}" if status.paused else text


def _held_back(status: PoolStatus, preset: Preset, hard_limit: int) -> str | None:
    """Rules 3 to 6: what stops the pool from filling, if anything."""
    if not preset.is_active:
        return _draining(status, preset)
    if status.validation_error is not None:
        return (
            f"validation failed: {status.validation_error}; "
            "publish a fixed template version"
        )
    if status.hard_limited:
        return (
            f"hard-limited: the last {_plural(hard_limit, 'build')} failed; "
            "call delete_failed() to try again"
        )
    if status.backoff_until is not None:
        return (
            f"backing off until {_when(status.backoff_until, status.at)} "
            f"after {_plural(status.recent_failures, 'failed build')}"
        )
    return None


def _sized(status: PoolStatus) -> str:
    """Rules 7 to 10: the pool's size against what it wants."""
    if status.expired:
        return f"replacing {status.expired} expired: {_progress(status)}"
    if status.running > status.desired:
        extra = status.running - status.desired
        return (
            f"shrinking: {status.running} running for {status.desired} wanted, "
            f"{extra} to delete"
        )
    if status.eligible < status.desired:
        return _progress(status)
    if status.desired == 0:
        return "empty: none wanted"
    return f"full: {_progress(status)}"
