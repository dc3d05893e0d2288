"""
:class:`SQLiteStore`: the embedded default store, on the standard library's
:mod:`sqlite3`.

Layout and conventions:

- Tables are prefixed ``prebuilds_`` and the schema version lives in a table
  of its own, ``prebuilds_schema``, so the store can share a file with a
  host's tables: it never reads or writes the file's ``PRAGMA user_version``
  and never touches a table without the prefix. Opening a file migrates it
  under ``BEGIN IMMEDIATE`` (so two processes opening a new file at once are
  safe); a file written by a newer library raises
  :class:`~prebuilds.exceptions.SchemaVersionError` before anything in it is
  changed, the journal mode included. Files of the first release, which
  kept the version in ``user_version``, are recognised by their tables and
  get the version table on first open (their ``user_version`` stays as it
  is).
- IDs are canonical UUID text, datetimes integer microseconds since the Unix
  epoch (UTC, exact), timedeltas integer microseconds, enums their values,
  schedules and parameters JSON lists of pairs.
- Connections run in autocommit mode; every method is one explicit
  transaction: writes in ``BEGIN IMMEDIATE`` (one writer at a time, across
  threads and processes), :meth:`SQLiteStore.snapshot` in one deferred
  ``BEGIN`` so that all its queries read one state.
- The tables have no CHECK constraints on purpose: a preset written by hand
  with a bad configuration must be readable so that ``snapshot`` can report
  it in ``invalid_presets``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid

from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

from prebuilds._arguments import (
    check_build_finished,
    check_create_prebuild,
    check_fail_stuck_builds,
    check_id_at,
    check_list_instances,
    check_set_preset_status,
    check_set_ready,
    check_snapshot,
    check_store_claim,
)
from prebuilds._model import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidPreset,
    PendingCount,
    Preset,
    PresetStatus,
    RunningPrebuild,
    Transition,
)
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    Build,
    BuildRequest,
    BuildStatus,
    Instance,
    Lease,
    Lifecycle,
    PresetConfig,
    Template,
)
from prebuilds._validate import (
    check_aware,
    check_bool,
    check_instance,
    check_optional_uuid,
    check_uuid,
)
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    PresetNotFoundError,
    SchemaVersionError,
    StoreError,
)
from prebuilds.stores._common import build_preset, fence_token, invalid_preset, lost


if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_log = logging.getLogger("prebuilds.stores.sqlite")

#: The schema version this library writes and understands.
SCHEMA_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OWNER = str(PREBUILDS_OWNER_ID)
_LEADER_NAME = "reconciler"
_STUCK_ERROR = "stuck: no result before the timeout"

#: Migration ``n`` takes a file from schema version ``n`` to ``n + 1``.
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
    {
        "prebuilds_settings",
        "prebuilds_templates",
        "prebuilds_presets",
        "prebuilds_instances",
        "prebuilds_builds",
        "prebuilds_leader",
    }
)


def _read_version(conn: sqlite3.Connection) -> int | None:
    """
    The prebuilds schema version of the file behind *conn*: 0 for a file
    without prebuilds tables, None for one with some of them but no
    record of their version (not a file this library wrote).
    """
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


# -- SQL ------------------------------------------------------------------------

_INSTANCE_COLUMNS = """
    i.id, i.preset_id, i.template_id, i.template_version_id, i.owner_id,
    i.name, i.created_at, i.ready, i.autostart_schedule, i.next_start_at,
    i.ttl, i.deadline, i.max_deadline, i.dormant_at, i.deleting_at,
    i.last_used_at, i.deleted, i.claimed_at, b.transition, b.status
"""

_SELECT_INSTANCES = (
    "SELECT"  # noqa: S608 - constant fragments only
    + _INSTANCE_COLUMNS
    + """
    FROM prebuilds_instances AS i
    LEFT JOIN prebuilds_builds AS b
        ON b.instance_id = i.id
        AND b.build_number = (
            SELECT MAX(x.build_number) FROM prebuilds_builds AS x
            WHERE x.instance_id = i.id
        )
    """
)

_BUILD_COLUMNS = """
    id, instance_id, preset_id, template_version_id, transition, status,
    build_number, initiator_id, created_at, started_at, finished_at,
    error_kind, error
"""

_SELECT_BUILDS = "SELECT" + _BUILD_COLUMNS + "FROM prebuilds_builds"

_PRESET_COLUMNS = """
    p.id, p.template_id, p.template_version_id, p.desired_instances, p.name,
    p.ttl, p.scheduling_timezone, p.schedules, p.parameters, p.status,
    p.last_invalidated_at,
    t.id, t.active_version_id, t.name, t.organization_id, t.deleted,
    t.deprecated, t.default_ttl
"""

_SELECT_PRESETS = (
    "SELECT"
    + _PRESET_COLUMNS
    + """
    FROM prebuilds_presets AS p
    JOIN prebuilds_templates AS t ON t.id = p.template_id
    """
)

_SNAPSHOT_PRESETS = _SELECT_PRESETS + "ORDER BY p.id"

#: Pooled instances whose latest build is a successful start.
_SNAPSHOT_RUNNING = """
    SELECT i.id, i.preset_id, i.created_at, i.ready, i.name, i.template_id,
           b.template_version_id
    FROM prebuilds_instances AS i
    JOIN prebuilds_builds AS b
        ON b.instance_id = i.id
        AND b.build_number = (
            SELECT MAX(x.build_number) FROM prebuilds_builds AS x
            WHERE x.instance_id = i.id
        )
    WHERE i.owner_id = :owner AND i.deleted = 0
        AND b.transition = 'start' AND b.status = 'succeeded'
    ORDER BY i.id
"""

#: The pool's pending or running builds that are their instance's latest,
#: on the template's active version, by preset and transition.
_SNAPSHOT_IN_PROGRESS = """
    SELECT b.preset_id, b.transition, COUNT(*), MIN(t.id),
           MIN(b.template_version_id)
    FROM prebuilds_builds AS b
    JOIN prebuilds_instances AS i ON i.id = b.instance_id
    JOIN prebuilds_templates AS t ON t.id = i.template_id
    WHERE b.status IN ('pending', 'running')
        AND b.initiator_id = :owner
        AND b.template_version_id = t.active_version_id
        AND NOT EXISTS (
            SELECT 1 FROM prebuilds_builds AS x
            WHERE x.instance_id = b.instance_id
                AND x.build_number > b.build_number
        )
    GROUP BY b.preset_id, b.transition
    ORDER BY b.preset_id, b.transition
"""

#: Queued first builds of an inactive version, per preset.
_SNAPSHOT_PENDING = """
    SELECT b.preset_id, COUNT(*)
    FROM prebuilds_builds AS b
    JOIN prebuilds_instances AS i ON i.id = b.instance_id
    JOIN prebuilds_templates AS t ON t.id = i.template_id
    WHERE b.build_number = 1 AND b.status = 'pending'
        AND b.transition = 'start' AND b.started_at IS NULL
        AND b.initiator_id = :owner
        AND b.template_version_id != t.active_version_id
    GROUP BY b.preset_id
    HAVING COUNT(*) > 0
    ORDER BY b.preset_id
"""

#: The latest build of every pool-owned instance (deleted or not), if it is
#: a start on the active version, ranked per preset newest first.
#: Backoff and hard limit in one pass. Candidates: the latest build of every
#: pool-owned instance (deleted or not) if it is a start on the template's
#: active version, ranked per preset newest first. A preset's template is
#: one, so excluding deleted templates (backoff only) drops whole presets
#: and leaves the ranks of the others unchanged.
_SNAPSHOT_FAILURES = """
    WITH candidates AS (
        SELECT b.preset_id, b.status, b.created_at, p.desired_instances AS n,
               t.deleted AS template_deleted,
               ROW_NUMBER() OVER (
                   PARTITION BY b.preset_id
                   ORDER BY b.created_at DESC, b.id DESC
               ) AS rank
        FROM prebuilds_instances AS i
        JOIN prebuilds_builds AS b
            ON b.instance_id = i.id
            AND b.build_number = (
                SELECT MAX(x.build_number) FROM prebuilds_builds AS x
                WHERE x.instance_id = i.id
            )
        JOIN prebuilds_presets AS p ON p.id = b.preset_id
        JOIN prebuilds_templates AS t ON t.id = p.template_id
        WHERE i.owner_id = :owner
            AND b.transition = 'start'
            AND b.template_version_id = t.active_version_id
    ),
    per_preset AS (
        SELECT preset_id,
               MAX(template_deleted) AS template_deleted,
               SUM(status = 'failed' AND created_at >= :since) AS num_failed,
               MAX(CASE WHEN rank <= n AND status = 'failed'
                             AND created_at >= :since
                        THEN created_at END) AS last_failed_at,
               :limit > 0
                   AND SUM(rank <= :limit) = :limit
                   AND SUM(rank <= :limit AND status = 'failed') = :limit
                   AS hard_limited
        FROM candidates
        GROUP BY preset_id
    )
    SELECT preset_id,
           CASE WHEN template_deleted = 0 AND last_failed_at IS NOT NULL
                THEN num_failed END AS num_failed,
           CASE WHEN template_deleted = 0 THEN last_failed_at END,
           hard_limited
    FROM per_preset
    WHERE (template_deleted = 0 AND last_failed_at IS NOT NULL) OR hard_limited
    ORDER BY preset_id
"""

_CLAIM_CANDIDATE = """
    SELECT i.id
    FROM prebuilds_instances AS i
    JOIN prebuilds_presets AS p ON p.id = i.preset_id
    JOIN prebuilds_templates AS t ON t.id = i.template_id
    JOIN prebuilds_builds AS b
        ON b.instance_id = i.id
        AND b.build_number = (
            SELECT MAX(x.build_number) FROM prebuilds_builds AS x
            WHERE x.instance_id = i.id
        )
    WHERE i.preset_id = :preset AND i.owner_id = :owner AND i.deleted = 0
        AND i.ready = 1
        AND b.transition = 'start' AND b.status = 'succeeded'
        AND i.template_version_id = t.active_version_id
        AND t.deleted = 0
        AND NOT (p.last_invalidated_at IS NOT NULL
                 AND i.created_at < p.last_invalidated_at)
        AND NOT (p.ttl IS NOT NULL AND p.ttl > 0
                 AND :now - i.created_at > p.ttl)
    ORDER BY i.created_at, i.id
    LIMIT 1
"""

_CLAIM_UPDATE = """
    UPDATE prebuilds_instances
    SET owner_id = :user, name = :name,
        autostart_schedule = :autostart_schedule,
        next_start_at = :next_start_at, ttl = :ttl, deadline = :deadline,
        max_deadline = :max_deadline, dormant_at = :dormant_at,
        deleting_at = :deleting_at, last_used_at = :last_used_at,
        claimed_at = :now
    WHERE id = :id AND owner_id = :owner AND deleted = 0
"""

#: A fenced write's check, in its own transaction: the lease is still this
#: holder's and unexpired; renewed by the same statement (one row changed).
_FENCE = """
    UPDATE prebuilds_leader SET expires_at = :expires
    WHERE name = :name AND holder = :token AND expires_at > :now
"""

_INSERT_BUILD = """
    INSERT INTO prebuilds_builds (
        id, instance_id, preset_id, template_version_id, transition, status,
        build_number, initiator_id, created_at
    ) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)
"""

# -- conversions ------------------------------------------------------------


def _to_us(field: str, value: datetime) -> int:
    """An aware datetime as exact integer microseconds since the epoch."""
    check_aware(field, value)
    return (value - _EPOCH) // _US


def _opt_to_us(field: str, value: datetime | None) -> int | None:
    return None if value is None else _to_us(field, value)


def _delta_us(field: str, value: timedelta | None) -> int | None:
    """A timedelta as integer microseconds (SQLite integers are 64-bit)."""
    if value is None:
        return None
    micros = value // _US
    if not _INT64_MIN <= micros <= _INT64_MAX:
        raise InvalidInputError(field, value, "too large for the SQLite store")
    return micros


def _from_us(field: str, value: object) -> datetime:
    if type(value) is not int:
        raise InvalidInputError(field, value, "must be integer microseconds")
    try:
        return _EPOCH + value * _US
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def _opt_from_us(field: str, value: object) -> datetime | None:
    return None if value is None else _from_us(field, value)


def _opt_delta(field: str, value: object) -> timedelta | None:
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidInputError(field, value, "must be integer microseconds")
    try:
        return value * _US
    except OverflowError:
        raise InvalidInputError(field, value, "out of range") from None


def _uuid(field: str, value: object) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInputError(field, value, "must be a UUID") from None


def _opt_uuid(field: str, value: object) -> UUID | None:
    return None if value is None else _uuid(field, value)


def _str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, value, "must be a string")
    return value


def _decode_pairs(field: str, raw: object) -> list[tuple[Any, Any]]:
    """A JSON list of two-element lists, as tuples."""
    reason = "must be a JSON list of pairs"
    try:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except ValueError:
        raise InvalidInputError(field, raw, reason) from None
    if not isinstance(value, list):
        raise InvalidInputError(field, raw, reason)
    pairs: list[tuple[Any, Any]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:  # noqa: PLR2004
            raise InvalidInputError(field, raw, reason)
        pairs.append((item[0], item[1]))
    return pairs


def _decode_parameters(raw: object) -> tuple[tuple[str, str], ...]:
    pairs = _decode_pairs("parameters", raw)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidInputError(
                "parameters", raw, "must be (name, value) string pairs"
            )
    return tuple(pairs)


def _enum(kind: type[Any], field: str, value: object) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise InvalidInputError(field, value, f"unknown {kind.__name__}") from None


def _template_from_row(row: Sequence[Any]) -> Template:
    (tid, active, name, org, deleted, deprecated, default_ttl) = row
    return Template(
        id=_uuid("id", tid),
        active_version_id=_uuid("active_version_id", active),
        name=_str("name", name),
        organization_id=_opt_uuid("organization_id", org),
        deleted=bool(deleted),
        deprecated=bool(deprecated),
        default_ttl=_opt_delta("default_ttl", default_ttl),
    )


def _preset_from_row(row: Sequence[Any]) -> Preset:
    """
    A ``_SELECT_PRESETS`` row as a :class:`Preset`.

    Raises:
        InvalidInputError: the stored configuration is not valid.
    """
    template = _template_from_row(row[11:])
    return build_preset(
        id=_uuid("id", row[0]),
        template_id=_uuid("template_id", row[1]),
        template_version_id=_uuid("template_version_id", row[2]),
        desired_instances=row[3],
        name=row[4],
        ttl=_opt_delta("ttl", row[5]),
        scheduling_timezone=row[6],
        schedules=_decode_pairs("schedules", row[7]),
        parameters=_decode_parameters(row[8]),
        template=template,
        status=_enum(PresetStatus, "status", row[9]),
        last_invalidated_at=_opt_from_us("last_invalidated_at", row[10]),
    )


def _instance_from_row(row: Sequence[Any]) -> Instance:
    return Instance(
        id=_uuid("id", row[0]),
        preset_id=_uuid("preset_id", row[1]),
        template_id=_uuid("template_id", row[2]),
        template_version_id=_uuid("template_version_id", row[3]),
        owner_id=_uuid("owner_id", row[4]),
        name=_str("name", row[5]),
        created_at=_from_us("created_at", row[6]),
        ready=bool(row[7]),
        lifecycle=Lifecycle(
            autostart_schedule=row[8],
            next_start_at=_opt_from_us("next_start_at", row[9]),
            ttl=_opt_delta("ttl", row[10]),
            deadline=_opt_from_us("deadline", row[11]),
            max_deadline=_opt_from_us("max_deadline", row[12]),
            dormant_at=_opt_from_us("dormant_at", row[13]),
            deleting_at=_opt_from_us("deleting_at", row[14]),
            last_used_at=_opt_from_us("last_used_at", row[15]),
        ),
        deleted=bool(row[16]),
        latest_transition=(
            Transition.START
            if row[18] is None
            else _enum(Transition, "transition", row[18])
        ),
        latest_status=(
            BuildStatus.PENDING
            if row[19] is None
            else _enum(BuildStatus, "status", row[19])
        ),
        claimed_at=_opt_from_us("claimed_at", row[17]),
    )


def _build_from_row(row: Sequence[Any]) -> Build:
    return Build(
        id=_uuid("id", row[0]),
        instance_id=_uuid("instance_id", row[1]),
        preset_id=_uuid("preset_id", row[2]),
        template_version_id=_uuid("template_version_id", row[3]),
        transition=_enum(Transition, "transition", row[4]),
        status=_enum(BuildStatus, "status", row[5]),
        build_number=row[6],
        initiator_id=_uuid("initiator_id", row[7]),
        created_at=_from_us("created_at", row[8]),
        started_at=_opt_from_us("started_at", row[9]),
        finished_at=_opt_from_us("finished_at", row[10]),
        error_kind=row[11],
        error=row[12],
    )


def _deletable(instance: Instance) -> bool:
    """Pooled, not deleted, and not already being (or done being) deleted."""
    return (
        not instance.deleted
        and instance.owner_id == PREBUILDS_OWNER_ID
        and not (
            instance.latest_transition is Transition.DELETE
            and instance.latest_status
            in {BuildStatus.PENDING, BuildStatus.RUNNING, BuildStatus.SUCCEEDED}
        )
    )


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Turn a row that cannot be decoded into a :class:`StoreError`."""
    try:
        yield
    except (ValueError, TypeError, OverflowError) as e:
        raise StoreError(f"corrupt {what} row in the SQLite store: {e}") from e


def _preset_or_invalid(row: Sequence[Any]) -> Preset | InvalidPreset:
    """The preset of a ``_SELECT_PRESETS`` row, or why it is not valid."""
    try:
        return _preset_from_row(row)
    except InvalidInputError as e:
        return invalid_preset(_uuid("id", row[0]), e)


# -- connections --------------------------------------------------------------


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:  # pragma: no cover - best effort
        _log.debug("closing a SQLite connection failed", exc_info=True)


class _Handle:
    """One connection, the lock that serialises its transactions, its thread."""

    __slots__ = ("conn", "lock", "thread")

    def __init__(
        self, conn: sqlite3.Connection, thread: threading.Thread | None
    ) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.thread = thread


class _Tx:
    """An open transaction: executes and counts statements."""

    __slots__ = ("_conn", "_count")

    def __init__(self, conn: sqlite3.Connection, count: Callable[[], None]) -> None:
        self._conn = conn
        self._count = count

    def execute(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> sqlite3.Cursor:
        self._count()
        return self._conn.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        return self.execute(sql, params).fetchall()


class SQLiteStore:
    """
    The embedded default :class:`~prebuilds.interfaces.Store`, on
    :mod:`sqlite3`.

    Args:
        path: A database file (created if missing), or ``":memory:"`` for a
            private in-memory database.
        lease_ttl: How long a :meth:`leader` lease lasts if its holder dies
            without releasing it (wall clock).
        busy_timeout: Seconds a connection waits for another writer before
            failing with :class:`~prebuilds.exceptions.StoreError`.
        read_only: Open an existing file for reading only: the file is never
            created, migrated or written (its journal mode included), and
            every write method raises :class:`~prebuilds.exceptions.StoreError`.
            For tools that inspect a host's file, such as
            ``prebuilds status``.

    A file store opens one connection per thread (closed by :meth:`close`,
    or when a later connection finds its thread gone), so threads and
    processes sharing one file serialise their writes through SQLite's
    locks; a forked child opens its own connections instead of using the
    parent's. An in-memory store has one connection, shared under a lock.

    :meth:`leader` is a lease row that expires after *lease_ttl* (wall
    clock), so a process that dies while leading blocks the others only that
    long. While a scope holds it, the lease is renewed every third of
    *lease_ttl* by one daemon thread per store object (started at the first
    lease, idle while none is held) and by every fenced write; a holder that
    could not renew in time (stopped, stalled) loses it to the next process
    that asks, and its fenced writes raise
    :class:`~prebuilds.exceptions.LeadershipLostError`.

    :meth:`statement_count` counts the SQL statements the store ran, for
    checking that :meth:`snapshot` costs a constant number of them.

    The store is also a context manager that closes it.

    Raises:
        SchemaVersionError: the file was written by a newer library.
        StoreError: the file cannot be opened or migrated; read-only: it
            does not exist, is not a prebuilds database, or needs a
            migration.
        InvalidInputError: a non-positive *lease_ttl* or a negative
            *busy_timeout*; *read_only* with an in-memory database.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The schema version moved from ``PRAGMA user_version`` to the table
       ``prebuilds_schema``; *read_only* added.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        lease_ttl: timedelta = timedelta(minutes=5),
        busy_timeout: float = 30.0,
        read_only: bool = False,
    ) -> None:
        if lease_ttl <= timedelta(0):
            raise InvalidInputError("lease_ttl", lease_ttl, "must be > 0")
        if busy_timeout < 0:
            raise InvalidInputError("busy_timeout", busy_timeout, "must be >= 0")
        self._path = os.fspath(path)
        self._lease_ttl_us = lease_ttl // _US
        self._busy_timeout = float(busy_timeout)
        self._memory = self._path in {"", ":memory:"}
        if not isinstance(read_only, bool):
            raise InvalidInputError("read_only", read_only, "must be a bool")
        if read_only and self._memory:
            raise InvalidInputError(
                "read_only", read_only, "an in-memory database cannot be read-only"
            )
        self._read_only = read_only
        if read_only and not Path(self._path).is_file():
            raise StoreError(f"no SQLite database at {self._path!r}")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._handles: list[_Handle] = []
        self._shared: _Handle | None = None
        self._closed = False
        self._statements = 0
        self._pid = os.getpid()
        # Leases this store object holds (renewed by the renewer thread) and
        # leases it found taken over (their fenced writes fail at once).
        self._renewal = threading.Condition(threading.Lock())
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._renewer: threading.Thread | None = None
        try:
            handle = self._open_handle()
            if self._memory:
                self._shared = handle
            else:
                self._local.handle = handle
            if read_only:
                self._check_readable(handle)
            else:
                self._migrate(handle)
        except BaseException:
            self.close()
            raise

    # -- lifecycle of the store ------------------------------------------------

    @property
    def path(self) -> str:
        """The database path given to the constructor."""
        return self._path

    def close(self) -> None:
        """Close every connection this store opened; later calls raise StoreError."""
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
            self._shared = None
        with self._renewal:
            self._renewal.notify_all()
            renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            # Not longer than a renewal can take: it may wait for a writer.
            renewer.join(timeout=self._busy_timeout + 1.0)
        for handle in handles:
            _close_quietly(handle.conn)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._read_only:
            return f"SQLiteStore({self._path!r}, read_only=True)"
        return f"SQLiteStore({self._path!r})"

    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
        return self._read_only

    def statement_count(self) -> int:
        """
        How many SQL statements this store has executed so far, over all its
        connections (``BEGIN``/``COMMIT`` included). Take the difference
        around a call to count the statements it costs.
        """
        with self._lock:
            return self._statements

    def _count(self) -> None:
        with self._lock:
            self._statements += 1

    def _open_handle(self) -> _Handle:
        if self._read_only:
            # mode=ro never creates the file; the URI form needs its path
            # quoted (a '?' or '#' in a file name is not a query).
            target = "file:" + urllib.parse.quote(self._path) + "?mode=ro"
        else:
            target = self._path
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=self._read_only,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {self._path!r}: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(
                f"cannot configure SQLite database {self._path!r}: {e}"
            ) from e
        handle = _Handle(conn, None if self._memory else threading.current_thread())
        stale: list[_Handle] = []
        with self._lock:
            if self._closed:
                conn.close()
                raise StoreError("the SQLiteStore is closed")
            keep: list[_Handle] = []
            for other in self._handles:
                dead = other.thread is not None and not other.thread.is_alive()
                (stale if dead else keep).append(other)
            keep.append(handle)
            self._handles = keep
        for other in stale:
            _close_quietly(other.conn)
        return handle

    def _handle(self) -> _Handle:
        if self._closed:
            raise StoreError("the SQLiteStore is closed")
        if self._memory:
            shared = self._shared
            if shared is None:
                raise StoreError("the SQLiteStore is closed")
            return shared
        if self._pid != os.getpid():
            self._forget_inherited_connections()
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._open_handle()
            self._local.handle = handle
        return handle

    def _forget_inherited_connections(self) -> None:
        """
        In a forked child: drop (without closing) the parent's connections,
        which SQLite forbids using across ``fork()``; open new ones on demand.
        """
        with self._lock:
            self._pid = os.getpid()
            self._handles = []
            self._local = threading.local()
            # The parent's leases are not the child's to renew or fence, and
            # its renewer thread did not survive the fork.
            self._renewal = threading.Condition(threading.Lock())
            self._held = set()
            self._lost = set()
            self._renewer = None

    def _migrate(self, handle: _Handle) -> None:
        # Switching a new file to WAL, or reading it while another process
        # switches it, can return SQLITE_BUSY without consulting the busy
        # handler; such a failure is retried until the busy timeout is spent.
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.01
        while True:
            try:
                self._migrate_once(handle)
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

    def _migrate_once(self, handle: _Handle) -> None:
        conn = handle.conn
        with handle.lock:
            try:
                # The version is checked before anything is changed: a file
                # of a newer library, or not ours, keeps its journal mode.
                self._count()
                version = self._checked_version(_read_version(conn))
                if not self._memory:
                    self._count()
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":  # pragma: no cover - fs specific
                        _log.warning(
                            "SQLite database %r could not use WAL (journal mode %s)",
                            self._path,
                            mode,
                        )
                if version == SCHEMA_VERSION and self._has_version_table(conn):
                    return
                self._count()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._count()
                    version = self._checked_version(_read_version(conn))
                    for step in _MIGRATIONS[version:]:
                        for statement in step:
                            self._count()
                            conn.execute(statement)
                    self._count()
                    conn.execute(_CREATE_VERSION_TABLE)
                    self._count()
                    conn.execute(_SET_VERSION, (SCHEMA_VERSION,))
                    self._count()
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(
                    f"cannot migrate SQLite database {self._path!r}: {e}"
                ) from e

    @staticmethod
    def _has_version_table(conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master "
            "WHERE type = 'table' AND name = 'prebuilds_schema'"
        ).fetchone()
        return row is not None

    def _check_readable(self, handle: _Handle) -> None:
        """Read-only: the file must hold the current prebuilds schema."""
        with handle.lock:
            try:
                self._count()
                version = _read_version(handle.conn)
            except sqlite3.Error as e:
                raise StoreError(
                    f"cannot read SQLite database {self._path!r}: {e}"
                ) from e
        if version == 0:
            raise StoreError(f"{self._path!r} is not a prebuilds database")
        version = self._checked_version(version)
        if version < SCHEMA_VERSION:  # pragma: no cover - one version so far
            raise StoreError(
                f"SQLite database {self._path!r} has schema version {version}; "
                f"open it once read-write to migrate it to {SCHEMA_VERSION}"
            )

    def _checked_version(self, version: int | None) -> int:
        if version is None:
            raise StoreError(
                f"SQLite database {self._path!r} has prebuilds_ tables that "
                "this library did not write (no schema version record)"
            )
        self._check_version(version)
        return version

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"SQLite database {self._path!r} has schema version {version}; "
                f"this library knows up to {SCHEMA_VERSION}"
            )

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_Tx]:
        """
        One transaction: ``BEGIN IMMEDIATE`` to write, ``BEGIN`` to read.

        sqlite3 errors become StoreError; any error rolls back.
        """
        if write and self._read_only:
            raise StoreError(f"the SQLiteStore on {self._path!r} is read-only")
        handle = self._handle()
        with handle.lock:
            conn = handle.conn
            tx = _Tx(conn, self._count)
            try:
                tx.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StoreError(f"SQLite: cannot begin a transaction: {e}") from e
            try:
                yield tx
            except BaseException as e:
                try:
                    if conn.in_transaction:
                        tx.execute("ROLLBACK")
                except sqlite3.Error:
                    _log.debug("SQLite rollback failed", exc_info=True)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"SQLite: {e}") from e
                raise
            try:
                tx.execute("COMMIT")
            except sqlite3.Error as e:
                try:
                    if conn.in_transaction:
                        tx.execute("ROLLBACK")
                except sqlite3.Error:
                    _log.debug("SQLite rollback failed", exc_info=True)
                raise StoreError(f"SQLite: cannot commit: {e}") from e

    # -- configuration -------------------------------------------------------------

    def put_template(self, template: Template) -> None:
        """Insert or replace *template*."""
        check_instance("template", template, Template)
        with self._transaction(write=True) as tx:
            tx.execute(
                """
                INSERT INTO prebuilds_templates (
                    id, active_version_id, name, organization_id, deleted,
                    deprecated, default_ttl
                ) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    active_version_id = excluded.active_version_id,
                    name = excluded.name,
                    organization_id = excluded.organization_id,
                    deleted = excluded.deleted,
                    deprecated = excluded.deprecated,
                    default_ttl = excluded.default_ttl
                """,
                (
                    str(template.id),
                    str(template.active_version_id),
                    template.name,
                    None
                    if template.organization_id is None
                    else str(template.organization_id),
                    int(template.deleted),
                    int(template.deprecated),
                    _delta_us("default_ttl", template.default_ttl),
                ),
            )

    def put_preset(self, preset: PresetConfig) -> None:
        """Insert or replace a preset's configuration (status and invalidation kept)."""
        check_instance("preset", preset, PresetConfig)
        schedules = json.dumps([[s.cron, s.instances] for s in preset.schedules])
        parameters = json.dumps([[k, v] for k, v in preset.parameters])
        with self._transaction(write=True) as tx:
            if (
                tx.one(
                    "SELECT 1 FROM prebuilds_templates WHERE id = ?",
                    (str(preset.template_id),),
                )
                is None
            ):
                raise InvalidInputError(
                    "template_id", preset.template_id, "unknown template"
                )
            tx.execute(
                """
                INSERT INTO prebuilds_presets (
                    id, template_id, template_version_id, desired_instances,
                    name, ttl, scheduling_timezone, schedules, parameters
                ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    template_id = excluded.template_id,
                    template_version_id = excluded.template_version_id,
                    desired_instances = excluded.desired_instances,
                    name = excluded.name,
                    ttl = excluded.ttl,
                    scheduling_timezone = excluded.scheduling_timezone,
                    schedules = excluded.schedules,
                    parameters = excluded.parameters
                """,
                (
                    str(preset.id),
                    str(preset.template_id),
                    str(preset.template_version_id),
                    preset.desired_instances,
                    preset.name,
                    _delta_us("ttl", preset.ttl),
                    preset.scheduling_timezone,
                    schedules,
                    parameters,
                ),
            )

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """
        Expire every pooled instance of the preset created before *at*.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
        """
        check_id_at("preset_id", preset_id, "at", at)
        at_us = _to_us("at", at)
        with self._transaction(write=True) as tx:
            cursor = tx.execute(
                "UPDATE prebuilds_presets SET last_invalidated_at = ? WHERE id = ?",
                (at_us, str(preset_id)),
            )
            if cursor.rowcount == 0:
                raise PresetNotFoundError(preset_id)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume reconciliation (persisted)."""
        check_bool("paused", paused)
        with self._transaction(write=True) as tx:
            tx.execute(
                """
                INSERT INTO prebuilds_settings (key, value) VALUES ('paused', ?)
                ON CONFLICT (key) DO UPDATE SET value = excluded.value
                """,
                ("true" if paused else "false",),
            )

    def is_paused(self) -> bool:
        """Whether reconciliation is paused."""
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT value FROM prebuilds_settings WHERE key = 'paused'")
        return row is not None and row[0] == "true"

    def get_template(self, template_id: UUID) -> Template:
        """
        The template with *template_id*.

        Raises:
            InvalidInputError: no template has *template_id*.
        """
        check_uuid("template_id", template_id)
        with self._transaction(write=False) as tx:
            row = tx.one(
                """
                SELECT id, active_version_id, name, organization_id, deleted,
                       deprecated, default_ttl
                FROM prebuilds_templates WHERE id = ?
                """,
                (str(template_id),),
            )
        if row is None:
            raise InvalidInputError("template_id", template_id, "unknown template")
        with _decoding("template"):
            return _template_from_row(row)

    def get_preset(self, preset_id: UUID) -> Preset:
        """
        The preset as the calculator sees it.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            InvalidInputError: its stored configuration is not valid.
        """
        check_uuid("preset_id", preset_id)
        with self._transaction(write=False) as tx:
            row = tx.one(_SELECT_PRESETS + "WHERE p.id = ?", (str(preset_id),))
        if row is None:
            raise PresetNotFoundError(preset_id)
        return _preset_from_row(row)

    # -- the reconciler ---------------------------------------------------------------

    def leader(self) -> AbstractContextManager[Lease]:
        """
        A non-blocking leader scope on a lease row: yields a held
        :class:`~prebuilds.Lease` if this call took (or found expired and
        took over) the lease, a lease not held if another holder has an
        unexpired one. While the scope runs, the lease is renewed every
        third of ``lease_ttl``; it is released when the scope exits, and a
        holder that dies leaves it to expire after ``lease_ttl``.
        """
        return self._leader_scope()

    @contextmanager
    def _leader_scope(self) -> Iterator[Lease]:
        token = str(uuid.uuid4())
        if not self._acquire_lease(token):
            yield Lease(held=False)
            return
        self._hold(token)
        try:
            yield Lease(held=True, token=token)
        finally:
            with self._renewal:
                self._held.discard(token)
                self._lost.discard(token)
            self._release_lease(token)

    # -- renewal -----------------------------------------------------------------
    # One daemon thread per store object renews the leases it holds, so that a
    # pass outlives lease_ttl whatever it waits for (a slow submit included),
    # and a steady pass starts no thread: the renewer starts with the first
    # lease and then waits, idle, while none is held.

    def _hold(self, token: str) -> None:
        """Have the renewer keep *token*'s lease; start it if need be."""
        with self._renewal:
            self._held.add(token)
            renewer = self._renewer
            if renewer is None or not renewer.is_alive():  # none yet, or forked
                renewer = threading.Thread(
                    target=self._renew_loop,
                    name="prebuilds-lease-renewer",
                    daemon=True,
                )
                self._renewer = renewer
                renewer.start()
            self._renewal.notify_all()

    def _renew_loop(self) -> None:
        period = max(self._lease_ttl_us / 3_000_000, 0.001)
        while True:
            with self._renewal:
                while not self._closed and not self._held:
                    self._renewal.wait()
                # A period, whoever notifies meanwhile (a new lease is first
                # renewed within a period too): no write per pass for nothing.
                deadline = time.monotonic() + period
                while not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._renewal.wait(remaining)
                if self._closed:
                    return
                tokens = sorted(self._held)
            for token in tokens:
                self._renew(token)

    def _renew(self, token: str) -> None:
        """Extend *token*'s lease; if it is gone or expired, mark it lost."""
        try:
            with self._transaction(write=True) as tx:
                held = self._fence_row(tx, token)
        except StoreError:
            # Tried again a third of the lease later; if that is too late
            # the lease expires and the holder's next fenced write says so.
            if not self._closed:
                _log.warning(
                    "could not renew the leader lease of %r", self._path, exc_info=True
                )
            return
        if not held:
            self._mark_lost(token)

    def _mark_lost(self, token: str) -> None:
        with self._renewal:
            if token not in self._held:
                return  # the scope has ended meanwhile
            self._held.discard(token)
            self._lost.add(token)
        _log.warning(
            "the leader lease of %r was lost (expired, taken over): the pass "
            "holding it can no longer write",
            self._path,
        )

    def _fence_row(self, tx: _Tx, token: str) -> bool:
        """Renew *token*'s lease in *tx*; whether it still holds it."""
        now_us = time.time_ns() // 1000
        cursor = tx.execute(
            _FENCE,
            {
                "expires": now_us + self._lease_ttl_us,
                "name": _LEADER_NAME,
                "token": token,
                "now": now_us,
            },
        )
        return cursor.rowcount == 1

    def _fenced(self, lease: Lease | None) -> str | None:
        """
        The token of a fenced write (None: unfenced), failing at once for a
        lease this store already found lost.

        Raises:
            InvalidInputError: *lease* is not a Lease.
            LeadershipLostError: the lease is not held, or known lost.
        """
        token = fence_token(lease)
        if token is not None:
            with self._renewal:
                known_lost = token in self._lost
            if known_lost:
                raise lost(token)
        return token

    def _fence(self, tx: _Tx, token: str | None) -> None:
        """
        The fence of a write, its transaction's first statement: *token*
        must still hold an unexpired lease (which it renews).

        Raises:
            LeadershipLostError: it does not (the write is rolled back).
        """
        if token is not None and not self._fence_row(tx, token):
            self._mark_lost(token)
            raise lost(token)

    def _acquire_lease(self, token: str) -> bool:
        now_us = time.time_ns() // 1000
        with self._transaction(write=True) as tx:
            row = tx.one(
                "SELECT holder, expires_at FROM prebuilds_leader WHERE name = ?",
                (_LEADER_NAME,),
            )
            if row is not None and row[0] != token and row[1] > now_us:
                return False
            tx.execute(
                """
                INSERT INTO prebuilds_leader (name, holder, expires_at)
                VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    holder = excluded.holder, expires_at = excluded.expires_at
                """,
                (_LEADER_NAME, token, now_us + self._lease_ttl_us),
            )
        return True

    def _release_lease(self, token: str) -> None:
        try:
            with self._transaction(write=True) as tx:
                tx.execute(
                    "DELETE FROM prebuilds_leader WHERE name = ? AND holder = ?",
                    (_LEADER_NAME, token),
                )
        except StoreError:
            _log.warning(
                "could not release the leader lease of %r; it expires by itself",
                self._path,
                exc_info=True,
            )

    def snapshot(
        self, *, now: datetime, backoff_lookback: timedelta, hard_limit: int
    ) -> GlobalSnapshot:
        """
        One consistent read of every pool, in a constant number of statements:
        ``BEGIN``, five queries, ``COMMIT``.
        """
        check_snapshot(now, backoff_lookback, hard_limit)
        now_us = _to_us("now", now)
        since_us = now_us - backoff_lookback // _US
        owner = {"owner": _OWNER}
        with self._transaction(write=False) as tx:
            preset_rows = tx.all(_SNAPSHOT_PRESETS)
            running_rows = tx.all(_SNAPSHOT_RUNNING, owner)
            in_progress_rows = tx.all(_SNAPSHOT_IN_PROGRESS, owner)
            pending_rows = tx.all(_SNAPSHOT_PENDING, owner)
            failure_rows = tx.all(
                _SNAPSHOT_FAILURES,
                {"owner": _OWNER, "since": since_us, "limit": hard_limit},
            )
        presets: list[Preset] = []
        invalid: list[InvalidPreset] = []
        # IDs repeat across rows (presets, templates, versions): parse each once.
        ids: dict[str, UUID] = {}

        def uid(text: str) -> UUID:
            value = ids.get(text)
            if value is None:
                value = ids[text] = UUID(text)
            return value

        with _decoding("snapshot"):
            for row in preset_rows:
                item = _preset_or_invalid(row)
                if isinstance(item, InvalidPreset):
                    invalid.append(item)
                else:
                    presets.append(item)
            running = [
                RunningPrebuild(
                    id=uid(r[0]),
                    preset_id=uid(r[1]),
                    created_at=_from_us("created_at", r[2]),
                    ready=bool(r[3]),
                    name=r[4],
                    template_id=uid(r[5]),
                    template_version_id=uid(r[6]),
                )
                for r in running_rows
            ]
            in_progress = [
                InProgressCount(
                    preset_id=uid(r[0]),
                    transition=Transition(r[1]),
                    count=r[2],
                    template_id=uid(r[3]),
                    template_version_id=uid(r[4]),
                )
                for r in in_progress_rows
            ]
            pending = [
                PendingCount(preset_id=uid(r[0]), count=r[1]) for r in pending_rows
            ]
            backoffs = [
                Backoff(
                    preset_id=uid(r[0]),
                    num_failed=r[1],
                    last_build_at=_from_us("last_build_at", r[2]),
                )
                for r in failure_rows
                if r[2] is not None
            ]
            hard_limited = frozenset(uid(r[0]) for r in failure_rows if r[3])
        return GlobalSnapshot(
            presets=presets,
            running=running,
            in_progress=in_progress,
            pending=pending,
            backoffs=backoffs,
            hard_limited=hard_limited,
            invalid_presets=invalid,
        )

    def create_prebuild(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        """
        A new pooled instance and its pending start build, in one write
        transaction; None if the preset is not active.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            LeadershipLostError: *lease* no longer leads.
        """
        check_create_prebuild(preset_id, now, name)
        now_us = _to_us("now", now)
        token = self._fenced(lease)
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            row = tx.one(
                """
                SELECT p.template_id, p.template_version_id, p.parameters,
                       t.active_version_id, t.deleted, t.deprecated
                FROM prebuilds_presets AS p
                JOIN prebuilds_templates AS t ON t.id = p.template_id
                WHERE p.id = ?
                """,
                (str(preset_id),),
            )
            if row is None:
                raise PresetNotFoundError(preset_id)
            template_id, version_id, raw_parameters, active, deleted, deprecated = row
            if version_id != active or deleted or deprecated:
                return None
            parameters = _decode_parameters(raw_parameters)
            instance_id = uuid.uuid4()
            build_id = uuid.uuid4()
            tx.execute(
                """
                INSERT INTO prebuilds_instances (
                    id, preset_id, template_id, template_version_id, owner_id,
                    name, created_at, ready, last_used_at, deleted
                ) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 0)
                """,
                (
                    str(instance_id),
                    str(preset_id),
                    template_id,
                    version_id,
                    _OWNER,
                    name,
                    now_us,
                    now_us,
                ),
            )
            tx.execute(
                _INSERT_BUILD,
                (
                    str(build_id),
                    str(instance_id),
                    str(preset_id),
                    version_id,
                    Transition.START.value,
                    1,
                    _OWNER,
                    now_us,
                ),
            )
            # Built before the commit: a row that cannot be read back rolls
            # the creation back instead of leaving it behind.
            with _decoding("preset"):
                return BuildRequest(
                    build_id=build_id,
                    instance_id=instance_id,
                    preset_id=preset_id,
                    template_id=UUID(template_id),
                    template_version_id=UUID(version_id),
                    transition=Transition.START,
                    name=name,
                    parameters=parameters,
                    orphan=False,
                )

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """
        A pending delete build of a still pooled instance; None if it is
        unknown, deleted, claimed or already being deleted.

        Raises:
            LeadershipLostError: *lease* no longer leads.
        """
        check_id_at("instance_id", instance_id, "now", now)
        now_us = _to_us("now", now)
        token = self._fenced(lease)
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            row = tx.one(_SELECT_INSTANCES + "WHERE i.id = ?", (str(instance_id),))
            if row is None:
                return None
            with _decoding("instance"):
                instance = _instance_from_row(row)
            if not _deletable(instance):
                return None
            build_id = self._insert_delete(tx, row, now_us)
            tx.execute(
                "UPDATE prebuilds_instances SET ready = 0 WHERE id = ?",
                (str(instance_id),),
            )
            return BuildRequest(
                build_id=build_id,
                instance_id=instance.id,
                preset_id=instance.preset_id,
                template_id=instance.template_id,
                template_version_id=instance.template_version_id,
                transition=Transition.DELETE,
                name=instance.name,
                parameters=(),
                orphan=False,
            )

    @staticmethod
    def _insert_delete(tx: _Tx, instance_row: Sequence[Any], now_us: int) -> UUID:
        """Insert the next build of an instance: a pending delete."""
        instance_id, preset_id, version_id = (
            instance_row[0],
            instance_row[1],
            instance_row[3],
        )
        number = tx.one(
            "SELECT COALESCE(MAX(build_number), 0) + 1 FROM prebuilds_builds "
            "WHERE instance_id = ?",
            (instance_id,),
        )[0]
        build_id = uuid.uuid4()
        tx.execute(
            _INSERT_BUILD,
            (
                str(build_id),
                instance_id,
                preset_id,
                version_id,
                Transition.DELETE.value,
                number,
                _OWNER,
                now_us,
            ),
        )
        return build_id

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """
        Cancel the queued first builds of the preset on an inactive version;
        the orphan deletes to submit, one per instance.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            LeadershipLostError: *lease* no longer leads.
        """
        check_id_at("preset_id", preset_id, "now", now)
        now_us = _to_us("now", now)
        token = self._fenced(lease)
        requests: list[BuildRequest] = []
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            if (
                tx.one(
                    "SELECT 1 FROM prebuilds_presets WHERE id = ?", (str(preset_id),)
                )
                is None
            ):
                raise PresetNotFoundError(preset_id)
            rows = tx.all(
                """
                SELECT b.id, b.instance_id
                FROM prebuilds_builds AS b
                JOIN prebuilds_instances AS i ON i.id = b.instance_id
                JOIN prebuilds_templates AS t ON t.id = i.template_id
                WHERE b.preset_id = ?
                    AND b.build_number = 1 AND b.status = 'pending'
                    AND b.transition = 'start' AND b.started_at IS NULL
                    AND b.initiator_id = ?
                    AND b.template_version_id != t.active_version_id
                ORDER BY i.created_at, i.id
                """,
                (str(preset_id), _OWNER),
            )
            for build_id, instance_id in rows:
                tx.execute(
                    "UPDATE prebuilds_builds SET status = 'canceled', finished_at = ? "
                    "WHERE id = ?",
                    (now_us, build_id),
                )
                row = tx.one(_SELECT_INSTANCES + "WHERE i.id = ?", (instance_id,))
                with _decoding("instance"):
                    instance = _instance_from_row(row)
                delete_id = self._insert_delete(tx, row, now_us)
                requests.append(
                    BuildRequest(
                        build_id=delete_id,
                        instance_id=instance.id,
                        preset_id=instance.preset_id,
                        template_id=instance.template_id,
                        template_version_id=instance.template_version_id,
                        transition=Transition.DELETE,
                        name=instance.name,
                        parameters=(),
                        orphan=True,
                    )
                )
        return requests

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """
        Record the preset's health.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            LeadershipLostError: *lease* no longer leads.
        """
        check_set_preset_status(preset_id, status)
        value = status.value
        token = self._fenced(lease)
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            cursor = tx.execute(
                "UPDATE prebuilds_presets SET status = ? WHERE id = ?",
                (value, str(preset_id)),
            )
            if cursor.rowcount == 0:
                raise PresetNotFoundError(preset_id)

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """
        Fail the pool's builds pending or running since before *older_than*.

        Raises:
            LeadershipLostError: *lease* no longer leads.
        """
        check_fail_stuck_builds(older_than, now)
        params = {
            "older": _to_us("older_than", older_than),
            "owner": _OWNER,
            "now": _to_us("now", now),
        }
        token = self._fenced(lease)
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            rows = tx.all(
                _SELECT_BUILDS
                + """
                WHERE status IN ('pending', 'running')
                    AND created_at < :older AND initiator_id = :owner
                ORDER BY created_at, instance_id, build_number
                """,
                params,
            )
            if not rows:
                return []
            tx.execute(
                """
                UPDATE prebuilds_builds
                SET status = 'failed', finished_at = :now,
                    error_kind = 'timeout', error = :error
                WHERE status IN ('pending', 'running')
                    AND created_at < :older AND initiator_id = :owner
                """,
                {**params, "error": _STUCK_ERROR},
            )
            with _decoding("build"):
                return [
                    attrs.evolve(
                        _build_from_row(row),
                        status=BuildStatus.FAILED,
                        finished_at=now.astimezone(timezone.utc),
                        error_kind="timeout",
                        error=_STUCK_ERROR,
                    )
                    for row in rows
                ]

    # -- reports from the provisioner ------------------------------------------------

    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """
        A worker picked the build up (only a pending build changes).

        Raises:
            BuildNotFoundError: no build has *build_id*.
        """
        check_id_at("build_id", build_id, "now", now)
        now_us = _to_us("now", now)
        with self._transaction(write=True) as tx:
            row = tx.one(
                "SELECT status FROM prebuilds_builds WHERE id = ?", (str(build_id),)
            )
            if row is None:
                raise BuildNotFoundError(build_id)
            if row[0] == BuildStatus.PENDING.value:
                tx.execute(
                    "UPDATE prebuilds_builds SET status = 'running', started_at = ? "
                    "WHERE id = ?",
                    (now_us, str(build_id)),
                )

    def build_finished(
        self,
        build_id: UUID,
        *,
        now: datetime,
        succeeded: bool,
        error_kind: str | None = None,
        error: str | None = None,
        lease: Lease | None = None,
    ) -> None:
        """
        The build ended; a report on an already finished build is ignored.
        A successful delete marks the instance deleted.

        Raises:
            BuildNotFoundError: no build has *build_id*.
            LeadershipLostError: *lease* no longer leads.
        """
        check_build_finished(build_id, now, succeeded, error_kind, error)
        now_us = _to_us("now", now)
        token = self._fenced(lease)
        with self._transaction(write=True) as tx:
            self._fence(tx, token)
            row = tx.one(
                "SELECT status, transition, instance_id FROM prebuilds_builds "
                "WHERE id = ?",
                (str(build_id),),
            )
            if row is None:
                raise BuildNotFoundError(build_id)
            status, transition, instance_id = row
            if status not in {BuildStatus.PENDING.value, BuildStatus.RUNNING.value}:
                return
            tx.execute(
                """
                UPDATE prebuilds_builds
                SET status = ?, finished_at = ?,
                    started_at = COALESCE(started_at, ?),
                    error_kind = ?, error = ?
                WHERE id = ?
                """,
                (
                    (BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED).value,
                    now_us,
                    now_us,
                    error_kind,
                    error,
                    str(build_id),
                ),
            )
            if succeeded and transition == Transition.DELETE.value:
                tx.execute(
                    "UPDATE prebuilds_instances SET deleted = 1, ready = 0 WHERE id = ?",
                    (instance_id,),
                )

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """
        The instance's agents are (or are no longer) ready; ignored for a
        deleted instance.

        Raises:
            InstanceNotFoundError: no instance has *instance_id*.
        """
        check_set_ready(instance_id, ready)
        with self._transaction(write=True) as tx:
            row = tx.one(
                "SELECT deleted FROM prebuilds_instances WHERE id = ?",
                (str(instance_id),),
            )
            if row is None:
                raise InstanceNotFoundError(instance_id)
            if not row[0]:
                tx.execute(
                    "UPDATE prebuilds_instances SET ready = ? WHERE id = ?",
                    (int(ready), str(instance_id)),
                )

    # -- the claimer ---------------------------------------------------------------------

    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
    ) -> Instance | None:
        """
        Hand the oldest claimable instance of the preset to *user_id*, in one
        ``BEGIN IMMEDIATE`` transaction; None when there is none.
        """
        check_store_claim(preset_id, user_id, name, lifecycle, now)
        now_us = _to_us("now", now)
        values = {
            "user": str(user_id),
            "name": name,
            "autostart_schedule": lifecycle.autostart_schedule,
            "next_start_at": _opt_to_us("next_start_at", lifecycle.next_start_at),
            "ttl": _delta_us("ttl", lifecycle.ttl),
            "deadline": _opt_to_us("deadline", lifecycle.deadline),
            "max_deadline": _opt_to_us("max_deadline", lifecycle.max_deadline),
            "dormant_at": _opt_to_us("dormant_at", lifecycle.dormant_at),
            "deleting_at": _opt_to_us("deleting_at", lifecycle.deleting_at),
            "last_used_at": _opt_to_us("last_used_at", lifecycle.last_used_at),
            "now": now_us,
            "owner": _OWNER,
        }
        with self._transaction(write=True) as tx:
            row = tx.one(
                _CLAIM_CANDIDATE,
                {"preset": str(preset_id), "owner": _OWNER, "now": now_us},
            )
            if row is None:
                return None
            values["id"] = row[0]
            if tx.execute(_CLAIM_UPDATE, values).rowcount != 1:  # pragma: no cover
                return None
            claimed = tx.one(_SELECT_INSTANCES + "WHERE i.id = ?", (row[0],))
            # Read back before the commit: a claim whose row cannot be read
            # is rolled back, not left behind.
            with _decoding("instance"):
                return _instance_from_row(claimed)

    # -- reads ----------------------------------------------------------------------------

    def get_instance(self, instance_id: UUID) -> Instance:
        """
        The instance with *instance_id*.

        Raises:
            InstanceNotFoundError: no instance has *instance_id*.
        """
        check_uuid("instance_id", instance_id)
        with self._transaction(write=False) as tx:
            row = tx.one(_SELECT_INSTANCES + "WHERE i.id = ?", (str(instance_id),))
        if row is None:
            raise InstanceNotFoundError(instance_id)
        with _decoding("instance"):
            return _instance_from_row(row)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first (created_at, id), filtered."""
        check_list_instances(preset_id, owner_id, include_deleted)
        with self._transaction(write=False) as tx:
            rows = tx.all(
                _SELECT_INSTANCES
                + """
                WHERE (:preset IS NULL OR i.preset_id = :preset)
                    AND (:owner IS NULL OR i.owner_id = :owner)
                    AND (:deleted OR i.deleted = 0)
                ORDER BY i.created_at, i.id
                """,
                {
                    "preset": None if preset_id is None else str(preset_id),
                    "owner": None if owner_id is None else str(owner_id),
                    "deleted": int(include_deleted),
                },
            )
        with _decoding("instance"):
            return [_instance_from_row(r) for r in rows]

    def get_build(self, build_id: UUID) -> Build:
        """
        The build with *build_id*.

        Raises:
            BuildNotFoundError: no build has *build_id*.
        """
        check_uuid("build_id", build_id)
        with self._transaction(write=False) as tx:
            row = tx.one(_SELECT_BUILDS + " WHERE id = ?", (str(build_id),))
        if row is None:
            raise BuildNotFoundError(build_id)
        with _decoding("build"):
            return _build_from_row(row)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """Builds in creation order (created_at, instance_id, build_number)."""
        check_optional_uuid("instance_id", instance_id)
        with self._transaction(write=False) as tx:
            rows = tx.all(
                _SELECT_BUILDS
                + """
                WHERE (:instance IS NULL OR instance_id = :instance)
                ORDER BY created_at, instance_id, build_number
                """,
                {"instance": None if instance_id is None else str(instance_id)},
            )
        with _decoding("build"):
            return [_build_from_row(r) for r in rows]
