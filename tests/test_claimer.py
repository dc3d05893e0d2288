"""StoreClaimer on every store, and match_preset."""

from __future__ import annotations

import uuid

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    PREBUILDS_OWNER_ID,
    EventKind,
    Instance,
    InvalidInputError,
    NoClaimablePrebuildsError,
    Preset,
    PresetChangedError,
    PresetFacts,
    PresetInactiveError,
    PresetNotFoundError,
    StoreClaimer,
    Template,
    claimed_lifecycle,
    expiry_cutoff,
    match_preset,
)
from prebuilds.interfaces import Store
from prebuilds.stores import MemoryStore
from tests.conftest import StoreFactory
from tests.helpers import (
    DelegatingStore,
    World,
    make_world,
    new_preset,
    new_template,
    new_version,
    pooled,
    ready,
)


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _filled(
    store_factory: StoreFactory, desired: int = 2, **fields: Any
) -> tuple[World, uuid.UUID]:
    world = make_world(store_factory())
    preset = new_preset(
        world.store, new_template(world.store), desired=desired, **fields
    )
    world.settle()
    return world, preset.id


class TestClaim:
    def test_claim_hands_over_the_instance(self, store_factory: StoreFactory) -> None:
        """A claim moves a ready instance to the user, renamed, out of the pool."""
        world, preset_id = _filled(store_factory)
        user = uuid.uuid4()
        oldest = ready(world.store, preset_id)[0]

        claimed_id = world.claim(preset_id, user_id=user, name="alice-dev")

        claimed = world.store.get_instance(claimed_id)
        assert oldest.id == claimed_id
        assert (user, "alice-dev", world.clock.now(), False) == (
            claimed.owner_id,
            claimed.name,
            claimed.claimed_at,
            claimed.is_prebuild,
        )
        assert oldest.created_at == claimed.created_at
        assert claimed_id not in {i.id for i in pooled(world.store, preset_id)}
        assert [claimed_id] == [i.id for i in world.store.list_instances(owner_id=user)]

    def test_oldest_first(self, store_factory: StoreFactory) -> None:
        """Claims take the oldest ready instance first, so the pool turns over."""
        world = make_world(store_factory())
        config = new_preset(world.store, new_template(world.store), desired=1)
        for size in (1, 2, 3):  # one more instance per pass, each younger
            world.store.put_preset(attrs.evolve(config, desired_instances=size))
            world.settle(1)
        preset_id = config.id
        by_age = [i.id for i in ready(world.store, preset_id)]
        created = [world.store.get_instance(i).created_at for i in by_age]

        claimed = [world.claim(preset_id) for _ in range(3)]

        assert sorted(created) == created
        assert len(set(created)) == 3
        assert by_age == claimed

    def test_ties_broken_by_id(self, store_factory: StoreFactory) -> None:
        """Instances created at the same time are claimed in ID order."""
        world, preset_id = _filled(store_factory, desired=3)
        ids = sorted(i.id for i in ready(world.store, preset_id))

        claimed = [world.claim(preset_id) for _ in range(3)]

        assert ids == claimed

    def test_miss(self, store_factory: StoreFactory) -> None:
        """An empty pool raises NoClaimablePrebuildsError naming the preset."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)

        with pytest.raises(NoClaimablePrebuildsError) as info:
            world.claim(preset.id)

        assert preset.id == info.value.preset_id

    def test_drained_pool_misses(self, store_factory: StoreFactory) -> None:
        """Once every ready instance is claimed the next claim misses."""
        world, preset_id = _filled(store_factory, desired=2)
        world.claim(preset_id)
        world.claim(preset_id)

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset_id)

    def test_claim_event(self, store_factory: StoreFactory) -> None:
        """A claim emits CLAIMED with the preset, the instance and the user."""
        world, preset_id = _filled(store_factory)
        user = uuid.uuid4()

        claimed = world.claim(preset_id, user_id=user)

        [event] = world.of_kind(EventKind.CLAIMED)
        assert (preset_id, claimed, world.clock.now(), f"user={user}") == (
            event.preset_id,
            event.instance_id,
            event.at,
            event.detail,
        )

    def test_no_sink(self, store_factory: StoreFactory) -> None:
        """A claimer without an event sink claims all the same."""
        world, preset_id = _filled(store_factory)
        claimer = StoreClaimer(world.store)

        claimed = claimer.claim(
            now=world.clock.now(), user_id=uuid.uuid4(), name="x", preset_id=preset_id
        )

        assert not world.store.get_instance(claimed).is_prebuild

    def test_initiator(self, store_factory: StoreFactory) -> None:
        """The initiator is the pool's system owner."""
        claimer = StoreClaimer(store_factory())

        assert PREBUILDS_OWNER_ID == claimer.initiator()


class TestNeverHandedOut:
    def test_ttl_expired(self, store_factory: StoreFactory) -> None:
        """An instance past its TTL is not handed out, even before it is deleted."""
        world, preset_id = _filled(store_factory, desired=1, ttl=timedelta(hours=1))
        [instance] = ready(world.store, preset_id)
        world.clock.set(instance.created_at + timedelta(hours=1, seconds=1))

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset_id)

        assert [instance.id] == [i.id for i in ready(world.store, preset_id)]

    def test_exactly_ttl_old_is_claimable(self, store_factory: StoreFactory) -> None:
        """An instance exactly TTL old has not expired yet."""
        world, preset_id = _filled(store_factory, desired=1, ttl=timedelta(hours=1))
        [instance] = ready(world.store, preset_id)
        world.clock.set(instance.created_at + timedelta(hours=1))

        assert instance.id == world.claim(preset_id)

    def test_invalidated(self, store_factory: StoreFactory) -> None:
        """An instance created before the invalidation is not handed out."""
        world, preset_id = _filled(store_factory, desired=2)
        world.store.invalidate_preset(preset_id, at=world.clock.now())

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset_id)

    def test_fresh_one_preferred_over_expired_oldest(
        self, store_factory: StoreFactory
    ) -> None:
        """The oldest unexpired instance is handed out, skipping expired ones."""
        world, preset_id = _filled(store_factory, desired=1)
        [old] = ready(world.store, preset_id)
        world.store.invalidate_preset(preset_id, at=world.clock.now())
        world.settle(2)
        [fresh] = ready(world.store, preset_id)

        claimed = world.claim(preset_id)

        assert old.id != fresh.id
        assert fresh.id == claimed

    def test_not_ready(self, store_factory: StoreFactory) -> None:
        """A built instance the host has not reported ready is not handed out."""
        world = make_world(store_factory(), ready_on_success=False)
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.settle()
        [instance] = pooled(world.store, preset.id)

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset.id)
        world.store.set_ready(instance.id)
        claimed = world.claim(preset.id)

        assert instance.id == claimed

    def test_still_building(self, store_factory: StoreFactory) -> None:
        """An instance whose start build is still pending is not handed out."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=1)
        world.reconciler.reconcile_all()

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset.id)

    def test_being_deleted(self, store_factory: StoreFactory) -> None:
        """An instance the reconciler is deleting is not handed out."""
        world, preset_id = _filled(store_factory, desired=1)
        [instance] = ready(world.store, preset_id)
        world.store.delete_prebuild(instance.id, now=world.clock.now())

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset_id)

    def test_other_preset(self, store_factory: StoreFactory) -> None:
        """A claim takes only instances of the asked preset."""
        world = make_world(store_factory())
        template = new_template(world.store)
        full = new_preset(world.store, template, desired=1)
        empty = new_preset(world.store, template, desired=0)
        world.settle()

        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(empty.id)

        assert 1 == len(ready(world.store, full.id))


class CountingStore(DelegatingStore):
    """Counts the calls a claimer makes; offers claim_if_unchanged if *stamped*."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    def read_preset(self, preset_id: uuid.UUID) -> PresetFacts:
        self.calls.append("read_preset")
        return super().read_preset(preset_id)

    def get_template(self, template_id: uuid.UUID) -> Template:
        self.calls.append("get_template")
        return super().get_template(template_id)

    def claim(self, **kwargs: Any) -> Instance | None:
        self.calls.append("claim")
        return super().claim(**kwargs)


class StampedCountingStore(CountingStore):
    def claim_if_unchanged(self, **kwargs: Any) -> Instance | None:
        self.calls.append("claim_if_unchanged")
        inner: Any = self.inner
        got: Instance | None = inner.claim_if_unchanged(**kwargs)
        return got


class TestRoundTrips:
    def test_a_stamped_store_is_asked_once_when_warm(
        self, store_factory: StoreFactory
    ) -> None:
        """With StampedClaims: read and claim the first time, then one call per claim."""
        counting = StampedCountingStore(store_factory())
        world = make_world(counting)
        preset = new_preset(counting, new_template(counting), desired=3)
        world.settle()
        counting.calls.clear()

        for _ in range(3):
            world.claim(preset.id)
        with pytest.raises(NoClaimablePrebuildsError):
            world.claim(preset.id)

        assert ["read_preset"] + ["claim_if_unchanged"] * 4 == counting.calls

    def test_a_change_costs_one_read_more(self, store_factory: StoreFactory) -> None:
        """A claim on changed facts is refused, and retried after a fresh read."""
        counting = StampedCountingStore(store_factory())
        world = make_world(counting)
        preset = new_preset(counting, new_template(counting), desired=2)
        world.settle()
        world.claim(preset.id)
        counting.put_preset(attrs.evolve(preset, name="renamed"))
        counting.calls.clear()

        world.claim(preset.id)

        assert [
            "claim_if_unchanged",
            "read_preset",
            "claim_if_unchanged",
        ] == counting.calls

    def test_other_stores_are_asked_twice(self, store_factory: StoreFactory) -> None:
        """Without StampedClaims: read_preset, then claim, every time."""
        counting = CountingStore(store_factory())
        world = make_world(counting)
        preset = new_preset(counting, new_template(counting), desired=2)
        world.settle()
        counting.calls.clear()

        world.claim(preset.id)
        world.claim(preset.id)

        assert ["read_preset", "claim"] * 2 == counting.calls

    def test_retries_are_bounded(self) -> None:
        """Facts that change under every attempt: PresetChangedError after the retries."""
        store = MemoryStore()
        preset = new_preset(store, new_template(store), desired=1)

        class Fickle(StampedCountingStore):
            def claim_if_unchanged(self, **kwargs: Any) -> Instance | None:
                self.calls.append("claim_if_unchanged")
                raise PresetChangedError(kwargs["preset_id"])

        fickle = Fickle(store)
        claimer = StoreClaimer(fickle, retries=2)

        with pytest.raises(PresetChangedError):
            claimer.claim(now=T0, user_id=uuid.uuid4(), name="x", preset_id=preset.id)

        assert ["read_preset", "claim_if_unchanged"] * 3 == fickle.calls

    def test_a_stale_read_of_another_thread_is_not_claimed_on(
        self, store_factory: StoreFactory
    ) -> None:
        """
        Another thread's read that began before a change lands in the cache
        after this claim was refused: the retry reads the store, not the
        cache, and the stale facts never replace newer ones.
        """
        inner = store_factory()
        world = make_world(inner)
        preset = new_preset(inner, new_template(inner), desired=2)
        world.settle()
        stale = inner.read_preset(preset.id)

        class Racing(StampedCountingStore):
            def claim_if_unchanged(self, **kwargs: Any) -> Instance | None:
                try:
                    return super().claim_if_unchanged(**kwargs)
                except PresetChangedError:
                    # The other thread's read, begun before the change, ends now.
                    claimer._cache[preset.id.int] = stale
                    raise

        racing = Racing(inner)
        claimer = StoreClaimer(racing, retries=1)
        claimer.claim(now=T0, user_id=uuid.uuid4(), name="a", preset_id=preset.id)
        inner.put_preset(attrs.evolve(preset, name="renamed"))
        racing.calls.clear()

        claimer.claim(now=T0, user_id=uuid.uuid4(), name="b", preset_id=preset.id)

        assert [
            "claim_if_unchanged",
            "read_preset",
            "claim_if_unchanged",
        ] == racing.calls
        fresh = inner.read_preset(preset.id)
        claimer._read(preset.id)
        racing.inner = _Returning(inner, stale)
        claimer._read(preset.id)
        assert fresh.stamp == claimer._cache[preset.id.int].stamp


class _Returning(DelegatingStore):
    """read_preset gives *facts*, whatever is stored."""

    def __init__(self, inner: Store, facts: PresetFacts) -> None:
        super().__init__(inner)
        self._facts = facts

    def read_preset(self, preset_id: uuid.UUID) -> PresetFacts:
        return self._facts


class TestArgumentsFollowTheRules:
    """
    The claimer builds the store's arguments itself, without checking its
    own checked inputs again: they must be what ``claimed_lifecycle`` and
    ``expiry_cutoff`` (the rules' homes) say.
    """

    @pytest.mark.parametrize("default_ttl", [None, timedelta(0), timedelta(hours=8)])
    @pytest.mark.parametrize("claim_ttl", [None, timedelta(0), timedelta(hours=1)])
    @pytest.mark.parametrize("preset_ttl", [None, timedelta(0), timedelta(minutes=5)])
    @pytest.mark.parametrize("invalidated", [False, True])
    def test_lifecycle_and_cutoff(
        self,
        default_ttl: timedelta | None,
        claim_ttl: timedelta | None,
        preset_ttl: timedelta | None,
        invalidated: bool,
    ) -> None:
        """Every combination of the TTLs and an invalidation, on a stamped store."""
        store = StampedRecordingStore(MemoryStore())
        template = new_template(store, default_ttl=default_ttl)
        preset = new_preset(store, template, desired=1, ttl=preset_ttl)
        if invalidated:
            store.invalidate_preset(preset.id, at=T0 - timedelta(minutes=1))
        claimer = StoreClaimer(store)
        now, schedule, start = T0, "CRON_TZ=UTC 0 9 * * 1-5", T0 + timedelta(hours=9)

        with pytest.raises(NoClaimablePrebuildsError):
            claimer.claim(
                now=now,
                user_id=uuid.uuid4(),
                name="x",
                preset_id=preset.id,
                autostart_schedule=schedule,
                next_start_at=start,
                ttl=claim_ttl,
            )

        [sent] = store.claims
        assert (
            claimed_lifecycle(
                now=now,
                autostart_schedule=schedule,
                next_start_at=start,
                ttl=claim_ttl,
                template_default_ttl=default_ttl,
            )
            == sent["lifecycle"]
        )
        assert (
            expiry_cutoff(
                ttl=preset_ttl,
                last_invalidated_at=T0 - timedelta(minutes=1) if invalidated else None,
                now=now,
            )
            == sent["not_before"]
        )
        assert template.active_version_id == sent["version_id"]


class StampedRecordingStore(DelegatingStore):
    """Records the arguments of every claim_if_unchanged."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.claims: list[dict[str, Any]] = []

    def claim_if_unchanged(self, **kwargs: Any) -> Instance | None:
        self.claims.append(kwargs)
        inner: Any = self.inner
        got: Instance | None = inner.claim_if_unchanged(**kwargs)
        return got


class LeanRecordingStore(StampedRecordingStore):
    """Records every claim_id_if_unchanged too (a LeanClaims store)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.lean: list[dict[str, Any]] = []

    def claim_id_if_unchanged(self, **kwargs: Any) -> uuid.UUID | None:
        self.lean.append(kwargs)
        inner: Any = self.inner
        got: uuid.UUID | None = inner.claim_id_if_unchanged(**kwargs)
        return got


class TestLeanClaims:
    def test_the_claimer_asks_for_the_id_only(
        self, store_factory: StoreFactory
    ) -> None:
        """
        On a LeanClaims store the claimer calls claim_id_if_unchanged (never
        claim_if_unchanged), and the instance gets the lifecycle
        claimed_lifecycle gives: the template's default TTL, last used now.
        """
        store = store_factory()
        default_ttl = timedelta(hours=8)
        template = new_template(store, default_ttl=default_ttl)
        preset = new_preset(store, template, desired=1)
        world = make_world(store)
        world.settle()
        recording = LeanRecordingStore(store)
        claimer = StoreClaimer(recording)
        now = world.clock.now()
        user = uuid.uuid4()
        start = now + timedelta(hours=1)

        claimed = claimer.claim(
            now=now,
            user_id=user,
            name="lean",
            preset_id=preset.id,
            autostart_schedule="0 9 * * 1-5",
            next_start_at=start,
        )

        assert ([], 1) == (recording.claims, len(recording.lean))
        assert default_ttl == recording.lean[0]["ttl"]
        got = store.get_instance(claimed)
        expected = claimed_lifecycle(
            now=now,
            autostart_schedule="0 9 * * 1-5",
            next_start_at=start,
            ttl=None,
            template_default_ttl=default_ttl,
        )
        assert (user, "lean", now, expected) == (
            got.owner_id,
            got.name,
            got.claimed_at,
            got.lifecycle,
        )

    def test_a_stamped_store_without_it_is_asked_as_before(
        self, store_factory: StoreFactory
    ) -> None:
        """A StampedClaims store that is not LeanClaims gets claim_if_unchanged."""
        world, preset_id = _filled(store_factory, desired=1)
        recording = StampedRecordingStore(world.store)

        claimed = StoreClaimer(recording).claim(
            now=world.clock.now(), user_id=uuid.uuid4(), name="x", preset_id=preset_id
        )

        assert [claimed] == [
            i.id for i in world.store.list_instances(owner_id=None) if i.name == "x"
        ]
        assert 1 == len(recording.claims)


class TestCachedFactsStayTrue:
    """
    A claimer's cache never hands out, nor refuses, what a fresh read would
    not: another store object (another replica) changes the preset or its
    template between two claims of a warm claimer.
    """

    def test_changes_between_claims(
        self, store_factory: StoreFactory, second_handle: Any
    ) -> None:
        """Each change is seen by the next claim of a claimer that cached the facts."""
        world = make_world(store_factory())
        template = new_template(world.store)
        preset = new_preset(world.store, template, desired=6)
        world.settle()
        other: Store = second_handle(world.store)
        oldest = [i.id for i in ready(world.store, preset.id)]
        outcomes: list[object] = []

        def claim() -> None:
            try:
                outcomes.append(world.claim(preset.id))
            except (NoClaimablePrebuildsError, PresetInactiveError) as e:
                outcomes.append(type(e))

        claim()
        new_version(other, template)
        claim()
        other.put_template(template)
        claim()
        other.put_template(attrs.evolve(template, deprecated=True))
        claim()
        other.put_template(attrs.evolve(template, deleted=True))
        claim()
        other.put_template(template)
        claim()
        other.put_preset(attrs.evolve(preset, ttl=timedelta(seconds=1)))
        world.clock.advance(timedelta(seconds=2))
        claim()
        other.put_preset(preset)
        claim()
        other.invalidate_preset(preset.id, at=world.clock.now())
        claim()

        assert [
            oldest[0],
            PresetInactiveError,
            oldest[1],
            PresetInactiveError,
            PresetInactiveError,
            oldest[2],
            NoClaimablePrebuildsError,
            oldest[3],
            NoClaimablePrebuildsError,
        ] == outcomes

    def test_two_claimers_share_nothing_but_the_store(
        self, store_factory: StoreFactory, second_handle: Any
    ) -> None:
        """Two warm claimers on two store objects hand each instance out once."""
        world = make_world(store_factory())
        preset = new_preset(world.store, new_template(world.store), desired=4)
        world.settle()
        other = StoreClaimer(second_handle(world.store))
        now = world.clock.now()

        got = [
            claimer.claim(now=now, user_id=uuid.uuid4(), name="x", preset_id=preset.id)
            for claimer in (world.claimer, other) * 2
        ]
        with pytest.raises(NoClaimablePrebuildsError):
            other.claim(now=now, user_id=uuid.uuid4(), name="x", preset_id=preset.id)

        assert sorted(i.id for i in pooled(world.store, preset.id)) == []
        assert 4 == len(set(got))


class TestBadRequests:
    def test_unknown_preset(self, store_factory: StoreFactory) -> None:
        """An unknown preset raises PresetNotFoundError."""
        world = make_world(store_factory())
        unknown = uuid.uuid4()

        with pytest.raises(PresetNotFoundError) as info:
            world.claim(unknown)

        assert unknown == info.value.preset_id

    def test_old_version(self, store_factory: StoreFactory) -> None:
        """A preset of a version that is no longer active raises PresetInactiveError."""
        world, preset_id = _filled(store_factory)
        template = world.store.read_preset(preset_id).template
        new_version(world.store, template)

        with pytest.raises(PresetInactiveError) as info:
            world.claim(preset_id)

        assert preset_id == info.value.preset_id
        assert 2 == len(ready(world.store, preset_id))  # not yet drained

    @pytest.mark.parametrize("change", ["deprecated", "deleted"])
    def test_retired_template(self, store_factory: StoreFactory, change: str) -> None:
        """A deprecated or deleted template's presets raise PresetInactiveError."""
        world, preset_id = _filled(store_factory)
        template = world.store.read_preset(preset_id).template
        world.store.put_template(
            attrs.evolve(
                template,
                deprecated=change == "deprecated",
                deleted=change == "deleted",
            )
        )

        with pytest.raises(PresetInactiveError):
            world.claim(preset_id)

    def test_naive_now(self, store_factory: StoreFactory) -> None:
        """A naive now raises InvalidInputError."""
        world, preset_id = _filled(store_factory)

        with pytest.raises(InvalidInputError) as info:
            world.claimer.claim(
                now=datetime(2024, 1, 1),  # noqa: DTZ001
                user_id=uuid.uuid4(),
                name="x",
                preset_id=preset_id,
            )

        assert "now" == info.value.field

    def test_naive_next_start(self, store_factory: StoreFactory) -> None:
        """A naive next_start_at raises InvalidInputError and claims nothing."""
        world, preset_id = _filled(store_factory)

        with pytest.raises(InvalidInputError) as info:
            world.claim(preset_id, next_start_at=datetime(2024, 1, 2))  # noqa: DTZ001

        assert "next_start_at" == info.value.field
        assert 2 == len(ready(world.store, preset_id))

    def test_negative_ttl(self, store_factory: StoreFactory) -> None:
        """A negative TTL raises InvalidInputError and claims nothing."""
        world, preset_id = _filled(store_factory)

        with pytest.raises(InvalidInputError) as info:
            world.claim(preset_id, ttl=timedelta(seconds=-1))

        assert "ttl" == info.value.field
        assert 2 == len(ready(world.store, preset_id))


def _preset(*parameters: tuple[str, str], n: int = 0) -> Preset:
    return Preset(
        id=uuid.UUID(int=n),
        template_id=uuid.UUID(int=100),
        template_version_id=uuid.UUID(int=200),
        desired_instances=1,
        parameters=parameters,
    )


#: Coder's parameters_test.go presets: P0 "development", and the other one.
P0 = _preset(("region", "us-west-2"), ("instance_type", "t3.medium"), n=1)
P1_LARGE = _preset(("region", "us-west-2"), ("instance_type", "t3.large"), n=2)
P1_EAST = _preset(("region", "us-east-1"), ("instance_type", "t3.large"), n=2)
P1_REGION = _preset(("region", "us-west-2"), n=2)


class TestMatchPreset:
    @pytest.mark.parametrize(
        ("presets", "given", "expected"),
        [
            pytest.param(
                [P0, P1_LARGE],
                {"region": "us-west-2", "instance_type": "t3.medium"},
                P0,
                id="exact match",
            ),
            pytest.param(
                [P0, P1_LARGE],
                {"region": "us-east-1", "instance_type": "t3.medium"},
                None,
                id="no match - different values",
            ),
            pytest.param(
                [P0, P1_LARGE],
                {"region": "us-west-2"},
                None,
                id="no match - fewer provided parameters",
            ),
            pytest.param(
                [P0, P1_LARGE],
                {
                    "region": "us-west-2",
                    "instance_type": "t3.medium",
                    "extra_param": "extra",
                },
                P0,
                id="subset match - extra provided parameter",
            ),
            pytest.param(
                [P0, P1_EAST],
                {"region": "us-west-2", "instance_type": "t3.medium"},
                P0,
                id="multiple presets - match first",
            ),
            pytest.param(
                [P1_REGION, P0],
                {
                    "region": "us-west-2",
                    "instance_type": "t3.medium",
                    "storage_size": "100gb",
                },
                P0,
                id="largest subset match",
            ),
        ],
    )
    def test_coder_cases(
        self, presets: list[Preset], given: dict[str, str], expected: Preset | None
    ) -> None:
        """Coder's FindMatchingPresetID cases give the same preset (or none)."""
        assert expected == match_preset(presets, given)

    def test_pairs_and_mappings_agree(self) -> None:
        """Parameters may be a mapping or (name, value) pairs."""
        pairs = [("region", "us-west-2"), ("instance_type", "t3.medium")]

        assert match_preset([P0, P1_LARGE], dict(pairs)) == match_preset(
            [P0, P1_LARGE], pairs
        )

    def test_conflicting_duplicates(self) -> None:
        """One parameter given two different values raises InvalidInputError."""
        with pytest.raises(InvalidInputError) as info:
            match_preset([P0], [("region", "us-west-2"), ("region", "us-east-1")])

        assert ("parameters", "region") == (info.value.field, info.value.value)

    def test_repeated_same_value(self) -> None:
        """The same value given twice is fine."""
        given = [
            ("region", "us-west-2"),
            ("region", "us-west-2"),
            ("instance_type", "t3.medium"),
        ]

        assert P0 == match_preset([P0], given)

    def test_parameterless_preset_is_the_fallback(self) -> None:
        """A preset without parameters matches anything, at the lowest priority."""
        bare = _preset(n=9)

        assert bare == match_preset([bare, P0], {"region": "eu"})
        assert P0 == match_preset(
            [bare, P0], {"region": "us-west-2", "instance_type": "t3.medium"}
        )

    def test_tie_lowest_id(self) -> None:
        """Between equally specific matches the lowest ID wins, whatever the order."""
        a = _preset(("region", "us-west-2"), n=5)
        b = _preset(("instance_type", "t3.medium"), n=3)

        assert b == match_preset([a, b], dict(P0.parameters))
        assert b == match_preset([b, a], dict(P0.parameters))

    def test_nothing_to_match(self) -> None:
        """No presets, no match."""
        assert None is match_preset([], {"region": "us-west-2"})

    def test_store_presets(self) -> None:
        """Presets read back from a store match like built ones."""
        store = MemoryStore()
        template = new_template(store)
        config = new_preset(store, template, desired=1, parameters=P0.parameters)

        found = match_preset([store.read_preset(config.id).preset], dict(P0.parameters))

        assert found is not None
        assert config.id == found.id
