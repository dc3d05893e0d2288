"""
PostgreSQL-specific behaviour of PostgresStore: migrations, the advisory-lock
leader scope and its snapshot, constant-cost snapshots, and claims racing
each other and the reconciler's deletes.

The shared Store contract runs in tests/test_store_contract.py.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import psycopg
import psycopg_pool
import pytest

from hypothesis import HealthCheck, settings

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildRequest,
    BuildStatus,
    Instance,
    InvalidInputError,
    LeadershipLostError,
    Lifecycle,
    PresetConfig,
    PresetNotFoundError,
    PresetStatus,
    SchemaVersionError,
    StoreError,
    Template,
    Transition,
)
from prebuilds._validate import MAX_DURATION
from prebuilds.stores._postgres import SCHEMA_VERSION, PostgresStore, _lock_key
from prebuilds.testing import check_store
from tests.postgres_cluster import PostgresStoreFactory, fresh_schema_name


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LOOKBACK = timedelta(hours=1)


# -- helpers ----------------------------------------------------------------------
def seed(
    store: PostgresStore, *, desired: int = 2, default_ttl: timedelta | None = None
) -> tuple[Template, PresetConfig]:
    template = Template(
        id=uuid.uuid4(),
        active_version_id=uuid.uuid4(),
        name="t",
        default_ttl=default_ttl,
    )
    store.put_template(template)
    config = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=desired,
        name="p",
    )
    store.put_preset(config)
    return template, config


def snap(store: PostgresStore, now: datetime = T0) -> Any:
    return store.snapshot(now=now, backoff_lookback=LOOKBACK, hard_limit=3)


def raw(store: PostgresStore, sql: str, params: dict[str, Any] | None = None) -> Any:
    """Run *sql* ({s} = the store's schema) on one of the store's connections."""
    with store._borrow() as conn:
        cur = conn.execute(
            sql.replace("{s}", f'"{store.schema}"'),
            params,
        )
        return cur.fetchall() if cur.description else None


def bulk_presets(store: PostgresStore, template: Template, count: int) -> None:
    """Insert *count* presets of *template*'s active version in one statement."""
    raw(
        store,
        """
        INSERT INTO {s}.presets (id, template_id, template_version_id,
            desired_instances, name)
        SELECT gen_random_uuid(), %(t)s, %(v)s, 5, 'p' || g
        FROM generate_series(1, %(n)s) g
        """,
        {"t": template.id, "v": template.active_version_id, "n": count},
    )


def bulk_ready(store: PostgresStore, per_preset: int, *, at: datetime = T0) -> None:
    """Give every preset *per_preset* ready, running prebuilds (one statement)."""
    raw(
        store,
        """
        WITH made AS (
            INSERT INTO {s}.instances (id, preset_id, template_id,
                template_version_id, owner_id, name, created_at, ready, last_used_at)
            SELECT gen_random_uuid(), p.id, p.template_id, p.template_version_id,
                %(pool)s, 'bulk-' || g, %(at)s + g * interval '1 millisecond', true,
                %(at)s
            FROM {s}.presets p CROSS JOIN generate_series(1, %(n)s) g
            RETURNING id, preset_id, template_version_id, created_at
        )
        INSERT INTO {s}.builds (id, instance_id, preset_id, template_version_id,
            transition, status, build_number, initiator_id, created_at, started_at,
            finished_at)
        SELECT gen_random_uuid(), id, preset_id, template_version_id, 'start',
            'succeeded', 1, %(pool)s, created_at, created_at, created_at
        FROM made
        """,
        {"pool": PREBUILDS_OWNER_ID, "at": at, "n": per_preset},
    )


def claim(
    store: PostgresStore, preset_id: uuid.UUID, user: uuid.UUID
) -> Instance | None:
    return store.claim(
        preset_id=preset_id,
        user_id=user,
        name="mine",
        lifecycle=Lifecycle(last_used_at=T0),
        now=T0 + timedelta(minutes=1),
    )


@pytest.fixture(name="store")
def _store(make_postgres_store: PostgresStoreFactory) -> PostgresStore:
    return make_postgres_store()


@pytest.fixture(name="one_connection")
def _one_connection(
    postgres_dsn: str, make_postgres_store: PostgresStoreFactory
) -> Iterator[tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]]:
    """A store on a host's pool of exactly one connection, and that pool."""
    schema = fresh_schema_name()
    make_postgres_store(schema=schema, migrate=False).close()  # dropped at teardown
    with (
        psycopg_pool.ConnectionPool(
            postgres_dsn, min_size=1, max_size=1, open=True, timeout=5
        ) as pool,
        PostgresStore(pool=pool, schema=schema) as store,
    ):
        yield store, pool


# -- construction -----------------------------------------------------------------
class TestConstruction:
    def test_exactly_one_source_of_connections(self, postgres_dsn: str) -> None:
        """No source, or two, is an InvalidInputError."""
        with pytest.raises(InvalidInputError):
            PostgresStore()
        with pytest.raises(InvalidInputError):
            PostgresStore(postgres_dsn, connect=lambda: psycopg.connect(postgres_dsn))

    def test_own_pool_needs_room_for_the_leader(self, postgres_dsn: str) -> None:
        """A leader scope holds a connection: an own pool of one is refused."""
        with pytest.raises(InvalidInputError) as e:
            PostgresStore(postgres_dsn, max_size=1)

        assert e.value.field == "max_size"

    @pytest.mark.parametrize(
        "schema", ["", "a-b", 'x"; DROP', "1abc", "abc\n", "a" * 64]
    )
    def test_schema_must_be_a_plain_identifier(
        self, postgres_dsn: str, schema: str
    ) -> None:
        """The schema name is checked before any SQL is built from it."""
        with pytest.raises(InvalidInputError) as e:
            PostgresStore(postgres_dsn, schema=schema)

        assert e.value.field == "schema"

    def test_host_pool(
        self, postgres_dsn: str, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """A host's pool works; its connections come back as they went out."""
        schema = fresh_schema_name()
        make_postgres_store(schema=schema, migrate=False).close()  # dropped at teardown
        with psycopg_pool.ConnectionPool(
            postgres_dsn, min_size=1, max_size=3, open=True
        ) as pool:
            store = PostgresStore(pool=pool, schema=schema)
            _, config = seed(store)
            with store.leader() as acquired:
                assert acquired
                assert [config.id] == [p.id for p in snap(store).presets]
            store.close()

            with pool.connection() as conn:
                assert not conn.autocommit
                assert conn.execute("SELECT 1").fetchone()[0] == 1  # type: ignore[index]

    def test_connection_factory(
        self, postgres_dsn: str, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """A host's connection factory works; each connection is closed after use."""
        schema = fresh_schema_name()
        make_postgres_store(schema=schema, migrate=False).close()
        made: list[Any] = []

        def connect() -> Any:
            conn = psycopg.connect(postgres_dsn)
            made.append(conn)
            return conn

        with PostgresStore(connect=connect, schema=schema) as store:
            _, config = seed(store)
            request = store.create_prebuild(config.id, now=T0, name="x")
            assert request is not None
            with store.leader() as acquired:
                assert acquired
                assert len(snap(store).in_progress) == 1

        assert made
        assert all(conn.closed for conn in made)

    def test_a_transaction_left_open_by_an_error_is_rolled_back(
        self,
        one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """
        A connection given back after an error inside a transaction goes
        back idle, its writes undone by the store (the pool has nothing to
        roll back, and says nothing), and serves the next call.
        """
        store, pool = one_connection

        def pause_then_fail() -> None:
            with store._borrow() as conn:
                conn.execute("BEGIN")
                conn.execute(store._q("UPDATE {s}.settings SET paused = true"))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            pause_then_fail()

        assert not store.is_paused()
        assert [r.getMessage() for r in caplog.records if "pool" in r.name] == []
        with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def test_a_connection_broken_in_a_transaction_goes_back(
        self,
        one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]],
        postgres_dsn: str,
    ) -> None:
        """
        A connection whose session ended while it was in a transaction goes
        back to its pool although its rollback fails: the pool replaces it,
        and with a pool of one connection the next call works.
        """
        store, pool = one_connection

        def fail_after_the_session_ended() -> None:
            with store._borrow() as conn:
                conn.execute("BEGIN")
                with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(%s, 30000)",
                        (conn.info.backend_pid,),
                    )
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail_after_the_session_ended()

        assert store.is_paused() is False
        stats = pool.get_stats()
        assert (1, 1) == (stats["pool_size"], stats["pool_available"])

    def test_close_is_idempotent_and_final(self, store: PostgresStore) -> None:
        """A closed store raises StoreError; closing twice is fine."""
        store.close()
        store.close()

        with pytest.raises(StoreError):
            store.is_paused()

    def test_unreachable_database_is_a_store_error(self) -> None:
        """A store that cannot connect raises StoreError, not a psycopg error."""
        with pytest.raises(StoreError) as e:
            PostgresStore("host=127.0.0.1 port=1 connect_timeout=1", timeout=0.3)

        assert isinstance(e.value.__cause__, psycopg.Error)

    def test_driver_errors_are_wrapped(self, store: PostgresStore) -> None:
        """A psycopg error surfaces as StoreError with the cause chained."""
        raw(store, "DROP TABLE {s}.settings")

        with pytest.raises(StoreError) as e:
            store.set_paused(True)

        assert isinstance(e.value.__cause__, psycopg.Error)

    def test_importing_prebuilds_does_not_import_psycopg(self) -> None:
        """psycopg is loaded by the PostgreSQL store module only."""
        import subprocess
        import sys

        code = (
            "import sys, prebuilds, prebuilds.stores; print('psycopg' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )

        assert out.stdout.strip() == "False"


# -- migrations -------------------------------------------------------------------
class TestMigrations:
    def test_migrate_is_idempotent(self, store: PostgresStore) -> None:
        """Migrating again changes nothing and keeps the data."""
        _, config = seed(store)

        store.migrate()
        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION
        assert raw(store, "SELECT version FROM {s}.schema_version") == [
            (SCHEMA_VERSION,)
        ]
        assert config.id == store.get_preset(config.id).id

    def test_concurrent_migrations_of_a_fresh_schema(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """Two replicas migrating a new database at once both succeed, once."""
        schema = fresh_schema_name()
        stores = [make_postgres_store(schema=schema, migrate=False) for _ in range(2)]
        assert stores[0].schema_version() == 0
        barrier = threading.Barrier(len(stores))

        def migrate(store: PostgresStore) -> None:
            barrier.wait(timeout=30)
            store.migrate()

        with ThreadPoolExecutor(len(stores)) as pool:
            for future in [pool.submit(migrate, s) for s in stores]:
                future.result(timeout=60)

        assert [s.schema_version() for s in stores] == [SCHEMA_VERSION, SCHEMA_VERSION]
        assert raw(stores[0], "SELECT count(*) FROM {s}.schema_version") == [(1,)]
        _, config = seed(stores[0])
        assert config.id == stores[1].get_preset(config.id).id

    def test_upgrade_to_version_3_backfills_the_latest_build(
        self, store: PostgresStore
    ) -> None:
        """Migration 3 copies each instance's latest build; the trigger keeps it."""
        template, config = seed(store)
        raw(store, "DROP TRIGGER track_latest_build ON {s}.builds")
        raw(store, "DROP FUNCTION {s}.track_latest_build()")
        raw(
            store,
            "ALTER TABLE {s}.instances DROP COLUMN latest_build_number,"
            " DROP COLUMN latest_transition, DROP COLUMN latest_status",
        )
        raw(store, "UPDATE {s}.schema_version SET version = 2")
        ids = [uuid.uuid4(), uuid.uuid4()]
        for n, instance_id in enumerate(ids):
            raw(
                store,
                """
                INSERT INTO {s}.instances (id, preset_id, template_id,
                    template_version_id, owner_id, name, created_at, ready)
                VALUES (%(id)s, %(p)s, %(t)s, %(v)s, %(pool)s, 'i', %(at)s, true)
                """,
                {
                    "id": instance_id,
                    "p": config.id,
                    "t": template.id,
                    "v": template.active_version_id,
                    "pool": PREBUILDS_OWNER_ID,
                    "at": datetime(2024, 1, 1, tzinfo=timezone.utc)
                    + timedelta(minutes=n),
                },
            )
        # The first instance's latest build is a start that succeeded; the
        # second's, a stop.
        pairs = zip(ids, (["start"], ["start", "stop"]), strict=True)
        for instance_id, transitions in pairs:
            for number, transition in enumerate(transitions, 1):
                raw(
                    store,
                    """
                    INSERT INTO {s}.builds (id, instance_id, preset_id,
                        template_version_id, transition, status, build_number,
                        initiator_id, created_at)
                    VALUES (gen_random_uuid(), %(i)s, %(p)s, %(v)s, %(tr)s,
                        'succeeded', %(n)s, %(pool)s, now())
                    """,
                    {
                        "i": instance_id,
                        "p": config.id,
                        "v": template.active_version_id,
                        "tr": transition,
                        "n": number,
                        "pool": PREBUILDS_OWNER_ID,
                    },
                )

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 4
        assert raw(
            store,
            "SELECT latest_transition, latest_status FROM {s}.instances"
            " ORDER BY created_at",
        ) == [("start", "succeeded"), ("stop", "succeeded")]
        now = datetime(2024, 1, 2, tzinfo=timezone.utc)
        claimed = store.claim(
            preset_id=config.id,
            user_id=uuid.uuid4(),
            name="u",
            lifecycle=Lifecycle(),
            now=now,
        )
        assert claimed is not None
        assert claimed.id == ids[0]
        assert claimed.latest_transition == Transition.START
        # A new build of the second instance reaches its row through the trigger.
        raw(
            store,
            """
            INSERT INTO {s}.builds (id, instance_id, preset_id, template_version_id,
                transition, status, build_number, initiator_id, created_at)
            VALUES (gen_random_uuid(), %(i)s, %(p)s, %(v)s, 'start', 'pending', 3,
                %(pool)s, now())
            """,
            {
                "i": ids[1],
                "p": config.id,
                "v": template.active_version_id,
                "pool": PREBUILDS_OWNER_ID,
            },
        )
        assert store.get_instance(ids[1]).latest_status == BuildStatus.PENDING
        assert raw(
            store,
            "SELECT latest_build_number, latest_transition, latest_status"
            " FROM {s}.instances WHERE id = %(i)s",
            {"i": ids[1]},
        ) == [(3, "start", "pending")]

    def test_upgrade_to_version_4_adds_the_leader_row(
        self, store: PostgresStore
    ) -> None:
        """Migration 4 adds the fencing token's row; leadership works after it."""
        raw(store, "DROP TABLE {s}.leader")
        raw(store, "UPDATE {s}.schema_version SET version = 3")

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 4
        assert raw(store, "SELECT token, epoch FROM {s}.leader") == [(None, 0)]
        with store.leader() as lease:
            assert lease
            assert raw(store, "SELECT token, epoch FROM {s}.leader") == [
                (lease.token, 1)
            ]
        assert raw(store, "SELECT token, epoch FROM {s}.leader") == [(None, 1)]

    def test_newer_schema_is_refused(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """A database migrated by a newer prebuilds raises SchemaVersionError."""
        schema = fresh_schema_name()
        store = make_postgres_store(schema=schema)
        raw(store, "UPDATE {s}.schema_version SET version = version + 1")

        with pytest.raises(SchemaVersionError):
            store.migrate()
        with pytest.raises(SchemaVersionError):
            make_postgres_store(schema=schema)

    def test_tables_live_in_their_own_schema(self, store: PostgresStore) -> None:
        """Every table of the store is in the store's schema."""
        tables = raw(
            store,
            "SELECT tablename FROM pg_tables WHERE schemaname = %(s)s ORDER BY 1",
            {"s": store.schema},
        )

        assert [t for (t,) in tables] == [
            "builds",
            "instances",
            "leader",
            "presets",
            "schema_version",
            "settings",
            "templates",
        ]


# -- leadership -------------------------------------------------------------------
def advisory_locks(store: PostgresStore) -> int:
    rows = raw(store, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    return int(rows[0][0])


class TestLeader:
    def test_one_leader_across_replicas_and_released_at_exit(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """Two stores on one schema: exactly one leads; the lock goes with the scope."""
        schema = fresh_schema_name()
        a = make_postgres_store(schema=schema)
        b = make_postgres_store(schema=schema)
        entered = threading.Event()
        release = threading.Event()
        results: dict[str, bool] = {}

        def lead_in_a() -> None:
            with a.leader() as acquired:
                results["a"] = bool(acquired)
                entered.set()
                release.wait(timeout=30)

        thread = threading.Thread(target=lead_in_a)
        thread.start()
        try:
            assert entered.wait(timeout=30)
            assert advisory_locks(b) == 1
            with b.leader() as acquired:
                results["b"] = bool(acquired)
        finally:
            release.set()
            thread.join(timeout=30)

        assert results == {"a": True, "b": False}
        assert advisory_locks(b) == 0
        with b.leader() as again:
            assert again

    def test_stores_on_other_schemas_lead_independently(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """The lock key is per schema: two deployments in one database both lead."""
        a, b = make_postgres_store(), make_postgres_store()

        with a.leader() as first, b.leader() as second:
            assert (bool(first), bool(second)) == (True, True)

    def test_an_error_in_the_scope_releases_the_lock(
        self, store: PostgresStore
    ) -> None:
        """Leaving the scope by an exception rolls back and releases the lock."""

        def fail_while_leading() -> None:
            with store.leader() as acquired:
                assert acquired
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail_while_leading()

        assert advisory_locks(store) == 0
        with store.leader() as again:
            assert again

    def test_the_scopes_own_errors_pass_through(self, store: PostgresStore) -> None:
        """An exception of the caller inside the scope is not rewrapped."""

        def fail_while_leading() -> None:
            with store.leader():
                raise psycopg.errors.QueryCanceled

        with pytest.raises(psycopg.errors.QueryCanceled):
            fail_while_leading()

    def test_a_lease_taken_over_cannot_write(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        A leader whose session dies loses the lock; once another replica
        leads, the old lease's fenced writes are refused and write nothing,
        the new lease's go through, and the old scope ends quietly, its
        connection discarded.
        """
        schema = fresh_schema_name()
        a = make_postgres_store(schema=schema)
        b = make_postgres_store(schema=schema)
        _, config = seed(a)
        with a.leader() as old:
            assert old
            assert a.create_prebuild(config.id, now=T0, name="a1", lease=old)
            terminate_leader(a)
            # Until someone else leads, the old token is still the leader's.
            assert a.create_prebuild(config.id, now=T0, name="a2", lease=old)
            with b.leader() as new:
                assert new
                with pytest.raises(LeadershipLostError):
                    a.create_prebuild(config.id, now=T0, name="a3", lease=old)
                with pytest.raises(LeadershipLostError):
                    a.set_preset_status(config.id, PresetStatus.HARD_LIMITED, lease=old)
                assert b.create_prebuild(config.id, now=T0, name="b1", lease=new)
        assert sorted(i.name for i in b.list_instances()) == ["a1", "a2", "b1"]
        assert b.get_preset(config.id).status is PresetStatus.HEALTHY
        assert advisory_locks(b) == 0
        with a.leader() as again:  # a new connection from a's pool
            assert again

    def test_a_lease_whose_scope_ended_cannot_write(self, store: PostgresStore) -> None:
        """Leaving the scope clears the token: the lease fences nothing any more."""
        _, config = seed(store)
        with store.leader() as lease:
            pass

        with pytest.raises(LeadershipLostError):
            store.create_prebuild(config.id, now=T0, name="late", lease=lease)
        assert store.list_instances() == []
        assert raw(store, "SELECT token FROM {s}.leader") == [(None,)]

    def test_snapshot_in_the_scope_reads_through_its_transaction(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        Inside the scope the snapshot is the lock transaction's REPEATABLE READ
        view: a write committed by another connection after the scope's first
        read is not visible; outside the scope (or in another thread) it is.
        """
        schema = fresh_schema_name()
        store = make_postgres_store(schema=schema)
        other = make_postgres_store(schema=schema)
        _, first = seed(store)
        seen_elsewhere: list[int] = []

        with store.leader() as acquired:
            assert acquired
            before = store.statement_count()
            inside = snap(store)
            statements_inside = store.statement_count() - before
            seed(other)  # committed by another connection
            again = snap(store)
            thread = threading.Thread(
                target=lambda: seen_elsewhere.append(len(snap(store).presets))
            )
            thread.start()
            thread.join(timeout=30)

        before = store.statement_count()
        after = snap(store)
        statements_outside = store.statement_count() - before

        assert [first.id] == [p.id for p in inside.presets]
        assert [first.id] == [p.id for p in again.presets]
        assert seen_elsewhere == [2]
        assert len(after.presets) == 2
        # Inside: no BEGIN/COMMIT of its own.
        assert statements_inside + 2 == statements_outside


# -- snapshot -------------------------------------------------------------------------
class TestSnapshot:
    def test_statements_per_snapshot_do_not_grow_with_presets(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """10 presets or 1,000 (with 5 prebuilds each): the same statements."""
        counts = []
        sizes = []
        for presets in (10, 1000):
            store = make_postgres_store()
            template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4())
            store.put_template(template)
            bulk_presets(store, template, presets)
            bulk_ready(store, 5)
            before = store.statement_count()
            snapshot = snap(store)
            counts.append(store.statement_count() - before)
            sizes.append((len(snapshot.presets), len(snapshot.running)))

        assert sizes == [(10, 50), (1000, 5000)]
        assert counts[0] == counts[1]
        assert counts[0] == 7

    def test_presets_written_by_hand_with_bad_values_are_reported(
        self, store: PostgresStore
    ) -> None:
        """Bad cron, time zone, count or JSON: reported and skipped, never raised."""
        _, good = seed(store)
        bad = {}
        for field in ("cron", "tz", "desired", "ttl", "json", "status"):
            _, config = seed(store)
            bad[field] = config.id
        raw(
            store,
            """UPDATE {s}.presets SET schedules = '[{"cron": "bad", "instances": 1}]'
            WHERE id = %(id)s""",
            {"id": bad["cron"]},
        )
        raw(
            store,
            "UPDATE {s}.presets SET scheduling_timezone = 'Mars/Base' WHERE id = %(id)s",
            {"id": bad["tz"]},
        )
        raw(
            store,
            "UPDATE {s}.presets SET desired_instances = -1 WHERE id = %(id)s",
            {"id": bad["desired"]},
        )
        raw(
            store,
            "UPDATE {s}.presets SET ttl = interval '-5 minutes' WHERE id = %(id)s",
            {"id": bad["ttl"]},
        )
        raw(
            store,
            """UPDATE {s}.presets SET parameters = '{"not": "a list"}'
            WHERE id = %(id)s""",
            {"id": bad["json"]},
        )
        raw(
            store,
            "UPDATE {s}.presets SET status = 'weird' WHERE id = %(id)s",
            {"id": bad["status"]},
        )

        snapshot = snap(store)

        assert [good.id] == [p.id for p in snapshot.presets]
        reported = {i.preset_id: i.field for i in snapshot.invalid_presets}
        assert set(bad.values()) == set(reported)
        assert reported[bad["desired"]] == "desired_instances"
        assert reported[bad["ttl"]] == "ttl"
        assert reported[bad["json"]] == "parameters"
        assert reported[bad["status"]] == "status"
        for preset_id in bad.values():
            with pytest.raises(InvalidInputError):
                store.get_preset(preset_id)

    def test_results_are_utc(
        self, postgres_dsn: str, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """Datetimes come back in UTC whatever the session's time zone."""
        schema = fresh_schema_name()
        make_postgres_store(schema=schema).close()  # created now, dropped at teardown
        tokyo = PostgresStore(
            connect=lambda: psycopg.connect(
                postgres_dsn, options="-c TimeZone=Asia/Tokyo"
            ),
            schema=schema,
        )
        _, config = seed(tokyo)
        request = tokyo.create_prebuild(
            config.id, now=T0.astimezone(timezone(timedelta(hours=5))), name="x"
        )
        assert request is not None

        instance = tokyo.get_instance(request.instance_id)
        build = tokyo.get_build(request.build_id)

        assert (instance.created_at, build.created_at) == (T0, T0)
        assert timezone.utc is instance.created_at.tzinfo
        assert timezone.utc is build.created_at.tzinfo
        assert raw(tokyo, "SHOW TimeZone") == [("Asia/Tokyo",)]

    def test_unknown_preset_errors(self, store: PostgresStore) -> None:
        """Writes that name an unknown preset raise PresetNotFoundError."""
        with pytest.raises(PresetNotFoundError):
            store.create_prebuild(uuid.uuid4(), now=T0, name="x")
        with pytest.raises(PresetNotFoundError):
            store.cancel_pending(uuid.uuid4(), now=T0)
        with pytest.raises(PresetNotFoundError):
            store.invalidate_preset(uuid.uuid4(), at=T0)


# -- races ------------------------------------------------------------------------------
def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run *target(i)* in *count* threads released together by a barrier."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(index)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []


@pytest.fixture(name="pool_of")
def _pool_of(
    make_postgres_store: PostgresStoreFactory,
) -> Callable[[int], tuple[PostgresStore, uuid.UUID]]:
    def make(size: int) -> tuple[PostgresStore, uuid.UUID]:
        store = make_postgres_store(max_size=20)
        template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4())
        store.put_template(template)
        config = PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=size,
        )
        store.put_preset(config)
        bulk_ready(store, size)
        return store, config.id

    return make


class TestRaces:
    def test_concurrent_claims_never_share_an_instance(
        self,
        pool_of: Callable[[int], tuple[PostgresStore, uuid.UUID]],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """16 threads claim from 2,000 ready prebuilds: no instance is claimed twice."""
        threads, size = 16, 2000
        store, preset_id = pool_of(size)
        got: list[list[Instance]] = [[] for _ in range(threads)]
        misses = [0] * threads
        users = [uuid.uuid4() for _ in range(threads)]

        def claimer(index: int) -> None:
            while True:
                instance = claim(store, preset_id, users[index])
                if instance is None:
                    misses[index] += 1
                    return
                assert isinstance(instance, Instance)
                got[index].append(instance)

        started = time.perf_counter()
        run_threads(threads, claimer)
        elapsed = time.perf_counter() - started
        leftovers = []
        while (instance := claim(store, preset_id, users[0])) is not None:
            leftovers.append(instance)

        claimed = [i.id for per_thread in got for i in per_thread] + [
            i.id for i in leftovers
        ]
        assert len(claimed) == len(set(claimed))
        assert size == len(claimed)
        owners = dict(raw(store, "SELECT id, owner_id FROM {s}.instances"))
        for index, per_thread in enumerate(got):
            for instance in per_thread:
                assert users[index] == instance.owner_id == owners[instance.id]
        with capsys.disabled():
            print(  # noqa: T201
                f"\n[contention] {threads} threads, {size} prebuilds: "
                f"{size - len(leftovers)} claimed concurrently in {elapsed:.2f}s "
                f"({(size - len(leftovers)) / elapsed:.0f} claims/s), "
                f"{len(leftovers)} left for the sequential drain, "
                f"per thread min/max {min(map(len, got))}/{max(map(len, got))}"
            )

    def test_claim_and_delete_never_both_win(
        self, pool_of: Callable[[int], tuple[PostgresStore, uuid.UUID]]
    ) -> None:
        """Claimers and deleters race over one pool: every instance goes one way."""
        size = 400
        store, preset_id = pool_of(size)
        ids = [i.id for i in store.list_instances(preset_id=preset_id)]
        claimed: list[uuid.UUID] = []
        deleted: list[BuildRequest] = []
        lock = threading.Lock()

        def worker(index: int) -> None:
            if index % 2 == 0:
                while (instance := claim(store, preset_id, uuid.uuid4())) is not None:
                    with lock:
                        claimed.append(instance.id)
            else:
                order = ids[:] if index % 4 == 1 else random.sample(ids, len(ids))
                for instance_id in order:
                    request = store.delete_prebuild(instance_id, now=T0)
                    if request is not None:
                        with lock:
                            deleted.append(request)

        run_threads(8, worker)

        deleted_ids = [r.instance_id for r in deleted]
        assert len(claimed) == len(set(claimed))
        assert len(deleted_ids) == len(set(deleted_ids))
        assert set() == set(claimed) & set(deleted_ids)
        assert set(ids) == set(claimed) | set(deleted_ids)
        delete_builds = {
            b.instance_id
            for b in store.list_builds()
            if b.transition is Transition.DELETE
        }
        assert set(deleted_ids) == delete_builds
        for instance in store.list_instances(preset_id=preset_id):
            assert (instance.owner_id != PREBUILDS_OWNER_ID) == (instance.id in claimed)


class TestClaims:
    @pytest.mark.parametrize("ttl_from_template", [False, True])
    def test_the_claimed_instance_is_what_the_store_holds(
        self, store: PostgresStore, *, ttl_from_template: bool
    ) -> None:
        """
        A claim returns the instance as it is now stored (the fast path
        builds it from what the claim wrote, not from a read).
        """
        _, config = seed(store, desired=1, default_ttl=timedelta(hours=8))
        bulk_ready(store, 1)
        now = T0 + timedelta(minutes=1)
        lifecycle = Lifecycle(
            autostart_schedule="CRON_TZ=UTC 0 9 * * 1-5",
            next_start_at=now + timedelta(days=1),
            ttl=timedelta(hours=2),
            last_used_at=now,
        )

        claimed = store.claim_checked(
            preset_id=config.id,
            user_id=(user := uuid.uuid4()),
            name="mine",
            lifecycle=lifecycle,
            now=now,
            ttl_from_template=ttl_from_template,
        )

        assert claimed is not None
        assert claimed == store.get_instance(claimed.id)
        assert (claimed.owner_id, claimed.name, claimed.claimed_at) == (
            user,
            "mine",
            now,
        )
        expected_ttl = timedelta(hours=8) if ttl_from_template else timedelta(hours=2)
        assert claimed.lifecycle == attrs.evolve(lifecycle, ttl=expected_ttl)

    def test_a_failed_claim_gives_its_connection_back(
        self, one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]
    ) -> None:
        """
        A claim that fails in the driver raises StoreError and returns its
        connection to the pool in a usable state: with a pool of one
        connection, the next claim works.
        """
        store, _ = one_connection
        _, config = seed(store, desired=2)
        bulk_ready(store, 2)
        assert claim(store, config.id, uuid.uuid4()) is not None
        raw(store, "ALTER TABLE {s}.instances RENAME TO moved")

        with pytest.raises(StoreError) as e:
            claim(store, config.id, uuid.uuid4())

        assert isinstance(e.value.__cause__, psycopg.Error)
        raw(store, 'ALTER TABLE {s}.moved RENAME TO "instances"')
        assert claim(store, config.id, uuid.uuid4()) is not None
        assert claim(store, config.id, uuid.uuid4()) is None


class TestRoundTrips:
    @pytest.mark.parametrize(
        "ttl",
        [
            timedelta(0),
            timedelta(microseconds=1),
            timedelta(days=1, seconds=5, microseconds=7),
            timedelta(days=40),
            MAX_DURATION - timedelta(microseconds=1),  # the longest: docs/limits.md
            MAX_DURATION,
        ],
    )
    def test_intervals_come_back_exact(
        self, store: PostgresStore, ttl: timedelta
    ) -> None:
        """Timedeltas survive the interval columns unchanged."""
        template = Template(
            id=uuid.uuid4(), active_version_id=uuid.uuid4(), default_ttl=ttl
        )
        store.put_template(template)
        _, config = seed(store)
        store.put_preset(attrs.evolve(config, ttl=ttl))

        assert store.get_template(template.id).default_ttl == ttl
        assert store.get_preset(config.id).ttl == ttl


def terminate_leader(store: PostgresStore) -> None:
    """
    End the leadership of *store*'s schema the way a replica loses it: the
    server terminates the session holding the advisory lock (and waits for
    it to be gone).
    """
    rows = raw(
        store,
        """
        SELECT pg_terminate_backend(pid, 30000) FROM pg_locks
        WHERE locktype = 'advisory' AND granted
            AND ((classid::bigint << 32) | objid::bigint) = %(key)s
        """,
        {"key": _lock_key("leader", store.schema)},
    )
    assert rows == [(True,)], rows


class TestConformanceKit:
    def test_check_store_passes(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        The testing kit's leader checks (two stores on one schema, a leader
        whose session is terminated) and its differential machine pass.
        """
        check_store(
            make_postgres_store,
            settings=settings(
                max_examples=10,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
            reopen=lambda s: make_postgres_store(schema=s.schema),  # type: ignore[attr-defined]
            take_over=terminate_leader,  # type: ignore[arg-type]
        )
