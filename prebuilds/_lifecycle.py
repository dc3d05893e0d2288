"""
Lifecycle separation: pooled instances take part in no autostart,
autostop, TTL, dormancy or auto-deletion; a claim makes them ordinary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from prebuilds._records import PREBUILDS_OWNER_ID, Instance, Lifecycle
from prebuilds._validate import check_aware, check_instance, check_optional_delta


if TYPE_CHECKING:
    from datetime import datetime, timedelta


def pooled_lifecycle(*, now: datetime) -> Lifecycle:
    """
    The lifecycle of a newly created pooled instance: every scheduling field
    unset, ``last_used_at`` now.

    Raises:
        InvalidInputError: *now* is naive or out of range.
    """
    return Lifecycle(last_used_at=check_aware("now", now))


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
        InvalidInputError: naming the argument: a naive datetime, a TTL that
            is not a timedelta from 0 to 36,500 days, an autostart schedule
            that is not a string of at most 255 characters.
    """
    check_aware("now", now)
    # Lifecycle's validators name the claim's own arguments (they are its
    # field names), in this order; the template's default is checked after
    # them, whether it is used or not.
    claimed = Lifecycle(
        autostart_schedule=autostart_schedule,
        next_start_at=next_start_at,
        ttl=ttl,
        last_used_at=now,
    )
    check_optional_delta("template_default_ttl", template_default_ttl)
    if ttl is None:
        return attrs.evolve(claimed, ttl=template_default_ttl)
    return claimed


def is_lifecycle_managed(instance: Instance) -> bool:
    """
    Whether the host's lifecycle executor (autostart, autostop, TTL,
    dormancy, auto-deletion, activity bumps) may act on *instance*.

    False for every pooled instance: only the reconciler manages those.

    Raises:
        InvalidInputError: *instance* is not an Instance.

    .. versionadded:: 0.1.0
    """
    check_instance("instance", instance, Instance)
    return instance.owner_id != PREBUILDS_OWNER_ID and not instance.deleted
