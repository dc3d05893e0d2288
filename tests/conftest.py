"""Shared fixtures: one store factory per backend, a fake clock."""

from __future__ import annotations

import os

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypothesis import HealthCheck, settings

from prebuilds.interfaces import Store
from tests.postgres_cluster import make_postgres_store, postgres_cluster, postgres_dsn  # noqa: F401


settings.register_profile(
    "dev",
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
# CI's Pythons other than the newest (see the noxfile's tests session): the
# same tests with fewer examples, since the newest runs the full numbers.
settings.register_profile(
    "ci-light",
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# Mutation testing (nox -s mutation): few examples, the same ones every run,
# so that a mutant's verdict does not depend on the draw.
settings.register_profile(
    "mutation",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
if not os.environ.get("CI"):
    settings.load_profile("dev")

STORE_KINDS = ["memory", "sqlite", "postgres"]

StoreFactory = Callable[[], Store]


@pytest.fixture(name="store_factory", params=STORE_KINDS)
def _store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[StoreFactory]:
    """A callable that returns a new, empty store of one backend."""
    kind = request.param
    made: list[Store] = []
    if kind == "memory":
        from prebuilds.stores import MemoryStore

        def make() -> Store:
            store = MemoryStore()
            made.append(store)
            return store

    elif kind == "sqlite":
        from prebuilds.stores import SQLiteStore

        counter = iter(range(1_000_000))

        def make() -> Store:
            store = SQLiteStore(tmp_path / f"pool-{next(counter)}.sqlite3")
            made.append(store)
            return store

    else:
        make = request.getfixturevalue("make_postgres_store")
    yield make
    for store in made:
        close = getattr(store, "close", None)
        if close is not None:
            close()


@pytest.fixture(name="store")
def _store(store_factory: StoreFactory) -> Store:
    """A new, empty store of each backend."""
    return store_factory()


@pytest.fixture(name="second_handle")
def _second_handle(request: pytest.FixtureRequest) -> Callable[[Store], Store]:
    """
    Opens another store object on the same data as a store of *store_factory*
    (the same file, the same schema), as another process would; a
    MemoryStore is its own (one process: the object is the shared state).
    """

    def reopen(store: Store) -> Store:
        from prebuilds.stores import MemoryStore

        if isinstance(store, MemoryStore):
            return store
        kind = type(store).__name__
        backend: Any = store
        if kind == "SQLiteStore":
            from prebuilds.stores import SQLiteStore

            other = SQLiteStore(backend.path)
            request.addfinalizer(other.close)
            return other
        make = request.getfixturevalue("make_postgres_store")
        other_pg: Store = make(schema=backend.schema)
        return other_pg

    return reopen
