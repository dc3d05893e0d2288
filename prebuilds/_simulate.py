"""
A built-in simulation: a day of a small host's pools on a real store.

It is the library's main job in miniature: a SQLite store, the reference
reconciler and claimer, a fake provisioner and a fake clock, and users who
arrive through the day and claim instances.
"""

from __future__ import annotations

import random
import uuid

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import attrs

from prebuilds._claimer import StoreClaimer
from prebuilds._events import CollectingEventSink
from prebuilds._model import PrebuildSchedule
from prebuilds._reconciler import StoreReconciler
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    BuildStatus,
    PresetConfig,
    Template,
)
from prebuilds._schedule import desired_instances
from prebuilds.exceptions import InvalidInputError, NoClaimablePrebuildsError
from prebuilds.testing._fakes import FakeClock, FakeProvisioner


if TYPE_CHECKING:
    from collections.abc import Callable

    from prebuilds.interfaces import Store

#: A Monday, 00:00 in UTC.
START = datetime(2025, 6, 2, tzinfo=timezone.utc)


@attrs.frozen(kw_only=True)
class PoolSample:
    """One pool at one instant: its desired, ready and failed instances."""

    name: str
    want: int
    ready: int
    failed: int


@attrs.frozen(kw_only=True)
class Sample:
    """Every pool at the top of one simulated hour, and the claims so far."""

    at: datetime
    pools: tuple[PoolSample, ...]
    warm: int
    cold: int


@attrs.frozen(kw_only=True)
class SimulationResult:
    """What a simulated run measured, with one sample per simulated hour."""

    claims: int
    warm: int
    cold: int
    created: int
    deleted: int
    passes: int
    samples: tuple[Sample, ...] = ()

    @property
    def hit_rate(self) -> float:
        """The share of claims served from the pool."""
        return self.warm / self.claims if self.claims else 0.0


def seed_example(store: Store, *, pools: int = 2) -> list[PresetConfig]:
    """
    Write the example's template and presets to *store*: ``small`` and
    ``gpu``, then more of the two alternately up to *pools* presets
    (``small-2``, ``gpu-3``, ...).
    """
    template = Template(
        id=uuid.UUID(int=1),
        active_version_id=uuid.UUID(int=2),
        name="python-dev",
        default_ttl=timedelta(hours=8),
    )
    store.put_template(template)
    presets = [
        PresetConfig(
            id=uuid.UUID(int=11),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=1,
            name="small",
            ttl=timedelta(hours=6),
            scheduling_timezone="Europe/Berlin",
            schedules=(PrebuildSchedule(cron="* 8-17 * * 1-5", instances=4),),
            parameters=(("size", "small"),),
        ),
        PresetConfig(
            id=uuid.UUID(int=12),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=1,
            name="gpu",
            parameters=(("size", "gpu"),),
        ),
    ]
    for n in range(len(presets), pools):
        like = presets[n % 2]
        presets.append(
            attrs.evolve(like, id=uuid.UUID(int=11 + n), name=f"{like.name}-{n}")
        )
    presets = presets[:pools]
    for preset in presets:
        store.put_preset(preset)
    return presets


def simulate(
    store: Store,
    *,
    hours: int = 24,
    step: timedelta = timedelta(minutes=5),
    seed: int = 0,
    on_sample: Callable[[Sample], None] | None = None,
    pools: int = 2,
    default_settings: bool = False,
) -> SimulationResult:
    """
    Run the example for *hours* of simulated time on *store*.

    Every *step* the fake provisioner finishes due builds, the reconciler
    runs a pass and users may claim. At the top of each hour a
    :class:`Sample` is taken, passed to *on_sample* (if given) and kept in
    the result. *pools* presets are simulated (see :func:`seed_example`).
    The reconciler runs presets one at a time with no submit timeout, so
    that a seed gives one result; *default_settings* gives it its default
    settings instead (presets in parallel, a submit timeout), as a host
    runs it.

    Raises:
        InvalidInputError: *hours* is less than 1, *step* not positive or
            *pools* less than 1.
    """
    if hours < 1:
        raise InvalidInputError("hours", hours, "must be 1 or more")
    if step <= timedelta(0):
        raise InvalidInputError("step", step, "must be positive")
    if pools < 1:
        raise InvalidInputError("pools", pools, "must be 1 or more")
    rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
    clock = FakeClock(START)
    provisioner = FakeProvisioner(
        store,
        clock,
        build_time=timedelta(minutes=12),
        failure_rate=0.05,
        seed=seed,
    )
    events = CollectingEventSink()
    reconciler = (
        StoreReconciler(store, provisioner, clock=clock, events=events)
        if default_settings
        else StoreReconciler(
            store,
            provisioner,
            clock=clock,
            events=events,
            max_workers=1,
            submit_timeout=None,
        )
    )
    claimer = StoreClaimer(store, events=events)
    presets = seed_example(store, pools=pools)
    warm = cold = created = deleted = passes = 0
    samples: list[Sample] = []
    end = START + timedelta(hours=hours)
    try:
        while clock.now() < end:
            provisioner.process()
            stats = reconciler.reconcile_all()
            passes += 1
            created += stats.created
            deleted += stats.deleted
            now = clock.now()
            for preset, chance in zip(presets, _demands(presets, now), strict=True):
                if rng.random() < chance:
                    try:
                        claimer.claim(
                            now=now,
                            user_id=uuid.uuid4(),
                            name=f"ws-{rng.randrange(10**6):06d}",
                            preset_id=preset.id,
                        )
                        warm += 1
                    except NoClaimablePrebuildsError:
                        cold += 1
            if now.minute == 0 and now.second == 0:
                sample = _sample(store, presets, now, warm, cold)
                samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
            clock.advance(step)
    finally:
        reconciler.stop()  # its worker threads end
    return SimulationResult(
        claims=warm + cold,
        warm=warm,
        cold=cold,
        created=created,
        deleted=deleted,
        passes=passes,
        samples=tuple(samples),
    )


def _demands(presets: list[PresetConfig], now: datetime) -> list[float]:
    """Chance per step that a user asks for each preset: busy in office hours."""
    local_hour = (now + timedelta(hours=2)).hour
    busy = 8 <= local_hour < 18  # noqa: PLR2004
    small = 0.6 if busy else 0.02
    return [small if p.name.startswith("small") else 0.03 for p in presets]


def _sample(
    store: Store,
    presets: list[PresetConfig],
    now: datetime,
    warm: int,
    cold: int,
) -> Sample:
    pools = []
    for config in presets:
        preset = store.read_preset(config.id).preset
        pooled = store.list_instances(preset_id=config.id, owner_id=PREBUILDS_OWNER_ID)
        pools.append(
            PoolSample(
                name=config.name,
                want=desired_instances(preset, at=now),
                ready=sum(1 for i in pooled if i.ready),
                failed=sum(1 for i in pooled if i.latest_status is BuildStatus.FAILED),
            )
        )
    return Sample(at=now, pools=tuple(pools), warm=warm, cold=cold)
