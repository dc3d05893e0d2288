"""
The optional dependencies: what needs an extra, and the error that names it.

A missing module is simulated the way Python itself refuses an import:
``sys.modules[name] = None`` makes ``import name`` raise
``ModuleNotFoundError``. For psycopg that is done in the test process (the
modules that imported it are dropped from ``sys.modules`` for the test and
restored after it); for Hypothesis in a new interpreter, since pytest's
Hypothesis plugin needs it. The real thing, a wheel installed without
extras, is checked by ``nox -s newcomer``.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import json
import pickle
import re
import subprocess
import sys
import textwrap

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest

import prebuilds
import prebuilds.stores
import prebuilds.testing

from prebuilds._extras import EXTRAS, load, require
from prebuilds.exceptions import MissingExtraError, PrebuildsError


#: The testing kit's names that need Hypothesis.
KIT_NAMES = [
    "check_store",
    "check_claimer",
    "check_concurrent_claims",
    "PoolMachine",
    "strategies",
]


def without(monkeypatch: pytest.MonkeyPatch, missing: str, *importers: str) -> None:
    """Make *missing* unimportable and forget the modules that imported it."""
    monkeypatch.setitem(sys.modules, missing, None)
    for name in importers:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.fixture(name="no_psycopg")
def _no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    without(monkeypatch, "psycopg", "prebuilds.stores._postgres")


MISSING = (
    "hypothesis is not installed; install it with: pip install 'prebuilds[testing]'"
)


def without_hypothesis(code: str) -> Any:
    """
    Run *code* in a new interpreter where Hypothesis cannot be imported; it
    prints one JSON document, which is returned. (A subprocess, because
    pytest's Hypothesis plugin itself needs Hypothesis while a test runs.)
    """
    preamble = "import json, sys\nsys.modules['hypothesis'] = None\n"
    result = subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


class TestTestingExtra:
    """The Hypothesis-based kit needs ``testing``; the fakes need nothing."""

    def test_kit_names_the_extra(self) -> None:
        """Each name of the kit raises MissingExtraError with the pip command."""
        errors = without_hypothesis(
            """
            import prebuilds.testing
            from prebuilds.exceptions import MissingExtraError
            errors = {}
            for name in ["check_store", "check_claimer", "check_concurrent_claims",
                         "PoolMachine", "strategies"]:
                try:
                    getattr(prebuilds.testing, name)
                except MissingExtraError as e:
                    errors[name] = [str(e), e.extra, e.name, isinstance(e, ImportError)]
            print(json.dumps(errors))
            """
        )

        assert {
            name: [
                f"prebuilds.testing.{name} needs the 'testing' extra: {MISSING}",
                "testing",
                "hypothesis",
                True,
            ]
            for name in KIT_NAMES
        } == errors

    def test_imports_name_the_extra(self) -> None:
        """``from prebuilds.testing import …`` and ``import …strategies`` name it too."""
        messages = without_hypothesis(
            """
            messages = []
            try:
                from prebuilds.testing import check_store
            except ImportError as e:
                messages.append(str(e))
            try:
                import prebuilds.testing.strategies
            except ImportError as e:
                messages.append(str(e))
            print(json.dumps(messages))
            """
        )

        assert [
            f"prebuilds.testing.check_store needs the 'testing' extra: {MISSING}",
            f"prebuilds.testing.strategies needs the 'testing' extra: {MISSING}",
        ] == messages

    def test_fakes_need_no_extra(self) -> None:
        """The fakes import, and work, without Hypothesis."""
        now = without_hypothesis(
            """
            from datetime import timedelta
            from prebuilds.testing import FakeClock, FakeProvisioner
            clock = FakeClock()
            print(json.dumps(clock.advance(timedelta(hours=1)).isoformat()))
            """
        )

        assert "2024-01-01T01:00:00+00:00" == now

    def test_the_kit_loads_with_the_extra(self) -> None:
        """With Hypothesis installed, the lazy names are the kit's own objects."""
        from prebuilds.testing import _conformance, _machine, strategies

        assert (
            _conformance.check_store,
            _machine.PoolMachine,
            strategies,
        ) == (
            prebuilds.testing.check_store,
            prebuilds.testing.PoolMachine,
            prebuilds.testing.strategies,
        )

    def test_unknown_name(self) -> None:
        """Any other name is an AttributeError naming it."""
        with pytest.raises(AttributeError, match="no_such_helper"):
            _ = prebuilds.testing.no_such_helper

    def test_dir_lists_the_lazy_names(self) -> None:
        """dir() shows the kit's names before they are loaded."""
        assert {*prebuilds.testing.__all__, "strategies"} <= set(dir(prebuilds.testing))


class TestPostgresExtra:
    """PostgresStore needs ``postgres``."""

    def test_postgres_store_names_the_extra(self, no_psycopg: None) -> None:
        """``prebuilds.stores.PostgresStore`` without psycopg: the pip command."""
        with pytest.raises(MissingExtraError) as caught:
            _ = prebuilds.stores.PostgresStore

        assert (
            "prebuilds.stores.PostgresStore needs the 'postgres' extra: psycopg is "
            "not installed; install it with: pip install 'prebuilds[postgres]'"
        ) == str(caught.value)

    def test_the_pool_is_part_of_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """psycopg without psycopg_pool is the same missing extra."""
        without(monkeypatch, "psycopg_pool", "prebuilds.stores._postgres")

        with pytest.raises(MissingExtraError) as caught:
            from prebuilds.stores import PostgresStore  # noqa: F401

        assert ("postgres", "psycopg_pool") == (caught.value.extra, caught.value.name)

    def test_no_libpq(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """psycopg without a libpq: the error says so, and how to get one."""

        class NoLibpq(importlib.abc.MetaPathFinder):
            def find_spec(
                self,
                fullname: str,
                path: Sequence[str] | None,
                target: ModuleType | None = None,
            ) -> None:
                if fullname == "psycopg":
                    msg = (
                        "no pq wrapper available.\nAttempts made:\n"
                        "- couldn't import psycopg 'python' implementation: "
                        "libpq library not found"
                    )
                    raise ImportError(msg)

        for name in [
            m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")
        ]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.delitem(sys.modules, "prebuilds.stores._postgres", raising=False)
        monkeypatch.setattr(sys, "meta_path", [NoLibpq(), *sys.meta_path])

        with pytest.raises(MissingExtraError) as caught:
            _ = prebuilds.stores.PostgresStore

        message = str(caught.value)
        assert "found no libpq" in message
        assert "pip install 'psycopg[binary]'" in message

    def test_other_stores_need_nothing(self, no_psycopg: None) -> None:
        """MemoryStore and SQLiteStore import without psycopg."""
        from prebuilds.stores import MemoryStore, SQLiteStore

        assert ("MemoryStore", "SQLiteStore") == (
            MemoryStore.__name__,
            SQLiteStore.__name__,
        )


def without_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus-client unimportable, its submodules and our adapter forgotten."""
    loaded = [m for m in sys.modules if m.startswith("prometheus_client.")]
    without(monkeypatch, "prometheus_client", "prebuilds._prometheus", *loaded)


class TestPrometheusExtra:
    """PrometheusMetrics needs ``prometheus``; the module imports without it."""

    def test_metrics_name_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``prebuilds.metrics.PrometheusMetrics`` without prometheus-client."""
        import prebuilds.metrics

        without_prometheus(monkeypatch)

        with pytest.raises(MissingExtraError) as caught:
            _ = prebuilds.metrics.PrometheusMetrics

        assert (
            "prebuilds.metrics.PrometheusMetrics needs the 'prometheus' extra: "
            "prometheus_client is not installed; install it with: "
            "pip install 'prebuilds[prometheus]'"
        ) == str(caught.value)

    def test_from_import_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``from prebuilds.metrics import PrometheusMetrics`` raises the same."""
        without_prometheus(monkeypatch)

        with pytest.raises(MissingExtraError) as caught:
            from prebuilds.metrics import PrometheusMetrics  # noqa: F401

        assert ("prometheus", "prometheus_client") == (
            caught.value.extra,
            caught.value.name,
        )

    def test_with_the_extra(self) -> None:
        """With prometheus-client installed the class loads."""
        import prebuilds.metrics

        from prebuilds._prometheus import PrometheusMetrics

        assert PrometheusMetrics is prebuilds.metrics.PrometheusMetrics

    def test_unknown_name(self) -> None:
        """Other names are plain AttributeErrors."""
        import prebuilds.metrics

        with pytest.raises(AttributeError):
            _ = prebuilds.metrics.Nothing


class TestRequire:
    """``require`` turns only a missing module of the extra into the error."""

    def test_another_missing_module_passes_unchanged(self) -> None:
        """A module outside the extra is a bug, not a missing extra."""
        with (
            pytest.raises(ModuleNotFoundError) as caught,
            require("postgres", feature="x"),
        ):
            importlib.import_module("no_such_module_for_prebuilds")

        assert not isinstance(caught.value, MissingExtraError)

    def test_another_import_error_passes_unchanged(self) -> None:
        """An ImportError that is not about libpq passes unchanged."""
        with (
            pytest.raises(ImportError, match="cannot import name"),
            require("postgres", feature="x"),
        ):
            raise ImportError("cannot import name 'x'")

    def test_load_returns_the_module(self) -> None:
        """load imports and returns the module."""
        assert prebuilds.stores is load(
            "prebuilds.stores", extra="postgres", feature="x"
        )

    def test_the_extras_match_the_package_metadata(self) -> None:
        """EXTRAS lists the top-level modules of each extra in pyproject.toml."""
        requires = importlib.metadata.requires("prebuilds") or []
        extras: dict[str, set[str]] = {}
        for requirement in requires:
            match = re.match(
                r"([A-Za-z0-9_.-]+).*extra == [\"'](\w+)[\"']", requirement
            )
            if match:
                name = match[1].lower().replace("-", "_")
                extras.setdefault(match[2], set()).add(name)

        assert extras == {extra: set(modules) for extra, modules in EXTRAS.items()}


class TestMissingExtraError:
    """The error's place in the tree, and its attributes."""

    def test_is_an_import_error_and_a_prebuilds_error(self) -> None:
        """``except ImportError`` and ``except PrebuildsError`` both catch it."""
        error = MissingExtraError("f", "postgres", name="psycopg")

        assert isinstance(error, ImportError)
        assert isinstance(error, PrebuildsError)
        assert prebuilds.MissingExtraError is MissingExtraError

    def test_pickles(self) -> None:
        """It survives pickling with its message and attributes."""
        error = MissingExtraError(
            "f", "postgres", name="psycopg", problem="p", hint="h"
        )

        copy = pickle.loads(pickle.dumps(error))  # noqa: S301

        assert (str(error), error.name, error.problem, error.hint) == (
            str(copy),
            copy.name,
            copy.problem,
            copy.hint,
        )

    def test_without_a_module_name(self) -> None:
        """Without a module name, the message still reads."""
        error = MissingExtraError("f", "testing")

        assert (
            "f needs the 'testing' extra: a dependency is not installed; "
            "install it with: pip install 'prebuilds[testing]'"
        ) == str(error)


def test_plain_import_loads_no_extra() -> None:
    """Importing prebuilds, its stores, metrics and fakes loads no extra's module."""
    code = (
        "import json, sys, prebuilds, prebuilds.stores, prebuilds.testing; "
        "import prebuilds.metrics, prebuilds.__main__; "
        "from prebuilds.testing import FakeClock; "
        "from prebuilds.stores import SQLiteStore; "
        "print(json.dumps(sorted({m.partition('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert [] == [
        m
        for m in ("hypothesis", "psycopg", "psycopg_pool", "prometheus_client", "rich")
        if f'"{m}"' in result.stdout
    ]
