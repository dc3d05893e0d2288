""":class:`SQLiteStore`: the embedded default store, on :mod:`sqlite3`."""

from __future__ import annotations

import os
import sqlite3

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import attrs

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
from prebuilds._model import Transition
from prebuilds._pool import PoolFacts, PresetFacts
from prebuilds._records import (
    NOT_SUBMITTED_ERROR,
    NOT_SUBMITTED_KIND,
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
    PresetChangedError,
    PresetNotFoundError,
    StoreError,
    TemplateNotFoundError,
)
from prebuilds.stores._common import (
    build_request,
    dumps,
    parameters_json,
    schedules_json,
    start_requests,
)
from prebuilds.stores._sqlite import codecs, schema, sql
from prebuilds.stores._sqlite.connections import Connections
from prebuilds.stores._sqlite.lease import Leases


if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from types import TracebackType

    from typing_extensions import Self

    from prebuilds._model import PresetStatus
    from prebuilds.stores._sqlite.connections import Tx

_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STUCK_ERROR = "stuck: no result before the timeout"
#: How many ID texts a store remembers before it forgets them all.
_TEXTS = 4096


class SQLiteStore:
    """
    The embedded default :class:`~prebuilds.interfaces.Store` (with
    :class:`~prebuilds.interfaces.StampedClaims`,
    :class:`~prebuilds.interfaces.BatchCreates` and
    :class:`~prebuilds.interfaces.GroupedCreates`), on :mod:`sqlite3`; see
    :doc:`/stores`.

    Args:
        path: A database file (created if missing), or ``":memory:"``.
        lease_ttl: How long a :meth:`leader` lease lasts if its holder dies
            without releasing it (wall clock).
        busy_timeout: Seconds a connection waits for another writer.
        read_only: Open an existing file that is never created, migrated
            or written; every write raises StoreError.

    Raises:
        SchemaVersionError: the file was written by a newer library.
        StoreError: the file cannot be opened or migrated; read-only: it
            does not exist, is not a prebuilds database, or needs a
            migration; the SQLite library is older than 3.35.
        InvalidInputError: a non-positive *lease_ttl* or a negative
            *busy_timeout*; *read_only* with an in-memory database.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The schema version moved from ``PRAGMA user_version`` to the table
       ``prebuilds_schema``; *read_only* added. Schema version 2: each
       instance keeps its latest build, each preset a stamp.
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
        if not isinstance(read_only, bool):
            raise InvalidInputError("read_only", read_only, "must be a bool")
        path = os.fspath(path)
        if read_only and path in {"", ":memory:"}:
            raise InvalidInputError(
                "read_only", read_only, "an in-memory database cannot be read-only"
            )
        schema.check_library()
        if read_only and not Path(path).is_file():
            raise StoreError(f"no SQLite database at {path!r}")
        busy_timeout = float(busy_timeout)
        self._db = Connections(
            path,
            busy_timeout=busy_timeout,
            read_only=read_only,
            on_fork=lambda: self._leases.forget(),  # noqa: PLW0108 - made below
        )
        self._leases = Leases(
            self._db, lease_ttl_us=lease_ttl // _US, busy_timeout=busy_timeout
        )
        self._pool = codecs.PoolDecoder()
        # The text of preset and version IDs claims name again and again
        # (str(UUID) is a tenth of a claim's Python time), by the UUID's
        # int: a UUID's hash is a Python method, an int's is not.
        self._texts: dict[int, str] = {}
        #: The last pool read: its key, its facts and the rows they came from.
        self._last_pool: (
            tuple[tuple[Any, ...], PoolFacts, tuple[list[Any], list[Any]]] | None
        ) = None
        #: The open connections that count their writes to the pool
        #: (sql.WATCH_POOL).
        self._watched: set[sqlite3.Connection] = set()
        try:
            handle = self._db.first()
            with handle.lock:
                if read_only:
                    schema.check_readable(handle.conn, path=path, count=self._db.count)
                else:
                    schema.migrate(
                        handle.conn,
                        path=path,
                        wal=not self._db.memory,
                        busy_timeout=busy_timeout,
                        count=self._db.count,
                    )
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> str:
        """The database path given to the constructor."""
        return self._db.path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened read-only."""
        return self._db.read_only

    def close(self) -> None:
        """Close every connection this store opened; later calls raise StoreError."""
        self._db.close()
        self._leases.close()

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
        if self.read_only:
            return f"SQLiteStore({self.path!r}, read_only=True)"
        return f"SQLiteStore({self.path!r})"

    def statement_count(self) -> int:
        """
        How many SQL statements this store has executed so far, over all its
        connections (``BEGIN``/``COMMIT`` included).
        """
        return self._db.statement_count()

    def _read(self) -> AbstractContextManager[Tx]:
        return self._db.transaction(write=False)

    def _write(self, lease: Lease | None = None) -> AbstractContextManager[Tx]:
        return self._leases.write(lease)

    def _row(self, query: str, key: UUID, missing: Callable[[UUID], Exception]) -> Any:
        """The row *query* reads for *key*; *missing* if there is none."""
        with self._read() as tx:
            row = tx.one(query, (str(key),))
        if row is None:
            raise missing(key)
        return row

    # -- configuration -----------------------------------------------------------------

    def put_template(self, template: Template) -> None:
        """An upsert; the stamps of the template's presets change."""
        check_instance("template", template, Template)
        with self._write() as tx:
            tx.execute(sql.PUT_TEMPLATE, _values(template, sql.TEMPLATE_COLUMNS))
            tx.execute(sql.STAMP_TEMPLATE, (str(template.id),))

    def put_preset(self, preset: PresetConfig) -> None:
        """An upsert that keeps status and invalidation; the stamp changes."""
        check_instance("preset", preset, PresetConfig)
        values = _values(preset, sql.PRESET_CONFIG)
        values[-2:] = [
            dumps(schedules_json(preset.schedules)),
            dumps(parameters_json(preset.parameters)),
        ]
        with self._write() as tx:
            if tx.one(sql.TEMPLATE_EXISTS, (values[1],)) is None:
                raise TemplateNotFoundError(preset.template_id)
            tx.execute(sql.PUT_PRESET, values)

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """One ``UPDATE``; the preset's stamp changes."""
        check_id_at("preset_id", preset_id, "at", at)
        at_us = codecs.to_us("at", at)
        with self._write() as tx:
            if tx.execute(sql.INVALIDATE_PRESET, (at_us, str(preset_id))).rowcount == 0:
                raise PresetNotFoundError(preset_id)

    def set_paused(self, paused: bool) -> None:
        """Persisted in ``prebuilds_settings``."""
        check_bool("paused", paused)
        with self._write() as tx:
            tx.execute(sql.SET_PAUSED, ("paused", "true" if paused else "false"))

    def is_paused(self) -> bool:
        """One ``SELECT`` from ``prebuilds_settings``."""
        rows, _, _ = self._db.single(sql.IS_PAUSED)
        return bool(rows) and rows[0][0] == "true"

    def get_template(self, template_id: UUID) -> Template:
        """One ``SELECT``."""
        check_uuid("template_id", template_id)
        row = self._row(sql.GET_TEMPLATE, template_id, TemplateNotFoundError)
        with codecs.decoding("template"):
            return codecs.template_from_row(row)

    def read_preset(self, preset_id: UUID) -> PresetFacts:
        """One ``SELECT`` of the preset joined with its template."""
        check_read_preset(preset_id)
        row = self._row(sql.READ_PRESET, preset_id, PresetNotFoundError)
        return codecs.facts_from_row(row)

    # -- the reconciler ------------------------------------------------------------------

    def leader(self) -> AbstractContextManager[Lease]:
        """
        A lease row, renewed every third of ``lease_ttl`` while the scope
        runs and released when it exits; a dead holder's expires.
        """
        return self._leases.scope()

    def read_pool(self) -> PoolFacts:
        """
        One statement that keys the read, then ``BEGIN``, two queries and
        ``COMMIT`` whatever the pool's size; rows equal to the last read's
        are not decoded again, and if every row is, the last read's facts
        (the same object) are returned. While the pool's tables did not
        change since the last read on this connection (``data_version``
        counts other connections' commits, temp triggers this connection's
        writes to the pool's tables), the last read's facts, in that one
        statement: a commit elsewhere (the leader lease, pausing, a claim
        that found nothing) does not make the pool read again.
        """
        conn = self._db.handle().conn
        if conn not in self._watched:
            self._watch(conn)
        # A commit after this point changes the key of the next read.
        read_only = self._db.read_only
        rows, _, conn = self._db.single(
            sql.POOL_KEY_UNWATCHED if read_only else sql.POOL_KEY
        )
        key = (conn, *rows[0])
        last = self._last_pool
        if last is not None and last[0] == key:
            return last[1]
        if not read_only and (last is None or last[0][:2] != key[:2]):
            # Another connection committed: if it dropped a pool table and
            # made it again, this connection's triggers went with it.
            handle = self._db.handle()
            with handle.lock:
                watching = handle.conn.execute(sql.WATCHING).fetchone()[0]
            if not watching:
                self._watch(conn)
                key = (conn, key[1], None)  # read, and read again next time
        with self._read() as tx:
            preset_rows = tx.all(sql.POOL_PRESETS)
            instance_rows = tx.all(sql.POOL_INSTANCES)
        read = (preset_rows, instance_rows)
        if last is not None and last[2] == read:
            # Commits that left the pool as it was (another connection's:
            # the lease renewed, a claim that found nothing): the same facts
            # object, which a caller recognises by identity and reuses all
            # it derived from.
            self._last_pool = (key, last[1], last[2])
            return last[1]
        with codecs.decoding("pool"):
            presets, invalid = self._pool.presets(preset_rows)
            instances = self._pool.instances(instance_rows)
            facts = PoolFacts(
                presets=presets, instances=instances, invalid_presets=invalid
            )
        self._last_pool = (key, facts, read)
        return facts

    def _watch(self, conn: sqlite3.Connection) -> None:
        """
        Have this thread's connection *conn* count its writes to the pool's
        tables (sql.WATCH_POOL): set up once, like the connection's pragmas,
        and not counted in :meth:`statement_count`.

        Raises:
            StoreError: SQLite refused.
        """
        if not self._db.read_only:
            handle = self._db.handle()
            with handle.lock:
                try:
                    for statement in sql.WATCH_POOL:
                        handle.conn.execute(statement)
                except sqlite3.Error as e:
                    msg = f"SQLite: cannot watch the pool's tables: {e}"
                    raise StoreError(msg) from e
        # Not the connections of threads that ended (closed since).
        open_ = {handle.conn for handle in self._db.handles}
        self._watched = {c for c in self._watched if c in open_} | {conn}

    def create_prebuild(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        name: str,
        lease: Lease | None = None,
    ) -> BuildRequest | None:
        """The instance and its start build in one fenced write transaction."""
        check_create_prebuild(preset_id, now, name)
        (requests,) = self._create(
            ((preset_id, (name,)),), codecs.to_us("now", now), lease, submitted=True
        )
        return requests[0] if requests else None

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        """
        Every instance and its start build (not submitted) in one fenced
        write transaction: one source read, then two ``executemany`` inserts.
        """
        checked = check_create_prebuilds(preset_id, now, names)
        (requests,) = self._create(
            ((preset_id, checked),), codecs.to_us("now", now), lease, submitted=False
        )
        return requests

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        """
        ``create_prebuilds`` per (preset ID, names) pair in one fenced write
        transaction (one commit: most of a creation's cost): one source
        read per preset, then two ``executemany`` inserts for them all.
        """
        checked = check_create_prebuilds_grouped(groups, now)
        return self._create(checked, codecs.to_us("now", now), lease, submitted=False)

    def record_submits(
        self,
        submitted: Sequence[UUID],
        *,
        now: datetime,
        not_submitted: Sequence[UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        """One fenced write transaction: one ``UPDATE`` for the submitted builds,
        two for the canceled ones (their instances withdrawn, then them)."""
        handed, dropped = check_record_submits(submitted, now, not_submitted)
        if not handed and not dropped:
            return
        now_us = codecs.to_us("now", now)
        with self._write(lease) as tx:
            if handed:
                tx.execute(sql.mark_submitted(len(handed)), [str(b) for b in handed])
            if dropped:
                ids = [str(b) for b in dropped]
                instances, builds = sql.cancel_unsubmitted(len(ids))
                tx.execute(instances, ids)
                tx.execute(builds, [now_us, NOT_SUBMITTED_ERROR, *ids])

    def _create(
        self,
        groups: Sequence[tuple[UUID, Sequence[str]]],
        now_us: int,
        lease: Lease | None,
        *,
        submitted: bool,
    ) -> list[list[BuildRequest]]:
        """
        Each (preset ID, names) pair's instances and start builds in one
        fenced write transaction (one commit: most of a creation's cost):
        one source read per preset, then two ``executemany`` inserts for
        them all; per pair its requests (none for an inactive preset).
        """
        instances: list[tuple[object, ...]] = []
        builds: list[tuple[object, ...]] = []
        made: list[tuple[UUID, Any, list[tuple[UUID, UUID]], Sequence[str]]] = []
        with self._write(lease) as tx:
            for preset_id, names in groups:
                preset = str(preset_id)
                row = tx.one(sql.CREATE_SOURCE, (preset,))
                if row is None:
                    raise PresetNotFoundError(preset_id)
                template_id, version_id, _, active, deleted, deprecated = row
                if version_id != active or deleted or deprecated or not names:
                    made.append((preset_id, None, [], ()))
                    continue
                ids = [(uuid4(), uuid4()) for _ in names]
                for (i, b), name in zip(ids, names, strict=True):
                    instance, build = str(i), str(b)  # each formatted once
                    instances.append(
                        (
                            instance,
                            preset,
                            template_id,
                            version_id,
                            name,
                            now_us,
                            now_us,
                            build,
                            now_us,
                        )
                    )
                    builds.append(
                        (build, instance, preset, version_id, "start", 1, now_us)
                        if submitted
                        else (build, instance, preset, version_id, now_us)
                    )
                made.append((preset_id, row, ids, names))
            if instances:
                tx.executemany(sql.INSERT_INSTANCE, instances)
                tx.executemany(
                    sql.INSERT_BUILD if submitted else sql.INSERT_UNSUBMITTED, builds
                )
            # Built before the commit: a row that cannot be read back rolls
            # the creation back instead of leaving it behind.
            with codecs.decoding("preset"):
                return [
                    start_requests(
                        ids,
                        names,
                        preset_id=preset_id,
                        template_id=UUID(row[0]),
                        template_version_id=UUID(row[1]),
                        parameters=row[2],
                    )
                    if ids
                    else []
                    for preset_id, row, ids, names in made
                ]

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """One ``UPDATE … RETURNING`` of the instance and an ``INSERT``, fenced."""
        check_id_at("instance_id", instance_id, "now", now)
        now_us = codecs.to_us("now", now)
        with self._write(lease) as tx:
            return _delete(tx, sql.DELETE_INSTANCE, str(instance_id), now_us)

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """One fenced write transaction; an orphan delete per canceled build."""
        check_id_at("preset_id", preset_id, "now", now)
        now_us = codecs.to_us("now", now)
        requests: list[BuildRequest] = []
        with self._write(lease) as tx:
            if tx.one(sql.PRESET_EXISTS, (str(preset_id),)) is None:
                raise PresetNotFoundError(preset_id)
            for build, instance in tx.all(sql.CANCELABLE, (str(preset_id),)):
                tx.execute(sql.CANCEL_BUILD, (now_us, build))
                request = _delete(tx, sql.ORPHAN_DELETE, instance, now_us, orphan=True)
                if request is not None:
                    requests.append(request)
        return requests

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """One fenced ``UPDATE``; the stamp stays."""
        check_set_preset_status(preset_id, status)
        with self._write(lease) as tx:
            cursor = tx.execute(sql.SET_PRESET_STATUS, (status.value, str(preset_id)))
            if cursor.rowcount == 0:
                raise PresetNotFoundError(preset_id)

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """
        One statement that checks the lease and looks for a stuck build;
        only if there is one, a fenced write transaction: the builds, then their
        instances (a steady pass takes no write lock here).
        """
        check_fail_stuck_builds(older_than, now)
        params = {"older": codecs.to_us("older_than", older_than)}
        now_us = codecs.to_us("now", now)
        if not self._leases.any_fenced(sql.ANY_STUCK, params, lease):
            return []
        with self._write(lease) as tx:
            rows = tx.all(sql.STUCK_BUILDS, params)
            if not rows:
                return []
            tx.execute(sql.FAIL_STUCK_INSTANCES, params)
            tx.execute(
                sql.FAIL_STUCK_BUILDS,
                {
                    **params,
                    "now": now_us,
                    "error": _STUCK_ERROR,
                    "never": NOT_SUBMITTED_ERROR,
                },
            )
            finished_at = now.astimezone(timezone.utc)
            with codecs.decoding("build"):
                return [
                    attrs.evolve(
                        codecs.build_from_row(row[:-1]),
                        status=BuildStatus.CANCELED,
                        finished_at=finished_at,
                        error_kind=NOT_SUBMITTED_KIND,
                        error=NOT_SUBMITTED_ERROR,
                    )
                    if row[-1]
                    else attrs.evolve(
                        codecs.build_from_row(row[:-1]),
                        status=BuildStatus.FAILED,
                        finished_at=finished_at,
                        error_kind="timeout",
                        error=_STUCK_ERROR,
                    )
                    for row in rows
                ]

    # -- reports from the provisioner ------------------------------------------------------

    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """One ``UPDATE … RETURNING`` of the build, one of its instance."""
        check_id_at("build_id", build_id, "now", now)
        now_us = codecs.to_us("now", now)
        build = str(build_id)
        with self._write() as tx:
            rows = tx.all(sql.BUILD_STARTED, (now_us, build))
            if rows:
                tx.execute(
                    sql.BUILD_CHANGED,
                    {
                        "build": build,
                        "status": "running",
                        "deleted": 0,
                        "instance": rows[0][0],
                    },
                )
            elif tx.one(sql.BUILD_EXISTS, (build,)) is None:
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
        """One ``UPDATE … RETURNING`` of the build, one of its instance, fenced."""
        check_build_finished(build_id, now, succeeded, error_kind, error)
        now_us = codecs.to_us("now", now)
        status = (BuildStatus.SUCCEEDED if succeeded else BuildStatus.FAILED).value
        build = str(build_id)
        with self._write(lease) as tx:
            rows = tx.all(
                sql.BUILD_FINISHED,
                (status, now_us, now_us, error_kind, error, build),
            )
            if not rows:
                if tx.one(sql.BUILD_EXISTS, (build,)) is None:
                    raise BuildNotFoundError(build_id)
                return
            [(instance, transition)] = rows
            gone = succeeded and transition == Transition.DELETE.value
            tx.execute(
                sql.BUILD_CHANGED,
                {
                    "build": build,
                    "status": status,
                    "deleted": int(gone),
                    "instance": instance,
                },
            )

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """One ``UPDATE`` (and, if it changed nothing, a look-up)."""
        check_set_ready(instance_id, ready)
        instance = str(instance_id)
        with self._write() as tx:
            cursor = tx.execute(sql.SET_READY, (int(ready), instance))
            if (
                cursor.rowcount == 0
                and tx.one(sql.INSTANCE_EXISTS, (instance,)) is None
            ):
                raise InstanceNotFoundError(instance_id)

    # -- claims -----------------------------------------------------------------------------

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
        """One ``UPDATE … RETURNING`` in one ``BEGIN IMMEDIATE`` transaction."""
        check_store_claim(
            preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        params = _claim_params(
            preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        with self._write() as tx:
            rows = tx.all(sql.CLAIM, params)
            # Read back before the commit: a claim whose row cannot be read
            # is rolled back, not left behind.
            with codecs.decoding("instance"):
                if not rows:
                    return None
                return codecs.claimed_instance(
                    rows[0], preset_id, version_id, user_id, name, lifecycle, now
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
        :meth:`claim` whose statement also checks the stamp; on a miss, the
        stamp is read in the same transaction.
        """
        check_claim_if_unchanged(
            stamp, preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        params = _claim_params(
            preset_id, user_id, name, lifecycle, now, version_id, not_before
        )
        with self._write() as tx:
            rows = tx.all(sql.CLAIM_IF_STAMP, (*params, str(preset_id), stamp))
            if rows:
                with codecs.decoding("instance"):
                    return codecs.claimed_instance(
                        rows[0], preset_id, version_id, user_id, name, lifecycle, now
                    )
            current = tx.one(sql.STAMP, (str(preset_id),))
        if current is None or current[0] != stamp:
            raise PresetChangedError(preset_id)
        return None

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
        (:class:`~prebuilds.interfaces.LeanClaims`): one ``UPDATE …
        RETURNING id`` binding only what a claim sets; on a miss, the stamp
        is read in the same transaction.
        """
        check_claim_id_if_unchanged(
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
        texts = self._texts
        preset = texts.get(preset_id.int) or self._text(preset_id)
        now_us = (now - _EPOCH) // _US
        # Encoded inline, as _claim_params does: every value was checked.
        params = (
            str(user_id),
            name,
            autostart_schedule,
            None if next_start_at is None else (next_start_at - _EPOCH) // _US,
            None if ttl is None else ttl // _US,
            now_us,
            now_us,
            preset,
            texts.get(version_id.int) or self._text(version_id),
            codecs.NO_CUTOFF if not_before is None else (not_before - _EPOCH) // _US,
            preset,
            stamp,
        )
        claimed, current = self._db.write_first(
            sql.CLAIM_ID_IF_STAMP, params, _claimed_id, sql.STAMP, (preset,)
        )
        if claimed is not None:
            return claimed
        if current is None or current[0] != stamp:
            raise PresetChangedError(preset_id)
        return None

    def _text(self, value: UUID) -> str:
        """``str(value)``, remembered (a few thousand at most)."""
        text = self._texts.get(value.int)
        if text is None:
            if len(self._texts) >= _TEXTS:
                self._texts.clear()
            text = self._texts[value.int] = str(value)
        return text

    # -- reads -------------------------------------------------------------------------------

    def get_instance(self, instance_id: UUID) -> Instance:
        """One ``SELECT``."""
        check_uuid("instance_id", instance_id)
        row = self._row(sql.GET_INSTANCE, instance_id, InstanceNotFoundError)
        with codecs.decoding("instance"):
            return codecs.instance_from_row(row)

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """One ``SELECT``."""
        check_list_instances(preset_id, owner_id, include_deleted)
        with self._read() as tx:
            rows = tx.all(
                sql.LIST_INSTANCES,
                {
                    "preset": codecs.encode("preset_id", preset_id),
                    "owner": codecs.encode("owner_id", owner_id),
                    "deleted": int(include_deleted),
                },
            )
        with codecs.decoding("instance"):
            return [codecs.instance_from_row(r) for r in rows]

    def get_build(self, build_id: UUID) -> Build:
        """One ``SELECT``."""
        check_uuid("build_id", build_id)
        row = self._row(sql.GET_BUILD, build_id, BuildNotFoundError)
        with codecs.decoding("build"):
            return codecs.build_from_row(row)

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """One ``SELECT``."""
        check_optional_uuid("instance_id", instance_id)
        with self._read() as tx:
            params = {"instance": codecs.encode("instance_id", instance_id)}
            rows = tx.all(sql.LIST_BUILDS, params)
        with codecs.decoding("build"):
            return [codecs.build_from_row(r) for r in rows]


def _values(record: object, columns: str) -> list[object]:
    """*record*'s attributes named by *columns*, as parameters."""
    return [codecs.encode(c, getattr(record, c)) for c in sql.names(columns)]


def _delete(
    tx: Tx, mark: str, instance: str, now_us: int, *, orphan: bool = False
) -> BuildRequest | None:
    """
    Make a pending delete the instance's latest build (*mark*: ``sql``'s
    DELETE_INSTANCE or ORPHAN_DELETE); its request, None if *mark* changed
    nothing.
    """
    build_id = uuid4()
    rows = tx.all(mark, (str(build_id), now_us, instance))
    if not rows:
        return None
    [(preset_id, template_id, version_id, name, number)] = rows
    values = (str(build_id), instance, preset_id, version_id, "delete", number)
    tx.execute(sql.INSERT_BUILD, (*values, now_us))
    with codecs.decoding("instance"):
        return build_request(
            build_id=build_id,
            instance_id=UUID(instance),
            preset_id=UUID(preset_id),
            template_id=UUID(template_id),
            template_version_id=UUID(version_id),
            transition="delete",
            name=name,
            orphan=orphan,
        )


def _claim_params(  # noqa: PLR0917 - a claim's arguments, checked in one place
    preset_id: UUID,
    user_id: UUID,
    name: str,
    lifecycle: Lifecycle,
    now: datetime,
    version_id: UUID,
    not_before: datetime | None,
) -> list[object]:
    """
    A claim's (checked) arguments as the parameters of ``sql.CLAIM``.

    Encoded inline, not by ``codecs.encode``: the arguments were checked
    and a Lifecycle's fields by its validators (aware datetimes, durations
    of at most 36,500 days: in SQLite's range), and the claim's hot path
    spent a fifth of its client time on generic encoding.
    """
    return [
        str(user_id),
        name,
        lifecycle.autostart_schedule,
        _us(lifecycle.next_start_at),
        None if lifecycle.ttl is None else lifecycle.ttl // _US,
        _us(lifecycle.deadline),
        _us(lifecycle.max_deadline),
        _us(lifecycle.dormant_at),
        _us(lifecycle.deleting_at),
        _us(lifecycle.last_used_at),
        (now - _EPOCH) // _US,
        str(preset_id),
        str(version_id),
        codecs.NO_CUTOFF if not_before is None else (not_before - _EPOCH) // _US,
    ]


def _claimed_id(row: Any) -> UUID:
    """
    The ID ``sql.CLAIM_ID_IF_STAMP`` returned.

    Raises:
        StoreError: the row cannot be decoded (the claim is rolled back).
    """
    try:
        return codecs.claimed_id(row)
    except (ValueError, TypeError, AttributeError) as e:
        raise StoreError(f"corrupt instance row in the SQLite store: {e}") from e


def _us(value: datetime | None) -> int | None:
    """A checked aware datetime (or None) as microseconds since the epoch."""
    return None if value is None else (value - _EPOCH) // _US
