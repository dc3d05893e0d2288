"""
The pool's facts, as a store keeps them, and the one pure derivation of every
pool's state from them.

A store hands out facts (:class:`PoolFacts`: presets with their templates,
pooled instances with their latest build) and knows no policy; what state a
pool is in (running, in progress, pending, backing off, hard-limited) is
derived here, once, for the reconciler, the claimer and the testing kit alike.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from prebuilds import _validate as v
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidPreset,
    PendingCount,
    Preset,
    PresetStatus,
    RunningPrebuild,
    Transition,
)
from prebuilds._records import BuildStatus, PresetConfig, Template
from prebuilds._validate import check_aware, check_delta, check_instance, check_int
from prebuilds.exceptions import InvalidInputError


if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from prebuilds._model import PresetSnapshot

__all__ = ["PoolFacts", "PooledInstance", "PresetFacts", "derive"]


def _check_template(
    instance: PresetFacts, _attribute: object, template: Template
) -> None:
    check_instance("template", template, Template)
    if template.id != instance.config.template_id:
        raise InvalidInputError(
            "template", template.id, "is not the template of the preset's config"
        )


def _build_number(
    _inst: object, attribute: attrs.Attribute[int], value: object
) -> None:
    check_int(attribute.name, value, minimum=1, maximum=v.MAX_BUILD_NUMBER)


def _optional_stamp(
    _inst: object, attribute: attrs.Attribute[int], value: object
) -> None:
    if value is not None:
        check_int(attribute.name, value, minimum=0, maximum=v.MAX_COUNT)


@attrs.frozen(kw_only=True)
class PresetFacts:
    """
    What a store keeps about one preset: the host's configuration, its
    template, and what the store recorded since.

    Attributes:
        config: The preset as the host put it.
        template: Its template, as the host put it.
        status: The health the reconciler last recorded.
        last_invalidated_at: When the host last invalidated its pool.
        stamp: Changes whenever anything a claim depends on changes (the
            configuration, the template, the invalidation), so that a
            claimer may cache these facts and claim only while they hold
            (see :class:`~prebuilds.interfaces.StampedClaims`); ``None``
            when the store keeps no stamp.

    Raises:
        InvalidInputError: naming the field: a template that is not the
            config's, a naive datetime, a negative stamp.

    .. versionadded:: 0.1.0
    """

    config: PresetConfig = attrs.field(validator=v.instance_of(PresetConfig))
    template: Template = attrs.field(validator=_check_template)
    status: PresetStatus = attrs.field(
        default=PresetStatus.HEALTHY, validator=v.enum_of(PresetStatus)
    )
    last_invalidated_at: datetime | None = attrs.field(
        default=None, validator=v.optional_aware
    )
    stamp: int | None = attrs.field(default=None, validator=_optional_stamp)
    _preset: Preset | None = attrs.field(init=False, default=None, eq=False, repr=False)

    @property
    def preset(self) -> Preset:
        """The calculator's view of the preset (the config with what its template says)."""
        preset = self._preset
        if preset is None:
            config, template = self.config, self.template
            preset = Preset(
                id=config.id,
                template_id=config.template_id,
                template_version_id=config.template_version_id,
                desired_instances=config.desired_instances,
                name=config.name,
                organization_id=template.organization_id,
                using_active_version=(
                    config.template_version_id == template.active_version_id
                ),
                template_deleted=template.deleted,
                template_deprecated=template.deprecated,
                ttl=config.ttl,
                last_invalidated_at=self.last_invalidated_at,
                scheduling_timezone=config.scheduling_timezone,
                schedules=config.schedules,
                status=self.status,
                parameters=config.parameters,
            )
            object.__setattr__(self, "_preset", preset)
        return preset


@attrs.frozen(kw_only=True)
class PooledInstance:
    """
    One pooled instance (owned by the pool, not deleted) with its latest
    build, as a store keeps it.

    Attributes:
        id: The instance's ID.
        preset_id: Its preset.
        template_id: Its template.
        template_version_id: The version it was built from.
        name: Its name.
        created_at: When it was created.
        ready: Whether the host reported it ready.
        latest_build_id: Its latest build (the highest build number).
        latest_transition: That build's transition.
        latest_status: That build's status.
        latest_number: That build's number (1 for the first).
        latest_created_at: When that build was created.

    .. versionadded:: 0.1.0
    """

    id: UUID = attrs.field(validator=v.uuid_)
    preset_id: UUID = attrs.field(validator=v.uuid_)
    template_id: UUID = attrs.field(validator=v.uuid_)
    template_version_id: UUID = attrs.field(validator=v.uuid_)
    name: str = attrs.field(validator=v.name)
    created_at: datetime = attrs.field(validator=v.aware)
    ready: bool = attrs.field(validator=v.flag)
    latest_build_id: UUID = attrs.field(validator=v.uuid_)
    latest_transition: Transition = attrs.field(validator=v.enum_of(Transition))
    latest_status: BuildStatus = attrs.field(validator=v.enum_of(BuildStatus))
    latest_number: int = attrs.field(validator=_build_number)
    latest_created_at: datetime = attrs.field(validator=v.aware)


def _unique_presets(_inst: object, attribute: Any, value: Any) -> None:
    v.check_items(attribute.name, value, PresetFacts)
    _once(attribute.name, [facts.config.id for facts in value])


def _unique_instances(_inst: object, attribute: Any, value: Any) -> None:
    v.check_items(attribute.name, value, PooledInstance)
    _once(attribute.name, [instance.id for instance in value])


def _once(field: str, ids: list[UUID]) -> None:
    """Refuse the first of *ids* given twice."""
    # UUID hashes in Python; its int in C, which a read of every pool pays.
    if len({i.int for i in ids}) == len(ids):
        return
    seen: set[UUID] = set()
    for id_ in ids:
        if id_ in seen:
            raise InvalidInputError(field, id_, "given twice")
        seen.add(id_)


@attrs.frozen(kw_only=True)
class PoolFacts:
    """
    One consistent read of a store: every preset, every pooled instance.

    Attributes:
        presets: Every preset the store could read, with its template.
        instances: Every pooled instance (owned by the pool, not deleted),
            with its latest build.
        invalid_presets: Presets the store holds but could not read (written
            by hand or by another program); reported and skipped.

    Raises:
        InvalidInputError: an item of the wrong type, or an ID given twice.

    .. versionadded:: 0.1.0
    """

    presets: tuple[PresetFacts, ...] = attrs.field(
        default=(), converter=v.tuple_of, validator=_unique_presets
    )
    instances: tuple[PooledInstance, ...] = attrs.field(
        default=(), converter=v.tuple_of, validator=_unique_instances
    )
    invalid_presets: tuple[InvalidPreset, ...] = attrs.field(
        default=(), converter=v.tuple_of, validator=v.items_of(InvalidPreset)
    )


def derive(
    facts: PoolFacts,
    *,
    now: datetime,
    backoff_lookback: timedelta,
    hard_limit: int,
) -> GlobalSnapshot:
    """
    Every pool's state at *now*, derived from a store's facts.

    - **presets**: each preset as the calculator sees it.
    - **running**: pooled instances whose latest build is a successful start.
    - **in_progress**: pooled instances whose latest build is pending or
      running, on the template's active version, counted per preset and
      transition.
    - **pending**: queued first builds (a start, pending) of a version that
      is no longer the active one, counted per preset.
    - **backoffs**: among the latest start builds on the active version of a
      preset whose template is not deleted, newest first: if one of the
      newest *desired_instances* failed within *backoff_lookback*, the
      number of failures within it and the latest of them.
    - **hard_limited**: presets whose newest *hard_limit* latest start builds
      on the active version all failed (``hard_limit=0``: none).

    Coder's queries, in one place (``GetRunningPrebuiltWorkspaces``,
    ``CountInProgressPrebuilds``, ``CountPendingNonActivePrebuilds``,
    ``GetPresetsBackoff``, ``GetPresetsAtFailureLimit``).

    Raises:
        InvalidInputError: an argument of the wrong type, a naive *now*, a
            negative look-back or limit.

    .. versionadded:: 0.1.0
    """
    check_instance("facts", facts, PoolFacts)
    check_aware("now", now)
    check_delta("backoff_lookback", backoff_lookback)
    check_int("hard_limit", hard_limit, minimum=0, maximum=v.MAX_INSTANCES)
    templates = {f.template.id: f.template for f in facts.presets}
    tally = _Tally()
    for instance in facts.instances:
        tally.add(instance, templates.get(instance.template_id))
    backoffs, hard_limited = _failures(
        tally.starts,
        templates,
        {f.config.id: f.config.desired_instances for f in facts.presets},
        since=now - backoff_lookback,
        hard_limit=hard_limit,
    )
    return GlobalSnapshot(
        presets=sorted((f.preset for f in facts.presets), key=_by_id),
        running=sorted(tally.running, key=_by_id),
        in_progress=[
            InProgressCount(
                preset_id=preset_id,
                transition=transition,
                count=count,
                template_id=tally.template_of[preset_id].id,
                template_version_id=tally.template_of[preset_id].active_version_id,
            )
            for (preset_id, transition), count in sorted(
                tally.in_progress.items(), key=lambda kv: (kv[0][0], kv[0][1].value)
            )
        ],
        pending=[
            PendingCount(preset_id=p, count=n) for p, n in sorted(tally.pending.items())
        ],
        backoffs=backoffs,
        hard_limited=hard_limited,
        invalid_presets=facts.invalid_presets,
    )


def derive_preset(
    facts: PresetFacts,
    instances: Sequence[PooledInstance],
    *,
    templates: Mapping[UUID, Template],
    now: datetime,
    backoff_lookback: timedelta,
    hard_limit: int,
) -> PresetSnapshot:
    """
    One preset's snapshot at *now*, derived from its facts and its pooled
    instances alone (*instances*, in the order of the store's read;
    *templates* maps every template ID of the read to its template): equal
    to ``derive(...).filter_by_preset(preset_id, now=now)`` over the whole
    read, at the cost of this preset's rows only. The arguments are not
    checked (the reconciler's own path).
    """
    tally = _Tally()
    for instance in instances:
        tally.add(instance, templates.get(instance.template_id))
    preset_id = facts.config.id
    backoffs, hard_limited = _failures(
        tally.starts,
        templates,
        {preset_id: facts.config.desired_instances},
        since=now - backoff_lookback,
        hard_limit=hard_limit,
    )
    in_progress = [
        InProgressCount(
            preset_id=preset_id,
            transition=transition,
            count=count,
            template_id=tally.template_of[preset_id].id,
            template_version_id=tally.template_of[preset_id].active_version_id,
        )
        for (_, transition), count in sorted(
            tally.in_progress.items(), key=lambda kv: kv[0][1].value
        )
    ]
    snapshot = GlobalSnapshot(
        presets=(facts.preset,),
        running=sorted(tally.running, key=_by_id),
        in_progress=in_progress,
        pending=[PendingCount(preset_id=p, count=n) for p, n in tally.pending.items()],
        backoffs=backoffs,
        hard_limited=hard_limited,
    )
    return snapshot.filter_by_preset(preset_id, now=now)


@attrs.define
class _Tally:
    """What one walk over the pooled instances finds."""

    running: list[RunningPrebuild] = attrs.Factory(list)
    in_progress: defaultdict[tuple[UUID, Transition], int] = attrs.Factory(
        lambda: defaultdict(int)
    )
    template_of: dict[UUID, Template] = attrs.Factory(dict)
    pending: defaultdict[UUID, int] = attrs.Factory(lambda: defaultdict(int))
    starts: defaultdict[UUID, list[PooledInstance]] = attrs.Factory(
        lambda: defaultdict(list)
    )

    def add(self, instance: PooledInstance, template: Template | None) -> None:
        transition, status = instance.latest_transition, instance.latest_status
        if transition is Transition.START and status is BuildStatus.SUCCEEDED:
            self.running.append(
                RunningPrebuild(
                    id=instance.id,
                    preset_id=instance.preset_id,
                    created_at=instance.created_at,
                    ready=instance.ready,
                    name=instance.name,
                    template_id=instance.template_id,
                    template_version_id=instance.template_version_id,
                )
            )
        if template is None:  # its preset could not be read: not reconciled
            return
        on_active = instance.template_version_id == template.active_version_id
        if on_active and status.in_progress:
            self.in_progress[instance.preset_id, transition] += 1
            self.template_of[instance.preset_id] = template
        if (
            not on_active
            and instance.latest_number == 1
            and transition is Transition.START
            and status is BuildStatus.PENDING
        ):
            self.pending[instance.preset_id] += 1
        if on_active and transition is Transition.START:
            self.starts[instance.preset_id].append(instance)


def _failures(
    starts: dict[UUID, list[PooledInstance]],
    templates: Mapping[UUID, Template],
    desired: dict[UUID, int],
    *,
    since: datetime,
    hard_limit: int,
) -> tuple[list[Backoff], set[UUID]]:
    """The backoffs and the hard-limited presets, from the latest start builds."""
    backoffs: list[Backoff] = []
    hard_limited: set[UUID] = set()
    for preset_id, builds in sorted(starts.items()):
        builds.sort(
            key=lambda i: (i.latest_created_at, i.latest_build_id), reverse=True
        )
        if hard_limit and _all_failed(builds[:hard_limit], hard_limit):
            hard_limited.add(preset_id)
        if templates[builds[0].template_id].deleted:
            continue
        backoff = _backoff(preset_id, builds, desired.get(preset_id, 0), since)
        if backoff is not None:
            backoffs.append(backoff)
    return backoffs, hard_limited


def _by_id(item: Preset | RunningPrebuild) -> UUID:
    return item.id


def _all_failed(builds: Iterable[PooledInstance], hard_limit: int) -> bool:
    latest = list(builds)
    return len(latest) == hard_limit and all(
        b.latest_status is BuildStatus.FAILED for b in latest
    )


def _backoff(
    preset_id: UUID, builds: list[PooledInstance], desired: int, since: datetime
) -> Backoff | None:
    failed = [
        b
        for b in builds
        if b.latest_status is BuildStatus.FAILED and b.latest_created_at >= since
    ]
    recent = [
        b
        for b in builds[:desired]
        if b.latest_status is BuildStatus.FAILED and b.latest_created_at >= since
    ]
    if not recent:
        return None
    return Backoff(
        preset_id=preset_id,
        num_failed=len(failed),
        last_build_at=max(b.latest_created_at for b in recent),
    )
