"""The reconciler's threads: none started by a steady pass; kept between passes; ended by stop."""

from __future__ import annotations

import threading

from typing import Any

import pytest

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
