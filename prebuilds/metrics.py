"""
Prometheus metrics of the pools (needs the ``prometheus`` extra:
``pip install 'prebuilds[prometheus]'``).

:class:`PrometheusMetrics` is imported on first use: without the extra,
``import prebuilds.metrics`` works and imports nothing of
prometheus-client, and ``prebuilds.metrics.PrometheusMetrics`` raises
:class:`~prebuilds.exceptions.MissingExtraError` with the install command.
:doc:`/observing` lists every metric.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prebuilds._extras import load


if TYPE_CHECKING:
    from prebuilds._prometheus import PrometheusMetrics

__all__ = ["PrometheusMetrics"]


def __getattr__(name: str) -> Any:
    if name == "PrometheusMetrics":
        module = load(
            "prebuilds._prometheus", extra="prometheus", feature=f"{__name__}.{name}"
        )
        return module.PrometheusMetrics
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
