"""
Hypothesis strategies for prebuilds' data: reuse them in a host's own tests.

Every strategy draws *valid* objects only (the constructors would reject the
rest): aware datetimes, cron specs in the restricted grammar, schedule sets
that do not overlap, snapshots whose running/expired split agrees with the
``now`` they were drawn for.

>>> from hypothesis import given
>>> from prebuilds.testing import strategies
>>> @given(strategies.preset_snapshots(now=strategies.DEFAULT_NOW))
... def test_snapshot(snapshot): ...

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import itertools

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID
from zoneinfo import ZoneInfo

from prebuilds._extras import require
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    PendingCount,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    PresetStatus,
    RunningPrebuild,
    Transition,
    is_expired,
)
from prebuilds._schedule import CronWindow, parse_cron, windows_overlap


with require("testing", feature="prebuilds.testing.strategies"):
    from hypothesis import strategies as st


__all__ = [
    "DEFAULT_NOW",
    "TIME_ZONES",
    "aware_datetimes",
    "cron_specs",
    "global_snapshots",
    "preset_snapshots",
    "presets",
    "running_prebuilds",
    "schedule_sets",
    "time_zones",
    "uuids",
]

#: The instant snapshots are drawn around unless told: Monday 2024-01-01 UTC.
DEFAULT_NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)

#: A sample of IANA zones: UTC, both hemispheres' daylight saving time,
#: half-hour and 45-minute offsets and Lord Howe's half-hour DST shift.
TIME_ZONES = (
    "UTC",
    "America/Los_Angeles",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/Berlin",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
)

_BOOLEANS = st.booleans()
_NAMES = st.sampled_from(("", "default", "gpu", "my-preset", "small"))
_PARAMETERS = st.lists(
    st.tuples(
        st.sampled_from(("region", "size", "image", "zone")),
        st.sampled_from(("", "eu", "us-west-2", "large", "t3.medium")),
    ),
    max_size=3,
    unique_by=lambda pair: pair[0],
)
#: (using_active_version, template_deleted, template_deprecated) of an
#: inactive preset: every combination but (True, False, False).
_INACTIVE_FLAGS = st.sampled_from(
    (
        (False, False, False),
        (True, True, False),
        (True, False, True),
        (False, True, False),
        (False, False, True),
        (True, True, True),
        (False, True, True),
    )
)

#: (low, high) of the hour, day-of-month, month and day-of-week fields.
_BOUNDS = ((0, 23), (1, 31), (1, 12), (0, 6))


def uuids() -> st.SearchStrategy[UUID]:
    """
    IDs: any :class:`uuid.UUID`.

    .. versionadded:: 0.1.0
    """
    return st.uuids()


def time_zones() -> st.SearchStrategy[str]:
    """
    IANA time-zone names from :data:`TIME_ZONES` (shrinks towards ``"UTC"``).

    .. versionadded:: 0.1.0
    """
    return st.sampled_from(TIME_ZONES)


def aware_datetimes(
    *,
    min_value: datetime = datetime(2000, 1, 1),  # noqa: DTZ001
    max_value: datetime = datetime(2100, 1, 1),  # noqa: DTZ001
    timezones: st.SearchStrategy[timezone | ZoneInfo] | None = None,
) -> st.SearchStrategy[datetime]:
    """
    Timezone-aware datetimes between two naive bounds (read as wall times).

    Args:
        min_value: The earliest wall time.
        max_value: The latest wall time.
        timezones: The zones to attach; by default UTC, a fixed offset or
            one of :data:`TIME_ZONES`. Times that do not exist in a zone
            (skipped by a DST change) are never drawn.

    .. versionadded:: 0.1.0
    """
    if timezones is None:
        timezones = st.one_of(
            st.just(timezone.utc),
            st.sampled_from(
                (
                    timezone(timedelta(hours=-4)),
                    timezone(timedelta(hours=5, minutes=30)),
                )
            ),
            time_zones().map(ZoneInfo),
        )
    return st.datetimes(
        min_value=min_value,
        max_value=max_value,
        timezones=timezones,
        allow_imaginary=False,
    )


def _format_item(item: tuple[int, int, bool]) -> str:
    first, second, is_range = item
    low, high = min(first, second), max(first, second)
    return f"{low}-{high}" if is_range else str(first)


def _cron_field(low: int, high: int, *, star: bool) -> st.SearchStrategy[str]:
    # Built once per field (no flatmap, no composite): cheap to draw and to
    # shrink. Items are N or an inclusive range N-M; a field is "*" or 1-3
    # comma-separated items.
    value = st.integers(low, high)
    item = st.tuples(value, value, _BOOLEANS).map(_format_item)
    listing = st.lists(item, min_size=1, max_size=3).map(",".join)
    return st.one_of(st.just("*"), listing) if star else listing


#: The hour, day-of-month, month and day-of-week field strategies, with and
#: without ``*``.
_FIELDS = {
    star: tuple(_cron_field(low, high, star=star) for low, high in _BOUNDS)
    for star in (True, False)
}


def _join_fields(fields: tuple[str, ...]) -> str:
    return " ".join(("*", *fields))


def cron_specs(*, allow_star: bool = True) -> st.SearchStrategy[str]:
    """
    Cron specs in prebuilds' grammar: ``* HOUR DOM MONTH DOW``.

    Each field is ``*`` or a comma list of numbers and inclusive ranges
    within its bounds (day of week 0-6, Sunday = 0); no steps, no names.

    Args:
        allow_star: Whether the hour, day, month and weekday fields may be
            ``*``.

    .. versionadded:: 0.1.0
    """
    return st.tuples(*_FIELDS[allow_star]).map(_join_fields)


@st.composite
def _hour_partition(draw: st.DrawFn, size: int) -> list[str]:
    # Disjoint hour ranges, one per schedule: such schedules never overlap.
    cuts = sorted(
        draw(st.sets(st.integers(1, 23), min_size=size - 1, max_size=size - 1))
    )
    bounds = [0, *cuts, 24]
    hours: list[str] = []
    for start, end in itertools.pairwise(bounds):
        first = draw(st.integers(start, end - 1))
        last = draw(st.integers(first, end - 1))
        hours.append(str(first) if first == last else f"{first}-{last}")
    return hours


@st.composite
def schedule_sets(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 3,
    instances: st.SearchStrategy[int] | None = None,
) -> tuple[PrebuildSchedule, ...]:
    """
    Tuples of schedules no two of which overlap (Coder's field-wise check).

    Half the draws give each schedule its own hours; the others draw free
    specs and keep those that overlap none kept before, so sets that share
    hours but differ in days or months appear too.

    Args:
        min_size: The fewest schedules (at most 24).
        max_size: The most schedules.
        instances: The count of each schedule; by default 0 to 10.

    .. versionadded:: 0.1.0
    """
    counts = instances if instances is not None else st.integers(0, 10)
    size = draw(st.integers(min_size, max(min_size, max_size)))
    if size == 0:
        return ()
    crons: list[str] = []
    if not draw(_BOOLEANS):
        windows: list[CronWindow] = []
        for _ in range(size * 2):
            if len(crons) == size:
                break
            cron = draw(cron_specs())
            window = parse_cron(cron)
            if not any(windows_overlap(window, other) for other in windows):
                crons.append(cron)
                windows.append(window)
    if len(crons) < min_size or not crons:
        # Free draws clashed too often (or were not tried): give each
        # schedule its own hours instead.
        crons = []
        for hours in draw(_hour_partition(size)):
            rest = [draw(field) for field in _FIELDS[True][1:]]
            crons.append(" ".join(["*", hours, *rest]))
    return tuple(PrebuildSchedule(cron=cron, instances=draw(counts)) for cron in crons)


@st.composite
def presets(
    draw: st.DrawFn,
    *,
    preset_id: UUID | None = None,
    active: bool | None = None,
    desired: st.SearchStrategy[int] | None = None,
    with_ttl: bool | None = None,
    with_invalidation: bool | None = None,
    with_schedules: bool | None = None,
    statuses: Sequence[PresetStatus] = tuple(PresetStatus),
    around: datetime = DEFAULT_NOW,
) -> Preset:
    """
    Valid presets.

    Args:
        preset_id: The preset's ID; drawn when ``None``.
        active: ``True``: on the active version of a live template;
            ``False``: inactive (an old version, a deleted or a deprecated
            template, or several); ``None``: either.
        desired: The base count; by default 0 to 10.
        with_ttl: Whether a TTL is set (zero included); ``None``: either.
        with_invalidation: Whether ``last_invalidated_at`` is set (within
            two days before to an hour after *around*); ``None``: either.
        with_schedules: Whether schedules and a time zone are set; when
            ``False`` there are no schedules but the zone may be set;
            ``None``: either.
        statuses: The statuses to draw from.
        around: The time TTLs and invalidations are drawn relative to.

    .. versionadded:: 0.1.0
    """
    if active is None:
        active = draw(_BOOLEANS)
    flags = (True, False, False) if active else draw(_INACTIVE_FLAGS)
    ttl = None
    if with_ttl is None:
        with_ttl = draw(_BOOLEANS)
    if with_ttl:
        ttl = timedelta(
            seconds=draw(
                st.one_of(st.sampled_from((0, 5, 60, 3600)), st.integers(0, 2 * 86400))
            )
        )
    invalidated = None
    if with_invalidation is None:
        with_invalidation = draw(_BOOLEANS)
    if with_invalidation:
        invalidated = around + timedelta(seconds=draw(st.integers(-2 * 86400, 3600)))
    schedules: tuple[PrebuildSchedule, ...] = ()
    zone = ""
    if with_schedules is None:
        with_schedules = draw(_BOOLEANS)
    if with_schedules:
        zone = draw(time_zones())
        schedules = draw(schedule_sets(min_size=1))
    elif draw(_BOOLEANS):
        zone = draw(time_zones())
    return Preset(
        id=preset_id if preset_id is not None else draw(uuids()),
        template_id=draw(uuids()),
        template_version_id=draw(uuids()),
        desired_instances=draw(desired if desired is not None else st.integers(0, 10)),
        name=draw(_NAMES),
        organization_id=draw(st.none() | uuids()),
        using_active_version=flags[0],
        template_deleted=flags[1],
        template_deprecated=flags[2],
        ttl=ttl,
        last_invalidated_at=invalidated,
        scheduling_timezone=zone,
        schedules=schedules,
        status=draw(st.sampled_from(tuple(statuses))),
        parameters=tuple(draw(_PARAMETERS)),
    )


@st.composite
def running_prebuilds(
    draw: st.DrawFn,
    preset_id: UUID,
    *,
    now: datetime = DEFAULT_NOW,
    min_size: int = 0,
    max_size: int = 10,
    max_age: timedelta = timedelta(days=2),
) -> tuple[RunningPrebuild, ...]:
    """
    Running prebuilds of one preset with distinct IDs, created at or before
    *now* (ages of whole seconds up to *max_age*; equal ages are common, to
    exercise the tie-break by ID).

    .. versionadded:: 0.1.0
    """
    ids = draw(st.lists(uuids(), min_size=min_size, max_size=max_size, unique=True))
    top = int(max_age.total_seconds())
    ages = st.one_of(st.sampled_from((0, 1, 5, 60, 3600)), st.integers(0, top))
    return tuple(
        RunningPrebuild(
            id=prebuild_id,
            preset_id=preset_id,
            created_at=now - timedelta(seconds=min(draw(ages), top)),
            ready=draw(_BOOLEANS),
            name=f"prebuild-{index}",
        )
        for index, prebuild_id in enumerate(ids)
    )


@st.composite
def _in_progress(draw: st.DrawFn, preset_id: UUID) -> tuple[InProgressCount, ...]:
    # One row per transition: a store groups its builds by transition.
    rows = draw(
        st.lists(
            st.tuples(st.sampled_from(tuple(Transition)), st.integers(0, 4)),
            max_size=3,
            unique_by=lambda row: row[0],
        )
    )
    return tuple(
        InProgressCount(preset_id=preset_id, transition=transition, count=count)
        for transition, count in rows
    )


@st.composite
def _backoff(draw: st.DrawFn, preset_id: UUID, now: datetime) -> Backoff:
    return Backoff(
        preset_id=preset_id,
        num_failed=draw(st.integers(0, 5)),
        last_build_at=now - timedelta(seconds=draw(st.integers(0, 600))),
    )


@st.composite
def preset_snapshots(
    draw: st.DrawFn,
    *,
    now: datetime = DEFAULT_NOW,
    preset: Preset | None = None,
    active: bool | None = None,
    backoff: bool | None = None,
    hard_limited: bool | None = None,
    pending: bool | None = None,
    in_progress: bool | None = None,
    max_running: int = 10,
) -> PresetSnapshot:
    """
    Valid preset snapshots at *now*.

    The preset's running prebuilds are split into running and expired with
    :func:`prebuilds.is_expired` at *now*, as
    :meth:`~prebuilds.GlobalSnapshot.filter_by_preset` would.

    Args:
        now: The time the split is made for.
        preset: The preset; drawn with :func:`presets` when ``None``.
        active: Passed to :func:`presets` when the preset is drawn.
        backoff: Whether there is a backoff row (``num_failed`` 0 to 5, last
            build up to ten minutes before *now*); ``None``: either.
        hard_limited: Whether the preset is hard-limited; ``None``: either.
        pending: Whether creations are queued (1 to 5); ``None``: either.
        in_progress: Whether there are in-progress rows; ``None``: either.
        max_running: The most running prebuilds, expired included.

    .. versionadded:: 0.1.0
    """
    if preset is None:
        preset = draw(presets(active=active, around=now))
    prebuilds = draw(running_prebuilds(preset.id, now=now, max_size=max_running))
    running = tuple(p for p in prebuilds if not is_expired(preset, p, now))
    expired = tuple(p for p in prebuilds if is_expired(preset, p, now))
    rows: tuple[InProgressCount, ...] = ()
    if in_progress is None:
        in_progress = draw(_BOOLEANS)
    if in_progress:
        rows = draw(_in_progress(preset.id))
    if pending is None:
        pending = draw(_BOOLEANS)
    if backoff is None:
        backoff = draw(_BOOLEANS)
    if hard_limited is None:
        hard_limited = draw(_BOOLEANS)
    return PresetSnapshot(
        preset=preset,
        running=running,
        expired=expired,
        in_progress=rows,
        pending_count=draw(st.integers(1, 5)) if pending else 0,
        backoff=draw(_backoff(preset.id, now)) if backoff else None,
        is_hard_limited=hard_limited,
    )


@st.composite
def global_snapshots(
    draw: st.DrawFn,
    *,
    now: datetime = DEFAULT_NOW,
    min_presets: int = 0,
    max_presets: int = 4,
    max_running: int = 6,
) -> GlobalSnapshot:
    """
    Valid global snapshots: presets with distinct IDs and, per preset,
    running prebuilds, in-progress rows (one per transition), at most one
    pending and one backoff row, rows of all presets interleaved.

    .. versionadded:: 0.1.0
    """
    preset_list = draw(
        st.lists(
            presets(around=now),
            min_size=min_presets,
            max_size=max_presets,
            unique_by=lambda p: p.id,
        )
    )
    running: list[RunningPrebuild] = []
    in_progress: list[InProgressCount] = []
    pending: list[PendingCount] = []
    backoffs: list[Backoff] = []
    hard_limited: set[UUID] = set()
    for preset in preset_list:
        running.extend(
            draw(running_prebuilds(preset.id, now=now, max_size=max_running))
        )
        in_progress.extend(draw(_in_progress(preset.id)))
        counts = draw(st.lists(st.integers(0, 5), max_size=1))
        pending.extend(PendingCount(preset_id=preset.id, count=c) for c in counts)
        backoffs.extend(draw(st.lists(_backoff(preset.id, now), max_size=1)))
        if draw(_BOOLEANS):
            hard_limited.add(preset.id)
    limited: frozenset[UUID] = frozenset(hard_limited)
    return GlobalSnapshot(
        presets=preset_list,
        running=draw(st.permutations(running)),
        in_progress=draw(st.permutations(in_progress)),
        pending=draw(st.permutations(pending)),
        backoffs=draw(st.permutations(backoffs)),
        hard_limited=limited,
    )
