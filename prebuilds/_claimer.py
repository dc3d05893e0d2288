"""StoreClaimer: the reference Claimer, one atomic store transition."""

from __future__ import annotations

import time

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING

from prebuilds._arguments import check_claim
from prebuilds._lifecycle import claimed_lifecycle
from prebuilds._records import PREBUILDS_OWNER_ID, Event, EventKind
from prebuilds.exceptions import (
    InvalidInputError,
    NoClaimablePrebuildsError,
    PresetInactiveError,
)


if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from prebuilds._model import Preset
    from prebuilds._records import Instance
    from prebuilds.interfaces import EventSink, Store


class StoreClaimer:
    """
    Claim prebuilt instances from a :class:`~prebuilds.interfaces.Store`.

    A claim takes the *oldest* ready, unexpired instance of the preset on the
    template's active version, so the pool turns over, and moves it to the
    user in one atomic transition that also sets its lifecycle fields.

    It reads the preset and its template, then claims: three calls to the
    store. A store that offers ``claim_checked`` (as
    :class:`~prebuilds.stores.PostgresStore` does) is asked once instead,
    and checks the preset in the claim's own statement.

    Args:
        store: Where the pool lives.
        events: Told of every claim and miss (optional).

    .. versionadded:: 0.1.0
    """

    def __init__(self, store: Store, *, events: EventSink | None = None) -> None:
        self._store = store
        self._events = events

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
            InvalidInputError: before the store is asked, naming the
                argument: an ID that is not a :class:`uuid.UUID`, *user_id*
                equal to :data:`~prebuilds.PREBUILDS_OWNER_ID`, an empty
                *name*, a naive datetime, a *ttl* that is not a timedelta
                from 0 to 36,500 days (see :doc:`/limits`).
        """
        started = time.perf_counter()
        names: tuple[str, str, UUID | None] = ("", "", None)
        check_claim(
            now=now,
            user_id=user_id,
            name=name,
            preset_id=preset_id,
            autostart_schedule=autostart_schedule,
            next_start_at=next_start_at,
            ttl=ttl,
        )
        checked = getattr(self._store, "claim_checked", None)
        if checked is not None:
            # One round trip: the store checks the preset and reads the
            # template's default TTL in the claim's own statement.
            lifecycle = claimed_lifecycle(
                now=now,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
                template_default_ttl=None,
            )
            instance: Instance | None = checked(
                preset_id=preset_id,
                user_id=user_id,
                name=name,
                lifecycle=lifecycle,
                now=now,
                ttl_from_template=ttl is None,
            )
        else:
            preset = self._store.get_preset(preset_id)
            if not preset.is_active:
                raise PresetInactiveError(preset_id)
            template = self._store.get_template(preset.template_id)
            names = (preset.name, template.name, template.organization_id)
            lifecycle = claimed_lifecycle(
                now=now,
                autostart_schedule=autostart_schedule,
                next_start_at=next_start_at,
                ttl=ttl,
                template_default_ttl=template.default_ttl,
            )
            instance = self._store.claim(
                preset_id=preset_id,
                user_id=user_id,
                name=name,
                lifecycle=lifecycle,
                now=now,
            )
        self._report(
            EventKind.CLAIM_MISSED if instance is None else EventKind.CLAIMED,
            now=now,
            preset_id=preset_id,
            instance_id=None if instance is None else instance.id,
            user_id=user_id,
            names=names,
            seconds=time.perf_counter() - started,
        )
        if instance is None:
            raise NoClaimablePrebuildsError(preset_id)
        return instance.id

    def _report(
        self,
        kind: EventKind,
        *,
        now: datetime,
        preset_id: UUID,
        instance_id: UUID | None,
        user_id: UUID,
        names: tuple[str, str, UUID | None],
        seconds: float,
    ) -> None:
        """Tell the sink of a claim or a miss, with its names and duration."""
        if self._events is None:
            return
        preset_name, template_name, organization_id = names
        self._events.emit(
            Event(
                kind=kind,
                at=now,
                preset_id=preset_id,
                instance_id=instance_id,
                detail=f"user={user_id}",
                preset_name=preset_name,
                template_name=template_name,
                organization_id=organization_id,
                duration=timedelta(seconds=seconds),
            )
        )

    def initiator(self) -> UUID:
        """The pool's system owner, :data:`~prebuilds.PREBUILDS_OWNER_ID`."""
        return PREBUILDS_OWNER_ID


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
