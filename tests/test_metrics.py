"""
``prebuilds.metrics.PrometheusMetrics`` on its own: events and passes in,
samples out of a real ``CollectorRegistry``; the alert rules example.

The scripted scenario through the reconciler and the claimer on real stores
is in ``tests/test_status_engine.py``.
"""

from __future__ import annotations

import re
import uuid

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from prometheus_client import CollectorRegistry, generate_latest

from prebuilds import (
    Event,
    EventKind,
    FanOutEventSink,
    InvalidInputError,
    PoolStatus,
    ReconcileStats,
)
from prebuilds.interfaces import EventSink, PassObserver
from prebuilds.metrics import PrometheusMetrics


NOW = datetime(2026, 1, 5, 13, 0, tzinfo=timezone.utc)
P1, P2 = uuid.UUID(int=1), uuid.UUID(int=2)
ORG = uuid.UUID(int=99)
LABELS = {"template_name": "python", "preset_name": "small"}
ALERTS = Path(__file__).parent.parent / "docs" / "examples" / "alerts.yml"


def event(kind: EventKind, preset_id: uuid.UUID | None = P1, **fields: Any) -> Event:
    fields.setdefault("preset_name", "small")
    fields.setdefault("template_name", "python")
    return Event(kind=kind, at=NOW, preset_id=preset_id, **fields)


def status(preset_id: uuid.UUID = P1, **fields: Any) -> PoolStatus:
    fields.setdefault("preset_name", "small")
    fields.setdefault("template_name", "python")
    return PoolStatus(preset_id=preset_id, at=NOW, **fields)


def led(seconds: float = 0.2, **fields: Any) -> ReconcileStats:
    return ReconcileStats(leader=True, elapsed=timedelta(seconds=seconds), **fields)


@pytest.fixture(name="registry")
def _registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(name="metrics")
def _metrics(registry: CollectorRegistry) -> PrometheusMetrics:
    return PrometheusMetrics(registry)


class TestCounters:
    @pytest.mark.parametrize(
        ("kinds", "metric"),
        [
            ([EventKind.CREATED], "prebuilds_created_total"),
            ([EventKind.FAILED, EventKind.VALIDATION_FAILED], "prebuilds_failed_total"),
            ([EventKind.CLAIMED], "prebuilds_claimed_total"),
            ([EventKind.CLAIM_MISSED], "prebuilds_claim_misses_total"),
            ([EventKind.REPLACEMENT], "prebuilds_resource_replacements_total"),
        ],
    )
    def test_each_counted_kind(
        self,
        metrics: PrometheusMetrics,
        registry: CollectorRegistry,
        kinds: list[EventKind],
        metric: str,
    ) -> None:
        """Each counted kind adds one to its counter, labelled by names."""
        for kind in kinds:
            metrics.emit(event(kind))
            metrics.emit(event(kind))

        assert 2 * len(kinds) == registry.get_sample_value(metric, LABELS)

    def test_other_kinds_and_presetless_events_are_not_counted(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """READY, BACKOFF, … count nothing; nor does an event with no preset."""
        for kind in EventKind:
            if kind not in {
                EventKind.CREATED,
                EventKind.FAILED,
                EventKind.VALIDATION_FAILED,
                EventKind.CLAIMED,
                EventKind.CLAIM_MISSED,
                EventKind.REPLACEMENT,
            }:
                metrics.emit(event(kind))
        metrics.emit(event(EventKind.CREATED, preset_id=None))

        assert [] == [
            s
            for m in registry.collect()
            for s in m.samples
            if s.name.endswith("_total")
        ]

    def test_organization_label_only_when_set(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """A preset of an organisation's template carries ``organization``."""
        metrics.emit(event(EventKind.CREATED, organization_id=ORG))
        metrics.emit(event(EventKind.CREATED, preset_id=P2, preset_name="big"))

        assert (1, 1) == (
            registry.get_sample_value(
                "prebuilds_created_total", {**LABELS, "organization": str(ORG)}
            ),
            registry.get_sample_value(
                "prebuilds_created_total",
                {"template_name": "python", "preset_name": "big"},
            ),
        )

    def test_labels_of_a_nameless_event_come_from_the_last_status(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """An event without names takes its preset's names from the last pass."""
        metrics.emit(event(EventKind.CREATED, preset_name="", template_name=""))
        metrics.pass_finished(led(), [status()])
        metrics.emit(event(EventKind.CREATED, preset_name="", template_name=""))

        assert (1, 1) == (
            registry.get_sample_value(
                "prebuilds_created_total",
                {"template_name": "", "preset_name": str(P1)},
            ),
            registry.get_sample_value("prebuilds_created_total", LABELS),
        )

    def test_a_sink_never_raises(self, metrics: PrometheusMetrics) -> None:
        """A failure inside emit is logged, not raised."""
        broken: Any = metrics
        broken._lock = None  # any use of the lock fails

        metrics.emit(event(EventKind.CREATED))


class TestGauges:
    def test_from_the_last_pass(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """desired, running, eligible, the flags and paused, per preset."""
        metrics.pass_finished(
            led(paused=True),
            [
                status(desired=5, running=4, eligible=3, hard_limited=True),
                status(
                    P2,
                    preset_name="",
                    template_name="",
                    desired_source="invalid",
                    validation_error="bad",
                ),
            ],
        )
        invalid = {"template_name": "", "preset_name": str(P2)}

        assert [5, 4, 3, 1, 0, 1, 0, 1] == [
            registry.get_sample_value(name, labels)
            for name, labels in [
                ("prebuilds_desired", LABELS),
                ("prebuilds_running", LABELS),
                ("prebuilds_eligible", LABELS),
                ("prebuilds_preset_hard_limited", LABELS),
                ("prebuilds_preset_validation_failed", LABELS),
                ("prebuilds_preset_validation_failed", invalid),
                ("prebuilds_preset_hard_limited", invalid),
                ("prebuilds_reconciliation_paused", {}),
            ]
        ]

    def test_presets_of_one_name_add_up(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """Two presets with the same names: counts add, flags take the highest."""
        metrics.pass_finished(
            led(),
            [
                status(desired=2, hard_limited=True),
                status(P2, desired=3, hard_limited=False),
            ],
        )

        assert (5, 1) == (
            registry.get_sample_value("prebuilds_desired", LABELS),
            registry.get_sample_value("prebuilds_preset_hard_limited", LABELS),
        )

    def test_a_pass_that_did_not_lead_clears_them(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """Only the leading replica reports gauges; a follower reports none."""
        metrics.pass_finished(led(), [status(desired=2)])
        metrics.pass_finished(ReconcileStats(leader=False), [])

        assert (None, None) == (
            registry.get_sample_value("prebuilds_desired", LABELS),
            registry.get_sample_value("prebuilds_reconciliation_paused", {}),
        )

    def test_a_failed_pass_keeps_the_last_statuses(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """A pass that could not read the store keeps what was known."""
        metrics.pass_finished(led(), [status(desired=2)])
        metrics.pass_finished(led(error="StoreError('down')"), [])

        assert 2 == registry.get_sample_value("prebuilds_desired", LABELS)


class TestHistograms:
    def test_claim_durations_by_result(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """CLAIMED and CLAIM_MISSED with a duration fill hit and miss."""
        metrics.emit(event(EventKind.CLAIMED, duration=timedelta(milliseconds=3)))
        metrics.emit(event(EventKind.CLAIMED, duration=timedelta(milliseconds=40)))
        metrics.emit(event(EventKind.CLAIM_MISSED, duration=timedelta(milliseconds=2)))
        metrics.emit(event(EventKind.CLAIMED))  # no duration: counted, not timed
        name = "prebuilds_claim_duration_seconds"
        hit, miss = {**LABELS, "result": "hit"}, {**LABELS, "result": "miss"}

        assert [2, 1, 0.043, 1, 2, 1] == [
            registry.get_sample_value(f"{name}_count", hit),
            registry.get_sample_value(f"{name}_bucket", {**hit, "le": "0.005"}),
            pytest.approx(registry.get_sample_value(f"{name}_sum", hit)),
            registry.get_sample_value(f"{name}_count", miss),
            registry.get_sample_value(f"{name}_bucket", {**hit, "le": "+Inf"}),
            registry.get_sample_value(f"{name}_bucket", {**miss, "le": "0.0025"}),
        ]

    def test_pass_durations_of_leading_passes(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """Leading passes are timed; followers' are not."""
        metrics.pass_finished(led(0.3), [])
        metrics.pass_finished(led(0.02), [])
        metrics.pass_finished(ReconcileStats(leader=False), [])
        name = "prebuilds_reconciliation_duration_seconds"

        assert [2, 1, 2, 0.32] == [
            registry.get_sample_value(f"{name}_count", {}),
            registry.get_sample_value(f"{name}_bucket", {"le": "0.025"}),
            registry.get_sample_value(f"{name}_bucket", {"le": "0.5"}),
            pytest.approx(registry.get_sample_value(f"{name}_sum", {})),
        ]

    def test_custom_buckets(self, registry: CollectorRegistry) -> None:
        """claim_buckets sets the bounds."""
        metrics = PrometheusMetrics(registry, claim_buckets=[0.5, 1])
        metrics.emit(event(EventKind.CLAIMED, duration=timedelta(seconds=0.7)))
        name = "prebuilds_claim_duration_seconds_bucket"
        hit = {**LABELS, "result": "hit"}

        assert [0, 1, 1] == [
            registry.get_sample_value(name, {**hit, "le": le})
            for le in ("0.5", "1.0", "+Inf")
        ]


class TestSetup:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"registry": "default"}, "registry"),
            ({"claim_buckets": []}, "claim_buckets"),
            ({"claim_buckets": [1, 0.5]}, "claim_buckets"),
            ({"pass_buckets": [float("inf")]}, "pass_buckets"),
            ({"pass_buckets": ["a"]}, "pass_buckets"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, Any], field: str) -> None:
        """A wrong registry or bucket list is named."""
        kwargs.setdefault("registry", CollectorRegistry())

        with pytest.raises(InvalidInputError) as caught:
            PrometheusMetrics(**kwargs)

        assert field == caught.value.field

    def test_twice_in_one_registry(self, registry: CollectorRegistry) -> None:
        """A registry refuses a second collector of the same names."""
        PrometheusMetrics(registry)

        with pytest.raises(ValueError, match="Duplicated timeseries"):
            PrometheusMetrics(registry)

    def test_is_a_sink_and_an_observer(self, metrics: PrometheusMetrics) -> None:
        """Both protocols, checked at runtime."""
        assert isinstance(metrics, EventSink)
        assert isinstance(metrics, PassObserver)

    def test_exposition(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """The text format names every family, even before any sample."""
        text = generate_latest(registry).decode()

        assert sorted(EXPORTED) == sorted(
            re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
        )


#: Every family exported (as the text format names it).
EXPORTED = [
    "prebuilds_created_total",
    "prebuilds_failed_total",
    "prebuilds_claimed_total",
    "prebuilds_claim_misses_total",
    "prebuilds_resource_replacements_total",
    "prebuilds_desired",
    "prebuilds_running",
    "prebuilds_eligible",
    "prebuilds_preset_hard_limited",
    "prebuilds_preset_validation_failed",
    "prebuilds_reconciliation_paused",
    "prebuilds_claim_duration_seconds",
    "prebuilds_reconciliation_duration_seconds",
]


class TestFanOut:
    def test_both_sinks_get_events_and_passes(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """FanOutEventSink gives every event to each, and passes to observers."""
        from prebuilds import CollectingEventSink

        collected = CollectingEventSink()
        fan = FanOutEventSink(collected, metrics)

        fan.emit(event(EventKind.CREATED))
        fan.pass_finished(led(), [status(desired=4)])

        assert ([EventKind.CREATED], 1, 4) == (
            collected.kinds(),
            registry.get_sample_value("prebuilds_created_total", LABELS),
            registry.get_sample_value("prebuilds_desired", LABELS),
        )

    def test_a_broken_sink_does_not_starve_the_others(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """A sink that raises is logged and skipped."""

        class Broken:
            def emit(self, event: Event) -> None:
                raise RuntimeError(event)

            def pass_finished(self, stats: ReconcileStats, statuses: Any) -> None:
                raise RuntimeError(stats)

        fan = FanOutEventSink(Broken(), metrics)

        fan.emit(event(EventKind.CREATED))
        fan.pass_finished(led(), [status(desired=4)])

        assert (1, 4) == (
            registry.get_sample_value("prebuilds_created_total", LABELS),
            registry.get_sample_value("prebuilds_desired", LABELS),
        )


class TestAlertRules:
    """docs/examples/alerts.yml: Prometheus rules on these metrics."""

    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]

    def test_the_four_alerts_the_issue_asks_for(self) -> None:
        """Under target, not ready, hard-limited, paused (and two more)."""
        assert {
            "PrebuildsPoolUnderTarget",
            "PrebuildsNotReady",
            "PrebuildsPresetHardLimited",
            "PrebuildsReconciliationPaused",
        } <= {rule["alert"] for rule in self.rules}

    def test_every_rule_is_complete(self) -> None:
        """Each has an expression, a severity and a summary."""
        assert [] == [
            rule["alert"]
            for rule in self.rules
            if not (
                rule.get("expr")
                and rule.get("labels", {}).get("severity")
                and rule.get("annotations", {}).get("summary")
            )
        ]

    def test_every_metric_named_exists(
        self, metrics: PrometheusMetrics, registry: CollectorRegistry
    ) -> None:
        """Each ``prebuilds_…`` name in an expression is a series this exports."""
        series = set()
        for family in EXPORTED:
            series.add(family)
            if family.endswith("_seconds"):
                series |= {f"{family}_{s}" for s in ("bucket", "count", "sum")}
        named = {
            name
            for rule in self.rules
            for name in re.findall(r"\bprebuilds_\w+", rule["expr"])
        }

        assert named
        assert set() == named - series

    def test_labels_in_summaries_exist(self) -> None:
        """Templates only use the labels the series carry."""
        used = {
            label
            for rule in self.rules
            for label in re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"])
        }

        assert used <= {"template_name", "preset_name", "organization"}
