"""
Lifecycle separation: pooled instances take part in no autostart,
autostop, TTL, dormancy or auto-deletion; a claim makes them ordinary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prebuilds._records import PREBUILDS_OWNER_ID, Lifecycle
from prebuilds._validate import check_aware
from prebuilds.exceptions import InvalidInputError


if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from prebuilds._records import Instance


def pooled_lifecycle(*, now: datetime) -> Lifecycle:
    """
    The lifecycle of a newly created pooled instance: every scheduling field
    unset, ``last_used_at`` now.
    """
    return Lifecycle(last_used_at=now)


def claimed_lifecycle(
    *,
    now: datetime,
    autostart_schedule: str | None,
    next_start_at: datetime | None,
    ttl: timedelta | None,
    template_default_ttl: timedelta | None,
) -> Lifecycle:
    """
    The lifecycle an instance gets at claim: autostart and next start from
    the claim, TTL from the claim or else the template's default,
    ``last_used_at`` now, dormancy and deletion dates cleared. Deadlines are
    the host's to set when the claimed instance's first build runs.

    Raises:
        InvalidInputError: a naive datetime or a negative TTL.
    """
    check_aware("now", now)
    if next_start_at is not None:
        check_aware("next_start_at", next_start_at)
    if ttl is not None and ttl.total_seconds() < 0:
        raise InvalidInputError("ttl", ttl, "must be >= 0")
    return Lifecycle(
        autostart_schedule=autostart_schedule,
        next_start_at=next_start_at,
        ttl=ttl if ttl is not None else template_default_ttl,
        last_used_at=now,
    )


def is_lifecycle_managed(instance: Instance) -> bool:
    """
    Whether the host's lifecycle executor (autostart, autostop, TTL,
    dormancy, auto-deletion, activity bumps) may act on *instance*.

    False for every pooled instance: only the reconciler manages those.

    .. versionadded:: 0.1.0
    """
    return instance.owner_id != PREBUILDS_OWNER_ID and not instance.deleted
