"""
PostgreSQL-specific behaviour of PostgresStore: migrations, the advisory-lock
leader scope and the read through it, reads of the pool at a constant cost,
stamps, and claims racing each other and the reconciler's deletes.

The shared Store contract runs in tests/test_store_contract.py.
"""

from __future__ import annotations

import random
import re
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
    GlobalSnapshot,
    Instance,
    InvalidInputError,
    LeadershipLostError,
    Lifecycle,
    PrebuildSchedule,
    PresetChangedError,
    PresetConfig,
    PresetFacts,
    PresetNotFoundError,
    PresetStatus,
    SchemaVersionError,
    StoreError,
    Template,
    Transition,
    derive,
)
from prebuilds._validate import MAX_DURATION
from prebuilds.stores._postgres import SCHEMA_VERSION, PostgresStore, connections
from prebuilds.stores._postgres import claim as claim_sql
from prebuilds.stores._postgres.schema import lock_key
from prebuilds.testing import check_store
from tests.postgres_cluster import PostgresStoreFactory, fresh_schema_name


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LOOKBACK = timedelta(hours=1)
MICRO = timedelta(microseconds=1)
MISSING = uuid.UUID(int=7)  # a version nothing is built from


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


def snap(store: PostgresStore, now: datetime = T0) -> GlobalSnapshot:
    """Every pool's state at *now*, derived from one read of *store*."""
    return derive(store.read_pool(), now=now, backoff_lookback=LOOKBACK, hard_limit=3)


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
    store: PostgresStore,
    preset_id: uuid.UUID,
    user: uuid.UUID,
    *,
    version_id: uuid.UUID | None = None,
) -> Instance | None:
    """Claim from the preset's version (read unless given), with no cut-off."""
    if version_id is None:
        version_id = store.read_preset(preset_id).config.template_version_id
    return store.claim(
        preset_id=preset_id,
        user_id=user,
        name="mine",
        lifecycle=Lifecycle(last_used_at=T0),
        now=T0 + timedelta(minutes=1),
        version_id=version_id,
        not_before=None,
    )


#: A claim's parameters for EXPLAIN: $1 the preset, $2 the version, the rest
#: literals (NULL when not named).
_PLAN_PARAMETERS = {
    "1": "%(preset)s",
    "2": "%(version)s",
    "4": "gen_random_uuid()",
    "5": "'u'",
    "6": "now()",
}


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
        assert config == store.read_preset(config.id).config

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
        assert config == stores[1].read_preset(config.id).config

    def test_upgrade_from_version_2_backfills_the_latest_build(
        self, store: PostgresStore
    ) -> None:
        """
        Migrations 3 and 5 copy each instance's latest build to its row; the
        trigger keeps it there.
        """
        template, config = seed(store)
        raw(store, "DROP TRIGGER track_latest_build ON {s}.builds")
        raw(store, "DROP FUNCTION {s}.track_latest_build()")
        raw(
            store,
            "ALTER TABLE {s}.instances DROP COLUMN latest_build_number,"
            " DROP COLUMN latest_transition, DROP COLUMN latest_status,"
            " DROP COLUMN latest_build_id, DROP COLUMN latest_build_created_at",
        )
        raw(store, "ALTER TABLE {s}.presets DROP COLUMN stamp")
        raw(store, "DROP TABLE {s}.leader")
        raw(store, "ALTER TABLE {s}.builds DROP COLUMN submitted")
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

        assert store.schema_version() == SCHEMA_VERSION == 8
        assert raw(
            store,
            "SELECT latest_transition, latest_status FROM {s}.instances"
            " ORDER BY created_at",
        ) == [("start", "succeeded"), ("stop", "succeeded")]
        latest = {}
        for build in sorted(store.list_builds(), key=lambda b: b.build_number):
            latest[build.instance_id] = build
        assert [
            (i.latest_build_id, i.latest_created_at)
            for i in sorted(store.read_pool().instances, key=lambda i: i.created_at)
        ] == [(latest[i].id, latest[i].created_at) for i in ids]
        now = datetime(2024, 1, 2, tzinfo=timezone.utc)
        claimed = store.claim(
            preset_id=config.id,
            user_id=uuid.uuid4(),
            name="u",
            lifecycle=Lifecycle(),
            now=now,
            version_id=template.active_version_id,
            not_before=None,
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
        (pooled,) = [i for i in store.read_pool().instances if i.id == ids[1]]
        (third,) = [
            b for b in store.list_builds(instance_id=ids[1]) if b.build_number == 3
        ]
        assert (third.id, third.created_at, 3) == (
            pooled.latest_build_id,
            pooled.latest_created_at,
            pooled.latest_number,
        )

    def test_upgrade_to_version_4_adds_the_leader_row(
        self, store: PostgresStore
    ) -> None:
        """Migration 4 adds the fencing token's row; leadership works after it."""
        raw(store, "DROP TABLE {s}.leader")
        raw(store, "ALTER TABLE {s}.builds DROP COLUMN submitted")
        raw(store, "UPDATE {s}.schema_version SET version = 3")

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 8
        assert raw(store, "SELECT token, epoch FROM {s}.leader") == [(None, 0)]
        with store.leader() as lease:
            assert lease
            assert raw(store, "SELECT token, epoch FROM {s}.leader") == [
                (lease.token, 1)
            ]
        assert raw(store, "SELECT token, epoch FROM {s}.leader") == [(None, 1)]

    def test_upgrade_to_version_5_stamps_and_one_json_shape(
        self, store: PostgresStore
    ) -> None:
        """
        Migration 5 gives every preset a stamp (0), stores schedules as
        [cron, instances] pairs (a hand-written bad one stays, to be
        reported), and puts the latest build's ID and time on its instance.
        """
        _, config = seed(store)
        good = attrs.evolve(
            config,
            id=uuid.uuid4(),
            scheduling_timezone="Europe/Berlin",
            schedules=[
                PrebuildSchedule(cron="* 8-11 * * 1-5", instances=3),
                PrebuildSchedule(cron="* 12-18 * * 1-5", instances=1),
            ],
        )
        store.put_preset(good)
        _, bad = seed(store)
        request = store.create_prebuild(config.id, now=T0, name="x")
        assert request is not None
        # Back to version 4: the stamp and the new columns gone, schedules
        # as objects, one of them written badly by hand.
        raw(store, "ALTER TABLE {s}.presets DROP COLUMN stamp")
        raw(
            store,
            "ALTER TABLE {s}.instances DROP COLUMN latest_build_id,"
            " DROP COLUMN latest_build_created_at",
        )
        raw(
            store,
            """
            UPDATE {s}.presets SET schedules = '[{"cron": "* 8-11 * * 1-5",
                "instances": 3}, {"cron": "* 12-18 * * 1-5", "instances": 1}]'
            WHERE id = %(id)s
            """,
            {"id": good.id},
        )
        raw(
            store,
            """UPDATE {s}.presets SET schedules = '[{"cron": "* 8 * * *"}]'
            WHERE id = %(id)s""",
            {"id": bad.id},
        )
        raw(store, "ALTER TABLE {s}.builds DROP COLUMN submitted")
        raw(store, "UPDATE {s}.schema_version SET version = 4")

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 8
        assert store.read_preset(good.id) == PresetFacts(
            config=good, template=store.get_template(good.template_id), stamp=0
        )
        assert raw(
            store,
            "SELECT schedules FROM {s}.presets WHERE id = %(id)s",
            {"id": good.id},
        ) == [([["* 8-11 * * 1-5", 3], ["* 12-18 * * 1-5", 1]],)]
        (invalid,) = store.read_pool().invalid_presets
        assert (bad.id, "schedules") == (invalid.preset_id, invalid.field)
        (pooled,) = store.read_pool().instances
        assert (request.build_id, T0) == (
            pooled.latest_build_id,
            pooled.latest_created_at,
        )

    def test_upgrade_to_version_8_reads_the_stamp_by_the_primary_key(
        self, store: PostgresStore
    ) -> None:
        """
        With 200 presets packed as version 7 left them, the claim's generic
        plan reads the stamp by a sequential scan of presets; migration 8
        spreads the rows (fillfactor 10) and the plan reads presets_pkey.
        """
        template, config = seed(store)
        bulk_presets(store, template, 199)
        bulk_ready(store, 2)
        # Back to version 7: the presets table at the default fill.
        raw(store, "ALTER TABLE {s}.presets RESET (fillfactor)")
        raw(store, "CLUSTER {s}.presets USING presets_pkey")
        raw(store, "ANALYZE {s}.presets")
        raw(store, "UPDATE {s}.schema_version SET version = 7")

        def stamp_plan() -> str:
            sql = claim_sql.CLAIM_ID_IF_UNCHANGED.replace(
                "{pool}", str(PREBUILDS_OWNER_ID)
            )
            return " ".join(
                row[0]
                for row in raw(
                    store,
                    "EXPLAIN "
                    + re.sub(
                        r"\$(\d+)",
                        lambda m: _PLAN_PARAMETERS.get(m[1], "NULL"),
                        sql,
                    ),
                    {"preset": config.id, "version": template.active_version_id},
                )
            )

        assert "Seq Scan on presets" in stamp_plan()

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 8
        [(options,)] = raw(
            store,
            "SELECT reloptions FROM pg_class WHERE oid = %(t)s::regclass",
            {"t": f'"{store.schema}".presets'},
        )
        assert ["fillfactor=10"] == options
        plan = stamp_plan()
        assert "Seq Scan on presets" not in plan
        assert "presets_pkey" in plan
        facts = store.read_preset(config.id)
        assert lean_claim(store, facts) is not None

    def test_upgrade_to_version_6_keys_the_claim_index_on_the_version(
        self, store: PostgresStore
    ) -> None:
        """
        Migration 6 re-creates instances_claimable keyed on (preset, version,
        created_at, id); the claim then reads its candidates from it, in
        order (no sort), and still takes the oldest of the version asked for.
        """
        template, config = seed(store)
        bulk_presets(store, template, 30)
        bulk_ready(store, 20)
        # Back to version 5: the index as migration 3 made it.
        raw(store, "DROP INDEX {s}.instances_claimable")
        raw(
            store,
            """
            CREATE INDEX instances_claimable
            ON {s}.instances (preset_id, created_at, id)
            WHERE owner_id = %(pool)s AND NOT deleted AND ready
                AND latest_transition = 'start' AND latest_status = 'succeeded'
            """.replace("%(pool)s", f"'{PREBUILDS_OWNER_ID}'"),
        )
        raw(store, "ALTER TABLE {s}.builds DROP COLUMN submitted")
        raw(store, "UPDATE {s}.schema_version SET version = 5")

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 8
        [(definition,)] = raw(
            store,
            "SELECT indexdef FROM pg_indexes"
            " WHERE schemaname = %(s)s AND indexname = 'instances_claimable'",
            {"s": store.schema},
        )
        assert "(preset_id, template_version_id, created_at, id)" in definition
        raw(store, "ANALYZE {s}.instances")
        plan = " ".join(
            row[0]
            for row in raw(
                store,
                "EXPLAIN "
                + re.sub(
                    r"\$(\d+)",
                    lambda m: _PLAN_PARAMETERS.get(m[1], "NULL"),
                    claim_sql.CLAIM.replace("{pool}", str(PREBUILDS_OWNER_ID)),
                ),
                {"preset": config.id, "version": template.active_version_id},
            )
        )
        assert "instances_claimable" in plan
        assert "Sort" not in plan
        oldest = raw(
            store,
            "SELECT id FROM {s}.instances WHERE preset_id = %(p)s"
            " ORDER BY created_at, id LIMIT 1",
            {"p": config.id},
        )
        claimed = claim(store, config.id, uuid.uuid4())
        assert claimed is not None
        assert [(claimed.id,)] == oldest

    def test_upgrade_to_version_7_records_whether_a_build_was_submitted(
        self, store: PostgresStore
    ) -> None:
        """
        Migration 7 adds builds.submitted: a build from before was submitted
        (stuck, it fails, as before); create_prebuilds' builds are not until
        record_submits marks them (stuck and never submitted: canceled).
        """
        _, config = seed(store, desired=3)
        old = store.create_prebuild(config.id, now=T0, name="old")
        assert old is not None
        raw(store, "ALTER TABLE {s}.builds DROP COLUMN submitted")
        raw(store, "UPDATE {s}.schema_version SET version = 6")

        store.migrate()

        assert store.schema_version() == SCHEMA_VERSION == 8
        assert raw(store, "SELECT submitted FROM {s}.builds") == [(True,)]
        handed, never = store.create_prebuilds(config.id, now=T0, names=["a", "b"])
        store.record_submits([handed.build_id], now=T0)
        stuck = store.fail_stuck_builds(older_than=T0 + MICRO, now=T0)
        assert {
            old.build_id: (BuildStatus.FAILED, "timeout"),
            handed.build_id: (BuildStatus.FAILED, "timeout"),
            never.build_id: (BuildStatus.CANCELED, "not_submitted"),
        } == {b.id: (b.status, b.error_kind) for b in stuck}
        assert {
            old.instance_id: BuildStatus.FAILED,
            handed.instance_id: BuildStatus.FAILED,
            never.instance_id: BuildStatus.CANCELED,
        } == {i.id: i.latest_status for i in store.read_pool().instances}

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
        assert b.read_preset(config.id).status is PresetStatus.HEALTHY
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

    def test_read_pool_in_the_scope_reads_through_its_transaction(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        Inside the scope read_pool reads the lock transaction's REPEATABLE
        READ view: a write committed by another connection after the scope's
        first read is not visible; outside the scope (or in another thread)
        it is.
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


# -- read_pool ------------------------------------------------------------------------
class TestReadPool:
    def test_statements_per_read_do_not_grow_with_presets(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        10 presets or 1,000 (with 5 prebuilds each): the same statements, BEGIN,
        two queries and COMMIT.
        """
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
        assert counts[0] == 4

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
            """UPDATE {s}.presets SET schedules = '[["bad", 1]]' WHERE id = %(id)s""",
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

        facts = store.read_pool()

        assert [good.id] == [p.config.id for p in facts.presets]
        reported = {i.preset_id: i.field for i in facts.invalid_presets}
        assert set(bad.values()) == set(reported)
        assert reported[bad["cron"]] == "cron"
        assert reported[bad["desired"]] == "desired_instances"
        assert reported[bad["ttl"]] == "ttl"
        assert reported[bad["json"]] == "parameters"
        assert reported[bad["status"]] == "status"
        for preset_id in bad.values():
            with pytest.raises(InvalidInputError):
                store.read_preset(preset_id)

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
        version = store.read_preset(preset_id).config.template_version_id
        got: list[list[Instance]] = [[] for _ in range(threads)]
        misses = [0] * threads
        users = [uuid.uuid4() for _ in range(threads)]

        def claimer(index: int) -> None:
            while True:
                instance = claim(store, preset_id, users[index], version_id=version)
                if instance is None:
                    misses[index] += 1
                    return
                assert isinstance(instance, Instance)
                got[index].append(instance)

        started = time.perf_counter()
        run_threads(threads, claimer)
        elapsed = time.perf_counter() - started
        leftovers = []
        while (
            instance := claim(store, preset_id, users[0], version_id=version)
        ) is not None:
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
        version = store.read_preset(preset_id).config.template_version_id
        ids = [i.id for i in store.list_instances(preset_id=preset_id)]
        claimed: list[uuid.UUID] = []
        deleted: list[BuildRequest] = []
        lock = threading.Lock()

        def worker(index: int) -> None:
            if index % 2 == 0:
                while (
                    instance := claim(
                        store, preset_id, uuid.uuid4(), version_id=version
                    )
                ) is not None:
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
    @pytest.mark.parametrize("stamped", [False, True])
    def test_the_claimed_instance_is_what_the_store_holds(
        self, store: PostgresStore, *, stamped: bool
    ) -> None:
        """
        A claim returns the instance as it is now stored (it is built from
        what the claim wrote and three columns, not read again), with every
        lifecycle field as given.
        """
        template, config = seed(store, desired=1, default_ttl=timedelta(hours=8))
        bulk_ready(store, 1)
        now = T0 + timedelta(minutes=1)
        berlin = timezone(timedelta(hours=1))
        lifecycle = Lifecycle(
            autostart_schedule="CRON_TZ=UTC 0 9 * * 1-5",
            next_start_at=(now + timedelta(days=1)).astimezone(berlin),
            ttl=timedelta(hours=2, microseconds=3),
            deadline=now + timedelta(hours=2),
            max_deadline=now + timedelta(hours=3),
            dormant_at=now + timedelta(days=7),
            deleting_at=now + timedelta(days=30),
            last_used_at=now.astimezone(berlin),
        )
        arguments: dict[str, Any] = {
            "preset_id": config.id,
            "user_id": (user := uuid.uuid4()),
            "name": "mine",
            "lifecycle": lifecycle,
            "now": now.astimezone(berlin),
            "version_id": template.active_version_id,
            "not_before": T0,
        }

        claimed = (
            store.claim_if_unchanged(stamp=0, **arguments)
            if stamped
            else store.claim(**arguments)
        )

        assert claimed is not None
        assert claimed == store.get_instance(claimed.id)
        assert (claimed.owner_id, claimed.name, claimed.claimed_at) == (
            user,
            "mine",
            now,
        )
        assert timezone.utc is claimed.claimed_at.tzinfo  # type: ignore[union-attr]
        assert lifecycle == claimed.lifecycle

    def test_the_claim_only_compares(self, store: PostgresStore) -> None:
        """
        The version and the cut-off are the caller's: an instance of another
        version, or created before the cut-off, is not claimable; one created
        exactly at the cut-off is; an unknown preset is a miss.
        """
        template, config = seed(store, desired=1)
        bulk_ready(store, 1)  # created at T0 + 1 ms
        (ready,) = store.list_instances()

        def attempt(version: uuid.UUID, not_before: datetime | None) -> Any:
            return store.claim(
                preset_id=config.id,
                user_id=uuid.uuid4(),
                name="mine",
                lifecycle=Lifecycle(),
                now=T0 + timedelta(days=400),  # no age limit in the store
                version_id=version,
                not_before=not_before,
            )

        assert attempt(uuid.uuid4(), None) is None
        assert attempt(template.active_version_id, ready.created_at + MICRO) is None
        assert (
            store.claim(
                preset_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                name="mine",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=template.active_version_id,
                not_before=None,
            )
            is None
        )
        claimed = attempt(template.active_version_id, ready.created_at)
        assert claimed is not None
        assert ready.id == claimed.id

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


def stamped_claim(
    store: PostgresStore, facts: PresetFacts, *, now: datetime = T0
) -> Instance | None:
    """A claim against *facts* (its stamp and version), no cut-off."""
    assert facts.stamp is not None
    return store.claim_if_unchanged(
        stamp=facts.stamp,
        preset_id=facts.config.id,
        user_id=uuid.uuid4(),
        name="mine",
        lifecycle=Lifecycle(last_used_at=now),
        now=now,
        version_id=facts.config.template_version_id,
        not_before=None,
    )


class TestStamps:
    def test_what_a_claim_depends_on_changes_the_stamp(
        self, store: PostgresStore
    ) -> None:
        """
        put_preset, invalidate_preset and put_template of the preset's
        template each change its stamp; its status and another template do
        not.
        """
        template, config = seed(store)
        other, _ = seed(store)
        stamps = [store.read_preset(config.id).stamp]

        def changed() -> bool:
            stamps.append(store.read_preset(config.id).stamp)
            return stamps[-1] != stamps[-2]

        store.put_preset(attrs.evolve(config, desired_instances=3))
        assert changed()
        store.invalidate_preset(config.id, at=T0)
        assert changed()
        store.put_template(attrs.evolve(template, deprecated=True))
        assert changed()
        store.set_preset_status(config.id, PresetStatus.HARD_LIMITED)
        assert not changed()
        store.put_template(attrs.evolve(other, name="other"))
        assert not changed()
        assert len(set(stamps)) == 4

    def test_a_stale_stamp_writes_nothing_and_holds_no_row(
        self, store: PostgresStore
    ) -> None:
        """
        A claim with a stale stamp raises PresetChangedError, leaves the pool
        as it was and locks nothing (a claim on another connection at once
        gets the oldest instance); an unknown preset is a change too.
        """
        _, config = seed(store)
        bulk_ready(store, 2)
        facts = store.read_preset(config.id)
        store.invalidate_preset(config.id, at=T0)
        before = store.list_instances()

        with pytest.raises(PresetChangedError) as e:
            stamped_claim(store, facts)

        assert config.id == e.value.preset_id
        assert before == store.list_instances()
        oldest = min(before, key=lambda i: (i.created_at, i.id))
        claimed = stamped_claim(store, store.read_preset(config.id))
        assert claimed is not None
        assert oldest.id == claimed.id
        with pytest.raises(PresetChangedError):
            stamped_claim(
                store, attrs.evolve(facts, config=attrs.evolve(config, id=uuid.uuid4()))
            )

    def test_another_replica_changing_the_preset_is_seen(
        self, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """
        Facts read on one store object go stale when a second one, on the
        same schema, changes the preset between two claims: the second claim
        raises, and the facts read again claim.
        """
        schema = fresh_schema_name()
        mine = make_postgres_store(schema=schema)
        theirs = make_postgres_store(schema=schema)
        template, config = seed(mine)
        bulk_ready(mine, 2)
        facts = mine.read_preset(config.id)
        assert stamped_claim(mine, facts) is not None

        theirs.put_template(attrs.evolve(template, active_version_id=uuid.uuid4()))

        with pytest.raises(PresetChangedError):
            stamped_claim(mine, facts)
        fresh = mine.read_preset(config.id)
        assert not fresh.preset.is_active
        assert stamped_claim(mine, fresh) is not None  # the store only compares

    def test_a_stamped_claim_is_one_statement(self, store: PostgresStore) -> None:
        """A claim, stamped or not, hit, miss or stale: one statement each."""
        _, config = seed(store)
        bulk_ready(store, 1)
        facts = store.read_preset(config.id)
        counts = []
        attempts: tuple[Callable[[], object], ...] = (
            lambda: stamped_claim(store, facts),  # hit
            lambda: stamped_claim(store, facts),  # miss
            lambda: claim(store, config.id, uuid.uuid4(), version_id=MISSING),
        )
        for attempt in attempts:
            before = store.statement_count()
            attempt()
            counts.append(store.statement_count() - before)
        store.put_preset(config)
        before = store.statement_count()
        with pytest.raises(PresetChangedError):
            stamped_claim(store, facts)
        counts.append(store.statement_count() - before)

        assert [1, 1, 1, 1] == counts

    @pytest.mark.parametrize(
        ("arguments", "field"),
        [
            ({"stamp": -1}, "stamp"),
            ({"stamp": True}, "stamp"),
            ({"version_id": "v"}, "version_id"),
            ({"not_before": datetime(2024, 1, 1)}, "not_before"),  # noqa: DTZ001
            ({"user_id": PREBUILDS_OWNER_ID}, "user_id"),
        ],
    )
    def test_bad_arguments_are_refused_first(
        self, store: PostgresStore, arguments: dict[str, Any], field: str
    ) -> None:
        """A bad argument is an InvalidInputError naming it; nothing is sent."""
        valid: dict[str, Any] = {
            "stamp": 0,
            "preset_id": uuid.uuid4(),
            "user_id": uuid.uuid4(),
            "name": "mine",
            "lifecycle": Lifecycle(),
            "now": T0,
            "version_id": uuid.uuid4(),
            "not_before": None,
        }
        before = store.statement_count()

        with pytest.raises(InvalidInputError) as e:
            store.claim_if_unchanged(**(valid | arguments))

        assert field == e.value.field
        assert before == store.statement_count()


def lean_claim(
    store: PostgresStore,
    facts: PresetFacts,
    *,
    now: datetime = T0,
    ttl: timedelta | None = None,
    autostart_schedule: str | None = None,
    next_start_at: datetime | None = None,
    not_before: datetime | None = None,
) -> uuid.UUID | None:
    """A lean claim (claim_id_if_unchanged) against *facts*."""
    assert facts.stamp is not None
    return store.claim_id_if_unchanged(
        stamp=facts.stamp,
        preset_id=facts.config.id,
        user_id=uuid.uuid4(),
        name="mine",
        now=now,
        autostart_schedule=autostart_schedule,
        next_start_at=next_start_at,
        ttl=ttl,
        version_id=facts.config.template_version_id,
        not_before=not_before,
    )


class TestLeanClaim:
    """claim_id_if_unchanged, sent through libpq with its own binary codecs."""

    @pytest.mark.parametrize("source", ["pool", "connect"])
    def test_what_a_lean_claim_binds_is_what_the_row_holds(
        self,
        postgres_dsn: str,
        make_postgres_store: PostgresStoreFactory,
        source: str,
    ) -> None:
        """
        Each bound field reads back exact (an instant given in another
        offset, an interval of days, seconds and microseconds), from a pooled
        connection (a prepared statement) or a connection per call.
        """
        schema = fresh_schema_name()
        make_postgres_store(schema=schema, migrate=source == "connect").close()
        store = (
            PostgresStore(postgres_dsn, schema=schema)
            if source == "pool"
            else PostgresStore(
                connect=lambda: psycopg.connect(postgres_dsn), schema=schema
            )
        )
        with store:
            _, config = seed(store)
            bulk_ready(store, 2)
            facts = store.read_preset(config.id)
            east = timezone(timedelta(hours=5, minutes=30))
            now = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=east)
            ttl = timedelta(days=2, seconds=7, microseconds=9)
            starts = datetime(2024, 3, 2, 9, tzinfo=timezone.utc)
            claimed = lean_claim(
                store,
                facts,
                now=now,
                ttl=ttl,
                autostart_schedule="0 9 * * 1-5",
                next_start_at=starts,
                not_before=T0 - timedelta(days=1),
            )
            assert claimed is not None
            instance = store.get_instance(claimed)

        assert "mine" == instance.name
        assert now == instance.claimed_at
        assert (
            Lifecycle(
                autostart_schedule="0 9 * * 1-5",
                next_start_at=starts,
                ttl=ttl,
                last_used_at=now,
            )
            == instance.lifecycle
        )

    def test_a_name_is_sent_in_the_connection_encoding(
        self, postgres_dsn: str, make_postgres_store: PostgresStoreFactory
    ) -> None:
        """A name outside ASCII reads back the same over a LATIN1 connection."""
        schema = fresh_schema_name()
        make_postgres_store(schema=schema).close()
        with PostgresStore(
            connect=lambda: psycopg.connect(postgres_dsn, client_encoding="LATIN1"),
            schema=schema,
        ) as store:
            _, config = seed(store)
            bulk_ready(store, 1)
            facts = store.read_preset(config.id)
            assert facts.stamp is not None
            claimed = store.claim_id_if_unchanged(
                stamp=facts.stamp,
                preset_id=config.id,
                user_id=uuid.uuid4(),
                name="café",
                now=T0,
                autostart_schedule=None,
                next_start_at=None,
                ttl=None,
                version_id=config.template_version_id,
                not_before=None,
            )
            assert claimed is not None
            assert "café" == store.get_instance(claimed).name

    def test_a_deallocated_statement_is_prepared_again(
        self, one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]
    ) -> None:
        """
        A host that deallocates its connection's statements (``DISCARD
        ALL``) between claims costs the next claim a new ``PREPARE``, not an
        error.
        """
        store, pool = one_connection
        _, config = seed(store)
        bulk_ready(store, 2)
        facts = store.read_preset(config.id)
        first = lean_claim(store, facts)
        with pool.connection() as conn:  # the store's only connection
            conn.autocommit = True
            conn.execute("DISCARD ALL")

        second = lean_claim(store, facts)

        assert first is not None
        assert second is not None
        assert first != second
        assert lean_claim(store, facts) is None

    def test_statements_dropped_again_and_again_go_unnamed(
        self, one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]
    ) -> None:
        """
        On a connection whose statements a host keeps deallocating, the claim
        stops preparing (after the second time) and is sent unnamed: one
        round trip, not a failed execute and a new PREPARE every time.
        """
        store, pool = one_connection
        _, config = seed(store)
        bulk_ready(store, 5)
        facts = store.read_preset(config.id)

        def prepared() -> list[str]:
            with pool.connection() as conn:  # the store's only connection
                conn.autocommit = True
                rows = conn.execute(
                    "SELECT name FROM pg_prepared_statements"
                    " WHERE name LIKE 'prebuilds%'"
                ).fetchall()
                conn.execute("DISCARD ALL")
            return [row[0] for row in rows]

        claimed = [lean_claim(store, facts)]
        assert len(prepared()) == 1  # then dropped
        claimed.append(lean_claim(store, facts))
        assert len(prepared()) == 1  # prepared again, dropped again
        claimed.append(lean_claim(store, facts))  # found dropped a second time
        assert len(prepared()) == 1
        claimed.append(lean_claim(store, facts))

        assert [] == prepared()
        assert None not in claimed
        assert len(set(claimed)) == 4

    def test_a_failed_lean_claim_gives_its_connection_back(
        self, one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]
    ) -> None:
        """
        A lean claim the server refuses raises StoreError (its cause the
        driver's error) and leaves the pool's only connection usable.
        """
        store, _ = one_connection
        _, config = seed(store)
        bulk_ready(store, 2)
        facts = store.read_preset(config.id)
        assert lean_claim(store, facts) is not None
        raw(store, "ALTER TABLE {s}.instances RENAME TO moved")

        with pytest.raises(StoreError) as e:
            lean_claim(store, facts)

        assert isinstance(e.value.__cause__, psycopg.Error)
        raw(store, 'ALTER TABLE {s}.moved RENAME TO "instances"')
        assert lean_claim(store, facts) is not None
        assert lean_claim(store, facts) is None

    def test_a_changed_preset_is_refused(self, store: PostgresStore) -> None:
        """A stale stamp, or a preset that is gone, is PresetChangedError."""
        _, config = seed(store)
        bulk_ready(store, 1)
        facts = store.read_preset(config.id)
        store.put_preset(config)

        with pytest.raises(PresetChangedError):
            lean_claim(store, facts)
        with pytest.raises(PresetChangedError):
            lean_claim(
                store, attrs.evolve(facts, config=attrs.evolve(config, id=uuid.uuid4()))
            )
        assert lean_claim(store, store.read_preset(config.id)) is not None


class TestClaimConnections:
    """
    Claims on the own pool pass their idle connections to each other while
    any claim is in flight; the last one out gives them all back but its
    own, which the next call takes.
    """

    @staticmethod
    def requests(store: PostgresStore) -> int:
        """How many connections the store's own pool has handed out."""
        assert store._db.pool is not None
        return int(store._db.pool.get_stats().get("requests_num", 0))

    @staticmethod
    def available(store: PostgresStore) -> tuple[int, int]:
        """The own pool's size and how many of its connections are in it."""
        assert store._db.pool is not None
        stats = store._db.pool.get_stats()
        return stats["pool_size"], stats["pool_available"]

    def test_claims_pass_a_connection_while_one_is_in_flight(
        self, store: PostgresStore
    ) -> None:
        """
        With a claim in flight, a finished claim's connection serves the
        next claim without the pool; when the last claim is out, every
        connection but its own is back in the pool, and a lone claimer's
        claims keep using that one.
        """
        _, config = seed(store)
        bulk_ready(store, 4)
        facts = store.read_preset(config.id)
        db = store._db
        in_flight, switched, since = db.acquire_claim()  # a claim under way
        assert (switched, since is not None) == (False, True)
        first = lean_claim(store, facts)
        before = self.requests(store)

        claimed = [lean_claim(store, facts), lean_claim(store, facts)]

        assert self.requests(store) == before  # both on the kept connection
        assert len(db._kept) == 1
        db.release_claim(in_flight, since)
        size, available = self.available(store)
        assert [conn for conn, _ in db._kept] == [in_flight]  # the last one out's
        assert available == size - 1
        assert None not in [first, *claimed]
        assert len({first, *claimed}) == 3
        before = self.requests(store)
        assert lean_claim(store, facts) is not None  # alone, on the same one
        assert self.requests(store) == before
        assert [conn for conn, _ in db._kept] == [in_flight]
        assert self.available(store) == (size, size - 1)

    def test_a_connection_goes_back_to_the_pool_after_its_lease(
        self, store: PostgresStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        A kept connection out for longer than CLAIM_LEASE goes back to the
        pool at its next use, by a claim or by any other call.
        """
        _, config = seed(store)
        bulk_ready(store, 4)
        facts = store.read_preset(config.id)
        db = store._db
        in_flight, _, since = db.acquire_claim()
        monkeypatch.setattr(connections, "CLAIM_LEASE", 0.0)
        before = self.requests(store)

        assert lean_claim(store, facts) is not None
        assert lean_claim(store, facts) is not None

        assert self.requests(store) == before + 2  # a fresh lease each time
        db.release_claim(in_flight, since)
        size, available = self.available(store)
        assert (len(db._kept), available) == (1, size - 1)
        store.read_preset(config.id)  # not on the kept one: its lease is over
        assert (db._kept, self.available(store)[1]) == ([], size)

    def test_a_failed_claim_keeps_no_connection(self, store: PostgresStore) -> None:
        """A claim the server refuses gives its connection to the pool."""
        _, config = seed(store)
        bulk_ready(store, 2)
        facts = store.read_preset(config.id)
        db = store._db
        in_flight, _, since = db.acquire_claim()
        raw(store, "ALTER TABLE {s}.instances RENAME TO moved")

        with pytest.raises(StoreError):
            lean_claim(store, facts)

        assert db._kept == []
        raw(store, 'ALTER TABLE {s}.moved RENAME TO "instances"')
        db.release_claim(in_flight, since)
        size, available = self.available(store)
        assert available == size - 1  # the last one out's, kept
        assert lean_claim(store, facts) is not None

    def test_a_hosts_pool_gets_every_connection_back(
        self, one_connection: tuple[PostgresStore, psycopg_pool.ConnectionPool[Any]]
    ) -> None:
        """
        On a host's pool nothing is kept: a claim's connection goes back to
        it even while another claim is in flight.
        """
        store, pool = one_connection
        _, config = seed(store)
        bulk_ready(store, 3)
        facts = store.read_preset(config.id)
        db = store._db

        with ThreadPoolExecutor(1) as other:
            conn, _, since = db.acquire_claim()  # the only connection
            assert since is None
            waiting = other.submit(lean_claim, store, facts)
            db.release_claim(conn, since)
            assert waiting.result(timeout=30) is not None

        assert lean_claim(store, facts) is not None
        assert pool.get_stats()["pool_available"] == 1

    def test_closing_gives_back_the_kept_connections(
        self, store: PostgresStore
    ) -> None:
        """
        A store closed with claims in flight keeps nothing: what was kept
        goes back before its pool closes, and a claim that ends afterwards
        gives its connection to the closed pool (which closes it).
        """
        _, config = seed(store)
        bulk_ready(store, 2)
        facts = store.read_preset(config.id)
        db = store._db
        in_flight, _, since = db.acquire_claim()
        assert lean_claim(store, facts) is not None
        kept = [conn for conn, _ in db._kept]
        assert len(kept) == 1

        store.close()

        assert db._kept == []
        db.release_claim(in_flight, since)
        assert db._kept == []
        assert all(conn.closed for conn in [*kept, in_flight])
        with pytest.raises(StoreError, match="closed"):
            lean_claim(store, facts)


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
        assert store.read_preset(config.id).config.ttl == ttl


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
        {"key": lock_key("leader", store.schema)},
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
