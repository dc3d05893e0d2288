"""StoreReconciler on every store: fill, drain, expiry, versions, failures."""

from __future__ import annotations

import re
import threading
import uuid

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

import prebuilds._pool
import prebuilds._reconciler

from prebuilds import (
    PREBUILDS_OWNER_ID,
    ActionType,
    Backoff,
    BuildRequest,
    BuildStatus,
    EventKind,
    InvalidInputError,
    Lease,
    PoolFacts,
    PrebuildSchedule,
    PresetNotFoundError,
    PresetStatus,
    ProvisionerError,
    ResourceReplacement,
    StoreError,
    StoreReconciler,
    Transition,
    calculate_actions,
    generate_name,
)
from prebuilds.interfaces import Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.conftest import StoreFactory
from tests.helpers import (
    BUILD_TIME,
    DelegatingStore,
    World,
    check_integrity,
    corrupt_preset,
    live,
    make_world,
    new_preset,
    new_template,
    new_version,
    pooled,
    ready,
    running,
)


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class TestFill:
    def test_fills_to_desired(self, store_factory: StoreFactory) -> None:
        """One pass creates the missing instances; once built they are ready."""
        world = make_world(store_factory())
        template = new_template(world.store)
        preset = new_preset(world.store, template, desired=3)

        stats = world.cycle()

        assert 3 == stats.created
        assert (1, 1, True) == (
            stats.presets_total,
            stats.presets_reconciled,
            stats.leader,
        )
        assert 3 == len(ready(world.store, preset.id))

    def test_a_full_pool_is_left_alone(self, store_factory: StoreFactory) -> None:
        """Once full, passes create and delete nothing and write no builds."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()
        builds = world.store.list_builds()

        stats = [world.cycle() for _ in range(3)]

        assert [(0, 0)] * 3 == [(s.created, s.deleted) for s in stats]
        assert builds == world.store.list_builds()
        assert 2 == len(ready(world.store, preset.id))

    def test_in_flight_builds_are_not_created_twice(
        self, store_factory: StoreFactory
    ) -> None:
        """Builds still pending count toward the pool: a second pass creates none."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)

        first = world.reconciler.reconcile_all()
        second = world.reconciler.reconcile_all()

        assert (2, 0) == (first.created, second.created)
        assert 2 == len(pooled(world.store, preset.id))

    def test_requests_carry_the_preset(self, store_factory: StoreFactory) -> None:
        """The provisioner is asked to start the preset's version with its parameters."""
        world = make_world(store_factory(), name_factory=lambda: "fixed-name")
        template = new_template(world.store)
        preset = new_preset(
            world.store, template, desired=1, parameters=(("region", "eu"),)
        )

        world.reconciler.reconcile_all()

        [request] = world.provisioner.submitted
        [instance] = pooled(world.store, preset.id)
        assert (
            BuildRequest(
                build_id=world.store.list_builds(instance_id=instance.id)[0].id,
                instance_id=instance.id,
                preset_id=preset.id,
                template_id=template.id,
                template_version_id=template.active_version_id,
                transition=Transition.START,
                name="fixed-name",
                parameters=(("region", "eu"),),
                orphan=False,
            )
            == request
        )

    def test_generated_names(self) -> None:
        """Default names are ``prebuild-`` and 15 base32 characters, all different."""
        names = {generate_name() for _ in range(100)}

        assert 100 == len(names)
        assert all(re.fullmatch(r"prebuild-[a-z2-7]{15}", n) for n in names)

    def test_many_presets_in_parallel(self, store_factory: StoreFactory) -> None:
        """With several workers every preset of several templates fills."""
        world = make_world(store_factory(), max_workers=4)
        presets = [
            new_preset(world.store, new_template(world.store), desired=n % 3 + 1)
            for n in range(6)
        ]

        stats = world.cycle()
        world.settle(1)

        assert (6, 6, 12) == (
            stats.presets_total,
            stats.presets_reconciled,
            stats.created,
        )
        assert [p.desired_instances for p in presets] == [
            len(ready(world.store, p.id)) for p in presets
        ]

    def test_desired_zero_creates_nothing(self, store_factory: StoreFactory) -> None:
        """A preset that wants no instance gets none."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=0)

        world.settle()

        assert [] == pooled(world.store, preset.id)
        assert [] == world.provisioner.submitted


class TestDrainAndRefill:
    def test_claims_drain_and_refill(self, store_factory: StoreFactory) -> None:
        """Claimed instances leave the pool; the next passes replace them."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=3)
        world.settle()

        claimed = {world.claim(preset.id) for _ in range(2)}
        after_claims = len(ready(world.store, preset.id))
        stats = world.cycle()

        assert 1 == after_claims
        assert 2 == stats.created
        assert 3 == len(ready(world.store, preset.id))
        assert claimed.isdisjoint(i.id for i in pooled(world.store, preset.id))

    def test_lower_desired_deletes_the_oldest(
        self, store_factory: StoreFactory
    ) -> None:
        """Extraneous instances are deleted oldest first (DELETED events)."""
        world = make_world(store_factory())
        template = new_template(world.store)
        preset = new_preset(world.store, template, desired=1)
        world.settle()
        world.store.put_preset(attrs.evolve(preset, desired_instances=3))
        world.settle()
        oldest = ready(world.store, preset.id)[0]
        world.store.put_preset(attrs.evolve(preset, desired_instances=2))

        stats = world.cycle()

        assert (1, 0) == (stats.deleted, stats.created)
        assert [oldest.id] == [e.instance_id for e in world.of_kind(EventKind.DELETED)]
        assert oldest.id not in {i.id for i in pooled(world.store, preset.id)}
        assert 2 == len(ready(world.store, preset.id))
        assert world.store.get_instance(oldest.id).deleted


class TestExpiry:
    def test_ttl_replaces(self, store_factory: StoreFactory) -> None:
        """Instances older than the TTL are deleted and replaced in one pass."""
        world = make_world(store_factory())
        preset = new_preset(
            world.store, new_template(world.store), desired=2, ttl=timedelta(hours=1)
        )
        world.settle(1)
        old = {i.id for i in ready(world.store, preset.id)}
        world.clock.set(T0 + timedelta(hours=1))
        at_ttl = world.cycle()
        world.clock.set(T0 + timedelta(hours=1, seconds=1))

        stats = world.cycle()

        assert (0, 0) == (at_ttl.deleted, at_ttl.created)
        assert (2, 2) == (stats.deleted, stats.created)
        assert old == {e.instance_id for e in world.of_kind(EventKind.EXPIRED)}
        fresh = ready(world.store, preset.id)
        assert 2 == len(fresh)
        assert old.isdisjoint(i.id for i in fresh)
        assert all(world.store.get_instance(i).deleted for i in old)

    def test_invalidate_replaces(self, store_factory: StoreFactory) -> None:
        """Instances created before the invalidation are replaced."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()
        old = {i.id for i in ready(world.store, preset.id)}
        world.store.invalidate_preset(preset.id, at=world.clock.now())

        stats = world.cycle()
        again = world.cycle()

        assert (2, 2) == (stats.deleted, stats.created)
        assert (0, 0) == (again.deleted, again.created)
        assert old == {e.instance_id for e in world.of_kind(EventKind.EXPIRED)}
        assert old.isdisjoint(i.id for i in ready(world.store, preset.id))
        assert 2 == len(ready(world.store, preset.id))


class TestNewVersion:
    def test_old_version_drains(self, store_factory: StoreFactory) -> None:
        """A new active version deletes the old pool and fills the new one."""
        world = make_world(store_factory())
        template = new_template(world.store)
        old = new_preset(world.store, template, desired=2)
        world.settle()
        v2 = new_version(world.store, template)
        new = new_preset(world.store, v2, desired=1)

        stats = world.cycle()
        world.settle()

        assert (2, 1) == (stats.deleted, stats.created)
        assert [] == pooled(world.store, old.id)
        assert [v2.active_version_id] == [
            i.template_version_id for i in ready(world.store, new.id)
        ]

    def test_pending_creations_are_canceled(self, store_factory: StoreFactory) -> None:
        """Queued, unstarted builds of the old version are canceled and orphan-deleted."""
        world = make_world(store_factory())
        template = new_template(world.store)
        old = new_preset(world.store, template, desired=2)
        world.reconciler.reconcile_all()  # submitted, never started
        queued = [r.build_id for r in world.provisioner.submitted]
        for build_id in queued:
            world.provisioner.drop(build_id)
        new_preset(world.store, new_version(world.store, template), desired=1)

        stats = world.reconciler.reconcile_all()

        assert 2 == stats.canceled
        assert [BuildStatus.CANCELED] * 2 == [
            world.store.get_build(b).status for b in queued
        ]
        orphans = [r for r in world.provisioner.submitted if r.orphan]
        assert [Transition.DELETE] * 2 == [r.transition for r in orphans]
        assert {i.id for i in pooled(world.store, old.id)} == {
            r.instance_id for r in orphans
        }
        world.provisioner.process()
        assert [] == pooled(world.store, old.id)
        assert 0 == world.reconciler.reconcile_all().canceled

    def test_started_builds_are_not_canceled(self, store_factory: StoreFactory) -> None:
        """A build the provisioner already started finishes and is then drained."""
        world = make_world(store_factory())
        template = new_template(world.store)
        old = new_preset(world.store, template, desired=1)
        world.reconciler.reconcile_all()
        [request] = world.provisioner.submitted
        world.store.build_started(request.build_id, now=world.clock.now())
        new_version(world.store, template)

        stats = world.reconciler.reconcile_all()
        world.clock.advance(BUILD_TIME)
        world.provisioner.process()
        drain = world.cycle()
        world.settle(1)

        assert 0 == stats.canceled
        assert 1 == drain.deleted
        assert [] == pooled(world.store, old.id)

    @pytest.mark.parametrize("change", ["deprecated", "deleted"])
    def test_retired_template_drains(
        self, store_factory: StoreFactory, change: str
    ) -> None:
        """A deprecated or deleted template's pools are deleted, none created."""
        world = make_world(store_factory())
        template = new_template(world.store)
        preset = new_preset(world.store, template, desired=2)
        world.settle()
        world.store.put_template(
            attrs.evolve(
                template,
                deprecated=change == "deprecated",
                deleted=change == "deleted",
            )
        )

        stats = world.cycle()
        world.settle()

        assert (2, 0) == (stats.deleted, stats.created)
        assert [] == pooled(world.store, preset.id)


class TestBackoff:
    def test_linear_backoff(self, store_factory: StoreFactory) -> None:
        """Each failure adds one interval: until = last_build_at + n x interval."""
        world = make_world(store_factory(), hard_limit=0)
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(2)
        minute = timedelta(minutes=1)

        world.cycle()  # creates A at T0; it fails at T0+30s
        first = world.snapshot().backoffs
        backing_off = world.cycle(advance=timedelta(0))
        world.clock.set(T0 + minute)
        at_until = world.cycle(advance=timedelta(0))
        world.clock.set(T0 + minute + timedelta(seconds=1))
        retry = world.cycle()  # creates B at T0+61s; it fails too
        second = world.snapshot().backoffs
        world.clock.set(T0 + timedelta(seconds=61) + 2 * minute)
        still = world.cycle(advance=timedelta(0))
        world.clock.advance(timedelta(seconds=1))
        resumed = world.cycle()
        world.settle(1)

        assert (Backoff(preset_id=preset.id, num_failed=1, last_build_at=T0),) == first
        assert (
            Backoff(
                preset_id=preset.id,
                num_failed=2,
                last_build_at=T0 + timedelta(seconds=61),
            ),
        ) == second
        assert [0, 0, 1, 0, 1] == [
            s.created for s in (backing_off, at_until, retry, still, resumed)
        ]
        assert [
            f"until {T0 + minute}",
            f"until {T0 + minute}",
            f"until {T0 + timedelta(seconds=61) + 2 * minute}",
        ] == [e.detail for e in world.of_kind(EventKind.BACKOFF)]
        assert {preset.id} == {e.preset_id for e in world.of_kind(EventKind.BACKOFF)}
        assert 1 == len(ready(world.store, preset.id))
        assert () == world.snapshot().backoffs

    def test_an_old_failure_does_not_make_every_pass_work_out_the_preset_again(
        self, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A failed instance kept in the pool counts toward the backoff for the
        look-back only; once out of it, the preset's plan holds again from
        pass to pass instead of being worked out on every one.
        """
        world = make_world(store_factory(), backoff_lookback=timedelta(hours=1))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)
        world.cycle()  # creates A at T0; it fails at T0+30s
        world.clock.set(T0 + timedelta(hours=2))
        world.settle()  # B replaces it; A stays, failed
        assert 1 == len(ready(world.store, preset.id))
        assert 2 == len(pooled(world.store, preset.id))
        worked_out: list[datetime] = []
        derive_preset = prebuilds._pool.derive_preset

        def counting(*args: Any, **kwargs: Any) -> Any:
            worked_out.append(kwargs["now"])
            return derive_preset(*args, **kwargs)

        monkeypatch.setattr(prebuilds._reconciler, "derive_preset", counting)
        stats = [world.cycle(advance=timedelta(seconds=15)) for _ in range(4)]

        assert [0, 0, 0, 0] == [s.created + s.deleted for s in stats]
        assert [] == worked_out

    def test_backoff_action_matches_the_calculator(
        self, store_factory: StoreFactory
    ) -> None:
        """The store's backoff row gives the calculator the expected deadline."""
        world = make_world(store_factory(), hard_limit=0)
        preset = new_preset(world.store, new_template(world.store), desired=3)
        world.provisioner.fail_next(3)
        world.cycle()

        snapshot = world.snapshot().filter_by_preset(preset.id, now=world.clock.now())
        [action] = calculate_actions(
            snapshot, now=world.clock.now(), backoff_interval=timedelta(minutes=1)
        )

        assert ActionType.BACKOFF == action.action_type
        assert T0 + 3 * timedelta(minutes=1) == action.backoff_until

    def test_flaky_provisioner_still_fills(self, store_factory: StoreFactory) -> None:
        """With half the builds failing, the pool reaches its size, backing off."""
        world = make_world(store_factory(), hard_limit=0, failure_rate=0.5)
        preset = new_preset(world.store, new_template(world.store), desired=3)

        for _ in range(100):
            world.cycle()
            if len(ready(world.store, preset.id)) == 3:
                break

        assert 3 == len(ready(world.store, preset.id))
        assert world.of_kind(EventKind.BACKOFF)
        failed = [
            b for b in world.store.list_builds() if b.status is BuildStatus.FAILED
        ]
        assert failed


class TestHardLimit:
    def _limited(self, store: Any) -> tuple[World, uuid.UUID, uuid.UUID]:
        """A preset with one good instance and then three failed creations."""
        world = make_world(store, hard_limit=3, backoff_interval=timedelta(0))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.settle(1)
        [good] = ready(world.store, preset.id)
        world.store.put_preset(attrs.evolve(preset, desired_instances=2))
        world.provisioner.fail_next(3)
        for _ in range(3):
            world.cycle()
        return world, preset.id, good.id

    def test_hard_limit(self, store_factory: StoreFactory) -> None:
        """After hard_limit failures in a row creation stops; the event comes once."""
        world, preset_id, _ = self._limited(store_factory())
        submitted = len(world.provisioner.submitted)

        stats = [world.cycle(advance=timedelta(minutes=10)) for _ in range(3)]

        assert PresetStatus.HARD_LIMITED == world.store.read_preset(preset_id).status
        assert [0, 0, 0] == [s.created for s in stats]
        assert submitted == len(world.provisioner.submitted)
        assert [preset_id] == [
            e.preset_id for e in world.of_kind(EventKind.HARD_LIMITED)
        ]
        assert preset_id in world.snapshot().hard_limited

    def test_deletes_go_on(self, store_factory: StoreFactory) -> None:
        """A hard-limited preset still deletes its expired instances."""
        world, preset_id, good = self._limited(store_factory())
        world.cycle()
        world.store.invalidate_preset(preset_id, at=world.clock.now())

        stats = world.cycle()

        assert (1, 0) == (stats.deleted, stats.created)
        assert [good] == [e.instance_id for e in world.of_kind(EventKind.EXPIRED)]
        assert world.store.get_instance(good).deleted

    def test_new_version_recovers(self, store_factory: StoreFactory) -> None:
        """The presets of a new version are healthy and fill."""
        world, preset_id, _ = self._limited(store_factory())
        world.cycle()
        template = world.store.get_template(
            world.store.read_preset(preset_id).config.template_id
        )
        fresh = new_preset(world.store, new_version(world.store, template), desired=1)

        world.settle()

        assert PresetStatus.HEALTHY == world.store.read_preset(fresh.id).status
        assert 1 == len(ready(world.store, fresh.id))

    def test_deleting_failed_instances_lifts_the_limit(
        self, store_factory: StoreFactory
    ) -> None:
        """delete_failed removes the evidence; the preset is healthy and fills again."""
        world, preset_id, good = self._limited(store_factory())
        world.cycle()
        failed = [
            i.id
            for i in pooled(world.store, preset_id)
            if i.latest_status is BuildStatus.FAILED
        ]

        count = world.reconciler.delete_failed(preset_id=preset_id)
        world.clock.advance(timedelta(minutes=1))
        world.provisioner.process()
        world.settle()

        assert 3 == count == len(failed)
        assert all(world.store.get_instance(i).deleted for i in failed)
        assert PresetStatus.HEALTHY == world.store.read_preset(preset_id).status
        assert 2 == len(ready(world.store, preset_id))
        assert world.store.get_instance(good).ready

    def test_delete_failed_leaves_healthy_instances(
        self, store_factory: StoreFactory
    ) -> None:
        """Only instances whose latest build failed are deleted."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()

        assert 0 == world.reconciler.delete_failed()
        assert 2 == len(ready(world.store, preset.id))


class TestValidationFailure:
    def test_rejected_preset_stops_creating(self, store_factory: StoreFactory) -> None:
        """A 400 from the provisioner marks the preset and stops its creation."""
        world = make_world(store_factory())
        template = new_template(world.store)
        bad = new_preset(world.store, template, desired=2)
        good = new_preset(world.store, template, desired=1)
        world.provisioner.reject(bad.id)

        first = world.cycle()
        later = [world.cycle(advance=timedelta(minutes=10)) for _ in range(3)]

        assert 2 == first.created  # one of bad (rejected), one of good
        assert [0, 0, 0] == [s.created for s in later]
        assert PresetStatus.VALIDATION_FAILED == world.store.read_preset(bad.id).status
        [event] = world.of_kind(EventKind.VALIDATION_FAILED)
        [instance] = pooled(world.store, bad.id)
        assert (bad.id, instance.id) == (event.preset_id, event.instance_id)
        [build] = world.store.list_builds(instance_id=instance.id)
        assert (BuildStatus.FAILED, "validation") == (build.status, build.error_kind)
        assert 1 == len(ready(world.store, good.id))

    def test_a_new_version_creates_again(self, store_factory: StoreFactory) -> None:
        """The fixed preset of a new version fills; the old one stays marked."""
        world = make_world(store_factory())
        template = new_template(world.store)
        bad = new_preset(world.store, template, desired=1)
        world.provisioner.reject(bad.id)
        world.settle()
        fixed = new_preset(world.store, new_version(world.store, template), desired=1)

        world.settle()

        assert 1 == len(ready(world.store, fixed.id))
        assert PresetStatus.HEALTHY == world.store.read_preset(fixed.id).status
        assert PresetStatus.VALIDATION_FAILED == world.store.read_preset(bad.id).status


class TestPause:
    def test_pause_stops_everything(self, store_factory: StoreFactory) -> None:
        """While paused no build is written or submitted, whatever is due."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()
        world.claim(preset.id)
        world.store.invalidate_preset(preset.id, at=world.clock.now())
        world.reconciler.pause()
        builds = world.store.list_builds()
        submitted = len(world.provisioner.submitted)

        stats = [world.cycle(advance=timedelta(hours=1)) for _ in range(3)]

        assert world.store.is_paused()
        assert [True] * 3 == [s.paused for s in stats]
        assert [0] * 3 == [s.created + s.deleted for s in stats]
        assert builds == world.store.list_builds()
        assert submitted == len(world.provisioner.submitted)

    def test_resume_restarts(self, store_factory: StoreFactory) -> None:
        """After resume the pool is reconciled again."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.reconciler.pause()
        world.settle()
        world.reconciler.resume()

        stats = world.cycle()

        assert not world.store.is_paused()
        assert (False, 2) == (stats.paused, stats.created)
        assert 2 == len(ready(world.store, preset.id))
        assert [EventKind.PAUSED, EventKind.RESUMED] == [
            k
            for k in world.events.kinds()
            if k in {EventKind.PAUSED, EventKind.RESUMED}
        ]

    def test_pause_by_another_replica(self, store_factory: StoreFactory) -> None:
        """A pause written to the store by anyone stops this reconciler."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=2)
        world.store.set_paused(True)

        stats = world.cycle()

        assert (True, 0) == (stats.paused, stats.created)
        assert [] == world.store.list_builds()

    def test_stuck_builds_wait_while_paused(self, store_factory: StoreFactory) -> None:
        """Pausing also stops the stuck-build timeout."""
        world = make_world(store_factory(), build_timeout=timedelta(minutes=10))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.stall(preset.id)
        world.cycle()
        world.reconciler.pause()

        world.cycle(advance=timedelta(hours=1))

        [build] = world.store.list_builds()
        assert BuildStatus.RUNNING == build.status
        assert [] == world.of_kind(EventKind.STUCK)


class CreateFails(DelegatingStore):
    """A store whose create_prebuild raises for one preset."""

    def __init__(self, inner: Any, preset_id: uuid.UUID) -> None:
        super().__init__(inner)
        self.preset_id = preset_id

    def create_prebuild(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        if preset_id == self.preset_id:
            msg = "a bug in the host's store"
            raise RuntimeError(msg)
        return super().create_prebuild(preset_id, now=now, name=name, lease=lease)


class VanishingPreset(MemoryStore):
    """A MemoryStore on which one preset is gone by the time it is created."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: uuid.UUID | None = None
        self.groups = 0

    def create_prebuilds(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        if preset_id == self.gone:
            raise PresetNotFoundError(preset_id)
        return super().create_prebuilds(preset_id, now=now, names=names, lease=lease)

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[uuid.UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        self.groups += 1
        for preset_id, _ in groups:
            if preset_id == self.gone:
                raise PresetNotFoundError(preset_id)
        return super().create_prebuilds_grouped(groups, now=now, lease=lease)


class TestPresetIsolation:
    def test_a_preset_gone_from_a_group_is_its_own_error(self) -> None:
        """
        A group of creations that names a preset gone since the read is
        created one preset at a time: that preset's error, the rest fill.
        """
        store = VanishingPreset()
        template = new_template(store)
        presets = [new_preset(store, template, desired=2) for _ in range(3)]
        store.gone = presets[1].id
        world = make_world(store, submit_timeout=60.0, max_workers=3)

        stats = world.cycle()

        assert (1, 4, None) == (stats.presets_failed, stats.created, stats.error)
        assert 1 == store.groups
        assert [presets[1].id] == [
            e.preset_id for e in world.of_kind(EventKind.PRESET_ERROR)
        ]
        assert {p.id for p in presets} - {presets[1].id} == {
            i.preset_id for i in store.list_instances()
        }
        world.reconciler.stop()

    @pytest.mark.parametrize("workers", [1, 3])
    def test_a_failing_preset_does_not_stop_the_others(
        self, store_factory: StoreFactory, workers: int
    ) -> None:
        """A preset that raises is counted and reported; the rest fill."""
        inner = store_factory()
        template = new_template(inner)
        presets = [new_preset(inner, template, desired=2) for _ in range(3)]
        broken = min(p.id for p in presets)  # reconciled first
        world = make_world(CreateFails(inner, broken), max_workers=workers)

        stats = world.cycle()
        world.settle(1)

        assert (1, 4, None) == (stats.presets_failed, stats.created, stats.error)
        assert {broken} == {e.preset_id for e in world.of_kind(EventKind.PRESET_ERROR)}
        assert (
            "a bug in the host's store"
            in world.of_kind(EventKind.PRESET_ERROR)[0].detail
        )
        for preset in presets:
            expected = 0 if preset.id == broken else 2
            assert expected == len(ready(inner, preset.id))
        assert 0 == world.reconciler.pass_errors


class TestStuckBuilds:
    def test_stuck_build_is_failed_and_replaced(
        self, store_factory: StoreFactory
    ) -> None:
        """A build older than build_timeout is failed, then replaced next pass."""
        world = make_world(store_factory(), build_timeout=timedelta(minutes=10))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.stall(preset.id)
        world.cycle()  # created at T0, started, never finished
        world.clock.set(T0 + timedelta(minutes=10))
        waiting = world.cycle(advance=timedelta(0))
        world.clock.set(T0 + timedelta(minutes=10, seconds=1))
        world.provisioner.unstall(preset.id)

        failing = world.cycle(advance=timedelta(0))
        stats = world.cycle()

        [stuck] = pooled(world.store, preset.id)[:1]
        assert (0, 0, 1) == (waiting.created, failing.created, stats.created)
        [event] = world.of_kind(EventKind.STUCK)
        assert (preset.id, stuck.id) == (event.preset_id, event.instance_id)
        [build] = world.store.list_builds(instance_id=stuck.id)
        assert (BuildStatus.FAILED, "timeout") == (build.status, build.error_kind)
        assert T0 + timedelta(minutes=10, seconds=1) == build.finished_at
        [replacement] = ready(world.store, preset.id)
        assert stuck.id != replacement.id

    def test_no_timeout(self, store_factory: StoreFactory) -> None:
        """With build_timeout None builds are never failed for slowness."""
        world = make_world(store_factory(), build_timeout=None)
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.stall(preset.id)

        for _ in range(3):
            world.cycle(advance=timedelta(days=1))

        assert [BuildStatus.RUNNING] == [b.status for b in world.store.list_builds()]


class TestSchedules:
    def test_desired_follows_the_schedule(self, store_factory: StoreFactory) -> None:
        """Weekdays 09-17 in Tokyo want 3, other times 1, as the clock moves."""
        world = make_world(store_factory())
        preset = new_preset(
            world.store,
            new_template(world.store),
            desired=1,
            scheduling_timezone="Asia/Tokyo",
            schedules=(PrebuildSchedule(cron="* 9-17 * * 1-5", instances=3),),
        )
        sizes = []
        # Monday 09:00 JST, Monday 18:00 JST, Saturday 10:00 JST, Monday again.
        for at in (
            T0,
            T0 + timedelta(hours=9),
            T0 + timedelta(days=5, hours=1),
            T0 + timedelta(days=7, hours=8),
        ):
            world.clock.set(at)
            world.settle(2)
            sizes.append(len(ready(world.store, preset.id)))

        assert [3, 1, 1, 3] == sizes
        assert 2 == len(world.of_kind(EventKind.DELETED))

    def test_without_zone_the_base_count_applies(
        self, store_factory: StoreFactory
    ) -> None:
        """Schedules without a time zone are not evaluated."""
        world = make_world(store_factory())
        preset = new_preset(
            world.store,
            new_template(world.store),
            desired=1,
            schedules=(PrebuildSchedule(cron="* * * * *", instances=3),),
        )

        world.settle()

        assert 1 == len(ready(world.store, preset.id))


class HangingProvisioner:
    """Delegates to a FakeProvisioner, but submit blocks for one preset."""

    def __init__(self, inner: FakeProvisioner, preset_id: uuid.UUID) -> None:
        self.inner = inner
        self.preset_id = preset_id
        self.release = threading.Event()
        self.hung = 0

    def submit(self, request: BuildRequest) -> None:
        if request.preset_id == self.preset_id:
            self.hung += 1
            self.release.wait()
            return
        self.inner.submit(request)


class TestProvisionerFaults:
    def test_submit_raises(self, store_factory: StoreFactory) -> None:
        """A raising provisioner fails the build; the preset backs off; others go on."""
        world = make_world(store_factory())
        template = new_template(world.store)
        presets = sorted(
            (new_preset(world.store, template, desired=2) for _ in range(2)),
            key=lambda p: p.id,
        )
        world.provisioner.raise_next(ProvisionerError("provisioner down"))

        first = world.cycle()
        second = world.cycle()

        assert (3, None) == (first.created, first.error)
        [failed] = world.of_kind(EventKind.FAILED)
        assert presets[0].id == failed.preset_id
        build = world.store.list_builds(instance_id=failed.instance_id)[0]
        assert (BuildStatus.FAILED, "provisioner") == (build.status, build.error_kind)
        assert [presets[0].id] == [
            e.preset_id for e in world.of_kind(EventKind.BACKOFF)
        ]
        assert 0 == second.created
        assert 2 == len(ready(world.store, presets[1].id))
        world.clock.advance(timedelta(minutes=2))
        world.settle(2)
        assert 2 == len(ready(world.store, presets[0].id))

    @pytest.mark.parametrize("workers", [1, 2])
    def test_submit_hangs(self, store_factory: StoreFactory, workers: int) -> None:
        """A submit past submit_timeout fails the build; others are still submitted."""
        store = store_factory()
        template = new_template(store)
        presets = sorted(
            (new_preset(store, template, desired=2) for _ in range(2)),
            key=lambda p: p.id,
        )
        world = make_world(store, submit_timeout=0.05, max_workers=workers)
        hanging = HangingProvisioner(world.provisioner, presets[0].id)
        world.reconciler._provisioner = hanging
        try:
            first = world.cycle()
            second = world.cycle()
        finally:
            hanging.release.set()
            world.reconciler.stop(timeout=5)

        assert (3, None) == (first.created, first.error)
        assert 1 == hanging.hung  # the preset stopped creating after the failure
        [failed] = world.of_kind(EventKind.FAILED)
        build = world.store.list_builds(instance_id=failed.instance_id)[0]
        assert (presets[0].id, BuildStatus.FAILED, "timeout") == (
            failed.preset_id,
            build.status,
            build.error_kind,
        )
        assert [presets[0].id] == [
            e.preset_id for e in world.of_kind(EventKind.BACKOFF)
        ]
        assert (0, None) == (second.created, second.error)
        assert 2 == len(ready(world.store, presets[1].id))


class SnapshotFails(DelegatingStore):
    """A store whose next *n* reads of the pool raise StoreError."""

    def __init__(self, inner: Any, n: int = 1) -> None:
        super().__init__(inner)
        self.left = n

    def read_pool(self) -> PoolFacts:
        if self.left:
            self.left -= 1
            msg = "database is locked"
            raise StoreError(msg)
        return super().read_pool()


class DeleteFails(DelegatingStore):
    """A store whose first delete_prebuild raises StoreError."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.failed = False

    def delete_prebuild(
        self, instance_id: uuid.UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        if not self.failed:
            self.failed = True
            msg = "connection lost"
            raise StoreError(msg)
        return super().delete_prebuild(instance_id, now=now, lease=lease)


class TakeOverOnSubmit:
    """
    A provisioner that, at its *at*-th submit, lets the reconciler's lease
    expire on the store's clock and takes the leadership over (held until
    :meth:`give_back`).
    """

    def __init__(self, store: MemoryStore, clock: FakeClock, at: int) -> None:
        self.store, self.clock, self.at = store, clock, at
        self.submits = 0
        self.lock = threading.Lock()
        self.scope: Any = None

    def submit(self, request: BuildRequest) -> None:
        with self.lock:
            self.submits += 1
            if self.submits == self.at:
                self.clock.advance(timedelta(minutes=2))
                self.scope = self.store.leader()
                assert self.scope.__enter__()

    def give_back(self) -> None:
        self.scope.__exit__(None, None, None)


class CountsCreates(DelegatingStore):
    """Counts create_prebuild calls, and those made once *after* is set."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.after = threading.Event()
        self.calls = self.calls_after = 0

    def create_prebuild(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        self.calls += 1
        self.calls_after += self.after.is_set()
        return super().create_prebuild(preset_id, now=now, name=name, lease=lease)


class TestLeadershipLost:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_the_pass_stops_at_the_first_refused_write(self, workers: int) -> None:
        """
        Once the lease is taken over, the pass's next write is refused: the
        pass stops, every worker before its next write, nothing written
        after the takeover, every creation before it submitted; one pass
        error, one LEADERSHIP_LOST, stats.error set.
        """
        lease_clock = FakeClock()
        inner = MemoryStore(clock=lease_clock, lease_ttl=timedelta(minutes=1))
        template = new_template(inner)
        presets = [new_preset(inner, template, desired=2) for _ in range(6)]
        store = CountsCreates(inner)
        provisioner = TakeOverOnSubmit(inner, lease_clock, at=2)
        world = make_world(store, provisioner=provisioner, max_workers=workers)
        original_submit = provisioner.submit

        def submit(request: BuildRequest) -> None:
            original_submit(request)
            if provisioner.submits == provisioner.at:
                store.after.set()

        provisioner.submit = submit  # type: ignore[method-assign]

        stats = world.reconciler.reconcile_all()
        provisioner.give_back()

        created = len(inner.list_instances())
        assert created < 6 * 2
        assert provisioner.submits == created  # each creation submitted, no other
        assert store.calls_after <= workers  # one refused write per worker at most
        assert "LeadershipLostError" in (stats.error or "")
        assert 1 == world.reconciler.pass_errors
        assert [EventKind.LEADERSHIP_LOST] == [
            e.kind
            for e in world.events.events
            if e.kind in {EventKind.LEADERSHIP_LOST, EventKind.PASS_ERROR}
        ]
        assert len(world.of_kind(EventKind.CREATED)) == created
        assert {p.id for p in presets} >= {i.preset_id for i in inner.list_instances()}

        again = world.reconciler.reconcile_all()  # the next pass leads and fills
        assert (again.leader, again.error) == (True, None)
        assert len(inner.list_instances()) == 6 * 2

    @pytest.mark.parametrize("workers", [1, 2])
    def test_batches_handed_over_before_the_loss_are_submitted(
        self, workers: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        Grouped creations with submits on threads (pipelined to the end of
        the pass): the lease taken over at the second submit stops the pass
        at its next write (a group's creation, or at the latest the mark of
        the submitted builds); every creation committed before is still
        submitted (its build would otherwise hold its place until the build
        timeout) and reported, and the next pass fills.
        """
        monkeypatch.setattr(prebuilds._reconciler, "_GROUP", 2)  # a group per preset
        lease_clock = FakeClock()
        store = MemoryStore(clock=lease_clock, lease_ttl=timedelta(minutes=1))
        template = new_template(store)
        for _ in range(6):
            new_preset(store, template, desired=2)
        provisioner = TakeOverOnSubmit(store, lease_clock, at=2)
        world = make_world(
            store, provisioner=provisioner, max_workers=workers, submit_timeout=60.0
        )

        stats = world.reconciler.reconcile_all()
        provisioner.give_back()

        created = len(store.list_instances())
        assert created >= 2  # how many more: how far the pass got meanwhile
        assert "LeadershipLostError" in (stats.error or "")
        assert provisioner.submits == created  # each creation submitted, no other
        assert len(world.of_kind(EventKind.CREATED)) == created
        assert [EventKind.LEADERSHIP_LOST] == [
            e.kind
            for e in world.events.events
            if e.kind in {EventKind.LEADERSHIP_LOST, EventKind.PASS_ERROR}
        ]
        again = world.reconciler.reconcile_all()  # the next pass leads and fills
        assert (again.leader, again.error) == (True, None)
        assert len(store.list_instances()) == 6 * 2
        world.reconciler.stop()


class TestStoreFaults:
    def test_snapshot_fails(self, store_factory: StoreFactory) -> None:
        """A store failure ends the pass with an error; the next pass is clean."""
        inner = store_factory()
        preset = new_preset(inner, new_template(inner), desired=2)
        world = make_world(SnapshotFails(inner))

        failed = world.cycle()
        clean = world.cycle()

        assert failed.error is not None
        assert "database is locked" in failed.error
        assert (0, True) == (failed.created, failed.leader)
        assert (None, 2) == (clean.error, clean.created)
        assert 1 == world.reconciler.pass_errors
        assert [None] == [e.preset_id for e in world.of_kind(EventKind.PASS_ERROR)]
        assert 2 == len(live(inner, preset.id))
        check_integrity(inner)

    def test_delete_fails_mid_pass(self, store_factory: StoreFactory) -> None:
        """A delete that raises ends the pass; nothing is half-written; then it goes on."""
        inner = store_factory()
        preset = new_preset(inner, new_template(inner), desired=3)
        world = make_world(DeleteFails(inner))
        world.settle()
        inner.put_preset(attrs.evolve(preset, desired_instances=0))

        failed = world.cycle()
        check_integrity(inner)
        clean = world.cycle()
        world.settle(1)

        assert failed.error is not None
        assert "connection lost" in failed.error
        assert 1 == world.reconciler.pass_errors
        assert (None, 3) == (clean.error, clean.deleted)
        assert [] == pooled(inner, preset.id)
        check_integrity(inner)

    def test_a_store_error_in_parallel_mode(self, store_factory: StoreFactory) -> None:
        """With several workers a store failure still ends the pass with an error."""
        inner = store_factory()
        template = new_template(inner)
        for _ in range(3):
            new_preset(inner, template, desired=1)
        world = make_world(DeleteFails(inner), max_workers=3)
        world.settle()
        for preset_id in {i.preset_id for i in inner.list_instances()}:
            inner.invalidate_preset(preset_id, at=world.clock.now())

        stats = world.cycle()
        world.settle()

        assert stats.error is not None
        assert 1 == world.reconciler.pass_errors
        check_integrity(inner)
        assert 3 == sum(
            len(ready(inner, p)) for p in {i.preset_id for i in inner.list_instances()}
        )


class TestInvalidPresets:
    @pytest.mark.parametrize(
        ("field", "value", "schedules"),
        [
            ("desired_instances", -1, ()),
            ("scheduling_timezone", "Mars/Olympus_Mons", ()),
            ("cron", "not a cron", (PrebuildSchedule(cron="* 9 * * *", instances=1),)),
        ],
    )
    def test_invalid_preset_is_skipped(
        self,
        store_factory: StoreFactory,
        field: str,
        value: object,
        schedules: tuple[PrebuildSchedule, ...],
    ) -> None:
        """A preset made invalid in the database is reported and skipped."""
        world = make_world(store_factory())
        template = new_template(world.store)
        bad = new_preset(
            world.store,
            template,
            desired=1,
            schedules=schedules,
            scheduling_timezone="UTC" if schedules else "",
        )
        good = new_preset(world.store, template, desired=2)
        corrupt_preset(world.store, bad.id, field, value)

        stats = world.cycle()
        world.settle(1)

        assert (2, 1, 1, 2) == (
            stats.presets_total,
            stats.presets_invalid,
            stats.presets_reconciled,
            stats.created,
        )
        event = world.of_kind(EventKind.INVALID_PRESET)[0]
        assert bad.id == event.preset_id
        assert event.detail.startswith(f"{field}=")
        assert [] == pooled(world.store, bad.id)
        assert 2 == len(ready(world.store, good.id))
        with pytest.raises(InvalidInputError):
            world.store.read_preset(bad.id)


class TestReplacements:
    def test_counted_per_preset(self, store_factory: StoreFactory) -> None:
        """Each tracked replacement counts for the claimed instance's preset."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()
        first = world.claim(preset.id)
        second = world.claim(preset.id)
        change = [
            ResourceReplacement(
                resource="docker_container.main",
                paths=("env",),
            )
        ]

        world.reconciler.track_resource_replacement(first, uuid.uuid4(), change)
        world.reconciler.track_resource_replacement(second, uuid.uuid4(), change)

        assert {preset.id: 2} == dict(world.reconciler.replacements)

    def test_unknown_instance_never_raises(self, store_factory: StoreFactory) -> None:
        """Tracking a replacement of an unknown instance is logged and ignored."""
        world = make_world(store_factory())

        world.reconciler.track_resource_replacement(uuid.uuid4(), uuid.uuid4(), [])

        assert {} == dict(world.reconciler.replacements)
        assert [] == world.of_kind(EventKind.REPLACEMENT)


class TestConstructor:
    @pytest.mark.parametrize(
        ("field", "kwargs"),
        [
            ("interval", {"interval": timedelta(0)}),
            ("backoff_interval", {"backoff_interval": timedelta(seconds=-1)}),
            ("backoff_lookback", {"backoff_lookback": timedelta(seconds=-1)}),
            ("hard_limit", {"hard_limit": -1}),
            ("build_timeout", {"build_timeout": timedelta(0)}),
            ("max_workers", {"max_workers": 0}),
        ],
    )
    def test_rejects_bad_settings(self, field: str, kwargs: dict[str, Any]) -> None:
        """Bad settings raise InvalidInputError naming the argument."""
        from prebuilds.stores import MemoryStore

        store = MemoryStore()
        clock = FakeClock()

        with pytest.raises(InvalidInputError) as info:
            StoreReconciler(store, FakeProvisioner(store, clock), clock=clock, **kwargs)

        assert field == info.value.field

    def test_one_clock_read_per_pass(self, store_factory: StoreFactory) -> None:
        """
        A pass reads the clock once: its facts are derived, its builds
        written and its events stamped at that one instant.
        """
        store = store_factory()
        template = new_template(store)
        busy = new_preset(store, template, desired=2, ttl=timedelta(minutes=10))
        new_preset(store, template, desired=1)
        reads: list[datetime] = []
        clock = FakeClock(T0)

        class Counting:
            def now(self) -> datetime:
                reads.append(clock.now())
                return clock.now()

        world = make_world(store, clock=clock)
        world.reconciler._clock = Counting()
        world.provisioner.fail_next()
        for _ in range(4):
            before = len(reads)
            world.cycle(timedelta(minutes=6))
            assert 1 == len(reads) - before
        at = {e.at for e in world.events.events}
        assert at <= set(reads)
        assert world.of_kind(EventKind.EXPIRED)
        assert {i.created_at for i in store.list_instances(preset_id=busy.id)} <= set(
            reads
        )

    def test_snapshot_state(self, store_factory: StoreFactory) -> None:
        """snapshot_state reads the given store at the clock's now."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.settle()

        snapshot = world.reconciler.snapshot_state(world.store)

        assert [preset.id] == [p.id for p in snapshot.presets]
        assert [PREBUILDS_OWNER_ID] == [
            world.store.get_instance(r.id).owner_id for r in snapshot.running
        ]
        assert running(world.store, preset.id)[0].id == snapshot.running[0].id


class StatusFails(DelegatingStore):
    """A store whose set_preset_status raises *error*."""

    def __init__(self, inner: Any, error: Exception) -> None:
        super().__init__(inner)
        self.error = error

    def set_preset_status(
        self, preset_id: uuid.UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        raise self.error


class CreateReturnsNone(DelegatingStore):
    """A store whose create_prebuild finds the preset inactive (a race)."""

    def create_prebuild(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        return None


class TestMoreFaults:
    def _limited(self, inner: Any, error: Exception) -> World:
        world = make_world(
            StatusFails(inner, error), hard_limit=1, backoff_interval=timedelta(0)
        )
        new_preset(inner, new_template(inner), desired=1)
        world.provisioner.fail_next()
        world.cycle()
        return world

    def test_status_write_fails_with_a_bug(self, store_factory: StoreFactory) -> None:
        """A non-store error while recording the hard limit fails that preset only."""
        world = self._limited(store_factory(), RuntimeError("bug"))

        stats = world.cycle()

        assert (1, None) == (stats.presets_failed, stats.error)
        assert 1 == len(world.of_kind(EventKind.PRESET_ERROR))

    def test_status_write_fails_in_the_store(self, store_factory: StoreFactory) -> None:
        """A StoreError while recording the hard limit ends the pass."""
        world = self._limited(store_factory(), StoreError("read-only"))

        stats = world.cycle()

        assert stats.error is not None
        assert 1 == world.reconciler.pass_errors

    def test_preset_retired_between_snapshot_and_create(
        self, store_factory: StoreFactory
    ) -> None:
        """When the store refuses a creation (inactive meanwhile) nothing is submitted."""
        inner = store_factory()
        new_preset(inner, new_template(inner), desired=3)
        world = make_world(CreateReturnsNone(inner))

        stats = world.cycle()

        assert (0, None) == (stats.created, stats.error)
        assert [] == world.provisioner.submitted

    def test_every_submit_hangs(self, store_factory: StoreFactory) -> None:
        """With every preset's submit hung in parallel, each build fails; the pass ends."""
        store = store_factory()
        template = new_template(store)
        presets = [new_preset(store, template, desired=1) for _ in range(2)]
        world = make_world(store, submit_timeout=0.05, max_workers=2)
        release = threading.Event()

        class Hung:
            def submit(self, request: BuildRequest) -> None:
                release.wait()

        world.reconciler._provisioner = Hung()
        try:
            stats = world.reconciler.reconcile_all()
        finally:
            release.set()
            world.reconciler.stop(timeout=5)

        assert (2, None) == (stats.created, stats.error)
        assert {p.id for p in presets} == {
            e.preset_id for e in world.of_kind(EventKind.FAILED)
        }
        assert [BuildStatus.FAILED] * 2 == [b.status for b in world.store.list_builds()]

    def test_stop_gives_up_after_its_timeout(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """stop(timeout) returns after the timeout when a pass is stuck, logging it."""
        store = store_factory()
        new_preset(store, new_template(store), desired=1)
        entered, release = threading.Event(), threading.Event()

        class Blocking:
            def submit(self, request: BuildRequest) -> None:
                entered.set()
                release.wait()

        world = make_world(store, provisioner=Blocking())
        runner = threading.Thread(target=world.reconciler.run, daemon=True)
        runner.start()
        try:
            assert entered.wait(10)
            world.reconciler.stop(timeout=0.01)
            still_running = runner.is_alive()
        finally:
            release.set()
            runner.join(10)

        assert still_running
        assert not runner.is_alive()
        assert any("did not stop within" in r.getMessage() for r in caplog.records)


class TestFakes:
    def test_clock(self) -> None:
        """FakeClock moves only when told, forward by advance, anywhere by set."""
        clock = FakeClock(T0)

        moved = clock.advance(timedelta(minutes=5))
        clock.set(T0 - timedelta(days=1))

        assert T0 + timedelta(minutes=5) == moved
        assert T0 - timedelta(days=1) == clock.now()

    @pytest.mark.parametrize(
        ("call", "field"),
        [
            (lambda: FakeClock(T0).advance(timedelta(seconds=-1)), "delta"),
            (lambda: FakeClock(datetime(2024, 1, 1)), "start"),  # noqa: DTZ001
            (lambda: FakeClock(T0).set(datetime(2024, 1, 1)), "when"),  # noqa: DTZ001
        ],
    )
    def test_clock_rejects(self, call: Any, field: str) -> None:
        """Going back by advance and naive times raise InvalidInputError."""
        with pytest.raises(InvalidInputError) as info:
            call()

        assert field == info.value.field

    @pytest.mark.parametrize("rate", [-0.1, 1.5])
    def test_failure_rate_range(self, rate: float) -> None:
        """A failure rate outside [0, 1] raises InvalidInputError."""
        from prebuilds.stores import MemoryStore

        with pytest.raises(InvalidInputError):
            FakeProvisioner(MemoryStore(), FakeClock(), failure_rate=rate)

    def test_queue_and_drop(self, store_factory: StoreFactory) -> None:
        """Submitted builds are queued until processed; a dropped one never ends."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.reconciler.reconcile_all()
        first, second = world.provisioner.submitted

        world.provisioner.drop(first.build_id)
        queued = world.provisioner.queued
        world.clock.advance(BUILD_TIME - timedelta(seconds=1))
        early = world.provisioner.process()
        world.clock.advance(timedelta(seconds=1))
        done = world.provisioner.process()

        assert (1, 0, 1, 0) == (queued, early, done, world.provisioner.queued)
        assert BuildStatus.PENDING == world.store.get_build(first.build_id).status
        assert BuildStatus.SUCCEEDED == world.store.get_build(second.build_id).status
        assert [second.instance_id] == [i.id for i in ready(world.store, preset.id)]


class CountingStore(DelegatingStore):
    """Forwards to *inner*, counting creations; batches only if *batch*."""

    def __init__(self, inner: Store, *, batch: bool) -> None:
        super().__init__(inner)
        self.singles = 0
        self.batches: list[int] = []
        if batch:
            self.create_prebuilds = self._create_prebuilds
            self.record_submits = self._record_submits

    def create_prebuild(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        self.singles += 1
        return super().create_prebuild(preset_id, now=now, name=name, lease=lease)

    def _create_prebuilds(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        names: list[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        self.batches.append(len(names))
        return self.inner.create_prebuilds(  # type: ignore[attr-defined, no-any-return]
            preset_id, now=now, names=names, lease=lease
        )

    def _record_submits(
        self,
        submitted: list[uuid.UUID],
        *,
        now: datetime,
        not_submitted: list[uuid.UUID] = [],  # noqa: B006 - never changed
        lease: Lease | None = None,
    ) -> None:
        self.inner.record_submits(  # type: ignore[attr-defined]
            submitted, now=now, not_submitted=not_submitted, lease=lease
        )


class FailsOneSubmit:
    """Delegates to a FakeProvisioner; the *nth* submit (from 1) raises or hangs."""

    def __init__(self, inner: FakeProvisioner, nth: int, *, hang: bool) -> None:
        self.inner = inner
        self.nth = nth
        self.hang = hang
        self.calls = 0
        self.release = threading.Event()

    def submit(self, request: BuildRequest) -> None:
        self.calls += 1
        if self.calls == self.nth:
            if self.hang:
                self.release.wait()
                return
            raise ProvisionerError("provisioner down")
        self.inner.submit(request)


class TestBatchCreation:
    @pytest.mark.parametrize("batch", [True, False])
    def test_fill_with_and_without_batches(
        self, store_factory: StoreFactory, batch: bool
    ) -> None:
        """All of a preset's instances in one batch; a store without batches fills one by one."""
        store = CountingStore(store_factory(), batch=batch)
        preset = new_preset(store, new_template(store), desired=5)
        world = make_world(store)

        stats = world.cycle()

        assert 5 == stats.created
        expected = (0, [5]) if batch else (5, [])
        assert expected == (store.singles, store.batches)
        assert 5 == len(world.of_kind(EventKind.CREATED))
        assert 5 == len(world.provisioner.submitted)
        world.settle()
        assert 5 == len(ready(store, preset.id))

    @pytest.mark.parametrize("timeout", [None, 5.0])
    def test_a_failed_submit_in_a_batch(
        self, store_factory: StoreFactory, timeout: float | None
    ) -> None:
        """
        The failing request's build fails as alone; the batch's later ones,
        never submitted, are canceled (not failures) and withdrawn (deleted,
        neither reported nor counted), the earlier ones marked submitted.
        """
        store = store_factory()
        preset = new_preset(store, new_template(store), desired=5)
        world = make_world(store, submit_timeout=timeout)
        failing = FailsOneSubmit(world.provisioner, 3, hang=False)
        world.reconciler._provisioner = failing
        try:
            stats = world.reconciler.reconcile_all()
        finally:
            world.reconciler.stop(timeout=5)

        assert (3, 0, None) == (stats.created, stats.canceled, stats.error)
        assert 3 == failing.calls  # nothing submitted after the failure
        builds = {b.instance_id: b for b in store.list_builds()}
        created = [e.instance_id for e in world.of_kind(EventKind.CREATED)]
        kinds = [
            (builds[i].status, builds[i].error_kind) for i in created if i is not None
        ]
        failed = (BuildStatus.FAILED, "provisioner")
        assert [(BuildStatus.PENDING, None)] * 2 + [failed] == kinds
        details = [e.detail for e in world.of_kind(EventKind.FAILED)]
        assert 1 == len(details)
        assert "provisioner down" in details[0]
        assert preset.id == world.of_kind(EventKind.FAILED)[0].preset_id
        assert [] == world.of_kind(EventKind.CANCELED)
        withdrawn = [
            store.get_instance(b.instance_id)
            for b in builds.values()
            if b.instance_id not in created
        ]
        assert [(True, BuildStatus.CANCELED)] * 2 == [
            (i.deleted, builds[i.id].status) for i in withdrawn
        ]
        assert sorted(i.int for i in created if i is not None) == sorted(
            i.id.int for i in store.read_pool().instances
        )
        # The submitted one of the batch was marked: once stuck, it fails.
        now = world.clock.now()
        stuck = store.fail_stuck_builds(older_than=now + timedelta(seconds=1), now=now)
        assert [(BuildStatus.FAILED, "timeout")] * 2 == [
            (b.status, b.error_kind) for b in stuck
        ]

    def test_a_batch_never_marked_is_withdrawn_and_refilled(
        self, store_factory: StoreFactory
    ) -> None:
        """
        A leader that died between a batch and its marks: once stuck, the
        builds are canceled (not failures), each instance gets an orphan
        delete (the provisioner may have had it), and the pool refills.
        """
        store = store_factory()
        preset = new_preset(store, new_template(store), desired=3)
        world = make_world(store, build_timeout=timedelta(minutes=10))
        lost = store.create_prebuilds(  # type: ignore[attr-defined]
            preset.id, now=world.clock.now(), names=["a", "b", "c"]
        )
        world.clock.advance(timedelta(minutes=11))

        stats = world.cycle()

        assert (0, 3, None) == (stats.created, stats.deleted, stats.error)
        deletes = world.provisioner.submitted
        assert sorted(
            (r.instance_id.int, Transition.DELETE, True) for r in lost
        ) == sorted((r.instance_id.int, r.transition, r.orphan) for r in deletes)
        assert [BuildStatus.CANCELED] * 3 == [
            store.get_build(r.build_id).status for r in lost
        ]
        assert [] == world.of_kind(EventKind.BACKOFF)
        world.settle()
        pooled = {i.id for i in store.read_pool().instances}
        assert (3, set()) == (len(pooled), pooled & {r.instance_id for r in lost})

    def test_a_hung_submit_in_a_batch(self, store_factory: StoreFactory) -> None:
        """A batch's submit past submit_timeout fails as alone; the rest are withdrawn."""
        store = store_factory()
        new_preset(store, new_template(store), desired=4)
        world = make_world(store, submit_timeout=0.05)
        hanging = FailsOneSubmit(world.provisioner, 2, hang=True)
        world.reconciler._provisioner = hanging
        try:
            stats = world.reconciler.reconcile_all()
        finally:
            hanging.release.set()
            world.reconciler.stop(timeout=5)

        assert (2, None) == (stats.created, stats.error)
        assert 2 == hanging.calls
        statuses = sorted(
            (b.status.value, b.error_kind or "") for b in store.list_builds()
        )
        assert 2 == len(
            store.read_pool().instances
        )  # the two never submitted withdrawn
        assert [
            ("canceled", "not_submitted"),
            ("canceled", "not_submitted"),
            ("failed", "timeout"),
            ("pending", ""),
        ] == statuses
