"""
Coder's core test suite (coder-spec-core.md section 5), case by case.

Fixtures follow Coder's ``preset_snapshot_test.go``: ``UUID{n}`` is a UUID
whose first byte is *n*, the mock clock reads 2024-01-01T00:00Z (a Monday)
and the backoff interval is 5 s. Where prebuilds deliberately differs from
Coder (design.md section 6) the test expects prebuilds' behaviour and its
docstring says "differs from Coder".
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from uuid import UUID

import attrs
import pytest

from prebuilds import (
    ActionType,
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidInputError,
    PendingCount,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    PresetStatus,
    ReconciliationActions,
    ReconciliationState,
    RunningPrebuild,
    Transition,
    calculate_actions,
    calculate_state,
    can_skip_reconciliation,
    desired_instances,
)
from prebuilds._schedule import parse_cron


UTC = timezone.utc
NOW = datetime(2024, 1, 1, tzinfo=UTC)
BACKOFF_INTERVAL = timedelta(seconds=5)


def uuid_n(n: int, second: int = 0) -> UUID:
    """Go's ``uuid.UUID{n}``: first byte *n* (second byte *second*), rest zero."""
    return UUID(bytes=bytes([n, second]) + bytes(14))


TEMPLATE_ID = uuid_n(1)


class Options(NamedTuple):
    template_version_id: UUID
    preset_id: UUID
    prebuild_id: UUID
    workspace_name: str
    ttl: timedelta | None


SET0 = Options(uuid_n(11), uuid_n(12), uuid_n(13), "prebuilds0", None)
SET1 = Options(uuid_n(21), uuid_n(22), uuid_n(23), "prebuilds1", None)
SET2 = Options(uuid_n(31), uuid_n(32), uuid_n(33), "prebuilds2", None)
SET3 = Options(uuid_n(41), uuid_n(42), uuid_n(43), "prebuilds3", timedelta(seconds=5))


def preset(active: bool, desired: int, opts: Options, **changes: Any) -> Preset:
    """Coder's ``preset(active, n, set, mutators...)``."""
    made = Preset(
        id=opts.preset_id,
        template_id=TEMPLATE_ID,
        template_version_id=opts.template_version_id,
        desired_instances=desired,
        name="my-preset",
        using_active_version=active,
        ttl=opts.ttl,
    )
    return attrs.evolve(made, **changes)


def prebuilt(opts: Options, now: datetime = NOW, **changes: Any) -> RunningPrebuild:
    """Coder's ``prebuiltWorkspace(set, clock, mutators...)``: the set's fixed ID."""
    made = RunningPrebuild(
        id=opts.prebuild_id,
        preset_id=opts.preset_id,
        created_at=now,
        ready=True,
        name=opts.workspace_name,
        template_id=TEMPLATE_ID,
        template_version_id=opts.template_version_id,
    )
    return attrs.evolve(made, **changes)


def in_progress(opts: Options, transition: Transition, count: int) -> InProgressCount:
    return InProgressCount(
        preset_id=opts.preset_id,
        transition=transition,
        count=count,
        template_id=TEMPLATE_ID,
        template_version_id=opts.template_version_id,
    )


def create(n: int) -> ReconciliationActions:
    return ReconciliationActions(action_type=ActionType.CREATE, create=n)


def delete(*ids: UUID) -> ReconciliationActions:
    return ReconciliationActions(action_type=ActionType.DELETE, delete_ids=ids)


def backoff(until: datetime) -> ReconciliationActions:
    return ReconciliationActions(action_type=ActionType.BACKOFF, backoff_until=until)


CANCEL_PENDING = ReconciliationActions(action_type=ActionType.CANCEL_PENDING)


def evaluate(
    snapshot: GlobalSnapshot, preset_id: UUID, now: datetime = NOW
) -> tuple[ReconciliationState, list[ReconciliationActions]]:
    """FilterByPreset, then CalculateState and CalculateActions at *now*."""
    ps = snapshot.filter_by_preset(preset_id, now=now)
    return (
        calculate_state(ps, now=now),
        calculate_actions(ps, now=now, backoff_interval=BACKOFF_INTERVAL),
    )


class TestPresetSnapshot:
    """Section 5.1: state and actions of one preset."""

    def test_no_prebuilds(self) -> None:
        """TestNoPrebuilds: an active preset wanting none has all-zero state and no actions."""
        snapshot = GlobalSnapshot(presets=[preset(True, 0, SET0)])

        state, actions = evaluate(snapshot, SET0.preset_id)

        assert ReconciliationState() == state
        assert [] == actions

    def test_net_new(self) -> None:
        """TestNetNew: an active preset wanting one, with none running, creates one."""
        snapshot = GlobalSnapshot(presets=[preset(True, 1, SET0)])

        state, actions = evaluate(snapshot, SET0.preset_id)

        assert ReconciliationState(desired=1) == state
        assert [create(1)] == actions

    def test_outdated_prebuilds(self) -> None:
        """
        TestOutdatedPrebuilds: the outdated preset deletes its prebuild and the
        current one creates one, in the same pass.
        """
        snapshot = GlobalSnapshot(
            presets=[preset(False, 1, SET0), preset(True, 1, SET1)],
            running=[prebuilt(SET0)],
        )

        outdated = evaluate(snapshot, SET0.preset_id)
        current = evaluate(snapshot, SET1.preset_id)

        assert (ReconciliationState(actual=1), [delete(SET0.prebuild_id)]) == outdated
        assert (ReconciliationState(desired=1), [create(1)]) == current

    def test_delete_outdated_prebuilds(self) -> None:
        """
        TestDeleteOutdatedPrebuilds: an in-progress deletion does not reduce the
        deletions of an inactive preset.
        """
        snapshot = GlobalSnapshot(
            presets=[preset(False, 1, SET0)],
            running=[prebuilt(SET0)],
            in_progress=[in_progress(SET0, Transition.DELETE, 1)],
        )

        state, actions = evaluate(snapshot, SET0.preset_id)

        assert ReconciliationState(actual=1, deleting=1) == state
        assert [delete(SET0.prebuild_id)] == actions

    @pytest.mark.parametrize(
        ("active", "expected"),
        [(False, [CANCEL_PENDING]), (True, [])],
        ids=[
            "CancelPendingPrebuildsNonActiveVersion",
            "NotCancelPendingPrebuildsActiveVersion",
        ],
    )
    def test_cancel_pending_prebuilds(
        self, active: bool, expected: list[ReconciliationActions]
    ) -> None:
        """
        TestCancelPendingPrebuilds: queued creations are canceled for an
        inactive preset only; the action carries no payload.
        """
        snapshot = GlobalSnapshot(
            presets=[preset(active, 0, SET3)],
            pending=[PendingCount(preset_id=SET3.preset_id, count=2)],
        )

        _, actions = evaluate(snapshot, SET3.preset_id)

        assert expected == actions

    def test_extraneous(self) -> None:
        """
        TestExtraneous: with one too many, the older is deleted. (Coder's test
        gives both its one fixed ID; prebuilds refuses a snapshot listing an
        ID twice, so the newer gets an ID of its own.)
        """
        older = prebuilt(SET0, created_at=NOW - timedelta(hours=1))
        newer = prebuilt(SET0, created_at=NOW, id=uuid_n(0xE))
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0)], running=[newer, older]
        )

        state, actions = evaluate(snapshot, SET0.preset_id)

        assert (
            ReconciliationState(actual=2, desired=1, extraneous=1, eligible=2) == state
        )
        assert [delete(older.id)] == actions

    def test_deprecated(self) -> None:
        """TestDeprecated: a deprecated template's preset is inactive: its prebuild is deleted."""
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0, template_deprecated=True)],
            running=[prebuilt(SET0)],
        )

        state, actions = evaluate(snapshot, SET0.preset_id)

        assert ReconciliationState(actual=1) == state
        assert [delete(SET0.prebuild_id)] == actions

    def test_latest_build_failed(self) -> None:
        """
        TestLatestBuildFailed: a failing preset backs off for num_failed x 5 s,
        another preset is unaffected, and 5 s + 1 us later it creates again.
        """
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0), preset(True, 1, SET1)],
            running=[prebuilt(SET1)],
            backoffs=[
                Backoff(preset_id=SET0.preset_id, num_failed=1, last_build_at=NOW)
            ],
        )

        current = evaluate(snapshot, SET0.preset_id)
        other = evaluate(snapshot, SET1.preset_id)
        later = evaluate(
            snapshot, SET0.preset_id, NOW + BACKOFF_INTERVAL + timedelta(microseconds=1)
        )

        assert (
            ReconciliationState(desired=1),
            [backoff(NOW + BACKOFF_INTERVAL)],
        ) == current
        assert (ReconciliationState(actual=1, desired=1, eligible=1), []) == other
        assert (ReconciliationState(desired=1), [create(1)]) == later

    def test_backoff_holds_at_its_end(self) -> None:
        """Backoff still holds at exactly ``last_build_at + num_failed x interval``."""
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0)],
            backoffs=[
                Backoff(preset_id=SET0.preset_id, num_failed=2, last_build_at=NOW)
            ],
        )
        until = NOW + 2 * BACKOFF_INTERVAL

        _, actions = evaluate(snapshot, SET0.preset_id, until)

        assert [backoff(until)] == actions

    def test_backoff_with_no_failures_is_ignored(self) -> None:
        """A backoff row with num_failed 0 does not back off."""
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0)],
            backoffs=[
                Backoff(preset_id=SET0.preset_id, num_failed=0, last_build_at=NOW)
            ],
        )

        _, actions = evaluate(snapshot, SET0.preset_id)

        assert [create(1)] == actions

    def test_backoff_blocks_inactive_cleanup(self) -> None:
        """While backing off, an inactive preset neither cancels nor deletes."""
        snapshot = GlobalSnapshot(
            presets=[preset(False, 1, SET0)],
            running=[prebuilt(SET0)],
            pending=[PendingCount(preset_id=SET0.preset_id, count=1)],
            backoffs=[
                Backoff(preset_id=SET0.preset_id, num_failed=3, last_build_at=NOW)
            ],
        )

        _, actions = evaluate(snapshot, SET0.preset_id)

        assert [backoff(NOW + 3 * BACKOFF_INTERVAL)] == actions

    def test_multiple_presets_per_template_version(self) -> None:
        """
        TestMultiplePresetsPerTemplateVersion: a start in progress for one
        preset does not stop the other preset of the version from creating.
        """
        version = uuid_n(51)
        first = Options(version, uuid_n(52), uuid_n(53), "prebuilds1", None)
        second = Options(version, uuid_n(54), uuid_n(55), "prebuilds2", None)
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, first), preset(True, 1, second)],
            in_progress=[in_progress(first, Transition.START, 1)],
        )

        one = evaluate(snapshot, first.preset_id)
        two = evaluate(snapshot, second.preset_id)

        assert (ReconciliationState(starting=1, desired=1), []) == one
        assert (ReconciliationState(desired=1), [create(1)]) == two


IN_PROGRESS_CASES = [
    # name, transition, desired, running, in progress, state, actions
    ("start-short", Transition.START, 1, 0, 1, ReconciliationState(desired=1, starting=1), []),
    ("start-balanced", Transition.START, 2, 1, 1, ReconciliationState(actual=1, desired=2, starting=1), []),
    ("start-extraneous", Transition.START, 2, 2, 1, ReconciliationState(actual=2, desired=2, starting=1), []),
    ("stop-short", Transition.STOP, 1, 0, 1, ReconciliationState(desired=1, stopping=1), [create(1)]),
    ("stop-balanced", Transition.STOP, 3, 2, 1, ReconciliationState(actual=2, desired=3, stopping=1), [create(1)]),
    ("stop-extraneous", Transition.STOP, 3, 3, 1, ReconciliationState(actual=3, desired=3, stopping=1), []),
    ("delete-short", Transition.DELETE, 1, 0, 1, ReconciliationState(desired=1, deleting=1), [create(1)]),
    ("delete-balanced", Transition.DELETE, 2, 1, 1, ReconciliationState(actual=1, desired=2, deleting=1), [create(1)]),
    ("delete-extraneous", Transition.DELETE, 2, 2, 1, ReconciliationState(actual=2, desired=2, deleting=1), []),
    ("start-inhibit", Transition.START, 3, 1, 2, ReconciliationState(actual=1, desired=3, starting=2), []),
    # Coder leaves which two of five equal-aged prebuilds go unspecified;
    # prebuilds breaks the tie by ascending ID: the two smallest.
    (
        "delete-inhibit",
        Transition.DELETE,
        3,
        5,
        2,
        ReconciliationState(actual=5, desired=3, deleting=2, extraneous=2),
        [delete(uuid_n(200, 0), uuid_n(200, 1))],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("transition", "desired", "running", "count", "expected_state", "expected_actions"),
    [case[1:] for case in IN_PROGRESS_CASES],
    ids=[case[0] for case in IN_PROGRESS_CASES],
)
def test_in_progress_actions(
    *,
    transition: Transition,
    desired: int,
    running: int,
    count: int,
    expected_state: ReconciliationState,
    expected_actions: list[ReconciliationActions],
) -> None:
    """
    TestInProgressActions: starts in progress count towards the pool; stops
    and deletes do not; deletes in progress do not reduce extraneous deletes.
    """
    # Listed in reverse so that the tie-break by ID, not input order, decides.
    rows = [
        prebuilt(SET0, id=uuid_n(200, i), ready=False, name=f"prebuild-{i}")
        for i in reversed(range(running))
    ]
    snapshot = GlobalSnapshot(
        presets=[preset(True, desired, SET0)],
        running=rows,
        in_progress=[in_progress(SET0, transition, count)],
    )

    state, actions = evaluate(snapshot, SET0.preset_id)

    assert expected_state == state
    assert expected_actions == actions


@pytest.mark.parametrize(
    ("transition", "expected_state", "expected_actions"),
    [
        (Transition.START, ReconciliationState(desired=5, starting=3), [create(2)]),
        (Transition.STOP, ReconciliationState(desired=5, stopping=3), [create(5)]),
        (Transition.DELETE, ReconciliationState(desired=5, deleting=3), [create(5)]),
    ],
    ids=["start", "stop", "delete"],
)
def test_in_progress_rows_of_one_transition_add_up(
    transition: Transition,
    expected_state: ReconciliationState,
    expected_actions: list[ReconciliationActions],
) -> None:
    """
    A preset's in-progress builds of one transition may come in several rows
    (one per template version, as Coder's query groups them): the state
    counts their sum, 1 + 2 here, and only starts reduce the creations.
    """
    rows = [
        in_progress(SET0, transition, 1),
        attrs.evolve(in_progress(SET0, transition, 2), template_version_id=uuid_n(19)),
    ]
    snapshot = GlobalSnapshot(presets=[preset(True, 5, SET0)], in_progress=rows)

    state, actions = evaluate(snapshot, SET0.preset_id)

    assert expected_state == state
    assert expected_actions == actions


def expired_rows(running: int, expired: int, invalidated: int) -> list[RunningPrebuild]:
    """
    Coder's TestExpiredPrebuilds rows, on the mock clock instead of the wall
    clock: ``r{k}`` has ID ``UUID{43, k}`` (ascending, as the wall clock made
    Coder's creation times ascend).
    """
    rows = []
    for k in range(running):
        created = NOW
        if k < invalidated:
            created -= SET3.ttl + timedelta(seconds=10)  # type: ignore[operator]
        elif invalidated:
            created = NOW + timedelta(minutes=2)  # after the invalidation
        if k < expired:
            # Coder's 5 ns is below a datetime's resolution; 10 s decides.
            created -= timedelta(seconds=10)
        rows.append(prebuilt(SET3, id=uuid_n(43, k), created_at=created, ready=False))
    return rows


R = [uuid_n(43, k) for k in range(4)]

EXPIRED_CASES = [
    # name, running, desired, expired, invalidated, state, actions
    # The names are ASCII (Coder's have an en dash): mutmut hands the node
    # ids back to pytest in the process that collected them, and pytest
    # escapes a non-ASCII id given in ids= once more on each collection, so
    # such a test is then "not found" and its mutants count as killed.
    ("no expired prebuilds - no actions taken", 2, 2, 0, 0,
     ReconciliationState(actual=2, desired=2), []),
    ("one expired prebuild - deleted and replaced", 2, 2, 1, 0,
     ReconciliationState(actual=2, desired=2, expired=1), [delete(R[0]), create(1)]),
    ("all prebuilds expired - all deleted and recreated", 2, 2, 2, 0,
     ReconciliationState(actual=2, desired=2, expired=2), [delete(R[0], R[1]), create(2)]),
    ("expired prebuilds deleted to reach desired count", 4, 2, 2, 0,
     ReconciliationState(actual=4, desired=2, expired=2), [delete(R[0], R[1])]),
    ("expired prebuild deleted first, then extraneous", 4, 2, 1, 0,
     ReconciliationState(actual=4, desired=2, expired=1, extraneous=1),
     [delete(R[0]), delete(R[1])]),
    ("preset has been invalidated - both instances expired", 2, 2, 0, 2,
     ReconciliationState(actual=2, desired=2, expired=2), [delete(R[0], R[1]), create(2)]),
    ("preset has been invalidated, but one prebuild instance is newer", 2, 2, 0, 1,
     ReconciliationState(actual=2, desired=2, expired=1), [delete(R[0]), create(1)]),
]  # fmt: skip


@pytest.mark.parametrize(
    (
        "running",
        "desired",
        "expired",
        "invalidated",
        "expected_state",
        "expected_actions",
    ),
    [case[1:] for case in EXPIRED_CASES],
    ids=[case[0] for case in EXPIRED_CASES],
)
def test_expired_prebuilds(
    *,
    running: int,
    desired: int,
    expired: int,
    invalidated: int,
    expected_state: ReconciliationState,
    expected_actions: list[ReconciliationActions],
) -> None:
    """
    TestExpiredPrebuilds: expired prebuilds (TTL 5 s, or created before the
    invalidation) are deleted in one action, then extraneous ones in a
    second, then replacements created. Differs from Coder: the expiry is
    judged at the ``now`` passed in, not the wall clock, and expired
    prebuilds are deleted oldest first rather than in input order.
    """
    invalidated_at = NOW + timedelta(minutes=1) if invalidated else None
    snapshot = GlobalSnapshot(
        presets=[preset(True, desired, SET3, last_invalidated_at=invalidated_at)],
        # Reversed: the order of deletion must not come from the input.
        running=list(reversed(expired_rows(running, expired, invalidated))),
    )

    state, actions = evaluate(snapshot, SET3.preset_id)

    assert expected_state == state
    assert expected_actions == actions


class TestExpiryBoundaries:
    """design.md section 4.8: the expiry boundaries."""

    def test_exactly_ttl_old_is_not_expired(self) -> None:
        """A prebuild exactly ``ttl`` old is not expired; a microsecond older is."""
        exact = prebuilt(SET3, id=uuid_n(43, 0), created_at=NOW - timedelta(seconds=5))
        older = prebuilt(
            SET3,
            id=uuid_n(43, 1),
            created_at=NOW - timedelta(seconds=5, microseconds=1),
        )
        snapshot = GlobalSnapshot(
            presets=[preset(True, 2, SET3)], running=[exact, older]
        )

        ps = snapshot.filter_by_preset(SET3.preset_id, now=NOW)

        assert ((exact,), (older,)) == (ps.running, ps.expired)

    def test_created_at_invalidation_is_not_expired(self) -> None:
        """A prebuild created exactly at ``last_invalidated_at`` is not expired."""
        at = prebuilt(SET0, id=uuid_n(13, 0), created_at=NOW)
        before = prebuilt(
            SET0, id=uuid_n(13, 1), created_at=NOW - timedelta(microseconds=1)
        )
        snapshot = GlobalSnapshot(
            presets=[preset(True, 2, SET0, last_invalidated_at=NOW)],
            running=[at, before],
        )

        ps = snapshot.filter_by_preset(SET0.preset_id, now=NOW + timedelta(days=1))

        assert ((at,), (before,)) == (ps.running, ps.expired)

    def test_zero_ttl_never_expires(self) -> None:
        """A TTL of zero means prebuilds never expire by age."""
        old = prebuilt(SET0, created_at=NOW - timedelta(days=365))
        snapshot = GlobalSnapshot(
            presets=[preset(True, 1, SET0, ttl=timedelta(0))], running=[old]
        )

        ps = snapshot.filter_by_preset(SET0.preset_id, now=NOW)

        assert ((old,), ()) == (ps.running, ps.expired)


class TestDifferencesFromCoder:
    """design.md section 6: where prebuilds deliberately differs."""

    def test_expired_of_inactive_preset_are_deleted(self) -> None:
        """
        Differs from Coder: an inactive preset's expired prebuilds are deleted
        with the rest (Coder forgets them), all in one action, oldest first.
        """
        fresh = prebuilt(SET3, id=uuid_n(43, 0), created_at=NOW)
        stale = prebuilt(SET3, id=uuid_n(43, 1), created_at=NOW - timedelta(minutes=1))
        snapshot = GlobalSnapshot(
            presets=[preset(False, 1, SET3)],
            running=[fresh, stale],
            pending=[PendingCount(preset_id=SET3.preset_id, count=1)],
        )

        state, actions = evaluate(snapshot, SET3.preset_id)

        assert ReconciliationState(actual=2, expired=1) == state
        assert [CANCEL_PENDING, delete(stale.id, fresh.id)] == actions

    @pytest.mark.parametrize(
        ("hard_limited", "status"),
        [
            (True, PresetStatus.HEALTHY),
            (False, PresetStatus.VALIDATION_FAILED),
            (True, PresetStatus.HARD_LIMITED),
        ],
        ids=["hard-limited", "validation-failed", "both"],
    )
    def test_blocked_preset_deletes_but_does_not_create(
        self, hard_limited: bool, status: PresetStatus
    ) -> None:
        """
        Differs from Coder: a hard-limited or validation-failed preset gets no
        Create from the calculator (Coder plans it, the executor drops it);
        its expired prebuilds are still deleted.
        """
        expired = prebuilt(SET3, created_at=NOW - timedelta(minutes=1))
        snapshot = GlobalSnapshot(
            presets=[preset(True, 3, SET3, status=status)],
            running=[expired],
            hard_limited={SET3.preset_id} if hard_limited else set(),
        )

        state, actions = evaluate(snapshot, SET3.preset_id)

        assert ReconciliationState(actual=1, expired=1, desired=3) == state
        assert [delete(expired.id)] == actions

    def test_create_is_clamped_to_desired(self) -> None:
        """
        Differs from Coder (which clamps in the executor): Create never
        exceeds the desired count, whatever the in-progress counts.
        """
        snapshot = GlobalSnapshot(
            presets=[preset(True, 2, SET0)],
            in_progress=[in_progress(SET0, Transition.STOP, 4)],
        )

        _, actions = evaluate(snapshot, SET0.preset_id)

        assert [create(2)] == actions


SCHEDULED_PRESET_1 = (
    PrebuildSchedule(cron="* 2-4 * * 1-5", instances=2),
    PrebuildSchedule(cron="* 6-8 * * 1-5", instances=3),
)
SCHEDULED_PRESET_2 = (
    PrebuildSchedule(cron="* 10-12 * * 1-5", instances=4),
    PrebuildSchedule(cron="* 14-16 * * 1-5", instances=5),
)


@pytest.mark.parametrize(
    ("hour", "expected_1", "expected_2"),
    [(1, 1, 1), (3, 2, 1), (7, 3, 1), (11, 1, 4), (15, 1, 5)],
    ids=[
        "Before the 1st schedule",
        "1st schedule",
        "2nd schedule",
        "3rd schedule",
        "4th schedule",
    ],
)
def test_prebuild_scheduling(hour: int, expected_1: int, expected_2: int) -> None:
    """
    TestPrebuildScheduling: two presets of one version, base 1, UTC; each
    creates the count of the schedule in force on Monday 2 June 2025.
    """
    now = datetime(2025, 6, 2, hour, tzinfo=UTC)
    first = preset(
        True, 1, SET0, scheduling_timezone="UTC", schedules=SCHEDULED_PRESET_1
    )
    second = preset(
        True,
        1,
        SET1,
        template_version_id=SET0.template_version_id,
        scheduling_timezone="UTC",
        schedules=SCHEDULED_PRESET_2,
    )
    snapshot = GlobalSnapshot(presets=[first, second])

    one = evaluate(snapshot, first.id, now)
    two = evaluate(snapshot, second.id, now)

    assert (ReconciliationState(desired=expected_1), [create(expected_1)]) == one
    assert (ReconciliationState(desired=expected_2), [create(expected_2)]) == two


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2025, 6, 2, 8, 59, 59, tzinfo=UTC), False),
        (datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC), True),
    ],
    ids=["08:59:59", "09:00:00"],
)
def test_matches_cron(at: datetime, expected: bool) -> None:
    """TestMatchesCron: ``* 9-18 * * 1-5`` starts at 09:00:00 UTC sharp."""
    window = parse_cron("* 9-18 * * 1-5")

    assert expected == window.contains_local(at)


def mon(hour: int, minute: int = 0, second: int = 0, day: int = 2) -> datetime:
    """*day* June 2025 (2 = a Monday) at the given UTC time."""
    return datetime(2025, 6, day, hour, minute, second, tzinfo=UTC)


ONE = (("* 9-18 * * 1-5", 3),)
THREE = (("* 6-10 * * 1-5", 2), ("* 12-16 * * 1-5", 3), ("* 18-22 * * 1-5", 4))
WEEKEND = (("* 9-18 * * 1-5", 2), ("* 9-13 * * 6,0", 3))
LA = (("* 9-13 * * 1-5", 3),)
EDT = timezone(timedelta(hours=-4))

DESIRED_CASES = [
    ("Right before the start of the time range", "UTC", ONE, mon(8, 59, 59), 1),
    ("Start of the time range", "UTC", ONE, mon(9), 3),
    ("9:01AM - One minute after the start of the time range", "UTC", ONE, mon(9, 1), 3),
    ("2PM - The middle of the time range", "UTC", ONE, mon(14), 3),
    ("6PM - One hour before the end of the time range", "UTC", ONE, mon(18), 3),
    ("End of the time range", "UTC", ONE, mon(18, 59, 59), 3),
    ("Right after the end of the time range", "UTC", ONE, mon(19), 1),
    ("7:01PM - Around one minute after the end of the time range", "UTC", ONE, mon(19, 1), 1),
    ("2AM - Significantly outside the time range", "UTC", ONE, mon(2), 1),
    ("Outside the day range #1", "UTC", ONE, mon(14, day=7), 1),
    ("Outside the day range #2", "UTC", ONE, mon(14, day=8), 1),
    ("Before the first schedule", "UTC", THREE, mon(5), 1),
    ("The middle of the first schedule", "UTC", THREE, mon(8), 2),
    ("Between the first and second schedule", "UTC", THREE, mon(11), 1),
    ("The middle of the second schedule", "UTC", THREE, mon(14), 3),
    ("The middle of the third schedule", "UTC", THREE, mon(20), 4),
    ("After the last schedule", "UTC", THREE, mon(23), 1),
    ("First schedule", "UTC", WEEKEND, mon(14), 2),
    ("Second schedule", "UTC", WEEKEND, mon(10, day=7), 3),
    ("Outside schedule", "UTC", WEEKEND, mon(14, day=7), 1),
    ("8AM - before the start (LA)", "America/Los_Angeles", LA, mon(15), 1),
    ("9AM - start of the range (LA)", "America/Los_Angeles", LA, mon(16), 3),
    ("1:59PM - end of the range (LA)", "America/Los_Angeles", LA, mon(20, 59), 3),
    ("2PM - after the end (LA)", "America/Los_Angeles", LA, mon(21), 1),
    ("4PM - well after the end (LA)", "America/Los_Angeles", LA, mon(23), 1),
    ("8AM - before the start of the time range", "UTC", ONE,
     datetime(2025, 6, 2, 4, tzinfo=EDT), 1),
    ("9AM - after the start of the time range", "UTC", ONE,
     datetime(2025, 6, 2, 5, tzinfo=EDT), 3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "schedules", "at", "expected"),
    [case[1:] for case in DESIRED_CASES],
    ids=[case[0] for case in DESIRED_CASES],
)
def test_calculate_desired_instances(
    zone: str, schedules: tuple[tuple[str, int], ...], at: datetime, expected: int
) -> None:
    """
    TestCalculateDesiredInstances: the first schedule whose window contains
    *at* in the preset's zone gives the count, else the base count 1.
    """
    scheduled = preset(
        True,
        1,
        SET0,
        scheduling_timezone=zone,
        schedules=[PrebuildSchedule(cron=c, instances=n) for c, n in schedules],
    )

    assert expected == desired_instances(scheduled, at=at)
    assert expected == calculate_state(PresetSnapshot(preset=scheduled), now=at).desired


class TestCalculateDesiredInstancesExtra:
    """The extra cases section 5.4 asks for."""

    def test_schedules_without_time_zone_use_base(self) -> None:
        """Schedules with time zone ``""`` are not evaluated: the base count applies."""
        scheduled = preset(
            True, 1, SET0, schedules=[PrebuildSchedule(cron="* * * * *", instances=7)]
        )

        assert 1 == desired_instances(scheduled, at=mon(10))

    def test_invalid_time_zone_is_rejected(self) -> None:
        """
        Differs from Coder (falls back to the base count): an unknown zone is
        rejected when the Preset is built, naming ``scheduling_timezone``.
        """
        with pytest.raises(InvalidInputError) as info:
            preset(True, 1, SET0, scheduling_timezone="Mars/Olympus_Mons")

        assert ("scheduling_timezone", "Mars/Olympus_Mons") == (
            info.value.field,
            info.value.value,
        )

    def test_overlapping_schedules_are_rejected(self) -> None:
        """
        Differs from Coder (falls back to the base count): two overlapping
        schedules are rejected when the Preset is built, naming ``schedules``.
        """
        overlapping = [
            PrebuildSchedule(cron="* 9-18 * * 1-5", instances=2),
            PrebuildSchedule(cron="* 18-20 * * 5", instances=3),
        ]

        with pytest.raises(InvalidInputError) as info:
            preset(True, 1, SET0, scheduling_timezone="UTC", schedules=overlapping)

        assert ("schedules", ("* 9-18 * * 1-5", "* 18-20 * * 5")) == (
            info.value.field,
            info.value.value,
        )

    @pytest.mark.parametrize(
        "cron",
        ["* 9-18 * * 6-7", "* 9-18 * *", "0 9-18 * * 1-5", "* 9-18 * * MON"],
        ids=["dow-7", "four-fields", "minute-not-star", "names"],
    )
    def test_malformed_schedule_is_rejected(self, cron: str) -> None:
        """
        Differs from Coder (skips the schedule or falls back to the base
        count): a malformed cron, such as ``6-7`` in the day-of-week field or
        a minute field other than ``*``, is rejected when the schedule is
        built, naming ``cron``.
        """
        with pytest.raises(InvalidInputError) as info:
            PrebuildSchedule(cron=cron, instances=2)

        assert ("cron", cron) == (info.value.field, info.value.value)

    @pytest.mark.parametrize(
        ("at", "expected"),
        [(mon(10), 5), (mon(10, day=1), 5), (mon(10, day=3), 1)],
        ids=["monday-by-weekday", "first-by-day-of-month", "tuesday-the-3rd"],
    )
    def test_day_of_month_and_week_both_restricted_is_or(
        self, at: datetime, expected: int
    ) -> None:
        """With both DOM and DOW restricted, either matching is enough (cron's OR)."""
        scheduled = preset(
            True,
            1,
            SET0,
            scheduling_timezone="UTC",
            schedules=[PrebuildSchedule(cron="* 9-17 1 * 1", instances=5)],
        )

        assert expected == desired_instances(scheduled, at=at)

    def test_inactive_preset_desires_nothing(self) -> None:
        """An inactive preset's state has desired 0, whatever its schedules say."""
        scheduled = preset(
            False,
            1,
            SET0,
            scheduling_timezone="UTC",
            schedules=[PrebuildSchedule(cron="* * * * *", instances=5)],
        )

        assert 5 == desired_instances(scheduled, at=mon(10))
        assert (
            0 == calculate_state(PresetSnapshot(preset=scheduled), now=mon(10)).desired
        )


ONE_MINUTE_AGO = NOW - timedelta(minutes=1)
CAN_SKIP_INTERVAL = timedelta(minutes=5)
SKIP_BACKOFF = Backoff(
    preset_id=SET0.preset_id, num_failed=3, last_build_at=ONE_MINUTE_AGO
)
# Coder's tests use Go's zero time (year 1) for "long ago"; the earliest
# instant prebuilds accepts is the Unix epoch (docs/limits.md).
ZERO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
SKIP_RUNNING = RunningPrebuild(
    id=uuid_n(99), preset_id=SET0.preset_id, created_at=ZERO_TIME
)

CAN_SKIP_CASES = [
    # name, active, deleted, deprecated, desired, changes, can skip, actions
    ("inactive_with_nothing_to_cleanup", False, False, False, 5, {}, True, []),
    ("inactive_with_running_workspaces", False, False, False, 0,
     {"running": (SKIP_RUNNING,)}, False, [delete(SKIP_RUNNING.id)]),
    ("inactive_with_pending_jobs", False, False, False, 0,
     {"pending_count": 3}, False, [CANCEL_PENDING]),
    ("inactive_with_one_pending_job", False, False, False, 0,
     {"pending_count": 1}, False, [CANCEL_PENDING]),
    ("inactive_with_backoff", False, False, False, 0,
     {"backoff": SKIP_BACKOFF}, False, [backoff(ONE_MINUTE_AGO + 3 * CAN_SKIP_INTERVAL)]),
    ("inactive_deleted_template_with_nothing_to_cleanup", False, True, False, 0, {}, True, []),
    ("inactive_deprecated_template_with_nothing_to_cleanup", False, False, True, 0, {}, True, []),
    ("inactive_hard_limited", False, False, False, 0, {"is_hard_limited": True}, True, []),
    ("active_with_desired_instances", True, False, False, 2,
     {"running": (SKIP_RUNNING, attrs.evolve(SKIP_RUNNING, id=uuid_n(98)))}, False, []),
    ("active_with_no_workspaces", True, False, False, 5, {}, False, [create(5)]),
    ("active_with_backoff", True, False, False, 5,
     {"backoff": SKIP_BACKOFF}, False, [backoff(ONE_MINUTE_AGO + 3 * CAN_SKIP_INTERVAL)]),
    # Differs from Coder: Coder's core plans Create 5 here; prebuilds plans
    # nothing for a hard-limited preset.
    ("active_hard_limited", True, False, False, 5, {"is_hard_limited": True}, False, []),
]  # fmt: skip


@pytest.mark.parametrize(
    (
        "active",
        "deleted",
        "deprecated",
        "desired",
        "changes",
        "expected_skip",
        "expected_actions",
    ),
    [case[1:] for case in CAN_SKIP_CASES],
    ids=[case[0] for case in CAN_SKIP_CASES],
)
def test_can_skip_reconciliation(
    *,
    active: bool,
    deleted: bool,
    deprecated: bool,
    desired: int,
    changes: dict[str, object],
    expected_skip: bool,
    expected_actions: list[ReconciliationActions],
) -> None:
    """
    TestCanSkipReconciliation: only an inactive preset with nothing running,
    expired, queued or backing off can be skipped; whenever it can, the
    calculator returns no (non-no-op) action. Differs from Coder in
    ``active_hard_limited`` only: prebuilds plans no Create for it.
    """
    snapshot = PresetSnapshot(
        preset=preset(
            active,
            desired,
            SET0,
            template_deleted=deleted,
            template_deprecated=deprecated,
        ),
        **changes,  # type: ignore[arg-type]
    )

    skip = can_skip_reconciliation(snapshot)
    actions = calculate_actions(snapshot, now=NOW, backoff_interval=CAN_SKIP_INTERVAL)

    assert expected_skip == skip
    assert expected_actions == actions
    if skip:
        assert all(a.is_noop for a in actions)


def test_can_skip_is_false_with_a_zero_failure_backoff_row() -> None:
    """A backoff row with num_failed 0 still prevents skipping (Coder's quirk, kept)."""
    snapshot = PresetSnapshot(
        preset=preset(False, 0, SET0),
        backoff=attrs.evolve(SKIP_BACKOFF, num_failed=0),
    )

    assert (False, []) == (
        can_skip_reconciliation(snapshot),
        calculate_actions(snapshot, now=NOW, backoff_interval=CAN_SKIP_INTERVAL),
    )


def test_can_skip_is_false_with_only_expired() -> None:
    """An inactive preset with only expired prebuilds cannot be skipped: they are deleted."""
    old = prebuilt(SET0, created_at=ZERO_TIME)
    snapshot = PresetSnapshot(preset=preset(False, 0, SET0), expired=(old,))

    assert (False, [delete(old.id)]) == (
        can_skip_reconciliation(snapshot),
        calculate_actions(snapshot, now=NOW, backoff_interval=CAN_SKIP_INTERVAL),
    )
