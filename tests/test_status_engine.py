"""
``StoreReconciler.status()``, the statuses each pass keeps, the failed
builds and quiet events the reconciler reports, and the Prometheus metrics
of a scripted day: every reason sentence driven through a real store, the
fake clock and the fake provisioner.
"""

from __future__ import annotations

import uuid

from datetime import timedelta
from typing import Any

import attrs
import pytest

from prometheus_client import CollectorRegistry

from prebuilds import (
    EventKind,
    FanOutEventSink,
    NoClaimablePrebuildsError,
    PoolStatus,
    ProvisionerError,
    StoreClaimer,
)
from prebuilds.metrics import PrometheusMetrics
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock
from tests.conftest import StoreFactory
from tests.helpers import (
    DelegatingStore,
    World,
    corrupt_preset,
    make_world,
    new_preset,
    new_template,
    new_version,
)


MINUTE = timedelta(minutes=1)


def only(world: World) -> PoolStatus:
    """The status of the store's only preset, read now."""
    [status] = world.reconciler.status()
    return status


def reason(world: World) -> str:
    return only(world).reason


def unchanged(world: World) -> tuple[Any, ...]:
    """Everything status() could have written."""
    store = world.store
    return (
        store.read_pool(),
        store.list_builds(),
        store.list_instances(include_deleted=True),
        store.is_paused(),
    )


class TestReasons:
    """Each sentence, as the reconciler's status() reads it from the store."""

    def test_below_target_then_full(self, store_factory: StoreFactory) -> None:
        """Starting, then ready: '0 of 3 ready, 3 starting', 'full: 3 of 3 ready'."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=3)

        world.reconciler.reconcile_all()
        starting = reason(world)
        world.settle()

        assert ["0 of 3 ready, 3 starting", "full: 3 of 3 ready"] == [
            starting,
            reason(world),
        ]

    def test_not_ready_yet(self, store_factory: StoreFactory) -> None:
        """Built but not reported ready."""
        world = make_world(store_factory(), ready_on_success=False)
        new_preset(world.store, new_template(world.store), desired=2)

        world.settle()

        assert "0 of 2 ready, 2 not ready yet" == reason(world)

    def test_backing_off(self, store_factory: StoreFactory) -> None:
        """A failed build: until when (UTC), after how many."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)
        world.cycle()  # 00:00 create; 00:00:30 the build fails
        world.reconciler.reconcile_all()  # 00:00:30 backs off until 00:01:00

        status = only(world)

        assert (
            "backing off until 00:01 UTC after 1 failed build",
            1,
            1,
        ) == (status.reason, status.recent_failures, status.failed_kept)

    def test_hard_limited(self, store_factory: StoreFactory) -> None:
        """The last builds failed: call delete_failed()."""
        world = make_world(store_factory(), hard_limit=2)
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(5)
        for _ in range(4):
            world.cycle(advance=timedelta(minutes=10))

        status = only(world)
        world.reconciler.delete_failed(preset_id=preset.id)
        world.cycle()

        assert (
            "hard-limited: the last 2 builds failed; call delete_failed() to try again",
            True,
            2,
        ) == (status.reason, status.hard_limited, status.failed_kept)
        assert not only(world).hard_limited

    def test_validation_failed(self, store_factory: StoreFactory) -> None:
        """The provisioner rejected the preset: its error is the reason."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.reject(preset.id)

        world.cycle()
        status = only(world)

        assert (
            f"validation failed: preset {preset.id} is missing a parameter; "
            "publish a fixed template version"
        ) == status.reason
        assert status.validation_error == status.last_error

    def test_paused(self, store_factory: StoreFactory) -> None:
        """Paused, and what the pool would be doing."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=2)
        world.settle()

        world.reconciler.pause()

        assert "paused: full: 2 of 2 ready" == reason(world)

    def test_invalid_preset(self, store_factory: StoreFactory) -> None:
        """A preset the store cannot read."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        corrupt_preset(world.store, preset.id, "scheduling_timezone", "Mars/Base")

        status = only(world)

        assert (
            "invalid preset: unknown IANA time zone (scheduling_timezone='Mars/Base')",
            preset.id,
            "invalid",
        ) == (status.reason, status.preset_id, status.desired_source)

    def test_draining_then_drained(self, store_factory: StoreFactory) -> None:
        """A new template version drains the old preset's pool."""
        world = make_world(store_factory())
        template = new_template(world.store)
        new_preset(world.store, template, desired=2)
        world.settle()

        new_version(world.store, template)
        draining = reason(world)
        world.settle()

        assert [
            "draining: template version no longer active, 2 left",
            "drained: template version no longer active",
        ] == [draining, reason(world)]

    def test_shrinking(self, store_factory: StoreFactory) -> None:
        """Fewer wanted than running."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=3)
        world.settle()

        world.store.put_preset(attrs.evolve(preset, desired_instances=1))

        assert "shrinking: 3 running for 1 wanted, 2 to delete" == reason(world)

    def test_replacing_expired(self, store_factory: StoreFactory) -> None:
        """An invalidation expires the pool; it is replaced."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=2)
        world.settle()

        world.store.invalidate_preset(preset.id, at=world.clock.now())

        assert "replacing 2 expired: 0 of 2 ready, 2 to create" == reason(world)

    def test_empty(self, store_factory: StoreFactory) -> None:
        """Nothing wanted."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=0)

        world.settle()

        assert "empty: none wanted" == reason(world)


class TestStatus:
    def test_status_writes_nothing(self, store_factory: StoreFactory) -> None:
        """status() only reads."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=2)
        world.reconciler.reconcile_all()
        before = unchanged(world)

        world.reconciler.status()

        assert before == unchanged(world)

    def test_names_and_sorting(self, store_factory: StoreFactory) -> None:
        """Template and preset names, sorted by them."""
        world = make_world(store_factory())
        template = new_template(world.store)
        b = new_preset(world.store, template, desired=1, name="b")
        a = new_preset(world.store, template, desired=1, name="a")

        statuses = world.reconciler.status()

        assert [("tpl", "a", a.id), ("tpl", "b", b.id)] == [
            (s.template_name, s.preset_name, s.preset_id) for s in statuses
        ]

    def test_each_pass_keeps_its_statuses(self, store_factory: StoreFactory) -> None:
        """last_statuses: the state the pass read, with the pass's time."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=2)
        before = world.reconciler.last_statuses

        world.settle()
        world.reconciler.reconcile_all()

        assert ((), (only(world),)) == (before, world.reconciler.last_statuses)

    def test_kept_while_paused(self, store_factory: StoreFactory) -> None:
        """A paused pass still reads and keeps the statuses (paused)."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=1)
        world.reconciler.pause()

        world.reconciler.reconcile_all()

        assert ["paused: 0 of 1 ready"] == [
            s.reason for s in world.reconciler.last_statuses
        ]

    def test_a_follower_keeps_none(self) -> None:
        """A pass that did not lead forgets the statuses."""
        world = make_world(MemoryStore())
        new_preset(world.store, new_template(world.store), desired=1)
        world.reconciler.reconcile_all()

        with world.store.leader():  # another holder leads
            stats = world.reconciler.reconcile_all()

        assert (False, ()) == (stats.leader, world.reconciler.last_statuses)

    def test_last_error_until_full(self, store_factory: StoreFactory) -> None:
        """A submit failure is kept as the last error until the pool is full."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.raise_next(ProvisionerError("builder down"))

        world.reconciler.reconcile_all()
        failed = only(world).last_error
        world.settle(passes=5, advance=timedelta(minutes=2))

        assert "ProvisionerError('builder down')" == failed
        assert (None, "full: 1 of 1 ready") == (
            only(world).last_error,
            only(world).reason,
        )


class TestFailedBuilds:
    def test_a_reported_failure_is_emitted_once(
        self, store_factory: StoreFactory
    ) -> None:
        """The host's failed build: one FAILED event, on the pass after it."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)

        world.settle(passes=4, advance=timedelta(minutes=2))

        [failed] = world.of_kind(EventKind.FAILED)
        assert (preset.id, "start build failed", "preset", "tpl") == (
            failed.preset_id,
            failed.detail,
            failed.preset_name,
            failed.template_name,
        )

    def test_a_submit_failure_is_not_reported_again(
        self, store_factory: StoreFactory
    ) -> None:
        """A failure the reconciler reported at submit is not reported twice."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.raise_next()

        world.settle(passes=4, advance=timedelta(minutes=2))

        assert 1 == len(world.of_kind(EventKind.FAILED))

    def test_a_new_leader_learns_failures_silently(
        self, store_factory: StoreFactory
    ) -> None:
        """A second reconciler does not report what the first already did."""
        world = make_world(store_factory())
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)
        world.settle(passes=2)
        successor = make_world(world.store, clock=world.clock)

        successor.settle(passes=3, advance=timedelta(minutes=2))

        assert (1, 0) == (
            len(world.of_kind(EventKind.FAILED)),
            len(successor.of_kind(EventKind.FAILED)),
        )


class TestQuietEvents:
    """event_cooldown: one event per preset and kind per cooldown."""

    def test_backoff_once_per_cooldown(self) -> None:
        """Passes every 30 s while backing off: one BACKOFF per 2 minutes."""
        world = make_world(
            MemoryStore(),
            event_cooldown=timedelta(minutes=2),
            backoff_interval=timedelta(minutes=10),
        )
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)
        world.cycle()  # the build fails at 00:00:30

        for _ in range(10):  # 00:00:30 .. 00:05:00, every 30 s
            world.cycle()

        events = world.of_kind(EventKind.BACKOFF)
        assert [(0, 30), (3, 150), (3, 270)] == [
            (e.suppressed, int((e.at - world.clock.now()).total_seconds()) + 330)
            for e in events
        ]

    def test_each_preset_and_kind_on_its_own(self) -> None:
        """Two presets backing off each get their event."""
        world = make_world(MemoryStore(), event_cooldown=timedelta(hours=1))
        template = new_template(world.store)
        a = new_preset(world.store, template, desired=1)
        b = new_preset(world.store, template, desired=1)
        world.provisioner.fail_next(2)
        world.cycle()

        world.reconciler.reconcile_all()
        world.reconciler.reconcile_all()

        assert sorted([str(a.id), str(b.id)]) == sorted(
            str(e.preset_id) for e in world.of_kind(EventKind.BACKOFF)
        )

    def test_pass_errors_are_quieted(self) -> None:
        """A store that fails every pass: one PASS_ERROR per cooldown."""

        class Down(DelegatingStore):
            def read_pool(self) -> Any:
                raise RuntimeError("down")

        clock = FakeClock()
        world = make_world(
            Down(MemoryStore()),
            clock=clock,
            event_cooldown=timedelta(minutes=5),
        )

        for _ in range(12):
            world.reconciler.reconcile_all()
            clock.advance(MINUTE)

        assert [0, 4, 4] == [e.suppressed for e in world.of_kind(EventKind.PASS_ERROR)]
        assert 12 == world.reconciler.pass_errors

    def test_zero_cooldown_emits_all(self) -> None:
        """timedelta(0) turns quieting off."""
        world = make_world(MemoryStore(), event_cooldown=timedelta(0))
        new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(1)
        world.cycle()

        for _ in range(3):
            world.reconciler.reconcile_all()

        assert [0, 0, 0] == [e.suppressed for e in world.of_kind(EventKind.BACKOFF)]

    def test_other_kinds_are_never_quieted(self) -> None:
        """CREATED and READY are not held back, whatever the cooldown."""
        world = make_world(MemoryStore(), event_cooldown=timedelta(days=1))
        new_preset(world.store, new_template(world.store), desired=3)

        world.settle()

        assert (3, 3) == (
            len(world.of_kind(EventKind.CREATED)),
            len(world.of_kind(EventKind.READY)),
        )

    def test_bad_cooldown(self) -> None:
        """A cooldown that is not a timedelta is named."""
        from prebuilds import InvalidInputError, StoreReconciler

        with pytest.raises(InvalidInputError) as caught:
            StoreReconciler(
                MemoryStore(),
                make_world(MemoryStore()).provisioner,
                event_cooldown=60,  # type: ignore[arg-type]
            )

        assert "event_cooldown" == caught.value.field


class TestMetricsScenario:
    """A scripted day, read from a real Prometheus registry."""

    def test_every_metric(self, store_factory: StoreFactory) -> None:
        """Fills, claims, a miss, a failing build, backoff, hard limit, pause."""
        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry)
        world = make_world(store_factory(), hard_limit=2)
        sink = FanOutEventSink(world.events, metrics)
        world.reconciler._events = sink  # the same reconciler, both sinks
        claimer = StoreClaimer(world.store, events=sink)
        template = new_template(world.store)
        small = new_preset(world.store, template, desired=2, name="small")
        flaky = new_preset(world.store, template, desired=1, name="flaky")

        def value(name: str, preset: str, **labels: str) -> float | None:
            return registry.get_sample_value(
                name, {"template_name": "tpl", "preset_name": preset, **labels}
            )

        def claim() -> None:
            claimer.claim(
                now=world.clock.now(),
                user_id=uuid.uuid4(),
                name="u",
                preset_id=small.id,
            )

        world.settle()  # fills: 2 of small, 1 of flaky
        claim()
        claim()
        with pytest.raises(NoClaimablePrebuildsError):
            claim()  # small is empty: a miss
        world.settle()  # small refills: 2 more
        # flaky's pool is replaced, and its two next builds fail: the
        # first backs off, the second reaches the hard limit of 2
        world.provisioner.fail_next(2)
        world.store.invalidate_preset(flaky.id, at=world.clock.now())
        world.settle(passes=4, advance=timedelta(minutes=5))
        world.reconciler.pause()
        world.reconciler.reconcile_all()

        passes = registry.get_sample_value(
            "prebuilds_reconciliation_duration_seconds_count", {}
        )
        assert {
            "created small": value("prebuilds_created_total", "small"),
            "created flaky": value("prebuilds_created_total", "flaky"),
            "failed flaky": value("prebuilds_failed_total", "flaky"),
            "failed small": value("prebuilds_failed_total", "small"),
            "claimed": value("prebuilds_claimed_total", "small"),
            "misses": value("prebuilds_claim_misses_total", "small"),
            "hits timed": value(
                "prebuilds_claim_duration_seconds_count", "small", result="hit"
            ),
            "misses timed": value(
                "prebuilds_claim_duration_seconds_count", "small", result="miss"
            ),
            "desired small": value("prebuilds_desired", "small"),
            "running small": value("prebuilds_running", "small"),
            "eligible small": value("prebuilds_eligible", "small"),
            "desired flaky": value("prebuilds_desired", "flaky"),
            "eligible flaky": value("prebuilds_eligible", "flaky"),
            "hard-limited flaky": value("prebuilds_preset_hard_limited", "flaky"),
            "hard-limited small": value("prebuilds_preset_hard_limited", "small"),
            "validation failed": value("prebuilds_preset_validation_failed", "small"),
            "paused": registry.get_sample_value("prebuilds_reconciliation_paused", {}),
            "replacements": value("prebuilds_resource_replacements_total", "small"),
        } == {
            "created small": 4.0,  # 2 at first, 2 after the claims
            "created flaky": 3.0,  # 1, then 2 that fail
            "failed flaky": 2.0,
            "failed small": None,
            "claimed": 2.0,
            "misses": 1.0,
            "hits timed": 2.0,
            "misses timed": 1.0,
            "desired small": 2.0,
            "running small": 2.0,
            "eligible small": 2.0,
            "desired flaky": 1.0,
            "eligible flaky": 0.0,
            "hard-limited flaky": 1.0,
            "hard-limited small": 0.0,
            "validation failed": 0.0,
            "paused": 1.0,
            "replacements": None,
        }
        # every leading pass was timed: 3 + 3 + 4 cycles and the paused one
        assert 11 == passes
