"""
Helpers for testing code that uses prebuilds (needs the ``testing`` extra).

- :mod:`prebuilds.testing.strategies`: Hypothesis strategies for valid
  presets, schedules and snapshots (``from prebuilds.testing import
  strategies``).
- :func:`check_store` and :func:`check_claimer`: the conformance kit, a
  Hypothesis state machine (:class:`PoolMachine`) run against your Store or
  Claimer; :func:`check_concurrent_claims` races claims and deletes;
  :func:`check_leadership` checks the leader contract (``check_store`` runs
  it first).
- :class:`FakeClock` and :class:`FakeProvisioner`: the host's side, scripted.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from prebuilds.testing._conformance import (
    check_claimer,
    check_concurrent_claims,
    check_leadership,
    check_store,
)
from prebuilds.testing._fakes import FakeClock, FakeProvisioner
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
