"""
The property test of the boundary (issue 9, item 6).

For every public constructor, the calculator's functions, StoreReconciler's
settings and every Store and StoreClaimer method, Hypothesis draws arguments
of which at most one is bad (a wrong type or a value out of range; see
tests/boundary_kinds.py). With none bad the call is accepted, and what it
wrote reads back equal; with one bad it is refused with InvalidInputError
naming exactly that argument, before anything is written. Never another
exception, never a stored row that fails to decode.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import functools
import uuid
import weakref

from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prebuilds import (
    PREBUILDS_OWNER_ID,
    ActionType,
    Backoff,
    Build,
    BuildRequest,
    BuildStatus,
    CollectingEventSink,
    Event,
    EventKind,
    GlobalSnapshot,
    InProgressCount,
    Instance,
    InvalidInputError,
    InvalidPreset,
    Lease,
    Lifecycle,
    PendingCount,
    PooledInstance,
    PrebuildSchedule,
    PrebuildsError,
    Preset,
    PresetConfig,
    PresetSnapshot,
    PresetStatus,
    ReconciliationActions,
    ReconciliationState,
    ResourceReplacement,
    RunningPrebuild,
    StoreClaimer,
    StoreReconciler,
    Template,
    TemplateNotFoundError,
    Transition,
    backoff_until,
    calculate_actions,
    calculate_state,
    can_skip_reconciliation,
    claimed_lifecycle,
    derive,
    desired_instances,
    expiry_cutoff,
    generate_name,
    is_expired,
    is_lifecycle_managed,
    pooled_lifecycle,
)
from prebuilds._validate import MAX_COUNT, MAX_DURATION, MAX_INSTANCES
from prebuilds.interfaces import StampedClaims, Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner, strategies
from tests.boundary_kinds import (
    AWARE,
    BOOLS,
    BUILD_NUMBERS,
    COUNTS,
    CRONS,
    DURATIONS,
    INSTANCES,
    NAMES,
    OTHERS,
    PARAMETERS,
    PATHS,
    POSITIVE_DURATIONS,
    REQUIRED_NAMES,
    SCHEDULES,
    STRINGS,
    TEXTS,
    UUID_TUPLES,
    UUIDS,
    ZONES,
    Kind,
    enums,
    ints,
    records,
    texts,
)
from tests.input_helpers import (
    HARD_LIMIT,
    LOOKBACK,
    NOW,
    _shared_store,  # noqa: F401 - the fixture
    seed,
)


def draw_arguments(
    data: st.DataObject, kinds: dict[str, Kind]
) -> tuple[str | None, dict[str, Any]]:
    """
    Arguments for *kinds*: all valid, or (half the time) one of them, named
    first, bad.
    """
    bad = None
    one_bad: bool = bool(kinds) and data.draw(st.booleans(), label="one bad")
    if one_bad:
        bad = data.draw(st.sampled_from(sorted(kinds)), label="bad argument")
    return bad, {
        name: data.draw(kind.invalid if name == bad else kind.valid, label=name)
        for name, kind in kinds.items()
    }


def refused_naming(bad: str, call: Callable[[], object]) -> None:
    """*call* raises InvalidInputError on *bad*; any other outcome fails."""
    with pytest.raises(InvalidInputError) as info:
        call()
    assert bad == info.value.field, info.value


# -- records ----------------------------------------------------------------------

LIFECYCLE = {
    "autostart_schedule": NAMES.optional(),
    "next_start_at": AWARE.optional(),
    "ttl": DURATIONS.optional(),
    "deadline": AWARE.optional(),
    "max_deadline": AWARE.optional(),
    "dormant_at": AWARE.optional(),
    "deleting_at": AWARE.optional(),
    "last_used_at": AWARE.optional(),
}
LIFECYCLES = Kind(records(Lifecycle, LIFECYCLE), OTHERS)
TEMPLATE = {
    "id": UUIDS,
    "active_version_id": UUIDS,
    "name": NAMES,
    "organization_id": UUIDS.optional(),
    "deleted": BOOLS,
    "deprecated": BOOLS,
    "default_ttl": DURATIONS.optional(),
}
PRESET_CONFIG = {
    "id": UUIDS,
    "template_id": UUIDS,
    "template_version_id": UUIDS,
    "desired_instances": INSTANCES,
    "name": NAMES,
    "ttl": DURATIONS.optional(),
    "scheduling_timezone": ZONES,
    "schedules": SCHEDULES,
    "parameters": PARAMETERS,
}
PRESET = {
    **PRESET_CONFIG,
    "organization_id": UUIDS.optional(),
    "using_active_version": BOOLS,
    "template_deleted": BOOLS,
    "template_deprecated": BOOLS,
    "last_invalidated_at": AWARE.optional(),
    "status": enums(PresetStatus),
}
RUNNING = {
    "id": UUIDS,
    "preset_id": UUIDS,
    "created_at": AWARE,
    "ready": BOOLS,
    "name": NAMES,
    "template_id": UUIDS.optional(),
    "template_version_id": UUIDS.optional(),
}

RECORDS: dict[type[Any], dict[str, Kind]] = {
    PrebuildSchedule: {"cron": CRONS, "instances": INSTANCES},
    Preset: PRESET,
    PresetConfig: PRESET_CONFIG,
    Template: TEMPLATE,
    RunningPrebuild: RUNNING,
    InProgressCount: {
        "preset_id": UUIDS,
        "transition": enums(Transition),
        "count": COUNTS,
        "template_id": UUIDS.optional(),
        "template_version_id": UUIDS.optional(),
    },
    PendingCount: {"preset_id": UUIDS, "count": COUNTS},
    Backoff: {"preset_id": UUIDS, "num_failed": COUNTS, "last_build_at": AWARE},
    InvalidPreset: {
        "preset_id": UUIDS,
        "field": STRINGS,
        "value": STRINGS,
        "reason": STRINGS,
    },
    Lifecycle: LIFECYCLE,
    Instance: {
        "id": UUIDS,
        "preset_id": UUIDS,
        "template_id": UUIDS,
        "template_version_id": UUIDS,
        "owner_id": UUIDS,
        "name": REQUIRED_NAMES,
        "created_at": AWARE,
        "ready": BOOLS,
        "lifecycle": LIFECYCLES,
        "deleted": BOOLS,
        "latest_transition": enums(Transition),
        "latest_status": enums(BuildStatus),
        "claimed_at": AWARE.optional(),
    },
    PooledInstance: {
        "id": UUIDS,
        "preset_id": UUIDS,
        "template_id": UUIDS,
        "template_version_id": UUIDS,
        "name": NAMES,
        "created_at": AWARE,
        "ready": BOOLS,
        "latest_build_id": UUIDS,
        "latest_transition": enums(Transition),
        "latest_status": enums(BuildStatus),
        "latest_number": BUILD_NUMBERS,
        "latest_created_at": AWARE,
    },
    Build: {
        "id": UUIDS,
        "instance_id": UUIDS,
        "preset_id": UUIDS,
        "template_version_id": UUIDS,
        "transition": enums(Transition),
        "status": enums(BuildStatus),
        "build_number": BUILD_NUMBERS,
        "initiator_id": UUIDS,
        "created_at": AWARE,
        "started_at": AWARE.optional(),
        "finished_at": AWARE.optional(),
        "error_kind": NAMES.optional(),
        "error": TEXTS.optional(),
    },
    BuildRequest: {
        "build_id": UUIDS,
        "instance_id": UUIDS,
        "preset_id": UUIDS,
        "template_id": UUIDS,
        "template_version_id": UUIDS,
        "transition": enums(Transition),
        "name": REQUIRED_NAMES,
        "parameters": PARAMETERS,
        "orphan": BOOLS,
    },
    Event: {
        "kind": enums(EventKind),
        "at": AWARE,
        "preset_id": UUIDS.optional(),
        "instance_id": UUIDS.optional(),
        "build_id": UUIDS.optional(),
        "detail": TEXTS,
    },
    ResourceReplacement: {
        "resource": texts(65_536, required=True),
        "paths": PATHS,
    },
    Lease: {"held": BOOLS, "token": NAMES},
    ReconciliationActions: {
        "action_type": enums(ActionType),
        "create": COUNTS,
        "delete_ids": UUID_TUPLES,
        "backoff_until": AWARE.optional(),
    },
    ReconciliationState: dict.fromkeys(
        (
            "actual",
            "expired",
            "desired",
            "eligible",
            "extraneous",
            "starting",
            "stopping",
            "deleting",
        ),
        COUNTS,
    ),
}


#: Half the profile's examples for each of the many records and functions.
HALF = settings(max_examples=max(10, settings().max_examples // 2))


@pytest.mark.parametrize("record", list(RECORDS), ids=lambda r: r.__name__)
@HALF
@given(data=st.data())
def test_a_record_keeps_valid_fields_and_names_a_bad_one(
    record: type[Any], data: st.DataObject
) -> None:
    """
    Valid fields make a record that holds them; one bad field is refused
    with InvalidInputError naming it.
    """
    bad, fields = draw_arguments(data, RECORDS[record])

    if bad is not None:
        refused_naming(bad, lambda: record(**fields))
        return
    made = record(**fields)
    assert fields == {name: getattr(made, name) for name in fields}


# -- snapshots: no ID twice, nothing of another preset -------------------------------

_OTHER = uuid.UUID(int=0xBAD)


def _stray(preset_id: uuid.UUID = _OTHER) -> RunningPrebuild:
    return RunningPrebuild(id=uuid.uuid4(), preset_id=preset_id, created_at=NOW)


Corruption = Callable[[dict[str, Any]], bool]


def _repeat(field: str, *, into: str | None = None) -> Corruption:
    """List the first item of *field* again (in *into*); False if it is empty."""

    def change(fields: dict[str, Any]) -> bool:
        if not fields[field]:
            return False
        target = into or field
        fields[target] = (*fields[target], fields[field][0])
        return True

    return change


def _set(field: str, value: Callable[[dict[str, Any]], Any]) -> Corruption:
    def change(fields: dict[str, Any]) -> bool:
        fields[field] = value(fields)
        return True

    return change


#: name: (the field refused, how the fields of a valid snapshot are corrupted)
PRESET_SNAPSHOT_CORRUPTIONS: dict[str, tuple[str, Corruption]] = {
    "running-twice": ("running", _repeat("running")),
    "running-and-expired": ("expired", _repeat("running", into="expired")),
    "expired-twice": ("expired", _repeat("expired")),
    "of-another-preset": (
        "running",
        _set("running", lambda f: (*f["running"], _stray())),
    ),
    "not-a-prebuild": ("running", _set("running", lambda f: (*f["running"], "x"))),
    "transition-twice": ("in_progress", _repeat("in_progress")),
    "backoff-of-another-preset": (
        "backoff",
        _set(
            "backoff",
            lambda f: Backoff(preset_id=_OTHER, num_failed=1, last_build_at=NOW),
        ),
    ),
    "pending-count-float": ("pending_count", _set("pending_count", lambda f: 1.0)),
    "preset-a-dict": ("preset", _set("preset", lambda f: attrs.asdict(f["preset"]))),
}


def _fields(snapshot: Any) -> dict[str, Any]:
    return {
        a.name: getattr(snapshot, a.name)
        for a in attrs.fields(type(snapshot))
        if a.init
    }


@given(
    snapshot=strategies.preset_snapshots(max_running=4),
    corruption=st.none() | st.sampled_from(sorted(PRESET_SNAPSHOT_CORRUPTIONS)),
)
def test_a_preset_snapshot_refuses_an_id_twice_or_of_another_preset(
    snapshot: PresetSnapshot, corruption: str | None
) -> None:
    """
    A valid PresetSnapshot rebuilds equal; one listing an ID twice, a
    prebuild or row of another preset, or a value of the wrong type is
    refused, naming the field.
    """
    fields = _fields(snapshot)
    if corruption is None:
        assert snapshot == PresetSnapshot(**fields)
        return
    field, change = PRESET_SNAPSHOT_CORRUPTIONS[corruption]
    if change(fields):
        refused_naming(field, lambda: PresetSnapshot(**fields))


def _invalid_twin(fields: dict[str, Any]) -> Any:
    """An invalid-preset row for the first preset, which is also valid."""
    return (
        InvalidPreset(
            preset_id=fields["presets"][0].id, field="ttl", value="1", reason="r"
        ),
    )


GLOBAL_CORRUPTIONS: dict[str, Corruption] = {
    "presets": _repeat("presets"),
    "running": _repeat("running"),
    "pending": _repeat("pending"),
    "backoffs": _repeat("backoffs"),
    "in_progress": _repeat("in_progress"),
    "invalid_presets": lambda f: (
        bool(f["presets"]) and _set("invalid_presets", _invalid_twin)(f)
    ),
    "hard_limited": _set("hard_limited", lambda f: {"not-a-uuid"}),
}


@given(
    snapshot=strategies.global_snapshots(max_presets=3, max_running=3),
    corrupt=st.none() | st.sampled_from(sorted(GLOBAL_CORRUPTIONS)),
)
def test_a_global_snapshot_refuses_an_id_twice(
    snapshot: GlobalSnapshot, corrupt: str | None
) -> None:
    """
    A valid GlobalSnapshot rebuilds equal and filters every preset; one with
    an ID given twice (presets, running prebuilds, per-preset rows) is
    refused, naming the field.
    """
    fields = _fields(snapshot)
    if corrupt is None:
        assert snapshot == GlobalSnapshot(**fields)
        for preset in snapshot.presets:
            assert preset == snapshot.filter_by_preset(preset.id, now=NOW).preset
        return
    if GLOBAL_CORRUPTIONS[corrupt](fields):
        refused_naming(corrupt, lambda: GlobalSnapshot(**fields))


# -- the calculator's functions ------------------------------------------------------

SNAPSHOTS = Kind(strategies.preset_snapshots(now=NOW, max_running=3), OTHERS)
PRESETS = Kind(strategies.presets(around=NOW), OTHERS)
PREBUILDS = Kind(records(RunningPrebuild, RUNNING), OTHERS)

FUNCTIONS: dict[str, tuple[Callable[..., object], dict[str, Kind]]] = {
    "calculate_actions": (
        calculate_actions,
        {"snapshot": SNAPSHOTS, "now": AWARE, "backoff_interval": DURATIONS},
    ),
    "calculate_state": (calculate_state, {"snapshot": SNAPSHOTS, "now": AWARE}),
    "backoff_until": (
        backoff_until,
        {"snapshot": SNAPSHOTS, "backoff_interval": DURATIONS},
    ),
    "can_skip_reconciliation": (can_skip_reconciliation, {"snapshot": SNAPSHOTS}),
    "desired_instances": (desired_instances, {"preset": PRESETS, "at": AWARE}),
    "is_expired": (
        is_expired,
        {"preset": PRESETS, "prebuild": PREBUILDS, "now": AWARE},
    ),
    "pooled_lifecycle": (pooled_lifecycle, {"now": AWARE}),
    "expiry_cutoff": (
        expiry_cutoff,
        {
            "ttl": DURATIONS.optional(),
            "last_invalidated_at": AWARE.optional(),
            "now": AWARE,
        },
    ),
    "claimed_lifecycle": (
        claimed_lifecycle,
        {
            "now": AWARE,
            "autostart_schedule": NAMES.optional(),
            "next_start_at": AWARE.optional(),
            "ttl": DURATIONS.optional(),
            "template_default_ttl": DURATIONS.optional(),
        },
    ),
    "is_lifecycle_managed": (
        is_lifecycle_managed,
        {"instance": Kind(records(Instance, RECORDS[Instance]), OTHERS)},
    ),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@HALF
@given(data=st.data())
def test_a_function_answers_valid_arguments_and_names_a_bad_one(
    name: str, data: st.DataObject
) -> None:
    """The calculator's functions answer valid arguments and name a bad one."""
    function, kinds = FUNCTIONS[name]
    bad, arguments = draw_arguments(data, kinds)

    if bad is None:
        function(**arguments)
    else:
        refused_naming(bad, lambda: function(**arguments))


# -- StoreReconciler's settings ------------------------------------------------------

SECONDS = Kind(
    st.one_of(
        st.floats(min_value=1e-6, max_value=MAX_DURATION.total_seconds()),
        st.integers(1, int(MAX_DURATION.total_seconds())),
    ),
    st.one_of(
        st.floats(max_value=0.0),
        st.sampled_from([float("nan"), float("inf"), MAX_DURATION.total_seconds() + 1]),
        st.booleans(),
        st.text(max_size=3),
    ),
)
#: Values without the methods of a clock, an event sink, a store...
_NOT_AN_OBJECT = st.one_of(st.text(max_size=2), st.integers(), st.just(object()))
_MEMORY = MemoryStore()
_CLOCK = FakeClock()
RECONCILER = {
    "store": Kind(st.just(_MEMORY), OTHERS),
    "provisioner": Kind(st.just(FakeProvisioner(_MEMORY, _CLOCK)), OTHERS),
    "clock": Kind(st.none() | st.just(_CLOCK), _NOT_AN_OBJECT, nullable=True),
    "events": Kind(
        st.none() | st.just(CollectingEventSink()), _NOT_AN_OBJECT, nullable=True
    ),
    "interval": POSITIVE_DURATIONS,
    "backoff_interval": DURATIONS,
    "backoff_lookback": DURATIONS,
    "hard_limit": INSTANCES,
    "build_timeout": POSITIVE_DURATIONS.optional(),
    "submit_timeout": SECONDS.optional(),
    "max_workers": ints(1, MAX_INSTANCES),
    "name_factory": Kind(st.just(generate_name), st.one_of(st.text(max_size=3), st.none())),
}  # fmt: skip


@given(data=st.data())
def test_every_reconciler_setting_is_checked(data: st.DataObject) -> None:
    """Valid settings make a reconciler; one bad setting is refused, named."""
    bad, settings_ = draw_arguments(data, RECONCILER)
    store, provisioner = settings_.pop("store"), settings_.pop("provisioner")

    if bad is None:
        StoreReconciler(store, provisioner, **settings_)
    else:
        refused_naming(bad, lambda: StoreReconciler(store, provisioner, **settings_))


# -- every Store and StoreClaimer method, on every store ------------------------------


@attrs.define
class Known:
    """What a store holds, for drawing IDs that exist (and some that do not)."""

    templates: dict[uuid.UUID, Template]
    presets: list[uuid.UUID]
    instances: list[uuid.UUID]
    builds: list[uuid.UUID]

    def ids(self, pool: list[uuid.UUID]) -> Kind:
        known = pick(pool)
        return Kind(st.one_of(known, known, known, st.uuids()), UUIDS.wrong)


def pick(pool: list[Any]) -> st.SearchStrategy[Any]:
    """
    An item of *pool*, which grows as the store does: drawn as an integer of
    a fixed range, so that every example draws the same shape of data
    (Hypothesis replays choices, and refuses strategies that change shape).
    """
    return st.integers(0, 2**16).map(lambda i: pool[i % len(pool)])


_KNOWN: weakref.WeakKeyDictionary[Any, Known] = weakref.WeakKeyDictionary()


def known(store: Store) -> Known:
    """The store's registry, seeded at first use."""
    found = _KNOWN.get(store)
    if found is None:
        seeded = seed(store)
        requests = (seeded.ready, seeded.claimed, seeded.building, seeded.failed)
        found = Known(
            templates={seeded.template.id: seeded.template},
            presets=[seeded.preset.id],
            instances=[r.instance_id for r in requests],
            builds=[r.build_id for r in requests],
        )
        _KNOWN[store] = found
    return found


def _templates(k: Known) -> st.SearchStrategy[Template]:
    fields = {
        **TEMPLATE,
        "id": Kind(st.one_of(pick(sorted(k.templates)), st.uuids()), OTHERS),
    }
    return records(Template, fields)


@st.composite
def _configs(draw: st.DrawFn, k: Known) -> PresetConfig:
    template = draw(pick(list(k.templates.values())))
    fields = {name: draw(kind.valid) for name, kind in PRESET_CONFIG.items()}
    fields["template_id"] = template.id
    fields["template_version_id"] = draw(
        st.one_of(st.just(template.active_version_id), st.uuids())
    )
    fields["id"] = draw(st.one_of(pick(k.presets), st.uuids()))
    return PresetConfig(**fields)


def _users() -> Kind:
    return Kind(
        st.uuids().filter(lambda u: u != PREBUILDS_OWNER_ID),
        st.one_of(UUIDS.invalid, st.just(PREBUILDS_OWNER_ID)),
    )


@attrs.frozen
class Method:
    """One method: its arguments, how it is called, how its effect reads back."""

    kinds: Callable[[Known], dict[str, Kind]]
    call: Callable[[Store, dict[str, Any]], Any]
    check: Callable[[Store, Known, dict[str, Any], Any], None]
    #: What the check compares with, read just before the call.
    before: Callable[[Store, dict[str, Any]], Any] = lambda store, a: None


def _no_check(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    pass


def _check_template(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    template = a["template"]
    k.templates[template.id] = template
    assert template == store.get_template(template.id)


def _check_preset(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    config: PresetConfig = a["preset"]
    if config.id not in k.presets:
        k.presets.append(config.id)
    read = store.read_preset(config.id).config
    names = [f.name for f in attrs.fields(PresetConfig)]
    assert {n: getattr(config, n) for n in names} == {
        n: getattr(read, n) for n in names
    }


def _check_invalidated(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    assert a["at"] == store.read_preset(a["preset_id"]).last_invalidated_at


def _check_paused(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    assert a["paused"] is store.is_paused()


def _check_status(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    assert a["status"] is store.read_preset(a["preset_id"]).status


def _check_created(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    if result is None:  # the preset is not active
        return
    k.instances.append(result.instance_id)
    k.builds.append(result.build_id)
    instance = store.get_instance(result.instance_id)
    assert (a["name"], a["now"], PREBUILDS_OWNER_ID) == (
        instance.name,
        instance.created_at,
        instance.owner_id,
    )
    assert Transition.START is store.get_build(result.build_id).transition


def _check_deletes(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    requests = result if isinstance(result, list) else [result] if result else []
    for request in requests:
        k.builds.append(request.build_id)
        build = store.get_build(request.build_id)
        assert (Transition.DELETE, a["now"]) == (build.transition, build.created_at)


def _check_stuck(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    for build in result:
        assert build == store.get_build(build.id)
        assert (BuildStatus.FAILED, a["now"]) == (build.status, build.finished_at)


def _build_before(store: Store, a: dict[str, Any]) -> Build | None:
    try:
        return store.get_build(a["build_id"])
    except PrebuildsError:
        return None


def _check_started(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    was, build = a["_before"], store.get_build(a["build_id"])
    if was.status is BuildStatus.PENDING:
        assert (BuildStatus.RUNNING, a["now"]) == (build.status, build.started_at)
    else:
        assert was == build  # only a pending build starts


def _check_finished(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    was, build = a["_before"], store.get_build(a["build_id"])
    if not was.status.in_progress:
        assert was == build  # a late report is ignored
        return
    status = BuildStatus.SUCCEEDED if a["succeeded"] else BuildStatus.FAILED
    assert (status, a["now"], a["error_kind"], a["error"]) == (
        build.status,
        build.finished_at,
        build.error_kind,
        build.error,
    )


def _check_ready(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    instance = store.get_instance(a["instance_id"])
    assert instance.deleted or a["ready"] is instance.ready


def _check_claim(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    if result is None:
        return
    read = store.get_instance(result.id)
    assert result == read
    assert (a["user_id"], a["name"], a["lifecycle"], a["now"]) == (
        read.owner_id,
        read.name,
        read.lifecycle,
        read.claimed_at,
    )


def _check_claimer(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    read = store.get_instance(result)
    lifecycle = read.lifecycle
    assert (a["user_id"], a["name"], a["now"]) == (
        read.owner_id,
        read.name,
        read.claimed_at,
    )
    assert (a["autostart_schedule"], a["next_start_at"], a["now"]) == (
        lifecycle.autostart_schedule,
        lifecycle.next_start_at,
        lifecycle.last_used_at,
    )
    if a["ttl"] is not None:
        assert a["ttl"] == lifecycle.ttl


def _check_listed(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    for instance in result:
        assert a["preset_id"] in (None, instance.preset_id)
        assert a["owner_id"] in (None, instance.owner_id)
        assert a["include_deleted"] or not instance.deleted


def _check_builds(store: Store, k: Known, a: dict[str, Any], result: Any) -> None:
    assert all(b.instance_id == a["instance_id"] for b in result if a["instance_id"])


def _claim_kinds(k: Known) -> dict[str, Kind]:
    versions = [t.active_version_id for t in k.templates.values()]
    return {
        "preset_id": k.ids(k.presets),
        "user_id": _users(),
        "name": REQUIRED_NAMES,
        "lifecycle": LIFECYCLES,
        "now": AWARE,
        "version_id": Kind(st.one_of(pick(versions), st.uuids()), UUIDS.wrong),
        "not_before": AWARE.optional(),
    }


def _claimer_call(store: Store, a: dict[str, Any]) -> Any:
    return StoreClaimer(store).claim(**a)


METHODS: dict[str, Method] = {
    "put_template": Method(
        lambda k: {"template": Kind(_templates(k), OTHERS)},
        lambda s, a: s.put_template(**a),
        _check_template,
    ),
    "put_preset": Method(
        lambda k: {"preset": Kind(_configs(k), st.one_of(OTHERS, strategies.presets()))},
        lambda s, a: s.put_preset(**a),
        _check_preset,
    ),
    "invalidate_preset": Method(
        lambda k: {"preset_id": k.ids(k.presets), "at": AWARE},
        lambda s, a: s.invalidate_preset(a["preset_id"], at=a["at"]),
        _check_invalidated,
    ),
    "set_paused": Method(lambda k: {"paused": BOOLS}, lambda s, a: s.set_paused(**a), _check_paused),
    "get_template": Method(
        lambda k: {"template_id": k.ids(list(k.templates))},
        lambda s, a: s.get_template(**a),
        _no_check,
    ),
    "read_preset": Method(
        lambda k: {"preset_id": k.ids(k.presets)}, lambda s, a: s.read_preset(**a), _no_check
    ),
    "read_pool": Method(lambda k: {}, lambda s, a: s.read_pool(), _no_check),
    "create_prebuild": Method(
        lambda k: {"preset_id": k.ids(k.presets), "now": AWARE, "name": REQUIRED_NAMES},
        lambda s, a: s.create_prebuild(a["preset_id"], now=a["now"], name=a["name"]),
        _check_created,
    ),
    "delete_prebuild": Method(
        lambda k: {"instance_id": k.ids(k.instances), "now": AWARE},
        lambda s, a: s.delete_prebuild(a["instance_id"], now=a["now"]),
        _check_deletes,
    ),
    "cancel_pending": Method(
        lambda k: {"preset_id": k.ids(k.presets), "now": AWARE},
        lambda s, a: s.cancel_pending(a["preset_id"], now=a["now"]),
        _check_deletes,
    ),
    "set_preset_status": Method(
        lambda k: {"preset_id": k.ids(k.presets), "status": enums(PresetStatus)},
        lambda s, a: s.set_preset_status(a["preset_id"], a["status"]),
        _check_status,
    ),
    "fail_stuck_builds": Method(
        lambda k: {"older_than": AWARE, "now": AWARE},
        lambda s, a: s.fail_stuck_builds(**a),
        _check_stuck,
    ),
    "build_started": Method(
        lambda k: {"build_id": k.ids(k.builds), "now": AWARE},
        lambda s, a: s.build_started(a["build_id"], now=a["now"]),
        _check_started,
        _build_before,
    ),
    "build_finished": Method(
        lambda k: {
            "build_id": k.ids(k.builds),
            "now": AWARE,
            "succeeded": BOOLS,
            "error_kind": NAMES.optional(),
            "error": TEXTS.optional(),
        },
        lambda s, a: s.build_finished(
            a["build_id"],
            now=a["now"],
            succeeded=a["succeeded"],
            error_kind=a["error_kind"],
            error=a["error"],
        ),
        _check_finished,
        _build_before,
    ),
    "set_ready": Method(
        lambda k: {"instance_id": k.ids(k.instances), "ready": BOOLS},
        lambda s, a: s.set_ready(a["instance_id"], ready=a["ready"]),
        _check_ready,
    ),
    "claim": Method(
        _claim_kinds,
        lambda s, a: s.claim(**a),
        _check_claim,
    ),
    "claim_if_unchanged": Method(
        lambda k: {"stamp": ints(0, MAX_COUNT), **_claim_kinds(k)},
        lambda s, a: cast("StampedClaims", s).claim_if_unchanged(**a),
        _check_claim,
    ),
    "get_instance": Method(
        lambda k: {"instance_id": k.ids(k.instances)}, lambda s, a: s.get_instance(**a), _no_check
    ),
    "list_instances": Method(
        lambda k: {
            "preset_id": k.ids(k.presets).optional(),
            "owner_id": UUIDS.optional(),
            "include_deleted": BOOLS,
        },
        lambda s, a: s.list_instances(**a),
        _check_listed,
    ),
    "get_build": Method(
        lambda k: {"build_id": k.ids(k.builds)}, lambda s, a: s.get_build(**a), _no_check
    ),
    "list_builds": Method(
        lambda k: {"instance_id": k.ids(k.instances).optional()},
        lambda s, a: s.list_builds(**a),
        _check_builds,
    ),
    "StoreClaimer.claim": Method(
        lambda k: {
            "now": AWARE,
            "user_id": _users(),
            "name": REQUIRED_NAMES,
            "preset_id": k.ids(k.presets),
            "autostart_schedule": NAMES.optional(),
            "next_start_at": AWARE.optional(),
            "ttl": DURATIONS.optional(),
        },
        _claimer_call,
        _check_claimer,
    ),
}  # fmt: skip


def everything(store: Store, k: Known) -> tuple[Any, ...]:
    """Every record the store holds, read back (each row decoded)."""
    facts = store.read_pool()
    assert () == facts.invalid_presets  # every preset written was valid
    snapshot = derive(facts, now=NOW, backoff_lookback=LOOKBACK, hard_limit=HARD_LIMIT)
    return (
        [store.get_template(t) for t in sorted(k.templates)],
        [store.read_preset(p) for p in sorted(k.presets)],
        facts,
        store.list_instances(include_deleted=True),
        store.list_builds(),
        store.is_paused(),
        snapshot,
    )


def check_answer(
    name: str, arguments: dict[str, Any], k: Known, error: PrebuildsError
) -> None:
    """
    The errors valid arguments may get: a lookup of an unknown ID (a
    template's too: get_template, and put_preset for its preset's template),
    a miss, an inactive preset, a stale stamp; never an InvalidInputError.
    """
    assert not isinstance(error, InvalidInputError), (name, error)
    if isinstance(error, TemplateNotFoundError):
        template_id = arguments.get("template_id") or arguments["preset"].template_id
        assert template_id == error.template_id
        assert template_id not in k.templates


def _statements(store: Store) -> int | None:
    count = getattr(store, "statement_count", None)
    return None if count is None else int(count())


@pytest.mark.parametrize("name", sorted(METHODS))
@settings(
    # A share of the profile's examples for each of the 21 methods.
    max_examples=max(10, settings().max_examples // 5),
    deadline=None,  # PostgreSQL round trips on a shared machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_every_store_method_keeps_good_arguments_and_refuses_a_bad_one(
    shared_store: Store, name: str, data: st.DataObject
) -> None:
    """
    A call of a Store or StoreClaimer method: with valid arguments it answers
    (or raises a lookup error of prebuilds) and its effect reads back; with
    one bad argument it raises InvalidInputError naming it before the store
    runs a single statement. Everything stored still decodes.
    """
    k = known(shared_store)
    method = METHODS[name]
    bad, arguments = draw_arguments(data, method.kinds(k))
    if bad is not None:
        statements = _statements(shared_store)
        before = everything(shared_store, k) if statements is None else None
        refused_naming(bad, functools.partial(method.call, shared_store, arguments))
        event(f"refused a bad {bad}")
        assert statements == _statements(shared_store)
        if before is not None:
            assert before == everything(shared_store, k)
        return
    was = method.before(shared_store, arguments)
    try:
        result = method.call(shared_store, arguments)
    except PrebuildsError as e:
        check_answer(name, arguments, k, e)
        event(type(e).__name__)
    else:
        method.check(shared_store, k, {**arguments, "_before": was}, result)
        event("accepted")
    everything(shared_store, k)


def test_every_store_method_is_in_the_property_test() -> None:
    """The table above covers every method of the Store protocol."""
    protocol = {
        n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")
    }

    stamped = {
        n
        for n, v in vars(StampedClaims).items()
        if callable(v) and not n.startswith("_")
    }

    assert protocol | stamped == set(METHODS) - {"StoreClaimer.claim"} | {
        "leader",
        "is_paused",
    }
