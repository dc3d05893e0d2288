"""
The pure action calculator: one preset's snapshot in, the actions out.

No I/O, no clock reads, no globals: time comes in as *now*. Inputs are never
mutated. The rules, in order (the first that returns ends the calculation):

1. Backoff: with ``num_failed > 0`` and ``now <= last_build_at + num_failed
   * backoff_interval`` the only action is ``BACKOFF(until)``.
2. Inactive preset: ``CANCEL_PENDING`` if creations are queued, then one
   ``DELETE`` of every running prebuild, expired included, oldest first.
3. Active preset: ``DELETE`` the expired, oldest first; ``DELETE`` the oldest
   extraneous; ``CREATE max(desired - running - starting, 0)`` unless the
   preset is hard-limited or failed validation.

"Oldest first" sorts by ``created_at`` and then by ID.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prebuilds._model import (
    ActionType,
    PresetSnapshot,
    PresetStatus,
    ReconciliationActions,
    ReconciliationState,
    RunningPrebuild,
    Transition,
)
from prebuilds._schedule import desired_instances
from prebuilds._validate import (
    MAX_DATETIME,
    check_aware,
    check_delta,
    check_instance,
)


if TYPE_CHECKING:
    from collections.abc import Iterable
    from uuid import UUID


def _oldest_first(prebuilds: Iterable[RunningPrebuild]) -> list[UUID]:
    ordered = sorted(prebuilds, key=lambda p: (p.created_at, p.id))
    return [p.id for p in ordered]


def calculate_state(snapshot: PresetSnapshot, *, now: datetime) -> ReconciliationState:
    """
    Derive the counts of one preset's pool at *now*.

    ``actual`` and ``expired`` count every running prebuild; ``desired``,
    ``eligible`` and ``extraneous`` are 0 for an inactive preset;
    ``starting``/``stopping``/``deleting`` sum the in-progress builds.

    Raises:
        InvalidInputError: *snapshot* is not a PresetSnapshot or *now* is
            naive.
    """
    check_instance("snapshot", snapshot, PresetSnapshot)
    check_aware("now", now)
    starting = stopping = deleting = 0
    for row in snapshot.in_progress:
        if row.transition is Transition.START:
            starting += row.count
        elif row.transition is Transition.STOP:
            stopping += row.count
        else:
            deleting += row.count
    running = len(snapshot.running)
    desired = eligible = extraneous = 0
    if snapshot.preset.is_active:
        desired = desired_instances(snapshot.preset, at=now)
        eligible = sum(1 for p in snapshot.running if p.ready)
        extraneous = max(running - desired, 0)
    return ReconciliationState(
        actual=running + len(snapshot.expired),
        expired=len(snapshot.expired),
        desired=desired,
        eligible=eligible,
        extraneous=extraneous,
        starting=starting,
        stopping=stopping,
        deleting=deleting,
    )


def backoff_until(
    snapshot: PresetSnapshot, *, backoff_interval: timedelta
) -> datetime | None:
    """
    When the preset's failure backoff ends, or ``None`` if it has none.

    The backoff grows linearly: ``last_build_at + num_failed * interval``,
    capped at 9000-01-01 UTC (the latest instant prebuilds accepts, so a
    backoff that long never ends).

    Raises:
        InvalidInputError: *snapshot* is not a PresetSnapshot or
            *backoff_interval* is not a timedelta from 0 to 36,500 days.
    """
    check_instance("snapshot", snapshot, PresetSnapshot)
    check_delta("backoff_interval", backoff_interval)
    backoff = snapshot.backoff
    if backoff is None or backoff.num_failed == 0:
        return None
    try:
        until = backoff.last_build_at + backoff.num_failed * backoff_interval
    except OverflowError:
        return MAX_DATETIME
    return min(until, MAX_DATETIME)


def calculate_actions(
    snapshot: PresetSnapshot, *, now: datetime, backoff_interval: timedelta
) -> list[ReconciliationActions]:
    """
    The actions that reconcile one preset's pool at *now*.

    Returns:
        A new list with no no-op actions, in execution order. It is
        ``[BACKOFF]`` alone; or ``[CANCEL_PENDING?, DELETE?]`` for an
        inactive preset; or ``[DELETE(expired)?, DELETE(extraneous)?,
        CREATE?]`` for an active one.

    Raises:
        InvalidInputError: *snapshot* is not a PresetSnapshot, *now* is
            naive, or *backoff_interval* is not a timedelta from 0 to 36,500
            days.
    """
    check_instance("snapshot", snapshot, PresetSnapshot)
    check_aware("now", now)
    until = backoff_until(snapshot, backoff_interval=backoff_interval)
    if until is not None and now <= until:
        return [
            ReconciliationActions(action_type=ActionType.BACKOFF, backoff_until=until)
        ]

    actions: list[ReconciliationActions] = []
    preset = snapshot.preset
    if not preset.is_active:
        if snapshot.pending_count > 0:
            actions.append(ReconciliationActions(action_type=ActionType.CANCEL_PENDING))
        if snapshot.running or snapshot.expired:
            actions.append(
                ReconciliationActions(
                    action_type=ActionType.DELETE,
                    delete_ids=_oldest_first((*snapshot.expired, *snapshot.running)),
                )
            )
        return actions

    state = calculate_state(snapshot, now=now)
    if snapshot.expired:
        actions.append(
            ReconciliationActions(
                action_type=ActionType.DELETE,
                delete_ids=_oldest_first(snapshot.expired),
            )
        )
    if state.extraneous > 0:
        actions.append(
            ReconciliationActions(
                action_type=ActionType.DELETE,
                delete_ids=_oldest_first(snapshot.running)[: state.extraneous],
            )
        )
    to_create = min(
        max(state.desired - len(snapshot.running) - state.starting, 0),
        state.desired,
    )
    blocked = (
        snapshot.is_hard_limited or preset.status is PresetStatus.VALIDATION_FAILED
    )
    if to_create > 0 and not blocked:
        actions.append(
            ReconciliationActions(action_type=ActionType.CREATE, create=to_create)
        )
    return actions


def can_skip_reconciliation(snapshot: PresetSnapshot) -> bool:
    """
    Whether the preset certainly needs no action: it is inactive and has no
    running or expired prebuilds, no queued creations and no backoff row.

    When this is true every action :func:`calculate_actions` returns is a
    no-op (it returns none).

    Raises:
        InvalidInputError: *snapshot* is not a PresetSnapshot.
    """
    check_instance("snapshot", snapshot, PresetSnapshot)
    return not (
        snapshot.preset.is_active
        or snapshot.running
        or snapshot.expired
        or snapshot.pending_count > 0
        or snapshot.backoff is not None
    )
