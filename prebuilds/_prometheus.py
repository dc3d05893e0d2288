"""
The Prometheus adapter (the ``prometheus`` extra): an event sink and pass
observer that keeps counts in memory and hands them to prometheus-client as
a collector, so that a scrape reads only memory and never a store.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import attrs

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from prebuilds._records import EventKind
from prebuilds._validate import check_instance
from prebuilds.exceptions import InvalidInputError


if TYPE_CHECKING:
    from uuid import UUID

    from prebuilds._model import ReconcileStats
    from prebuilds._records import Event
    from prebuilds._status import PoolStatus

__all__ = ["CLAIM_BUCKETS", "PASS_BUCKETS", "PrometheusMetrics"]

#: The claim histogram's upper bounds, in seconds (a claim is one or two
#: statements: milliseconds).
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: The pass histogram's upper bounds, in seconds.
PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Counters: metric name (without ``_total``) -> (help, the kinds it counts).
COUNTERS: dict[str, tuple[str, frozenset[EventKind]]] = {
    "prebuilds_created": (
        "Prebuilt instances the reconciler created.",
        frozenset({EventKind.CREATED}),
    ),
    "prebuilds_failed": (
        (
            "Prebuild start builds that failed (at submit, by the provisioner's "
            "report, by timeout, or rejected as invalid)."
        ),
        frozenset({EventKind.FAILED, EventKind.VALIDATION_FAILED}),
    ),
    "prebuilds_claimed": (
        "Claims served from the pool (hits).",
        frozenset({EventKind.CLAIMED}),
    ),
    "prebuilds_claim_misses": (
        "Claims that found nothing to hand out (the host builds cold).",
        frozenset({EventKind.CLAIM_MISSED}),
    ),
    "prebuilds_resource_replacements": (
        "Claims whose apply replaced resources (drift that defeats the pool).",
        frozenset({EventKind.REPLACEMENT}),
    ),
}
_COUNTED = {kind: name for name, (_, kinds) in COUNTERS.items() for kind in kinds}

#: Per-preset gauges: name -> (help, how a status gives the value).
GAUGES = {
    "prebuilds_desired": "Instances the pool wants now (0 when inactive).",
    "prebuilds_running": "Running, unexpired prebuilt instances (ready or not).",
    "prebuilds_eligible": "Ready, unexpired prebuilt instances a claim may take.",
    "prebuilds_preset_hard_limited": "1 when the preset's last builds all failed.",
    "prebuilds_preset_validation_failed": (
        "1 when the preset is unreadable or the provisioner rejected it."
    ),
}
PAUSED = "prebuilds_reconciliation_paused"
CLAIM_DURATION = "prebuilds_claim_duration_seconds"
PASS_DURATION = "prebuilds_reconciliation_duration_seconds"  # noqa: S105 - a metric name

#: A label set: (template_name, preset_name, organization or "").
_Labels = tuple[str, str, str]


def _check_buckets(field: str, buckets: object) -> tuple[float, ...]:
    try:
        bounds = tuple(float(b) for b in buckets)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InvalidInputError(field, buckets, "must be numbers") from None
    if (
        not bounds
        or any(not math.isfinite(b) or b <= 0 for b in bounds)
        or list(bounds) != sorted(set(bounds))
    ):
        raise InvalidInputError(
            field, buckets, "must be positive, finite and increasing"
        )
    return bounds


@attrs.define
class _Histogram:
    """Cumulative-on-export bucket counts and a sum, like Prometheus's own."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.Factory(list)
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def samples(self, metric: Metric, name: str, labels: dict[str, str]) -> None:
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == math.inf else repr(bound)
            metric.add_sample(f"{name}_bucket", {**labels, "le": le}, float(running))
        metric.add_sample(f"{name}_count", labels, float(running))
        metric.add_sample(f"{name}_sum", labels, self.total)


class PrometheusMetrics:
    """
    Prometheus metrics of the pools: pass it as the reconciler's and the
    claimer's event sink (with :class:`~prebuilds.FanOutEventSink` to keep
    logging too); it registers itself as a collector in *registry*.

    Counters come from events as they are emitted; the per-preset gauges
    and ``prebuilds_reconciliation_paused`` come from the statuses of the
    reconciler's last pass (:meth:`pass_finished`); the histograms from the
    durations the claimer and the reconciler measure. A scrape reads only
    what this object keeps: it never touches a store.

    Labels: ``template_name`` and ``preset_name`` on every per-preset
    series, and ``organization`` (the template's organisation ID) on the
    series of presets that have one; never an instance ID. A preset without
    a name is labelled with its ID; events that name no preset (none of the
    counted kinds) are not counted. The label set of a counter is read from
    the event, else from the last status of its preset.

    Args:
        registry: Where to register (default: prometheus-client's global
            ``REGISTRY``).
        claim_buckets: Upper bounds of ``prebuilds_claim_duration_seconds``.
        pass_buckets: Upper bounds of
            ``prebuilds_reconciliation_duration_seconds``.

    Raises:
        InvalidInputError: *registry* is not a ``CollectorRegistry``, or
            bounds that are not positive, finite and increasing.
        ValueError: *registry* already holds metrics of these names.
        MissingExtraError: importing this without the ``prometheus`` extra.

    .. versionadded:: 0.2.0
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        claim_buckets: Iterable[float] = CLAIM_BUCKETS,
        pass_buckets: Iterable[float] = PASS_BUCKETS,
    ) -> None:
        if registry is not None:
            check_instance("registry", registry, CollectorRegistry)
        self._claim_bounds = _check_buckets("claim_buckets", claim_buckets)
        self._pass_bounds = _check_buckets("pass_buckets", pass_buckets)
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[str, _Labels], int] = defaultdict(int)
        self._claims: dict[tuple[_Labels, str], _Histogram] = {}
        self._passes = _Histogram(self._pass_bounds)
        self._statuses: tuple[PoolStatus, ...] = ()
        self._paused: bool | None = None
        self._labels: dict[UUID, _Labels] = {}
        (REGISTRY if registry is None else registry).register(self)

    # -- what the engine reports ------------------------------------------------
    def emit(self, event: Event) -> None:
        """Count *event* if it is of a counted kind; never raises."""
        try:
            self._count(event)
        except Exception:  # a sink must never raise
            logging.getLogger("prebuilds").warning(
                "prebuilds metrics could not count %r", event, exc_info=True
            )

    def _count(self, event: Event) -> None:
        name = _COUNTED.get(event.kind)
        if name is None or event.preset_id is None:
            return
        with self._lock:
            labels = self._labels_of(event)
            self._counts[name, labels] += 1
            if event.duration is not None:
                result = "hit" if event.kind is EventKind.CLAIMED else "miss"
                histogram = self._claims.get((labels, result))
                if histogram is None:
                    histogram = self._claims[labels, result] = _Histogram(
                        self._claim_bounds
                    )
                histogram.observe(event.duration.total_seconds())

    def pass_finished(
        self, stats: ReconcileStats, statuses: Sequence[PoolStatus]
    ) -> None:
        """
        Keep the pass's statuses for the gauges and time the pass.

        A pass that did not lead clears the gauges (the leading replica
        reports them) and is not timed; a leading pass that could not read
        the store (``stats.error``, no statuses) keeps the previous ones.
        """
        with self._lock:
            if not stats.leader:
                self._statuses, self._paused = (), None
                return
            self._passes.observe(stats.elapsed.total_seconds())
            self._paused = stats.paused
            if statuses or stats.error is None:
                self._statuses = tuple(statuses)
            for status in self._statuses:
                self._labels[status.preset_id] = _status_labels(status)

    # -- the collector --------------------------------------------------------------
    def describe(self) -> list[Metric]:
        """The metric families this collector exports (no samples)."""
        return [
            *(Metric(name, doc, "counter") for name, (doc, _) in COUNTERS.items()),
            *(Metric(name, doc, "gauge") for name, doc in GAUGES.items()),
            Metric(PAUSED, _PAUSED_HELP, "gauge"),
            Metric(CLAIM_DURATION, _CLAIM_HELP, "histogram"),
            Metric(PASS_DURATION, _PASS_HELP, "histogram"),
        ]

    def collect(self) -> Iterator[Metric]:
        """Every metric, from memory."""
        with self._lock:
            families = {m.name: m for m in self.describe()}
            for (name, labels), value in sorted(self._counts.items()):
                families[name].add_sample(
                    f"{name}_total", _as_dict(labels), float(value)
                )
            self._collect_gauges(families)
            if self._paused is not None:
                families[PAUSED].add_sample(PAUSED, {}, float(self._paused))
            for (labels, result), histogram in sorted(self._claims.items()):
                histogram.samples(
                    families[CLAIM_DURATION],
                    CLAIM_DURATION,
                    {**_as_dict(labels), "result": result},
                )
            if self._passes.total or any(self._passes.counts):
                self._passes.samples(families[PASS_DURATION], PASS_DURATION, {})
            yield from families.values()

    def _collect_gauges(self, families: dict[str, Metric]) -> None:
        # Presets that share a label set (same names) add up; flags take
        # the highest.
        values: defaultdict[tuple[str, _Labels], float] = defaultdict(float)
        for status in self._statuses:
            labels = _status_labels(status)
            values["prebuilds_desired", labels] += status.desired
            values["prebuilds_running", labels] += status.running
            values["prebuilds_eligible", labels] += status.eligible
            for name, flag in (
                ("prebuilds_preset_hard_limited", status.hard_limited),
                (
                    "prebuilds_preset_validation_failed",
                    status.validation_error is not None,
                ),
            ):
                values[name, labels] = max(values[name, labels], float(flag))
        for (name, labels), value in sorted(values.items()):
            families[name].add_sample(name, _as_dict(labels), value)

    def _labels_of(self, event: Event) -> _Labels:
        preset_id = event.preset_id
        assert preset_id is not None  # noqa: S101 - emit checked it
        if event.preset_name or event.template_name:
            labels = (
                event.template_name,
                event.preset_name or str(preset_id),
                str(event.organization_id or ""),
            )
            self._labels[preset_id] = labels
            return labels
        return self._labels.get(preset_id, ("", str(preset_id), ""))


_PAUSED_HELP = "1 when reconciliation is paused (reported by the leading replica)."
_CLAIM_HELP = "How long claims took, by result (hit or miss)."
_PASS_HELP = "How long the leading replica's reconciliation passes took."  # noqa: S105 - help text


def _status_labels(status: PoolStatus) -> _Labels:
    return (
        status.template_name,
        status.preset_name or str(status.preset_id),
        str(status.organization_id or ""),
    )


def _as_dict(labels: _Labels) -> dict[str, str]:
    template_name, preset_name, organization = labels
    names = {"template_name": template_name, "preset_name": preset_name}
    if organization:
        names["organization"] = organization
    return names
