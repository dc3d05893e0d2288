"""Shared pieces of the engine tests: a world of fakes, builders, wrappers."""

from __future__ import annotations

import json
import sqlite3
import uuid

from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import attrs

from prebuilds import (
    PREBUILDS_OWNER_ID,
    Build,
    BuildRequest,
    BuildStatus,
    CollectingEventSink,
    Event,
    EventKind,
    GlobalSnapshot,
    Instance,
    Lease,
    Lifecycle,
    PoolFacts,
    PresetConfig,
    PresetFacts,
    PresetStatus,
    ReconcileStats,
    StoreClaimer,
    StoreReconciler,
    Template,
    Transition,
    derive,
)
from prebuilds.interfaces import Provisioner, Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner


#: How long a FakeProvisioner build takes in these tests.
BUILD_TIME = timedelta(seconds=30)


def snapshot(
    store: Store,
    *,
    now: datetime,
    backoff_lookback: timedelta = timedelta(hours=1),
    hard_limit: int = 3,
) -> GlobalSnapshot:
    """Every pool's state at *now*, derived from one read of *store*."""
    return derive(
        store.read_pool(),
        now=now,
        backoff_lookback=backoff_lookback,
        hard_limit=hard_limit,
    )


def new_template(
    store: Store,
    *,
    default_ttl: timedelta | None = None,
    organization_id: uuid.UUID | None = None,
) -> Template:
    """Write a new template with a fresh active version and return it."""
    template = Template(
        id=uuid.uuid4(),
        active_version_id=uuid.uuid4(),
        name="tpl",
        organization_id=organization_id,
        default_ttl=default_ttl,
    )
    store.put_template(template)
    return template


def new_preset(
    store: Store,
    template: Template,
    *,
    desired: int = 2,
    version_id: uuid.UUID | None = None,
    preset_id: uuid.UUID | None = None,
    **fields: Any,
) -> PresetConfig:
    """Write a new preset of *template*'s active version (unless told) and return it."""
    fields.setdefault("name", "preset")
    config = PresetConfig(
        id=preset_id or uuid.uuid4(),
        template_id=template.id,
        template_version_id=version_id or template.active_version_id,
        desired_instances=desired,
        **fields,
    )
    store.put_preset(config)
    return config


def new_version(store: Store, template: Template) -> Template:
    """Publish a new active version of *template* and return the new template."""
    updated = attrs.evolve(template, active_version_id=uuid.uuid4())
    store.put_template(updated)
    return updated


def pooled(store: Store, preset_id: uuid.UUID) -> list[Instance]:
    """The preset's pooled, not deleted instances (any build state), oldest first."""
    return store.list_instances(preset_id=preset_id, owner_id=PREBUILDS_OWNER_ID)


def running(store: Store, preset_id: uuid.UUID) -> list[Instance]:
    """The preset's pooled instances whose latest build is a successful start."""
    return [
        i
        for i in pooled(store, preset_id)
        if i.latest_transition is Transition.START
        and i.latest_status is BuildStatus.SUCCEEDED
    ]


def ready(store: Store, preset_id: uuid.UUID) -> list[Instance]:
    """The preset's running pooled instances that are ready (claimable)."""
    return [i for i in running(store, preset_id) if i.ready]


def live(store: Store, preset_id: uuid.UUID) -> list[Instance]:
    """Pooled instances that are running or on their way to it (not failed)."""
    return [
        i
        for i in pooled(store, preset_id)
        if i.latest_transition is Transition.START
        and i.latest_status is not BuildStatus.FAILED
        and i.latest_status is not BuildStatus.CANCELED
    ]


def check_integrity(store: Store) -> None:
    """No instance without a build, no build without an instance; numbering holds."""
    instances = {i.id for i in store.list_instances(include_deleted=True)}
    builds = store.list_builds()
    assert instances == {b.instance_id for b in builds}
    for instance_id in instances:
        mine = store.list_builds(instance_id=instance_id)
        assert list(range(1, len(mine) + 1)) == sorted(b.build_number for b in mine)
        first = next(b for b in mine if b.build_number == 1)
        assert first.transition is Transition.START


@attrs.define
class World:
    """A store with a fake clock, a fake provisioner, a reconciler and a claimer."""

    store: Store
    clock: FakeClock
    provisioner: FakeProvisioner
    events: CollectingEventSink
    reconciler: StoreReconciler
    claimer: StoreClaimer

    def cycle(self, advance: timedelta = BUILD_TIME) -> ReconcileStats:
        """One pass, then move the clock by *advance* and let due builds finish."""
        stats = self.reconciler.reconcile_all()
        self.clock.advance(advance)
        self.provisioner.process()
        return stats

    def settle(self, passes: int = 3, advance: timedelta = BUILD_TIME) -> None:
        """A few cycles: enough for a healthy pool to reach its desired size."""
        for _ in range(passes):
            self.cycle(advance)

    def of_kind(self, kind: EventKind) -> list[Event]:
        """The events of *kind* so far, in order."""
        return [e for e in self.events.events if e.kind is kind]

    def claim(self, preset_id: uuid.UUID, **kwargs: Any) -> uuid.UUID:
        """Claim for a new user at the clock's now."""
        kwargs.setdefault("user_id", uuid.uuid4())
        kwargs.setdefault("name", "mine")
        return self.claimer.claim(now=self.clock.now(), preset_id=preset_id, **kwargs)

    def snapshot(self) -> GlobalSnapshot:
        """The reconciler's view of the store now."""
        return self.reconciler.snapshot_state(self.store)


def make_world(
    store: Store,
    *,
    provisioner: Provisioner | None = None,
    clock: FakeClock | None = None,
    ready_on_success: bool = True,
    failure_rate: float = 0.0,
    **reconciler_kwargs: Any,
) -> World:
    """
    A world on *store*: one worker, no submit timeout (no threads), a short
    backoff, no event cooldown, unless *reconciler_kwargs* say otherwise.
    """
    clock = clock or FakeClock()
    fake = FakeProvisioner(
        store,
        clock,
        build_time=BUILD_TIME,
        failure_rate=failure_rate,
        ready_on_success=ready_on_success,
    )
    events = CollectingEventSink()
    reconciler_kwargs.setdefault("max_workers", 1)
    reconciler_kwargs.setdefault("submit_timeout", None)
    reconciler_kwargs.setdefault("backoff_interval", timedelta(minutes=1))
    # Every event, so that tests see each pass's; tests of the cooldown set it.
    reconciler_kwargs.setdefault("event_cooldown", timedelta(0))
    reconciler = StoreReconciler(
        store,
        provisioner if provisioner is not None else fake,
        clock=clock,
        events=events,
        **reconciler_kwargs,
    )
    claimer = StoreClaimer(store, events=events)
    return World(store, clock, fake, events, reconciler, claimer)


class DelegatingStore:
    """A Store that forwards every call to *inner*; override to inject faults."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def put_template(self, template: Template) -> None:
        self.inner.put_template(template)

    def put_preset(self, preset: PresetConfig) -> None:
        self.inner.put_preset(preset)

    def invalidate_preset(self, preset_id: uuid.UUID, *, at: datetime) -> None:
        self.inner.invalidate_preset(preset_id, at=at)

    def set_paused(self, paused: bool) -> None:
        self.inner.set_paused(paused)

    def is_paused(self) -> bool:
        return self.inner.is_paused()

    def get_template(self, template_id: uuid.UUID) -> Template:
        return self.inner.get_template(template_id)

    def read_preset(self, preset_id: uuid.UUID) -> PresetFacts:
        return self.inner.read_preset(preset_id)

    def leader(self) -> AbstractContextManager[Lease]:
        return self.inner.leader()

    def read_pool(self) -> PoolFacts:
        return self.inner.read_pool()

    def create_prebuild(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        return self.inner.create_prebuild(preset_id, now=now, name=name, lease=lease)

    def delete_prebuild(
        self, instance_id: uuid.UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        return self.inner.delete_prebuild(instance_id, now=now, lease=lease)

    def cancel_pending(
        self, preset_id: uuid.UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        return self.inner.cancel_pending(preset_id, now=now, lease=lease)

    def set_preset_status(
        self, preset_id: uuid.UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        self.inner.set_preset_status(preset_id, status, lease=lease)

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        return self.inner.fail_stuck_builds(older_than=older_than, now=now, lease=lease)

    def build_started(self, build_id: uuid.UUID, *, now: datetime) -> None:
        self.inner.build_started(build_id, now=now)

    def build_finished(
        self,
        build_id: uuid.UUID,
        *,
        now: datetime,
        succeeded: bool,
        error_kind: str | None = None,
        error: str | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.inner.build_finished(
            build_id,
            now=now,
            succeeded=succeeded,
            error_kind=error_kind,
            error=error,
            lease=lease,
        )

    def set_ready(self, instance_id: uuid.UUID, *, ready: bool = True) -> None:
        self.inner.set_ready(instance_id, ready=ready)

    def claim(
        self,
        *,
        preset_id: uuid.UUID,
        user_id: uuid.UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: uuid.UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        return self.inner.claim(
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=lifecycle,
            now=now,
            version_id=version_id,
            not_before=not_before,
        )

    def get_instance(self, instance_id: uuid.UUID) -> Instance:
        return self.inner.get_instance(instance_id)

    def list_instances(
        self,
        *,
        preset_id: uuid.UUID | None = None,
        owner_id: uuid.UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        return self.inner.list_instances(
            preset_id=preset_id, owner_id=owner_id, include_deleted=include_deleted
        )

    def get_build(self, build_id: uuid.UUID) -> Build:
        return self.inner.get_build(build_id)

    def list_builds(self, *, instance_id: uuid.UUID | None = None) -> list[Build]:
        return self.inner.list_builds(instance_id=instance_id)


def corrupt_preset(store: Store, preset_id: uuid.UUID, field: str, value: Any) -> None:
    """
    Write an invalid value of a preset field straight into *store*'s storage,
    bypassing every validation (a hand edit of the database).

    *field* is ``desired_instances``, ``scheduling_timezone`` or ``cron`` (the
    cron of the preset's only schedule, which then wants one instance).
    """
    if isinstance(store, MemoryStore):
        config = store._presets[preset_id].config
        if field == "cron":
            object.__setattr__(config.schedules[0], "cron", value)
        else:
            object.__setattr__(config, field, value)
        return
    backend: Any = store
    kind = type(store).__name__
    column, raw = field, value
    if field == "cron":  # one JSON shape in every store: [[cron, instances]]
        column, raw = "schedules", json.dumps([[value, 1]])
    if kind == "SQLiteStore":
        conn = sqlite3.connect(backend.path)
        try:
            with conn:
                conn.execute(
                    f"UPDATE prebuilds_presets SET {column} = ? WHERE id = ?",  # noqa: S608
                    (raw, str(preset_id)),
                )
        finally:
            conn.close()
    elif kind == "PostgresStore":
        cast = "::jsonb" if column == "schedules" else ""
        with backend._borrow() as conn:
            conn.execute(
                f'UPDATE "{backend.schema}".presets SET {column} = %s{cast} WHERE id = %s',  # noqa: S608
                (raw, preset_id),
            )
    else:
        msg = f"no way to corrupt a preset of {kind}"
        raise NotImplementedError(msg)
