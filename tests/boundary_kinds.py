"""
What each kind of argument may be, for the property tests of the boundary:
a strategy of valid values (bounds included) and one of invalid values
(wrong types and values out of range), which are never valid.
"""

from __future__ import annotations

import enum

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from hypothesis import strategies as st

from prebuilds import PrebuildSchedule
from prebuilds._validate import (
    MAX_BUILD_NUMBER,
    MAX_COUNT,
    MAX_DATETIME,
    MAX_DURATION,
    MAX_INSTANCES,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MIN_DATETIME,
)
from prebuilds.testing import strategies


Strategy = st.SearchStrategy[Any]


@attrs.frozen
class Kind:
    """
    A kind of argument: its valid values, and its invalid ones (besides
    None, which is invalid too unless the kind is optional).
    """

    valid: Strategy
    wrong: Strategy
    nullable: bool = False

    @property
    def invalid(self) -> Strategy:
        """Values never valid for this kind."""
        return self.wrong if self.nullable else st.none() | self.wrong

    def optional(self) -> Kind:
        """The same kind, or None."""
        return Kind(st.none() | self.valid, self.wrong, nullable=True)


#: Values of many wrong types (None is added by Kind.invalid where it is wrong).
OTHERS = st.one_of(
    st.text(max_size=3),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=2),
    st.just(object()),
    st.lists(st.integers(), max_size=2),
)

UUIDS = Kind(
    strategies.uuids(),
    st.one_of(OTHERS, st.integers(), strategies.uuids().map(str)),
)
BOOLS = Kind(
    st.booleans(),
    st.one_of(st.integers(0, 1), st.sampled_from(["true", "false", ""]),
              st.floats(), st.just(object())),
)  # fmt: skip


def ints(low: int, high: int) -> Kind:
    """An int in ``[low, high]`` (bools and floats refused)."""
    return Kind(
        st.one_of(st.integers(low, min(high, low + 100)), st.sampled_from([low, high])),
        st.one_of(
            st.integers(max_value=low - 1),
            st.integers(min_value=high + 1),
            st.sampled_from([high + 1, 2**70]),
            st.booleans(),
            st.floats(),
            st.text(max_size=3),
        ),
    )


INSTANCES = ints(0, MAX_INSTANCES)
COUNTS = ints(0, MAX_COUNT)
BUILD_NUMBERS = ints(1, MAX_BUILD_NUMBER)

_ZONES = st.sampled_from(
    [
        timezone.utc,
        timezone(timedelta(hours=14)),
        timezone(timedelta(hours=-12)),
        ZoneInfo("Europe/Berlin"),
    ]
)
US = timedelta(microseconds=1)


def _unambiguous(value: datetime) -> bool:
    """
    Not a wall time that occurs twice (a DST fold): such a datetime compares
    unequal to every datetime of another zone, the same instant included
    (PEP 495), so a store's UTC read-back could not equal it.
    """
    return value.utcoffset() == value.replace(fold=1 - value.fold).utcoffset()


AWARE = Kind(
    st.one_of(
        st.datetimes(
            min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - wall times
            max_value=datetime(8999, 12, 30),  # noqa: DTZ001
            timezones=_ZONES,
            allow_imaginary=False,
        ).filter(_unambiguous),
        st.sampled_from([MIN_DATETIME, MAX_DATETIME]),
    ),
    st.one_of(
        st.datetimes(),  # naive
        st.datetimes(max_value=datetime(1969, 12, 31), timezones=st.just(timezone.utc)),  # noqa: DTZ001
        st.datetimes(min_value=datetime(9000, 1, 2), timezones=st.just(timezone.utc)),  # noqa: DTZ001
        st.sampled_from([MIN_DATETIME - US, MAX_DATETIME + US, date(2026, 1, 5)]),
        st.integers(),
        OTHERS,
    ),
)
DURATIONS = Kind(
    st.one_of(
        st.timedeltas(min_value=timedelta(0), max_value=MAX_DURATION),
        st.sampled_from([timedelta(0), MAX_DURATION]),
    ),
    st.one_of(
        st.timedeltas(max_value=-US),
        st.timedeltas(min_value=MAX_DURATION + US),
        st.integers(),
        st.floats(),
        OTHERS,
    ),
)
POSITIVE_DURATIONS = Kind(
    st.one_of(
        st.timedeltas(min_value=US, max_value=MAX_DURATION), st.just(MAX_DURATION)
    ),
    st.one_of(st.just(timedelta(0)), DURATIONS.wrong),
)

_STORABLE = st.characters(codec="utf-8", exclude_characters="\x00")


def texts(max_length: int, *, required: bool = False) -> Kind:
    """Strings a store can hold, of at most *max_length* characters."""
    low = 1 if required else 0
    return Kind(
        st.one_of(
            st.text(_STORABLE, min_size=low, max_size=min(max_length, 40)),
            st.just("\N{MUSICAL SYMBOL G CLEF}" * max_length),
        ),
        st.one_of(
            st.just("x" * (max_length + 1)),
            st.just("\N{MUSICAL SYMBOL G CLEF}" * (max_length + 1)),
            st.text(_STORABLE, max_size=5).map(lambda t: t + "\x00"),
            st.text(_STORABLE, max_size=5).map(lambda t: "\ud800" + t),
            *([st.just("")] if required else []),
            st.integers(),
            st.floats(),
            st.binary(max_size=3),
        ),
    )


NAMES = texts(MAX_NAME_LENGTH)
REQUIRED_NAMES = texts(MAX_NAME_LENGTH, required=True)
TEXTS = texts(MAX_TEXT_LENGTH)
STRINGS = Kind(st.text(max_size=10), st.one_of(st.integers(), st.binary()))


def enums(kind: type[enum.Enum]) -> Kind:
    """A member of *kind* (its values, as strings or ints, refused)."""
    return Kind(
        st.sampled_from(list(kind)),
        st.one_of(st.sampled_from([m.value for m in kind]), st.integers()),
    )


CRONS = Kind(
    strategies.cron_specs(),
    st.one_of(
        st.sampled_from(
            ["* 25 * * *", "0 9 * * *", "* 9-17 * *", "", "* 9 * * 7", "* */2 * * *"]
        ),
        st.just("* " + "1," * 200 + "1 * * *"),  # over 255 characters
        st.integers(),
    ),
)
_OVERLAPPING = (
    PrebuildSchedule(cron="* 9-17 * * 1-5", instances=1),
    PrebuildSchedule(cron="* 12 * * *", instances=2),
)
SCHEDULES = Kind(
    strategies.schedule_sets(),
    st.one_of(
        st.just(_OVERLAPPING),
        st.just(["* 9-17 * * 1-5"]),
        st.just("* 9-17 * * 1-5"),
        st.just([None]),
        st.integers(),
    ),
)
ZONES = Kind(
    st.one_of(st.just(""), strategies.time_zones()),
    st.one_of(
        st.sampled_from(["Mars/Olympus_Mons", "UTC ", "../../etc/passwd", "a\x00b"]),
        st.integers(),
    ),
)
_PAIR_NAMES = st.text(_STORABLE, min_size=1, max_size=8)
PARAMETERS = Kind(
    st.lists(
        st.tuples(_PAIR_NAMES, st.text(_STORABLE, max_size=8)),
        max_size=3,
        unique_by=lambda pair: pair[0],
    ).map(tuple),
    st.one_of(
        st.just((("region", "eu"), ("region", "us"))),
        st.just((("region",),)),
        st.just((("region", 1),)),
        st.just((("", "v"),)),
        st.just("region=eu"),
        st.just([["region", "eu"]]),
        st.integers(),
    ),
)
UUID_TUPLES = Kind(
    st.lists(strategies.uuids(), max_size=3).map(tuple),
    st.one_of(st.just(("a",)), st.just([1]), st.integers(), st.just("abc")),
)
PATHS = Kind(
    st.lists(st.text(_STORABLE, max_size=8), max_size=3).map(tuple),
    st.one_of(st.just("env"), st.just([1]), st.just(["\x00"]), st.integers()),
)


def records(
    make: Callable[..., Any], fields: dict[str, Kind]
) -> st.SearchStrategy[Any]:
    """Valid records: *make* of valid values for every field."""
    return st.fixed_dictionaries({f: k.valid for f, k in fields.items()}).map(
        lambda kwargs: make(**kwargs)
    )
