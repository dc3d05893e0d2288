"""
The SQLite store's leader lease: a row that expires after ``lease_ttl``
(wall clock), renewed while a scope holds it, and the fence of writes.

One daemon thread per store object renews the leases it holds (a pass may
outlive ``lease_ttl``, a slow submit included); it starts with the first
lease, so a steady pass starts no thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prebuilds._records import Lease
from prebuilds.exceptions import StoreError
from prebuilds.stores._common import fence_token, lost
from prebuilds.stores._sqlite import sql


if TYPE_CHECKING:
    from collections.abc import Iterator

    from prebuilds.stores._sqlite.connections import Connections, Tx

_log = logging.getLogger("prebuilds.stores.sqlite")


class Leases:
    """The leases of one store object: taken, renewed, fenced, released."""

    def __init__(
        self, connections: Connections, *, lease_ttl_us: int, busy_timeout: float
    ) -> None:
        self._connections = connections
        self._ttl_us = lease_ttl_us
        self._busy_timeout = busy_timeout
        self.forget()

    def forget(self) -> None:
        """Hold nothing (a forked child: the parent's leases are not its own)."""
        # Leases held (renewed by the renewer thread) and leases found taken
        # over (their fenced writes fail at once).
        self._renewal = threading.Condition(threading.Lock())
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._renewer: threading.Thread | None = None

    def close(self) -> None:
        """Stop the renewer (the connections are closed already)."""
        with self._renewal:
            self._renewal.notify_all()
            renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            # Not longer than a renewal can take: it may wait for a writer.
            renewer.join(timeout=self._busy_timeout + 1.0)

    @contextmanager
    def scope(self) -> Iterator[Lease]:
        """A leader scope: a held lease if this call took it, else one not held."""
        token = str(uuid.uuid4())
        if not self._acquire(token):
            yield Lease(held=False)
            return
        self._hold(token)
        try:
            yield Lease(held=True, token=token)
        finally:
            with self._renewal:
                self._held.discard(token)
                self._lost.discard(token)
            self._release(token)

    def _acquire(self, token: str) -> bool:
        now_us = time.time_ns() // 1000
        _, taken, _ = self._connections.single(
            sql.TAKE_LEASE,
            (sql.LEADER_NAME, token, now_us + self._ttl_us, now_us),
            write=True,
        )
        return taken == 1

    def _release(self, token: str) -> None:
        try:
            self._connections.single(
                sql.RELEASE_LEASE, (sql.LEADER_NAME, token), write=True
            )
        except StoreError:
            _log.warning(
                "could not release the leader lease of %r; it expires by itself",
                self._connections.path,
                exc_info=True,
            )

    # -- renewal ---------------------------------------------------------------------

    def _hold(self, token: str) -> None:
        """Have the renewer keep *token*'s lease; start it if need be."""
        with self._renewal:
            self._held.add(token)
            renewer = self._renewer
            if renewer is None or not renewer.is_alive():  # none yet, or forked
                renewer = threading.Thread(
                    target=self._renew_loop,
                    name="prebuilds-lease-renewer",
                    daemon=True,
                )
                self._renewer = renewer
                renewer.start()
            # No notify: the renewer wakes every period whatever it holds, so
            # a new lease is renewed within a period (a third of its life)
            # without waking a thread on every pass.

    def _renew_loop(self) -> None:
        period = max(self._ttl_us / 3_000_000, 0.001)
        connections = self._connections
        while True:
            with self._renewal:
                # A period, whatever is taken or released meanwhile; only
                # close() notifies.
                deadline = time.monotonic() + period
                while not connections.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._renewal.wait(remaining)
                if connections.closed:
                    return
                tokens = sorted(self._held)
            for token in tokens:
                self._renew(token)

    def _renew(self, token: str) -> None:
        """Extend *token*'s lease; if it is gone or expired, mark it lost."""
        try:
            with self._connections.transaction(write=True) as tx:
                held = self._fence_row(tx, token)
        except StoreError:
            # Tried again a third of the lease later; if that is too late
            # the lease expires and the holder's next fenced write says so.
            if not self._connections.closed:
                _log.warning(
                    "could not renew the leader lease of %r",
                    self._connections.path,
                    exc_info=True,
                )
            return
        if not held:
            self._mark_lost(token)

    def _mark_lost(self, token: str) -> None:
        with self._renewal:
            if token not in self._held:
                return  # the scope has ended meanwhile
            self._held.discard(token)
            self._lost.add(token)
        _log.warning(
            "the leader lease of %r was lost (expired, taken over): the pass "
            "holding it can no longer write",
            self._connections.path,
        )

    # -- fencing ---------------------------------------------------------------------

    def _fence_row(self, tx: Tx, token: str) -> bool:
        """Renew *token*'s lease in *tx*; whether it still holds it."""
        now_us = time.time_ns() // 1000
        cursor = tx.execute(
            sql.FENCE, (now_us + self._ttl_us, sql.LEADER_NAME, token, now_us)
        )
        return cursor.rowcount == 1

    def any_fenced(
        self, query: str, params: dict[str, Any], lease: Lease | None
    ) -> bool:
        """
        Whether *query* finds a row, read in one statement with the check
        that *lease* (None: unfenced) still holds, without renewing it: a
        read that decides whether a fenced write is needed at all.

        Raises:
            InvalidInputError: *lease* is not a Lease.
            LeadershipLostError: the lease is not held, or lost.
        """
        token = self._token(lease)
        if token is None:
            rows, _, _ = self._connections.single(f"SELECT EXISTS ({query})", params)
            return bool(rows[0][0])
        now_us = time.time_ns() // 1000
        rows, _, _ = self._connections.single(
            f"SELECT EXISTS ({query}), EXISTS ({sql.HOLDS})",
            {**params, "name": sql.LEADER_NAME, "token": token, "wall": now_us},
        )
        found, held = rows[0]
        if not held:
            self._mark_lost(token)
            raise lost(token)
        return bool(found)

    def _token(self, lease: Lease | None) -> str | None:
        """*lease*'s token (None: unfenced); LeadershipLostError if known lost."""
        token = fence_token(lease)
        if token is not None:
            with self._renewal:
                if token in self._lost:
                    raise lost(token)
        return token

    @contextmanager
    def write(self, lease: Lease | None) -> Iterator[Tx]:
        """
        A write transaction fenced by *lease* (None: unfenced): its first
        statement checks and renews the lease; a lease known lost fails
        before it begins.

        Raises:
            InvalidInputError: *lease* is not a Lease.
            LeadershipLostError: the lease is not held, or lost.
        """
        token = self._token(lease)
        with self._connections.transaction(write=True) as tx:
            if token is not None and not self._fence_row(tx, token):
                self._mark_lost(token)
                raise lost(token)
            yield tx
