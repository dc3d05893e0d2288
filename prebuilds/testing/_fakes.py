"""Fakes for the host's side: a clock you move, a provisioner you script."""

from __future__ import annotations

import random
import threading

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import attrs

from prebuilds._model import Transition
from prebuilds._validate import check_aware
from prebuilds.exceptions import (
    InvalidInputError,
    ProvisionerError,
    ProvisionerValidationError,
)


if TYPE_CHECKING:
    from uuid import UUID

    from prebuilds._records import BuildRequest
    from prebuilds.interfaces import Clock, Store

#: Where a FakeClock starts unless told: a Monday.
DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """
    A clock that moves only when told. Thread-safe.

    Args:
        start: The first time it reads (timezone-aware).

    .. versionadded:: 0.1.0
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        check_aware("start", start)
        self._now = start.astimezone(timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current fake time."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """
        Move forward by *delta* and return the new time.

        Raises:
            InvalidInputError: *delta* is negative.
        """
        if delta < timedelta(0):
            raise InvalidInputError("delta", delta, "time only moves forward")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to *when* (timezone-aware; may go back, for tests of that)."""
        check_aware("when", when)
        with self._lock:
            self._now = when.astimezone(timezone.utc)


@attrs.define
class _Job:
    request: BuildRequest
    due: datetime
    succeed: bool
    started: bool = False


class FakeProvisioner:
    """
    A provisioner that "builds" on a :class:`FakeClock`'s time.

    :meth:`submit` queues a build; :meth:`process` completes every queued
    build whose build time has passed, reporting to the store as a real host
    would (``build_started``, ``build_finished``, ``set_ready``). Start builds
    fail with probability *failure_rate* (seeded, so runs repeat).

    Args:
        store: Where to report results.
        clock: The time builds are measured on.
        build_time: How long a start or delete takes.
        failure_rate: Chance a start build fails, 0 to 1.
        seed: Seed of the failure draw.
        ready_on_success: Report a successful start ready at once.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        build_time: timedelta = timedelta(seconds=30),
        failure_rate: float = 0.0,
        seed: int = 0,
        ready_on_success: bool = True,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise InvalidInputError("failure_rate", failure_rate, "must be in [0, 1]")
        self._store = store
        self._clock = clock
        self._build_time = build_time
        self._failure_rate = failure_rate
        self._random = random.Random(seed)  # noqa: S311 - a repeatable simulation
        self._ready = ready_on_success
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._stalled: set[UUID] = set()
        self._rejecting: set[UUID] = set()
        self._failing_next = 0
        self._raise_next: list[Exception] = []
        #: Every request submitted, in order.
        self.submitted: list[BuildRequest] = []

    # -- scripting --------------------------------------------------------------
    def stall(self, preset_id: UUID) -> None:
        """Never finish the preset's builds (to test stuck-build timeouts)."""
        with self._lock:
            self._stalled.add(preset_id)

    def unstall(self, preset_id: UUID) -> None:
        """Finish the preset's builds again."""
        with self._lock:
            self._stalled.discard(preset_id)

    def reject(self, preset_id: UUID) -> None:
        """Reject the preset's start builds at submit as invalid (a 400)."""
        with self._lock:
            self._rejecting.add(preset_id)

    def fail_next(self, count: int = 1) -> None:
        """Make the next *count* start builds fail."""
        with self._lock:
            self._failing_next += count

    def raise_next(self, error: Exception | None = None) -> None:
        """Make the next :meth:`submit` raise *error* (a ProvisionerError)."""
        with self._lock:
            self._raise_next.append(error or ProvisionerError("provisioner down"))

    # -- the Provisioner protocol -----------------------------------------------
    def submit(self, request: BuildRequest) -> None:
        """Queue *request*; raise if scripted to."""
        with self._lock:
            self.submitted.append(request)
            if self._raise_next:
                raise self._raise_next.pop(0)
            is_start = request.transition is Transition.START
            if is_start and request.preset_id in self._rejecting:
                msg = f"preset {request.preset_id} is missing a parameter"
                raise ProvisionerValidationError(msg)
            succeed = True
            if is_start:
                if self._failing_next:
                    self._failing_next -= 1
                    succeed = False
                elif self._failure_rate:
                    succeed = self._random.random() >= self._failure_rate
            delay = timedelta(0) if request.orphan else self._build_time
            self._jobs.append(_Job(request, self._clock.now() + delay, succeed))

    # -- running builds -----------------------------------------------------------
    @property
    def queued(self) -> int:
        """Builds submitted and not finished yet."""
        with self._lock:
            return len(self._jobs)

    def process(self) -> int:
        """
        Report every build whose time has come; return how many finished.

        Stalled presets' builds are reported started and never finished.
        """
        now = self._clock.now()
        with self._lock:
            due = [j for j in self._jobs if j.due <= now]
            stalled = self._stalled
        finished = 0
        for job in due:
            request = job.request
            if not job.started:
                self._store.build_started(request.build_id, now=now)
                job.started = True
            if request.preset_id in stalled and not request.orphan:
                continue
            self._store.build_finished(
                request.build_id,
                now=now,
                succeeded=job.succeed,
                error_kind=None if job.succeed else "build",
                error=None if job.succeed else "the fake build failed",
            )
            if job.succeed and self._ready and request.transition is Transition.START:
                self._store.set_ready(request.instance_id)
            with self._lock:
                self._jobs.remove(job)
            finished += 1
        return finished

    def drop(self, build_id: UUID) -> None:
        """Forget a queued build (as if the host lost it)."""
        with self._lock:
            self._jobs = [j for j in self._jobs if j.request.build_id != build_id]
