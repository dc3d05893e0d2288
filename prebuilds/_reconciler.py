"""StoreReconciler: the reference reconcile loop."""

from __future__ import annotations

import logging
import secrets
import threading
import time

from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import attrs

from prebuilds._arguments import check_create_prebuilds, check_reconciler
from prebuilds._calculate import (
    backoff_until,
    calculate_actions,
    can_skip_reconciliation,
)
from prebuilds._clock import SystemClock
from prebuilds._events import LoggingEventSink
from prebuilds._model import (
    ActionType,
    InvalidPreset,
    PresetSnapshot,
    PresetStatus,
    ReconcileStats,
    ReconciliationActions,
    Transition,
)
from prebuilds._pool import derive, derive_preset
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    BuildStatus,
    Event,
    EventKind,
    unchecked_evolve,
)
from prebuilds._status import PoolStatus, explain, explain_all
from prebuilds._validate import MAX_INSTANCES, check_delta, clean_text
from prebuilds._workers import Workers
from prebuilds.exceptions import (
    LeadershipLostError,
    PresetNotFoundError,
    ProvisionerValidationError,
    StoreError,
)
from prebuilds.interfaces import BatchCreates, GroupedCreates


if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from collections.abc import Set as AbstractSet
    from uuid import UUID

    from prebuilds._model import GlobalSnapshot
    from prebuilds._pool import PooledInstance, PoolFacts, PresetFacts
    from prebuilds._records import (
        BuildRequest,
        Lease,
        ResourceReplacement,
        Template,
    )
    from prebuilds.interfaces import Clock, EventSink, Provisioner, Store

log = logging.getLogger("prebuilds")


#: Each byte to a character of the lowercase base32 alphabet (256 is a
#: multiple of 32: every character equally likely).
_BASE32 = bytes(b"abcdefghijklmnopqrstuvwxyz234567"[b % 32] for b in range(256))


def generate_name() -> str:
    """A random pooled-instance name: ``prebuild-`` and 15 base32 characters."""
    # One random byte per character through a table: base64.b32encode is
    # pure Python, and was a fill's largest cost after SQLite and attrs.
    return "prebuild-" + secrets.token_bytes(15).translate(_BASE32).decode()


class _SubmitTimeoutError(TimeoutError):
    """``provisioner.submit`` did not return in time."""


def _call_with_timeout(
    workers: Workers,
    submit: Callable[[BuildRequest], None],
    request: BuildRequest,
    timeout: float,
    on_wait: Callable[[], None] = lambda: None,
) -> None:
    """
    Call ``submit(request)`` on a thread of *workers* and wait up to
    *timeout* s; *on_wait* is called if it is not done within
    ``_WAITED``.

    On a thread of its own (a daemon, kept for the next submit), so that a
    submit hung in the host's code neither holds up later submits nor keeps
    the interpreter from exiting.

    Raises:
        _SubmitTimeoutError: *submit* had not returned in time.
        Exception: whatever *submit* raised.
    """
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            submit(request)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.append(e)
        finally:
            done.set()

    workers.start(target)
    # A short wait first: a quick submit is done by then; a slow one has
    # the pass start a helper on the next presets, then wait on.
    patience = min(timeout, _WAITED)
    if not done.wait(patience):
        on_wait()
        late = not done.wait(timeout - patience)
    else:
        late = False
    if late:
        msg = f"provisioner.submit did not return within {timeout}s"
        raise _SubmitTimeoutError(msg)
    if failure:
        raise failure[0]


#: How often at most a pass wakes its submitters (waking a thread costs
#: more than a quick submit), and how long it waits for them before it
#: looks again.
_PATIENCE = 0.005

#: A preset that waited this long (wall time beyond its thread's CPU time:
#: on the store, on a submit) starts a helper on the next presets, as does
#: a submit of a deletion not done by then. Long enough that a thread
#: preempted on a busy machine does not count as waiting: on SQLite
#: helpers only contend for the GIL and the write lock.
_WAITED = 0.05

#: A pass's creations go to a GroupedCreates store once this many
#: instances wait (and at the end): one commit for a few presets.
_GROUP = 256


@attrs.define(eq=False)
class _Batch:
    """
    One preset's creations of a pass, their submits and what came of them.

    *submitted* count from the first in order; *failure* is what the next
    one raised (:class:`_SubmitTimeoutError` if it was late), the ones
    after it are not submitted.
    """

    requests: Sequence[BuildRequest]
    result: _PresetResult
    submitted: int = 0
    failure: BaseException | None = None
    #: When the submit in progress started (monotonic), or None.
    started: float | None = None
    finished: bool = False
    #: Given up on (a submit was late): its thread stops with it.
    abandoned: bool = False


class _Submits:
    """
    The submits of one pass's creations, pipelined: a preset hands its
    batch over and goes on with the store, and the pass waits for them all
    once, at its end (:meth:`finish`).

    With a *timeout*, the batches are submitted on threads of the workers:
    one while it keeps up, another (up to *threads*) whenever more batches
    wait than threads are idle (a slow provisioner is called in parallel).
    A submit late by *timeout* is given up on at the end of the pass (its
    thread left to the host's code; a daemon); a new thread takes the
    batches after it, so a hung submit holds up no later one. Without a
    timeout, a batch is submitted in the thread that created it.

    A batch handed over is submitted even if the pass loses its lease
    meanwhile (its creation was committed before).
    """

    def __init__(
        self,
        submit: Callable[[BuildRequest], None],
        timeout: float | None,
        workers: Callable[[], Workers],
        threads: int,
    ) -> None:
        self._submit = submit
        self._timeout = timeout
        self._workers = workers
        self._max = threads
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # submitters wait here
        self._done = threading.Condition(self._lock)  # finish() waits here
        self._queue: deque[_Batch] = deque()
        #: Every batch of the pass, in the order handed over.
        self.batches: list[_Batch] = []
        self._threads = 0  # submitters, not counting the ones given up on
        self._idle = 0
        self._closed = False
        self._waiting = False
        self._taken = False  # a batch taken since the last _wake
        self._unfinished = 0  # batches queued or being submitted
        self._next_wake = 0.0  # monotonic: no wake before

    def hand(self, batch: _Batch) -> None:
        """Submit *batch*'s requests in order, stopping at the first that fails."""
        if self._timeout is None:
            with self._lock:
                self.batches.append(batch)
                self._unfinished += 1
            self._run(batch)
            return
        with self._lock:
            self.batches.append(batch)
            self._queue.append(batch)
            self._unfinished += 1
            # Waking a thread costs more than a quick submit: at most once
            # per _PATIENCE, so that a quick provisioner's batches are taken
            # a few at a time.
            now = time.monotonic()
            start = now >= self._next_wake and self._wake()
            if start or now >= self._next_wake:
                self._next_wake = now + _PATIENCE
        if start:
            self._workers().start(self._loop)

    def _wake(self) -> bool:
        """
        Have the queue taken (the lock held): wake an idle submitter, or
        whether to start one (none yet, or the ones there took nothing
        since the last call: a slow provisioner, worth another thread).
        """
        stalled, self._taken = not self._taken, False
        if self._idle:
            self._work.notify()
            return False
        if self._threads and not stalled:
            return False  # they keep up
        if self._threads >= self._max:
            return False
        self._threads += 1
        return True

    def _loop(self) -> None:
        """A submitter: batches from the queue until the pass ends."""
        while True:
            with self._lock:
                while not self._queue:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    self._work.wait()
                    self._idle -= 1
                batch = self._queue.popleft()
                self._taken = True
            if not self._run(batch):
                return  # given up on: the pass has a new thread

    def _run(self, batch: _Batch) -> bool:
        """Submit *batch*; False if it was given up on meanwhile."""
        for request in batch.requests:
            # Submitted even once the lease is lost: the creation was
            # committed before, and a build never handed over would hold
            # its place in the pool until the build timeout.
            with self._lock:
                batch.started = time.monotonic()
            failure: BaseException | None = None
            try:
                self._submit(request)
            except BaseException as e:  # noqa: BLE001 - recorded with the batch
                failure = e
            with self._lock:
                if batch.abandoned:
                    return False
                batch.started = None
                if failure is not None:
                    batch.failure = failure
                    break
                batch.submitted += 1
        with self._lock:
            batch.finished = True
            self._unfinished -= 1
            if self._waiting and not self._unfinished:
                self._done.notify()
        return True

    def finish(self) -> list[_Batch]:
        """
        Wait until every batch is submitted, failed or late; the batches.

        Raises:
            Nothing: a submit's failure is in its batch.
        """
        timeout = self._timeout
        with self._lock:
            self._closed = True
            self._waiting = True
            self._work.notify_all()
            while self._unfinished:
                assert timeout is not None  # noqa: S101 - inline batches are finished
                now = time.monotonic()
                # A submit that starts from now on is late at now + timeout
                # at the earliest: look again then at the latest.
                wait = timeout
                for batch in self.batches:
                    if batch.finished or batch.started is None:
                        continue
                    late_at = batch.started + timeout
                    if now < late_at:
                        wait = min(wait, late_at - now)
                        continue
                    msg = f"provisioner.submit did not return within {timeout}s"
                    batch.failure = _SubmitTimeoutError(msg)
                    batch.abandoned = batch.finished = True
                    batch.started = None
                    self._unfinished -= 1
                    self._threads -= 1
                if not self._unfinished:
                    break
                # Batches waiting: every thread given up on, or the ones
                # there slow: one more, then look again after _PATIENCE.
                if self._queue:
                    if self._wake():
                        self._workers().start(self._loop)
                    wait = min(wait, _PATIENCE)
                self._done.wait(wait)
            self._waiting = False
            return self.batches


def _nothing() -> None:
    """Do nothing."""


@attrs.define(eq=False)
class _Pass:
    """
    One pass: its instant (the clock is read once per pass), the lease every
    write of the pass is fenced by, whether a write found it lost (then
    the pass stops everywhere), its creations' submits, and how a preset
    that waits asks for a helper on the next presets.
    """

    now: datetime
    lease: Lease
    lost: threading.Event = attrs.field(factory=threading.Event)
    submits: _Submits | None = None
    help: Callable[[], None] = _nothing
    #: Creations waiting for one create_prebuilds_grouped: (preset ID,
    #: names, its result), and how many instances in all.
    creates: list[tuple[UUID, tuple[str, ...], _PresetResult]] = attrs.field(
        factory=list
    )
    pending: int = 0
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def check(self) -> None:
        """
        Stop here if another worker of the pass already lost the lease.

        Raises:
            LeadershipLostError: it did.
        """
        if self.lost.is_set():
            msg = "leadership lost during the pass: no further writes"
            raise LeadershipLostError(msg)


#: Event kinds that repeat every pass while their cause lasts: the
#: reconciler emits one per preset and cooldown, and counts the rest.
QUIET_KINDS = frozenset(
    {
        EventKind.BACKOFF,
        EventKind.HARD_LIMITED,
        EventKind.INVALID_PRESET,
        EventKind.PASS_ERROR,
    }
)


@attrs.define
class _Quiet:
    """When an event of one (preset, kind) was last emitted; how many since held back."""

    since: datetime
    suppressed: int = 0


#: The desired count of a schedule is constant between UTC quarter hours
#: (every UTC offset has been a whole number of quarter hours since 1972):
#: a plan of a preset with schedules is reused within one quarter hour only,
#: and not at all before 1973.
_QUARTER = timedelta(minutes=15)
_SCHEDULES_FROM = datetime(1973, 1, 1, tzinfo=timezone.utc)


@attrs.frozen
class _Plan:
    """
    One preset's snapshot and actions, worked out at *at* from its facts and
    its pooled instances; the same for every instant from *at* until
    *until* (excluded; ``None``: no end) while those facts hold.
    """

    facts: PresetFacts
    instances: tuple[PooledInstance, ...]
    at: datetime
    until: datetime | None
    snapshot: PresetSnapshot
    actions: tuple[ReconciliationActions, ...]
    #: What calculating the actions raised (then it is not reused).
    error: Exception | None
    #: Whether the preset certainly needs nothing (can_skip_reconciliation).
    skip: bool

    def holds(
        self, facts: PresetFacts, instances: tuple[PooledInstance, ...], now: datetime
    ) -> bool:
        """Whether this plan is the one for *facts* and *instances* at *now*."""
        return (
            self.at <= now
            and (self.until is None or now < self.until)
            and (self.facts is facts or self.facts == facts)
            and self.instances == instances
        )


def _until(
    snapshot: PresetSnapshot,
    instances: tuple[PooledInstance, ...],
    *,
    at: datetime,
    backoff_lookback: timedelta,
    backoff_interval: timedelta,
) -> datetime | None:
    """
    The first instant after *at* at which the preset's snapshot or actions
    may differ with the same facts (a conservative bound), or ``None``.

    Time enters through the schedules (constant between quarter hours), the
    TTL (an instance expires), the backoff look-back (a failure stops
    counting) and the backoff's end.
    """
    preset = snapshot.preset
    ends: list[datetime] = []
    if preset.schedules and preset.scheduling_timezone:
        if at < _SCHEDULES_FROM:
            return at
        utc = at.astimezone(timezone.utc)
        mark = utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)
        ends.append(mark + _QUARTER)
    if preset.ttl:
        ends.extend(p.created_at + preset.ttl for p in snapshot.running)
    ends.extend(
        i.latest_created_at + backoff_lookback
        for i in instances
        if i.latest_status is BuildStatus.FAILED
    )
    until = backoff_until(snapshot, backoff_interval=backoff_interval)
    if until is not None:
        ends.append(until)
    # An end already passed changes nothing from *at* on (a failure out of
    # the look-back stays out): counting it would make the plan stale at
    # once, and worked out again on every pass.
    return min((end for end in ends if end >= at), default=None)


#: Failed pooled instances, their count per preset, their failed builds
#: ((instance ID, transition) -> preset ID).
_Failed = tuple[
    list["PooledInstance"], dict["UUID", int], dict[tuple["UUID", Transition], "UUID"]
]
#: Ready pooled instances, and the same by their IDs' ints.
_Ready = tuple[list["PooledInstance"], dict[int, "PooledInstance"]]


@attrs.frozen
class _View:
    """
    What a pass (or :meth:`StoreReconciler.status`) reads: every preset's
    plan, and the facts a snapshot does not carry.
    """

    #: Every readable preset's plan, by preset ID.
    plans: tuple[_Plan, ...]
    invalid_presets: tuple[InvalidPreset, ...]
    #: Template ID -> its name.
    template_names: dict[UUID, str]
    #: Preset ID -> pooled instances whose latest build failed.
    failed_kept: dict[UUID, int]
    #: (instance ID, transition) -> preset ID: the failed latest builds.
    failed: dict[tuple[UUID, Transition], UUID]
    #: Ready running instances, by their IDs' ints.
    ready: dict[int, PooledInstance]
    #: The plans not certainly skipped, and of those the ones with work.
    todo: tuple[_Plan, ...] = attrs.field(init=False)
    busy: tuple[_Plan, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        todo = tuple(plan for plan in self.plans if not plan.skip)
        object.__setattr__(self, "todo", todo)
        object.__setattr__(self, "busy", tuple(filter(_has_work, todo)))


def _has_work(plan: _Plan) -> bool:
    """Whether the preset has something to do: actions, an error, a status to record."""
    if plan.actions or plan.error is not None:
        return True
    snapshot = plan.snapshot
    status = snapshot.preset.status
    if snapshot.is_hard_limited:
        return status is PresetStatus.HEALTHY
    return status is PresetStatus.HARD_LIMITED


def _full(status: PoolStatus) -> bool:
    """Nothing to explain: an active, readable pool with all it wants ready."""
    return (
        status.desired_source not in {"inactive", "invalid"}
        and status.eligible >= status.desired
        and not status.hard_limited
        and status.validation_error is None
    )


@attrs.define
class _PresetResult:
    created: int = 0
    deleted: int = 0
    canceled: int = 0
    failed: bool = False


class _Presets:
    """
    One pass's presets with something to do, reconciled in the pass's
    thread, and on helpers of the workers (at most *max_workers* threads in
    all) once a preset waited: on the store or a provisioner (at least
    ``_WAITED`` of wall time beyond its CPU time), or on a submit handed to
    a thread (as long). A pass that only computes and writes to a
    local store (SQLite) runs in its own thread alone: more threads there
    would only contend for the GIL and the store's write lock.
    """

    def __init__(
        self, reconciler: StoreReconciler, plans: tuple[_Plan, ...], run: _Pass
    ) -> None:
        self._reconciler = reconciler
        self._plans = plans
        self._run = run
        self._results = [_PresetResult() for _ in plans]
        self._errors: dict[int, BaseException] = {}
        self._lock = threading.Lock()
        self._next = 0  # the next plan's index
        self._working = 1  # threads working, this one included
        self._helpers = 0  # helpers started
        self._finished = threading.Event()
        self._parallel = reconciler._max_workers > 1  # noqa: SLF001 - its helper

    def run(self) -> list[_PresetResult]:
        """Every plan reconciled; their results in order."""
        run = self._run
        if self._parallel:
            run.help = self._help
        try:
            self._work()
        finally:
            run.help = _nothing
            with self._lock:
                self._working -= 1
                last = not self._working
            if not last:
                self._finished.wait()
        if self._errors:
            raise self._errors[min(self._errors)]
        return self._results

    def _work(self) -> None:
        reconcile = self._reconciler._reconcile_preset  # noqa: SLF001 - its helper
        while True:
            with self._lock:
                index = self._next
                if index >= len(self._plans):
                    break
                self._next = index + 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                self._results[index] = reconcile(self._plans[index], self._run)
            except BaseException as e:  # noqa: BLE001 - raised by run()
                self._errors[index] = e
            waited = time.perf_counter() - wall - (time.thread_time() - cpu)
            if self._parallel and waited >= _WAITED:
                self._help()
        self._flush()

    def _flush(self) -> None:
        """The creations this thread queued last: to the store (the pass's end)."""
        try:
            self._reconciler._flush_creates(self._run)  # noqa: SLF001 - its helper
        except BaseException as e:  # noqa: BLE001 - raised by run(), after the presets'
            if isinstance(e, LeadershipLostError):
                self._run.lost.set()  # the other threads stop before their next write
            self._errors[len(self._plans)] = e

    def _helper(self) -> None:
        try:
            self._work()
        finally:
            with self._lock:
                self._working -= 1
                if not self._working:
                    self._finished.set()

    def _help(self) -> None:
        """Start a helper, if presets are left and the workers allow one."""
        limit = self._reconciler._max_workers - 1  # noqa: SLF001 - its helper
        with self._lock:
            start = self._next < len(self._plans) and self._helpers < limit
            if start:
                self._working += 1
                self._helpers += 1
        if start:
            self._reconciler._workers().start(self._helper)  # noqa: SLF001 - its helper


class StoreReconciler:
    """
    Keep every pool of a :class:`~prebuilds.interfaces.Store` at its desired
    size by running the pure calculator and executing its actions.

    One pass (:meth:`reconcile_all`): read the clock once (the pass's
    *now*: every rule of the pass is judged at that instant); take the
    store's leader lock (skip the pass if another replica holds it); stop if
    paused; read the store's facts once (``read_pool``) and derive every
    pool's state from them (:func:`~prebuilds.derive`); fail stuck builds
    (they are replaced from the next pass on); for each preset with
    something to do, execute its actions, in the pass's own thread, with
    helpers (at most *max_workers* threads in all) once a preset waited on
    the store or the provisioner (``_Presets``). Creations are queued
    and written a few presets at a time when the store offers
    :class:`~prebuilds.interfaces.GroupedCreates`; their submits are
    pipelined on submitter threads and recorded once, at the end of the
    pass (``_Submits``). A preset that raises is logged, counted and
    skipped; the pass goes on. A store failure (:class:`StoreError`) ends
    the pass (logged, counted); the next pass starts clean.

    Every write of a pass is fenced by the pass's
    :class:`~prebuilds.Lease`: once another replica took the leadership
    over (the lease expired while this one was stalled, its connection was
    lost), the store refuses the next write with
    :class:`~prebuilds.exceptions.LeadershipLostError`, and the pass stops
    at once, with no further write or submit: it is counted in
    :attr:`pass_errors`, emitted as ``LEADERSHIP_LOST`` and reported in
    ``stats.error``.

    :meth:`run` passes once at start, then every *interval*, until
    :meth:`stop`.

    Args:
        store: The pools.
        provisioner: Builds and destroys real instances; called after the
            store committed each build.
        clock: The time (injected; tests use a fake).
        events: Where to report what happened (default: logging).
        interval: Time between passes of :meth:`run`.
        backoff_interval: Wait this long per recent failure before creating
            again (linear backoff).
        backoff_lookback: Failures older than this do not count.
        hard_limit: Stop creating for a preset whose last *hard_limit*
            creations all failed (0 disables).
        build_timeout: Fail builds pending or running longer than this, so
            they are replaced (``None`` disables).
        submit_timeout: Give up waiting for ``provisioner.submit`` after this
            many seconds and record the build as failed (``None``: wait).
        max_workers: Threads that reconcile presets (1: in order, in the
            calling thread): a pass starts helpers only while its presets
            wait on the store or the provisioner; also the most submitter
            threads of a pass's creations.
        name_factory: Names for new pooled instances.
        event_cooldown: Emit at most one event per preset and kind in this
            time for the kinds that repeat every pass while their cause
            lasts (``BACKOFF``, ``HARD_LIMITED``, ``INVALID_PRESET``,
            ``PASS_ERROR``); the next one emitted carries how many were
            held back in ``Event.suppressed`` (``timedelta(0)``: emit all).

    Attributes:
        pass_errors: Passes that ended with an error (a store failure),
            since start.
        replacements: Resource replacements reported through
            :meth:`track_resource_replacement`, counted per preset ID (a
            ``collections.Counter``).

    Raises:
        InvalidInputError: naming the setting: a store or provisioner
            without the methods the reconciler calls, a duration that is
            not a timedelta (*interval* and *build_timeout* > 0, all at most
            36,500 days), a *hard_limit* or *max_workers* that is not an
            int in range, a *submit_timeout* that is not a positive number
            of seconds (see :doc:`/limits`).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        store: Store,
        provisioner: Provisioner,
        *,
        clock: Clock | None = None,
        events: EventSink | None = None,
        interval: timedelta = timedelta(minutes=1),
        backoff_interval: timedelta = timedelta(minutes=1),
        backoff_lookback: timedelta = timedelta(hours=1),
        hard_limit: int = 3,
        build_timeout: timedelta | None = timedelta(minutes=30),
        submit_timeout: float | None = 60.0,
        max_workers: int = 5,
        name_factory: Callable[[], str] = generate_name,
        event_cooldown: timedelta = timedelta(minutes=10),
    ) -> None:
        check_reconciler(
            store,
            provisioner,
            clock,
            events,
            interval,
            backoff_interval,
            backoff_lookback,
            hard_limit,
            build_timeout,
            submit_timeout,
            max_workers,
            name_factory,
        )
        self._store = store
        # Whether creations go in batches: asked once (a runtime protocol check is slow).
        self._batches = store if isinstance(store, BatchCreates) else None
        self._grouped = store if isinstance(store, GroupedCreates) else None
        self._provisioner = provisioner
        self._clock: Clock = clock or SystemClock()
        self._events: EventSink = events or LoggingEventSink()
        self._interval = interval
        self._backoff_interval = backoff_interval
        self._backoff_lookback = backoff_lookback
        self._hard_limit = hard_limit
        self._build_timeout = build_timeout
        self._submit_timeout = submit_timeout
        self._max_workers = max_workers
        self._name_factory = name_factory
        self._event_cooldown = check_delta("event_cooldown", event_cooldown)
        self._state_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._done = threading.Event()
        self._running = False
        self._loop_thread: int | None = None
        self._stopped = False
        self._cause: BaseException | None = None
        #: Passes that ended with an error (a store failure), since start.
        self.pass_errors: int = 0
        #: Resource replacements seen at claim, per preset.
        self.replacements: Counter[UUID] = Counter()
        self._ready_seen: Mapping[int, PooledInstance] = {}
        self._invalid_seen: frozenset[InvalidPreset] = frozenset()
        # What a scrape, a dashboard or status() reads without the store:
        # the last leading pass's statuses, each preset's last error, names.
        self._statuses: tuple[PoolStatus, ...] | None = ()
        # What the last leading pass's statuses are worked out from, when
        # first read (a pass nobody reads the statuses of does not pay).
        self._status_source: tuple[_View, datetime, bool, dict[UUID, str]] | None = None
        # Each preset's plan of the last read, reused while its facts hold.
        self._plans: dict[UUID, _Plan] = {}
        #: The last read's facts, instant, first plan end and view.
        self._last_read: tuple[PoolFacts, datetime, datetime | None, _View] | None = (
            None
        )
        self._pool: Workers | None = None
        #: The last read's failed instances (with their count per preset and
        #: their failed builds) and ready ones (by their IDs' ints).
        self._tallies: tuple[_Failed, _Ready] = (([], {}, {}), ([], {}))
        self._last_errors: dict[UUID, str] = {}
        self._fresh_errors: set[UUID] = set()  # met since the last pass ended
        self._names: dict[UUID, tuple[str, str, UUID | None]] = {}
        self._quiet: dict[tuple[UUID | None, EventKind], _Quiet] = {}
        self._memory_lock = threading.Lock()
        # Failed builds already reported (None: learn them silently on the
        # next leading pass, so a new leader does not report them again).
        self._failed_seen: AbstractSet[tuple[UUID, Transition]] | None = None
        # The last view's failed builds, and their keys as a set.
        self._failed_keys: (
            tuple[
                dict[tuple[UUID, Transition], UUID], frozenset[tuple[UUID, Transition]]
            ]
            | None
        ) = None
        self._failed_reported: set[tuple[UUID, Transition]] = set()

    # -- loop ------------------------------------------------------------------
    def run(self) -> None:
        """
        Reconcile at once, then every *interval*, until :meth:`stop`.

        Returns at once if the reconciler is already running or was stopped.
        A pass never raises out of the loop.
        """
        with self._state_lock:
            if self._running or self._stopped:
                return
            self._running = True
            self._loop_thread = threading.get_ident()
            self._done.clear()
        try:
            while not self._stop_event.is_set():
                self.reconcile_all()
                self._stop_event.wait(self._interval.total_seconds())
        finally:
            with self._state_lock:
                self._running = False
            self._done.set()

    def stop(
        self, cause: BaseException | None = None, *, timeout: float | None = None
    ) -> None:
        """
        Stop the loop; idempotent and thread-safe.

        Waits up to *timeout* seconds (``None``: until it ends) for a running
        pass to finish. *cause* is kept in :attr:`stop_cause` and logged.
        """
        with self._state_lock:
            first = not self._stopped
            self._stopped = True
            # Called from the loop itself (an event sink, a provisioner):
            # the pass cannot be waited for; the loop ends after it.
            running = self._running and self._loop_thread != threading.get_ident()
            if first:
                self._cause = cause
        self._stop_event.set()
        if first:
            log.info("prebuilds reconciler stopping: %r", cause)
        if running and not self._done.wait(timeout):
            log.warning("prebuilds reconciler did not stop within %ss", timeout)
        with self._state_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # its idle threads end; busy ones after their task

    def _workers(self) -> Workers:
        """The threads that run presets and submits, started when first needed."""
        with self._state_lock:
            if self._pool is None:
                self._pool = Workers("prebuilds")
            return self._pool

    @property
    def stop_cause(self) -> BaseException | None:
        """What :meth:`stop` was called with."""
        return self._cause

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    # -- pausing ---------------------------------------------------------------
    def pause(self) -> None:
        """Pause reconciliation for every replica (persisted in the store)."""
        self._store.set_paused(True)
        self._emit(EventKind.PAUSED)

    def resume(self) -> None:
        """Resume reconciliation."""
        self._store.set_paused(False)
        self._emit(EventKind.RESUMED)

    # -- one pass --------------------------------------------------------------
    def snapshot_state(self, store: Store) -> GlobalSnapshot:
        """Every pool's state, derived from one read of *store* at the clock's now."""
        return self._derive(store, self._clock.now())

    def _derive(self, store: Store, now: datetime) -> GlobalSnapshot:
        return derive(
            store.read_pool(),
            now=now,
            backoff_lookback=self._backoff_lookback,
            hard_limit=self._hard_limit,
        )

    def reconcile_all(self) -> ReconcileStats:
        """
        One reconciliation pass over every preset.

        Never raises: a failure of the store ends the pass with
        ``stats.error`` set; a failure of one preset is counted in
        ``stats.presets_failed``.
        """
        started = time.perf_counter()
        # The stats' fields, made into ReconcileStats once at the end.
        fields: dict[str, Any] = {}
        now = self._clock.now()
        try:
            with self._store.leader() as lease:
                fields["leader"] = bool(lease)
                if lease:
                    self._pass(fields, _Pass(now, lease))
        except LeadershipLostError as e:  # another replica leads now
            self.pass_errors += 1
            log.warning("prebuilds reconciliation pass stopped: %s", e)
            self._emit(EventKind.LEADERSHIP_LOST, at=now, detail=repr(e))
            fields["error"] = repr(e)
        except Exception as e:  # the loop must survive anything
            self.pass_errors += 1
            log.exception("prebuilds reconciliation pass failed")
            self._emit(EventKind.PASS_ERROR, at=now, detail=repr(e))
            fields["error"] = repr(e)
        stats = ReconcileStats(
            elapsed=timedelta(seconds=time.perf_counter() - started), **fields
        )
        self._pass_finished(stats)
        return stats

    def _pass(self, fields: dict[str, Any], run: _Pass) -> None:
        """One leading pass; what it did goes into *fields* (ReconcileStats')."""
        now = run.now
        if self._store.is_paused():
            self._observe(self._read(now), now, paused=True)
            fields["paused"] = True
            return
        # The facts come first: a store may read them through a transaction
        # opened with the leader scope (PostgreSQL), which would not see the
        # stuck builds failed below. They are replaced from the next pass on,
        # the same on every store.
        view = self._read(now)
        withdrawn = 0
        if self._build_timeout is not None:
            withdrawn = self._fail_stuck(run, now - self._build_timeout)
        invalid_now = frozenset(view.invalid_presets)
        for invalid in view.invalid_presets:
            if invalid not in self._invalid_seen:  # report each problem once
                self._emit(
                    EventKind.INVALID_PRESET,
                    at=now,
                    preset_id=invalid.preset_id,
                    detail=f"{invalid.field}={invalid.value}: {invalid.reason}",
                )
        self._invalid_seen = invalid_now
        self._report_ready(view, now)
        # The actions are worked out here (most presets have none); only the
        # presets with something to do are reconciled, in this thread, with
        # helpers only while there is something to wait on (_run_presets).
        # The creations' submits are pipelined and recorded once at the end.
        todo, busy = view.todo, view.busy
        results: list[_PresetResult] = []
        if busy:  # most passes have nothing to do
            run.submits = _Submits(
                self._provisioner.submit,
                self._submit_timeout,
                self._workers,
                self._max_workers,
            )
            try:
                results = self._run_presets(busy, run)
            finally:
                self._record_batches(run)
        self._observe(view, now, paused=False)
        fields["presets_total"] = len(view.plans) + len(view.invalid_presets)
        fields["presets_reconciled"] = len(todo)
        fields["presets_invalid"] = len(view.invalid_presets)
        if results:
            fields["presets_failed"] = sum(r.failed for r in results)
            fields["created"] = sum(r.created for r in results)
            fields["deleted"] = sum(r.deleted for r in results)
            fields["canceled"] = sum(r.canceled for r in results)
        if withdrawn:
            fields["deleted"] = fields.get("deleted", 0) + withdrawn

    def _fail_stuck(self, run: _Pass, older_than: datetime) -> int:
        """
        Fail the builds in progress since before *older_than* (a ``STUCK`` event
        each), and withdraw the instances whose first build the store
        cancels as never submitted (a leader died mid-batch): an orphan
        delete each, since the provisioner may or may not have been handed
        the build before the crash. Returns how many deletes were submitted.
        """
        now, lease = run.now, run.lease
        withdrawn = 0
        for build in self._store.fail_stuck_builds(
            older_than=older_than, now=now, lease=lease
        ):
            never = build.status is BuildStatus.CANCELED
            self._emit(
                EventKind.STUCK,
                at=now,
                preset_id=build.preset_id,
                instance_id=build.instance_id,
                build_id=build.id,
                detail=(
                    f"{build.transition.value} build never submitted: canceled"
                    if never
                    else f"{build.transition.value} build timed out"
                ),
            )
            if not never or build.transition is not Transition.START:
                continue
            run.check()
            withdrawn += self._delete(
                build.preset_id,
                build.instance_id,
                now,
                lease,
                detail="never-submitted instance withdrawn (orphan delete)",
                orphan=True,
            )
        return withdrawn

    def _delete(
        self,
        preset_id: UUID,
        instance_id: UUID,
        now: datetime,
        lease: Lease | None,
        *,
        kind: EventKind = EventKind.DELETED,
        detail: str = "",
        orphan: bool = False,
        run: _Pass | None = None,
    ) -> bool:
        """
        Delete a pooled instance (an *orphan* delete: one the provisioner
        may never have built), report it as *kind* and submit it (see
        :meth:`_submit` for *lease* and *run*); False if it was claimed or
        going meanwhile.
        """
        deletion = self._store.delete_prebuild(instance_id, now=now, lease=lease)
        if deletion is None:
            return False
        if orphan:
            deletion = unchecked_evolve(deletion, orphan=True)
        self._emit(
            kind,
            at=now,
            preset_id=preset_id,
            instance_id=instance_id,
            build_id=deletion.build_id,
            detail=detail,
        )
        self._submit(deletion, now, lease, run)
        return True

    def _run_presets(self, plans: tuple[_Plan, ...], run: _Pass) -> list[_PresetResult]:
        """
        Reconcile *plans* in this thread, with helpers once a preset waited
        (:class:`_Presets`).

        Raises:
            Exception: the first (in *plans*' order) a preset raised, once
                every preset is done.
        """
        return _Presets(self, plans, run).run()

    def _record_batches(self, run: _Pass) -> None:
        """
        The end of a pass's creations: wait for their submits, then per
        batch (in the order handed over) the ``CREATED`` events of the ones
        handed over and the failed submit recorded, then one
        ``record_submits`` for the whole pass: the submitted builds marked,
        the ones after a failed submit canceled (never handed over: not
        reported, not counted). Once the lease is lost, nothing is written.
        """
        submits = run.submits
        if submits is None:
            return
        batches = submits.finish()
        if not batches:
            return
        for batch in batches:
            failure = batch.failure
            if failure is not None and not isinstance(failure, Exception):
                raise failure  # KeyboardInterrupt and the like
        now, lost = run.now, run.lost.is_set()
        handed: list[UUID] = []
        dropped: list[UUID] = []
        for batch in batches:
            requests, submitted, failure = (
                batch.requests,
                batch.submitted,
                batch.failure,
            )
            kept = submitted + (failure is not None)
            if kept:
                batch.result.created += kept
                self._created_all(requests[:kept], now)
            handed.extend(r.build_id for r in requests[:submitted])
            dropped.extend(r.build_id for r in requests[kept:])
            if failure is not None and not lost:
                assert isinstance(failure, Exception)  # noqa: S101 - raised above
                self._submit_failed(requests[submitted], failure, now, run.lease)
        if lost:
            return  # no further write: the builds are the next leader's
        assert self._batches is not None  # noqa: S101 - batches come from it
        # At most MAX_INSTANCES IDs of each kind a call: one call for most passes.
        for start in range(0, max(len(handed), len(dropped)), MAX_INSTANCES):
            end = start + MAX_INSTANCES
            self._batches.record_submits(
                handed[start:end],
                not_submitted=dropped[start:end],
                now=now,
                lease=run.lease,
            )

    # -- status ------------------------------------------------------------------
    def status(self) -> list[PoolStatus]:
        """
        Every preset's :class:`~prebuilds.PoolStatus` now, read from the
        store (one read; nothing is written), with the last error this
        reconciler met for each preset. Sorted by template name, preset
        name and preset ID; unreadable presets included.

        Raises:
            StoreError: the store could not be read.
        """
        now = self._clock.now()
        view = self._read(now)
        with self._memory_lock:
            errors = dict(self._last_errors)
        return self._statuses_of(view, now, self._store.is_paused(), errors)

    @property
    def last_statuses(self) -> tuple[PoolStatus, ...]:
        """
        The statuses of the last pass that led (empty before one, or after
        a pass that did not lead): what metrics and dashboards read without
        touching the store.
        """
        with self._memory_lock:
            statuses, source = self._statuses, self._status_source
        if statuses is not None:
            return statuses
        assert source is not None  # noqa: S101 - set together
        view, now, paused, errors = source
        statuses = tuple(self._statuses_of(view, now, paused, errors))
        with self._memory_lock:
            if self._status_source is source:
                self._statuses = statuses
        return statuses

    def _read(self, now: datetime) -> _View:
        """
        One read of the store: every preset's plan at *now* and the facts
        beside it. A preset's plan of the last read is reused while its
        facts, its instances and the time allow (:class:`_Plan`).
        """
        facts = self._store.read_pool()
        last = self._last_read
        if last is not None and last[0] is facts and last[1] <= now:
            # The same facts (a store may hand the last read's back when
            # nothing changed): the view holds until its first plan ends.
            until = last[2]
            if until is None or now < until:
                return last[3]
        templates = {f.template.id: f.template for f in facts.presets}
        by_preset, (_, failed_kept, failed), (_, ready) = self._tally(facts)
        known, plans = self._plans, {}
        for preset_facts in sorted(facts.presets, key=lambda f: f.config.id.int):
            preset_id = preset_facts.config.id
            instances = tuple(by_preset.get(preset_id.int, ()))
            plan = known.get(preset_id)
            if plan is None or not plan.holds(preset_facts, instances, now):
                plan = self._plan(preset_facts, instances, templates, now)
            plans[preset_id] = plan
        self._plans = plans
        # The events of the pass name their presets from here on.
        names = {
            f.config.id: (f.config.name, f.template.name, f.template.organization_id)
            for f in facts.presets
        }
        with self._memory_lock:
            self._names = names
        view = _View(
            plans=tuple(plans.values()),
            invalid_presets=facts.invalid_presets,
            template_names={t.id: t.name for t in templates.values()},
            failed_kept=failed_kept,
            failed=failed,
            ready=ready,
        )
        ends = [plan.until for plan in view.plans if plan.until is not None]
        self._last_read = (facts, now, min(ends, default=None), view)
        return view

    def _tally(
        self, facts: PoolFacts
    ) -> tuple[dict[int, list[PooledInstance]], _Failed, _Ready]:
        """
        The pooled instances of *facts* by their preset's ID's int, the
        failed ones and the ready ones; the last read's tallies again if the
        same instances fail or are ready (a store reuses the records of
        unchanged rows), which later steps recognise by identity.
        """
        # Keyed by the IDs' ints: a UUID hashes in Python, an int in C, and
        # this runs for every pooled instance whenever anything changed.
        by_preset: dict[int, list[PooledInstance]] = {}
        failed_list: list[PooledInstance] = []
        ready_list: list[PooledInstance] = []
        for instance in facts.instances:
            preset_key = instance.preset_id.int
            mine = by_preset.get(preset_key)
            if mine is None:
                by_preset[preset_key] = [instance]
            else:
                mine.append(instance)
            status = instance.latest_status
            if status is BuildStatus.FAILED:
                failed_list.append(instance)
            elif (
                instance.ready
                and status is BuildStatus.SUCCEEDED
                and instance.latest_transition is Transition.START
            ):
                ready_list.append(instance)
        # The same instances (a store reuses the records of unchanged rows)
        # as the last read's: the same tallies, which later steps recognise.
        last_failed, last_ready = self._tallies
        if failed_list != last_failed[0]:
            failed_kept = Counter(i.preset_id for i in failed_list)
            failed = {(i.id, i.latest_transition): i.preset_id for i in failed_list}
            last_failed = (failed_list, dict(failed_kept), failed)
        if ready_list != last_ready[0]:
            last_ready = (ready_list, {i.id.int: i for i in ready_list})
        self._tallies = (last_failed, last_ready)
        return by_preset, last_failed, last_ready

    def _plan(
        self,
        facts: PresetFacts,
        instances: tuple[PooledInstance, ...],
        templates: dict[UUID, Template],
        now: datetime,
    ) -> _Plan:
        """Work out one preset's snapshot and actions at *now*."""
        snapshot = derive_preset(
            facts,
            instances,
            templates=templates,
            now=now,
            backoff_lookback=self._backoff_lookback,
            hard_limit=self._hard_limit,
        )
        actions: tuple[ReconciliationActions, ...] = ()
        error: Exception | None = None
        try:
            actions = tuple(
                calculate_actions(
                    snapshot, now=now, backoff_interval=self._backoff_interval
                )
            )
        except Exception as e:  # noqa: BLE001 - reported by the preset's worker
            error = e
        # An instance of another template would need that template's facts
        # in the key: worked out again on every pass instead.
        own = all(i.template_id == facts.config.template_id for i in instances)
        until = (
            _until(
                snapshot,
                instances,
                at=now,
                backoff_lookback=self._backoff_lookback,
                backoff_interval=self._backoff_interval,
            )
            if own and error is None
            else now
        )
        return _Plan(
            facts=facts,
            instances=instances,
            at=now,
            until=until,
            snapshot=snapshot,
            actions=actions,
            error=error,
            skip=can_skip_reconciliation(snapshot),
        )

    def _statuses_of(
        self, view: _View, now: datetime, paused: bool, errors: dict[UUID, str]
    ) -> list[PoolStatus]:
        return explain_all(
            (plan.snapshot for plan in view.plans),
            view.invalid_presets,
            now=now,
            backoff_interval=self._backoff_interval,
            hard_limit=self._hard_limit,
            paused=paused,
            template_names=view.template_names,
            failed_kept=view.failed_kept,
            last_errors=errors,
        )

    def _observe(self, view: _View, now: datetime, *, paused: bool) -> None:
        """
        End of a leading pass: keep its statuses, and report the builds
        that failed since the last pass.
        """
        failed = view.failed
        known = self._failed_keys
        if known is None or known[0] is not failed:  # not the last pass's view
            known = self._failed_keys = (failed, frozenset(failed))
        with self._memory_lock:
            reported, self._failed_reported = self._failed_reported, set()
            seen = self._failed_seen
            self._failed_seen = known[1] | reported if reported else known[1]
        # The first leading pass learns them silently; the same view as the
        # last pass's, with nothing reported since, has nothing new.
        if seen is not None and seen is not known[1]:
            for key in sorted(failed.keys() - seen - reported):
                instance_id, transition = key
                self._emit(
                    EventKind.FAILED,
                    at=now,
                    preset_id=view.failed[key],
                    instance_id=instance_id,
                    detail=f"{transition.value} build failed",
                )
        with self._memory_lock:
            # A preset's last error is kept until a pass that met none for
            # it finds its pool full.
            fresh, self._fresh_errors = self._fresh_errors, set()
            if self._last_errors:
                items = self._items(view)
                self._last_errors = {
                    preset_id: error
                    for preset_id, error in self._last_errors.items()
                    if preset_id in fresh
                    or self._still_failing(view, items.get(preset_id), now)
                }
            # The statuses are worked out when first read (last_statuses).
            self._statuses = None
            self._status_source = (view, now, paused, dict(self._last_errors))

    @staticmethod
    def _items(view: _View) -> dict[UUID, PresetSnapshot | InvalidPreset]:
        """Every preset of *view* by ID: its snapshot, or the store's account."""
        items: dict[UUID, PresetSnapshot | InvalidPreset] = {
            i.preset_id: i for i in view.invalid_presets
        }
        items.update((p.snapshot.preset.id, p.snapshot) for p in view.plans)
        return items

    def _still_failing(
        self, view: _View, item: PresetSnapshot | InvalidPreset | None, now: datetime
    ) -> bool:
        """Whether *item* is a preset of *view* whose pool is not full at *now*."""
        if item is None:
            return False
        preset_id = (
            item.preset_id if isinstance(item, InvalidPreset) else item.preset.id
        )
        status = explain(
            item,
            now=now,
            backoff_interval=self._backoff_interval,
            hard_limit=self._hard_limit,
            failed_kept=view.failed_kept.get(preset_id, 0),
        )
        return not _full(status)

    def _pass_finished(self, stats: ReconcileStats) -> None:
        """Forget what a pass that did not lead cannot know; tell the observer."""
        if not stats.leader:
            with self._memory_lock:
                self._statuses, self._status_source = (), None
                self._failed_seen = None  # another replica reports meanwhile
        observe = getattr(self._events, "pass_finished", None)
        if observe is None:
            return
        statuses = self.last_statuses if stats.leader and stats.error is None else ()
        try:
            observe(stats, statuses)
        except Exception:  # a broken observer must not break the loop
            log.warning("prebuilds pass observer failed", exc_info=True)

    def _report_ready(self, view: _View, now: datetime) -> None:
        """Emit READY for pooled instances that became ready since last pass."""
        ready = view.ready
        if ready is self._ready_seen:  # the same read as the last pass
            return
        for key in sorted(key for key in ready if key not in self._ready_seen):
            instance = ready[key]
            self._emit(
                EventKind.READY,
                at=now,
                preset_id=instance.preset_id,
                instance_id=instance.id,
            )
        self._ready_seen = ready

    def _reconcile_preset(self, plan: _Plan, run: _Pass) -> _PresetResult:
        try:
            return self._reconcile_one(plan, run)
        except LeadershipLostError:
            run.lost.set()  # the other workers stop before their next write
            raise

    def _reconcile_one(self, plan: _Plan, run: _Pass) -> _PresetResult:
        result = _PresetResult()
        ps = plan.snapshot
        preset = ps.preset
        try:
            run.check()
            self._update_hard_limit(ps, run)
        except StoreError:
            raise  # a store failure ends the pass
        except Exception as e:  # noqa: BLE001 - one preset never stops the rest
            self._preset_error(preset.id, e, result, run.now)
            return result
        if plan.error is not None:  # calculating its actions raised
            self._preset_error(preset.id, plan.error, result, run.now)
            return result
        expired = {p.id for p in ps.expired}
        for action in plan.actions:
            try:
                self._execute(ps, action, expired=expired, result=result, run=run)
            except StoreError:
                raise  # a store failure ends the pass
            except Exception as e:  # noqa: BLE001 - go on with the next action
                self._preset_error(preset.id, e, result, run.now)
        return result

    def _preset_error(
        self, preset_id: UUID, error: Exception, result: _PresetResult, now: datetime
    ) -> None:
        result.failed = True
        log.warning("prebuilds preset %s failed: %r", preset_id, error, exc_info=error)
        self._remember_error(preset_id, repr(error))
        self._emit(
            EventKind.PRESET_ERROR, at=now, preset_id=preset_id, detail=repr(error)
        )

    def _remember_error(self, preset_id: UUID, error: str) -> None:
        with self._memory_lock:
            self._last_errors[preset_id] = clean_text(error)
            self._fresh_errors.add(preset_id)

    def _reported_failed(self, request: BuildRequest) -> None:
        """This build's failure is reported now: the next pass does not again."""
        with self._memory_lock:
            self._failed_reported.add((request.instance_id, request.transition))

    def _update_hard_limit(self, ps: PresetSnapshot, run: _Pass) -> None:
        status = ps.preset.status
        if ps.is_hard_limited and status is PresetStatus.HEALTHY:
            self._store.set_preset_status(
                ps.preset.id, PresetStatus.HARD_LIMITED, lease=run.lease
            )
            self._emit(
                EventKind.HARD_LIMITED,
                at=run.now,
                preset_id=ps.preset.id,
                detail=f"the last {self._hard_limit} creations failed",
            )
        elif not ps.is_hard_limited and status is PresetStatus.HARD_LIMITED:
            self._store.set_preset_status(
                ps.preset.id, PresetStatus.HEALTHY, lease=run.lease
            )

    def _execute(
        self,
        ps: PresetSnapshot,
        action: ReconciliationActions,
        *,
        expired: set[UUID],
        result: _PresetResult,
        run: _Pass,
    ) -> None:
        preset_id = ps.preset.id
        now, lease = run.now, run.lease
        if action.action_type is ActionType.BACKOFF:
            self._emit(
                EventKind.BACKOFF,
                at=now,
                preset_id=preset_id,
                detail=f"until {action.backoff_until}",
            )
        elif action.action_type is ActionType.CANCEL_PENDING:
            run.check()
            for request in self._store.cancel_pending(preset_id, now=now, lease=lease):
                result.canceled += 1
                self._emit(
                    EventKind.CANCELED,
                    at=now,
                    preset_id=preset_id,
                    instance_id=request.instance_id,
                    build_id=request.build_id,
                )
                self._submit(request, now, lease, run)
        elif action.action_type is ActionType.DELETE:
            for instance_id in action.delete_ids:
                run.check()
                result.deleted += self._delete(
                    preset_id,
                    instance_id,
                    now,
                    lease,
                    kind=(
                        EventKind.EXPIRED
                        if instance_id in expired
                        else EventKind.DELETED
                    ),
                    run=run,
                )
        else:
            self._create(ps, action.create, result, run)

    def _create(
        self, ps: PresetSnapshot, count: int, result: _PresetResult, run: _Pass
    ) -> None:
        """
        Create *count* instances of the preset, each submitted once created.

        When the store offers ``create_prebuilds_grouped``, queued for one
        transaction with other presets' (:meth:`_create_grouped`); else with
        ``create_prebuilds``, all of them in one transaction
        (:meth:`_create_batch`), their submits handed to the pass; else one
        at a time, each submitted before the next. Either way a failing
        provisioner stops the preset's submits there, and the backoff decides.
        """
        preset_id, now = ps.preset.id, run.now
        if self._grouped is not None:
            self._create_grouped(preset_id, count, result, run)
            return
        if self._batches is not None:
            self._create_batch(self._batches, preset_id, count, result, run)
            return
        for _ in range(count):
            run.check()
            request = self._store.create_prebuild(
                preset_id, now=now, name=self._name_factory(), lease=run.lease
            )
            if request is None:  # the preset became inactive meanwhile
                return
            result.created += 1
            self._created_all((request,), now)
            if not self._submit(request, now, run.lease, run):
                return  # the provisioner is failing: let the backoff decide

    def _create_batch(
        self,
        batch: BatchCreates,
        preset_id: UUID,
        count: int,
        result: _PresetResult,
        run: _Pass,
    ) -> None:
        """
        *count* instances in one ``create_prebuilds`` (their builds not
        submitted), handed to the pass's submits (:class:`_Submits`): in
        order, stopping at the first that fails (a failing provisioner stops
        the creation there, as one at a time). The pass goes on meanwhile and
        records them all at its end (:meth:`_record_batches`: one
        ``record_submits``). A crash before that mark leaves builds that
        ``fail_stuck_builds`` cancels (not a provisioning failure) unless
        the provisioner reported them.
        """
        now = run.now
        run.check()
        names = [self._name_factory() for _ in range(count)]
        requests = batch.create_prebuilds(
            preset_id, now=now, names=names, lease=run.lease
        )
        if not requests:  # the preset became inactive meanwhile
            return
        assert run.submits is not None  # noqa: S101 - set by the pass
        run.submits.hand(_Batch(requests=requests, result=result))

    def _create_grouped(
        self, preset_id: UUID, count: int, result: _PresetResult, run: _Pass
    ) -> None:
        """
        *count* instances of the preset, queued for the pass's next
        ``create_prebuilds_grouped`` (:meth:`_flush_creates`), which runs once
        ``_GROUP`` instances wait: a commit costs more than a few presets'
        inserts. The names are drawn and checked here, so that a bad one is
        this preset's error.
        """
        run.check()
        names = check_create_prebuilds(
            preset_id, run.now, [self._name_factory() for _ in range(count)]
        )
        with run.lock:
            run.creates.append((preset_id, names, result))
            run.pending += count
            full = run.pending >= _GROUP
        if full:
            self._flush_creates(run)

    def _flush_creates(self, run: _Pass) -> None:
        """
        The pass's queued creations in one ``create_prebuilds_grouped``,
        their batches handed to the pass's submits. On a
        :class:`PresetNotFoundError` (nothing written), one preset at a
        time, so that the error is the missing preset's.

        Raises:
            StoreError: the store failed (LeadershipLostError: the lease is
                lost); nothing of the group is written.
        """
        with run.lock:
            creates, run.creates, run.pending = run.creates, [], 0
        if not creates:
            return
        run.check()
        submits, grouped = run.submits, self._grouped
        assert submits is not None  # noqa: S101 - set by the pass
        assert grouped is not None  # noqa: S101 - queued for it
        try:
            made = grouped.create_prebuilds_grouped(
                [(preset_id, names) for preset_id, names, _ in creates],
                now=run.now,
                lease=run.lease,
            )
        except PresetNotFoundError:
            made = []
            for preset_id, names, result in creates:
                try:
                    requests = grouped.create_prebuilds(
                        preset_id, now=run.now, names=names, lease=run.lease
                    )
                except StoreError:
                    raise
                except Exception as e:  # noqa: BLE001 - this preset's error
                    self._preset_error(preset_id, e, result, run.now)
                    requests = []
                made.append(requests)
        for (_, _, result), requests in zip(creates, made, strict=True):
            if requests:  # else the preset became inactive meanwhile
                submits.hand(_Batch(requests=requests, result=result))

    def _created_all(self, requests: Sequence[BuildRequest], now: datetime) -> None:
        """
        A CREATED event per request of one preset (never held back): the
        first built as any event, the rest from it with their own IDs.
        """
        emit = self._events.emit
        first = requests[0]
        for request in requests:
            try:
                if request is first:
                    event = self._event(
                        EventKind.CREATED,
                        at=now,
                        preset_id=first.preset_id,
                        instance_id=first.instance_id,
                        build_id=first.build_id,
                    )
                    emit(event)
                else:
                    emit(
                        unchecked_evolve(
                            event,
                            instance_id=request.instance_id,
                            build_id=request.build_id,
                        )
                    )
            except Exception:  # a broken sink must not break a pass
                log.warning("prebuilds event sink failed", exc_info=True)

    def _submit(
        self,
        request: BuildRequest,
        now: datetime,
        lease: Lease | None,
        run: _Pass | None = None,
    ) -> bool:
        """
        Hand *request* to the provisioner; record a failure as a failed
        build, fenced by *lease* (a pass's) or not (``None``: the host's call).
        A slow submit of a pass (*run*) has it start a helper meanwhile.
        """
        try:
            if self._submit_timeout is None:
                self._provisioner.submit(request)
            else:
                _call_with_timeout(
                    self._workers(),
                    self._provisioner.submit,
                    request,
                    self._submit_timeout,
                    _nothing if run is None else run.help,
                )
        except Exception as e:  # noqa: BLE001 - any provisioner failure
            self._submit_failed(request, e, now, lease)
            return False
        return True

    def _submit_failed(
        self, request: BuildRequest, e: Exception, now: datetime, lease: Lease | None
    ) -> None:
        """
        Record a failed submit of *request*: a failed build, and for a
        deterministic rejection the preset marked ``VALIDATION_FAILED``.
        """
        if isinstance(e, ProvisionerValidationError):
            self._store.build_finished(
                request.build_id,
                now=now,
                succeeded=False,
                error_kind="validation",
                error=clean_text(str(e)),
                lease=lease,
            )
            self._store.set_preset_status(
                request.preset_id, PresetStatus.VALIDATION_FAILED, lease=lease
            )
            self._reported_failed(request)
            self._remember_error(request.preset_id, str(e))
            self._emit(
                EventKind.VALIDATION_FAILED,
                at=now,
                preset_id=request.preset_id,
                instance_id=request.instance_id,
                build_id=request.build_id,
                detail=str(e),
            )
            return
        kind = "timeout" if isinstance(e, _SubmitTimeoutError) else "provisioner"
        self._store.build_finished(
            request.build_id,
            now=now,
            succeeded=False,
            error_kind=kind,
            error=clean_text(repr(e)),
            lease=lease,
        )
        self._reported_failed(request)
        self._remember_error(request.preset_id, repr(e))
        self._emit(
            EventKind.FAILED,
            at=now,
            preset_id=request.preset_id,
            instance_id=request.instance_id,
            build_id=request.build_id,
            detail=repr(e),
        )

    # -- clean-up ------------------------------------------------------------------
    def delete_failed(self, *, preset_id: UUID | None = None) -> int:
        """
        Delete the pooled instances whose latest build failed.

        The reconciler keeps failed instances as evidence (as Coder does) and
        never deletes them itself; they count toward the hard limit, so a
        hard-limited preset creates again only after they are gone. A failed
        delete is retried the same way.

        Args:
            preset_id: Only this preset's instances (default: every preset).

        Returns:
            How many deletes were submitted.
        """
        now = self._clock.now()
        deleted = 0
        for instance in self._store.list_instances(
            preset_id=preset_id, owner_id=PREBUILDS_OWNER_ID
        ):
            if instance.latest_status is not BuildStatus.FAILED:
                continue
            deleted += self._delete(
                instance.preset_id,
                instance.id,
                now,
                None,
                detail="failed instance cleaned up",
            )
        return deleted

    # -- replacements ------------------------------------------------------------
    def track_resource_replacement(
        self,
        workspace_id: UUID,
        build_id: UUID,
        replacements: Sequence[ResourceReplacement],
    ) -> None:
        """
        Record that applying the claim of *workspace_id* replaced resources:
        count it per preset and emit a ``REPLACEMENT`` event. Never raises.
        """
        try:
            instance = self._store.get_instance(workspace_id)
            self.replacements[instance.preset_id] += 1
            detail = "; ".join(
                f"{r.resource}: {', '.join(r.paths)}" for r in replacements
            )
            self._emit(
                EventKind.REPLACEMENT,
                preset_id=instance.preset_id,
                instance_id=workspace_id,
                build_id=build_id,
                detail=detail,
            )
        except Exception:  # fire and forget
            log.warning("prebuilds could not track a replacement", exc_info=True)

    def _emit(
        self,
        kind: EventKind,
        *,
        at: datetime | None = None,
        preset_id: UUID | None = None,
        instance_id: UUID | None = None,
        build_id: UUID | None = None,
        detail: str = "",
    ) -> None:
        try:
            now = self._clock.now() if at is None else at
            suppressed = self._quieten(kind, preset_id, now)
            if suppressed is None:
                return
            self._events.emit(
                self._event(
                    kind,
                    at=now,
                    preset_id=preset_id,
                    instance_id=instance_id,
                    build_id=build_id,
                    detail=detail,
                    suppressed=suppressed,
                )
            )
        except Exception:  # a broken sink must not break a pass
            log.warning("prebuilds event sink failed", exc_info=True)

    def _event(
        self,
        kind: EventKind,
        *,
        at: datetime,
        preset_id: UUID | None,
        instance_id: UUID | None,
        build_id: UUID | None,
        detail: str = "",
        suppressed: int = 0,
    ) -> Event:
        """An event with the preset's names, as last read."""
        with self._memory_lock:
            names = self._names.get(preset_id) if preset_id else None
        preset_name, template_name, organization_id = names or ("", "", None)
        return Event(
            kind=kind,
            at=at,
            preset_id=preset_id,
            instance_id=instance_id,
            build_id=build_id,
            detail=clean_text(detail),
            preset_name=preset_name,
            template_name=template_name,
            organization_id=organization_id,
            suppressed=suppressed,
        )

    def _quieten(
        self, kind: EventKind, preset_id: UUID | None, now: datetime
    ) -> int | None:
        """
        None to hold the event back (one of its kind and preset was emitted
        within the cooldown); else how many were held back before it.
        """
        if kind not in QUIET_KINDS or not self._event_cooldown:
            return 0
        with self._memory_lock:
            quiet = self._quiet.get((preset_id, kind))
            if quiet is not None and now < quiet.since + self._event_cooldown:
                quiet.suppressed += 1
                return None
            self._quiet[preset_id, kind] = _Quiet(since=now)
            return quiet.suppressed if quiet is not None else 0
