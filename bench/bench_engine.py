"""
The reference engine on SQLite: steady reconcile_all passes over 1,000 and
10,000 presets x 5 instances, statements per pool read, claims through
StoreClaimer with 1 and 8 threads and through the store alone.
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
    Lifecycle,
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


def _store_claims(
    store: SQLiteStore, clock: FakeClock, preset_ids: list[uuid.UUID]
) -> dict[str, Any]:
    """``SQLiteStore.claim`` alone, one thread: the store's share of a claim."""
    versions = {
        f.config.id: f.config.template_version_id for f in store.read_pool().presets
    }
    lifecycle = Lifecycle(last_used_at=clock.now())
    now = clock.now()
    started = time.perf_counter()
    hits = 0
    for preset_id in preset_ids:
        claimed = store.claim(
            preset_id=preset_id,
            user_id=uuid.uuid4(),
            name="u",
            lifecycle=lifecycle,
            now=now,
            version_id=versions[preset_id],
            not_before=None,
        )
        hits += claimed is not None
    wall = time.perf_counter() - started
    return {
        "claims": len(preset_ids),
        "hits": hits,
        "claims_per_second": len(preset_ids) / wall,
    }


def _steady(
    tmp: str, clock: FakeClock, presets: int, per_preset: int, repeats: int
) -> dict[str, Any]:
    """Steady passes (nothing to do) over *presets* presets; the store stays open."""
    store = SQLiteStore(Path(tmp) / f"steady-{presets}.sqlite3")
    ids = _fill(store, clock, presets, per_preset)
    reconciler = StoreReconciler(
        store,
        FakeProvisioner(store, clock),
        clock=clock,
        submit_timeout=None,
        build_timeout=None,
    )
    runs = []
    for _ in range(repeats):
        stats = reconciler.reconcile_all()
        assert stats.error is None, stats.error
        assert stats.created == 0, stats
        runs.append(stats.elapsed.total_seconds())
    before = store.statement_count()
    store.read_pool()
    return {
        "store": store,
        "reconciler": reconciler,
        "ids": ids,
        "median_s": statistics.median(runs),
        "runs_s": runs,
        "statements_per_read_pool": store.statement_count() - before,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure and return the results."""
    presets, per_preset, repeats = (200, 5, 3) if quick else (1000, 5, 7)
    sizes = (presets,) if quick else (presets, 10 * presets)
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        steady = {n: _steady(tmp, clock, n, per_preset, repeats) for n in sizes}
        for n in sizes[1:]:
            steady[n]["store"].close()
        base = steady[presets]
        store, reconciler, ids = base["store"], base["reconciler"], base["ids"]

        counts = []
        for n in (10, presets):
            small = SQLiteStore(Path(tmp) / f"count-{n}.sqlite3")
            _fill(small, clock, n, 1)
            before = small.statement_count()
            small.read_pool()
            counts.append(small.statement_count() - before)
            small.close()

        claim_ids = [i for i in ids for _ in range(per_preset)]
        third = len(claim_ids) // 3
        one = _claims(store, clock, claim_ids[:third], 1)
        eight = _claims(store, clock, claim_ids[third : 2 * third], 8)
        alone = _store_claims(store, clock, claim_ids[2 * third :])

        refill = []
        for _ in range(min(repeats, 3)):
            clock.advance(timedelta(minutes=1))
            stats = reconciler.reconcile_all()
            refill.append((stats.elapsed.total_seconds(), stats.created))
        store.close()
    return {
        "presets": presets,
        "instances_per_preset": per_preset,
        "reconcile_all_steady_median_s": base["median_s"],
        "reconcile_all_steady_runs_s": base["runs_s"],
        "reconcile_all_steady_by_presets": {
            f"{n}_presets": {"median_s": s["median_s"], "runs_s": s["runs_s"]}
            for n, s in steady.items()
        },
        "reconcile_all_refill_first_pass_s": refill[0][0],
        "reconcile_all_refill_created": refill[0][1],
        "statements_per_read_pool": {
            "10_presets": counts[0],
            f"{presets}_presets": counts[1],
        },
        "claim_1_thread": one,
        "claim_8_threads": eight,
        "store_claim_1_thread": alone,
        "target": "reconcile_all <= 1 s for 1,000 presets x 5 instances",
    }
