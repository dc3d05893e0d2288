"""PostgresStore: the Store seam on PostgreSQL (psycopg 3), for many replicas."""

from __future__ import annotations

import logging
import re
import threading
import uuid

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import psycopg

from psycopg_pool import ConnectionPool
from typing_extensions import Self

from prebuilds._arguments import (
    check_build_finished,
    check_claim_id_if_unchanged,
    check_claim_if_unchanged,
    check_create_prebuild,
    check_create_prebuilds,
    check_create_prebuilds_grouped,
    check_fail_stuck_builds,
    check_id_at,
    check_list_instances,
    check_read_preset,
    check_record_submits,
    check_set_preset_status,
    check_set_ready,
    check_store_claim,
)
from prebuilds._model import InvalidPreset, PresetStatus, Transition
from prebuilds._pool import PoolFacts, PresetFacts
from prebuilds._records import (
    NOT_SUBMITTED_ERROR,
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
    start_requests,
)
from prebuilds.stores._postgres import claim as _claim
from prebuilds.stores._postgres import codecs, sql
from prebuilds.stores._postgres.connections import (
    BEGIN_SNAPSHOT,
    Connection,
    Connections,
    Cursor,
    Row,
    open_cursor,
)
from prebuilds.stores._postgres.schema import installed_version, lock_key
from prebuilds.stores._postgres.schema import migrate as migrate_schema


_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STUCK_ERROR = "stuck: no result before the timeout"
_LOG = logging.getLogger("prebuilds.stores.postgres")


class PostgresStore:
    """
    A :class:`~prebuilds.interfaces.Store` on PostgreSQL, shared by many
    replicas; it offers :class:`~prebuilds.interfaces.StampedClaims`,
    :class:`~prebuilds.interfaces.BatchCreates` and
    :class:`~prebuilds.interfaces.GroupedCreates`.

    Give exactly one source of connections: *conninfo* (the store opens its
    own :class:`psycopg_pool.ConnectionPool` and closes it in :meth:`close`),
    *pool* (the host's pool, never closed here) or *connect* (a callable
    returning a new :class:`psycopg.Connection`, closed after each call). A
    leader scope holds a connection for its whole duration, so a pool needs
    at least two. See ``docs/postgres.md`` for leadership, fencing and the
    claim.

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

    Raises:
        InvalidInputError: not exactly one source of connections, or a bad
            schema name or pool size.
        SchemaVersionError: the database holds a newer schema.
        StoreError: the database could not be reached (the message names the
            cause) or migrated.

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
        """Create or upgrade the schema, under an advisory lock; see ``schema.py``."""
        migrate_schema(self._db, self._schema)

    def schema_version(self) -> int:
        """The schema version installed in the database (0: none)."""
        with self._db.transaction() as cur:
            return installed_version(self._db, cur, self._schema) or 0

    # -- configuration -----------------------------------------------------------
    def put_template(self, template: Template) -> None:
        """One statement writes the template and moves its presets' stamps."""
        check_instance("template", template, Template)
        self._write(sql.PUT_TEMPLATE, attrs.asdict(template, recurse=False))

    def put_preset(self, preset: PresetConfig) -> None:
        """One ``INSERT … ON CONFLICT`` that keeps the status and moves the stamp."""
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
        """One ``UPDATE``; the stamp moves."""
        check_id_at("preset_id", preset_id, "at", at)
        if self._write(sql.INVALIDATE_PRESET, {"id": preset_id, "at": at}) == 0:
            raise PresetNotFoundError(preset_id)

    def set_paused(self, paused: bool) -> None:
        """Persisted in the ``settings`` row."""
        check_bool("paused", paused)
        self._write(sql.SET_PAUSED, {"paused": paused})

    def is_paused(self) -> bool:
        """Read from the ``settings`` row."""
        row = self._read_one(sql.IS_PAUSED)
        return bool(row is not None and row[0])

    def get_template(self, template_id: UUID) -> Template:
        """The template with *template_id*."""
        check_uuid("template_id", template_id)
        row = self._read_one(sql.GET_TEMPLATE, {"id": template_id})
        if row is None:
            raise TemplateNotFoundError(template_id)
        return codecs.template(row)

    def read_preset(self, preset_id: UUID) -> PresetFacts:
        """The preset with its template and stamp, in one query."""
        check_read_preset(preset_id)
        row = self._read_one(sql.READ_PRESET, {"id": preset_id})
        if row is None:
            raise PresetNotFoundError(preset_id)
        return codecs.preset_facts(row)

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """One statement, its fence included."""
        check_set_preset_status(preset_id, status)
        params = {"id": preset_id, "status": status.value}
        (row,) = self._fenced(lease, sql.SET_STATUS, params)
        if not row[1]:
            raise PresetNotFoundError(preset_id)

    # -- reconciler ----------------------------------------------------------------
    @contextmanager
    def leader(self) -> Iterator[Lease]:
        """
        On a connection kept for the scope, one statement takes the session's
        ``pg_try_advisory_lock`` and commits a new token; then the scope opens
        the ``REPEATABLE READ`` transaction that :meth:`read_pool` in the same
        thread reads through, so its snapshot follows the grant.
        """
        db = self._db
        token = str(uuid.uuid4())
        conn, switched = db.acquire()
        try:
            cur = open_cursor(conn)
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
        End the snapshot, clear the token, unlock, and give the connection
        back; if any step failed, close it instead (the lock goes with the
        session). Failures are logged, not raised: the pass's writes are
        committed already.
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
        """Two queries, through the leader scope's snapshot or a snapshot of its own."""
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
        """One statement, its fence included."""
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
            template_id, version_id, raw_parameters, active = self._created(
                cur, sql.CREATE_PREBUILD, params, token
            )
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

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        """:meth:`create_prebuild` per name: one statement, its fence included."""
        checked = check_create_prebuilds(preset_id, now, names)
        token = fence_token(lease)
        with self._db.transaction() as cur:
            return self._create(cur, preset_id, checked, now, token)

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        """
        :meth:`create_prebuilds`' statement per (preset ID, names) pair, in
        one transaction (one commit); any error rolls them all back.
        """
        checked = check_create_prebuilds_grouped(groups, now)
        token = fence_token(lease)
        with self._db.transaction() as cur:
            return [
                self._create(cur, preset_id, names, now, token)
                for preset_id, names in checked
            ]

    def _create(
        self,
        cur: Cursor,
        preset_id: UUID,
        names: Sequence[str],
        now: datetime,
        token: str | None,
    ) -> list[BuildRequest]:
        """``CREATE_PREBUILDS`` on *cur*: the preset's requests (none if inactive)."""
        ids = [(uuid.uuid4(), uuid.uuid4()) for _ in names]
        params = {
            "preset_id": preset_id,
            "instance_ids": [i for i, _ in ids],
            "build_ids": [b for _, b in ids],
            "names": list(names),
            "now": now,
            "lease": token,
        }
        template_id, version_id, raw_parameters, active = self._created(
            cur, sql.CREATE_PREBUILDS, params, token
        )
        if not active or not ids:
            return []
        return start_requests(
            ids,
            names,
            preset_id=preset_id,
            template_id=template_id,
            template_version_id=version_id,
            parameters=raw_parameters,
        )

    def _created(
        self, cur: Cursor, statement: str, params: dict[str, Any], token: str | None
    ) -> tuple[Any, Any, Any, bool]:
        """
        Run a create *statement* (its fence included) on *cur*: the preset's
        template ID, version ID, raw parameters and whether it is active.

        Raises:
            LeadershipLostError: the fence refused the write.
            PresetNotFoundError: no preset ``params["preset_id"]``.
        """
        row = self._db.fetchone(cur, statement, params)
        if row is None or (token is not None and not row[0]):
            raise lost(token or "")
        if row[1] is None:
            raise PresetNotFoundError(params["preset_id"])
        _, template_id, version_id, raw_parameters, active = row
        return template_id, version_id, raw_parameters, bool(active)

    def record_submits(
        self,
        submitted: Sequence[UUID],
        *,
        now: datetime,
        not_submitted: Sequence[UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        """One statement, its fence included."""
        handed, dropped = check_record_submits(submitted, now, not_submitted)
        if not handed and not dropped:
            return
        params = {
            "submitted": list(handed),
            "not_submitted": list(dropped),
            "now": now,
            "never": NOT_SUBMITTED_ERROR,
        }
        self._fenced(lease, sql.RECORD_SUBMITS, params)

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """One statement, its fence included, that locks and re-checks the row."""
        check_id_at("instance_id", instance_id, "now", now)
        build_id = uuid.uuid4()
        params = {"id": instance_id, "build_id": build_id, "now": now}
        (row,) = self._fenced(lease, sql.DELETE_PREBUILD, params)
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
        """One statement, its fence included."""
        check_id_at("preset_id", preset_id, "now", now)
        params = {"preset_id": preset_id, "now": now}
        rows = self._fenced(lease, sql.CANCEL_PENDING, params)
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
        """One statement, its fence included."""
        check_fail_stuck_builds(older_than, now)
        params = {
            "older_than": older_than,
            "now": now,
            "error": _STUCK_ERROR,
            "never": NOT_SUBMITTED_ERROR,
        }
        rows = self._fenced(lease, sql.FAIL_STUCK, params)
        return [codecs.build(r[1:]) for r in rows if r[1] is not None]

    # -- provisioner reports ---------------------------------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """One statement."""
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
        """One statement, its fence included."""
        check_build_finished(build_id, now, succeeded, error_kind, error)
        status = BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED
        params = {
            "id": build_id,
            "now": now,
            "status": status.value,
            "succeeded": bool(succeeded),
            "error_kind": error_kind,
            "error": error,
        }
        (row,) = self._fenced(lease, sql.BUILD_FINISHED, params)
        if not row[1]:
            raise BuildNotFoundError(build_id)

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """One statement."""
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
        """One ``UPDATE … FOR UPDATE SKIP LOCKED`` (``claim.py``)."""
        args = (preset_id, user_id, name, lifecycle, now, version_id, not_before)
        check_store_claim(*args)
        return _claim.claim(self._db, None, *args)

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
        """:meth:`claim` in one statement that also reads and checks the stamp."""
        args = (preset_id, user_id, name, lifecycle, now, version_id, not_before)
        check_claim_if_unchanged(stamp, *args)
        return _claim.claim(self._db, stamp, *args)

    def claim_id_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        now: datetime,
        autostart_schedule: str | None,
        next_start_at: datetime | None,
        ttl: timedelta | None,
        version_id: UUID,
        not_before: datetime | None,
    ) -> UUID | None:
        """
        :meth:`claim_if_unchanged` returning only the ID
        (:class:`~prebuilds.interfaces.LeanClaims`): one statement binding
        only what a claim sets.
        """
        args = (
            stamp,
            preset_id,
            user_id,
            name,
            now,
            autostart_schedule,
            next_start_at,
            ttl,
            version_id,
            not_before,
        )
        check_claim_id_if_unchanged(*args)
        return _claim.claim_id(self._db, *args)

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
        """One query."""
        check_list_instances(preset_id, owner_id, include_deleted)
        params = {
            "preset_id": preset_id,
            "owner_id": owner_id,
            "include_deleted": include_deleted,
        }
        return [codecs.instance(r) for r in self._read_all(sql.LIST_INSTANCES, params)]

    def get_build(self, build_id: UUID) -> Build:
        """The build with *build_id*."""
        check_uuid("build_id", build_id)
        row = self._read_one(sql.GET_BUILD, {"id": build_id})
        if row is None:
            raise BuildNotFoundError(build_id)
        return codecs.build(row)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """One query."""
        check_optional_uuid("instance_id", instance_id)
        rows = self._read_all(sql.LIST_BUILDS, {"instance_id": instance_id})
        return [codecs.build(r) for r in rows]

    # -- plumbing ----------------------------------------------------------------------
    def _write(self, template: str, params: dict[str, Any]) -> int:
        """Run one statement on its own; its row count."""
        with self._db.statement() as cur:
            return self._db.execute(cur, template, params)

    def _read_all(
        self, template: str, params: dict[str, Any] | None = None
    ) -> list[Row]:
        """Run one statement on its own; its rows."""
        with self._db.statement() as cur:
            return self._db.fetchall(cur, template, params)

    def _read_one(
        self, template: str, params: dict[str, Any] | None = None
    ) -> Row | None:
        """Run one statement on its own; its first row, if any."""
        rows = self._read_all(template, params)
        return rows[0] if rows else None

    def _fenced(
        self, lease: Lease | None, template: str, params: dict[str, Any]
    ) -> list[Row]:
        """
        Run a statement that *lease* fences, on its own; its rows, the
        fence's verdict first.

        Raises:
            LeadershipLostError: the lease no longer leads (nothing written).
        """
        token = fence_token(lease)
        rows = self._read_all(template, {**params, "lease": token})
        if token is not None and not rows[0][0]:
            raise lost(token)
        return rows

    def _borrow(self) -> AbstractContextManager[Connection]:
        """A connection of the store's, in autocommit mode (for raw SQL in tests)."""
        return self._db.borrow()

    def _q(self, template: str) -> str:
        """*template* with the schema and the pool owner filled in."""
        return self._db.q(template)
