"""
PostgresStore: the Store seam on PostgreSQL (psycopg 3), for many replicas.

Needs the ``postgres`` extra (``psycopg`` and ``psycopg-pool``); this is the
only module of prebuilds that imports them.

How it keeps the store's guarantees:

- every method is one transaction, most of them one statement;
- ``snapshot`` reads in a constant number of statements inside a
  ``REPEATABLE READ READ ONLY`` transaction;
- ``leader()`` takes a session-level advisory lock (``pg_try_advisory_lock``)
  on a connection it keeps for the scope and, in the same statement, writes a
  new fencing token into the ``leader`` row (committed); only then does it
  open the ``REPEATABLE READ READ ONLY`` transaction that a ``snapshot`` in
  the same thread inside the scope reads through, so that a new leader sees
  everything the previous one committed;
- a write fenced by a lease checks the token in its own transaction, with
  ``FOR SHARE`` on the ``leader`` row: a new leader's grant waits for it, or
  it sees the new token and writes nothing;
- ``claim`` is one ``UPDATE`` whose target is picked by a sub-select with
  ``FOR UPDATE OF i SKIP LOCKED`` and which re-checks
  ``owner_id = PREBUILDS_OWNER_ID`` (compare-and-set);
- ``delete_prebuild`` locks the instance row (``SELECT … FOR UPDATE``) and
  re-checks its owner and latest build before it writes the delete build.

The library owns its tables: they live in their own schema (``prebuilds`` by
default), created and upgraded by :meth:`PostgresStore.migrate`.
"""

# The SQL below is assembled from module constants only; the one variable
# part, the schema name, is checked against an identifier pattern and quoted.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import attrs
import psycopg

from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from typing_extensions import Self

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
    check_bool,
    check_instance,
    check_optional_uuid,
    check_uuid,
)
from prebuilds.exceptions import (
    BuildNotFoundError,
    InstanceNotFoundError,
    InvalidInputError,
    PresetInactiveError,
    PresetNotFoundError,
    SchemaVersionError,
    StoreError,
)
from prebuilds.stores._common import build_preset, fence_token, invalid_preset, lost


__all__ = ["SCHEMA_VERSION", "PostgresStore"]

#: The schema version this library writes and reads.
SCHEMA_VERSION = 4

_UTC = timezone.utc
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STUCK_ERROR = "stuck: no result before the timeout"
#: How many times a claim retries when its compare-and-set lost a race.
_CLAIM_ATTEMPTS = 3
#: The attribute of a connection holding its claim cursor.
_CLAIM_CURSOR = "_prebuilds_claim_cursor"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")

_Row = tuple[Any, ...]
_Connection = psycopg.Connection[Any]
_Cursor = psycopg.Cursor[Any]

_UNKNOWN = psycopg.pq.TransactionStatus.UNKNOWN  # broken or closed
_IN_TRANSACTION = (
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)

_BEGIN = "BEGIN"
_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_LOG = logging.getLogger("prebuilds.stores.postgres")


def _lock_key(purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory lock key for *purpose* in *schema*."""
    digest = hashlib.sha256(f"prebuilds:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- the schema -----------------------------------------------------------------
# "{s}" is the quoted schema name, "{pool}" the pool owner's UUID literal.
# No CHECK constraints on preset fields: a preset written by hand with a bad
# value must be readable, so that snapshot can report it as invalid.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
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
        # Claims and the running set: the live pool, oldest first.
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
}

# -- queries ----------------------------------------------------------------------
_INSTANCE_COLUMNS = """
    i.id, i.preset_id, i.template_id, i.template_version_id, i.owner_id, i.name,
    i.created_at, i.ready, i.autostart_schedule, i.next_start_at, i.ttl,
    i.deadline, i.max_deadline, i.dormant_at, i.deleting_at, i.last_used_at,
    i.deleted, i.claimed_at
"""
# What a fast claim returns: the columns the claim did not set itself (its
# parameters say the rest), and the TTL, which may come from the template.
_CLAIMED_COLUMNS = "i.id, i.template_id, i.template_version_id, i.created_at, i.ttl"
_BUILD_COLUMNS = """
    b.id, b.instance_id, b.preset_id, b.template_version_id, b.transition, b.status,
    b.build_number, b.initiator_id, b.created_at, b.started_at, b.finished_at,
    b.error_kind, b.error
"""
# The latest build of instance i (highest build number): one index probe.
_LATEST_BUILD = """
    JOIN LATERAL (
        SELECT lb.transition, lb.status
        FROM {s}.builds lb
        WHERE lb.instance_id = i.id
        ORDER BY lb.build_number DESC
        LIMIT 1
    ) latest ON true
"""
_PRESET_COLUMNS = """
    p.id, p.template_id, p.template_version_id, p.desired_instances, p.name, p.ttl,
    p.scheduling_timezone, p.schedules::text, p.parameters::text, p.status,
    p.last_invalidated_at, t.active_version_id, t.organization_id, t.deleted,
    t.deprecated
"""

_SQL_SNAPSHOT_PRESETS = f"""
    SELECT {_PRESET_COLUMNS}
    FROM {{s}}.presets p
    JOIN {{s}}.templates t ON t.id = p.template_id
    ORDER BY p.id
"""
_SQL_SNAPSHOT_RUNNING = """
    SELECT i.id, i.preset_id, i.created_at, i.ready, i.name, i.template_id,
        i.template_version_id
    FROM {s}.instances i
    WHERE i.owner_id = '{pool}' AND NOT i.deleted
        AND i.latest_transition = 'start' AND i.latest_status = 'succeeded'
    ORDER BY i.id
"""
# Latest builds of the pool, pending or running, on the active version.
_SQL_SNAPSHOT_IN_PROGRESS = """
    SELECT b.preset_id, b.transition, count(*), t.id, b.template_version_id
    FROM {s}.builds b
    JOIN {s}.instances i ON i.id = b.instance_id
    JOIN {s}.templates t ON t.id = i.template_id
    WHERE b.status IN ('pending', 'running')
        AND b.initiator_id = '{pool}'
        AND b.template_version_id = t.active_version_id
        AND NOT EXISTS (
            SELECT 1 FROM {s}.builds nb
            WHERE nb.instance_id = b.instance_id AND nb.build_number > b.build_number
        )
    GROUP BY b.preset_id, b.transition, t.id, b.template_version_id
    ORDER BY b.preset_id, b.transition COLLATE "C"
"""
# Queued first builds of a version that is no longer the active one.
_SQL_SNAPSHOT_PENDING = """
    SELECT b.preset_id, count(*)
    FROM {s}.builds b
    JOIN {s}.presets p ON p.id = b.preset_id
    JOIN {s}.templates t ON t.id = p.template_id
    WHERE b.status = 'pending'
        AND b.build_number = 1
        AND b.transition = 'start'
        AND b.started_at IS NULL
        AND b.template_version_id <> t.active_version_id
    GROUP BY b.preset_id
    ORDER BY b.preset_id
"""
# Backoff and hard limit share their candidates: the latest build of every
# pool-owned instance, a start on the template's active version, ranked newest
# first per preset (Coder's GetPresetsBackoff and GetPresetsAtFailureLimit, in
# one statement). "Deleted or not does not matter, the latest build decides":
# an instance is marked deleted only by the success of its latest build, a
# delete, and gets no build after that, so a deleted instance is never a
# candidate; "NOT i.deleted" says so to the planner, which then reads the live
# pool (the instances_pooled index) instead of the whole history.
_SQL_SNAPSHOT_FAILURES = """
    WITH candidates AS (
        SELECT b.id, b.preset_id, b.status, b.created_at, t.deleted AS template_deleted
        FROM {s}.instances i
        JOIN {s}.templates t ON t.id = i.template_id
        JOIN LATERAL (
            SELECT lb.id, lb.preset_id, lb.transition, lb.status, lb.created_at,
                lb.template_version_id
            FROM {s}.builds lb
            WHERE lb.instance_id = i.id
            ORDER BY lb.build_number DESC
            LIMIT 1
        ) b ON true
        WHERE i.owner_id = '{pool}'
            AND NOT i.deleted
            AND b.transition = 'start'
            AND b.template_version_id = t.active_version_id
    ),
    ranked AS (
        SELECT c.*,
            row_number() OVER (
                PARTITION BY c.preset_id ORDER BY c.created_at DESC, c.id DESC
            ) AS rank_all,
            row_number() OVER (
                PARTITION BY c.preset_id, c.template_deleted
                ORDER BY c.created_at DESC, c.id DESC
            ) AS rank_live
        FROM candidates c
    ),
    backoff AS (
        SELECT r.preset_id,
            count(*) FILTER (
                WHERE r.status = 'failed' AND r.created_at >= %(since)s
            ) AS num_failed,
            max(r.created_at) FILTER (
                WHERE r.status = 'failed' AND r.created_at >= %(since)s
                    AND r.rank_live <= p.desired_instances
            ) AS last_build_at
        FROM ranked r
        JOIN {s}.presets p ON p.id = r.preset_id
        WHERE NOT r.template_deleted
        GROUP BY r.preset_id
    ),
    hard_limited AS (
        SELECT r.preset_id
        FROM ranked r
        WHERE r.rank_all <= %(hard_limit)s
        GROUP BY r.preset_id
        HAVING count(*) = %(hard_limit)s AND bool_and(r.status = 'failed')
    )
    SELECT 'backoff', preset_id, num_failed, last_build_at
    FROM backoff WHERE last_build_at IS NOT NULL
    UNION ALL
    SELECT 'hard_limited', preset_id, NULL, NULL FROM hard_limited
    ORDER BY 1, 2
"""

_SQL_GET_PRESET = f"""
    SELECT {_PRESET_COLUMNS}
    FROM {{s}}.presets p
    JOIN {{s}}.templates t ON t.id = p.template_id
    WHERE p.id = %(id)s
"""
_SQL_GET_INSTANCE = f"""
    SELECT {_INSTANCE_COLUMNS}, latest.transition, latest.status
    FROM {{s}}.instances i
    {_LATEST_BUILD}
    WHERE i.id = %(id)s
"""
_SQL_GET_BUILD = f"SELECT {_BUILD_COLUMNS} FROM {{s}}.builds b WHERE b.id = %(id)s"

_SQL_PUT_TEMPLATE = """
    INSERT INTO {s}.templates
        (id, active_version_id, name, organization_id, deleted, deprecated, default_ttl)
    VALUES (%(id)s, %(active_version_id)s, %(name)s, %(organization_id)s::uuid,
        %(deleted)s, %(deprecated)s, %(default_ttl)s::interval)
    ON CONFLICT (id) DO UPDATE SET
        active_version_id = EXCLUDED.active_version_id,
        name = EXCLUDED.name,
        organization_id = EXCLUDED.organization_id,
        deleted = EXCLUDED.deleted,
        deprecated = EXCLUDED.deprecated,
        default_ttl = EXCLUDED.default_ttl
"""
# Replaces the configuration, keeps status and last_invalidated_at.
_SQL_PUT_PRESET = """
    INSERT INTO {s}.presets
        (id, template_id, template_version_id, desired_instances, name, ttl,
         scheduling_timezone, schedules, parameters)
    SELECT %(id)s::uuid, %(template_id)s::uuid, %(template_version_id)s::uuid,
        %(desired_instances)s::integer, %(name)s::text, %(ttl)s::interval,
        %(scheduling_timezone)s::text, %(schedules)s::jsonb, %(parameters)s::jsonb
    WHERE EXISTS (SELECT 1 FROM {s}.templates WHERE id = %(template_id)s::uuid)
    ON CONFLICT (id) DO UPDATE SET
        template_id = EXCLUDED.template_id,
        template_version_id = EXCLUDED.template_version_id,
        desired_instances = EXCLUDED.desired_instances,
        name = EXCLUDED.name,
        ttl = EXCLUDED.ttl,
        scheduling_timezone = EXCLUDED.scheduling_timezone,
        schedules = EXCLUDED.schedules,
        parameters = EXCLUDED.parameters
"""

_SQL_CREATE_SOURCE = """
    SELECT p.template_id, p.template_version_id, p.parameters,
        p.template_version_id = t.active_version_id
            AND NOT t.deleted AND NOT t.deprecated
    FROM {s}.presets p
    JOIN {s}.templates t ON t.id = p.template_id
    WHERE p.id = %(id)s
"""
# -- leadership and fencing -------------------------------------------------------
# Take the session-level lock and, if granted, a new token, in one statement
# (autocommit: the token is committed when it returns). The token's UPDATE
# waits for the fenced writes of the previous leader still running.
_SQL_TAKE_LEAD = """
    WITH attempt AS MATERIALIZED (
        SELECT pg_try_advisory_lock(%(key)s) AS held
    ),
    granted AS (
        INSERT INTO {s}.leader AS l (singleton, token, epoch, granted_at)
        SELECT true, %(token)s, 1, now() FROM attempt WHERE held
        ON CONFLICT (singleton) DO UPDATE
        SET token = EXCLUDED.token, epoch = l.epoch + 1,
            granted_at = EXCLUDED.granted_at
        RETURNING epoch
    )
    SELECT (SELECT held FROM attempt), (SELECT epoch FROM granted)
"""
# Clear the token (a lease whose scope ended writes nothing), then unlock.
_SQL_GIVE_UP_LEAD = """
    WITH cleared AS (
        UPDATE {s}.leader SET token = NULL WHERE token = %(token)s RETURNING 1
    )
    SELECT pg_advisory_unlock(%(key)s) FROM (SELECT count(*) FROM cleared) c
"""
# The fence of a write: the lease's token is the leader's. FOR SHARE (not FOR
# KEY SHARE, which a token UPDATE does not wait for) keeps a new grant out
# until the write commits; a grant that committed first fails the re-check.
_FENCE_CTE = """fence AS MATERIALIZED (
        SELECT 1 FROM {s}.leader WHERE token = %(lease)s FOR SHARE
    )"""
_SQL_FENCE = "SELECT 1 FROM {s}.leader WHERE token = %(lease)s FOR SHARE"

_SQL_INSERT_INSTANCE = """
    INSERT INTO {s}.instances
        (id, preset_id, template_id, template_version_id, owner_id, name, created_at,
         ready, last_used_at, deleted)
    VALUES (%(id)s, %(preset_id)s, %(template_id)s, %(template_version_id)s,
        '{pool}', %(name)s, %(now)s, false, %(now)s, false)
"""
_SQL_INSERT_BUILD = """
    INSERT INTO {s}.builds
        (id, instance_id, preset_id, template_version_id, transition, status,
         build_number, initiator_id, created_at)
    VALUES (%(id)s, %(instance_id)s, %(preset_id)s, %(template_version_id)s,
        %(transition)s, 'pending', %(build_number)s, '{pool}', %(now)s)
"""

# The source of a creation and its fence in one statement: always one row,
# the fence first, the preset's columns NULL when there is no such preset.
_SQL_CREATE_SOURCE_FENCED = f"""
    WITH {_FENCE_CTE}
    SELECT (SELECT count(*) FROM fence), src.*
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN ({_SQL_CREATE_SOURCE}) AS src ON true
"""

_SQL_LOCK_INSTANCE = """
    SELECT i.owner_id, i.deleted, i.preset_id, i.template_id, i.template_version_id,
        i.name
    FROM {s}.instances i
    WHERE i.id = %(id)s
    FOR UPDATE
"""
_SQL_LATEST_BUILD = """
    SELECT b.transition, b.status, b.build_number
    FROM {s}.builds b
    WHERE b.instance_id = %(id)s
    ORDER BY b.build_number DESC
    LIMIT 1
"""
_SQL_UNREADY = "UPDATE {s}.instances SET ready = false WHERE id = %(id)s"

_SQL_PRESET_EXISTS = "SELECT 1 FROM {s}.presets WHERE id = %(id)s"
# Cancel the queued first builds of an inactive version and, in the same
# statement, give each instance an orphan delete build (number 2).
_SQL_CANCEL_PENDING = """
    WITH canceled AS (
        UPDATE {s}.builds b
        SET status = 'canceled', finished_at = %(now)s
        FROM {s}.presets p, {s}.templates t
        WHERE b.preset_id = %(preset_id)s
            AND p.id = b.preset_id
            AND t.id = p.template_id
            AND b.build_number = 1
            AND b.transition = 'start'
            AND b.status = 'pending'
            AND b.started_at IS NULL
            AND b.template_version_id <> t.active_version_id
        RETURNING b.instance_id, b.created_at
    ),
    deletes AS (
        INSERT INTO {s}.builds
            (id, instance_id, preset_id, template_version_id, transition, status,
             build_number, initiator_id, created_at)
        SELECT gen_random_uuid(), i.id, i.preset_id, i.template_version_id, 'delete',
            'pending',
            (SELECT max(nb.build_number) + 1 FROM {s}.builds nb
             WHERE nb.instance_id = i.id),
            '{pool}', %(now)s
        FROM canceled c
        JOIN {s}.instances i ON i.id = c.instance_id
        RETURNING id, instance_id
    )
    SELECT d.id, i.id, i.preset_id, i.template_id, i.template_version_id, i.name
    FROM deletes d
    JOIN canceled c ON c.instance_id = d.instance_id
    JOIN {s}.instances i ON i.id = d.instance_id
    ORDER BY c.created_at, i.id
"""
_SQL_FAIL_STUCK = f"""
    WITH failed AS (
        UPDATE {{s}}.builds
        SET status = 'failed', finished_at = %(now)s, error_kind = 'timeout',
            error = %(error)s
        WHERE initiator_id = '{{pool}}'
            AND status IN ('pending', 'running')
            AND created_at < %(older_than)s
        RETURNING *
    )
    SELECT {_BUILD_COLUMNS}
    FROM failed b
    ORDER BY b.created_at, b.instance_id, b.build_number
"""
_SQL_FAIL_STUCK_FENCED = f"""
    WITH {_FENCE_CTE},
    failed AS (
        UPDATE {{s}}.builds
        SET status = 'failed', finished_at = %(now)s, error_kind = 'timeout',
            error = %(error)s
        WHERE initiator_id = '{{pool}}'
            AND status IN ('pending', 'running')
            AND created_at < %(older_than)s
            AND EXISTS (SELECT 1 FROM fence)
        RETURNING *
    )
    SELECT (SELECT count(*) FROM fence), {_BUILD_COLUMNS}
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN failed b ON true
    ORDER BY b.created_at, b.instance_id, b.build_number
"""
_SQL_BUILD_STARTED = """
    WITH started AS (
        UPDATE {s}.builds SET status = 'running', started_at = %(now)s
        WHERE id = %(id)s AND status = 'pending'
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM {s}.builds WHERE id = %(id)s)
"""
_SQL_BUILD_FINISHED = """
    WITH finished AS (
        UPDATE {s}.builds
        SET status = %(status)s, started_at = coalesce(started_at, %(now)s),
            finished_at = %(now)s, error_kind = %(error_kind)s, error = %(error)s
        WHERE id = %(id)s AND status IN ('pending', 'running')
        RETURNING instance_id, transition
    ),
    gone AS (
        UPDATE {s}.instances SET deleted = true, ready = false
        WHERE %(succeeded)s
            AND id = (SELECT instance_id FROM finished WHERE transition = 'delete')
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM {s}.builds WHERE id = %(id)s)
"""
_SQL_BUILD_FINISHED_FENCED = f"""
    WITH {_FENCE_CTE},
    finished AS (
        UPDATE {{s}}.builds
        SET status = %(status)s, started_at = coalesce(started_at, %(now)s),
            finished_at = %(now)s, error_kind = %(error_kind)s, error = %(error)s
        WHERE id = %(id)s AND status IN ('pending', 'running')
            AND EXISTS (SELECT 1 FROM fence)
        RETURNING instance_id, transition
    ),
    gone AS (
        UPDATE {{s}}.instances SET deleted = true, ready = false
        WHERE %(succeeded)s
            AND id = (SELECT instance_id FROM finished WHERE transition = 'delete')
        RETURNING id
    )
    SELECT (SELECT count(*) FROM fence),
        EXISTS (SELECT 1 FROM {{s}}.builds WHERE id = %(id)s)
"""
_SQL_SET_STATUS = "UPDATE {s}.presets SET status = %(status)s WHERE id = %(id)s"
_SQL_SET_STATUS_FENCED = f"""
    WITH {_FENCE_CTE},
    updated AS (
        UPDATE {{s}}.presets SET status = %(status)s
        WHERE id = %(id)s AND EXISTS (SELECT 1 FROM fence)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM updated)
"""
_SQL_SET_READY = """
    WITH updated AS (
        UPDATE {s}.instances SET ready = %(ready)s
        WHERE id = %(id)s AND NOT deleted
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM {s}.instances WHERE id = %(id)s)
"""

# A claim reads the preset's facts once, in a CTE: whether it exists and is
# active (checked claims), its template's default TTL, and what decides which
# instances are claimable (active version, template deleted, invalidation, TTL).
_CLAIM_PRESET = """
    preset AS MATERIALIZED (
        SELECT p.template_version_id = t.active_version_id
                AND NOT t.deleted AND NOT t.deprecated AS active,
            t.default_ttl,
            CASE WHEN NOT t.deleted THEN t.active_version_id END AS claimable_version,
            coalesce(p.last_invalidated_at, '-infinity') AS invalidated_at,
            nullif(p.ttl, interval '0') AS ttl
        FROM {s}.presets p
        JOIN {s}.templates t ON t.id = p.template_id
        WHERE p.id = %(preset_id)s
    ),
"""


def _claimable(alias: str) -> str:
    """
    The claim rules on instance *alias*: pooled, live, ready, its latest
    build a successful start, on the preset's claimable version, unexpired.
    """
    return f"""{alias}.preset_id = %(preset_id)s
        AND {alias}.owner_id = '{{pool}}'
        AND NOT {alias}.deleted
        AND {alias}.ready
        AND {alias}.latest_transition = 'start'
        AND {alias}.latest_status = 'succeeded'
        AND {alias}.template_version_id = (SELECT claimable_version FROM preset)
        AND {alias}.created_at >= (SELECT invalidated_at FROM preset)
        AND NOT coalesce(
            %(now)s - {alias}.created_at > (SELECT ttl FROM preset), false
        )"""


def _claim_ttl(*, checked: bool) -> str:
    """The claimed TTL: the request's, or the template's default if asked."""
    if not checked:
        return "%(ttl)s"
    return (
        "CASE WHEN %(ttl_from_template)s THEN (SELECT default_ttl FROM preset)"
        " ELSE %(ttl)s::interval END"
    )


def _claim_update(ttl: str) -> str:
    """The ``UPDATE … SET`` of a claim: the new owner and lifecycle fields."""
    return f"""UPDATE {{s}}.instances i
    SET owner_id = %(user_id)s, name = %(name)s,
        autostart_schedule = %(autostart_schedule)s,
        next_start_at = %(next_start_at)s, ttl = {ttl},
        deadline = %(deadline)s, max_deadline = %(max_deadline)s,
        dormant_at = %(dormant_at)s, deleting_at = %(deleting_at)s,
        last_used_at = %(last_used_at)s, claimed_at = %(now)s"""


def _claim_sql(*, checked: bool) -> str:
    """
    The claim, one statement: pick the oldest claimable instance, skipping
    rows another transaction holds, lock it, and move it to the user only if
    it is still the pool's (compare-and-set). The outer SELECT says whether a
    candidate was found, so a lost compare-and-set (retry) is told apart from
    an empty pool.

    The candidates come from one partial index (``instances_claimable``):
    the latest build's state is on the instance row, kept there by a
    trigger (migration 3), and the preset's facts are scalar sub-selects of
    a CTE read once.

    *checked* adds the preset's check (its first column: NULL for an unknown
    preset, else whether it is active; nothing is claimed unless it is) and
    takes the TTL from the template when ``%(ttl_from_template)s``.
    """
    active = "AND (SELECT active FROM preset)" if checked else ""
    ttl = _claim_ttl(checked=checked)
    first = "(SELECT active FROM preset), " if checked else ""
    return f"""
    WITH {_CLAIM_PRESET}candidate AS MATERIALIZED (
        SELECT i.id
        FROM {{s}}.instances i
        WHERE {_claimable("i")}
            {active}
        ORDER BY i.created_at, i.id
        LIMIT 1
        FOR UPDATE OF i SKIP LOCKED
    ),
    claimed AS (
        {_claim_update(ttl)}
        WHERE i.id = (SELECT id FROM candidate)
            AND i.owner_id = '{{pool}}'
            AND NOT i.deleted
            AND i.ready
        RETURNING {_INSTANCE_COLUMNS}, i.latest_transition, i.latest_status
    )
    SELECT {first}(SELECT count(*) FROM candidate), claimed.*
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN claimed ON true
"""


def _fast_claim_sql(*, checked: bool) -> str:
    """
    The claim's fast path, one plain ``UPDATE``: the same candidate and
    compare-and-set as :func:`_claim_sql`, but nothing to tell why nothing
    was claimed. *checked* claims only from an active preset. When it returns
    no row the caller runs :func:`_claim_sql`, which tells an unknown or
    inactive preset, an empty pool and a lost race apart.
    """
    claimable = (
        "p.template_version_id = t.active_version_id"
        " AND NOT t.deleted AND NOT t.deprecated"
        if checked
        else "NOT t.deleted"
    )
    ttl = _claim_ttl(checked=checked)
    return f"""
    WITH preset AS MATERIALIZED (
        SELECT CASE WHEN {claimable} THEN t.active_version_id END
                AS claimable_version,
            t.default_ttl,
            coalesce(p.last_invalidated_at, '-infinity') AS invalidated_at,
            nullif(p.ttl, interval '0') AS ttl
        FROM {{s}}.presets p
        JOIN {{s}}.templates t ON t.id = p.template_id
        WHERE p.id = %(preset_id)s
    )
    {_claim_update(ttl)}
    WHERE i.id = (
            SELECT c.id
            FROM {{s}}.instances c
            WHERE {_claimable("c")}
            ORDER BY c.created_at, c.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        AND i.owner_id = '{{pool}}'
        AND NOT i.deleted
        AND i.ready
    RETURNING {_CLAIMED_COLUMNS}
"""


def _positional(template: str) -> tuple[str, tuple[str, ...]]:
    """
    *template* with its ``%(name)s`` placeholders turned into ``$1``, ``$2``…
    (one number per name), and the names in that order.

    For a :class:`psycopg.RawCursor`: a hot statement then skips psycopg's
    named-parameter conversion on every call.
    """
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, template), tuple(names)


_SQL_CLAIM = _claim_sql(checked=False)
_SQL_CLAIM_CHECKED = _claim_sql(checked=True)
_SQL_CLAIM_FAST, _CLAIM_FAST_NAMES = _positional(_fast_claim_sql(checked=False))
_SQL_CLAIM_CHECKED_FAST, _CLAIM_CHECKED_FAST_NAMES = _positional(
    _fast_claim_sql(checked=True)
)


def _claim_params(
    preset_id: UUID, user_id: UUID, name: str, lifecycle: Lifecycle, now: datetime
) -> dict[str, Any]:
    return {
        "preset_id": preset_id,
        "user_id": user_id,
        "name": name,
        "now": now,
        "autostart_schedule": lifecycle.autostart_schedule,
        "next_start_at": lifecycle.next_start_at,
        "ttl": lifecycle.ttl,
        "deadline": lifecycle.deadline,
        "max_deadline": lifecycle.max_deadline,
        "dormant_at": lifecycle.dormant_at,
        "deleting_at": lifecycle.deleting_at,
        "last_used_at": lifecycle.last_used_at,
    }


# -- row conversion ---------------------------------------------------------------
def _claimed(
    row: Sequence[Any], params: dict[str, Any], lifecycle: Lifecycle
) -> Instance:
    """
    The instance a fast claim moved: its row (:data:`_CLAIMED_COLUMNS`) and
    what the claim wrote, which its parameters hold.
    """
    ttl = row[4]
    if ttl != lifecycle.ttl:  # the template's default TTL
        lifecycle = attrs.evolve(lifecycle, ttl=ttl)
    return Instance(
        id=row[0],
        preset_id=params["preset_id"],
        template_id=row[1],
        template_version_id=row[2],
        owner_id=params["user_id"],
        name=params["name"],
        created_at=_utc(row[3]),
        ready=True,
        lifecycle=lifecycle,
        claimed_at=_utc(params["now"]),
        latest_transition=Transition.START,
        latest_status=BuildStatus.SUCCEEDED,
    )


def _utc(value: datetime) -> datetime:
    return value.astimezone(_UTC)


def _utc_opt(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(_UTC)


def _instance(row: Sequence[Any]) -> Instance:
    return Instance(
        id=row[0],
        preset_id=row[1],
        template_id=row[2],
        template_version_id=row[3],
        owner_id=row[4],
        name=row[5],
        created_at=_utc(row[6]),
        ready=row[7],
        lifecycle=Lifecycle(
            autostart_schedule=row[8],
            next_start_at=_utc_opt(row[9]),
            ttl=row[10],
            deadline=_utc_opt(row[11]),
            max_deadline=_utc_opt(row[12]),
            dormant_at=_utc_opt(row[13]),
            deleting_at=_utc_opt(row[14]),
            last_used_at=_utc_opt(row[15]),
        ),
        deleted=row[16],
        claimed_at=_utc_opt(row[17]),
        latest_transition=Transition(row[18]),
        latest_status=BuildStatus(row[19]),
    )


def _build(row: Sequence[Any]) -> Build:
    return Build(
        id=row[0],
        instance_id=row[1],
        preset_id=row[2],
        template_version_id=row[3],
        transition=Transition(row[4]),
        status=BuildStatus(row[5]),
        build_number=row[6],
        initiator_id=row[7],
        created_at=_utc(row[8]),
        started_at=_utc_opt(row[9]),
        finished_at=_utc_opt(row[10]),
        error_kind=row[11],
        error=row[12],
    )


def _json(text: str) -> Any:
    """A JSON column read as text (most are empty lists: skip the parser)."""
    return [] if text == "[]" else json.loads(text)


def _schedules(raw: Any) -> list[tuple[str, int]]:
    """Stored schedules (a JSON list of {"cron", "instances"}) as pairs."""
    if not isinstance(raw, list):
        raise InvalidInputError("schedules", raw, "must be a JSON list")
    pairs = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"cron", "instances"}:
            raise InvalidInputError(
                "schedules", item, 'must be {"cron": ..., "instances": ...}'
            )
        cron, instances = item["cron"], item["instances"]
        if not isinstance(cron, str):
            raise InvalidInputError("cron", cron, "must be a string")
        if not isinstance(instances, int) or isinstance(instances, bool):
            raise InvalidInputError("instances", instances, "must be an int")
        pairs.append((cron, instances))
    return pairs


def _parameters(raw: Any) -> tuple[tuple[str, str], ...]:
    """Stored parameters (a JSON list of [name, value]) as pairs."""
    if not isinstance(raw, list):
        raise InvalidInputError("parameters", raw, "must be a JSON list")
    pairs = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2  # noqa: PLR2004
            or not all(isinstance(v, str) for v in item)
        ):
            raise InvalidInputError(
                "parameters", item, "must be [name, value] string pairs"
            )
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def _status(raw: Any) -> PresetStatus:
    try:
        return PresetStatus(raw)
    except ValueError:
        raise InvalidInputError("status", raw, "unknown preset status") from None


def _preset(row: Sequence[Any]) -> Preset:
    """
    The calculator's view of a preset row joined with its template.

    Raises:
        InvalidInputError: the stored preset is not valid.
    """
    template = Template(
        id=row[1],
        active_version_id=row[11],
        organization_id=row[12],
        deleted=row[13],
        deprecated=row[14],
    )
    return build_preset(
        id=row[0],
        template_id=row[1],
        template_version_id=row[2],
        desired_instances=row[3],
        name=row[4],
        ttl=row[5],
        scheduling_timezone=row[6],
        schedules=_schedules(_json(row[7])),
        parameters=_parameters(_json(row[8])),
        template=template,
        status=_status(row[9]),
        last_invalidated_at=_utc_opt(row[10]),
    )


def _preset_or_invalid(row: Sequence[Any]) -> Preset | InvalidPreset:
    """The preset of *row*, or why it cannot be read."""
    try:
        return _preset(row)
    except InvalidInputError as e:
        return invalid_preset(row[0], e)


def _schedules_json(config: PresetConfig) -> Jsonb:
    return Jsonb([{"cron": s.cron, "instances": s.instances} for s in config.schedules])


def _parameters_json(parameters: tuple[tuple[str, str], ...]) -> Jsonb:
    return Jsonb([[name, value] for name, value in parameters])


class PostgresStore:
    """
    A :class:`~prebuilds.interfaces.Store` on PostgreSQL, shared by many
    replicas.

    Give exactly one source of connections:

    - *conninfo*: a libpq connection string; the store opens its own
      :class:`psycopg_pool.ConnectionPool` (*min_size*, *max_size*) and
      closes it in :meth:`close`;
    - *pool*: the host's :class:`psycopg_pool.ConnectionPool`; the store
      borrows connections and never closes the pool;
    - *connect*: a callable returning a new :class:`psycopg.Connection`; the
      store calls it whenever it needs a connection and closes that
      connection when done.

    The store runs its transactions with explicit ``BEGIN``/``COMMIT`` in
    autocommit mode; a borrowed connection that was not in autocommit mode is
    switched for the duration of the call and switched back.

    A leader scope holds one connection for its whole duration, so a pool
    needs at least two connections.

    Args:
        conninfo: A libpq connection string.
        pool: A host's connection pool.
        connect: A host's connection factory.
        schema: The schema holding the store's tables (created if missing).
        migrate: Create or upgrade the tables now (see :meth:`migrate`).
        min_size: The own pool's minimum size.
        max_size: The own pool's maximum size.
        timeout: Seconds to wait for a connection from a pool; also the
            ``connect_timeout`` of the own pool's connections, unless
            *conninfo* sets one.

    A connection broken under a call (a server restart, a failover) goes
    back to its pool, which replaces it; calls work again once the server is
    back. A :class:`~prebuilds.exceptions.StoreError` for a connection that
    cannot be made names the cause (refused, unknown database or role,
    timeout, or a pool too small).

    Raises:
        InvalidInputError: not exactly one source of connections, or a bad
            schema name or pool size.
        SchemaVersionError: the database holds a newer schema.
        StoreError: the database could not be reached or migrated.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        connect: Callable[[], _Connection] | None = None,
        schema: str = "prebuilds",
        migrate: bool = True,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
    ) -> None:
        sources = [s for s in (conninfo, pool, connect) if s is not None]
        if len(sources) != 1:
            raise InvalidInputError(
                "conninfo", conninfo, "give exactly one of conninfo, pool, connect"
            )
        if not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidInputError(
                "schema", schema, "must be a plain identifier (letters, digits, _)"
            )
        if conninfo is not None and (min_size < 1 or max_size < max(2, min_size)):
            raise InvalidInputError(
                "max_size",
                max_size,
                "need min_size >= 1 and max_size >= max(2, min_size)",
            )
        self._schema = schema
        self._quoted = f'"{schema}"'
        self._leader_key = _lock_key("leader", schema)
        self._migrate_key = _lock_key("migrate", schema)
        self._timeout = timeout
        self._connect = connect
        self._pool = pool
        self._owns_pool = False
        self._closed = False
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self._statements = 0
        self._sql: dict[str, str] = {}
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, psycopg.Error | None] | None = None
        if conninfo is not None:
            # Each attempt of the pool's gives up after the store's timeout:
            # an attempt with none can outlive the pool's close().
            own = ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs=_with_connect_timeout(conninfo, {"autocommit": True}, timeout),
                open=False,
                timeout=timeout,
                name=f"prebuilds-{schema}",
            )
            try:
                own.open(wait=True, timeout=timeout)
            except psycopg.Error as e:
                own.close()
                message, cause = self._no_connection(own, e)
                raise StoreError(message) from cause
            self._pool = own
            self._owns_pool = True
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"<PostgresStore schema={self._schema!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema(self) -> str:
        """The schema holding the store's tables."""
        return self._schema

    def close(self) -> None:
        """Close the pool the store opened (a host's pool is left open)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_pool and self._pool is not None:
            self._pool.close()

    def statement_count(self) -> int:
        """How many SQL statements the store has sent (BEGIN/COMMIT included)."""
        with self._count_lock:
            return self._statements

    # -- plumbing ----------------------------------------------------------------
    def _q(self, template: str) -> str:
        """*template* with the schema and the pool owner filled in (cached)."""
        sql = self._sql.get(template)
        if sql is None:
            sql = template.replace("{s}", self._quoted).replace(
                "{pool}", str(PREBUILDS_OWNER_ID)
            )
            self._sql[template] = sql
        return sql

    def _count(self) -> None:
        with self._count_lock:
            self._statements += 1

    def _execute(
        self, cur: _Cursor, template: str, params: dict[str, Any] | None = None
    ) -> int:
        """Run one statement; its row count."""
        self._count()
        try:
            cur.execute(self._q(template), params)
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e
        return cur.rowcount

    def _fetchall(
        self, cur: _Cursor, template: str, params: dict[str, Any] | None = None
    ) -> list[_Row]:
        self._count()
        try:
            cur.execute(self._q(template), params)
            return cur.fetchall()
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e

    def _fetchone(
        self, cur: _Cursor, template: str, params: dict[str, Any] | None = None
    ) -> _Row | None:
        rows = self._fetchall(cur, template, params)
        return rows[0] if rows else None

    @contextmanager
    def _borrow(self) -> Iterator[_Connection]:
        """
        A connection in autocommit mode, for the duration of the block.

        A psycopg error in getting or giving back the connection becomes a
        StoreError; exceptions of the block itself pass through untouched,
        after a transaction the block left open is rolled back.
        """
        conn, switched = self._acquire()
        try:
            yield conn
        except BaseException:
            self._abandon(conn, switched=switched)
            raise
        self._release(conn, switched=switched)

    def _abandon(self, conn: _Connection, *, switched: bool) -> None:
        """
        Give *conn* back after an error, whatever state it is in.

        A transaction left open is rolled back first; the connection goes
        back even when that fails, and a broken one too (its pool discards
        and replaces it; a factory's is closed). Errors in doing so are
        dropped (the first error matters). A broken connection from a pool
        has the pool check its idle ones (see :meth:`_check_pool`).
        """
        if conn.info.transaction_status in _IN_TRANSACTION:
            with suppress(psycopg.Error):
                conn.rollback()
        broken = conn.info.transaction_status == _UNKNOWN
        with suppress(StoreError):
            self._release(conn, switched=switched)
        if broken:
            self._check_pool()

    def _check_pool(self) -> None:
        """
        After a broken connection: have the pool test the connections idle
        in it and replace the broken ones (:meth:`ConnectionPool.check`, a
        round trip each), so that a restarted server costs the calls in
        flight, not one more failed call per idle connection.
        """
        if self._pool is not None and not self._closed:
            with suppress(psycopg.Error):
                self._pool.check()

    def _acquire(self) -> tuple[_Connection, bool]:
        """
        A connection from the pool (or the host's factory) in autocommit
        mode, and whether it had to be switched to it.
        """
        if self._closed:
            raise StoreError("the store is closed")
        if self._pool is not None:
            try:
                conn = self._pool.getconn(timeout=self._timeout)
            except PoolTimeout as e:
                message, cause = self._no_connection(self._pool, e)
                raise StoreError(message) from cause
            except psycopg.Error as e:  # closed, too many waiting
                raise StoreError(f"cannot get a PostgreSQL connection: {e}") from e
        elif self._connect is not None:
            try:
                conn = self._connect()
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to PostgreSQL: {_one_line(e)}") from e
        else:  # pragma: no cover - the constructor requires a source
            raise StoreError("no source of connections")
        if conn.autocommit:
            return conn, False
        try:
            conn.autocommit = True
        except psycopg.Error as e:
            self._abandon(conn, switched=False)
            raise StoreError(f"cannot get a PostgreSQL connection: {e}") from e
        return conn, True

    def _release(self, conn: _Connection, *, switched: bool) -> None:
        """
        Give *conn* back in the mode it came in: to the pool, or closed when
        it came from the host's factory.
        """
        try:
            if switched:
                _restore_autocommit(conn)
            if self._pool is not None:
                self._pool.putconn(conn)
            else:
                conn.close()
        except psycopg.Error as e:
            raise StoreError(f"cannot give back a PostgreSQL connection: {e}") from e

    def _no_connection(
        self, pool: ConnectionPool[Any], error: psycopg.Error
    ) -> tuple[str, BaseException]:
        """
        Why *pool* gave no connection (*error*, its timeout), as the message
        of a StoreError and the exception to chain to it.

        The pool keeps its connection errors to its log, so one direct
        connection with its settings finds the cause (refused, unknown
        database or role, timeout…). When that succeeds, the server is
        reachable and the pool had no connection free.
        """
        cause = self._probe(pool)
        if cause is not None:
            return f"cannot connect to PostgreSQL: {_one_line(cause)}", cause
        stats = pool.get_stats()
        message = (
            f"cannot get a PostgreSQL connection: {_one_line(error)}, though the"
            " server accepts a new connection: the pool is too small for the"
            " calls made at once, or still reconnecting"
            f" (size {stats.get('pool_size', '?')} of max"
            f" {stats.get('pool_max', '?')},"
            f" {stats.get('requests_waiting', '?')} requests waiting)"
        )
        return message, error

    def _probe(self, pool: ConnectionPool[Any]) -> psycopg.Error | None:
        """
        The error of one direct connection with *pool*'s settings, closed at
        once; None if it connects.

        Callers that time out together share one attempt: a result newer
        than the start of the caller's wait (*timeout* ago) is reused.
        """
        waited_since = time.monotonic() - self._timeout
        with self._probe_lock:
            if self._probed is not None and self._probed[0] >= waited_since:
                return self._probed[1]
            conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
            raw_kwargs = pool.kwargs() if callable(pool.kwargs) else pool.kwargs
            kwargs = _with_connect_timeout(conninfo, raw_kwargs or {}, self._timeout)
            error: psycopg.Error | None = None
            try:
                pool.connection_class.connect(conninfo, **kwargs).close()
            except psycopg.Error as e:
                error = e
            self._probed = (time.monotonic(), error)
            return error

    @staticmethod
    @contextmanager
    def _cursor(conn: _Connection) -> Iterator[_Cursor]:
        """A cursor of *conn*; a psycopg error in opening or closing it is a StoreError."""
        try:
            cur = conn.cursor()
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e
        try:
            yield cur
        finally:
            with suppress(psycopg.Error):
                cur.close()

    @contextmanager
    def _transaction(self, begin: str = _BEGIN) -> Iterator[_Cursor]:
        """One transaction on a borrowed connection: COMMIT, or ROLLBACK on error."""
        with self._borrow() as conn, self._cursor(conn) as cur:
            self._execute(cur, begin)
            try:
                yield cur
            except BaseException:
                _rollback_quietly(self, cur)
                raise
            self._execute(cur, "COMMIT")

    @contextmanager
    def _statement(self) -> Iterator[_Cursor]:
        """A cursor for one statement, its own (implicit) transaction."""
        with self._borrow() as conn, self._cursor(conn) as cur:
            yield cur

    # -- schema ------------------------------------------------------------------
    def migrate(self) -> None:
        """
        Create or upgrade the store's schema; idempotent.

        Safe when several replicas start at once: the migration runs in one
        transaction under a transaction-scoped advisory lock, and records the
        version in ``schema_version``.

        Raises:
            SchemaVersionError: the database holds a newer schema than this
                library knows.
        """
        with self._transaction() as cur:
            self._execute(
                cur, "SELECT pg_advisory_xact_lock(%(key)s)", {"key": self._migrate_key}
            )
            exists = self._fetchone(
                cur,
                "SELECT 1 FROM pg_namespace WHERE nspname = %(name)s",
                {"name": self._schema},
            )
            if exists is None:
                self._execute(cur, "CREATE SCHEMA {s}")
            version = self._installed_version(cur)
            if version is None:
                self._execute(
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
                    f"schema {self._schema!r} is at version {version}; this "
                    f"prebuilds knows up to {SCHEMA_VERSION}: upgrade prebuilds"
                )
            if version == SCHEMA_VERSION:
                return
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    self._execute(cur, statement)
            self._execute(
                cur,
                """
                INSERT INTO {s}.schema_version (singleton, version)
                VALUES (true, %(version)s)
                ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version
                """,
                {"version": SCHEMA_VERSION},
            )

    def schema_version(self) -> int:
        """The schema version installed in the database (0: none)."""
        with self._transaction() as cur:
            return self._installed_version(cur) or 0

    def _installed_version(self, cur: _Cursor) -> int | None:
        """The recorded version; None when there is no schema_version table."""
        table = self._fetchone(
            cur,
            "SELECT to_regclass(%(name)s)",
            {"name": f"{self._quoted}.schema_version"},
        )
        if table is None or table[0] is None:
            return None
        row = self._fetchone(cur, "SELECT max(version) FROM {s}.schema_version")
        return 0 if row is None or row[0] is None else int(row[0])

    # -- configuration -----------------------------------------------------------
    def put_template(self, template: Template) -> None:
        """Insert or replace *template*."""
        check_instance("template", template, Template)
        with self._statement() as cur:
            self._execute(
                cur,
                _SQL_PUT_TEMPLATE,
                {
                    "id": template.id,
                    "active_version_id": template.active_version_id,
                    "name": template.name,
                    "organization_id": template.organization_id,
                    "deleted": template.deleted,
                    "deprecated": template.deprecated,
                    "default_ttl": template.default_ttl,
                },
            )

    def put_preset(self, preset: PresetConfig) -> None:
        """Insert or replace a preset's configuration, keeping its status."""
        check_instance("preset", preset, PresetConfig)
        with self._statement() as cur:
            written = self._execute(
                cur,
                _SQL_PUT_PRESET,
                {
                    "id": preset.id,
                    "template_id": preset.template_id,
                    "template_version_id": preset.template_version_id,
                    "desired_instances": preset.desired_instances,
                    "name": preset.name,
                    "ttl": preset.ttl,
                    "scheduling_timezone": preset.scheduling_timezone,
                    "schedules": _schedules_json(preset),
                    "parameters": _parameters_json(preset.parameters),
                },
            )
        if written == 0:
            raise InvalidInputError(
                "template_id", preset.template_id, "unknown template"
            )

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """Expire the preset's pooled instances created before *at*."""
        check_id_at("preset_id", preset_id, "at", at)
        with self._statement() as cur:
            updated = self._execute(
                cur,
                "UPDATE {s}.presets SET last_invalidated_at = %(at)s WHERE id = %(id)s",
                {"id": preset_id, "at": at},
            )
        if updated == 0:
            raise PresetNotFoundError(preset_id)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume reconciliation (persisted)."""
        check_bool("paused", paused)
        with self._statement() as cur:
            self._execute(
                cur,
                """
                INSERT INTO {s}.settings (singleton, paused) VALUES (true, %(paused)s)
                ON CONFLICT (singleton) DO UPDATE SET paused = EXCLUDED.paused
                """,
                {"paused": paused},
            )

    def is_paused(self) -> bool:
        """Whether reconciliation is paused."""
        with self._statement() as cur:
            row = self._fetchone(cur, "SELECT paused FROM {s}.settings")
        return bool(row is not None and row[0])

    def get_template(self, template_id: UUID) -> Template:
        """The template with *template_id*."""
        check_uuid("template_id", template_id)
        with self._statement() as cur:
            row = self._fetchone(
                cur,
                """
                SELECT id, active_version_id, name, organization_id, deleted,
                    deprecated, default_ttl
                FROM {s}.templates WHERE id = %(id)s
                """,
                {"id": template_id},
            )
        if row is None:
            raise InvalidInputError("template_id", template_id, "unknown template")
        return Template(
            id=row[0],
            active_version_id=row[1],
            name=row[2],
            organization_id=row[3],
            deleted=row[4],
            deprecated=row[5],
            default_ttl=row[6],
        )

    def get_preset(self, preset_id: UUID) -> Preset:
        """
        The calculator's view of the preset.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            InvalidInputError: the stored preset is not valid.
        """
        check_uuid("preset_id", preset_id)
        with self._statement() as cur:
            row = self._fetchone(cur, _SQL_GET_PRESET, {"id": preset_id})
        if row is None:
            raise PresetNotFoundError(preset_id)
        return _preset(row)

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """Record the preset's health (fenced by *lease*, in the same statement)."""
        check_set_preset_status(preset_id, status)
        token = fence_token(lease)
        params = {"id": preset_id, "status": status.value}
        with self._statement() as cur:
            if token is None:
                updated = self._execute(cur, _SQL_SET_STATUS, params)
            else:
                row = self._fetchone(
                    cur, _SQL_SET_STATUS_FENCED, {**params, "lease": token}
                )
                if row is None or not row[0]:
                    raise lost(token)
                updated = row[1]
        if updated == 0:
            raise PresetNotFoundError(preset_id)

    # -- reconciler ----------------------------------------------------------------
    @contextmanager
    def leader(self) -> Iterator[Lease]:
        """
        A non-blocking leader scope, shared by every replica on the schema.

        On a connection kept for the scope, one statement takes the
        session-level ``pg_try_advisory_lock`` and, if granted, commits a new
        fencing token to the ``leader`` row (after the fenced writes of the
        previous leader still running); only then does the scope open the
        ``REPEATABLE READ READ ONLY`` transaction that a :meth:`snapshot` in
        the same thread inside the scope reads through, so its snapshot is
        taken after leadership was granted and sees everything the previous
        leader committed. Leaving the scope ends that transaction, clears the
        token and unlocks; if any of that fails the connection is closed
        (which releases the lock) instead of going back to its pool.

        Yields a held :class:`~prebuilds.Lease` (its token fences the pass's
        writes), or one not held, holding nothing, when another session has
        the lock.
        """
        token = str(uuid.uuid4())
        conn, switched = self._acquire()
        try:
            try:
                cur = conn.cursor()
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL error: {e}") from e
            row = self._fetchone(
                cur, _SQL_TAKE_LEAD, {"key": self._leader_key, "token": token}
            )
            held = bool(row is not None and row[0])
            if held:
                self._execute(cur, _BEGIN_SNAPSHOT)
        except BaseException:
            # The lock may have been granted: closing the session drops it.
            self._discard(conn, switched=switched)
            raise
        if not held:
            self._release(conn, switched=switched)
            yield Lease(held=False)
            return
        previous = getattr(self._local, "cursor", None)
        self._local.cursor = cur
        ok = False
        try:
            yield Lease(held=True, token=token)
            ok = True
        finally:
            self._local.cursor = previous
            self._end_lead(conn, cur, token, switched=switched, commit=ok)

    def _end_lead(
        self,
        conn: _Connection,
        cur: _Cursor,
        token: str,
        *,
        switched: bool,
        commit: bool,
    ) -> None:
        """
        End a leader scope: its snapshot transaction, the token, the lock;
        then give the connection back, or close it if any step failed (a
        session that may still hold the lock never goes back to a pool).
        Failures are logged, not raised: the pass's own writes are committed
        already, and the lock goes with the closed session.
        """
        if self._give_up_lead(cur, token, commit=commit):
            with suppress(psycopg.Error):
                cur.close()
            try:
                self._release(conn, switched=switched)
            except StoreError:
                _LOG.warning(
                    "could not give the leader's connection back", exc_info=True
                )
            return
        _LOG.warning(
            "could not end the leader scope on schema %r cleanly; closing its "
            "connection, which releases the lock",
            self._schema,
        )
        self._discard(conn, switched=switched)

    def _give_up_lead(self, cur: _Cursor, token: str, *, commit: bool) -> bool:
        """End the scope's transaction, clear *token*, unlock; whether all went well."""
        try:
            self._execute(cur, "COMMIT" if commit else "ROLLBACK")
            row = self._fetchone(
                cur, _SQL_GIVE_UP_LEAD, {"key": self._leader_key, "token": token}
            )
        except StoreError:
            _LOG.debug("ending the leader scope failed", exc_info=True)
            return False
        return row is not None and bool(row[0])

    def _discard(self, conn: _Connection, *, switched: bool) -> None:
        """Close *conn* (ending its session and its locks) and give it back."""
        with suppress(psycopg.Error):
            conn.close()
        with suppress(psycopg.Error, StoreError):
            self._release(conn, switched=switched)

    def snapshot(
        self, *, now: datetime, backoff_lookback: timedelta, hard_limit: int
    ) -> GlobalSnapshot:
        """
        One consistent read of every pool, in a constant number of statements.

        Inside a leader scope (same thread) it reads through the scope's
        transaction; otherwise in its own ``REPEATABLE READ READ ONLY`` one.
        """
        check_snapshot(now, backoff_lookback, hard_limit)
        params = {"since": now - backoff_lookback, "hard_limit": hard_limit}
        cur: _Cursor | None = getattr(self._local, "cursor", None)
        if cur is not None:
            return self._snapshot(cur, params)
        with self._transaction(_BEGIN_SNAPSHOT) as own:
            return self._snapshot(own, params)

    def _snapshot(self, cur: _Cursor, params: dict[str, Any]) -> GlobalSnapshot:
        preset_rows = self._fetchall(cur, _SQL_SNAPSHOT_PRESETS)
        running_rows = self._fetchall(cur, _SQL_SNAPSHOT_RUNNING)
        in_progress_rows = self._fetchall(cur, _SQL_SNAPSHOT_IN_PROGRESS)
        pending_rows = self._fetchall(cur, _SQL_SNAPSHOT_PENDING)
        failure_rows = self._fetchall(cur, _SQL_SNAPSHOT_FAILURES, params)

        presets: list[Preset] = []
        invalid: list[InvalidPreset] = []
        for row in preset_rows:
            read = _preset_or_invalid(row)
            if isinstance(read, InvalidPreset):
                invalid.append(read)
            else:
                presets.append(read)
        backoffs = []
        hard_limited = []
        for kind, preset_id, num_failed, last_build_at in failure_rows:
            if kind == "backoff":
                backoffs.append(
                    Backoff(
                        preset_id=preset_id,
                        num_failed=num_failed,
                        last_build_at=_utc(last_build_at),
                    )
                )
            else:
                hard_limited.append(preset_id)
        return GlobalSnapshot(
            presets=presets,
            running=[
                RunningPrebuild(
                    id=r[0],
                    preset_id=r[1],
                    created_at=_utc(r[2]),
                    ready=r[3],
                    name=r[4],
                    template_id=r[5],
                    template_version_id=r[6],
                )
                for r in running_rows
            ],
            in_progress=[
                InProgressCount(
                    preset_id=r[0],
                    transition=Transition(r[1]),
                    count=r[2],
                    template_id=r[3],
                    template_version_id=r[4],
                )
                for r in in_progress_rows
            ],
            pending=[PendingCount(preset_id=r[0], count=r[1]) for r in pending_rows],
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
        A new pooled instance and its pending start build, in one
        transaction (fenced by *lease* in its first statement).
        """
        check_create_prebuild(preset_id, now, name)
        token = fence_token(lease)
        with self._transaction() as cur:
            if token is None:
                source = self._fetchone(cur, _SQL_CREATE_SOURCE, {"id": preset_id})
            else:
                fenced = self._fetchone(
                    cur, _SQL_CREATE_SOURCE_FENCED, {"id": preset_id, "lease": token}
                )
                if fenced is None or not fenced[0]:
                    raise lost(token)
                source = None if fenced[1] is None else fenced[1:]
            if source is None:
                raise PresetNotFoundError(preset_id)
            template_id, version_id, raw_parameters, active = source
            if not active:
                return None
            parameters = _parameters(raw_parameters)
            instance_id, build_id = uuid.uuid4(), uuid.uuid4()
            self._execute(
                cur,
                _SQL_INSERT_INSTANCE,
                {
                    "id": instance_id,
                    "preset_id": preset_id,
                    "template_id": template_id,
                    "template_version_id": version_id,
                    "name": name,
                    "now": now,
                },
            )
            self._execute(
                cur,
                _SQL_INSERT_BUILD,
                {
                    "id": build_id,
                    "instance_id": instance_id,
                    "preset_id": preset_id,
                    "template_version_id": version_id,
                    "transition": Transition.START.value,
                    "build_number": 1,
                    "now": now,
                },
            )
            # Built before the commit: a failure rolls the creation back.
            return BuildRequest(
                build_id=build_id,
                instance_id=instance_id,
                preset_id=preset_id,
                template_id=template_id,
                template_version_id=version_id,
                transition=Transition.START,
                name=name,
                parameters=parameters,
            )

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """
        A pending delete build, unless the instance left the pool.

        Locks the instance row first, so a concurrent claim either commits
        before (and this sees the new owner) or skips the row. Fenced by
        *lease*, in the transaction's first statement.
        """
        check_id_at("instance_id", instance_id, "now", now)
        token = fence_token(lease)
        with self._transaction() as cur:
            self._fence(cur, token)
            row = self._fetchone(cur, _SQL_LOCK_INSTANCE, {"id": instance_id})
            if row is None:
                return None
            owner_id, deleted, preset_id, template_id, version_id, name = row
            if deleted or owner_id != PREBUILDS_OWNER_ID:
                return None
            latest = self._fetchone(cur, _SQL_LATEST_BUILD, {"id": instance_id})
            number = 1
            if latest is not None:
                transition, status, latest_number = latest
                if transition == Transition.DELETE.value and status in (
                    BuildStatus.PENDING.value,
                    BuildStatus.RUNNING.value,
                    BuildStatus.SUCCEEDED.value,
                ):
                    return None
                number = latest_number + 1
            build_id = uuid.uuid4()
            self._execute(
                cur,
                _SQL_INSERT_BUILD,
                {
                    "id": build_id,
                    "instance_id": instance_id,
                    "preset_id": preset_id,
                    "template_version_id": version_id,
                    "transition": Transition.DELETE.value,
                    "build_number": number,
                    "now": now,
                },
            )
            self._execute(cur, _SQL_UNREADY, {"id": instance_id})
            return BuildRequest(
                build_id=build_id,
                instance_id=instance_id,
                preset_id=preset_id,
                template_id=template_id,
                template_version_id=version_id,
                transition=Transition.DELETE,
                name=name,
            )

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """Cancel queued creations of an inactive version; orphan-delete them."""
        check_id_at("preset_id", preset_id, "now", now)
        token = fence_token(lease)
        with self._transaction() as cur:
            self._fence(cur, token)
            if self._fetchone(cur, _SQL_PRESET_EXISTS, {"id": preset_id}) is None:
                raise PresetNotFoundError(preset_id)
            rows = self._fetchall(
                cur, _SQL_CANCEL_PENDING, {"preset_id": preset_id, "now": now}
            )
            return [
                BuildRequest(
                    build_id=r[0],
                    instance_id=r[1],
                    preset_id=r[2],
                    template_id=r[3],
                    template_version_id=r[4],
                    transition=Transition.DELETE,
                    name=r[5],
                    orphan=True,
                )
                for r in rows
            ]

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """
        Fail the pool's builds in progress since before *older_than*, in one
        statement (its fence included).
        """
        check_fail_stuck_builds(older_than, now)
        token = fence_token(lease)
        params = {"older_than": older_than, "now": now, "error": _STUCK_ERROR}
        with self._statement() as cur:
            if token is None:
                rows = self._fetchall(cur, _SQL_FAIL_STUCK, params)
            else:
                fenced = self._fetchall(
                    cur, _SQL_FAIL_STUCK_FENCED, {**params, "lease": token}
                )
                if not fenced or not fenced[0][0]:
                    raise lost(token)
                rows = [r[1:] for r in fenced if r[1] is not None]
        return [_build(r) for r in rows]

    def _fence(self, cur: _Cursor, token: str | None) -> None:
        """
        Check, in the transaction of *cur*, that *token* still leads; the
        ``FOR SHARE`` row lock holds a new grant back until it commits.

        Raises:
            LeadershipLostError: it does not (nothing is written).
        """
        if token is not None and (
            self._fetchone(cur, _SQL_FENCE, {"lease": token}) is None
        ):
            raise lost(token)

    # -- provisioner reports ---------------------------------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """Mark a pending build running."""
        check_id_at("build_id", build_id, "now", now)
        with self._statement() as cur:
            row = self._fetchone(cur, _SQL_BUILD_STARTED, {"id": build_id, "now": now})
        if row is None or not row[0]:
            raise BuildNotFoundError(build_id)

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
        """Record a build's result; a late report is ignored."""
        check_build_finished(build_id, now, succeeded, error_kind, error)
        token = fence_token(lease)
        status = BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED
        params = {
            "id": build_id,
            "now": now,
            "status": status.value,
            "succeeded": bool(succeeded),
            "error_kind": error_kind,
            "error": error,
        }
        with self._statement() as cur:
            if token is None:
                row = self._fetchone(cur, _SQL_BUILD_FINISHED, params)
            else:
                fenced = self._fetchone(
                    cur, _SQL_BUILD_FINISHED_FENCED, {**params, "lease": token}
                )
                if fenced is None or not fenced[0]:
                    raise lost(token)
                row = fenced[1:]
        if row is None or not row[0]:
            raise BuildNotFoundError(build_id)

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """Record whether the instance is ready (a deleted one is left alone)."""
        check_set_ready(instance_id, ready)
        with self._statement() as cur:
            row = self._fetchone(
                cur, _SQL_SET_READY, {"id": instance_id, "ready": ready}
            )
        if row is None or not row[0]:
            raise InstanceNotFoundError(instance_id)

    # -- claimer ---------------------------------------------------------------------
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
        Hand the oldest claimable instance of the preset to *user_id*.

        One ``UPDATE`` statement (its own transaction) picks the candidate
        with ``FOR UPDATE SKIP LOCKED`` and moves it only if it is still the
        pool's. Only when it claims nothing does a second statement tell an
        empty pool from a compare-and-set lost to a concurrent transaction,
        and then it tries again, a few times.
        """
        check_store_claim(preset_id, user_id, name, lifecycle, now)
        params = _claim_params(preset_id, user_id, name, lifecycle, now)
        return self._claim(params, lifecycle, checked=False)

    def claim_checked(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        ttl_from_template: bool,
    ) -> Instance | None:
        """
        :meth:`claim`, with the preset checked in the same statement.

        The path :class:`~prebuilds.StoreClaimer` takes on this store: one
        round trip instead of three (``get_preset``, ``get_template``,
        ``claim``). With *ttl_from_template*, the claimed instance's TTL is the
        template's default instead of ``lifecycle.ttl``.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            PresetInactiveError: the preset is not on the active version, or
                its template is deleted or deprecated.
        """
        check_store_claim(preset_id, user_id, name, lifecycle, now)
        check_bool("ttl_from_template", ttl_from_template)
        params = _claim_params(preset_id, user_id, name, lifecycle, now)
        params["ttl_from_template"] = ttl_from_template
        return self._claim(params, lifecycle, checked=True)

    def _claim(
        self, params: dict[str, Any], lifecycle: Lifecycle, *, checked: bool
    ) -> Instance | None:
        """
        Claim with *params*: the fast statement, then, if it claimed nothing,
        the full one, which says why and retries a lost compare-and-set.
        """
        if checked:
            fast, names = _SQL_CLAIM_CHECKED_FAST, _CLAIM_CHECKED_FAST_NAMES
        else:
            fast, names = _SQL_CLAIM_FAST, _CLAIM_FAST_NAMES
        # The hot path, kept lean (it is what a host's users wait on): no
        # context managers, a raw cursor kept on the connection, positional
        # parameters, a row of five columns.
        conn, switched = self._acquire()
        full: _Row | None = None
        try:
            self._count()
            try:
                row = (
                    _claim_cursor(conn)
                    .execute(
                        self._q(fast), tuple([params[n] for n in names]), binary=True
                    )
                    .fetchone()
                )
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL error: {e}") from e
            if row is None:
                with self._cursor(conn) as cur:
                    full = self._claim_why(cur, params, checked=checked)
        except BaseException:
            self._abandon(conn, switched=switched)
            raise
        self._release(conn, switched=switched)
        if row is not None:
            return _claimed(row, params, lifecycle)
        return None if full is None else _instance(full)

    def _claim_why(
        self, cur: _Cursor, params: dict[str, Any], *, checked: bool
    ) -> _Row | None:
        """
        The full claim statement, after the fast one claimed nothing: it
        raises for an unknown or inactive preset (*checked*), returns None
        for an empty pool, and claims if it can (the pool may have changed in
        between), retrying a compare-and-set lost to a concurrent claim.
        """
        template = _SQL_CLAIM_CHECKED if checked else _SQL_CLAIM
        for _ in range(_CLAIM_ATTEMPTS):
            row = self._fetchone(cur, template, params)
            if row is None:  # pragma: no cover - the statement returns one row
                return None
            if checked:
                if row[0] is None:
                    raise PresetNotFoundError(params["preset_id"])
                if not row[0]:
                    raise PresetInactiveError(params["preset_id"])
                row = row[1:]
            if not row[0]:
                return None  # no candidate at all
            if row[1] is not None:
                return row[1:]
        return None

    # -- reads -------------------------------------------------------------------------
    def get_instance(self, instance_id: UUID) -> Instance:
        """The instance with *instance_id*."""
        check_uuid("instance_id", instance_id)
        with self._statement() as cur:
            row = self._fetchone(cur, _SQL_GET_INSTANCE, {"id": instance_id})
        if row is None:
            raise InstanceNotFoundError(instance_id)
        return _instance(row)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first, filtered by preset and owner."""
        check_list_instances(preset_id, owner_id, include_deleted)
        with self._statement() as cur:
            rows = self._fetchall(
                cur,
                f"""
                SELECT {_INSTANCE_COLUMNS}, latest.transition, latest.status
                FROM {{s}}.instances i
                {_LATEST_BUILD}
                WHERE (%(preset_id)s::uuid IS NULL OR i.preset_id = %(preset_id)s)
                    AND (%(owner_id)s::uuid IS NULL OR i.owner_id = %(owner_id)s)
                    AND (%(include_deleted)s OR NOT i.deleted)
                ORDER BY i.created_at, i.id
                """,
                {
                    "preset_id": preset_id,
                    "owner_id": owner_id,
                    "include_deleted": include_deleted,
                },
            )
        return [_instance(r) for r in rows]

    def get_build(self, build_id: UUID) -> Build:
        """The build with *build_id*."""
        check_uuid("build_id", build_id)
        with self._statement() as cur:
            row = self._fetchone(cur, _SQL_GET_BUILD, {"id": build_id})
        if row is None:
            raise BuildNotFoundError(build_id)
        return _build(row)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """Builds in creation order."""
        check_optional_uuid("instance_id", instance_id)
        with self._statement() as cur:
            rows = self._fetchall(
                cur,
                f"""
                SELECT {_BUILD_COLUMNS}
                FROM {{s}}.builds b
                WHERE %(instance_id)s::uuid IS NULL OR b.instance_id = %(instance_id)s
                ORDER BY b.created_at, b.instance_id, b.build_number
                """,
                {"instance_id": instance_id},
            )
        return [_build(r) for r in rows]


def _claim_cursor(conn: _Connection) -> psycopg.RawCursor[Any]:
    """
    The raw cursor claims run on *conn*, made once and kept on the connection
    (with 16 client threads, a new cursor per claim cost about 13 µs of
    client CPU, a quarter of the client's share of a claim).
    """
    cur: psycopg.RawCursor[Any] | None = getattr(conn, _CLAIM_CURSOR, None)
    if cur is None or cur.closed:
        cur = psycopg.RawCursor(conn)
        with suppress(AttributeError):  # a connection class without __dict__
            setattr(conn, _CLAIM_CURSOR, cur)
    return cur


def _with_connect_timeout(
    conninfo: str, kwargs: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """
    *kwargs* for connecting with *conninfo*, with a ``connect_timeout`` of
    *timeout* seconds (libpq's minimum is 2) unless the connection string,
    *kwargs* or ``PGCONNECT_TIMEOUT`` sets one.
    """
    given = dict(kwargs)
    if "connect_timeout" in given or os.environ.get("PGCONNECT_TIMEOUT"):
        return given
    try:
        if "connect_timeout" in conninfo_to_dict(conninfo):
            return given
    except psycopg.Error:
        return given  # a bad connection string: connecting will say so
    given["connect_timeout"] = max(2, math.ceil(timeout))
    return given


def _one_line(error: BaseException) -> str:
    """A driver's error message on one line (libpq's run over several)."""
    return " ".join(str(error).split())


def _restore_autocommit(conn: _Connection) -> None:
    """Give a borrowed connection back in the mode it came in, or close it."""
    try:
        conn.autocommit = False
    except psycopg.Error:
        conn.close()  # the pool discards a closed connection


def _rollback_quietly(store: PostgresStore, cur: _Cursor) -> None:
    """ROLLBACK after an error; a broken connection is the pool's to discard."""
    with suppress(StoreError):
        store._execute(cur, "ROLLBACK")  # noqa: SLF001
