"""
The package as a host sees it: import side effects, the public names, the
version, typing, and the no-op implementations.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import importlib.metadata
import inspect
import json
import subprocess
import sys
import typing
import uuid

from datetime import datetime, timezone
from pathlib import Path

import attrs
import pytest

import prebuilds

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
    """``prebuilds.__version__`` is the installed distribution's version string."""
    version = prebuilds.__version__

    assert isinstance(version, str)
    assert importlib.metadata.version("prebuilds") == version


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
