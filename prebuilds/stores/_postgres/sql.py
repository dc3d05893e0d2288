"""
PostgresStore's SQL text (the claim's is in ``claim.py``); "{s}" is the quoted
schema, "{pool}" the pool owner's UUID (``Connections.q``).

A fenced write reads the ``leader`` row in a ``fence`` CTE and applies only
under :data:`FENCED` (``%(lease)s`` NULL: unfenced), returning the fence's
verdict first. ``FOR SHARE`` (not ``FOR KEY SHARE``, which a token update
does not wait for) keeps a new grant out until the write commits.
"""

# Assembled from this module's constants only.
# ruff: noqa: S608

from __future__ import annotations

import attrs

from prebuilds._records import NOT_SUBMITTED_KIND, Build, Instance, Lifecycle, Template


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in attrs.fields(cls))


def _excluded(columns: str) -> str:
    """The SET list of an upsert: each of *columns* (``a, b``) but id, from EXCLUDED."""
    names = [c.strip() for c in columns.split(",")]
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c != "id")


# The columns of the records' tables, named and ordered as the records' fields
# (an instance's lifecycle spread out); ``codecs.py`` decodes rows by them.
TEMPLATE_COLUMNS = _names(Template)
BUILD_COLUMNS = _names(Build)
LIFECYCLE_COLUMNS = _names(Lifecycle)
INSTANCE_COLUMNS = tuple(
    column
    for field in _names(Instance)
    for column in (LIFECYCLE_COLUMNS if field == "lifecycle" else (field,))
)

FENCE = """fence AS MATERIALIZED (
        SELECT 1 FROM {s}.leader WHERE token = %(lease)s::text FOR SHARE
    )"""
FENCED = "(%(lease)s::text IS NULL OR EXISTS (SELECT 1 FROM fence))"
FENCE_HELD = "EXISTS (SELECT 1 FROM fence)"
#: Followed by ``x ON true``: one row, with x's columns NULL when x has none.
ONE_ROW = "FROM (VALUES (1)) AS one (x) LEFT JOIN"
_INSERT_BUILD = """INSERT INTO {s}.builds
            (id, instance_id, preset_id, template_version_id, transition, status,
             build_number, initiator_id, created_at)"""

# -- reads --------------------------------------------------------------------------
_PRESET_COLUMNS = f"""
    p.id, p.template_id, p.template_version_id, p.desired_instances, p.name, p.ttl,
    p.scheduling_timezone, p.schedules::text, p.parameters::text, p.status,
    p.last_invalidated_at, p.stamp, {", ".join(f"t.{c}" for c in TEMPLATE_COLUMNS)}
"""
POOL_PRESETS = f"""
    SELECT {_PRESET_COLUMNS}
    FROM {{s}}.presets p
    JOIN {{s}}.templates t ON t.id = p.template_id
    ORDER BY p.id
"""
# The live pool with its latest build, from the instance row alone (the
# trigger of migrations 3 and 5 keeps it there).
POOL_INSTANCES = """
    SELECT i.id, i.preset_id, i.template_id, i.template_version_id, i.name,
        i.created_at, i.ready, i.latest_build_id, i.latest_transition,
        i.latest_status, i.latest_build_number, i.latest_build_created_at
    FROM {s}.instances i
    WHERE i.owner_id = '{pool}' AND NOT i.deleted AND i.latest_build_id IS NOT NULL
    ORDER BY i.id
"""
READ_PRESET = f"""
    SELECT {_PRESET_COLUMNS}
    FROM {{s}}.presets p
    JOIN {{s}}.templates t ON t.id = p.template_id
    WHERE p.id = %(id)s
"""
GET_TEMPLATE = (
    f"SELECT {', '.join(TEMPLATE_COLUMNS)} FROM {{s}}.templates WHERE id = %(id)s"
)
# The latest build's transition and status are on the instance row (the
# trigger of migration 3); an instance with no build is not shown.
_INSTANCES = f"""
    SELECT {", ".join(f"i.{c}" for c in INSTANCE_COLUMNS)}
    FROM {{s}}.instances i
    WHERE i.latest_transition IS NOT NULL
"""
GET_INSTANCE = f"{_INSTANCES} AND i.id = %(id)s"
LIST_INSTANCES = f"""{_INSTANCES}
        AND (%(preset_id)s::uuid IS NULL OR i.preset_id = %(preset_id)s)
        AND (%(owner_id)s::uuid IS NULL OR i.owner_id = %(owner_id)s)
        AND (%(include_deleted)s OR NOT i.deleted)
    ORDER BY i.created_at, i.id
"""
_BUILD_COLUMNS = ", ".join(f"b.{c}" for c in BUILD_COLUMNS)
GET_BUILD = f"SELECT {_BUILD_COLUMNS} FROM {{s}}.builds b WHERE b.id = %(id)s"
LIST_BUILDS = f"""
    SELECT {_BUILD_COLUMNS}
    FROM {{s}}.builds b
    WHERE %(instance_id)s::uuid IS NULL OR b.instance_id = %(instance_id)s
    ORDER BY b.created_at, b.instance_id, b.build_number
"""
IS_PAUSED = "SELECT paused FROM {s}.settings"

# -- configuration ------------------------------------------------------------------
_TEMPLATE = ", ".join(TEMPLATE_COLUMNS)
# The template and, in the same statement, a new stamp for each of its presets.
PUT_TEMPLATE = f"""
    WITH written AS (
        INSERT INTO {{s}}.templates ({_TEMPLATE})
        VALUES (%(id)s, %(active_version_id)s, %(name)s, %(organization_id)s::uuid,
            %(deleted)s, %(deprecated)s, %(default_ttl)s::interval)
        ON CONFLICT (id) DO UPDATE SET {_excluded(_TEMPLATE)}
        RETURNING id
    )
    UPDATE {{s}}.presets SET stamp = stamp + 1
    WHERE template_id = (SELECT id FROM written)
"""
# Replaces the configuration and changes the stamp; keeps status and
# last_invalidated_at. Writes nothing for an unknown template.
_PRESET_CONFIG = """id, template_id, template_version_id, desired_instances, name, ttl,
    scheduling_timezone, schedules, parameters"""
PUT_PRESET = f"""
    INSERT INTO {{s}}.presets AS p ({_PRESET_CONFIG})
    SELECT %(id)s::uuid, %(template_id)s::uuid, %(template_version_id)s::uuid,
        %(desired_instances)s::integer, %(name)s::text, %(ttl)s::interval,
        %(scheduling_timezone)s::text, %(schedules)s::jsonb, %(parameters)s::jsonb
    WHERE EXISTS (SELECT 1 FROM {{s}}.templates WHERE id = %(template_id)s::uuid)
    ON CONFLICT (id) DO UPDATE SET {_excluded(_PRESET_CONFIG)}, stamp = p.stamp + 1
"""
INVALIDATE_PRESET = """
    UPDATE {s}.presets SET last_invalidated_at = %(at)s, stamp = stamp + 1
    WHERE id = %(id)s
"""
SET_PAUSED = """
    INSERT INTO {s}.settings (singleton, paused) VALUES (true, %(paused)s)
    ON CONFLICT (singleton) DO UPDATE SET paused = EXCLUDED.paused
"""
SET_STATUS = f"""
    WITH {FENCE},
    updated AS (
        UPDATE {{s}}.presets SET status = %(status)s
        WHERE id = %(id)s AND {FENCED}
        RETURNING 1
    )
    SELECT {FENCE_HELD}, EXISTS (SELECT 1 FROM {{s}}.presets WHERE id = %(id)s)
"""

# -- leadership ---------------------------------------------------------------------
# Take the session-level lock and, if granted, a new token, in one statement
# (autocommit: the token is committed when it returns). The token's UPDATE
# waits for the fenced writes of the previous leader still running.
TAKE_LEAD = """
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
GIVE_UP_LEAD = """
    WITH cleared AS (
        UPDATE {s}.leader SET token = NULL WHERE token = %(token)s RETURNING 1
    )
    SELECT pg_advisory_unlock(%(key)s) FROM (SELECT count(*) FROM cleared) c
"""

# -- the reconciler's transitions ----------------------------------------------------
# The preset's source columns for its new instances, and whether it is active.
_SOURCE = """source AS MATERIALIZED (
        SELECT p.template_id, p.template_version_id, p.parameters::text,
            p.template_version_id = t.active_version_id
                AND NOT t.deleted AND NOT t.deprecated AS active
        FROM {s}.presets p
        JOIN {s}.templates t ON t.id = p.template_id
        WHERE p.id = %(preset_id)s
    )"""
# A pooled instance and its pending start build, if the preset is active,
# and what the build request needs; always one row, the fence first, the
# preset's columns NULL when there is no such preset.
CREATE_PREBUILD = f"""
    WITH {FENCE},
    {_SOURCE},
    made AS (
        INSERT INTO {{s}}.instances
            (id, preset_id, template_id, template_version_id, owner_id, name,
             created_at, ready, last_used_at, deleted)
        SELECT %(instance_id)s, %(preset_id)s, template_id, template_version_id,
            '{{pool}}', %(name)s, %(now)s, false, %(now)s, false
        FROM source WHERE active AND {FENCED}
        RETURNING id, template_version_id
    ),
    built AS (
        {_INSERT_BUILD}
        SELECT %(build_id)s, id, %(preset_id)s, template_version_id, 'start',
            'pending', 1, '{{pool}}', %(now)s
        FROM made
    )
    SELECT {FENCE_HELD}, source.*
    {ONE_ROW} source ON true
"""
# CREATE_PREBUILD for every (instance ID, build ID, name) of three arrays of
# the same length, in one statement.
CREATE_PREBUILDS = f"""
    WITH {FENCE},
    {_SOURCE},
    wanted AS MATERIALIZED (
        SELECT * FROM unnest(
            %(instance_ids)s::uuid[], %(build_ids)s::uuid[], %(names)s::text[]
        ) AS w (instance_id, build_id, name)
    ),
    made AS (
        INSERT INTO {{s}}.instances
            (id, preset_id, template_id, template_version_id, owner_id, name,
             created_at, ready, last_used_at, deleted)
        SELECT w.instance_id, %(preset_id)s, s.template_id, s.template_version_id,
            '{{pool}}', w.name, %(now)s, false, %(now)s, false
        FROM source s CROSS JOIN wanted w WHERE s.active AND {FENCED}
        RETURNING id, template_version_id
    ),
    built AS (
        INSERT INTO {{s}}.builds
            (id, instance_id, preset_id, template_version_id, transition, status,
             build_number, initiator_id, created_at, submitted)
        SELECT w.build_id, m.id, %(preset_id)s, m.template_version_id, 'start',
            'pending', 1, '{{pool}}', %(now)s, false
        FROM made m JOIN wanted w ON w.instance_id = m.id
    )
    SELECT {FENCE_HELD}, source.*
    {ONE_ROW} source ON true
"""
# A pending delete build and the instance unready, if it is still the pool's
# and not being deleted; one row, the instance's columns NULL when nothing was
# written. The row lock re-checks the row's newest version: a claim committed
# first leaves nothing to delete, a later one skips the row until this commits.
DELETE_PREBUILD = f"""
    WITH {FENCE},
    target AS MATERIALIZED (
        SELECT i.id, i.preset_id, i.template_id, i.template_version_id, i.name,
            coalesce(i.latest_build_number, 0) + 1 AS number
        FROM {{s}}.instances i
        WHERE i.id = %(id)s AND {FENCED}
            AND i.owner_id = '{{pool}}' AND NOT i.deleted
            AND NOT (i.latest_transition IS NOT DISTINCT FROM 'delete'
                AND i.latest_status IN ('pending', 'running', 'succeeded'))
        FOR UPDATE OF i
    ),
    built AS (
        {_INSERT_BUILD}
        SELECT %(build_id)s, id, preset_id, template_version_id, 'delete',
            'pending', number, '{{pool}}', %(now)s
        FROM target
    ),
    unready AS (
        UPDATE {{s}}.instances SET ready = false WHERE id = (SELECT id FROM target)
    )
    SELECT {FENCE_HELD}, target.preset_id, target.template_id,
        target.template_version_id, target.name
    {ONE_ROW} target ON true
"""
# Cancel the queued first builds of an inactive version and give each
# instance an orphan delete build (number 2). Always one row at least: the
# fence, whether the preset exists, then the delete builds, oldest first.
CANCEL_PENDING = f"""
    WITH {FENCE},
    preset AS MATERIALIZED (
        SELECT p.id, t.active_version_id
        FROM {{s}}.presets p
        JOIN {{s}}.templates t ON t.id = p.template_id
        WHERE p.id = %(preset_id)s
    ),
    canceled AS (
        UPDATE {{s}}.builds b
        SET status = 'canceled', finished_at = %(now)s
        FROM preset p
        WHERE b.preset_id = p.id AND b.build_number = 1 AND b.transition = 'start'
            AND b.status = 'pending' AND b.started_at IS NULL
            AND b.template_version_id <> p.active_version_id AND {FENCED}
        RETURNING b.instance_id, b.created_at
    ),
    deletes AS (
        {_INSERT_BUILD}
        SELECT gen_random_uuid(), i.id, i.preset_id, i.template_version_id, 'delete',
            'pending',
            (SELECT max(nb.build_number) + 1 FROM {{s}}.builds nb
             WHERE nb.instance_id = i.id),
            '{{pool}}', %(now)s
        FROM canceled c
        JOIN {{s}}.instances i ON i.id = c.instance_id
        RETURNING id, instance_id
    ),
    requests AS (
        SELECT d.id AS build_id, i.id, i.preset_id, i.template_id,
            i.template_version_id, i.name, c.created_at
        FROM deletes d
        JOIN canceled c ON c.instance_id = d.instance_id
        JOIN {{s}}.instances i ON i.id = d.instance_id
    )
    SELECT {FENCE_HELD}, EXISTS (SELECT 1 FROM preset), r.build_id, r.id,
        r.preset_id, r.template_id, r.template_version_id, r.name
    {ONE_ROW} requests r ON true
    ORDER BY r.created_at, r.id
"""
# Always one row at least: the fence's verdict, then the failed builds.
# A stuck build never handed to the provisioner (pending, not submitted) is
# canceled, not failed (BatchCreates).
_NEVER_SUBMITTED = "(status = 'pending' AND NOT submitted)"
FAIL_STUCK = f"""
    WITH {FENCE},
    failed AS (
        UPDATE {{s}}.builds
        SET status = CASE WHEN {_NEVER_SUBMITTED} THEN 'canceled' ELSE 'failed' END,
            error_kind = CASE WHEN {_NEVER_SUBMITTED}
                THEN '{NOT_SUBMITTED_KIND}' ELSE 'timeout' END,
            error = CASE WHEN {_NEVER_SUBMITTED}
                THEN %(never)s ELSE %(error)s END,
            finished_at = %(now)s
        WHERE initiator_id = '{{pool}}'
            AND status IN ('pending', 'running')
            AND created_at < %(older_than)s
            AND {FENCED}
        RETURNING *
    )
    SELECT {FENCE_HELD}, {_BUILD_COLUMNS}
    {ONE_ROW} failed b ON true
    ORDER BY b.created_at, b.instance_id, b.build_number
"""
# The builds of %(submitted)s marked handed to the provisioner, and the
# pending, unsubmitted ones of %(not_submitted)s canceled, their instances
# withdrawn (never provisioned: deleted); one row, the fence's verdict.
RECORD_SUBMITS = f"""
    WITH {FENCE},
    handed AS (
        UPDATE {{s}}.builds SET submitted = true
        WHERE id = ANY(%(submitted)s::uuid[]) AND NOT submitted AND {FENCED}
    ),
    dropped AS (
        UPDATE {{s}}.builds
        SET status = 'canceled', finished_at = %(now)s,
            error_kind = '{NOT_SUBMITTED_KIND}', error = %(never)s
        WHERE id = ANY(%(not_submitted)s::uuid[]) AND {_NEVER_SUBMITTED}
            AND {FENCED}
        RETURNING instance_id
    ),
    withdrawn AS (
        UPDATE {{s}}.instances SET deleted = true, ready = false
        WHERE id IN (SELECT instance_id FROM dropped)
    )
    SELECT {FENCE_HELD}
"""

# -- reports ------------------------------------------------------------------------
BUILD_STARTED = """
    WITH started AS (
        UPDATE {s}.builds SET status = 'running', started_at = %(now)s
        WHERE id = %(id)s AND status = 'pending'
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM {s}.builds WHERE id = %(id)s)
"""
BUILD_FINISHED = f"""
    WITH {FENCE},
    finished AS (
        UPDATE {{s}}.builds
        SET status = %(status)s, started_at = coalesce(started_at, %(now)s),
            finished_at = %(now)s, error_kind = %(error_kind)s, error = %(error)s
        WHERE id = %(id)s AND status IN ('pending', 'running') AND {FENCED}
        RETURNING instance_id, transition
    ),
    gone AS (
        UPDATE {{s}}.instances SET deleted = true, ready = false
        WHERE %(succeeded)s
            AND id = (SELECT instance_id FROM finished WHERE transition = 'delete')
        RETURNING id
    )
    SELECT {FENCE_HELD}, EXISTS (SELECT 1 FROM {{s}}.builds WHERE id = %(id)s)
"""
SET_READY = """
    WITH updated AS (
        UPDATE {s}.instances SET ready = %(ready)s
        WHERE id = %(id)s AND NOT deleted
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM {s}.instances WHERE id = %(id)s)
"""
