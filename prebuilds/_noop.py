"""No-op implementations: complete, typed, and doing nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from prebuilds._model import GlobalSnapshot, PresetSnapshot, ReconcileStats
from prebuilds.exceptions import PrebuildsNotSupportedError


if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, timedelta

    from prebuilds._model import ReconciliationActions
    from prebuilds._records import ResourceReplacement
    from prebuilds.interfaces import Claimer, ReconciliationOrchestrator, Store


class NoopReconciler:
    """
    A reconciler that does nothing: empty snapshots, empty stats, no actions.

    .. versionadded:: 0.1.0
    """

    def run(self) -> None:
        """Return at once."""

    def stop(
        self, cause: BaseException | None = None, *, timeout: float | None = None
    ) -> None:
        """Do nothing."""

    def track_resource_replacement(
        self,
        workspace_id: UUID,
        build_id: UUID,
        replacements: Sequence[ResourceReplacement],
    ) -> None:
        """Do nothing."""

    def reconcile_all(self) -> ReconcileStats:
        """Return empty stats."""
        return ReconcileStats()

    def snapshot_state(self, store: Store) -> GlobalSnapshot:
        """Return an empty snapshot without reading *store*."""
        return GlobalSnapshot()

    def calculate_actions(
        self,
        snapshot: PresetSnapshot,
    ) -> list[ReconciliationActions]:
        """Return no actions."""
        return []


class NoopClaimer:
    """
    A claimer for hosts without prebuilds: every claim raises
    :class:`~prebuilds.exceptions.PrebuildsNotSupportedError`.

    .. versionadded:: 0.1.0
    """

    def claim(
        self,
        *,
        now: datetime,
        user_id: UUID,
        name: str,
        preset_id: UUID,
        autostart_schedule: str | None = None,
        next_start_at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> UUID:
        """Raise PrebuildsNotSupportedError."""
        raise PrebuildsNotSupportedError

    def initiator(self) -> UUID:
        """Return the nil UUID."""
        return UUID(int=0)


#: The reconciler a host starts from: does nothing.
DEFAULT_RECONCILER: ReconciliationOrchestrator = NoopReconciler()
#: The claimer a host starts from: prebuilds are not supported.
DEFAULT_CLAIMER: Claimer = NoopClaimer()
