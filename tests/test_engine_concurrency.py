"""The engine under threads: run/stop, claims racing passes, two replicas."""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid

from datetime import timedelta
from typing import Any

import attrs
import pytest

from prebuilds import (
    BuildRequest,
    Event,
    EventKind,
    NoClaimablePrebuildsError,
    PoolFacts,
    ReconcileStats,
    StoreClaimer,
    StoreError,
    StoreReconciler,
    Transition,
)
from prebuilds.interfaces import Store
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.conftest import StoreFactory
from tests.helpers import (
    DelegatingStore,
    check_integrity,
    live,
    make_world,
    new_preset,
    new_template,
    new_version,
    ready,
)


#: Tiny: the loop spins; every wait below is on an Event, bounded by counts.
TICK = timedelta(milliseconds=1)
#: Generous bound on a wait for something that happens within a few passes.
WAIT = 10.0


class CountingStore(DelegatingStore):
    """
    Counts passes (reads of the pool); the first *fail_first* of them raise
    StoreError. With a *clock* set, each pass moves it a minute (after the
    pass read it: the next pass is a minute later).
    """

    def __init__(self, inner: Store, *, after: int, fail_first: int = 0) -> None:
        super().__init__(inner)
        self.passes = 0
        self.after = after
        self.fail_first = fail_first
        self.enough = threading.Event()
        self.clock: FakeClock | None = None

    def read_pool(self) -> PoolFacts:
        if self.clock is not None:
            self.clock.advance(timedelta(minutes=1))
        self.passes += 1
        if self.passes >= self.after:
            self.enough.set()
        if self.passes <= self.fail_first:
            msg = "flaky database"
            raise StoreError(msg)
        return super().read_pool()


def _start(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _looping(
    store_factory: StoreFactory, *, after: int = 3, fail_first: int = 0
) -> Any:
    inner = store_factory()
    preset = new_preset(inner, new_template(inner), desired=2)
    counting = CountingStore(inner, after=after, fail_first=fail_first)
    world = make_world(counting, interval=TICK)
    return world, counting, preset.id


class TestRunStop:
    def test_run_until_stopped(self, store_factory: StoreFactory) -> None:
        """run() passes on its interval until stop(); the cause is kept."""
        world, counting, preset_id = _looping(store_factory, after=5)
        cause = KeyboardInterrupt()
        runner = _start(world.reconciler.run)

        assert counting.enough.wait(WAIT)
        world.reconciler.stop(cause, timeout=5)
        runner.join(5)

        assert not runner.is_alive()
        assert counting.passes >= 5
        assert world.reconciler.stopped
        assert cause is world.reconciler.stop_cause
        assert 2 == len(live(counting, preset_id))

    def test_stop_from_four_threads(self, store_factory: StoreFactory) -> None:
        """Four concurrent stops: the loop ends once; one cause is kept for good."""
        world, counting, _ = _looping(store_factory)
        runner = _start(world.reconciler.run)
        assert counting.enough.wait(WAIT)
        causes = [RuntimeError(f"stop {n}") for n in range(4)]
        barrier = threading.Barrier(len(causes))

        def stop(cause: BaseException) -> None:
            barrier.wait()
            world.reconciler.stop(cause, timeout=5)

        stoppers = [threading.Thread(target=stop, args=(c,)) for c in causes]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(WAIT)
        runner.join(5)
        kept = world.reconciler.stop_cause
        world.reconciler.stop(ValueError("late"), timeout=5)

        assert [False] * 4 == [t.is_alive() for t in stoppers]
        assert not runner.is_alive()
        assert any(kept is c for c in causes)
        assert kept is world.reconciler.stop_cause

    def test_stop_waits_for_the_pass(self, store_factory: StoreFactory) -> None:
        """stop(timeout=None) returns only once the running pass has ended."""
        store = store_factory()
        new_preset(store, new_template(store), desired=1)
        entered, release = threading.Event(), threading.Event()

        class Blocking:
            def submit(self, request: BuildRequest) -> None:
                entered.set()
                release.wait(WAIT)

        world = make_world(store, provisioner=Blocking(), interval=TICK)
        passes_ended: list[bool] = []
        reconcile_all = world.reconciler.reconcile_all

        def counting() -> ReconcileStats:
            stats = reconcile_all()
            passes_ended.append(True)
            return stats

        world.reconciler.reconcile_all = counting  # type: ignore[method-assign]
        runner = _start(world.reconciler.run)
        assert entered.wait(WAIT)
        returned_after_the_loop: list[bool] = []

        def stop() -> None:
            world.reconciler.stop(timeout=None)
            returned_after_the_loop.append(bool(passes_ended))

        stopper = _start(stop)
        assert world.reconciler._stop_event.wait(WAIT)
        release.set()
        stopper.join(WAIT)
        runner.join(5)

        assert [True] == returned_after_the_loop

    def test_stop_from_inside_a_pass(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stop called by the loop's own event sink does not wait for itself."""
        store = store_factory()
        new_preset(store, new_template(store), desired=1)
        world = make_world(store, interval=TICK)
        cause = RuntimeError("enough")

        class Stopper:
            def emit(self, event: Event) -> None:
                if event.kind is EventKind.CREATED:
                    world.reconciler.stop(cause, timeout=1)

        world.reconciler._events = Stopper()
        runner = _start(world.reconciler.run)
        runner.join(WAIT)

        assert not runner.is_alive()
        assert cause is world.reconciler.stop_cause
        assert [] == [r for r in caplog.records if "did not stop" in r.getMessage()]

    def test_run_after_stop_returns_at_once(self, store_factory: StoreFactory) -> None:
        """A stopped reconciler does not start again, and does no pass."""
        world, counting, _ = _looping(store_factory)
        world.reconciler.stop(RuntimeError("before start"))

        runner = _start(world.reconciler.run)
        runner.join(WAIT)

        assert not runner.is_alive()
        assert 0 == counting.passes

    def test_second_run_returns_at_once(self, store_factory: StoreFactory) -> None:
        """A run() while another runs returns at once; the first goes on."""
        world, counting, _ = _looping(store_factory)
        first = _start(world.reconciler.run)
        assert counting.enough.wait(WAIT)

        second = _start(world.reconciler.run)
        second.join(WAIT)
        first_alive = first.is_alive()
        world.reconciler.stop(timeout=5)
        first.join(5)

        assert (False, True, False) == (
            second.is_alive(),
            first_alive,
            first.is_alive(),
        )

    def test_the_loop_survives_store_failures(
        self, store_factory: StoreFactory
    ) -> None:
        """Passes that fail are counted; the loop goes on and fills the pool."""
        world, counting, preset_id = _looping(store_factory, after=8, fail_first=3)
        runner = _start(world.reconciler.run)

        assert counting.enough.wait(WAIT)
        world.reconciler.stop(timeout=5)
        runner.join(5)

        assert not runner.is_alive()
        assert 3 == world.reconciler.pass_errors
        assert 3 == len(world.of_kind(EventKind.PASS_ERROR))
        assert 2 == len(live(counting, preset_id))

    def test_the_loop_survives_provisioner_failures(
        self, store_factory: StoreFactory
    ) -> None:
        """A provisioner that raises fails builds, never the loop."""
        world, counting, preset_id = _looping(store_factory, after=6)
        counting.clock = world.clock  # a minute per pass: backoffs end
        for _ in range(2):
            world.provisioner.raise_next()
        runner = _start(world.reconciler.run)

        assert counting.enough.wait(WAIT)
        world.reconciler.stop(timeout=5)
        runner.join(5)

        assert not runner.is_alive()
        assert 0 == world.reconciler.pass_errors
        assert 2 == len(world.of_kind(EventKind.FAILED))
        assert 2 == len(live(counting, preset_id))


#: Claim threads, and the claims each makes.
CLAIMERS = 8
CLAIMS_EACH = 5
DESIRED = 4


class ClaimRace:
    """
    One reconciler loop and CLAIMERS claim threads on one store, started
    together. The loop makes every third pass want a single instance, so
    deletes race the claims; it stops once the claimers are done and it has
    deleted something. Everything is bounded by counts.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.config = new_preset(store, new_template(store), desired=DESIRED)
        self.clock = FakeClock()
        self.provisioner = FakeProvisioner(store, self.clock, build_time=timedelta(0))
        self.reconciler = StoreReconciler(
            store,
            self.provisioner,
            clock=self.clock,
            submit_timeout=None,
            max_workers=1,
        )
        self.claimer = StoreClaimer(store)
        self.progress = threading.Condition()
        self.passes = 0
        self.deleted = 0
        self.claimers_done = 0
        self.loop_done = False
        self.barrier = threading.Barrier(CLAIMERS + 1)
        self.claims: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.errors: list[BaseException] = []

    def run(self) -> list[threading.Thread]:
        """Run every thread to its end; return them (to check they ended)."""
        threads = [threading.Thread(target=self.claim) for _ in range(CLAIMERS)]
        threads.append(threading.Thread(target=self.loop))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return threads

    def pass_once(self, desired: int) -> None:
        """Set the pool's size, reconcile, let the builds finish."""
        self.store.put_preset(attrs.evolve(self.config, desired_instances=desired))
        stats = self.reconciler.reconcile_all()
        if stats.error is not None:
            self.errors.append(RuntimeError(stats.error))
        self.provisioner.process()
        with self.progress:
            self.passes += 1
            self.deleted += stats.deleted
            self.progress.notify_all()

    def loop(self) -> None:
        self.barrier.wait()
        try:
            for n in range(5000):
                self.pass_once(1 if n % 3 == 2 else DESIRED)
                with self.progress:
                    if self.claimers_done == CLAIMERS and self.deleted:
                        break
        finally:
            with self.progress:
                self.loop_done = True
                self.progress.notify_all()

    def next_pass(self, seen: int) -> bool:
        return self.passes > seen or self.loop_done

    def claim(self) -> None:
        user = uuid.uuid4()
        mine = 0
        self.barrier.wait()
        try:
            for _ in range(1000):
                if mine == CLAIMS_EACH:
                    break
                with self.progress:
                    seen = self.passes
                try:
                    instance_id = self.claimer.claim(
                        now=self.clock.now(),
                        user_id=user,
                        name="x",
                        preset_id=self.config.id,
                    )
                except NoClaimablePrebuildsError:
                    with self.progress:
                        self.progress.wait_for(
                            functools.partial(self.next_pass, seen), timeout=WAIT
                        )
                    continue
                self.claims.append((user, instance_id))
                mine += 1
        except BaseException as e:  # pragma: no cover - reported by the test
            self.errors.append(e)
        finally:
            with self.progress:
                self.claimers_done += 1
                self.progress.notify_all()


class TestClaimsRaceTheReconciler:
    def test_claims_while_passes_run(self, store_factory: StoreFactory) -> None:
        """8 threads claim while passes grow and shrink the pool: no double hand-out."""
        race = ClaimRace(store_factory())
        store = race.store

        threads = race.run()

        assert [] == race.errors
        assert [False] * len(threads) == [t.is_alive() for t in threads]
        claimed = [i for _, i in race.claims]
        assert CLAIMERS * CLAIMS_EACH == len(claimed)
        assert len(claimed) == len(set(claimed))
        for user, instance_id in race.claims:
            instance = store.get_instance(instance_id)
            assert (user, False) == (instance.owner_id, instance.deleted)
            assert [Transition.START] == [
                b.transition for b in store.list_builds(instance_id=instance_id)
            ]
        assert race.deleted > 0
        check_integrity(store)

    def test_quiet_passes_restore_the_pool(self, store_factory: StoreFactory) -> None:
        """After the claims stop, a few quiet passes bring the pool back to desired."""
        race = ClaimRace(store_factory())
        race.run()

        for _ in range(3):
            race.pass_once(DESIRED)

        assert DESIRED == len(ready(race.store, race.config.id))
        assert DESIRED == len(live(race.store, race.config.id))


class Gate:
    """A provisioner whose submit waits at a gate before queuing the build."""

    def __init__(self, inner: FakeProvisioner) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, request: BuildRequest) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        self.inner.submit(request)


class TestTwoReplicas:
    def test_only_one_acts_per_tick(
        self, store_factory: StoreFactory, second_handle: Any
    ) -> None:
        """While A's pass is inside submit, B's pass does not lead and does nothing."""
        store_a = store_factory()
        preset = new_preset(store_a, new_template(store_a), desired=2)
        store_b = second_handle(store_a)
        clock = FakeClock()
        a = make_world(store_a, clock=clock)
        gate = Gate(a.provisioner)
        a.reconciler._provisioner = gate
        b = make_world(store_b, clock=clock)
        results: list[Any] = []

        runner = _start(lambda: results.append(a.reconciler.reconcile_all()))
        assert gate.entered.wait(WAIT)
        blocked = b.reconciler.reconcile_all()
        gate.release.set()
        runner.join(WAIT)
        after = b.reconciler.reconcile_all()

        [stats_a] = results
        assert (False, 0, 0) == (blocked.leader, blocked.created, blocked.presets_total)
        assert (True, 2) == (stats_a.leader, stats_a.created)
        assert (True, 0) == (after.leader, after.created)
        assert [] == b.provisioner.submitted
        assert 2 == len(live(store_a, preset.id))

    def test_pool_never_exceeds_desired(
        self, store_factory: StoreFactory, second_handle: Any
    ) -> None:
        """Two replicas passing at once never build more than desired."""
        store_a = store_factory()
        config = new_preset(store_a, new_template(store_a), desired=3)
        store_b = second_handle(store_a)
        clock = FakeClock()
        worlds = [make_world(s, clock=clock) for s in (store_a, store_b)]
        barrier = threading.Barrier(2)
        seen: list[int] = []
        led: list[bool] = []
        claimed: list[uuid.UUID] = []

        def replica(n: int) -> None:
            world = worlds[n]
            barrier.wait()
            for step in range(25):
                stats = world.reconciler.reconcile_all()
                led.append(stats.leader)
                seen.append(len(live(world.store, config.id)))
                world.provisioner.process()
                if n == 0 and step % 5 == 4:
                    clock.advance(timedelta(minutes=1))
                    with contextlib.suppress(NoClaimablePrebuildsError):
                        claimed.append(world.claim(config.id))

        threads = [threading.Thread(target=replica, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        assert [False, False] == [t.is_alive() for t in threads]
        assert max(seen) <= config.desired_instances
        assert any(led)
        for world in worlds:
            world.settle(2)
        assert 3 == len(ready(store_a, config.id))
        assert 3 == len(live(store_a, config.id))
        check_integrity(store_a)


class TestParallelPresetsOnOneStore:
    def test_many_presets_many_workers(self, store_factory: StoreFactory) -> None:
        """Eight presets reconciled on four workers all fill, then drain on a new version."""
        world = make_world(store_factory(), max_workers=4)
        template = new_template(world.store)
        presets = [new_preset(world.store, template, desired=2) for _ in range(8)]

        world.settle(2)
        filled = [len(ready(world.store, p.id)) for p in presets]
        new_version(world.store, template)
        world.settle(2)

        assert [2] * 8 == filled
        assert [0] * 8 == [len(live(world.store, p.id)) for p in presets]
        check_integrity(world.store)
