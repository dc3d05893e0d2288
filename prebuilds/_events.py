"""The default event sink: log every event through :mod:`logging`."""

from __future__ import annotations

import logging

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prebuilds._records import EventKind


if TYPE_CHECKING:
    from prebuilds._model import ReconcileStats
    from prebuilds._records import Event
    from prebuilds._status import PoolStatus
    from prebuilds.interfaces import EventSink

_WARNINGS = frozenset(
    {
        EventKind.FAILED,
        EventKind.BACKOFF,
        EventKind.HARD_LIMITED,
        EventKind.VALIDATION_FAILED,
        EventKind.REPLACEMENT,
        EventKind.STUCK,
        EventKind.INVALID_PRESET,
        EventKind.PRESET_ERROR,
        EventKind.PASS_ERROR,
        EventKind.LEADERSHIP_LOST,
    }
)


class LoggingEventSink:
    """
    Log each event on the ``prebuilds`` logger: failures and warnings at
    WARNING, the rest at INFO, with the IDs in ``extra``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("prebuilds")

    def emit(self, event: Event) -> None:
        """Log *event*; never raises."""
        level = logging.WARNING if event.kind in _WARNINGS else logging.INFO
        try:
            if not self._logger.isEnabledFor(level):
                return  # dropped: no formatting work
            named = f" ({event.preset_name})" if event.preset_name else ""
            more = ""
            if event.duration is not None:
                more += f" in {event.duration.total_seconds():.3f}s"
            if event.suppressed:
                more += f" ({event.suppressed} like it held back)"
            self._logger.log(
                level,
                "prebuilds %s preset=%s%s instance=%s build=%s %s%s",
                event.kind.value,
                event.preset_id,
                named,
                event.instance_id,
                event.build_id,
                event.detail,
                more,
                extra={
                    "prebuilds_event": event.kind.value,
                    "preset_id": event.preset_id,
                    "preset_name": event.preset_name,
                    "template_name": event.template_name,
                    "instance_id": event.instance_id,
                    "build_id": event.build_id,
                    "suppressed": event.suppressed,
                },
            )
        except Exception:  # a sink must never raise
            logging.getLogger("prebuilds").debug("event sink failed", exc_info=True)


class CollectingEventSink:
    """
    Keep every event in :attr:`events`, in order (tests, simulations).

    Attributes:
        events: The events emitted so far, oldest first.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        """Append *event*."""
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        """The kinds of the events so far, in order."""
        return [e.kind for e in self.events]


class FanOutEventSink:
    """
    Hand every event to each of several sinks, in order: logs *and*
    metrics, say. A sink that raises is logged and skipped.

    It forwards :meth:`pass_finished` to the sinks that offer it
    (:class:`~prebuilds.interfaces.PassObserver`), such as
    :class:`prebuilds.metrics.PrometheusMetrics`.

    Args:
        sinks: The sinks, each an :class:`~prebuilds.interfaces.EventSink`.

    .. versionadded:: 0.2.0
    """

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: tuple[EventSink, ...] = sinks

    def emit(self, event: Event) -> None:
        """Give *event* to every sink; never raises."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # one broken sink must not starve the others
                logging.getLogger("prebuilds").warning(
                    "prebuilds event sink %r failed", sink, exc_info=True
                )

    def pass_finished(
        self, stats: ReconcileStats, statuses: Sequence[PoolStatus]
    ) -> None:
        """Give the pass to every sink that observes passes; never raises."""
        for sink in self.sinks:
            observe = getattr(sink, "pass_finished", None)
            if observe is None:
                continue
            try:
                observe(stats, statuses)
            except Exception:
                logging.getLogger("prebuilds").warning(
                    "prebuilds pass observer %r failed", sink, exc_info=True
                )
