"""StoreClaimer: the reference Claimer, one atomic store transition."""

from __future__ import annotations

import threading
import time

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from prebuilds._arguments import check_claim_args
from prebuilds._model import expiry_cutoff
from prebuilds._records import PREBUILDS_OWNER_ID, Event, EventKind, Lifecycle
from prebuilds._validate import check_int
from prebuilds.exceptions import (
    InvalidInputError,
    NoClaimablePrebuildsError,
    PresetChangedError,
    PresetInactiveError,
)
from prebuilds.interfaces import LeanClaims, StampedClaims


if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from prebuilds._model import Preset
    from prebuilds._pool import PresetFacts
    from prebuilds._records import Instance
    from prebuilds.interfaces import EventSink, Store


class StoreClaimer:
    """
    Claim prebuilt instances from a :class:`~prebuilds.interfaces.Store`.

    A claim takes the *oldest* ready, unexpired instance of the preset on the
    template's active version, so the pool turns over, and moves it to the
    user in one atomic transition that also sets its lifecycle fields.

    The claimer works out what the store compares: from the preset's facts
    (:meth:`~prebuilds.interfaces.Store.read_preset`) it refuses an inactive
    preset, and computes the lifecycle (the template's default TTL unless
    the claim gives one), the version to claim and the expiry cut-off
    (:func:`~prebuilds.expiry_cutoff`); the store's ``claim`` only compares.
    That is two calls to the store.

    A store that offers :class:`~prebuilds.interfaces.StampedClaims` (every
    reference store does) is asked once: the claimer keeps each preset's
    facts with their stamp, and claims with ``claim_if_unchanged``, which the
    store applies only while the facts still hold. When they changed (a new
    template version, a new TTL, an invalidation, from this process or
    another), the store refuses with
    :class:`~prebuilds.exceptions.PresetChangedError`, and the claimer reads
    the facts again and retries, at most *retries* times. A cached preset
    that looks inactive is read again before it is refused. So the cache
    never hands out, nor refuses, what a fresh read would not.

    Thread-safe: one claimer may serve every thread of a host.

    Args:
        store: Where the pool lives.
        events: Told of every claim and miss (optional).
        retries: How many times a claim is retried after its cached facts
            changed, before :class:`~prebuilds.exceptions.PresetChangedError`
            is raised.

    Raises:
        InvalidInputError: *retries* is not an int from 0 to 100.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0
       Claims in one round trip on a store with
       :class:`~prebuilds.interfaces.StampedClaims` (in two otherwise);
       *retries*.
    """

    def __init__(
        self, store: Store, *, events: EventSink | None = None, retries: int = 3
    ) -> None:
        check_int("retries", retries, maximum=100)
        self._store = store
        self._events = events
        self._retries = retries
        self._stamped = isinstance(store, StampedClaims)
        self._lean = self._stamped and isinstance(store, LeanClaims)
        self._lock = threading.Lock()
        self._cache: dict[int, PresetFacts] = {}  # by UUID.int: hashed in C

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
        """
        Hand a prebuilt instance of *preset_id* to *user_id*.

        The instance is renamed *name*; its autostart schedule and next start
        come from the arguments, its TTL from *ttl* or else the template's
        default; ``last_used_at`` is *now*; dormancy and deletion dates are
        cleared.

        Returns:
            The claimed instance's ID.

        Raises:
            NoClaimablePrebuildsError: nothing to claim: build one cold.
            PresetNotFoundError: the preset is unknown.
            PresetInactiveError: the preset is not on the active version, or
                its template is deleted or deprecated.
            PresetChangedError: the preset's facts changed under every one
                of the *retries* + 1 attempts (a stamped store only).
            InvalidInputError: before the store is asked, naming the
                argument: an ID that is not a :class:`uuid.UUID`, *user_id*
                equal to :data:`~prebuilds.PREBUILDS_OWNER_ID`, an empty
                *name*, a naive datetime, a *ttl* that is not a timedelta
                from 0 to 36,500 days (see :doc:`/limits`).
        """
        started = time.perf_counter()
        check_claim_args(
            now, user_id, name, preset_id, autostart_schedule, next_start_at, ttl
        )
        if self._lean:
            # The common path, spelled out: no _Claim, no argument dict.
            instance_id, facts = self._claim_lean(
                preset_id, user_id, name, now, autostart_schedule, next_start_at, ttl
            )
            if instance_id is not None and self._events is None:
                return instance_id
        claim = _Claim(
            preset_id=preset_id,
            user_id=user_id,
            name=name,
            now=now,
            autostart_schedule=autostart_schedule,
            next_start_at=next_start_at,
            ttl=ttl,
        )
        if not self._lean:
            instance_id, facts = (
                self._claim_stamped(claim) if self._stamped else self._claim(claim)
            )
        if instance_id is None:
            self._emit(EventKind.CLAIM_MISSED, claim, None, facts, started)
            raise NoClaimablePrebuildsError(preset_id)
        if self._events is not None:
            self._emit(EventKind.CLAIMED, claim, instance_id, facts, started)
        return instance_id

    def initiator(self) -> UUID:
        """The pool's system owner, :data:`~prebuilds.PREBUILDS_OWNER_ID`."""
        return PREBUILDS_OWNER_ID

    def _claim(self, claim: _Claim) -> tuple[UUID | None, PresetFacts]:
        """Read the preset, then claim: two calls."""
        facts = self._store.read_preset(claim.preset_id)
        return _id(self._store.claim(**claim.arguments(facts))), facts

    def _claim_stamped(self, claim: _Claim) -> tuple[UUID | None, PresetFacts]:
        """Claim against the cached facts, re-reading them when they changed."""
        store = cast("StampedClaims", self._store)
        preset_id = claim.preset_id
        changed = False
        for attempt in range(self._retries + 1):
            facts = self._facts(preset_id, changed=changed)
            stamp = facts.stamp
            if stamp is None:  # the store keeps no stamp for it
                return _id(self._store.claim(**claim.arguments(facts))), facts
            try:
                return _id(
                    store.claim_if_unchanged(stamp=stamp, **claim.arguments(facts))
                ), facts
            except PresetChangedError:
                changed = True
                self._forget(preset_id, facts)
                if attempt == self._retries:
                    raise
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _claim_lean(  # noqa: PLR0917 - a claim's arguments, in claim's order
        self,
        preset_id: UUID,
        user_id: UUID,
        name: str,
        now: datetime,
        autostart_schedule: str | None,
        next_start_at: datetime | None,
        ttl: timedelta | None,
    ) -> tuple[UUID | None, PresetFacts]:
        """
        :meth:`_claim_stamped` with ``claim_id_if_unchanged``: the lifecycle
        by its fields, only the ID back (no Lifecycle nor Instance built per
        claim). What it asks is what :meth:`_Claim.fields` gives, written
        out (it is most of a claim's Python time).
        """
        store = cast("LeanClaims", self._store)
        changed = False
        for attempt in range(self._retries + 1):
            facts = self._facts(preset_id, changed=changed)
            stamp = facts.stamp
            if stamp is None:  # the store keeps no stamp for it
                claim = _Claim(
                    preset_id,
                    user_id,
                    name,
                    now,
                    autostart_schedule,
                    next_start_at,
                    ttl,
                )
                return _id(self._store.claim(**claim.arguments(facts))), facts
            if not facts.preset.is_active:
                raise PresetInactiveError(preset_id)
            try:
                return store.claim_id_if_unchanged(
                    stamp=stamp,
                    preset_id=preset_id,
                    user_id=user_id,
                    name=name,
                    now=now,
                    autostart_schedule=autostart_schedule,
                    next_start_at=next_start_at,
                    ttl=ttl if ttl is not None else facts.template.default_ttl,
                    version_id=facts.config.template_version_id,
                    not_before=_not_before(facts, now),
                ), facts
            except PresetChangedError:
                changed = True
                self._forget(preset_id, facts)
                if attempt == self._retries:
                    raise
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _facts(self, preset_id: UUID, *, changed: bool) -> PresetFacts:
        """
        The preset's cached facts, or a fresh read: after a refusal
        (*changed*), and for facts that look inactive.
        """
        # A lone dict read needs no lock (it is atomic); the lock keeps a
        # read-then-write of the cache whole. After a refusal the facts are
        # read from the store, never from the cache: another thread's read
        # that began before the change may have put stale facts back
        # meanwhile.
        facts = None if changed else self._cache.get(preset_id.int)
        if facts is None or not facts.preset.is_active:
            facts = self._read(preset_id)
        return facts

    def _forget(self, preset_id: UUID, facts: PresetFacts) -> None:
        """Drop *facts* from the cache (a claim found them changed)."""
        with self._lock:
            if self._cache.get(preset_id.int) is facts:
                del self._cache[preset_id.int]

    def _read(self, preset_id: UUID) -> PresetFacts:
        """The preset's facts from the store, cached when stamped."""
        facts = self._store.read_preset(preset_id)
        stamp = facts.stamp
        if stamp is not None:
            with self._lock:
                # Stamps only grow: a read that began before a change must
                # not replace what a later read cached.
                cached = self._cache.get(preset_id.int)
                if cached is None or cached.stamp is None or cached.stamp <= stamp:
                    self._cache[preset_id.int] = facts
        return facts

    def _emit(
        self,
        kind: EventKind,
        claim: _Claim,
        instance_id: UUID | None,
        facts: PresetFacts,
        started: float,
    ) -> None:
        """Tell the sink of a claim or a miss, with its names and duration."""
        if self._events is not None:
            self._events.emit(
                Event(
                    kind=kind,
                    at=claim.now,
                    preset_id=claim.preset_id,
                    instance_id=instance_id,
                    detail=f"user={claim.user_id}",
                    preset_name=facts.config.name,
                    template_name=facts.template.name,
                    organization_id=facts.template.organization_id,
                    duration=timedelta(seconds=time.perf_counter() - started),
                )
            )


class _Claim(NamedTuple):
    """
    One claim's arguments (checked), and what they ask of the store given
    the facts. A named tuple, not an attrs record: built on every claim, it
    costs a fifth of a frozen record's construction.
    """

    preset_id: UUID
    user_id: UUID
    name: str
    now: datetime
    autostart_schedule: str | None
    next_start_at: datetime | None
    ttl: timedelta | None

    def fields(self, facts: PresetFacts) -> dict[str, Any]:
        """
        What the claim asks of the store for these facts, the lifecycle by
        its fields (:meth:`~prebuilds.interfaces.LeanClaims.claim_id_if_unchanged`'s
        arguments): the template's default TTL unless the claim gives one,
        the preset's version and the expiry cut-off.

        Raises:
            PresetInactiveError: the preset is not active.
        """
        if not facts.preset.is_active:
            raise PresetInactiveError(self.preset_id)
        return {
            "preset_id": self.preset_id,
            "user_id": self.user_id,
            "name": self.name,
            "now": self.now,
            "autostart_schedule": self.autostart_schedule,
            "next_start_at": self.next_start_at,
            "ttl": self.ttl if self.ttl is not None else facts.template.default_ttl,
            "version_id": facts.config.template_version_id,
            "not_before": _not_before(facts, self.now),
        }

    def arguments(self, facts: PresetFacts) -> dict[str, Any]:
        """
        ``Store.claim``'s arguments for these facts: :meth:`fields` with the
        lifecycle built as :func:`~prebuilds.claimed_lifecycle` builds it.

        The claim's own arguments were checked by ``check_claim`` and the
        facts when the store decoded them, so they are not checked again
        (``Lifecycle`` still checks its fields).

        Raises:
            PresetInactiveError: the preset is not active.
        """
        arguments = self.fields(facts)
        arguments["lifecycle"] = Lifecycle(
            autostart_schedule=arguments.pop("autostart_schedule"),
            next_start_at=arguments.pop("next_start_at"),
            ttl=arguments.pop("ttl"),
            last_used_at=self.now,
        )
        return arguments


def _not_before(facts: PresetFacts, now: datetime) -> datetime | None:
    """The claim's expiry cut-off for *facts* (None: none)."""
    config = facts.config
    # Most presets have neither a TTL nor an invalidation: no cut-off.
    if not config.ttl and facts.last_invalidated_at is None:
        return None
    return expiry_cutoff(
        ttl=config.ttl, last_invalidated_at=facts.last_invalidated_at, now=now
    )


def _id(instance: Instance | None) -> UUID | None:
    """*instance*'s ID (None: a miss)."""
    return None if instance is None else instance.id


def match_preset(
    presets: Iterable[Preset],
    parameters: Mapping[str, str] | Iterable[tuple[str, str]],
) -> Preset | None:
    """
    The most specific preset whose parameters all appear in *parameters*.

    A preset matches when each of its ``(name, value)`` pairs is in
    *parameters* (extra parameters are fine); among matches, the one with the
    most parameters wins, ties broken by the lowest ID. A preset with no
    parameters matches anything, at the lowest priority.

    Raises:
        InvalidInputError: *parameters* names one parameter twice with
            different values.

    .. versionadded:: 0.1.0
    """
    given: dict[str, str] = {}
    pairs = parameters.items() if isinstance(parameters, Mapping) else parameters
    for key, value in pairs:
        if given.setdefault(key, value) != value:
            raise InvalidInputError(
                "parameters", key, "the same parameter is given two values"
            )
    best: Preset | None = None
    for preset in presets:
        if all(given.get(k) == v for k, v in preset.parameters) and (
            best is None
            or (-len(preset.parameters), preset.id) < (-len(best.parameters), best.id)
        ):
            best = preset
    return best
