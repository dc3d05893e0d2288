"""
Helpers for testing code that uses prebuilds.

- :class:`FakeClock` and :class:`FakeProvisioner`: the host's side, scripted.
  They need nothing beyond prebuilds itself.
- :mod:`prebuilds.testing.strategies`: Hypothesis strategies for valid
  presets, schedules and snapshots (``from prebuilds.testing import
  strategies``).
- :func:`check_store` and :func:`check_claimer`: the conformance kit, a
  Hypothesis state machine (:class:`PoolMachine`) run against your Store or
  Claimer; :func:`check_concurrent_claims` races claims and deletes;
  :func:`check_leadership` checks the leader contract (``check_store`` runs
  it first).

The strategies and the conformance kit need the ``testing`` extra
(``pip install 'prebuilds[testing]'``, which brings Hypothesis); they are
imported on first use, and without the extra they raise
:class:`~prebuilds.exceptions.MissingExtraError` with that command.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prebuilds._extras import load
from prebuilds.testing._fakes import FakeClock, FakeProvisioner


if TYPE_CHECKING:
    from prebuilds.testing import strategies as strategies
    from prebuilds.testing._conformance import (
        check_claimer,
        check_concurrent_claims,
        check_leadership,
        check_store,
    )
    from prebuilds.testing._machine import PoolMachine

__all__: list[str] = [
    "FakeClock",
    "FakeProvisioner",
    "PoolMachine",
    "check_claimer",
    "check_concurrent_claims",
    "check_leadership",
    "check_store",
]

#: The names that need Hypothesis, and the module each lives in.
_KIT = {
    "PoolMachine": "prebuilds.testing._machine",
    "check_claimer": "prebuilds.testing._conformance",
    "check_concurrent_claims": "prebuilds.testing._conformance",
    "check_leadership": "prebuilds.testing._conformance",
    "check_store": "prebuilds.testing._conformance",
    "strategies": "prebuilds.testing.strategies",
}


def __getattr__(name: str) -> Any:
    # The Hypothesis-based kit loads on first use, so that the fakes work on
    # a plain install and a missing extra is named (MissingExtraError).
    module = _KIT.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    loaded = load(module, extra="testing", feature=f"{__name__}.{name}")
    return loaded if name == "strategies" else getattr(loaded, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_KIT})
