"""
The SQLite store's SQL text, and the column lists ``codecs`` reads rows by.

IDs are canonical UUID text, datetimes integer microseconds since the Unix
epoch (UTC), timedeltas integer microseconds, enums their values, schedules
and parameters JSON lists of pairs. The pool's owner is written into the
text as a constant, so that the claim's WHERE matches the partial index
``prebuilds_instances_claim``.
"""

from __future__ import annotations

from prebuilds._records import PREBUILDS_OWNER_ID


_O = f"'{PREBUILDS_OWNER_ID}'"


def names(columns: str) -> list[str]:
    """The names of a comma-separated column list."""
    return [column.strip() for column in columns.split(",")]


def _columns(text: str) -> str:
    """A column list on one line."""
    return " ".join(text.split())


def _prefixed(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in names(columns))


def _upsert(table: str, columns: str, also: str = "") -> str:
    """Insert a row of *columns*, or update every column but the first (the key)."""
    key, *rest = names(columns)
    updates = ", ".join([f"{column} = excluded.{column}" for column in rest])
    marks = ", ".join("?" * (len(rest) + 1))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608 - constants
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}{also}"
    )


TEMPLATE_COLUMNS = _columns("""
    id, active_version_id, name, organization_id, deleted, deprecated, default_ttl
""")
#: The configuration of a preset, as put.
PRESET_CONFIG = _columns("""
    id, template_id, template_version_id, desired_instances, name, ttl,
    scheduling_timezone, schedules, parameters
""")
PRESET_COLUMNS = PRESET_CONFIG + ", status, last_invalidated_at, stamp"
LIFECYCLE_COLUMNS = _columns("""
    autostart_schedule, next_start_at, ttl, deadline, max_deadline, dormant_at,
    deleting_at, last_used_at
""")
INSTANCE_COLUMNS = _columns(f"""
    id, preset_id, template_id, template_version_id, owner_id, name, created_at,
    ready, {LIFECYCLE_COLUMNS}, deleted, claimed_at, latest_transition, latest_status
""")
POOL_COLUMNS = _columns("""
    id, preset_id, template_id, template_version_id, name, created_at, ready,
    latest_build_id, latest_transition, latest_status, latest_number, latest_created_at
""")
BUILD_COLUMNS = _columns("""
    id, instance_id, preset_id, template_version_id, transition, status,
    build_number, initiator_id, created_at, started_at, finished_at,
    error_kind, error
""")

# -- templates and presets ---------------------------------------------------------

PUT_TEMPLATE = _upsert("prebuilds_templates", TEMPLATE_COLUMNS)
#: What a claim depends on changed for every preset of the template.
STAMP_TEMPLATE = "UPDATE prebuilds_presets SET stamp = stamp + 1 WHERE template_id = ?"
GET_TEMPLATE = f"SELECT {TEMPLATE_COLUMNS} FROM prebuilds_templates WHERE id = ?"  # noqa: S608
TEMPLATE_EXISTS = "SELECT 1 FROM prebuilds_templates WHERE id = ?"
PUT_PRESET = _upsert("prebuilds_presets", PRESET_CONFIG, ", stamp = stamp + 1")
INVALIDATE_PRESET = """
    UPDATE prebuilds_presets SET last_invalidated_at = ?, stamp = stamp + 1
    WHERE id = ?
"""
SET_PRESET_STATUS = "UPDATE prebuilds_presets SET status = ? WHERE id = ?"
PRESET_EXISTS = "SELECT 1 FROM prebuilds_presets WHERE id = ?"
#: A preset and its template: ``codecs.facts_from_row`` reads it.
_SELECT_PRESETS = f"""
    SELECT {_prefixed("p", PRESET_COLUMNS)}, {_prefixed("t", TEMPLATE_COLUMNS)}
    FROM prebuilds_presets AS p
    JOIN prebuilds_templates AS t ON t.id = p.template_id
"""  # noqa: S608 - constants only
READ_PRESET = _SELECT_PRESETS + "WHERE p.id = ?"
SET_PAUSED = _upsert("prebuilds_settings", "key, value")
IS_PAUSED = "SELECT value FROM prebuilds_settings WHERE key = 'paused'"

# -- the pool and reads ----------------------------------------------------------------

POOL_PRESETS = _SELECT_PRESETS + "ORDER BY p.id"
#: Every pooled instance with its latest build, by ID (as presets are).
POOL_INSTANCES = f"""
    SELECT {POOL_COLUMNS} FROM prebuilds_instances
    WHERE owner_id = {_O} AND deleted = 0 AND latest_build_id IS NOT NULL
    ORDER BY id
"""  # noqa: S608 - constants only
GET_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM prebuilds_instances WHERE id = ?"  # noqa: S608
#: The tables a pool read reads.
POOL_TABLES = ("prebuilds_templates", "prebuilds_presets", "prebuilds_instances")
#: A connection's own writes to the pool's tables, counted in its temp schema
#: (a temp trigger fires only for the statements of the connection that made
#: it; another connection's commits show in ``data_version``). Row triggers:
#: a statement that changes no row (a claim that found nothing) counts none.
WATCH_POOL = (
    "CREATE TEMP TABLE IF NOT EXISTS prebuilds_pool_writes (n INTEGER NOT NULL)",
    """
    INSERT INTO temp.prebuilds_pool_writes (n)
    SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM temp.prebuilds_pool_writes)
    """,
    *(
        f"""
        CREATE TEMP TRIGGER IF NOT EXISTS {table}_{event.lower()}_watch
        AFTER {event} ON main.{table}
        BEGIN UPDATE prebuilds_pool_writes SET n = n + 1; END
        """  # noqa: S608 - constants only
        for table in POOL_TABLES
        for event in ("INSERT", "UPDATE", "DELETE")
    ),
)
#: The key of a pool read: other connections' commits, and this
#: connection's writes to the pool's tables.
POOL_KEY = """
    SELECT data_version, (SELECT n FROM temp.prebuilds_pool_writes)
    FROM pragma_data_version
"""
#: What :data:`POOL_KEY` answers on a connection that does not watch (a
#: read-only store, which never writes).
POOL_KEY_UNWATCHED = "SELECT data_version, 0 FROM pragma_data_version"
#: How many of the watching triggers the connection has (a pool table that
#: another connection dropped and made again took its triggers with it).
WATCHING = f"""
    SELECT count(*) = {3 * len(POOL_TABLES)} FROM temp.sqlite_master
    WHERE type = 'trigger' AND name LIKE 'prebuilds%watch'
"""  # noqa: S608 - constants only
LIST_INSTANCES = f"""
    SELECT {INSTANCE_COLUMNS} FROM prebuilds_instances
    WHERE (:preset IS NULL OR preset_id = :preset)
        AND (:owner IS NULL OR owner_id = :owner)
        AND (:deleted OR deleted = 0)
    ORDER BY created_at, id
"""  # noqa: S608 - constants only
INSTANCE_EXISTS = "SELECT 1 FROM prebuilds_instances WHERE id = ?"
GET_BUILD = f"SELECT {BUILD_COLUMNS} FROM prebuilds_builds WHERE id = ?"  # noqa: S608
LIST_BUILDS = f"""
    SELECT {BUILD_COLUMNS} FROM prebuilds_builds
    WHERE (:instance IS NULL OR instance_id = :instance)
    ORDER BY created_at, instance_id, build_number
"""  # noqa: S608 - constants only
BUILD_EXISTS = "SELECT 1 FROM prebuilds_builds WHERE id = ?"

# -- the reconciler's transitions ------------------------------------------------------

CREATE_SOURCE = """
    SELECT p.template_id, p.template_version_id, p.parameters,
           t.active_version_id, t.deleted, t.deprecated
    FROM prebuilds_presets AS p
    JOIN prebuilds_templates AS t ON t.id = p.template_id
    WHERE p.id = ?
"""
#: A new pooled instance, whose latest build is its first: (id, preset,
#: template, version, name, now, now, build, now).
INSERT_INSTANCE = f"""
    INSERT INTO prebuilds_instances (
        id, preset_id, template_id, template_version_id, owner_id, name,
        created_at, ready, last_used_at, deleted, latest_build_id,
        latest_transition, latest_status, latest_number, latest_created_at
    ) VALUES (?, ?, ?, ?, {_O}, ?, ?, 0, ?, 0, ?, 'start', 'pending', 1, ?)
"""  # noqa: S608 - constants only
#: A pending build: (id, instance, preset, version, transition, number, now).
INSERT_BUILD = f"""
    INSERT INTO prebuilds_builds (
        id, instance_id, preset_id, template_version_id, transition, status,
        build_number, initiator_id, created_at
    ) VALUES (?, ?, ?, ?, ?, 'pending', ?, {_O}, ?)
"""  # noqa: S608 - constants only


def _delete_instance(ready: str, where: str) -> str:
    """A pending delete as the instance's latest build: (build, now, instance)."""
    return f"""
    UPDATE prebuilds_instances
    SET {ready}latest_build_id = ?, latest_transition = 'delete',
        latest_status = 'pending', latest_number = COALESCE(latest_number, 0) + 1,
        latest_created_at = ?
    WHERE id = ?{where}
    RETURNING preset_id, template_id, template_version_id, name, latest_number
"""  # noqa: S608 - constants only


#: A still pooled instance not already being (or done being) deleted; no
#: longer ready.
DELETE_INSTANCE = _delete_instance(
    "ready = 0, ",
    f""" AND owner_id = {_O} AND deleted = 0
        AND NOT (latest_transition IS 'delete'
                 AND latest_status IN ('pending', 'running', 'succeeded'))""",
)
#: The orphan delete of a canceled creation.
ORPHAN_DELETE = _delete_instance("", "")
#: Queued first builds of the preset on a version that is no longer active.
CANCELABLE = f"""
    SELECT b.id, i.id
    FROM prebuilds_builds AS b
    JOIN prebuilds_instances AS i ON i.id = b.instance_id
    JOIN prebuilds_templates AS t ON t.id = i.template_id
    WHERE b.preset_id = ?
        AND b.build_number = 1 AND b.status = 'pending'
        AND b.transition = 'start' AND b.started_at IS NULL
        AND b.initiator_id = {_O}
        AND b.template_version_id != t.active_version_id
    ORDER BY i.created_at, i.id
"""  # noqa: S608 - constants only
CANCEL_BUILD = """
    UPDATE prebuilds_builds SET status = 'canceled', finished_at = ? WHERE id = ?
"""
_STUCK = f"""
    status IN ('pending', 'running') AND created_at < :older AND initiator_id = {_O}
"""
ANY_STUCK = f"SELECT 1 FROM prebuilds_builds WHERE {_STUCK}"  # noqa: S608
STUCK_BUILDS = f"""
    SELECT {BUILD_COLUMNS} FROM prebuilds_builds WHERE {_STUCK}
    ORDER BY created_at, instance_id, build_number
"""  # noqa: S608 - constants only
#: Before the builds change: the instances whose latest build is stuck.
FAIL_STUCK_INSTANCES = f"""
    UPDATE prebuilds_instances SET latest_status = 'failed'
    WHERE latest_build_id IN (SELECT id FROM prebuilds_builds WHERE {_STUCK})
"""  # noqa: S608 - constants only
FAIL_STUCK_BUILDS = f"""
    UPDATE prebuilds_builds
    SET status = 'failed', finished_at = :now, error_kind = 'timeout', error = :error
    WHERE {_STUCK}
"""  # noqa: S608 - constants only

# -- the provisioner's reports ---------------------------------------------------------

BUILD_STARTED = """
    UPDATE prebuilds_builds SET status = 'running', started_at = ?
    WHERE id = ? AND status = 'pending'
    RETURNING instance_id
"""
BUILD_FINISHED = """
    UPDATE prebuilds_builds
    SET status = ?, finished_at = ?, started_at = COALESCE(started_at, ?),
        error_kind = ?, error = ?
    WHERE id = ? AND status IN ('pending', 'running')
    RETURNING instance_id, transition
"""
#: A build of the instance changed: its status is the instance's latest if
#: the build is its latest, and a successful delete (whether or not it is the
#: latest) leaves the instance deleted. Named parameters: sqlite3 deprecates
#: numbered ones (``?1``) with a sequence from Python 3.12 on.
BUILD_CHANGED = """
    UPDATE prebuilds_instances
    SET latest_status = CASE WHEN latest_build_id = :build
            THEN :status ELSE latest_status END,
        deleted = deleted OR :deleted, ready = ready AND NOT :deleted
    WHERE id = :instance
"""
SET_READY = "UPDATE prebuilds_instances SET ready = ? WHERE id = ? AND deleted = 0"

# -- claims ------------------------------------------------------------------------------


#: What a claim returns: the rest of the claimed instance is what it wrote.
CLAIMED_COLUMNS = "id, template_id, created_at"


def _claim(condition: str = "") -> str:
    """
    The oldest claimable instance of a preset, handed to a user in one
    statement: (user, name, the lifecycle's columns, now, preset, version,
    not_before), then *condition*'s parameters. By rowid: the claim's index
    holds it, so the row is found without a second search of the ID's index.
    """
    lifecycle = ", ".join(f"{column} = ?" for column in names(LIFECYCLE_COLUMNS))
    return f"""
    UPDATE prebuilds_instances
    SET owner_id = ?, name = ?, {lifecycle}, claimed_at = ?
    WHERE rowid = (
        SELECT rowid FROM prebuilds_instances
        WHERE preset_id = ? AND template_version_id = ? AND created_at >= ?
            AND owner_id = {_O} AND deleted = 0 AND ready = 1
            AND latest_transition = 'start' AND latest_status = 'succeeded'{condition}
        ORDER BY created_at, id
        LIMIT 1
    )
    RETURNING {CLAIMED_COLUMNS}
"""  # noqa: S608 - constants only


CLAIM = _claim()
#: CLAIM, applied only while the preset's stamp is the last parameter.
CLAIM_IF_STAMP = _claim(
    "\n            AND EXISTS (SELECT 1 FROM prebuilds_presets WHERE id = ? AND stamp = ?)"
)
STAMP = "SELECT stamp FROM prebuilds_presets WHERE id = ?"
#: LeanClaims' claim: only what a claim sets is bound (the cleared lifecycle
#: columns are constants), only the ID returned. Plain ``?`` placeholders:
#: sqlite3 deprecates numbered ones with a sequence. (user, name, autostart,
#: next start, TTL, now, now, preset, version, not_before, preset, stamp).
CLAIM_ID_IF_STAMP = f"""
    UPDATE prebuilds_instances
    SET owner_id = ?, name = ?, autostart_schedule = ?, next_start_at = ?,
        ttl = ?, deadline = NULL, max_deadline = NULL, dormant_at = NULL,
        deleting_at = NULL, last_used_at = ?, claimed_at = ?
    WHERE rowid = (
        SELECT rowid FROM prebuilds_instances
        WHERE preset_id = ? AND template_version_id = ? AND created_at >= ?
            AND owner_id = {_O} AND deleted = 0 AND ready = 1
            AND latest_transition = 'start' AND latest_status = 'succeeded'
            AND EXISTS (SELECT 1 FROM prebuilds_presets WHERE id = ? AND stamp = ?)
        ORDER BY created_at, id
        LIMIT 1
    )
    RETURNING id
"""  # noqa: S608 - constants only

# -- the leader lease ----------------------------------------------------------------------

LEADER_NAME = "reconciler"
#: Take the lease if it is free or expired: one row changed if taken
#: (name, token, expires, now).
TAKE_LEASE = """
    INSERT INTO prebuilds_leader (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE prebuilds_leader.expires_at <= ?
"""
RELEASE_LEASE = "DELETE FROM prebuilds_leader WHERE name = ? AND holder = ?"
#: Whether a lease is still its holder's and unexpired (name, token, now).
HOLDS = """
    SELECT 1 FROM prebuilds_leader
    WHERE name = :name AND holder = :token AND expires_at > :wall
"""
#: A fenced write's check and renewal in one statement (one row changed):
#: the lease is still this holder's and unexpired. (expires, name, token, now).
FENCE = """
    UPDATE prebuilds_leader SET expires_at = ?
    WHERE name = ? AND holder = ? AND expires_at > ?
"""
