"""
SQLiteStore-specific behaviour: schema versioning and migrations, pragmas,
the constant cost of a pool read, the latest build kept on the instance row,
stamps, hand-written invalid rows, error wrapping, and atomicity of claims,
deletes and the leader lease across threads and processes.

The store contract shared with the other backends is in
``test_store_contract.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
import threading
import uuid

from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildNotFoundError,
    BuildRequest,
    BuildStatus,
    Instance,
    InstanceNotFoundError,
    InvalidInputError,
    LeadershipLostError,
    Lifecycle,
    NoClaimablePrebuildsError,
    PrebuildSchedule,
    PresetChangedError,
    PresetConfig,
    PresetNotFoundError,
    PresetStatus,
    SchemaVersionError,
    StoreClaimer,
    StoreError,
    StoreReconciler,
    Template,
    TemplateNotFoundError,
    Transition,
)
from prebuilds._validate import MAX_DATETIME, MAX_DURATION, MIN_DATETIME
from prebuilds.interfaces import Store
from prebuilds.stores import SQLiteStore
from prebuilds.stores._sqlite import _MIGRATIONS, SCHEMA_VERSION, schema, sql
from prebuilds.testing import FakeClock


OpenStore = Callable[..., SQLiteStore]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LOOKBACK = timedelta(hours=1)
#: Generous bound for joins and barriers: only reached if something hangs.
WAIT = 60.0


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "pool.sqlite3"


@pytest.fixture(name="open_store")
def _open_store(path: Path) -> Iterator[OpenStore]:
    """Open SQLiteStores (on *path* unless told otherwise); all closed after the test."""
    opened: list[SQLiteStore] = []

    def open_store(where: str | Path = path, **kwargs: Any) -> SQLiteStore:
        store = SQLiteStore(where, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the file outside the store ("by hand") and commit."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
    return rows


def add_template(store: SQLiteStore) -> Template:
    template = Template(id=uuid.uuid4(), active_version_id=uuid.uuid4(), name="t")
    store.put_template(template)
    return template


def add_preset(store: SQLiteStore, template: Template, **kwargs: Any) -> PresetConfig:
    config = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=kwargs.pop("desired_instances", 1),
        **kwargs,
    )
    store.put_preset(config)
    return config


def ready_pool(store: SQLiteStore, count: int) -> tuple[UUID, list[UUID]]:
    """A preset with *count* ready, running prebuilds; their IDs oldest first."""
    preset = add_preset(store, add_template(store), desired_instances=count)
    ids = []
    for i in range(count):
        request = store.create_prebuild(
            preset.id, now=T0 + timedelta(seconds=i), name=f"prebuild-{i}"
        )
        assert request is not None
        store.build_finished(request.build_id, now=T0, succeeded=True)
        store.set_ready(request.instance_id)
        ids.append(request.instance_id)
    return preset.id, ids


def claim_one(
    store: SQLiteStore, preset_id: UUID, user_id: UUID, name: str = "claimed"
) -> Instance | None:
    """One claim of the preset's active version, nothing expired."""
    return store.claim(
        preset_id=preset_id,
        user_id=user_id,
        name=name,
        lifecycle=Lifecycle(last_used_at=T0),
        now=T0 + timedelta(minutes=10),
        version_id=store.read_preset(preset_id).template.active_version_id,
        not_before=None,
    )


def claim_all(store: SQLiteStore, preset_id: UUID, user_id: UUID) -> list[UUID]:
    """Claim until the pool is empty; the claimed IDs."""
    claimed: list[UUID] = []
    while True:
        instance = claim_one(store, preset_id, user_id, f"claimed-{len(claimed)}")
        if instance is None:
            return claimed
        assert instance.owner_id == user_id
        claimed.append(instance.id)


def run_threads(count: int, target: Callable[[int], object]) -> None:
    """Run *target(i)* in *count* threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


class DeleteClaimRace:
    """
    Claimers claim until the pool is empty; deleters start after the first
    claim and sweep every instance until the claimers are done, then once
    more, so that a delete of a claimed instance could not go unnoticed.
    """

    def __init__(
        self,
        store: SQLiteStore,
        preset_id: UUID,
        ids: list[UUID],
        *,
        claimers: int,
        deleters: int,
    ) -> None:
        self.store = store
        self.preset_id = preset_id
        self.ids = ids
        self.claimers = claimers
        self.claimed: list[list[UUID]] = [[] for _ in range(claimers)]
        self.deleted: list[list[UUID]] = [[] for _ in range(deleters)]
        self.first_claim = threading.Event()
        self.claimers_done = threading.Event()
        self._lock = threading.Lock()
        self._finished = 0

    def run(self, i: int) -> None:
        if i < self.claimers:
            self.claim(i)
        else:
            self.delete(i - self.claimers)

    def claim(self, i: int) -> None:
        user = uuid.uuid4()
        try:
            while True:
                instance = claim_one(self.store, self.preset_id, user)
                if instance is None:
                    return
                self.claimed[i].append(instance.id)
                self.first_claim.set()
        finally:
            with self._lock:
                self._finished += 1
                if self._finished == self.claimers:
                    self.first_claim.set()
                    self.claimers_done.set()

    def delete(self, i: int) -> None:
        assert self.first_claim.wait(WAIT)
        order = list(self.ids)
        random.Random(i).shuffle(order)
        while True:
            last_sweep = self.claimers_done.is_set()
            for instance_id in order:
                request = self.store.delete_prebuild(instance_id, now=T0)
                if request is not None:
                    self.deleted[i].append(request.instance_id)
            if last_sweep:
                return


# -- child processes (module level: spawn imports them by name) ---------------


def _child_open(path: str, barrier: Any, queue: Any) -> None:
    try:
        barrier.wait(WAIT)
        with SQLiteStore(path) as store:
            queue.put(("ok", store.is_paused()))
    except BaseException as e:
        queue.put(("error", repr(e)))


def _child_claim(path: str, preset_id: str, barrier: Any, queue: Any) -> None:
    try:
        user = uuid.uuid4()
        with SQLiteStore(path) as store:
            barrier.wait(WAIT)
            claimed = claim_all(store, UUID(preset_id), user)
            owners = {store.get_instance(i).owner_id for i in claimed}
        queue.put(
            ("ok", [str(i) for i in claimed], [str(o) for o in owners], str(user))
        )
    except BaseException as e:
        queue.put(("error", repr(e)))


def _child_lead(path: str, held: Any, release: Any, queue: Any, lease_us: int) -> None:
    try:
        lease_ttl = timedelta(microseconds=lease_us)
        with (
            SQLiteStore(path, lease_ttl=lease_ttl) as store,
            store.leader() as acquired,
        ):
            queue.put(("ok", bool(acquired)))
            held.set()
            if release is None:
                queue.close()
                queue.join_thread()
                os._exit(0)  # die holding the lease
            release.wait(WAIT)
    except BaseException as e:
        queue.put(("error", repr(e)))


def spawn() -> Any:
    return multiprocessing.get_context("spawn")


def result(queue: Any) -> Any:
    item = queue.get(timeout=WAIT)
    assert item[0] == "ok", item
    return item


def write_schema_1_file(path: Path) -> dict[str, str]:
    """
    A file as the schema-1 code wrote it: its tables and version record, a
    template, a preset and instances with builds of every kind; their IDs
    by role.
    """
    ids = {
        role: str(uuid.uuid4())
        for role in (
            "template",
            "version",
            "preset",
            "ready",
            "queued",
            "deleting",
            "claimed",
            "deleted",
            "failed",
        )
    }
    owner = str(PREBUILDS_OWNER_ID)
    us = 1_700_000_000_000_000
    # (instance, owner, ready, deleted, builds as (transition, status))
    instances = [
        ("ready", owner, 1, 0, [("start", "succeeded")]),
        ("queued", owner, 0, 0, [("start", "pending")]),
        ("deleting", owner, 0, 0, [("start", "succeeded"), ("delete", "pending")]),
        ("claimed", str(uuid.uuid4()), 1, 0, [("start", "succeeded")]),
        ("deleted", owner, 0, 1, [("start", "succeeded"), ("delete", "succeeded")]),
        ("failed", owner, 0, 0, [("start", "failed")]),
    ]
    with closing(sqlite3.connect(path)) as conn:
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "CREATE TABLE prebuilds_schema (singleton INTEGER PRIMARY KEY "
            "CHECK (singleton = 1), version INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO prebuilds_schema VALUES (1, 1)")
        conn.execute("INSERT INTO prebuilds_settings VALUES ('paused', 'true')")
        conn.execute(
            "INSERT INTO prebuilds_templates (id, active_version_id, name) "
            "VALUES (?, ?, 't')",
            (ids["template"], ids["version"]),
        )
        conn.execute(
            "INSERT INTO prebuilds_presets (id, template_id, template_version_id, "
            "desired_instances, schedules, parameters) VALUES (?, ?, ?, 4, '[]', '[]')",
            (ids["preset"], ids["template"], ids["version"]),
        )
        for n, (role, who, ready, deleted, builds) in enumerate(instances):
            conn.execute(
                "INSERT INTO prebuilds_instances (id, preset_id, template_id, "
                "template_version_id, owner_id, name, created_at, ready, "
                "last_used_at, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ids[role],
                    ids["preset"],
                    ids["template"],
                    ids["version"],
                    who,
                    role,
                    us + n,
                    ready,
                    us + n,
                    deleted,
                ),
            )
            for number, (transition, status) in enumerate(builds, start=1):
                conn.execute(
                    "INSERT INTO prebuilds_builds (id, instance_id, preset_id, "
                    "template_version_id, transition, status, build_number, "
                    "initiator_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(uuid.uuid4()),
                        ids[role],
                        ids["preset"],
                        ids["version"],
                        transition,
                        status,
                        number,
                        owner,
                        us + n + number,
                    ),
                )
        conn.commit()
    return ids


# -- schema --------------------------------------------------------------------


class TestSchema:
    def test_fresh_file_gets_the_current_schema(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A new file gets prefixed tables and its version in prebuilds_schema."""
        open_store()
        assert raw(path, "SELECT version FROM prebuilds_schema") == [(SCHEMA_VERSION,)]
        assert raw(path, "PRAGMA user_version") == [(0,)]
        tables = {
            name
            for (name,) in raw(
                path, "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        assert {
            "prebuilds_settings",
            "prebuilds_templates",
            "prebuilds_presets",
            "prebuilds_instances",
            "prebuilds_builds",
            "prebuilds_leader",
            "prebuilds_schema",
        } <= tables
        assert all(name.startswith("prebuilds_") for name in tables)

    def test_reopen_keeps_data_and_version(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Re-opening a file is a no-op migration and sees what was written."""
        first = open_store()
        template = add_template(first)
        first.set_paused(True)
        first.close()
        second = open_store()
        assert second.get_template(template.id) == template
        assert second.is_paused()
        assert raw(path, "SELECT version FROM prebuilds_schema") == [(SCHEMA_VERSION,)]

    def test_newer_schema_is_refused(self, open_store: OpenStore, path: Path) -> None:
        """A file written by a newer library raises SchemaVersionError (a StoreError)."""
        open_store().close()
        raw(path, "UPDATE prebuilds_schema SET version = ?", (SCHEMA_VERSION + 1,))
        with pytest.raises(SchemaVersionError, match="schema version"):
            open_store()
        assert issubclass(SchemaVersionError, StoreError)

    def test_threads_migrating_one_file_at_once(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Eight threads opening a new file together all succeed; it is migrated once."""
        barrier = threading.Barrier(8)
        stores: list[SQLiteStore] = []

        def open_one(_: int) -> None:
            barrier.wait(WAIT)
            stores.append(open_store())

        run_threads(8, open_one)
        assert len(stores) == 8
        template = add_template(stores[0])
        assert all(s.get_template(template.id) == template for s in stores)
        assert raw(path, "SELECT * FROM prebuilds_schema") == [(1, SCHEMA_VERSION)]

    def test_processes_migrating_one_file_at_once(self, path: Path) -> None:
        """Two processes opening a new file together both succeed."""
        ctx = spawn()
        barrier = ctx.Barrier(2)
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_child_open, args=(str(path), barrier, queue))
            for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        results = [result(queue) for _ in procs]
        for proc in procs:
            proc.join(WAIT)
        assert results == [("ok", False), ("ok", False)]
        assert raw(path, "SELECT * FROM prebuilds_schema") == [(1, SCHEMA_VERSION)]

    def test_a_host_file_keeps_its_tables_and_user_version(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """The store shares a host's file: the host's tables and user_version stay as they were."""
        for host_version in (0, 1, 7):
            raw(path, "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY)")
            raw(path, "INSERT INTO users DEFAULT VALUES")
            raw(path, f"PRAGMA user_version = {host_version}")
            store = open_store()
            template = add_template(store)
            assert store.get_template(template.id) == template
            store.close()
            assert raw(path, "PRAGMA user_version") == [(host_version,)]
        assert raw(path, "SELECT count(*) FROM users") == [(3,)]

    def test_a_first_release_file_migrates_forward(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A file that recorded schema 1 in user_version gets the version table; data kept."""
        with closing(sqlite3.connect(path)) as conn:
            for statement in _MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute("PRAGMA user_version = 1")
            conn.execute("INSERT INTO prebuilds_settings VALUES ('paused', 'true')")
            conn.commit()
        store = open_store()
        assert store.is_paused()
        assert raw(path, "SELECT version FROM prebuilds_schema") == [(SCHEMA_VERSION,)]
        assert raw(path, "PRAGMA user_version") == [(1,)]

    def test_a_schema_1_file_migrates_to_2(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """
        A file written by the schema-1 code gets each instance's latest build
        on its row, a stamp per preset and the claim's index; nothing is lost.
        """
        rows = write_schema_1_file(path)
        store = open_store()
        assert raw(path, "SELECT version FROM prebuilds_schema") == [(SCHEMA_VERSION,)]
        assert latest_by_row(path) == latest_by_builds(path)
        assert raw(
            path,
            "SELECT latest_transition, latest_status FROM prebuilds_instances "
            "WHERE id = ?",
            (rows["deleting"],),
        ) == [("delete", "pending")]
        indexes = {
            name
            for (name,) in raw(
                path, "SELECT name FROM sqlite_master WHERE type = 'index'"
            )
        }
        assert {"prebuilds_instances_claim", "prebuilds_instances_pooled"} <= indexes
        assert not {"prebuilds_instances_claimable", "prebuilds_instances_owner"} & (
            indexes
        )
        preset_id = UUID(rows["preset"])
        assert store.read_preset(preset_id).stamp == 0
        facts = store.read_pool()
        assert {str(i.id) for i in facts.instances} == {
            rows["ready"],
            rows["queued"],
            rows["deleting"],
            rows["failed"],
        }
        assert store.is_paused()
        claimed = claim_one(store, preset_id, uuid.uuid4())
        assert claimed is not None
        assert str(claimed.id) == rows["ready"]
        assert claim_one(store, preset_id, uuid.uuid4()) is None
        store.close()
        assert raw(path, "SELECT count(*) FROM prebuilds_builds") == [(8,)]
        assert open_store().read_pool().presets == facts.presets  # reopening: a no-op

    def test_a_schema_2_file_migrates_to_3(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """
        Schema 3 replaces the pool's index on (owner_id, deleted, id) by one
        partial on the pool: read_pool reads it in ID order, a claim takes an
        instance out of it, nothing else changes.
        """
        store = open_store()
        preset_id, ids = ready_pool(store, 3)
        facts = store.read_pool()
        store.close()
        raw(path, "DROP INDEX prebuilds_instances_pooled")
        raw(
            path,
            "CREATE INDEX prebuilds_instances_pool"
            " ON prebuilds_instances (owner_id, deleted, id)",
        )
        raw(path, "UPDATE prebuilds_schema SET version = 2")

        store = open_store()

        assert raw(path, "SELECT version FROM prebuilds_schema") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 3
        indexes = {
            name
            for (name,) in raw(
                path, "SELECT name FROM sqlite_master WHERE type = 'index'"
            )
        }
        assert "prebuilds_instances_pooled" in indexes
        assert "prebuilds_instances_pool" not in indexes
        assert store.read_pool() == facts
        claimed = claim_one(store, preset_id, uuid.uuid4())
        assert claimed is not None
        assert claimed.id == ids[0]
        assert [i.id for i in store.read_pool().instances] == sorted(ids[1:])
        pooled = (
            "SELECT count(*) FROM prebuilds_instances INDEXED BY"  # noqa: S608 - a constant
            f" prebuilds_instances_pooled WHERE owner_id = '{PREBUILDS_OWNER_ID}'"
            " AND deleted = 0"
        )
        assert raw(path, pooled) == [(2,)]

    def test_a_read_only_store_refuses_a_file_to_migrate(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A schema-1 file is refused read-only, untouched: a writer must migrate it first."""
        write_schema_1_file(path)
        with pytest.raises(StoreError, match="open it once read-write"):
            open_store(read_only=True)
        assert raw(path, "SELECT version FROM prebuilds_schema") == [(1,)]

    def test_an_old_sqlite_library_is_refused(self) -> None:
        """UPDATE … RETURNING needs SQLite 3.35: an older library gets a clear StoreError."""
        with pytest.raises(
            StoreError, match=r"needs SQLite 3\.35\.0 .* uses SQLite 3\.34\.1"
        ):
            schema.check_library((3, 34, 1))
        schema.check_library((3, 35, 0))

    def test_unknown_prebuilds_tables_are_refused(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """prebuilds_ tables this library did not write (no version record) are not adopted."""
        raw(path, "CREATE TABLE prebuilds_settings (key TEXT)")
        with pytest.raises(StoreError, match="did not write"):
            open_store()
        tables = raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
        assert tables == [("prebuilds_settings",)]

    def test_a_newer_file_keeps_its_journal_mode(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """The version is checked before the store switches the file to WAL."""
        open_store().close()
        raw(path, "UPDATE prebuilds_schema SET version = ?", (SCHEMA_VERSION + 1,))
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")
        with pytest.raises(SchemaVersionError):
            open_store()
        assert raw(path, "PRAGMA journal_mode") == [("delete",)]

    def test_pragmas(self, open_store: OpenStore, path: Path) -> None:
        """Files use WAL; connections use synchronous=NORMAL, foreign keys and a busy timeout."""
        store = open_store(busy_timeout=2.5)
        assert raw(path, "PRAGMA journal_mode") == [("wal",)]
        conn = store._db.handle().conn
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (2500,)

    def test_in_memory_store_works_across_threads(self, open_store: OpenStore) -> None:
        """':memory:' shares one connection under a lock: threads see one database."""
        store = open_store(":memory:")
        preset_id, ids = ready_pool(store, 40)
        claimed: list[list[UUID]] = [[] for _ in range(4)]
        run_threads(
            4, lambda i: claimed[i].extend(claim_all(store, preset_id, uuid.uuid4()))
        )
        every = [i for chunk in claimed for i in chunk]
        assert sorted(every) == sorted(ids)


# -- read-only, reads, latest builds, stamps, claims ------------------------------


class TestReadOnly:
    """``read_only=True``: for tools that look at a file and must not change it."""

    def test_reads_what_a_writer_wrote(self, open_store: OpenStore, path: Path) -> None:
        writer = open_store()
        template = add_template(writer)
        config = add_preset(writer, template, desired_instances=2)
        reader = open_store(read_only=True)
        assert reader.read_only
        assert reader.get_template(template.id) == template
        assert reader.read_preset(config.id).config.desired_instances == 2
        facts = reader.read_pool()
        assert [p.config.id for p in facts.presets] == [config.id]
        assert repr(reader) == f"SQLiteStore({str(path)!r}, read_only=True)"

    def test_every_write_is_refused_and_nothing_changes(
        self, open_store: OpenStore, path: Path
    ) -> None:
        writer = open_store()
        template = add_template(writer)
        writer.close()
        before = raw(path, "SELECT * FROM prebuilds_templates")
        reader = open_store(read_only=True)
        with pytest.raises(StoreError, match="read-only"):
            reader.set_paused(True)
        with pytest.raises(StoreError, match="read-only"):
            reader.put_template(template)
        with pytest.raises(StoreError, match="read-only"), reader.leader():
            pass
        assert not reader.is_paused()
        assert raw(path, "SELECT * FROM prebuilds_templates") == before

    def test_a_missing_file_is_not_created(
        self, open_store: OpenStore, path: Path
    ) -> None:
        with pytest.raises(StoreError, match="no SQLite database"):
            open_store(read_only=True)
        assert not path.exists()

    def test_a_host_file_is_refused_untouched(
        self, open_store: OpenStore, path: Path
    ) -> None:
        raw(path, "CREATE TABLE users (id INTEGER PRIMARY KEY)")
        raw(path, "PRAGMA user_version = 3")
        with pytest.raises(StoreError, match="not a prebuilds database"):
            open_store(read_only=True)
        assert raw(path, "SELECT name FROM sqlite_master") == [("users",)]
        assert raw(path, "PRAGMA user_version") == [(3,)]
        assert raw(path, "PRAGMA journal_mode") == [("delete",)]

    def test_a_file_that_is_not_sqlite_is_refused(
        self, open_store: OpenStore, path: Path
    ) -> None:
        path.write_bytes(b"not a database " * 100)
        with pytest.raises(StoreError, match="not a database"):
            open_store(read_only=True)
        assert path.read_bytes() == b"not a database " * 100

    def test_a_newer_schema_is_refused(self, open_store: OpenStore, path: Path) -> None:
        open_store().close()
        raw(path, "UPDATE prebuilds_schema SET version = ?", (SCHEMA_VERSION + 1,))
        with pytest.raises(SchemaVersionError):
            open_store(read_only=True)

    def test_in_memory_cannot_be_read_only(self) -> None:
        with pytest.raises(InvalidInputError, match="read_only"):
            SQLiteStore(":memory:", read_only=True)
        with pytest.raises(InvalidInputError, match="must be a bool"):
            SQLiteStore(":memory:", read_only="yes")  # type: ignore[arg-type]


class TestReadPool:
    @staticmethod
    def statements_per_read(store: SQLiteStore) -> int:
        before = store.statement_count()
        store.read_pool()
        return store.statement_count() - before

    def test_statement_count_is_constant(
        self, open_store: OpenStore, tmp_path: Path
    ) -> None:
        """A pool read costs the same four statements for 10 presets as for 1000."""
        counts = []
        for presets in (10, 1000):
            store = open_store(tmp_path / f"{presets}.sqlite3")
            templates = [add_template(store) for _ in range(5)]
            for i in range(presets):
                add_preset(
                    store,
                    templates[i % 5],
                    scheduling_timezone="UTC",
                    schedules=[PrebuildSchedule(cron="* 8-18 * * 1-5", instances=2)],
                )
            ready_pool(store, 3)
            facts = store.read_pool()
            assert len(facts.presets) == presets + 1
            assert len(facts.instances) == 3
            # A write to the pool's tables: the next read reads the rows again.
            store.invalidate_preset(facts.presets[0].config.id, at=T0)
            counts.append(self.statements_per_read(store))
            counts.append(self.statements_per_read(store))
            store.set_paused(False)  # a commit that leaves the pool alone
            counts.append(self.statements_per_read(store))
        # The key, BEGIN, presets with templates, instances, COMMIT; with
        # the pool's tables unchanged since: the key alone.
        assert counts == [5, 1, 1, 5, 1, 1]

    def test_a_read_sees_every_commit_since_the_last(
        self, open_store: OpenStore, tmp_path: Path
    ) -> None:
        """
        The facts of the last read are reused only while nothing was
        committed: this store's writes, another store object's on the same
        file and another thread's are all seen by the next read.
        """
        path = tmp_path / "pool.sqlite3"
        store, other = open_store(path), open_store(path)
        preset_id, ids = ready_pool(store, 3)
        first = store.read_pool()
        assert store.read_pool() is first
        claimed = claim_one(store, preset_id, uuid.uuid4())  # this store
        assert claimed is not None
        second = store.read_pool()
        assert [i.id for i in second.instances] == sorted(
            (i for i in ids if i != claimed.id), key=str
        )
        assert claim_one(other, preset_id, uuid.uuid4()) is not None  # another
        third = store.read_pool()
        assert len(third.instances) == 1
        worker = threading.Thread(  # another thread, so another connection
            target=lambda: store.invalidate_preset(
                preset_id, at=T0 + timedelta(hours=1)
            )
        )
        worker.start()
        worker.join()
        (facts,) = [p for p in store.read_pool().presets if p.config.id == preset_id]
        assert facts.last_invalidated_at == T0 + timedelta(hours=1)

    @pytest.mark.parametrize("where", ["file", "memory"])
    def test_a_claim_through_the_claimer_is_seen_by_the_next_read(
        self, open_store: OpenStore, tmp_path: Path, where: str
    ) -> None:
        """
        The claimer's lean claim commits outside the store's generic write
        path, on the same connection as the reads (in memory, the only
        one): the next read still sees it.
        """
        store = open_store(tmp_path / "pool.sqlite3" if where == "file" else ":memory:")
        preset_id, ids = ready_pool(store, 2)
        assert len(store.read_pool().instances) == 2
        claimed = StoreClaimer(store).claim(
            now=T0 + timedelta(minutes=10),
            user_id=uuid.uuid4(),
            name="mine",
            preset_id=preset_id,
        )
        assert [i.id for i in store.read_pool().instances] == [
            i for i in ids if i != claimed
        ]

    @pytest.mark.parametrize("where", ["file", "memory"])
    def test_a_connections_first_read_costs_the_same(
        self, open_store: OpenStore, tmp_path: Path, where: str
    ) -> None:
        """Setting a connection's triggers up is not counted, as its pragmas are not."""
        store = open_store(tmp_path / "pool.sqlite3" if where == "file" else ":memory:")
        ready_pool(store, 2)
        assert self.statements_per_read(store) == 5
        counts: list[int] = []
        worker = threading.Thread(  # on a file, another connection
            target=lambda: counts.append(self.statements_per_read(store))
        )
        worker.start()
        worker.join(WAIT)
        assert counts == [5 if where == "file" else 1]

    @pytest.mark.parametrize("where", ["file", "memory"])
    def test_commits_that_leave_the_pool_alone_do_not_read_it_again(
        self, open_store: OpenStore, tmp_path: Path, where: str
    ) -> None:
        """
        The leader lease, pausing and claims that found nothing commit on
        the reading connection without touching the pool's tables: the
        next read is the key alone, with the same facts; a claim that took
        an instance is read.
        """
        store = open_store(tmp_path / "pool.sqlite3" if where == "file" else ":memory:")
        preset_id, _ = ready_pool(store, 1)
        first = store.read_pool()
        claimer = StoreClaimer(store)
        at = T0 + timedelta(minutes=10)
        claimer.claim(now=at, user_id=uuid.uuid4(), name="a", preset_id=preset_id)
        second = store.read_pool()
        assert len(first.instances) == 1
        assert second.instances == ()
        with store.leader() as lease:
            assert lease
        store.set_paused(True)
        with pytest.raises(NoClaimablePrebuildsError):
            claimer.claim(now=at, user_id=uuid.uuid4(), name="b", preset_id=preset_id)
        assert claim_one(store, preset_id, uuid.uuid4()) is None
        assert self.statements_per_read(store) == 1
        assert store.read_pool() is second

    def test_a_write_of_another_thread_in_memory_is_read(
        self, open_store: OpenStore
    ) -> None:
        """In memory every thread shares the one connection: its triggers count them all."""
        store = open_store(":memory:")
        preset_id, ids = ready_pool(store, 2)
        assert len(store.read_pool().instances) == 2
        worker = threading.Thread(
            target=lambda: claim_one(store, preset_id, uuid.uuid4())
        )
        worker.start()
        worker.join(WAIT)
        assert [i.id for i in store.read_pool().instances] == ids[1:]

    def test_triggers_lost_are_made_again(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """
        A pool table that another connection dropped and made again takes
        this connection's triggers with it: the read after that commit sets
        them up again, and later writes are read as before.
        """
        store, other = open_store(path), open_store(path)
        preset_id, ids = ready_pool(store, 2)
        first = store.read_pool()
        conn = store._db.handle().conn
        conn.execute("DROP TRIGGER temp.prebuilds_instances_update_watch")
        other.set_paused(False)  # stands for the other connection's DDL
        assert store.read_pool().instances == first.instances
        assert claim_one(store, preset_id, uuid.uuid4()) is not None
        assert [i.id for i in store.read_pool().instances] == ids[1:]

    def test_read_pool_is_one_read_transaction(self, open_store: OpenStore) -> None:
        """Every query of a pool read runs between one BEGIN and its COMMIT, after the data_version that keys it."""
        store = open_store()
        preset_id, _ = ready_pool(store, 2)
        store.read_pool()  # the connection's first read also sets its triggers up
        store.invalidate_preset(preset_id, at=T0)
        seen: list[str] = []
        conn = store._db.handle().conn
        conn.set_trace_callback(seen.append)
        try:
            store.read_pool()
        finally:
            conn.set_trace_callback(None)
        # SQLite traces the pragma the key reads as a sub-statement ("--").
        seen = [s for s in seen if not s.startswith("--")]
        assert seen[0].split() == sql.POOL_KEY.split()
        assert seen[1] == "BEGIN"
        assert seen[-1] == "COMMIT"
        assert not any(s.startswith(("BEGIN", "COMMIT")) for s in seen[2:-1])
        assert len(seen) == 5

    def test_only_pooled_instances_with_their_latest_build(
        self, open_store: OpenStore
    ) -> None:
        """Claimed and deleted instances are not in the pool; the others carry their latest build."""
        store = open_store()
        preset_id, ids = ready_pool(store, 4)
        claimed = claim_one(store, preset_id, uuid.uuid4())
        assert claimed is not None
        deleting = store.delete_prebuild(ids[1], now=T0 + timedelta(minutes=1))
        assert deleting is not None
        gone = store.delete_prebuild(ids[2], now=T0 + timedelta(minutes=2))
        assert gone is not None
        store.build_finished(gone.build_id, now=T0, succeeded=True)
        facts = store.read_pool()
        pooled = {i.id: i for i in facts.instances}
        assert set(pooled) == {ids[1], ids[3]}
        assert (
            pooled[ids[1]].latest_build_id,
            pooled[ids[1]].latest_transition,
            pooled[ids[1]].latest_status,
            pooled[ids[1]].latest_number,
            pooled[ids[1]].latest_created_at,
            pooled[ids[1]].ready,
        ) == (
            deleting.build_id,
            Transition.DELETE,
            BuildStatus.PENDING,
            2,
            T0 + timedelta(minutes=1),
            False,
        )
        assert pooled[ids[3]].latest_status is BuildStatus.SUCCEEDED
        assert pooled[ids[3]].ready

    def test_an_unchanged_row_is_not_decoded_again_and_a_changed_one_is(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """
        A second read reuses the records of equal rows; a row changed behind
        the store's back (no stamp change) is decoded afresh.
        """
        store = open_store()
        preset_id, ids = ready_pool(store, 2)
        first = store.read_pool()
        second = store.read_pool()
        assert second == first
        assert second.presets[0] is first.presets[0]
        assert all(
            a is b for a, b in zip(first.instances, second.instances, strict=True)
        )
        raw(
            path,
            "UPDATE prebuilds_presets SET desired_instances = 7 WHERE id = ?",
            (str(preset_id),),
        )
        raw(
            path,
            "UPDATE prebuilds_instances SET ready = 0 WHERE id = ?",
            (str(ids[0]),),
        )
        third = store.read_pool()
        assert third.presets[0].config.desired_instances == 7
        assert {i.id: i.ready for i in third.instances} == {ids[0]: False, ids[1]: True}

    def test_hand_written_invalid_presets_are_reported_and_skipped(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Bad stored configs go to invalid_presets; the other presets still appear."""
        store = open_store()
        template = add_template(store)
        good = add_preset(store, template)
        bad = {
            "cron": add_preset(store, template),
            "scheduling_timezone": add_preset(store, template),
            "desired_instances": add_preset(store, template),
            "schedules": add_preset(store, template),
            "status": add_preset(store, template),
        }
        updates = {
            "cron": ("schedules", '[["0 8 * * *", 1]]'),
            "scheduling_timezone": ("scheduling_timezone", "Mars/Olympus_Mons"),
            "desired_instances": ("desired_instances", -1),
            "schedules": ("schedules", "not json"),
            "status": ("status", "sleepy"),
        }
        for key, (column, value) in updates.items():
            raw(
                path,
                f"UPDATE prebuilds_presets SET {column} = ? WHERE id = ?",  # noqa: S608
                (value, str(bad[key].id)),
            )
        facts = store.read_pool()
        assert [p.config.id for p in facts.presets] == [good.id]
        reported = {i.preset_id: i for i in facts.invalid_presets}
        assert set(reported) == {c.id for c in bad.values()}
        for key, config in bad.items():
            assert reported[config.id].field == key
            assert reported[config.id].reason
        with pytest.raises(InvalidInputError) as info:
            store.read_preset(bad["scheduling_timezone"].id)
        assert info.value.field == "scheduling_timezone"
        assert store.read_preset(good.id).config == good


def latest_by_row(path: Path) -> dict[str, tuple[Any, ...]]:
    """Every instance's latest-build columns, as the store keeps them."""
    return {
        row[0]: tuple(row[1:])
        for row in raw(
            path,
            "SELECT id, latest_build_id, latest_transition, latest_status, "
            "latest_number, latest_created_at FROM prebuilds_instances",
        )
    }


def latest_by_builds(path: Path) -> dict[str, tuple[Any, ...]]:
    """Every instance's latest build, worked out from the builds table."""
    return {
        row[0]: tuple(row[1:])
        for row in raw(
            path,
            """
            SELECT i.id, b.id, b.transition, b.status, b.build_number, b.created_at
            FROM prebuilds_instances AS i
            LEFT JOIN prebuilds_builds AS b ON b.instance_id = i.id
                AND b.build_number = (
                    SELECT MAX(x.build_number) FROM prebuilds_builds AS x
                    WHERE x.instance_id = i.id
                )
            """,
        )
    }


class TestLatestBuild:
    """Schema 2 keeps each instance's latest build on its row, in the same transaction."""

    OPERATIONS = (
        "create",
        "start",
        "succeed",
        "fail",
        "ready",
        "delete",
        "claim",
        "new_version",
        "cancel",
        "fail_stuck",
    )

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        steps=st.lists(
            st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 7)), max_size=40
        )
    )
    def test_the_row_always_matches_the_builds(
        self, tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
    ) -> None:
        """After any sequence of transitions, the row's latest build is the highest-numbered one."""
        path = tmp_path_factory.mktemp("latest") / "pool.sqlite3"
        with SQLiteStore(path) as store:
            template = add_template(store)
            preset = add_preset(store, template, desired_instances=3)
            now = T0
            for step, pick in steps:
                now += timedelta(minutes=1)
                apply_step(store, template, preset, step, pick, now)
                assert latest_by_row(path) == latest_by_builds(path)


def apply_step(
    store: SQLiteStore,
    template: Template,
    preset: PresetConfig,
    step: str,
    pick: int,
    now: datetime,
) -> None:
    """Apply one transition of a random history to *store*."""
    builds = store.list_builds()
    instances = store.list_instances(include_deleted=True)
    build = builds[pick % len(builds)] if builds else None
    instance = instances[pick % len(instances)] if instances else None
    if step == "create":
        store.create_prebuild(preset.id, now=now, name=f"p{pick}")
    elif step == "start" and build is not None:
        store.build_started(build.id, now=now)
    elif step in {"succeed", "fail"} and build is not None:
        store.build_finished(build.id, now=now, succeeded=step == "succeed")
    elif step == "ready" and instance is not None:
        store.set_ready(instance.id)
    elif step == "delete" and instance is not None:
        store.delete_prebuild(instance.id, now=now)
    elif step == "claim":
        claim_one(store, preset.id, uuid.uuid4())
    elif step == "new_version":
        current = store.get_template(template.id)
        store.put_template(attrs.evolve(current, active_version_id=uuid.uuid4()))
    elif step == "cancel":
        store.cancel_pending(preset.id, now=now)
    elif step == "fail_stuck":
        store.fail_stuck_builds(older_than=now - timedelta(minutes=pick), now=now)


class TestStamps:
    """StampedClaims: a stamp per preset, and claims applied only while it holds."""

    def stamped_claim(
        self,
        store: SQLiteStore,
        preset_id: UUID,
        stamp: int,
        *,
        not_before: datetime | None = None,
    ) -> Instance | None:
        facts = store.read_preset(preset_id)
        return store.claim_if_unchanged(
            stamp=stamp,
            preset_id=preset_id,
            user_id=uuid.uuid4(),
            name="claimed",
            lifecycle=Lifecycle(last_used_at=T0),
            now=T0 + timedelta(minutes=10),
            version_id=facts.template.active_version_id,
            not_before=not_before,
        )

    def test_what_a_claim_depends_on_changes_the_stamp(
        self, open_store: OpenStore
    ) -> None:
        """put_preset, invalidate_preset and put_template change it; set_preset_status does not."""
        store = open_store()
        template = add_template(store)
        config = add_preset(store, template)
        other = add_preset(store, add_template(store))
        stamps = [store.read_preset(config.id).stamp]
        store.put_preset(attrs.evolve(config, desired_instances=2))
        stamps.append(store.read_preset(config.id).stamp)
        store.invalidate_preset(config.id, at=T0)
        stamps.append(store.read_preset(config.id).stamp)
        store.put_template(attrs.evolve(template, deprecated=True))
        stamps.append(store.read_preset(config.id).stamp)
        assert len(set(stamps)) == 4
        assert all(isinstance(s, int) for s in stamps)
        store.set_preset_status(config.id, PresetStatus.HARD_LIMITED)
        assert store.read_preset(config.id).stamp == stamps[-1]
        assert store.read_preset(other.id).stamp == 0  # another template's preset

    def test_a_stale_stamp_writes_nothing(self, open_store: OpenStore) -> None:
        """A second store object invalidates the preset between two claims: the first one's stamp is stale."""
        store, other = open_store(), open_store()
        preset_id, ids = ready_pool(store, 3)
        stamp = store.read_preset(preset_id).stamp
        assert stamp is not None
        first = self.stamped_claim(store, preset_id, stamp)
        assert first is not None
        assert first.id == ids[0]
        other.invalidate_preset(preset_id, at=T0 + timedelta(hours=1))
        before = store.list_instances(include_deleted=True)
        statements = store.statement_count()
        with pytest.raises(PresetChangedError) as info:
            self.stamped_claim(store, preset_id, stamp)
        assert info.value.preset_id == preset_id
        # Three for read_preset; then BEGIN, the claim, the stamp and COMMIT.
        assert store.statement_count() - statements == 3 + 4
        assert store.list_instances(include_deleted=True) == before
        fresh = store.read_preset(preset_id).stamp
        assert fresh is not None
        assert (
            self.stamped_claim(
                store, preset_id, fresh, not_before=T0 + timedelta(hours=1)
            )
            is None
        )  # a miss, told from a stale stamp: everything is expired now

    def test_a_stamped_hit_is_one_statement(self, open_store: OpenStore) -> None:
        """BEGIN IMMEDIATE, one UPDATE … RETURNING, COMMIT."""
        store = open_store()
        preset_id, _ = ready_pool(store, 1)
        stamp = store.read_preset(preset_id).stamp
        assert stamp is not None
        version = store.read_preset(preset_id).template.active_version_id
        seen: list[str] = []
        conn = store._db.handle().conn
        conn.set_trace_callback(seen.append)
        try:
            claimed = store.claim_if_unchanged(
                stamp=stamp,
                preset_id=preset_id,
                user_id=uuid.uuid4(),
                name="u",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=version,
                not_before=None,
            )
        finally:
            conn.set_trace_callback(None)
        assert claimed is not None
        assert seen[0] == "BEGIN IMMEDIATE"
        assert seen[-1] == "COMMIT"
        [update] = seen[1:-1]
        assert update.lstrip().startswith("UPDATE prebuilds_instances")

    def test_an_unknown_preset_has_no_stamp(self, open_store: OpenStore) -> None:
        store = open_store()
        with pytest.raises(PresetChangedError):
            store.claim_if_unchanged(
                stamp=0,
                preset_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                name="u",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=uuid.uuid4(),
                not_before=None,
            )
        with pytest.raises(InvalidInputError, match="stamp"):
            store.claim_if_unchanged(
                stamp=-1,
                preset_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                name="u",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=uuid.uuid4(),
                not_before=None,
            )


class TestClaimStatement:
    def test_a_claim_is_one_statement(self, open_store: OpenStore) -> None:
        """BEGIN IMMEDIATE, one UPDATE … RETURNING, COMMIT: hit or miss."""
        store = open_store()
        preset_id, _ = ready_pool(store, 1)
        for outcome in ("hit", "miss"):
            before = store.statement_count()
            claimed = claim_one(store, preset_id, uuid.uuid4())
            assert (claimed is not None) == (outcome == "hit")
            # read_preset (BEGIN, SELECT, COMMIT) then the claim
            assert store.statement_count() - before == 3 + 3

    def test_the_pool_is_read_in_id_order_from_an_index(
        self, open_store: OpenStore
    ) -> None:
        """read_pool's instances come by ID, as its presets do, without a sort."""
        store = open_store()
        _, ids = ready_pool(store, 5)
        assert [i.id for i in store.read_pool().instances] == sorted(ids)
        conn = store._db.handle().conn
        plan = " ".join(
            str(row[3])
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql.POOL_INSTANCES)
        )
        assert "USING INDEX prebuilds_instances_pooled" in plan
        assert "TEMP B-TREE" not in plan

    def test_the_claim_uses_its_index(self, open_store: OpenStore) -> None:
        """The claim's sub-select is answered by the partial index, in claim order."""
        store = open_store()
        conn = store._db.handle().conn
        plan = " ".join(
            str(row[3])
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql.CLAIM, (None,) * 14)
        )
        assert "USING INDEX prebuilds_instances_claim" in plan
        assert "TEMP B-TREE" not in plan  # no sort: the index is in claim order

    def test_version_and_cut_off_are_compared(self, open_store: OpenStore) -> None:
        """Only instances of *version_id* created at or after *not_before* are taken, oldest first."""
        store = open_store()
        preset_id, ids = ready_pool(store, 3)
        version = store.read_preset(preset_id).template.active_version_id

        def claim(version_id: UUID, not_before: datetime | None) -> UUID | None:
            instance = store.claim(
                preset_id=preset_id,
                user_id=uuid.uuid4(),
                name="u",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=version_id,
                not_before=not_before,
            )
            return None if instance is None else instance.id

        assert claim(uuid.uuid4(), None) is None
        assert claim(version, T0 + timedelta(seconds=1)) == ids[1]  # exactly at: kept
        assert claim(version, T0 + timedelta(seconds=3)) is None
        assert claim(version, None) == ids[0]
        assert claim(version, None) == ids[2]
        assert claim(version, None) is None


# -- concurrency -----------------------------------------------------------------


class TestClaims:
    def test_eight_threads_claim_each_instance_once(
        self, open_store: OpenStore
    ) -> None:
        """200 prebuilds claimed by 8 threads: none twice, each owned by its claimer."""
        store = open_store()
        preset_id, ids = ready_pool(store, 200)
        users = [uuid.uuid4() for _ in range(8)]
        claimed: list[list[UUID]] = [[] for _ in range(8)]
        barrier = threading.Barrier(8)

        def claimer(i: int) -> None:
            barrier.wait(WAIT)
            claimed[i].extend(claim_all(store, preset_id, users[i]))

        run_threads(8, claimer)
        every = [i for chunk in claimed for i in chunk]
        assert len(every) == len(set(every)) == 200
        assert set(every) == set(ids)
        for user, chunk in zip(users, claimed, strict=True):
            for instance_id in chunk:
                assert store.get_instance(instance_id).owner_id == user
        assert store.list_instances(owner_id=PREBUILDS_OWNER_ID) == []

    def test_two_processes_claim_each_instance_once(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Two processes claiming from one file never get the same instance."""
        store = open_store()
        preset_id, ids = ready_pool(store, 100)
        ctx = spawn()
        barrier = ctx.Barrier(2)
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=_child_claim, args=(str(path), str(preset_id), barrier, queue)
            )
            for _ in range(2)
        ]
        for proc in procs:
            proc.start()
        results = [result(queue) for _ in procs]
        for proc in procs:
            proc.join(WAIT)
        every = [UUID(i) for _, claimed, _, _ in results for i in claimed]
        assert len(every) == len(set(every))
        assert set(every) == set(ids)
        for _, claimed, owners, user in results:
            assert owners == ([user] if claimed else [])
        assert store.list_instances(owner_id=PREBUILDS_OWNER_ID) == []

    @pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="no fork"
    )
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
    def test_forked_child_uses_its_own_connection(self, open_store: OpenStore) -> None:
        """A store used in a forked child opens new connections and still claims atomically."""
        store = open_store()
        preset_id, ids = ready_pool(store, 2)
        parent_handle = store._db.handle()
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()

        def child() -> None:
            try:
                claimed = claim_all(store, preset_id, uuid.uuid4())
                fresh = store._db.handle() is not parent_handle
                queue.put(("ok", [str(i) for i in claimed], fresh))
            except BaseException as e:
                queue.put(("error", repr(e)))

        proc = ctx.Process(target=child)
        proc.start()
        outcome = result(queue)
        proc.join(WAIT)
        assert sorted(UUID(i) for i in outcome[1]) == sorted(ids)
        assert outcome[2]  # the child did not use the parent's connection
        assert store._db.handle() is parent_handle
        assert claim_all(store, preset_id, uuid.uuid4()) == []

    def test_delete_and_claim_never_both_win(self, open_store: OpenStore) -> None:
        """
        Racing claims and deletes: each instance is claimed or deleted, never
        both, and a claimed instance never gets a delete build.
        """
        store = open_store()
        preset_id, ids = ready_pool(store, 120)
        race = DeleteClaimRace(store, preset_id, ids, claimers=4, deleters=4)
        run_threads(8, race.run)
        won_claim = [i for chunk in race.claimed for i in chunk]
        won_delete = [i for chunk in race.deleted for i in chunk]
        assert won_claim  # the deleters waited for a first claim
        assert len(won_claim) == len(set(won_claim))
        assert len(won_delete) == len(set(won_delete))
        assert not set(won_claim) & set(won_delete)
        assert set(won_claim) | set(won_delete) == set(ids)
        for instance_id in won_claim:
            transitions = [
                b.transition for b in store.list_builds(instance_id=instance_id)
            ]
            assert Transition.DELETE not in transitions
        for instance_id in won_delete:
            assert store.get_instance(instance_id).owner_id == PREBUILDS_OWNER_ID


class TestLeader:
    def test_lease_across_threads(self, open_store: OpenStore) -> None:
        """One thread leads inside its scope; others get False until it exits."""
        store = open_store()
        other = open_store()  # another store object on the same file
        held, release = threading.Event(), threading.Event()
        outcome: list[bool] = []

        def lead(_: int) -> None:
            with store.leader() as acquired:
                outcome.append(bool(acquired))
                held.set()
                assert release.wait(WAIT)

        thread = threading.Thread(target=lead, args=(0,))
        thread.start()
        assert held.wait(WAIT)
        with store.leader() as second, other.leader() as third:
            assert (bool(second), bool(third)) == (False, False)
        release.set()
        thread.join(WAIT)
        assert outcome == [True]
        with other.leader() as after:
            assert after
        with store.leader() as after_again:
            assert after_again

    def test_nested_scope_in_one_thread_is_not_reentrant(
        self, open_store: OpenStore
    ) -> None:
        """Each leader() call has its own token: a nested call yields False."""
        store = open_store()
        with store.leader() as outer:
            with store.leader() as inner:
                assert (bool(outer), bool(inner)) == (True, False)
            with store.leader() as inner_again:
                assert not inner_again
        with store.leader() as later:
            assert later

    def test_expired_lease_is_taken_over_and_not_released_by_its_old_holder(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A lease past expires_at is taken; the old holder's exit leaves the new one."""
        store = open_store()
        with store.leader() as first:
            assert first
            raw(path, "UPDATE prebuilds_leader SET expires_at = 0")
            with store.leader() as second:
                assert second
                holder = raw(path, "SELECT holder FROM prebuilds_leader")
            # the second scope released its own row
            assert raw(path, "SELECT holder FROM prebuilds_leader") == []
            raw(
                path,
                "INSERT INTO prebuilds_leader VALUES ('reconciler', 'someone', ?)",
                (2**62,),
            )
        # the first scope's exit must not delete someone else's lease
        assert raw(path, "SELECT holder FROM prebuilds_leader") == [("someone",)]
        assert len(holder) == 1
        with store.leader() as blocked:
            assert not blocked

    def test_lease_across_processes(self, open_store: OpenStore, path: Path) -> None:
        """A lease held in another process blocks this one until it is released."""
        store = open_store()
        ctx = spawn()
        held, release, queue = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(
            target=_child_lead, args=(str(path), held, release, queue, 60_000_000)
        )
        proc.start()
        assert result(queue) == ("ok", True)
        assert held.wait(WAIT)
        with store.leader() as acquired:
            assert not acquired
        release.set()
        proc.join(WAIT)
        assert proc.exitcode == 0
        with store.leader() as acquired:
            assert acquired

    def test_lease_of_a_dead_process_expires(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A process that dies holding the lease blocks others only until it expires."""
        store = open_store()
        ctx = spawn()
        held, queue = ctx.Event(), ctx.Queue()
        # a one-microsecond lease: expired by the time the child has exited
        proc = ctx.Process(target=_child_lead, args=(str(path), held, None, queue, 1))
        proc.start()
        assert result(queue) == ("ok", True)
        proc.join(WAIT)
        assert len(raw(path, "SELECT holder FROM prebuilds_leader")) == 1
        with store.leader() as acquired:
            assert acquired

    def test_a_held_lease_is_renewed_past_its_ttl(self, open_store: OpenStore) -> None:
        """While a scope holds it, the lease outlives lease_ttl four times over."""
        ttl = timedelta(milliseconds=300)
        store, other = open_store(lease_ttl=ttl), open_store(lease_ttl=ttl)
        preset = add_preset(store, add_template(store))
        with store.leader() as lease:
            threading.Event().wait(4 * ttl.total_seconds())  # wall time passes
            with other.leader() as second:
                assert not second
            assert store.create_prebuild(preset.id, now=T0, name="x", lease=lease)
        with other.leader() as after:
            assert after

    def test_one_renewer_per_store_and_no_thread_per_pass(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """
        The renewer starts with the store's first lease, once; later passes
        start no thread at all (issue 12); close() ends it.
        """
        store = open_store()
        add_preset(store, add_template(store), desired_instances=1)
        started: list[threading.Thread] = []
        start = threading.Thread.start

        def counting_start(thread: threading.Thread) -> None:
            started.append(thread)
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", counting_start)
        reconciler = StoreReconciler(
            store,
            NullProvisioner(),
            clock=FakeClock(),
            submit_timeout=None,
            max_workers=1,
        )
        assert reconciler.reconcile_all().created == 1
        assert [t.name for t in started] == ["prebuilds-lease-renewer"]
        for _ in range(5):
            assert reconciler.reconcile_all().leader
        assert len(started) == 1

        store.close()
        assert not started[0].is_alive()

    def test_an_expired_lease_writes_nothing_even_if_nobody_took_it(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Expiry is honoured in the write's transaction; then the lease is known lost."""
        store = open_store()
        preset = add_preset(store, add_template(store))
        with store.leader() as lease:
            raw(path, "UPDATE prebuilds_leader SET expires_at = 0")
            with pytest.raises(LeadershipLostError):
                store.create_prebuild(preset.id, now=T0, name="x", lease=lease)
            statements = store.statement_count()
            with pytest.raises(LeadershipLostError):  # at once, no statement
                store.create_prebuild(preset.id, now=T0, name="x", lease=lease)
            assert store.statement_count() == statements
        assert store.list_instances() == []

    def test_a_fenced_write_renews_the_lease(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Each fenced write extends the lease in its own transaction."""
        store = open_store()
        preset = add_preset(store, add_template(store))
        with store.leader() as lease:
            raw(path, "UPDATE prebuilds_leader SET expires_at = expires_at - 1000000")
            [(before,)] = raw(path, "SELECT expires_at FROM prebuilds_leader")
            store.set_preset_status(preset.id, PresetStatus.HARD_LIMITED, lease=lease)
            [(after,)] = raw(path, "SELECT expires_at FROM prebuilds_leader")
        assert after > before


class NullProvisioner:
    def submit(self, request: BuildRequest) -> None:
        pass


# -- errors and encoding ------------------------------------------------------------


class TestErrors:
    def test_closed_store_raises_store_error(self, open_store: OpenStore) -> None:
        """Every call on a closed store raises StoreError; close is idempotent."""
        store = open_store()
        template = add_template(store)
        store.close()
        store.close()
        calls: list[Callable[[], object]] = [
            lambda: store.get_template(template.id),
            store.is_paused,
            store.read_pool,
            lambda: store.claim(
                preset_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                name="x",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=uuid.uuid4(),
                not_before=None,
            ),
            lambda: store.leader().__enter__(),
        ]
        for call in calls:
            with pytest.raises(StoreError, match="closed"):
                call()

    def test_context_manager_closes(self, path: Path) -> None:
        """`with SQLiteStore(...)` closes the store on exit."""
        with SQLiteStore(path) as store:
            assert not store.is_paused()
        with pytest.raises(StoreError):
            store.is_paused()

    def test_dropped_table_is_a_store_error(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A driver error (here a missing table) is wrapped in StoreError from sqlite3.Error."""
        store = open_store()
        raw(path, "DROP TABLE prebuilds_settings")
        with pytest.raises(StoreError) as info:
            store.is_paused()
        assert isinstance(info.value.__cause__, sqlite3.Error)

    def test_corrupt_row_is_a_store_error(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A row that cannot be decoded raises StoreError, not a bare ValueError."""
        store = open_store()
        _, (instance_id, *_) = ready_pool(store, 1)
        raw(
            path,
            "UPDATE prebuilds_instances SET created_at = 'yesterday' WHERE id = ?",
            (str(instance_id),),
        )
        with pytest.raises(StoreError, match="corrupt instance"):
            store.get_instance(instance_id)

    def test_not_a_database(self, tmp_path: Path) -> None:
        """Opening a file that is not SQLite raises StoreError."""
        path = tmp_path / "junk.sqlite3"
        path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreError):
            SQLiteStore(path)

    def test_locked_database_is_a_store_error(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """A writer blocked past busy_timeout gets StoreError; the store stays usable."""
        store = open_store(busy_timeout=0)
        template = add_template(store)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked"):
                add_preset(store, template)
            conn.execute("ROLLBACK")
        add_preset(store, template)

    def test_not_found_errors_pass_through(self, open_store: OpenStore) -> None:
        """Not-found errors are raised as such, not wrapped."""
        store = open_store()
        with pytest.raises(InstanceNotFoundError):
            store.get_instance(uuid.uuid4())
        with pytest.raises(BuildNotFoundError):
            store.build_started(uuid.uuid4(), now=T0)
        with pytest.raises(PresetNotFoundError):
            store.create_prebuild(uuid.uuid4(), now=T0, name="x")
        with pytest.raises(TemplateNotFoundError):
            store.get_template(uuid.uuid4())
        with pytest.raises(PresetNotFoundError):
            store.read_preset(uuid.uuid4())

    def test_invalid_constructor_arguments(self, path: Path) -> None:
        """A non-positive lease TTL or a negative busy timeout is rejected."""
        with pytest.raises(InvalidInputError):
            SQLiteStore(path, lease_ttl=timedelta(0))
        with pytest.raises(InvalidInputError):
            SQLiteStore(path, busy_timeout=-1)


class TestEncoding:
    def test_datetimes_round_trip_exactly_as_utc(
        self, open_store: OpenStore, path: Path
    ) -> None:
        """Datetimes keep their microseconds and come back as aware UTC."""
        store = open_store()
        template = add_template(store)
        preset = add_preset(store, template)
        paris = timezone(timedelta(hours=2))
        created = datetime(2024, 6, 1, 12, 0, 0, 123457, tzinfo=paris)
        request = store.create_prebuild(preset.id, now=created, name="p")
        assert request is not None
        instance = store.get_instance(request.instance_id)
        assert instance.created_at == created
        assert instance.created_at.tzinfo is timezone.utc
        assert instance.created_at.microsecond == 123457
        stored = raw(path, "SELECT created_at FROM prebuilds_instances")
        assert stored == [
            (
                (created - datetime(1970, 1, 1, tzinfo=timezone.utc))
                // timedelta(microseconds=1),
            )
        ]

    def test_extreme_values_round_trip_or_are_rejected(
        self, open_store: OpenStore
    ) -> None:
        """The bounds of docs/limits.md round-trip exactly; one step beyond is InvalidInputError."""
        store: Store = open_store()  # also checks SQLiteStore against the Protocol
        template = Template(
            id=uuid.uuid4(),
            active_version_id=uuid.uuid4(),
            default_ttl=MAX_DURATION,
        )
        store.put_template(template)
        assert store.get_template(template.id) == template
        preset = PresetConfig(
            id=uuid.uuid4(),
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=1,
        )
        store.put_preset(preset)
        for at in (MIN_DATETIME, MAX_DATETIME):
            store.invalidate_preset(preset.id, at=at)
            assert store.read_preset(preset.id).last_invalidated_at == at
        with pytest.raises(InvalidInputError) as info:
            store.invalidate_preset(
                preset.id, at=MAX_DATETIME + timedelta(microseconds=1)
            )
        assert info.value.field == "at"
        with pytest.raises(InvalidInputError) as info:
            attrs.evolve(template, default_ttl=timedelta.max)
        assert info.value.field == "default_ttl"

    def test_naive_datetime_is_rejected(self, open_store: OpenStore) -> None:
        """A naive datetime raises InvalidInputError before touching the database."""
        store = open_store()
        naive = datetime(2024, 1, 1)  # noqa: DTZ001
        statements = store.statement_count()
        with pytest.raises(InvalidInputError, match="at"):
            store.invalidate_preset(uuid.uuid4(), at=naive)
        with pytest.raises(InvalidInputError, match="not_before"):
            store.claim(
                preset_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                name="x",
                lifecycle=Lifecycle(),
                now=T0,
                version_id=uuid.uuid4(),
                not_before=naive,
            )
        assert store.statement_count() == statements

    def test_connections_of_finished_threads_are_closed(
        self, open_store: OpenStore
    ) -> None:
        """A new connection closes those of threads that have ended; close() closes the rest."""
        store = open_store()
        for _ in range(3):
            run_threads(1, lambda _: store.is_paused())
            assert len(store._db.handles) <= 2  # the main thread's + the latest's
        run_threads(2, lambda _: store.is_paused())
        assert len(store._db.handles) <= 3
        store.close()
        assert store._db.handles == []
