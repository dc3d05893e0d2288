"""
A leader that cannot be outlived (issue 14): two processes reconcile one
SQLite file.

A holder whose pass lasts many leases keeps its lease (it is renewed while
the pass runs); a holder that could not renew in time (the file locked past
its lease, the process stopped with SIGSTOP) loses it to the other process,
and its next write is refused with LeadershipLostError. The pool never holds
more instances than desired: both provisioners count the pool in the file
after every creation, and the test counts it after every pass of its own.

The leading process is a spawned child whose provisioner blocks in
``submit`` until the test hands it a permit; the other process is the test
itself. The lease runs on the wall clock: the waits below let a known amount
of wall time pass (a lease's expiry, read from the file); none waits for
another process to have done something.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid

from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildRequest,
    CollectingEventSink,
    EventKind,
    PresetConfig,
    ReconcileStats,
    StoreReconciler,
    Template,
)
from prebuilds.stores import SQLiteStore
from prebuilds.testing import FakeClock


#: The lease: short, so that a pass of a few seconds outlives it many times.
LEASE = timedelta(seconds=1)
#: Pooled instances the preset wants.
DESIRED = 5
#: Bound on any wait for the other process: only reached if something hangs.
WAIT = 60.0

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals"
)


# -- both processes ----------------------------------------------------------------
def pooled(path: str) -> int:
    """The pooled instances in the file, read outside any store."""
    with closing(sqlite3.connect(path, timeout=WAIT)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM prebuilds_instances WHERE owner_id = ? AND deleted = 0",
            (str(PREBUILDS_OWNER_ID),),
        ).fetchone()
    return int(row[0])


class CountingProvisioner:
    """Counts the pool after each creation (a submit follows each one)."""

    def __init__(self, path: str, report: Any) -> None:
        self.path = path
        self.report = report

    def submit(self, request: BuildRequest) -> None:
        self.report(("submit", os.getpid(), pooled(self.path)))


class GatedProvisioner(CountingProvisioner):
    """Counts, then blocks until the test releases one permit of *gate*."""

    def __init__(self, path: str, report: Any, gate: Any) -> None:
        super().__init__(path, report)
        self.gate = gate

    def submit(self, request: BuildRequest) -> None:
        super().submit(request)
        if not self.gate.acquire(timeout=WAIT):
            msg = "the test never released this submit"
            raise RuntimeError(msg)


class OneByOneStore(SQLiteStore):
    """No batches: each creation of a pass is a fenced write of its own."""

    create_prebuilds = None  # type: ignore[assignment]


def reconciler(store: SQLiteStore, provisioner: Any) -> StoreReconciler:
    """One worker, submit called directly (the pass waits in it), no timeouts."""
    return StoreReconciler(
        store,
        provisioner,
        clock=FakeClock(),
        events=CollectingEventSink(),
        submit_timeout=None,
        build_timeout=None,
        max_workers=1,
    )


def _leading_child(path: str, gate: Any, reports: Any) -> None:
    """One reconciliation pass in a child process; reports what it did."""
    try:
        with OneByOneStore(path, lease_ttl=LEASE) as store:
            provisioner = GatedProvisioner(path, reports.put, gate)
            child = reconciler(store, provisioner)
            stats = child.reconcile_all()
            events = child._events
            assert isinstance(events, CollectingEventSink)
            reports.put(
                (
                    "done",
                    stats.leader,
                    stats.error,
                    [e.kind.value for e in events.events],
                    child.pass_errors,
                )
            )
    except BaseException as e:  # reported to the test
        reports.put(("error", repr(e)))


# -- the test's side -----------------------------------------------------------------
class Leader:
    """The child process that leads, and what it reports."""

    def __init__(self, path: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.gate = ctx.Semaphore(0)
        self.reports = ctx.Queue()
        self.samples: list[int] = []
        self.process = ctx.Process(
            target=_leading_child, args=(str(path), self.gate, self.reports)
        )
        self.process.start()

    def next(self) -> tuple[Any, ...]:
        item = self.reports.get(timeout=WAIT)
        assert item[0] != "error", item
        if item[0] == "submit":
            self.samples.append(item[2])
        return tuple(item)

    def wait_for_submit(self, number: int) -> None:
        """Until its *number*-th submit has started (and, past the first permits, blocks)."""
        while len(self.samples) < number:
            assert self.next()[0] == "submit"

    def finish(self) -> tuple[Any, ...]:
        """Release every submit; the pass's final report."""
        for _ in range(DESIRED):
            self.gate.release()
        while (item := self.next())[0] == "submit":
            pass
        assert item[0] == "done", item
        self.process.join(WAIT)
        assert self.process.exitcode == 0
        return item

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(WAIT)


def seed(path: Path) -> SQLiteStore:
    """The test's own store on *path*, with one preset of DESIRED instances."""
    store = SQLiteStore(path, lease_ttl=LEASE)
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4())
    store.put_template(template)
    store.put_preset(
        PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=DESIRED,
        )
    )
    return store


def lease_row(path: Path) -> tuple[str, int] | None:
    with closing(sqlite3.connect(path, timeout=WAIT)) as conn:
        row = conn.execute("SELECT holder, expires_at FROM prebuilds_leader").fetchone()
    return None if row is None else (row[0], row[1])


def wall_us() -> int:
    return time.time_ns() // 1000


def let_time_pass(seconds: float) -> None:
    """Let wall time pass (the lease's clock); nothing to wait *for*."""
    threading.Event().wait(max(seconds, 0.0))


def pass_of(
    store: SQLiteStore, samples: list[int]
) -> tuple[ReconcileStats, StoreReconciler]:
    """One pass of the test's own reconciler; the pool counted after it."""
    ours = reconciler(
        store,
        CountingProvisioner(str(store.path), lambda item: samples.append(item[2])),
    )
    stats = ours.reconcile_all()
    samples.append(pooled(str(store.path)))
    return stats, ours


def expire_while_locked(path: Path) -> int:
    """
    Hold the file's write lock until the current lease has expired (its
    holder cannot renew meanwhile), then let go. Returns the expiry.
    """
    with closing(sqlite3.connect(path, timeout=WAIT, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        (expires_at,) = conn.execute(
            "SELECT expires_at FROM prebuilds_leader"
        ).fetchone()
        let_time_pass((expires_at - wall_us()) / 1e6 + 0.05)
        conn.execute("ROLLBACK")
    return int(expires_at)


def stop_outside_a_write(
    process: multiprocessing.process.BaseProcess, path: Path
) -> None:
    """
    SIGSTOP *process* at a moment it holds no write lock on *path* (its
    renewer writes for a few milliseconds a third of a lease): stop it, and
    if the file's write lock is taken, let it run on and stop it again.
    """
    pid = process.pid
    assert pid is not None
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)  # returns once it is stopped
        with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # it was writing: try again
                os.kill(pid, signal.SIGCONT)
                continue
            conn.execute("ROLLBACK")
            return
    pytest.fail("the leading process was always writing")


# -- the tests -----------------------------------------------------------------------
def test_a_pass_five_leases_long_keeps_the_lease_then_loses_it_when_it_cannot_renew(
    tmp_path: Path,
) -> None:
    """
    Process A leads a pass that lasts more than five leases (its second
    submit blocks); meanwhile every pass of process B finds the lease held,
    because A renews it. Then the file stays locked past A's lease (a backup,
    another writer): A cannot renew, B takes over and fills the pool, and
    A's next creation is refused; A's pass ends with LeadershipLostError.
    At no moment does the pool hold more than DESIRED.
    """
    path = tmp_path / "pool.sqlite3"
    store = seed(path)
    samples: list[int] = []
    leader = Leader(path)
    try:
        leader.gate.release()  # the first submit goes through, the second blocks
        leader.wait_for_submit(2)
        holder = lease_row(path)
        assert holder is not None
        started = time.monotonic()

        # More than five leases: B never leads, A's lease moves on.
        expiries = {holder[1]}
        passes_b = 0
        while time.monotonic() - started < 5.5 * LEASE.total_seconds():
            stats, _ = pass_of(store, samples)
            passes_b += 1
            assert (stats.leader, stats.created, stats.error) == (False, 0, None)
            row = lease_row(path)
            assert row is not None
            assert row[0] == holder[0]  # still A's
            expiries.add(row[1])
            let_time_pass(LEASE.total_seconds() / 4)
        renewals = len(expiries) - 1
        assert renewals >= 5, expiries

        # The file is locked past A's lease: A cannot renew it, B takes over.
        expire_while_locked(path)
        stats, _ = pass_of(store, samples)
        assert (stats.leader, stats.created, stats.error) == (True, DESIRED - 2, None)

        # A goes on: its creation after the blocked submit is refused.
        _, led, error, kinds, pass_errors = leader.finish()
        assert led is True
        assert "LeadershipLostError" in (error or "")
        assert EventKind.LEADERSHIP_LOST.value in kinds
        assert EventKind.PASS_ERROR.value not in kinds
        assert pass_errors == 1
    finally:
        leader.kill()
    samples += leader.samples
    assert pooled(str(path)) == DESIRED
    assert max(samples) <= DESIRED, samples
    print(  # noqa: T201
        f"\n[lease] A's pass: {time.monotonic() - started:.1f}s = "
        f"{(time.monotonic() - started) / LEASE.total_seconds():.1f} leases, "
        f"{renewals} renewals seen, B's {passes_b} passes skipped; 1 takeover; "
        f"{len(samples)} pool counts, max {max(samples)} of {DESIRED}"
    )
    store.close()


def test_a_holder_stopped_past_its_lease_has_its_writes_refused(
    tmp_path: Path,
) -> None:
    """
    Process A is stopped (SIGSTOP) in the middle of its pass, past its lease;
    B takes over and fills the pool; A, resumed (SIGCONT), has its next
    creation refused and its pass ends with LeadershipLostError. The pool
    never holds more than DESIRED.
    """
    path = tmp_path / "pool.sqlite3"
    store = seed(path)
    samples: list[int] = []
    leader = Leader(path)
    try:
        leader.gate.release()
        leader.wait_for_submit(2)
        stop_outside_a_write(leader.process, path)
        stopped = time.monotonic()
        try:
            row = lease_row(path)
            assert row is not None
            let_time_pass((row[1] - wall_us()) / 1e6 + 0.05)  # past its lease

            stats, _ = pass_of(store, samples)
            assert (stats.leader, stats.created, stats.error) == (
                True,
                DESIRED - 2,
                None,
            )
            taken = lease_row(path)
            assert taken is None  # B's scope ended and released it
        finally:
            assert leader.process.pid is not None
            os.kill(leader.process.pid, signal.SIGCONT)
            stopped = time.monotonic() - stopped

        _, led, error, kinds, pass_errors = leader.finish()
        assert led is True
        assert "LeadershipLostError" in (error or "")
        assert EventKind.LEADERSHIP_LOST.value in kinds
        assert pass_errors == 1
    finally:
        leader.kill()
    samples += leader.samples
    assert pooled(str(path)) == DESIRED
    assert max(samples) <= DESIRED, samples
    print(  # noqa: T201
        f"\n[sigstop] A stopped {stopped:.1f}s ({stopped / LEASE.total_seconds():.1f} "
        f"leases); 1 takeover; {len(samples)} pool counts, max {max(samples)} "
        f"of {DESIRED}"
    )
    store.close()
