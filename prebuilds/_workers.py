"""
Threads kept between tasks: the reconciler's workers and submit calls.

A pass hands presets to workers and a submit with a timeout runs on a
worker of its own; starting a thread for each (and joining it) costs more
than most of them do. :class:`Workers` keeps its threads: a task runs on an
idle one if there is one, else on a new one, so a task never waits for
another (a submit hung in the host's code holds up nothing but its own
thread). The threads are daemons, so that a hung task does not keep the
interpreter from exiting, and a thread idle for *idle_timeout* seconds ends.
"""

from __future__ import annotations

import logging
import queue
import threading

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("prebuilds")


class Workers:
    """
    Daemon threads that run tasks and are kept for the next ones.

    :meth:`start` runs a task on an idle thread, or a new one if none is
    idle; :meth:`close` ends the idle threads and lets the busy ones end
    after their task (a task started after :meth:`close` still runs, on a
    thread that ends after it). Thread-safe.
    """

    __slots__ = ("_closed", "_idle", "_idle_timeout", "_lock", "_name", "_tasks")

    def __init__(self, name: str, *, idle_timeout: float = 60.0) -> None:
        self._name = name
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        # Tasks handed to idle threads; None tells an idle thread to end.
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Waiting threads no task is promised to: waiting = idle + queued.
        self._idle = 0
        self._closed = False

    def start(self, task: Callable[[], None]) -> None:
        """Run *task* on a thread of the pool; its exceptions are logged."""
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
                self._tasks.put(task)
        if not reuse:
            threading.Thread(
                target=self._work, args=(task,), name=self._name, daemon=True
            ).start()

    def close(self) -> None:
        """End the idle threads; the busy ones end after their task."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
            for _ in range(idle):
                self._tasks.put(None)

    def _work(self, task: Callable[[], None] | None) -> None:
        while task is not None:
            try:
                task()
            except BaseException:  # a task reports its own failures
                log.exception("prebuilds worker task failed")
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            task = self._next()

    def _next(self) -> Callable[[], None] | None:
        """The next task for this idle thread, or None to end it."""
        while True:
            try:
                return self._tasks.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # no task was promised to a waiting thread
                        self._idle -= 1
                        return None
                # A task is on its way to one of the waiting threads: wait on.
