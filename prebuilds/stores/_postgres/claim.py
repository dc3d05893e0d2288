"""
PostgresStore's claim, the hot path: one ``UPDATE`` whose sub-select takes
the oldest claimable row from the partial index ``instances_claimable``
``FOR UPDATE SKIP LOCKED``. The row lock re-checks the conditions on the
newest row version, so an empty result is a miss, never a lost race. The
stamped claim gates the sub-select on the preset's stamp and returns the
stamp it read, telling a changed preset from an empty pool in one round trip.

Kept lean: a raw cursor kept on the connection, positional parameters,
binary results, three columns returned, no context managers. The lean claim
(:func:`claim_id`, StoreClaimer's) goes further: it skips psycopg's cursor
and talks to libpq (``PGconn.exec_prepared``, which lets go of the GIL while
it waits), its statement prepared once per connection, its parameters encoded
and its two result columns decoded here, in binary.
"""

# Assembled from this module's constants only.
# ruff: noqa: S608

from __future__ import annotations

import hashlib
import operator
import struct

from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
import psycopg
import psycopg.errors

from psycopg import pq

from prebuilds._records import Instance, Lifecycle
from prebuilds.exceptions import PresetChangedError, StoreError
from prebuilds.stores._common import claimed_instance
from prebuilds.stores._postgres.codecs import utc
from prebuilds.stores._postgres.sql import ONE_ROW


if TYPE_CHECKING:
    from psycopg.abc import Buffer

    from prebuilds.stores._postgres.connections import Connection, Connections

#: The attribute of a connection holding its claim cursor.
_CURSOR = "_prebuilds_claim_cursor"

#: The lifecycle's fields, in order: parameters $7 to $14.
_LIFECYCLE = tuple(f.name for f in attrs.fields(Lifecycle))
_lifecycle = operator.attrgetter(*_LIFECYCLE)
# $1 preset, $2 version, $3 cut-off (NULL: none), $4 user, $5 name, $6 now,
# $7-$14 the lifecycle, $15 the stamp.
_UPDATE = f"""
    UPDATE {{s}}.instances i
    SET owner_id = $4, name = $5, claimed_at = $6,
        {", ".join(f"{name} = ${n}" for n, name in enumerate(_LIFECYCLE, 7))}
    WHERE i.id = (
            SELECT c.id
            FROM {{s}}.instances c
            WHERE c.preset_id = $1
                AND c.owner_id = '{{pool}}' AND NOT c.deleted AND c.ready
                AND c.latest_transition = 'start' AND c.latest_status = 'succeeded'
                AND c.template_version_id = $2
                AND c.created_at >= coalesce($3::timestamptz, '-infinity')
                {{gate}}
            ORDER BY c.created_at, c.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        AND i.owner_id = '{{pool}}'
    RETURNING i.id, i.template_id, i.created_at
"""
CLAIM = _UPDATE.replace("{gate}", "")
# The gate is a one-time filter of the sub-select: when the stamp changed,
# no candidate is read or locked.
_GATED = _UPDATE.replace("{gate}", "AND (SELECT stamp FROM preset) = $15")
CLAIM_IF_UNCHANGED = f"""
    WITH preset AS MATERIALIZED (
        SELECT p.stamp FROM {{s}}.presets p WHERE p.id = $1
    ),
    claimed AS ({_GATED})
    SELECT (SELECT stamp FROM preset), claimed.*
    {ONE_ROW} claimed ON true
"""


# LeanClaims' claim: only what a claim sets is bound (the cleared lifecycle
# columns are constants, now bound once), only the ID returned. $1 preset,
# $2 version, $3 cut-off, $4 user, $5 name, $6 now, $7 autostart, $8 next
# start, $9 TTL, $10 the stamp.
_SET_LEAN = (
    "owner_id = $4, name = $5, claimed_at = $6, autostart_schedule = $7,"
    " next_start_at = $8, ttl = $9, deadline = NULL, max_deadline = NULL,"
    " dormant_at = NULL, deleting_at = NULL, last_used_at = $6"
)
_SET_FULL = "owner_id = $4, name = $5, claimed_at = $6,\n        " + ", ".join(
    f"{name} = ${n}" for n, name in enumerate(_LIFECYCLE, 7)
)
assert _SET_FULL in _GATED  # noqa: S101
_GATED_LEAN = (
    _GATED.replace(_SET_FULL, _SET_LEAN)
    .replace("= $15", "= $10")
    .replace("RETURNING i.id, i.template_id, i.created_at", "RETURNING i.id")
)
CLAIM_ID_IF_UNCHANGED = f"""
    WITH preset AS MATERIALIZED (
        SELECT p.stamp FROM {{s}}.presets p WHERE p.id = $1
    ),
    claimed AS ({_GATED_LEAN})
    SELECT (SELECT stamp FROM preset), claimed.id
    {ONE_ROW} claimed ON true
"""


def claim_id(  # noqa: PLR0917 - the claim's arguments, in order
    db: Connections,
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
    Claim with :data:`CLAIM_ID_IF_UNCHANGED`: the claimed instance's ID.

    Sent through libpq itself (:func:`_exec_lean`): parameters encoded here
    in binary, results decoded here, the statement prepared once per
    connection. psycopg's cursor spent about 40 µs of client CPU on a claim
    adapting, preparing and fetching; this about a tenth of that.

    Raises:
        PresetChangedError: the stamp is not *stamp* (or no such preset).
        StoreError: the driver failed.
    """
    values = [
        preset_id.bytes,
        version_id.bytes,
        None if not_before is None else _timestamptz(not_before),
        user_id.bytes,
        name,
        _timestamptz(now),
        autostart_schedule,
        None if next_start_at is None else _timestamptz(next_start_at),
        None if ttl is None else _interval(ttl),
        _INT8.pack(stamp),
    ]
    row = _exec_lean(db, db.q(CLAIM_ID_IF_UNCHANGED), values)
    if row is None or row[0] != stamp:
        raise PresetChangedError(preset_id)
    return row[1]


def claim(  # noqa: PLR0917 - the claim's arguments, in order
    db: Connections,
    stamp: int | None,
    preset_id: UUID,
    user_id: UUID,
    name: str,
    lifecycle: Lifecycle,
    now: datetime,
    version_id: UUID,
    not_before: datetime | None,
) -> Instance | None:
    """
    Claim with :data:`CLAIM`, or :data:`CLAIM_IF_UNCHANGED` given a *stamp*.

    Raises:
        PresetChangedError: the stamp is not *stamp* (or no such preset).
        StoreError: the driver failed.
    """
    params: tuple[Any, ...] = (preset_id, version_id, not_before, user_id, name, now)
    params += _lifecycle(lifecycle)
    if stamp is not None:
        params = (*params, stamp)
    sql = db.q(CLAIM if stamp is None else CLAIM_IF_UNCHANGED)
    row = _one_row(db, sql, params)
    if stamp is not None:
        if row is None or row[0] != stamp:
            raise PresetChangedError(preset_id)
        row = None if row[1] is None else row[1:]
    if row is None:
        return None
    return claimed_instance(
        instance_id=row[0],
        template_id=row[1],
        created_at=utc(row[2]),
        preset_id=preset_id,
        version_id=version_id,
        user_id=user_id,
        name=name,
        lifecycle=lifecycle,
        now=now,
    )


def _cursor(conn: Connection) -> psycopg.RawCursor[Any]:
    """
    The raw cursor claims run on *conn*, kept on the connection (a new cursor
    per claim cost about 13 µs of client CPU with 16 threads, a quarter of
    the client's share of a claim).
    """
    cur: psycopg.RawCursor[Any] | None = getattr(conn, _CURSOR, None)
    if cur is None or cur.closed:
        cur = psycopg.RawCursor(conn)
        with suppress(AttributeError):  # a connection class without __dict__
            setattr(conn, _CURSOR, cur)
    return cur


def _one_row(db: Connections, sql: str, params: tuple[Any, ...]) -> Any:
    """Run one claim statement on a pooled connection; its row, or None."""
    conn, switched = db.acquire()
    try:
        db.count()
        try:
            row = _cursor(conn).execute(sql, params, binary=True).fetchone()
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e
    except BaseException:
        db.abandon(conn, switched=switched)
        raise
    db.release(conn, switched=switched)
    return row


# -- the lean claim, through libpq -------------------------------------------------------

#: The attribute of a connection holding the names of the statements
#: prepared on it here.
_PREPARED = "_prebuilds_prepared"
#: The parameters' types (OIDs) of CLAIM_ID_IF_UNCHANGED, $1 to $10: uuid,
#: uuid, timestamptz, uuid, text, timestamptz, text, timestamptz, interval,
#: int8. All sent in binary; text is the client encoding's bytes either way.
_LEAN_TYPES = (2950, 2950, 1184, 2950, 25, 1184, 25, 1184, 1186, 20)
_LEAN_FORMATS = (1,) * len(_LEAN_TYPES)
_TEXT = (4, 6)  # the text parameters' places
_INT8 = struct.Struct(">q")
_INTERVAL = struct.Struct(">qii")
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_NO_SUCH_STATEMENT = b"26000"  # invalid_sql_statement_name: deallocated
_DUPLICATE_STATEMENT = b"42P05"  # duplicate_prepared_statement
_UNNAMED_AFTER = 2  # times a connection's statements were found dropped
_names: dict[str, bytes] = {}


def _timestamptz(at: datetime) -> bytes:
    """*at* (aware) as a binary timestamptz: microseconds since 2000 UTC."""
    return _INT8.pack((at - _PG_EPOCH) // _MICROSECOND)


def _interval(duration: timedelta) -> bytes:
    """*duration* as a binary interval, as psycopg sends it (days kept apart)."""
    return _INTERVAL.pack(
        duration.seconds * 1_000_000 + duration.microseconds, duration.days, 0
    )


def _statement_name(sql: str) -> bytes:
    """The name *sql* is prepared under: its digest (the schema is in it)."""
    name = _names.get(sql)
    if name is None:
        digest = hashlib.sha256(sql.encode()).hexdigest()[:24]
        name = _names.setdefault(sql, f"prebuilds_{digest}".encode())
    return name


def _exec_lean(
    db: Connections, sql: str, values: list[Any]
) -> tuple[int, UUID | None] | None:
    """
    Run the lean claim *sql* with *values* (binary, text still str; encoded
    in place) on a pooled connection: its row (the stamp read, the claimed
    ID or None), or None when there was no row.
    """
    conn, switched, since = db.acquire_claim()
    try:
        try:
            result = _exec_prepared(conn, sql, values, pooled=db.pool is not None)
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e
    except BaseException:
        db.abandon_claim(conn, switched=switched)
        raise
    db.release_claim(conn, since)
    if result.ntuples == 0:
        return None
    stamp = result.get_value(0, 0)
    claimed = result.get_value(0, 1)
    return (
        -1 if stamp is None else _INT8.unpack(stamp)[0],
        None if claimed is None else _load_uuid(claimed),
    )


def _exec_prepared(
    conn: Connection, sql: str, params: list[Any], *, pooled: bool
) -> pq.abc.PGresult:
    """
    *sql* with *params* on *conn* (its text encoded here, in place),
    through libpq: prepared once per
    connection when *conn* is pooled (a connection of its own per call is
    sent the statement unnamed, one round trip either way).

    A statement deallocated behind the store's back (a host's
    ``DISCARD ALL``) is prepared again, and on a connection where that
    keeps happening the statement is sent unnamed (:class:`_Prepared`).

    Raises:
        psycopg.Error: the server or the connection failed.
    """
    pgconn = conn.pgconn
    # conn.info.encoding maps the server's name for it each time (~1.5 µs).
    utf8 = pgconn.parameter_status(b"client_encoding") == b"UTF8"
    encoding = "utf-8" if utf8 else conn.info.encoding
    for i in _TEXT:
        if params[i] is not None:
            params[i] = params[i].encode(encoding)
    state: _Prepared | None = getattr(conn, _PREPARED, None) if pooled else None
    if state is None and pooled:
        state = _Prepared()
        with suppress(AttributeError):  # a connection class without __dict__
            setattr(conn, _PREPARED, state)
    if state is None or state.dropped >= _UNNAMED_AFTER:
        return _checked(
            conn,
            pgconn.exec_params(
                sql.encode(), params, _LEAN_TYPES, _LEAN_FORMATS, result_format=1
            ),
        )
    name = _statement_name(sql)
    for attempt in range(2):
        if name not in state.names:
            result = pgconn.prepare(name, sql.encode(), _LEAN_TYPES)
            if _sqlstate(result) != _DUPLICATE_STATEMENT:
                _checked(conn, result)
            state.names.add(name)
        result = pgconn.exec_prepared(name, params, _LEAN_FORMATS, result_format=1)
        if attempt == 0 and _sqlstate(result) == _NO_SUCH_STATEMENT:
            state.names.clear()
            state.dropped += 1
            continue
        break
    return _checked(conn, result)


class _Prepared:
    """
    What was prepared on one connection: the statements' names, and how
    many times they were found dropped (a host whose pool resets its
    connections with ``DISCARD ALL`` would cost every claim three round
    trips: after the second time, that connection's claims go unnamed).
    """

    __slots__ = ("dropped", "names")

    def __init__(self) -> None:
        self.names: set[bytes] = set()
        self.dropped = 0


# Statuses as plain ints: an enum member's lookup and hash are Python code.
_FATAL_ERROR = int(pq.ExecStatus.FATAL_ERROR)
_OK = frozenset((int(pq.ExecStatus.COMMAND_OK), int(pq.ExecStatus.TUPLES_OK)))


def _sqlstate(result: pq.abc.PGresult) -> bytes | None:
    """*result*'s SQLSTATE if it is an error, else None."""
    if result.status != _FATAL_ERROR:
        return None
    return result.error_field(pq.DiagnosticField.SQLSTATE)


def _checked(conn: Connection, result: pq.abc.PGresult) -> pq.abc.PGresult:
    """*result*, unless it is an error (raised as psycopg's error)."""
    if result.status in _OK:
        return result
    raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _uuid_loader() -> Callable[[Buffer], UUID]:
    """
    A binary uuid's decoder: psycopg's loader (C in ``psycopg[binary]``,
    about a tenth of ``UUID(bytes=...)``) when it gives back the same UUID,
    else ``UUID(bytes=...)`` (a host may have registered a loader of its own).
    """
    sample = UUID("0123a567-89ab-4def-8123-456789abcdef")
    with suppress(Exception):
        loader = psycopg.adapters.get_loader(_UUID_OID, pq.Format.BINARY)
        if loader is not None:
            load: Callable[[Buffer], Any] = loader(_UUID_OID).load
            loaded = load(sample.bytes)
            if type(loaded) is UUID and loaded == sample:
                return load
    return lambda data: UUID(bytes=bytes(data))


_UUID_OID = 2950
_load_uuid = _uuid_loader()
