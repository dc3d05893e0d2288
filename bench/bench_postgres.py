"""
PostgresStore on a throw-away cluster (``tests.postgres_cluster``).

- Claims per second and p50/p99 latency with 1, 4 and 16 concurrent clients
  (threads, one pooled connection each), through ``StoreClaimer.claim`` and
  through ``PostgresStore.claim``, side by side with the machine's ceiling:
  the bare ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`` on a
  plain table of the same size, one autocommit connection per thread; and
  their ratios, library over ceiling (target: StoreClaimer at least 0.5 at
  16 clients).
- Statements per snapshot with 10 and 1,000 presets.
- reconcile_all in steady state (nothing to do) over 1,000 and 10,000
  presets x 1 instance.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from prebuilds import (
    PREBUILDS_OWNER_ID,
    Lifecycle,
    NoClaimablePrebuildsError,
    StoreClaimer,
    StoreReconciler,
)
from prebuilds.stores import PostgresStore
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.postgres_cluster import PostgresCluster


CLIENTS = (1, 4, 16)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
_DATABASE = "bench"

# Templates (one per ten presets), presets of their active version and, per
# preset, ready instances whose start build succeeded: what a pool looks like
# after it filled, written in one transaction.
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

_CEILING_CLAIM = """
    UPDATE {t} SET owner = %s
    WHERE id = (
        SELECT id FROM {t} WHERE owner = 'pool' ORDER BY created_at LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
"""


def _execute(dsn: str, *statements: tuple[str, dict[str, Any] | None]) -> None:
    """Run *statements* in one transaction on a new connection."""
    with psycopg.connect(dsn) as conn:
        for sql, params in statements:
            conn.execute(sql.encode(), params)


def _seed(
    dsn: str, schema: str, *, presets: int, per_preset: int, per_template: int = 10
) -> None:
    """Fill *schema* (a migrated store) with *presets* full pools, and ANALYZE."""
    quoted = f'"{schema}"'
    params = {
        "templates": max(presets // per_template, 1),
        "per_template": min(per_template, presets),
        "per_preset": per_preset,
        "pool": PREBUILDS_OWNER_ID,
        "at": T0,
    }
    _execute(
        dsn,
        *(
            (sql.replace("{s}", quoted), params)
            for sql in (_SEED_TEMPLATES, _SEED_PRESETS, _SEED_READY)
        ),
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("templates", "presets", "instances", "builds"):
            conn.execute(f"ANALYZE {quoted}.{table}".encode())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _race(
    clients: int, claims: int, make_worker: Callable[[int], Callable[[], bool]]
) -> dict[str, Any]:
    """
    *clients* threads make *claims* claims in all, released together.

    ``make_worker(i)`` runs in thread *i* before the start (to open its
    connection) and returns the claim: a callable returning whether it got
    an instance.
    """
    per_client = claims // clients
    ready = threading.Barrier(clients + 1)
    go = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    misses = [0] * clients
    errors: list[BaseException] = []

    def thread(index: int) -> None:
        try:
            claim = make_worker(index)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            errors.append(e)
            ready.abort()
            return
        ready.wait()
        go.wait()
        mine = latencies[index]
        try:
            for _ in range(per_client):
                started = time.perf_counter()
                got = claim()
                mine.append(time.perf_counter() - started)
                misses[index] += not got
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            errors.append(e)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x for per_thread in latencies for x in per_thread]
    return {
        "clients": clients,
        "claims": len(flat),
        "misses": sum(misses),
        "claims_per_second": len(flat) / wall,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": _percentile(flat, 0.99) * 1000,
    }


def _library_round(
    dsn: str, clients: int, claims: int, *, through_claimer: bool
) -> dict[str, Any]:
    """One measurement of the library's claim on a fresh pool of *claims*."""
    schema = f"claims_{uuid.uuid4().hex[:12]}"
    with PostgresStore(dsn, schema=schema, min_size=clients + 1, max_size=20) as store:
        _seed(dsn, schema, presets=1, per_preset=claims, per_template=1)
        (preset,) = store.snapshot(
            now=T0, backoff_lookback=timedelta(hours=1), hard_limit=3
        ).presets
        claimer = StoreClaimer(store)
        now = T0 + timedelta(minutes=1)
        lifecycle = Lifecycle(last_used_at=now)

        def make_worker(index: int) -> Callable[[], bool]:
            user = uuid.uuid4()
            name = f"user-{index}"
            if through_claimer:

                def via_claimer() -> bool:
                    try:
                        claimer.claim(
                            now=now, user_id=user, name=name, preset_id=preset.id
                        )
                    except NoClaimablePrebuildsError:
                        return False
                    return True

                return via_claimer

            def via_store() -> bool:
                instance = store.claim(
                    preset_id=preset.id,
                    user_id=user,
                    name=name,
                    lifecycle=lifecycle,
                    now=now,
                )
                return instance is not None

            return via_store

        result = _race(clients, claims, make_worker)
    _execute(dsn, (f'DROP SCHEMA "{schema}" CASCADE', None))
    return result


def _ceiling_round(dsn: str, clients: int, claims: int) -> dict[str, Any]:
    """The bare SKIP LOCKED claim on a plain table of *claims* rows."""
    table = f"ceiling_{uuid.uuid4().hex[:12]}"
    create = (
        f"CREATE TABLE {table} (id uuid PRIMARY KEY, owner text NOT NULL,"
        " created_at timestamptz NOT NULL)"
    )
    fill = (
        f"INSERT INTO {table} SELECT gen_random_uuid(), 'pool',"  # noqa: S608
        " %(at)s + g * interval '1 millisecond' FROM generate_series(1, %(n)s) g"
    )
    _execute(
        dsn,
        (create, None),
        (f"CREATE INDEX ON {table} (owner, created_at)", None),
        (fill, {"at": T0, "n": claims}),
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ANALYZE {table}".encode())
    sql = _CEILING_CLAIM.replace("{t}", table).encode()
    connections: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def make_worker(index: int) -> Callable[[], bool]:
        conn = psycopg.connect(dsn, autocommit=True)
        with lock:
            connections.append(conn)
        owner = f"user-{index}"

        def claim() -> bool:
            return conn.execute(sql, (owner,)).fetchone() is not None

        return claim

    try:
        return _race(clients, claims, make_worker)
    finally:
        for conn in connections:
            conn.close()
        _execute(dsn, (f"DROP TABLE {table}", None))


def _claims(dsn: str, *, claims: int, rounds: int) -> dict[str, Any]:
    """
    Every variant at every client count, interleaved round by round.

    Each variant's figures are its median round; each ratio is the median of
    the rounds' own ratios (a library round over the ceiling round just
    before it), which the machine's other load affects the least.
    """
    variants: dict[str, Callable[[int], dict[str, Any]]] = {
        "ceiling": lambda c: _ceiling_round(dsn, c, claims),
        "store_claim": lambda c: _library_round(dsn, c, claims, through_claimer=False),
        "store_claimer": lambda c: _library_round(dsn, c, claims, through_claimer=True),
    }
    for run in variants.values():  # warm up: plans, caches, the page cache
        run(4)
    results: dict[str, Any] = {}
    for clients in CLIENTS:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, run in variants.items():
                runs[name].append(run(clients))
        row: dict[str, Any] = {}
        for name, measured in runs.items():
            ordered = sorted(measured, key=lambda r: r["claims_per_second"])
            row[name] = ordered[len(ordered) // 2]
            row[name]["rounds_claims_per_second"] = [
                r["claims_per_second"] for r in measured
            ]
        for name in ("store_claim", "store_claimer"):
            ratios = [
                lib["claims_per_second"] / ceiling["claims_per_second"]
                for lib, ceiling in zip(runs[name], runs["ceiling"], strict=True)
            ]
            row[f"ratio_{name}"] = statistics.median(ratios)
            row[f"rounds_ratio_{name}"] = ratios
        results[f"{clients}_clients"] = row
    return results


def _statements_per_snapshot(dsn: str) -> dict[str, int]:
    counts = {}
    for presets in (10, 1000):
        schema = f"count_{presets}"
        with PostgresStore(dsn, schema=schema) as store:
            _seed(dsn, schema, presets=presets, per_preset=1)
            before = store.statement_count()
            store.snapshot(now=T0, backoff_lookback=timedelta(hours=1), hard_limit=3)
            counts[f"{presets}_presets"] = store.statement_count() - before
    return counts


def _reconcile_steady(dsn: str, presets: int, repeats: int) -> dict[str, Any]:
    """reconcile_all over *presets* full pools of one instance: nothing to do."""
    schema = f"steady_{presets}"
    with PostgresStore(dsn, schema=schema) as store:
        _seed(dsn, schema, presets=presets, per_preset=1)
        clock = FakeClock(T0 + timedelta(minutes=1))
        reconciler = StoreReconciler(
            store, FakeProvisioner(store, clock), clock=clock, submit_timeout=None
        )
        passes = []
        statements = []
        for _ in range(repeats + 1):  # the first pass warms up
            before = store.statement_count()
            stats = reconciler.reconcile_all()
            assert stats.leader, stats
            assert stats.error is None, stats.error
            assert (stats.created, stats.deleted) == (0, 0), stats
            assert stats.presets_total == presets, stats
            passes.append(stats.elapsed.total_seconds())
            statements.append(store.statement_count() - before)
        snapshots = []
        for _ in range(repeats):
            started = time.perf_counter()
            store.snapshot(
                now=clock.now(), backoff_lookback=timedelta(hours=1), hard_limit=3
            )
            snapshots.append(time.perf_counter() - started)
    return {
        "presets": presets,
        "instances_per_preset": 1,
        "reconcile_all_median_s": statistics.median(passes[1:]),
        "reconcile_all_runs_s": passes[1:],
        "statements_per_pass": statements[-1],
        "snapshot_median_s": statistics.median(snapshots),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Start a cluster, measure, stop it; the results."""
    claims, rounds = (1000, 1) if quick else (4000, 5)
    sizes, repeats = ((200, 1000), 5) if quick else ((1000, 10000), 7)
    cluster = PostgresCluster.start()
    try:
        _execute_autocommit(cluster.dsn(), f"CREATE DATABASE {_DATABASE}")
        dsn = cluster.dsn(_DATABASE)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            server_version = str(row[0]) if row else "?"
        results: dict[str, Any] = {
            "server_version": server_version,
            "load_average_at_start": os.getloadavg(),
            "claims_per_round": claims,
            "rounds": rounds,
            "claims": _claims(dsn, claims=claims, rounds=rounds),
            "statements_per_snapshot": _statements_per_snapshot(dsn),
            "reconcile_all_steady": [
                _reconcile_steady(dsn, presets, repeats) for presets in sizes
            ],
            "target": "store claimer >= 0.5x the bare SKIP LOCKED ceiling at 16 clients",
        }
    finally:
        cluster.stop()
    results["load_average_at_end"] = os.getloadavg()
    sixteen = results["claims"]["16_clients"]
    results["meets_target"] = sixteen["ratio_store_claimer"] >= 0.5
    return results


def _execute_autocommit(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.encode())


def summarize(results: dict[str, Any]) -> str:
    """A human summary of :func:`run`'s results."""
    load = (
        f"load average {results['load_average_at_start'][0]:.1f} -> "
        f"{results['load_average_at_end'][0]:.1f}"
    )
    lines = [f"postgres (PostgreSQL {results['server_version']}), {load}:"]
    lines.append(
        "  claims/s (p50/p99 ms)   ceiling               store.claim"
        "           StoreClaimer          ratios"
    )
    for key, row in results["claims"].items():
        cells = [
            f"{row[name]['claims_per_second']:7.0f} ({row[name]['p50_ms']:.2f}/"
            f"{row[name]['p99_ms']:.2f})"
            for name in ("ceiling", "store_claim", "store_claimer")
        ]
        lines.append(
            f"  {key:<22}"
            + "".join(f"{cell:<22}" for cell in cells)
            + f"{row['ratio_store_claim']:.2f} / {row['ratio_store_claimer']:.2f}"
        )
    counts = results["statements_per_snapshot"]
    lines.append(f"  statements per snapshot: {counts}")
    lines.extend(
        f"  reconcile_all {steady['presets']} presets x 1: "
        f"median {steady['reconcile_all_median_s'] * 1000:.0f} ms "
        f"(snapshot {steady['snapshot_median_s'] * 1000:.0f} ms, "
        f"{steady['statements_per_pass']} statements)"
        for steady in results["reconcile_all_steady"]
    )
    lines.append(f"  meets target: {results['meets_target']}")
    return "\n".join(lines)
