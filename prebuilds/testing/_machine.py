"""
PoolMachine: a Hypothesis state machine that drives whole systems (store,
claimer, reconciler, fake provisioner) in lockstep and checks the pool's
invariants, and their agreement with the reference, after every step. It
models only what it put; a pool's state it derives with :func:`derive`.
"""

from __future__ import annotations

import itertools

from collections import Counter
from datetime import datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

import attrs

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from prebuilds._calculate import backoff_until, calculate_state
from prebuilds._claimer import StoreClaimer
from prebuilds._events import CollectingEventSink
from prebuilds._lifecycle import claimed_lifecycle
from prebuilds._model import PrebuildSchedule, PresetSnapshot, PresetStatus, Transition
from prebuilds._pool import PoolFacts, PresetFacts, derive
from prebuilds._reconciler import StoreReconciler
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    BuildStatus,
    EventKind,
    PresetConfig,
    Template,
)
from prebuilds.exceptions import (
    NoClaimablePrebuildsError,
    PresetInactiveError,
    ProvisionerError,
)
from prebuilds.stores import MemoryStore
from prebuilds.testing._fakes import DEFAULT_START, FakeClock, FakeProvisioner
from prebuilds.testing._rules import pooled_view, unknown_id_calls


if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from prebuilds._model import GlobalSnapshot
    from prebuilds._records import Build, BuildRequest, Instance
    from prebuilds.interfaces import Claimer, Store

__all__ = ["PoolMachine", "RunCounter"]

#: The reconciler's settings in the machine (small, so that a few clock
#: moves cross every threshold).
BACKOFF_INTERVAL = timedelta(minutes=1)
BACKOFF_LOOKBACK = timedelta(hours=1)
HARD_LIMIT = 3
BUILD_TIMEOUT = timedelta(minutes=10)
BUILD_TIME = timedelta(seconds=30)
#: The clock moves this much before every pass.
PASS_GAP = timedelta(seconds=1)

#: At most this many presets (all versions) and templates per run.
MAX_PRESETS = 8
MAX_TEMPLATES = 3
#: A settle() that is not quiet after this many passes fails.
SETTLE_PASSES = 20

_STEPS = tuple(
    timedelta(seconds=s)
    for s in (10, 30, 60, 5 * 60, 20 * 60, 3600, 3 * 3600, 9 * 3600)
)
_WAITS = (timedelta(0), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=3))
_TTLS = (None, timedelta(0), timedelta(minutes=30), timedelta(hours=2))
_DEFAULT_TTLS = (None, timedelta(hours=8))
_SCHEDULES: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("", ()),
    ("UTC", (("* 9-17 * * 1-5", 3),)),
    ("UTC", (("* 0-7 * * *", 0), ("* 18-23 * * *", 2))),
    ("America/New_York", (("* 8-20 * * *", 1),)),
    ("", (("* 9-17 * * 1-5", 3),)),  # no time zone: schedules are ignored
)
_PARAMETERS = ((), (("region", "eu"),), (("region", "us"), ("size", "large")))
_HOST = ("wait", "process", "pass", "loop")
_USERS = tuple(UUID(int=0xA000 + n) for n in range(3))

#: What a claim wrote, and nothing may change after.
_CLAIM_FIELDS = attrgetter("owner_id", "name", "lifecycle", "claimed_at")

_INDEXES = st.integers(min_value=0, max_value=63)
_COUNTS = st.integers(min_value=0, max_value=3)
_PRESET_TTLS = st.sampled_from(_TTLS)
_SCHEDULE_INDEXES = st.integers(min_value=0, max_value=len(_SCHEDULES) - 1)


@attrs.define
class RunCounter:
    """How many examples and steps the machine ran (for reports)."""

    examples: int = 0
    steps: int = 0


# -- the host's side -------------------------------------------------------------
class _ScriptedProvisioner(FakeProvisioner):
    """
    Scripted per preset, so that every creation of a preset in a pass has the
    same fate: its start builds fail (*failing*) or ``submit`` raises (*down*).
    """

    def __init__(self, store: Store, clock: FakeClock) -> None:
        super().__init__(store, clock, build_time=BUILD_TIME, ready_on_success=False)
        self.failing: set[UUID] = set()
        self.down: set[UUID] = set()

    def submit(self, request: BuildRequest) -> None:
        preset_id = request.preset_id
        # The base's own set, read unlocked: the machine's reconciler has one worker.
        if request.transition is Transition.START and preset_id not in self._rejecting:
            if preset_id in self.down:
                self.raise_next(ProvisionerError("the fake provisioner is down"))
            elif preset_id in self.failing:
                self.fail_next(1)
        super().submit(request)

    def heal(self, preset_id: UUID) -> None:
        """Undo all but a rejection."""
        self.failing.discard(preset_id)
        self.down.discard(preset_id)
        self.unstall(preset_id)


class _System:
    """One store with its claimer, reconciler and provisioner."""

    def __init__(
        self,
        label: str,
        store: Store,
        claimer: Claimer,
        clock: FakeClock,
    ) -> None:
        self.label = label
        self.store = store
        self.claimer = claimer
        self.events = CollectingEventSink()
        self.provisioner = _ScriptedProvisioner(store, clock)
        names = itertools.count()
        self.reconciler = StoreReconciler(
            store,
            self.provisioner,
            clock=clock,
            events=self.events,
            backoff_interval=BACKOFF_INTERVAL,
            backoff_lookback=BACKOFF_LOOKBACK,
            hard_limit=HARD_LIMIT,
            build_timeout=BUILD_TIMEOUT,
            submit_timeout=None,
            max_workers=1,
            name_factory=lambda: f"prebuild-{next(names)}",
        )
        #: Every instance this system handed out, as claimed, and its builds.
        self.claims: dict[UUID, tuple[Instance, int]] = {}
        #: Per preset, the pool size (running + starting) after the last
        #: pass: only a pass may grow a pool.
        self.bound: dict[UUID, int] = {}

    def fail(self, message: str) -> NoReturn:
        raise AssertionError(f"[{self.label}] {message}")

    def close(self) -> None:
        self.reconciler.stop()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()

    def snapshot(self) -> GlobalSnapshot:
        return self.reconciler.snapshot_state(self.store)


@attrs.define
class _PresetModel:
    config: PresetConfig
    invalidated_at: datetime | None = None


@attrs.frozen
class _Pool:
    """One preset's instances in one store, by state of their latest build."""

    running_ready: int = 0
    running_unready: int = 0
    expired: int = 0
    starting: int = 0
    deleting: int = 0
    start_failed: int = 0
    delete_failed: int = 0
    deleted: int = 0
    claimed: int = 0

    @property
    def size(self) -> int:
        """What the pool holds or is building (expired included)."""
        return self.running_ready + self.running_unready + self.expired + self.starting

    @property
    def running(self) -> int:
        """Running, not expired."""
        return self.running_ready + self.running_unready


def _choice(values: Iterable[UUID], index: int) -> UUID:
    ordered = sorted(values)
    return ordered[index % len(ordered)]


def _schedules(index: int) -> tuple[str, tuple[PrebuildSchedule, ...]]:
    """The time zone and schedules of the *index*-th shape."""
    zone, schedules = _SCHEDULES[index]
    return zone, tuple(PrebuildSchedule(cron=c, instances=n) for c, n in schedules)


def _diff(
    what: str, mine: Mapping[Any, object], theirs: Mapping[Any, object], versus: str
) -> list[str]:
    """One line per key whose values differ."""
    return [
        f"{what}{key}: {mine.get(key)!r}{versus} {theirs.get(key)!r}"
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key) != theirs.get(key)
    ]


class PoolMachine(RuleBasedStateMachine):
    """
    Drive pools end to end and check their invariants after every step.

    Each run builds a system (the store, its claimer, a one-worker
    :class:`~prebuilds.StoreReconciler`, a fake provisioner) and, with
    *reference*, a second on a :class:`~prebuilds.stores.MemoryStore`, on one
    :class:`~prebuilds.testing.FakeClock`; every rule acts on both, and they
    must agree by counts. Rules pick presets and templates by index in ID
    order; the testing-kit page lists the rules and invariants.

    Args:
        store_factory: A new, empty store per run; closed at teardown.
        claimer_factory: The claimer under test, given the store.
        reference: Also run the reference system, and check agreement with it.
        counter: Counts examples and steps, if given (for reports).
    """

    def __init__(
        self,
        store_factory: Callable[[], Store],
        claimer_factory: Callable[[Store], Claimer] = StoreClaimer,
        *,
        reference: bool = True,
        counter: RunCounter | None = None,
    ) -> None:
        super().__init__()
        self._counter = counter
        if counter is not None:
            counter.examples += 1
        self.clock: FakeClock = FakeClock(DEFAULT_START)
        self.systems: list[_System] = []
        if reference:
            memory = MemoryStore()
            self.systems.append(
                _System(
                    "reference MemoryStore", memory, StoreClaimer(memory), self.clock
                )
            )
        try:
            store = store_factory()
            self.systems.append(
                _System("store under test", store, claimer_factory(store), self.clock)
            )
        except BaseException:
            self.teardown()
            raise
        self.templates: dict[UUID, Template] = {}
        self.presets: dict[UUID, _PresetModel] = {}
        self.paused: bool = False
        self._ids = itertools.count(1)
        self._claims = itertools.count()

    # -- helpers: the model ---------------------------------------------------------
    def _new_id(self) -> UUID:
        return UUID(int=next(self._ids))

    def _facts(
        self, preset_id: UUID, status: PresetStatus = PresetStatus.HEALTHY
    ) -> PresetFacts:
        """What a store must hand out about the preset (but its stamp)."""
        model = self.presets[preset_id]
        return PresetFacts(
            config=model.config,
            template=self.templates[model.config.template_id],
            status=status,
            last_invalidated_at=model.invalidated_at,
        )

    def _desired(self, preset_id: UUID, now: datetime) -> int:
        """The calculator's desired count (0 for an inactive preset)."""
        snapshot = PresetSnapshot(preset=self._facts(preset_id).preset)
        return calculate_state(snapshot, now=now).desired

    def _pool_facts(
        self,
        instances: Iterable[Instance],
        builds: Iterable[Build],
        statuses: Mapping[UUID, PresetStatus],
    ) -> PoolFacts:
        """The presets put (with *statuses*) and the pooled *instances*."""
        latest: dict[UUID, Build] = {}
        for build in builds:
            known = latest.get(build.instance_id)
            if known is None or known.build_number < build.build_number:
                latest[build.instance_id] = build
        return PoolFacts(
            presets=[
                self._facts(p, statuses.get(p, PresetStatus.HEALTHY))
                for p in sorted(self.presets)
            ],
            instances=[
                pooled_view(i, latest[i.id])
                for i in sorted(instances, key=lambda i: i.id)
                if i.owner_id == PREBUILDS_OWNER_ID and not i.deleted
            ],
        )

    def _state(
        self, system: _System, instances: list[Instance] | None = None
    ) -> GlobalSnapshot:
        """What the core derives from the instances and builds *system* shows."""
        if instances is None:
            instances = system.store.list_instances(include_deleted=True)
        return derive(
            self._pool_facts(instances, system.store.list_builds(), {}),
            now=self.clock.now(),
            backoff_lookback=BACKOFF_LOOKBACK,
            hard_limit=HARD_LIMIT,
        )

    def _put_template(self, template: Template) -> None:
        self.templates[template.id] = template
        for system in self.systems:
            system.store.put_template(template)

    def _put_preset(self, config: PresetConfig) -> None:
        for system in self.systems:
            system.store.put_preset(config)

    # -- helpers: observing a store -------------------------------------------------
    def _pools(self, system: _System) -> dict[UUID, _Pool]:
        """Every preset's pool in *system*: running and expired as derived."""
        now = self.clock.now()
        instances = system.store.list_instances(include_deleted=True)
        state = self._state(system, instances)
        running = {r.id for r in state.running}
        expired = {
            r.id
            for p in self.presets
            for r in state.filter_by_preset(p, now=now).expired
        }
        counts: dict[UUID, Counter[str]] = {p: Counter() for p in self.presets}
        for instance in instances:
            count = counts.setdefault(instance.preset_id, Counter())
            if instance.deleted:
                count["deleted"] += 1
            elif instance.owner_id != PREBUILDS_OWNER_ID:
                count["claimed"] += 1
            elif instance.id in expired:
                count["expired"] += 1
            elif instance.id in running:
                count["running_ready" if instance.ready else "running_unready"] += 1
            elif instance.latest_transition is Transition.START:
                if instance.latest_status.in_progress:
                    count["starting"] += 1
                else:
                    count["start_failed"] += 1
            elif instance.latest_status.in_progress:
                count["deleting"] += 1
            else:
                count["delete_failed"] += 1
        return {p: _Pool(**c) for p, c in counts.items()}

    def _summary(self, system: _System) -> dict[str, object]:
        """What every system must agree on: counts, never IDs."""
        snapshot = system.snapshot()
        now = self.clock.now()
        summary: dict[str, object] = {
            "paused": system.store.is_paused(),
            "claimed": len(system.claims),
            "events": sorted(
                Counter(e.kind.value for e in system.events.events).items()
            ),
            "queued builds": system.provisioner.queued,
            "hard limited": sorted(snapshot.hard_limited),
        }
        builds: Counter[tuple[str, str, str]] = Counter(
            (b.transition.value, b.status.value, b.error_kind or "")
            for b in system.store.list_builds()
        )
        summary["builds"] = sorted(builds.items())
        for preset_id, pool in sorted(self._pools(system).items()):
            view = snapshot.filter_by_preset(preset_id, now=now)
            backoff = view.backoff
            summary[f"preset {preset_id.int}"] = (
                attrs.asdict(pool),
                system.store.read_preset(preset_id).status.value,
                sorted((r.transition.value, r.count) for r in view.in_progress),
                view.pending_count,
                backoff and (backoff.num_failed, backoff.last_build_at.isoformat()),
            )
        summary["now"] = now.isoformat()
        return summary

    # -- initialization and configuration --------------------------------------------
    @initialize(
        desired=st.lists(_COUNTS, min_size=1, max_size=2),
        ttl=_PRESET_TTLS,
        default_ttl=st.sampled_from(_DEFAULT_TTLS),
        settled=st.booleans(),
    )
    def start(
        self,
        desired: list[int],
        ttl: timedelta | None,
        default_ttl: timedelta | None,
        settled: bool,
    ) -> None:
        """A template with one or two presets; their pools filled if *settled*."""
        self.add_template(default_ttl)
        for count in desired:
            self.add_preset(0, count, ttl, 0, ())
        if settled:
            self.settle()

    @precondition(lambda self: len(self.templates) < MAX_TEMPLATES)
    @rule(default_ttl=st.sampled_from(_DEFAULT_TTLS))
    def add_template(self, default_ttl: timedelta | None) -> None:
        template_id = self._new_id()
        self._put_template(
            Template(
                id=template_id,
                active_version_id=self._new_id(),
                name=f"template-{template_id.int}",
                default_ttl=default_ttl,
            )
        )

    @precondition(lambda self: len(self.presets) < MAX_PRESETS)
    @rule(
        t=_INDEXES,
        desired=_COUNTS,
        ttl=_PRESET_TTLS,
        schedule=_SCHEDULE_INDEXES,
        parameters=st.sampled_from(_PARAMETERS),
    )
    def add_preset(
        self,
        t: int,
        desired: int,
        ttl: timedelta | None,
        schedule: int,
        parameters: tuple[tuple[str, str], ...],
    ) -> None:
        template = self.templates[_choice(self.templates, t)]
        preset_id = self._new_id()
        zone, schedules = _schedules(schedule)
        self._add_config(
            PresetConfig(
                id=preset_id,
                template_id=template.id,
                template_version_id=template.active_version_id,
                desired_instances=desired,
                name=f"preset-{preset_id.int}",
                ttl=ttl,
                scheduling_timezone=zone,
                schedules=schedules,
                parameters=parameters,
            )
        )

    def _add_config(self, config: PresetConfig) -> None:
        self.presets[config.id] = _PresetModel(config)
        self._put_preset(config)
        for system in self.systems:
            system.bound[config.id] = 0

    @precondition(lambda self: self.presets)
    @rule(p=_INDEXES, desired=_COUNTS, ttl=_PRESET_TTLS, schedule=_SCHEDULE_INDEXES)
    def alter_preset(
        self, p: int, desired: int, ttl: timedelta | None, schedule: int
    ) -> None:
        """Change a preset's count, TTL and schedules (status is kept)."""
        preset_id = _choice(self.presets, p)
        model = self.presets[preset_id]
        zone, schedules = _schedules(schedule)
        model.config = attrs.evolve(
            model.config,
            desired_instances=desired,
            ttl=ttl,
            scheduling_timezone=zone,
            schedules=schedules,
        )
        self._put_preset(model.config)

    @precondition(lambda self: len(self.presets) < MAX_PRESETS)
    @rule(t=_INDEXES)
    def new_template_version(self, t: int) -> None:
        """Publish a new version: its presets copy the old ones, which drain."""
        old = self.templates[_choice(self.templates, t)]
        template = attrs.evolve(old, active_version_id=self._new_id())
        configs = [
            m.config
            for m in self.presets.values()
            if m.config.template_id == old.id
            and m.config.template_version_id == old.active_version_id
        ]
        for config in sorted(configs, key=lambda c: c.id)[
            : MAX_PRESETS - len(self.presets)
        ]:
            preset_id = self._new_id()
            self._add_config(
                attrs.evolve(
                    config,
                    id=preset_id,
                    template_version_id=template.active_version_id,
                    name=f"preset-{preset_id.int}",
                )
            )
        self._put_template(template)

    @rule(t=_INDEXES, state=st.sampled_from(["active", "deprecated", "deleted"]))
    def set_template_state(self, t: int, state: str) -> None:
        """Deprecate or delete a template (its presets drain), or restore it."""
        template = self.templates[_choice(self.templates, t)]
        self._put_template(
            attrs.evolve(
                template, deprecated=state == "deprecated", deleted=state == "deleted"
            )
        )

    @precondition(lambda self: self.presets)
    @rule(p=_INDEXES)
    def invalidate(self, p: int) -> None:
        """Expire every instance of a preset created before now."""
        preset_id = _choice(self.presets, p)
        now = self.clock.now()
        self.presets[preset_id].invalidated_at = now
        for system in self.systems:
            system.store.invalidate_preset(preset_id, at=now)

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        """Pause or resume reconciliation (persisted in the store)."""
        self.paused = paused
        for system in self.systems:
            if paused:
                system.reconciler.pause()
            else:
                system.reconciler.resume()

    # -- rules: time, builds, readiness ---------------------------------------------
    @rule(dt=st.sampled_from((timedelta(0), *_STEPS)), host=st.sampled_from(_HOST))
    def tick(self, dt: timedelta, host: str) -> None:
        """
        Time passes; then the host reports the builds whose time has come
        (``process``), or runs a pass a second later (``pass``), or does what
        its loop does (``loop``: builds end, the new instances report ready, a
        pass runs), or nothing (``wait``).
        """
        self.clock.advance(dt)
        if host in {"process", "loop"}:
            for system in self.systems:
                system.provisioner.process()
                if host == "loop":
                    self._mark_ready(system, None, ready=True)
        if host in {"pass", "loop"}:
            self._reconcile()

    @precondition(lambda self: self.presets)
    @rule(p=_INDEXES, ready=st.booleans())
    def mark_ready(self, p: int, ready: bool) -> None:
        """Report every running instance of a preset ready (or not)."""
        preset_id = _choice(self.presets, p)
        for system in self.systems:
            self._mark_ready(system, preset_id, ready=ready)

    def _mark_ready(
        self, system: _System, preset_id: UUID | None, *, ready: bool
    ) -> None:
        for running in self._state(system).running:
            if preset_id in {None, running.preset_id} and running.ready != ready:
                system.store.set_ready(running.id, ready=ready)

    @precondition(lambda self: self.presets)
    @rule(
        p=_INDEXES,
        mode=st.sampled_from(["fail", "down", "stall", "reject", "heal"]),
    )
    def script_provisioner(self, p: int, mode: str) -> None:
        """
        From now on, a preset's start builds fail, its submits raise, its
        builds never end, or its starts are rejected as invalid (for good);
        or heal it (all but a rejection).
        """
        preset_id = _choice(self.presets, p)
        for system in self.systems:
            provisioner = system.provisioner
            script = {
                "fail": provisioner.failing.add,
                "down": provisioner.down.add,
                "stall": provisioner.stall,
                "reject": provisioner.reject,
                "heal": provisioner.heal,
            }
            script[mode](preset_id)

    # -- rules: claims -----------------------------------------------------------------
    @precondition(lambda self: self.presets)
    @rule(
        p=_INDEXES,
        user=st.sampled_from(_USERS),
        ttl=st.sampled_from((None, timedelta(hours=1))),
        autostart=st.booleans(),
        count=st.integers(min_value=1, max_value=3),
        wait=st.sampled_from(_WAITS),
    )
    def claim(
        self,
        *,
        p: int,
        user: UUID,
        ttl: timedelta | None,
        autostart: bool,
        count: int,
        wait: timedelta,
    ) -> None:
        """
        After *wait* (no pass runs meanwhile: pooled instances may expire),
        a user claims *count* times in a row.
        """
        self.clock.advance(wait)
        for _ in range(count):
            self._claim(_choice(self.presets, p), user, ttl=ttl, autostart=autostart)

    def _claim(
        self, preset_id: UUID, user: UUID, *, ttl: timedelta | None, autostart: bool
    ) -> dict[str, UUID | None]:
        """Claim on every system; check each and that they agree."""
        name = f"claimed-{next(self._claims)}"
        got = {
            s.label: self._claim_on(
                s, preset_id, user, name, ttl=ttl, autostart=autostart
            )
            for s in self.systems
        }
        outcomes = {label: g is not None for label, g in got.items()}
        if len(set(outcomes.values())) > 1:
            msg = f"the systems disagree on whether the claim succeeded: {outcomes}"
            raise AssertionError(msg)
        return got

    def _claim_on(
        self,
        system: _System,
        preset_id: UUID,
        user: UUID,
        name: str,
        *,
        ttl: timedelta | None,
        autostart: bool,
    ) -> UUID | None:
        """Claim on *system*: check the outcome against its pool just before."""
        now = self.clock.now()
        facts = self._facts(preset_id)
        active = facts.preset.is_active
        instances = system.store.list_instances(include_deleted=True)
        pooled = {
            i.id: i
            for i in instances
            if i.preset_id == preset_id
            and i.owner_id == PREBUILDS_OWNER_ID
            and not i.deleted
        }
        pool = self._state(system, instances).filter_by_preset(preset_id, now=now)
        claimable = sorted(
            (r for r in pool.running if active and r.ready),
            key=lambda r: (r.created_at, r.id),
        )
        asked: dict[str, Any] = {  # what the claim asks of the lifecycle
            "autostart_schedule": "CRON_TZ=UTC 30 9 * * 1-5" if autostart else None,
            "next_start_at": now + timedelta(days=1) if autostart else None,
            "ttl": ttl,
        }
        try:
            got = system.claimer.claim(
                now=now, user_id=user, name=name, preset_id=preset_id, **asked
            )
        except NoClaimablePrebuildsError:
            if claimable:
                system.fail(
                    f"the claim missed although {len(claimable)} instance(s) were "
                    "claimable",
                )
            return None
        except PresetInactiveError:
            if active:
                system.fail("the claim raised PresetInactiveError for an active preset")
            return None
        if not isinstance(got, UUID):
            system.fail(f"claim returned {got!r}, not a UUID")
        if got in system.claims:
            system.fail(f"instance {got} was handed out twice")
        if not claimable or got != claimable[0].id:
            before = pooled.get(got)
            system.fail(
                f"the claim handed out {got}, not the oldest claimable instance "
                f"{claimable[0].id if claimable else None} (at {now}, of the "
                f"preset {facts.preset}: it was {before})",
            )
        after = system.store.get_instance(got)
        wanted = attrs.evolve(
            pooled[got],
            owner_id=user,
            name=name,
            lifecycle=claimed_lifecycle(
                now=now, template_default_ttl=facts.template.default_ttl, **asked
            ),
            claimed_at=now,
        )
        if after != wanted:
            system.fail(f"the claimed instance is {after}, expected {wanted}")
        system.claims[got] = (wanted, len(system.store.list_builds(instance_id=got)))
        return got

    @precondition(lambda self: self.presets)
    @rule(p=_INDEXES, user=st.sampled_from(_USERS))
    def stale_delete(self, p: int, user: UUID) -> None:
        """
        The reconciler's race: it read a snapshot, a user claimed meanwhile,
        then it deletes what the snapshot called running. The claimed
        instance must survive; the others get a delete build.
        """
        preset_id = _choice(self.presets, p)
        now = self.clock.now()
        stale = {
            s.label: [r.id for r in s.snapshot().running if r.preset_id == preset_id]
            for s in self.systems
        }
        got = self._claim(preset_id, user, ttl=None, autostart=False)
        for system in self.systems:
            claimed = got[system.label]
            for instance_id in stale[system.label]:
                request = system.store.delete_prebuild(instance_id, now=now)
                if instance_id == claimed:
                    if request is not None:
                        system.fail(
                            f"delete_prebuild deleted the claimed instance {claimed}",
                        )
                    continue
                if request is None:
                    system.fail(
                        f"delete_prebuild refused the running pooled instance "
                        f"{instance_id}",
                    )
                if request.transition is not Transition.DELETE or request.orphan:
                    system.fail(f"delete_prebuild returned {request}")
                system.provisioner.submit(request)

    # -- rules: the store's edges ------------------------------------------------------
    @rule()
    def store_edges(self) -> None:
        """
        Reports on finished builds and deleted instances change nothing, and
        lookups of unknown IDs raise the matching not-found error.
        """
        now = self.clock.now()
        for system in self.systems:
            store = system.store
            builds = store.list_builds()
            instances = store.list_instances(include_deleted=True)
            for build in builds:
                if not build.status.in_progress:
                    store.build_started(build.id, now=now)
                    store.build_finished(
                        build.id,
                        now=now,
                        succeeded=build.status is not BuildStatus.SUCCEEDED,
                        error_kind="late",
                        error="a late report",
                    )
            for instance in instances:
                if instance.deleted:
                    store.set_ready(instance.id, ready=True)
            if store.list_builds() != builds:
                system.fail("a report on a finished build changed it")
            if store.list_instances(include_deleted=True) != instances:
                system.fail("set_ready changed a deleted instance")
        self._unknown_ids(now)

    def _unknown_ids(self, now: datetime) -> None:
        for system in self.systems:
            store = system.store
            for error, method, call in unknown_id_calls(store, UUID(int=0xDEAD), now):
                try:
                    call()
                except error:
                    continue
                system.fail(f"{method} of an unknown ID did not raise {error.__name__}")
            if store.delete_prebuild(UUID(int=0xDEAD), now=now) is not None:
                system.fail(
                    "delete_prebuild of an unknown instance did not return None"
                )

    # -- rules: reconciliation ---------------------------------------------------------
    def _reconcile(self) -> None:
        """
        One pass on every system, a second after anything before it.

        Two passes never run at the same instant: the stores rank builds of
        one instant by their random IDs (for backoff and hard limits), so
        creations of two passes at one instant, one failed and one not, would
        make the systems differ by chance. Within a pass the provisioner's
        script gives every creation of a preset the same fate.
        """
        self.clock.advance(PASS_GAP)
        now = self.clock.now()
        desired = {p: self._desired(p, now) for p in self.presets}
        for system in self.systems:
            before = self._pools(system)
            builds_before = len(system.store.list_builds())
            events_before = len(system.events.events)
            stats = system.reconciler.reconcile_all()
            if stats.error is not None or stats.presets_failed:
                system.fail(f"the pass failed: {stats}")
            if not stats.leader:
                system.fail("the pass did not get the leader lock")
            after = self._pools(system)
            events = system.events.events[events_before:]
            if self.paused:
                if not stats.paused or len(system.store.list_builds()) != builds_before:
                    system.fail("a paused pass did something")
                continue
            backing_off = {e.preset_id for e in events if e.kind is EventKind.BACKOFF}
            created = Counter(
                e.preset_id for e in events if e.kind is EventKind.CREATED
            )
            for preset_id, pool in after.items():
                self._check_pass(
                    system,
                    preset_id,
                    before.get(preset_id, _Pool()),
                    pool,
                    desired[preset_id],
                    created=created[preset_id],
                    backing_off=preset_id in backing_off,
                )
                system.bound[preset_id] = pool.size

    def _check_pass(
        self,
        system: _System,
        preset_id: UUID,
        before: _Pool,
        after: _Pool,
        desired: int,
        *,
        created: int,
        backing_off: bool,
    ) -> None:
        where = f"preset {preset_id.int}, desired {desired}: {before} -> {after}"
        if after.size > max(desired, before.size):
            system.fail(f"a pass grew a pool beyond its desired count ({where})")
        if created and after.size > desired:
            system.fail(f"a pass created beyond the desired count ({where})")
        if backing_off:
            if created:
                system.fail(f"a pass created while backing off ({where})")
            return
        if after.expired:
            system.fail(f"a pass left expired instances running ({where})")
        if after.running > desired:
            system.fail(f"a pass left extraneous instances running ({where})")

    @rule()
    def settle(self) -> None:
        """
        Let the host run undisturbed: reconciliation resumes, the
        provisioner heals, builds end, instances report ready, passes run,
        the clock moves past every backoff, until a pass has nothing to do.
        Then every active, healthy pool is full and every inactive one is
        drained.
        """
        if self.paused:
            self.pause(paused=False)
        for system in self.systems:
            for preset_id in list(self.presets):
                system.provisioner.heal(preset_id)
        step = timedelta(minutes=1)
        for _ in range(SETTLE_PASSES):
            marks = [len(s.events.events) for s in self.systems]
            self.tick(step, "loop")
            quiet = all(
                s.provisioner.queued == 0
                and not any(
                    e.kind is not EventKind.READY for e in s.events.events[mark:]
                )
                for s, mark in zip(self.systems, marks, strict=True)
            )
            if quiet:
                break
            step = self._next_step()
        else:
            msg = f"the pools did not settle in {SETTLE_PASSES} passes"
            raise AssertionError(msg)
        for system in self.systems:
            self._check_converged(system)

    def _next_step(self) -> timedelta:
        """One minute, or past the end of the longest backoff."""
        now = self.clock.now()
        step = timedelta(minutes=1)
        for system in self.systems:
            snapshot = system.snapshot()
            for backoff in snapshot.backoffs:
                until = backoff_until(
                    snapshot.filter_by_preset(backoff.preset_id, now=now),
                    backoff_interval=BACKOFF_INTERVAL,
                )
                if until is not None:
                    step = max(step, until - now + timedelta(seconds=1))
        return step

    def _check_converged(self, system: _System) -> None:
        now = self.clock.now()
        snapshot = system.snapshot()
        for preset_id, pool in self._pools(system).items():
            desired = self._desired(preset_id, now)
            where = f"preset {preset_id.int}, desired {desired} at {now}: {pool}"
            if pool.starting or pool.deleting or pool.expired or pool.running_unready:
                system.fail(f"a settled pool still has work in progress ({where})")
            if not self._facts(preset_id).preset.is_active:
                if pool.running:
                    system.fail(f"an inactive pool did not drain ({where})")
                continue
            status = system.store.read_preset(preset_id).status
            if status is not PresetStatus.HEALTHY or preset_id in snapshot.hard_limited:
                if pool.running > desired:
                    system.fail(f"a blocked pool kept extraneous instances ({where})")
                continue
            if pool.running_ready != desired:
                system.fail(f"a settled pool is not at its desired count ({where})")

    # -- invariants ----------------------------------------------------------------------
    @invariant()
    def check(self) -> None:
        if self._counter is not None:
            self._counter.steps += 1
        summaries = []
        for system in self.systems:
            self._check_system(system)
            summaries.append(self._summary(system))
        reference = summaries[0]
        for system, summary in zip(self.systems[1:], summaries[1:], strict=True):
            if summary != reference:
                diff = _diff("", summary, reference, " != reference")
                system.fail("disagrees with the reference:\n  " + "\n  ".join(diff))

    def _check_system(self, system: _System) -> None:
        store = system.store
        if store.is_paused() != self.paused:
            system.fail(f"is_paused() is {store.is_paused()}, expected {self.paused}")
        for template in self.templates.values():
            if store.get_template(template.id) != template:
                system.fail(f"get_template({template.id}) differs from what was put")
        instances = store.list_instances(include_deleted=True)
        builds = store.list_builds()
        self._check_facts(system, instances, builds)
        by_instance: dict[UUID, list[Build]] = {}
        for build in builds:
            by_instance.setdefault(build.instance_id, []).append(build)
        for instance in instances:
            own = sorted(by_instance.get(instance.id, []), key=lambda b: b.build_number)
            self._check_instance(system, instance, own)
        if len(system.claims) != sum(
            i.owner_id != PREBUILDS_OWNER_ID for i in instances
        ):
            system.fail("a claimed instance disappeared")
        for preset_id, pool in self._pools(system).items():
            bound = system.bound.get(preset_id, 0)
            if pool.size > bound:
                system.fail(
                    f"preset {preset_id.int}'s pool grew outside a pass: {pool} > "
                    f"{bound}",
                )

    def _check_facts(
        self, system: _System, instances: list[Instance], builds: list[Build]
    ) -> None:
        """
        ``read_preset`` and ``read_pool`` hand out what the model put and what
        the store shows its host (stamps aside): then every pool's state the
        core derives from them is the one the model expects.
        """
        actual = system.store.read_pool()
        statuses = {f.config.id: f.status for f in actual.presets}
        expected = self._pool_facts(instances, builds, statuses)
        for facts in expected.presets:
            got = attrs.evolve(system.store.read_preset(facts.config.id), stamp=None)
            if got != facts:
                system.fail(f"read_preset gave {got}, expected {facts}")
        problems = _diff(  # by ID: a store may hand them out in any order
            "preset ",
            {f.config.id: attrs.evolve(f, stamp=None) for f in actual.presets},
            {f.config.id: f for f in expected.presets},
            ", expected",
        ) + _diff(
            "instance ",
            {i.id: i for i in actual.instances},
            {i.id: i for i in expected.instances},
            ", expected",
        )
        if actual.invalid_presets:
            problems.append(f"invalid presets {actual.invalid_presets}")
        if problems:
            system.fail(
                "read_pool's facts are not the presets put and the pooled "
                "instances the store shows:\n  " + "\n  ".join(problems),
            )

    @staticmethod
    def _check_instance(system: _System, instance: Instance, own: list[Build]) -> None:
        """An instance's builds, its latest build shown, and its claim kept."""
        if [b.build_number for b in own] != list(range(1, len(own) + 1)):
            system.fail(f"instance {instance.id} has builds {own}")
        if sum(b.status.in_progress for b in own[:-1]):
            system.fail(f"instance {instance.id} has an older build in progress")
        latest = own[-1]
        if (instance.latest_transition, instance.latest_status) != (
            latest.transition,
            latest.status,
        ):
            system.fail(f"instance {instance.id} does not show its latest build")
        claim = system.claims.get(instance.id)
        if instance.owner_id == PREBUILDS_OWNER_ID:
            if claim is not None:
                system.fail(f"the claimed instance {instance.id} is pooled again")
            if not instance.lifecycle.is_unset or instance.claimed_at is not None:
                system.fail(
                    f"the pooled instance {instance.id} has lifecycle fields: "
                    f"{instance.lifecycle}, claimed_at {instance.claimed_at}",
                )
            return
        if claim is None:
            system.fail(
                f"instance {instance.id} left the pool without a claim (owner "
                f"{instance.owner_id})",
            )
        claimed, builds = claim
        if instance.deleted or len(own) != builds:
            system.fail(
                f"the claimed instance {instance.id} was deleted or rebuilt: {own}",
            )
        if _CLAIM_FIELDS(instance) != _CLAIM_FIELDS(claimed):
            system.fail(f"the claimed instance {instance.id} changed: {instance}")

    def teardown(self) -> None:
        for system in self.systems:
            system.close()

    # -- reports -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<PoolMachine over {', '.join(s.label for s in self.systems)}>"
