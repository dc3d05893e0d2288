"""
The SQLite store's schema: its migrations, the version table, and what
opening a file checks.

Tables are prefixed ``prebuilds_`` and the version lives in
``prebuilds_schema`` (never ``PRAGMA user_version``), so that a host's tables
may share the file. Opening a file migrates it under ``BEGIN IMMEDIATE``; a
file of a newer library raises SchemaVersionError before anything changes,
its journal mode included. Files of the first development releases (version
in ``user_version``) are recognised by their tables.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from typing import TYPE_CHECKING

from prebuilds._records import PREBUILDS_OWNER_ID
from prebuilds.exceptions import SchemaVersionError, StoreError


if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SCHEMA_VERSION", "check_library", "check_readable", "migrate"]

_log = logging.getLogger("prebuilds.stores.sqlite")

#: The schema version this library writes and understands.
SCHEMA_VERSION = 4

_OWNER = str(PREBUILDS_OWNER_ID)

#: Migration ``n`` takes a file from schema version ``n`` to ``n + 1``. A
#: released migration never changes: files in the field went through it.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE IF NOT EXISTS prebuilds_settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS prebuilds_templates (
            id TEXT PRIMARY KEY,
            active_version_id TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            organization_id TEXT,
            deleted INTEGER NOT NULL DEFAULT 0,
            deprecated INTEGER NOT NULL DEFAULT 0,
            default_ttl INTEGER
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS prebuilds_presets (
            id TEXT PRIMARY KEY,
            template_id TEXT NOT NULL REFERENCES prebuilds_templates (id),
            template_version_id TEXT NOT NULL,
            desired_instances INTEGER NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            ttl INTEGER,
            scheduling_timezone TEXT NOT NULL DEFAULT '',
            schedules TEXT NOT NULL DEFAULT '[]',
            parameters TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'healthy',
            last_invalidated_at INTEGER
        )
        """,
        """
        CREATE INDEX IF NOT EXISTS prebuilds_presets_template
            ON prebuilds_presets (template_id)
        """,
        """
        CREATE TABLE IF NOT EXISTS prebuilds_instances (
            id TEXT PRIMARY KEY,
            preset_id TEXT NOT NULL REFERENCES prebuilds_presets (id),
            template_id TEXT NOT NULL,
            template_version_id TEXT NOT NULL,
            owner_id TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            ready INTEGER NOT NULL DEFAULT 0,
            autostart_schedule TEXT,
            next_start_at INTEGER,
            ttl INTEGER,
            deadline INTEGER,
            max_deadline INTEGER,
            dormant_at INTEGER,
            deleting_at INTEGER,
            last_used_at INTEGER,
            deleted INTEGER NOT NULL DEFAULT 0,
            claimed_at INTEGER
        )
        """,
        """
        CREATE INDEX IF NOT EXISTS prebuilds_instances_owner
            ON prebuilds_instances (owner_id, deleted, preset_id)
        """,
        """
        CREATE INDEX IF NOT EXISTS prebuilds_instances_claimable
            ON prebuilds_instances (preset_id, owner_id, deleted, created_at)
        """,
        """
        CREATE TABLE IF NOT EXISTS prebuilds_builds (
            id TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL REFERENCES prebuilds_instances (id),
            preset_id TEXT NOT NULL,
            template_version_id TEXT NOT NULL,
            transition TEXT NOT NULL,
            status TEXT NOT NULL,
            build_number INTEGER NOT NULL,
            initiator_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            finished_at INTEGER,
            error_kind TEXT,
            error TEXT,
            UNIQUE (instance_id, build_number)
        )
        """,
        """
        CREATE INDEX IF NOT EXISTS prebuilds_builds_in_progress
            ON prebuilds_builds (created_at)
            WHERE status IN ('pending', 'running')
        """,
        """
        CREATE INDEX IF NOT EXISTS prebuilds_builds_first_pending
            ON prebuilds_builds (preset_id)
            WHERE build_number = 1 AND status = 'pending'
        """,
        """
        CREATE TABLE IF NOT EXISTS prebuilds_leader (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        )
        """,
    ),
    # 2: each instance carries its latest build (the store writes both in
    # one transaction), so that the pool is read and a claim is made without
    # a sub-query per instance; each preset carries the stamp of what a
    # claim depends on (StampedClaims).
    (
        "ALTER TABLE prebuilds_instances ADD COLUMN latest_build_id TEXT",
        "ALTER TABLE prebuilds_instances ADD COLUMN latest_transition TEXT",
        "ALTER TABLE prebuilds_instances ADD COLUMN latest_status TEXT",
        "ALTER TABLE prebuilds_instances ADD COLUMN latest_number INTEGER",
        "ALTER TABLE prebuilds_instances ADD COLUMN latest_created_at INTEGER",
        """
        UPDATE prebuilds_instances SET (
            latest_build_id, latest_transition, latest_status, latest_number,
            latest_created_at
        ) = (
            SELECT b.id, b.transition, b.status, b.build_number, b.created_at
            FROM prebuilds_builds AS b
            WHERE b.instance_id = prebuilds_instances.id
            ORDER BY b.build_number DESC
            LIMIT 1
        )
        """,
        "ALTER TABLE prebuilds_presets ADD COLUMN stamp INTEGER NOT NULL DEFAULT 0",
        # The pool in ID order, as read_pool reads it (no sort).
        "DROP INDEX IF EXISTS prebuilds_instances_owner",
        """
        CREATE INDEX IF NOT EXISTS prebuilds_instances_pool
            ON prebuilds_instances (owner_id, deleted, id)
        """,
        # The claim's candidates, in the order it takes them; the claim's
        # WHERE repeats this one word for word (a partial index is used only
        # then).
        "DROP INDEX IF EXISTS prebuilds_instances_claimable",
        f"""
        CREATE INDEX IF NOT EXISTS prebuilds_instances_claim
            ON prebuilds_instances (preset_id, template_version_id, created_at, id)
            WHERE owner_id = '{_OWNER}' AND deleted = 0 AND ready = 1
                AND latest_transition = 'start' AND latest_status = 'succeeded'
        """,
    ),
    # 3: the pool's index holds only the pool. Keyed on (owner_id, deleted,
    # id), every claim moved the row's entry from the pool's part of the
    # index to its user's (two leaf pages written per claim); partial on the
    # pool, a claim only removes it (one), and read_pool still reads the pool
    # in ID order from it (its WHERE repeats this one word for word).
    (
        "DROP INDEX IF EXISTS prebuilds_instances_pool",
        f"""
        CREATE INDEX IF NOT EXISTS prebuilds_instances_pooled
            ON prebuilds_instances (id)
            WHERE owner_id = '{_OWNER}' AND deleted = 0
        """,
    ),
    # 4: whether a build was handed to the provisioner (BatchCreates writes
    # a batch's builds unsubmitted, then marks them): a stuck build never
    # submitted is canceled, not failed. Every earlier build was submitted.
    ("ALTER TABLE prebuilds_builds ADD COLUMN submitted INTEGER NOT NULL DEFAULT 1",),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION  # noqa: S101

# The version record, written with every migration. Kept out of _MIGRATIONS:
# it says which of them have run.
_CREATE_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS prebuilds_schema (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL
    )
"""
_SET_VERSION = (
    "INSERT INTO prebuilds_schema (singleton, version) VALUES (1, ?) "
    "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version"
)
# The tables of schema version 1, which recorded its version in
# ``PRAGMA user_version`` (0.1.0 development releases).
_VERSION_1_TABLES = frozenset(
    f"prebuilds_{table}"
    for table in ("settings", "templates", "presets", "instances", "builds", "leader")
)


#: The oldest SQLite the store runs on: ``UPDATE … RETURNING`` (3.35, 2021).
MIN_SQLITE = (3, 35, 0)


def check_library(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """Raise StoreError if the SQLite library is older than :data:`MIN_SQLITE`."""
    if version < MIN_SQLITE:
        wanted = ".".join(map(str, MIN_SQLITE))
        found = ".".join(map(str, version))
        raise StoreError(
            f"SQLiteStore needs SQLite {wanted} or later (UPDATE ... RETURNING); "
            f"this Python uses SQLite {found}"
        )


def _read_version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version: 0 without prebuilds tables, None if unknown."""
    tables = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master "
            "WHERE type = 'table' AND name LIKE 'prebuilds\\_%' ESCAPE '\\'"
        )
    }
    if "prebuilds_schema" in tables:
        row = conn.execute("SELECT version FROM prebuilds_schema").fetchone()
        return int(row[0]) if row is not None else None
    if not tables:
        return 0
    if tables >= _VERSION_1_TABLES:
        return 1
    return None


def _checked_version(version: int | None, path: str) -> int:
    if version is None:
        raise StoreError(
            f"SQLite database {path!r} has prebuilds_ tables that "
            "this library did not write (no schema version record)"
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"SQLite database {path!r} has schema version {version}; "
            f"this library knows up to {SCHEMA_VERSION}"
        )
    return version


def migrate(
    conn: sqlite3.Connection,
    *,
    path: str,
    wal: bool,
    busy_timeout: float,
    count: Callable[[], None],
) -> None:
    """
    Bring the file to :data:`SCHEMA_VERSION` (and, if *wal*, to WAL journal
    mode), counting each statement with *count*.

    Switching a new file to WAL (or reading it meanwhile) can fail busy
    without consulting the busy handler: retried until *busy_timeout*.

    Raises:
        SchemaVersionError: the file was written by a newer library.
        StoreError: the file is not ours, or cannot be read or migrated.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.01
    while True:
        try:
            _migrate_once(conn, path=path, wal=wal, count=count)
        except StoreError as e:
            cause = e.__cause__
            busy = isinstance(cause, sqlite3.OperationalError) and (
                "locked" in str(cause) or "busy" in str(cause)
            )
            if not busy or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        else:
            return


def _migrate_once(
    conn: sqlite3.Connection, *, path: str, wal: bool, count: Callable[[], None]
) -> None:
    try:
        # The version is checked before anything is changed: a file of a
        # newer library, or not ours, keeps its journal mode.
        count()
        version = _checked_version(_read_version(conn), path)
        if wal:
            count()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - fs specific
                _log.warning(
                    "SQLite database %r could not use WAL (journal mode %s)",
                    path,
                    mode,
                )
        # Only prebuilds_schema records the current version: nothing to do.
        if version == SCHEMA_VERSION:
            return
        count()
        conn.execute("BEGIN IMMEDIATE")
        try:
            count()
            version = _checked_version(_read_version(conn), path)
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    count()
                    conn.execute(statement)
            count()
            conn.execute(_CREATE_VERSION_TABLE)
            count()
            conn.execute(_SET_VERSION, (SCHEMA_VERSION,))
            count()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise StoreError(f"cannot migrate SQLite database {path!r}: {e}") from e


def check_readable(
    conn: sqlite3.Connection, *, path: str, count: Callable[[], None]
) -> None:
    """
    Raise SchemaVersionError or StoreError unless the file holds the
    current schema (a read-only store does not migrate).
    """
    try:
        count()
        version = _read_version(conn)
    except sqlite3.Error as e:
        raise StoreError(f"cannot read SQLite database {path!r}: {e}") from e
    if version == 0:
        raise StoreError(f"{path!r} is not a prebuilds database")
    version = _checked_version(version, path)
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"SQLite database {path!r} has schema version {version}; "
            f"open it once read-write to migrate it to {SCHEMA_VERSION}"
        )
