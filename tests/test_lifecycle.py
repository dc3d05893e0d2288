"""Lifecycle separation: pooled instances are unmanaged, claimed ones managed."""

from __future__ import annotations

import uuid

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    PREBUILDS_OWNER_ID,
    Instance,
    InvalidInputError,
    Lifecycle,
    Transition,
    claimed_lifecycle,
    is_lifecycle_managed,
    pooled_lifecycle,
)
from tests.conftest import StoreFactory
from tests.helpers import (
    World,
    make_world,
    new_preset,
    new_template,
    new_version,
    pooled,
    ready,
)


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
AUTOSTART = "CRON_TZ=Europe/Paris 30 8 * * 1-5"


def _world(
    store_factory: StoreFactory, *, default_ttl: timedelta | None = None
) -> tuple[World, uuid.UUID]:
    world = make_world(store_factory())
    template = new_template(world.store, default_ttl=default_ttl)
    preset = new_preset(world.store, template, desired=2)
    world.settle()
    return world, preset.id


class TestPooled:
    def test_unset_at_every_stage(self, store_factory: StoreFactory) -> None:
        """Pending, built and ready pooled instances have every field unset."""
        world = make_world(store_factory(), ready_on_success=False)
        preset = new_preset(world.store, new_template(world.store), desired=1)
        stages = []
        world.reconciler.reconcile_all()
        stages.append(pooled(world.store, preset.id)[0])
        world.clock.advance(timedelta(minutes=1))
        world.provisioner.process()
        stages.append(pooled(world.store, preset.id)[0])
        world.store.set_ready(stages[0].id)
        stages.append(pooled(world.store, preset.id)[0])

        assert [False, False, True] == [i.ready for i in stages]
        for instance in stages:
            assert instance.lifecycle.is_unset
            assert not is_lifecycle_managed(instance)
            assert Lifecycle(last_used_at=T0) == instance.lifecycle

    def test_never_touched_while_pooled(self, store_factory: StoreFactory) -> None:
        """Passes and time leave pooled instances' lifecycle as created."""
        world, preset_id = _world(store_factory)
        before = [i.lifecycle for i in ready(world.store, preset_id)]

        world.settle(5, advance=timedelta(days=1))

        assert before == [i.lifecycle for i in ready(world.store, preset_id)]
        assert not any(is_lifecycle_managed(i) for i in pooled(world.store, preset_id))

    def test_pooled_lifecycle(self) -> None:
        """pooled_lifecycle sets last_used_at alone."""
        assert Lifecycle(last_used_at=T0) == pooled_lifecycle(now=T0)
        assert pooled_lifecycle(now=T0).is_unset


class TestClaimed:
    def test_fields_from_the_request(self, store_factory: StoreFactory) -> None:
        """Autostart, next start and TTL come from the claim; last_used_at is now."""
        world, preset_id = _world(store_factory, default_ttl=timedelta(hours=8))
        world.clock.advance(timedelta(hours=3))
        next_start = T0 + timedelta(days=1, hours=7, minutes=30)

        claimed = world.store.get_instance(
            world.claim(
                preset_id,
                autostart_schedule=AUTOSTART,
                next_start_at=next_start,
                ttl=timedelta(hours=2),
            )
        )

        assert (
            Lifecycle(
                autostart_schedule=AUTOSTART,
                next_start_at=next_start,
                ttl=timedelta(hours=2),
                last_used_at=world.clock.now(),
            )
            == claimed.lifecycle
        )
        assert is_lifecycle_managed(claimed)

    def test_ttl_from_the_template(self, store_factory: StoreFactory) -> None:
        """Without a TTL in the claim the template's default TTL applies."""
        world, preset_id = _world(store_factory, default_ttl=timedelta(hours=8))

        claimed = world.store.get_instance(world.claim(preset_id))

        assert (
            Lifecycle(ttl=timedelta(hours=8), last_used_at=world.clock.now())
            == claimed.lifecycle
        )

    def test_zero_ttl_beats_the_default(self, store_factory: StoreFactory) -> None:
        """An explicit zero TTL is kept, not replaced by the template's."""
        world, preset_id = _world(store_factory, default_ttl=timedelta(hours=8))

        claimed = world.store.get_instance(world.claim(preset_id, ttl=timedelta(0)))

        assert timedelta(0) == claimed.lifecycle.ttl

    def test_no_ttl_at_all(self, store_factory: StoreFactory) -> None:
        """No TTL in the claim nor in the template: none."""
        world, preset_id = _world(store_factory)

        claimed = world.store.get_instance(world.claim(preset_id))

        assert Lifecycle(last_used_at=world.clock.now()) == claimed.lifecycle
        assert is_lifecycle_managed(claimed)

    def test_dormancy_and_deadlines_cleared(self, store_factory: StoreFactory) -> None:
        """Deadlines, dormancy and deletion dates are unset after a claim."""
        world, preset_id = _world(store_factory, default_ttl=timedelta(hours=8))

        lifecycle = world.store.get_instance(world.claim(preset_id)).lifecycle

        assert (None, None, None, None) == (
            lifecycle.deadline,
            lifecycle.max_deadline,
            lifecycle.dormant_at,
            lifecycle.deleting_at,
        )

    def test_claimed_instances_are_left_alone(
        self, store_factory: StoreFactory
    ) -> None:
        """Expiry, a smaller pool and a new version never delete a claimed instance."""
        world, preset_id = _world(store_factory)
        claimed_id = world.claim(preset_id, ttl=timedelta(hours=1))
        before = world.store.get_instance(claimed_id)
        template = world.store.read_preset(preset_id).template
        world.store.invalidate_preset(preset_id, at=world.clock.now())
        world.settle(2)
        new_version(world.store, template)

        world.settle(3, advance=timedelta(days=1))

        after = world.store.get_instance(claimed_id)
        assert before == after
        assert [Transition.START] == [
            b.transition for b in world.store.list_builds(instance_id=claimed_id)
        ]
        assert is_lifecycle_managed(after)


def _instance(**changes: Any) -> Instance:
    instance = Instance(
        id=uuid.uuid4(),
        preset_id=uuid.uuid4(),
        template_id=uuid.uuid4(),
        template_version_id=uuid.uuid4(),
        owner_id=PREBUILDS_OWNER_ID,
        name="prebuild-x",
        created_at=T0,
    )
    return attrs.evolve(instance, **changes)


class TestIsLifecycleManaged:
    @pytest.mark.parametrize(
        ("changes", "expected"),
        [
            ({}, False),
            ({"lifecycle": Lifecycle(ttl=timedelta(hours=1))}, False),
            ({"owner_id": uuid.UUID(int=7)}, True),
            ({"owner_id": uuid.UUID(int=7), "deleted": True}, False),
            ({"deleted": True}, False),
        ],
    )
    def test_only_live_owned_instances(
        self, changes: dict[str, Any], expected: bool
    ) -> None:
        """Only a user's instance that is not deleted is managed."""
        assert expected == is_lifecycle_managed(_instance(**changes))


class TestClaimedLifecycle:
    def test_default_ttl(self) -> None:
        """The template's default TTL fills in a missing TTL."""
        assert Lifecycle(ttl=timedelta(hours=1), last_used_at=T0) == claimed_lifecycle(
            now=T0,
            autostart_schedule=None,
            next_start_at=None,
            ttl=None,
            template_default_ttl=timedelta(hours=1),
        )

    @pytest.mark.parametrize(
        ("field", "kwargs"),
        [
            ("now", {"now": datetime(2024, 1, 1)}),  # noqa: DTZ001
            ("next_start_at", {"next_start_at": datetime(2024, 1, 1)}),  # noqa: DTZ001
            ("ttl", {"ttl": timedelta(seconds=-1)}),
        ],
    )
    def test_bad_input(self, field: str, kwargs: dict[str, object]) -> None:
        """Naive datetimes and negative TTLs raise InvalidInputError naming the field and value."""
        arguments: dict[str, Any] = {
            "now": T0,
            "autostart_schedule": None,
            "next_start_at": None,
            "ttl": None,
            "template_default_ttl": None,
        }
        arguments.update(kwargs)

        with pytest.raises(InvalidInputError) as info:
            claimed_lifecycle(**arguments)

        assert (field, kwargs[field]) == (info.value.field, info.value.value)
