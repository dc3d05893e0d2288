"""Pieces every reference store shares: preset assembly and expiry."""

# expired_at is re-exported for the stores' claim filters.

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from prebuilds._model import (
    InvalidPreset,
    PrebuildSchedule,
    Preset,
    PresetStatus,
)
from prebuilds._records import Lease
from prebuilds.exceptions import InvalidInputError, LeadershipLostError


if TYPE_CHECKING:
    from collections.abc import Iterable

    from prebuilds._records import PresetConfig, Template


def assemble_preset(
    config: PresetConfig,
    template: Template,
    *,
    status: PresetStatus,
    last_invalidated_at: datetime | None,
) -> Preset:
    """
    The calculator's view of a stored preset.

    Raises:
        InvalidInputError: the stored configuration is not valid.
    """
    return build_preset(
        id=config.id,
        template_id=config.template_id,
        template_version_id=config.template_version_id,
        desired_instances=config.desired_instances,
        name=config.name,
        ttl=config.ttl,
        scheduling_timezone=config.scheduling_timezone,
        schedules=[(s.cron, s.instances) for s in config.schedules],
        parameters=config.parameters,
        template=template,
        status=status,
        last_invalidated_at=last_invalidated_at,
    )


def build_preset(
    *,
    id: UUID,  # noqa: A002
    template_id: UUID,
    template_version_id: UUID,
    desired_instances: int,
    name: str,
    ttl: timedelta | None,
    scheduling_timezone: str,
    schedules: Iterable[tuple[str, int]],
    parameters: Iterable[tuple[str, str]],
    template: Template,
    status: PresetStatus,
    last_invalidated_at: datetime | None,
) -> Preset:
    """
    Build a :class:`Preset` from raw stored fields (SQL rows included).

    Raises:
        InvalidInputError: a field is not valid.
    """
    return Preset(
        id=id,
        template_id=template_id,
        template_version_id=template_version_id,
        desired_instances=desired_instances,
        name=name,
        organization_id=template.organization_id,
        using_active_version=template_version_id == template.active_version_id,
        template_deleted=template.deleted,
        template_deprecated=template.deprecated,
        ttl=ttl,
        last_invalidated_at=last_invalidated_at,
        scheduling_timezone=scheduling_timezone,
        schedules=tuple(
            PrebuildSchedule(cron=cron, instances=n) for cron, n in schedules
        ),
        status=status,
        parameters=tuple((str(k), str(v)) for k, v in parameters),
    )


def invalid_preset(preset_id: UUID, error: InvalidInputError) -> InvalidPreset:
    """Describe a stored preset that could not be read."""
    return InvalidPreset(
        preset_id=preset_id,
        field=error.field,
        value=repr(error.value),
        reason=error.reason,
    )


def fence_token(lease: Lease | None) -> str | None:
    """
    The token a fenced write checks: None for an unfenced write
    (``lease=None``), else the token of *lease*.

    Raises:
        InvalidInputError: *lease* is neither None nor a :class:`Lease`.
        LeadershipLostError: *lease* was never held (nothing to fence with).
    """
    if lease is None:
        return None
    if not isinstance(lease, Lease):
        raise InvalidInputError("lease", lease, "must be a Lease or None")
    if not lease.held or not lease.token:
        msg = "the lease was not acquired: it cannot fence a write"
        raise LeadershipLostError(msg)
    return lease.token


def lost(token: str) -> LeadershipLostError:
    """The error of a fenced write whose lease no longer leads."""
    return LeadershipLostError(
        f"leadership lost: lease {token!r} no longer leads (its scope ended, "
        "it expired or another holder took over); nothing was written"
    )
