"""
Cron windows, time zones and desired counts over time (prebuilds._schedule).

croniter is an independent oracle for the window arithmetic; it is a test
dependency only.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import re
import uuid

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from croniter import croniter
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prebuilds import (
    InvalidInputError,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    calculate_state,
    desired_instances,
    next_change,
)
from prebuilds._schedule import CronWindow, load_zone, parse_cron, windows_overlap
from prebuilds.testing import strategies


UTC = timezone.utc


def make_preset(
    zone: str = "UTC", *schedules: tuple[str, int], base: int = 1, **changes: Any
) -> Preset:
    return Preset(
        id=uuid.UUID(int=1),
        template_id=uuid.UUID(int=2),
        template_version_id=uuid.UUID(int=3),
        desired_instances=base,
        scheduling_timezone=zone,
        schedules=[PrebuildSchedule(cron=c, instances=n) for c, n in schedules],
        **changes,
    )


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class TestParseCron:
    """The restricted grammar: ``* HOUR DOM MONTH DOW``."""

    def test_fields(self) -> None:
        """Numbers, inclusive ranges and comma lists become sets; ``*`` is every value."""
        window = parse_cron("* 9-11,13 1,15-16 * 0,6")

        assert (
            CronWindow(
                hours=frozenset({9, 10, 11, 13}),
                days=frozenset({1, 15, 16}),
                months=frozenset(range(1, 13)),
                weekdays=frozenset({0, 6}),
                dom_star=False,
                dow_star=False,
            )
            == window
        )

    def test_bounds_inclusive(self) -> None:
        """Every field accepts its lowest and highest value."""
        window = parse_cron("* 0-23 1-31 1-12 0-6")

        assert (range(24), range(1, 32), range(1, 13), range(7)) == (
            range(min(window.hours), max(window.hours) + 1),
            range(min(window.days), max(window.days) + 1),
            range(min(window.months), max(window.months) + 1),
            range(min(window.weekdays), max(window.weekdays) + 1),
        )

    def test_extra_whitespace(self) -> None:
        """Fields are separated by any run of whitespace."""
        assert parse_cron("* 9 * * 1") == parse_cron("  *\t9  *  * 1 ")

    @pytest.mark.parametrize(
        "cron",
        [
            "",
            "* 9 * *",
            "* 9 * * 1 2025",
            "0 9 * * 1",
            "*/5 9 * * 1",
            "* 24 * * *",
            "* 9 0 * *",
            "* 9 32 * *",
            "* 9 * 0 *",
            "* 9 * 13 *",
            "* 9 * * 7",
            "* 9 * * 6-7",
            "* */2 * * *",
            "* 9 * * MON",
            "* 9 * JAN *",
            "* 9 ? * *",
            "* 17-9 * * *",
            "* 9,,10 * * *",
            "* -1 * * *",
            "* 9- * * *",
            "* 1-2-3 * * *",
            "* 9 L * *",
            "* \u0661 * * *",
            "* \u00b2 * * *",
            "@daily",
        ],
    )
    def test_malformed_is_rejected(self, cron: str) -> None:
        """A malformed spec raises InvalidInputError naming the field ``cron`` and the spec."""
        with pytest.raises(InvalidInputError, match="cron") as info:
            parse_cron(cron)

        assert ("cron", cron) == (info.value.field, info.value.value)

    def test_not_a_string(self) -> None:
        """A spec that is not a string is rejected, naming ``cron``."""
        with pytest.raises(InvalidInputError) as info:
            parse_cron(9)  # type: ignore[arg-type]

        assert ("cron", 9) == (info.value.field, info.value.value)

    def test_schedule_rejects_negative_instances(self) -> None:
        """A schedule's instance count must be >= 0, naming ``instances``."""
        with pytest.raises(InvalidInputError) as info:
            PrebuildSchedule(cron="* 9 * * *", instances=-1)

        assert ("instances", -1) == (info.value.field, info.value.value)


def naive(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *rest: int
) -> datetime:
    """A naive wall time: what a window sees once *at* is in its zone."""
    second, microsecond = (*rest, 0, 0)[:2]
    return datetime(year, month, day, hour, minute, second, microsecond)  # noqa: DTZ001


class TestContains:
    """Windows cover whole hours, with cron's day matching."""

    @pytest.mark.parametrize(
        ("local", "expected"),
        [
            (naive(2025, 6, 2, 8, 59, 59, 999999), False),
            (naive(2025, 6, 2, 9), True),
            (naive(2025, 6, 2, 18, 59, 59, 999999), True),
            (naive(2025, 6, 2, 19), False),
            (naive(2025, 6, 7, 12), False),
            (naive(2025, 6, 8, 12), False),
        ],
        ids=["before", "start", "last-microsecond", "after", "saturday", "sunday"],
    )
    def test_working_hours(self, local: datetime, expected: bool) -> None:
        """``* 9-18 * * 1-5`` covers Monday to Friday, 09:00:00 to 18:59:59.999999."""
        assert expected == parse_cron("* 9-18 * * 1-5").contains_local(local)

    @pytest.mark.parametrize(
        ("cron", "local", "expected"),
        [
            ("* * 1 * 1", naive(2025, 6, 1), True),  # Sunday the 1st: by DOM
            ("* * 1 * 1", naive(2025, 6, 2), True),  # Monday the 2nd: by DOW
            ("* * 1 * 1", naive(2025, 6, 3), False),
            ("* * 1 * *", naive(2025, 6, 2), False),  # DOW * : AND
            ("* * * * 1", naive(2025, 6, 1), False),  # DOM * : AND
            ("* * 2 6 *", naive(2025, 7, 2), False),  # month must match
        ],
    )
    def test_day_matching(self, cron: str, local: datetime, expected: bool) -> None:
        """Both DOM and DOW restricted: either may match; one ``*``: both must."""
        assert expected == parse_cron(cron).contains_local(local)


class TestOverlap:
    """Coder's field-wise overlap check."""

    @pytest.mark.parametrize(
        ("first", "second", "expected"),
        [
            ("* 9-17 * * 1-5", "* 17-20 * * 5", True),
            ("* 9-17 * * 1-5", "* 18-20 * * 1-5", False),  # hours disjoint
            ("* 9 * 1-6 *", "* 9 * 7-12 *", False),  # months disjoint
            ("* 9 * * 1-5", "* 9 * * 0,6", False),  # DOM *: weekdays compared
            ("* 9 * * 1", "* 9 15 * *", True),  # DOM *: weekdays {1} vs all
            ("* 9 1 * *", "* 9 2 * *", False),  # DOW *: days compared
            ("* 9 1 * *", "* 9 1-2 * *", True),  # DOW *: days share the 1st
            ("* 9 * * 1", "* 9 15 * 2", False),  # DOM * in one: weekdays only
            ("* 9 1 * 1", "* 9 2 * 2", False),  # both restricted: days or weekdays
            ("* 9 1 * 1", "* 9 2 * 1", True),
            ("* 9 1 * 1", "* 9 1 * 2", True),
        ],
    )
    def test_windows_overlap(self, first: str, second: str, expected: bool) -> None:
        """Months, then days (DOW, DOM or either), then hours must intersect."""
        a, b = parse_cron(first), parse_cron(second)

        assert (expected, expected) == (windows_overlap(a, b), windows_overlap(b, a))

    def test_overlapping_schedules_rejected(self) -> None:
        """A Preset with two overlapping schedules raises InvalidInputError on ``schedules``."""
        with pytest.raises(InvalidInputError, match="schedules") as info:
            make_preset(
                "UTC", ("* 9-17 * * 1-5", 2), ("* 20 * * *", 1), ("* 17 * * 5", 3)
            )

        assert ("schedules", ("* 9-17 * * 1-5", "* 17 * * 5")) == (
            info.value.field,
            info.value.value,
        )

    def test_schedules_must_be_schedules(self) -> None:
        """A schedule given as a plain string is rejected on ``schedules``."""
        with pytest.raises(InvalidInputError) as info:
            Preset(
                id=uuid.UUID(int=1),
                template_id=uuid.UUID(int=2),
                template_version_id=uuid.UUID(int=3),
                desired_instances=1,
                schedules=["* 9 * * *"],  # type: ignore[list-item]
            )

        assert ("schedules", "* 9 * * *") == (info.value.field, info.value.value)


class TestTimeZones:
    """Zones are IANA names, checked when the Preset is built."""

    @pytest.mark.parametrize(
        "zone", ["Mars/Olympus_Mons", "../../etc/passwd", "utc+1", "America/"]
    )
    def test_unknown_zone_rejected(self, zone: str) -> None:
        """An unknown zone raises InvalidInputError naming ``scheduling_timezone``."""
        with pytest.raises(InvalidInputError, match="scheduling_timezone") as info:
            make_preset(zone, ("* 9 * * *", 2))

        assert ("scheduling_timezone", zone) == (info.value.field, info.value.value)

    def test_zone_not_a_string(self) -> None:
        """A zone that is not a string is rejected on ``scheduling_timezone``."""
        with pytest.raises(InvalidInputError) as info:
            make_preset(None)  # type: ignore[arg-type]

        assert "scheduling_timezone" == info.value.field

    def test_load_zone(self) -> None:
        """load_zone returns the ZoneInfo of a known name."""
        assert "Asia/Kolkata" == load_zone("Asia/Kolkata").key

    @pytest.mark.parametrize(
        ("at", "expected"),
        [
            (utc(2025, 6, 2, 3, 29), 1),  # 08:59 IST
            (utc(2025, 6, 2, 3, 30), 4),  # 09:00 IST
            (utc(2025, 6, 2, 12, 29), 4),  # 17:59 IST
            (utc(2025, 6, 2, 12, 30), 1),  # 18:00 IST
        ],
    )
    def test_half_hour_offset(self, at: datetime, expected: int) -> None:
        """In Asia/Kolkata (UTC+5:30) a window starts and ends on the half hour in UTC."""
        preset = make_preset("Asia/Kolkata", ("* 9-17 * * 1-5", 4))

        assert expected == desired_instances(preset, at=at)


class TestDaylightSaving:
    """Windows follow wall-clock time through DST changes."""

    def test_spring_forward_skipped_hour_never_matches(self) -> None:
        """
        America/Los_Angeles, 9 March 2025: 02:00 does not exist, so a
        ``* 2 * * *`` window is empty that day; the next is 10 March 02:00 PDT.
        """
        preset = make_preset("America/Los_Angeles", ("* 2 * * *", 5))
        day = [utc(2025, 3, 9, 8) + timedelta(minutes=15 * k) for k in range(4 * 4)]

        assert [1] * len(day) == [desired_instances(preset, at=t) for t in day]
        assert (utc(2025, 3, 10, 9), 5) == next_change(
            preset, after=utc(2025, 3, 8, 12)
        )

    def test_spring_forward_hours_around(self) -> None:
        """LA, 9 March 2025: 01:00 PST is 09:00Z, 03:00 PDT is 10:00Z."""
        preset = make_preset("America/Los_Angeles", ("* 1 * * *", 2), ("* 3 * * *", 3))

        assert [1, 2, 2, 3, 3, 1] == [
            desired_instances(preset, at=t)
            for t in (
                utc(2025, 3, 9, 8, 59),
                utc(2025, 3, 9, 9),
                utc(2025, 3, 9, 9, 59),
                utc(2025, 3, 9, 10),
                utc(2025, 3, 9, 10, 59),
                utc(2025, 3, 9, 11),
            )
        ]

    def test_fall_back_repeated_hour_matches_twice(self) -> None:
        """
        LA, 2 November 2025: 01:00-01:59 happens twice (PDT, then PST), so a
        ``* 1 * * *`` window lasts two hours, 08:00Z to 10:00Z.
        """
        preset = make_preset("America/Los_Angeles", ("* 1 * * *", 5))

        assert (utc(2025, 11, 2, 8), 5) == next_change(
            preset, after=utc(2025, 11, 2, 7, 30)
        )
        assert (utc(2025, 11, 2, 10), 1) == next_change(
            preset, after=utc(2025, 11, 2, 8)
        )
        assert 5 == desired_instances(preset, at=utc(2025, 11, 2, 9, 30))

    def test_berlin_working_hours_across_spring_forward(self) -> None:
        """
        Europe/Berlin ``* 8-17 * * 1-5``: 08:00 is 07:00Z on Friday 28 March
        2025 (CET) and 06:00Z on Monday 31 March (CEST).
        """
        preset = make_preset("Europe/Berlin", ("* 8-17 * * 1-5", 3))

        assert (utc(2025, 3, 31, 6), 3) == next_change(
            preset, after=utc(2025, 3, 28, 17)
        )
        assert [1, 3, 3, 1] == [
            desired_instances(preset, at=t)
            for t in (
                utc(2025, 3, 28, 6, 59),
                utc(2025, 3, 28, 7),
                utc(2025, 3, 31, 6),
                utc(2025, 3, 31, 5, 59),
            )
        ]

    def test_berlin_fall_back(self) -> None:
        """Berlin, 26 October 2025: 02:00-02:59 happens twice: 00:00Z to 02:00Z."""
        preset = make_preset("Europe/Berlin", ("* 2 * * *", 5))

        assert (utc(2025, 10, 26, 0), 5) == next_change(
            preset, after=utc(2025, 10, 25, 23)
        )
        assert (utc(2025, 10, 26, 2), 1) == next_change(preset, after=utc(2025, 10, 26))

    def test_lord_howe_half_hour_shift(self) -> None:
        """
        Australia/Lord_Howe moves its clocks by 30 minutes: on 5 October 2025
        02:00 becomes 02:30, so ``* 2 * * *`` lasts half an hour that day.
        """
        preset = make_preset("Australia/Lord_Howe", ("* 2 * * *", 5))

        assert (utc(2025, 10, 4, 15, 30), 5) == next_change(
            preset, after=utc(2025, 10, 3, 18)
        )
        assert (utc(2025, 10, 4, 16), 1) == next_change(
            preset, after=utc(2025, 10, 4, 15, 30)
        )


class TestNextChange:
    """What will my pool look like tonight?"""

    def test_tonight(self) -> None:
        """
        Berlin office hours ``* 8-17 * * 1-5`` -> 3, base 1: at 14:00 CEST on a
        Monday the pool shrinks at 18:00 CEST (16:00Z) and grows again on
        Tuesday at 08:00 CEST.
        """
        preset = make_preset("Europe/Berlin", ("* 8-17 * * 1-5", 3))

        tonight = next_change(preset, after=utc(2025, 6, 2, 12))
        tomorrow = next_change(preset, after=utc(2025, 6, 2, 16))

        assert (utc(2025, 6, 2, 16), 1) == tonight
        assert (utc(2025, 6, 3, 6), 3) == tomorrow

    def test_weekend(self) -> None:
        """From Friday evening the next change is Monday morning."""
        preset = make_preset("Europe/Berlin", ("* 8-17 * * 1-5", 3))

        assert (utc(2025, 6, 9, 6), 3) == next_change(preset, after=utc(2025, 6, 6, 18))

    def test_exact_boundary_is_not_a_change(self) -> None:
        """From the very instant of a change, the next one is reported, in UTC."""
        preset = make_preset("UTC", ("* 9-17 * * *", 3))
        berlin = load_zone("Europe/Berlin")

        after = next_change(preset, after=utc(2025, 6, 2, 9).astimezone(berlin))

        assert (utc(2025, 6, 2, 18), 1) == after
        assert after is not None
        assert UTC is after[0].tzinfo

    def test_sub_second_after(self) -> None:
        """A fractional *after* just before a mark still finds that mark."""
        preset = make_preset("UTC", ("* 9 * * *", 3))

        assert (utc(2025, 6, 2, 9), 3) == next_change(
            preset,
            after=utc(2025, 6, 2, 8, 59) + timedelta(seconds=59, microseconds=999999),
        )

    @pytest.mark.parametrize(
        ("zone", "schedules"),
        [
            ("UTC", ()),
            ("", (("* 9 * * *", 3),)),
            ("UTC", (("* * * * *", 3),)),
            ("UTC", (("* 9 31 2 *", 3),)),
            ("UTC", (("* 9 * * *", 1),)),
        ],
        ids=["no-schedules", "no-zone", "always", "never", "same-count"],
    )
    def test_never_changes(self, zone: str, schedules: tuple[tuple[str, int]]) -> None:
        """No change is reported when the desired count is constant."""
        preset = make_preset(zone, *schedules)

        assert None is next_change(preset, after=utc(2025, 6, 2))

    def test_leap_day_across_a_century(self) -> None:
        """
        2100 is not a leap year: a window on 29 February that closes in 2096
        opens next on 29 February 2104, eight years on.
        """
        preset = make_preset("UTC", ("* 0 29 2 *", 3))

        assert (utc(2096, 2, 29, 1), 1) == next_change(
            preset, after=utc(2096, 2, 29, 0, 30)
        )
        assert (utc(2104, 2, 29), 3) == next_change(preset, after=utc(2096, 2, 29, 1))
        assert (utc(2104, 2, 29), 3) == next_change(preset, after=utc(2100, 2, 24))

    def test_leap_day_on_a_monday(self) -> None:
        """
        A count that changes only on a Monday 29 February (the first window
        takes every other February night, at the count the preset has
        anyway) waits 40 years after 2072: 2100 skips its leap day.
        """
        preset = make_preset("UTC", ("* 0 1 2 0,2-6", 1), ("* 0 29 2 *", 5))

        assert (utc(2112, 2, 29), 5) == next_change(preset, after=utc(2072, 3, 1))

    @pytest.mark.parametrize(
        ("zone", "expected"),
        [
            ("Pacific/Kiritimati", utc(2104, 2, 28, 10)),  # UTC+14
            ("Etc/GMT+12", utc(2104, 2, 29, 12)),  # UTC-12
        ],
    )
    def test_leap_day_in_the_farthest_zones(
        self, zone: str, expected: datetime
    ) -> None:
        """A local date starts up to 14 hours before, or 12 after, its UTC date."""
        preset = make_preset(zone, ("* 0 29 2 *", 3))

        assert (expected, 3) == next_change(preset, after=utc(2096, 3, 1))

    def test_local_day_before_the_utc_day(self) -> None:
        """
        Twelve hours behind UTC, 05:00Z on a Monday is still Sunday 17:00:
        a Sunday evening window opens within the hour, not a week later.
        """
        preset = make_preset("Etc/GMT+12", ("* 18 * * 0", 3))

        assert (utc(2025, 6, 2, 6), 3) == next_change(preset, after=utc(2025, 6, 2, 5))

    def test_a_window_only_in_a_skipped_hour_never_opens(self) -> None:
        """
        In Los Angeles, 02:00 on the second Sunday of March does not exist
        (the clocks go from 02:00 to 03:00): a count that would change only
        then never changes. The first window takes 02:00 on every other
        March day, at the count the preset has anyway.
        """
        schedules = (("* 2 1-7,15-31 3 1-6", 1), ("* 2 8-14 3 *", 5))

        assert None is next_change(
            make_preset("America/Los_Angeles", *schedules), after=utc(2030, 1, 1)
        )
        assert (utc(2030, 3, 10, 2), 5) == next_change(
            make_preset("UTC", *schedules), after=utc(2030, 1, 1)
        )

    def test_quarter_hour_offset(self) -> None:
        """In Asia/Kathmandu (UTC+5:45) a window opens at a quarter past in UTC."""
        preset = make_preset("Asia/Kathmandu", ("* 9 * * *", 3))

        assert (utc(2025, 6, 2, 3, 15), 3) == next_change(preset, after=utc(2025, 6, 2))

    def test_the_latest_instant_looks_a_whole_cycle_ahead(self) -> None:
        """
        From the last instant a datetime argument may be (9000-01-01), the
        400-year horizon is still searched to its end, with no overflow.
        """
        leap_day = make_preset("UTC", ("* 0 29 2 *", 2))

        # 9000 is no leap year (a century not divisible by 400).
        assert (utc(9004, 2, 29), 2) == next_change(leap_day, after=utc(9000, 1, 1))

    def test_an_instant_past_the_limits_is_refused(self) -> None:
        """*after* beyond 9000-01-01 is refused, naming the argument."""
        preset = make_preset("UTC", ("* 0 * * *", 2))

        with pytest.raises(InvalidInputError) as info:
            next_change(preset, after=utc(9999, 12, 30))

        assert "after" == info.value.field

    def test_first_matching_schedule_wins(self) -> None:
        """Windows that Coder's check lets overlap resolve to the first listed."""
        # DOW * in the second makes the check compare DOMs only ({1} vs {2}),
        # yet 2 June 2025 is a Monday: both windows contain it.
        preset = make_preset("UTC", ("* 9 1 * 1", 2), ("* 9 2 * *", 3))

        assert 2 == desired_instances(preset, at=utc(2025, 6, 2, 9))

    def test_a_window_hidden_on_every_date_never_applies(self) -> None:
        """
        Coder's check lets a window pass that an earlier one hides for good:
        with DOW ``*`` in the first it compares DOMs only ({1-30} vs {31}),
        yet the second names every weekday of months that have no 31st. The
        first takes 09:00 on each of their days at the count the preset has
        anyway, so the count never changes.
        """
        months = "2,4,6,9,11"
        preset = make_preset(
            "UTC", (f"* 9 1-30 {months} *", 1), (f"* 9 31 {months} 0-6", 5)
        )

        assert 1 == desired_instances(preset, at=utc(2025, 6, 2, 9))
        assert None is next_change(preset, after=utc(2025, 6, 2))


class TestNaive:
    """Naive datetimes are rejected, naming the argument."""

    def test_desired_instances(self) -> None:
        """desired_instances(at=naive) raises InvalidInputError on ``at``."""
        naive = datetime(2025, 6, 2, 9)  # noqa: DTZ001
        with pytest.raises(InvalidInputError, match="at") as info:
            desired_instances(make_preset(), at=naive)

        assert ("at", naive) == (info.value.field, info.value.value)

    def test_next_change(self) -> None:
        """next_change(after=naive) raises InvalidInputError on ``after``."""
        naive = datetime(2025, 6, 2, 9)  # noqa: DTZ001
        with pytest.raises(InvalidInputError, match="after") as info:
            next_change(make_preset(), after=naive)

        assert ("after", naive) == (info.value.field, info.value.value)

    def test_calculate_state(self) -> None:
        """calculate_state(now=naive) raises InvalidInputError on ``now``."""
        naive = datetime(2025, 6, 2, 9)  # noqa: DTZ001
        with pytest.raises(InvalidInputError, match="now") as info:
            calculate_state(PresetSnapshot(preset=make_preset()), now=naive)

        assert ("now", naive) == (info.value.field, info.value.value)


def croniter_matches(cron: str, local: datetime) -> bool:
    """
    croniter's verdict on the naive wall time *local*.

    croniter (7.0) reads a one-value range ``N-N`` as ``*`` (it takes it for
    a full wrap-around range), so such ranges are written as ``N`` first.
    """
    spec = re.sub(r"\b(\d+)-\1\b", r"\1", cron)
    return bool(croniter.match(spec, local.replace(tzinfo=None)))


@given(cron=strategies.cron_specs(), at=strategies.aware_datetimes())
def test_contains_agrees_with_croniter(cron: str, at: datetime) -> None:
    """
    For any valid spec and wall time, the window contains the time exactly
    when croniter (standard cron, DOM/DOW OR when both are restricted) says
    the minute matches.
    """
    expected = croniter_matches(cron, at)

    assert expected == parse_cron(cron).contains_local(at)


@given(cron=strategies.cron_specs(), zone=strategies.time_zones(), data=st.data())
def test_desired_instances_agrees_with_croniter(
    cron: str, zone: str, data: st.DataObject
) -> None:
    """
    desired_instances converts *at* to the preset's zone and then matches
    like croniter on the local wall time.
    """
    at = data.draw(strategies.aware_datetimes())
    preset = make_preset(zone, (cron, 7), base=2)
    local = at.astimezone(load_zone(zone))

    expected = 7 if croniter_matches(cron, local) else 2

    assert expected == desired_instances(preset, at=at)


@settings(deadline=None)
@given(
    schedules=strategies.schedule_sets(min_size=1, instances=st.integers(1, 5)),
    zone=strategies.time_zones(),
    base=st.integers(0, 1),
    after=strategies.aware_datetimes(
        min_value=datetime(2001, 1, 1),  # noqa: DTZ001
        max_value=datetime(2090, 1, 1),  # noqa: DTZ001
    ),
    samples=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=4),
)
@example(  # Lord Howe goes from UTC+11 to +10:30 between New Year and April
    schedules=(PrebuildSchedule(cron="* * * 4 *", instances=1),),
    zone="UTC",
    base=0,
    after=datetime(2001, 1, 1, tzinfo=load_zone("Australia/Lord_Howe")),
    samples=[0.9999999999999999],
)
def test_next_change_is_the_first_change(
    schedules: tuple[PrebuildSchedule, ...],
    zone: str,
    base: int,
    after: datetime,
    samples: list[float],
) -> None:
    """
    next_change returns an instant at which the desired count takes the new
    value, 1 us before which it still had the old one, and no quarter-hour
    mark in between differs; ``None`` means sampled marks all keep the value.
    """
    preset = Preset(
        id=uuid.UUID(int=1),
        template_id=uuid.UUID(int=2),
        template_version_id=uuid.UUID(int=3),
        desired_instances=base,
        scheduling_timezone=zone,
        schedules=schedules,
    )
    old = desired_instances(preset, at=after)
    # Marks are counted from *after* in UTC: adding to a local time moves its
    # wall clock, which skips or repeats the hours of a DST change.
    start = after.astimezone(UTC)

    result = next_change(preset, after=after)

    if result is None:
        horizon = 146_097 * 96  # 400 years of quarter hours
        marks = [start + timedelta(minutes=15 * int(f * horizon)) for f in samples]
        assert [old] * len(marks) == [desired_instances(preset, at=m) for m in marks]
        return
    when, value = result
    assert after < when
    assert (value, old) == (
        desired_instances(preset, at=when),
        desired_instances(preset, at=when - timedelta(microseconds=1)),
    )
    assert old != value
    quarters = int((when - after) / timedelta(minutes=15))
    marks = [start + timedelta(minutes=15 * int(f * quarters)) for f in samples]
    assert [old] * len(marks) == [desired_instances(preset, at=m) for m in marks]
