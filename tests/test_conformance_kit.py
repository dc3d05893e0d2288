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

from collections.abc import Callable, Iterator, Sequence
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
    Build,
    BuildRequest,
    BuildStatus,
    Instance,
    InvalidInputError,
    Lease,
    Lifecycle,
    NoClaimablePrebuildsError,
    PooledInstance,
    PoolFacts,
    PresetConfig,
    PresetFacts,
    PresetInactiveError,
    StoreClaimer,
    Template,
    Transition,
    claimed_lifecycle,
    expiry_cutoff,
)
from prebuilds.interfaces import Store
from prebuilds.stores import MemoryStore, SQLiteStore
from prebuilds.stores._common import fence_token
from prebuilds.stores._memory import _request
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
            return _request(instance, build, ())


class NonAtomicClaimStore(MemoryStore):
    """
    claim reads in one transaction and writes in another, without checking
    that the instance is still pooled.
    """

    def claim(self, **kwargs: Any) -> Instance | None:
        with self._lock:  # the read: which instance would a claim take?
            saved = dict(self._instances)
            got = super().claim(**kwargs)
            self._instances = saved
        if got is None:
            return None
        sum(range(2000))  # the round trip between the two transactions
        with self._lock:  # the write, with no compare-and-set
            self._instances[got.id] = got
            return got


def breaks_claim(ignore: str, doc: str) -> type[MemoryStore]:
    """A MemoryStore whose claims (with a stamp or not) leave out one condition."""

    class BrokenClaimStore(MemoryStore):
        def _claim(
            self,
            preset_id: UUID,
            user_id: UUID,
            name: str,
            lifecycle: Lifecycle,
            now: datetime,
            version_id: UUID,
            not_before: datetime | None,
        ) -> Instance | None:
            conditions: dict[str, Callable[[Instance], bool]] = {
                "preset": lambda i: i.preset_id == preset_id,
                "owner": lambda i: i.owner_id == PREBUILDS_OWNER_ID,
                "ready": lambda i: i.ready,
                "running": lambda i: (
                    i.latest_transition is Transition.START
                    and i.latest_status is BuildStatus.SUCCEEDED
                ),
                "version": lambda i: i.template_version_id == version_id,
                "expiry": lambda i: not_before is None or i.created_at >= not_before,
            }
            candidates = [
                i
                for i in self._instances.values()
                if not i.deleted
                and all(check(i) for key, check in conditions.items() if key != ignore)
            ]
            if not candidates:
                return None
            order = min if ignore != "oldest" else max
            chosen = order(candidates, key=lambda i: (i.created_at, i.id))
            if ignore == "lifecycle":
                lifecycle = chosen.lifecycle
            claimed = attrs.evolve(
                chosen, owner_id=user_id, name=name, lifecycle=lifecycle, claimed_at=now
            )
            self._instances[chosen.id] = claimed
            return claimed

    BrokenClaimStore.__doc__ = doc
    BrokenClaimStore.__name__ = f"ClaimIgnores{ignore.title()}Store"
    return BrokenClaimStore


def breaks_read_pool(
    name: str, doc: str, change: Callable[[MemoryStore, PoolFacts], PoolFacts]
) -> type[MemoryStore]:
    """A MemoryStore whose read_pool hands out facts that *change* altered."""

    class BrokenReadPoolStore(MemoryStore):
        def read_pool(self) -> PoolFacts:
            with self._lock:
                return change(self, super().read_pool())

    BrokenReadPoolStore.__doc__ = doc
    BrokenReadPoolStore.__name__ = name
    return BrokenReadPoolStore


def _only(
    keep: Callable[[PooledInstance], bool],
) -> Callable[[MemoryStore, PoolFacts], PoolFacts]:
    return lambda _, facts: attrs.evolve(
        facts, instances=[i for i in facts.instances if keep(i)]
    )


def _with_claimed(store: MemoryStore, facts: PoolFacts) -> PoolFacts:
    claimed = [
        store._pooled(i)
        for i in store._instances.values()
        if i.owner_id != PREBUILDS_OWNER_ID and not i.deleted
    ]
    return attrs.evolve(facts, instances=[*facts.instances, *claimed])


def _first_build_id(store: MemoryStore, facts: PoolFacts) -> PoolFacts:
    return attrs.evolve(
        facts,
        instances=[
            attrs.evolve(i, latest_build_id=store._builds_of[i.id][0])
            for i in facts.instances
        ],
    )


CountsClaimedStore = breaks_read_pool(
    "CountsClaimedStore",
    "read_pool hands out claimed instances as pooled.",
    _with_claimed,
)
DropsUnreadyStore = breaks_read_pool(
    "DropsUnreadyStore",
    "read_pool leaves out the pooled instances that are not ready.",
    _only(lambda i: i.ready or i.latest_transition is not Transition.START),
)
DropsRunningBuildsStore = breaks_read_pool(
    "DropsRunningBuildsStore",
    "read_pool leaves out the instances whose latest build is running.",
    _only(lambda i: i.latest_status is not BuildStatus.RUNNING),
)
DropsFailedStore = breaks_read_pool(
    "DropsFailedStore",
    "read_pool leaves out the instances whose latest build failed.",
    _only(lambda i: i.latest_status is not BuildStatus.FAILED),
)
FirstBuildIdStore = breaks_read_pool(
    "FirstBuildIdStore",
    "read_pool names each instance's first build, not its latest.",
    _first_build_id,
)


class ActiveVersionOnlyStore(MemoryStore):
    """read_pool leaves out the instances of a version that is not active."""

    def read_pool(self) -> PoolFacts:
        with self._lock:
            facts = super().read_pool()
            active = {t.active_version_id for t in self._templates.values()}
            return attrs.evolve(
                facts,
                instances=[
                    i for i in facts.instances if i.template_version_id in active
                ],
            )


class HidesDeprecationStore(MemoryStore):
    """Presets do not show that their template is deprecated."""

    def _facts(self, row: Any) -> PresetFacts:
        facts = super()._facts(row)
        return attrs.evolve(
            facts, template=attrs.evolve(facts.template, deprecated=False)
        )


class CreatesForInactiveStore(MemoryStore):
    """create_prebuild does not check that the preset is active."""

    @staticmethod
    def _active(config: PresetConfig, template: Template) -> bool:
        return True


class HalfBatchStore(MemoryStore):
    """create_prebuilds creates only every other name's instance."""

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        return super().create_prebuilds(
            preset_id, now=now, names=list(names)[::2], lease=lease
        )


class BatchForInactiveStore(MemoryStore):
    """create_prebuilds does not check that the preset is active (create_prebuild does)."""

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        with self._lock:
            active, self._active = self._active, lambda *_: True  # type: ignore[method-assign]
            try:
                return super().create_prebuilds(
                    preset_id, now=now, names=names, lease=lease
                )
            finally:
                self._active = active  # type: ignore[method-assign]


class PartialBatchStore(MemoryStore):
    """create_prebuilds writes the names before a bad one, then raises."""

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        requests = []
        for name in names:
            request = self.create_prebuild(preset_id, now=now, name=name, lease=lease)
            if request is None:
                return []
            requests.append(request)
        return requests


class FailsUnsubmittedStore(MemoryStore):
    """fail_stuck_builds fails a batch's builds never submitted (it must cancel them)."""

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        with self._lock:
            self._unsubmitted.clear()
        return super().fail_stuck_builds(older_than=older_than, now=now, lease=lease)


class CancelsSubmittedStore(MemoryStore):
    """record_submits marks nothing: a submitted build stuck is canceled (it must fail)."""

    def record_submits(
        self,
        submitted: Sequence[UUID],
        *,
        now: datetime,
        not_submitted: Sequence[UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        super().record_submits([], now=now, not_submitted=not_submitted, lease=lease)


class ForgetsStatusStore(MemoryStore):
    """put_preset resets the preset's status (it must keep it)."""

    def put_preset(self, preset: PresetConfig) -> None:
        with self._lock:
            self._presets.pop(preset.id, None)
            super().put_preset(preset)


class UnknownTemplateInvalidStore(MemoryStore):
    """put_preset refuses an unknown template as bad input (as 0.1 did)."""

    def put_preset(self, preset: PresetConfig) -> None:
        if preset.template_id not in self._templates:
            raise InvalidInputError("template_id", preset.template_id, "unknown")
        super().put_preset(preset)


class StaleTemplateStampStore(MemoryStore):
    """put_template does not change the stamps of its presets."""

    def put_template(self, template: Template) -> None:
        with self._lock:
            stamps = {p: row.stamp for p, row in self._presets.items()}
            super().put_template(template)
            for preset_id, stamp in stamps.items():
                self._presets[preset_id].stamp = stamp


class IgnoresStampStore(MemoryStore):
    """claim_if_unchanged claims whatever the stamp."""

    def claim_if_unchanged(self, *, stamp: int, **kwargs: Any) -> Instance | None:
        return self.claim(**kwargs)


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
    def leader(self) -> Iterator[Lease]:
        if not self._only.acquire(blocking=False):
            yield Lease(held=False)
            return
        try:
            with super().leader() as lease:
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
            return _request(instance, build, ())


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
                self._set_build(attrs.evolve(build, status=BuildStatus.RUNNING))
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
                template = store.read_preset(preset_id).template
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
    Claims the template's active version without asking whether the preset
    is active (and so hands out instances of deprecated templates: a
    store's claim compares only the version and the cut-off).
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
        facts = self.store.read_preset(preset_id)
        instance = self.store.claim(
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=claimed_lifecycle(
                now=now,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
                template_default_ttl=facts.template.default_ttl,
            ),
            now=now,
            version_id=facts.template.active_version_id,
            not_before=expiry_cutoff(
                ttl=facts.config.ttl,
                last_invalidated_at=facts.last_invalidated_at,
                now=now,
            ),
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


class CachesForeverClaimer(StoreClaimer):
    """Keeps an active preset's facts for good and claims with them, unchecked."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.facts: dict[UUID, PresetFacts] = {}

    def claim(self, **kwargs: Any) -> UUID:
        preset_id = kwargs["preset_id"]
        facts = self.facts.get(preset_id) or self._store.read_preset(preset_id)
        now = kwargs["now"]
        if not facts.preset.is_active:
            raise PresetInactiveError(preset_id)
        self.facts[preset_id] = facts
        instance = self._store.claim(
            preset_id=preset_id,
            user_id=kwargs["user_id"],
            name=kwargs["name"],
            lifecycle=claimed_lifecycle(
                now=now,
                autostart_schedule=kwargs.get("autostart_schedule"),
                next_start_at=kwargs.get("next_start_at"),
                ttl=kwargs.get("ttl"),
                template_default_ttl=facts.template.default_ttl,
            ),
            now=now,
            version_id=facts.config.template_version_id,
            not_before=expiry_cutoff(
                ttl=facts.config.ttl,
                last_invalidated_at=facts.last_invalidated_at,
                now=now,
            ),
        )
        if instance is None:
            raise NoClaimablePrebuildsError(preset_id)
        return instance.id


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
        """A read_pool that hands out claimed instances as pooled is caught."""
        with pytest.raises(AssertionError, match="read_pool's facts are not"):
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
    (breaks_claim("owner", "claim hands claimed instances out again"), "each at most once"),
    (breaks_claim("expiry", "claim forgets the cut-off"), "older than the preset's TTL"),
    (breaks_claim("ready", "claim forgets readiness"), "not ready"),
    (breaks_claim("running", "claim forgets the latest build"), "successful start"),
    (breaks_claim("version", "claim forgets the version"), "not active"),
    (breaks_claim("preset", "claim takes any preset's instance"), "preset's own"),
    (breaks_claim("oldest", "claim takes the newest first"), "oldest claimable"),
    (breaks_claim("lifecycle", "claim keeps the pooled lifecycle"), "lifecycle"),
    (CountsClaimedStore, "every running pooled instance, and only those"),
    (DropsUnreadyStore, "every running pooled instance, and only those"),
    (DropsRunningBuildsStore, "every in-progress build"),
    (ActiveVersionOnlyStore, "queued creations of an old version"),
    (DropsFailedStore, "recent failures as a backoff"),
    (FirstBuildIdStore, "every pooled instance with its latest build"),
    (HidesDeprecationStore, "every preset, as put and as read_preset reads it"),
    (CreatesForInactiveStore, "create_prebuild"),
    (DeletesTwiceStore, "a pooled instance, once"),
    (OverwritesLateReportsStore, "late ones change nothing"),
    (ForgetsStatusStore, "keeps the status and the invalidation"),
    (UnknownTemplateInvalidStore, "unknown IDs raise the not-found errors"),
    (StaleTemplateStampStore, "stamps: put_preset, invalidate_preset and put_template"),
    (IgnoresStampStore, "claim_if_unchanged: a stale stamp raises"),
    (HalfBatchStore, "create_prebuilds: every instance and its first build"),
    (BatchForInactiveStore, "create_prebuilds: every instance and its first build"),
    (PartialBatchStore, "create_prebuilds: a bad name is refused before anything"),
    (FailsUnsubmittedStore, "record_submits: a batch's build stuck and never submitted"),
    (CancelsSubmittedStore, "record_submits: a batch's build stuck and never submitted"),
]  # fmt: skip
BROKEN_CLAIMERS = [
    (RecyclingClaimer, "each at most once"),
    (ExpiredClaimer, "older than the preset's TTL"),
    (InactiveClaimer, "deprecated template"),
    (NoDefaultTtlClaimer, "lifecycle from the claim and the template"),
    (NoAutostartClaimer, "lifecycle from the claim and the template"),
    (CachesForeverClaimer, "what changed since the last claim counts"),
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


def test_the_testing_kit_page_names_every_rule() -> None:
    from prebuilds.testing import _rules

    page = (Path(__file__).parent.parent / "docs" / "testing-kit.md").read_text()
    rules = (
        *_rules.CLAIM_RULES,
        *_rules.CLAIMER_RULES,
        *_rules.STORE_RULES,
        *_rules.STAMP_RULES,
        *_rules.LEAN_RULES,
        *_rules.BATCH_RULES,
    )
    missing = [rule.name for rule in rules if f"`{rule.name}`" not in page]
    assert missing == []
