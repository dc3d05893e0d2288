"""
The model's consistency rules, refusal by refusal, and what a claim keeps.

A snapshot that lists one thing twice, or a row of another preset, is
refused with an InvalidInputError that names the field, the offending ID and
the reason, word for word: a host reads them to find the bad row. The expiry
rule's edges (exactly *ttl* old, exactly at the invalidation, 1970), the
lifecycle a claim gives and the module a MissingExtraError names are pinned
here too.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import pickle
import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from hypothesis import given
from hypothesis import strategies as st

from prebuilds import (
    Backoff,
    GlobalSnapshot,
    InProgressCount,
    InvalidInputError,
    InvalidPreset,
    Lifecycle,
    PendingCount,
    Preset,
    PresetSnapshot,
    RunningPrebuild,
    Transition,
    claimed_lifecycle,
    expiry_cutoff,
    is_expired,
)
from prebuilds._validate import MAX_DATETIME, MIN_DATETIME
from prebuilds.exceptions import MissingExtraError


NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)
NAIVE = datetime(2024, 1, 1)  # noqa: DTZ001
PRESET_ID = uuid.UUID(int=1)
OTHER_PRESET_ID = uuid.UUID(int=2)
PREBUILD_ID = uuid.UUID(int=10)
VERSION_ID = uuid.UUID(int=20)
MICROSECOND = timedelta(microseconds=1)


def refusal(call: Callable[[], object]) -> tuple[str, object, str]:
    """The field, value and reason of the InvalidInputError *call* raises."""
    with pytest.raises(InvalidInputError) as info:
        call()
    return info.value.field, info.value.value, info.value.reason


def make_preset(preset_id: uuid.UUID = PRESET_ID, **changes: Any) -> Preset:
    fields: dict[str, Any] = {
        "id": preset_id,
        "template_id": uuid.UUID(int=3),
        "template_version_id": uuid.UUID(int=4),
        "desired_instances": 1,
    }
    return Preset(**{**fields, **changes})


def prebuild(
    preset_id: uuid.UUID = PRESET_ID, created_at: datetime = NOW
) -> RunningPrebuild:
    return RunningPrebuild(id=PREBUILD_ID, preset_id=preset_id, created_at=created_at)


def in_progress(
    transition: Transition, preset_id: uuid.UUID = PRESET_ID
) -> InProgressCount:
    return InProgressCount(
        preset_id=preset_id,
        transition=transition,
        count=1,
        template_version_id=VERSION_ID,
    )


def backoff(preset_id: uuid.UUID = PRESET_ID) -> Backoff:
    return Backoff(preset_id=preset_id, num_failed=1, last_build_at=NOW)


def invalid(preset_id: uuid.UUID) -> InvalidPreset:
    return InvalidPreset(preset_id=preset_id, field="ttl", value="-1", reason="bad")


# -- GlobalSnapshot -------------------------------------------------------------------

GLOBAL_REFUSALS = [
    # id, snapshot, field, value, reason
    ("two-presets-of-one-id", lambda: GlobalSnapshot(presets=[make_preset(), make_preset()]),
     "presets", PRESET_ID, "two presets have this ID"),
    ("an-invalid-preset-with-a-valid-ones-id", lambda: GlobalSnapshot(
        presets=[make_preset()], invalid_presets=[invalid(PRESET_ID)]),
     "invalid_presets", PRESET_ID, "two presets have this ID"),
    ("two-invalid-presets-of-one-id", lambda: GlobalSnapshot(
        invalid_presets=[invalid(OTHER_PRESET_ID), invalid(OTHER_PRESET_ID)]),
     "invalid_presets", OTHER_PRESET_ID, "two presets have this ID"),
    ("a-running-prebuild-twice", lambda: GlobalSnapshot(running=[prebuild(), prebuild()]),
     "running", PREBUILD_ID, "two running prebuilds have this ID"),
    ("two-rows-of-one-transition-and-version", lambda: GlobalSnapshot(
        in_progress=[in_progress(Transition.STOP), in_progress(Transition.STOP)]),
     "in_progress", PRESET_ID, "two rows have this preset, transition 'stop' and template version"),
    ("two-pending-rows-of-one-preset", lambda: GlobalSnapshot(
        pending=[PendingCount(preset_id=PRESET_ID, count=1)] * 2),
     "pending", PRESET_ID, "two pending rows have this ID"),
    ("two-backoff-rows-of-one-preset", lambda: GlobalSnapshot(backoffs=[backoff(), backoff()]),
     "backoffs", PRESET_ID, "two backoff rows have this ID"),
    ("hard-limited-not-a-collection", lambda: GlobalSnapshot(hard_limited=5),  # type: ignore[arg-type]
     "hard_limited", 5, "must be a set of uuid.UUID"),
    ("hard-limited-a-string", lambda: GlobalSnapshot(hard_limited="abc"),  # type: ignore[arg-type]
     "hard_limited", "abc", "must be a set of uuid.UUID"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "field", "value", "reason"),
    [case[1:] for case in GLOBAL_REFUSALS],
    ids=[case[0] for case in GLOBAL_REFUSALS],
)
def test_a_global_snapshot_refuses_an_id_twice_naming_field_and_id(
    call: Callable[[], object], field: str, value: object, reason: str
) -> None:
    """Something listed twice is refused, naming the field, the ID and why."""
    assert (field, value, reason) == refusal(call)


def test_invalid_presets_beside_valid_ones_are_accepted() -> None:
    """Invalid presets of their own IDs sit beside the valid ones; both are kept."""
    third = uuid.UUID(int=3)
    snapshot = GlobalSnapshot(
        presets=[make_preset()],
        invalid_presets=[invalid(OTHER_PRESET_ID), invalid(third)],
    )

    assert [OTHER_PRESET_ID, third] == [i.preset_id for i in snapshot.invalid_presets]
    assert make_preset() == snapshot.filter_by_preset(PRESET_ID, now=NOW).preset


# -- PresetSnapshot -------------------------------------------------------------------

PRESET_REFUSALS = [
    # id, snapshot, field, value, reason
    ("a-running-prebuild-twice", lambda: PresetSnapshot(
        preset=make_preset(), running=[prebuild(), prebuild()]),
     "running", PREBUILD_ID, "two running prebuilds have this ID"),
    ("a-prebuild-running-and-expired", lambda: PresetSnapshot(
        preset=make_preset(), running=[prebuild()], expired=[prebuild()]),
     "expired", PREBUILD_ID, "two running prebuilds have this ID"),
    ("a-running-prebuild-of-another-preset", lambda: PresetSnapshot(
        preset=make_preset(), running=[prebuild(OTHER_PRESET_ID)]),
     "running", PREBUILD_ID, "belongs to another preset"),
    ("an-expired-prebuild-of-another-preset", lambda: PresetSnapshot(
        preset=make_preset(), expired=[prebuild(OTHER_PRESET_ID)]),
     "expired", PREBUILD_ID, "belongs to another preset"),
    ("an-in-progress-row-of-another-preset", lambda: PresetSnapshot(
        preset=make_preset(), in_progress=[in_progress(Transition.START, OTHER_PRESET_ID)]),
     "in_progress", OTHER_PRESET_ID, "belongs to another preset"),
    ("two-rows-of-one-transition-and-version", lambda: PresetSnapshot(
        preset=make_preset(),
        in_progress=[in_progress(Transition.DELETE), in_progress(Transition.DELETE)]),
     "in_progress", Transition.DELETE, "two rows have this transition and template version"),
    ("a-backoff-of-another-preset", lambda: PresetSnapshot(
        preset=make_preset(), backoff=backoff(OTHER_PRESET_ID)),
     "backoff", OTHER_PRESET_ID, "belongs to another preset"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "field", "value", "reason"),
    [case[1:] for case in PRESET_REFUSALS],
    ids=[case[0] for case in PRESET_REFUSALS],
)
def test_a_preset_snapshot_refuses_a_row_twice_or_of_another_preset(
    call: Callable[[], object], field: str, value: object, reason: str
) -> None:
    """A prebuild or row listed twice, or of another preset, is named with why."""
    assert (field, value, reason) == refusal(call)


# -- the expiry rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expired"),
    [(timedelta(hours=1), False), (timedelta(hours=1) + MICROSECOND, True)],
)
def test_an_instance_exactly_ttl_old_is_not_expired(
    age: timedelta, expired: bool
) -> None:
    """Older than the TTL expires; exactly the TTL old does not."""
    preset = make_preset(ttl=timedelta(hours=1))

    assert expired == is_expired(preset, prebuild(created_at=NOW - age), NOW)


@pytest.mark.parametrize(
    ("created_before_invalidation", "expired"),
    [(timedelta(0), False), (MICROSECOND, True)],
)
def test_an_instance_created_at_the_invalidation_is_not_expired(
    created_before_invalidation: timedelta, expired: bool
) -> None:
    """Created before the invalidation expires; created at it does not."""
    invalidated = NOW - timedelta(minutes=5)
    preset = make_preset(last_invalidated_at=invalidated)
    created_at = invalidated - created_before_invalidation

    assert expired == is_expired(preset, prebuild(created_at=created_at), NOW)


@given(
    now=st.datetimes(
        min_value=MIN_DATETIME.replace(tzinfo=None),
        max_value=MAX_DATETIME.replace(tzinfo=None),
        timezones=st.just(timezone.utc),
    ),
    ttl=st.timedeltas(min_value=MICROSECOND, max_value=timedelta(days=36_500)),
)
def test_a_ttl_cutoff_is_never_at_or_before_1970(now: datetime, ttl: timedelta) -> None:
    """``now - ttl`` is the cut-off if later than 1970; at or before it, None."""
    expected = now - ttl if now - ttl > MIN_DATETIME else None

    assert expected == expiry_cutoff(ttl=ttl, last_invalidated_at=None, now=now)


@pytest.mark.parametrize(
    ("after_1970", "cutoff"),
    [(timedelta(0), None), (MICROSECOND, MIN_DATETIME + MICROSECOND)],
)
def test_a_ttl_cutoff_of_exactly_1970_is_none(
    after_1970: timedelta, cutoff: datetime | None
) -> None:
    """Nothing a store holds was created before 1970: that cut-off expires nothing."""
    ttl = timedelta(days=1)

    assert cutoff == expiry_cutoff(
        ttl=ttl, last_invalidated_at=None, now=MIN_DATETIME + ttl + after_1970
    )


# -- the lifecycle a claim gives ------------------------------------------------------

AUTOSTART = "CRON_TZ=Europe/Paris 30 8 * * 1-5"
NEXT_START = NOW + timedelta(hours=20)


@pytest.mark.parametrize(
    ("ttl", "template_default_ttl", "kept_ttl"),
    [
        (timedelta(hours=2), timedelta(hours=8), timedelta(hours=2)),
        (None, timedelta(hours=8), timedelta(hours=8)),
        (None, None, None),
    ],
)
def test_a_claim_keeps_its_autostart_next_start_and_ttl(
    ttl: timedelta | None,
    template_default_ttl: timedelta | None,
    kept_ttl: timedelta | None,
) -> None:
    """
    A claimed instance gets the claim's autostart and next start, the
    claim's TTL or else the template's default, last used now, and nothing
    else.
    """
    lifecycle = claimed_lifecycle(
        now=NOW,
        autostart_schedule=AUTOSTART,
        next_start_at=NEXT_START,
        ttl=ttl,
        template_default_ttl=template_default_ttl,
    )

    assert (
        Lifecycle(
            autostart_schedule=AUTOSTART,
            next_start_at=NEXT_START,
            ttl=kept_ttl,
            last_used_at=NOW,
        )
        == lifecycle
    )


NEGATIVE = timedelta(seconds=-1)
LONG_NAME = "x" * 256
CLAIM_REFUSALS = [
    # id, arguments changed, field, value, reason
    ("naive-now", {"now": NAIVE}, "now", NAIVE, "must be timezone-aware"),
    ("autostart-too-long", {"autostart_schedule": LONG_NAME}, "autostart_schedule", LONG_NAME,
     "must be at most 255 characters"),
    ("autostart-not-a-string", {"autostart_schedule": 5}, "autostart_schedule", 5,
     "must be a string"),
    ("naive-next-start", {"next_start_at": NAIVE}, "next_start_at", NAIVE,
     "must be timezone-aware"),
    ("negative-ttl", {"ttl": NEGATIVE}, "ttl", NEGATIVE, "must be >= 0"),
    ("negative-default-ttl", {"template_default_ttl": NEGATIVE}, "template_default_ttl",
     NEGATIVE, "must be >= 0"),
    ("negative-default-ttl-under-a-claim-ttl",
     {"ttl": timedelta(hours=1), "template_default_ttl": NEGATIVE},
     "template_default_ttl", NEGATIVE, "must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "value", "reason"),
    [case[1:] for case in CLAIM_REFUSALS],
    ids=[case[0] for case in CLAIM_REFUSALS],
)
def test_a_claims_bad_argument_is_named(
    changes: dict[str, Any], field: str, value: object, reason: str
) -> None:
    """Each bad argument is refused by its own name, even one that goes unused."""
    arguments: dict[str, Any] = {
        "now": NOW,
        "autostart_schedule": None,
        "next_start_at": None,
        "ttl": None,
        "template_default_ttl": None,
    }

    assert (field, value, reason) == refusal(
        lambda: claimed_lifecycle(**{**arguments, **changes})
    )


# -- MissingExtraError ------------------------------------------------------------------


def test_a_missing_extra_error_names_the_module_as_an_import_error_does() -> None:
    """``name`` is the module that is missing, kept through pickling."""
    error = MissingExtraError("prebuilds.stores.X", "extra", name="somemodule")

    copy = pickle.loads(pickle.dumps(error))  # noqa: S301

    assert ("somemodule", "somemodule") == (error.name, copy.name)
    assert (
        "prebuilds.stores.X needs the 'extra' extra: somemodule is not installed; "
        "install it with: pip install 'prebuilds[extra]'"
    ) == str(error)
