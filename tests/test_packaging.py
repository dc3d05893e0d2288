"""
The package as a host sees it: import side effects, the public names, the
version, typing, and the no-op implementations.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import typing
import uuid

from datetime import datetime, timezone
from pathlib import Path

import attrs
import pytest

import prebuilds
import prebuilds.interfaces

from prebuilds import (
    DEFAULT_CLAIMER,
    DEFAULT_RECONCILER,
    GlobalSnapshot,
    NoopClaimer,
    NoopReconciler,
    PrebuildsNotSupportedError,
    Preset,
    PresetSnapshot,
    ReconcileStats,
)


OPTIONAL = ["hypothesis", "psycopg", "psycopg_pool", "prometheus_client", "croniter"]


def test_import_pulls_in_no_optional_dependency() -> None:
    """``import prebuilds`` imports none of the extras' dependencies."""
    code = (
        "import json, sys, prebuilds; "
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    loaded = set(json.loads(result.stdout))

    assert [] == [name for name in OPTIONAL if name in loaded]


def all_key(name: str) -> tuple[int, str]:
    """ruff RUF022's order: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_unique() -> None:
    """``prebuilds.__all__`` is sorted (constants, classes, functions) without repeats."""
    names = prebuilds.__all__

    assert sorted(set(names), key=all_key) == names


@pytest.mark.parametrize("name", prebuilds.__all__)
def test_every_public_name_resolves(name: str) -> None:
    """Every name of ``__all__`` is an attribute of the package."""
    assert hasattr(prebuilds, name)


def test_public_names_have_public_module() -> None:
    """Re-exported classes and functions present themselves as ``prebuilds.X``."""
    wrong = {
        name: obj.__module__
        for name in prebuilds.__all__
        if (inspect.isclass(obj := getattr(prebuilds, name)) or inspect.isfunction(obj))
        and obj.__module__.startswith("prebuilds._")
    }

    assert {} == wrong


def test_version() -> None:
    """
    The version is written once, in ``prebuilds/_version.py``: it is
    ``prebuilds.__version__`` and the installed distribution's version (a
    mismatch means the environment holds an old build: reinstall).
    """
    from prebuilds._version import __version__

    assert (__version__, __version__) == (
        prebuilds.__version__,
        importlib.metadata.version("prebuilds"),
    )


class TestMetadata:
    """What the package tells an installer and an index."""

    metadata = importlib.metadata.metadata("prebuilds")

    def test_project_urls(self) -> None:
        """The documentation, the changelog and the source are linked."""
        urls = dict(
            u.split(", ", 1) for u in self.metadata.get_all("Project-URL") or []
        )

        assert {"Documentation", "Changelog", "Source"} <= set(urls)

    def test_licence_only_as_an_expression(self) -> None:
        """The licence is a SPDX expression, with no legacy classifier beside it."""
        classifiers = self.metadata.get_all("Classifier") or []

        assert "MIT" == self.metadata["License-Expression"]
        assert [] == [c for c in classifiers if c.startswith("License ::")]

    def test_tzdata_on_every_platform(self) -> None:
        """tzdata is required everywhere, not only on Windows."""
        requires = importlib.metadata.requires("prebuilds") or []

        assert "tzdata" in requires


def test_time_zones_without_system_data(tmp_path: Path) -> None:
    """
    With no time-zone data on the system (a slim container: TZPATH points to
    an empty directory), zones still resolve, from the tzdata package.
    """
    code = (
        "import zoneinfo, datetime, prebuilds, uuid; "
        "from prebuilds.testing import FakeClock; "
        "preset = prebuilds.Preset(id=uuid.uuid4(), template_id=uuid.uuid4(), "
        "template_version_id=uuid.uuid4(), desired_instances=1, "
        "scheduling_timezone='Europe/Berlin', "
        "schedules=(prebuilds.PrebuildSchedule(cron='* 9-17 * * *', instances=3),)); "
        "at = datetime.datetime(2026, 7, 1, 7, 30, tzinfo=datetime.timezone.utc); "
        "print(zoneinfo.TZPATH, prebuilds.desired_instances(preset, at=at))"
    )
    env = {**os.environ, "PYTHONTZPATH": str(tmp_path)}

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )

    # 07:30 UTC is 09:30 in Berlin's summer time: inside the schedule.
    assert f"{(str(tmp_path),)} 3" == result.stdout.strip()


PROTOCOLS = [
    getattr(prebuilds.interfaces, name) for name in prebuilds.interfaces.__all__
]


class TestProtocols:
    """The Protocols check at runtime, and their hints resolve."""

    @pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
    def test_hints_resolve(self, protocol: type) -> None:
        """typing.get_type_hints works on the Protocol and on each method."""
        methods = {
            name: typing.get_type_hints(method)
            for name, method in inspect.getmembers(protocol, inspect.isfunction)
            if not name.startswith("_")
        }

        assert typing.get_type_hints(protocol) is not None
        assert methods
        assert all("return" in hints for hints in methods.values())

    def test_store_hints_name_the_real_types(self) -> None:
        """Store.read_pool's and Store.claim's hints are the classes, not strings."""
        pool = typing.get_type_hints(prebuilds.Store.read_pool)
        claim = typing.get_type_hints(prebuilds.Store.claim)

        assert (prebuilds.PoolFacts, datetime) == (pool["return"], claim["now"])

    def test_implementations_are_instances(self, tmp_path: Path) -> None:
        """isinstance holds for the library's implementations of each Protocol."""
        from prebuilds.stores import MemoryStore, SQLiteStore
        from prebuilds.testing import FakeClock, FakeProvisioner

        memory = MemoryStore()
        sqlite = SQLiteStore(tmp_path / "p.sqlite3")
        clock = FakeClock()
        pairs: list[tuple[object, type]] = [
            (memory, prebuilds.Store),
            (sqlite, prebuilds.Store),
            (memory, prebuilds.StampedClaims),
            (sqlite, prebuilds.StampedClaims),
            (clock, prebuilds.Clock),
            (prebuilds.SystemClock(), prebuilds.Clock),
            (prebuilds.CollectingEventSink(), prebuilds.EventSink),
            (prebuilds.LoggingEventSink(), prebuilds.EventSink),
            (FakeProvisioner(memory, clock), prebuilds.Provisioner),
            (prebuilds.StoreClaimer(memory), prebuilds.Claimer),
            (DEFAULT_CLAIMER, prebuilds.Claimer),
            (DEFAULT_RECONCILER, prebuilds.ReconciliationOrchestrator),
            (
                prebuilds.StoreReconciler(memory, FakeProvisioner(memory, clock)),
                prebuilds.ReconciliationOrchestrator,
            ),
        ]
        try:
            wrong = [
                (type(obj).__name__, protocol.__name__)
                for obj, protocol in pairs
                if not isinstance(obj, protocol)
            ]
        finally:
            sqlite.close()

        assert [] == wrong

    def test_postgres_store_is_a_store(self) -> None:
        """PostgresStore has every Store method (checked on the class)."""
        from prebuilds.stores import PostgresStore

        assert issubclass(PostgresStore, prebuilds.Store)
        assert issubclass(PostgresStore, prebuilds.StampedClaims)

    @pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
    def test_other_objects_are_not(self, protocol: type) -> None:
        """An object without the methods is not an instance."""
        assert not isinstance(object(), protocol)


def test_unknown_attribute() -> None:
    """Any other missing attribute raises AttributeError naming it."""
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = prebuilds.no_such_name


def test_py_typed_is_shipped() -> None:
    """The package carries the PEP 561 ``py.typed`` marker."""
    assert (Path(prebuilds.__file__).parent / "py.typed").is_file()


ATTRS_CLASSES = [
    getattr(prebuilds, name)
    for name in prebuilds.__all__
    if attrs.has(getattr(prebuilds, name))
]


def hints_error(cls: type) -> str | None:
    try:
        typing.get_type_hints(cls)
    except NameError as e:
        return str(e)
    return None


def test_type_hints_resolve() -> None:
    """typing.get_type_hints works on every public attrs class (autodoc, cattrs)."""
    unresolved = {
        cls.__name__: error for cls in ATTRS_CLASSES if (error := hints_error(cls))
    }

    assert {} == unresolved


def test_type_hints_of_the_preset() -> None:
    """Preset's hints name the real types once resolved in its own module."""
    from prebuilds import _model

    hints = typing.get_type_hints(Preset, globalns=vars(_model))

    assert (uuid.UUID, datetime | None) == (hints["id"], hints["last_invalidated_at"])


class TestNoop:
    """The no-op implementations do nothing, completely."""

    def test_reconciler(self) -> None:
        """NoopReconciler: empty snapshot, empty stats, no actions; run/stop return."""
        reconciler = NoopReconciler()
        snapshot = PresetSnapshot(
            preset=Preset(
                id=uuid.UUID(int=1),
                template_id=uuid.UUID(int=2),
                template_version_id=uuid.UUID(int=3),
                desired_instances=3,
            )
        )

        results = (
            reconciler.snapshot_state(object()),  # type: ignore[arg-type]
            reconciler.reconcile_all(),
            reconciler.calculate_actions(snapshot),
            reconciler.run(),  # type: ignore[func-returns-value]
            reconciler.stop(),  # type: ignore[func-returns-value]
            reconciler.stop(RuntimeError("x"), timeout=1.0),  # type: ignore[func-returns-value]
            reconciler.track_resource_replacement(uuid.uuid4(), uuid.uuid4(), []),  # type: ignore[func-returns-value]
        )

        assert (
            GlobalSnapshot(),
            ReconcileStats(),
            [],
            None,
            None,
            None,
            None,
        ) == results

    def test_claimer(self) -> None:
        """NoopClaimer: every claim raises PrebuildsNotSupportedError; the initiator is the nil UUID."""
        claimer = NoopClaimer()

        with pytest.raises(PrebuildsNotSupportedError):
            claimer.claim(
                now=datetime(2024, 1, 1, tzinfo=timezone.utc),
                user_id=uuid.uuid4(),
                name="mine",
                preset_id=uuid.uuid4(),
            )

        assert uuid.UUID(int=0) == claimer.initiator()

    def test_defaults(self) -> None:
        """DEFAULT_RECONCILER and DEFAULT_CLAIMER are the no-op instances."""
        assert (NoopReconciler, NoopClaimer) == (
            type(DEFAULT_RECONCILER),
            type(DEFAULT_CLAIMER),
        )

    def test_not_supported_is_a_prebuilds_error(self) -> None:
        """The no-op claimer's error is caught by ``except PrebuildsError``."""
        with pytest.raises(prebuilds.PrebuildsError):
            DEFAULT_CLAIMER.claim(
                now=datetime(2024, 1, 1, tzinfo=timezone.utc),
                user_id=uuid.uuid4(),
                name="mine",
                preset_id=uuid.uuid4(),
            )


def test_testing_kit_imports() -> None:
    """``prebuilds.testing.strategies`` imports and exports what its ``__all__`` says."""
    from prebuilds.testing import strategies

    assert [] == [n for n in strategies.__all__ if not hasattr(strategies, n)]
