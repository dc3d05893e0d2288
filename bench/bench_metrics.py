"""
A Prometheus scrape of ``PrometheusMetrics``: its cost with 100, 1,000 and
10,000 pooled instances over the same 20 presets (it reads the statuses kept
from the last pass, so it should not grow with the instances), and the
store calls made while scraping (none).
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from prebuilds import PresetConfig, StoreReconciler, Template
from prebuilds.metrics import PrometheusMetrics
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner


PRESETS = 20


class _Counting:
    """A store that counts the calls made through it."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return call


def _fill(store: MemoryStore, clock: FakeClock, instances: int) -> None:
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="tpl")
    store.put_template(template)
    per_preset = instances // PRESETS
    now = clock.now()
    for p in range(PRESETS):
        config = PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=per_preset,
            name=f"p{p}",
        )
        store.put_preset(config)
        for _ in range(per_preset):
            request = store.create_prebuild(config.id, now=now, name="pb")
            assert request is not None
            store.build_finished(request.build_id, now=now, succeeded=True)
            store.set_ready(request.instance_id)


def _measure(instances: int, repeats: int) -> dict[str, Any]:
    clock = FakeClock()
    inner = MemoryStore()
    _fill(inner, clock, instances)
    store = _Counting(inner)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    reconciler = StoreReconciler(
        store,
        FakeProvisioner(inner, clock),
        clock=clock,
        events=metrics,
        max_workers=1,
        submit_timeout=None,
    )
    started = time.perf_counter()
    stats = reconciler.reconcile_all()
    pass_s = time.perf_counter() - started
    assert stats.created == 0, stats  # the pools are full: a pure read
    store.calls = 0
    timings = []
    size = 0
    # The scrape's own cost: the collector of the many instances' objects
    # would otherwise run inside some scrapes and not others.
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            size = len(generate_latest(registry))
            timings.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return {
        "instances": instances,
        "presets": PRESETS,
        "scrape_median_us": statistics.median(timings) * 1e6,
        "scrape_min_us": min(timings) * 1e6,
        "scrape_bytes": size,
        "store_calls_during_scrapes": store.calls,
        "pass_s": pass_s,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure and return the results."""
    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    rows = [_measure(n, 50 if quick else 200) for n in sizes]
    smallest, largest = rows[0], rows[-1]
    return {
        "rows": rows,
        "scrape_growth": largest["scrape_median_us"] / smallest["scrape_median_us"],
        "pass_growth": largest["pass_s"] / smallest["pass_s"],
    }


def summarize(results: dict[str, Any]) -> str:
    """One line per size, and the growth from the smallest to the largest."""
    lines = ["metrics (a scrape reads the last pass's statuses):"]
    lines += [
        f"  {r['instances']:>6} instances / {r['presets']} presets: scrape "
        f"{r['scrape_median_us']:.0f} us median ({r['scrape_bytes']} bytes, "
        f"{r['store_calls_during_scrapes']} store calls); the pass "
        f"{r['pass_s'] * 1e3:.1f} ms"
        for r in results["rows"]
    ]
    lines.append(
        f"  growth, largest/smallest: scrape x{results['scrape_growth']:.2f}, "
        f"pass x{results['pass_growth']:.1f}"
    )
    return "\n".join(lines)
