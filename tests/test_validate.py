"""
The checkers of the validation layer, one rule at a time: what each accepts,
what it refuses, and the reason it gives.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import math
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    Backoff,
    BuildRequest,
    GlobalSnapshot,
    InProgressCount,
    InvalidInputError,
    InvalidPreset,
    PendingCount,
    Preset,
    PresetSnapshot,
    PresetStatus,
    RunningPrebuild,
    Transition,
    is_expired,
    next_change,
)
from prebuilds._validate import (
    MAX_DURATION,
    MAX_TEXT_LENGTH,
    check_aware,
    check_bool,
    check_delta,
    check_enum,
    check_instance,
    check_int,
    check_items,
    check_optional_aware,
    check_optional_delta,
    check_optional_str,
    check_optional_uuid,
    check_parameters,
    check_seconds,
    check_str,
    check_uuid,
    clean_text,
    enum_of,
    instance_of,
    items_of,
    optional_instance_of,
)


NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ID = uuid.UUID(int=1)

ACCEPTED: list[tuple[str, Callable[[], object], object]] = [
    ("uuid", lambda: check_uuid("f", ID), ID),
    ("optional-uuid-none", lambda: check_optional_uuid("f", None), None),
    ("bool", lambda: check_bool("f", False), False),
    ("int-low", lambda: check_int("f", 0), 0),
    ("int-high", lambda: check_int("f", 5, minimum=1, maximum=5), 5),
    ("str-empty", lambda: check_str("f", ""), ""),
    ("str-wide", lambda: check_str("f", "é\N{MUSICAL SYMBOL G CLEF}"), "é\N{MUSICAL SYMBOL G CLEF}"),
    ("optional-str-none", lambda: check_optional_str("f", None), None),
    ("aware-other-zone", lambda: check_aware("f", NOW.astimezone(timezone(timedelta(hours=-5)))), NOW),
    ("optional-aware-none", lambda: check_optional_aware("f", None), None),
    ("delta-zero", lambda: check_delta("f", timedelta(0)), timedelta(0)),
    ("optional-delta-none", lambda: check_optional_delta("f", None), None),
    ("seconds-int", lambda: check_seconds("f", 60), 60),
    ("enum", lambda: check_enum("f", PresetStatus.HEALTHY, PresetStatus), PresetStatus.HEALTHY),
    ("instance", lambda: check_instance("f", NOW, datetime), NOW),
    ("items", lambda: check_items("f", (1, 2), int), (1, 2)),
    ("parameters", lambda: check_parameters("f", (("a", ""), ("b", "2"))), (("a", ""), ("b", "2"))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check", "expected"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_a_checker_returns_what_it_accepts(
    check: Callable[[], object], expected: object
) -> None:
    """A checker returns the value it was given when it is valid."""
    assert expected == check()


REFUSED: list[tuple[str, Callable[[], object], object, str]] = [
    ("uuid-str", lambda: check_uuid("f", str(ID)), str(ID), "must be a uuid.UUID"),
    ("bool-int", lambda: check_bool("f", 1), 1, "must be a bool"),
    ("int-bool", lambda: check_int("f", True), True, "must be an int"),
    ("int-float", lambda: check_int("f", 1.0), 1.0, "must be an int"),
    ("int-low", lambda: check_int("f", 0, minimum=1, maximum=5), 0, "must be between 1 and 5"),
    ("int-high", lambda: check_int("f", 6, minimum=1, maximum=5), 6, "must be between 1 and 5"),
    ("str-bytes", lambda: check_str("f", b"x"), b"x", "must be a string"),
    ("str-required", lambda: check_str("f", "", required=True), "", "must not be empty"),
    ("str-long", lambda: check_str("f", "xyz", max_length=2), "xyz", "must be at most 2 characters"),
    ("str-nul", lambda: check_str("f", "a\x00"), "a\x00", "must not contain NUL characters"),
    ("str-surrogate", lambda: check_str("f", "a\udc80"), "a\udc80",
     "must be valid Unicode (no lone surrogates)"),
    ("aware-date", lambda: check_aware("f", NOW.date()), NOW.date(), "must be a datetime"),
    ("aware-naive", lambda: check_aware("f", datetime(2026, 1, 5)), datetime(2026, 1, 5),  # noqa: DTZ001
     "must be timezone-aware"),
    ("aware-early", lambda: check_aware("f", datetime(1969, 12, 31, tzinfo=timezone.utc)),
     datetime(1969, 12, 31, tzinfo=timezone.utc), "must be between 1970-01-01 and 9000-01-01 UTC"),
    ("delta-int", lambda: check_delta("f", 60), 60, "must be a timedelta"),
    ("delta-zero-positive", lambda: check_delta("f", timedelta(0), positive=True), timedelta(0),
     "must be > 0"),
    ("delta-negative", lambda: check_delta("f", -timedelta(1)), -timedelta(1), "must be >= 0"),
    ("delta-long", lambda: check_delta("f", MAX_DURATION * 2), MAX_DURATION * 2,
     "must be at most 36500 days"),
    ("seconds-bool", lambda: check_seconds("f", True), True, "must be a number of seconds"),
    ("seconds-nan", lambda: check_seconds("f", math.nan), math.nan,
     "must be > 0 and at most 3153600000 seconds"),
    ("enum-value", lambda: check_enum("f", "healthy", PresetStatus), "healthy",
     "must be a PresetStatus"),
    ("instance", lambda: check_instance("f", "x", datetime), "x", "must be a datetime"),
    ("items-list", lambda: check_items("f", [1], int), [1], "must be a collection of int"),
    ("items-many", lambda: check_items("f", (1, 2), int, max_items=1), (1, 2),
     "must hold at most 1 items"),
    ("items-wrong", lambda: check_items("f", (1, "2"), int), "2", "must be a int"),
    ("parameters-list", lambda: check_parameters("f", [("a", "b")]), [("a", "b")],
     "must be (name, value) string pairs"),
    ("parameters-many", lambda: check_parameters("f", (("a", "b"),) * 257), (("a", "b"),) * 257,
     "must hold at most 256 pairs"),
    ("parameters-twice", lambda: check_parameters("f", (("a", "1"), ("a", "2"))), "a",
     "names a parameter twice"),
    ("parameters-empty-name", lambda: check_parameters("f", (("", "1"),)), "", "must not be empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check", "value", "reason"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_a_checker_names_the_field_the_value_and_the_reason(
    check: Callable[[], object], value: object, reason: str
) -> None:
    """A refusal is InvalidInputError carrying the field, the value and why."""
    with pytest.raises(InvalidInputError) as info:
        check()

    assert ("f", reason) == (info.value.field, info.value.reason)
    assert repr(value) == repr(info.value.value)  # repr: NaN is not NaN


class TestCleanText:
    def test_plain_text_is_kept(self) -> None:
        """ASCII text without NUL characters comes back as it was."""
        assert "boom: exit 1" == clean_text("boom: exit 1")

    @pytest.mark.parametrize(
        ("text", "stored"),
        [
            ("a\x00b", "a\\x00b"),
            ("é \udc80", "é \\udc80"),
            ("a\x00b é \udc80", "a\\x00b é \\udc80"),
        ],
        ids=["nul-in-ascii", "surrogate-without-nul", "both"],
    )
    def test_nul_and_lone_surrogates_are_escaped(self, text: str, stored: str) -> None:
        """
        What no store can hold is escaped, each on its own (a NUL in ASCII
        text, a lone surrogate in text without NUL); other text is kept.
        """
        assert stored == clean_text(text)

    def test_text_any_store_can_hold_is_kept(self) -> None:
        """Non-ASCII text without NUL or lone surrogates comes back as it was."""
        assert "é \N{MUSICAL SYMBOL G CLEF}" == clean_text(
            "é \N{MUSICAL SYMBOL G CLEF}"
        )

    def test_long_text_is_cut(self) -> None:
        """A message longer than the text bound is cut to it."""
        assert MAX_TEXT_LENGTH == len(clean_text("x" * (MAX_TEXT_LENGTH + 10)))


def preset(**changes: Any) -> Preset:
    fields: dict[str, Any] = {
        "id": ID,
        "template_id": uuid.UUID(int=2),
        "template_version_id": uuid.UUID(int=3),
        "desired_instances": 1,
    }
    return Preset(**{**fields, **changes})


class TestSnapshotRules:
    def test_an_in_progress_row_of_another_preset_is_refused(self) -> None:
        """A pool's in-progress rows are its own."""
        row = InProgressCount(
            preset_id=uuid.UUID(int=9), transition=Transition.START, count=1
        )

        with pytest.raises(InvalidInputError) as info:
            PresetSnapshot(preset=preset(), in_progress=[row])

        assert ("in_progress", row.preset_id) == (info.value.field, info.value.value)

    def test_one_transition_and_version_twice_is_refused(self) -> None:
        """One row per transition and version: two would be counted twice."""
        row = InProgressCount(preset_id=ID, transition=Transition.DELETE, count=1)

        with pytest.raises(InvalidInputError) as info:
            PresetSnapshot(preset=preset(), in_progress=[row, row])

        assert ("in_progress", Transition.DELETE) == (
            info.value.field,
            info.value.value,
        )

    def test_a_global_in_progress_row_twice_is_refused(self) -> None:
        """A GlobalSnapshot refuses two rows of one preset, transition and version."""
        row = InProgressCount(preset_id=ID, transition=Transition.START, count=1)

        with pytest.raises(InvalidInputError) as info:
            GlobalSnapshot(presets=[preset()], in_progress=[row, row])

        assert ("in_progress", ID) == (info.value.field, info.value.value)

    def test_rows_of_one_transition_for_two_versions_are_kept(self) -> None:
        """Starts of two template versions are two rows of one transition (they add up)."""
        rows = [
            InProgressCount(
                preset_id=ID,
                transition=Transition.START,
                count=n,
                template_version_id=uuid.UUID(int=100 + n),
            )
            for n in (1, 2)
        ]

        snapshot = GlobalSnapshot(presets=[preset()], in_progress=rows)

        assert snapshot.filter_by_preset(ID, now=NOW).in_progress == tuple(rows)

    @pytest.mark.parametrize(
        ("field", "row", "named"),
        [
            ("presets", preset(), ID),
            (
                "running",
                RunningPrebuild(id=uuid.UUID(int=7), preset_id=ID, created_at=NOW),
                uuid.UUID(int=7),
            ),
            ("pending", PendingCount(preset_id=ID, count=1), ID),
            ("backoffs", Backoff(preset_id=ID, num_failed=1, last_build_at=NOW), ID),
        ],
    )
    def test_a_row_listed_twice_is_refused(
        self, field: str, row: Any, named: uuid.UUID
    ) -> None:
        """Presets, running prebuilds, pending and backoff rows: each ID once."""
        fields: dict[str, Any] = {"presets": [preset()], field: [row, row]}

        with pytest.raises(InvalidInputError) as info:
            GlobalSnapshot(**fields)

        assert (field, named) == (info.value.field, info.value.value)

    def test_a_prebuild_of_another_preset_is_refused(self) -> None:
        """A pool's running prebuilds are its own."""
        stray = RunningPrebuild(
            id=uuid.UUID(int=8), preset_id=uuid.UUID(int=9), created_at=NOW
        )

        with pytest.raises(InvalidInputError) as info:
            PresetSnapshot(preset=preset(), expired=[stray])

        assert ("expired", stray.id) == (info.value.field, info.value.value)

    @pytest.mark.parametrize("twice", ["invalid-twice", "valid-and-invalid"])
    def test_an_invalid_preset_listed_twice_is_refused(self, twice: str) -> None:
        """A preset ID is either valid or invalid, and listed once."""
        invalid = InvalidPreset(preset_id=ID, field="ttl", value="-1", reason="r")
        fields: dict[str, Any] = (
            {"invalid_presets": [invalid, invalid]}
            if twice == "invalid-twice"
            else {"presets": [preset()], "invalid_presets": [invalid]}
        )

        with pytest.raises(InvalidInputError) as info:
            GlobalSnapshot(**fields)

        assert ("invalid_presets", ID) == (info.value.field, info.value.value)

    @pytest.mark.parametrize("hard_limited", [5, ["not-a-uuid"]])
    def test_hard_limited_is_a_set_of_ids(self, hard_limited: object) -> None:
        """``hard_limited`` holds preset IDs only."""
        with pytest.raises(InvalidInputError) as info:
            GlobalSnapshot(hard_limited=hard_limited)  # type: ignore[arg-type]

        assert "hard_limited" == info.value.field

    def test_filter_by_preset_takes_a_uuid(self) -> None:
        """filter_by_preset of a string is InvalidInputError, not a miss."""
        with pytest.raises(InvalidInputError) as info:
            GlobalSnapshot(presets=[preset()]).filter_by_preset(str(ID), now=NOW)  # type: ignore[arg-type]

        assert ("preset_id", str(ID)) == (info.value.field, info.value.value)


def test_next_change_takes_a_preset() -> None:
    """The schedule functions name a wrong preset argument."""
    with pytest.raises(InvalidInputError) as info:
        next_change("preset", after=NOW)  # type: ignore[arg-type]

    assert ("preset", "preset") == (info.value.field, info.value.value)


def test_a_backoff_of_another_preset_is_refused() -> None:
    """A pool's backoff row is its own."""
    backoff = Backoff(preset_id=uuid.UUID(int=9), num_failed=1, last_build_at=NOW)

    with pytest.raises(InvalidInputError) as info:
        PresetSnapshot(preset=preset(), backoff=backoff)

    assert ("backoff", backoff.preset_id) == (info.value.field, info.value.value)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"preset": "p", "prebuild": None, "now": NOW}, "preset"),
        ({"preset": preset(), "prebuild": "x", "now": NOW}, "prebuild"),
    ],
)
def test_is_expired_names_a_wrong_argument(
    arguments: dict[str, Any], field: str
) -> None:
    """is_expired checks its arguments like the calculator does."""
    with pytest.raises(InvalidInputError) as info:
        is_expired(**arguments)

    assert field == info.value.field


def test_an_invalid_preset_describes_itself_in_strings() -> None:
    """InvalidPreset's field, value and reason are strings (any length: never stored)."""
    with pytest.raises(InvalidInputError) as info:
        InvalidPreset(preset_id=ID, field="ttl", value=-1, reason="r")  # type: ignore[arg-type]

    assert ("value", -1, "must be a string") == (
        info.value.field,
        info.value.value,
        info.value.reason,
    )


def test_a_build_request_needs_a_name() -> None:
    """An instance's name is required: an empty one is refused by name."""
    with pytest.raises(InvalidInputError) as info:
        BuildRequest(
            build_id=uuid.UUID(int=10),
            instance_id=uuid.UUID(int=11),
            preset_id=ID,
            template_id=uuid.UUID(int=2),
            template_version_id=uuid.UUID(int=3),
            transition=Transition.START,
            name="",
        )

    assert ("name", "", "must not be empty") == (
        info.value.field,
        info.value.value,
        info.value.reason,
    )


# The validator factories (enum_of, instance_of, ...) run when a record class
# is declared, so these tests declare one: a record with one field, ``pick``,
# checked by the validator under test.


def record_with(validator: Any) -> Any:
    """A record class, declared now, whose one field ``pick`` *validator* checks."""

    @attrs.frozen(kw_only=True)
    class Record:
        pick: Any = attrs.field(validator=validator)

    return Record


FACTORY_ACCEPTED: list[tuple[str, Callable[[], object], object]] = [
    ("enum", lambda: enum_of(PresetStatus), PresetStatus.HEALTHY),
    ("instance", lambda: instance_of(datetime), NOW),
    ("optional-instance", lambda: optional_instance_of(datetime), NOW),
    ("optional-instance-none", lambda: optional_instance_of(datetime), None),
    ("items-at-most", lambda: items_of(int, max_items=2), (1, 2)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("factory", "value"),
    [case[1:] for case in FACTORY_ACCEPTED],
    ids=[case[0] for case in FACTORY_ACCEPTED],
)
def test_a_declared_validator_accepts_its_kind(
    factory: Callable[[], object], value: object
) -> None:
    """A field checked by a validator factory keeps a value of the kind it names."""
    assert value == record_with(factory())(pick=value).pick


FACTORY_REFUSED: list[tuple[str, Callable[[], object], object, object, str]] = [
    ("enum", lambda: enum_of(PresetStatus), "healthy", "healthy", "must be a PresetStatus"),
    ("instance", lambda: instance_of(datetime), "x", "x", "must be a datetime"),
    ("optional-instance", lambda: optional_instance_of(datetime), "x", "x", "must be a datetime"),
    ("items-list", lambda: items_of(int), [1], [1], "must be a collection of int"),
    ("items-many", lambda: items_of(int, max_items=2), (1, 2, 3), (1, 2, 3),
     "must hold at most 2 items"),
    ("items-wrong", lambda: items_of(int), (1, "2"), "2", "must be a int"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("factory", "given", "named", "reason"),
    [case[1:] for case in FACTORY_REFUSED],
    ids=[case[0] for case in FACTORY_REFUSED],
)
def test_a_declared_validator_names_the_field_the_value_and_the_reason(
    factory: Callable[[], object], given: object, named: object, reason: str
) -> None:
    """
    A field checked by a validator factory refuses a value of another kind
    with InvalidInputError naming the field, the value (the wrong item of a
    tuple) and why.
    """
    with pytest.raises(InvalidInputError) as info:
        record_with(factory())(pick=given)

    assert ("pick", named, reason) == (
        info.value.field,
        info.value.value,
        info.value.reason,
    )
