"""
``prebuilds.explain``: every reason sentence, the precedence between them,
the counts, ``to_dict``; pure, on hand-built snapshots.

The same sentences driven through real stores and the reconciler are in
``tests/test_status_engine.py``.
"""

from __future__ import annotations

import json
import uuid

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from hypothesis import given
from hypothesis import strategies as st

from prebuilds import (
    Backoff,
    InProgressCount,
    InvalidInputError,
    InvalidPreset,
    PoolStatus,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    PresetStatus,
    RunningPrebuild,
    Transition,
    calculate_state,
    explain,
)
from prebuilds._status import pool_statuses
from prebuilds.testing import strategies as pst


NOW = datetime(2026, 1, 5, 13, 0, tzinfo=timezone.utc)  # a Monday
MINUTE = timedelta(minutes=1)
PRESET_ID = uuid.UUID(int=1)


def preset(desired: int = 5, **fields: Any) -> Preset:
    fields.setdefault("name", "small")
    return Preset(
        id=PRESET_ID,
        template_id=uuid.UUID(int=2),
        template_version_id=uuid.UUID(int=3),
        desired_instances=desired,
        **fields,
    )


def prebuilds_(
    count: int, *, ready: bool = True, start: int = 100
) -> list[RunningPrebuild]:
    return [
        RunningPrebuild(
            id=uuid.UUID(int=start + i),
            preset_id=PRESET_ID,
            created_at=NOW - timedelta(minutes=10 + i),
            ready=ready,
        )
        for i in range(count)
    ]


def starting(
    count: int, transition: Transition = Transition.START
) -> list[InProgressCount]:
    return [InProgressCount(preset_id=PRESET_ID, transition=transition, count=count)]


def why(snapshot: PresetSnapshot | InvalidPreset, **kwargs: Any) -> str:
    kwargs.setdefault("backoff_interval", MINUTE)
    return explain(snapshot, now=NOW, **kwargs).reason


class TestReasons:
    """One test per sentence, in the order of precedence."""

    def test_below_target(self) -> None:
        """The issue's example: three ready of five, two starting."""
        snapshot = PresetSnapshot(
            preset=preset(5), running=prebuilds_(3), in_progress=starting(2)
        )

        assert "3 of 5 ready, 2 starting" == why(snapshot)

    def test_below_target_with_work_still_to_do(self) -> None:
        """Running but not ready, and what the next pass will create."""
        snapshot = PresetSnapshot(
            preset=preset(5),
            running=[*prebuilds_(2), *prebuilds_(1, ready=False, start=200)],
            in_progress=starting(1, Transition.DELETE),
        )

        assert "2 of 5 ready, 1 not ready yet, 2 to create, 1 deleting" == why(snapshot)

    def test_full(self) -> None:
        """Every wanted instance is ready."""
        snapshot = PresetSnapshot(preset=preset(5), running=prebuilds_(5))

        assert "full: 5 of 5 ready" == why(snapshot)

    def test_empty(self) -> None:
        """Nothing wanted, nothing there."""
        assert "empty: none wanted" == why(PresetSnapshot(preset=preset(0)))

    def test_shrinking(self) -> None:
        """More running than wanted."""
        snapshot = PresetSnapshot(preset=preset(2), running=prebuilds_(5))

        assert "shrinking: 5 running for 2 wanted, 3 to delete" == why(snapshot)

    def test_replacing_expired(self) -> None:
        """Expired instances are named before the size."""
        expired = prebuilds_(2, start=300)
        snapshot = PresetSnapshot(
            preset=preset(3), running=prebuilds_(1), expired=expired
        )

        assert "replacing 2 expired: 1 of 3 ready, 2 to create" == why(snapshot)

    def test_backing_off(self) -> None:
        """The issue's example: until when, after how many failures."""
        snapshot = PresetSnapshot(
            preset=preset(5),
            backoff=Backoff(
                preset_id=PRESET_ID, num_failed=2, last_build_at=NOW + 3 * MINUTE
            ),
        )

        assert "backing off until 13:05 UTC after 2 failed builds" == why(snapshot)

    def test_backing_off_past_midnight_names_the_date(self) -> None:
        """A backoff ending another day says which; seconds are kept."""
        snapshot = PresetSnapshot(
            preset=preset(5),
            backoff=Backoff(
                preset_id=PRESET_ID,
                num_failed=1,
                last_build_at=NOW + timedelta(hours=12, seconds=30),
            ),
        )

        assert "backing off until 2026-01-06 01:01:30 UTC after 1 failed build" == why(
            snapshot
        )

    def test_a_backoff_that_ended_is_no_reason(self) -> None:
        """Once *now* is past the backoff, the size speaks again."""
        snapshot = PresetSnapshot(
            preset=preset(1),
            backoff=Backoff(
                preset_id=PRESET_ID, num_failed=1, last_build_at=NOW - 2 * MINUTE
            ),
        )

        status = explain(snapshot, now=NOW, backoff_interval=MINUTE)

        assert ("0 of 1 ready, 1 to create", None, 1) == (
            status.reason,
            status.backoff_until,
            status.recent_failures,
        )

    def test_hard_limited(self) -> None:
        """The issue's example, naming the reconciler's limit."""
        snapshot = PresetSnapshot(
            preset=preset(5),
            is_hard_limited=True,
            backoff=Backoff(preset_id=PRESET_ID, num_failed=3, last_build_at=NOW),
        )

        assert (
            "hard-limited: the last 3 builds failed; call delete_failed() to try again"
            == why(snapshot, hard_limit=3)
        )

    def test_validation_failed(self) -> None:
        """A provisioner's rejection, with the error when the reconciler kept it."""
        snapshot = PresetSnapshot(
            preset=preset(5, status=PresetStatus.VALIDATION_FAILED),
            is_hard_limited=True,
        )

        assert [
            (
                "validation failed: the provisioner rejected the preset; "
                "publish a fixed template version"
            ),
            (
                "validation failed: missing parameter 'region'; "
                "publish a fixed template version"
            ),
        ] == [
            why(snapshot),
            why(snapshot, last_error="missing parameter 'region'"),
        ]

    @pytest.mark.parametrize(
        ("fields", "why_inactive"),
        [
            ({"using_active_version": False}, "template version no longer active"),
            ({"template_deleted": True}, "template deleted"),
            ({"template_deprecated": True}, "template deprecated"),
        ],
    )
    def test_draining(self, fields: dict[str, bool], why_inactive: str) -> None:
        """An inactive preset drains, then is drained."""
        draining = PresetSnapshot(
            preset=preset(5, **fields), running=prebuilds_(2), pending_count=1
        )
        drained = PresetSnapshot(preset=preset(5, **fields))

        assert [f"draining: {why_inactive}, 2 left", f"drained: {why_inactive}"] == [
            why(draining),
            why(drained),
        ]

    def test_paused(self) -> None:
        """Paused comes first, then what the pool would be doing."""
        snapshot = PresetSnapshot(
            preset=preset(5, using_active_version=False),
            running=prebuilds_(3),
            is_hard_limited=True,
        )

        assert "paused: draining: template version no longer active, 3 left" == why(
            snapshot, paused=True
        )

    def test_paused_counts(self) -> None:
        """A paused pool still says how full it is, and nothing 'to create'."""
        snapshot = PresetSnapshot(
            preset=preset(5), running=prebuilds_(3), in_progress=starting(2)
        )

        assert "paused: 3 of 5 ready, 2 starting" == why(snapshot, paused=True)

    def test_invalid_preset(self) -> None:
        """The issue's example: a preset the store cannot read."""
        invalid = InvalidPreset(
            preset_id=PRESET_ID,
            field="scheduling_timezone",
            value="'Mars/Base'",
            reason="unknown IANA time zone",
        )

        status = explain(invalid, now=NOW, backoff_interval=MINUTE, paused=True)

        assert (
            "invalid preset: unknown IANA time zone (scheduling_timezone='Mars/Base')",
            "unknown IANA time zone (scheduling_timezone='Mars/Base')",
            "invalid",
            0,
        ) == (
            status.reason,
            status.validation_error,
            status.desired_source,
            status.desired,
        )


class TestFields:
    """The counts and the schedule fields."""

    def test_counts_follow_calculate_state(self) -> None:
        """desired, eligible, in-progress and expired are calculate_state's."""
        snapshot = PresetSnapshot(
            preset=preset(4),
            running=[*prebuilds_(2), *prebuilds_(1, ready=False, start=200)],
            expired=prebuilds_(1, start=300),
            in_progress=[
                *starting(1),
                *starting(2, Transition.STOP),
                *starting(3, Transition.DELETE),
            ],
            pending_count=0,
        )
        state = calculate_state(snapshot, now=NOW)

        status = explain(snapshot, now=NOW, backoff_interval=MINUTE, failed_kept=2)

        assert (
            state.desired,
            3,
            state.eligible,
            state.starting,
            state.stopping,
            state.deleting,
            state.expired,
            2,
        ) == (
            status.desired,
            status.running,
            status.eligible,
            status.starting,
            status.stopping,
            status.deleting,
            status.expired,
            status.failed_kept,
        )

    def test_schedule_source_and_next_change(self) -> None:
        """Inside a window: the window's cron, and when it ends."""
        scheduled = preset(
            1,
            scheduling_timezone="Europe/Berlin",
            schedules=(PrebuildSchedule(cron="* 8-17 * * 1-5", instances=4),),
        )

        inside = explain(
            PresetSnapshot(preset=scheduled), now=NOW, backoff_interval=MINUTE
        )
        outside = explain(
            PresetSnapshot(preset=scheduled),
            now=NOW + timedelta(hours=6),
            backoff_interval=MINUTE,
        )

        assert (
            4,
            "schedule: * 8-17 * * 1-5",
            (datetime(2026, 1, 5, 17, 0, tzinfo=timezone.utc), 1),
        ) == (inside.desired, inside.desired_source, inside.next_change)
        assert (
            1,
            "base",
            (datetime(2026, 1, 6, 7, 0, tzinfo=timezone.utc), 4),
        ) == (outside.desired, outside.desired_source, outside.next_change)

    def test_inactive_has_no_desired_nor_change(self) -> None:
        """An inactive preset wants nothing and will not change its mind."""
        status = explain(
            PresetSnapshot(preset=preset(3, template_deleted=True)),
            now=NOW,
            backoff_interval=MINUTE,
        )

        assert (0, "inactive", None) == (
            status.desired,
            status.desired_source,
            status.next_change,
        )

    def test_names_and_ids(self) -> None:
        """The preset's name, its template's, and the organisation."""
        org = uuid.UUID(int=9)
        status = explain(
            PresetSnapshot(preset=preset(1, organization_id=org)),
            now=NOW,
            backoff_interval=MINUTE,
            template_name="python",
        )

        assert (PRESET_ID, "small", uuid.UUID(int=2), "python", org, NOW) == (
            status.preset_id,
            status.preset_name,
            status.template_id,
            status.template_name,
            status.organization_id,
            status.at,
        )


class TestToDict:
    def test_json_ready(self) -> None:
        """UUIDs and datetimes become strings, next_change an object."""
        scheduled = preset(
            1,
            scheduling_timezone="Europe/Berlin",
            schedules=(PrebuildSchedule(cron="* 8-17 * * 1-5", instances=4),),
        )
        snapshot = PresetSnapshot(
            preset=scheduled,
            backoff=Backoff(preset_id=PRESET_ID, num_failed=1, last_build_at=NOW),
        )

        document = explain(
            snapshot, now=NOW, backoff_interval=MINUTE, template_name="python"
        ).to_dict()

        assert {
            "preset_id": str(PRESET_ID),
            "preset_name": "small",
            "template_id": str(uuid.UUID(int=2)),
            "template_name": "python",
            "organization_id": None,
            "at": "2026-01-05T13:00:00+00:00",
            "desired": 4,
            "desired_source": "schedule: * 8-17 * * 1-5",
            "next_change": {"at": "2026-01-05T17:00:00+00:00", "count": 1},
            "running": 0,
            "eligible": 0,
            "starting": 0,
            "stopping": 0,
            "deleting": 0,
            "expired": 0,
            "failed_kept": 0,
            "pending_old_versions": 0,
            "backoff_until": "2026-01-05T13:01:00+00:00",
            "recent_failures": 1,
            "hard_limited": False,
            "validation_error": None,
            "paused": False,
            "last_error": None,
            "reason": "backing off until 13:01 UTC after 1 failed build",
        } == document
        assert document == json.loads(json.dumps(document))

    def test_every_field_is_in_the_dict(self) -> None:
        """to_dict names every field of PoolStatus, no more."""
        status = PoolStatus(preset_id=PRESET_ID, at=NOW)

        assert [f.name for f in attrs.fields(PoolStatus)] == list(status.to_dict())


class TestInput:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"now": datetime(2026, 1, 5)}, "now"),  # noqa: DTZ001 - naive on purpose
            ({"backoff_interval": 5}, "backoff_interval"),
            ({"hard_limit": -1}, "hard_limit"),
            ({"paused": "no"}, "paused"),
            ({"failed_kept": -1}, "failed_kept"),
            ({"last_error": 3}, "last_error"),
            ({"template_name": None}, "template_name"),
        ],
    )
    def test_bad_arguments_are_named(self, kwargs: dict[str, Any], field: str) -> None:
        """Each bad argument raises InvalidInputError naming it."""
        kwargs.setdefault("now", NOW)
        kwargs.setdefault("backoff_interval", MINUTE)

        with pytest.raises(InvalidInputError) as caught:
            explain(PresetSnapshot(preset=preset()), **kwargs)

        assert field == caught.value.field

    def test_a_snapshot_of_another_type(self) -> None:
        """Only a PresetSnapshot or an InvalidPreset is explained."""
        with pytest.raises(InvalidInputError) as caught:
            explain(preset(), now=NOW, backoff_interval=MINUTE)  # type: ignore[arg-type]

        assert "snapshot" == caught.value.field

    def test_next_change_must_be_a_pair(self) -> None:
        """A PoolStatus built by hand checks next_change; a list is a pair."""
        with pytest.raises(InvalidInputError) as caught:
            PoolStatus(preset_id=PRESET_ID, at=NOW, next_change=(NOW,))

        assert "next_change" == caught.value.field
        assert (NOW, 2) == PoolStatus(
            preset_id=PRESET_ID,
            at=NOW,
            next_change=[NOW, 2],
        ).next_change


class TestPoolStatuses:
    def test_every_preset_and_every_invalid_one_sorted(self) -> None:
        """One status per preset, invalid ones too, sorted by names then ID."""
        from prebuilds import GlobalSnapshot

        a = attrs.evolve(preset(1), id=uuid.UUID(int=11), name="b")
        b = attrs.evolve(preset(1), id=uuid.UUID(int=12), name="a")
        invalid = InvalidPreset(
            preset_id=uuid.UUID(int=13), field="x", value="1", reason="bad"
        )
        snapshot = GlobalSnapshot(presets=[a, b], invalid_presets=[invalid])

        statuses = pool_statuses(
            snapshot,
            now=NOW,
            backoff_interval=MINUTE,
            template_names={a.template_id: "tpl"},
            failed_kept={a.id: 2},
            last_errors={b.id: "boom"},
        )

        assert [
            (uuid.UUID(int=13), "", 0, None),
            (uuid.UUID(int=12), "tpl", 0, "boom"),
            (uuid.UUID(int=11), "tpl", 2, None),
        ] == [
            (s.preset_id, s.template_name, s.failed_kept, s.last_error)
            for s in statuses
        ]


@given(snapshot=pst.preset_snapshots(), paused=st.booleans())
def test_every_snapshot_gets_a_reason(snapshot: PresetSnapshot, paused: bool) -> None:
    """explain never fails on a valid snapshot, and always says something."""
    status = explain(snapshot, now=NOW, backoff_interval=MINUTE, paused=paused)

    assert status.reason
    assert status.paused == status.reason.startswith("paused: ")
    assert status.preset_id == snapshot.preset.id
