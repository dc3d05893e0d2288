"""
:class:`SQLiteStore`, on :mod:`sqlite3` (internal: import it from
:mod:`prebuilds.stores`). Modules: ``schema`` (migrations), ``sql``,
``codecs`` (rows and values), ``connections`` (transactions), ``lease``
(the leader lease and fencing), ``store``.
"""

from __future__ import annotations

# _MIGRATIONS: for the tests that build files of older schemas.
from prebuilds.stores._sqlite.schema import _MIGRATIONS as _MIGRATIONS
from prebuilds.stores._sqlite.schema import SCHEMA_VERSION
from prebuilds.stores._sqlite.store import SQLiteStore


__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
