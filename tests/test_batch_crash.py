"""
A leader killed (SIGKILL) in the middle of a batch of creations (issue 12):
the batch's builds it never handed to the provisioner are canceled once
stuck, not failed, so the preset is neither backed off nor hard-limited.

The leader is a spawned child on a SQLite file whose provisioner blocks in
the third submit of its batch (the preset's six instances, one transaction);
the test kills it there, plays the provisioner reporting the first instance
built and a user claiming it, lets the child's lease expire (wall time: a known amount, read from
the file) and runs a pass of its own past the build timeout.
"""

from __future__ import annotations

import multiprocessing
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
    BuildRequest,
    BuildStatus,
    CollectingEventSink,
    EventKind,
    Lifecycle,
    PresetConfig,
    PresetStatus,
    StoreReconciler,
    Template,
    Transition,
)
from prebuilds.stores import SQLiteStore
from prebuilds.testing import FakeClock


#: The lease: short, so that the dead leader's runs out soon.
LEASE = timedelta(seconds=1)
DESIRED = 6
#: Fewer than the batch's builds never submitted: had they counted as
#: failures, the preset would be hard-limited.
HARD_LIMIT = 3
BUILD_TIMEOUT = timedelta(minutes=10)
#: Bound on any wait for the child: only reached if something hangs.
WAIT = 60.0

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"
)


class BlockingProvisioner:
    """Reports each submit; the *block_at*-th (from 1) never returns."""

    def __init__(self, report: Any, block_at: int) -> None:
        self.report = report
        self.block_at = block_at
        self.calls = 0

    def submit(self, request: BuildRequest) -> None:
        self.calls += 1
        self.report(("submit", self.calls, str(request.build_id)))
        if self.calls == self.block_at:
            threading.Event().wait()  # until the process is killed


class Recording:
    """Keeps every request it is handed."""

    def __init__(self, handed: list[BuildRequest]) -> None:
        self.handed = handed

    def submit(self, request: BuildRequest) -> None:
        self.handed.append(request)


def reconciler(
    store: SQLiteStore, provisioner: Any, clock: FakeClock
) -> StoreReconciler:
    return StoreReconciler(
        store,
        provisioner,
        clock=clock,
        events=CollectingEventSink(),
        build_timeout=BUILD_TIMEOUT,
        hard_limit=HARD_LIMIT,
        # Long enough that a failure counted would hold the pool back.
        backoff_interval=timedelta(hours=1),
        max_workers=1,
    )


def _leading_child(path: str, reports: Any) -> None:
    """One pass that blocks in its third submit, mid-batch."""
    try:
        store = SQLiteStore(path, lease_ttl=LEASE)
        reconciler(
            store, BlockingProvisioner(reports.put, 3), FakeClock()
        ).reconcile_all()
        reports.put(("done",))
    except BaseException as e:  # reported to the test
        reports.put(("error", repr(e)))


def seed(path: Path) -> PresetConfig:
    with closing(SQLiteStore(path, lease_ttl=LEASE)) as store:
        template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4())
        store.put_template(template)
        preset = PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=DESIRED,
        )
        store.put_preset(preset)
    return preset


def let_the_lease_expire(path: Path) -> None:
    """Let wall time pass until the dead leader's lease (read from the file) ran out."""
    with closing(sqlite3.connect(path, timeout=WAIT)) as conn:
        (expires_at,) = conn.execute(
            "SELECT expires_at FROM prebuilds_leader"
        ).fetchone()
    threading.Event().wait(max((expires_at - time.time_ns() // 1000) / 1e6 + 0.05, 0))


def test_a_leader_killed_mid_batch_neither_backs_off_nor_hard_limits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pool.sqlite3"
    preset = seed(path)
    preset_id = preset.id
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    child = ctx.Process(target=_leading_child, args=(str(path), reports))
    child.start()
    try:
        submits: list[str] = []
        while len(submits) < 3:
            item = reports.get(timeout=WAIT)
            assert item[0] == "submit", item
            submits.append(item[2])
    finally:
        child.kill()  # SIGKILL: blocked in the batch's third submit
        child.join(WAIT)
    assert child.exitcode == -signal.SIGKILL

    with closing(SQLiteStore(path, lease_ttl=LEASE)) as store:
        builds = store.list_builds()
        assert [BuildStatus.PENDING] * DESIRED == [b.status for b in builds]
        first = uuid.UUID(submits[0])
        store.build_finished(first, now=builds[0].created_at, succeeded=True)
        store.set_ready(store.get_build(first).instance_id)
        # Claimed: the pool's latest start builds are the batch's alone (the
        # hard limit looks at the newest three).
        claimed = store.claim(
            preset_id=preset_id,
            user_id=uuid.uuid4(),
            name="mine",
            lifecycle=Lifecycle(last_used_at=builds[0].created_at),
            now=builds[0].created_at,
            version_id=preset.template_version_id,
            not_before=None,
        )
        assert claimed is not None
        let_the_lease_expire(path)
        clock = FakeClock()
        clock.advance(BUILD_TIMEOUT * 2)
        handed: list[BuildRequest] = []
        ours = reconciler(store, Recording(handed), clock)
        stats = ours.reconcile_all()

        # It saw the batch's builds still in progress: one instance short.
        # The five never handed over as far as the store knows are withdrawn:
        # an orphan delete each (the provisioner may have had the second and
        # the third before the crash).
        assert (None, 1, 5) == (stats.error, stats.created, stats.deleted)
        others = {b.instance_id for b in builds if b.id != first}
        deletes = [r for r in handed if r.transition is Transition.DELETE]
        assert (others, [True] * 5) == (
            {r.instance_id for r in deletes},
            [r.orphan for r in deletes],
        )
        for request in deletes:
            store.build_finished(request.build_id, now=clock.now(), succeeded=True)
        refill = ours.reconcile_all()

        # Not backed off, not hard-limited: the next pass refills the pool.
        kinds = {e.kind for e in ours._events.events}  # type: ignore[attr-defined]
        assert (set(), PresetStatus.HEALTHY) == (
            kinds & {EventKind.HARD_LIMITED, EventKind.BACKOFF},
            store.read_preset(preset_id).status,
        )
        assert (None, DESIRED - 1) == (refill.error, refill.created)
        # The batch's other five: the second submitted but never marked (the
        # leader died before its record_submits), the third blocked in its
        # submit, three never submitted; none handed over as far as the store
        # knows, so none is a provisioning failure.
        stuck = [e.detail for e in ours._events.events if e.kind is EventKind.STUCK]  # type: ignore[attr-defined]
        assert ["start build never submitted: canceled"] * 5 == stuck
        ended = {b.id: (b.status, b.error_kind) for b in store.list_builds()}
        assert [(BuildStatus.CANCELED, "not_submitted")] * 5 == [
            ended[b.id] for b in builds if b.id != first
        ]
        # Withdrawn: none of the five is left in the pool.
        pooled = {i.id for i in store.list_instances(preset_id=preset_id)}
        assert (set(), DESIRED) == (
            others & pooled,
            len(pooled - {claimed.id}),
        )
