"""
Properties of the pure calculator over every valid snapshot.

Snapshots come from the public strategies in prebuilds.testing.strategies.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import copy
import uuid

from collections import Counter
from datetime import datetime, timedelta, timezone

import attrs
import pytest

from hypothesis import assume, given
from hypothesis import strategies as st

from prebuilds import (
    ActionType,
    GlobalSnapshot,
    InvalidInputError,
    PrebuildSchedule,
    Preset,
    PresetNotFoundError,
    PresetSnapshot,
    PresetStatus,
    ReconciliationActions,
    ReconciliationState,
    RunningPrebuild,
    Transition,
    backoff_until,
    calculate_actions,
    calculate_state,
    can_skip_reconciliation,
    desired_instances,
    is_expired,
)
from prebuilds._schedule import windows_overlap
from prebuilds.testing import strategies


NOWS = strategies.aware_datetimes(
    min_value=datetime(2001, 1, 1),  # noqa: DTZ001
    max_value=datetime(2090, 1, 1),  # noqa: DTZ001
)
INTERVALS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=2))


@st.composite
def snapshots_at(
    draw: st.DrawFn,
    *,
    active: bool | None = None,
    backoff: bool | None = None,
    hard_limited: bool | None = None,
    pending: bool | None = None,
    max_running: int = 10,
) -> tuple[datetime, PresetSnapshot]:
    """A ``now`` and a snapshot drawn for it."""
    now = draw(NOWS)
    snapshot = strategies.preset_snapshots(
        now=now,
        active=active,
        backoff=backoff,
        hard_limited=hard_limited,
        pending=pending,
        max_running=max_running,
    )
    return now, draw(snapshot)


@st.composite
def validation_failed_snapshots(draw: st.DrawFn) -> tuple[datetime, PresetSnapshot]:
    """A ``now`` and a snapshot of a VALIDATION_FAILED preset, not hard-limited."""
    now = draw(NOWS)
    preset = draw(
        strategies.presets(statuses=[PresetStatus.VALIDATION_FAILED], around=now)
    )
    snapshot = strategies.preset_snapshots(now=now, preset=preset, hard_limited=False)
    return now, draw(snapshot)


def plan(
    snapshot: PresetSnapshot, now: datetime, interval: timedelta
) -> list[ReconciliationActions]:
    return calculate_actions(snapshot, now=now, backoff_interval=interval)


def created(actions: list[ReconciliationActions]) -> int:
    return sum(a.create for a in actions)


def deleted(actions: list[ReconciliationActions]) -> list[uuid.UUID]:
    return [i for a in actions for i in a.delete_ids]


def in_backoff(snapshot: PresetSnapshot, now: datetime, interval: timedelta) -> bool:
    until = backoff_until(snapshot, backoff_interval=interval)
    return until is not None and now <= until


def oldest_first(prebuilds: tuple[RunningPrebuild, ...]) -> list[uuid.UUID]:
    return [p.id for p in sorted(prebuilds, key=lambda p: (p.created_at, p.id))]


@given(case=snapshots_at(), interval=INTERVALS)
def test_never_creates_more_than_desired(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """The total created never exceeds the desired count (0 when inactive)."""
    now, snapshot = case

    actions = plan(snapshot, now, interval)

    assert created(actions) <= calculate_state(snapshot, now=now).desired


@given(case=snapshots_at(), interval=INTERVALS)
def test_deletes_only_known_prebuilds_once(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """Every deleted ID is one of the snapshot's prebuilds, and none is deleted twice."""
    now, snapshot = case
    known = {p.id for p in (*snapshot.running, *snapshot.expired)}

    ids = deleted(plan(snapshot, now, interval))

    assert set(ids) <= known
    assert len(ids) == len(set(ids))


@given(case=snapshots_at(backoff=False), interval=INTERVALS)
def test_deletes_are_oldest_first(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """
    Each Delete lists its prebuilds oldest first by (created_at, id); an
    inactive preset deletes all of them, an active one all expired and the
    oldest extraneous running ones.
    """
    now, snapshot = case
    by_id = {p.id: p for p in (*snapshot.running, *snapshot.expired)}

    deletes = [
        a for a in plan(snapshot, now, interval) if a.action_type is ActionType.DELETE
    ]

    for action in deletes:
        chosen = tuple(by_id[i] for i in action.delete_ids)
        assert oldest_first(chosen) == list(action.delete_ids)
    if not snapshot.preset.is_active:
        everything = oldest_first((*snapshot.running, *snapshot.expired))
        assert [ids for ids in [everything] if ids] == [
            list(a.delete_ids) for a in deletes
        ]
    else:
        extraneous = calculate_state(snapshot, now=now).extraneous
        expected = [
            oldest_first(snapshot.expired),
            oldest_first(snapshot.running)[:extraneous],
        ]
        assert [ids for ids in expected if ids] == [list(a.delete_ids) for a in deletes]


@given(case=snapshots_at(backoff=True), interval=INTERVALS)
def test_backoff_is_the_only_action_while_it_lasts(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """
    While ``now <= last_build_at + num_failed x interval`` (num_failed > 0)
    the only action is Backoff until then; afterwards there is none.
    """
    now, snapshot = case
    assert snapshot.backoff is not None
    until = snapshot.backoff.last_build_at + snapshot.backoff.num_failed * interval

    actions = plan(snapshot, now, interval)

    if snapshot.backoff.num_failed > 0 and now <= until:
        assert [
            ReconciliationActions(action_type=ActionType.BACKOFF, backoff_until=until)
        ] == actions
    else:
        assert [] == [a for a in actions if a.action_type is ActionType.BACKOFF]


@given(
    case=st.one_of(
        snapshots_at(hard_limited=True),
        validation_failed_snapshots(),
        snapshots_at(active=False),
    ),
    interval=INTERVALS,
)
def test_blocked_or_inactive_presets_never_create(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """A hard-limited, a VALIDATION_FAILED or an inactive preset never gets a Create."""
    now, snapshot = case

    actions = plan(snapshot, now, interval)

    assert [] == [a for a in actions if a.action_type is ActionType.CREATE]


@given(case=snapshots_at(), interval=INTERVALS)
def test_deterministic_and_pure(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """Equal inputs give equal outputs, and the inputs are left unchanged."""
    now, snapshot = case
    before = copy.deepcopy(snapshot)

    first = (calculate_state(snapshot, now=now), plan(snapshot, now, interval))
    second = (calculate_state(before, now=now), plan(before, now, interval))

    assert first == second
    assert before == snapshot
    assert first[1] is not second[1]


@given(case=snapshots_at(), interval=INTERVALS)
def test_no_noop_and_canonical_order(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """
    No returned action is a no-op, and actions come in execution order:
    [Backoff], or [CancelPending?, Delete?] if inactive, or
    [Delete(expired)?, Delete(extraneous)?, Create?] if active.
    """
    now, snapshot = case

    actions = plan(snapshot, now, interval)

    assert [] == [a for a in actions if a.is_noop]
    kinds = [a.action_type for a in actions]
    if in_backoff(snapshot, now, interval):
        assert [ActionType.BACKOFF] == kinds
    elif snapshot.preset.is_active:
        assert kinds in (
            [],
            [ActionType.DELETE],
            [ActionType.DELETE, ActionType.DELETE],
            [ActionType.DELETE, ActionType.CREATE],
            [ActionType.CREATE],
        )
        assert len(snapshot.expired) + calculate_state(
            snapshot, now=now
        ).extraneous == len(deleted(actions))
    else:
        expected = [ActionType.CANCEL_PENDING] if snapshot.pending_count else []
        if snapshot.running or snapshot.expired:
            expected.append(ActionType.DELETE)
        assert expected == kinds


@given(case=snapshots_at())
def test_state_invariants(case: tuple[datetime, PresetSnapshot]) -> None:
    """
    actual = running + expired; extraneous = max(running - desired, 0) and
    eligible = ready running for an active preset, all three 0 if inactive;
    starting/stopping/deleting sum the in-progress rows.
    """
    now, snapshot = case
    sums = Counter[Transition]()
    for row in snapshot.in_progress:
        sums[row.transition] += row.count
    running = len(snapshot.running)
    desired = desired_instances(snapshot.preset, at=now)
    active = snapshot.preset.is_active

    state = calculate_state(snapshot, now=now)

    assert (
        ReconciliationState(
            actual=running + len(snapshot.expired),
            expired=len(snapshot.expired),
            desired=desired if active else 0,
            eligible=sum(p.ready for p in snapshot.running) if active else 0,
            extraneous=max(running - desired, 0) if active else 0,
            starting=sums[Transition.START],
            stopping=sums[Transition.STOP],
            deleting=sums[Transition.DELETE],
        )
        == state
    )


@given(
    case=st.one_of(
        snapshots_at(),
        snapshots_at(active=False, backoff=False, pending=False, max_running=0),
    ),
    interval=INTERVALS,
)
def test_can_skip_implies_no_actions(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """Whenever a preset can be skipped, the calculator has nothing for it."""
    now, snapshot = case

    actions = plan(snapshot, now, interval)

    if can_skip_reconciliation(snapshot):
        assert [] == actions


@given(case=snapshots_at(active=True, backoff=False), interval=INTERVALS)
def test_applying_the_actions_converges(
    case: tuple[datetime, PresetSnapshot], interval: timedelta
) -> None:
    """
    For an active preset out of backoff, executing the actions (deleting the
    listed prebuilds, adding ``create`` fresh ready ones, in-progress rows
    kept) yields a pool whose next actions are empty.
    """
    now, snapshot = case
    preset = snapshot.preset
    invalidated = preset.last_invalidated_at
    assume(invalidated is None or invalidated <= now)

    actions = plan(snapshot, now, interval)
    gone = set(deleted(actions))
    fresh = [
        RunningPrebuild(
            id=uuid.uuid4(), preset_id=preset.id, created_at=now, ready=True
        )
        for _ in range(created(actions))
    ]
    kept = [p for p in (*snapshot.running, *snapshot.expired) if p.id not in gone]
    after = GlobalSnapshot(
        presets=[preset],
        running=[*kept, *fresh],
        in_progress=snapshot.in_progress,
        hard_limited={preset.id} if snapshot.is_hard_limited else set(),
    ).filter_by_preset(preset.id, now=now)

    assert [] == plan(after, now, interval)


@given(snapshot=strategies.global_snapshots(min_presets=1), data=st.data())
def test_filter_by_preset(snapshot: GlobalSnapshot, data: st.DataObject) -> None:
    """
    A preset's snapshot holds exactly its rows: running split into
    non-expired and expired (a partition, input order kept), every
    in-progress row, its pending and backoff rows, its hard limit.
    """
    now = data.draw(NOWS)
    preset = data.draw(st.sampled_from(snapshot.presets))
    rows = [p for p in snapshot.running if p.preset_id == preset.id]

    ps = snapshot.filter_by_preset(preset.id, now=now)

    assert preset == ps.preset
    assert [p for p in rows if not is_expired(preset, p, now)] == list(ps.running)
    assert [p for p in rows if is_expired(preset, p, now)] == list(ps.expired)
    assert [r for r in snapshot.in_progress if r.preset_id == preset.id] == list(
        ps.in_progress
    )
    pending = [r.count for r in snapshot.pending if r.preset_id == preset.id]
    assert (pending or [0])[0] == ps.pending_count
    backoffs = [b for b in snapshot.backoffs if b.preset_id == preset.id]
    assert (backoffs[0] if backoffs else None) == ps.backoff
    assert (preset.id in snapshot.hard_limited) == ps.is_hard_limited


@given(
    snapshot=strategies.global_snapshots(max_presets=2), preset_id=strategies.uuids()
)
def test_filter_by_unknown_preset(
    snapshot: GlobalSnapshot, preset_id: uuid.UUID
) -> None:
    """An ID no preset has raises PresetNotFoundError carrying that ID."""
    assume(preset_id not in {p.id for p in snapshot.presets})

    with pytest.raises(PresetNotFoundError) as info:
        snapshot.filter_by_preset(preset_id, now=strategies.DEFAULT_NOW)

    assert preset_id == info.value.preset_id
    assert str(preset_id) in str(info.value)


def test_two_presets_of_one_id_are_refused() -> None:
    """
    A global snapshot with two presets of one ID is refused, naming the ID
    (Coder keeps the first match; silently dropping one hides a store bug).
    """
    first = Preset(
        id=uuid.UUID(int=7),
        template_id=uuid.UUID(int=1),
        template_version_id=uuid.UUID(int=2),
        desired_instances=1,
    )
    second = attrs.evolve(first, desired_instances=2)

    with pytest.raises(InvalidInputError) as info:
        GlobalSnapshot(presets=[first, second])

    assert ("presets", first.id) == (info.value.field, info.value.value)


class TestStrategies:
    """The public strategies draw valid objects and honour their options."""

    @given(
        preset=strategies.presets(
            active=False,
            with_ttl=False,
            with_invalidation=False,
            with_schedules=False,
            statuses=[PresetStatus.HEALTHY],
        )
    )
    def test_presets_without_options(self, preset: Preset) -> None:
        """Options off: inactive, no TTL, no invalidation, no schedules, healthy."""
        assert (False, None, None, (), PresetStatus.HEALTHY) == (
            preset.is_active,
            preset.ttl,
            preset.last_invalidated_at,
            preset.schedules,
            preset.status,
        )

    @given(
        preset=strategies.presets(
            active=True, with_ttl=True, with_invalidation=True, with_schedules=True
        )
    )
    def test_presets_with_options(self, preset: Preset) -> None:
        """Options on: active, a TTL, an invalidation, schedules in a zone."""
        assert preset.is_active
        assert preset.ttl is not None
        assert preset.last_invalidated_at is not None
        assert preset.schedules
        assert preset.scheduling_timezone in strategies.TIME_ZONES

    @given(schedules=strategies.schedule_sets(min_size=3, max_size=5))
    def test_schedule_sets_do_not_overlap(
        self, schedules: tuple[PrebuildSchedule, ...]
    ) -> None:
        """Schedule sets have the asked size and no two windows overlap."""
        pairs = [
            (a.cron, b.cron)
            for i, a in enumerate(schedules)
            for b in schedules[i + 1 :]
            if windows_overlap(a.window, b.window)
        ]

        assert 3 <= len(schedules) <= 5
        assert [] == pairs

    @given(cron=strategies.cron_specs(allow_star=False))
    def test_cron_specs_without_star(self, cron: str) -> None:
        """With ``allow_star=False`` only the minute field is ``*``."""
        assert ("*", False) == (cron.split(maxsplit=1)[0], "*" in cron[1:])

    @given(at=strategies.aware_datetimes(timezones=st.just(timezone.utc)))
    def test_aware_datetimes_in_a_given_zone(self, at: datetime) -> None:
        """The zones to attach can be chosen."""
        assert timezone.utc is at.tzinfo

    @given(prebuilds=strategies.running_prebuilds(uuid.UUID(int=5), min_size=1))
    def test_running_prebuilds(self, prebuilds: tuple[RunningPrebuild, ...]) -> None:
        """Running prebuilds have distinct IDs, the preset's ID, and are not from the future."""
        assert len(prebuilds) == len({p.id for p in prebuilds})
        assert {uuid.UUID(int=5)} == {p.preset_id for p in prebuilds}
        assert all(p.created_at <= strategies.DEFAULT_NOW for p in prebuilds)

    @given(
        snapshot=strategies.preset_snapshots(
            backoff=False, hard_limited=False, pending=False, in_progress=False
        )
    )
    def test_preset_snapshots_options_and_split(self, snapshot: PresetSnapshot) -> None:
        """Options off leave the rows empty; the running/expired split agrees with now."""
        now = strategies.DEFAULT_NOW

        assert (None, False, 0, ()) == (
            snapshot.backoff,
            snapshot.is_hard_limited,
            snapshot.pending_count,
            snapshot.in_progress,
        )
        assert not any(is_expired(snapshot.preset, p, now) for p in snapshot.running)
        assert all(is_expired(snapshot.preset, p, now) for p in snapshot.expired)

    @given(schedules=strategies.schedule_sets(max_size=0))
    def test_empty_schedule_sets(self, schedules: tuple[PrebuildSchedule, ...]) -> None:
        """``max_size=0`` draws no schedules."""
        assert () == schedules
