"""
prebuilds: keep pools of prebuilt, warm instances ready to hand out.

The public API is exactly ``__all__``; everything in ``prebuilds._*`` may
change without notice.
"""

from __future__ import annotations

from prebuilds._calculate import (
    backoff_until,
    calculate_actions,
    calculate_state,
    can_skip_reconciliation,
)
from prebuilds._clock import SystemClock
from prebuilds._lifecycle import (
    claimed_lifecycle,
    is_lifecycle_managed,
    pooled_lifecycle,
)
from prebuilds._model import (
    ActionType,
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidPreset,
    PendingCount,
    PrebuildSchedule,
    Preset,
    PresetSnapshot,
    PresetStatus,
    ReconcileStats,
    ReconciliationActions,
    ReconciliationState,
    RunningPrebuild,
    Transition,
    is_expired,
)
from prebuilds._noop import (
    DEFAULT_CLAIMER,
    DEFAULT_RECONCILER,
    NoopClaimer,
    NoopReconciler,
)
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    Build,
    BuildRequest,
    BuildStatus,
    Event,
    EventKind,
    Instance,
    Lifecycle,
    PresetConfig,
    ResourceReplacement,
    Template,
)
from prebuilds._schedule import desired_instances, next_change
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    NoClaimablePrebuildsError,
    PrebuildsError,
    PrebuildsNotSupportedError,
    PresetInactiveError,
    PresetNotFoundError,
    ProvisionerError,
    ProvisionerValidationError,
    SchemaVersionError,
    StoreError,
)
from prebuilds.interfaces import (
    Claimer,
    Clock,
    EventSink,
    Provisioner,
    ReconciliationOrchestrator,
    Reconciler,
    StateSnapshotter,
    Store,
)


__all__ = [
    "DEFAULT_CLAIMER",
    "DEFAULT_RECONCILER",
    "PREBUILDS_OWNER_ID",
    "ActionType",
    "Backoff",
    "Build",
    "BuildNotFoundError",
    "BuildRequest",
    "BuildStatus",
    "Claimer",
    "Clock",
    "Event",
    "EventKind",
    "EventSink",
    "GlobalSnapshot",
    "InProgressCount",
    "Instance",
    "InstanceNotFoundError",
    "InvalidInputError",
    "InvalidPreset",
    "Lifecycle",
    "NoClaimablePrebuildsError",
    "NoopClaimer",
    "NoopReconciler",
    "PendingCount",
    "PrebuildSchedule",
    "PrebuildsError",
    "PrebuildsNotSupportedError",
    "Preset",
    "PresetConfig",
    "PresetInactiveError",
    "PresetNotFoundError",
    "PresetSnapshot",
    "PresetStatus",
    "Provisioner",
    "ProvisionerError",
    "ProvisionerValidationError",
    "ReconcileStats",
    "ReconciliationActions",
    "ReconciliationOrchestrator",
    "ReconciliationState",
    "Reconciler",
    "ResourceReplacement",
    "RunningPrebuild",
    "SchemaVersionError",
    "StateSnapshotter",
    "Store",
    "StoreError",
    "SystemClock",
    "Template",
    "Transition",
    "backoff_until",
    "calculate_actions",
    "calculate_state",
    "can_skip_reconciliation",
    "claimed_lifecycle",
    "desired_instances",
    "is_expired",
    "is_lifecycle_managed",
    "next_change",
    "pooled_lifecycle",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("prebuilds")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
