"""MemoryStore: the reference Store, in dicts: facts out, atomic transitions in."""

from __future__ import annotations

import threading
import uuid

from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import attrs

from prebuilds._arguments import (
    check_build_finished,
    check_claim_id_if_unchanged,
    check_claim_if_unchanged,
    check_create_prebuild,
    check_create_prebuilds,
    check_create_prebuilds_grouped,
    check_fail_stuck_builds,
    check_id_at,
    check_list_instances,
    check_read_preset,
    check_record_submits,
    check_set_preset_status,
    check_set_ready,
    check_store_claim,
)
from prebuilds._clock import SystemClock
from prebuilds._model import PresetStatus, Transition
from prebuilds._pool import PooledInstance, PoolFacts, PresetFacts
from prebuilds._records import (
    NOT_SUBMITTED_ERROR,
    NOT_SUBMITTED_KIND,
    PREBUILDS_OWNER_ID,
    Build,
    BuildRequest,
    BuildStatus,
    Instance,
    Lease,
    Lifecycle,
    PresetConfig,
    Template,
)
from prebuilds._validate import (
    check_bool,
    check_delta,
    check_instance,
    check_optional_uuid,
    check_uuid,
)
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    PresetChangedError,
    PresetNotFoundError,
    TemplateNotFoundError,
)
from prebuilds.stores._common import (
    build_request,
    fence_token,
    invalid_preset,
    lost,
    parameters_json,
    preset_facts,
    schedules_json,
)


if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from uuid import UUID

    from prebuilds._model import InvalidPreset
    from prebuilds.interfaces import Clock

_UTC = timezone.utc
#: What a pooled instance's facts take from the instance (the rest: its latest build).
_POOLED_FIELDS = (
    *("id", "preset_id", "template_id", "template_version_id", "name", "created_at"),
    "ready",
)


@attrs.define
class _PresetRow:
    """A preset as the store keeps it: the host's config and what was recorded since."""

    config: PresetConfig
    status: PresetStatus = PresetStatus.HEALTHY
    last_invalidated_at: datetime | None = None
    stamp: int = 0


def _utc(value: datetime) -> datetime:
    return value.astimezone(_UTC)


class MemoryStore:
    """
    A :class:`~prebuilds.interfaces.Store` with
    :class:`~prebuilds.interfaces.StampedClaims`,
    :class:`~prebuilds.interfaces.BatchCreates` and
    :class:`~prebuilds.interfaces.GroupedCreates` in process memory: one lock,
    every method atomic, nothing kept past the process.

    :meth:`leader` grants one lease at a time; with *lease_ttl* a lease also
    expires that long after it was granted or last renewed by a fenced write,
    on *clock* (default: the system clock). Raises InvalidInputError if
    *lease_ttl* is not a positive timedelta.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       *clock*, *lease_ttl*, fencing leases, :meth:`read_pool`,
       :meth:`read_preset` and :meth:`claim_if_unchanged`.
    """

    def __init__(
        self, *, clock: Clock | None = None, lease_ttl: timedelta | None = None
    ) -> None:
        if lease_ttl is not None:
            check_delta("lease_ttl", lease_ttl, positive=True)
        self._lock = threading.RLock()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lease_ttl = lease_ttl
        self._lease_token: str | None = None
        self._lease_expires: datetime | None = None
        self._paused = False
        self._templates: dict[UUID, Template] = {}
        self._presets: dict[UUID, _PresetRow] = {}
        #: Instances, showing their latest build's transition and status.
        self._instances: dict[UUID, Instance] = {}
        self._builds: dict[UUID, Build] = {}
        #: Each instance's builds, in build-number order.
        self._builds_of: dict[UUID, list[UUID]] = defaultdict(list)
        #: Builds of create_prebuilds not yet handed to the provisioner.
        self._unsubmitted: set[UUID] = set()

    def close(self) -> None:
        """Nothing to release."""

    # -- configuration -------------------------------------------------------
    def put_template(self, template: Template) -> None:
        """Insert or replace *template*; its presets' stamps change."""
        check_instance("template", template, Template)
        with self._lock:
            self._templates[template.id] = template
            for row in self._presets.values():
                if row.config.template_id == template.id:
                    row.stamp += 1

    def put_preset(self, preset: PresetConfig) -> None:
        """Insert or replace a preset's config (status and invalidation kept)."""
        check_instance("preset", preset, PresetConfig)
        with self._lock:
            if preset.template_id not in self._templates:
                raise TemplateNotFoundError(preset.template_id)
            row = self._presets.setdefault(preset.id, _PresetRow(preset))
            row.config = preset
            row.stamp += 1

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """Expire the preset's pooled instances created before *at*."""
        check_id_at("preset_id", preset_id, "at", at)
        with self._lock:
            row = self._row(preset_id)
            row.last_invalidated_at = _utc(at)
            row.stamp += 1

    def set_paused(self, paused: bool) -> None:
        """Pause or resume reconciliation."""
        check_bool("paused", paused)
        with self._lock:
            self._paused = paused

    def is_paused(self) -> bool:
        """Whether reconciliation is paused."""
        with self._lock:
            return self._paused

    def get_template(self, template_id: UUID) -> Template:
        """The template with *template_id* (:class:`TemplateNotFoundError`)."""
        check_uuid("template_id", template_id)
        with self._lock:
            template = self._templates.get(template_id)
        if template is None:
            raise TemplateNotFoundError(template_id)
        return template

    def read_preset(self, preset_id: UUID) -> PresetFacts:
        """What the store keeps about the preset, with its template."""
        check_read_preset(preset_id)
        with self._lock:
            return self._facts(self._row(preset_id))

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """Record the preset's health (fenced by *lease*, if given)."""
        check_set_preset_status(preset_id, status)
        with self._fenced(lease):
            self._row(preset_id).status = status

    # -- reconciler ----------------------------------------------------------
    @contextmanager
    def leader(self) -> Iterator[Lease]:
        """A held lease unless another scope holds an unexpired one; see the Store."""
        token = str(uuid.uuid4())
        with self._lock:
            acquired = self._lease_token is None or self._lease_expired()
            if acquired:
                self._lease_token = token
                self._renew()
        if not acquired:
            yield Lease(held=False)
            return
        try:
            yield Lease(held=True, token=token)
        finally:
            with self._lock:
                if self._lease_token == token:
                    self._lease_token = None
                    self._lease_expires = None

    def _lease_expired(self) -> bool:
        expires = self._lease_expires
        return expires is not None and self._clock.now() >= expires

    def _renew(self) -> None:
        if self._lease_ttl is not None:
            self._lease_expires = self._clock.now() + self._lease_ttl

    def _fence(self, token: str | None) -> None:
        """Under the lock: check that *token* (if any) still leads, and renew it."""
        if token is None:
            return
        if token != self._lease_token or self._lease_expired():
            raise lost(token)
        self._renew()

    @contextmanager
    def _fenced(self, lease: Lease | None) -> Iterator[None]:
        """Hold the lock, *lease* (if given) checked and renewed."""
        token = fence_token(lease)
        with self._lock:
            self._fence(token)
            yield

    def read_pool(self) -> PoolFacts:
        """Every preset (or why it cannot be read) and every pooled instance."""
        with self._lock:
            presets: list[PresetFacts] = []
            invalid: list[InvalidPreset] = []
            for preset_id, row in sorted(self._presets.items()):
                try:
                    presets.append(self._facts(row))
                except InvalidInputError as e:
                    invalid.append(invalid_preset(preset_id, e))
            instances = [
                self._pooled(i)
                for _, i in sorted(self._instances.items())
                if i.owner_id == PREBUILDS_OWNER_ID and not i.deleted
            ]
        return PoolFacts(presets=presets, instances=instances, invalid_presets=invalid)

    def create_prebuild(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        """A new pooled instance and its pending start build; None if inactive."""
        check_create_prebuild(preset_id, now, name)
        requests = self._create(preset_id, _utc(now), (name,), lease, submitted=True)
        return requests[0] if requests else None

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        """:meth:`create_prebuild` per name, all or nothing, not submitted; [] if inactive."""
        checked = check_create_prebuilds(preset_id, now, names)
        return self._create(preset_id, _utc(now), checked, lease, submitted=False)

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        """:meth:`create_prebuilds` per (preset ID, names) pair, all or nothing."""
        checked = check_create_prebuilds_grouped(groups, now)
        now = _utc(now)
        with self._fenced(lease):
            for preset_id, _ in checked:
                self._row(preset_id)  # every preset known before any write
            return [
                self._create(preset_id, now, names, None, submitted=False)
                for preset_id, names in checked
            ]

    def record_submits(
        self,
        submitted: Sequence[UUID],
        *,
        now: datetime,
        not_submitted: Sequence[UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        """
        Mark *submitted* handed over; cancel the pending ones of
        *not_submitted* and withdraw (delete) their instances.
        """
        handed, dropped = check_record_submits(submitted, now, not_submitted)
        now = _utc(now)
        with self._fenced(lease):
            self._unsubmitted.difference_update(handed)
            for build_id in dropped:
                build = self._builds.get(build_id)
                if (
                    build is None
                    or build.status is not BuildStatus.PENDING
                    or build_id not in self._unsubmitted
                ):
                    continue
                self._unsubmitted.discard(build_id)
                self._set_build(_not_submitted(build, now))
                instance = self._instances[build.instance_id]
                self._instances[instance.id] = attrs.evolve(
                    instance, deleted=True, ready=False
                )

    def _create(
        self,
        preset_id: UUID,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None,
        *,
        submitted: bool,
    ) -> list[BuildRequest]:
        with self._fenced(lease):
            config = self._row(preset_id).config
            if not self._active(config, self._templates[config.template_id]):
                return []
            requests = []
            for name in names:
                instance = Instance(
                    id=uuid.uuid4(),
                    preset_id=config.id,
                    template_id=config.template_id,
                    template_version_id=config.template_version_id,
                    owner_id=PREBUILDS_OWNER_ID,
                    name=name,
                    created_at=now,
                    lifecycle=Lifecycle(last_used_at=now),
                )
                self._instances[instance.id] = instance
                build = self._add_build(instance, Transition.START, now)
                if not submitted:
                    self._unsubmitted.add(build.id)
                requests.append(_request(instance, build, config.parameters))
            return requests

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """A pending delete build, unless the instance left the pool or is going."""
        check_id_at("instance_id", instance_id, "now", now)
        now = _utc(now)
        with self._fenced(lease):
            instance = self._instances.get(instance_id)
            if (
                instance is None
                or instance.deleted
                or instance.owner_id != PREBUILDS_OWNER_ID
                or (
                    instance.latest_transition is Transition.DELETE
                    and instance.latest_status
                    not in {BuildStatus.FAILED, BuildStatus.CANCELED}
                )
            ):
                return None
            self._instances[instance_id] = attrs.evolve(instance, ready=False)
            build = self._add_build(instance, Transition.DELETE, now)
            return _request(instance, build, ())

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """Cancel queued first builds off the active version; queue orphan deletes."""
        check_id_at("preset_id", preset_id, "now", now)
        now = _utc(now)
        with self._fenced(lease):
            row = self._row(preset_id)
            active = self._templates[row.config.template_id].active_version_id
            queued = [
                b
                for b in self._builds.values()
                if b.preset_id == preset_id
                and b.build_number == 1
                and b.transition is Transition.START
                and b.status is BuildStatus.PENDING
                and b.template_version_id != active
            ]
            requests = []
            for build in sorted(queued, key=_build_order):
                self._set_build(
                    attrs.evolve(build, status=BuildStatus.CANCELED, finished_at=now)
                )
                instance = self._instances[build.instance_id]
                delete = self._add_build(instance, Transition.DELETE, now)
                requests.append(
                    attrs.evolve(_request(instance, delete, ()), orphan=True)
                )
            return requests

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """Fail the pool's builds in progress since before *older_than*."""
        check_fail_stuck_builds(older_than, now)
        now = _utc(now)
        with self._fenced(lease):
            failed = [
                _not_submitted(b, now)
                if b.status is BuildStatus.PENDING and b.id in self._unsubmitted
                else attrs.evolve(
                    b,
                    status=BuildStatus.FAILED,
                    finished_at=now,
                    error_kind="timeout",
                    error="stuck: no result before the timeout",
                )
                for b in sorted(self._builds.values(), key=_build_order)
                if b.initiator_id == PREBUILDS_OWNER_ID
                and b.status.in_progress
                and b.created_at < older_than
            ]
            for build in failed:
                self._set_build(build)
            return failed

    # -- provisioner reports -------------------------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """Mark a pending build running."""
        check_id_at("build_id", build_id, "now", now)
        with self._lock:
            build = self._build(build_id)
            if build.status is BuildStatus.PENDING:
                self._set_build(
                    attrs.evolve(
                        build, status=BuildStatus.RUNNING, started_at=_utc(now)
                    )
                )

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
        """Record a build's result; a report on a finished build is ignored."""
        check_build_finished(build_id, now, succeeded, error_kind, error)
        now = _utc(now)
        with self._fenced(lease):
            build = self._build(build_id)
            if not build.status.in_progress:
                return
            if succeeded and build.transition is Transition.DELETE:
                instance = self._instances[build.instance_id]
                self._instances[instance.id] = attrs.evolve(
                    instance, deleted=True, ready=False
                )
            self._set_build(
                attrs.evolve(
                    build,
                    status=BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED,
                    started_at=build.started_at or now,
                    finished_at=now,
                    error_kind=error_kind,
                    error=error,
                )
            )

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """Record whether the instance is ready (a deleted one stays as it is)."""
        check_set_ready(instance_id, ready)
        with self._lock:
            instance = self._instance(instance_id)
            if not instance.deleted:
                self._instances[instance_id] = attrs.evolve(instance, ready=ready)

    # -- claimer ---------------------------------------------------------------
    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """The oldest claimable instance (by creation, then ID), or None."""
        check_store_claim(
            preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        with self._lock:
            return self._claim(
                preset_id, user_id, name, lifecycle, _utc(now), version_id, not_before
            )

    def claim_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """:meth:`claim`, provided the preset's stamp is still *stamp*."""
        check_claim_if_unchanged(
            stamp, preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        with self._lock:
            row = self._presets.get(preset_id)
            if row is None or row.stamp != stamp:
                raise PresetChangedError(preset_id)
            return self._claim(
                preset_id, user_id, name, lifecycle, _utc(now), version_id, not_before
            )

    def claim_id_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        now: datetime,
        autostart_schedule: str | None,
        next_start_at: datetime | None,
        ttl: timedelta | None,
        version_id: UUID,
        not_before: datetime | None,
    ) -> UUID | None:
        """:meth:`claim_if_unchanged`, the lifecycle by its fields, the ID returned."""
        check_claim_id_if_unchanged(
            stamp,
            preset_id,
            user_id,
            name,
            now,
            autostart_schedule,
            next_start_at,
            ttl,
            version_id,
            not_before,
        )
        claimed = self.claim_if_unchanged(
            stamp=stamp,
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=Lifecycle(
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
                last_used_at=now,
            ),
            now=now,
            version_id=version_id,
            not_before=not_before,
        )
        return None if claimed is None else claimed.id

    def _claim(  # noqa: PLR0917 - the claim's arguments, checked
        self,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        candidates = [
            i
            for i in self._instances.values()
            if i.preset_id == preset_id
            and i.owner_id == PREBUILDS_OWNER_ID
            and not i.deleted
            and i.ready
            and i.latest_transition is Transition.START
            and i.latest_status is BuildStatus.SUCCEEDED
            and i.template_version_id == version_id
            and (not_before is None or i.created_at >= not_before)
        ]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda i: (i.created_at, i.id))
        claimed = attrs.evolve(
            chosen, owner_id=user_id, name=name, lifecycle=lifecycle, claimed_at=now
        )
        self._instances[chosen.id] = claimed
        return claimed

    # -- reads -------------------------------------------------------------------
    def get_instance(self, instance_id: UUID) -> Instance:
        """The instance with *instance_id*."""
        check_uuid("instance_id", instance_id)
        with self._lock:
            return self._instance(instance_id)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first (then by ID)."""
        check_list_instances(preset_id, owner_id, include_deleted)
        with self._lock:
            found = [
                i
                for i in self._instances.values()
                if (preset_id is None or i.preset_id == preset_id)
                and (owner_id is None or i.owner_id == owner_id)
                and (include_deleted or not i.deleted)
            ]
        return sorted(found, key=lambda i: (i.created_at, i.id))

    def get_build(self, build_id: UUID) -> Build:
        """The build with *build_id*."""
        check_uuid("build_id", build_id)
        with self._lock:
            return self._build(build_id)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """Builds in creation order."""
        check_optional_uuid("instance_id", instance_id)
        with self._lock:
            found = [
                b
                for b in self._builds.values()
                if instance_id is None or b.instance_id == instance_id
            ]
        return sorted(found, key=_build_order)

    # -- internals -------------------------------------------------------------
    def _row(self, preset_id: UUID) -> _PresetRow:
        row = self._presets.get(preset_id)
        if row is None:
            raise PresetNotFoundError(preset_id)
        return row

    def _instance(self, instance_id: UUID) -> Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise InstanceNotFoundError(instance_id)
        return instance

    def _build(self, build_id: UUID) -> Build:
        build = self._builds.get(build_id)
        if build is None:
            raise BuildNotFoundError(build_id)
        return build

    def _facts(self, row: _PresetRow) -> PresetFacts:
        """The preset's facts, built (and so checked) as every store builds them."""
        config = row.config
        return preset_facts(
            id=config.id,
            template_id=config.template_id,
            template_version_id=config.template_version_id,
            desired_instances=config.desired_instances,
            name=config.name,
            ttl=config.ttl,
            scheduling_timezone=config.scheduling_timezone,
            schedules=schedules_json(config.schedules),
            parameters=parameters_json(config.parameters),
            template=self._templates[config.template_id],
            status=row.status,
            last_invalidated_at=row.last_invalidated_at,
            stamp=row.stamp,
        )

    @staticmethod
    def _active(config: PresetConfig, template: Template) -> bool:
        """On its active version, the template neither deleted nor deprecated."""
        return (
            config.template_version_id == template.active_version_id
            and not template.deleted
            and not template.deprecated
        )

    def _pooled(self, instance: Instance) -> PooledInstance:
        latest = self._builds[self._builds_of[instance.id][-1]]
        return PooledInstance(
            **{name: getattr(instance, name) for name in _POOLED_FIELDS},
            latest_build_id=latest.id,
            latest_transition=latest.transition,
            latest_status=latest.status,
            latest_number=latest.build_number,
            latest_created_at=latest.created_at,
        )

    def _add_build(
        self, instance: Instance, transition: Transition, now: datetime
    ) -> Build:
        """Store and return the instance's next build (now its latest)."""
        ids = self._builds_of[instance.id]
        build = Build(
            id=uuid.uuid4(),
            instance_id=instance.id,
            preset_id=instance.preset_id,
            template_version_id=instance.template_version_id,
            transition=transition,
            status=BuildStatus.PENDING,
            build_number=len(ids) + 1,
            initiator_id=PREBUILDS_OWNER_ID,
            created_at=now,
        )
        ids.append(build.id)
        self._set_build(build)
        return build

    def _set_build(self, build: Build) -> None:
        """Store *build*; if it is its instance's latest, the instance shows it."""
        self._builds[build.id] = build
        if self._builds_of[build.instance_id][-1] == build.id:
            instance = self._instances[build.instance_id]
            self._instances[instance.id] = attrs.evolve(
                instance,
                latest_transition=build.transition,
                latest_status=build.status,
            )


def _not_submitted(build: Build, now: datetime) -> Build:
    """*build*, never handed to the provisioner, canceled: not a failure."""
    return attrs.evolve(
        build,
        status=BuildStatus.CANCELED,
        finished_at=now,
        error_kind=NOT_SUBMITTED_KIND,
        error=NOT_SUBMITTED_ERROR,
    )


def _request(
    instance: Instance, build: Build, parameters: tuple[tuple[str, str], ...]
) -> BuildRequest:
    return build_request(
        build_id=build.id,
        instance_id=instance.id,
        preset_id=instance.preset_id,
        template_id=instance.template_id,
        template_version_id=instance.template_version_id,
        transition=build.transition,
        name=instance.name,
        parameters=parameters,
    )


def _build_order(build: Build) -> tuple[datetime, UUID, int]:
    return (build.created_at, build.instance_id, build.build_number)
