"""
The claim's argument checks: the one-expression acceptance of the usual
arguments (``_arguments.check_claim_args``) agrees with the checks it
stands for, on every argument a claim can be given.
"""

from __future__ import annotations

import uuid

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from prebuilds import PREBUILDS_OWNER_ID
from prebuilds._arguments import (
    check_claim,
    check_claim_id_if_unchanged,
    check_user,
)
from prebuilds._validate import (
    check_aware,
    check_delta,
    check_int,
    check_optional_aware,
    check_str,
    check_uuid,
)
from prebuilds.exceptions import InvalidInputError


class _SubUUID(uuid.UUID):
    """A UUID of another type: accepted, by the full checks."""


class _SubDatetime(datetime):
    """A datetime of another type: accepted, by the full checks."""


_T = datetime(2024, 1, 1, tzinfo=timezone.utc)
_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")

_datetimes = st.sampled_from(
    [
        _T,
        _T.replace(tzinfo=None),  # naive
        _T.astimezone(timezone(timedelta(hours=2))),  # aware, not UTC
        _T.replace(tzinfo=ZoneInfo("UTC")),  # UTC by another tzinfo
        datetime(1970, 1, 1, tzinfo=timezone.utc),  # the bounds
        datetime(1969, 12, 31, 23, 59, tzinfo=timezone.utc),
        datetime(9000, 1, 1, tzinfo=timezone.utc),
        datetime(9000, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
        _SubDatetime(2024, 1, 1, tzinfo=timezone.utc),
        "2024-01-01",
        None,
    ]
)
_ids = st.sampled_from(
    [
        _ID,
        PREBUILDS_OWNER_ID,
        _SubUUID(int=_ID.int),
        _SubUUID(int=PREBUILDS_OWNER_ID.int),
        str(_ID),
        _ID.int,
        None,
    ]
)
_names = st.one_of(
    st.sampled_from(
        ["u", "", "a" * 255, "a" * 256, "nul\x00", "é", "\ud800", None, 7, b"u"]
    ),
    st.text(max_size=8),
)
_optional_texts = st.one_of(st.none(), _names)
_ttls = st.sampled_from(
    [
        None,
        timedelta(0),
        timedelta(hours=1),
        timedelta(days=36_500),
        timedelta(days=36_501),
        timedelta(seconds=-1),
        3600,
    ]
)
_stamps = st.sampled_from([0, 1, 2**63 - 1, 2**63, -1, True, 1.0, None, "1"])


def _outcome(call: Any) -> str | None:
    """The field a call refuses (None: accepted)."""
    try:
        call()
    except InvalidInputError as e:
        return e.field
    return None


def _expected_claim(args: dict[str, Any]) -> None:
    """check_claim, written out as the checks it stands for, in order."""
    check_aware("now", args["now"])
    check_user(args["user_id"])
    check_str("name", args["name"], required=True)
    check_uuid("preset_id", args["preset_id"])
    if args["autostart_schedule"] is not None:
        check_str("autostart_schedule", args["autostart_schedule"])
    check_optional_aware("next_start_at", args["next_start_at"])
    if args["ttl"] is not None:
        check_delta("ttl", args["ttl"])


_claims = st.fixed_dictionaries(
    {
        "now": _datetimes,
        "user_id": _ids,
        "name": _names,
        "preset_id": _ids,
        "autostart_schedule": _optional_texts,
        "next_start_at": _datetimes,
        "ttl": _ttls,
    }
)


@settings(max_examples=500)
@given(_claims)
def test_check_claim_refuses_as_its_checks_do(args: dict[str, Any]) -> None:
    """The same refusal (the same field first), or the same acceptance."""
    assert _outcome(lambda: check_claim(**args)) == _outcome(
        lambda: _expected_claim(args)
    )


@settings(max_examples=500)
@given(_claims, _stamps, _ids, _datetimes)
def test_check_claim_id_if_unchanged_refuses_as_its_checks_do(
    args: dict[str, Any], stamp: Any, version_id: Any, not_before: Any
) -> None:
    """The stamp, the claim's arguments, the version, the cut-off: in that order."""

    def expected() -> None:
        check_int("stamp", stamp)
        _expected_claim(args)
        check_uuid("version_id", version_id)
        check_optional_aware("not_before", not_before)

    def actual() -> None:
        check_claim_id_if_unchanged(
            stamp,
            args["preset_id"],
            args["user_id"],
            args["name"],
            args["now"],
            args["autostart_schedule"],
            args["next_start_at"],
            args["ttl"],
            version_id,
            not_before,
        )

    assert _outcome(actual) == _outcome(expected)


def test_the_usual_arguments_are_accepted() -> None:
    """What StoreClaimer is given on every claim: nothing refused."""
    check_claim(
        now=_T,
        user_id=_ID,
        name="u",
        preset_id=_ID,
        autostart_schedule=None,
        next_start_at=None,
        ttl=None,
    )
    check_claim_id_if_unchanged(0, _ID, _ID, "u", _T, None, None, None, _ID, None)
