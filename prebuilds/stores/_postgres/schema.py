"""
PostgresStore's schema: its migrations, in order, and :func:`migrate`. No CHECK
constraints on preset fields: a preset written by hand with a bad value must
stay readable, so that ``read_pool`` can report it as invalid.
"""

# Assembled from this module's constants only.
# ruff: noqa: S608

from __future__ import annotations

import hashlib

from typing import TYPE_CHECKING

from prebuilds.exceptions import SchemaVersionError


if TYPE_CHECKING:
    from prebuilds.stores._postgres.connections import Connections, Cursor

#: The schema version this library writes and reads.
SCHEMA_VERSION = 8


def lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for *purpose* in *schema*."""
    digest = hashlib.sha256(f"prebuilds:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: The instance's copies of its latest build's columns (migrations 3 and 5).
_TRACKED = (
    ("latest_build_number", "build_number"),
    ("latest_transition", "transition"),
    ("latest_status", "status"),
    ("latest_build_id", "id"),
    ("latest_build_created_at", "created_at"),
)


def _copy_latest_build(columns: tuple[tuple[str, str], ...]) -> str:
    """Copy the latest build's *columns* (instance's, build's) onto each instance."""
    return f"""
        UPDATE {{s}}.instances i
        SET {", ".join(f"{mine} = lb.{its}" for mine, its in columns)}
        FROM (
            SELECT DISTINCT ON (instance_id) instance_id,
                {", ".join(its for _, its in columns)}
            FROM {{s}}.builds
            ORDER BY instance_id, build_number DESC
        ) lb
        WHERE lb.instance_id = i.id
    """


def _track_latest_build(columns: tuple[tuple[str, str], ...]) -> str:
    """The trigger function that keeps *columns* of the latest build on its instance."""
    return f"""
        CREATE OR REPLACE FUNCTION {{s}}.track_latest_build() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE {{s}}.instances
            SET {", ".join(f"{mine} = NEW.{its}" for mine, its in columns)}
            WHERE id = NEW.instance_id
                AND (latest_build_number IS NULL
                    OR latest_build_number <= NEW.build_number);
            RETURN NULL;
        END
        $$
    """


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
        # With this index the planner could answer a claim's ORDER BY by
        # walking every instance ever created, oldest first: a claim then cost
        # more with every claim before it (0.6 to 6 ms over 4,000 claims).
        "DROP INDEX IF EXISTS {s}.instances_created",
    ),
    3: (
        # The latest build's transition and status, kept on its instance by
        # a trigger, so that a claim reads one index. The trigger writes only
        # a build at least as new (latest_build_number), a condition on the
        # instance row alone, re-checked on its newest version under a race.
        """
        ALTER TABLE {s}.instances
            ADD COLUMN IF NOT EXISTS latest_build_number integer,
            ADD COLUMN IF NOT EXISTS latest_transition text,
            ADD COLUMN IF NOT EXISTS latest_status text
        """,
        _copy_latest_build(_TRACKED[:3]),
        _track_latest_build(_TRACKED[:3]),
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
        # Leadership's fencing token (NULL: nobody leads), written with the
        # advisory lock held, before the leader's snapshot; a fenced write
        # checks it FOR SHARE, so it commits before a new grant or not at all.
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
        _copy_latest_build(_TRACKED[3:]),
        _track_latest_build(_TRACKED),
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
    6: (
        # The claim's candidates keyed as the claim asks for them (preset,
        # version, then oldest first). Without the version in the key the
        # planner judged instances_owner (owner_id, preset_id) cheaper, read
        # every pooled row of the preset and sorted them: about 80 buffers
        # and four times the server time of a claim, against about 30.
        "DROP INDEX IF EXISTS {s}.instances_claimable",
        """
        CREATE INDEX instances_claimable
        ON {s}.instances (preset_id, template_version_id, created_at, id)
        WHERE owner_id = '{pool}' AND NOT deleted AND ready
            AND latest_transition = 'start' AND latest_status = 'succeeded'
        """,
    ),
    7: (
        # Whether a build was handed to the provisioner (BatchCreates writes
        # a batch's builds unsubmitted, then marks them): a stuck build never
        # submitted is canceled, not failed. Every earlier build was submitted.
        "ALTER TABLE {s}.builds ADD COLUMN submitted boolean NOT NULL DEFAULT true",
    ),
    8: (
        # Every claim reads its preset's stamp by ID. A few hundred presets
        # fit in a handful of pages, and at the default random_page_cost the
        # planner then reads them all (about 4 buffers and 200 comparisons,
        # a quarter of a claim's server time) rather than presets_pkey (2).
        # Rows spread about five to a page make the index the cheaper plan
        # from some 40 presets on; a stamp or status update also finds room
        # on its page (a HOT update). CLUSTER rewrites the rows there now.
        "ALTER TABLE {s}.presets SET (fillfactor = 10)",
        "CLUSTER {s}.presets USING presets_pkey",
        "ANALYZE {s}.presets",
    ),
}


def migrate(db: Connections, schema: str) -> None:
    """
    Create or upgrade *schema* to :data:`SCHEMA_VERSION` in one transaction,
    under an advisory lock (replicas may start at once).

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
