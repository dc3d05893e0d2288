"""
The bounds of docs/limits.md, on every store: a value at a bound is written
and read back equal; one step beyond it is refused with InvalidInputError
naming the field, before anything is written.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import contextlib
import math
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    ActionType,
    Backoff,
    Build,
    BuildStatus,
    InProgressCount,
    InvalidInputError,
    Lifecycle,
    PendingCount,
    PrebuildSchedule,
    PresetChangedError,
    PresetSnapshot,
    ReconciliationActions,
    StoreClaimer,
    StoreReconciler,
    Transition,
    backoff_until,
    derive,
)
from prebuilds._validate import (
    MAX_BUILD_NUMBER,
    MAX_COUNT,
    MAX_DATETIME,
    MAX_DURATION,
    MAX_INSTANCES,
    MAX_NAME_LENGTH,
    MAX_PARAMETERS,
    MAX_SCHEDULES,
    MAX_TEXT_LENGTH,
    MIN_DATETIME,
)
from prebuilds.interfaces import StampedClaims, Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.input_helpers import (
    LOOKBACK,
    NOW,
    Seeded,
    _shared_store,  # noqa: F401 - the fixture
    seed,
)


US = timedelta(microseconds=1)
#: A character UTF-8 encodes in four bytes: lengths count characters.
WIDE = "\N{MUSICAL SYMBOL G CLEF}"
#: The bounds, in another zone: the same instants.
PLUS_14 = timezone(timedelta(hours=14))
MINUS_12 = timezone(timedelta(hours=-12))


def test_the_documented_numbers() -> None:
    """The bounds are the numbers docs/limits.md gives."""
    assert (10_000, 2**63 - 1, 2**31 - 1) == (
        MAX_INSTANCES,
        MAX_COUNT,
        MAX_BUILD_NUMBER,
    )
    assert timedelta(days=36_500) == MAX_DURATION
    assert (
        datetime(1970, 1, 1, tzinfo=timezone.utc),
        datetime(9000, 1, 1, tzinfo=timezone.utc),
    ) == (MIN_DATETIME, MAX_DATETIME)
    assert (255, 65_536, 256, 256) == (
        MAX_NAME_LENGTH,
        MAX_TEXT_LENGTH,
        MAX_SCHEDULES,
        MAX_PARAMETERS,
    )


# -- how each bounded value is written and read back --------------------------------

RoundTrip = Callable[[Store, Seeded, Any], Any]


def _preset(**changes: Any) -> RoundTrip:
    """put_preset with *changes* (a callable of the value), read_preset back."""

    def trip(store: Store, seeded: Seeded, value: Any) -> Any:
        field, make, read = changes["field"], changes["make"], changes["read"]
        store.put_preset(attrs.evolve(seeded.preset, **{field: make(value)}))
        return read(store.read_preset(seeded.preset.id).config)

    return trip


def _windows(count: int) -> tuple[PrebuildSchedule, ...]:
    """*count* schedules that never overlap: hour 0 of distinct days of the year."""
    days = [(d, m) for m in range(1, 13) for d in range(1, 32)]
    return tuple(
        PrebuildSchedule(cron=f"* 0 {d} {m} *", instances=1) for d, m in days[:count]
    )


def _template_name(store: Store, seeded: Seeded, value: Any) -> Any:
    store.put_template(attrs.evolve(seeded.template, name=value))
    return store.get_template(seeded.template.id).name


def _default_ttl(store: Store, seeded: Seeded, value: Any) -> Any:
    store.put_template(attrs.evolve(seeded.template, default_ttl=value))
    return store.get_template(seeded.template.id).default_ttl


def _created(store: Store, seeded: Seeded, value: Any) -> Any:
    """create_prebuild's name (a string) or now (a datetime)."""
    if isinstance(value, str):
        request = store.create_prebuild(seeded.preset.id, now=NOW, name=value)
        assert request is not None
        return store.get_instance(request.instance_id).name
    request = store.create_prebuild(seeded.preset.id, now=value, name="pb")
    assert request is not None
    return store.get_instance(request.instance_id).created_at


def _claimed(read: Callable[[Any], Any], **make: Callable[[Any], Any]) -> RoundTrip:
    """Store.claim of the seeded ready instance; *read* from it as read back."""

    def trip(store: Store, seeded: Seeded, value: Any) -> Any:
        arguments: dict[str, Any] = {
            "preset_id": seeded.preset.id,
            "user_id": uuid.uuid4(),
            "name": "bob-dev",
            "lifecycle": Lifecycle(last_used_at=NOW),
            "now": NOW,
            "version_id": seeded.template.active_version_id,
            "not_before": None,
        }
        arguments.update({key: maker(value) for key, maker in make.items()})
        got = store.claim(**arguments)
        assert got is not None
        return read(store.get_instance(got.id))

    return trip


def _claim_cutoff(field: str) -> RoundTrip:
    """
    Store.claim (or claim_if_unchanged) with *field* at the value: accepted
    (a claim or a miss, or a stale stamp), the value back.
    """

    def trip(store: Store, seeded: Seeded, value: Any) -> Any:
        arguments: dict[str, Any] = {
            "preset_id": seeded.preset.id,
            "user_id": uuid.uuid4(),
            "name": "bob-dev",
            "lifecycle": Lifecycle(last_used_at=NOW),
            "now": NOW,
            "version_id": seeded.template.active_version_id,
            "not_before": None,
            field: value,
        }
        if field == "stamp":
            assert isinstance(store, StampedClaims)
            with contextlib.suppress(PresetChangedError):
                store.claim_if_unchanged(**arguments)
        else:
            store.claim(**arguments)
        return value

    return trip


def _claimer_ttl(store: Store, seeded: Seeded, value: Any) -> Any:
    instance_id = StoreClaimer(store).claim(
        now=NOW,
        user_id=uuid.uuid4(),
        name="bob-dev",
        preset_id=seeded.preset.id,
        ttl=value,
    )
    return store.get_instance(instance_id).lifecycle.ttl


def _finished(field: str) -> RoundTrip:
    def trip(store: Store, seeded: Seeded, value: Any) -> Any:
        build_id = seeded.building.build_id
        arguments: dict[str, Any] = {"now": NOW, "succeeded": False, field: value}
        store.build_finished(build_id, **arguments)
        build = store.get_build(build_id)
        return build.finished_at if field == "now" else getattr(build, field)

    return trip


def _invalidated(store: Store, seeded: Seeded, value: Any) -> Any:
    store.invalidate_preset(seeded.preset.id, at=value)
    return store.read_preset(seeded.preset.id).last_invalidated_at


def _derived(field: str) -> RoundTrip:
    """derive of the store's facts with *field* at the value: the presets are there."""

    def trip(store: Store, seeded: Seeded, value: Any) -> Any:
        arguments: dict[str, Any] = {
            "now": NOW,
            "backoff_lookback": LOOKBACK,
            "hard_limit": 3,
            field: value,
        }
        snapshot = derive(store.read_pool(), **arguments)
        assert seeded.preset.id in {p.id for p in snapshot.presets}
        return value

    return trip


def _length(n: int, char: str = WIDE) -> str:
    return char * n


@attrs.frozen
class Bound:
    """A bounded value: how it is written and read back, at and beyond its bound."""

    name: str
    field: str
    trip: RoundTrip
    at_bound: tuple[Any, ...]
    beyond: tuple[Any, ...]


BOUNDS = [
    Bound("desired_instances", "desired_instances",
          _preset(field="desired_instances", make=lambda v: v, read=lambda p: p.desired_instances),
          (0, MAX_INSTANCES), (-1, MAX_INSTANCES + 1, 2**70)),
    Bound("schedule-instances", "instances",
          _preset(field="schedules",
                  make=lambda v: (PrebuildSchedule(cron="* 9-17 * * 1-5", instances=v),),
                  read=lambda p: p.schedules[0].instances),
          (0, MAX_INSTANCES), (-1, MAX_INSTANCES + 1)),
    Bound("schedule-count", "schedules",
          _preset(field="schedules", make=_windows, read=lambda p: len(p.schedules)),
          (0, MAX_SCHEDULES), ()),
    Bound("parameter-count", "parameters",
          _preset(field="parameters", make=lambda n: tuple((f"p{i}", "v") for i in range(n)),
                  read=lambda p: len(p.parameters)),
          (0, MAX_PARAMETERS), (MAX_PARAMETERS + 1,)),
    Bound("parameter-name", "parameters",
          _preset(field="parameters", make=lambda name: ((name, "v"),),
                  read=lambda p: p.parameters[0][0]),
          ("r", _length(MAX_NAME_LENGTH)), ("", _length(MAX_NAME_LENGTH + 1))),
    Bound("parameter-value", "parameters",
          _preset(field="parameters", make=lambda value: (("region", value),),
                  read=lambda p: p.parameters[0][1]),
          ("", _length(MAX_TEXT_LENGTH)), (_length(MAX_TEXT_LENGTH + 1),)),
    Bound("preset-name", "name",
          _preset(field="name", make=lambda v: v, read=lambda p: p.name),
          ("", _length(MAX_NAME_LENGTH)), (_length(MAX_NAME_LENGTH + 1), "a\x00b", "a\udc80")),
    Bound("preset-ttl", "ttl",
          _preset(field="ttl", make=lambda v: v, read=lambda p: p.ttl),
          (timedelta(0), US, MAX_DURATION), (-US, MAX_DURATION + US)),
    Bound("template-name", "name", _template_name,
          ("", _length(MAX_NAME_LENGTH)), (_length(MAX_NAME_LENGTH + 1), "nul\x00")),
    Bound("template-default_ttl", "default_ttl", _default_ttl,
          (timedelta(0), MAX_DURATION), (-US, MAX_DURATION + US)),
    Bound("instance-name", "name", _created,
          ("p", _length(MAX_NAME_LENGTH)), ("", _length(MAX_NAME_LENGTH + 1))),
    Bound("create-now", "now", _created,
          (MIN_DATETIME, MAX_DATETIME, MAX_DATETIME.astimezone(PLUS_14)),
          (MIN_DATETIME - US, MAX_DATETIME + US, (MAX_DATETIME + US).astimezone(MINUS_12))),
    Bound("claim-name", "name", _claimed(lambda i: i.name, name=lambda v: v),
          ("b", _length(MAX_NAME_LENGTH)), ("", _length(MAX_NAME_LENGTH + 1))),
    Bound("claim-autostart_schedule", "autostart_schedule",
          _claimed(lambda i: i.lifecycle.autostart_schedule,
                   lifecycle=lambda v: Lifecycle(autostart_schedule=v, last_used_at=NOW)),
          ("", _length(MAX_NAME_LENGTH)), (_length(MAX_NAME_LENGTH + 1),)),
    Bound("claim-next_start_at", "next_start_at",
          _claimed(lambda i: i.lifecycle.next_start_at,
                   lifecycle=lambda v: Lifecycle(next_start_at=v, last_used_at=NOW)),
          (MIN_DATETIME, MAX_DATETIME), (MIN_DATETIME - US, MAX_DATETIME + US)),
    Bound("claim-not_before", "not_before", _claim_cutoff("not_before"),
          (MIN_DATETIME, MAX_DATETIME), (MIN_DATETIME - US, MAX_DATETIME + US)),
    Bound("claim_if_unchanged-stamp", "stamp", _claim_cutoff("stamp"),
          (0, MAX_COUNT), (-1, MAX_COUNT + 1)),
    Bound("claim-ttl", "ttl", _claimer_ttl,
          (timedelta(0), MAX_DURATION), (-US, MAX_DURATION + US)),
    Bound("invalidate-at", "at", _invalidated,
          (MIN_DATETIME, MAX_DATETIME, MIN_DATETIME.astimezone(MINUS_12)),
          (MIN_DATETIME - US, MAX_DATETIME + US)),
    Bound("build-error_kind", "error_kind", _finished("error_kind"),
          ("", _length(MAX_NAME_LENGTH)), (_length(MAX_NAME_LENGTH + 1),)),
    Bound("build-error", "error", _finished("error"),
          ("", _length(MAX_TEXT_LENGTH)), (_length(MAX_TEXT_LENGTH + 1),)),
    Bound("build-finished-now", "now", _finished("now"),
          (MAX_DATETIME,), (MAX_DATETIME + US,)),
    Bound("derive-now", "now", _derived("now"),
          (MIN_DATETIME, MAX_DATETIME), (MIN_DATETIME - US, MAX_DATETIME + US)),
    Bound("derive-backoff_lookback", "backoff_lookback", _derived("backoff_lookback"),
          (timedelta(0), MAX_DURATION), (-US, MAX_DURATION + US)),
    Bound("derive-hard_limit", "hard_limit", _derived("hard_limit"),
          (0, MAX_INSTANCES), (-1, MAX_INSTANCES + 1)),
]  # fmt: skip


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.name for b in BOUNDS])
def test_a_value_at_its_bound_round_trips_and_beyond_is_refused(
    shared_store: Store, bound: Bound
) -> None:
    """
    Every value at the bound is written and read back equal on every store;
    every value beyond it is refused with InvalidInputError naming the field.
    """
    for value in bound.at_bound:
        seeded = seed(shared_store)
        assert value == bound.trip(shared_store, seeded, value), value
    seeded = seed(shared_store)
    for value in bound.beyond:
        with pytest.raises(InvalidInputError) as info:
            bound.trip(shared_store, seeded, value)
        assert bound.field == info.value.field


def test_one_schedule_too_many_is_refused() -> None:
    """A preset holds at most MAX_SCHEDULES schedules (the overlap check is quadratic)."""
    with pytest.raises(InvalidInputError) as info:
        attrs.evolve(seed_config(), schedules=_windows(MAX_SCHEDULES + 1))

    assert "schedules" == info.value.field


def seed_config() -> Any:
    from prebuilds import PresetConfig

    return PresetConfig(
        id=uuid.uuid4(),
        template_id=uuid.uuid4(),
        template_version_id=uuid.uuid4(),
        desired_instances=1,
        scheduling_timezone="UTC",
    )


# -- bounds of records and settings that never reach a store ----------------------


@pytest.mark.parametrize(
    ("make", "field", "at_bound", "beyond"),
    [
        (lambda n: InProgressCount(preset_id=uuid.uuid4(), transition=Transition.START, count=n),
         "count", MAX_COUNT, MAX_COUNT + 1),
        (lambda n: PendingCount(preset_id=uuid.uuid4(), count=n), "count", MAX_COUNT, MAX_COUNT + 1),
        (lambda n: Backoff(preset_id=uuid.uuid4(), num_failed=n, last_build_at=NOW),
         "num_failed", MAX_COUNT, MAX_COUNT + 1),
        (lambda n: ReconciliationActions(action_type=ActionType.CREATE, create=n),
         "create", MAX_COUNT, -1),
        (lambda n: Build(id=uuid.uuid4(), instance_id=uuid.uuid4(), preset_id=uuid.uuid4(),
                         template_version_id=uuid.uuid4(), transition=Transition.START,
                         status=BuildStatus.PENDING, build_number=n, initiator_id=uuid.uuid4(),
                         created_at=NOW),
         "build_number", MAX_BUILD_NUMBER, MAX_BUILD_NUMBER + 1),
        (lambda n: Build(id=uuid.uuid4(), instance_id=uuid.uuid4(), preset_id=uuid.uuid4(),
                         template_version_id=uuid.uuid4(), transition=Transition.START,
                         status=BuildStatus.PENDING, build_number=n, initiator_id=uuid.uuid4(),
                         created_at=NOW),
         "build_number", 1, 0),
    ],
    ids=["in-progress", "pending", "num-failed", "create", "build-number", "build-number-low"],
)  # fmt: skip
def test_counts_of_records(
    make: Callable[[int], object], field: str, at_bound: int, beyond: int
) -> None:
    """Counts a store derives: at the bound accepted, beyond refused naming the field."""
    assert at_bound == getattr(make(at_bound), field)
    with pytest.raises(InvalidInputError) as info:
        make(beyond)
    assert (field, beyond) == (info.value.field, info.value.value)


def reconciler(**settings: Any) -> StoreReconciler:
    store = MemoryStore()
    clock = FakeClock()
    return StoreReconciler(
        store, FakeProvisioner(store, clock), clock=clock, **settings
    )


@pytest.mark.parametrize(
    ("setting", "at_bound", "beyond"),
    [
        ("max_workers", (1, MAX_INSTANCES), (0, MAX_INSTANCES + 1)),
        ("hard_limit", (0, MAX_INSTANCES), (-1, MAX_INSTANCES + 1)),
        ("submit_timeout", (1e-6, MAX_DURATION.total_seconds()),
         (0.0, MAX_DURATION.total_seconds() + 1, math.inf)),
        ("interval", (US, MAX_DURATION), (timedelta(0), MAX_DURATION + US)),
        ("build_timeout", (US, MAX_DURATION), (timedelta(0), MAX_DURATION + US)),
        ("backoff_interval", (timedelta(0), MAX_DURATION), (-US, MAX_DURATION + US)),
        ("backoff_lookback", (timedelta(0), MAX_DURATION), (-US, MAX_DURATION + US)),
    ],
)  # fmt: skip
def test_reconciler_settings(
    setting: str, at_bound: tuple[Any, ...], beyond: tuple[Any, ...]
) -> None:
    """The reconciler's settings accept their bounds and refuse one step beyond."""
    for value in at_bound:
        reconciler(**{setting: value})
    for value in beyond:
        with pytest.raises(InvalidInputError) as info:
            reconciler(**{setting: value})
        assert (setting, value) == (info.value.field, info.value.value)


def test_the_longest_backoff_never_ends() -> None:
    """
    A backoff that would end after the latest instant (or overflow a
    datetime) lasts until MAX_DATETIME: later than any ``now`` accepted.
    """
    from prebuilds import Preset

    preset = Preset(
        id=uuid.uuid4(),
        template_id=uuid.uuid4(),
        template_version_id=uuid.uuid4(),
        desired_instances=1,
    )
    for num_failed in (10**6, MAX_COUNT):
        snapshot = PresetSnapshot(
            preset=preset,
            backoff=Backoff(
                preset_id=preset.id, num_failed=num_failed, last_build_at=NOW
            ),
        )

        assert MAX_DATETIME == backoff_until(snapshot, backoff_interval=MAX_DURATION)
