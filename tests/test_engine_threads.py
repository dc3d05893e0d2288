"""
The reconciler's threads: none started by a steady pass; kept between
passes; ended by stop; a quick fill in the pass's own thread; slow submits
in parallel.
"""

from __future__ import annotations

import threading
import uuid

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
import pytest

from prebuilds import BuildRequest, EventKind, Lease, Transition, _reconciler
from prebuilds.stores import MemoryStore
from tests.conftest import StoreFactory
from tests.helpers import make_world, new_preset, new_template, ready


WAIT = 30.0


def _counting_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every thread started from now on."""
    started: list[str] = []
    original = threading.Thread.start

    def start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        started.append(self.name)
        original(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_a_steady_pass_starts_no_thread(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default settings (workers, submit timeout), a full pool's pass starts none."""
    world = make_world(store_factory(), max_workers=5, submit_timeout=60.0)
    template = new_template(world.store)
    presets = [new_preset(world.store, template, desired=2) for _ in range(6)]
    world.settle()
    assert all(len(ready(world.store, p.id)) == 2 for p in presets)
    world.reconciler.reconcile_all()  # the store's own threads (a lease renewer) run
    started = _counting_starts(monkeypatch)

    stats = world.reconciler.reconcile_all()

    assert (0, 0, 6) == (stats.created, stats.deleted, stats.presets_reconciled)
    assert [] == started
    world.reconciler.stop()


def test_workers_are_kept_between_passes_and_end_on_stop(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presets and submits run on kept threads; stop() ends them."""
    world = make_world(store_factory(), max_workers=3, submit_timeout=60.0)
    template = new_template(world.store)
    presets = [new_preset(world.store, template, desired=2) for _ in range(6)]
    # Other tests' reconcilers, never stopped, may leave idle workers behind.
    before = set(threading.enumerate())
    started = _counting_starts(monkeypatch)

    stats = world.cycle()
    assert 12 == stats.created
    workers = [
        t for t in threading.enumerate() if t.name == "prebuilds" and t not in before
    ]
    assert workers
    # Every worker started was one of the pool's, and fewer than one per
    # preset and submit (18 units of work).
    assert 0 < started.count("prebuilds") < 18
    world.settle()
    assert all(len(ready(world.store, p.id)) == 2 for p in presets)

    world.reconciler.stop()
    for thread in workers:
        thread.join(WAIT)
    assert not [t for t in workers if t.is_alive()]


class _Recording(MemoryStore):
    """A MemoryStore that records the threads its creations run in, its groups and marks."""

    def __init__(self) -> None:
        super().__init__()
        self.creating_threads: set[int] = set()
        self.marks: list[tuple[int, int]] = []
        self.groups: list[int] = []

    def create_prebuilds(
        self,
        preset_id: uuid.UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        self.creating_threads.add(threading.get_ident())
        return super().create_prebuilds(preset_id, now=now, names=names, lease=lease)

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[uuid.UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        self.creating_threads.add(threading.get_ident())
        self.groups.append(len(groups))
        return super().create_prebuilds_grouped(groups, now=now, lease=lease)

    def record_submits(
        self,
        submitted: Sequence[uuid.UUID],
        *,
        now: datetime,
        not_submitted: Sequence[uuid.UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        self.marks.append((len(submitted), len(not_submitted)))
        super().record_submits(
            submitted, now=now, not_submitted=not_submitted, lease=lease
        )


def test_a_quick_fill_creates_in_the_calling_thread_and_marks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Default settings, a provisioner that returns at once: every preset's
    creation runs in the pass's own thread (no preset worker), all of them
    in one create_prebuilds_grouped, the submits on other threads, and one
    record_submits marks the whole pass's builds.
    """
    # A preset preempted by another process for this long would ask for a
    # helper: not this test's subject.
    monkeypatch.setattr(_reconciler, "_WAITED", 3600.0)
    store = _Recording()
    world = make_world(store, max_workers=5, submit_timeout=60.0)
    template = new_template(store)
    presets = [new_preset(store, template, desired=3) for _ in range(8)]
    submitting: set[int] = set()
    fake_submit = world.provisioner.submit

    def submit(request: BuildRequest) -> None:
        submitting.add(threading.get_ident())
        fake_submit(request)

    world.provisioner.submit = submit  # type: ignore[method-assign]

    stats = world.cycle()

    assert (24, None) == (stats.created, stats.error)
    assert {threading.get_ident()} == store.creating_threads
    assert [8] == store.groups
    assert submitting
    assert threading.get_ident() not in submitting
    assert [(24, 0)] == store.marks
    assert 24 == len(world.of_kind(EventKind.CREATED))
    world.settle()
    assert all(len(ready(store, p.id)) == 3 for p in presets)
    world.reconciler.stop()


def test_slow_submits_of_creations_run_in_parallel(
    store_factory: StoreFactory,
) -> None:
    """
    Three presets whose submits each return only once three are in
    progress at the same time: the pass calls them on three threads.
    """
    store = store_factory()
    template = new_template(store)
    presets = [new_preset(store, template, desired=1) for _ in range(3)]
    world = make_world(store, max_workers=3, submit_timeout=2 * WAIT)
    together = threading.Barrier(3, timeout=WAIT)  # broken only if serial
    fake_submit = world.provisioner.submit

    def submit(request: BuildRequest) -> None:
        together.wait()
        fake_submit(request)

    world.provisioner.submit = submit  # type: ignore[method-assign]

    stats = world.cycle()

    assert (3, None) == (stats.created, stats.error)
    assert [] == world.of_kind(EventKind.FAILED)
    world.settle()
    assert all(len(ready(store, p.id)) == 1 for p in presets)
    world.reconciler.stop()


def test_slow_submits_of_deletions_have_presets_reconciled_in_parallel(
    store_factory: StoreFactory,
) -> None:
    """
    Two presets each deleting an instance whose delete submits return only
    once both are in progress: the pass starts a helper on the second
    preset while the first waits.
    """
    store = store_factory()
    template = new_template(store)
    presets = [new_preset(store, template, desired=1) for _ in range(2)]
    world = make_world(store, max_workers=2, submit_timeout=2 * WAIT)
    world.settle()
    for preset in presets:
        store.put_preset(attrs.evolve(preset, desired_instances=0))
    together = threading.Barrier(2, timeout=WAIT)  # broken only if serial
    fake_submit = world.provisioner.submit

    def submit(request: BuildRequest) -> None:
        if request.transition is Transition.DELETE:
            together.wait()
        fake_submit(request)

    world.provisioner.submit = submit  # type: ignore[method-assign]

    stats = world.cycle()

    assert (2, None) == (stats.deleted, stats.error)
    assert [] == world.of_kind(EventKind.FAILED)
    world.reconciler.stop()
