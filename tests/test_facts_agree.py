"""
Every store hands out the same facts as MemoryStore after the same history.

Hypothesis draws a history of Store calls (templates and presets put and
changed, versions published, templates deprecated and deleted, invalidations,
statuses, creations, build reports, readiness, deletes, cancellations, stuck
builds, claims) and applies it, call by call, to a store of each backend and
to a reference MemoryStore. After every call both stores' ``read_pool()``
must be the same facts, and derive to the same ``GlobalSnapshot`` at several
instants and policies. The stores make their own instance and build IDs: the
IDs each call returns are mapped onto the reference's, so the facts are
compared exactly (stamps aside: a stamp's values are the store's own).
"""

from __future__ import annotations

import itertools
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prebuilds import (
    GlobalSnapshot,
    Lifecycle,
    PoolFacts,
    PrebuildSchedule,
    PresetConfig,
    PresetSnapshot,
    PresetStatus,
    Template,
    calculate_actions,
    derive,
)
from prebuilds._pool import PooledInstance, PresetFacts, derive_preset
from prebuilds._reconciler import _until
from prebuilds.exceptions import InvalidInputError
from prebuilds.interfaces import Store
from prebuilds.stores import MemoryStore
from tests.conftest import StoreFactory


T0 = datetime(2024, 1, 1, 8, 0, tzinfo=timezone.utc)
#: Examples per backend (PostgreSQL makes a schema per example).
EXAMPLES = {"memory": 60, "sqlite": 40, "postgres": 20}
STEPS = 40
#: When and with what policy the facts are derived after each call.
POLICIES = [
    (timedelta(0), timedelta(hours=1), 3),
    (timedelta(minutes=40), timedelta(minutes=30), 1),
    (timedelta(days=1), timedelta(hours=2), 0),
]
_TTLS = (None, timedelta(0), timedelta(minutes=20), timedelta(hours=1))
_SCHEDULES = (
    ("", ()),
    ("Europe/Berlin", (PrebuildSchedule(cron="* 9-17 * * 1-5", instances=3),)),
)
_USERS = tuple(uuid.UUID(int=0xBEEF00 + n) for n in range(3))


class Agreement:
    """The stores, the IDs each made (mapped onto the first's), and the time."""

    def __init__(self, stores: list[Store]) -> None:
        self.stores = stores
        self.now = T0
        self.templates: dict[uuid.UUID, Template] = {}
        self.presets: dict[uuid.UUID, PresetConfig] = {}
        #: Per store: its own IDs -> the reference's, and back.
        self.canonical: list[dict[uuid.UUID, uuid.UUID]] = [{} for _ in stores]
        self.own: list[dict[uuid.UUID, uuid.UUID]] = [{} for _ in stores]
        self.instances: list[uuid.UUID] = []
        self.builds: list[uuid.UUID] = []
        self._ids = itertools.count(1)

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=next(self._ids))

    def tick(self, seconds: int) -> datetime:
        """Time moves on before every call: no two creations share an instant."""
        self.now += timedelta(seconds=seconds)
        return self.now

    # -- calls on every store ------------------------------------------------------
    def on_all(self, call: Callable[[Store, int], Any]) -> list[Any]:
        """*call* on each store (a valid call: none may raise)."""
        return [call(store, n) for n, store in enumerate(self.stores)]

    def requests(self, results: list[Any]) -> None:
        """
        Map the instance and build IDs of the BuildRequests each store
        returned: a new instance's by position (one request per store), the
        others' by the instance they are for.
        """
        if not isinstance(results[0], list):
            assert len({r is None for r in results}) == 1, results
            groups = [] if results[0] is None else [tuple(results)]
        else:
            by_instance = [
                {self.canonical[n][r.instance_id]: r for r in got}
                for n, got in enumerate(results)
            ]
            assert all(set(b) == set(by_instance[0]) for b in by_instance), results
            groups = [tuple(b[i] for b in by_instance) for i in sorted(by_instance[0])]
        for group in groups:
            reference = group[0]
            if reference.instance_id not in self.instances:
                self.instances.append(reference.instance_id)
            self.builds.append(reference.build_id)
            for n, mine in enumerate(group):
                self._map(n, mine.instance_id, reference.instance_id)
                self._map(n, mine.build_id, reference.build_id)
                assert (mine.transition, mine.orphan, mine.parameters, mine.name) == (
                    reference.transition,
                    reference.orphan,
                    reference.parameters,
                    reference.name,
                )

    def _map(self, n: int, mine: uuid.UUID, canonical: uuid.UUID) -> None:
        assert self.canonical[n].setdefault(mine, canonical) == canonical
        self.own[n][canonical] = mine

    def mine(self, n: int, canonical: uuid.UUID) -> uuid.UUID:
        return self.own[n].get(canonical, canonical)

    # -- what must agree -------------------------------------------------------------
    def facts(self, n: int) -> PoolFacts:
        """Store *n*'s facts in the reference's IDs and order, without stamps."""
        ids = self.canonical[n]
        facts = self.stores[n].read_pool()
        return PoolFacts(
            presets=sorted(
                (attrs.evolve(f, stamp=None) for f in facts.presets),
                key=lambda f: f.config.id,
            ),
            instances=sorted(
                (
                    attrs.evolve(
                        i,
                        id=ids.get(i.id, i.id),
                        latest_build_id=ids.get(i.latest_build_id, i.latest_build_id),
                    )
                    for i in facts.instances
                ),
                key=lambda i: i.id,
            ),
            invalid_presets=facts.invalid_presets,
        )

    def check(self) -> None:
        """The facts agree, and so does every pool's state derived from them."""
        reference = self.facts(0)
        for n in range(1, len(self.stores)):
            facts = self.facts(n)
            assert reference == facts
            for later, lookback, limit in POLICIES:
                at = self.now + later
                assert self.derive(reference, at, lookback, limit) == self.derive(
                    facts, at, lookback, limit
                )
        for _, lookback, limit in POLICIES:
            check_plans(reference, self.now, lookback, limit)
            for preset_id in self.presets:
                assert attrs.evolve(
                    self.stores[0].read_preset(preset_id), stamp=None
                ) == attrs.evolve(self.stores[n].read_preset(preset_id), stamp=None)

    @staticmethod
    def derive(
        facts: PoolFacts, at: datetime, lookback: timedelta, limit: int
    ) -> GlobalSnapshot:
        return derive(facts, now=at, backoff_lookback=lookback, hard_limit=limit)


def check_plans(
    facts: PoolFacts, at: datetime, lookback: timedelta, limit: int
) -> None:
    """
    Each preset's snapshot from its own rows (derive_preset) is the one
    derive gives; and the reconciler's plan of it, worked out at *at*, holds
    at every later instant before its end (the key of its cache).
    """
    templates = {f.template.id: f.template for f in facts.presets}
    interval = timedelta(minutes=1)
    for preset_facts in facts.presets:
        preset_id = preset_facts.config.id
        instances = tuple(i for i in facts.instances if i.preset_id == preset_id)

        def alone(
            now: datetime,
            preset_facts: PresetFacts = preset_facts,
            instances: tuple[PooledInstance, ...] = instances,
        ) -> PresetSnapshot:
            return derive_preset(
                preset_facts,
                instances,
                templates=templates,
                now=now,
                backoff_lookback=lookback,
                hard_limit=limit,
            )

        snapshot = alone(at)
        whole = derive(facts, now=at, backoff_lookback=lookback, hard_limit=limit)
        assert whole.filter_by_preset(preset_id, now=at) == snapshot
        until = _until(
            snapshot,
            instances,
            at=at,
            backoff_lookback=lookback,
            backoff_interval=interval,
        )
        actions = calculate_actions(snapshot, now=at, backoff_interval=interval)
        for later in _LATER:
            now = at + later
            if until is not None and now >= until:
                break
            assert snapshot == alone(now), later
            assert actions == calculate_actions(
                snapshot, now=now, backoff_interval=interval
            )


#: Instants after a plan's at where it is checked to hold (if before its end).
_LATER = [timedelta(seconds=s) for s in (0, 1, 59, 60, 899, 900, 1199, 1200, 3599)] + [
    timedelta(hours=h) for h in (1, 2, 5, 24, 24 * 30)
]


# -- one call of the history, drawn -------------------------------------------------


def _pick(data: st.DataObject, pool: list[uuid.UUID] | dict[uuid.UUID, Any]) -> Any:
    """An item of *pool* in the order it was made (its IDs may be random)."""
    ordered = list(pool)
    return ordered[data.draw(st.integers(0, 63)) % len(ordered)]


def new_template(a: Agreement, data: st.DataObject) -> None:
    template = Template(
        id=a.new_id(),
        active_version_id=a.new_id(),
        name=f"t{len(a.templates)}",
        default_ttl=data.draw(st.sampled_from((None, timedelta(hours=8)))),
    )
    a.templates[template.id] = template
    a.on_all(lambda s, _: s.put_template(template))


def change_template(a: Agreement, data: st.DataObject) -> None:
    template = a.templates[_pick(data, a.templates)]
    change = data.draw(st.sampled_from(["version", "deprecated", "deleted", "active"]))
    if change == "version":
        template = attrs.evolve(template, active_version_id=a.new_id())
    else:
        template = attrs.evolve(
            template, deprecated=change == "deprecated", deleted=change == "deleted"
        )
    a.templates[template.id] = template
    a.on_all(lambda s, _: s.put_template(template))


def put_preset(a: Agreement, data: st.DataObject) -> None:
    if bool(a.presets) and data.draw(st.booleans()):
        old = a.presets[_pick(data, a.presets)]
        template_id, version, preset_id = (
            old.template_id,
            old.template_version_id,
            old.id,
        )
    else:
        template_id = _pick(data, a.templates)
        version, preset_id = a.templates[template_id].active_version_id, a.new_id()
    zone, schedules = data.draw(st.sampled_from(_SCHEDULES))
    config = PresetConfig(
        id=preset_id,
        template_id=template_id,
        template_version_id=version,
        desired_instances=data.draw(st.integers(0, 3)),
        name=f"p{preset_id.int}",
        ttl=data.draw(st.sampled_from(_TTLS)),
        scheduling_timezone=zone,
        schedules=schedules,
        parameters=data.draw(st.sampled_from(((), (("region", "eu"),)))),
    )
    a.presets[config.id] = config
    a.on_all(lambda s, _: s.put_preset(config))


def invalidate(a: Agreement, data: st.DataObject) -> None:
    preset_id = _pick(data, a.presets)
    at = a.tick(1)
    a.on_all(lambda s, _: s.invalidate_preset(preset_id, at=at))


def set_status(a: Agreement, data: st.DataObject) -> None:
    preset_id = _pick(data, a.presets)
    status = data.draw(st.sampled_from(list(PresetStatus)))
    a.on_all(lambda s, _: s.set_preset_status(preset_id, status))


def create(a: Agreement, data: st.DataObject) -> None:
    preset_id = _pick(data, a.presets)
    now = a.tick(data.draw(st.integers(1, 600)))
    name = f"pb-{len(a.instances)}"
    a.requests(a.on_all(lambda s, _: s.create_prebuild(preset_id, now=now, name=name)))


def create_ready(a: Agreement, data: st.DataObject) -> None:
    """A creation the host builds and reports ready at once (if it is created)."""
    before = len(a.builds)
    create(a, data)
    if len(a.builds) == before:
        return
    build, instance = a.builds[-1], a.instances[-1]
    now = a.tick(1)
    a.on_all(lambda s, n: s.build_finished(a.mine(n, build), now=now, succeeded=True))
    a.on_all(lambda s, n: s.set_ready(a.mine(n, instance)))


def report(a: Agreement, data: st.DataObject) -> None:
    build = _pick(data, a.builds)
    now = a.tick(data.draw(st.integers(1, 600)))
    if data.draw(st.booleans()):
        a.on_all(lambda s, n: s.build_started(a.mine(n, build), now=now))
        return
    succeeded = data.draw(st.booleans())
    a.on_all(
        lambda s, n: s.build_finished(
            a.mine(n, build),
            now=now,
            succeeded=succeeded,
            error_kind=None if succeeded else "boom",
            error=None if succeeded else "it failed",
        )
    )


def set_ready(a: Agreement, data: st.DataObject) -> None:
    instance = _pick(data, a.instances)
    ready = data.draw(st.booleans())
    a.on_all(lambda s, n: s.set_ready(a.mine(n, instance), ready=ready))


def delete(a: Agreement, data: st.DataObject) -> None:
    instance = _pick(data, a.instances)
    now = a.tick(1)
    a.requests(a.on_all(lambda s, n: s.delete_prebuild(a.mine(n, instance), now=now)))


def cancel(a: Agreement, data: st.DataObject) -> None:
    preset_id = _pick(data, a.presets)
    now = a.tick(1)
    a.requests(a.on_all(lambda s, _: s.cancel_pending(preset_id, now=now)))


def fail_stuck(a: Agreement, data: st.DataObject) -> None:
    now = a.tick(data.draw(st.integers(1, 3600)))
    older_than = now - timedelta(seconds=data.draw(st.integers(0, 1800)))
    failed = a.on_all(lambda s, _: s.fail_stuck_builds(older_than=older_than, now=now))
    canonical = [
        sorted(a.canonical[n].get(b.id, b.id) for b in got)
        for n, got in enumerate(failed)
    ]
    assert all(c == canonical[0] for c in canonical)


def claim(a: Agreement, data: st.DataObject) -> None:
    preset_id = _pick(data, a.presets)
    now = a.tick(data.draw(st.integers(1, 1800)))
    config = a.presets[preset_id]
    version = data.draw(
        st.sampled_from(
            (
                config.template_version_id,
                a.templates[config.template_id].active_version_id,
            )
        )
    )
    not_before = data.draw(st.sampled_from((None, now - timedelta(minutes=30))))
    user = data.draw(st.sampled_from(_USERS))
    lifecycle = Lifecycle(ttl=timedelta(hours=1), last_used_at=now)
    got = a.on_all(
        lambda s, _: s.claim(
            preset_id=preset_id,
            user_id=user,
            name="claimed",
            lifecycle=lifecycle,
            now=now,
            version_id=version,
            not_before=not_before,
        )
    )
    claimed = {None if i is None else a.canonical[n][i.id] for n, i in enumerate(got)}
    assert len(claimed) == 1, claimed


CALLS: list[tuple[Callable[[Agreement, st.DataObject], None], Callable[[Agreement], bool]]] = [
    (new_template, lambda a: len(a.templates) < 3),
    (change_template, lambda a: bool(a.templates)),
    (put_preset, lambda a: bool(a.templates)),
    (invalidate, lambda a: bool(a.presets)),
    (set_status, lambda a: bool(a.presets)),
    (create, lambda a: bool(a.presets)),
    (create_ready, lambda a: bool(a.presets)),
    (create_ready, lambda a: bool(a.presets)),
    (report, lambda a: bool(a.builds)),
    (report, lambda a: bool(a.builds)),
    (set_ready, lambda a: bool(a.instances)),
    (delete, lambda a: bool(a.instances)),
    (cancel, lambda a: bool(a.presets)),
    (fail_stuck, lambda a: bool(a.builds)),
    (claim, lambda a: bool(a.presets)),
    (claim, lambda a: bool(a.presets)),
]  # fmt: skip


def test_read_pool_agrees_after_every_call(
    store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    """After every call of a random history, read_pool agrees with MemoryStore's."""
    kind = request.node.callspec.params["store_factory"]

    @settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def history(data: st.DataObject) -> None:
        agreement = Agreement([MemoryStore(), store_factory()])
        new_template(agreement, data)
        put_preset(agreement, data)
        for _ in range(data.draw(st.integers(1, STEPS))):
            possible = [call for call, when in CALLS if when(agreement)]
            call = data.draw(st.sampled_from(possible))
            call(agreement, data)
            agreement.check()
        with agreement.stores[1].leader() as lease:
            assert lease
            agreement.check()

    history()


def test_facts_refuse_an_id_given_twice() -> None:
    """A read that holds a preset or an instance twice is refused, naming the field and the ID."""
    store = MemoryStore()
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="t")
    store.put_template(template)
    preset = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=1,
        name="p",
    )
    store.put_preset(preset)
    request = store.create_prebuild(preset.id, now=T0, name="one")
    assert request is not None
    facts = store.read_pool()
    (instance,) = facts.instances
    with pytest.raises(InvalidInputError) as twice:
        attrs.evolve(facts, instances=(instance, instance))
    assert (twice.value.field, twice.value.value) == ("instances", instance.id)
    with pytest.raises(InvalidInputError) as twice:
        attrs.evolve(facts, presets=facts.presets * 2)
    assert (twice.value.field, twice.value.value) == ("presets", preset.id)
    other = attrs.evolve(instance, id=uuid.uuid4())
    assert len(attrs.evolve(facts, instances=(instance, other)).instances) == 2
