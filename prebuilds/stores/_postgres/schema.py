"""
PostgresStore's schema: its migrations, in order, and :func:`migrate`.

"{s}" in the SQL is the quoted schema name, "{pool}" the pool owner's UUID.
No CHECK constraints on preset fields: a preset written by hand with a bad
value must stay readable, so that ``read_pool`` can report it as invalid.
"""

from __future__ import annotations

import hashlib

from typing import TYPE_CHECKING

from prebuilds.exceptions import SchemaVersionError


if TYPE_CHECKING:
    from prebuilds.stores._postgres.connections import Connections, Cursor

#: The schema version this library writes and reads.
SCHEMA_VERSION = 5


def lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for *purpose* in *schema*."""
    digest = hashlib.sha256(f"prebuilds:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE {s}.settings (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            paused boolean NOT NULL DEFAULT false
        )
        """,
        "INSERT INTO {s}.settings (singleton, paused) VALUES (true, false)",
        """
        CREATE TABLE {s}.templates (
            id uuid PRIMARY KEY,
            active_version_id uuid NOT NULL,
            name text NOT NULL DEFAULT '',
            organization_id uuid,
            deleted boolean NOT NULL DEFAULT false,
            deprecated boolean NOT NULL DEFAULT false,
            default_ttl interval
        )
        """,
        """
        CREATE TABLE {s}.presets (
            id uuid PRIMARY KEY,
            template_id uuid NOT NULL REFERENCES {s}.templates (id),
            template_version_id uuid NOT NULL,
            desired_instances integer NOT NULL,
            name text NOT NULL DEFAULT '',
            ttl interval,
            scheduling_timezone text NOT NULL DEFAULT '',
            schedules jsonb NOT NULL DEFAULT '[]',
            parameters jsonb NOT NULL DEFAULT '[]',
            status text NOT NULL DEFAULT 'healthy',
            last_invalidated_at timestamptz
        )
        """,
        "CREATE INDEX presets_template ON {s}.presets (template_id)",
        """
        CREATE TABLE {s}.instances (
            id uuid PRIMARY KEY,
            preset_id uuid NOT NULL REFERENCES {s}.presets (id),
            template_id uuid NOT NULL,
            template_version_id uuid NOT NULL,
            owner_id uuid NOT NULL,
            name text NOT NULL,
            created_at timestamptz NOT NULL,
            ready boolean NOT NULL DEFAULT false,
            autostart_schedule text,
            next_start_at timestamptz,
            ttl interval,
            deadline timestamptz,
            max_deadline timestamptz,
            dormant_at timestamptz,
            deleting_at timestamptz,
            last_used_at timestamptz,
            deleted boolean NOT NULL DEFAULT false,
            claimed_at timestamptz
        )
        """,
        # The live pool, oldest first.
        """
        CREATE INDEX instances_pooled ON {s}.instances (preset_id, created_at, id)
        WHERE owner_id = '{pool}' AND NOT deleted
        """,
        "CREATE INDEX instances_owner ON {s}.instances (owner_id, preset_id)",
        "CREATE INDEX instances_created ON {s}.instances (created_at, id)",
        """
        CREATE TABLE {s}.builds (
            id uuid PRIMARY KEY,
            instance_id uuid NOT NULL REFERENCES {s}.instances (id),
            preset_id uuid NOT NULL,
            template_version_id uuid NOT NULL,
            transition text NOT NULL,
            status text NOT NULL,
            build_number integer NOT NULL,
            initiator_id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            started_at timestamptz,
            finished_at timestamptz,
            error_kind text,
            error text,
            CONSTRAINT builds_number UNIQUE (instance_id, build_number)
        )
        """,
        """
        CREATE INDEX builds_in_progress ON {s}.builds (preset_id)
        WHERE status IN ('pending', 'running')
        """,
        "CREATE INDEX builds_created ON {s}.builds (created_at, instance_id, build_number)",
    ),
    2: (
        # A claim looks for the oldest instance of the pool (ORDER BY
        # created_at, id LIMIT 1), which instances_pooled answers in a few
        # index probes. With this index the planner could instead walk every
        # instance ever created, claimed and deleted ones included, oldest
        # first, filtering: a claim then cost more with every claim before it
        # (0.6 ms to 6 ms over 4,000 claims of one preset among ten).
        "DROP INDEX IF EXISTS {s}.instances_created",
    ),
    3: (
        # The latest build's transition and status, denormalised onto its
        # instance and kept there by the database (a trigger on builds), so
        # that a claim reads one index instead of probing every candidate's
        # builds. latest_build_number is the build they come from: the
        # trigger writes only a build at least as new, a condition on the
        # instance row alone, which PostgreSQL re-checks on the newest row
        # version when two transactions race to update it.
        """
        ALTER TABLE {s}.instances
            ADD COLUMN IF NOT EXISTS latest_build_number integer,
            ADD COLUMN IF NOT EXISTS latest_transition text,
            ADD COLUMN IF NOT EXISTS latest_status text
        """,
        """
        UPDATE {s}.instances i
        SET latest_build_number = lb.build_number,
            latest_transition = lb.transition,
            latest_status = lb.status
        FROM (
            SELECT DISTINCT ON (instance_id) instance_id, build_number,
                transition, status
            FROM {s}.builds
            ORDER BY instance_id, build_number DESC
        ) lb
        WHERE lb.instance_id = i.id
        """,
        """
        CREATE OR REPLACE FUNCTION {s}.track_latest_build() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {s}.instances
            SET latest_build_number = NEW.build_number,
                latest_transition = NEW.transition,
                latest_status = NEW.status
            WHERE id = NEW.instance_id
                AND (latest_build_number IS NULL
                    OR latest_build_number <= NEW.build_number);
            RETURN NULL;
        END
        $$
        """,
        "DROP TRIGGER IF EXISTS track_latest_build ON {s}.builds",
        """
        CREATE TRIGGER track_latest_build
        AFTER INSERT OR UPDATE OF status, transition, build_number ON {s}.builds
        FOR EACH ROW EXECUTE FUNCTION {s}.track_latest_build()
        """,
        # Claim candidates: the ready, running pool, oldest first.
        """
        CREATE INDEX IF NOT EXISTS instances_claimable
        ON {s}.instances (preset_id, created_at, id)
        WHERE owner_id = '{pool}' AND NOT deleted AND ready
            AND latest_transition = 'start' AND latest_status = 'succeeded'
        """,
    ),
    4: (
        # Leadership's fencing token. The leader scope writes a new token
        # (and counts the grant in epoch) while it holds the advisory lock,
        # before its snapshot; a fenced write checks the token with FOR SHARE
        # in its own transaction, so that it commits before a new grant (and
        # the new leader's snapshot sees it) or finds the token changed and
        # writes nothing. NULL: nobody leads.
        """
        CREATE TABLE IF NOT EXISTS {s}.leader (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            token text,
            epoch bigint NOT NULL DEFAULT 0,
            granted_at timestamptz
        )
        """,
        "INSERT INTO {s}.leader (singleton) VALUES (true) ON CONFLICT DO NOTHING",
    ),
    5: (
        # The preset's stamp, changed with everything a claim depends on
        # (its configuration, its invalidation, its template), so that a
        # claimer may claim against cached facts (StampedClaims).
        """
        ALTER TABLE {s}.presets ADD COLUMN IF NOT EXISTS stamp bigint NOT NULL DEFAULT 0
        """,
        # The rest of the latest build on its instance (its ID and when it
        # was created), so that read_pool reads the live pool alone; the
        # trigger of migration 3 copies them too from now on.
        """
        ALTER TABLE {s}.instances
            ADD COLUMN IF NOT EXISTS latest_build_id uuid,
            ADD COLUMN IF NOT EXISTS latest_build_created_at timestamptz
        """,
        """
        UPDATE {s}.instances i
        SET latest_build_id = lb.id, latest_build_created_at = lb.created_at
        FROM (
            SELECT DISTINCT ON (instance_id) instance_id, id, created_at
            FROM {s}.builds
            ORDER BY instance_id, build_number DESC
        ) lb
        WHERE lb.instance_id = i.id
        """,
        """
        CREATE OR REPLACE FUNCTION {s}.track_latest_build() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {s}.instances
            SET latest_build_number = NEW.build_number,
                latest_transition = NEW.transition,
                latest_status = NEW.status,
                latest_build_id = NEW.id,
                latest_build_created_at = NEW.created_at
            WHERE id = NEW.instance_id
                AND (latest_build_number IS NULL
                    OR latest_build_number <= NEW.build_number);
            RETURN NULL;
        END
        $$
        """,
        # One JSON shape of schedules in every store: [cron, instances]
        # pairs instead of {"cron", "instances"} objects. Anything else
        # (written by hand) stays as it is, to be reported as invalid.
        """
        UPDATE {s}.presets p
        SET schedules = (
            SELECT jsonb_agg(
                CASE WHEN jsonb_typeof(e) = 'object' AND e ?& array['cron', 'instances']
                    AND (SELECT count(*) FROM jsonb_object_keys(e)) = 2
                THEN jsonb_build_array(e -> 'cron', e -> 'instances')
                ELSE e END
                ORDER BY n
            )
            FROM jsonb_array_elements(p.schedules) WITH ORDINALITY AS x (e, n)
        )
        WHERE jsonb_typeof(p.schedules) = 'array' AND p.schedules <> '[]'
        """,
    ),
}


def migrate(db: Connections, schema: str) -> None:
    """
    Create or upgrade *schema* to :data:`SCHEMA_VERSION`: one transaction,
    under a transaction-scoped advisory lock, recording the version in
    ``schema_version``.

    Raises:
        SchemaVersionError: the database holds a newer schema.
    """
    with db.transaction() as cur:
        db.execute(
            cur,
            "SELECT pg_advisory_xact_lock(%(key)s)",
            {"key": lock_key("migrate", schema)},
        )
        exists = db.fetchone(
            cur, "SELECT 1 FROM pg_namespace WHERE nspname = %(name)s", {"name": schema}
        )
        if exists is None:
            db.execute(cur, "CREATE SCHEMA {s}")
        version = installed_version(db, cur, schema)
        if version is None:
            db.execute(
                cur,
                """
                CREATE TABLE {s}.schema_version (
                    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                    version integer NOT NULL
                )
                """,
            )
            version = 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema {schema!r} is at version {version}; this "
                f"prebuilds knows up to {SCHEMA_VERSION}: upgrade prebuilds"
            )
        if version == SCHEMA_VERSION:
            return
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                db.execute(cur, statement)
        db.execute(
            cur,
            """
            INSERT INTO {s}.schema_version (singleton, version)
            VALUES (true, %(version)s)
            ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version
            """,
            {"version": SCHEMA_VERSION},
        )


def installed_version(db: Connections, cur: Cursor, schema: str) -> int | None:
    """The recorded version; None when there is no schema_version table."""
    table = db.fetchone(
        cur, "SELECT to_regclass(%(name)s)", {"name": f'"{schema}".schema_version'}
    )
    if table is None or table[0] is None:
        return None
    row = db.fetchone(cur, "SELECT max(version) FROM {s}.schema_version")
    return 0 if row is None or row[0] is None else int(row[0])
