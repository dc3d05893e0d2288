"""
The optional dependencies: which extra brings which module, and the error
that names the extra when a module is missing.
"""

from __future__ import annotations

import contextlib
import importlib

from typing import TYPE_CHECKING

from prebuilds.exceptions import MissingExtraError


if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

#: The top-level modules each extra of ``pyproject.toml`` brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("psycopg", "psycopg_pool"),
    "prometheus": ("prometheus_client",),
    "cli": ("rich",),
    "testing": ("hypothesis",),
}

_NO_LIBPQ = "psycopg is installed but found no libpq (the PostgreSQL client library)"
_LIBPQ_HINT = (
    "pip install 'psycopg[binary]' (a libpq of its own), "
    "or install libpq with the system's package manager"
)


@contextlib.contextmanager
def require(extra: str, *, feature: str) -> Iterator[None]:
    """
    Turn a missing module of *extra* into a :class:`MissingExtraError`.

    Wrap the import of *feature*'s module: a ``ModuleNotFoundError`` for one
    of the extra's modules (psycopg's "no libpq" ``ImportError`` too) becomes
    the error that gives the install command; any other import error, a bug
    rather than a missing extra, passes unchanged.
    """
    modules = EXTRAS[extra]
    try:
        yield
    except MissingExtraError as e:
        # A module the feature imports met the missing extra first (the
        # kit imports the strategies): name the feature that was asked for.
        raise MissingExtraError(feature, e.extra, e.name, e.problem, e.hint) from e
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        if top not in modules:
            raise
        raise MissingExtraError(feature, extra, name=top) from e
    except ImportError as e:
        if "psycopg" in modules and "libpq" in str(e):
            raise MissingExtraError(
                feature, extra, name="psycopg", problem=_NO_LIBPQ, hint=_LIBPQ_HINT
            ) from e
        raise


def load(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import *module*, which needs *extra*, for *feature*."""
    with require(extra, feature=feature):
        return importlib.import_module(module)
