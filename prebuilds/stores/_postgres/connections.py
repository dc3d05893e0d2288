"""PostgresStore's connections: borrowed for a call, given back whatever the state."""

from __future__ import annotations

import math
import os
import threading
import time

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from prebuilds._records import PREBUILDS_OWNER_ID
from prebuilds.exceptions import StoreError


Row = tuple[Any, ...]
Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]

BEGIN = "BEGIN"
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

_UNKNOWN = psycopg.pq.TransactionStatus.UNKNOWN  # broken or closed
_IDLE = psycopg.pq.TransactionStatus.IDLE
_IN_TRANSACTION = (
    psycopg.pq.TransactionStatus.INTRANS,
    psycopg.pq.TransactionStatus.INERROR,
)


#: Seconds a connection kept for claims (:meth:`Connections.acquire_claim`)
#: may serve them after it left the pool, before it goes back to it.
CLAIM_LEASE = 1.0


class Connections:
    """
    The store's source of connections (exactly one of *conninfo*, *pool*,
    *connect*), and the statements it sends, counted. Connections are used in
    autocommit mode (explicit ``BEGIN``/``COMMIT``); one that came without it
    is switched for the borrow and switched back.

    Claims on the own pool pass their connections to each other while any
    is in flight (:meth:`acquire_claim`, :meth:`release_claim`): with 16
    threads the pool's ``getconn`` and ``putconn`` per claim cost about a
    third of a claim's client CPU and doubled its p99. The last claim out
    gives them all back but its own, which the next call takes: one
    claimer's claims keep one warm connection (the pool hands its idle
    connections out in turn, which cost a lone claimer about a third of its
    rate). A connection out of the pool for :data:`CLAIM_LEASE` seconds goes
    back at its next use.

    Raises:
        StoreError: the own pool could not open a connection (naming why).
    """

    def __init__(
        self,
        *,
        conninfo: str | None,
        pool: ConnectionPool[Any] | None,
        connect: Callable[[], Connection] | None,
        schema: str,
        min_size: int,
        max_size: int,
        timeout: float,
    ) -> None:
        self.pool = pool
        self.closed = False
        self._connect = connect
        self._owns_pool = False
        self._timeout = timeout
        self._quoted = f'"{schema}"'
        self._sql: dict[str, str] = {}
        self._count_lock = threading.Lock()
        self._statements = 0
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, psycopg.Error | None] | None = None
        # Idle connections kept for claims, with when each left the pool (a
        # list's append and pop need no lock), and the claims in flight.
        self._kept: list[tuple[Connection, float]] = []
        self._in_flight = 0
        self.keeps = False
        if conninfo is not None:
            # Each attempt of the pool's gives up after the store's timeout:
            # an attempt with none can outlive the pool's close().
            own = ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs=with_connect_timeout(conninfo, {"autocommit": True}, timeout),
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
            self.pool = own
            self._owns_pool = True
            self.keeps = True

    def close(self) -> None:
        """Close the pool opened here (a host's pool is left open)."""
        if self.closed:
            return
        self.closed = True
        self._give_back_kept()
        if self._owns_pool and self.pool is not None:
            self.pool.close()

    @property
    def statements(self) -> int:
        """How many statements were sent (BEGIN/COMMIT included)."""
        with self._count_lock:
            return self._statements

    def count(self) -> None:
        """Count one statement sent."""
        with self._count_lock:
            self._statements += 1

    def q(self, template: str) -> str:
        """*template* with the schema and the pool owner filled in (cached)."""
        sql = self._sql.get(template)
        if sql is None:
            sql = template.replace("{s}", self._quoted).replace(
                "{pool}", str(PREBUILDS_OWNER_ID)
            )
            self._sql[template] = sql
        return sql

    # -- statements --------------------------------------------------------------
    def execute(
        self, cur: Cursor, template: str, params: Mapping[str, Any] | None = None
    ) -> int:
        """Run one statement; its row count."""
        self.fetchall(cur, template, params, fetch=False)
        return cur.rowcount

    def fetchall(
        self,
        cur: Cursor,
        template: str,
        params: Mapping[str, Any] | None = None,
        *,
        fetch: bool = True,
    ) -> list[Row]:
        """Run one statement (counted); its rows, if *fetch*."""
        self.count()
        try:
            cur.execute(self.q(template), params)
            return cur.fetchall() if fetch else []
        except psycopg.Error as e:
            raise StoreError(f"PostgreSQL error: {e}") from e

    def fetchone(
        self, cur: Cursor, template: str, params: Mapping[str, Any] | None = None
    ) -> Row | None:
        """Run one statement; its first row, if any."""
        rows = self.fetchall(cur, template, params)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self, begin: str = BEGIN) -> Iterator[Cursor]:
        """One transaction on a borrowed connection: COMMIT, or ROLLBACK on error."""
        with self.borrow() as conn, self.cursor(conn) as cur:
            self.execute(cur, begin)
            try:
                yield cur
            except BaseException:
                with suppress(StoreError):  # a broken connection: the pool's
                    self.execute(cur, "ROLLBACK")
                raise
            self.execute(cur, "COMMIT")

    @contextmanager
    def statement(self) -> Iterator[Cursor]:
        """A cursor for one statement, its own (implicit) transaction."""
        with self.borrow() as conn, self.cursor(conn) as cur:
            yield cur

    @staticmethod
    @contextmanager
    def cursor(conn: Connection) -> Iterator[Cursor]:
        """:func:`open_cursor`, closed after the block."""
        cur = open_cursor(conn)
        try:
            yield cur
        finally:
            with suppress(psycopg.Error):
                cur.close()

    # -- borrowing ---------------------------------------------------------------
    @contextmanager
    def borrow(self) -> Iterator[Connection]:
        """A connection in autocommit mode for the block; see :meth:`abandon`."""
        conn, switched = self.acquire()
        try:
            yield conn
        except BaseException:
            self.abandon(conn, switched=switched)
            raise
        self.release(conn, switched=switched)

    def acquire_claim(self) -> tuple[Connection, bool, float | None]:
        """
        :meth:`acquire` for one claim statement, counted: a connection kept
        by an earlier claim when there is one (the own pool's only), and
        since when it is out of the pool (None: not to be kept). One out for
        :data:`CLAIM_LEASE` seconds goes back to the pool and another is
        taken, so the pool's checks and lifetimes apply to it again. Pair
        with :meth:`release_claim`, or :meth:`abandon_claim` on an error.
        """
        with self._count_lock:
            self._statements += 1
            self._in_flight += 1
        try:
            while self._kept:
                try:
                    conn, since = self._kept.pop()
                except IndexError:  # another thread took the last one
                    break
                if time.monotonic() - since < CLAIM_LEASE:
                    return conn, False, since
                self.release(conn, switched=False)
            conn, switched = self.acquire()
        except BaseException:
            with self._count_lock:
                self._statements -= 1  # not sent
            self._claim_done()
            raise
        if not self.keeps or switched:
            return conn, switched, None
        return conn, False, time.monotonic()

    def release_claim(self, conn: Connection, since: float | None) -> None:
        """
        Give back a connection of :meth:`acquire_claim` after a claim
        statement that succeeded: kept for the next claim when it is idle
        (*since* given), else to the pool.
        """
        if since is None or conn.pgconn.transaction_status != _IDLE:
            try:
                self.release(conn, switched=False)
            finally:
                self._claim_done()
            return
        self._kept.append((conn, since))
        self._claim_done()

    def abandon_claim(self, conn: Connection, *, switched: bool) -> None:
        """:meth:`abandon` for a connection of :meth:`acquire_claim`."""
        try:
            self.abandon(conn, switched=switched)
        finally:
            self._claim_done()

    def _claim_done(self) -> None:
        """
        One claim less in flight; the last one out gives back the kept
        connections but the newest (all of them once the store is closed).
        """
        with self._count_lock:
            self._in_flight -= 1
            idle = self._in_flight == 0
        if self.closed:
            self._give_back_kept()
        elif idle:
            self._give_back_kept(keep=1)

    def _take_kept(self) -> Connection | None:
        """A connection kept for claims and still within its lease, if any."""
        if not self._kept:
            return None
        try:
            conn, since = self._kept.pop()
        except IndexError:  # another thread took the last one
            return None
        if time.monotonic() - since < CLAIM_LEASE:
            return conn
        with suppress(StoreError):
            self.release(conn, switched=False)
        return None

    def _give_back_kept(self, *, keep: int = 0) -> None:
        """Give the kept connections back to the pool, oldest first, but *keep*."""
        while len(self._kept) > keep:
            try:
                conn, _ = self._kept.pop(0)
            except IndexError:
                break
            with suppress(StoreError):
                self.release(conn, switched=False)

    def acquire(self) -> tuple[Connection, bool]:
        """
        A connection in autocommit mode, and whether it was switched to it:
        one kept for claims first, else a pool's or the factory's.
        """
        if self.closed:
            raise StoreError("the store is closed")
        kept = self._take_kept()
        if kept is not None:
            return kept, False
        if self.pool is not None:
            try:
                conn = self.pool.getconn(timeout=self._timeout)
            except PoolTimeout as e:
                message, cause = self._no_connection(self.pool, e)
                raise StoreError(message) from cause
            except psycopg.Error as e:  # closed, too many waiting
                raise StoreError(f"cannot get a PostgreSQL connection: {e}") from e
        elif self._connect is not None:
            try:
                conn = self._connect()
            except psycopg.Error as e:
                raise StoreError(f"cannot connect to PostgreSQL: {one_line(e)}") from e
        else:  # pragma: no cover - the constructor requires a source
            raise StoreError("no source of connections")
        if conn.autocommit:
            return conn, False
        try:
            conn.autocommit = True
        except psycopg.Error as e:
            self.abandon(conn, switched=False)
            raise StoreError(f"cannot get a PostgreSQL connection: {e}") from e
        return conn, True

    def release(self, conn: Connection, *, switched: bool) -> None:
        """Give *conn* back in the mode it came in (a factory's is closed)."""
        try:
            if switched:
                try:
                    conn.autocommit = False
                except psycopg.Error:
                    conn.close()  # the pool discards a closed connection
            if self.pool is not None:
                self.pool.putconn(conn)
            else:
                conn.close()
        except psycopg.Error as e:
            raise StoreError(f"cannot give back a PostgreSQL connection: {e}") from e

    def abandon(self, conn: Connection, *, switched: bool) -> None:
        """
        Give *conn* back after an error, whatever its state: an open
        transaction rolled back, errors dropped (the first one matters); a
        broken one (which its pool replaces) has the pool check its idle ones.
        """
        if conn.info.transaction_status in _IN_TRANSACTION:
            with suppress(psycopg.Error):
                conn.rollback()
        broken = conn.info.transaction_status == _UNKNOWN
        with suppress(StoreError):
            self.release(conn, switched=switched)
        # A check of the idle connections, a round trip each: a restarted
        # server costs the calls in flight, not one failed call per idle one
        # (those kept for claims go back to be checked too).
        if broken and self.pool is not None and not self.closed:
            self._give_back_kept()
            with suppress(psycopg.Error):
                self.pool.check()

    def discard(self, conn: Connection, *, switched: bool) -> None:
        """Close *conn* (ending its session and its locks) and give it back."""
        with suppress(psycopg.Error):
            conn.close()
        with suppress(psycopg.Error, StoreError):
            self.release(conn, switched=switched)

    # -- why there is no connection ------------------------------------------------
    def _no_connection(
        self, pool: ConnectionPool[Any], error: psycopg.Error
    ) -> tuple[str, BaseException]:
        """
        Why *pool* gave no connection (*error*): a StoreError's message and
        its cause. The pool keeps its connection errors to its log, so one
        direct connection (:meth:`_probe`) finds the cause.
        """
        cause = self._probe(pool)
        if cause is not None:
            return f"cannot connect to PostgreSQL: {one_line(cause)}", cause
        stats = pool.get_stats()
        message = (
            f"cannot get a PostgreSQL connection: {one_line(error)}, though the"
            " server accepts a new connection: the pool is too small for the"
            " calls made at once, or still reconnecting"
            f" (size {stats.get('pool_size', '?')} of max"
            f" {stats.get('pool_max', '?')},"
            f" {stats.get('requests_waiting', '?')} requests waiting)"
        )
        return message, error

    def _probe(self, pool: ConnectionPool[Any]) -> psycopg.Error | None:
        """
        The error of one direct connection with *pool*'s settings, or None.
        Callers that time out together share one attempt: a result newer
        than the start of the caller's wait is reused.
        """
        waited_since = time.monotonic() - self._timeout
        with self._probe_lock:
            if self._probed is not None and self._probed[0] >= waited_since:
                return self._probed[1]
            conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo
            raw_kwargs = pool.kwargs() if callable(pool.kwargs) else pool.kwargs
            kwargs = with_connect_timeout(conninfo, raw_kwargs or {}, self._timeout)
            error: psycopg.Error | None = None
            try:
                pool.connection_class.connect(conninfo, **kwargs).close()
            except psycopg.Error as e:
                error = e
            self._probed = (time.monotonic(), error)
            return error


def with_connect_timeout(
    conninfo: str, kwargs: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """*kwargs* with a ``connect_timeout`` (at least 2 s) unless one is set."""
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


def one_line(error: BaseException) -> str:
    """A driver's error message on one line (libpq's run over several)."""
    return " ".join(str(error).split())


def open_cursor(conn: Connection) -> Cursor:
    """A cursor of *conn*; a psycopg error is a StoreError."""
    try:
        return conn.cursor()
    except psycopg.Error as e:
        raise StoreError(f"PostgreSQL error: {e}") from e
