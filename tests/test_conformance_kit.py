"""
The conformance kit catches broken stores and claimers.

Every broken implementation here exists only in the tests: each is a
MemoryStore or StoreClaimer with one rule taken out, and the kit must raise
AssertionError naming what went wrong.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import hypothesis.core
import pytest

from hypothesis import HealthCheck, Phase, settings

from prebuilds import (
    PREBUILDS_OWNER_ID,
    Backoff,
    BuildRequest,
    BuildStatus,
    InProgressCount,
    Instance,
    Lease,
    Lifecycle,
    NoClaimablePrebuildsError,
    PendingCount,
    Preset,
    PresetConfig,
    RunningPrebuild,
    StoreClaimer,
    Template,
    Transition,
    claimed_lifecycle,
)
from prebuilds._model import expired_at
from prebuilds.interfaces import Store
from prebuilds.stores import MemoryStore, SQLiteStore
from prebuilds.stores._common import fence_token
from prebuilds.testing import (
    FakeClock,
    check_claimer,
    check_concurrent_claims,
    check_leadership,
    check_store,
)
from prebuilds.testing._conformance import run_pool_machine
from prebuilds.testing._rules import check_rules
from tests.conftest import StoreFactory


# Broken implementations are usually caught in a handful of runs; give the
# search room, without a database so that no earlier run helps it.
HUNT = settings(
    max_examples=1000,
    stateful_step_count=30,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUICK = settings(
    max_examples=10,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- broken stores ---------------------------------------------------------------
class DeletesClaimedStore(MemoryStore):
    """delete_prebuild does not re-check that the instance is still pooled."""

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        with self._lock:
            self._fence(fence_token(lease))
            instance = self._instances.get(instance_id)
            if instance is None or instance.deleted:
                return None
            build = self._add_build(instance, Transition.DELETE, now)
            self._instances[instance_id] = attrs.evolve(instance, ready=False)
            return self._request(instance, build, ())


class ReclaimingStore(MemoryStore):
    """claim does not check the owner: it hands claimed instances out again."""

    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
    ) -> Instance | None:
        with self._lock:
            hidden = {
                i.id: i
                for i in self._instances.values()
                if i.preset_id == preset_id and i.owner_id != PREBUILDS_OWNER_ID
            }
            for instance in hidden.values():  # pretend they are pooled
                self._instances[instance.id] = attrs.evolve(
                    instance, owner_id=PREBUILDS_OWNER_ID
                )
            try:
                got = super().claim(
                    preset_id=preset_id,
                    user_id=user_id,
                    name=name,
                    lifecycle=lifecycle,
                    now=now,
                )
            finally:
                for instance_id, instance in hidden.items():
                    if got is None or instance_id != got.id:
                        self._instances[instance_id] = instance
            return got


class NonAtomicClaimStore(MemoryStore):
    """
    claim reads in one transaction and writes in another, without checking
    that the instance is still pooled.
    """

    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
    ) -> Instance | None:
        with self._lock:  # the read: which instance would a claim take?
            saved = dict(self._instances)
            got = super().claim(
                preset_id=preset_id,
                user_id=user_id,
                name=name,
                lifecycle=lifecycle,
                now=now,
            )
            self._instances = saved
        if got is None:
            return None
        sum(range(2000))  # the round trip between the two transactions
        with self._lock:  # the write, with no compare-and-set
            claimed = attrs.evolve(
                self._instances[got.id],
                owner_id=user_id,
                name=name,
                lifecycle=lifecycle,
                claimed_at=now,
            )
            self._instances[got.id] = claimed
            return self._view(claimed)


class IgnoresExpiryStore(MemoryStore):
    """claim forgets the preset's TTL and invalidation."""

    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
    ) -> Instance | None:
        with self._lock:
            row = self._presets.get(preset_id)
            saved = None if row is None else (row.config, row.last_invalidated_at)
            if row is not None:
                row.config = attrs.evolve(row.config, ttl=None)
                row.last_invalidated_at = None
            try:
                return super().claim(
                    preset_id=preset_id,
                    user_id=user_id,
                    name=name,
                    lifecycle=lifecycle,
                    now=now,
                )
            finally:
                if row is not None and saved is not None:
                    row.config, row.last_invalidated_at = saved


class CountsClaimedStore(MemoryStore):
    """The snapshot keeps claimed instances in the pool."""

    def _running(self) -> list[RunningPrebuild]:
        running = super()._running()
        hidden = [
            i
            for i in self._instances.values()
            if i.owner_id != PREBUILDS_OWNER_ID and not i.deleted
        ]
        for instance in hidden:
            self._instances[instance.id] = attrs.evolve(
                instance, owner_id=PREBUILDS_OWNER_ID
            )
        try:
            with_claimed = super()._running()
        finally:
            for instance in hidden:
                self._instances[instance.id] = instance
        return with_claimed if len(with_claimed) > len(running) else running


class ForgetsStatusStore(MemoryStore):
    """put_preset resets the preset's status (it must keep it)."""

    def put_preset(self, preset: PresetConfig) -> None:
        with self._lock:
            self._presets.pop(preset.id, None)
            super().put_preset(preset)


class AlwaysLeadsStore(MemoryStore):
    """leader() always yields a held lease: two leaders at once."""

    @contextmanager
    def leader(self) -> Iterator[Lease]:
        with super().leader() as lease:
            yield lease or Lease(held=True, token=str(uuid.uuid4()))


class IgnoresLeaseStore(MemoryStore):
    """Fenced writes do not check the lease: a holder that lost it still writes."""

    def _fence(self, token: str | None) -> None:
        pass


class ProcessLocalLeaderStore(SQLiteStore):
    """
    Leadership is a lock of the store object, not of the file: two objects
    (two processes) on one file both lead.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._only = threading.Lock()

    @contextmanager
    def _leader_scope(self) -> Iterator[Lease]:
        if not self._only.acquire(blocking=False):
            yield Lease(held=False)
            return
        try:
            with super()._leader_scope() as lease:
                # The file's lease is taken when free, ignored when not.
                yield lease or Lease(held=True, token=str(uuid.uuid4()))
        finally:
            self._only.release()


# -- the leader contract's hooks, for the reference stores -------------------------
def memory_with_lease_ttl() -> tuple[Callable[[], Store], Callable[[Store], None]]:
    """A factory of MemoryStores whose leases expire, and a take-over by the clock."""
    clocks: dict[int, FakeClock] = {}

    def factory() -> Store:
        clock = FakeClock()
        store = MemoryStore(clock=clock, lease_ttl=timedelta(minutes=1))
        clocks[id(store)] = clock
        return store

    def take_over(store: Store) -> None:
        clocks[id(store)].advance(timedelta(minutes=2))

    return factory, take_over


def expire_sqlite_lease(store: Store) -> None:
    """End a SQLiteStore's lease by hand, as if its holder had stalled."""
    assert isinstance(store, SQLiteStore)
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("UPDATE prebuilds_leader SET expires_at = 0")


def reopen_sqlite(store: Store) -> Store:
    """Another SQLiteStore on the same file."""
    assert isinstance(store, SQLiteStore)
    return SQLiteStore(store.path)


def _claim(
    store: MemoryStore,
    *,
    preset_id: UUID,
    user_id: UUID,
    name: str,
    lifecycle: Lifecycle,
    now: datetime,
    ignore: str,
) -> Instance | None:
    """MemoryStore.claim with one of its conditions (*ignore*) left out."""
    with store._lock:
        row = store._presets[preset_id]
        template = store._templates[row.config.template_id]
        conditions: dict[str, Callable[[Instance], bool]] = {
            "preset": lambda i: i.preset_id == preset_id,
            "ready": lambda i: i.ready,
            "running": lambda i: store._is_running(i.id),
            "version": lambda i: i.template_version_id == template.active_version_id,
            "expiry": lambda i: (
                not expired_at(
                    created_at=i.created_at,
                    ttl=row.config.ttl,
                    last_invalidated_at=row.last_invalidated_at,
                    now=now,
                )
            ),
        }
        candidates = [
            i
            for i in store._instances.values()
            if i.owner_id == PREBUILDS_OWNER_ID
            and not i.deleted
            and all(check(i) for key, check in conditions.items() if key != ignore)
        ]
        if template.deleted or not candidates:
            return None
        order = min if ignore != "oldest" else max
        chosen = order(candidates, key=lambda i: (i.created_at, i.id))
        if ignore == "lifecycle":
            lifecycle = chosen.lifecycle
        store._instances[chosen.id] = attrs.evolve(
            chosen, owner_id=user_id, name=name, lifecycle=lifecycle, claimed_at=now
        )
        return store._view(store._instances[chosen.id])


def breaks_claim(ignore: str, doc: str) -> type[MemoryStore]:
    """A MemoryStore whose claim leaves out one condition."""

    class BrokenClaimStore(MemoryStore):
        def claim(
            self,
            *,
            preset_id: UUID,
            user_id: UUID,
            name: str,
            lifecycle: Lifecycle,
            now: datetime,
        ) -> Instance | None:
            return _claim(
                self,
                preset_id=preset_id,
                user_id=user_id,
                name=name,
                lifecycle=lifecycle,
                now=now,
                ignore=ignore,
            )

    BrokenClaimStore.__doc__ = doc
    BrokenClaimStore.__name__ = f"ClaimIgnores{ignore.title()}Store"
    return BrokenClaimStore


class DropsUnreadyRunningStore(MemoryStore):
    """The snapshot leaves out running instances that are not ready yet."""

    def _running(self) -> list[RunningPrebuild]:
        return [r for r in super()._running() if r.ready]


class DropsRunningBuildsStore(MemoryStore):
    """The snapshot counts pending builds in progress, not running ones."""

    def _in_progress(self) -> list[InProgressCount]:
        running = Counter(
            (b.preset_id, b.transition)
            for b in self._builds.values()
            if b.status is BuildStatus.RUNNING
        )
        rows = []
        for row in super()._in_progress():
            count = row.count - running[row.preset_id, row.transition]
            if count > 0:
                rows.append(attrs.evolve(row, count=count))
        return rows


class NoPendingStore(MemoryStore):
    """The snapshot leaves out the queued creations of old versions."""

    def _pending(self) -> list[PendingCount]:
        return []


class NoBackoffStore(MemoryStore):
    """The snapshot leaves out recent failures."""

    def _backoffs(self, since: datetime) -> list[Backoff]:
        return []


class NoHardLimitStore(MemoryStore):
    """The snapshot never reports a hard-limited preset."""

    def _hard_limited(self, hard_limit: int) -> frozenset[UUID]:
        return frozenset()


class HidesDeprecationStore(MemoryStore):
    """Presets do not show that their template is deprecated."""

    def _preset(self, row: Any) -> Preset:
        return attrs.evolve(super()._preset(row), template_deprecated=False)


class CreatesForInactiveStore(MemoryStore):
    """create_prebuild does not check that the preset is active."""

    @staticmethod
    def _active(config: PresetConfig, template: Template) -> bool:
        return True


class DeletesTwiceStore(MemoryStore):
    """delete_prebuild adds a delete build while one is pending."""

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        with self._lock:
            self._fence(fence_token(lease))
            instance = self._instances.get(instance_id)
            if (
                instance is None
                or instance.deleted
                or instance.owner_id != PREBUILDS_OWNER_ID
            ):
                return None
            build = self._add_build(instance, Transition.DELETE, now)
            return self._request(instance, build, ())


class OverwritesLateReportsStore(MemoryStore):
    """build_finished records a report on a build that already finished."""

    def build_finished(
        self,
        build_id: UUID,
        *,
        now: datetime,
        succeeded: bool,
        error_kind: str | None = None,
        error: str | None = None,
        lease: Lease | None = None,
    ) -> None:
        with self._lock:
            build = self._build(build_id)
            if not build.status.in_progress:
                self._builds[build_id] = attrs.evolve(build, status=BuildStatus.RUNNING)
        super().build_finished(
            build_id,
            now=now,
            succeeded=succeeded,
            error_kind=error_kind,
            error=error,
            lease=lease,
        )


# -- broken claimers ---------------------------------------------------------------
class RecyclingClaimer(StoreClaimer):
    """On a miss, hands out again the last instance it gave away."""

    last: UUID | None = None

    def claim(
        self,
        *,
        now: datetime,
        user_id: UUID,
        name: str,
        preset_id: UUID,
        autostart_schedule: str | None = None,
        next_start_at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> UUID:
        try:
            self.last = super().claim(
                now=now,
                user_id=user_id,
                name=name,
                preset_id=preset_id,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
            )
        except NoClaimablePrebuildsError:
            if self.last is None:
                raise
        return self.last


class ExpiredClaimer(StoreClaimer):
    """
    On a miss, falls back to its own query, which forgets expiry: it takes
    the oldest ready, running pooled instance and writes the claim itself.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        assert isinstance(store, MemoryStore)
        self.store = store

    def claim(
        self,
        *,
        now: datetime,
        user_id: UUID,
        name: str,
        preset_id: UUID,
        autostart_schedule: str | None = None,
        next_start_at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> UUID:
        try:
            return super().claim(
                now=now,
                user_id=user_id,
                name=name,
                preset_id=preset_id,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
            )
        except NoClaimablePrebuildsError:
            store = self.store
            with store._lock:
                ready = [
                    i
                    for i in store.list_instances(
                        preset_id=preset_id, owner_id=PREBUILDS_OWNER_ID
                    )
                    if i.ready
                    and i.latest_transition is Transition.START
                    and i.latest_status is BuildStatus.SUCCEEDED
                ]
                if not ready:
                    raise
                template = store.get_template(store.get_preset(preset_id).template_id)
                chosen = store._instances[ready[0].id]
                store._instances[chosen.id] = attrs.evolve(
                    chosen,
                    owner_id=user_id,
                    name=name,
                    claimed_at=now,
                    lifecycle=claimed_lifecycle(
                        now=now,
                        autostart_schedule=autostart_schedule,
                        next_start_at=next_start_at,
                        ttl=ttl,
                        template_default_ttl=template.default_ttl,
                    ),
                )
                return chosen.id


class InactiveClaimer(StoreClaimer):
    """
    Claims through the store without asking whether the preset is active
    (and so hands out instances of deprecated templates: MemoryStore's claim
    checks only the version and deletion).
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.store = store

    def claim(
        self,
        *,
        now: datetime,
        user_id: UUID,
        name: str,
        preset_id: UUID,
        autostart_schedule: str | None = None,
        next_start_at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> UUID:
        preset = self.store.get_preset(preset_id)
        template = self.store.get_template(preset.template_id)
        instance = self.store.claim(
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=claimed_lifecycle(
                now=now,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
                template_default_ttl=template.default_ttl,
            ),
            now=now,
        )
        if instance is None:
            raise NoClaimablePrebuildsError(preset_id)
        return instance.id


class NoDefaultTtlClaimer(StoreClaimer):
    """Forgets the template's default TTL when the claim gives none."""

    def claim(self, **kwargs: Any) -> UUID:
        if kwargs.get("ttl") is None:
            kwargs["ttl"] = timedelta(0)
        return super().claim(**kwargs)


class NoAutostartClaimer(StoreClaimer):
    """Drops the claim's autostart schedule."""

    def claim(self, **kwargs: Any) -> UUID:
        kwargs["autostart_schedule"] = None
        return super().claim(**kwargs)


# -- the tests -----------------------------------------------------------------------
class TestReferenceImplementations:
    def test_memory_store_passes(self) -> None:
        """The reference MemoryStore passes its own kit."""
        check_store(MemoryStore, settings=QUICK)

    def test_memory_store_passes_the_concurrent_check(self) -> None:
        """Concurrent claims and deletes on a MemoryStore are atomic."""
        check_concurrent_claims(MemoryStore, rounds=50)

    def test_store_claimer_subclass_passes(self) -> None:
        """A subclass of StoreClaimer that changes nothing passes."""

        class Subclass(StoreClaimer):
            pass

        check_claimer(Subclass, settings=QUICK)


class TestLeaderContract:
    def test_memory_store_keeps_it(self) -> None:
        """MemoryStore: exclusive, fenced; with a lease TTL, a take-over fences."""
        check_leadership(MemoryStore)
        factory, take_over = memory_with_lease_ttl()
        check_leadership(factory, take_over=take_over)

    def test_sqlite_store_keeps_it_across_store_objects(self, tmp_path: Path) -> None:
        """SQLiteStore: two objects on one file share one lease; an expired one is fenced."""
        numbers = iter(range(100))

        def factory() -> Store:
            return SQLiteStore(tmp_path / f"{next(numbers)}.sqlite3")

        check_leadership(factory, reopen=reopen_sqlite, take_over=expire_sqlite_lease)

    def test_check_store_runs_it(self) -> None:
        """check_store checks the leader contract before the machine."""
        factory, take_over = memory_with_lease_ttl()
        check_store(factory, settings=QUICK, take_over=take_over)

        with pytest.raises(AssertionError, match=r"\[leader contract\]"):
            check_store(AlwaysLeadsStore, settings=QUICK)


class TestBrokenLeadersAreCaught:
    def test_a_leader_that_always_leads(self) -> None:
        """A leader() that always yields a held lease is caught (issue 9)."""
        with pytest.raises(
            AssertionError, match="second leader\\(\\) on the same store led"
        ):
            check_leadership(AlwaysLeadsStore)

    def test_a_leader_of_the_object_not_of_the_backend(self, tmp_path: Path) -> None:
        """Two store objects on one file that both lead are caught with reopen."""
        numbers = iter(range(100))

        def factory() -> Store:
            return ProcessLocalLeaderStore(tmp_path / f"{next(numbers)}.sqlite3")

        def reopen(store: Store) -> Store:
            assert isinstance(store, ProcessLocalLeaderStore)
            return ProcessLocalLeaderStore(Path(store.path))

        check_leadership(factory)  # one object at a time: nothing to see
        with pytest.raises(AssertionError, match="another store object"):
            check_leadership(factory, reopen=reopen)

    def test_writes_that_ignore_the_lease(self) -> None:
        """Fenced writes that ignore the lease are caught, lease ended or taken over."""
        with pytest.raises(AssertionError, match="create_prebuild with a lease that"):
            check_leadership(IgnoresLeaseStore)

        clocks: list[FakeClock] = []

        def factory() -> Store:
            clocks.append(FakeClock())
            return IgnoresLeaseStore(clock=clocks[-1], lease_ttl=timedelta(minutes=1))

        with pytest.raises(AssertionError, match="was applied"):
            check_leadership(
                factory, take_over=lambda _: clocks[-1].advance(timedelta(minutes=2))
            )


class TestTheMachineAloneFindsThem:
    """
    Behind the rule checks, the state machine finds single-rule breaks too
    when given room to search (it is what catches a combination of steps
    that no fixed scenario foresaw): a few, to keep the suite fast.
    """

    def test_delete_of_a_claimed_instance(self) -> None:
        """A delete_prebuild that does not re-check ownership is caught."""
        with pytest.raises(AssertionError, match="deleted the claimed instance"):
            run_pool_machine(DeletesClaimedStore, settings=HUNT)

    def test_claim_that_is_not_atomic(self) -> None:
        """A claim that reads and writes in two transactions is caught."""
        with pytest.raises(AssertionError, match=r"two users|claimed and deleted"):
            check_concurrent_claims(NonAtomicClaimStore, rounds=100)

    def test_non_atomic_claim_passes_the_sequential_machine(self) -> None:
        """Only the concurrent check sees it: one at a time, it is correct."""
        run_pool_machine(NonAtomicClaimStore, settings=QUICK)

    def test_claimed_instance_counted_in_the_pool(self) -> None:
        """A snapshot that counts claimed instances as running is caught."""
        with pytest.raises(AssertionError, match="snapshot's running instances"):
            run_pool_machine(CountsClaimedStore, settings=HUNT)

    def test_the_message_has_the_failing_steps(self) -> None:
        """The AssertionError carries a minimal, replayable sequence."""
        with pytest.raises(AssertionError) as info:
            run_pool_machine(DeletesClaimedStore, settings=HUNT)

        message = str(info.value)
        assert "Minimal failing sequence of steps:" in message
        assert "state.stale_delete(" in message


class TestTheMachineAloneFindsBrokenClaimers:
    def test_claimer_hands_out_an_instance_twice(self) -> None:
        """A claimer that recycles a claimed instance on a miss is caught."""
        with pytest.raises(AssertionError, match="handed out twice"):
            run_pool_machine(MemoryStore, RecyclingClaimer, settings=HUNT)

    def test_claimer_on_another_store(self) -> None:
        """check_claimer runs the claimer over the store of store_factory."""
        made: list[MemoryStore] = []

        def store_factory() -> MemoryStore:
            made.append(MemoryStore())
            return made[-1]

        check_claimer(StoreClaimer, store_factory=store_factory, settings=QUICK)

        assert made


# -- every single-rule break, caught by the rule checks in every run -----------------
BROKEN_STORES = [
    # store, the rule that must catch it
    (DeletesClaimedStore, "delete_prebuild: never a claimed instance"),
    (ReclaimingStore, "each at most once"),
    (IgnoresExpiryStore, "older than the preset's TTL"),
    (breaks_claim("expiry", "claim forgets expiry"), "older than the preset's TTL"),
    (breaks_claim("ready", "claim forgets readiness"), "not ready"),
    (breaks_claim("running", "claim forgets the latest build"), "successful start"),
    (breaks_claim("version", "claim forgets the active version"), "not active"),
    (breaks_claim("preset", "claim takes any preset's instance"), "preset's own"),
    (breaks_claim("oldest", "claim takes the newest first"), "oldest claimable"),
    (breaks_claim("lifecycle", "claim keeps the pooled lifecycle"), "lifecycle"),
    (CountsClaimedStore, "every running pooled instance, and only those"),
    (DropsUnreadyRunningStore, "every running pooled instance, and only those"),
    (DropsRunningBuildsStore, "every in-progress build"),
    (NoPendingStore, "queued creations of an old version"),
    (NoBackoffStore, "recent failures as a backoff"),
    (NoHardLimitStore, "hard-limited presets"),
    (HidesDeprecationStore, "derived fields"),
    (CreatesForInactiveStore, "create_prebuild"),
    (DeletesTwiceStore, "a pooled instance, once"),
    (OverwritesLateReportsStore, "late ones change nothing"),
    (ForgetsStatusStore, "keeps the status and the invalidation"),
]
BROKEN_CLAIMERS = [
    (RecyclingClaimer, "each at most once"),
    (ExpiredClaimer, "older than the preset's TTL"),
    (InactiveClaimer, "deprecated template"),
    (NoDefaultTtlClaimer, "lifecycle from the claim and the template"),
    (NoAutostartClaimer, "lifecycle from the claim and the template"),
]
SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("store", "rule"), BROKEN_STORES, ids=[s.__name__ for s, _ in BROKEN_STORES]
)
def test_broken_store_is_caught_in_every_run(
    store: type[MemoryStore], rule: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    check_store at its default settings catches a store that breaks one
    rule, whatever Hypothesis draws: the rule checks run before the machine,
    so the failure names the rule whatever the seed.
    """
    monkeypatch.setattr(hypothesis.core, "global_force_seed", seed)

    with pytest.raises(AssertionError, match=r"\[rule: [^]]*" + re.escape(rule)):
        check_store(store)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("claimer", "rule"),
    BROKEN_CLAIMERS,
    ids=[c.__name__ for c, _ in BROKEN_CLAIMERS],
)
def test_broken_claimer_is_caught_in_every_run(
    claimer: type[StoreClaimer],
    rule: str,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """check_claimer at its default settings catches a claimer that breaks one rule."""
    monkeypatch.setattr(hypothesis.core, "global_force_seed", seed)

    with pytest.raises(AssertionError, match=r"\[rule: [^]]*" + re.escape(rule)):
        check_claimer(claimer)


def test_rules_hold_on_every_store(store_factory: StoreFactory) -> None:
    """The reference stores keep every rule, through their claim and the claimer's."""
    check_rules(store_factory)
    check_rules(store_factory, StoreClaimer)
