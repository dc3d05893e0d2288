"""
The Store contract, run on every backend (memory, SQLite, PostgreSQL).

Each test states one rule of the storage seam; all stores must agree.
"""

from __future__ import annotations

import uuid

from datetime import datetime, timedelta, timezone

import pytest

from prebuilds import (
    PREBUILDS_OWNER_ID,
    Backoff,
    BuildNotFoundError,
    BuildRequest,
    BuildStatus,
    InProgressCount,
    InstanceNotFoundError,
    InvalidInputError,
    LeadershipLostError,
    Lease,
    Lifecycle,
    PendingCount,
    PooledInstance,
    PrebuildSchedule,
    PresetChangedError,
    PresetConfig,
    PresetNotFoundError,
    PresetStatus,
    Template,
    TemplateNotFoundError,
    Transition,
    derive,
    expiry_cutoff,
)
from prebuilds.interfaces import GroupedCreates, StampedClaims, Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LOOKBACK = timedelta(hours=1)


def seed(store: Store, *, desired: int = 2, ttl: timedelta | None = None):
    """One template with one preset on its active version."""
    template = Template(
        id=uuid.uuid4(),
        active_version_id=uuid.uuid4(),
        name="t",
        default_ttl=timedelta(hours=8),
    )
    store.put_template(template)
    preset = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=desired,
        name="p",
        ttl=ttl,
        parameters=(("region", "eu"),),
    )
    store.put_preset(preset)
    return template, preset


def snap(store: Store, now: datetime = T0, *, hard_limit: int = 3):
    """Every pool's state at *now*, derived from the store's facts."""
    return derive(
        store.read_pool(), now=now, backoff_lookback=LOOKBACK, hard_limit=hard_limit
    )


def ready_prebuild(store: Store, preset_id, now: datetime = T0):
    """Create a prebuild and report it built and ready."""
    request = store.create_prebuild(
        preset_id, now=now, name=f"pb-{uuid.uuid4().hex[:6]}"
    )
    assert request is not None
    store.build_finished(request.build_id, now=now, succeeded=True)
    store.set_ready(request.instance_id)
    return request


def claim_arguments(store: Store, preset_id, now: datetime = T0, user=None):
    """Store.claim's arguments, as the reference claimer works them out."""
    facts = store.read_preset(preset_id)
    return {
        "preset_id": preset_id,
        "user_id": user or uuid.uuid4(),
        "name": "mine",
        "lifecycle": Lifecycle(ttl=timedelta(hours=1), last_used_at=now),
        "now": now,
        "version_id": facts.template.active_version_id,
        "not_before": expiry_cutoff(
            ttl=facts.config.ttl, last_invalidated_at=facts.last_invalidated_at, now=now
        ),
    }


def claim(store: Store, preset_id, now: datetime = T0, user=None):
    return store.claim(**claim_arguments(store, preset_id, now, user))


class TestConfiguration:
    def test_preset_is_derived_from_its_template(self, store):
        """read_preset's preset derives active version and deprecation from the template."""
        template, config = seed(store)

        facts = store.read_preset(config.id)
        preset = facts.preset

        assert (config, template) == (facts.config, facts.template)
        assert preset.using_active_version
        assert preset.is_active
        assert preset.parameters == (("region", "eu"),)
        assert preset.status is PresetStatus.HEALTHY

    def test_new_active_version_makes_old_presets_inactive(self, store):
        """Publishing a version is one put_template; old presets are no longer active."""
        from attrs import evolve

        template, config = seed(store)
        store.put_template(evolve(template, active_version_id=uuid.uuid4()))

        assert not store.read_preset(config.id).preset.using_active_version

    def test_put_preset_keeps_status_and_invalidation(self, store):
        """Replacing a preset's config keeps its status and invalidation time."""
        from attrs import evolve

        _, config = seed(store)
        store.set_preset_status(config.id, PresetStatus.VALIDATION_FAILED)
        store.invalidate_preset(config.id, at=T0)
        store.put_preset(evolve(config, desired_instances=5))

        facts = store.read_preset(config.id)

        assert (5, PresetStatus.VALIDATION_FAILED, T0) == (
            facts.config.desired_instances,
            facts.status,
            facts.last_invalidated_at,
        )

    def test_schedules_round_trip(self, store):
        """Schedules and time zones come back as written."""
        from attrs import evolve

        _, config = seed(store)
        schedules = (PrebuildSchedule(cron="* 9-17 * * 1-5", instances=4),)
        store.put_preset(
            evolve(config, scheduling_timezone="Europe/Berlin", schedules=schedules)
        )

        preset = store.read_preset(config.id).config

        assert ("Europe/Berlin", schedules) == (
            preset.scheduling_timezone,
            preset.schedules,
        )

    def test_unknown_ids(self, store):
        """Lookups of unknown IDs raise the named errors."""
        with pytest.raises(PresetNotFoundError):
            store.read_preset(uuid.uuid4())
        with pytest.raises(TemplateNotFoundError):
            store.get_template(uuid.uuid4())
        with pytest.raises(InstanceNotFoundError):
            store.get_instance(uuid.uuid4())
        with pytest.raises(BuildNotFoundError):
            store.get_build(uuid.uuid4())
        with pytest.raises(InstanceNotFoundError):
            store.set_ready(uuid.uuid4())
        with pytest.raises(BuildNotFoundError):
            store.build_finished(uuid.uuid4(), now=T0, succeeded=True)

    def test_preset_needs_a_known_template(self, store):
        """A preset of an unknown template is refused with TemplateNotFoundError."""
        template_id = uuid.uuid4()
        with pytest.raises(TemplateNotFoundError) as e:
            store.put_preset(
                PresetConfig(
                    id=uuid.uuid4(),
                    template_id=template_id,
                    template_version_id=uuid.uuid4(),
                    desired_instances=1,
                )
            )

        assert template_id == e.value.template_id
        assert [] == list(store.read_pool().presets)

    def test_pause_is_persisted(self, store):
        """Pause and resume are stored settings."""
        assert not store.is_paused()
        store.set_paused(True)
        assert store.is_paused()
        store.set_paused(False)
        assert not store.is_paused()


class TestCreateAndReport:
    def test_create_writes_instance_and_pending_start_build(self, store):
        """create_prebuild writes a pooled instance and its first, pending start build."""
        _, config = seed(store)

        request = store.create_prebuild(config.id, now=T0, name="pb-1")

        assert request is not None
        instance = store.get_instance(request.instance_id)
        build = store.get_build(request.build_id)
        assert PREBUILDS_OWNER_ID == instance.owner_id
        assert instance.lifecycle == Lifecycle(last_used_at=T0)
        assert (Transition.START, BuildStatus.PENDING, 1) == (
            build.transition,
            build.status,
            build.build_number,
        )
        assert (("region", "eu"),) == request.parameters
        assert (Transition.START, False) == (request.transition, request.orphan)

    def test_create_for_inactive_preset_returns_none(self, store):
        """A preset that became inactive creates nothing."""
        from attrs import evolve

        template, config = seed(store)
        store.put_template(evolve(template, deprecated=True))

        assert store.create_prebuild(config.id, now=T0, name="x") is None

    def test_build_reports_move_status(self, store):
        """build_started then build_finished move a build to running then succeeded."""
        _, config = seed(store)
        request = store.create_prebuild(config.id, now=T0, name="pb")
        assert request is not None

        store.build_started(request.build_id, now=T0 + timedelta(seconds=1))
        assert BuildStatus.RUNNING == store.get_build(request.build_id).status
        store.build_finished(
            request.build_id, now=T0 + timedelta(seconds=2), succeeded=True
        )
        build = store.get_build(request.build_id)

        assert BuildStatus.SUCCEEDED == build.status
        assert T0 + timedelta(seconds=2) == build.finished_at

    def test_late_report_is_ignored(self, store):
        """A report on a build that already finished changes nothing."""
        _, config = seed(store)
        request = ready_prebuild(store, config.id)

        store.build_finished(request.build_id, now=T0, succeeded=False, error_kind="x")
        store.build_started(request.build_id, now=T0)

        assert BuildStatus.SUCCEEDED == store.get_build(request.build_id).status

    def test_failed_build_keeps_its_error(self, store):
        """A failed build records the error kind and message."""
        _, config = seed(store)
        request = store.create_prebuild(config.id, now=T0, name="pb")
        assert request is not None

        store.build_finished(
            request.build_id, now=T0, succeeded=False, error_kind="quota", error="no"
        )
        build = store.get_build(request.build_id)

        assert (BuildStatus.FAILED, "quota", "no") == (
            build.status,
            build.error_kind,
            build.error,
        )


def _grouped(store: Store) -> GroupedCreates:
    """*store* as a GroupedCreates (every reference store is one)."""
    assert isinstance(store, GroupedCreates)
    return store


class TestGroupedCreates:
    """create_prebuilds_grouped: create_prebuilds per pair, in one transaction."""

    def test_each_group_in_order_an_inactive_one_empty(self, store):
        """Requests per pair, in order; a preset no longer active gets none."""
        from attrs import evolve

        grouped = _grouped(store)
        _, first = seed(store)
        second = evolve(first, id=uuid.uuid4(), name="q")
        store.put_preset(second)
        other = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="o")
        store.put_template(other)
        gone = PresetConfig(
            id=uuid.uuid4(),
            template_id=other.id,
            template_version_id=other.active_version_id,
            desired_instances=1,
        )
        store.put_preset(gone)
        store.put_template(evolve(other, deprecated=True))

        made = grouped.create_prebuilds_grouped(
            [
                (first.id, ["a", "b"]),
                (gone.id, ["x"]),
                (second.id, ["c"]),
                (first.id, []),
            ],
            now=T0,
        )

        assert [["a", "b"], [], ["c"], []] == [[r.name for r in m] for m in made]
        assert [first.id, first.id, second.id] == [
            r.preset_id for r in made[0] + made[2]
        ]
        assert {"a", "b", "c"} == {i.name for i in store.list_instances()}
        builds = [store.get_build(r.build_id) for r in made[0] + made[2]]
        assert [BuildStatus.PENDING] * 3 == [b.status for b in builds]

    def test_an_unknown_preset_or_a_bad_name_writes_nothing(self, store):
        """PresetNotFoundError and InvalidInputError (naming the field): nothing written."""
        grouped = _grouped(store)
        _, config = seed(store)
        unknown = uuid.uuid4()

        with pytest.raises(PresetNotFoundError):
            grouped.create_prebuilds_grouped(
                [(config.id, ["a"]), (unknown, ["b"])], now=T0
            )
        with pytest.raises(InvalidInputError, match=r"groups\[1\]\.names\[0\]"):
            grouped.create_prebuilds_grouped(
                [(config.id, ["a"]), (config.id, [""])], now=T0
            )
        with pytest.raises(InvalidInputError, match=r"groups\[0\]"):
            grouped.create_prebuilds_grouped([config.id], now=T0)

        assert [] == store.list_instances()


class TestReadPool:
    def test_pooled_instances_with_their_latest_build(self, store):
        """read_pool hands out each pooled, not deleted instance with its latest build."""
        _, config = seed(store, desired=5)
        starting = store.create_prebuild(config.id, now=T0, name="starting")
        running = ready_prebuild(store, config.id, T0 + timedelta(seconds=1))
        deleting = ready_prebuild(store, config.id, T0 + timedelta(seconds=2))
        delete = store.delete_prebuild(
            deleting.instance_id, now=T0 + timedelta(seconds=3)
        )
        gone = ready_prebuild(store, config.id, T0 + timedelta(seconds=4))
        deleted = store.delete_prebuild(gone.instance_id, now=T0)
        claimed = ready_prebuild(store, config.id, T0 - timedelta(seconds=1))
        assert starting is not None
        assert delete is not None
        assert deleted is not None
        store.build_finished(deleted.build_id, now=T0, succeeded=True)
        assert claimed.instance_id == claim(store, config.id).id

        facts = store.read_pool()

        def pooled(
            request: BuildRequest,
            build: BuildRequest,
            *,
            ready: bool,
            transition: Transition,
            status: BuildStatus,
            number: int,
            at: datetime,
        ) -> PooledInstance:
            return PooledInstance(
                id=request.instance_id,
                preset_id=config.id,
                template_id=config.template_id,
                template_version_id=config.template_version_id,
                name=request.name,
                created_at=store.get_instance(request.instance_id).created_at,
                ready=ready,
                latest_build_id=build.build_id,
                latest_transition=transition,
                latest_status=status,
                latest_number=number,
                latest_created_at=at,
            )

        assert [
            pooled(
                starting,
                starting,
                ready=False,
                transition=Transition.START,
                status=BuildStatus.PENDING,
                number=1,
                at=T0,
            ),
            pooled(
                running,
                running,
                ready=True,
                transition=Transition.START,
                status=BuildStatus.SUCCEEDED,
                number=1,
                at=T0 + timedelta(seconds=1),
            ),
            pooled(
                deleting,
                delete,
                ready=False,
                transition=Transition.DELETE,
                status=BuildStatus.PENDING,
                number=2,
                at=T0 + timedelta(seconds=3),
            ),
        ] == sorted(facts.instances, key=lambda i: i.created_at)
        assert [(config.id, PresetStatus.HEALTHY)] == [
            (f.config.id, f.status) for f in facts.presets
        ]

    def test_the_preset_facts_are_read_presets(self, store):
        """read_pool's facts of a preset are read_preset's."""
        _, config = seed(store)
        store.invalidate_preset(config.id, at=T0)
        store.set_preset_status(config.id, PresetStatus.HARD_LIMITED)

        assert [store.read_preset(config.id)] == list(store.read_pool().presets)


class TestStamps:
    """The optional StampedClaims capability, on the stores that offer it."""

    @pytest.fixture(name="stamped")
    def _stamped(self, store):
        if not isinstance(store, StampedClaims):
            pytest.fail(f"{type(store).__name__} should offer claim_if_unchanged")
        return store

    def test_what_a_claim_depends_on_changes_the_stamp(self, stamped):
        """put_preset, invalidate_preset and put_template of its template change it."""
        from attrs import evolve

        template, config = seed(stamped)
        stamps = [stamped.read_preset(config.id).stamp]
        stamped.put_preset(evolve(config, desired_instances=3))
        stamps.append(stamped.read_preset(config.id).stamp)
        stamped.invalidate_preset(config.id, at=T0)
        stamps.append(stamped.read_preset(config.id).stamp)
        stamped.put_template(evolve(template, default_ttl=None))
        stamps.append(stamped.read_preset(config.id).stamp)

        assert None not in stamps
        assert len(set(stamps)) == len(stamps)

    def test_a_stale_stamp_writes_nothing(self, stamped):
        """claim_if_unchanged with a stamp read before a change raises, writing nothing."""
        _, config = seed(stamped)
        ready_prebuild(stamped, config.id)
        stale = stamped.read_preset(config.id).stamp
        stamped.invalidate_preset(config.id, at=T0 - timedelta(days=1))
        before = (stamped.list_instances(), stamped.list_builds())

        with pytest.raises(PresetChangedError) as info:
            stamped.claim_if_unchanged(
                stamp=stale, **claim_arguments(stamped, config.id)
            )

        assert config.id == info.value.preset_id
        assert before == (stamped.list_instances(), stamped.list_builds())

    def test_the_current_stamp_claims(self, stamped):
        """claim_if_unchanged with the current stamp claims as claim does."""
        _, config = seed(stamped)
        created = ready_prebuild(stamped, config.id)
        stamp = stamped.read_preset(config.id).stamp

        got = stamped.claim_if_unchanged(
            stamp=stamp, **claim_arguments(stamped, config.id)
        )
        again = stamped.claim_if_unchanged(
            stamp=stamp, **claim_arguments(stamped, config.id)
        )

        assert (created.instance_id, None) == (got.id if got else None, again)

    def test_an_unknown_preset_counts_as_changed(self, stamped):
        """A preset that does not exist has no stamp to match."""
        _, config = seed(stamped)
        arguments = claim_arguments(stamped, config.id)
        arguments["preset_id"] = uuid.uuid4()

        with pytest.raises(PresetChangedError):
            stamped.claim_if_unchanged(stamp=0, **arguments)


class TestSnapshot:
    def test_running_needs_a_successful_start(self, store):
        """Only pooled instances whose latest build is a successful start are running."""
        _, config = seed(store, desired=5)
        ready = ready_prebuild(store, config.id)
        built_not_ready = store.create_prebuild(config.id, now=T0, name="b")
        assert built_not_ready is not None
        store.build_finished(built_not_ready.build_id, now=T0, succeeded=True)
        failed = store.create_prebuild(config.id, now=T0, name="c")
        assert failed is not None
        store.build_finished(failed.build_id, now=T0, succeeded=False)
        store.create_prebuild(config.id, now=T0, name="pending")

        running = {(p.id, p.ready) for p in snap(store).running}

        assert {
            (ready.instance_id, True),
            (built_not_ready.instance_id, False),
        } == running

    def test_in_progress_counts_by_transition(self, store):
        """Pending and running builds of the active version are counted per transition."""
        _, config = seed(store, desired=5)
        store.create_prebuild(config.id, now=T0, name="a")
        started = store.create_prebuild(config.id, now=T0, name="b")
        assert started is not None
        store.build_started(started.build_id, now=T0)
        to_delete = ready_prebuild(store, config.id)
        store.delete_prebuild(to_delete.instance_id, now=T0)

        counts = {(r.preset_id, r.transition, r.count) for r in snap(store).in_progress}

        assert {
            (config.id, Transition.START, 2),
            (config.id, Transition.DELETE, 1),
        } == counts

    def test_claimed_instances_leave_the_pool(self, store):
        """A claimed instance is neither running nor claimable again."""
        _, config = seed(store)
        ready_prebuild(store, config.id)

        claimed = claim(store, config.id)

        assert claimed is not None
        assert () == snap(store).running
        assert claim(store, config.id) is None

    def test_pending_counts_only_queued_creations_of_inactive_versions(self, store):
        """Queued first builds of an old version are pending; started ones are not."""
        from attrs import evolve

        template, config = seed(store, desired=3)
        store.create_prebuild(config.id, now=T0, name="a")
        store.create_prebuild(config.id, now=T0, name="b")
        picked = store.create_prebuild(config.id, now=T0, name="c")
        assert picked is not None
        store.build_started(picked.build_id, now=T0)
        store.put_template(evolve(template, active_version_id=uuid.uuid4()))

        snapshot = snap(store)

        assert (PendingCount(preset_id=config.id, count=2),) == snapshot.pending
        assert () == snapshot.in_progress

    def test_backoff_counts_recent_failures(self, store):
        """Failures among the last N starts within the look-back give a backoff row."""
        _, config = seed(store, desired=2)
        times = [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
        for at in times:
            request = store.create_prebuild(config.id, now=at, name="x")
            assert request is not None
            store.build_finished(request.build_id, now=at, succeeded=False)

        snapshot = snap(store, T0 + timedelta(minutes=3))

        assert (
            Backoff(preset_id=config.id, num_failed=3, last_build_at=times[2]),
        ) == snapshot.backoffs

    def test_old_failures_do_not_back_off(self, store):
        """Failures older than the look-back window are forgotten."""
        _, config = seed(store, desired=2)
        request = store.create_prebuild(config.id, now=T0, name="x")
        assert request is not None
        store.build_finished(request.build_id, now=T0, succeeded=False)

        assert () == snap(store, T0 + LOOKBACK + timedelta(seconds=1)).backoffs

    def test_success_in_the_top_n_hides_older_failures(self, store):
        """Only the desired-most-recent starts decide whether a preset backs off."""
        _, config = seed(store, desired=1)
        failed = store.create_prebuild(config.id, now=T0, name="x")
        assert failed is not None
        store.build_finished(failed.build_id, now=T0, succeeded=False)
        ready_prebuild(store, config.id, T0 + timedelta(minutes=1))

        assert () == snap(store, T0 + timedelta(minutes=2)).backoffs

    def test_hard_limit_needs_the_last_n_all_failed(self, store):
        """A preset is hard-limited when its last `hard_limit` starts all failed."""
        _, config = seed(store, desired=5)
        for minute in range(3):
            at = T0 + timedelta(minutes=minute)
            request = store.create_prebuild(config.id, now=at, name="x")
            assert request is not None
            store.build_finished(request.build_id, now=at, succeeded=False)

        later = T0 + timedelta(days=1)
        assert frozenset({config.id}) == snap(store, later, hard_limit=3).hard_limited
        assert frozenset() == snap(store, later, hard_limit=4).hard_limited
        assert frozenset() == snap(store, later, hard_limit=0).hard_limited

    def test_snapshot_feeds_the_calculator(self, store):
        """filter_by_preset on a store snapshot splits expired from running."""
        _, config = seed(store, ttl=timedelta(minutes=10))
        old = ready_prebuild(store, config.id, T0)
        new = ready_prebuild(store, config.id, T0 + timedelta(minutes=5))

        preset_snapshot = snap(store, T0 + timedelta(minutes=12)).filter_by_preset(
            config.id, now=T0 + timedelta(minutes=12)
        )

        assert [new.instance_id] == [p.id for p in preset_snapshot.running]
        assert [old.instance_id] == [p.id for p in preset_snapshot.expired]

    def test_in_progress_carries_the_template(self, store):
        """In-progress rows name their template and version."""
        template, config = seed(store)
        store.create_prebuild(config.id, now=T0, name="a")

        assert (
            InProgressCount(
                preset_id=config.id,
                transition=Transition.START,
                count=1,
                template_id=template.id,
                template_version_id=template.active_version_id,
            ),
        ) == snap(store).in_progress


class TestDelete:
    def test_delete_writes_a_pending_delete_build(self, store):
        """delete_prebuild adds build 2, a pending delete; success marks the instance deleted."""
        _, config = seed(store)
        created = ready_prebuild(store, config.id)

        request = store.delete_prebuild(created.instance_id, now=T0)

        assert request is not None
        build = store.get_build(request.build_id)
        assert (Transition.DELETE, BuildStatus.PENDING, 2) == (
            build.transition,
            build.status,
            build.build_number,
        )
        store.build_finished(request.build_id, now=T0, succeeded=True)
        assert store.get_instance(created.instance_id).deleted
        assert [] == store.list_instances(preset_id=config.id)
        assert 1 == len(store.list_instances(preset_id=config.id, include_deleted=True))

    def test_delete_refuses_a_claimed_instance(self, store):
        """A claimed instance is never deleted by the pool."""
        _, config = seed(store)
        created = ready_prebuild(store, config.id)
        assert claim(store, config.id) is not None

        assert store.delete_prebuild(created.instance_id, now=T0) is None
        assert 1 == len(store.list_builds(instance_id=created.instance_id))

    def test_delete_is_not_repeated(self, store):
        """A second delete of an instance already being deleted does nothing."""
        _, config = seed(store)
        created = ready_prebuild(store, config.id)
        assert store.delete_prebuild(created.instance_id, now=T0) is not None

        assert store.delete_prebuild(created.instance_id, now=T0) is None
        assert store.delete_prebuild(uuid.uuid4(), now=T0) is None

    def test_a_failed_delete_may_be_retried(self, store):
        """After a failed delete build the instance can be deleted again."""
        _, config = seed(store)
        created = ready_prebuild(store, config.id)
        first = store.delete_prebuild(created.instance_id, now=T0)
        assert first is not None
        store.build_finished(first.build_id, now=T0, succeeded=False)

        assert store.delete_prebuild(created.instance_id, now=T0) is not None


class TestCancelPending:
    def test_cancel_marks_queued_creations_canceled_and_orphans_them(self, store):
        """cancel_pending cancels queued first builds of an old version and orphan-deletes."""
        from attrs import evolve

        template, config = seed(store)
        queued = store.create_prebuild(config.id, now=T0, name="a")
        started = store.create_prebuild(config.id, now=T0, name="b")
        assert queued is not None
        assert started is not None
        store.build_started(started.build_id, now=T0)
        store.put_template(evolve(template, active_version_id=uuid.uuid4()))

        requests = store.cancel_pending(config.id, now=T0)

        assert [(queued.instance_id, Transition.DELETE, True)] == [
            (r.instance_id, r.transition, r.orphan) for r in requests
        ]
        assert BuildStatus.CANCELED == store.get_build(queued.build_id).status
        assert BuildStatus.RUNNING == store.get_build(started.build_id).status
        assert () == snap(store).pending

    def test_cancel_leaves_the_active_version_alone(self, store):
        """Queued creations of the active version are not canceled."""
        _, config = seed(store)
        store.create_prebuild(config.id, now=T0, name="a")

        assert [] == store.cancel_pending(config.id, now=T0)


class TestStuckBuilds:
    def test_builds_older_than_the_timeout_fail(self, store):
        """fail_stuck_builds fails in-progress builds created before the cutoff."""
        _, config = seed(store)
        old = store.create_prebuild(config.id, now=T0, name="a")
        young = store.create_prebuild(
            config.id, now=T0 + timedelta(minutes=20), name="b"
        )
        assert old is not None
        assert young is not None

        failed = store.fail_stuck_builds(
            older_than=T0 + timedelta(minutes=10), now=T0 + timedelta(minutes=30)
        )

        assert [old.build_id] == [b.id for b in failed]
        assert ("timeout", BuildStatus.FAILED) == (
            failed[0].error_kind,
            failed[0].status,
        )
        assert BuildStatus.PENDING == store.get_build(young.build_id).status


class TestClaim:
    def test_claim_takes_the_oldest_ready_instance(self, store):
        """Claims take ready instances oldest first, and set owner, name and lifecycle."""
        _, config = seed(store, desired=3)
        first = ready_prebuild(store, config.id, T0)
        not_ready = store.create_prebuild(config.id, now=T0, name="nr")
        assert not_ready is not None
        store.build_finished(not_ready.build_id, now=T0, succeeded=True)
        second = ready_prebuild(store, config.id, T0 + timedelta(seconds=1))
        user = uuid.uuid4()
        now = T0 + timedelta(minutes=1)

        got = [claim(store, config.id, now, user), claim(store, config.id, now, user)]

        assert [first.instance_id, second.instance_id] == [i.id for i in got if i]
        instance = store.get_instance(first.instance_id)
        assert (user, "mine", now) == (
            instance.owner_id,
            instance.name,
            instance.claimed_at,
        )
        assert Lifecycle(ttl=timedelta(hours=1), last_used_at=now) == instance.lifecycle
        assert claim(store, config.id, now) is None

    def test_claim_never_hands_out_expired_instances(self, store):
        """Expired (by TTL or invalidation) instances are not claimable."""
        _, config = seed(store, ttl=timedelta(minutes=10))
        ready_prebuild(store, config.id, T0)

        assert claim(store, config.id, T0 + timedelta(minutes=11)) is None
        assert claim(store, config.id, T0 + timedelta(minutes=10)) is not None

    def test_claim_respects_invalidation(self, store):
        """Instances created before the preset's invalidation are not claimable."""
        _, config = seed(store)
        ready_prebuild(store, config.id, T0)
        store.invalidate_preset(config.id, at=T0 + timedelta(seconds=1))

        assert claim(store, config.id, T0 + timedelta(minutes=1)) is None

    def test_claim_needs_the_active_version(self, store):
        """Instances of an old version are not claimable."""
        from attrs import evolve

        template, config = seed(store)
        ready_prebuild(store, config.id)
        store.put_template(evolve(template, active_version_id=uuid.uuid4()))

        assert claim(store, config.id) is None

    def test_claim_of_unknown_preset_misses(self, store):
        """A claim for a preset with no instances returns None."""
        _, config = seed(store)
        arguments = claim_arguments(store, config.id)
        arguments["preset_id"] = uuid.uuid4()

        assert store.claim(**arguments) is None

    def test_claim_compares_the_version_it_is_given(self, store):
        """The store compares the instance's version with version_id, nothing else."""
        _, config = seed(store)
        ready_prebuild(store, config.id)
        arguments = claim_arguments(store, config.id)

        assert store.claim(**{**arguments, "version_id": uuid.uuid4()}) is None
        assert store.claim(**arguments) is not None

    def test_claim_compares_the_cutoff_it_is_given(self, store):
        """Created before not_before: not claimable; at it: claimable."""
        _, config = seed(store, desired=2)
        older = ready_prebuild(store, config.id, T0)
        newer = ready_prebuild(store, config.id, T0 + timedelta(seconds=1))
        arguments = claim_arguments(store, config.id, T0 + timedelta(minutes=1))
        arguments["not_before"] = T0 + timedelta(seconds=1)

        got = [store.claim(**arguments), store.claim(**arguments)]

        assert [newer.instance_id, None] == [i.id if i else None for i in got]
        assert store.get_instance(older.instance_id).owner_id == PREBUILDS_OWNER_ID

    def test_list_instances_filters_by_owner(self, store):
        """list_instances filters by preset and owner, oldest first."""
        _, config = seed(store)
        a = ready_prebuild(store, config.id, T0)
        b = ready_prebuild(store, config.id, T0 + timedelta(seconds=1))
        user = uuid.uuid4()
        claim(store, config.id, T0, user)

        assert [a.instance_id] == [i.id for i in store.list_instances(owner_id=user)]
        assert [b.instance_id] == [
            i.id for i in store.list_instances(owner_id=PREBUILDS_OWNER_ID)
        ]
        assert [a.instance_id, b.instance_id] == [
            i.id for i in store.list_instances(preset_id=config.id)
        ]


class TestLeader:
    def test_leader_is_exclusive_and_released(self, store):
        """Only one leader scope at a time; leaving it releases leadership."""
        with store.leader() as first:
            assert first
            with store.leader() as second:
                assert not second
        with store.leader() as again:
            assert again

    def test_snapshot_inside_the_leader_scope(self, store):
        """The pool's facts can be read inside the leader scope."""
        _, config = seed(store)
        with store.leader() as acquired:
            assert acquired
            assert [config.id] == [p.id for p in snap(store).presets]


class TestFencing:
    def test_fenced_writes_need_a_lease_that_leads(self, store):
        """A never-held or ended lease writes nothing; the held one writes."""
        _, config = seed(store)
        with store.leader() as ended:
            pass

        for lease in (Lease(held=False), ended):
            with pytest.raises(LeadershipLostError):
                store.create_prebuild(config.id, now=T0, name="x", lease=lease)
            with pytest.raises(LeadershipLostError):
                store.set_preset_status(
                    config.id, PresetStatus.HARD_LIMITED, lease=lease
                )
        assert store.list_instances() == []
        assert store.read_preset(config.id).status is PresetStatus.HEALTHY
        with store.leader() as lease:
            request = store.create_prebuild(config.id, now=T0, name="x", lease=lease)
            assert request is not None
            store.build_finished(request.build_id, now=T0, succeeded=True, lease=lease)
            assert store.delete_prebuild(request.instance_id, now=T0, lease=lease)
            assert store.fail_stuck_builds(older_than=T0, now=T0, lease=lease) == []
            assert store.cancel_pending(config.id, now=T0, lease=lease) == []

    def test_unfenced_writes_go_on_while_someone_leads(self, store):
        """lease=None (the host's own calls) is not fenced."""
        _, config = seed(store)
        with store.leader() as lease:
            assert lease
            assert store.create_prebuild(config.id, now=T0, name="host") is not None

    def test_a_lease_must_be_a_lease(self, store):
        """Anything but a Lease or None is an InvalidInputError naming the lease."""
        _, config = seed(store)
        with pytest.raises(InvalidInputError) as info:
            store.create_prebuild(config.id, now=T0, name="x", lease=True)
        assert info.value.field == "lease"
        assert store.list_instances() == []


class TestNaiveTimes:
    def test_naive_datetimes_are_rejected(self, store):
        """Every time argument must be timezone-aware."""
        _, config = seed(store)
        naive = datetime(2024, 1, 1)  # noqa: DTZ001

        with pytest.raises(InvalidInputError):
            store.create_prebuild(config.id, now=naive, name="x")
        with pytest.raises(InvalidInputError):
            snap(store, naive)
        with pytest.raises(InvalidInputError):
            claim(store, config.id, naive)


class TestMemoryStoreLeases:
    def test_a_lease_ttl_on_the_stores_clock(self) -> None:
        """
        With lease_ttl, a lease expires on the injected clock unless a fenced
        write renews it; an expired lease is taken over and writes nothing.
        """
        clock = FakeClock()
        store = MemoryStore(clock=clock, lease_ttl=timedelta(minutes=1))
        _, config = seed(store)
        with store.leader() as old:
            clock.advance(timedelta(seconds=50))
            store.set_preset_status(config.id, PresetStatus.HARD_LIMITED, lease=old)
            clock.advance(timedelta(seconds=50))  # renewed 50 s ago: still held
            with store.leader() as blocked:
                assert not blocked
            clock.advance(timedelta(seconds=11))
            with store.leader() as new:
                assert new
                with pytest.raises(LeadershipLostError):
                    store.create_prebuild(config.id, now=T0, name="x", lease=old)
                assert store.create_prebuild(config.id, now=T0, name="y", lease=new)
        assert [i.name for i in store.list_instances()] == ["y"]

    @pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), 60])
    def test_a_bad_lease_ttl_is_refused(self, bad: object) -> None:
        """lease_ttl is None or a positive timedelta."""
        with pytest.raises(InvalidInputError) as info:
            MemoryStore(lease_ttl=bad)  # type: ignore[arg-type]
        assert info.value.field == "lease_ttl"
