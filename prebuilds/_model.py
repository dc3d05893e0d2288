"""
The data the calculator reads and writes: frozen, slotted, keyword-only.

Every datetime is timezone-aware (a naive one raises InvalidInputError),
every collection a tuple, every ID a :class:`uuid.UUID`.
"""

from __future__ import annotations

import enum

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from prebuilds import _validate as v
from prebuilds._schedule import (
    CronWindow,
    check_no_overlap,
    load_zone,
    parse_cron,
)
from prebuilds._validate import (
    MAX_SCHEDULES,
    check_aware,
    check_items,
    check_str,
    check_uuid,
    tuple_of,
)
from prebuilds.exceptions import InvalidInputError, PresetNotFoundError


if TYPE_CHECKING:
    from collections.abc import Iterable


class PresetStatus(enum.Enum):
    """
    What the reconciler last recorded about a preset's health.

    .. versionadded:: 0.1.0
    """

    HEALTHY = "healthy"
    HARD_LIMITED = "hard_limited"
    VALIDATION_FAILED = "validation_failed"


class Transition(enum.Enum):
    """
    What a build does to an instance.

    .. versionadded:: 0.1.0
    """

    START = "start"
    STOP = "stop"
    DELETE = "delete"


class ActionType(enum.Enum):
    """
    The kind of a reconciliation action.

    .. versionadded:: 0.1.0
    """

    CREATE = "create"
    DELETE = "delete"
    BACKOFF = "backoff"
    CANCEL_PENDING = "cancel_pending"


# Typed converters: mypy reads a field's argument type from its converter. A
# value that is not a collection is passed on, for the validator to refuse by
# name.
def _frozenset(value: Iterable[UUID]) -> frozenset[UUID]:
    items = tuple_of(value)
    return frozenset(items) if isinstance(items, tuple) else items


def _uuids(value: Iterable[UUID]) -> tuple[UUID, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _schedules(value: Iterable[PrebuildSchedule]) -> tuple[PrebuildSchedule, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _pairs(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _prebuilds(value: Iterable[RunningPrebuild]) -> tuple[RunningPrebuild, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _in_progress(value: Iterable[InProgressCount]) -> tuple[InProgressCount, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _presets(value: Iterable[Preset]) -> tuple[Preset, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _pending(value: Iterable[PendingCount]) -> tuple[PendingCount, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _backoffs(value: Iterable[Backoff]) -> tuple[Backoff, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _invalid(value: Iterable[InvalidPreset]) -> tuple[InvalidPreset, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _check_ids(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, frozenset):
        raise InvalidInputError(attribute.name, value, "must be a set of uuid.UUID")
    for item in value:
        check_uuid(attribute.name, item)


def check_schedules(
    scheduling_timezone: object, schedules: tuple[PrebuildSchedule, ...]
) -> None:
    """
    The schedule rules of a preset (shared by :class:`Preset` and
    ``PresetConfig``): a known time zone (or ``""``), at most
    :data:`~prebuilds._validate.MAX_SCHEDULES` schedules, none overlapping.

    Raises:
        InvalidInputError: on ``scheduling_timezone`` or ``schedules``.
    """
    zone = check_str("scheduling_timezone", scheduling_timezone)
    if zone:
        load_zone(zone)
    check_items("schedules", schedules, PrebuildSchedule, max_items=MAX_SCHEDULES)
    check_no_overlap(schedules)


@attrs.frozen(kw_only=True)
class PrebuildSchedule:
    """
    A cron window with the number of instances wanted inside it.

    Attributes:
        cron: Five fields, minute ``*``: ``"* 8-18 * * 1-5"``. Hours are
            whole and inclusive.
        instances: How many prebuilt instances to keep inside the window.

    Raises:
        InvalidInputError: a malformed *cron*, or *instances* that is not an
            int from 0 to 10,000.

    .. versionadded:: 0.1.0
    """

    cron: str = attrs.field(validator=v.name)
    instances: int = attrs.field(validator=v.instances)
    window: CronWindow = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "window", parse_cron(self.cron))


@attrs.frozen(kw_only=True)
class Preset:
    """
    A pool's configuration, as the calculator sees it.

    Attributes:
        id: The preset's ID.
        template_id: The template the preset's version belongs to.
        template_version_id: The template version the preset belongs to.
        desired_instances: The base pool size, used outside every schedule.
        name: A human name, for logs and metrics.
        organization_id: The owning organisation, if the host has any.
        using_active_version: Whether the preset's version is the template's
            active one.
        template_deleted: Whether the template is deleted.
        template_deprecated: Whether the template is deprecated.
        ttl: Pooled instances older than this expire (``None`` or zero:
            never).
        last_invalidated_at: Pooled instances created before this expire.
        scheduling_timezone: IANA zone the schedules are read in (``""``:
            schedules are not evaluated).
        schedules: Windows that override *desired_instances*; they must not
            overlap.
        status: What the reconciler last recorded about the preset.
        parameters: ``(name, value)`` pairs the preset fixes.

    Raises:
        InvalidInputError: naming the field: an ID that is not a UUID, a
            flag that is not a bool, a count, TTL or name out of range, a
            naive datetime, an unknown time zone, a schedule that is not a
            :class:`PrebuildSchedule`, overlapping schedules, a parameter
            named twice (see :doc:`/limits`).

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    template_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    desired_instances: int = attrs.field(validator=v.instances)
    name: str = attrs.field(default="", validator=v.name)
    organization_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    using_active_version: bool = attrs.field(default=True, validator=v.flag)
    template_deleted: bool = attrs.field(default=False, validator=v.flag)
    template_deprecated: bool = attrs.field(default=False, validator=v.flag)
    ttl: timedelta | None = attrs.field(default=None, validator=v.optional_duration)
    last_invalidated_at: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )
    scheduling_timezone: str = attrs.field(default="")
    schedules: tuple[PrebuildSchedule, ...] = attrs.field(
        default=(), converter=_schedules
    )
    status: PresetStatus = attrs.field(
        default=PresetStatus.HEALTHY, validator=v.enum_of(PresetStatus)
    )
    parameters: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs, validator=v.parameters
    )

    def __attrs_post_init__(self) -> None:
        check_schedules(self.scheduling_timezone, self.schedules)

    @property
    def is_active(self) -> bool:
        """On the active version of a template neither deleted nor deprecated."""
        return (
            self.using_active_version
            and not self.template_deleted
            and not self.template_deprecated
        )


@attrs.frozen(kw_only=True)
class RunningPrebuild:
    """
    A pooled instance whose latest build is a successful start.

    Attributes:
        id: The instance's ID.
        preset_id: The preset it was built from.
        created_at: When the instance was created (not when it became ready).
        ready: Whether it is ready to hand out.
        name: The instance's name.
        template_id: Its template.
        template_version_id: The version of its latest build.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    preset_id: UUID = attrs.field(validator=v.uuid_)
    created_at: datetime = attrs.field(validator=v.aware)
    ready: bool = attrs.field(default=False, validator=v.flag)
    name: str = attrs.field(default="", validator=v.name)
    template_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    template_version_id: UUID | None = attrs.field(
        default=None, validator=v.optional_uuid
    )


@attrs.frozen(kw_only=True)
class InProgressCount:
    """
    How many builds of a preset with one transition are pending or running.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID = attrs.field(validator=v.uuid_)
    transition: Transition = attrs.field(validator=v.enum_of(Transition))
    count: int = attrs.field(validator=v.count)
    template_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    template_version_id: UUID | None = attrs.field(
        default=None, validator=v.optional_uuid
    )


@attrs.frozen(kw_only=True)
class PendingCount:
    """
    How many creation builds of an *inactive* preset are still queued.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID = attrs.field(validator=v.uuid_)
    count: int = attrs.field(validator=v.count)


@attrs.frozen(kw_only=True)
class Backoff:
    """
    Recent creation failures of a preset.

    Attributes:
        preset_id: The preset.
        num_failed: Failed creation builds in the look-back window.
        last_build_at: When the latest of them was created.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID = attrs.field(validator=v.uuid_)
    num_failed: int = attrs.field(validator=v.count)
    last_build_at: datetime = attrs.field(validator=v.aware)


@attrs.frozen(kw_only=True)
class InvalidPreset:
    """
    A preset a store could not turn into a valid :class:`Preset`.

    The reconciler reports it and skips it; the rest reconcile.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID = attrs.field(validator=v.uuid_)
    field: str = attrs.field(validator=v.string)
    value: str = attrs.field(validator=v.string)
    reason: str = attrs.field(validator=v.string)


@attrs.frozen(kw_only=True)
class PresetSnapshot:
    """
    One preset's pool, as the calculator sees it.

    Attributes:
        preset: The preset.
        running: Its non-expired running prebuilds.
        expired: Its expired running prebuilds.
        in_progress: Its pending or running builds, by transition.
        pending_count: Queued creations of an inactive version.
        backoff: Recent failures, if any.
        is_hard_limited: Whether the last builds all failed.

    Raises:
        InvalidInputError: naming the field: a prebuild listed twice (in
            *running*, or in both *running* and *expired*), a prebuild or
            row of another preset, two in-progress rows of one transition,
            an item of the wrong type.

    .. versionadded:: 0.1.0
    """

    preset: Preset = attrs.field(validator=v.instance_of(Preset))
    running: tuple[RunningPrebuild, ...] = attrs.field(
        default=(), converter=_prebuilds, validator=v.items_of(RunningPrebuild)
    )
    expired: tuple[RunningPrebuild, ...] = attrs.field(
        default=(), converter=_prebuilds, validator=v.items_of(RunningPrebuild)
    )
    in_progress: tuple[InProgressCount, ...] = attrs.field(
        default=(), converter=_in_progress, validator=v.items_of(InProgressCount)
    )
    pending_count: int = attrs.field(default=0, validator=v.count)
    backoff: Backoff | None = attrs.field(
        default=None, validator=v.optional_instance_of(Backoff)
    )
    is_hard_limited: bool = attrs.field(default=False, validator=v.flag)

    def __attrs_post_init__(self) -> None:
        # A prebuild listed twice would be counted twice (and the only one
        # of a pool deleted as extraneous); one of another preset would be
        # deleted from a pool it does not belong to.
        preset_id = self.preset.id
        seen: set[UUID] = set()
        for field in ("running", "expired"):
            prebuilds: tuple[RunningPrebuild, ...] = getattr(self, field)
            for prebuild in prebuilds:
                if prebuild.id in seen:
                    raise InvalidInputError(
                        field, prebuild.id, "two running prebuilds have this ID"
                    )
                seen.add(prebuild.id)
                if prebuild.preset_id != preset_id:
                    raise InvalidInputError(
                        field, prebuild.id, "belongs to another preset"
                    )
        # Rows of one transition for two template versions add up; the same
        # transition and version twice would count its builds twice.
        keys: set[tuple[Transition, UUID | None]] = set()
        for row in self.in_progress:
            if row.preset_id != preset_id:
                raise InvalidInputError(
                    "in_progress", row.preset_id, "belongs to another preset"
                )
            key = (row.transition, row.template_version_id)
            if key in keys:
                raise InvalidInputError(
                    "in_progress",
                    row.transition,
                    "two rows have this transition and template version",
                )
            keys.add(key)
        if self.backoff is not None and self.backoff.preset_id != preset_id:
            raise InvalidInputError(
                "backoff", self.backoff.preset_id, "belongs to another preset"
            )


def expiry_cutoff(
    *,
    ttl: timedelta | None,
    last_invalidated_at: datetime | None,
    now: datetime,
) -> datetime | None:
    """
    The expiry rule, in one place: a pooled instance is expired at *now*
    when it was created strictly before the instant this returns, the later
    of *last_invalidated_at* and ``now - ttl`` (a *ttl* of None or zero adds
    nothing); ``None`` when nothing expires.

    So an instance exactly *ttl* old, or created exactly at the invalidation,
    is not expired. The calculator's snapshots, the claimer's cut-off and the
    testing kit all use it. An instant before the earliest one a store holds
    (1970) expires nothing, so it is never returned: a store may compare with
    the cut-off as it is.

    Raises:
        InvalidInputError: a naive datetime, or a *ttl* out of range.

    .. versionadded:: 0.2.0
    """
    check_aware("now", now)
    v.check_optional_aware("last_invalidated_at", last_invalidated_at)
    v.check_optional_delta("ttl", ttl)
    by_age = now - ttl if ttl else None
    if by_age is not None and by_age <= v.MIN_DATETIME:
        by_age = None  # nothing was created before it
    if last_invalidated_at is None:
        return by_age
    if by_age is None:
        return last_invalidated_at
    return max(last_invalidated_at, by_age)


def expired_at(
    *,
    created_at: datetime,
    ttl: timedelta | None,
    last_invalidated_at: datetime | None,
    now: datetime,
) -> bool:
    """Whether an instance created at *created_at* is expired (:func:`expiry_cutoff`)."""
    cutoff = expiry_cutoff(ttl=ttl, last_invalidated_at=last_invalidated_at, now=now)
    return cutoff is not None and created_at < cutoff


def is_expired(preset: Preset, prebuild: RunningPrebuild, now: datetime) -> bool:
    """
    Whether *prebuild* has expired at *now*: created strictly before the
    preset's invalidation, or older than a non-zero TTL (strictly).

    Raises:
        InvalidInputError: an argument of the wrong type, or a naive *now*.
    """
    v.check_instance("preset", preset, Preset)
    v.check_instance("prebuild", prebuild, RunningPrebuild)
    check_aware("now", now)
    return expired_at(
        created_at=prebuild.created_at,
        ttl=preset.ttl,
        last_invalidated_at=preset.last_invalidated_at,
        now=now,
    )


@attrs.frozen(kw_only=True)
class GlobalSnapshot:
    """
    One consistent read of every pool.

    Attributes:
        presets: Every preset with prebuilds configured.
        running: Every running prebuild.
        in_progress: Pending or running builds per preset and transition.
        pending: Queued creations of inactive presets.
        backoffs: Presets with recent failures.
        hard_limited: IDs of presets whose last builds all failed.
        invalid_presets: Presets a store could not read (reported, skipped).

    Raises:
        InvalidInputError: naming the field and the ID: two presets (valid or
            invalid) of one ID, a running prebuild listed twice, two pending
            or backoff rows of one preset, two in-progress rows of one preset
            and transition, an item of the wrong type.

    .. versionadded:: 0.1.0
    """

    presets: tuple[Preset, ...] = attrs.field(
        default=(), converter=_presets, validator=v.items_of(Preset)
    )
    running: tuple[RunningPrebuild, ...] = attrs.field(
        default=(), converter=_prebuilds, validator=v.items_of(RunningPrebuild)
    )
    in_progress: tuple[InProgressCount, ...] = attrs.field(
        default=(), converter=_in_progress, validator=v.items_of(InProgressCount)
    )
    pending: tuple[PendingCount, ...] = attrs.field(
        default=(), converter=_pending, validator=v.items_of(PendingCount)
    )
    backoffs: tuple[Backoff, ...] = attrs.field(
        default=(), converter=_backoffs, validator=v.items_of(Backoff)
    )
    hard_limited: frozenset[UUID] = attrs.field(
        default=frozenset(), converter=_frozenset, validator=_check_ids
    )
    invalid_presets: tuple[InvalidPreset, ...] = attrs.field(
        default=(), converter=_invalid, validator=v.items_of(InvalidPreset)
    )
    _index: _Index = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", _Index.build(self))

    def filter_by_preset(self, preset_id: UUID, *, now: datetime) -> PresetSnapshot:
        """
        The snapshot of one preset at *now*.

        Its running prebuilds are split into non-expired and expired, input
        order kept in each.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            InvalidInputError: *preset_id* is not a UUID or *now* is naive.
        """
        check_uuid("preset_id", preset_id)
        check_aware("now", now)
        index = self._index
        preset = index.presets.get(preset_id)
        if preset is None:
            raise PresetNotFoundError(preset_id)
        running: list[RunningPrebuild] = []
        expired: list[RunningPrebuild] = []
        cutoff = expiry_cutoff(
            ttl=preset.ttl, last_invalidated_at=preset.last_invalidated_at, now=now
        )
        for prebuild in index.running.get(preset_id, ()):
            gone = cutoff is not None and prebuild.created_at < cutoff
            (expired if gone else running).append(prebuild)
        return PresetSnapshot(
            preset=preset,
            running=running,
            expired=expired,
            in_progress=index.in_progress.get(preset_id, ()),
            pending_count=index.pending.get(preset_id, 0),
            backoff=index.backoffs.get(preset_id),
            is_hard_limited=preset_id in self.hard_limited,
        )


def _duplicate(field: str, value: object, what: str) -> InvalidInputError:
    return InvalidInputError(field, value, f"two {what} have this ID")


def _presets_by_id(snapshot: GlobalSnapshot) -> dict[UUID, Preset]:
    """The snapshot's presets by ID; an ID of two presets (valid or not) is refused."""
    presets: dict[UUID, Preset] = {}
    for preset in snapshot.presets:
        if preset.id in presets:
            raise _duplicate("presets", preset.id, "presets")
        presets[preset.id] = preset
    invalid: set[UUID] = set()
    for item in snapshot.invalid_presets:
        if item.preset_id in presets or item.preset_id in invalid:
            raise _duplicate("invalid_presets", item.preset_id, "presets")
        invalid.add(item.preset_id)
    return presets


@attrs.frozen
class _Index:
    """
    Per-preset lookups, built once so that filtering is O(rows of one
    preset); building it refuses an ID given twice.
    """

    presets: dict[UUID, Preset]
    running: dict[UUID, list[RunningPrebuild]]
    in_progress: dict[UUID, list[InProgressCount]]
    pending: dict[UUID, int]
    backoffs: dict[UUID, Backoff]

    @classmethod
    def build(cls, snapshot: GlobalSnapshot) -> _Index:
        presets = _presets_by_id(snapshot)
        running: dict[UUID, list[RunningPrebuild]] = {}
        running_ids: set[UUID] = set()
        for prebuild in snapshot.running:
            if prebuild.id in running_ids:
                raise _duplicate("running", prebuild.id, "running prebuilds")
            running_ids.add(prebuild.id)
            running.setdefault(prebuild.preset_id, []).append(prebuild)
        in_progress: dict[UUID, list[InProgressCount]] = {}
        for row in snapshot.in_progress:
            rows = in_progress.setdefault(row.preset_id, [])
            if any(
                other.transition is row.transition
                and other.template_version_id == row.template_version_id
                for other in rows
            ):
                raise InvalidInputError(
                    "in_progress",
                    row.preset_id,
                    "two rows have this preset, transition "
                    f"{row.transition.value!r} and template version",
                )
            rows.append(row)
        pending: dict[UUID, int] = {}
        for pending_row in snapshot.pending:
            if pending_row.preset_id in pending:
                raise _duplicate("pending", pending_row.preset_id, "pending rows")
            pending[pending_row.preset_id] = pending_row.count
        backoffs: dict[UUID, Backoff] = {}
        for backoff in snapshot.backoffs:
            if backoff.preset_id in backoffs:
                raise _duplicate("backoffs", backoff.preset_id, "backoff rows")
            backoffs[backoff.preset_id] = backoff
        return cls(presets, running, in_progress, pending, backoffs)


@attrs.frozen(kw_only=True)
class ReconciliationState:
    """
    The counts the calculator derives from a preset snapshot.

    Attributes:
        actual: Running prebuilds, expired included.
        expired: Expired running prebuilds.
        desired: The wanted pool size now (0 for an inactive preset).
        eligible: Ready, non-expired running prebuilds (0 if inactive).
        extraneous: Non-expired running prebuilds beyond *desired* (0 if
            inactive).
        starting: In-progress start builds.
        stopping: In-progress stop builds.
        deleting: In-progress delete builds.

    .. versionadded:: 0.1.0
    """

    actual: int = attrs.field(default=0, validator=v.count)
    expired: int = attrs.field(default=0, validator=v.count)
    desired: int = attrs.field(default=0, validator=v.count)
    eligible: int = attrs.field(default=0, validator=v.count)
    extraneous: int = attrs.field(default=0, validator=v.count)
    starting: int = attrs.field(default=0, validator=v.count)
    stopping: int = attrs.field(default=0, validator=v.count)
    deleting: int = attrs.field(default=0, validator=v.count)


@attrs.frozen(kw_only=True)
class ReconciliationActions:
    """
    One thing to do to a pool.

    Attributes:
        action_type: What kind of action.
        create: How many to create (``CREATE``).
        delete_ids: Which to delete, oldest first (``DELETE``).
        backoff_until: Do nothing until then (``BACKOFF``).

    .. versionadded:: 0.1.0
    """

    action_type: ActionType = attrs.field(validator=v.enum_of(ActionType))
    create: int = attrs.field(default=0, validator=v.count)
    delete_ids: tuple[UUID, ...] = attrs.field(
        default=(), converter=_uuids, validator=v.items_of(UUID)
    )
    backoff_until: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )

    @property
    def is_noop(self) -> bool:
        """True when nothing is to be done (``CANCEL_PENDING`` never is)."""
        return (
            self.action_type is not ActionType.CANCEL_PENDING
            and self.create == 0
            and not self.delete_ids
            and self.backoff_until is None
        )


@attrs.frozen(kw_only=True)
class ReconcileStats:
    """
    What one reconciliation pass did.

    Attributes:
        elapsed: How long the pass took.
        presets_total: Presets in the snapshot.
        presets_reconciled: Presets whose actions were executed.
        presets_failed: Presets whose execution raised (logged, counted).
        presets_invalid: Presets whose configuration could not be read.
        leader: Whether this pass held the leader lock.
        paused: Whether reconciliation was paused.
        created: Prebuilds created.
        deleted: Prebuilds deleted.
        canceled: Pending creations canceled.
        error: The error that ended the pass early, if any.

    .. versionadded:: 0.1.0
    """

    elapsed: timedelta = timedelta(0)
    presets_total: int = 0
    presets_reconciled: int = 0
    presets_failed: int = 0
    presets_invalid: int = 0
    leader: bool = False
    paused: bool = False
    created: int = 0
    deleted: int = 0
    canceled: int = 0
    error: str | None = None
