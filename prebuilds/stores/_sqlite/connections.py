"""
The SQLite store's connections and transactions.

A file store opens one connection per thread (a forked child opens its
own); an in-memory store has one, shared under a lock. Connections run in
autocommit mode and every store method is one explicit transaction: writes
in ``BEGIN IMMEDIATE`` (one writer at a time, across processes), reads in
one deferred ``BEGIN`` (all their queries read one state).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from prebuilds.exceptions import StoreError


if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    _Params = Sequence[Any] | dict[str, Any]

_T = TypeVar("_T")
_log = logging.getLogger("prebuilds.stores.sqlite")

#: How long close() waits for a transaction still running on another thread.
_CLOSE_WAIT = 120.0


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:  # pragma: no cover - best effort
        _log.debug("closing a SQLite connection failed", exc_info=True)


class Handle:
    """
    One connection, the lock that serialises its transactions, its thread,
    and a cursor kept for the claim's path (a cursor per statement is a
    tenth of a claim's Python time).
    """

    __slots__ = ("conn", "cursor", "lock", "thread")

    def __init__(
        self, conn: sqlite3.Connection, thread: threading.Thread | None
    ) -> None:
        self.conn = conn
        self.cursor = conn.cursor()
        self.lock = threading.Lock()
        self.thread = thread


class Tx:
    """An open transaction: executes and counts statements."""

    __slots__ = ("_conn", "_count")

    def __init__(self, conn: sqlite3.Connection, count: Callable[[], None]) -> None:
        self._conn = conn
        self._count = count

    def execute(self, sql: str, params: _Params = ()) -> sqlite3.Cursor:
        """Run one statement."""
        self._count()
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[_Params]) -> None:
        """Run one statement per row of parameters (each counted)."""
        for _ in rows:
            self._count()
        self._conn.executemany(sql, rows)

    def one(self, sql: str, params: _Params = ()) -> Any:
        """Run one statement; its first row or None."""
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: _Params = ()) -> list[Any]:
        """Run one statement; its rows."""
        return self.execute(sql, params).fetchall()


class Connections:
    """
    A store object's connections, statement counter and transactions.
    *on_fork* is called when a forked child first uses the store (which
    drops the parent's connections unclosed: SQLite forbids closing them).
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float,
        read_only: bool,
        on_fork: Callable[[], None],
    ) -> None:
        self.path = path
        self.memory = path in {"", ":memory:"}
        self.read_only = read_only
        self.closed = False
        self._busy_timeout = busy_timeout
        self._on_fork = on_fork
        self._lock = threading.Lock()
        # This store's write transactions queue here, not in SQLite's busy
        # handler, which polls with sleeps of up to 100 ms.
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self.handles: list[Handle] = []
        self._shared: Handle | None = None
        self._statements = 0
        self._pid = os.getpid()

    def count(self) -> None:
        """Count one statement."""
        with self._lock:
            self._statements += 1

    def statement_count(self) -> int:
        """The statements run so far, over all connections."""
        with self._lock:
            return self._statements

    def first(self) -> Handle:
        """Open the store's first connection (the one that migrates)."""
        handle = self._open()
        if self.memory:
            self._shared = handle
        else:
            self._local.handle = handle
        return handle

    def close(self) -> None:
        """Close every connection; later transactions raise StoreError."""
        with self._lock:
            self.closed = True
            handles, self.handles = self.handles, []
            self._shared = None
        for handle in handles:
            # Another thread (the lease renewer) may be in a transaction on
            # this handle: closing under it crashes the interpreter. Its
            # transaction ends within the busy timeout; the next one sees
            # ``closed`` (or the closed connection) and raises StoreError.
            if handle.lock.acquire(timeout=_CLOSE_WAIT):
                try:
                    _close_quietly(handle.conn)
                finally:
                    handle.lock.release()
            else:  # pragma: no cover - a transaction stuck for minutes
                _log.warning("a SQLite connection in use was left open at close")

    def _open(self) -> Handle:
        if self.read_only:
            # mode=ro never creates the file; the URI form needs its path
            # quoted (a '?' or '#' in a file name is not a query).
            target = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        else:
            target = self.path
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=self.read_only,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {e}") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            conn.close()
            raise StoreError(
                f"cannot configure SQLite database {self.path!r}: {e}"
            ) from e
        handle = Handle(conn, None if self.memory else threading.current_thread())
        stale: list[Handle] = []
        with self._lock:
            if self.closed:
                conn.close()
                raise StoreError("the SQLiteStore is closed")
            keep: list[Handle] = []
            for other in self.handles:
                dead = other.thread is not None and not other.thread.is_alive()
                (stale if dead else keep).append(other)
            keep.append(handle)
            self.handles = keep
        for other in stale:
            _close_quietly(other.conn)
        return handle

    def handle(self) -> Handle:
        """This thread's connection (opened on first use)."""
        if self.closed:
            raise StoreError("the SQLiteStore is closed")
        if self.memory:
            shared = self._shared
            if shared is None:
                raise StoreError("the SQLiteStore is closed")
            return shared
        if self._pid != os.getpid():
            with self._lock:
                self._pid = os.getpid()
                self.handles = []
                self._local = threading.local()
                # Another thread of the parent may have held it at the fork.
                self._write_lock = threading.Lock()
            self._on_fork()
        handle: Handle | None = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._open()
            self._local.handle = handle
        return handle

    def single(
        self, sql: str, params: _Params = (), *, write: bool = False
    ) -> tuple[list[Any], int, sqlite3.Connection]:
        """
        One statement in a transaction of its own (SQLite's implicit one:
        atomic, as a one-statement BEGIN ... COMMIT is, in a third of the
        statements): its rows, the rows it changed and the connection.
        Errors as :meth:`transaction`.
        """
        if write and self.read_only:
            raise StoreError(f"the SQLiteStore on {self.path!r} is read-only")
        handle = self.handle()
        with handle.lock:
            self.count()
            try:
                cursor = handle.conn.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount, handle.conn
            except sqlite3.Error as e:
                raise StoreError(f"SQLite: {e}") from e

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        """
        One transaction, rolled back by any error; sqlite3 errors, a closed
        store and a write to a read-only one raise StoreError.
        """
        if write and self.read_only:
            raise StoreError(f"the SQLiteStore on {self.path!r} is read-only")
        handle = self.handle()
        with self._write_lock if write else nullcontext(), handle.lock:
            conn = handle.conn
            tx = Tx(conn, self.count)
            try:
                tx.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise StoreError(f"SQLite: cannot begin a transaction: {e}") from e
            try:
                yield tx
            except BaseException as e:
                _rollback(tx, conn)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"SQLite: {e}") from e
                raise
            try:
                tx.execute("COMMIT")
            except sqlite3.Error as e:
                _rollback(tx, conn)
                raise StoreError(f"SQLite: cannot commit: {e}") from e

    def write_first(
        self,
        sql: str,
        params: _Params,
        decode: Callable[[Any], _T],
        otherwise: str,
        otherwise_params: _Params,
    ) -> tuple[_T | None, Any]:
        """
        One ``BEGIN IMMEDIATE`` transaction of *sql*, and of *otherwise*
        only when *sql* returned no row: *sql*'s first row decoded by
        *decode* before the commit (a row that cannot be decoded rolls the
        transaction back), and *otherwise*'s first row (None: no row, or
        not run). The claim's path: :meth:`transaction` without its context
        managers, one lock taken for the statement count. Errors as
        :meth:`transaction`, and *decode*'s own.
        """
        if self.read_only:
            raise StoreError(f"the SQLiteStore on {self.path!r} is read-only")
        handle = self.handle()
        with self._write_lock, handle.lock:
            cursor = handle.cursor
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                self.count()
                raise StoreError(f"SQLite: cannot begin a transaction: {e}") from e
            statements = 3
            try:
                # fetchall: a statement left unfinished would hold the
                # transaction open at COMMIT.
                rows = cursor.execute(sql, params).fetchall()
                first = decode(rows[0]) if rows else None
                other = None
                if first is None:
                    statements += 1
                    other = cursor.execute(otherwise, otherwise_params).fetchall()
                    other = other[0] if other else None
                cursor.execute("COMMIT")
            except BaseException as e:
                conn = handle.conn
                _rollback(Tx(conn, self.count), conn)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"SQLite: {e}") from e
                raise
            finally:
                with self._lock:
                    self._statements += statements
            return first, other


def _rollback(tx: Tx, conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            tx.execute("ROLLBACK")
    except sqlite3.Error:
        _log.debug("SQLite rollback failed", exc_info=True)
