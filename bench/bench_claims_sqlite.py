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

Each round prepares both (fresh files), then runs them interleaved: batches
of :data:`BATCH` claims, the ceiling's and the library's in turn (which
goes first alternates), so that both meet the same load on a shared
machine. A round's rate is its claims over the wall time of its batches
(every batch, WAL checkpoints included), its ratio the library's rate over
the ceiling's; the ratio quoted is the median of the rounds' ratios, the
rates the medians of the rounds. The CPU time of each side (its batches'
``time.process_time()``) is quoted too: less sensitive to other processes.
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
from typing import TYPE_CHECKING, Any

from prebuilds import (
    NoClaimablePrebuildsError,
    PresetConfig,
    StoreClaimer,
    Template,
)
from prebuilds.stores import SQLiteStore


if TYPE_CHECKING:
    from collections.abc import Callable


PRESETS = 200
GOAL = 0.5
#: Claims per batch: short enough that the load seldom changes within one
#: pair of batches, long enough that the clocks' resolution does not count.
BATCH = 100
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


class _Side:
    """One side of the race: its claims, its clocks, what it missed."""

    def __init__(
        self,
        claim: Callable[[Any], bool],
        targets: list[Any],
        close: Callable[[], None],
    ) -> None:
        self.claim = claim
        self.close = close
        self.targets = targets
        self.wall = 0.0
        self.cpu = 0.0
        self.misses = 0
        self.latencies: list[float] = []

    def run(self, start: int, stop: int, *, latencies: bool) -> None:
        """Claims *start* to *stop* of the targets, timed as one batch."""
        claim, wall, cpu = self.claim, time.perf_counter(), time.process_time()
        for target in self.targets[start:stop]:
            began = time.perf_counter()
            if not claim(target):
                self.misses += 1
            if latencies:
                self.latencies.append(time.perf_counter() - began)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def _ceiling(path: Path, claims: int, per_preset: int, seed: int) -> _Side:
    """The bare loop: a claim of a random preset, one transaction each."""
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
    user = str(uuid.uuid4())

    def claim(preset: str) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        hit = conn.execute(_CEILING_CLAIM, (user, preset)).fetchone() is not None
        conn.execute("COMMIT")
        return hit

    return _Side(claim, _targets(presets, claims, seed), conn.close)


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


def _library(path: Path, claims: int, per_preset: int, seed: int) -> _Side:
    """StoreClaimer: a claim of a random preset, one thread."""
    store, ids = _store(path, per_preset)
    claimer = StoreClaimer(store)
    now = T0 + timedelta(minutes=1)
    for preset_id in ids:  # a host's claimer has seen its presets before
        claimer.claim(now=now, user_id=uuid.uuid4(), name="warm", preset_id=preset_id)
    user = uuid.uuid4()

    def claim(preset_id: uuid.UUID) -> bool:
        try:
            claimer.claim(now=now, user_id=user, name="u", preset_id=preset_id)
        except NoClaimablePrebuildsError:
            return False
        return True

    return _Side(claim, _targets(ids, claims, seed), store.close)


def _round(tmp: Path, n: int, claims: int, per_preset: int) -> dict[str, Any]:
    """One round: both sides prepared, then run in interleaved batches."""
    ceiling = _ceiling(tmp / f"ceiling-{n}.db", claims, per_preset, n)
    library = _library(tmp / f"store-{n}.db", claims, per_preset, n)
    for batch, start in enumerate(range(0, claims, BATCH)):
        stop = min(start + BATCH, claims)
        first, second = (ceiling, library) if batch % 2 == 0 else (library, ceiling)
        first.run(start, stop, latencies=first is library)
        second.run(start, stop, latencies=second is library)
    ceiling.close()
    library.close()
    latencies = sorted(library.latencies)
    return {
        "ceiling_claims_per_second": claims / ceiling.wall,
        "library_claims_per_second": claims / library.wall,
        "ratio": ceiling.wall / library.wall,
        "ceiling_cpu_us": ceiling.cpu / claims * 1e6,
        "library_cpu_us": library.cpu / claims * 1e6,
        "cpu_ratio": ceiling.cpu / library.cpu,
        "ceiling_misses": ceiling.misses,
        "library_misses": library.misses,
        "library_p50_ms": statistics.median(latencies) * 1000,
        "library_p99_ms": latencies[int(0.99 * len(latencies))] * 1000,
    }


def _profile(path: Path, claims: int, per_preset: int, seed: int) -> str:
    """The library's claims under cProfile: the top of the profile."""
    library = _library(path, claims, per_preset, seed)
    profiler = cProfile.Profile()
    profiler.enable()
    library.run(0, claims, latencies=False)
    profiler.disable()
    library.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure, side by side, medians of five rounds (one with ``quick``)."""
    claims, rounds = (1000, 1) if quick else (3000, 5)
    per_preset = 2 * claims // PRESETS + 3
    with tempfile.TemporaryDirectory() as tmp:
        results = [_round(Path(tmp), n, claims, per_preset) for n in range(rounds)]
        profile = _profile(Path(tmp) / "profiled.db", claims, per_preset, rounds)

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in results))

    ratio = median("ratio")
    return {
        "presets": PRESETS,
        "claims_per_round": claims,
        "rounds": rounds,
        "batch": BATCH,
        "goal": f"StoreClaimer >= {GOAL}x a bare sqlite3 claim loop, 1 thread",
        "ceiling_claims_per_second": median("ceiling_claims_per_second"),
        "library_claims_per_second": median("library_claims_per_second"),
        "library_p50_ms": median("library_p50_ms"),
        "library_p99_ms": median("library_p99_ms"),
        "ceiling_cpu_us": median("ceiling_cpu_us"),
        "library_cpu_us": median("library_cpu_us"),
        "ratio": ratio,
        "cpu_ratio": median("cpu_ratio"),
        "rounds_ratio": [r["ratio"] for r in results],
        "rounds_cpu_ratio": [r["cpu_ratio"] for r in results],
        "rounds_detail": results,
        "goal_met": ratio >= GOAL,
        "profile_top": profile,
    }


def summarize(results: dict[str, Any]) -> str:
    """A human summary of :func:`run`'s results."""
    head = (
        f"claims_sqlite: {results['presets']} presets,"
        f" {results['claims_per_round']} claims x {len(results['rounds_ratio'])}"
        f" rounds, 1 thread, interleaved batches of {results['batch']}"
    )
    library = (
        f"  StoreClaimer       {results['library_claims_per_second']:8.0f}/s"
        f" (p50 {results['library_p50_ms']:.3f} ms,"
        f" p99 {results['library_p99_ms']:.3f} ms)"
    )
    ratios = ", ".join(f"{r:.2f}" for r in results["rounds_ratio"])
    cpu = ", ".join(f"{r:.2f}" for r in results["rounds_cpu_ratio"])
    met = "met" if results["goal_met"] else "NOT met"
    return "\n".join(
        [
            head,
            (
                f"  bare sqlite3 loop  {results['ceiling_claims_per_second']:8.0f}/s"
                f" ({results['ceiling_cpu_us']:.1f} us CPU a claim)"
            ),
            library + f" ({results['library_cpu_us']:.1f} us CPU a claim)",
            f"  ratio {results['ratio']:.2f} (rounds {ratios}); goal >= {GOAL}: {met}",
            f"  CPU ratio {results['cpu_ratio']:.2f} (rounds {cpu})",
        ]
    )
