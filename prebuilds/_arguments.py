"""
The arguments of the Store methods, of :class:`~prebuilds.StoreClaimer` and
of :class:`~prebuilds.StoreReconciler`, checked in one place.

Each function checks the arguments of one method (or of a family of methods
with the same shape) and raises
:class:`~prebuilds.exceptions.InvalidInputError` naming the first bad one.
The reference stores call them on their first line, before they read or
write anything, so a refused call leaves the store as it was. Records
(:class:`~prebuilds.Template`, :class:`~prebuilds.PresetConfig`,
:class:`~prebuilds.Lifecycle`) check their own fields when they are built;
here only their type is checked.
"""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from prebuilds._model import PresetStatus
from prebuilds._records import PREBUILDS_OWNER_ID, Lifecycle
from prebuilds._validate import (
    MAX_COUNT,
    MAX_DATETIME,
    MAX_INSTANCES,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MIN_DATETIME,
    check_aware,
    check_bool,
    check_delta,
    check_enum,
    check_instance,
    check_int,
    check_optional_aware,
    check_optional_delta,
    check_optional_str,
    check_optional_uuid,
    check_seconds,
    check_str,
    check_uuid,
)
from prebuilds.exceptions import InvalidInputError


_UTC = timezone.utc
_OWNER = PREBUILDS_OWNER_ID.int


def check_user(user_id: object) -> UUID:
    """
    A claim's user: a UUID that is not the pool's own owner (a "claim" for
    :data:`~prebuilds.PREBUILDS_OWNER_ID` would leave the instance in the
    pool, to be handed out again).
    """
    user = check_uuid("user_id", user_id)
    if user == PREBUILDS_OWNER_ID:
        raise InvalidInputError(
            "user_id", user_id, "must not be the pool's owner PREBUILDS_OWNER_ID"
        )
    return user


def check_id_at(field: str, value: object, at_field: str, at: object) -> None:
    """An ID and a time: ``invalidate_preset``, ``delete_prebuild``, ``cancel_pending``, ``build_started``."""
    check_uuid(field, value)
    check_aware(at_field, at)


# -- the Store methods ---------------------------------------------------------------


def check_read_preset(preset_id: object) -> None:
    """``Store.read_preset``."""
    check_uuid("preset_id", preset_id)


def check_create_prebuild(preset_id: object, now: object, name: object) -> None:
    """``Store.create_prebuild``."""
    check_uuid("preset_id", preset_id)
    check_aware("now", now)
    check_str("name", name, required=True)


def check_create_prebuilds(
    preset_id: object, now: object, names: object
) -> tuple[str, ...]:
    """
    ``create_prebuilds`` (:class:`~prebuilds.interfaces.BatchCreates`):
    *names* a list or tuple of at most ``MAX_INSTANCES`` names, each one a
    ``create_prebuild`` name (the field named ``names[i]``). Returns them as
    a tuple.
    """
    check_uuid("preset_id", preset_id)
    check_aware("now", now)
    if not isinstance(names, (list, tuple)):
        raise InvalidInputError("names", names, "must be a list or tuple of names")
    if len(names) > MAX_INSTANCES:
        raise InvalidInputError(
            "names", len(names), f"must hold at most {MAX_INSTANCES} names"
        )
    for index, name in enumerate(names):
        check_str(f"names[{index}]", name, required=True)
    return tuple(names)


def check_create_prebuilds_grouped(
    groups: object, now: object
) -> tuple[tuple[UUID, tuple[str, ...]], ...]:
    """
    ``create_prebuilds_grouped`` (:class:`~prebuilds.interfaces.GroupedCreates`):
    *groups* a list or tuple of (preset ID, names) pairs, each as
    ``create_prebuilds``' (the fields named ``groups[i].preset_id``,
    ``groups[i].names[j]``), at most ``MAX_INSTANCES`` names in all.
    Returns them as tuples.
    """
    check_aware("now", now)
    if not isinstance(groups, (list, tuple)):
        raise InvalidInputError(
            "groups", groups, "must be a list or tuple of (preset ID, names) pairs"
        )
    checked: list[tuple[UUID, tuple[str, ...]]] = []
    total = 0
    for index, group in enumerate(groups):
        field = f"groups[{index}]"
        if not isinstance(group, (list, tuple)) or len(group) != 2:  # noqa: PLR2004 - a pair
            raise InvalidInputError(field, group, "must be a (preset ID, names) pair")
        preset_id, names = group
        preset_id = check_uuid(f"{field}.preset_id", preset_id)
        if not isinstance(names, (list, tuple)):
            raise InvalidInputError(
                f"{field}.names", names, "must be a list or tuple of names"
            )
        total += len(names)
        if total > MAX_INSTANCES:
            raise InvalidInputError(
                "groups", total, f"must hold at most {MAX_INSTANCES} names in all"
            )
        for position, name in enumerate(names):
            check_str(f"{field}.names[{position}]", name, required=True)
        checked.append((preset_id, tuple(names)))
    return tuple(checked)


def check_record_submits(
    submitted: object, now: object, not_submitted: object
) -> tuple[tuple[UUID, ...], tuple[UUID, ...]]:
    """
    ``record_submits`` (:class:`~prebuilds.interfaces.BatchCreates`): two
    lists or tuples of at most ``MAX_INSTANCES`` build IDs each (the field
    named ``submitted[i]``, ``not_submitted[i]``). Returns them as tuples.
    """
    check_aware("now", now)
    checked: list[tuple[UUID, ...]] = []
    for field, ids in (("submitted", submitted), ("not_submitted", not_submitted)):
        if not isinstance(ids, (list, tuple)):
            raise InvalidInputError(field, ids, "must be a list or tuple of build IDs")
        if len(ids) > MAX_INSTANCES:
            raise InvalidInputError(
                field, len(ids), f"must hold at most {MAX_INSTANCES} build IDs"
            )
        for index, build_id in enumerate(ids):
            check_uuid(f"{field}[{index}]", build_id)
        checked.append(tuple(ids))
    return checked[0], checked[1]


def check_set_preset_status(preset_id: object, status: object) -> None:
    """``Store.set_preset_status``."""
    check_uuid("preset_id", preset_id)
    check_enum("status", status, PresetStatus)


def check_fail_stuck_builds(older_than: object, now: object) -> None:
    """``Store.fail_stuck_builds``."""
    check_aware("older_than", older_than)
    check_aware("now", now)


def check_build_finished(
    build_id: object,
    now: object,
    succeeded: object,
    error_kind: object,
    error: object,
) -> None:
    """``Store.build_finished``."""
    check_id_at("build_id", build_id, "now", now)
    check_bool("succeeded", succeeded)
    check_optional_str("error_kind", error_kind)
    check_optional_str("error", error, max_length=MAX_TEXT_LENGTH)


def check_set_ready(instance_id: object, ready: object) -> None:
    """``Store.set_ready``."""
    check_uuid("instance_id", instance_id)
    check_bool("ready", ready)


def check_store_claim(  # noqa: PLR0917 - the claim's arguments, in order
    preset_id: object,
    user_id: object,
    name: object,
    lifecycle: object,
    now: object,
    version_id: object,
    not_before: object,
) -> None:
    """``Store.claim``."""
    check_uuid("preset_id", preset_id)
    check_user(user_id)
    check_str("name", name, required=True)
    check_instance("lifecycle", lifecycle, Lifecycle)
    check_aware("now", now)
    check_uuid("version_id", version_id)
    check_optional_aware("not_before", not_before)


def check_claim_if_unchanged(  # noqa: PLR0917 - the claim's arguments, in order
    stamp: object,
    preset_id: object,
    user_id: object,
    name: object,
    lifecycle: object,
    now: object,
    version_id: object,
    not_before: object,
) -> None:
    """``StampedClaims.claim_if_unchanged``: the stamp, then as ``Store.claim``."""
    check_int("stamp", stamp)
    check_store_claim(preset_id, user_id, name, lifecycle, now, version_id, not_before)


def check_claim_id_if_unchanged(  # noqa: PLR0917 - the claim's arguments, in order
    stamp: object,
    preset_id: object,
    user_id: object,
    name: object,
    now: object,
    autostart_schedule: object,
    next_start_at: object,
    ttl: object,
    version_id: object,
    not_before: object,
) -> None:
    """``LeanClaims.claim_id_if_unchanged``: the stamp, then as ``StoreClaimer.claim``."""
    if not (type(stamp) is int and 0 <= stamp <= MAX_COUNT):
        check_int("stamp", stamp)
    check_claim_args(
        now, user_id, name, preset_id, autostart_schedule, next_start_at, ttl
    )
    if type(version_id) is not UUID:
        check_uuid("version_id", version_id)
    if not_before is not None and not _plain_now(not_before):
        check_aware("not_before", not_before)


def check_list_instances(
    preset_id: object, owner_id: object, include_deleted: object
) -> None:
    """``Store.list_instances``."""
    check_optional_uuid("preset_id", preset_id)
    check_optional_uuid("owner_id", owner_id)
    check_bool("include_deleted", include_deleted)


# -- StoreClaimer and StoreReconciler ---------------------------------------------------


def check_claim(
    *,
    now: object,
    user_id: object,
    name: object,
    preset_id: object,
    autostart_schedule: object,
    next_start_at: object,
    ttl: object,
) -> None:
    """``StoreClaimer.claim``: every argument, before the store is asked."""
    check_claim_args(
        now, user_id, name, preset_id, autostart_schedule, next_start_at, ttl
    )


def check_claim_args(  # noqa: PLR0917 - check_claim's arguments, in order
    now: object,
    user_id: object,
    name: object,
    preset_id: object,
    autostart_schedule: object,
    next_start_at: object,
    ttl: object,
) -> None:
    """
    :func:`check_claim`, positional. Every claim is checked twice (by the
    claimer, then by the store), so the usual arguments are accepted by one
    expression that implies every check below; anything else (and every
    refusal) goes through the checks, in order, which name the argument.
    """
    if not (
        _plain_now(now)
        and type(user_id) is UUID
        and user_id.int != _OWNER
        and type(name) is str
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.isascii()
        and "\x00" not in name
        and type(preset_id) is UUID
    ):
        check_aware("now", now)
        check_user(user_id)
        check_str("name", name, required=True)
        check_uuid("preset_id", preset_id)
    if autostart_schedule is not None:
        check_str("autostart_schedule", autostart_schedule)
    if next_start_at is not None and not _plain_now(next_start_at):
        check_aware("next_start_at", next_start_at)
    if ttl is not None:
        check_delta("ttl", ttl)


def _plain_now(value: object) -> bool:
    """
    Whether *value* is a UTC datetime :func:`check_aware` accepts, by the
    cheapest test (False says nothing: check it).
    """
    return (
        type(value) is datetime
        and value.tzinfo is _UTC
        and MIN_DATETIME <= value <= MAX_DATETIME
    )


#: What StoreReconciler calls on its store.
_RECONCILER_STORE_METHODS = (
    "leader",
    "is_paused",
    "set_paused",
    "read_pool",
    "fail_stuck_builds",
    "set_preset_status",
    "create_prebuild",
    "delete_prebuild",
    "cancel_pending",
    "build_finished",
    "get_instance",
    "list_instances",
)


def _check_has(field: str, value: object, methods: tuple[str, ...]) -> None:
    for method in methods:
        if not callable(getattr(value, method, None)):
            raise InvalidInputError(field, value, f"has no method {method}()")


def check_reconciler(  # noqa: PLR0917 - one check per setting, in order
    store: object,
    provisioner: object,
    clock: object,
    events: object,
    interval: object,
    backoff_interval: object,
    backoff_lookback: object,
    hard_limit: object,
    build_timeout: object,
    submit_timeout: object,
    max_workers: object,
    name_factory: object,
) -> None:
    """``StoreReconciler(...)``: every setting."""
    _check_has("store", store, _RECONCILER_STORE_METHODS)
    _check_has("provisioner", provisioner, ("submit",))
    if clock is not None:
        _check_has("clock", clock, ("now",))
    if events is not None:
        _check_has("events", events, ("emit",))
    check_delta("interval", interval, positive=True)
    check_delta("backoff_interval", backoff_interval)
    check_delta("backoff_lookback", backoff_lookback)
    check_int("hard_limit", hard_limit, maximum=MAX_INSTANCES)
    check_optional_delta("build_timeout", build_timeout, positive=True)
    if submit_timeout is not None:
        check_seconds("submit_timeout", submit_timeout)
    check_int("max_workers", max_workers, minimum=1, maximum=MAX_INSTANCES)
    if not callable(name_factory):
        raise InvalidInputError("name_factory", name_factory, "must be callable")
