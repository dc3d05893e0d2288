"""
The conformance kit: run :class:`PoolMachine` against a host's Store or
Claimer, side by side with the reference MemoryStore.
"""

from __future__ import annotations

import sys
import threading

from datetime import timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import HypothesisException
from hypothesis.stateful import run_state_machine_as_test

from prebuilds._claimer import StoreClaimer
from prebuilds._model import Transition
from prebuilds._records import PREBUILDS_OWNER_ID, Lifecycle, PresetConfig, Template
from prebuilds.stores import MemoryStore
from prebuilds.testing._fakes import DEFAULT_START
from prebuilds.testing._machine import PoolMachine, RunCounter
from prebuilds.testing._rules import check_rules


if TYPE_CHECKING:
    from collections.abc import Callable

    from prebuilds._records import BuildRequest, Instance
    from prebuilds.interfaces import Claimer, Store

__all__ = ["check_claimer", "check_concurrent_claims", "check_store"]


def default_settings() -> settings:
    """
    The kit's settings unless told: 25 runs of up to 30 steps, no deadline,
    no ``explain`` phase (it traces every line, and the failing steps say
    enough).

    Built on the current Hypothesis profile, so a profile's ``derandomize``
    or ``database`` still apply.
    """
    return settings(
        max_examples=25,
        stateful_step_count=30,
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


def run_pool_machine(
    store_factory: Callable[[], Store],
    claimer_factory: Callable[[Store], Claimer] = StoreClaimer,
    *,
    settings: settings | None = None,
    counter: RunCounter | None = None,
) -> None:
    """
    Run the machine; turn any failure into an :class:`AssertionError` that
    carries the minimal failing sequence of steps.
    """

    class BoundPoolMachine(PoolMachine):
        def __init__(self) -> None:
            super().__init__(store_factory, claimer_factory, counter=counter)

    # The failing steps then start with "state = PoolMachine()".
    BoundPoolMachine.__name__ = PoolMachine.__name__
    try:
        run_state_machine_as_test(
            BoundPoolMachine,
            settings=settings if settings is not None else default_settings(),
        )
    except HypothesisException:
        raise  # a misuse of Hypothesis (bad settings, a health check)
    except Exception as e:
        steps = "\n".join(f"    {line}" for line in getattr(e, "__notes__", ()))
        msg = f"{type(e).__name__}: {e}\n\nMinimal failing sequence of steps:\n{steps}"
        raise AssertionError(msg) from e


def check_store(
    factory: Callable[[], Store],
    *,
    settings: settings | None = None,
) -> None:
    """
    Check that a :class:`~prebuilds.interfaces.Store` keeps its contract.

    First the rule checks: one fixed scenario per rule of the Store contract
    (and of the claim, through ``Store.claim`` and through
    :class:`~prebuilds.StoreClaimer`), on one new store, so that a store
    that breaks a single rule is caught in every run. Then Hypothesis drives a whole system over stores that *factory* makes (a
    new, empty store per run): presets added and changed, template
    versions published, deprecated and deleted, reconciliation passes, a
    fake clock, a scripted fake provisioner (failed, stalled, rejected
    builds), readiness, claims through :class:`~prebuilds.StoreClaimer`,
    pause and invalidation, and the race of a claim with a stale delete.
    After every step it checks the pool's invariants on the store, and that
    the store agrees with a :class:`~prebuilds.stores.MemoryStore` driven
    the same way.

    The store is closed (its ``close()``, if it has one) at the end of each
    run.

    Args:
        factory: Returns a new, empty store.
        settings: Hypothesis settings (default: 25 runs of up to 30 steps,
            no deadline).

    Raises:
        AssertionError: the store broke a rule; the message says which and
            gives the minimal sequence of steps that shows it.

    .. versionadded:: 0.1.0
    """
    check_rules(factory)
    run_pool_machine(factory, settings=settings)
    check_concurrent_claims(factory)


def check_concurrent_claims(
    factory: Callable[[], Store], *, rounds: int = 20, instances: int = 6
) -> None:
    """
    Race claims and deletes on one pool from many threads at once.

    Each round fills a pool of *instances* ready instances, then starts
    ``2 * instances`` claims (each by another user) and one
    ``delete_prebuild`` per instance together. No instance may go to two
    users, nor be both claimed and deleted; a claim may miss only when
    nothing claimable is left at the end.

    Raises:
        AssertionError: a claim or delete was not atomic.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(rounds):
            store = factory()
            try:
                _race(store, instances)
            finally:
                close = getattr(store, "close", None)
                if close is not None:
                    close()
    finally:
        sys.setswitchinterval(interval)


_PRESET = UUID(int=3)


def _race(store: Store, size: int) -> None:
    pool = _fill_pool(store, size)
    now = DEFAULT_START + timedelta(minutes=1)
    users = [UUID(int=0xB000 + n) for n in range(2 * size)]
    claims: dict[UUID, Instance | None] = {}
    deletes: dict[UUID, BuildRequest | None] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(users) + len(pool))

    def claim(user: UUID) -> None:
        try:
            start.wait()
            claims[user] = store.claim(
                preset_id=_PRESET,
                user_id=user,
                name=f"claimed-by-{user.int}",
                lifecycle=Lifecycle(last_used_at=now),
                now=now,
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def delete(instance_id: UUID) -> None:
        try:
            start.wait()
            deletes[instance_id] = store.delete_prebuild(instance_id, now=now)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(u,)) for u in users]
    threads += [threading.Thread(target=delete, args=(i,)) for i in pool]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        msg = f"a concurrent claim or delete raised {errors[0]!r}"
        raise AssertionError(msg) from errors[0]
    _check_race(store, pool, claims, deletes)


def _fill_pool(store: Store, size: int) -> list[UUID]:
    """A preset with *size* ready instances, created a second apart."""
    template = Template(id=UUID(int=1), active_version_id=UUID(int=2))
    store.put_template(template)
    store.put_preset(
        PresetConfig(
            id=_PRESET,
            template_id=template.id,
            template_version_id=template.active_version_id,
            desired_instances=0,
        )
    )
    pool = []
    for n in range(size):
        created = DEFAULT_START + timedelta(seconds=n)
        request = store.create_prebuild(_PRESET, now=created, name=f"race-{n}")
        if request is None:
            msg = "create_prebuild refused an active preset"
            raise AssertionError(msg)
        store.build_finished(request.build_id, now=created, succeeded=True)
        store.set_ready(request.instance_id)
        pool.append(request.instance_id)
    return pool


def _check_race(
    store: Store,
    pool: list[UUID],
    claims: dict[UUID, Instance | None],
    deletes: dict[UUID, BuildRequest | None],
) -> None:
    owners: dict[UUID, UUID] = {}
    for user, instance in claims.items():
        if instance is None:
            continue
        if instance.id in owners:
            msg = (
                f"concurrent claims handed instance {instance.id} to two users: "
                f"{owners[instance.id]} and {user}"
            )
            raise AssertionError(msg)
        owners[instance.id] = user
    missed = any(c is None for c in claims.values())
    for instance_id in pool:
        instance = store.get_instance(instance_id)
        deleted = deletes[instance_id] is not None
        owner = owners.get(instance_id)
        if owner is not None and deleted:
            msg = f"instance {instance_id} was both claimed and deleted"
            raise AssertionError(msg)
        if owner is not None and instance.owner_id != owner:
            msg = (
                f"instance {instance_id} was claimed by {owner} but is owned by "
                f"{instance.owner_id}"
            )
            raise AssertionError(msg)
        if owner is None and instance.owner_id != PREBUILDS_OWNER_ID:
            msg = f"instance {instance_id} left the pool, but no claim returned it"
            raise AssertionError(msg)
        claimable = (
            owner is None
            and not deleted
            and instance.latest_transition is not Transition.DELETE
        )
        if claimable and missed:
            msg = f"a claim missed while instance {instance_id} was claimable"
            raise AssertionError(msg)


def check_claimer(
    factory: Callable[[Store], Claimer],
    *,
    store_factory: Callable[[], Store] = MemoryStore,
    settings: settings | None = None,
) -> None:
    """
    Check that a :class:`~prebuilds.interfaces.Claimer` keeps its contract.

    Like :func:`check_store` (the claim rules' fixed scenarios first, then
    the state machine), but every claim goes through the claimer that
    *factory* returns for the run's store. The claimer must hand out the
    oldest ready, unexpired instance of an active preset, never one twice,
    set its owner, name and lifecycle from the claim, and raise
    :class:`~prebuilds.exceptions.NoClaimablePrebuildsError` on a miss
    (or :class:`~prebuilds.exceptions.PresetInactiveError` for an inactive
    preset).

    Args:
        factory: Given a new, empty store, returns the claimer under test.
        store_factory: Returns that store (default:
            :class:`~prebuilds.stores.MemoryStore`).
        settings: Hypothesis settings (default: 25 runs of up to 30 steps,
            no deadline).

    Raises:
        AssertionError: the claimer broke a rule; the message says which
            and gives the minimal sequence of steps that shows it.

    .. versionadded:: 0.1.0
    """
    check_rules(store_factory, factory)
    run_pool_machine(store_factory, factory, settings=settings)
