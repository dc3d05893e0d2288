"""
PostgresStore when the server restarts, and what it says when it cannot
connect.

The restart tests run on a cluster of their own: restarting the session's
would cut every other test's connections.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import psycopg_pool
import pytest

from typing_extensions import Self

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildRequest,
    NoClaimablePrebuildsError,
    PresetConfig,
    ReconcileStats,
    StoreClaimer,
    StoreError,
    StoreReconciler,
    Template,
)
from prebuilds.stores._postgres import PostgresStore
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.postgres_cluster import (
    PostgresCluster,
    PostgresStoreFactory,
    fresh_schema_name,
    running_cluster,
)


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
#: Names the sessions of the stores under test in pg_stat_activity.
APP = "prebuilds-restart-test"
POOL_SIZE = 4
#: The store's wait for a connection: longer than the pool's first
#: reconnection attempt after a restart (about a second), so that a call made
#: once the server is back waits for it instead of failing.
TIMEOUT = 5.0
SOURCES = ("own pool", "host pool", "factory")
#: The restart tests also borrow from a host pool whose connections are not in
#: autocommit mode, which the store switches for each call and back.
RESTART_SOURCES = (*SOURCES, "host pool, no autocommit")


@pytest.fixture(scope="module")
def restartable() -> Iterator[PostgresCluster]:
    """A cluster of this module's own, which its tests restart."""
    with running_cluster() as cluster:
        yield cluster


@dataclass
class Source:
    """A store on one source of connections, and that source."""

    store: PostgresStore
    #: The pool the store borrows from (its own or the host's), if any.
    pool: psycopg_pool.ConnectionPool[Any] | None
    #: Every connection the factory made.
    made: list[psycopg.Connection[Any]] = field(default_factory=list)


@pytest.fixture(params=RESTART_SOURCES)
def source(
    request: pytest.FixtureRequest, restartable: PostgresCluster
) -> Iterator[Source]:
    """A store on a fresh schema of the restartable cluster, per source."""
    dsn = f"{restartable.dsn()} application_name={APP}"
    schema = fresh_schema_name()
    if request.param == "own pool":
        store = PostgresStore(
            dsn,
            schema=schema,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            timeout=TIMEOUT,
        )
        with store:
            yield Source(store=store, pool=store._db.pool)
    elif request.param.startswith("host pool"):
        kwargs = {} if "no autocommit" in request.param else {"autocommit": True}
        with (
            psycopg_pool.ConnectionPool(
                dsn, max_size=POOL_SIZE, kwargs=kwargs, open=True
            ) as pool,
            PostgresStore(pool=pool, schema=schema, timeout=TIMEOUT) as store,
        ):
            yield Source(store=store, pool=pool)
    else:
        made: list[psycopg.Connection[Any]] = []
        lock = threading.Lock()

        def connect() -> psycopg.Connection[Any]:
            conn = psycopg.connect(dsn)
            with lock:
                made.append(conn)
            return conn

        with PostgresStore(connect=connect, schema=schema, timeout=TIMEOUT) as store:
            yield Source(store=store, pool=None, made=made)
    with psycopg.connect(restartable.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- the pieces of a host -----------------------------------------------------------
class Gate:
    """Holds a thread at :meth:`passing` while closed, and says it is there."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.reached = threading.Event()

    def close(self) -> None:
        self.reached.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def passing(self) -> None:
        if not self._open.is_set():
            self.reached.set()
            assert self._open.wait(timeout=60)


class GatedProvisioner(FakeProvisioner):
    """A FakeProvisioner whose submit waits at a gate, to hold a pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = Gate()

    def submit(self, request: BuildRequest) -> None:
        super().submit(request)
        self.gate.passing()


@dataclass(frozen=True)
class Pass:
    started: float
    ended: float
    stats: ReconcileStats


class RecordingReconciler(StoreReconciler):
    """A StoreReconciler that keeps when each pass ran and how it ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passes: list[Pass] = []
        self.changed = threading.Condition()

    def reconcile_all(self) -> ReconcileStats:
        started = time.monotonic()
        stats = super().reconcile_all()
        with self.changed:
            self.passes.append(Pass(started, time.monotonic(), stats))
            self.changed.notify_all()
        return stats


@dataclass(frozen=True)
class Claim:
    started: float
    ended: float
    user: uuid.UUID
    #: The claimed instance, "miss", or the StoreError raised.
    outcome: uuid.UUID | str | StoreError


@dataclass
class Outage:
    """When the server went down (before the stop) and was back (after the start)."""

    down: float
    up: float = float("inf")


class Host:
    """
    A host on *store*: a reconciler running in a thread, and claim threads
    that claim in a loop (the first also reports the provisioner's builds).
    """

    def __init__(self, store: PostgresStore, preset_id: uuid.UUID, claimers: int):
        self.store = store
        self.preset_id = preset_id
        clock = FakeClock(T0)
        self.clock = clock
        self.provisioner = GatedProvisioner(store, clock, build_time=timedelta(0))
        self.reconciler = RecordingReconciler(
            store,
            self.provisioner,
            clock=clock,
            interval=timedelta(milliseconds=20),
            max_workers=1,
        )
        self.claimer = StoreClaimer(store)
        self.claims: list[Claim] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.reconciler.run, name="reconciler"),
            *(
                threading.Thread(target=self._claim_loop, args=(i,), name=f"c{i}")
                for i in range(claimers)
            ),
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.provisioner.gate.open()
        self._stop.set()
        self.reconciler.stop(timeout=60)
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self._threads)

    def _claim_loop(self, index: int) -> None:
        while not self._stop.is_set():
            if index == 0:
                with suppress(StoreError):
                    self.provisioner.process()
            user = uuid.uuid4()
            started = time.monotonic()
            outcome: uuid.UUID | str | StoreError
            try:
                outcome = self.claimer.claim(
                    now=self.clock.now(),
                    user_id=user,
                    name="mine",
                    preset_id=self.preset_id,
                )
            except NoClaimablePrebuildsError:
                outcome = "miss"
            except StoreError as e:
                outcome = e
            with self.changed:
                self.claims.append(Claim(started, time.monotonic(), user, outcome))
                self.changed.notify_all()

    def wait_claims(self, predicate: Callable[[list[Claim]], bool]) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.claims), timeout=60)

    def wait_passes(self, predicate: Callable[[list[Pass]], bool]) -> None:
        with self.reconciler.changed:
            assert self.reconciler.changed.wait_for(
                lambda: predicate(self.reconciler.passes), timeout=60
            )


def succeeded(claims: list[Claim], after: float) -> int:
    return sum(
        1 for c in claims if c.started > after and isinstance(c.outcome, uuid.UUID)
    )


def between(outages: list[Outage], started: float, ended: float) -> bool:
    """Whether [started, ended] lies wholly outside every outage."""
    return all(ended < o.down or started > o.up for o in outages)


def sessions(cluster: PostgresCluster) -> int:
    """Sessions of the stores under test on the server."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def assert_pool_whole(
    pool: psycopg_pool.ConnectionPool[Any], store: PostgresStore
) -> None:
    """
    Every slot of *pool* holds a working connection and none is lost: all of
    them can be taken at once but what *store* keeps for its next claim (at
    most one when no claim is in flight; a slot lost for good would time
    out), each answers, and once given back the pool is full but for those.
    """
    kept = [conn for conn, _ in store._db._kept]
    assert len(kept) <= 1
    taken = [pool.getconn(timeout=30) for _ in range(POOL_SIZE - len(kept))]
    try:
        for conn in [*taken, *kept]:
            pool.check_connection(conn)  # raises if it does not answer
    finally:
        for conn in taken:
            pool.putconn(conn)
    stats = pool.get_stats()
    assert (stats["pool_size"], stats["pool_available"]) == (
        POOL_SIZE,
        POOL_SIZE - len(kept),
    )
    assert stats.get("requests_waiting", 0) == 0


# -- restarts ---------------------------------------------------------------------------
class TestRestart:
    def test_claims_and_passes_recover_from_two_restarts(
        self, source: Source, restartable: PostgresCluster
    ) -> None:
        """
        The server restarts twice under a claim loop and a running
        reconciler: calls fail only around the outages and work again after,
        without a new store; no instance goes to two users or is lost; the
        pass errors are counted and stop; no connection is lost.
        """
        store = source.store
        template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4())
        store.put_template(template)
        preset = PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=5,
        )
        store.put_preset(preset)
        outages: list[Outage] = []

        with Host(store, preset.id, claimers=2) as host:
            host.wait_claims(lambda claims: succeeded(claims, 0) >= 5)

            # A restart for maintenance, whatever the host is doing.
            outages.append(Outage(down=time.monotonic()))
            restartable.restart()
            outages[-1].up = time.monotonic()
            host.wait_claims(lambda claims: succeeded(claims, outages[-1].up) >= 5)

            # The server goes down in the middle of a pass. The pass held at
            # the gate may still end well (its fenced writes are accepted as
            # long as no other leader took over), but the next pass starts
            # while the server is down and fails.
            host.provisioner.gate.close()
            assert host.provisioner.gate.reached.wait(timeout=60)
            held = len(host.reconciler.passes)  # the pass held at the gate
            outages.append(Outage(down=time.monotonic()))
            with restartable.stopped():
                host.provisioner.gate.open()
                host.wait_passes(lambda passes: len(passes) > held + 1)
            outages[-1].up = time.monotonic()
            assert host.reconciler.passes[held + 1].stats.error is not None

            # Back to work: passes and claims succeed again.
            host.wait_passes(
                lambda passes: sum(p.started > outages[-1].up for p in passes) >= 5
            )
            host.wait_claims(lambda claims: succeeded(claims, outages[-1].up) >= 5)

        passes, claims = host.reconciler.passes, host.claims
        errors = [p for p in passes if p.stats.error is not None]
        assert host.reconciler.pass_errors == len(errors) >= 1
        # Calls that did not overlap an outage all worked.
        assert [
            p.stats.error for p in errors if between(outages, p.started, p.ended)
        ] == []
        assert [
            c.outcome
            for c in claims
            if isinstance(c.outcome, StoreError)
            and between(outages, c.started, c.ended)
        ] == []
        # Every instance claimed went to exactly the user it was returned to.
        returned = {
            c.outcome: c.user for c in claims if isinstance(c.outcome, uuid.UUID)
        }
        assert len(returned) == sum(isinstance(c.outcome, uuid.UUID) for c in claims)
        owners = {
            i.id: i.owner_id
            for i in store.list_instances(include_deleted=True)
            if i.owner_id != PREBUILDS_OWNER_ID
        }
        assert owners == returned
        # No connection lost, on either side (the pool's connections are
        # the only sessions: the restarts ended every older one).
        if source.pool is not None:
            assert_pool_whole(source.pool, store)
            assert sessions(restartable) == POOL_SIZE
        else:
            assert source.made
            assert all(conn.closed for conn in source.made)


# -- why a connection fails ------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(name="silent_server")
def _silent_server() -> Iterator[int]:
    """The port of a server that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def open_store(kind: str, conninfo: str, *, timeout: float) -> None:
    """Open (and close) a store on *conninfo* through a source of *kind*."""
    if kind == "own pool":
        PostgresStore(conninfo, timeout=timeout).close()
    elif kind == "host pool":
        # connect_timeout: a pool attempt stuck on a silent server would
        # outlive the pool's close.
        with psycopg_pool.ConnectionPool(
            conninfo, min_size=1, open=True, kwargs={"connect_timeout": 2}
        ) as pool:
            PostgresStore(pool=pool, timeout=timeout).close()
    else:
        PostgresStore(
            connect=lambda: psycopg.connect(conninfo, connect_timeout=2),
            timeout=timeout,
        ).close()


class TestConnectionFailures:
    @pytest.mark.parametrize("kind", SOURCES)
    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("refused", "Connection refused"),
            ("database", 'database "no_such_db" does not exist'),
            ("role", 'role "no_such_role" does not exist'),
        ],
    )
    def test_the_message_names_the_cause(
        self, postgres_cluster: PostgresCluster, kind: str, case: str, expected: str
    ) -> None:
        """
        Nothing listening, an unknown database, an unknown role: the
        StoreError says which, whatever the source of connections, and
        chains the driver's error.
        """
        conninfo = {
            "refused": f"host=127.0.0.1 port={free_port()} user=postgres",
            "database": postgres_cluster.tcp_dsn("no_such_db"),
            "role": postgres_cluster.tcp_dsn().replace(
                "user=postgres", "user=no_such_role"
            ),
        }[case]

        with pytest.raises(StoreError) as e:
            open_store(kind, conninfo, timeout=0.5)

        assert str(e.value).startswith("cannot connect to PostgreSQL: ")
        assert expected in str(e.value)
        assert "\n" not in str(e.value)
        assert isinstance(e.value.__cause__, psycopg.OperationalError)

    @pytest.mark.parametrize("kind", SOURCES)
    def test_a_server_that_never_answers_is_a_timeout(
        self, silent_server: int, kind: str
    ) -> None:
        """A server that accepts and never answers: the message says timeout."""
        conninfo = f"host=127.0.0.1 port={silent_server} user=postgres"

        with pytest.raises(StoreError) as e:
            open_store(kind, conninfo, timeout=0.5)

        assert "cannot connect to PostgreSQL: connection timeout expired" in str(
            e.value
        )

    def test_a_pool_too_small_says_so(
        self,
        make_postgres_store: PostgresStoreFactory,
        postgres_dsn: str,
    ) -> None:
        """
        A pool with no connection free while the server accepts more: the
        message says the pool is the limit, not the server.
        """
        schema = make_postgres_store().schema
        # The host opens its pool with time to spare (a loaded machine may
        # need more than the store's short wait to fill it).
        pool = psycopg_pool.ConnectionPool(
            postgres_dsn,
            min_size=2,
            max_size=2,
            kwargs={"autocommit": True},
            open=False,
        )
        pool.open(wait=True, timeout=30)
        store = PostgresStore(pool=pool, schema=schema, timeout=0.2)
        try:
            with store._borrow(), store._borrow(), pytest.raises(StoreError) as e:
                store.is_paused()
            assert store.is_paused() is False  # both back: it works again
        finally:
            store.close()
            pool.close()

        message = str(e.value)
        assert message.startswith("cannot get a PostgreSQL connection: ")
        assert "the server accepts a new connection" in message
        assert "size 2 of max 2" in message
