"""
The kit's rule checks: one short, fixed scenario per rule of the Store and
Claimer contracts.

:func:`~prebuilds.testing.check_store` and
:func:`~prebuilds.testing.check_claimer` run them before the state machine,
so that a store or a claimer that breaks a single rule is caught in every
run, whatever Hypothesis draws. Each scenario builds its own template and
presets in the one store of the check, and looks only at them.
"""

from __future__ import annotations

import itertools

from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

import attrs

from prebuilds._claimer import StoreClaimer
from prebuilds._lifecycle import claimed_lifecycle, pooled_lifecycle
from prebuilds._model import PresetStatus, Transition, expiry_cutoff
from prebuilds._pool import PooledInstance, derive
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    BuildStatus,
    PresetConfig,
    Template,
)
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    NoClaimablePrebuildsError,
    PresetChangedError,
    PresetInactiveError,
    PresetNotFoundError,
    TemplateNotFoundError,
)
from prebuilds.interfaces import BatchCreates, LeanClaims, StampedClaims
from prebuilds.testing._fakes import DEFAULT_START


if TYPE_CHECKING:
    from collections.abc import Callable

    from prebuilds._model import GlobalSnapshot
    from prebuilds._records import Build, Instance, Lifecycle
    from prebuilds.interfaces import Claimer, Store

__all__ = [
    "BATCH_RULES",
    "CLAIM_RULES",
    "STAMP_RULES",
    "STORE_RULES",
    "Rule",
    "check_rules",
    "pooled_view",
    "unknown_id_calls",
]

T0 = DEFAULT_START
SECOND = timedelta(seconds=1)
USER = UUID(int=0xC1A1)
OTHER_USER = UUID(int=0xC1A2)
DEFAULT_TTL = timedelta(hours=8)
LOOKBACK = timedelta(hours=1)
AUTOSTART = "CRON_TZ=UTC 30 9 * * 1-5"


class RuleBrokenError(AssertionError):
    """A rule check failed: the message names the rule."""


@attrs.frozen
class Rule:
    """One rule of a contract and the scenario that checks it."""

    name: str
    check: Callable[[_World], None]


class _World:
    """The store (and claimer) of one check, with helpers to build pools."""

    def __init__(
        self,
        store: Store,
        claimer: Claimer | None,
        rule: str,
        ids: itertools.count[int],
    ) -> None:
        self.store = store
        self.claimer = claimer
        self.rule = rule
        self._ids = ids  # shared by the scenarios of one store
        self._names = itertools.count()

    def fail(self, detail: str) -> NoReturn:
        via = "the store's claim" if self.claimer is None else "the claimer"
        msg = f"[rule: {self.rule}] (claims through {via}) {detail}"
        raise RuleBrokenError(msg)

    def expect(self, expected: object, actual: object, what: str) -> None:
        if expected != actual:
            self.fail(f"{what}: expected {expected!r}, got {actual!r}")

    # -- configuration --------------------------------------------------------
    def new_id(self) -> UUID:
        return UUID(int=next(self._ids))

    def template(self, **changes: Any) -> Template:
        template = Template(
            id=self.new_id(),
            active_version_id=self.new_id(),
            name="rules",
            default_ttl=DEFAULT_TTL,
        )
        template = attrs.evolve(template, **changes)
        self.store.put_template(template)
        return template

    def preset(self, template: Template | None = None, **changes: Any) -> PresetConfig:
        template = template if template is not None else self.template()
        config = PresetConfig(
            id=self.new_id(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=1,
            name="rules",
        )
        config = attrs.evolve(config, **changes)
        self.store.put_preset(config)
        return config

    # -- instances ------------------------------------------------------------
    def created(self, preset: PresetConfig, at: datetime) -> tuple[UUID, UUID]:
        """A new pooled instance with its pending start: (instance, build)."""
        request = self.store.create_prebuild(
            preset.id, now=at, name=f"rules-{next(self._names)}"
        )
        if request is None:
            self.fail(f"create_prebuild refused the active preset {preset.id}")
        return request.instance_id, request.build_id

    def running(
        self, preset: PresetConfig, at: datetime, *, ready: bool = True
    ) -> UUID:
        """A pooled instance created at *at*, started, and ready if *ready*."""
        instance_id, build_id = self.created(preset, at)
        self.store.build_finished(build_id, now=at, succeeded=True)
        if ready:
            self.store.set_ready(instance_id)
        return instance_id

    def failed(self, preset: PresetConfig, at: datetime) -> UUID:
        """A pooled instance created at *at* whose start failed."""
        instance_id, build_id = self.created(preset, at)
        self.store.build_finished(
            build_id, now=at, succeeded=False, error_kind="rules", error="failed"
        )
        return instance_id

    def claim(
        self,
        preset: PresetConfig,
        at: datetime,
        *,
        user: UUID = USER,
        name: str = "claimed",
        ttl: timedelta | None = None,
        autostart: bool = False,
    ) -> UUID | None:
        """A claim at *at*: the instance's ID, or None on a miss."""
        schedule = AUTOSTART if autostart else None
        next_start = at + timedelta(days=1) if autostart else None
        if self.claimer is not None:
            try:
                return self.claimer.claim(
                    now=at,
                    user_id=user,
                    name=name,
                    preset_id=preset.id,
                    autostart_schedule=schedule,
                    next_start_at=next_start,
                    ttl=ttl,
                )
            except (NoClaimablePrebuildsError, PresetInactiveError):
                return None
        # What the reference claimer would ask: the active version, the
        # cut-off and the lifecycle, from a fresh read.
        facts = self.store.read_preset(preset.id)
        instance = self.store.claim(
            preset_id=preset.id,
            user_id=user,
            name=name,
            lifecycle=claimed_lifecycle(
                now=at,
                autostart_schedule=schedule,
                next_start_at=next_start,
                ttl=ttl,
                template_default_ttl=facts.template.default_ttl,
            ),
            now=at,
            version_id=facts.template.active_version_id,
            not_before=expiry_cutoff(
                ttl=facts.config.ttl,
                last_invalidated_at=facts.last_invalidated_at,
                now=at,
            ),
        )
        return None if instance is None else instance.id

    def claims(
        self, preset: PresetConfig, at: datetime, count: int
    ) -> list[UUID | None]:
        """*count* claims in a row, a second apart from *at*."""
        return [self.claim(preset, at + n * SECOND) for n in range(count)]

    def snapshot(self, at: datetime, *, hard_limit: int = 0) -> GlobalSnapshot:
        """Every pool's state at *at*, derived from the store's facts."""
        return derive(
            self.store.read_pool(),
            now=at,
            backoff_lookback=LOOKBACK,
            hard_limit=hard_limit,
        )

    def state(self) -> object:
        """Everything a claim could change, as the store reads it back."""
        return (
            self.store.list_instances(include_deleted=True),
            self.store.list_builds(),
        )


# -- claims ------------------------------------------------------------------------
def _oldest_first(world: _World) -> None:
    preset = world.preset(desired_instances=4)
    later = world.running(preset, T0 + 2 * SECOND)
    oldest = world.running(preset, T0)
    middle = world.running(preset, T0 + SECOND)
    tied = sorted(world.running(preset, T0 + 3 * SECOND) for _ in range(2))

    got = world.claims(preset, T0 + 10 * SECOND, 6)

    world.expect(
        [oldest, middle, later, *tied, None],
        got,
        "claims of a pool of five ready instances, oldest first (then by ID), "
        "then a miss",
    )


def _expired_by_ttl(world: _World) -> None:
    preset = world.preset(ttl=timedelta(minutes=30), desired_instances=2)
    old = world.running(preset, T0)
    world.running(preset, T0 + timedelta(minutes=20))

    at_ttl = world.claim(preset, T0 + timedelta(minutes=30))
    world.expect(old, at_ttl, "a claim when the oldest is exactly TTL old")
    other = world.preset(ttl=timedelta(minutes=30), desired_instances=2)
    stale = world.running(other, T0)
    fresh = world.running(other, T0 + timedelta(minutes=20))
    got = world.claims(other, T0 + timedelta(minutes=30, microseconds=1), 2)
    world.expect(
        [fresh, None],
        got,
        f"claims after the instance {stale} outlived the preset's TTL",
    )


def _expired_by_invalidation(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    stale = world.running(preset, T0)
    world.store.invalidate_preset(preset.id, at=T0 + SECOND)
    fresh = world.running(preset, T0 + SECOND)

    got = world.claims(preset, T0 + 2 * SECOND, 2)

    world.expect(
        [fresh, None],
        got,
        f"claims after the instance {stale} was created before the "
        "preset's invalidation",
    )


def _not_ready(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    unready = world.running(preset, T0, ready=False)
    ready = world.running(preset, T0 + SECOND)

    got = world.claims(preset, T0 + 2 * SECOND, 2)
    world.expect(
        [ready, None], got, f"claims while the oldest, {unready}, is not ready"
    )
    world.store.set_ready(unready)
    world.expect(
        unready, world.claim(preset, T0 + 5 * SECOND), "a claim once it is ready"
    )


def _not_running(world: _World) -> None:
    preset = world.preset(desired_instances=4)
    starting, _ = world.created(preset, T0)
    failed = world.failed(preset, T0 + SECOND)
    deleting = world.running(preset, T0 + 2 * SECOND)
    world.store.delete_prebuild(deleting, now=T0 + 3 * SECOND)
    for instance_id in (starting, failed, deleting):
        world.store.set_ready(instance_id)  # a host's report that came late
    running = world.running(preset, T0 + 4 * SECOND)

    got = world.claims(preset, T0 + 5 * SECOND, 2)

    world.expect(
        [running, None],
        got,
        "claims of a pool in which only one ready instance is running (the "
        "others are starting, failed and deleting)",
    )


def _active_version(world: _World) -> None:
    template = world.template()
    preset = world.preset(template)
    instance = world.running(preset, T0)
    world.store.put_template(attrs.evolve(template, active_version_id=world.new_id()))
    world.expect(
        None,
        world.claim(preset, T0 + SECOND),
        "a claim of a preset whose template has a newer active version",
    )
    world.store.put_template(template)
    world.expect(
        instance,
        world.claim(preset, T0 + 2 * SECOND),
        "a claim once the preset's version is active again",
    )


def _template_state(state: str) -> Callable[[_World], None]:
    def check(world: _World) -> None:
        template = world.template()
        preset = world.preset(template, desired_instances=2)
        first = world.running(preset, T0)
        second = world.running(preset, T0 + SECOND)
        world.expect(first, world.claim(preset, T0 + 2 * SECOND), "a first claim")
        changes: dict[str, Any] = {state: True}
        world.store.put_template(attrs.evolve(template, **changes))
        world.expect(
            None,
            world.claim(preset, T0 + 3 * SECOND),
            f"a claim of a preset whose template is {state} (since the first claim)",
        )
        world.store.put_template(template)
        world.expect(
            second,
            world.claim(preset, T0 + 4 * SECOND),
            f"a claim once the template is no longer {state}",
        )

    return check


def _changes_between_claims(world: _World) -> None:
    template = world.template()
    preset = world.preset(template, desired_instances=6)
    minute = timedelta(minutes=1)
    pool = [world.running(preset, T0 + n * minute) for n in range(6)]
    at = T0 + 10 * minute
    got = [world.claim(preset, at)]
    world.store.put_template(attrs.evolve(template, active_version_id=world.new_id()))
    got.append(world.claim(preset, at + SECOND))
    world.store.put_template(template)
    got.append(world.claim(preset, at + 2 * SECOND))
    # A TTL that expires the third instance (created at T0 + 2 min).
    world.store.put_preset(attrs.evolve(preset, ttl=timedelta(minutes=30)))
    at = T0 + timedelta(minutes=32, seconds=1)
    got.append(world.claim(preset, at))
    # An invalidation that expires the fifth (the sixth was created at it).
    world.store.invalidate_preset(preset.id, at=T0 + 5 * minute)
    got += world.claims(preset, at + SECOND, 2)

    world.expect(
        [pool[0], None, pool[1], pool[3], pool[5], None],
        got,
        "claims between which the template got a new active version (and back), "
        "the preset a TTL, and an invalidation",
    )


def _own_preset(world: _World) -> None:
    template = world.template()
    empty = world.preset(template)
    full = world.preset(template)
    world.running(empty, T0, ready=False)
    other = world.running(full, T0)

    world.expect(
        None, world.claim(empty, T0 + SECOND), "a claim of a preset with none ready"
    )
    world.expect(
        PREBUILDS_OWNER_ID,
        world.store.get_instance(other).owner_id,
        "the owner of another preset's ready instance",
    )


def _claimed_fields(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    first = world.running(preset, T0)
    second = world.running(preset, T0 + SECOND)
    template = world.store.get_template(preset.template_id)
    cases = [
        (first, None, True, T0 + timedelta(minutes=1)),
        (second, timedelta(hours=1), False, T0 + timedelta(minutes=2)),
    ]
    for expected_id, ttl, autostart, at in cases:
        before = world.store.get_instance(expected_id)
        name = f"claimed-at-{at:%H%M}"
        got = world.claim(
            preset, at, ttl=ttl, autostart=autostart, user=OTHER_USER, name=name
        )
        world.expect(expected_id, got, "the claimed instance")
        after = world.store.get_instance(expected_id)
        lifecycle = claimed_lifecycle(
            now=at,
            autostart_schedule=AUTOSTART if autostart else None,
            next_start_at=at + timedelta(days=1) if autostart else None,
            ttl=ttl,
            template_default_ttl=template.default_ttl,
        )
        world.expect(
            (OTHER_USER, name, at, lifecycle, before.created_at, False),
            (
                after.owner_id,
                after.name,
                after.claimed_at,
                after.lifecycle,
                after.created_at,
                after.deleted,
            ),
            "the claimed instance's (owner, name, claimed_at, lifecycle, "
            "created_at, deleted)",
        )


CLAIM_RULES = (
    Rule(
        "claim: the oldest claimable instance first, each at most once", _oldest_first
    ),
    Rule("claim: never an instance older than the preset's TTL", _expired_by_ttl),
    Rule(
        "claim: never an instance created before the preset's invalidation",
        _expired_by_invalidation,
    ),
    Rule("claim: never an instance that is not ready", _not_ready),
    Rule(
        "claim: never an instance whose latest build is not a successful start",
        _not_running,
    ),
    Rule("claim: never an instance of a version that is not active", _active_version),
    Rule(
        "claim: what changed since the last claim counts (version, TTL, invalidation)",
        _changes_between_claims,
    ),
    Rule("claim: only the preset's own instances", _own_preset),
    Rule(
        "claim: owner, name, claimed_at and lifecycle from the claim and the template",
        _claimed_fields,
    ),
)
CLAIMER_RULES = (
    Rule("claim: nothing of a deprecated template", _template_state("deprecated")),
    Rule("claim: nothing of a deleted template", _template_state("deleted")),
)


# -- the store -------------------------------------------------------------------
def _no_delete_of_claimed(world: _World) -> None:
    preset = world.preset()
    instance = world.running(preset, T0)
    world.expect(instance, world.claim(preset, T0 + SECOND), "the claimed instance")
    before = (
        world.store.get_instance(instance),
        world.store.list_builds(instance_id=instance),
    )

    request = world.store.delete_prebuild(instance, now=T0 + 2 * SECOND)

    world.expect(None, request, "delete_prebuild of a claimed instance")
    world.expect(
        before,
        (
            world.store.get_instance(instance),
            world.store.list_builds(instance_id=instance),
        ),
        "the claimed instance and its builds after delete_prebuild",
    )


def _delete_once(world: _World) -> None:
    preset = world.preset()
    instance = world.running(preset, T0)

    request = world.store.delete_prebuild(instance, now=T0 + SECOND)

    if request is None:
        world.fail(f"delete_prebuild refused the running pooled instance {instance}")
    world.expect(
        (instance, Transition.DELETE, False),
        (request.instance_id, request.transition, request.orphan),
        "the delete request's (instance, transition, orphan)",
    )
    world.expect(
        None,
        world.store.delete_prebuild(instance, now=T0 + 2 * SECOND),
        "a second delete_prebuild while the first is pending",
    )
    world.expect(
        None,
        world.store.delete_prebuild(world.new_id(), now=T0),
        "delete_prebuild of an unknown instance",
    )


def _create_together(world: _World) -> None:
    template = world.template()
    preset = world.preset(template)
    instance_id, build_id = world.created(preset, T0)
    instance = world.store.get_instance(instance_id)
    builds = world.store.list_builds(instance_id=instance_id)

    world.expect(
        (PREBUILDS_OWNER_ID, preset.id, False, pooled_lifecycle(now=T0), T0, None),
        (
            instance.owner_id,
            instance.preset_id,
            instance.ready,
            instance.lifecycle,
            instance.created_at,
            instance.claimed_at,
        ),
        "the new instance's (owner, preset, ready, lifecycle, created_at, claimed_at)",
    )
    world.expect(
        [(build_id, 1, Transition.START, BuildStatus.PENDING)],
        [(b.id, b.build_number, b.transition, b.status) for b in builds],
        "the new instance's builds",
    )
    world.store.put_template(attrs.evolve(template, deprecated=True))
    world.expect(
        None,
        world.store.create_prebuild(preset.id, now=T0, name="x"),
        "create_prebuild for a preset whose template is deprecated",
    )


def _running(world: _World) -> None:
    preset = world.preset(desired_instances=7)
    claimed = world.running(preset, T0)
    world.expect(claimed, world.claim(preset, T0 + SECOND), "the claimed instance")
    ready = world.running(preset, T0 + 2 * SECOND)
    unready = world.running(preset, T0 + 3 * SECOND, ready=False)
    world.created(preset, T0 + 4 * SECOND)
    world.failed(preset, T0 + 5 * SECOND)
    deleting = world.running(preset, T0 + 6 * SECOND)
    world.store.delete_prebuild(deleting, now=T0 + 7 * SECOND)

    rows = world.snapshot(T0 + 8 * SECOND).running

    world.expect(
        [(ready, T0 + 2 * SECOND, True), (unready, T0 + 3 * SECOND, False)],
        sorted(
            ((r.id, r.created_at, r.ready) for r in rows if r.preset_id == preset.id),
            key=lambda row: row[1],
        ),
        "the snapshot's running rows of a pool with a ready and an unready "
        "running instance (the others are claimed, starting, failed and "
        "deleting)",
    )


def _in_progress(world: _World) -> None:
    preset = world.preset(desired_instances=5)
    world.created(preset, T0)
    _, started = world.created(preset, T0 + SECOND)
    world.store.build_started(started, now=T0 + 2 * SECOND)
    world.created(preset, T0 + 3 * SECOND)
    deleting = world.running(preset, T0 + 4 * SECOND)
    world.store.delete_prebuild(deleting, now=T0 + 5 * SECOND)

    rows = world.snapshot(T0 + 6 * SECOND).in_progress
    counts: Counter[Transition] = Counter()
    for row in rows:
        if row.preset_id == preset.id:
            counts[row.transition] += row.count

    world.expect(
        {Transition.START: 3, Transition.DELETE: 1},
        dict(counts),
        "the snapshot's in-progress builds of a pool with three starts (one "
        "running) and a delete",
    )


def _pending(world: _World) -> None:
    template = world.template()
    preset = world.preset(template, desired_instances=3)
    world.created(preset, T0)
    world.created(preset, T0 + SECOND)
    _, started = world.created(preset, T0 + 2 * SECOND)
    world.store.build_started(started, now=T0 + 3 * SECOND)
    world.store.put_template(attrs.evolve(template, active_version_id=world.new_id()))

    snapshot = world.snapshot(T0 + 4 * SECOND)

    world.expect(
        (2, 0),
        (
            sum(r.count for r in snapshot.pending if r.preset_id == preset.id),
            sum(r.count for r in snapshot.in_progress if r.preset_id == preset.id),
        ),
        "the snapshot's (pending, in-progress) counts of an old version's "
        "preset with two queued creations and one started",
    )


def _backoff(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    world.failed(preset, T0)
    world.failed(preset, T0 + timedelta(minutes=2))

    recent = world.snapshot(T0 + timedelta(minutes=10)).backoffs
    later = world.snapshot(T0 + LOOKBACK + timedelta(minutes=3)).backoffs

    world.expect(
        [(2, T0 + timedelta(minutes=2))],
        [(b.num_failed, b.last_build_at) for b in recent if b.preset_id == preset.id],
        "the snapshot's backoff of a preset with two failed creations",
    )
    world.expect(
        [],
        [b for b in later if b.preset_id == preset.id],
        "the snapshot's backoff once both failures left the look-back window",
    )


def _hard_limited(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    world.failed(preset, T0)
    world.failed(preset, T0 + SECOND)
    at = T0 + 2 * SECOND

    world.expect(
        [True, False, False],
        [preset.id in world.snapshot(at, hard_limit=n).hard_limited for n in (2, 3, 0)],
        "whether a preset whose two creations failed is hard-limited at "
        "hard_limit 2, 3 and 0",
    )


def _pooled_facts(world: _World) -> None:
    preset = world.preset(desired_instances=8)
    claimed = world.running(preset, T0)
    world.expect(claimed, world.claim(preset, T0 + SECOND), "the claimed instance")
    world.running(preset, T0 + 2 * SECOND)
    world.running(preset, T0 + 3 * SECOND, ready=False)
    world.created(preset, T0 + 4 * SECOND)
    world.failed(preset, T0 + 5 * SECOND)
    for n, finished in ((6, False), (8, True)):
        target = world.running(preset, T0 + n * SECOND)
        request = world.store.delete_prebuild(target, now=T0 + (n + 1) * SECOND)
        if request is None:
            world.fail(f"delete_prebuild refused the running pooled instance {target}")
        if finished:
            world.store.build_finished(
                request.build_id, now=T0 + (n + 1) * SECOND, succeeded=True
            )
    expected = []
    for instance in world.store.list_instances(
        preset_id=preset.id, owner_id=PREBUILDS_OWNER_ID
    ):
        builds = world.store.list_builds(instance_id=instance.id)
        latest = max(builds, key=lambda b: b.build_number)
        expected.append(pooled_view(instance, latest))

    got = [i for i in world.store.read_pool().instances if i.preset_id == preset.id]

    world.expect(
        sorted(expected, key=lambda i: i.id),
        sorted(got, key=lambda i: i.id),
        "read_pool's instances of a pool with running (ready and not), starting, "
        "failed, deleting, deleted and claimed ones: the pooled, not deleted "
        "ones as list_instances and list_builds show them",
    )


def _presets(world: _World) -> None:
    template = world.template()
    current = world.preset(template)
    newer = world.new_id()
    world.store.put_template(
        attrs.evolve(template, active_version_id=newer, deprecated=True)
    )
    later = world.preset(template, template_version_id=newer)
    facts = {f.config.id: f for f in world.store.read_pool().presets}

    for config, active in ((current, False), (later, True)):
        found = facts.get(config.id)
        if found is None:
            world.fail(f"read_pool left out the preset {config.id}")
        preset = found.preset
        world.expect(
            (config, active, True, False),
            (
                found.config,
                preset.using_active_version,
                preset.template_deprecated,
                preset.template_deleted,
            ),
            f"read_pool's preset {config.id} (config, using_active_version, "
            "template_deprecated, template_deleted)",
        )
        world.expect(found, world.store.read_preset(config.id), "read_preset")


def _put_preset_keeps_state(world: _World) -> None:
    preset = world.preset()
    world.store.set_preset_status(preset.id, PresetStatus.HARD_LIMITED)
    world.store.invalidate_preset(preset.id, at=T0)
    world.store.put_preset(attrs.evolve(preset, desired_instances=3))
    got = world.store.read_preset(preset.id)

    world.expect(
        (PresetStatus.HARD_LIMITED, T0, 3),
        (got.status, got.last_invalidated_at, got.config.desired_instances),
        "the preset's (status, last_invalidated_at, desired_instances) after "
        "put_preset replaced it",
    )


def _reads_what_was_put(world: _World) -> None:
    template = world.template(organization_id=world.new_id(), default_ttl=None)
    world.expect(template, world.store.get_template(template.id), "get_template")
    for paused in (True, False):
        world.store.set_paused(paused)
        world.expect(paused, world.store.is_paused(), "is_paused after set_paused")


def _late_reports(world: _World) -> None:
    preset = world.preset(desired_instances=2)
    instance = world.running(preset, T0)
    gone = world.running(preset, T0 + SECOND)
    request = world.store.delete_prebuild(gone, now=T0 + 2 * SECOND)
    if request is None:
        world.fail(f"delete_prebuild refused the running pooled instance {gone}")
    world.store.build_finished(request.build_id, now=T0 + 3 * SECOND, succeeded=True)

    def state() -> object:
        return [
            (world.store.get_instance(i), world.store.list_builds(instance_id=i))
            for i in (instance, gone)
        ]

    before = state()
    for instance_id in (instance, gone):
        for build in world.store.list_builds(instance_id=instance_id):
            world.store.build_started(build.id, now=T0 + 4 * SECOND)
            world.store.build_finished(
                build.id,
                now=T0 + 4 * SECOND,
                succeeded=build.status is not BuildStatus.SUCCEEDED,
            )
    world.store.set_ready(gone)

    world.expect(
        before,
        state(),
        f"the instances and builds after late reports (instance {instance} "
        f"running, {gone} deleted)",
    )


def pooled_view(instance: Instance, latest: Build) -> PooledInstance:
    """A pooled *instance* as ``read_pool`` shows it, with its *latest* build."""
    return PooledInstance(
        id=instance.id,
        preset_id=instance.preset_id,
        template_id=instance.template_id,
        template_version_id=instance.template_version_id,
        name=instance.name,
        created_at=instance.created_at,
        ready=instance.ready,
        latest_build_id=latest.id,
        latest_transition=latest.transition,
        latest_status=latest.status,
        latest_number=latest.build_number,
        latest_created_at=latest.created_at,
    )


def unknown_id_calls(
    store: Store, unknown: UUID, now: datetime
) -> list[tuple[type[Exception], str, Callable[[], object]]]:
    """Each call with an unknown ID, the error it must raise, and its name."""
    preset = PresetConfig(
        id=unknown,
        template_id=unknown,
        template_version_id=unknown,
        desired_instances=0,
    )
    calls: list[tuple[type[Exception], str, Callable[[], object]]] = [
        (InstanceNotFoundError, "get_instance", lambda: store.get_instance(unknown)),
        (InstanceNotFoundError, "set_ready", lambda: store.set_ready(unknown)),
        (BuildNotFoundError, "get_build", lambda: store.get_build(unknown)),
        (
            BuildNotFoundError,
            "build_started",
            lambda: store.build_started(unknown, now=now),
        ),
        (
            BuildNotFoundError,
            "build_finished",
            lambda: store.build_finished(unknown, now=now, succeeded=True),
        ),
        (PresetNotFoundError, "read_preset", lambda: store.read_preset(unknown)),
        (
            PresetNotFoundError,
            "create_prebuild",
            lambda: store.create_prebuild(unknown, now=now, name="x"),
        ),
        (TemplateNotFoundError, "get_template", lambda: store.get_template(unknown)),
        (
            TemplateNotFoundError,
            "put_preset (of an unknown template)",
            lambda: store.put_preset(preset),
        ),
    ]
    if isinstance(store, BatchCreates):
        batch = store
        calls.append(
            (
                PresetNotFoundError,
                "create_prebuilds",
                lambda: batch.create_prebuilds(unknown, now=now, names=["x", "y"]),
            )
        )
    return calls


def _unknown_ids(world: _World) -> None:
    for error, method, call in unknown_id_calls(world.store, world.new_id(), T0):
        try:
            call()
        except error:
            continue
        except Exception as e:  # noqa: BLE001 - reported as the rule broken
            world.fail(f"{method} of an unknown ID raised {e!r}, not {error.__name__}")
        world.fail(f"{method} of an unknown ID did not raise {error.__name__}")


STORE_RULES = (
    Rule("delete_prebuild: never a claimed instance", _no_delete_of_claimed),
    Rule("delete_prebuild: a pooled instance, once", _delete_once),
    Rule(
        "create_prebuild: the instance and its first build together", _create_together
    ),
    Rule("read_pool: every running pooled instance, and only those", _running),
    Rule("read_pool: every in-progress build", _in_progress),
    Rule("read_pool: the queued creations of an old version", _pending),
    Rule("read_pool: recent failures as a backoff", _backoff),
    Rule("read_pool: hard-limited presets", _hard_limited),
    Rule(
        "read_pool: every pooled instance with its latest build, and only those",
        _pooled_facts,
    ),
    Rule("read_pool: every preset, as put and as read_preset reads it", _presets),
    Rule("put_preset: keeps the status and the invalidation", _put_preset_keeps_state),
    Rule("get_template and is_paused: what was put", _reads_what_was_put),
    Rule("reports: late ones change nothing", _late_reports),
    Rule("lookups: unknown IDs raise the not-found errors", _unknown_ids),
)


# -- the optional stamped claim ----------------------------------------------------
def _stamp_changes(
    world: _World, template: Template, preset: PresetConfig
) -> list[tuple[str, Callable[[], object]]]:
    """The writes that must change *preset*'s stamp."""
    store = world.store
    return [
        (
            "put_preset",
            lambda: store.put_preset(attrs.evolve(preset, name="changed")),
        ),
        (
            "invalidate_preset",
            lambda: store.invalidate_preset(preset.id, at=T0 - SECOND),
        ),
        (
            "put_template of its template",
            lambda: store.put_template(attrs.evolve(template, name="changed")),
        ),
    ]


def _stamps(world: _World) -> None:
    template = world.template()
    preset = world.preset(template)

    def stamp() -> int | None:
        return world.store.read_preset(preset.id).stamp

    if stamp() is None:
        world.fail("read_preset gave no stamp, yet the store has claim_if_unchanged")
    for what, change in _stamp_changes(world, template, preset):
        before = stamp()
        change()
        after = stamp()
        if before is None or after is None or after <= before:
            world.fail(
                f"{what} did not raise the preset's stamp {before} (now {after})"
            )
    in_pool = [
        f.stamp for f in world.store.read_pool().presets if f.config.id == preset.id
    ]
    world.expect([stamp()], in_pool, "read_pool's stamp of the preset")


def _claim_if_unchanged(world: _World) -> None:
    _stamped_claim(world, lean=False)


def _claim_id_if_unchanged(world: _World) -> None:
    _stamped_claim(world, lean=True)


def _stamped_claim(world: _World, *, lean: bool) -> None:
    """
    A stale stamp refused, nothing written; the current one claims (through
    ``claim_id_if_unchanged`` if *lean*: the same instance, the same record).
    """
    store: Any = world.store  # a StampedClaims (and a LeanClaims if lean)
    template = world.template()
    preset = world.preset(template, desired_instances=2)
    first = world.running(preset, T0)
    lifecycle: Lifecycle = claimed_lifecycle(
        now=T0,
        autostart_schedule=None,
        next_start_at=None,
        ttl=None,
        template_default_ttl=template.default_ttl,
    )

    def claim(stamp: object) -> UUID | None:
        if lean:
            claimed: UUID | None = store.claim_id_if_unchanged(
                stamp=stamp,
                preset_id=preset.id,
                user_id=USER,
                name="claimed",
                now=T0 + SECOND,
                autostart_schedule=lifecycle.autostart_schedule,
                next_start_at=lifecycle.next_start_at,
                ttl=lifecycle.ttl,
                version_id=template.active_version_id,
                not_before=None,
            )
            return claimed
        instance = store.claim_if_unchanged(
            stamp=stamp,
            preset_id=preset.id,
            user_id=USER,
            name="claimed",
            lifecycle=lifecycle,
            now=T0 + SECOND,
            version_id=template.active_version_id,
            not_before=None,
        )
        return None if instance is None else instance.id

    for what, change in _stamp_changes(world, template, preset):
        stale = world.store.read_preset(preset.id).stamp
        change()
        before = world.state()
        try:
            claim(stale)
        except PresetChangedError:
            pass
        else:
            world.fail(f"a claim with the stamp read before {what} did not raise")
        world.expect(
            before,
            world.state(),
            f"the store after a claim with a stamp older than {what}",
        )
    current = world.store.read_preset(preset.id).stamp
    world.expect(first, claim(current), "a claim with the current stamp")
    claimed = world.store.get_instance(first)
    # The lean claim's lifecycle is last used at the claim's *now*.
    written = attrs.evolve(lifecycle, last_used_at=T0 + SECOND) if lean else lifecycle
    world.expect(
        (USER, "claimed", T0 + SECOND, written),
        (claimed.owner_id, claimed.name, claimed.claimed_at, claimed.lifecycle),
        "the claimed instance's owner, name, claimed_at and lifecycle",
    )
    world.expect(None, claim(current), "a claim with the current stamp, pool empty")


STAMP_RULES = (
    Rule(
        "stamps: put_preset, invalidate_preset and put_template raise the preset's "
        "stamp",
        _stamps,
    ),
    Rule(
        "claim_if_unchanged: a stale stamp raises PresetChangedError and writes "
        "nothing; the current one claims",
        _claim_if_unchanged,
    ),
)
LEAN_RULES = (
    Rule(
        "claim_id_if_unchanged: a stale stamp raises PresetChangedError and writes "
        "nothing; the current one claims, with the claimed lifecycle, and "
        "returns the ID",
        _claim_id_if_unchanged,
    ),
)


# -- the optional batch creation -----------------------------------------------------
def _batch(world: _World) -> BatchCreates:
    store = world.store
    assert isinstance(store, BatchCreates)  # noqa: S101 - run only on such stores
    return store


def _batch_together(world: _World) -> None:
    batch = _batch(world)
    template = world.template()
    preset = world.preset(template)
    names = ["batch-a", "batch-b", "batch-a"]
    requests = batch.create_prebuilds(preset.id, now=T0, names=names)
    world.expect(
        [
            (preset.id, template.id, preset.template_version_id, name, Transition.START)
            for name in names
        ],
        [
            (r.preset_id, r.template_id, r.template_version_id, r.name, r.transition)
            for r in requests
        ],
        "the requests of create_prebuilds, in the order of the names",
    )
    world.expect(
        len(names) * 2,
        len({r.instance_id for r in requests} | {r.build_id for r in requests}),
        "distinct instance and build IDs",
    )
    for request in requests:
        instance = world.store.get_instance(request.instance_id)
        builds = world.store.list_builds(instance_id=request.instance_id)
        world.expect(
            (PREBUILDS_OWNER_ID, preset.id, request.name, False, T0, None),
            (
                instance.owner_id,
                instance.preset_id,
                instance.name,
                instance.ready,
                instance.created_at,
                instance.claimed_at,
            ),
            "a batch instance's (owner, preset, name, ready, created_at, claimed_at)",
        )
        world.expect(
            [(request.build_id, 1, Transition.START, BuildStatus.PENDING)],
            [(b.id, b.build_number, b.transition, b.status) for b in builds],
            "a batch instance's builds",
        )
    world.expect(
        sorted(r.instance_id.int for r in requests),
        sorted(
            i.id.int
            for i in world.store.list_instances(preset_id=preset.id)
            if i.owner_id == PREBUILDS_OWNER_ID
        ),
        "the preset's instances after create_prebuilds: the batch's, and only those",
    )
    world.expect(
        [], batch.create_prebuilds(preset.id, now=T0, names=[]), "an empty batch"
    )
    world.store.put_template(attrs.evolve(template, deprecated=True))
    before = world.state()
    world.expect(
        [],
        batch.create_prebuilds(preset.id, now=T0, names=["x", "y"]),
        "create_prebuilds for a preset whose template is deprecated",
    )
    world.expect(before, world.state(), "the store after a refused batch")


def _batch_all_or_nothing(world: _World) -> None:
    batch = _batch(world)
    preset = world.preset()
    before = world.state()
    for names, field in ((["ok", ""], "names[1]"), (["ok", "a\x00b"], "names[1]")):
        try:
            batch.create_prebuilds(preset.id, now=T0, names=names)
        except InvalidInputError as e:
            world.expect(
                field, e.field, f"the field InvalidInputError names for {names!r}"
            )
        else:
            world.fail(f"create_prebuilds took the names {names!r}")
        world.expect(before, world.state(), f"the store after the names {names!r}")


def _batch_submits(world: _World) -> None:
    batch = _batch(world)
    preset = world.preset(desired_instances=4)
    handed, dropped, started, never = batch.create_prebuilds(
        preset.id, now=T0, names=["handed", "dropped", "started", "never"]
    )
    world.store.build_started(started.build_id, now=T0)  # so it was handed over
    later = T0 + timedelta(minutes=1)
    batch.record_submits([handed.build_id], not_submitted=[dropped.build_id], now=later)
    build = world.store.get_build(dropped.build_id)
    withdrawn = world.store.get_instance(dropped.instance_id)
    world.expect(
        (BuildStatus.CANCELED, later, "not_submitted", True, False),
        (
            build.status,
            build.finished_at,
            build.error_kind,
            withdrawn.deleted,
            withdrawn.ready,
        ),
        "(status, finished_at, error_kind) of a build record_submits canceled, "
        "and (deleted, ready) of its instance",
    )
    before = world.state()
    batch.record_submits(
        [world.new_id(), handed.build_id],
        not_submitted=[world.new_id(), handed.build_id, started.build_id],
        now=later,
    )
    world.expect(
        before,
        world.state(),
        "the store after record_submits of unknown, submitted and started builds",
    )
    stuck = world.store.fail_stuck_builds(older_than=later, now=later)
    world.expect(
        sorted(
            [
                (handed.build_id.int, BuildStatus.FAILED, "timeout"),
                (started.build_id.int, BuildStatus.FAILED, "timeout"),
                (never.build_id.int, BuildStatus.CANCELED, "not_submitted"),
            ]
        ),
        sorted(
            (b.id.int, b.status, b.error_kind)
            for b in stuck
            if b.preset_id == preset.id
        ),
        "(build, status, error_kind) of fail_stuck_builds after a batch: "
        "canceled if never submitted, failed if submitted or started",
    )
    world.expect(
        {
            handed.instance_id.int: BuildStatus.FAILED,
            started.instance_id.int: BuildStatus.FAILED,
            never.instance_id.int: BuildStatus.CANCELED,
        },
        {
            i.id.int: i.latest_status
            for i in world.store.read_pool().instances
            if i.preset_id == preset.id
        },
        "the latest status of the batch's instances in read_pool (the one "
        "withdrawn gone)",
    )


BATCH_RULES = (
    Rule(
        "create_prebuilds: every instance and its first build, in the names' order",
        _batch_together,
    ),
    Rule(
        "create_prebuilds: a bad name is refused before anything is written",
        _batch_all_or_nothing,
    ),
    Rule(
        "record_submits: a batch's build stuck and never submitted is canceled "
        "(not_submitted), a submitted or started one fails; one never to be "
        "submitted is withdrawn",
        _batch_submits,
    ),
)


def check_rules(
    store_factory: Callable[[], Store],
    claimer_factory: Callable[[Store], Claimer] | None = None,
) -> None:
    """
    Run every rule's scenario once, on one new store.

    Without *claimer_factory* (:func:`~prebuilds.testing.check_store`): the
    store's rules, the claim rules through ``Store.claim``, the stamp rules
    if the store offers :class:`~prebuilds.interfaces.StampedClaims` (and
    :class:`~prebuilds.interfaces.LeanClaims`), the batch rules if it offers
    :class:`~prebuilds.interfaces.BatchCreates`, and the
    claim rules again, with the template's state, through
    :class:`~prebuilds.StoreClaimer`. With it
    (:func:`~prebuilds.testing.check_claimer`): the claim rules through the
    claimer.

    Raises:
        AssertionError: a rule broke; the message names it.
    """
    store = store_factory()
    try:
        if claimer_factory is None:
            stamped: tuple[Rule, ...] = ()
            if isinstance(store, StampedClaims):
                stamped = STAMP_RULES
                if isinstance(store, LeanClaims):
                    stamped += LEAN_RULES
            batch = BATCH_RULES if isinstance(store, BatchCreates) else ()
            runs: list[tuple[Claimer | None, tuple[Rule, ...]]] = [
                (None, STORE_RULES + CLAIM_RULES + stamped + batch),
                (StoreClaimer(store), CLAIM_RULES + CLAIMER_RULES),
            ]
        else:
            runs = [(claimer_factory(store), CLAIM_RULES + CLAIMER_RULES)]
        ids = itertools.count(0xC0DE_0000)
        for claimer, rules in runs:
            for rule in rules:
                rule.check(_World(store, claimer, rule.name, ids))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
