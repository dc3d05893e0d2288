"""
The conformance kit: run :class:`PoolMachine` against a host's Store or
Claimer, side by side with the reference MemoryStore; race claims and
deletes; check the leader contract (one lease at a time, fenced writes).
"""

from __future__ import annotations

import sys
import threading

from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from uuid import UUID

import attrs

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import HypothesisException
from hypothesis.stateful import run_state_machine_as_test

from prebuilds._claimer import StoreClaimer
from prebuilds._model import PresetStatus, Transition
from prebuilds._records import (
    PREBUILDS_OWNER_ID,
    Lease,
    Lifecycle,
    PresetConfig,
    Template,
)
from prebuilds.exceptions import LeadershipLostError, StoreError
from prebuilds.interfaces import (
    BatchCreates,
    GroupedCreates,
    LeanClaims,
    StampedClaims,
)
from prebuilds.stores import MemoryStore
from prebuilds.testing._fakes import DEFAULT_START
from prebuilds.testing._machine import PoolMachine, RunCounter
from prebuilds.testing._rules import check_rules


if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prebuilds._records import Build, BuildRequest, Instance
    from prebuilds.interfaces import Claimer, Store

__all__ = [
    "check_claimer",
    "check_concurrent_claims",
    "check_leadership",
    "check_store",
]


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
    reopen: Callable[[Store], Store] | None = None,
    take_over: Callable[[Store], object] | None = None,
) -> None:
    """
    Check that a :class:`~prebuilds.interfaces.Store` keeps its contract.

    First the leader contract, with :func:`check_leadership` (*reopen* and
    *take_over* go to it). Then the rule checks: one fixed scenario per rule
    of the Store contract (and of the claim, through ``Store.claim`` and
    through :class:`~prebuilds.StoreClaimer`; and, for a store that offers
    :class:`~prebuilds.interfaces.StampedClaims`, of its stamps and
    ``claim_if_unchanged``), on one new store, so that a store that breaks a
    single rule is caught in every run. Then Hypothesis
    drives a whole system over stores that *factory* makes (a
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
        reopen: Given a store that *factory* made, returns another store
            object on the same backend (see :func:`check_leadership`).
        take_over: Given a store inside a leader scope, ends that scope's
            leadership the way the backend loses it (see
            :func:`check_leadership`).

    Raises:
        AssertionError: the store broke a rule; the message says which and
            gives the minimal sequence of steps that shows it.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       The leader contract is checked first; *reopen* and *take_over*.
    """
    check_leadership(factory, reopen=reopen, take_over=take_over)
    check_rules(factory)
    run_pool_machine(factory, settings=settings)
    check_concurrent_claims(factory)


def check_concurrent_claims(
    factory: Callable[[], Store], *, rounds: int = 20, instances: int = 6
) -> None:
    """
    Race claims and deletes on one pool from many threads at once.

    Each round fills a pool of *instances* ready instances, then starts
    ``2 * instances`` claims (each by another user; on a store that offers
    :class:`~prebuilds.interfaces.StampedClaims`, every other one through
    ``claim_if_unchanged``, and on one that offers
    :class:`~prebuilds.interfaces.LeanClaims`, every fourth one through
    ``claim_id_if_unchanged``) and one ``delete_prebuild`` per instance
    together. No instance may go to two
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
_VERSION = UUID(int=2)


def _race(store: Store, size: int) -> None:
    pool = _fill_pool(store, size)
    now = DEFAULT_START + timedelta(minutes=1)
    users = [UUID(int=0xB000 + n) for n in range(2 * size)]
    stamp: Any = store.read_preset(_PRESET).stamp
    stamped = store if isinstance(store, StampedClaims) and stamp is not None else None
    lean = store if stamped is not None and isinstance(store, LeanClaims) else None
    claims: dict[UUID, UUID | None] = {}
    deletes: dict[UUID, BuildRequest | None] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(users) + len(pool))

    def claim(user: UUID) -> None:
        arguments: dict[str, Any] = {
            "preset_id": _PRESET,
            "user_id": user,
            "name": f"claimed-by-{user.int}",
            "lifecycle": Lifecycle(last_used_at=now),
            "now": now,
            "version_id": _VERSION,
            "not_before": None,
        }
        try:
            start.wait()
            if lean is not None and user.int % 4 == 3:  # noqa: PLR2004
                del arguments["lifecycle"]
                claims[user] = lean.claim_id_if_unchanged(
                    stamp=stamp,
                    autostart_schedule=None,
                    next_start_at=None,
                    ttl=None,
                    **arguments,
                )
                return
            if stamped is not None and user.int % 2:
                instance = stamped.claim_if_unchanged(stamp=stamp, **arguments)
            else:
                instance = store.claim(**arguments)
            claims[user] = None if instance is None else instance.id
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
    template = Template(id=UUID(int=1), active_version_id=_VERSION)
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
    claims: dict[UUID, UUID | None],
    deletes: dict[UUID, BuildRequest | None],
) -> None:
    owners: dict[UUID, UUID] = {}
    for user, claimed in claims.items():
        if claimed is None:
            continue
        if claimed in owners:
            msg = (
                f"concurrent claims handed instance {claimed} to two users: "
                f"{owners[claimed]} and {user}"
            )
            raise AssertionError(msg)
        owners[claimed] = user
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


# -- leadership ------------------------------------------------------------------
def check_leadership(
    factory: Callable[[], Store],
    *,
    reopen: Callable[[Store], Store] | None = None,
    take_over: Callable[[Store], object] | None = None,
) -> None:
    """
    Check a store's leader contract: one lease at a time, and fenced writes.

    On a new store from *factory*, the kit checks that:

    - ``leader()`` yields a :class:`~prebuilds.Lease`, held when nobody else
      leads; while a scope holds it, ``leader()`` on the same store, from
      the same thread or another, yields a lease that is not held; once the
      scope has ended, ``leader()`` leads again.
    - With *reopen*, the same holds across two store objects on one backend
      (two processes, two replicas): while one holds the lease, the
      other's ``leader()`` is not held, both ways round.
    - Every fenced write (``create_prebuild``, ``delete_prebuild``,
      ``cancel_pending``, ``set_preset_status``, ``fail_stuck_builds``,
      ``build_finished``) given a lease that does not lead (one never held,
      one whose scope has ended) raises
      :class:`~prebuilds.exceptions.LeadershipLostError` and changes nothing
      the store reads back; given the held lease, it is applied.
    - With *take_over*: inside a scope, after ``take_over(store)``,
      ``leader()`` (on ``reopen(store)`` if given, else on the store) leads,
      and the old lease's fenced writes raise and change nothing while the
      new lease's are applied: a holder whose leadership was taken over
      cannot write.

    Args:
        factory: Returns a new, empty store.
        reopen: Given a store that *factory* made, returns another store
            object on the same backend, for example
            ``lambda s: SQLiteStore(s.path)`` or ``lambda s:
            PostgresStore(dsn, schema=s.schema)``; the kit closes it. Leave
            it out when a store's backend cannot be shared (a
            ``MemoryStore``).
        take_over: Given a store inside a leader scope, ends that scope's
            leadership the way your backend loses it in production, so that
            another ``leader()`` can take it: for the reference stores,
            expire the SQLite lease row (``UPDATE prebuilds_leader SET
            expires_at = 0``), terminate the PostgreSQL session that holds
            the advisory lock, or move a ``MemoryStore``'s clock past its
            *lease_ttl*. Leave it out when leadership cannot be lost but by
            ending the scope.

    Raises:
        AssertionError: the store broke a rule; the message says which.

    .. versionadded:: 0.2.0
    """
    store = factory()
    try:
        _check_exclusive(store)
        if reopen is not None:
            _check_exclusive_across(store, reopen)
        _check_fencing(store, _LeaderTargets.seed(store, base=0x1EAD00))
        if take_over is not None:
            _check_take_over(store, reopen, take_over)
    finally:
        _close(store)


def _close(store: Store) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        close()


def _leader_fail(message: str) -> NoReturn:
    raise AssertionError(f"[leader contract] {message}")


@contextmanager
def _scope(store: Store, what: str) -> Iterator[Lease]:
    """``store.leader()``, checking that it yields a Lease."""
    with store.leader() as lease:
        if not isinstance(lease, Lease):
            _leader_fail(
                f"{what}: leader() must yield a prebuilds.Lease, got {lease!r}"
            )
        yield lease


def _held_elsewhere(store: Store) -> Lease:
    """What ``store.leader()`` yields in another thread, right now."""
    got: list[Lease] = []
    errors: list[BaseException] = []

    def lead() -> None:
        try:
            with store.leader() as lease:
                got.append(lease)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=lead, name="prebuilds-kit-leader")
    thread.start()
    thread.join()
    if errors:
        msg = f"leader() in another thread raised {errors[0]!r}"
        raise AssertionError(msg) from errors[0]
    return got[0]


def _check_exclusive(store: Store) -> None:
    with _scope(store, "a new store") as first:
        if not first:
            _leader_fail("leader() on a new store, with nobody leading, did not lead")
        with _scope(store, "a nested scope") as second:
            if second:
                _leader_fail(
                    "a second leader() on the same store led while the first "
                    "scope held the lease"
                )
        if _held_elsewhere(store):
            _leader_fail("leader() in another thread led while a scope held the lease")
    with _scope(store, "after a scope ended") as again:
        if not again:
            _leader_fail("leadership was not released when the scope ended")


def _check_exclusive_across(store: Store, reopen: Callable[[Store], Store]) -> None:
    other = reopen(store)
    try:
        for holder, asker in ((store, other), (other, store)):
            with _scope(holder, "a store object") as first:
                if not first:
                    _leader_fail("leader() did not lead with nobody leading")
                with _scope(asker, "another store object") as second:
                    if second:
                        _leader_fail(
                            "leader() on another store object of the same "
                            "backend led while the first held the lease"
                        )
    finally:
        _close(other)


_AT = DEFAULT_START + timedelta(minutes=1)


@attrs.frozen(kw_only=True)
class _LeaderTargets:
    """
    What a fenced write would change: an active preset, a preset of a
    version no longer active with a queued creation, and a running pooled
    instance; on a store with ``create_prebuilds``, a creation of the active
    preset never submitted.
    """

    preset: UUID
    old_preset: UUID
    queued: BuildRequest
    pooled: BuildRequest
    unsubmitted: BuildRequest | None = None

    @classmethod
    def seed(cls, store: Store, *, base: int) -> _LeaderTargets:
        """Seed *store* with the targets (their IDs from *base* on)."""
        old_version, version = UUID(int=base + 2), UUID(int=base + 3)
        template = Template(id=UUID(int=base + 1), active_version_id=old_version)
        store.put_template(template)
        old = PresetConfig(
            id=UUID(int=base + 4),
            template_id=template.id,
            template_version_id=old_version,
            desired_instances=0,
        )
        store.put_preset(old)
        pooled = store.create_prebuild(old.id, now=DEFAULT_START, name="pooled")
        queued = store.create_prebuild(old.id, now=DEFAULT_START, name="queued")
        if pooled is None or queued is None:
            _leader_fail("create_prebuild refused an active preset")
        store.build_finished(pooled.build_id, now=DEFAULT_START, succeeded=True)
        store.put_template(attrs.evolve(template, active_version_id=version))
        preset = attrs.evolve(old, id=UUID(int=base + 5), template_version_id=version)
        store.put_preset(preset)
        unsubmitted = None
        if isinstance(store, BatchCreates):
            made = store.create_prebuilds(
                preset.id, now=DEFAULT_START, names=["unsubmitted"]
            )
            if len(made) != 1:
                _leader_fail("create_prebuilds refused an active preset")
            unsubmitted = made[0]
        return cls(
            preset=preset.id,
            old_preset=old.id,
            queued=queued,
            pooled=pooled,
            unsubmitted=unsubmitted,
        )

    def writes(self, store: Store) -> list[tuple[str, Callable[[Lease], object]]]:
        """Each fenced write, as a call taking the lease."""
        writes = self._writes(store)
        if isinstance(store, BatchCreates):
            batch = store
            writes.append(
                (
                    "create_prebuilds",
                    lambda lease: batch.create_prebuilds(
                        self.preset, now=_AT, names=["fenced", "fenced"], lease=lease
                    ),
                )
            )
            if self.unsubmitted is not None:
                dropped = [self.unsubmitted.build_id]
                writes.append(
                    (
                        "record_submits",
                        lambda lease: batch.record_submits(
                            [], not_submitted=dropped, now=_AT, lease=lease
                        ),
                    )
                )
        if isinstance(store, GroupedCreates):
            grouped = store
            writes.append(
                (
                    "create_prebuilds_grouped",
                    lambda lease: grouped.create_prebuilds_grouped(
                        [(self.preset, ["fenced"]), (self.preset, ["fenced"])],
                        now=_AT,
                        lease=lease,
                    ),
                )
            )
        return writes

    def _writes(self, store: Store) -> list[tuple[str, Callable[[Lease], object]]]:
        return [
            (
                "create_prebuild",
                lambda lease: store.create_prebuild(
                    self.preset, now=_AT, name="fenced", lease=lease
                ),
            ),
            (
                "delete_prebuild",
                lambda lease: store.delete_prebuild(
                    self.pooled.instance_id, now=_AT, lease=lease
                ),
            ),
            (
                "cancel_pending",
                lambda lease: store.cancel_pending(
                    self.old_preset, now=_AT, lease=lease
                ),
            ),
            (
                "set_preset_status",
                lambda lease: store.set_preset_status(
                    self.preset, PresetStatus.HARD_LIMITED, lease=lease
                ),
            ),
            (
                "fail_stuck_builds",
                lambda lease: store.fail_stuck_builds(
                    older_than=_AT + timedelta(days=1), now=_AT, lease=lease
                ),
            ),
            (
                "build_finished",
                lambda lease: store.build_finished(
                    self.queued.build_id, now=_AT, succeeded=True, lease=lease
                ),
            ),
        ]

    def state(self, store: Store) -> tuple[list[Instance], list[Build], list[object]]:
        """What the fenced writes could change, as the store reads it back."""
        return (
            store.list_instances(include_deleted=True),
            store.list_builds(),
            [store.read_preset(p).status for p in (self.preset, self.old_preset)],
        )


def _refused(store: Store, targets: _LeaderTargets, lease: Lease, why: str) -> None:
    """Every fenced write with *lease* raises LeadershipLostError, writing nothing."""
    for name, write in targets.writes(store):
        before = targets.state(store)
        try:
            write(lease)
        except LeadershipLostError:
            pass
        except Exception as e:
            msg = (
                f"[leader contract] {name} with a lease that {why} raised {e!r}, "
                "not LeadershipLostError"
            )
            raise AssertionError(msg) from e
        else:
            _leader_fail(
                f"{name} with a lease that {why} was applied: it must raise "
                "LeadershipLostError and write nothing"
            )
        if targets.state(store) != before:
            _leader_fail(
                f"{name} with a lease that {why} raised LeadershipLostError but "
                "changed the store"
            )


def _applied(store: Store, targets: _LeaderTargets, lease: Lease) -> None:
    """The fenced writes with a lease that leads go through."""
    before = targets.state(store)
    for name, write in targets.writes(store):
        try:
            write(lease)
        except Exception as e:
            msg = f"[leader contract] {name} with the lease that leads raised {e!r}"
            raise AssertionError(msg) from e
    if targets.state(store) == before:
        _leader_fail("the fenced writes with the lease that leads changed nothing")


def _check_fencing(store: Store, targets: _LeaderTargets) -> None:
    _refused(store, targets, Lease(held=False), "was never held")
    with _scope(store, "fencing") as ended:
        pass
    _refused(store, targets, ended, "ended with its scope")
    with _scope(store, "fencing") as lease:
        if not lease:
            _leader_fail("leader() did not lead with nobody leading")
        _refused(store, targets, ended, "ended with its scope")
        _applied(store, targets, lease)


def _check_take_over(
    store: Store,
    reopen: Callable[[Store], Store] | None,
    take_over: Callable[[Store], object],
) -> None:
    targets = _LeaderTargets.seed(store, base=0x2EAD00)
    successor = reopen(store) if reopen is not None else store
    try:
        scope = _scope(store, "before a take-over")
        old = scope.__enter__()
        try:
            if not old:
                _leader_fail("leader() did not lead with nobody leading")
            take_over(store)
            with _scope(successor, "after take_over") as new:
                if not new:
                    _leader_fail(
                        "after take_over(store), leader() did not take the "
                        "leadership over"
                    )
                _refused(store, targets, old, "was taken over")
                _applied(successor, targets, new)
        except BaseException as e:
            with suppress(StoreError):
                scope.__exit__(type(e), e, e.__traceback__)
            raise
        with suppress(StoreError):  # ending a scope that lost its lease may fail
            scope.__exit__(None, None, None)
    finally:
        if successor is not store:
            _close(successor)
