"""
What the reference stores hold: templates, preset configuration, instances,
builds, and the requests handed to the host's provisioner.
"""

from __future__ import annotations

import enum

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import attrs

from prebuilds import _validate as v
from prebuilds._model import PrebuildSchedule, Transition, check_schedules
from prebuilds._validate import MAX_BUILD_NUMBER, check_int, tuple_of


#: The ID of the pool's system owner: an instance is pooled exactly while its
#: owner is this ID (the same value as Coder's prebuilds system user).
PREBUILDS_OWNER_ID = UUID("c42fdf75-3097-471c-8c33-fb52454d81c0")

#: The error kind (and error) of a build that was never handed to the
#: provisioner, ended by ``fail_stuck_builds`` or ``record_submits``
#: (:class:`~prebuilds.interfaces.BatchCreates`): canceled, not failed, so
#: that it counts toward neither the backoff nor the hard limit.
NOT_SUBMITTED_KIND = "not_submitted"
NOT_SUBMITTED_ERROR = "never submitted to the provisioner"


# Typed converters: mypy reads a field's argument type from its converter.
def _schedules(value: Iterable[PrebuildSchedule]) -> tuple[PrebuildSchedule, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _pairs(value: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple_of(value)  # type: ignore[no-any-return]


def _build_number(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_int(attribute.name, value, minimum=1, maximum=MAX_BUILD_NUMBER)


def _resource(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    v.check_str(attribute.name, value, max_length=v.MAX_TEXT_LENGTH, required=True)


def _paths(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for path in v.check_items(attribute.name, value, str):
        v.check_str(attribute.name, path, max_length=v.MAX_TEXT_LENGTH)


class BuildStatus(enum.Enum):
    """
    Where a build's job is.

    .. versionadded:: 0.1.0
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def in_progress(self) -> bool:
        """Pending or running."""
        return self in (BuildStatus.PENDING, BuildStatus.RUNNING)


@attrs.frozen(kw_only=True)
class Template:
    """
    A template: the thing whose versions presets belong to.

    Attributes:
        id: The template's ID.
        active_version_id: The version new instances are built from; presets
            of other versions drain.
        name: A human name.
        organization_id: The owning organisation, if any.
        deleted: A deleted template's pools drain.
        deprecated: A deprecated template's pools drain.
        default_ttl: The TTL a claimed instance gets when the claim gives
            none.

    Raises:
        InvalidInputError: naming the field: an ID that is not a UUID (a
            template needs its active version), a flag that is not a bool, a
            name or TTL out of range (see :doc:`/limits`).

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    active_version_id: UUID = attrs.field(validator=v.uuid_)
    name: str = attrs.field(default="", validator=v.name)
    organization_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    deleted: bool = attrs.field(default=False, validator=v.flag)
    deprecated: bool = attrs.field(default=False, validator=v.flag)
    default_ttl: timedelta | None = attrs.field(
        default=None, validator=v.optional_duration
    )


@attrs.frozen(kw_only=True)
class PresetConfig:
    """
    A preset as the host writes it to a store.

    Whether it uses the active version, and whether its template is deleted
    or deprecated, come from its :class:`Template`; its status and
    invalidation time are kept by the store.

    Raises:
        InvalidInputError: naming the field, as :class:`Preset` does: an ID
            that is not a UUID, a pool size or TTL out of range, an unknown
            time zone, a schedule that is not a :class:`PrebuildSchedule`,
            overlapping schedules, a parameter named twice (see
            :doc:`/limits`). A store can therefore never hold a preset that
            drops out of every pass.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    template_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    desired_instances: int = attrs.field(validator=v.instances)
    name: str = attrs.field(default="", validator=v.name)
    ttl: timedelta | None = attrs.field(default=None, validator=v.optional_duration)
    scheduling_timezone: str = ""
    schedules: tuple[PrebuildSchedule, ...] = attrs.field(
        default=(), converter=_schedules
    )
    parameters: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs, validator=v.parameters
    )

    def __attrs_post_init__(self) -> None:
        check_schedules(self.scheduling_timezone, self.schedules)


@attrs.frozen(kw_only=True)
class Lifecycle:
    """
    The scheduling fields of an instance. All unset while it is pooled; set
    from the claim and the template when it is claimed.

    .. versionadded:: 0.1.0
    """

    autostart_schedule: str | None = attrs.field(
        default=None, validator=v.optional_name
    )
    next_start_at: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )
    ttl: timedelta | None = attrs.field(default=None, validator=v.optional_duration)
    deadline: datetime | None = attrs.field(default=None, validator=v.optional_aware)
    max_deadline: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )
    dormant_at: datetime | None = attrs.field(default=None, validator=v.optional_aware)
    deleting_at: datetime | None = attrs.field(default=None, validator=v.optional_aware)
    last_used_at: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )

    @property
    def is_unset(self) -> bool:
        """True when no scheduling field is set (``last_used_at`` aside)."""
        return (
            self.autostart_schedule is None
            and self.next_start_at is None
            and self.ttl is None
            and self.deadline is None
            and self.max_deadline is None
            and self.dormant_at is None
            and self.deleting_at is None
        )


@attrs.frozen(kw_only=True)
class Instance:
    """
    An instance, pooled or owned.

    Attributes:
        id: The instance's ID.
        preset_id: The preset it was prebuilt from.
        template_id: Its template.
        template_version_id: The version it was built from.
        owner_id: :data:`PREBUILDS_OWNER_ID` while pooled, the user after a
            claim.
        name: Its name (a generated one while pooled).
        created_at: When it was created (a claim keeps it).
        ready: Whether the host reported it ready.
        lifecycle: Its scheduling fields.
        deleted: Whether its delete build succeeded.
        latest_transition: The transition of its latest build.
        latest_status: The status of its latest build.
        claimed_at: When it was claimed, if it was.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    preset_id: UUID = attrs.field(validator=v.uuid_)
    template_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    owner_id: UUID = attrs.field(validator=v.uuid_)
    name: str = attrs.field(validator=v.required_name)
    created_at: datetime = attrs.field(validator=v.aware)
    ready: bool = attrs.field(default=False, validator=v.flag)
    lifecycle: Lifecycle = attrs.field(
        default=Lifecycle(), validator=v.instance_of(Lifecycle)
    )
    deleted: bool = attrs.field(default=False, validator=v.flag)
    latest_transition: Transition = attrs.field(
        default=Transition.START, validator=v.enum_of(Transition)
    )
    latest_status: BuildStatus = attrs.field(
        default=BuildStatus.PENDING, validator=v.enum_of(BuildStatus)
    )
    claimed_at: datetime | None = attrs.field(default=None, validator=v.optional_aware)

    @property
    def is_prebuild(self) -> bool:
        """True while the instance is in the pool (owned by the system)."""
        return self.owner_id == PREBUILDS_OWNER_ID


@attrs.frozen(kw_only=True)
class Build:
    """
    One build of an instance: a start, stop or delete job.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    instance_id: UUID = attrs.field(validator=v.uuid_)
    preset_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    transition: Transition = attrs.field(validator=v.enum_of(Transition))
    status: BuildStatus = attrs.field(validator=v.enum_of(BuildStatus))
    build_number: int = attrs.field(validator=_build_number)
    initiator_id: UUID = attrs.field(validator=v.uuid_)
    created_at: datetime = attrs.field(validator=v.aware)
    started_at: datetime | None = attrs.field(default=None, validator=v.optional_aware)
    finished_at: datetime | None = attrs.field(default=None, validator=v.optional_aware)
    error_kind: str | None = attrs.field(default=None, validator=v.optional_name)
    error: str | None = attrs.field(default=None, validator=v.optional_text)


@attrs.frozen(kw_only=True)
class BuildRequest:
    """
    What the host's provisioner is asked to do, after the store committed it.

    Attributes:
        build_id: The build to report on (``build_started``/``build_finished``).
        instance_id: The instance to build or destroy.
        preset_id: Its preset.
        template_id: Its template.
        template_version_id: The version to build (delete: the version it has).
        transition: Start or delete.
        name: The instance's name.
        parameters: The preset's ``(name, value)`` pairs.
        orphan: A delete of an instance that was never provisioned: nothing
            to destroy.

    .. versionadded:: 0.1.0
    """

    build_id: UUID = attrs.field(validator=v.uuid_)
    instance_id: UUID = attrs.field(validator=v.uuid_)
    preset_id: UUID = attrs.field(validator=v.uuid_)
    template_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    transition: Transition = attrs.field(validator=v.enum_of(Transition))
    name: str = attrs.field(validator=v.required_name)
    parameters: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs, validator=v.parameters
    )
    orphan: bool = attrs.field(default=False, validator=v.flag)


class EventKind(enum.Enum):
    """
    What happened to a pool.

    .. versionadded:: 0.1.0
    """

    CREATED = "created"
    READY = "ready"
    CLAIMED = "claimed"
    CLAIM_MISSED = "claim_missed"
    EXPIRED = "expired"
    DELETED = "deleted"
    FAILED = "failed"
    BACKOFF = "backoff"
    HARD_LIMITED = "hard_limited"
    VALIDATION_FAILED = "validation_failed"
    REPLACEMENT = "replacement"
    PAUSED = "paused"
    RESUMED = "resumed"
    CANCELED = "canceled"
    STUCK = "stuck"
    INVALID_PRESET = "invalid_preset"
    PRESET_ERROR = "preset_error"
    PASS_ERROR = "pass_error"  # noqa: S105 - an event name, not a secret
    LEADERSHIP_LOST = "leadership_lost"


@attrs.frozen(kw_only=True)
class Event:
    """
    One thing that happened, for logs, audit, notifications and metrics.

    Attributes:
        kind: What happened.
        at: When (the engine's clock).
        preset_id: The preset it concerns, if any.
        instance_id: The instance it concerns, if any.
        build_id: The build it concerns, if any.
        detail: A human description.
        preset_name: The preset's name, when the engine knows it.
        template_name: Its template's name, when the engine knows it.
        organization_id: Its template's organisation, if any.
        duration: How long it took: set on ``CLAIMED`` and ``CLAIM_MISSED``
            (the claim, measured on a monotonic clock).
        suppressed: How many events of this kind and preset the
            reconciler held back since the previous one it emitted (see
            *event_cooldown* of :class:`~prebuilds.StoreReconciler`).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       *preset_name*, *template_name*, *organization_id*, *duration* and
       *suppressed*.
    """

    kind: EventKind = attrs.field(validator=v.enum_of(EventKind))
    at: datetime = attrs.field(validator=v.aware)
    preset_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    instance_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    build_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    detail: str = attrs.field(default="", validator=v.text)
    preset_name: str = attrs.field(default="", validator=v.name)
    template_name: str = attrs.field(default="", validator=v.name)
    organization_id: UUID | None = attrs.field(default=None, validator=v.optional_uuid)
    duration: timedelta | None = attrs.field(
        default=None, validator=v.optional_duration
    )
    suppressed: int = attrs.field(default=0, validator=v.count)


@attrs.frozen(kw_only=True)
class Lease:
    """
    What a store's ``leader()`` scope yields: whether this caller leads, and
    the token that fences its writes.

    A reconciler passes the lease to every write of its pass
    (``create_prebuild(..., lease=lease)`` and the like); the store applies
    such a write only while the lease is still held, in the write's own
    transaction, and otherwise raises
    :class:`~prebuilds.exceptions.LeadershipLostError` with nothing written.
    A lease is truthy exactly when it was acquired, so ``with store.leader()
    as lease: if lease: ...`` reads as before.

    Attributes:
        held: Whether the scope acquired leadership.
        token: An opaque token naming this holding (``""`` when not held).

    .. versionadded:: 0.2.0
    """

    held: bool = attrs.field(validator=v.flag)
    token: str = attrs.field(default="", validator=v.name)

    def __bool__(self) -> bool:
        return self.held


@attrs.frozen(kw_only=True)
class ResourceReplacement:
    """
    A resource the host's provisioner had to replace when it applied a claim
    (drift that defeats the point of prebuilding it).

    Attributes:
        resource: The resource's address, e.g. ``docker_container.main``.
        paths: The attribute paths whose change forced the replacement.

    .. versionadded:: 0.1.0
    """

    resource: str = attrs.field(validator=_resource)
    paths: tuple[str, ...] = attrs.field(
        default=(), converter=_strings, validator=_paths
    )


_R = TypeVar("_R", BuildRequest, Event)
_FIELDS: dict[type, tuple[str, ...]] = {}


def unchecked_evolve(record: _R, **changes: object) -> _R:
    """
    *record* with *changes*, without its validators: for a batch of records
    that share every other (validated) field of *record*, the changes being
    fresh IDs and values already checked (``attrs.evolve`` validated every
    field again, per record).
    """
    cls = type(record)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in attrs.fields(cls))
    copy = object.__new__(cls)
    for name in names:
        object.__setattr__(copy, name, changes.get(name, getattr(record, name)))
    return copy
