"""FakeMetricSource: the autoscaler's `MetricSource` with readings the test sets (a fake).

The real sources are `PrometheusSource` and `DirectSource`
(duotone_operator.adapters.metric_sources), tested against a real Prometheus and real pods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duotone_contracts.api.v1alpha1 import TierName
from duotone_operator.adapters.metric_sources import TierTarget
from duotone_operator.policy.autoscaling import TierMetrics


@dataclass
class FakeMetricSource:
    """Answers each tier with the reading set for it (none set: a failed read)."""

    readings: dict[TierName, TierMetrics] = field(default_factory=dict)
    reads: list[TierTarget] = field(default_factory=list)

    async def read(self, target: TierTarget, now: float) -> TierMetrics:  # noqa: ARG002 - the Protocol's signature
        self.reads.append(target)
        return self.readings.get(target.tier, TierMetrics(at=None))
