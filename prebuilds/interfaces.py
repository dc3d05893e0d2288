"""
The seams of prebuilds: what the library offers (``Reconciler``,
``Claimer``, …) and what a host injects (``Store``, ``Provisioner``,
``Clock``, ``EventSink``).

Every Protocol here has a no-op or a reference implementation in the
library; a host may write its own and check it with
:mod:`prebuilds.testing`.

Every Protocol is runtime-checkable: ``isinstance(obj, Store)`` tells
whether *obj* has the Protocol's methods (not whether their signatures or
behaviour are right: that is the conformance kit's job). The types in their
signatures are imported at runtime, so ``typing.get_type_hints`` works
on each Protocol and each of its methods.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable
from uuid import UUID

# Imported at runtime, not only for type checkers: typing.get_type_hints and
# autodoc resolve the signatures below through this module's namespace.
from prebuilds._model import (
    GlobalSnapshot,
    PresetStatus,
    ReconcileStats,
)
from prebuilds._pool import PoolFacts, PresetFacts
from prebuilds._records import (
    Build,
    BuildRequest,
    Event,
    Instance,
    Lease,
    Lifecycle,
    PresetConfig,
    ResourceReplacement,
    Template,
)
from prebuilds._status import PoolStatus


__all__ = [
    "BatchCreates",
    "Claimer",
    "Clock",
    "EventSink",
    "GroupedCreates",
    "LeanClaims",
    "PassObserver",
    "Provisioner",
    "Reconciler",
    "ReconciliationOrchestrator",
    "StampedClaims",
    "StateSnapshotter",
    "Store",
]


@runtime_checkable
class Clock(Protocol):
    """
    **Protocol:** the source of the current time.

    ``now()`` returns a timezone-aware datetime; the reference stores and
    reconciler never read the system clock except through it.

    .. versionadded:: 0.1.0
    """

    def now(self) -> datetime:
        """The current time, timezone-aware."""


@runtime_checkable
class EventSink(Protocol):
    """
    **Protocol:** where the reference engine reports what happened.

    ``emit`` must not raise: an event sink that fails must log and return.
    It is called from the reconciler's worker threads.

    .. versionadded:: 0.1.0
    """

    def emit(self, event: Event) -> None:
        """Record *event*."""


@runtime_checkable
class PassObserver(Protocol):
    """
    **Protocol (optional):** an event sink that also wants each
    reconciliation pass's outcome.

    When the reconciler's event sink offers ``pass_finished``, the
    reconciler calls it at the end of every pass with the pass's
    :class:`~prebuilds.ReconcileStats` (its ``elapsed`` time, whether it
    led, whether it was paused) and the statuses of every pool it read
    (empty when the pass did not lead or could not read the store).
    :class:`prebuilds.metrics.PrometheusMetrics` keeps them for its gauges,
    so a scrape never touches the store. Like ``emit``, it must not raise.

    .. versionadded:: 0.2.0
    """

    def pass_finished(
        self, stats: ReconcileStats, statuses: Sequence[PoolStatus]
    ) -> None:
        """Record the pass that just ended."""


@runtime_checkable
class Provisioner(Protocol):
    """
    **Protocol:** the host's builder of real instances.

    ``submit`` is called *after* the store committed the build, and must not
    wait for it: it queues the work and returns. The host later reports
    through the store: ``build_started``, ``build_finished`` and
    ``set_ready``.

    ``submit`` may raise :class:`~prebuilds.exceptions.ProvisionerValidationError`
    for a deterministic rejection (the preset is then marked
    ``VALIDATION_FAILED`` and no longer creates); any other exception is
    recorded as a failed build and the preset backs off.

    .. versionadded:: 0.1.0
    """

    def submit(self, request: BuildRequest) -> None:
        """Queue *request* for building; return at once."""


@runtime_checkable
class Store(Protocol):
    """
    **Protocol:** the storage seam: presets, instances, builds, settings.

    Every method is one transaction. A store keeps **facts** and applies
    **atomic transitions**; it decides no policy. What state a pool is in
    (running, in progress, pending, backing off, hard-limited) is derived from
    its facts by :func:`prebuilds.derive`, and what a claim may take is worked
    out by the claimer: the store only compares.

    Guarantees every implementation gives:

    - ``read_pool`` is one consistent read, in a constant number of queries
      whatever the number of presets; inside a leader scope it reads what the
      scope's leadership was granted on.
    - ``claim`` is one atomic transition: the oldest (``created_at``, then
      ID) instance of the preset that is pooled, not deleted, ready, whose
      latest build is a successful start, on *version_id* and created at or
      after *not_before*, handed to one user with the given name and
      lifecycle; an instance is handed to at most one user.
    - ``delete_prebuild`` re-checks, inside its transaction, that the
      instance is still pooled; it never deletes a claimed instance.
    - ``create_prebuild`` writes the instance and its first build together.
    - ``leader()`` is non-blocking: it yields a :class:`~prebuilds.Lease`
      that is held by at most one scope at a time across every store object
      on the same backend, and not held (falsy) when another holder has it.
    - A write given ``lease=`` (``create_prebuild``, ``delete_prebuild``,
      ``cancel_pending``, ``set_preset_status``, ``fail_stuck_builds``,
      ``build_finished``) is *fenced*: it is applied only if that lease still
      holds leadership, checked in the write's own transaction; otherwise it
      raises :class:`~prebuilds.exceptions.LeadershipLostError` and writes
      nothing. A lease whose scope ended, that was never held, or whose
      leadership another holder took over cannot write. ``lease=None``
      writes unfenced (the host's own calls).

    Lookups of unknown IDs raise the matching ``…NotFoundError``; a backend
    failure raises :class:`~prebuilds.exceptions.StoreError`. A bad
    argument (a wrong type, a value out of the bounds of :doc:`/limits`, a
    claim for :data:`~prebuilds.PREBUILDS_OWNER_ID`) raises
    :class:`~prebuilds.exceptions.InvalidInputError` naming it, before
    anything is read or written; a call either applies fully or leaves the
    store as it was.

    .. versionadded:: 0.1.0
    """

    # -- configuration, written by the host --------------------------------
    def put_template(self, template: Template) -> None:
        """Insert or replace *template*; a new active version drains the old presets."""

    def put_preset(self, preset: PresetConfig) -> None:
        """Insert or replace a preset's configuration."""

    def invalidate_preset(self, preset_id: UUID, *, at: datetime) -> None:
        """Expire every pooled instance of the preset created before *at*."""

    def set_paused(self, paused: bool) -> None:
        """Pause or resume reconciliation (persisted)."""

    def is_paused(self) -> bool:
        """Whether reconciliation is paused."""

    def get_template(self, template_id: UUID) -> Template:
        """The template with *template_id* (:class:`~prebuilds.exceptions.TemplateNotFoundError`)."""

    def read_preset(self, preset_id: UUID) -> PresetFacts:
        """What the store keeps about the preset, with its template."""

    # -- the reconciler --------------------------------------------------------
    def leader(self) -> AbstractContextManager[Lease]:
        """
        A non-blocking leader scope: yields a :class:`~prebuilds.Lease`,
        truthy when this caller now leads (until the scope exits).
        """

    def read_pool(self) -> PoolFacts:
        """Every preset and every pooled instance, in one consistent read."""

    def create_prebuild(
        self, preset_id: UUID, *, now: datetime, name: str, lease: Lease | None = None
    ) -> BuildRequest | None:
        """A new pooled instance and its pending start build; None if the preset is no longer active."""

    def delete_prebuild(
        self, instance_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> BuildRequest | None:
        """A pending delete build; None if the instance was claimed, is gone or already deleting."""

    def cancel_pending(
        self, preset_id: UUID, *, now: datetime, lease: Lease | None = None
    ) -> list[BuildRequest]:
        """Cancel queued creations of an inactive preset; the orphan deletes to submit."""

    def set_preset_status(
        self, preset_id: UUID, status: PresetStatus, *, lease: Lease | None = None
    ) -> None:
        """Record the preset's health."""

    def fail_stuck_builds(
        self, *, older_than: datetime, now: datetime, lease: Lease | None = None
    ) -> list[Build]:
        """Fail the pool's builds pending or running since before *older_than*."""

    # -- reports from the host's provisioner -------------------------------
    def build_started(self, build_id: UUID, *, now: datetime) -> None:
        """A worker picked the build up."""

    def build_finished(
        self,
        build_id: UUID,
        *,
        now: datetime,
        succeeded: bool,
        error_kind: str | None = None,
        error: str | None = None,
        lease: Lease | None = None,
    ) -> None:
        """The build ended; a report on an already finished build is ignored."""

    def set_ready(self, instance_id: UUID, *, ready: bool = True) -> None:
        """The instance's agents are (or are no longer) ready."""

    # -- the claimer -------------------------------------------------------------
    def claim(
        self,
        *,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """
        Atomically hand the oldest claimable instance of *preset_id* to
        *user_id*, with *name* and *lifecycle*; None on a miss.

        Claimable: pooled, not deleted, ready, its latest build a successful
        start, built from *version_id*, and created at or after *not_before*
        (``None``: no cut-off). The claimer computed both.
        """

    # -- reads -------------------------------------------------------------------
    def get_instance(self, instance_id: UUID) -> Instance:
        """The instance with *instance_id*."""

    def list_instances(
        self,
        *,
        preset_id: UUID | None = None,
        owner_id: UUID | None = None,
        include_deleted: bool = False,
    ) -> list[Instance]:
        """Instances, oldest first, filtered by preset and owner."""

    def get_build(self, build_id: UUID) -> Build:
        """The build with *build_id*."""

    def list_builds(self, *, instance_id: UUID | None = None) -> list[Build]:
        """Builds, in creation order."""


@runtime_checkable
class StampedClaims(Protocol):
    """
    **Protocol (optional):** a store that can claim against cached facts.

    A store that offers it keeps an integer ``stamp`` per preset (returned
    in :class:`~prebuilds.PresetFacts`) and raises it in the same
    transaction as every ``put_preset``, every ``invalidate_preset`` and
    every ``put_template`` of the preset's template. A claimer may then
    cache a preset's facts and claim in one round trip:
    ``claim_if_unchanged`` is ``claim`` applied only while the preset's stamp
    still equals *stamp*; otherwise it raises
    :class:`~prebuilds.exceptions.PresetChangedError` and writes nothing.

    .. versionadded:: 0.1.0
    """

    def claim_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        lifecycle: Lifecycle,
        now: datetime,
        version_id: UUID,
        not_before: datetime | None,
    ) -> Instance | None:
        """``claim``, provided the preset's stamp is still *stamp*."""


@runtime_checkable
class LeanClaims(Protocol):
    """
    **Protocol (optional):** a stamped claim that returns only the ID.

    ``claim_id_if_unchanged`` is
    :meth:`~prebuilds.interfaces.StampedClaims.claim_if_unchanged` with the
    claimed lifecycle given by its fields, and the claimed instance's ID
    returned instead of the whole record: what
    :class:`~prebuilds.StoreClaimer` needs, without building an
    :class:`~prebuilds.Instance` and a :class:`~prebuilds.Lifecycle` per
    claim. The instance gets the lifecycle
    ``Lifecycle(autostart_schedule=autostart_schedule,
    next_start_at=next_start_at, ttl=ttl, last_used_at=now)`` (its other
    fields cleared), exactly as ``claim_if_unchanged`` with that lifecycle
    would give it; the same refusals, the same errors (an argument that is
    not valid: :class:`~prebuilds.exceptions.InvalidInputError` naming it;
    a changed stamp: :class:`~prebuilds.exceptions.PresetChangedError`,
    nothing written). A store offering it also offers
    :class:`StampedClaims`; a store without it is claimed from with
    ``claim_if_unchanged``.

    .. versionadded:: 0.2.0
    """

    def claim_id_if_unchanged(
        self,
        *,
        stamp: int,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        now: datetime,
        autostart_schedule: str | None,
        next_start_at: datetime | None,
        ttl: timedelta | None,
        version_id: UUID,
        not_before: datetime | None,
    ) -> UUID | None:
        """The claimed instance's ID (None on a miss), provided the stamp is *stamp*."""


@runtime_checkable
class BatchCreates(Protocol):
    """
    **Protocol (optional):** a store that creates a preset's new instances
    in one transaction.

    ``create_prebuilds`` is ``create_prebuild`` once per name of *names*,
    all or nothing, in one (fenced) write transaction: the same checks
    (every name is checked before anything is read or written; a bad one
    raises :class:`~prebuilds.exceptions.InvalidInputError` naming
    ``names[i]``), the same fence (:class:`~prebuilds.exceptions.LeadershipLostError`,
    nothing written) and the same errors
    (:class:`~prebuilds.exceptions.PresetNotFoundError`). It returns one
    :class:`~prebuilds.BuildRequest` per name, in the order of *names*, or
    an empty list if the preset is no longer active (nothing written). The
    reconciler uses it when its store offers it, and ``create_prebuild``
    per instance otherwise.

    A batch's builds are written *not submitted*: not yet handed to the
    provisioner. ``record_submits`` marks those handed over (and cancels
    those that never will be) in one transaction. ``fail_stuck_builds`` ends
    a stuck build that is still pending and not submitted as
    ``CANCELED`` with ``error_kind`` ``"not_submitted"`` (a creation the
    engine never handed over, say because it was killed between the commit
    and the submit), not as a failure: it counts toward neither the backoff
    nor the hard limit. A build that was submitted (or that its provisioner
    started) and then hung fails with ``error_kind`` ``"timeout"`` as before.
    ``create_prebuild``'s builds are submitted from the start.

    .. versionadded:: 0.2.0
    """

    def create_prebuilds(
        self,
        preset_id: UUID,
        *,
        now: datetime,
        names: Sequence[str],
        lease: Lease | None = None,
    ) -> list[BuildRequest]:
        """A new pooled instance and its pending start build per name; [] if inactive."""

    def record_submits(
        self,
        submitted: Sequence[UUID],
        *,
        now: datetime,
        not_submitted: Sequence[UUID] = (),
        lease: Lease | None = None,
    ) -> None:
        """
        Mark the builds of *submitted* handed to the provisioner, and cancel
        the still pending, unsubmitted ones of *not_submitted* (``error_kind``
        ``"not_submitted"``, finished at *now*) and withdraw their instances
        (deleted: never provisioned, nothing to destroy), in one fenced write
        transaction. An ID of neither kind of build is ignored (a build
        already finished stays as it is); a bad argument raises
        :class:`~prebuilds.exceptions.InvalidInputError` naming it.
        """


@runtime_checkable
class GroupedCreates(BatchCreates, Protocol):
    """
    **Protocol (optional):** a :class:`BatchCreates` store that creates
    several presets' new instances in one transaction.

    ``create_prebuilds_grouped`` is ``create_prebuilds(preset_id, now=now,
    names=names, lease=lease)`` for each (preset ID, names) pair of
    *groups*, in order, all in one (fenced) write transaction, all or
    nothing: every argument is checked before anything is read or written
    (a bad one raises :class:`~prebuilds.exceptions.InvalidInputError`
    naming ``groups[i].preset_id`` or ``groups[i].names[j]``; at most
    10,000 names in all), a lost lease raises
    :class:`~prebuilds.exceptions.LeadershipLostError` and an unknown
    preset :class:`~prebuilds.exceptions.PresetNotFoundError`, with nothing
    written. It returns one list of :class:`~prebuilds.BuildRequest` per
    pair, in order: empty for a preset no longer active (nothing written
    for it). The builds are not submitted, as ``create_prebuilds``' are.

    The reconciler uses it when its store offers it (with
    :class:`BatchCreates`): a pass's creations go to the store a few
    presets at a time, one commit for them all (a commit is most of a
    creation's cost on SQLite). On a
    :class:`~prebuilds.exceptions.PresetNotFoundError` it creates the
    group's presets one at a time, so the error is the missing preset's.

    .. versionadded:: 0.2.0
    """

    def create_prebuilds_grouped(
        self,
        groups: Sequence[tuple[UUID, Sequence[str]]],
        *,
        now: datetime,
        lease: Lease | None = None,
    ) -> list[list[BuildRequest]]:
        """``create_prebuilds`` per pair of *groups*, in one transaction."""


@runtime_checkable
class StateSnapshotter(Protocol):
    """
    **Protocol:** captures every pool's state in one consistent read.

    .. versionadded:: 0.1.0
    """

    def snapshot_state(self, store: Store) -> GlobalSnapshot:
        """One consistent read of *store*."""


@runtime_checkable
class Reconciler(StateSnapshotter, Protocol):
    """
    **Protocol:** runs one reconciliation pass over every pool.

    ``reconcile_all`` never raises for a failure of one preset: it reports
    it and goes on. It returns what the pass did.

    .. versionadded:: 0.1.0
    """

    def reconcile_all(self) -> ReconcileStats:
        """Snapshot, calculate and execute, once, for every preset."""


@runtime_checkable
class ReconciliationOrchestrator(Reconciler, Protocol):
    """
    **Protocol:** runs :meth:`Reconciler.reconcile_all` on an interval.

    ``run`` blocks until ``stop`` is called. ``stop`` is idempotent and
    thread-safe: it waits up to *timeout* seconds (``None``: forever) for
    the current pass to end.

    .. versionadded:: 0.1.0
    """

    def run(self) -> None:
        """Reconcile on an interval until stopped."""

    def stop(
        self, cause: BaseException | None = None, *, timeout: float | None = None
    ) -> None:
        """Stop the loop, recording *cause*."""

    def track_resource_replacement(
        self,
        workspace_id: UUID,
        build_id: UUID,
        replacements: Sequence[ResourceReplacement],
    ) -> None:
        """Record that claiming *workspace_id* replaced resources."""


@runtime_checkable
class Claimer(Protocol):
    """
    **Protocol:** hands a prebuilt instance to a user.

    ``claim`` is one atomic transition; it returns the claimed instance's ID
    or raises :class:`~prebuilds.exceptions.NoClaimablePrebuildsError` so the
    host builds one cold. ``initiator`` is the ID of the pool's system owner.

    .. versionadded:: 0.1.0
    """

    def claim(
        self,
        *,
        now: datetime,
        user_id: UUID,
        name: str,
        preset_id: UUID,
        autostart_schedule: str | None = None,
        next_start_at: datetime | None = None,
        ttl: timedelta | None = None,
    ) -> UUID:
        """Claim a prebuilt instance of *preset_id* for *user_id*."""

    def initiator(self) -> UUID:
        """The pool's system owner."""
