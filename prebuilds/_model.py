"""
The data the calculator reads and writes: frozen, slotted, keyword-only.

Every datetime is timezone-aware (a naive one raises InvalidInputError),
every collection a tuple, every ID a :class:`uuid.UUID`.
"""

from __future__ import annotations

import enum

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from prebuilds._schedule import (
    CronWindow,
    check_no_overlap,
    load_zone,
    parse_cron,
)
from prebuilds._validate import (
    aware,
    non_negative,
    optional_aware,
    optional_non_negative_delta,
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


def _tuple(value: Iterable[object]) -> tuple[object, ...]:
    return tuple(value)


def _frozenset(value: Iterable[UUID]) -> frozenset[UUID]:
    # A typed converter: with the generic ``frozenset`` mypy cannot infer the
    # parameter type and rejects every argument.
    return frozenset(value)


def _check_instances(
    _inst: object, attribute: attrs.Attribute[int], value: int
) -> None:
    non_negative(_inst, attribute, value)


@attrs.frozen(kw_only=True)
class PrebuildSchedule:
    """
    A cron window with the number of instances wanted inside it.

    Attributes:
        cron: Five fields, minute ``*``: ``"* 8-18 * * 1-5"``. Hours are
            whole and inclusive.
        instances: How many prebuilt instances to keep inside the window.

    Raises:
        InvalidInputError: a malformed *cron* or a negative *instances*.

    .. versionadded:: 0.1.0
    """

    cron: str
    instances: int = attrs.field(validator=_check_instances)
    window: CronWindow = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "window", parse_cron(self.cron))


def _check_name(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(attribute.name, value, "must be a string")


def _check_uuid(_inst: object, attribute: attrs.Attribute[UUID], value: UUID) -> None:
    if not isinstance(value, UUID):
        raise InvalidInputError(attribute.name, value, "must be a uuid.UUID")


def _check_optional_uuid(
    _inst: object, attribute: attrs.Attribute[UUID | None], value: UUID | None
) -> None:
    if value is not None:
        _check_uuid(_inst, attribute, value)  # type: ignore[arg-type]


def _check_parameters(
    _inst: object,
    attribute: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    pairs: tuple[object, ...] = value  # checked: callers may pass anything
    for pair in pairs:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2  # noqa: PLR2004
            or not all(isinstance(p, str) for p in pair)
        ):
            raise InvalidInputError(
                attribute.name, pair, "must be (name, value) string pairs"
            )


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
        InvalidInputError: naming the field, for a negative count, a
            negative TTL, a naive datetime, an unknown time zone or
            overlapping schedules.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=_check_uuid)
    template_id: UUID = attrs.field(validator=_check_uuid)
    template_version_id: UUID = attrs.field(validator=_check_uuid)
    desired_instances: int = attrs.field(validator=non_negative)
    name: str = attrs.field(default="", validator=_check_name)
    organization_id: UUID | None = attrs.field(
        default=None, validator=_check_optional_uuid
    )
    using_active_version: bool = True
    template_deleted: bool = False
    template_deprecated: bool = False
    ttl: timedelta | None = attrs.field(
        default=None, validator=optional_non_negative_delta
    )
    last_invalidated_at: datetime | None = attrs.field(
        default=None, validator=optional_aware
    )
    scheduling_timezone: str = attrs.field(default="", validator=_check_name)
    schedules: tuple[PrebuildSchedule, ...] = attrs.field(default=(), converter=_tuple)
    status: PresetStatus = attrs.field(
        default=PresetStatus.HEALTHY,
        validator=attrs.validators.instance_of(PresetStatus),
    )
    parameters: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_tuple, validator=_check_parameters
    )

    def __attrs_post_init__(self) -> None:
        if self.scheduling_timezone:
            load_zone(self.scheduling_timezone)
        for schedule in self.schedules:
            if not isinstance(schedule, PrebuildSchedule):
                raise InvalidInputError(
                    "schedules", schedule, "must be PrebuildSchedule objects"
                )
        check_no_overlap(self.schedules)

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

    id: UUID
    preset_id: UUID
    created_at: datetime = attrs.field(validator=aware)
    ready: bool = False
    name: str = ""
    template_id: UUID | None = None
    template_version_id: UUID | None = None


@attrs.frozen(kw_only=True)
class InProgressCount:
    """
    How many builds of a preset with one transition are pending or running.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID
    transition: Transition = attrs.field(
        validator=attrs.validators.instance_of(Transition)
    )
    count: int = attrs.field(validator=non_negative)
    template_id: UUID | None = None
    template_version_id: UUID | None = None


@attrs.frozen(kw_only=True)
class PendingCount:
    """
    How many creation builds of an *inactive* preset are still queued.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID
    count: int = attrs.field(validator=non_negative)


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

    preset_id: UUID
    num_failed: int = attrs.field(validator=non_negative)
    last_build_at: datetime = attrs.field(validator=aware)


@attrs.frozen(kw_only=True)
class InvalidPreset:
    """
    A preset a store could not turn into a valid :class:`Preset`.

    The reconciler reports it and skips it; the rest reconcile.

    .. versionadded:: 0.1.0
    """

    preset_id: UUID
    field: str
    value: str
    reason: str


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

    .. versionadded:: 0.1.0
    """

    preset: Preset
    running: tuple[RunningPrebuild, ...] = attrs.field(default=(), converter=_tuple)
    expired: tuple[RunningPrebuild, ...] = attrs.field(default=(), converter=_tuple)
    in_progress: tuple[InProgressCount, ...] = attrs.field(default=(), converter=_tuple)
    pending_count: int = attrs.field(default=0, validator=non_negative)
    backoff: Backoff | None = None
    is_hard_limited: bool = False


def expired_at(
    *,
    created_at: datetime,
    ttl: timedelta | None,
    last_invalidated_at: datetime | None,
    now: datetime,
) -> bool:
    """
    The expiry rule: created strictly before *last_invalidated_at*, or older
    than a non-zero *ttl* (strictly) at *now*.
    """
    if last_invalidated_at is not None and created_at < last_invalidated_at:
        return True
    return ttl is not None and bool(ttl) and now - created_at > ttl


def is_expired(preset: Preset, prebuild: RunningPrebuild, now: datetime) -> bool:
    """
    Whether *prebuild* has expired at *now*: created strictly before the
    preset's invalidation, or older than a non-zero TTL (strictly).
    """
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

    .. versionadded:: 0.1.0
    """

    presets: tuple[Preset, ...] = attrs.field(default=(), converter=_tuple)
    running: tuple[RunningPrebuild, ...] = attrs.field(default=(), converter=_tuple)
    in_progress: tuple[InProgressCount, ...] = attrs.field(default=(), converter=_tuple)
    pending: tuple[PendingCount, ...] = attrs.field(default=(), converter=_tuple)
    backoffs: tuple[Backoff, ...] = attrs.field(default=(), converter=_tuple)
    hard_limited: frozenset[UUID] = attrs.field(
        default=frozenset(), converter=_frozenset
    )
    invalid_presets: tuple[InvalidPreset, ...] = attrs.field(
        default=(), converter=_tuple
    )
    _index: _Index = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", _Index.build(self))

    def filter_by_preset(self, preset_id: UUID, *, now: datetime) -> PresetSnapshot:
        """
        The snapshot of one preset at *now*.

        Its running prebuilds are split into non-expired and expired, input
        order kept in each; the pending count and backoff are the first rows
        for the preset.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            InvalidInputError: *now* is naive.
        """
        from prebuilds._validate import check_aware  # noqa: PLC0415

        check_aware("now", now)
        index = self._index
        preset = index.presets.get(preset_id)
        if preset is None:
            raise PresetNotFoundError(preset_id)
        running: list[RunningPrebuild] = []
        expired: list[RunningPrebuild] = []
        for prebuild in index.running.get(preset_id, ()):
            (expired if is_expired(preset, prebuild, now) else running).append(prebuild)
        return PresetSnapshot(
            preset=preset,
            running=running,
            expired=expired,
            in_progress=index.in_progress.get(preset_id, ()),
            pending_count=index.pending.get(preset_id, 0),
            backoff=index.backoffs.get(preset_id),
            is_hard_limited=preset_id in self.hard_limited,
        )


@attrs.frozen
class _Index:
    """Per-preset lookups, built once so that filtering is O(rows of one preset)."""

    presets: dict[UUID, Preset]
    running: dict[UUID, list[RunningPrebuild]]
    in_progress: dict[UUID, list[InProgressCount]]
    pending: dict[UUID, int]
    backoffs: dict[UUID, Backoff]

    @classmethod
    def build(cls, snapshot: GlobalSnapshot) -> _Index:
        presets: dict[UUID, Preset] = {}
        for preset in snapshot.presets:
            presets.setdefault(preset.id, preset)
        running: dict[UUID, list[RunningPrebuild]] = {}
        for prebuild in snapshot.running:
            running.setdefault(prebuild.preset_id, []).append(prebuild)
        in_progress: dict[UUID, list[InProgressCount]] = {}
        for row in snapshot.in_progress:
            in_progress.setdefault(row.preset_id, []).append(row)
        pending: dict[UUID, int] = {}
        for pending_row in snapshot.pending:
            pending.setdefault(pending_row.preset_id, pending_row.count)
        backoffs: dict[UUID, Backoff] = {}
        for backoff in snapshot.backoffs:
            backoffs.setdefault(backoff.preset_id, backoff)
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

    actual: int = 0
    expired: int = 0
    desired: int = 0
    eligible: int = 0
    extraneous: int = 0
    starting: int = 0
    stopping: int = 0
    deleting: int = 0


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

    action_type: ActionType
    create: int = 0
    delete_ids: tuple[UUID, ...] = attrs.field(default=(), converter=_tuple)
    backoff_until: datetime | None = None

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
