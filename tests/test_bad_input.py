"""
Bad input is refused at the door (issue 9).

Each reproduction of the issue is a test here, on every store where it
applies: the call is refused with a PrebuildsError naming the field and the
value, before anything is written, and the store reads back exactly as it
was. Then every Store method, refused for each way it can be, leaves every
store as it was.
"""

# Asserts read ``expected == actual`` (the project's test style).

from __future__ import annotations

import uuid

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prebuilds import (
    PREBUILDS_OWNER_ID,
    BuildNotFoundError,
    GlobalSnapshot,
    InstanceNotFoundError,
    InvalidInputError,
    Lifecycle,
    NoClaimablePrebuildsError,
    PrebuildSchedule,
    PrebuildsError,
    Preset,
    PresetChangedError,
    PresetConfig,
    PresetInactiveError,
    PresetNotFoundError,
    PresetSnapshot,
    PresetStatus,
    RunningPrebuild,
    StoreClaimer,
    StoreReconciler,
    Template,
    TemplateNotFoundError,
    calculate_actions,
    derive,
)
from prebuilds.interfaces import StampedClaims, Store
from prebuilds.stores import MemoryStore
from prebuilds.testing import FakeClock, FakeProvisioner
from tests.input_helpers import (
    LOOKBACK,
    NOW,
    Seeded,
    _shared_store,  # noqa: F401 - the fixture
    contents,
    seed,
)


NAIVE = datetime(2026, 1, 5, 9, 0)  # noqa: DTZ001
WEEKDAYS = PrebuildSchedule(cron="* 9-17 * * 1-5", instances=3)


def refused(call: Callable[[], object], field: str, value: object) -> None:
    """*call* raises InvalidInputError naming *field* and *value* in its message."""
    with pytest.raises(InvalidInputError) as info:
        call()
    assert (field, value) == (info.value.field, info.value.value)
    assert f"invalid {field}={value!r}" in str(info.value)


def claim_as(store: Store, seeded: Seeded, **changes: Any) -> uuid.UUID:
    """StoreClaimer.claim of the seeded preset at NOW, with *changes*."""
    arguments: dict[str, Any] = {
        "now": NOW,
        "user_id": uuid.uuid4(),
        "name": "bob-dev",
        "preset_id": seeded.preset.id,
    }
    return StoreClaimer(store).claim(**{**arguments, **changes})


def config(**changes: Any) -> PresetConfig:
    fields: dict[str, Any] = {
        "id": uuid.UUID(int=1),
        "template_id": uuid.UUID(int=2),
        "template_version_id": uuid.UUID(int=3),
        "desired_instances": 1,
    }
    return PresetConfig(**{**fields, **changes})


def reconciler(**settings: Any) -> StoreReconciler:
    store = MemoryStore()
    clock = FakeClock()
    settings.setdefault("clock", clock)
    return StoreReconciler(store, FakeProvisioner(store, clock), **settings)


# -- the reproductions of the issue ------------------------------------------------


class TestOneBadClaimStopsNothing:
    @pytest.mark.parametrize("user_id", ["bob", None, 42])
    def test_a_claim_for_a_user_that_is_not_a_uuid_writes_nothing(
        self, shared_store: Store, user_id: object
    ) -> None:
        """
        A claim for ``user_id="bob"`` (or None) is refused before the store is
        asked; every later read of the store works and finds it unchanged
        (SQLite used to commit the claim and then fail every read).
        """
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(
            lambda: claim_as(shared_store, seeded, user_id=user_id), "user_id", user_id
        )

        assert before == contents(shared_store, seeded)

    def test_the_store_itself_refuses_such_a_claim(self, shared_store: Store) -> None:
        """Store.claim checks its user too: a host may call it directly."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(
            lambda: shared_store.claim(
                preset_id=seeded.preset.id,
                user_id="bob",  # type: ignore[arg-type]
                name="bob-dev",
                lifecycle=Lifecycle(last_used_at=NOW),
                now=NOW,
                version_id=seeded.template.active_version_id,
                not_before=None,
            ),
            "user_id",
            "bob",
        )

        assert before == contents(shared_store, seeded)


class TestNoDoubleHandOut:
    def test_a_claim_for_the_pools_own_owner_is_refused(
        self, shared_store: Store
    ) -> None:
        """
        A claim for PREBUILDS_OWNER_ID would leave the instance in the pool to
        be handed out again: it is refused, and the one ready instance goes to
        exactly one real user.
        """
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(
            lambda: claim_as(shared_store, seeded, user_id=PREBUILDS_OWNER_ID),
            "user_id",
            PREBUILDS_OWNER_ID,
        )

        assert before == contents(shared_store, seeded)
        assert seeded.ready.instance_id == claim_as(shared_store, seeded)
        with pytest.raises(NoClaimablePrebuildsError):
            claim_as(shared_store, seeded)

    def test_the_store_refuses_it_too(self, shared_store: Store) -> None:
        """Store.claim refuses the pool's owner as well."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(
            lambda: shared_store.claim(
                preset_id=seeded.preset.id,
                user_id=PREBUILDS_OWNER_ID,
                name="pool",
                lifecycle=Lifecycle(last_used_at=NOW),
                now=NOW,
                version_id=seeded.template.active_version_id,
                not_before=None,
            ),
            "user_id",
            PREBUILDS_OWNER_ID,
        )

        assert before == contents(shared_store, seeded)


class TestNothingStoredThatCannotBeReadBack:
    def test_a_preset_id_that_is_not_a_uuid(self) -> None:
        """``PresetConfig(id="oops")`` cannot be built, so it can never be stored."""
        refused(lambda: config(id="oops"), "id", "oops")

    def test_a_template_without_an_active_version(self) -> None:
        """``Template(active_version_id=None)`` cannot be built."""
        refused(
            lambda: Template(id=uuid.uuid4(), active_version_id=None),  # type: ignore[arg-type]
            "active_version_id",
            None,
        )

    @pytest.mark.parametrize(
        ("changes", "field", "value"),
        [
            ({"scheduling_timezone": "Mars/Olympus_Mons", "schedules": [WEEKDAYS]},
             "scheduling_timezone", "Mars/Olympus_Mons"),
            ({"scheduling_timezone": "UTC", "schedules": [WEEKDAYS, WEEKDAYS]},
             "schedules", (WEEKDAYS.cron, WEEKDAYS.cron)),
            ({"scheduling_timezone": "UTC", "schedules": ["* 9-17 * * 1-5"]},
             "schedules", "* 9-17 * * 1-5"),
            ({"scheduling_timezone": "UTC", "schedules": "* 9-17 * * 1-5"},
             "schedules", "* 9-17 * * 1-5"),
            ({"parameters": [("region", "eu"), ("region", "us")]}, "parameters", "region"),
        ],
        ids=["unknown-zone", "overlapping", "string-schedules", "a-string", "parameter-twice"],
    )  # fmt: skip
    def test_a_preset_config_validates_like_a_preset(
        self, changes: dict[str, Any], field: str, value: object
    ) -> None:
        """
        What would make a stored preset drop out of every pass is refused when
        the PresetConfig is built, exactly as Preset refuses it.
        """
        refused(lambda: config(**changes), field, value)
        refused(lambda: Preset(**{**attrs_of(config()), **changes}), field, value)

    @pytest.mark.parametrize("preset", [{"id": "oops"}, "oops", None])
    def test_put_preset_refuses_what_is_not_a_preset_config(
        self, shared_store: Store, preset: object
    ) -> None:
        """A dict, a string or None is not written: InvalidInputError on ``preset``."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(lambda: shared_store.put_preset(preset), "preset", preset)  # type: ignore[arg-type]

        assert before == contents(shared_store, seeded)

    def test_put_template_refuses_what_is_not_a_template(
        self, shared_store: Store
    ) -> None:
        """A dict is not written: InvalidInputError on ``template``."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)
        fake = {"id": uuid.uuid4(), "active_version_id": None}

        refused(lambda: shared_store.put_template(fake), "template", fake)  # type: ignore[arg-type]

        assert before == contents(shared_store, seeded)


def attrs_of(preset_config: PresetConfig) -> dict[str, Any]:
    """The fields a Preset shares with a PresetConfig."""
    return {
        "id": preset_config.id,
        "template_id": preset_config.template_id,
        "template_version_id": preset_config.template_version_id,
        "desired_instances": preset_config.desired_instances,
    }


class TestWrongTypesGetTheRightError:
    def test_a_pool_too_large_is_invalid_input_not_an_overflow(self) -> None:
        """``desired_instances=2**70`` is InvalidInputError, on the config and the preset."""
        refused(lambda: config(desired_instances=2**70), "desired_instances", 2**70)
        refused(
            lambda: Preset(**{**attrs_of(config()), "desired_instances": 2**70}),
            "desired_instances",
            2**70,
        )

    @pytest.mark.parametrize("ttl", [3600.0, 3600, timedelta(seconds=-1)])
    def test_a_claim_ttl_must_be_a_non_negative_timedelta(
        self, shared_store: Store, ttl: object
    ) -> None:
        """``claim(ttl=3600.0)`` is InvalidInputError on ``ttl`` (was AttributeError)."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(lambda: claim_as(shared_store, seeded, ttl=ttl), "ttl", ttl)

        assert before == contents(shared_store, seeded)

    def test_a_claim_needs_a_name(self, shared_store: Store) -> None:
        """``claim(name="")`` is refused: a claimed instance is named."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(lambda: claim_as(shared_store, seeded, name=""), "name", "")

        assert before == contents(shared_store, seeded)

    @pytest.mark.parametrize("paused", ["false", "true", 0, 1, None])
    def test_set_paused_takes_a_bool_only(
        self, shared_store: Store, paused: object
    ) -> None:
        """``set_paused("false")`` is refused (SQLite used to pause everything)."""
        seeded = seed(shared_store)
        before = contents(shared_store, seeded)

        refused(lambda: shared_store.set_paused(paused), "paused", paused)  # type: ignore[arg-type]

        assert before == contents(shared_store, seeded)
        assert False is shared_store.is_paused()

    def test_an_interval_in_seconds_names_the_setting(self) -> None:
        """``StoreReconciler(interval=60)`` says interval must be a timedelta."""
        with pytest.raises(InvalidInputError) as info:
            reconciler(interval=60)

        assert ("interval", 60) == (info.value.field, info.value.value)
        assert "invalid interval=60: must be a timedelta" == str(info.value)

    @pytest.mark.parametrize(
        ("setting", "value"),
        [
            ("hard_limit", 2.5),
            ("hard_limit", -1),
            ("hard_limit", True),
            ("submit_timeout", -1.0),
            ("submit_timeout", 0),
            ("submit_timeout", float("nan")),
            ("submit_timeout", float("inf")),
            ("submit_timeout", "60"),
            ("max_workers", 0),
            ("max_workers", 2.0),
            ("backoff_interval", 60),
            ("backoff_lookback", timedelta(seconds=-1)),
            ("build_timeout", timedelta(0)),
            ("build_timeout", 1800),
            ("interval", timedelta(0)),
            ("name_factory", "prebuild"),
            ("clock", "now"),
            ("events", print),
        ],
    )
    def test_every_reconciler_setting_is_checked(
        self, setting: str, value: object
    ) -> None:
        """A setting of the wrong type or out of range is refused, naming it."""
        refused(lambda: reconciler(**{setting: value}), setting, value)

    def test_a_store_or_provisioner_that_is_not_one(self) -> None:
        """The store and the provisioner must have the methods the reconciler calls."""
        store = MemoryStore()
        clock = FakeClock()
        provisioner = FakeProvisioner(store, clock)

        refused(lambda: StoreReconciler("pool.db", provisioner), "store", "pool.db")  # type: ignore[arg-type]
        refused(lambda: StoreReconciler(store, None), "provisioner", None)  # type: ignore[arg-type]


class TestDuplicateIds:
    def prebuild(self, preset: Preset, n: int = 10) -> RunningPrebuild:
        return RunningPrebuild(
            id=uuid.UUID(int=n), preset_id=preset.id, created_at=NOW, ready=True
        )

    def preset(self, desired: int = 1) -> Preset:
        return Preset(**{**attrs_of(config()), "desired_instances": desired})

    def test_a_pools_only_instance_listed_twice_is_refused(self) -> None:
        """
        ``PresetSnapshot(running=[x, x])`` is refused naming x: the calculator
        would have deleted the pool's only instance as extraneous.
        """
        preset = self.preset()
        x = self.prebuild(preset)

        refused(lambda: PresetSnapshot(preset=preset, running=[x, x]), "running", x.id)
        assert [] == calculate_actions(
            PresetSnapshot(preset=preset, running=[x]),
            now=NOW,
            backoff_interval=timedelta(minutes=1),
        )

    def test_an_instance_both_running_and_expired_is_refused(self) -> None:
        """One ID in ``running`` and in ``expired`` is refused on ``expired``."""
        preset = self.preset()
        x = self.prebuild(preset)

        refused(
            lambda: PresetSnapshot(preset=preset, running=[x], expired=[x]),
            "expired",
            x.id,
        )

    def test_a_prebuild_of_another_preset_is_refused(self) -> None:
        """A pool's snapshot holds only its own prebuilds (else one would be deleted from the wrong pool)."""
        preset = self.preset()
        other = RunningPrebuild(
            id=uuid.UUID(int=11), preset_id=uuid.UUID(int=99), created_at=NOW
        )

        refused(
            lambda: PresetSnapshot(preset=preset, running=[other]), "running", other.id
        )

    def test_two_presets_of_one_id_are_refused(self) -> None:
        """A GlobalSnapshot with two presets of one ID is refused (it used to keep the first)."""
        preset = self.preset()
        bigger = self.preset(desired=5)

        refused(lambda: GlobalSnapshot(presets=[preset, bigger]), "presets", preset.id)

    def test_two_running_prebuilds_of_one_id_are_refused(self) -> None:
        """A GlobalSnapshot listing one running prebuild twice is refused."""
        preset = self.preset()
        x = self.prebuild(preset)

        refused(
            lambda: GlobalSnapshot(presets=[preset], running=[x, x]), "running", x.id
        )


# -- a refused call leaves every store as it was -------------------------------------

_BAD_ID = "1"
_LONG = "x" * 256


def _store_claim(**changes: Any) -> Callable[[Store, Seeded], object]:
    def call(store: Store, seeded: Seeded) -> object:
        arguments: dict[str, Any] = {
            "preset_id": seeded.preset.id,
            "user_id": uuid.uuid4(),
            "name": "bob-dev",
            "lifecycle": Lifecycle(last_used_at=NOW),
            "now": NOW,
            "version_id": seeded.template.active_version_id,
            "not_before": None,
        }
        if "stamp" in changes:
            assert isinstance(store, StampedClaims)
            return store.claim_if_unchanged(**{**arguments, **changes})
        return store.claim(**{**arguments, **changes})

    return call


def _stale_stamp(store: Store, seeded: Seeded) -> object:
    """claim_if_unchanged with a stamp that is not the preset's."""
    stamp = store.read_preset(seeded.preset.id).stamp
    assert stamp is not None
    return _store_claim(stamp=stamp + 1)(store, seeded)


def _derive(**changes: Any) -> Callable[[Store, Seeded], object]:
    def call(store: Store, _seeded: Seeded) -> object:
        arguments: dict[str, Any] = {
            "now": NOW,
            "backoff_lookback": LOOKBACK,
            "hard_limit": 3,
        }
        return derive(store.read_pool(), **{**arguments, **changes})

    return call


def _finished(**changes: Any) -> Callable[[Store, Seeded], object]:
    def call(store: Store, seeded: Seeded) -> None:
        arguments: dict[str, Any] = {
            "build_id": seeded.building.build_id,
            "now": NOW,
            "succeeded": True,
            **changes,
        }
        store.build_finished(arguments.pop("build_id"), **arguments)

    return call


def _claimer(**changes: Any) -> Callable[[Store, Seeded], object]:
    return lambda store, seeded: claim_as(store, seeded, **changes)


Call = Callable[[Store, Seeded], object]

#: (id, call, the error, its field for an InvalidInputError)
REFUSED: list[tuple[str, Call, type[PrebuildsError], str | None]] = [
    ("put_template-dict", lambda s, _: s.put_template({}), InvalidInputError, "template"),  # type: ignore[arg-type]
    ("put_preset-facts", lambda s, d: s.put_preset(s.read_preset(d.preset.id)), InvalidInputError, "preset"),  # type: ignore[arg-type]
    ("put_preset-unknown-template", lambda s, d: s.put_preset(config(id=uuid.uuid4())), TemplateNotFoundError, None),
    ("invalidate-bad-id", lambda s, _: s.invalidate_preset(_BAD_ID, at=NOW), InvalidInputError, "preset_id"),  # type: ignore[arg-type]
    ("invalidate-naive", lambda s, d: s.invalidate_preset(d.preset.id, at=NAIVE), InvalidInputError, "at"),
    ("invalidate-year-1", lambda s, d: s.invalidate_preset(d.preset.id, at=datetime.min.replace(tzinfo=timezone.utc)), InvalidInputError, "at"),
    ("invalidate-unknown", lambda s, _: s.invalidate_preset(uuid.uuid4(), at=NOW), PresetNotFoundError, None),
    ("set_paused-str", lambda s, _: s.set_paused("false"), InvalidInputError, "paused"),  # type: ignore[arg-type]
    ("get_template-bad-id", lambda s, _: s.get_template(_BAD_ID), InvalidInputError, "template_id"),  # type: ignore[arg-type]
    ("get_template-unknown", lambda s, _: s.get_template(uuid.uuid4()), TemplateNotFoundError, None),
    ("read_preset-bad-id", lambda s, _: s.read_preset(_BAD_ID), InvalidInputError, "preset_id"),  # type: ignore[arg-type]
    ("read_preset-unknown", lambda s, _: s.read_preset(uuid.uuid4()), PresetNotFoundError, None),
    ("derive-naive", _derive(now=NAIVE), InvalidInputError, "now"),
    ("derive-lookback-int", _derive(backoff_lookback=3600), InvalidInputError, "backoff_lookback"),
    ("derive-limit-float", _derive(hard_limit=2.5), InvalidInputError, "hard_limit"),
    ("derive-limit-huge", _derive(hard_limit=2**70), InvalidInputError, "hard_limit"),
    ("create-unknown", lambda s, _: s.create_prebuild(uuid.uuid4(), now=NOW, name="pb"), PresetNotFoundError, None),
    ("create-bad-id", lambda s, _: s.create_prebuild(_BAD_ID, now=NOW, name="pb"), InvalidInputError, "preset_id"),  # type: ignore[arg-type]
    ("create-empty-name", lambda s, d: s.create_prebuild(d.preset.id, now=NOW, name=""), InvalidInputError, "name"),
    ("create-long-name", lambda s, d: s.create_prebuild(d.preset.id, now=NOW, name=_LONG), InvalidInputError, "name"),
    ("create-nul-name", lambda s, d: s.create_prebuild(d.preset.id, now=NOW, name="a\x00b"), InvalidInputError, "name"),
    ("create-surrogate-name", lambda s, d: s.create_prebuild(d.preset.id, now=NOW, name="a\ud800"), InvalidInputError, "name"),
    ("create-naive", lambda s, d: s.create_prebuild(d.preset.id, now=NAIVE, name="pb"), InvalidInputError, "now"),
    ("delete-bad-id", lambda s, _: s.delete_prebuild(_BAD_ID, now=NOW), InvalidInputError, "instance_id"),  # type: ignore[arg-type]
    ("delete-naive", lambda s, d: s.delete_prebuild(d.ready.instance_id, now=NAIVE), InvalidInputError, "now"),
    ("cancel-unknown", lambda s, _: s.cancel_pending(uuid.uuid4(), now=NOW), PresetNotFoundError, None),
    ("cancel-naive", lambda s, d: s.cancel_pending(d.preset.id, now=NAIVE), InvalidInputError, "now"),
    ("status-str", lambda s, d: s.set_preset_status(d.preset.id, "hard_limited"), InvalidInputError, "status"),  # type: ignore[arg-type]
    ("status-unknown", lambda s, _: s.set_preset_status(uuid.uuid4(), PresetStatus.HARD_LIMITED), PresetNotFoundError, None),
    ("stuck-naive", lambda s, _: s.fail_stuck_builds(older_than=NAIVE, now=NOW), InvalidInputError, "older_than"),
    ("stuck-now-int", lambda s, _: s.fail_stuck_builds(older_than=NOW, now=0), InvalidInputError, "now"),  # type: ignore[arg-type]
    ("started-unknown", lambda s, _: s.build_started(uuid.uuid4(), now=NOW), BuildNotFoundError, None),
    ("started-naive", lambda s, d: s.build_started(d.building.build_id, now=NAIVE), InvalidInputError, "now"),
    ("finished-unknown", _finished(build_id=uuid.uuid4()), BuildNotFoundError, None),
    ("finished-succeeded-str", _finished(succeeded="yes"), InvalidInputError, "succeeded"),
    ("finished-long-kind", _finished(succeeded=False, error_kind=_LONG), InvalidInputError, "error_kind"),
    ("finished-nul-error", _finished(succeeded=False, error="a\x00b"), InvalidInputError, "error"),
    ("finished-huge-error", _finished(succeeded=False, error="e" * 65_537), InvalidInputError, "error"),
    ("ready-unknown", lambda s, _: s.set_ready(uuid.uuid4()), InstanceNotFoundError, None),
    ("ready-str", lambda s, d: s.set_ready(d.ready.instance_id, ready="false"), InvalidInputError, "ready"),  # type: ignore[arg-type]
    ("claim-bad-preset", _store_claim(preset_id=_BAD_ID), InvalidInputError, "preset_id"),
    ("claim-bob", _store_claim(user_id="bob"), InvalidInputError, "user_id"),
    ("claim-owner", _store_claim(user_id=PREBUILDS_OWNER_ID), InvalidInputError, "user_id"),
    ("claim-empty-name", _store_claim(name=""), InvalidInputError, "name"),
    ("claim-lifecycle-dict", _store_claim(lifecycle={}), InvalidInputError, "lifecycle"),
    ("claim-naive", _store_claim(now=NAIVE), InvalidInputError, "now"),
    ("claim-version-str", _store_claim(version_id="v1"), InvalidInputError, "version_id"),
    ("claim-version-none", _store_claim(version_id=None), InvalidInputError, "version_id"),
    ("claim-not-before-naive", _store_claim(not_before=NAIVE), InvalidInputError, "not_before"),
    ("claim-not-before-int", _store_claim(not_before=0), InvalidInputError, "not_before"),
    ("claim_if_unchanged-stamp-str", _store_claim(stamp="1"), InvalidInputError, "stamp"),
    ("claim_if_unchanged-stamp-negative", _store_claim(stamp=-1), InvalidInputError, "stamp"),
    ("claim_if_unchanged-bob", _store_claim(stamp=0, user_id="bob"), InvalidInputError, "user_id"),
    ("claim_if_unchanged-stale", _stale_stamp, PresetChangedError, None),
    ("list-instances-str", lambda s, _: s.list_instances(include_deleted="yes"), InvalidInputError, "include_deleted"),  # type: ignore[arg-type]
    ("list-instances-owner", lambda s, _: s.list_instances(owner_id="bob"), InvalidInputError, "owner_id"),  # type: ignore[arg-type]
    ("get-instance-bad-id", lambda s, _: s.get_instance(_BAD_ID), InvalidInputError, "instance_id"),  # type: ignore[arg-type]
    ("get-build-bad-id", lambda s, _: s.get_build(_BAD_ID), InvalidInputError, "build_id"),  # type: ignore[arg-type]
    ("list-builds-bad-id", lambda s, _: s.list_builds(instance_id=_BAD_ID), InvalidInputError, "instance_id"),  # type: ignore[arg-type]
    ("claimer-unknown-preset", _claimer(preset_id=uuid.uuid4()), PresetNotFoundError, None),
    ("claimer-naive-next-start", _claimer(next_start_at=NAIVE), InvalidInputError, "next_start_at"),
    ("claimer-autostart-int", _claimer(autostart_schedule=5), InvalidInputError, "autostart_schedule"),
    ("claimer-long-autostart", _claimer(autostart_schedule=_LONG), InvalidInputError, "autostart_schedule"),
    ("claimer-ttl-too-long", _claimer(ttl=timedelta(days=36_501)), InvalidInputError, "ttl"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_a_refused_call_leaves_the_store_as_it_was(
    shared_store: Store,
    call: Call,
    error: type[PrebuildsError],
    field: str | None,
) -> None:
    """
    Every refused call raises its PrebuildsError (naming the field, for bad
    input), and the store reads back exactly as before: templates, presets,
    instances, builds, the paused switch and the snapshot.
    """
    seeded = seed(shared_store)
    before = contents(shared_store, seeded)

    with pytest.raises(error) as info:
        call(shared_store, seeded)

    assert field == getattr(info.value, "field", None)
    assert before == contents(shared_store, seeded)


def test_a_claim_of_an_inactive_preset_leaves_the_store_as_it_was(
    shared_store: Store,
) -> None:
    """A claim refused as PresetInactiveError writes nothing but the template change before it."""
    seeded = seed(shared_store)
    shared_store.put_template(
        Template(id=seeded.template.id, active_version_id=uuid.uuid4(), name="t")
    )
    before = contents(shared_store, seeded)

    with pytest.raises(PresetInactiveError):
        claim_as(shared_store, seeded)

    assert before == contents(shared_store, seeded)


def test_a_sqlite_claim_that_cannot_be_read_back_is_rolled_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The SQLite store reads the claimed row back before it commits: a row that
    cannot be decoded rolls the claim back (it used to commit the claim and
    then fail, leaving a row that broke every later read). The fault is
    injected into the decoder, on a real file.
    """
    from prebuilds.exceptions import StoreError
    from prebuilds.stores import SQLiteStore
    from prebuilds.stores._sqlite import codecs as sqlite_codecs

    with SQLiteStore(tmp_path / "pool.sqlite3") as store:
        seeded = seed(store)
        before = contents(store, seeded)

        def undecodable(row: object) -> object:
            raise ValueError("a row that cannot be decoded")

        def store_claim() -> object:
            return store.claim(
                preset_id=seeded.preset.id,
                user_id=uuid.uuid4(),
                name="bob-dev",
                lifecycle=Lifecycle(last_used_at=NOW),
                now=NOW,
                version_id=seeded.preset.template_version_id,
                not_before=None,
            )

        # StoreClaimer claims through LeanClaims (codecs.claimed_id), a
        # direct Store.claim reads back with codecs.claimed_instance.
        for decoder, claim in (
            ("claimed_id", lambda: claim_as(store, seeded)),
            ("claimed_instance", store_claim),
        ):
            with monkeypatch.context() as patch:
                patch.setattr(sqlite_codecs, decoder, undecodable)
                with pytest.raises(StoreError):
                    claim()
            assert before == contents(store, seeded)
        assert seeded.ready.instance_id == claim_as(store, seeded)
