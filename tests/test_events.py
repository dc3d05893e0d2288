"""Events: every kind, with the IDs it concerns; the reference sinks."""

from __future__ import annotations

import logging
import uuid

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    CollectingEventSink,
    Event,
    EventKind,
    Lease,
    LoggingEventSink,
    NoClaimablePrebuildsError,
    ResourceReplacement,
    StoreError,
)
from tests.conftest import StoreFactory
from tests.helpers import (
    DelegatingStore,
    World,
    corrupt_preset,
    make_world,
    new_preset,
    new_template,
    new_version,
    pooled,
    ready,
)


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _ids(event: Event) -> tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None]:
    return (event.preset_id, event.instance_id, event.build_id)


def _build_ids(world: World, instance_id: uuid.UUID) -> list[uuid.UUID]:
    return [b.id for b in world.store.list_builds(instance_id=instance_id)]


def _filled(store_factory: StoreFactory, **kwargs: Any) -> tuple[World, uuid.UUID]:
    world = make_world(store_factory(), **kwargs)
    preset = new_preset(world.store, new_template(world.store), desired=1)
    world.settle()
    return world, preset.id


class TestEventKinds:
    def test_created(self, store_factory: StoreFactory) -> None:
        """CREATED names the preset, the new instance and its start build."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.CREATED)
        [instance] = pooled(world.store, preset.id)
        assert (preset.id, instance.id, _build_ids(world, instance.id)[0]) == _ids(
            event
        )
        assert T0 == event.at

    def test_ready(self, store_factory: StoreFactory) -> None:
        """READY comes once per instance, at the first pass that sees it ready."""
        world, preset_id = _filled(store_factory)

        world.settle(2)

        [instance] = ready(world.store, preset_id)
        [event] = world.of_kind(EventKind.READY)
        assert (preset_id, instance.id) == (event.preset_id, event.instance_id)

    def test_claimed(self, store_factory: StoreFactory) -> None:
        """CLAIMED names the preset and the claimed instance."""
        world, preset_id = _filled(store_factory)

        claimed = world.claim(preset_id)

        [event] = world.of_kind(EventKind.CLAIMED)
        assert (preset_id, claimed) == (event.preset_id, event.instance_id)

    def test_claim_missed(self, store_factory: StoreFactory) -> None:
        """CLAIM_MISSED names the preset a claim found nothing in."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset.id)

        [event] = world.of_kind(EventKind.CLAIM_MISSED)
        assert (preset.id, None, None) == _ids(event)

    def test_expired(self, store_factory: StoreFactory) -> None:
        """EXPIRED names the preset, the expired instance and its delete build."""
        world, preset_id = _filled(store_factory)
        [old] = ready(world.store, preset_id)
        world.store.invalidate_preset(preset_id, at=world.clock.now())

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.EXPIRED)
        assert (preset_id, old.id, _build_ids(world, old.id)[-1]) == _ids(event)
        assert [] == world.of_kind(EventKind.DELETED)

    def test_deleted(self, store_factory: StoreFactory) -> None:
        """DELETED names the preset, the extraneous instance and its delete build."""
        world = make_world(store_factory())
        config = new_preset(world.store, new_template(world.store), desired=1)
        world.settle()
        [old] = ready(world.store, config.id)
        world.store.put_preset(attrs.evolve(config, desired_instances=0))

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.DELETED)
        assert (config.id, old.id, _build_ids(world, old.id)[-1]) == _ids(event)

    def test_failed(self, store_factory: StoreFactory) -> None:
        """FAILED names the preset, the instance and the build the provisioner refused."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.raise_next()

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.FAILED)
        [instance] = pooled(world.store, preset.id)
        assert (preset.id, instance.id, _build_ids(world, instance.id)[0]) == _ids(
            event
        )
        assert "provisioner down" in event.detail

    def test_backoff(self, store_factory: StoreFactory) -> None:
        """BACKOFF names the preset and says until when."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next()
        world.cycle()

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.BACKOFF)
        assert (preset.id, None, None) == _ids(event)
        assert f"until {T0 + timedelta(minutes=1)}" == event.detail

    def test_hard_limited(self, store_factory: StoreFactory) -> None:
        """HARD_LIMITED names the preset, once."""
        world = make_world(store_factory(), hard_limit=2, backoff_interval=timedelta(0))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.fail_next(10)

        world.settle(5)

        [event] = world.of_kind(EventKind.HARD_LIMITED)
        assert (preset.id, None, None) == _ids(event)

    def test_validation_failed(self, store_factory: StoreFactory) -> None:
        """VALIDATION_FAILED names the preset, the instance and its build."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.reject(preset.id)

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.VALIDATION_FAILED)
        [instance] = pooled(world.store, preset.id)
        assert (preset.id, instance.id, _build_ids(world, instance.id)[0]) == _ids(
            event
        )
        assert "missing a parameter" in event.detail

    def test_replacement(self, store_factory: StoreFactory) -> None:
        """REPLACEMENT names the preset, the claimed instance and the claim's build."""
        world, preset_id = _filled(store_factory)
        claimed = world.claim(preset_id)
        build_id = uuid.uuid4()
        replacements = [
            ResourceReplacement(
                resource="docker_container.main",
                paths=("env", "image"),
            ),
            ResourceReplacement(resource="null_resource.x"),
        ]

        world.reconciler.track_resource_replacement(claimed, build_id, replacements)

        [event] = world.of_kind(EventKind.REPLACEMENT)
        assert (preset_id, claimed, build_id) == _ids(event)
        assert "docker_container.main: env, image; null_resource.x: " == event.detail
        assert 1 == world.reconciler.replacements[preset_id]

    def test_paused_and_resumed(self, store_factory: StoreFactory) -> None:
        """PAUSED and RESUMED concern no preset."""
        world = make_world(store_factory())

        world.reconciler.pause()
        world.reconciler.resume()

        assert [EventKind.PAUSED, EventKind.RESUMED] == world.events.kinds()
        assert [(None, None, None)] * 2 == [_ids(e) for e in world.events.events]

    def test_stuck(self, store_factory: StoreFactory) -> None:
        """STUCK names the preset, the instance and the timed-out build."""
        world = make_world(store_factory(), build_timeout=timedelta(minutes=5))
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.provisioner.stall(preset.id)
        world.cycle(advance=timedelta(minutes=6))

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.STUCK)
        [instance] = pooled(world.store, preset.id)
        assert (preset.id, instance.id, _build_ids(world, instance.id)[0]) == _ids(
            event
        )
        assert "start build timed out" == event.detail

    def test_canceled(self, store_factory: StoreFactory) -> None:
        """CANCELED names the old preset, the instance and its orphan delete build."""
        world = make_world(store_factory())
        template = new_template(world.store)
        preset = new_preset(world.store, template, desired=1)
        world.reconciler.reconcile_all()
        new_version(world.store, template)

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.CANCELED)
        [instance] = pooled(world.store, preset.id)
        builds = _build_ids(world, instance.id)
        assert 2 == len(builds)
        assert (preset.id, instance.id, builds[1]) == _ids(event)

    def test_invalid_preset(self, store_factory: StoreFactory) -> None:
        """INVALID_PRESET names the preset and the bad field, once per problem."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        corrupt_preset(world.store, preset.id, "desired_instances", -3)

        world.reconciler.reconcile_all()
        world.reconciler.reconcile_all()
        corrupt_preset(world.store, preset.id, "desired_instances", -4)
        world.reconciler.reconcile_all()

        events = world.of_kind(EventKind.INVALID_PRESET)
        assert [(preset.id, None, None)] * 2 == [_ids(e) for e in events]
        assert "desired_instances=-3: must be between 0 and 10000" == events[0].detail
        assert "desired_instances=-4: must be between 0 and 10000" == events[1].detail

    def test_preset_error(self, store_factory: StoreFactory) -> None:
        """PRESET_ERROR names the preset whose reconciliation raised."""
        inner = store_factory()
        preset = new_preset(inner, new_template(inner), desired=1)

        class Broken(DelegatingStore):
            def create_prebuild(self, preset_id: uuid.UUID, **kwargs: Any) -> Any:
                msg = "boom"
                raise RuntimeError(msg)

        world = make_world(Broken(inner))

        world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.PRESET_ERROR)
        assert (preset.id, None, None) == _ids(event)
        assert "boom" in event.detail

    def test_pass_error(self, store_factory: StoreFactory) -> None:
        """PASS_ERROR concerns no preset and carries the error."""

        class Broken(DelegatingStore):
            def is_paused(self) -> bool:
                msg = "gone"
                raise StoreError(msg)

        world = make_world(Broken(store_factory()))

        stats = world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.PASS_ERROR)
        assert (None, None, None) == _ids(event)
        assert repr(StoreError("gone")) == event.detail == stats.error

    def test_leadership_lost(self, store_factory: StoreFactory) -> None:
        """
        LEADERSHIP_LOST concerns no preset: the pass's first fenced write is
        refused, the pass stops there and counts as a pass error.
        """
        inner = store_factory()
        preset = new_preset(inner, new_template(inner), desired=1)

        class Overtaken(DelegatingStore):
            @contextmanager
            def leader(self) -> Iterator[Lease]:
                with self.inner.leader() as lease:
                    # A token the store does not know: as if taken over.
                    yield attrs.evolve(lease, token="taken-over")  # noqa: S106

        world = make_world(Overtaken(inner))

        stats = world.reconciler.reconcile_all()

        [event] = world.of_kind(EventKind.LEADERSHIP_LOST)
        assert (None, None, None) == _ids(event)
        assert "LeadershipLostError" in event.detail
        assert (event.detail, True) == (stats.error, stats.leader)
        assert 1 == world.reconciler.pass_errors
        assert [] == world.of_kind(EventKind.PASS_ERROR)
        assert [] == pooled(inner, preset.id)

    def test_every_kind_is_covered(self) -> None:
        """The tests above cover every kind there is."""
        tested = {
            name.removeprefix("test_").upper()
            for name in dir(self)
            if name.startswith("test_")
        }
        tested |= {"PAUSED", "RESUMED"}

        assert {k.name for k in EventKind} <= tested


class TestEventSinks:
    def test_collecting(self) -> None:
        """CollectingEventSink keeps events in order; kinds() lists their kinds."""
        sink = CollectingEventSink()
        events = [
            Event(kind=EventKind.CREATED, at=T0),
            Event(kind=EventKind.READY, at=T0),
        ]

        for event in events:
            sink.emit(event)

        assert events == sink.events
        assert [EventKind.CREATED, EventKind.READY] == sink.kinds()

    @pytest.mark.parametrize(
        ("kind", "level"),
        [
            (EventKind.CREATED, logging.INFO),
            (EventKind.CLAIMED, logging.INFO),
            (EventKind.FAILED, logging.WARNING),
            (EventKind.STUCK, logging.WARNING),
            (EventKind.PASS_ERROR, logging.WARNING),
        ],
    )
    def test_logging(
        self, caplog: pytest.LogCaptureFixture, kind: EventKind, level: int
    ) -> None:
        """LoggingEventSink logs failures at WARNING, the rest at INFO, with IDs."""
        preset_id, instance_id = uuid.uuid4(), uuid.uuid4()
        sink = LoggingEventSink()

        with caplog.at_level(logging.INFO, logger="prebuilds"):
            sink.emit(
                Event(kind=kind, at=T0, preset_id=preset_id, instance_id=instance_id)
            )

        [record] = caplog.records
        assert (level, kind.value, preset_id, instance_id) == (
            record.levelno,
            record.__dict__["prebuilds_event"],
            record.__dict__["preset_id"],
            record.__dict__["instance_id"],
        )
        assert str(preset_id) in record.getMessage()

    def test_logging_never_raises(self) -> None:
        """A logger that raises does not make emit raise."""

        class Broken(logging.Logger):
            def log(self, *args: Any, **kwargs: Any) -> None:
                msg = "disk full"
                raise OSError(msg)

        LoggingEventSink(Broken("broken")).emit(Event(kind=EventKind.READY, at=T0))

    def test_a_broken_sink_does_not_break_a_pass(
        self, store_factory: StoreFactory
    ) -> None:
        """The reconciler goes on when its sink raises."""

        class Broken:
            def emit(self, event: Event) -> None:
                msg = "sink down"
                raise RuntimeError(msg)

        world = make_world(store_factory())
        world.reconciler._events = Broken()
        preset = new_preset(world.store, new_template(world.store), desired=2)

        stats = world.cycle()
        world.cycle()

        assert (2, None, 0) == (stats.created, stats.error, stats.presets_failed)
        assert 2 == len(ready(world.store, preset.id))

    def test_default_sink_logs(
        self, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without a sink the reconciler logs its events."""
        from prebuilds import StoreReconciler
        from prebuilds.testing import FakeClock, FakeProvisioner

        store = store_factory()
        new_preset(store, new_template(store), desired=1)
        clock = FakeClock()
        reconciler = StoreReconciler(
            store, FakeProvisioner(store, clock), clock=clock, submit_timeout=None
        )

        with caplog.at_level(logging.INFO, logger="prebuilds"):
            reconciler.reconcile_all()

        assert ["created"] == [
            r.__dict__.get("prebuilds_event")
            for r in caplog.records
            if "prebuilds_event" in r.__dict__
        ]
