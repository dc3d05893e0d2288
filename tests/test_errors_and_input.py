"""
Bad input is rejected with InvalidInputError naming the field and value;
the error tree and its pickling.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import inspect
import pickle
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prebuilds import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidInputError,
    PendingCount,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Transition,
    calculate_actions,
    calculate_state,
    desired_instances,
    exceptions,
    next_change,
)


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


SNAPSHOT = PresetSnapshot(preset=make_preset())
WEEKDAYS = PrebuildSchedule(cron="* 9-17 * * 1-5", instances=2)

BAD_INPUT: list[tuple[str, Callable[[], object], str, object]] = [
    # id, call, field, value
    ("naive-created-at", lambda: RunningPrebuild(id=ID, preset_id=ID, created_at=NAIVE),
     "created_at", NAIVE),
    ("created-at-not-datetime", lambda: RunningPrebuild(id=ID, preset_id=ID, created_at="2024"),  # type: ignore[arg-type]
     "created_at", "2024"),
    ("naive-last-build-at", lambda: Backoff(preset_id=ID, num_failed=1, last_build_at=NAIVE),
     "last_build_at", NAIVE),
    ("naive-last-invalidated-at", lambda: make_preset(last_invalidated_at=NAIVE),
     "last_invalidated_at", NAIVE),
    ("naive-now-actions", lambda: calculate_actions(SNAPSHOT, now=NAIVE, backoff_interval=timedelta(0)),
     "now", NAIVE),
    ("naive-now-state", lambda: calculate_state(SNAPSHOT, now=NAIVE), "now", NAIVE),
    ("naive-now-filter", lambda: GlobalSnapshot(presets=[make_preset()]).filter_by_preset(ID, now=NAIVE),
     "now", NAIVE),
    ("naive-at", lambda: desired_instances(make_preset(), at=NAIVE), "at", NAIVE),
    ("naive-after", lambda: next_change(make_preset(), after=NAIVE), "after", NAIVE),
    ("negative-desired", lambda: make_preset(desired_instances=-1), "desired_instances", -1),
    ("bool-desired", lambda: make_preset(desired_instances=True), "desired_instances", True),
    ("float-desired", lambda: make_preset(desired_instances=1.0), "desired_instances", 1.0),
    ("negative-instances", lambda: PrebuildSchedule(cron="* * * * *", instances=-2), "instances", -2),
    ("negative-in-progress", lambda: InProgressCount(preset_id=ID, transition=Transition.START, count=-1),
     "count", -1),
    ("negative-pending", lambda: PendingCount(preset_id=ID, count=-3), "count", -3),
    ("negative-num-failed", lambda: Backoff(preset_id=ID, num_failed=-1, last_build_at=NOW),
     "num_failed", -1),
    ("negative-pending-count", lambda: PresetSnapshot(preset=make_preset(), pending_count=-1),
     "pending_count", -1),
    ("unknown-time-zone", lambda: make_preset(scheduling_timezone="Nowhere/Land"),
     "scheduling_timezone", "Nowhere/Land"),
    ("time-zone-not-a-string", lambda: make_preset(scheduling_timezone=3), "scheduling_timezone", 3),
    ("malformed-schedule", lambda: PrebuildSchedule(cron="* 25 * * *", instances=1), "cron", "* 25 * * *"),
    ("overlapping-schedules", lambda: make_preset(scheduling_timezone="UTC", schedules=[WEEKDAYS, WEEKDAYS]),
     "schedules", (WEEKDAYS.cron, WEEKDAYS.cron)),
    ("ttl-below-zero", lambda: make_preset(ttl=timedelta(seconds=-1)), "ttl", timedelta(seconds=-1)),
    ("ttl-not-timedelta", lambda: make_preset(ttl=60), "ttl", 60),
    ("negative-backoff-interval",
     lambda: calculate_actions(SNAPSHOT, now=NOW, backoff_interval=timedelta(microseconds=-1)),
     "backoff_interval", timedelta(microseconds=-1)),
    ("backoff-interval-not-timedelta",
     lambda: calculate_actions(SNAPSHOT, now=NOW, backoff_interval=5),  # type: ignore[arg-type]
     "backoff_interval", 5),
    ("id-not-uuid", lambda: make_preset(id="x"), "id", "x"),
    ("template-id-not-uuid", lambda: make_preset(template_id=7), "template_id", 7),
    ("organization-id-not-uuid", lambda: make_preset(organization_id="org"), "organization_id", "org"),
    ("name-not-a-string", lambda: make_preset(name=None), "name", None),
    ("parameter-not-a-pair", lambda: make_preset(parameters=[("a", "b", "c")]), "parameters", ("a", "b", "c")),
    ("parameter-not-strings", lambda: make_preset(parameters=[("a", 1)]), "parameters", ("a", 1)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "field", "value"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_names_field_and_value(
    call: Callable[[], object], field: str, value: object
) -> None:
    """Bad input raises InvalidInputError with ``.field``, ``.value`` and the field in the message."""
    with pytest.raises(InvalidInputError) as info:
        call()

    assert (field, value) == (info.value.field, info.value.value)
    assert field in str(info.value)
    assert info.value.reason in str(info.value)


def test_zero_and_none_are_valid() -> None:
    """Zero counts, a zero TTL, a zero backoff interval and ``None`` options are fine."""
    preset = make_preset(desired_instances=0, ttl=timedelta(0), organization_id=None)
    snapshot = PresetSnapshot(preset=preset, pending_count=0)

    assert [] == calculate_actions(snapshot, now=NOW, backoff_interval=timedelta(0))


def test_aware_non_utc_is_accepted() -> None:
    """Any timezone-aware datetime is accepted, not only UTC."""
    tokyo = timezone(timedelta(hours=9))
    prebuild = RunningPrebuild(id=ID, preset_id=ID, created_at=NOW.astimezone(tokyo))

    assert NOW == prebuild.created_at


ERRORS = [
    obj
    for _, obj in inspect.getmembers(exceptions, inspect.isclass)
    if issubclass(obj, BaseException)
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_a_prebuilds_error(error: type[BaseException]) -> None:
    """Every error prebuilds defines subclasses PrebuildsError."""
    assert issubclass(error, exceptions.PrebuildsError)


def test_error_tree() -> None:
    """The builtin bases and families of the error tree."""
    expected = {
        "InvalidInputError": ValueError,
        "PresetNotFoundError": LookupError,
        "InstanceNotFoundError": LookupError,
        "BuildNotFoundError": LookupError,
        "SchemaVersionError": exceptions.StoreError,
        "LeadershipLostError": exceptions.StoreError,
        "ProvisionerValidationError": exceptions.ProvisionerError,
    }

    assert expected == {
        name: base
        for name, base in expected.items()
        if issubclass(getattr(exceptions, name), base)
    }
    assert Exception is exceptions.PrebuildsError.__base__


def example_errors() -> list[exceptions.PrebuildsError]:
    return [
        exceptions.PrebuildsError("root"),
        exceptions.InvalidInputError("ttl", timedelta(seconds=-1), "must be >= 0"),
        exceptions.PresetNotFoundError(ID),
        exceptions.TemplateNotFoundError(ID),
        exceptions.InstanceNotFoundError(ID),
        exceptions.BuildNotFoundError(ID),
        exceptions.NoClaimablePrebuildsError(ID),
        exceptions.NoClaimablePrebuildsError(),
        exceptions.PresetInactiveError(ID),
        exceptions.PresetChangedError(ID),
        exceptions.PrebuildsNotSupportedError(),
        exceptions.StoreError("connection lost"),
        exceptions.SchemaVersionError("schema 9 > 1"),
        exceptions.LeadershipLostError("lease lost"),
        exceptions.ProvisionerError("down"),
        exceptions.ProvisionerValidationError("missing parameter"),
        exceptions.MissingExtraError(
            "prebuilds.stores.PostgresStore", "postgres", "psycopg"
        ),
    ]


@pytest.mark.parametrize(
    "error",
    example_errors(),
    ids=lambda e: f"{type(e).__name__}-{e.__reduce__()[1]!r}",
)
def test_errors_pickle_round_trip(error: exceptions.PrebuildsError) -> None:
    """An error survives pickling with its type, message and attributes."""
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301

    assert (type(error), str(error), vars(error)) == (type(copy), str(copy), vars(copy))


def test_every_error_has_a_pickle_example() -> None:
    """The pickle round-trip covers every error class."""
    assert set(ERRORS) == {type(e) for e in example_errors()}


def test_not_found_messages_name_the_id() -> None:
    """Lookup errors carry the ID, and their message names it."""
    error = exceptions.PresetNotFoundError(ID)
    template = exceptions.TemplateNotFoundError(ID)

    assert (ID, True) == (error.preset_id, str(ID) in str(error))
    assert (ID, True) == (template.template_id, str(ID) in str(template))
    assert isinstance(template, LookupError)


def test_int_subclass_is_accepted() -> None:
    """An int subclass other than bool (an IntEnum, say) is a valid count."""

    class Count(int):
        pass

    assert 3 == make_preset(desired_instances=Count(3)).desired_instances
