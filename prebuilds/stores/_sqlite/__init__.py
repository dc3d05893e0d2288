"""
:class:`SQLiteStore`: the embedded default store, on the standard library's
:mod:`sqlite3` (internal: import it from :mod:`prebuilds.stores`).

- ``schema``: the migrations, the version table, opening checks;
- ``sql``: the SQL text;
- ``codecs``: rows to records and back;
- ``connections``: one connection per thread, transactions;
- ``lease``: the leader lease, its renewal and the fence of writes;
- ``store``: the class.
"""

from __future__ import annotations

# _MIGRATIONS: for the tests that build files of older schemas.
from prebuilds.stores._sqlite.schema import _MIGRATIONS as _MIGRATIONS
from prebuilds.stores._sqlite.schema import SCHEMA_VERSION
from prebuilds.stores._sqlite.store import SQLiteStore


__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
