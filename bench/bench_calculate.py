"""
The pure calculator against the cost of its input.

Constructing 10,000 PresetSnapshots (each with its Preset and 10
RunningPrebuilds) is what any caller pays to ask; running calculate_actions
and calculate_state over all of them should cost no more than that
(target: calculate / construct <= 1.0).
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from prebuilds import (
    Backoff,
    InProgressCount,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    PresetStatus,
    RunningPrebuild,
    Transition,
    calculate_actions,
    calculate_state,
)


NOW = datetime(2024, 1, 1, 12, tzinfo=timezone.utc)
INTERVAL = timedelta(minutes=1)
PER_PRESET = 10
TARGET = 1.0


def _uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def build(presets: int) -> list[PresetSnapshot]:
    """
    *presets* snapshots with a realistic mix: most active and healthy, some
    inactive, some over or under their desired count, some with expired
    prebuilds, in-progress builds, a backoff, a hard limit or a schedule.
    """
    template_id = _uuid(1)
    snapshots = []
    for i in range(presets):
        base = (i + 1) * 1_000
        preset_id = _uuid(base)
        schedules: tuple[PrebuildSchedule, ...] = ()
        zone = ""
        if i % 10 == 0:
            zone = "Europe/Berlin"
            schedules = (
                PrebuildSchedule(cron="* 8-17 * * 1-5", instances=12),
                PrebuildSchedule(cron="* 9-13 * * 6,0", instances=4),
            )
        preset = Preset(
            id=preset_id,
            template_id=template_id,
            template_version_id=_uuid(base + 1),
            desired_instances=i % 13,
            name=f"preset-{i}",
            using_active_version=i % 17 != 0,
            ttl=timedelta(hours=6) if i % 2 else None,
            scheduling_timezone=zone,
            schedules=schedules,
            status=PresetStatus.VALIDATION_FAILED
            if i % 97 == 0
            else PresetStatus.HEALTHY,
        )
        prebuilds = [
            RunningPrebuild(
                id=_uuid(base + 10 + j),
                preset_id=preset_id,
                created_at=NOW - timedelta(minutes=37 * j + i % 11),
                ready=j % 4 != 0,
                name=f"prebuild-{i}-{j}",
                template_id=template_id,
                template_version_id=preset.template_version_id,
            )
            for j in range(PER_PRESET)
        ]
        expired = 2 if i % 3 == 0 else 0
        snapshots.append(
            PresetSnapshot(
                preset=preset,
                running=prebuilds[: PER_PRESET - expired],
                expired=prebuilds[PER_PRESET - expired :],
                in_progress=(
                    (
                        InProgressCount(
                            preset_id=preset_id, transition=Transition.START, count=1
                        ),
                    )
                    if i % 5 == 0
                    else ()
                ),
                pending_count=1 if i % 34 == 0 else 0,
                backoff=(
                    Backoff(
                        preset_id=preset_id, num_failed=2, last_build_at=NOW - INTERVAL
                    )
                    if i % 50 == 0
                    else None
                ),
                is_hard_limited=i % 101 == 0,
            )
        )
    return snapshots


def calculate(snapshots: list[PresetSnapshot]) -> int:
    """What the reconciler does per preset: state (for logs, metrics) and actions."""
    actions = 0
    for snapshot in snapshots:
        calculate_state(snapshot, now=NOW)
        actions += len(calculate_actions(snapshot, now=NOW, backoff_interval=INTERVAL))
    return actions


def actions_only(snapshots: list[PresetSnapshot]) -> int:
    return sum(
        len(calculate_actions(s, now=NOW, backoff_interval=INTERVAL)) for s in snapshots
    )


def state_only(snapshots: list[PresetSnapshot]) -> int:
    return sum(calculate_state(s, now=NOW).actual for s in snapshots)


def _time(fn: Callable[[], object]) -> float:
    gc.collect()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure and return the medians (seconds) and the ratio."""
    presets, repeats = (2_000, 3) if quick else (10_000, 7)
    snapshots = build(presets)
    planned = calculate(snapshots)
    construct, both, actions, state = [], [], [], []
    for _ in range(repeats):
        construct.append(_time(lambda: build(presets)))
        both.append(_time(lambda: calculate(snapshots)))
        actions.append(_time(lambda: actions_only(snapshots)))
        state.append(_time(lambda: state_only(snapshots)))
    construct_s = statistics.median(construct)
    calculate_s = statistics.median(both)
    return {
        "presets": presets,
        "prebuilds_per_preset": PER_PRESET,
        "repeats": repeats,
        "actions_planned": planned,
        "construct_median_s": construct_s,
        "calculate_median_s": calculate_s,
        "calculate_actions_median_s": statistics.median(actions),
        "calculate_state_median_s": statistics.median(state),
        "ratio_calculate_to_construct": calculate_s / construct_s,
        "target_ratio": TARGET,
        "meets_target": calculate_s / construct_s <= TARGET,
        "construct_runs_s": construct,
        "calculate_runs_s": both,
    }


def summarize(results: dict[str, Any]) -> str:
    """A few lines for a human."""
    n = results["presets"]
    per = results["construct_median_s"] / n * 1e6
    verdict = "met" if results["meets_target"] else "MISSED"
    lines = [
        (
            f"calculate: {n:,} presets x {results['prebuilds_per_preset']} prebuilds,"
            f" median of {results['repeats']} runs"
        ),
        (
            f"  construct snapshots       {results['construct_median_s']:.3f} s"
            f" ({per:.1f} us/preset)"
        ),
        (
            f"  calculate state+actions   {results['calculate_median_s']:.3f} s"
            f" (actions {results['calculate_actions_median_s']:.3f} s,"
            f" state {results['calculate_state_median_s']:.3f} s)"
        ),
        (
            f"  ratio calculate/construct {results['ratio_calculate_to_construct']:.2f}x"
            f" (target <= {results['target_ratio']:.1f}x: {verdict})"
        ),
    ]
    return "\n".join(lines)
