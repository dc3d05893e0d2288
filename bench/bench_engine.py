"""
The reference engine on SQLite: one reconcile_all over 1,000 presets x 5
instances, statements per snapshot, and claim latency with 1 and 8 threads.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
import uuid

from datetime import timedelta
from pathlib import Path
from typing import Any

from prebuilds import (
    NoClaimablePrebuildsError,
    PresetConfig,
    StoreClaimer,
    StoreReconciler,
    Template,
)
from prebuilds.stores import SQLiteStore
from prebuilds.testing import FakeClock, FakeProvisioner


def _fill(
    store: SQLiteStore, clock: FakeClock, presets: int, per_preset: int
) -> list[uuid.UUID]:
    """Write *presets* presets and bring each to *per_preset* ready instances."""
    ids = []
    for t in range(max(presets // 10, 1)):
        template = Template(
            id=uuid.uuid4(), active_version_id=uuid.uuid4(), name=f"t{t}"
        )
        store.put_template(template)
        for p in range(min(10, presets - t * 10)):
            config = PresetConfig(
                id=uuid.uuid4(),
                template_id=template.id,
                template_version_id=template.active_version_id,
                desired_instances=per_preset,
                name=f"t{t}-p{p}",
            )
            store.put_preset(config)
            ids.append(config.id)
    now = clock.now()
    for preset_id in ids:
        for _ in range(per_preset):
            request = store.create_prebuild(preset_id, now=now, name="pb")
            assert request is not None
            store.build_finished(request.build_id, now=now, succeeded=True)
            store.set_ready(request.instance_id)
    return ids


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _claims(
    store: SQLiteStore, clock: FakeClock, preset_ids: list[uuid.UUID], threads: int
) -> dict[str, Any]:
    claimer = StoreClaimer(store)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(chunk: list[uuid.UUID]) -> None:
        mine = []
        barrier.wait()
        for preset_id in chunk:
            started = time.perf_counter()
            with contextlib.suppress(NoClaimablePrebuildsError):
                claimer.claim(
                    now=clock.now(), user_id=uuid.uuid4(), name="u", preset_id=preset_id
                )
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    chunks = [preset_ids[i::threads] for i in range(threads)]
    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    return {
        "threads": threads,
        "claims": len(latencies),
        "claims_per_second": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure and return the results."""
    presets, per_preset, repeats = (200, 5, 3) if quick else (1000, 5, 7)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.sqlite3")
        clock = FakeClock()
        ids = _fill(store, clock, presets, per_preset)
        reconciler = StoreReconciler(
            store,
            FakeProvisioner(store, clock),
            clock=clock,
            submit_timeout=None,
            build_timeout=None,
        )
        steady = []
        for _ in range(repeats):
            stats = reconciler.reconcile_all()
            assert stats.error is None, stats.error
            assert stats.created == 0, stats
            steady.append(stats.elapsed.total_seconds())

        counts = []
        for n in (10, presets):
            small = SQLiteStore(Path(tmp) / f"count-{n}.sqlite3")
            _fill(small, clock, n, 1)
            before = small.statement_count()
            small.snapshot(
                now=clock.now(), backoff_lookback=timedelta(hours=1), hard_limit=3
            )
            counts.append(small.statement_count() - before)
            small.close()

        claim_ids = [i for i in ids for _ in range(per_preset)]
        half = len(claim_ids) // 2
        one = _claims(store, clock, claim_ids[:half], 1)
        eight = _claims(store, clock, claim_ids[half:], 8)

        refill = []
        for _ in range(min(repeats, 3)):
            clock.advance(timedelta(minutes=1))
            stats = reconciler.reconcile_all()
            refill.append((stats.elapsed.total_seconds(), stats.created))
        store.close()
    return {
        "presets": presets,
        "instances_per_preset": per_preset,
        "reconcile_all_steady_median_s": statistics.median(steady),
        "reconcile_all_steady_runs_s": steady,
        "reconcile_all_refill_first_pass_s": refill[0][0],
        "reconcile_all_refill_created": refill[0][1],
        "statements_per_snapshot": {
            "10_presets": counts[0],
            f"{presets}_presets": counts[1],
        },
        "claim_1_thread": one,
        "claim_8_threads": eight,
        "target": "reconcile_all <= 1 s for 1,000 presets x 5 instances",
    }
