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
from prebuilds._claimer import StoreClaimer, match_preset
from prebuilds._clock import SystemClock
from prebuilds._events import (
    CollectingEventSink,
    FanOutEventSink,
    LoggingEventSink,
)
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
    expiry_cutoff,
    is_expired,
)
from prebuilds._noop import (
    DEFAULT_CLAIMER,
    DEFAULT_RECONCILER,
    NoopClaimer,
    NoopReconciler,
)
from prebuilds._pool import PooledInstance, PoolFacts, PresetFacts, derive
from prebuilds._reconciler import StoreReconciler, generate_name
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    Build,
    BuildRequest,
    BuildStatus,
    Event,
    EventKind,
    Instance,
    Lease,
    Lifecycle,
    PresetConfig,
    ResourceReplacement,
    Template,
)
from prebuilds._schedule import desired_instances, next_change
from prebuilds._status import PoolStatus, explain
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    LeadershipLostError,
    MissingExtraError,
    NoClaimablePrebuildsError,
    PrebuildsError,
    PrebuildsNotSupportedError,
    PresetChangedError,
    PresetInactiveError,
    PresetNotFoundError,
    ProvisionerError,
    ProvisionerValidationError,
    SchemaVersionError,
    StoreError,
    TemplateNotFoundError,
)
from prebuilds.interfaces import (
    BatchCreates,
    Claimer,
    Clock,
    EventSink,
    GroupedCreates,
    LeanClaims,
    PassObserver,
    Provisioner,
    Reconciler,
    ReconciliationOrchestrator,
    StampedClaims,
    StateSnapshotter,
    Store,
)


__all__ = [
    "DEFAULT_CLAIMER",
    "DEFAULT_RECONCILER",
    "PREBUILDS_OWNER_ID",
    "ActionType",
    "Backoff",
    "BatchCreates",
    "Build",
    "BuildNotFoundError",
    "BuildRequest",
    "BuildStatus",
    "Claimer",
    "Clock",
    "CollectingEventSink",
    "Event",
    "EventKind",
    "EventSink",
    "FanOutEventSink",
    "GlobalSnapshot",
    "GroupedCreates",
    "InProgressCount",
    "Instance",
    "InstanceNotFoundError",
    "InvalidInputError",
    "InvalidPreset",
    "LeadershipLostError",
    "LeanClaims",
    "Lease",
    "Lifecycle",
    "LoggingEventSink",
    "MissingExtraError",
    "NoClaimablePrebuildsError",
    "NoopClaimer",
    "NoopReconciler",
    "PassObserver",
    "PendingCount",
    "PoolFacts",
    "PoolStatus",
    "PooledInstance",
    "PrebuildSchedule",
    "PrebuildsError",
    "PrebuildsNotSupportedError",
    "Preset",
    "PresetChangedError",
    "PresetConfig",
    "PresetFacts",
    "PresetInactiveError",
    "PresetNotFoundError",
    "PresetSnapshot",
    "PresetStatus",
    "Provisioner",
    "ProvisionerError",
    "ProvisionerValidationError",
    "ReconcileStats",
    "Reconciler",
    "ReconciliationActions",
    "ReconciliationOrchestrator",
    "ReconciliationState",
    "ResourceReplacement",
    "RunningPrebuild",
    "SchemaVersionError",
    "StampedClaims",
    "StateSnapshotter",
    "Store",
    "StoreClaimer",
    "StoreError",
    "StoreReconciler",
    "SystemClock",
    "Template",
    "TemplateNotFoundError",
    "Transition",
    "backoff_until",
    "calculate_actions",
    "calculate_state",
    "can_skip_reconciliation",
    "claimed_lifecycle",
    "derive",
    "desired_instances",
    "expiry_cutoff",
    "explain",
    "generate_name",
    "is_expired",
    "is_lifecycle_managed",
    "match_preset",
    "next_change",
    "pooled_lifecycle",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from prebuilds._version import __version__  # noqa: PLC0415

        return __version__
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def _fixup_module_metadata() -> None:
    # Re-exported classes and functions name their public path, so that
    # reprs, pickles and the API docs say ``prebuilds.Preset`` rather than
    # ``prebuilds._model.Preset`` (like trio's fixup_module_metadata).
    # ``prebuilds.interfaces`` and ``prebuilds.exceptions`` are public
    # modules and keep their own path.
    import contextlib  # noqa: PLC0415
    import inspect  # noqa: PLC0415
    import typing  # noqa: PLC0415

    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not obj.__module__.startswith(f"{__name__}._"):
            continue
        if inspect.isclass(obj):
            # Resolve string annotations while the defining module is still
            # known, so typing.get_type_hints works on the public classes.
            own = inspect.get_annotations(obj)
            hints = typing.get_type_hints(obj)
            with contextlib.suppress(AttributeError, TypeError):
                obj.__annotations__ = {k: hints[k] for k in own}
        with contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
