"""
Cron windows and time zones: how many prebuilt instances a preset wants now.

The grammar is Coder's: five fields ``MIN HOUR DOM MONTH DOW``; the minute
field must be ``*``; the others accept ``*``, a number, an inclusive range
``a-b`` and comma lists of those. No steps, no names. Sunday is ``0`` and
``7`` is rejected. A window covers whole hours: ``* 9-18 * * 1-5`` is Monday
to Friday, 09:00:00 to 18:59:59.999999 in the preset's time zone.

Day matching follows cron: when DOM or DOW is ``*`` both must match; when both
are restricted, either may match.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from prebuilds._validate import check_aware, check_instance
from prebuilds.exceptions import InvalidInputError


if TYPE_CHECKING:
    from collections.abc import Sequence

    from prebuilds._model import PrebuildSchedule, Preset

_UTC = timezone.utc

#: (name, lowest, highest) of the four restricted fields, in spec order.
_FIELDS = (("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 6))  # fmt: skip


@attrs.frozen
class CronWindow:
    """
    A parsed cron spec: the sets of hours, days, months and weekdays it covers.

    Attributes:
        hours: Hours of the day (0-23) the window covers.
        days: Days of the month (1-31).
        months: Months (1-12).
        weekdays: Days of the week, Sunday = 0.
        dom_star: Whether the day-of-month field was ``*``.
        dow_star: Whether the day-of-week field was ``*``.
    """

    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool

    def contains_local(self, local: datetime) -> bool:
        """Whether the wall-clock time *local* falls inside the window."""
        return local.hour in self.hours and self.contains_day(
            local.month, local.day, local.isoweekday() % 7
        )

    def contains_day(self, month: int, day: int, weekday: int) -> bool:
        """Whether the window's hours apply on a date (*weekday*: Sunday = 0)."""
        if month not in self.months:
            return False
        dom_ok = day in self.days
        dow_ok = weekday in self.weekdays
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    if text == "*":
        return frozenset(range(low, high + 1))
    values: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.partition("-")
        # ASCII only: str.isdigit() also accepts "\u0661" (Arabic-Indic one),
        # which int() reads as 1; cron (and Coder) know only 0-9.
        if not _is_number(first) or (sep and not _is_number(last)):
            msg = f"{name} field {text!r}: expected *, N, N-M or a comma list"
            raise ValueError(msg)
        start = int(first)
        stop = int(last) if sep else start
        if not low <= start <= stop <= high:
            msg = f"{name} field {text!r}: out of range {low}-{high}"
            raise ValueError(msg)
        values.update(range(start, stop + 1))
    return frozenset(values)


def parse_cron(cron: str) -> CronWindow:
    """
    Parse a five-field cron spec with the minute field ``*``.

    Raises:
        InvalidInputError: on ``field="cron"`` when the spec is malformed.
    """
    if not isinstance(cron, str):
        raise InvalidInputError("cron", cron, "must be a string")
    parts = cron.split()
    if len(parts) != 5:  # noqa: PLR2004
        raise InvalidInputError("cron", cron, "expected exactly 5 fields")
    if parts[0] != "*":
        raise InvalidInputError("cron", cron, "the minute field must be *")
    try:
        sets = [
            _parse_field(text, name, low, high)
            for text, (name, low, high) in zip(parts[1:], _FIELDS, strict=True)
        ]
    except ValueError as e:
        raise InvalidInputError("cron", cron, str(e)) from None
    return CronWindow(
        hours=sets[0],
        days=sets[1],
        months=sets[2],
        weekdays=sets[3],
        dom_star=parts[2] == "*",
        dow_star=parts[4] == "*",
    )


def windows_overlap(a: CronWindow, b: CronWindow) -> bool:
    """
    Whether two windows can cover the same hour (Coder's field-wise check).

    Months must intersect; then days: if either DOM is ``*`` the weekday sets
    are compared, else if either DOW is ``*`` the day sets are, else either
    intersecting is enough; last, the hours must intersect.
    """
    if not a.months & b.months:
        return False
    if a.dom_star or b.dom_star:
        days = bool(a.weekdays & b.weekdays)
    elif a.dow_star or b.dow_star:
        days = bool(a.days & b.days)
    else:
        days = bool(a.days & b.days) or bool(a.weekdays & b.weekdays)
    return days and bool(a.hours & b.hours)


def load_zone(name: str) -> ZoneInfo:
    """
    Load an IANA time zone.

    Raises:
        InvalidInputError: on ``field="scheduling_timezone"`` when unknown.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInputError(
            "scheduling_timezone", name, "unknown IANA time zone"
        ) from None


def check_no_overlap(schedules: Sequence[PrebuildSchedule]) -> None:
    """
    Reject a set of schedules in which two windows overlap.

    Raises:
        InvalidInputError: on ``field="schedules"`` naming the two crons.
    """
    for i, first in enumerate(schedules):
        for second in schedules[i + 1 :]:
            if windows_overlap(first.window, second.window):
                raise InvalidInputError(
                    "schedules",
                    (first.cron, second.cron),
                    "schedules overlap",
                )


def _check_preset(preset: object) -> None:
    from prebuilds._model import Preset  # noqa: PLC0415 - _model imports this module

    check_instance("preset", preset, Preset)


def _desired_local(preset: Preset, at_utc: datetime, zone: ZoneInfo) -> int:
    local = at_utc.astimezone(zone)
    for schedule in preset.schedules:
        if schedule.window.contains_local(local):
            return schedule.instances
    return preset.desired_instances


def desired_instances(preset: Preset, *, at: datetime) -> int:
    """
    How many prebuilt instances *preset* wants at *at*: the instance count of
    the first schedule whose window contains *at* in the preset's time zone,
    else the preset's ``desired_instances``.

    Schedules without a time zone are not evaluated (the base count applies).
    This is the schedule rule alone: it does not look at whether the preset
    is active.

    Raises:
        InvalidInputError: *preset* is not a Preset or *at* is naive.
    """
    _check_preset(preset)
    check_aware("at", at)
    if not preset.schedules or not preset.scheduling_timezone:
        return preset.desired_instances
    return _desired_local(preset, at, load_zone(preset.scheduling_timezone))


#: Every UTC offset in use is a multiple of 15 minutes, so a local hour starts
#: on a quarter hour in UTC: the desired count is constant between marks.
_STEP = timedelta(minutes=15)
_DAY = timedelta(days=1)
#: No UTC offset was ever this large: the instants of a local date lie within
#: it of that date's midnight to midnight read as UTC.
_MAX_OFFSET = timedelta(hours=16)
#: The Gregorian calendar repeats after 400 years (146,097 days, a whole
#: number of weeks), and with it every date and weekday a window can name.
_CYCLE = timedelta(days=146_097)
#: How far next_change tests dates one by one before it works out, once, the
#: dates on which the count can change at all.
_NEAR = timedelta(days=35)
#: Every (month, day) of a leap year.
_DATES = tuple(
    (d.month, d.day)
    for d in (datetime(2000, 1, 1, tzinfo=_UTC) + n * _DAY for n in range(366))
)


def _changes_on(
    preset: Preset, current: int, month: int, day: int, weekday: int
) -> bool:
    """Whether some hour of the local date has a desired count other than *current*."""
    free = set(range(24))  # the hours no earlier window took
    for schedule in preset.schedules:
        window = schedule.window
        if not window.contains_day(month, day, weekday):
            continue
        if schedule.instances != current and free & window.hours:
            return True
        free -= window.hours
    return preset.desired_instances != current and bool(free)


def _days_that_change(preset: Preset, current: int) -> frozenset[tuple[int, int, int]]:
    """
    The local dates, as ``(month, day, weekday)``, on which some hour's
    desired count differs from *current*.
    """
    return frozenset(
        (month, day, weekday)
        for month, day in _DATES
        for weekday in range(7)
        if _changes_on(preset, current, month, day, weekday)
    )


def next_change(preset: Preset, *, after: datetime) -> tuple[datetime, int] | None:
    """
    When the preset's desired count next changes after *after*, and to what.

    It looks 400 years ahead, one cycle of the Gregorian calendar, in which
    every date and weekday a window can name comes back (a count that
    changes only on a Monday 29 February may wait 40 years). *after* lies
    before 9000-01-01 (see :doc:`/limits`), so the horizon stays well within
    what a datetime holds.

    Returns:
        ``(when, count)`` with *when* in UTC, the first instant after *after*
        at which :func:`desired_instances` differs from its value at *after*
        (the count is looked at on UTC quarter hours, where every local hour
        starts in zones whose offset is a whole number of quarter hours, as
        every offset has been since 1972);
        or ``None`` when it does not change within that horizon: no
        schedules, no time zone, or schedules that cover all time or never
        apply. (Past the last change of its rules in the time zone
        database, a zone's rules repeat every year, so a count that does
        not change within 400 years never does.)

    Raises:
        InvalidInputError: *preset* is not a Preset, or *after* is naive or
            out of range.
    """
    _check_preset(preset)
    check_aware("after", after)
    if not preset.schedules or not preset.scheduling_timezone:
        return None
    zone = load_zone(preset.scheduling_timezone)
    start = after.astimezone(_UTC)
    mark = start.replace(
        minute=start.minute - start.minute % 15, second=0, microsecond=0
    )
    current = _desired_local(preset, start, zone)
    end = mark + _CYCLE
    # Walk the local dates that instants from *mark* on can have; scan the
    # marks only around those on which the count changes. The first weeks'
    # dates are tested one by one (a change is usually near); past them, the
    # dates that can change are worked out once for the rest of the horizon,
    # which ends the walk at once when there are none.
    day = (mark - _MAX_OFFSET).replace(hour=0, minute=0)
    near = day + _NEAR
    changing: frozenset[tuple[int, int, int]] | None = None
    while day - _MAX_OFFSET < end:
        key = (day.month, day.day, day.isoweekday() % 7)
        if changing is None and day >= near:
            changing = _days_that_change(preset, current)
            if not changing:
                return None
        if (
            key in changing
            if changing is not None
            else _changes_on(preset, current, *key)
        ):
            mark = max(mark, day - _MAX_OFFSET)
            stop = min(day + _DAY + _MAX_OFFSET, end)
            while mark < stop:
                mark += _STEP
                value = _desired_local(preset, mark, zone)
                if value != current:
                    return mark, value
        day += _DAY
    return None
