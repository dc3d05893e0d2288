"""
Pieces of the bad-input tests: a store per backend shared by a module, a
seeded pool with instances in every state, and everything a store reads back.
"""

from __future__ import annotations

import uuid

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from prebuilds import (
    Build,
    BuildRequest,
    GlobalSnapshot,
    Instance,
    Lifecycle,
    PoolFacts,
    PrebuildSchedule,
    PresetConfig,
    PresetFacts,
    Template,
    derive,
)
from prebuilds.interfaces import Store
from tests.postgres_cluster import fresh_schema_name


NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
LOOKBACK = timedelta(hours=1)
HARD_LIMIT = 3


@pytest.fixture(
    name="shared_store", scope="module", params=["memory", "sqlite", "postgres"]
)
def _shared_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """
    One store of each backend for a whole module: the tests of a module seed
    their own template and preset in it, so they do not pay for a new
    PostgreSQL schema each.
    """
    store: Any
    schema = None
    if request.param == "memory":
        from prebuilds.stores import MemoryStore

        store = MemoryStore()
    elif request.param == "sqlite":
        from prebuilds.stores import SQLiteStore

        store = SQLiteStore(tmp_path_factory.mktemp("shared") / "pool.sqlite3")
    else:
        from prebuilds.stores import PostgresStore
        from tests.postgres_cluster import _admin_execute

        dsn = request.getfixturevalue("postgres_dsn")
        schema = fresh_schema_name()
        store = PostgresStore(dsn, schema=schema, max_size=4)
    yield store
    store.close()
    if schema is not None:
        _admin_execute(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@attrs.frozen
class Seeded:
    """A template, a preset and its instances, one in each state."""

    template: Template
    preset: PresetConfig
    ready: BuildRequest  # pooled, built, ready: claimable
    claimed: BuildRequest  # built, ready, claimed by a user
    building: BuildRequest  # pooled, its start build running
    failed: BuildRequest  # pooled, its start build failed
    user_id: uuid.UUID


def seed(store: Store, *, now: datetime = NOW) -> Seeded:
    """A new template and preset in *store*, with one instance in each state."""
    template = Template(
        id=uuid.uuid4(),
        active_version_id=uuid.uuid4(),
        name="python-dev",
        default_ttl=timedelta(hours=8),
    )
    store.put_template(template)
    preset = PresetConfig(
        id=uuid.uuid4(),
        template_id=template.id,
        template_version_id=template.active_version_id,
        desired_instances=4,
        name="small",
        ttl=timedelta(days=1),
        scheduling_timezone="Europe/Berlin",
        schedules=(PrebuildSchedule(cron="* 9-17 * * 1-5", instances=6),),
        parameters=(("region", "eu"),),
    )
    store.put_preset(preset)
    requests = []
    for n in range(4):
        request = store.create_prebuild(
            preset.id, now=now - timedelta(minutes=10 - n), name=f"pb-{n}"
        )
        assert request is not None
        requests.append(request)
    claimed, ready, building, failed = requests  # oldest first
    for request in (claimed, ready):
        store.build_finished(request.build_id, now=now, succeeded=True)
        store.set_ready(request.instance_id)
    store.build_started(building.build_id, now=now)
    store.build_finished(
        failed.build_id, now=now, succeeded=False, error_kind="build", error="boom"
    )
    user_id = uuid.uuid4()
    got = store.claim(
        preset_id=preset.id,
        user_id=user_id,
        name="alice-dev",
        lifecycle=Lifecycle(ttl=timedelta(hours=8), last_used_at=now),
        now=now,
        version_id=template.active_version_id,
        not_before=None,
    )
    assert got is not None
    assert got.id == claimed.instance_id  # the oldest ready one
    return Seeded(template, preset, ready, claimed, building, failed, user_id)


@attrs.frozen
class Contents:
    """Everything a store reads back about a seeded pool, and its settings."""

    template: Template
    preset: PresetFacts
    instances: tuple[Instance, ...]
    builds: tuple[Build, ...]
    paused: bool
    pool: PoolFacts
    snapshot: GlobalSnapshot


def contents(store: Store, seeded: Seeded, *, now: datetime = NOW) -> Contents:
    """Read back every record of *store* (and the seeded template and preset)."""
    pool = store.read_pool()
    return Contents(
        template=store.get_template(seeded.template.id),
        preset=store.read_preset(seeded.preset.id),
        instances=tuple(store.list_instances(include_deleted=True)),
        builds=tuple(store.list_builds()),
        paused=store.is_paused(),
        pool=pool,
        snapshot=derive(
            pool, now=now, backoff_lookback=LOOKBACK, hard_limit=HARD_LIMIT
        ),
    )
