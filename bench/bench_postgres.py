"""
PostgresStore on a throw-away cluster (``tests.postgres_cluster``).

- Claims per second, p50 and p99, through ``StoreClaimer.claim`` with 1 and
  16 client threads (one pooled connection each), 200 presets and a random
  preset per claim (after one untimed claim per preset, as a claimer that
  has served its presets before), with the server's execution time of the
  claim's statement (``pg_stat_statements``) and the client's CPU per
  claim, next to the C ceiling: ``pgbench`` running the bare
  ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`` claim on a plain
  table, same cluster, same run (its p50 and p99 from pgbench's
  per-transaction log). Five rounds; each ratio is the median of the
  rounds' own ratios, library over the pgbench round just before it. Issue
  12's goals, written to the JSON as ``goals`` (figure, ceiling, ratio,
  met): claims/s at least 0.5 of pgbench's at 1 and at 16 clients, and a
  p99 at 16 clients at most 2 times pgbench's.
- Where the client's time goes: ``cProfile`` of the claim threads, one
  extra run per client count (``client_profile``).
- Statements per ``read_pool`` with 10 and 1,000 presets, and per steady
  ``reconcile_all`` pass.
- ``reconcile_all`` in steady state (nothing to do) over 1,000 and 10,000
  presets of one instance each, median of the passes after a first one.

Before and after, side by side: with ``PREBUILDS_BENCH_BEFORE`` set to a git
revision (``main``), every measurement also runs on that revision's library
(``git archive`` into a temporary directory, first on ``PYTHONPATH``),
interleaved round by round with this checkout's. Each measurement runs in a
worker process of its own (``python bench/bench_postgres.py TASK``), which
only uses what both sides share (``StoreClaimer``, ``StoreReconciler``,
``PostgresStore``, ``statement_count``; ``read_pool``, or ``snapshot``
before it existed).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parent.parent
CLIENTS = (1, 16)
PRESETS = 200
GOAL_RATE = 0.5  # claims/s at least this share of pgbench's
GOAL_P99 = 2.0  # p99 at most this multiple of pgbench's
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
_DATABASE = "bench"

# Templates (one per ten presets), presets of their active version and, per
# preset, ready instances whose start build succeeded: what a pool looks like
# after it filled, written in one transaction. Columns both schema versions
# have; the trigger fills in each instance's latest build.
_SEED_TEMPLATES = """
    INSERT INTO {s}.templates (id, active_version_id, name)
    SELECT gen_random_uuid(), gen_random_uuid(), 't' || g
    FROM generate_series(1, %(templates)s) g
"""
_SEED_PRESETS = """
    INSERT INTO {s}.presets (id, template_id, template_version_id,
        desired_instances, name)
    SELECT gen_random_uuid(), t.id, t.active_version_id, %(per_preset)s,
        t.name || '-p' || g
    FROM {s}.templates t CROSS JOIN generate_series(1, %(per_template)s) g
"""
_SEED_READY = """
    WITH made AS (
        INSERT INTO {s}.instances (id, preset_id, template_id, template_version_id,
            owner_id, name, created_at, ready, last_used_at)
        SELECT gen_random_uuid(), p.id, p.template_id, p.template_version_id,
            %(pool)s, 'pb-' || g, %(at)s + g * interval '1 millisecond', true, %(at)s
        FROM {s}.presets p CROSS JOIN generate_series(1, %(per_preset)s) g
        RETURNING id, preset_id, template_version_id, created_at
    )
    INSERT INTO {s}.builds (id, instance_id, preset_id, template_version_id,
        transition, status, build_number, initiator_id, created_at, started_at,
        finished_at)
    SELECT gen_random_uuid(), id, preset_id, template_version_id, 'start',
        'succeeded', 1, %(pool)s, created_at, created_at, created_at
    FROM made
"""

# The ceiling: the bare claim, as pgbench runs it (prepared).
_CEILING_TABLE = """
    CREATE TABLE ceiling (id uuid PRIMARY KEY, owner text NOT NULL,
        created_at timestamptz NOT NULL);
    CREATE INDEX ON ceiling (owner, created_at);
    INSERT INTO ceiling SELECT gen_random_uuid(), 'pool',
        '2024-01-01'::timestamptz + g * interval '1 millisecond'
    FROM generate_series(1, {rows}) g;
    ANALYZE ceiling;
"""
_CEILING_SCRIPT = """\\set user random(1, 1000000)
UPDATE ceiling SET owner = 'user-' || :user
WHERE id = (
    SELECT id FROM ceiling WHERE owner = 'pool' ORDER BY created_at LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id;
"""


# -- the worker: one measurement of one library, in a process of its own ---------------
def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _seed(dsn: str, schema: str, *, presets: int, per_preset: int) -> None:
    """Fill *schema* (a migrated store) with *presets* full pools, and ANALYZE."""
    import psycopg  # noqa: PLC0415

    from prebuilds import PREBUILDS_OWNER_ID  # noqa: PLC0415

    quoted = f'"{schema}"'
    per_template = min(10, presets)
    params = {
        "templates": max(presets // per_template, 1),
        "per_template": per_template,
        "per_preset": per_preset,
        "pool": PREBUILDS_OWNER_ID,
        "at": T0,
    }
    with psycopg.connect(dsn) as conn:
        for sql in (_SEED_TEMPLATES, _SEED_PRESETS, _SEED_READY):
            conn.execute(sql.replace("{s}", quoted).encode(), params)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("templates", "presets", "instances", "builds"):
            conn.execute(f"ANALYZE {quoted}.{table}".encode())


def _read(store: Any) -> Any:
    """One consistent read of every pool, whichever the library's seam."""
    if hasattr(store, "read_pool"):
        return store.read_pool()
    return store.snapshot(now=T0, backoff_lookback=timedelta(hours=1), hard_limit=3)


def _preset_ids(store: Any) -> list[uuid.UUID]:
    read = _read(store)
    return sorted(getattr(p, "config", p).id for p in read.presets)


def _profiled(
    profiles: list[cProfile.Profile], function: Callable[[int], None], index: int
) -> None:
    """*function(index)* under a profiler of its own, kept in *profiles*."""
    profiler = cProfile.Profile()
    profiles.append(profiler)
    profiler.runcall(function, index)


def _top(profiles: list[cProfile.Profile]) -> str:
    """The 20 functions of *profiles* that took the most time of their own."""
    out = io.StringIO()
    pstats.Stats(*profiles, stream=out).sort_stats("tottime").print_stats(20)
    return out.getvalue()


def _claims(task: dict[str, Any]) -> dict[str, Any]:
    """*claims* claims through StoreClaimer by *clients* threads, released together."""
    from prebuilds import NoClaimablePrebuildsError, StoreClaimer  # noqa: PLC0415
    from prebuilds.stores import PostgresStore  # noqa: PLC0415

    clients, claims, dsn = task["clients"], task["claims"], task["dsn"]
    schema = f"claims_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(dsn, schema=schema, min_size=clients + 1, max_size=20)
    _seed(dsn, schema, presets=PRESETS, per_preset=2 * claims // PRESETS + 3)
    presets = _preset_ids(store)
    claimer = StoreClaimer(store)
    now = T0 + timedelta(minutes=1)
    for preset_id in presets:  # a host's claimer has seen its presets before
        claimer.claim(now=now, user_id=uuid.uuid4(), name="warm", preset_id=preset_id)
    per_client = claims // clients
    # A client that fails before the start breaks the barrier for all (a
    # timeout, not a hang).
    ready = threading.Barrier(clients + 1, timeout=120)
    go = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    misses = [0] * clients
    errors: list[BaseException] = []

    profiles: list[cProfile.Profile] = []

    def thread(index: int) -> None:
        user, name = uuid.uuid4(), f"user-{index}"
        rng = random.Random(index)
        targets = [rng.choice(presets) for _ in range(per_client)]
        mine = latencies[index]
        ready.wait()
        go.wait()
        try:
            for preset_id in targets:
                started = time.perf_counter()
                try:
                    claimer.claim(now=now, user_id=user, name=name, preset_id=preset_id)
                except NoClaimablePrebuildsError:
                    misses[index] += 1
                mine.append(time.perf_counter() - started)
        except BaseException as e:  # noqa: BLE001 - reported by the parent
            errors.append(e)

    # One profiler at a time: from Python 3.12 on a second one in another
    # thread raises ("Another profiling tool is already active"), so only the
    # first client is profiled (the others load the server as before).
    profiled = partial(_profiled, profiles, thread)
    threads = [
        threading.Thread(
            target=profiled if task.get("profile") and i == 0 else thread, args=(i,)
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    cpu = time.process_time()
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    store.close()
    if errors:
        raise errors[0]
    flat = [x for per_thread in latencies for x in per_thread]
    if profiles:
        return {"clients": clients, "profile_top": _top(profiles)}
    return {
        "claims": len(flat),
        "misses": sum(misses),
        "claims_per_second": len(flat) / wall,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": _percentile(flat, 0.99) * 1000,
        "client_cpu_us_per_claim": cpu / len(flat) * 1e6,
    }


def _reads(task: dict[str, Any]) -> dict[str, Any]:
    """Statements per read of every pool, with 10 and with 1,000 presets."""
    from prebuilds.stores import PostgresStore  # noqa: PLC0415

    counts = {}
    for presets in (10, 1000):
        schema = f"reads_{uuid.uuid4().hex[:12]}"
        with PostgresStore(task["dsn"], schema=schema) as store:
            _seed(task["dsn"], schema, presets=presets, per_preset=1)
            before = store.statement_count()
            _read(store)
            counts[f"{presets}_presets"] = store.statement_count() - before
    return counts


def _steady(task: dict[str, Any]) -> dict[str, Any]:
    """reconcile_all over *presets* full pools of one instance: nothing to do."""
    from prebuilds import StoreReconciler  # noqa: PLC0415
    from prebuilds.stores import PostgresStore  # noqa: PLC0415
    from prebuilds.testing import FakeClock, FakeProvisioner  # noqa: PLC0415

    presets, repeats, dsn = task["presets"], task["repeats"], task["dsn"]
    schema = f"steady_{uuid.uuid4().hex[:12]}"
    with PostgresStore(dsn, schema=schema) as store:
        _seed(dsn, schema, presets=presets, per_preset=1)
        clock = FakeClock(T0 + timedelta(minutes=1))
        reconciler = StoreReconciler(
            store, FakeProvisioner(store, clock), clock=clock, submit_timeout=None
        )
        passes, statements = [], []
        for _ in range(repeats + 1):  # the first pass warms up
            before = store.statement_count()
            stats = reconciler.reconcile_all()
            if not stats.leader or stats.error or stats.created or stats.deleted:
                raise RuntimeError(f"not a steady pass: {stats}")
            passes.append(stats.elapsed.total_seconds())
            statements.append(store.statement_count() - before)
        reads = []
        for _ in range(repeats):
            started = time.perf_counter()
            _read(store)
            reads.append(time.perf_counter() - started)
    return {
        "reconcile_all_median_s": statistics.median(passes[1:]),
        "reconcile_all_runs_s": passes[1:],
        "statements_per_pass": statements[-1],
        "read_median_s": statistics.median(reads),
    }


_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "claims": _claims,
    "reads": _reads,
    "steady": _steady,
}


# -- the parent: the cluster, the libraries, the rounds ----------------------------------
class _Library:
    """One side of the comparison: a tree whose ``prebuilds`` the workers import."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def run(self, kind: str, **task: Any) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": str(self.path)}
        out = subprocess.run(  # noqa: S603 - this file, run by this Python
            [sys.executable, str(Path(__file__).resolve()), kind, json.dumps(task)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1800,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} {kind} failed:\n{out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result


def _export(revision: str, into: Path) -> Path:
    """The ``prebuilds`` package of *revision*, exported into *into*."""
    archive = subprocess.run(  # noqa: S603 - a revision named by whoever runs it
        ["git", "-C", str(ROOT), "archive", revision, "prebuilds"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _pgbench(cluster: Any, dsn: str, clients: int, claims: int) -> dict[str, Any]:
    """
    The bare claim, *claims* transactions by *clients* pgbench clients; the
    rate pgbench reports, and p50/p99 from its per-transaction log (``-l``).
    """
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ceiling")
        conn.execute(_CEILING_TABLE.format(rows=claims + 100).encode())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "claim.sql"
        script.write_text(_CEILING_SCRIPT, encoding="utf-8")
        out = subprocess.run(  # noqa: S603 - the cluster's own pgbench
            [
                str(cluster.bindir / "pgbench"),
                "-n",
                "-M",
                "prepared",
                "-c",
                str(clients),
                "-j",
                str(min(clients, os.cpu_count() or 1)),
                "-t",
                str(claims // clients),
                "-f",
                str(script),
                "-l",
                "--log-prefix",
                str(Path(tmp) / "txn"),
                "-h",
                str(cluster.socketdir),
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                _DATABASE,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            cwd=tmp,
        ).stdout
        # One line per transaction: client, number, latency (µs), script, ...
        latencies = [
            int(line.split()[2]) / 1e6
            for log in Path(tmp).glob("txn.*")
            for line in log.read_text(encoding="utf-8").splitlines()
        ]
    tps = re.search(r"tps = ([\d.]+)", out)
    if tps is None or not latencies:
        raise RuntimeError(f"pgbench said:\n{out}")
    return {
        "claims_per_second": float(tps[1]),
        "claims": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


def _server_time(dsn: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """
    *measure*'s result, with the server's mean execution time and shared
    buffers hit of the statement it ran most (``pg_stat_statements``): the
    claim's.
    """
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        result = measure()
        row = conn.execute(
            "SELECT calls, total_exec_time / calls, shared_blks_hit::float8 / calls"
            " FROM pg_stat_statements ORDER BY calls DESC LIMIT 1"
        ).fetchone()
    if row is not None:
        result["server_exec_us_per_claim"] = float(row[1]) * 1000
        # Steadier than the time on a shared machine: the work, not the wait.
        result["server_buffers_per_claim"] = float(row[2])
    return result


def _rounds(
    cluster: Any, dsn: str, libraries: list[_Library], claims: int, rounds: int
) -> dict[str, Any]:
    """Every client count: per round pgbench, then each library (order alternating)."""
    results: dict[str, Any] = {}
    for clients in CLIENTS:
        runs: dict[str, list[dict[str, Any]]] = {"pgbench": []}
        runs.update({lib.name: [] for lib in libraries})
        for n in range(rounds):
            ceiling = partial(_pgbench, cluster, dsn, clients, claims)
            runs["pgbench"].append(_server_time(dsn, ceiling))
            for lib in libraries if n % 2 == 0 else libraries[::-1]:
                measure = partial(
                    lib.run, "claims", dsn=dsn, clients=clients, claims=claims
                )
                runs[lib.name].append(_server_time(dsn, measure))
        row: dict[str, Any] = {}
        for name, measured in runs.items():
            ordered = sorted(measured, key=lambda r: r["claims_per_second"])
            row[name] = dict(ordered[len(ordered) // 2])
            row[name]["rounds_claims_per_second"] = [
                round(r["claims_per_second"]) for r in measured
            ]
            row[name]["median_p99_ms"] = statistics.median(
                r["p99_ms"] for r in measured
            )
        for lib in libraries:
            ratios = [
                mine["claims_per_second"] / ceiling["claims_per_second"]
                for mine, ceiling in zip(runs[lib.name], runs["pgbench"], strict=True)
            ]
            row[f"ratio_{lib.name}"] = statistics.median(ratios)
            row[f"p99_over_pgbench_{lib.name}"] = statistics.median(
                mine["p99_ms"] / ceiling["p99_ms"]
                for mine, ceiling in zip(runs[lib.name], runs["pgbench"], strict=True)
            )
        if len(libraries) == 2:
            before, after = libraries
            row["after_over_before"] = statistics.median(
                a["claims_per_second"] / b["claims_per_second"]
                for a, b in zip(runs[after.name], runs[before.name], strict=True)
            )
        results[f"{clients}_clients"] = row
    return results


def run(*, quick: bool = False) -> dict[str, Any]:
    """Start a cluster, measure, stop it; the results."""
    import psycopg  # noqa: PLC0415

    from tests.postgres_cluster import PostgresCluster  # noqa: PLC0415

    claims, rounds = (1000, 1) if quick else (4000, 5)
    sizes, repeats = ((200, 1000), 3) if quick else ((1000, 10000), 7)
    before = os.environ.get("PREBUILDS_BENCH_BEFORE")
    with tempfile.TemporaryDirectory() as tmp:
        libraries = [_Library("after", ROOT)]
        if before:
            libraries.insert(0, _Library("before", _export(before, Path(tmp))))
        cluster = PostgresCluster.start()
        try:
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {_DATABASE}".encode())
                conn.execute(
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
                )
            cluster.restart()
            dsn = cluster.dsn(_DATABASE)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            for lib in libraries:  # warm up: plans, caches, the page cache
                lib.run("claims", dsn=dsn, clients=4, claims=claims)
            results: dict[str, Any] = {
                "server_version": str(row[0]) if row else "?",
                "before": before,
                "load_average_at_start": os.getloadavg(),
                "claims_per_round": claims,
                "presets": PRESETS,
                "rounds": rounds,
                "claims": _rounds(cluster, dsn, libraries, claims, rounds),
                "client_profile": {
                    f"{clients}_clients": libraries[-1].run(
                        "claims", dsn=dsn, clients=clients, claims=claims, profile=True
                    )["profile_top"]
                    for clients in CLIENTS
                },
                "statements_per_read": {
                    lib.name: lib.run("reads", dsn=dsn) for lib in libraries
                },
                "reconcile_all_steady": {
                    str(presets): {
                        lib.name: lib.run(
                            "steady", dsn=dsn, presets=presets, repeats=repeats
                        )
                        for lib in libraries
                    }
                    for presets in sizes
                },
            }
        finally:
            cluster.stop()
    results["load_average_at_end"] = os.getloadavg()
    results["goals"] = _goals(results["claims"])
    results["meets_target"] = all(goal["met"] for goal in results["goals"])
    return results


def _goals(claims: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's claim goals: figure, ceiling, ratio, met or not (this checkout)."""
    goals = []
    for clients in CLIENTS:
        row = claims[f"{clients}_clients"]
        goals.append(
            {
                "goal": f"StoreClaimer >= {GOAL_RATE}x pgbench, {clients} client(s)",
                "figure": row["after"]["claims_per_second"],
                "ceiling": row["pgbench"]["claims_per_second"],
                "ratio": row["ratio_after"],
                "met": row["ratio_after"] >= GOAL_RATE,
            }
        )
    row = claims[f"{max(CLIENTS)}_clients"]
    goals.append(
        {
            "goal": f"StoreClaimer p99 <= {GOAL_P99}x pgbench's p99, {max(CLIENTS)} clients",
            "figure": row["after"]["median_p99_ms"],
            "ceiling": row["pgbench"]["median_p99_ms"],
            "ratio": row["p99_over_pgbench_after"],
            "met": row["p99_over_pgbench_after"] <= GOAL_P99,
        }
    )
    return goals


def summarize(results: dict[str, Any]) -> str:
    """A human summary of :func:`run`'s results."""
    load = (
        f"load average {results['load_average_at_start'][0]:.1f} -> "
        f"{results['load_average_at_end'][0]:.1f}"
    )
    names = [n for n in ("before", "after") if n in results["statements_per_read"]]
    lines = [
        (
            f"postgres (PostgreSQL {results['server_version']}), {load};"
            f" before = {results['before'] or '(not measured)'}:"
        )
    ]
    lines.append(
        f"  claims/s via StoreClaimer, {results['presets']} presets"
        " (p50/p99 ms) [server statement, buffers / client CPU per claim]   pgbench"
        + "".join(f"{n:>44}" for n in names)
        + "   ratios"
    )
    for key, row in results["claims"].items():
        ceiling = row["pgbench"]
        server = ceiling.get("server_exec_us_per_claim", 0)
        buffers = ceiling.get("server_buffers_per_claim", 0)
        cells = [
            (
                f"{ceiling['claims_per_second']:7.0f} ({ceiling['p50_ms']:.2f}/"
                f"{ceiling['p99_ms']:.2f}) [{server:.0f} us, {buffers:.1f}]"
            )
        ]
        cells += [
            f"{row[n]['claims_per_second']:7.0f} ({row[n]['p50_ms']:.2f}/"
            f"{row[n]['p99_ms']:.2f}) [{row[n].get('server_exec_us_per_claim', 0):.0f}"
            f" us, {row[n].get('server_buffers_per_claim', 0):.1f}"
            f" / {row[n]['client_cpu_us_per_claim']:.0f} us]"
            for n in names
        ]
        ratios = " / ".join(
            f"{row[f'ratio_{n}']:.2f} (p99 x{row[f'p99_over_pgbench_{n}']:.1f})"
            for n in names
        )
        if "after_over_before" in row:
            ratios += f"; after/before {row['after_over_before']:.2f}"
        lines.append(
            f"  {key:<12}" + "".join(f"{c:>44}" for c in cells) + f"   {ratios}"
        )
    for name in names:
        counts = results["statements_per_read"][name]
        lines.append(f"  statements per read ({name}): {counts}")
    for presets, per_lib in results["reconcile_all_steady"].items():
        lines.extend(
            f"  reconcile_all {presets} presets x 1 ({name}): median"
            f" {steady['reconcile_all_median_s'] * 1000:.0f} ms (read"
            f" {steady['read_median_s'] * 1000:.0f} ms,"
            f" {steady['statements_per_pass']} statements)"
            for name, steady in per_lib.items()
        )
    lines.extend(
        f"  goal: {g['goal']}: {g['figure']:.2f} vs {g['ceiling']:.2f},"
        f" ratio {g['ratio']:.2f}: {'met' if g['met'] else 'NOT met'}"
        for g in results["goals"]
    )
    return "\n".join(lines)


if __name__ == "__main__":
    # A worker: python bench/bench_postgres.py TASK JSON -> one JSON line.
    import prebuilds

    measured = _TASKS[sys.argv[1]](json.loads(sys.argv[2]))
    measured["library"] = str(Path(prebuilds.__file__).parent)
    print(json.dumps(measured))
