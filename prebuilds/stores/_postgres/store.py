"""
PostgresStore: the Store seam on PostgreSQL (psycopg 3), for many replicas.

Every method is one transaction, almost all of them one statement; a write
that a lease fences checks the token in that statement (``sql.py``). The
leader scope, the claim and the stamps are described on the class and in
``docs/postgres.md``.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
import psycopg

from psycopg_pool import ConnectionPool
from typing_extensions import Self

from prebuilds._arguments import (
    check_build_finished,
    check_claim_if_unchanged,
    check_create_prebuild,
    check_fail_stuck_builds,
    check_id_at,
    check_list_instances,
    check_read_preset,
    check_set_preset_status,
    check_set_ready,
    check_store_claim,
)
from prebuilds._model import InvalidPreset, PresetStatus, Transition
from prebuilds._pool import PoolFacts, PresetFacts
from prebuilds._records import (
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
    PresetNotFoundError,
    StoreError,
    TemplateNotFoundError,
)
from prebuilds.stores._common import (
    build_request,
    fence_token,
    lost,
    parameters_json,
    schedules_json,
)
from prebuilds.stores._postgres import claim as _claim
from prebuilds.stores._postgres import codecs, sql
from prebuilds.stores._postgres.connections import (
    BEGIN_SNAPSHOT,
    Connection,
    Connections,
    Cursor,
)
from prebuilds.stores._postgres.schema import installed_version, lock_key
from prebuilds.stores._postgres.schema import migrate as migrate_schema


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STUCK_ERROR = "stuck: no result before the timeout"
_LOG = logging.getLogger("prebuilds.stores.postgres")


class PostgresStore:
    """
    A :class:`~prebuilds.interfaces.Store` on PostgreSQL, shared by many
    replicas; it offers :class:`~prebuilds.interfaces.StampedClaims`.

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
    needs at least two connections. It takes a session-level advisory lock
    and commits a new fencing token before it opens the ``REPEATABLE READ``
    transaction that :meth:`read_pool` reads through, so a new leader sees
    everything the previous one committed; a write fenced by its lease checks
    the token (``FOR SHARE``) in the write's own statement. A claim is one
    ``UPDATE … FOR UPDATE SKIP LOCKED``; a preset's stamp moves in the
    statement of every change a claim depends on.

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
        connect: Callable[[], Connection] | None = None,
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
        self._leader_key = lock_key("leader", schema)
        self._local = threading.local()
        self._presets = codecs.RowMemo(codecs.preset_or_invalid)
        self._instances = codecs.RowMemo(codecs.pooled)
        self._db = Connections(
            conninfo=conninfo,
            pool=pool,
            connect=connect,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
        )
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
        self._db.close()

    def statement_count(self) -> int:
        """How many SQL statements the store has sent (BEGIN/COMMIT included)."""
        return self._db.statements

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
        migrate_schema(self._db, self._schema)

    def schema_version(self) -> int:
        """The schema version installed in the database (0: none)."""
        with self._db.transaction() as cur:
            return installed_version(self._db, cur, self._schema) or 0

    # -- configuration -----------------------------------------------------------
    def put_template(self, template: Template) -> None:
        """Insert or replace *template*; the stamps of its presets change."""
        check_instance("template", template, Template)
        self._write(sql.PUT_TEMPLATE, attrs.asdict(template, recurse=False))

    def put_preset(self, preset: PresetConfig) -> None:
        """
        Insert or replace a preset's configuration, keeping its status; its
        stamp changes.

        Raises:
            TemplateNotFoundError: no template has the preset's template ID.
        """
        check_instance("preset", preset, PresetConfig)
        written = self._write(
            sql.PUT_PRESET,
            attrs.asdict(preset, recurse=False)
            | {
                "schedules": codecs.jsonb(schedules_json(preset.schedules)),
                "parameters": codecs.jsonb(parameters_json(preset.parameters)),
            },
        )
        if written == 0:
            raise TemplateNotFoundError(preset.template_id)

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """Expire the preset's pooled instances created before *at*; its stamp changes."""
        check_id_at("preset_id", preset_id, "at", at)
        if self._write(sql.INVALIDATE_PRESET, {"id": preset_id, "at": at}) == 0:
            raise PresetNotFoundError(preset_id)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume reconciliation (persisted)."""
        check_bool("paused", paused)
        self._write(sql.SET_PAUSED, {"paused": paused})

    def is_paused(self) -> bool:
        """Whether reconciliation is paused."""
        row = self._read_one(sql.IS_PAUSED)
        return bool(row is not None and row[0])

    def get_template(self, template_id: UUID) -> Template:
        """
        The template with *template_id*.

        Raises:
            TemplateNotFoundError: no template has *template_id*.
        """
        check_uuid("template_id", template_id)
        row = self._read_one(sql.GET_TEMPLATE, {"id": template_id})
        if row is None:
            raise TemplateNotFoundError(template_id)
        return codecs.template(row)

    def read_preset(self, preset_id: UUID) -> PresetFacts:
        """
        What the store keeps about the preset, with its template and stamp.

        Raises:
            PresetNotFoundError: no preset has *preset_id*.
            InvalidInputError: the stored preset is not valid.
        """
        check_read_preset(preset_id)
        row = self._read_one(sql.READ_PRESET, {"id": preset_id})
        if row is None:
            raise PresetNotFoundError(preset_id)
        return codecs.preset_facts(row)

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """Record the preset's health (fenced by *lease*, in the same statement)."""
        check_set_preset_status(preset_id, status)
        (row,) = self._fenced(
            fence_token(lease),
            sql.SET_STATUS,
            {"id": preset_id, "status": status.value},
        )
        if not row[1]:
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
        ``REPEATABLE READ READ ONLY`` transaction that a :meth:`read_pool` in
        the same thread inside the scope reads through, so its snapshot is
        taken after leadership was granted and sees everything the previous
        leader committed. Leaving the scope ends that transaction, clears the
        token and unlocks; if any of that fails the connection is closed
        (which releases the lock) instead of going back to its pool.

        Yields a held :class:`~prebuilds.Lease` (its token fences the pass's
        writes), or one not held, holding nothing, when another session has
        the lock.
        """
        db = self._db
        token = str(uuid.uuid4())
        conn, switched = db.acquire()
        try:
            try:
                cur = conn.cursor()
            except psycopg.Error as e:
                raise StoreError(f"PostgreSQL error: {e}") from e
            row = db.fetchone(
                cur, sql.TAKE_LEAD, {"key": self._leader_key, "token": token}
            )
            held = bool(row is not None and row[0])
            if held:
                db.execute(cur, BEGIN_SNAPSHOT)
        except BaseException:
            # The lock may have been granted: closing the session drops it.
            db.discard(conn, switched=switched)
            raise
        if not held:
            db.release(conn, switched=switched)
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
        self, conn: Connection, cur: Cursor, token: str, *, switched: bool, commit: bool
    ) -> None:
        """
        End a leader scope: its snapshot transaction, the token, the lock;
        then give the connection back, or close it if any step failed (a
        session that may still hold the lock never goes back to a pool).
        Failures are logged, not raised: the pass's own writes are committed
        already, and the lock goes with the closed session.
        """
        db = self._db
        try:
            db.execute(cur, "COMMIT" if commit else "ROLLBACK")
            row = db.fetchone(
                cur, sql.GIVE_UP_LEAD, {"key": self._leader_key, "token": token}
            )
            clean = row is not None and bool(row[0])
        except StoreError:
            _LOG.debug("ending the leader scope failed", exc_info=True)
            clean = False
        if clean:
            with suppress(psycopg.Error):
                cur.close()
            try:
                db.release(conn, switched=switched)
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
        db.discard(conn, switched=switched)

    def read_pool(self) -> PoolFacts:
        """
        Every preset and every pooled instance, in one consistent read: two
        queries, whatever the number of presets.

        Inside a leader scope (same thread) it reads through the scope's
        transaction; otherwise in its own ``REPEATABLE READ READ ONLY`` one.
        A stored preset that does not decode is reported in
        ``invalid_presets``.
        """
        cur: Cursor | None = getattr(self._local, "cursor", None)
        if cur is not None:
            return self._read_pool(cur)
        with self._db.transaction(BEGIN_SNAPSHOT) as own:
            return self._read_pool(own)

    def _read_pool(self, cur: Cursor) -> PoolFacts:
        read = self._presets.decode(self._db.fetchall(cur, sql.POOL_PRESETS))
        instances = self._instances.decode(self._db.fetchall(cur, sql.POOL_INSTANCES))
        return PoolFacts(
            presets=[p for p in read if isinstance(p, PresetFacts)],
            instances=instances,
            invalid_presets=[p for p in read if isinstance(p, InvalidPreset)],
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
        A new pooled instance and its pending start build, in one statement
        (fenced by *lease*); None if the preset is not active.
        """
        check_create_prebuild(preset_id, now, name)
        token = fence_token(lease)
        instance_id, build_id = uuid.uuid4(), uuid.uuid4()
        params = {
            "preset_id": preset_id,
            "instance_id": instance_id,
            "build_id": build_id,
            "name": name,
            "now": now,
            "lease": token,
        }
        # In a transaction of its own: the request is built before the
        # commit, so that a preset whose parameters do not decode (written
        # by hand) rolls the creation back.
        with self._db.transaction() as cur:
            row = self._db.fetchone(cur, sql.CREATE_PREBUILD, params)
            if row is None or (token is not None and not row[0]):
                raise lost(token or "")
            if row[1] is None:
                raise PresetNotFoundError(preset_id)
            _, template_id, version_id, raw_parameters, active = row
            if not active:
                return None
            return build_request(
                build_id=build_id,
                instance_id=instance_id,
                preset_id=preset_id,
                template_id=template_id,
                template_version_id=version_id,
                transition=Transition.START,
                name=name,
                parameters=raw_parameters,
            )

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """
        A pending delete build, unless the instance left the pool or is
        already being deleted: one statement (its fence included) that locks
        the instance row and re-checks it, so a concurrent claim either
        commits before (and nothing is deleted) or skips the row.
        """
        check_id_at("instance_id", instance_id, "now", now)
        build_id = uuid.uuid4()
        (row,) = self._fenced(
            fence_token(lease),
            sql.DELETE_PREBUILD,
            {"id": instance_id, "build_id": build_id, "now": now},
        )
        if row[1] is None:
            return None
        return build_request(
            build_id=build_id,
            instance_id=instance_id,
            preset_id=row[1],
            template_id=row[2],
            template_version_id=row[3],
            transition=Transition.DELETE,
            name=row[4],
        )

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """
        Cancel queued creations of an inactive version and orphan-delete
        them, in one statement (its fence included).
        """
        check_id_at("preset_id", preset_id, "now", now)
        rows = self._fenced(
            fence_token(lease), sql.CANCEL_PENDING, {"preset_id": preset_id, "now": now}
        )
        if not rows[0][1]:
            raise PresetNotFoundError(preset_id)
        return [
            build_request(
                build_id=r[2],
                instance_id=r[3],
                preset_id=r[4],
                template_id=r[5],
                template_version_id=r[6],
                transition=Transition.DELETE,
                name=r[7],
                orphan=True,
            )
            for r in rows
            if r[2] is not None
        ]

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """
        Fail the pool's builds in progress since before *older_than*, in one
        statement (its fence included).
        """
        check_fail_stuck_builds(older_than, now)
        rows = self._fenced(
            fence_token(lease),
            sql.FAIL_STUCK,
            {"older_than": older_than, "now": now, "error": _STUCK_ERROR},
        )
        return [codecs.build(r[1:]) for r in rows if r[1] is not None]

    # -- provisioner reports ---------------------------------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """Mark a pending build running."""
        check_id_at("build_id", build_id, "now", now)
        row = self._read_one(sql.BUILD_STARTED, {"id": build_id, "now": now})
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
        status = BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED
        (row,) = self._fenced(
            fence_token(lease),
            sql.BUILD_FINISHED,
            {
                "id": build_id,
                "now": now,
                "status": status.value,
                "succeeded": bool(succeeded),
                "error_kind": error_kind,
                "error": error,
            },
        )
        if not row[1]:
            raise BuildNotFoundError(build_id)

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """Record whether the instance is ready (a deleted one is left alone)."""
        check_set_ready(instance_id, ready)
        row = self._read_one(sql.SET_READY, {"id": instance_id, "ready": ready})
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
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """
        Hand the oldest claimable instance of the preset to *user_id*, in one
        ``UPDATE`` statement (see ``claim.py``); None on a miss.

        Claimable: pooled, not deleted, ready, its latest build a successful
        start, built from *version_id* and created at or after *not_before*
        (``None``: no cut-off).
        """
        check_store_claim(
            preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        return _claim.claim(
            self._db,
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=lifecycle,
            now=now,
            version_id=version_id,
            not_before=not_before,
        )

    def claim_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """
        :meth:`claim`, applied only while the preset's stamp is still
        *stamp*: one statement reads the stamp and claims under it.

        Raises:
            PresetChangedError: the stamp changed (or the preset is gone);
                nothing was written.
        """
        check_claim_if_unchanged(
            stamp, preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        return _claim.claim(
            self._db,
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            lifecycle=lifecycle,
            now=now,
            version_id=version_id,
            not_before=not_before,
            stamp=stamp,
        )

    # -- reads -------------------------------------------------------------------------
    def get_instance(self, instance_id: UUID) -> Instance:
        """The instance with *instance_id*."""
        check_uuid("instance_id", instance_id)
        row = self._read_one(sql.GET_INSTANCE, {"id": instance_id})
        if row is None:
            raise InstanceNotFoundError(instance_id)
        return codecs.instance(row)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first, filtered by preset and owner."""
        check_list_instances(preset_id, owner_id, include_deleted)
        params = {
            "preset_id": preset_id,
            "owner_id": owner_id,
            "include_deleted": include_deleted,
        }
        with self._db.statement() as cur:
            rows = self._db.fetchall(cur, sql.LIST_INSTANCES, params)
        return [codecs.instance(r) for r in rows]

    def get_build(self, build_id: UUID) -> Build:
        """The build with *build_id*."""
        check_uuid("build_id", build_id)
        row = self._read_one(sql.GET_BUILD, {"id": build_id})
        if row is None:
            raise BuildNotFoundError(build_id)
        return codecs.build(row)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """Builds in creation order."""
        check_optional_uuid("instance_id", instance_id)
        with self._db.statement() as cur:
            rows = self._db.fetchall(cur, sql.LIST_BUILDS, {"instance_id": instance_id})
        return [codecs.build(r) for r in rows]

    # -- plumbing ----------------------------------------------------------------------
    def _write(self, template: str, params: dict[str, Any]) -> int:
        """Run one statement on its own; its row count."""
        with self._db.statement() as cur:
            return self._db.execute(cur, template, params)

    def _read_one(
        self, template: str, params: dict[str, Any] | None = None
    ) -> tuple[Any, ...] | None:
        """Run one statement on its own; its first row, if any."""
        with self._db.statement() as cur:
            return self._db.fetchone(cur, template, params)

    def _fenced(
        self, token: str | None, template: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """
        Run a statement of ``sql.py`` that *token* fences, on its own; its
        rows (one at least), the fence's verdict first.

        Raises:
            LeadershipLostError: *token* no longer leads (nothing written).
        """
        with self._db.statement() as cur:
            rows = self._db.fetchall(cur, template, {**params, "lease": token})
        if token is not None and not rows[0][0]:
            raise lost(token)
        return rows

    def _borrow(self) -> AbstractContextManager[Connection]:
        """A connection of the store's, in autocommit mode (for raw SQL in tests)."""
        return self._db.borrow()

    def _q(self, template: str) -> str:
        """*template* with the schema and the pool owner filled in."""
        return self._db.q(template)
