"""
Reference stores: :class:`MemoryStore` (tests, embedding),
:class:`SQLiteStore` (the embedded default) and :class:`PostgresStore`
(many replicas; needs the ``postgres`` extra, imported on first use: without
it, :class:`~prebuilds.exceptions.MissingExtraError` gives the install
command).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prebuilds._extras import load
from prebuilds.stores._memory import MemoryStore


if TYPE_CHECKING:
    from prebuilds.stores._postgres import PostgresStore
    from prebuilds.stores._sqlite import SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "SQLiteStore"]


def __getattr__(name: str) -> Any:
    # Imported on first use: PostgresStore needs the ``postgres`` extra, and
    # neither backend should cost anything to a host that does not use it.
    if name == "PostgresStore":
        module = load(
            "prebuilds.stores._postgres", extra="postgres", feature=f"{__name__}.{name}"
        )
        return module.PostgresStore
    if name == "SQLiteStore":
        from prebuilds.stores._sqlite import SQLiteStore  # noqa: PLC0415

        return SQLiteStore
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
