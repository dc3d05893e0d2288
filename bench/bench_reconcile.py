"""
The reconcile pass (issue 12): steady passes over 1,000 and 10,000 presets
x 5 instances on SQLite (the cost per preset, the threads a pass starts),
the library's time per instance a filling pass creates (a no-op
provisioner), and a simulated week of 10 presets with a pass every 15
simulated seconds and the reconciler's default settings.

A steady pass is measured twice: with nothing committed to the pool's
tables since the last pass (the store hands back the facts it read last,
the engine its view) and after one preset changed (every row read, that
preset decoded and worked out again, every other preset's plan checked).
Ceilings, measured in the same run: a full ``read_pool`` alone (the facts a
pass reads after such a commit); a bare sqlite3 loop inserting an instance
and its build in one transaction each, for the fill.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
import uuid

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.bench_engine import _fill
from prebuilds import BuildRequest, PresetConfig, StoreReconciler, Template
from prebuilds._simulate import simulate
from prebuilds.stores import SQLiteStore
from prebuilds.testing import FakeClock, FakeProvisioner


_PAST = datetime(2000, 1, 1, tzinfo=timezone.utc)


class _NoOp:
    """A provisioner that accepts every request and does nothing."""

    def submit(self, request: BuildRequest) -> None:
        """Accept *request*."""


def _steady(tmp: str, presets: int, rounds: int) -> dict[str, Any]:
    clock = FakeClock()
    store = SQLiteStore(Path(tmp) / f"steady-{presets}.sqlite3")
    _fill(store, clock, presets, 5)
    reconciler = StoreReconciler(store, FakeProvisioner(store, clock), clock=clock)
    reconciler.reconcile_all()
    passes, reads, changed = [], [], []
    starts = threading.active_count()
    preset_id = store.read_pool().presets[0].config.id
    for _ in range(rounds):
        # A commit to the pool's tables since the last pass (one that leaves
        # them alone, pausing, is answered from the last read): the store
        # reads every row again, the engine looks at every preset. An
        # invalidation older than every instance changes the preset's row
        # (its stamp) and expires nothing.
        store.invalidate_preset(preset_id, at=_PAST)
        started = time.perf_counter()
        stats = reconciler.reconcile_all()
        changed.append(time.perf_counter() - started)
        assert stats.created == 0, stats
        # Then nothing committed until the next pass.
        started = time.perf_counter()
        stats = reconciler.reconcile_all()
        passes.append(time.perf_counter() - started)
        assert stats.error is None, stats
        assert stats.created == 0, stats
        store.invalidate_preset(preset_id, at=_PAST)
        started = time.perf_counter()
        store.read_pool()
        reads.append(time.perf_counter() - started)
    threads = threading.active_count() - starts
    reconciler.stop()
    store.close()
    median = statistics.median(passes)
    return {
        "presets": presets,
        "median_s": median,
        "per_preset_us": median / presets * 1e6,
        "after_a_commit_median_s": statistics.median(changed),
        "read_pool_median_s": statistics.median(reads),
        "engine_share_after_a_commit_s": statistics.median(changed)
        - statistics.median(reads),
        "threads_left_running": threads,
    }


def _fill_pass(tmp: str, presets: int, per_preset: int, round_: int) -> dict[str, Any]:
    """One pass that creates presets x per_preset instances, a no-op provisioner."""
    clock = FakeClock()
    store = SQLiteStore(Path(tmp) / f"fill-{round_}.sqlite3")
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="t")
    store.put_template(template)
    for p in range(presets):
        store.put_preset(
            PresetConfig(
                id=uuid.uuid4(),
                template_id=template.id,
                template_version_id=template.active_version_id,
                desired_instances=per_preset,
                name=f"p{p}",
            )
        )
    reconciler = StoreReconciler(store, _NoOp(), clock=clock)
    started = time.perf_counter()
    stats = reconciler.reconcile_all()
    elapsed = time.perf_counter() - started
    reconciler.stop()
    store.close()
    assert stats.created == presets * per_preset, stats
    return {"created": stats.created, "per_instance_us": elapsed / stats.created * 1e6}


def _bare_inserts(tmp: str, count: int, round_: int) -> float:
    """µs per instance: a bare sqlite3 loop, an instance and a build per transaction."""
    db = sqlite3.connect(Path(tmp) / f"bare-{round_}.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE i (id TEXT PRIMARY KEY, preset TEXT, name TEXT, at INT)")
    db.execute("CREATE TABLE b (id TEXT PRIMARY KEY, i TEXT, t TEXT, n INT, at INT)")
    started = time.perf_counter()
    for n in range(count):
        instance = str(uuid.uuid4())
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO i VALUES (?, ?, ?, ?)", (instance, "p", "pb", n))
        db.execute(
            "INSERT INTO b VALUES (?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), instance, "start", 1, n),
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed / count * 1e6


def _week(tmp: str, hours: int) -> dict[str, Any]:
    store = SQLiteStore(Path(tmp) / f"week-{hours}.sqlite3")
    started = time.perf_counter()
    result = simulate(
        store,
        hours=hours,
        step=timedelta(seconds=15),
        pools=10,
        default_settings=True,
    )
    wall = time.perf_counter() - started
    store.close()
    return {
        "simulated_hours": hours,
        "wall_s": wall,
        "week_wall_s": wall * 168 / hours,
        "passes": result.passes,
        "created": result.created,
        "claims": result.claims,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure and return the results."""
    sizes, rounds, hours = ((200, 2000), 3, 12) if quick else ((1000, 10000), 3, 168)
    with tempfile.TemporaryDirectory() as tmp:
        steady = [_steady(tmp, n, rounds) for n in sizes]
        fills = [_fill_pass(tmp, 100, 5, n) for n in range(3)]
        bare = [_bare_inserts(tmp, 500, n) for n in range(3)]
        week = _week(tmp, hours)
    small, large = steady
    fill_us = statistics.median(f["per_instance_us"] for f in fills)
    bare_us = statistics.median(bare)
    return {
        "steady": steady,
        "steady_goal": f"{large['presets']} presets <= 0.3 s, per preset flat",
        "steady_large_s": large["median_s"],
        "steady_met": large["median_s"] <= 0.3,
        "per_preset_growth": large["per_preset_us"] / small["per_preset_us"],
        "steady_after_a_commit_large_s": large["after_a_commit_median_s"],
        "steady_ceiling_read_pool_s": large["read_pool_median_s"],
        "after_a_commit_ratio_to_read_pool": large["after_a_commit_median_s"]
        / large["read_pool_median_s"],
        "fill_us_per_instance": fill_us,
        "fill_goal_us": 150,
        "fill_met": fill_us <= 150,
        "fill_ceiling_bare_sqlite_us": bare_us,
        "fill_ratio_to_bare": fill_us / bare_us,
        "week": week,
        "week_wall_s": week["week_wall_s"],
        "week_goal_s": 30,
        "week_met": week["week_wall_s"] <= 30,
        "week_extrapolated": hours != 168,
    }
