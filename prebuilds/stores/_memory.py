"""MemoryStore: the reference semantics of the Store seam, in dicts."""

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
    check_create_prebuild,
    check_fail_stuck_builds,
    check_id_at,
    check_list_instances,
    check_set_preset_status,
    check_set_ready,
    check_snapshot,
    check_store_claim,
)
from prebuilds._clock import SystemClock
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    PendingCount,
    Preset,
    PresetStatus,
    RunningPrebuild,
    Transition,
    expired_at,
)
from prebuilds._records import (
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
    check_instance,
    check_optional_uuid,
    check_uuid,
)
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    PresetNotFoundError,
)
from prebuilds.stores._common import (
    assemble_preset,
    fence_token,
    invalid_preset,
    lost,
)


if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

    from prebuilds.interfaces import Clock

_UTC = timezone.utc


@attrs.define
class _PresetRow:
    config: PresetConfig
    status: PresetStatus = PresetStatus.HEALTHY
    last_invalidated_at: datetime | None = None


def _utc(value: datetime) -> datetime:
    return value.astimezone(_UTC)


class MemoryStore:
    """
    A :class:`~prebuilds.interfaces.Store` in process memory.

    Thread-safe (one lock); every method is atomic. Nothing survives the
    process: use it for tests, simulations and hosts that rebuild their pools
    at start.

    Leadership is the store object's own: :meth:`leader` grants one lease at
    a time per ``MemoryStore``, and two stores share nothing (neither data
    nor leadership). A lease lasts until its scope ends; with *lease_ttl* it
    also expires *lease_ttl* after it was granted or last renewed (every
    fenced write renews it), on *clock*, after which another ``leader()``
    takes it over and the old lease's fenced writes are refused. That is for
    tests of a takeover: a fake clock makes it happen on demand.

    Args:
        clock: The time leases expire by (default: the system clock).
        lease_ttl: How long a lease lasts without a fenced write (``None``:
            until its scope ends).

    Raises:
        InvalidInputError: *lease_ttl* is not a positive timedelta.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       *clock* and *lease_ttl*; :meth:`leader` yields a
       :class:`~prebuilds.Lease` that fences writes.
    """

    def __init__(
        self, *, clock: Clock | None = None, lease_ttl: timedelta | None = None
    ) -> None:
        if lease_ttl is not None:
            if not isinstance(lease_ttl, timedelta):
                raise InvalidInputError("lease_ttl", lease_ttl, "must be a timedelta")
            if lease_ttl <= timedelta(0):
                raise InvalidInputError("lease_ttl", lease_ttl, "must be > 0")
        self._lock = threading.RLock()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lease_ttl = lease_ttl
        self._lease_token: str | None = None
        self._lease_expires: datetime | None = None
        self._paused = False
        self._templates: dict[UUID, Template] = {}
        self._presets: dict[UUID, _PresetRow] = {}
        self._instances: dict[UUID, Instance] = {}
        self._builds: dict[UUID, Build] = {}
        self._builds_of: dict[UUID, list[UUID]] = defaultdict(list)

    def close(self) -> None:
        """Nothing to release."""

    # -- configuration -------------------------------------------------------
    def put_template(self, template: Template) -> None:
        """Insert or replace *template*."""
        check_instance("template", template, Template)
        with self._lock:
            self._templates[template.id] = template

    def put_preset(self, preset: PresetConfig) -> None:
        """Insert or replace a preset's configuration, keeping its status."""
        check_instance("preset", preset, PresetConfig)
        with self._lock:
            if preset.template_id not in self._templates:
                raise InvalidInputError(
                    "template_id", preset.template_id, "unknown template"
                )
            row = self._presets.get(preset.id)
            if row is None:
                self._presets[preset.id] = _PresetRow(preset)
            else:
                row.config = preset

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """Expire the preset's pooled instances created before *at*."""
        check_id_at("preset_id", preset_id, "at", at)
        with self._lock:
            self._row(preset_id).last_invalidated_at = _utc(at)

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
        """The template with *template_id*."""
        check_uuid("template_id", template_id)
        with self._lock:
            try:
                return self._templates[template_id]
            except KeyError:
                raise InvalidInputError(
                    "template_id", template_id, "unknown template"
                ) from None

    def get_preset(self, preset_id: UUID) -> Preset:
        """The calculator's view of the preset."""
        check_uuid("preset_id", preset_id)
        with self._lock:
            return self._preset(self._row(preset_id))

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """Record the preset's health (fenced by *lease*, if given)."""
        check_set_preset_status(preset_id, status)
        token = fence_token(lease)
        with self._lock:
            self._fence(token)
            self._row(preset_id).status = status

    # -- reconciler ----------------------------------------------------------
    @contextmanager
    def leader(self) -> Iterator[Lease]:
        """
        Non-blocking leadership of this store object: a held
        :class:`~prebuilds.Lease` unless another scope holds an unexpired
        one. Leaving the scope ends the lease.
        """
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
        """
        Check (under the store's lock) that *token* still leads, and renew
        it; nothing for an unfenced write.

        Raises:
            LeadershipLostError: it does not.
        """
        if token is None:
            return
        if token != self._lease_token or self._lease_expired():
            raise lost(token)
        self._renew()

    def snapshot(
        self, *, now: datetime, backoff_lookback: timedelta, hard_limit: int
    ) -> GlobalSnapshot:
        """One consistent read of every pool."""
        check_snapshot(now, backoff_lookback, hard_limit)
        with self._lock:
            presets: list[Preset] = []
            invalid = []
            for preset_id in sorted(self._presets):
                try:
                    presets.append(self._preset(self._presets[preset_id]))
                except InvalidInputError as e:
                    invalid.append(invalid_preset(preset_id, e))
            return GlobalSnapshot(
                presets=presets,
                running=self._running(),
                in_progress=self._in_progress(),
                pending=self._pending(),
                backoffs=self._backoffs(now - backoff_lookback),
                hard_limited=self._hard_limited(hard_limit),
                invalid_presets=invalid,
            )

    def create_prebuild(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        """A new pooled instance and its pending start build."""
        check_create_prebuild(preset_id, now, name)
        token = fence_token(lease)
        now = _utc(now)
        with self._lock:
            self._fence(token)
            row = self._row(preset_id)
            template = self._templates[row.config.template_id]
            if not self._active(row.config, template):
                return None
            config = row.config
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
            build = self._new_build(instance, Transition.START, now)
            request = self._request(instance, build, config.parameters)
            self._instances[instance.id] = instance
            self._put_build(build)
            return request

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """A pending delete build, unless the instance left the pool."""
        check_id_at("instance_id", instance_id, "now", now)
        token = fence_token(lease)
        now = _utc(now)
        with self._lock:
            self._fence(token)
            instance = self._instances.get(instance_id)
            if (
                instance is None
                or instance.deleted
                or instance.owner_id != PREBUILDS_OWNER_ID
            ):
                return None
            latest = self._latest(instance_id)
            if (
                latest is not None
                and latest.transition is Transition.DELETE
                and latest.status is not BuildStatus.FAILED
                and latest.status is not BuildStatus.CANCELED
            ):
                return None
            build = self._new_build(instance, Transition.DELETE, now)
            request = self._request(instance, build, ())
            unready = attrs.evolve(instance, ready=False)
            self._put_build(build)
            self._instances[instance_id] = unready
            return request

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """Cancel queued creations of an inactive version; orphan-delete them."""
        check_id_at("preset_id", preset_id, "now", now)
        token = fence_token(lease)
        now = _utc(now)
        with self._lock:
            self._fence(token)
            row = self._row(preset_id)
            active = self._templates[row.config.template_id].active_version_id
            # Everything is built first and applied after: all or nothing.
            changes: list[tuple[Build, Build]] = []
            requests = []
            for build in list(self._builds.values()):
                if (
                    build.preset_id == preset_id
                    and build.build_number == 1
                    and build.transition is Transition.START
                    and build.status is BuildStatus.PENDING
                    and build.started_at is None
                    and build.template_version_id != active
                ):
                    canceled = attrs.evolve(
                        build, status=BuildStatus.CANCELED, finished_at=now
                    )
                    instance = self._instances[build.instance_id]
                    delete = self._new_build(instance, Transition.DELETE, now)
                    changes.append((canceled, delete))
                    requests.append(
                        attrs.evolve(self._request(instance, delete, ()), orphan=True)
                    )
            for canceled, delete in changes:
                self._builds[canceled.id] = canceled
                self._put_build(delete)
            return requests

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """Fail the pool's builds in progress since before *older_than*."""
        check_fail_stuck_builds(older_than, now)
        token = fence_token(lease)
        now = _utc(now)
        with self._lock:
            self._fence(token)
            failed = []
            for build in sorted(self._builds.values(), key=_build_order):
                if (
                    build.initiator_id == PREBUILDS_OWNER_ID
                    and build.status.in_progress
                    and build.created_at < older_than
                ):
                    updated = attrs.evolve(
                        build,
                        status=BuildStatus.FAILED,
                        finished_at=now,
                        error_kind="timeout",
                        error="stuck: no result before the timeout",
                    )
                    failed.append(updated)
            for updated in failed:
                self._builds[updated.id] = updated
            return failed

    # -- provisioner reports -------------------------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """Mark a pending build running."""
        check_id_at("build_id", build_id, "now", now)
        with self._lock:
            build = self._build(build_id)
            if build.status is BuildStatus.PENDING:
                self._builds[build_id] = attrs.evolve(
                    build, status=BuildStatus.RUNNING, started_at=_utc(now)
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
        """Record a build's result; a late report is ignored."""
        check_build_finished(build_id, now, succeeded, error_kind, error)
        token = fence_token(lease)
        now = _utc(now)
        with self._lock:
            self._fence(token)
            build = self._build(build_id)
            if not build.status.in_progress:
                return
            finished = attrs.evolve(
                build,
                status=BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED,
                started_at=build.started_at or now,
                finished_at=now,
                error_kind=error_kind,
                error=error,
            )
            gone = None
            if succeeded and build.transition is Transition.DELETE:
                instance = self._instances[build.instance_id]
                gone = attrs.evolve(instance, deleted=True, ready=False)
            self._builds[build_id] = finished
            if gone is not None:
                self._instances[gone.id] = gone

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """Record whether the instance is ready."""
        check_set_ready(instance_id, ready)
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None:
                raise InstanceNotFoundError(instance_id)
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
    ) -> Instance | None:
        """Hand the oldest claimable instance of the preset to *user_id*."""
        check_store_claim(preset_id, user_id, name, lifecycle, now)
        now = _utc(now)
        with self._lock:
            row = self._presets.get(preset_id)
            if row is None:
                return None
            template = self._templates[row.config.template_id]
            if template.deleted:
                return None
            candidates = [
                i
                for i in self._instances.values()
                if i.preset_id == preset_id
                and i.owner_id == PREBUILDS_OWNER_ID
                and not i.deleted
                and i.ready
                and i.template_version_id == template.active_version_id
                and self._is_running(i.id)
                and not expired_at(
                    created_at=i.created_at,
                    ttl=row.config.ttl,
                    last_invalidated_at=row.last_invalidated_at,
                    now=now,
                )
            ]
            if not candidates:
                return None
            chosen = min(candidates, key=lambda i: (i.created_at, i.id))
            claimed = attrs.evolve(
                chosen,
                owner_id=user_id,
                name=name,
                lifecycle=lifecycle,
                claimed_at=now,
            )
            view = self._view(claimed)
            self._instances[chosen.id] = claimed
            return view

    # -- reads -------------------------------------------------------------------
    def get_instance(self, instance_id: UUID) -> Instance:
        """The instance with *instance_id*."""
        check_uuid("instance_id", instance_id)
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None:
                raise InstanceNotFoundError(instance_id)
            return self._view(instance)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first."""
        check_list_instances(preset_id, owner_id, include_deleted)
        with self._lock:
            found = [
                self._view(i)
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

    def _build(self, build_id: UUID) -> Build:
        build = self._builds.get(build_id)
        if build is None:
            raise BuildNotFoundError(build_id)
        return build

    def _preset(self, row: _PresetRow) -> Preset:
        return assemble_preset(
            row.config,
            self._templates[row.config.template_id],
            status=row.status,
            last_invalidated_at=row.last_invalidated_at,
        )

    @staticmethod
    def _active(config: PresetConfig, template: Template) -> bool:
        return (
            config.template_version_id == template.active_version_id
            and not template.deleted
            and not template.deprecated
        )

    def _new_build(
        self, instance: Instance, transition: Transition, now: datetime
    ) -> Build:
        """The instance's next build (not stored yet: see :meth:`_put_build`)."""
        number = len(self._builds_of.get(instance.id, ())) + 1
        return Build(
            id=uuid.uuid4(),
            instance_id=instance.id,
            preset_id=instance.preset_id,
            template_version_id=instance.template_version_id,
            transition=transition,
            status=BuildStatus.PENDING,
            build_number=number,
            initiator_id=PREBUILDS_OWNER_ID,
            created_at=now,
        )

    def _put_build(self, build: Build) -> None:
        self._builds[build.id] = build
        self._builds_of[build.instance_id].append(build.id)

    def _add_build(
        self, instance: Instance, transition: Transition, now: datetime
    ) -> Build:
        """Store and return the instance's next build."""
        build = self._new_build(instance, transition, now)
        self._put_build(build)
        return build

    @staticmethod
    def _request(
        instance: Instance, build: Build, parameters: tuple[tuple[str, str], ...]
    ) -> BuildRequest:
        return BuildRequest(
            build_id=build.id,
            instance_id=instance.id,
            preset_id=instance.preset_id,
            template_id=instance.template_id,
            template_version_id=instance.template_version_id,
            transition=build.transition,
            name=instance.name,
            parameters=parameters,
        )

    def _latest(self, instance_id: UUID) -> Build | None:
        ids = self._builds_of.get(instance_id)
        return self._builds[ids[-1]] if ids else None

    def _is_running(self, instance_id: UUID) -> bool:
        latest = self._latest(instance_id)
        return (
            latest is not None
            and latest.transition is Transition.START
            and latest.status is BuildStatus.SUCCEEDED
        )

    def _view(self, instance: Instance) -> Instance:
        latest = self._latest(instance.id)
        if latest is None:  # pragma: no cover - every instance has a build
            return instance
        return attrs.evolve(
            instance,
            latest_transition=latest.transition,
            latest_status=latest.status,
        )

    def _running(self) -> list[RunningPrebuild]:
        return [
            RunningPrebuild(
                id=i.id,
                preset_id=i.preset_id,
                created_at=i.created_at,
                ready=i.ready,
                name=i.name,
                template_id=i.template_id,
                template_version_id=i.template_version_id,
            )
            for _, i in sorted(self._instances.items())
            if i.owner_id == PREBUILDS_OWNER_ID
            and not i.deleted
            and self._is_running(i.id)
        ]

    def _in_progress(self) -> list[InProgressCount]:
        counts: dict[tuple[UUID, Transition], int] = defaultdict(int)
        versions: dict[UUID, tuple[UUID, UUID]] = {}
        for instance_id in self._builds_of:
            build = self._latest(instance_id)
            if build is None or not build.status.in_progress:
                continue
            if build.initiator_id != PREBUILDS_OWNER_ID:  # pragma: no cover
                continue
            instance = self._instances[instance_id]
            template = self._templates.get(instance.template_id)
            if (
                template is None
                or build.template_version_id != template.active_version_id
            ):
                continue
            counts[build.preset_id, build.transition] += 1
            versions[build.preset_id] = (template.id, build.template_version_id)
        return [
            InProgressCount(
                preset_id=preset_id,
                transition=transition,
                count=count,
                template_id=versions[preset_id][0],
                template_version_id=versions[preset_id][1],
            )
            for (preset_id, transition), count in sorted(
                counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value)
            )
        ]

    def _pending(self) -> list[PendingCount]:
        counts: dict[UUID, int] = defaultdict(int)
        for build in self._builds.values():
            row = self._presets.get(build.preset_id)
            if row is None:  # pragma: no cover - builds belong to presets
                continue
            template = self._templates[row.config.template_id]
            if (
                build.build_number == 1
                and build.transition is Transition.START
                and build.status is BuildStatus.PENDING
                and build.started_at is None
                and build.template_version_id != template.active_version_id
            ):
                counts[build.preset_id] += 1
        return [PendingCount(preset_id=p, count=n) for p, n in sorted(counts.items())]

    def _candidates(self, *, skip_deleted_templates: bool) -> dict[UUID, list[Build]]:
        """Latest start builds of pool-owned instances on the active version."""
        by_preset: dict[UUID, list[Build]] = defaultdict(list)
        for instance_id in self._builds_of:
            instance = self._instances[instance_id]
            if instance.owner_id != PREBUILDS_OWNER_ID:
                continue
            build = self._latest(instance_id)
            if build is None or build.transition is not Transition.START:
                continue
            template = self._templates.get(instance.template_id)
            if (
                template is None
                or build.template_version_id != template.active_version_id
            ):
                continue
            if skip_deleted_templates and template.deleted:
                continue
            by_preset[build.preset_id].append(build)
        for builds in by_preset.values():
            builds.sort(key=lambda b: (b.created_at, b.id), reverse=True)
        return by_preset

    def _backoffs(self, since: datetime) -> list[Backoff]:
        rows = []
        for preset_id, builds in sorted(
            self._candidates(skip_deleted_templates=True).items()
        ):
            row = self._presets.get(preset_id)
            if row is None:  # pragma: no cover
                continue
            top = builds[: max(row.config.desired_instances, 0)]
            recent = [
                b
                for b in top
                if b.status is BuildStatus.FAILED and b.created_at >= since
            ]
            if not recent:
                continue
            num_failed = sum(
                1
                for b in builds
                if b.status is BuildStatus.FAILED and b.created_at >= since
            )
            rows.append(
                Backoff(
                    preset_id=preset_id,
                    num_failed=num_failed,
                    last_build_at=max(b.created_at for b in recent),
                )
            )
        return rows

    def _hard_limited(self, hard_limit: int) -> frozenset[UUID]:
        if hard_limit <= 0:
            return frozenset()
        return frozenset(
            preset_id
            for preset_id, builds in self._candidates(
                skip_deleted_templates=False
            ).items()
            if len(builds) >= hard_limit
            and all(b.status is BuildStatus.FAILED for b in builds[:hard_limit])
        )


def _build_order(build: Build) -> tuple[datetime, UUID, int]:
    return (build.created_at, build.instance_id, build.build_number)
