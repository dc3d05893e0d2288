"""
SQLite claims next to their ceiling (issue 12's goal: at least 0.5 of it).

- The library: ``StoreClaimer.claim`` on a :class:`SQLiteStore` file, one
  thread, 200 presets, a random preset per claim, after one untimed claim
  per preset (a host's claimer has served its presets before).
- The ceiling: a bare ``sqlite3`` loop doing the equivalent claim on a
  simple pool table of the same size (``id``, ``preset_id``, ``owner``,
  ``created_at``, indexed on ``(preset_id, owner, created_at)``): ``BEGIN
  IMMEDIATE``, ``UPDATE … WHERE id = (SELECT … ORDER BY created_at LIMIT 1)
  RETURNING id``, ``COMMIT``, on the same kind of file (WAL, ``synchronous
  = NORMAL``, as the store sets), same presets, same random choice.

Each round runs the ceiling, then the library (fresh files each), and the
ratio is the median of the rounds' own ratios; the rates quoted are the
medians of the rounds.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import random
import sqlite3
import statistics
import tempfile
import time
import uuid

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prebuilds import (
    NoClaimablePrebuildsError,
    PresetConfig,
    StoreClaimer,
    Template,
)
from prebuilds.stores import SQLiteStore


PRESETS = 200
GOAL = 0.5
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

_CEILING_SCHEMA = """
    CREATE TABLE pool (id TEXT PRIMARY KEY, preset_id TEXT NOT NULL,
        owner TEXT NOT NULL, created_at INTEGER NOT NULL);
    CREATE INDEX pool_claim ON pool (preset_id, owner, created_at);
"""
_CEILING_CLAIM = """
    UPDATE pool SET owner = ?
    WHERE id = (
        SELECT id FROM pool WHERE preset_id = ? AND owner = 'pool'
        ORDER BY created_at LIMIT 1
    )
    RETURNING id
"""


def _targets(presets: list[Any], claims: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    return [rng.choice(presets) for _ in range(claims)]


def _ceiling(path: Path, claims: int, per_preset: int, seed: int) -> dict[str, Any]:
    """The bare loop: *claims* claims of a random preset, one transaction each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_CEILING_SCHEMA)
    presets = [str(uuid.uuid4()) for _ in range(PRESETS)]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO pool VALUES (?, ?, 'pool', ?)",
        (
            (str(uuid.uuid4()), preset, n)
            for preset in presets
            for n in range(per_preset)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    for preset in presets:  # as the library's warm-up claim
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_CEILING_CLAIM, ("warm", preset)).fetchone()
        conn.execute("COMMIT")
    targets = _targets(presets, claims, seed)
    user = str(uuid.uuid4())
    misses = 0
    started = time.perf_counter()
    for preset in targets:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute(_CEILING_CLAIM, (user, preset)).fetchone() is None:
            misses += 1
        conn.execute("COMMIT")
    wall = time.perf_counter() - started
    conn.close()
    return {"claims_per_second": claims / wall, "misses": misses}


def _store(path: Path, per_preset: int) -> tuple[SQLiteStore, list[uuid.UUID]]:
    """A store of *PRESETS* presets with *per_preset* ready instances each."""
    store = SQLiteStore(path)
    ids = []
    for t in range(PRESETS // 10):
        template = Template(
            id=uuid.uuid4(), active_version_id=uuid.uuid4(), name=f"t{t}"
        )
        store.put_template(template)
        for p in range(10):
            config = PresetConfig(
                id=uuid.uuid4(),
                template_id=template.id,
                template_version_id=template.active_version_id,
                desired_instances=per_preset,
                name=f"t{t}-p{p}",
            )
            store.put_preset(config)
            ids.append(config.id)
    for preset_id in ids:
        for _ in range(per_preset):
            request = store.create_prebuild(preset_id, now=T0, name="pb")
            if request is None:  # pragma: no cover - an empty pool always builds
                raise RuntimeError("create_prebuild made nothing")
            store.build_finished(request.build_id, now=T0, succeeded=True)
            store.set_ready(request.instance_id)
    return store, ids


def _library(
    path: Path, claims: int, per_preset: int, seed: int, *, profile: bool = False
) -> dict[str, Any]:
    """StoreClaimer: *claims* claims of a random preset, one thread."""
    store, ids = _store(path, per_preset)
    claimer = StoreClaimer(store)
    now = T0 + timedelta(minutes=1)
    for preset_id in ids:  # a host's claimer has seen its presets before
        claimer.claim(now=now, user_id=uuid.uuid4(), name="warm", preset_id=preset_id)
    targets = _targets(ids, claims, seed)
    user = uuid.uuid4()
    misses = 0
    latencies = []
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for preset_id in targets:
        began = time.perf_counter()
        try:
            claimer.claim(now=now, user_id=user, name="u", preset_id=preset_id)
        except NoClaimablePrebuildsError:
            misses += 1
        latencies.append(time.perf_counter() - began)
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - started
    store.close()
    result: dict[str, Any] = {
        "claims_per_second": claims / wall,
        "misses": misses,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": sorted(latencies)[int(0.99 * len(latencies))] * 1000,
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        result["profile_top"] = out.getvalue()
    return result


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure, side by side, medians of three rounds (one with ``quick``)."""
    claims, rounds = (1000, 1) if quick else (3000, 3)
    per_preset = 2 * claims // PRESETS + 3
    ceilings, libraries, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(rounds):
            ceiling = _ceiling(Path(tmp) / f"ceiling-{n}.db", claims, per_preset, n)
            library = _library(Path(tmp) / f"store-{n}.db", claims, per_preset, n)
            ceilings.append(ceiling)
            libraries.append(library)
            ratios.append(library["claims_per_second"] / ceiling["claims_per_second"])
        profiled = _library(
            Path(tmp) / "profiled.db", claims, per_preset, rounds, profile=True
        )
    ratio = statistics.median(ratios)
    return {
        "presets": PRESETS,
        "claims_per_round": claims,
        "rounds": rounds,
        "goal": f"StoreClaimer >= {GOAL}x a bare sqlite3 claim loop, 1 thread",
        "ceiling_claims_per_second": statistics.median(
            c["claims_per_second"] for c in ceilings
        ),
        "library_claims_per_second": statistics.median(
            r["claims_per_second"] for r in libraries
        ),
        "library_p50_ms": statistics.median(r["p50_ms"] for r in libraries),
        "library_p99_ms": statistics.median(r["p99_ms"] for r in libraries),
        "ratio": ratio,
        "rounds_ratio": ratios,
        "rounds_ceiling": ceilings,
        "rounds_library": libraries,
        "goal_met": ratio >= GOAL,
        "profile_top": profiled["profile_top"],
    }


def summarize(results: dict[str, Any]) -> str:
    """A human summary of :func:`run`'s results."""
    head = (
        f"claims_sqlite: {results['presets']} presets,"
        f" {results['claims_per_round']} claims x {results['rounds']} rounds,"
        " 1 thread"
    )
    library = (
        f"  StoreClaimer       {results['library_claims_per_second']:8.0f}/s"
        f" (p50 {results['library_p50_ms']:.3f} ms,"
        f" p99 {results['library_p99_ms']:.3f} ms)"
    )
    ratios = ", ".join(f"{r:.2f}" for r in results["rounds_ratio"])
    met = "met" if results["goal_met"] else "NOT met"
    return "\n".join(
        [
            head,
            f"  bare sqlite3 loop  {results['ceiling_claims_per_second']:8.0f}/s",
            library,
            f"  ratio {results['ratio']:.2f} (rounds {ratios}); goal >= {GOAL}: {met}",
        ]
    )
