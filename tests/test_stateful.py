"""
The stateful model test: PoolMachine over every store.

Each store runs the machine side by side with the reference MemoryStore:
the invariants hold on both after every step, and they agree. The default
profile keeps it fast; ``--hypothesis-profile=thorough`` runs the machine
with the profile's ``max_examples`` and ``stateful_step_count``. Each run
reports its numbers of runs and steps on the terminal.

Then claims and deletes race from many threads on each store.
"""

from __future__ import annotations

import time

import pytest

from hypothesis import HealthCheck, Phase, settings

from prebuilds.testing import check_concurrent_claims
from prebuilds.testing._conformance import run_pool_machine
from prebuilds.testing._machine import RunCounter
from tests.conftest import StoreFactory


#: Runs per store in the default profile (PostgreSQL makes a schema per run).
FAST_EXAMPLES = {"memory": 100, "sqlite": 75, "postgres": 40}
FAST_STEPS = 40


def machine_settings(kind: str) -> settings:
    """The fast settings, or the thorough profile's numbers."""
    base = settings(
        deadline=None,
        phases=[
            Phase.explicit,
            Phase.reuse,
            Phase.generate,
            Phase.target,
            Phase.shrink,
        ],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    profile = settings.get_current_profile_name()
    if profile == "thorough":
        return base
    if profile == "ci-light":  # the other Pythons in CI: a quarter of the runs
        return settings(
            base, max_examples=FAST_EXAMPLES[kind] // 4, stateful_step_count=FAST_STEPS
        )
    return settings(
        base, max_examples=FAST_EXAMPLES[kind], stateful_step_count=FAST_STEPS
    )


def test_pool_machine(
    store_factory: StoreFactory,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every store keeps the pool's invariants and agrees with the reference."""
    kind = request.node.callspec.params["store_factory"]
    counter = RunCounter()
    started = time.perf_counter()

    run_pool_machine(store_factory, settings=machine_settings(kind), counter=counter)

    elapsed = time.perf_counter() - started
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():
            reporter.write_line(
                f"PoolMachine on {kind}: {counter.examples} runs, "
                f"{counter.steps} steps in {elapsed:.1f}s"
            )
    assert counter.steps > 0


def test_concurrent_claims(store_factory: StoreFactory) -> None:
    """Claims and deletes raced from many threads stay atomic on every store."""
    check_concurrent_claims(store_factory)
