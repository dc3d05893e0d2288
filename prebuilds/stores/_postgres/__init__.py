"""PostgresStore; needs the ``postgres`` extra (the only package importing psycopg)."""

from __future__ import annotations

# The extra's modules first, by name: a re-import of this package (after it
# was dropped from sys.modules) must meet a missing extra even when its
# submodules are still cached.
import psycopg  # noqa: F401
import psycopg_pool  # noqa: F401

from prebuilds.stores._postgres.schema import SCHEMA_VERSION
from prebuilds.stores._postgres.store import PostgresStore


__all__ = ["SCHEMA_VERSION", "PostgresStore"]
