"""
Many control-plane replicas on one PostgreSQL schema: one leader per pass,
claims that never collide, a replica killed in the middle of a pass, two
replicas upgrading the schema at once, and claims that cost the same
however many came before.

Each "replica" is its own PostgresStore (its own pool of connections) on the
same schema, as separate processes would be; the kill test runs the victim
in a real child process and SIGKILLs it.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

from collections import Counter
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import psycopg

from typing_extensions import Self

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildStatus,
    NoClaimablePrebuildsError,
    PresetConfig,
    StoreClaimer,
    StoreReconciler,
    Template,
    Transition,
    derive,
)
from prebuilds.stores._postgres import SCHEMA_VERSION, PostgresStore
from prebuilds.stores._postgres.claim import CLAIM
from prebuilds.stores._postgres.schema import lock_key
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.postgres_cluster import PostgresStoreFactory, fresh_schema_name
from tests.test_postgres_store import T0, bulk_ready, claim, raw


LOOKBACK = timedelta(hours=1)
WAIT = 60.0  # seconds: generous, the machine may be busy with other suites
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ----------------------------------------------------------------------
def make_template(store: PostgresStore) -> Template:
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="t")
    store.put_template(template)
    return template


def make_preset(
    store: PostgresStore, template: Template, desired: int, name: str = "p"
) -> PresetConfig:
    config = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=desired,
        name=name,
    )
    store.put_preset(config)
    return config


def pool_counts(
    store: PostgresStore, clock: FakeClock
) -> tuple[Counter[uuid.UUID], Counter[uuid.UUID]]:
    """Running and starting prebuilds per preset, from one read."""
    snapshot = derive(
        store.read_pool(), now=clock.now(), backoff_lookback=LOOKBACK, hard_limit=3
    )
    running = Counter(p.preset_id for p in snapshot.running)
    starting: Counter[uuid.UUID] = Counter()
    for row in snapshot.in_progress:
        if row.transition is Transition.START:
            starting[row.preset_id] += row.count
    return running, starting


def start_builds(store: PostgresStore) -> Counter[uuid.UUID]:
    """Start builds ever written, per preset."""
    rows = raw(
        store,
        "SELECT preset_id, count(*) FROM {s}.builds WHERE transition = 'start'"
        " GROUP BY preset_id",
    )
    return Counter(dict(rows))


def assert_no_half_state(store: PostgresStore) -> None:
    """Every instance has builds numbered 1..n, every build an instance."""
    assert raw(
        store,
        """
        SELECT count(*) FROM {s}.instances i
        WHERE NOT EXISTS (SELECT 1 FROM {s}.builds b WHERE b.instance_id = i.id)
        """,
    ) == [(0,)]
    assert raw(
        store,
        """
        SELECT count(*) FROM {s}.builds b
        LEFT JOIN {s}.instances i ON i.id = b.instance_id
        WHERE i.id IS NULL OR b.preset_id <> i.preset_id
        """,
    ) == [(0,)]
    assert raw(
        store,
        """
        SELECT count(*) FROM (
            SELECT instance_id FROM {s}.builds GROUP BY instance_id
            HAVING min(build_number) <> 1 OR max(build_number) <> count(*)
        ) gaps
        """,
    ) == [(0,)]
    # A deleted instance's last build is a succeeded delete.
    assert raw(
        store,
        """
        SELECT count(*) FROM {s}.instances i
        JOIN LATERAL (
            SELECT transition, status FROM {s}.builds b
            WHERE b.instance_id = i.id ORDER BY build_number DESC LIMIT 1
        ) latest ON true
        WHERE i.deleted <> (latest.transition = 'delete' AND latest.status = 'succeeded')
        """,
    ) == [(0,)]


# -- 1. claims racing a refilling reconciler --------------------------------------------
class WatchDeletes:
    """A replica's store (a proxy) that counts deletes; a hook runs before the next."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.before_delete: Any = None
        self.attempts = 0
        self.won = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete_prebuild(
        self, instance_id: uuid.UUID, *, now: Any, lease: Any = None
    ) -> Any:
        hook, self.before_delete = self.before_delete, None
        if hook is not None:
            hook()
        request = self._store.delete_prebuild(instance_id, now=now, lease=lease)
        self.attempts += 1
        self.won += request is not None
        return request


class DrainRace:
    """
    Claimer threads drain one preset while a reconciler thread refills it.

    Claimers that find the pool empty sleep until the reconciler wakes them
    (a condition variable and a generation number, no polling), and stop at
    the first miss once the reconciler is done. The reconciler runs at least
    *min_passes* passes and until the claims reach *seeded*.
    """

    def __init__(
        self,
        *,
        claimer: StoreClaimer,
        reconciler: StoreReconciler,
        store: WatchDeletes,
        provisioner: FakeProvisioner,
        clock: FakeClock,
        config: PresetConfig,
        threads: int,
        seeded: int,
        min_passes: int,
    ) -> None:
        self.claimer = claimer
        self.reconciler = reconciler
        self.store = store
        self.provisioner = provisioner
        self.clock = clock
        self.config = config
        self.seeded = seeded
        self.min_passes = min_passes
        self.users = [uuid.uuid4() for _ in range(threads)]
        self.claimed: list[list[uuid.UUID]] = [[] for _ in range(threads)]
        self.misses = [0] * threads
        self.errors: list[BaseException] = []
        self.passes: list[Any] = []
        self._refilled = threading.Condition()
        self._generation = 0
        self._done = threading.Event()
        self._start = threading.Barrier(threads + 1)
        self._lock = threading.Lock()
        self._total = 0

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._guard, args=(self._claim_loop, i))
            for i in range(len(self.users))
        ]
        workers.append(threading.Thread(target=self._guard, args=(self._reconcile,)))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        assert not any(w.is_alive() for w in workers)

    def _guard(self, target: Any, *args: Any) -> None:
        try:
            self._start.wait(timeout=WAIT)
            target(*args)
        except BaseException as e:
            self.errors.append(e)
        finally:
            if target == self._reconcile:
                self._done.set()
                self._wake()

    def _wake(self) -> None:
        with self._refilled:
            self._generation += 1
            self._refilled.notify_all()

    def _moved(self, seen: int) -> bool:
        """Whether a refill happened since *seen*, or the reconciler is done."""
        return self._generation != seen or self._done.is_set()

    def _claim_loop(self, index: int) -> None:
        for _ in range(4000):  # a cap on attempts, far above the need
            finished = self._done.is_set()
            with self._refilled:
                seen = self._generation
            try:
                instance_id = self.claimer.claim(
                    now=self.clock.now(),
                    user_id=self.users[index],
                    name=f"u{index}",
                    preset_id=self.config.id,
                )
            except NoClaimablePrebuildsError:
                self.misses[index] += 1
                if finished:
                    return  # the reconciler is done and the pool is empty
                with self._refilled:  # sleep until the next refill
                    self._refilled.wait_for(partial(self._moved, seen), timeout=WAIT)
                continue
            assert isinstance(instance_id, uuid.UUID)
            self.claimed[index].append(instance_id)
            with self._lock:
                self._total += 1
        self.errors.append(AssertionError("claim attempts capped"))

    def _reconcile(self) -> None:
        for number in range(60):
            with self._lock:
                drained = self._total >= self.seeded
            if drained and number >= self.min_passes:
                return
            # The host resizes the pool before each pass, as an autoscaler
            # would: up by at most 200, or every third pass down by half.
            # Once the seed is drained the claimers sleep until a refill;
            # before a halving pass they are woken by its first delete, so
            # that claims and deletes start together on the same oldest
            # instances.
            shrink = number % 3 == 1
            (ready,) = raw(
                self.store._store,
                "SELECT count(*) FROM {s}.instances"
                " WHERE owner_id = %(pool)s AND NOT deleted AND ready",
                {"pool": PREBUILDS_OWNER_ID},
            )
            desired = ready[0] // 2 if shrink else min(ready[0] + 200, self.seeded)
            self.store.put_preset(attrs.evolve(self.config, desired_instances=desired))
            self.store.before_delete = self._wake if shrink else None
            self.passes.append(self.reconciler.reconcile_all())
            self.clock.advance(timedelta(seconds=30))
            self.provisioner.process()
            if (number + 1) % 3 != 1:  # a halving pass wakes them itself
                self._wake()


def test_claims_drain_5000_while_a_reconciler_refills(
    make_postgres_store: PostgresStoreFactory,
) -> None:
    """
    16 claimers drain 5,000 ready prebuilds while a reconciler on its own
    connection refills the pool and, every third pass, halves it, deleting
    the oldest instances: the very ones the claims go for.

    No instance is claimed twice, no claimed instance gets a delete build,
    every claim returns an ID or raises NoClaimablePrebuildsError, and every
    instance ends up claimed or deleted.
    """
    threads, seeded = 16, 5000
    schema = fresh_schema_name()
    claim_store = make_postgres_store(schema=schema, max_size=threads + 4)
    reconcile_store = make_postgres_store(schema=schema, max_size=6)
    config = make_preset(claim_store, make_template(claim_store), seeded)
    bulk_ready(claim_store, seeded)
    clock = FakeClock()
    provisioner = FakeProvisioner(reconcile_store, clock)
    watched = WatchDeletes(reconcile_store)
    race = DrainRace(
        claimer=StoreClaimer(claim_store),
        reconciler=StoreReconciler(
            watched,
            provisioner,
            clock=clock,
            submit_timeout=None,
            build_timeout=None,
            max_workers=1,
        ),
        store=watched,
        provisioner=provisioner,
        clock=clock,
        config=config,
        threads=threads,
        seeded=seeded,
        min_passes=8,
    )

    race.run()

    assert race.errors == []
    assert all(s.leader and s.error is None for s in race.passes), race.passes
    created = sum(s.created for s in race.passes)
    deleted = sum(s.deleted for s in race.passes)
    # The reconciler really ran alongside: it refilled and it tried to delete.
    assert created > 0
    assert watched.attempts > 0
    assert deleted == watched.won
    ids = [i for per_thread in race.claimed for i in per_thread]
    assert len(ids) == len(set(ids))
    owners = dict(raw(claim_store, "SELECT id, owner_id FROM {s}.instances"))
    for user, per_thread in zip(race.users, race.claimed, strict=True):
        assert all(owners[i] == user for i in per_thread)
    # No claimed instance ever got a delete build; every delete is the pool's.
    delete_targets = {
        b.instance_id
        for b in claim_store.list_builds()
        if b.transition is Transition.DELETE
    }
    assert set() == delete_targets & set(ids)
    assert all(owners[i] == PREBUILDS_OWNER_ID for i in delete_targets)
    assert deleted == len(delete_targets)
    # Everything seeded or built went one way: claimed or deleted.
    assert len(owners) == seeded + created
    assert set(owners) == set(ids) | delete_targets
    assert provisioner.queued == 0
    assert_no_half_state(claim_store)
    print(  # noqa: T201
        f"\n[replicas] {len(ids)} claims ({seeded} seeded + {created} refilled"
        f" - {deleted} deleted of {watched.attempts} tried) over"
        f" {len(race.passes)} passes, {sum(race.misses)} misses"
    )


# -- 2. two reconcilers, one leader per pass ---------------------------------------------
class Gate:
    """A wait that fails loudly instead of hanging a test."""

    def __init__(self) -> None:
        self._semaphore = threading.Semaphore(0)

    def release(self) -> None:
        self._semaphore.release()

    def acquire(self) -> None:
        if not self._semaphore.acquire(timeout=WAIT):
            raise TimeoutError("the other replica never tried to lead")


class HoldLeadership:
    """
    A replica's store (a proxy) whose leader pass waits, lock held, until the
    other replica has tried to lead and failed.

    The reconciler calls ``is_paused`` first thing in every pass it leads, so
    the wait sits inside the leader scope: the two replicas are then sure to
    overlap, and "exactly one leader" is a deterministic outcome, not a race
    that a fast pass could win by releasing the lock early.
    """

    def __init__(self, store: PostgresStore, tried: Gate) -> None:
        self._store = store
        self._tried = tried

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def is_paused(self) -> bool:
        self._tried.acquire()
        return self._store.is_paused()


class Lockstep:
    """Two reconcilers that call reconcile_all together, tick after tick."""

    def __init__(self, reconcilers: list[StoreReconciler], tried: Gate) -> None:
        self._reconcilers = reconcilers
        self._tried = tried
        self._start = threading.Barrier(len(reconcilers) + 1, timeout=WAIT)
        self._end = threading.Barrier(len(reconcilers) + 1, timeout=WAIT)
        self.results: list[list[Any]] = [[] for _ in reconcilers]
        self.errors: list[BaseException] = []
        self._workers = [
            threading.Thread(target=self._replica, args=(i,))
            for i in range(len(reconcilers))
        ]

    def __enter__(self) -> Self:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._start.abort()
        self._end.abort()
        for worker in self._workers:
            worker.join(timeout=WAIT)

    def tick(self) -> list[Any]:
        """Release the replicas for one pass each; their stats."""
        self._start.wait()
        self._end.wait()
        return [r[-1] for r in self.results]

    def _replica(self, index: int) -> None:
        try:
            while True:
                self._start.wait()
                stats = self._reconcilers[index].reconcile_all()
                if not stats.leader:
                    self._tried.release()
                self.results[index].append(stats)
                self._end.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            self.errors.append(e)


def test_two_reconcilers_one_leader_per_pass(
    make_postgres_store: PostgresStoreFactory,
) -> None:
    """
    Two replicas call reconcile_all at the same moment, 200 times: exactly one
    leads each pass, and the pool never grows past what one leader may add.

    Desired sizes change every 25 ticks, builds take three ticks and some
    fail, so passes create, delete and back off with builds in flight.
    """
    ticks, sizes = 200, [3, 6, 1, 8]
    schema = fresh_schema_name()
    stores = [make_postgres_store(schema=schema) for _ in range(2)]
    observer = make_postgres_store(schema=schema)
    template = make_template(observer)
    configs = [make_preset(observer, template, 0, f"p{n}") for n in range(4)]
    clock = FakeClock()
    tried = Gate()
    provisioners = [
        FakeProvisioner(
            store, clock, build_time=timedelta(seconds=25), failure_rate=0.1, seed=n
        )
        for n, store in enumerate(stores)
    ]
    reconcilers = [
        StoreReconciler(
            HoldLeadership(store, tried),
            provisioner,
            clock=clock,
            submit_timeout=None,
            max_workers=2,
        )
        for store, provisioner in zip(stores, provisioners, strict=True)
    ]
    desired: dict[uuid.UUID, int] = {}

    with Lockstep(reconcilers, tried) as replicas:
        for tick in range(ticks):
            clock.advance(timedelta(seconds=10))
            for provisioner in provisioners:
                provisioner.process()
            if tick % 25 == 0:
                for n, config in enumerate(configs):
                    desired[config.id] = sizes[(tick // 25 + n) % len(sizes)]
                    observer.put_preset(
                        attrs.evolve(config, desired_instances=desired[config.id])
                    )
            running, starting = pool_counts(observer, clock)
            builds_before = start_builds(observer)

            stats = replicas.tick()

            assert sorted(s.leader for s in stats) == [False, True], tick
            assert [s.error for s in stats] == [None, None], tick
            running_after, starting_after = pool_counts(observer, clock)
            created = start_builds(observer) - builds_before
            for preset_id, want in desired.items():
                was = running[preset_id] + starting[preset_id]
                # One leader creates at most what its snapshot lacked ...
                assert created[preset_id] <= max(want - was, 0), (tick, preset_id)
                # ... so the pool never exceeds desired, or what it already had.
                now = running_after[preset_id] + starting_after[preset_id]
                assert now <= max(want, was), (tick, preset_id, now, want, was)

    assert replicas.errors == []
    led = [sum(s.leader for s in r) for r in replicas.results]
    assert sum(led) == ticks
    created_total = sum(s.created for r in replicas.results for s in r)
    deleted_total = sum(s.deleted for r in replicas.results for s in r)
    assert created_total > 0
    assert deleted_total > 0
    assert_no_half_state(observer)
    print(  # noqa: T201
        f"\n[replicas] {ticks} passes, led {led[0]}/{led[1]};"
        f" created {created_total}, deleted {deleted_total}"
    )


# -- 3. a replica killed mid-pass --------------------------------------------------------
_VICTIM = """
import sys
import threading
import time

from prebuilds import StoreReconciler
from prebuilds.stores import PostgresStore
from prebuilds.testing import FakeClock

dsn, schema, block_at = sys.argv[1], sys.argv[2], int(sys.argv[3])


class OneByOneStore(PostgresStore):
    # No batches: the victim dies with exactly its submitted creations made
    # (a batch's later creations are committed before its submits).
    create_prebuilds = None


store = OneByOneStore(dsn, schema=schema, max_size=2)


class BlockingProvisioner:
    def __init__(self):
        self.submits = 0

    def submit(self, request):
        self.submits += 1
        print("submitted", request.build_id, request.instance_id, flush=True)
        if self.submits == block_at:
            # Called inside the leader scope: its connection holds the lock.
            conn = store._local.cursor.connection
            print("blocked", conn.info.backend_pid, flush=True)
            threading.Event().wait()  # until SIGKILL


StoreReconciler(
    store,
    BlockingProvisioner(),
    clock=FakeClock(),
    submit_timeout=None,
    build_timeout=None,
    max_workers=1,
).reconcile_all()
print("finished", flush=True)
"""


def lock_holders(store: PostgresStore, key: int) -> list[int]:
    """The backends holding the advisory lock *key*."""
    rows = raw(
        store,
        """
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted
            AND ((classid::bigint << 32) | objid::bigint) = %(key)s
        """,
        {"key": key},
    )
    return [pid for (pid,) in rows]


def kill_mid_pass(
    dsn: str, store: PostgresStore, block_at: int
) -> tuple[list[tuple[uuid.UUID, uuid.UUID]], int]:
    """
    Run a reconciler in a child process until its provisioner blocks in the
    *block_at*-th submit (in the middle of the pass, leader lock held), check
    that it holds the lock, and SIGKILL it.

    Returns:
        The (build ID, instance ID) pairs it submitted, and the PID of the
        backend that held its lock.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, dsn, store.schema, str(block_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    submitted = []
    try:
        while (line := lines.get(timeout=WAIT)).startswith("submitted"):
            _, build_id, instance_id = line.split()
            submitted.append((uuid.UUID(build_id), uuid.UUID(instance_id)))
        assert line.startswith("blocked"), f"the victim exited: {line!r}"
        backend_pid = int(line.split()[1])
        assert lock_holders(store, lock_key("leader", store.schema)) == [backend_pid]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        reader.join(timeout=WAIT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return submitted, backend_pid


def test_a_replica_killed_mid_pass(
    postgres_dsn: str, make_postgres_store: PostgresStoreFactory
) -> None:
    """
    A replica SIGKILLed while it leads a pass (after 3 of its creations)
    leaves whole creations only; PostgreSQL drops its lock with its
    connection, another replica leads the next pass, converges the pools and,
    once build_timeout passes, fails and replaces the builds the dead replica
    submitted and nobody will ever run.
    """
    block_at, desired = 3, 5
    store = make_postgres_store()
    template = make_template(store)
    first = make_preset(store, template, desired, "a")
    second = make_preset(store, template, desired, "b")
    # The victim reconciles presets in ID order, one at a time.
    victim_preset, other_preset = sorted([first.id, second.id])

    submitted, backend_pid = kill_mid_pass(postgres_dsn, store, block_at)

    # What the victim left: whole creations, each with its pending build.
    assert len(submitted) == block_at
    instances = store.list_instances()
    assert {i.id for i in instances} == {instance for _, instance in submitted}
    assert {i.preset_id for i in instances} == {victim_preset}
    for build_id, _ in submitted:
        assert store.get_build(build_id).status is BuildStatus.PENDING
    assert_no_half_state(store)

    # PostgreSQL releases the lock when the dead client's backend goes: wait
    # for that by asking for the lock, blocking with a timeout (no polling).
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{int(WAIT)}s'")
        with conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (lock_key("leader", store.schema),)
            )

    # The next replica: a minute later by its own clock, so that its builds
    # are newer than the victim's (the hard limit looks at the newest).
    clock = FakeClock()
    clock.advance(timedelta(minutes=1))
    provisioner = FakeProvisioner(store, clock)
    build_timeout = timedelta(minutes=10)
    successor = StoreReconciler(
        store,
        provisioner,
        clock=clock,
        submit_timeout=None,
        build_timeout=build_timeout,
    )

    def run_pass() -> Any:
        stats = successor.reconcile_all()
        assert (stats.leader, stats.error) == (True, None)
        return stats

    # The victim's builds count as starting: only the gap is filled.
    assert run_pass().created == 2 * desired - block_at
    clock.advance(timedelta(seconds=30))
    provisioner.process()
    assert run_pass().created == 0
    running, starting = pool_counts(store, clock)
    assert running == {victim_preset: desired - block_at, other_preset: desired}
    assert starting == {victim_preset: block_at}

    # Past build_timeout the orphans are failed, then replaced.
    clock.advance(build_timeout)
    assert run_pass().created == 0
    for build_id, _ in submitted:
        build = store.get_build(build_id)
        assert (build.status, build.error_kind) == (BuildStatus.FAILED, "timeout")
    assert run_pass().created == block_at
    clock.advance(timedelta(seconds=30))
    provisioner.process()
    converged = run_pass()
    assert (converged.created, converged.deleted) == (0, 0)
    running, starting = pool_counts(store, clock)
    assert running == {victim_preset: desired, other_preset: desired}
    assert starting == {}
    assert_no_half_state(store)
    # The victim's instances are the only ones not running: failed starts.
    not_running = {
        i.id
        for i in store.list_instances()
        if (i.latest_transition, i.latest_status)
        != (Transition.START, BuildStatus.SUCCEEDED)
    }
    assert not_running == {instance for _, instance in submitted}
    assert lock_holders(store, lock_key("leader", store.schema)) == []
    assert backend_pid not in {
        pid for (pid,) in raw(store, "SELECT pid FROM pg_locks WHERE pid IS NOT NULL")
    }


# -- 4. upgrades and claims at scale ------------------------------------------------------
def test_two_replicas_upgrade_a_schema_at_once(
    make_postgres_store: PostgresStoreFactory,
) -> None:
    """
    Two replicas of a newer prebuilds start together on a schema at version
    1: one upgrades it (under the migration lock), the other finds it done.
    """
    schema = fresh_schema_name()
    old = make_postgres_store(schema=schema)
    _, config = seed_one(old)
    # Back to what version 1 left: its index and its version number.
    raw(old, "CREATE INDEX instances_created ON {s}.instances (created_at, id)")
    raw(old, "ALTER TABLE {s}.builds DROP COLUMN submitted")
    raw(old, "UPDATE {s}.schema_version SET version = 1")
    replicas = [make_postgres_store(schema=schema, migrate=False) for _ in range(2)]
    barrier = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def upgrade(store: PostgresStore) -> None:
        try:
            barrier.wait(timeout=WAIT)
            store.migrate()
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=upgrade, args=(s,)) for s in replicas]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=WAIT)

    assert errors == []
    assert [s.schema_version() for s in replicas] == [SCHEMA_VERSION] * 2
    assert raw(old, "SELECT version FROM {s}.schema_version") == [(SCHEMA_VERSION,)]
    assert raw(
        old, "SELECT to_regclass(%(i)s)", {"i": f'"{schema}".instances_created'}
    ) == [(None,)]
    assert replicas[1].read_preset(config.id).config == config


def store_dsn(store: PostgresStore) -> str:
    with store._borrow() as conn:
        return conn.info.dsn


def seed_one(store: PostgresStore) -> tuple[Template, PresetConfig]:
    template = make_template(store)
    return template, make_preset(store, template, 1)


def claim_buffers(store: PostgresStore, preset_id: uuid.UUID) -> int:
    """Claim one instance under EXPLAIN ANALYZE: the buffers it touched."""
    now = T0 + timedelta(minutes=1)
    version = store.read_preset(preset_id).config.template_version_id
    # preset, version, cut-off, user, name, now, then the lifecycle.
    params = (preset_id, version, None, uuid.uuid4(), "mine", now, *[None] * 7, now)
    with store._borrow() as conn:
        (row,) = (
            psycopg.RawCursor(conn)
            .execute(
                ("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + store._q(CLAIM)).encode(),
                params,
            )
            .fetchall()
        )
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def test_a_claim_costs_the_same_after_thousands(
    make_postgres_store: PostgresStoreFactory,
) -> None:
    """
    A claim reads the pool's index, not the instances' history: after 1,000
    claims it touches about as many buffers as the first did.

    Ten presets of 2,000 instances, created in turns, every table analyzed:
    schema version 1 had an index on (created_at, id) that the planner took
    for this claim here, walking every older instance, claimed or not, at
    every claim.
    """
    store = make_postgres_store()
    template = make_template(store)
    for n in range(10):
        make_preset(store, template, 2000, f"p{n}")
    bulk_ready(store, 2000)
    with psycopg.connect(store_dsn(store), autocommit=True) as conn:
        for table in ("templates", "presets", "instances", "builds"):
            conn.execute(f'VACUUM ANALYZE "{store.schema}".{table}'.encode())
    presets = sorted(p.config.id for p in store.read_pool().presets)
    for _ in range(10):  # warm the caches and set the hint bits
        assert claim(store, presets[0], uuid.uuid4()) is not None

    first = claim_buffers(store, presets[0])
    for _ in range(1000):
        assert claim(store, presets[0], uuid.uuid4()) is not None
    later = claim_buffers(store, presets[0])

    assert later < first + 100, (first, later)  # with the old index: 30 -> 1,200


# -- 5. leader hand-overs between processes ----------------------------------------------
_HANDOVER = """
import sys
import uuid
from datetime import datetime, timedelta, timezone

from prebuilds import derive
from prebuilds.stores import PostgresStore

dsn, schema = sys.argv[1], sys.argv[2]
preset_id, index, replicas, target = (
    uuid.UUID(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
)
now = datetime(2024, 1, 1, tzinfo=timezone.utc)
store = PostgresStore(dsn, schema=schema, max_size=3)
attempts = 0
while True:
    with store.leader() as lease:
        attempts += 1
        if not lease:
            continue  # at once: the next attempt races the holder's release
        with store._borrow() as conn:  # which grant this is
            (epoch,) = conn.execute(
                f'SELECT epoch FROM "{schema}".leader WHERE token = %s',
                (lease.token,),
            ).fetchone()
        snapshot = derive(
            store.read_pool(), now=now, backoff_lookback=timedelta(hours=1), hard_limit=0
        )
        seen = sum(row.count for row in snapshot.in_progress)
        mine = seen < target and seen % replicas == index
        if mine:  # my turn: every creation is a hand-over
            store.create_prebuild(preset_id, now=now, name=f"h{seen}", lease=lease)
        print("led", epoch, seen, int(mine), flush=True)
        if seen >= target:
            break
print("attempts", attempts, flush=True)
store.close()
"""


def test_no_new_leader_plans_on_a_stale_snapshot(
    postgres_dsn: str, make_postgres_store: PostgresStoreFactory
) -> None:
    """
    Two processes hand leadership over hundreds of times: the one whose turn
    it is (by the number of creations it sees) creates one instance, commits
    and leaves the scope while the other spins on leader(), so the next
    leader takes over the moment the lock is released. Every scope that led
    reports its grant number (the epoch of the leader row) and what its
    snapshot saw: in grant order, each must see every creation of the scopes
    granted before it, none missing (a snapshot taken before the lock was
    granted would miss the last one).
    """
    replicas, target = 2, 400
    store = make_postgres_store()
    template = make_template(store)
    preset = make_preset(store, template, target)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HANDOVER,
                postgres_dsn,
                store.schema,
                str(preset.id),
                str(index),
                str(replicas),
                str(target),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for index in range(replicas)
    ]
    outputs = []
    try:
        for proc in processes:
            out, err = proc.communicate(timeout=10 * WAIT)
            assert proc.returncode == 0, err
            outputs.append(out.split("\n"))
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT)
    elapsed = time.monotonic() - started

    scopes: list[tuple[int, int, int, int]] = []  # (epoch, seen, created, process)
    attempts = 0
    for index, lines in enumerate(outputs):
        for line in lines:
            if line.startswith("led"):
                fields = [int(field) for field in line.split()[1:]]
                scopes.append((fields[0], fields[1], fields[2], index))
            elif line.startswith("attempts"):
                attempts += int(line.split()[1])
    scopes.sort()
    assert [epoch for epoch, *_ in scopes] == list(range(1, len(scopes) + 1))
    committed, creators = 0, list[int]()
    for epoch, seen, created, index in scopes:
        assert seen == committed, f"grant {epoch} saw {seen} of {committed} creations"
        committed += created
        if created:
            creators.append(index)
    assert committed == target == len(store.list_instances(preset_id=preset.id))
    hand_overs = sum(a != b for a, b in itertools.pairwise(creators))
    assert hand_overs == target - 1
    assert raw(store, "SELECT epoch, token FROM {s}.leader") == [(len(scopes), None)]
    print(  # noqa: T201
        f"\n[hand-over] {target} creations, {hand_overs} hand-overs between "
        f"processes; {len(scopes)} leader scopes granted of {attempts} attempts, "
        f"every snapshot complete, in {elapsed:.1f}s"
    )
