"""The default event sink: log every event through :mod:`logging`."""

from __future__ import annotations

import logging

from typing import TYPE_CHECKING

from prebuilds._records import EventKind


if TYPE_CHECKING:
    from prebuilds._records import Event

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
            self._logger.log(
                level,
                "prebuilds %s preset=%s instance=%s build=%s %s",
                event.kind.value,
                event.preset_id,
                event.instance_id,
                event.build_id,
                event.detail,
                extra={
                    "prebuilds_event": event.kind.value,
                    "preset_id": event.preset_id,
                    "instance_id": event.instance_id,
                    "build_id": event.build_id,
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
