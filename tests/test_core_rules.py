"""
The core's refusals, word for word, and the edges of its validators.

A host reads an error's ``reason`` to tell its user what to fix, so each
reason is part of the contract: the cron grammar names the field, the text
and the range (``hour field '24': out of range 0-23``), and every record
says what it wanted. The attrs validators and the module constants of the
core are not mutated by mutation testing: their edges are pinned here, the
last value accepted beside the first refused.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

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
    ReconciliationActions,
    RunningPrebuild,
    Transition,
    calculate_actions,
    claimed_lifecycle,
    exceptions,
)
from prebuilds._schedule import parse_cron


NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)
NAIVE = datetime(2024, 1, 1)  # noqa: DTZ001
ID = uuid.UUID(int=1)


def make_preset(**changes: Any) -> Preset:
    fields: dict[str, Any] = {
        "id": ID,
        "template_id": uuid.UUID(int=2),
        "template_version_id": uuid.UUID(int=3),
        "desired_instances": 1,
    }
    return Preset(**{**fields, **changes})


def refusal(call: Callable[[], object]) -> tuple[str, object, str]:
    """The field, value and reason of the InvalidInputError *call* raises."""
    with pytest.raises(InvalidInputError) as info:
        call()
    return info.value.field, info.value.value, info.value.reason


CRON_REASONS = [
    # spec, reason
    ("* 9 * *", "expected exactly 5 fields"),
    ("* 9 * * 1 2025", "expected exactly 5 fields"),
    ("0 9 * * 1", "the minute field must be *"),
    ("* 24 * * *", "hour field '24': out of range 0-23"),
    ("* 17-9 * * *", "hour field '17-9': out of range 0-23"),
    ("* 9 0 * *", "day of month field '0': out of range 1-31"),
    ("* 9 32 * *", "day of month field '32': out of range 1-31"),
    ("* 9 * 0 *", "month field '0': out of range 1-12"),
    ("* 9 * 13 *", "month field '13': out of range 1-12"),
    ("* 9 * * 7", "day of week field '7': out of range 0-6"),
    ("* 9 * * 6-7", "day of week field '6-7': out of range 0-6"),
    ("* 9 * * MON", "day of week field 'MON': expected *, N, N-M or a comma list"),
    ("* 9 * JAN *", "month field 'JAN': expected *, N, N-M or a comma list"),
    ("* 9- * * *", "hour field '9-': expected *, N, N-M or a comma list"),
    ("* -1 * * *", "hour field '-1': expected *, N, N-M or a comma list"),
    ("* 9,,10 * * *", "hour field '9,,10': expected *, N, N-M or a comma list"),
    ("* 8,9-x * * *", "hour field '8,9-x': expected *, N, N-M or a comma list"),
    ("* \u0661 * * *", "hour field '\u0661': expected *, N, N-M or a comma list"),
]


class TestCronReasons:
    @pytest.mark.parametrize(("cron", "reason"), CRON_REASONS)
    def test_reason(self, cron: str, reason: str) -> None:
        """A malformed spec is refused on ``cron``, saying which field and why."""
        assert ("cron", cron, reason) == refusal(lambda: parse_cron(cron))

    def test_not_a_string(self) -> None:
        """A spec that is not a string is refused as such."""
        assert ("cron", 9, "must be a string") == refusal(
            lambda: parse_cron(9)  # type: ignore[arg-type]
        )

    @pytest.mark.parametrize(
        ("field", "low", "high"),
        [
            ("hour", 0, 23),
            ("day of month", 1, 31),
            ("month", 1, 12),
            ("day of week", 0, 6),
        ],
    )
    def test_field_bounds(self, field: str, low: int, high: int) -> None:
        """Each field takes exactly its lowest to its highest value, both included."""
        position = ["hour", "day of month", "month", "day of week"].index(field)

        def spec(value: str) -> str:
            parts = ["*", "*", "*", "*"]
            parts[position] = value
            return "* " + " ".join(parts)

        window = parse_cron(spec(f"{low}-{high}"))
        sets = (window.hours, window.days, window.months, window.weekdays)
        below, above = str(low - 1), str(high + 1)
        reason = f"out of range {low}-{high}"

        assert frozenset(range(low, high + 1)) == sets[position]
        if low > 0:  # "-1" is no number at all
            assert (
                f"{field} field '{below}': {reason}"
                == refusal(lambda: parse_cron(spec(below)))[2]
            )
        assert (
            f"{field} field '{above}': {reason}"
            == refusal(lambda: parse_cron(spec(above)))[2]
        )

    @pytest.mark.parametrize(
        ("cron", "dom_star", "dow_star"),
        [
            ("* * * * *", True, True),
            ("* * 1 * *", False, True),
            ("* * * * 1", True, False),
            ("* * 1-31 * 0-6", False, False),
        ],
    )
    def test_star_is_the_text_not_the_set(
        self, cron: str, dom_star: bool, dow_star: bool
    ) -> None:
        """
        Cron's day rule looks at whether a field was written ``*``: a range
        of every value restricts the field, so the days then match by OR.
        """
        window = parse_cron(cron)

        assert (dom_star, dow_star) == (window.dom_star, window.dow_star)


RECORD_REASONS: list[tuple[str, Callable[[], object], str, object, str]] = [
    # id, call, field, value, reason
    ("naive-datetime", lambda: RunningPrebuild(id=ID, preset_id=ID, created_at=NAIVE),
     "created_at", NAIVE, "must be timezone-aware"),
    ("not-a-datetime", lambda: RunningPrebuild(id=ID, preset_id=ID, created_at="2024"),  # type: ignore[arg-type]
     "created_at", "2024", "must be a datetime"),
    ("naive-optional-datetime", lambda: make_preset(last_invalidated_at=NAIVE),
     "last_invalidated_at", NAIVE, "must be timezone-aware"),
    ("negative-count", lambda: make_preset(desired_instances=-1), "desired_instances", -1,
     "must be between 0 and 10000"),
    ("bool-count", lambda: make_preset(desired_instances=True), "desired_instances", True, "must be an int"),
    ("float-count", lambda: make_preset(desired_instances=1.0), "desired_instances", 1.0, "must be an int"),
    ("negative-instances", lambda: PrebuildSchedule(cron="* * * * *", instances=-1), "instances", -1,
     "must be between 0 and 10000"),
    ("str-instances", lambda: PrebuildSchedule(cron="* * * * *", instances="2"),  # type: ignore[arg-type]
     "instances", "2", "must be an int"),
    ("negative-ttl", lambda: make_preset(ttl=timedelta(microseconds=-1)), "ttl", timedelta(microseconds=-1),
     "must be >= 0"),
    ("ttl-not-timedelta", lambda: make_preset(ttl=60), "ttl", 60, "must be a timedelta"),
    ("id-not-uuid", lambda: make_preset(id=str(ID)), "id", str(ID), "must be a uuid.UUID"),
    ("optional-id-not-uuid", lambda: make_preset(organization_id=7), "organization_id", 7,
     "must be a uuid.UUID"),
    ("name-not-str", lambda: make_preset(name=b"x"), "name", b"x", "must be a string"),
    ("zone-not-str", lambda: make_preset(scheduling_timezone=1), "scheduling_timezone", 1, "must be a string"),
    ("unknown-zone", lambda: make_preset(scheduling_timezone="Nowhere/Land"), "scheduling_timezone",
     "Nowhere/Land", "unknown IANA time zone"),
    ("schedule-not-a-schedule", lambda: make_preset(schedules=[None]), "schedules", None,
     "must be a PrebuildSchedule"),
    ("overlapping-schedules", lambda: make_preset(
        schedules=[PrebuildSchedule(cron="* 9 * * *", instances=1),
                   PrebuildSchedule(cron="* 9 1 * *", instances=2)]),
     "schedules", ("* 9 * * *", "* 9 1 * *"), "schedules overlap"),
    ("parameter-not-a-pair", lambda: make_preset(parameters=[("a",)]), "parameters", ("a",),
     "must be (name, value) string pairs"),
    ("parameter-not-a-tuple", lambda: make_preset(parameters=[["a", "b"]]), "parameters", ["a", "b"],
     "must be (name, value) string pairs"),
    ("parameter-not-strings", lambda: make_preset(parameters=[("a", 1)]), "parameters", ("a", 1),
     "must be (name, value) string pairs"),
    ("negative-in-progress", lambda: InProgressCount(preset_id=ID, transition=Transition.STOP, count=-1),
     "count", -1, "must be between 0 and 9223372036854775807"),
    ("negative-pending", lambda: PendingCount(preset_id=ID, count=-1), "count", -1, "must be between 0 and 9223372036854775807"),
    ("negative-failures", lambda: Backoff(preset_id=ID, num_failed=-1, last_build_at=NOW), "num_failed", -1,
     "must be between 0 and 9223372036854775807"),
    ("negative-pending-count", lambda: PresetSnapshot(preset=make_preset(), pending_count=-1),
     "pending_count", -1, "must be between 0 and 9223372036854775807"),
    ("naive-now", lambda: GlobalSnapshot().filter_by_preset(ID, now=NAIVE), "now", NAIVE,
     "must be timezone-aware"),
    ("negative-backoff-interval", lambda: calculate_actions(
        PresetSnapshot(preset=make_preset()), now=NOW, backoff_interval=timedelta(microseconds=-1)),
     "backoff_interval", timedelta(microseconds=-1), "must be >= 0"),
    ("negative-claim-ttl", lambda: claimed_lifecycle(
        now=NOW, autostart_schedule=None, next_start_at=None, ttl=timedelta(seconds=-1),
        template_default_ttl=None),
     "ttl", timedelta(seconds=-1), "must be >= 0"),
    ("naive-next-start", lambda: claimed_lifecycle(
        now=NOW, autostart_schedule=None, next_start_at=NAIVE, ttl=None, template_default_ttl=None),
     "next_start_at", NAIVE, "must be timezone-aware"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "field", "value", "reason"),
    [case[1:] for case in RECORD_REASONS],
    ids=[case[0] for case in RECORD_REASONS],
)
def test_record_reasons(
    call: Callable[[], object], field: str, value: object, reason: str
) -> None:
    """Each refusal names the field and the value, and says what was wanted."""
    assert (field, value, reason) == refusal(call)


def test_message_carries_field_value_and_reason() -> None:
    """The message reads ``invalid FIELD=VALUE!r: REASON``."""
    error = InvalidInputError("ttl", timedelta(seconds=-1), "must be >= 0")

    assert (
        "invalid ttl=datetime.timedelta(days=-1, seconds=86399): must be >= 0"
        == str(error)
    )


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive in effect."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


class TestValidatorEdges:
    """The last value accepted and the first refused, for every validator."""

    def test_counts_start_at_zero(self) -> None:
        """0 is a count, -1 is not, for every count field."""
        zero = [
            make_preset(desired_instances=0).desired_instances,
            PrebuildSchedule(cron="* * * * *", instances=0).instances,
            InProgressCount(preset_id=ID, transition=Transition.START, count=0).count,
            PendingCount(preset_id=ID, count=0).count,
            Backoff(preset_id=ID, num_failed=0, last_build_at=NOW).num_failed,
            PresetSnapshot(preset=make_preset(), pending_count=0).pending_count,
        ]

        assert [0] * 6 == zero

    def test_durations_start_at_zero(self) -> None:
        """A zero TTL and a zero backoff interval are valid; a microsecond less is not."""
        snapshot = PresetSnapshot(preset=make_preset(ttl=timedelta(0)))
        lifecycle = claimed_lifecycle(
            now=NOW,
            autostart_schedule=None,
            next_start_at=None,
            ttl=timedelta(0),
            template_default_ttl=timedelta(hours=1),
        )

        assert timedelta(0) == snapshot.preset.ttl
        assert [
            ReconciliationActions(action_type=ActionType.CREATE, create=1)
        ] == calculate_actions(snapshot, now=NOW, backoff_interval=timedelta(0))
        assert timedelta(0) == lifecycle.ttl

    def test_an_offset_of_none_is_naive(self) -> None:
        """A tzinfo whose offset is None does not make a datetime aware."""
        vague = datetime(2024, 1, 1, tzinfo=NoOffset())

        assert ("created_at", vague, "must be timezone-aware") == refusal(
            lambda: RunningPrebuild(id=ID, preset_id=ID, created_at=vague)
        )

    def test_optional_fields_take_none(self) -> None:
        """None is valid for every optional field of a preset."""
        preset = make_preset(organization_id=None, ttl=None, last_invalidated_at=None)

        assert (None, None, None) == (
            preset.organization_id,
            preset.ttl,
            preset.last_invalidated_at,
        )


class TestErrorMessages:
    """What every error says: a host logs it, a user may read it."""

    @pytest.mark.parametrize(
        ("error", "message"),
        [
            (exceptions.PresetNotFoundError(ID), f"no preset found with ID '{ID}'"),
            (exceptions.InstanceNotFoundError(ID), f"no instance found with ID '{ID}'"),
            (exceptions.BuildNotFoundError(ID), f"no build found with ID '{ID}'"),
            (
                exceptions.NoClaimablePrebuildsError(ID),
                "no claimable prebuilt instances found",
            ),
            (exceptions.PresetInactiveError(ID), f"preset '{ID}' is not active"),
            (
                exceptions.PrebuildsNotSupportedError(),
                "prebuilt instances are not enabled in this host",
            ),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
    )
    def test_message(self, error: exceptions.PrebuildsError, message: str) -> None:
        """Each error's message, and the ID it carries."""
        assert message == str(error)

    def test_ids_are_kept(self) -> None:
        """Lookup and claim errors keep the ID they were raised for."""
        assert [ID, ID, ID, ID, ID, None] == [
            exceptions.PresetNotFoundError(ID).preset_id,
            exceptions.InstanceNotFoundError(ID).instance_id,
            exceptions.BuildNotFoundError(ID).build_id,
            exceptions.NoClaimablePrebuildsError(ID).preset_id,
            exceptions.PresetInactiveError(ID).preset_id,
            exceptions.NoClaimablePrebuildsError().preset_id,
        ]
