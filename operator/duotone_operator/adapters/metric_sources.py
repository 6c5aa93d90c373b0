"""Where the autoscaler reads each tier's queue depth, p50 and router demand (adapters).

Two sources behind one interface, `MetricSource.read(target, now) -> TierMetrics`:
- `PrometheusSource`: PromQL over Triton's, the runtime's and the router's metrics. Series are
  selected by the `namespace` and `service` labels a ServiceMonitor (or any Kubernetes scrape
  config keeping the Service name) attaches; `prometheus_queries` lists the exact queries.
- `DirectSource`: scrapes the tier's pods (metrics port) and the router pods (HTTP port) found in
  the Services' EndpointSlices, and adds the figures up with `tier_metrics_from_scrapes`.
A source that cannot answer returns `TierMetrics(at=None)`; the policy then holds the size.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from duotone_contracts import metrics as m
from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName
from duotone_contracts.services import ROUTER_METRICS, TIER_METRICS, addresses_from_slices
from duotone_operator.policy.autoscaling import TierMetrics
from duotone_operator.render import names

log = logging.getLogger("duotone.autoscaler")

SCRAPE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class TierTarget:
    """Which series belong to one tier of one IMD."""

    namespace: str
    tier: TierName
    tier_service: str
    router_service: str
    step_batched: bool = False
    """The tier batches steps (`batching.mode: step`): its pods' median latency is the
    runtime's STEP_REQUEST_P50_US, not Triton's summary (which a decoupled model ends at
    execute)."""

    @property
    def p50_metric(self) -> str:
        """The per-pod median latency family, in microseconds, with its quantile selector."""
        if self.step_batched:
            return m.STEP_REQUEST_P50_US.name
        return f'{m.TRITON_REQUEST_SUMMARY_US.name}{{{m.QUANTILE}="0.5"}}'


def tier_targets(imd: ImageModelDeployment) -> dict[TierName, TierTarget]:
    name, namespace = imd.metadata.name, imd.metadata.namespace or "default"
    return {
        tier: TierTarget(
            namespace,
            tier,
            names.tier_name(name, tier),
            names.router_name(name),
            step_batched=spec.batching.mode == "step",
        )
        for tier, spec in imd.spec.tiers.present().items()
    }


class MetricSource(Protocol):
    """Reads one tier's figures; never raises for an unreachable backend (at=None instead)."""

    async def read(self, target: TierTarget, now: float) -> TierMetrics: ...


def prometheus_queries(target: TierTarget) -> dict[str, str]:
    """The PromQL the Prometheus source runs for one tier (dashboards reuse these shapes)."""
    pods = f'{m.NAMESPACE}="{target.namespace}",{m.SERVICE}="{target.tier_service}"'
    routers = (
        f'{m.NAMESPACE}="{target.namespace}",{m.SERVICE}="{target.router_service}",'
        f'{m.TIER}="{target.tier}"'
    )
    pending = m.TRITON_PENDING_REQUESTS.name
    return {
        "queued": f"sum({pending}{{{pods}}})",
        "executing": f"sum({m.EXECUTING_REQUESTS.name}{{{pods}}})",
        # A pod that served nothing lately reports NaN quantiles; `>= 0` drops them.
        "p50_ms": f"avg({_selected(target.p50_metric, pods)} >= 0) / 1000",
        "scraped_at": f"min(timestamp({pending}{{{pods}}}))",
        "router_pending": f"sum({m.ROUTER_PENDING.name}{{{routers}}})",
        "demand_total": f"sum({m.ROUTER_TIER_DEMAND.name}{{{routers}}})",
    }


def _selected(series: str, selector: str) -> str:
    """`series` (a name, or a name with a `{...}` selector) with `selector` added."""
    if series.endswith("}"):
        return f"{series[:-1]},{selector}}}"
    return f"{series}{{{selector}}}"


def instant_value(payload: Mapping[str, Any]) -> float | None:
    """The value of a one-element instant vector; None when empty or NaN."""
    if payload.get("status") != "success":
        raise ValueError(f"query failed: {payload.get('error', payload)}")
    result = payload["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


@dataclass
class PrometheusSource:
    """PromQL over Prometheus' HTTP API (`GET /api/v1/query`)."""

    url: str
    session: aiohttp.ClientSession
    timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS

    async def _query(self, promql: str) -> float | None:
        async with self.session.get(
            f"{self.url.rstrip('/')}/api/v1/query",
            params={"query": promql},
            timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
        ) as response:
            return instant_value(await response.json(content_type=None))

    async def read(self, target: TierTarget, now: float) -> TierMetrics:
        queries = prometheus_queries(target)
        try:
            values = dict(
                zip(
                    queries,
                    await asyncio.gather(*(self._query(q) for q in queries.values())),
                    strict=True,
                )
            )
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
            log.warning("prometheus %s unreadable for %s: %r", self.url, target.tier, error)
            return TierMetrics(at=None)
        return TierMetrics(
            # No tier series at all (no pods) is a reading, not a stale one.
            at=values["scraped_at"] if values["scraped_at"] is not None else now,
            queued=values["queued"],
            executing=values["executing"] if values["queued"] is not None else None,
            p50_latency_ms=values["p50_ms"],
            router_pending=values["router_pending"] or 0.0,
            demand_total=values["demand_total"],
        )


def _samples(text: str) -> Iterable[tuple[str, Mapping[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, float(sample.value)


def _is_median(name: str, labels: Mapping[str, str], *, step_batched: bool) -> bool:
    if step_batched:
        return name == m.STEP_REQUEST_P50_US.name
    return name == m.TRITON_REQUEST_SUMMARY_US.name and labels.get(m.QUANTILE) == "0.5"


def tier_metrics_from_scrapes(
    pods: Sequence[str | None],
    routers: Sequence[str | None],
    tier: TierName,
    now: float,
    *,
    step_batched: bool = False,
) -> TierMetrics:
    """Add up the scraped exposition texts of a tier's pods and of the routers (pure).

    A pod that could not be scraped (None) makes the queue unknown; a router that could not be
    scraped only loses its share of pending requests and demand. p50 is the mean of the pods'
    medians that have one (a step-batched tier's: the runtime's STEP_REQUEST_P50_US).
    """
    queued: float | None = 0.0
    executing = 0.0
    medians: list[float] = []
    for text in pods:
        if text is None:
            queued = None
            continue
        for name, labels, value in _samples(text):
            if name == m.TRITON_PENDING_REQUESTS.name and queued is not None:
                queued += value
            elif name == m.EXECUTING_REQUESTS.name:
                executing += value
            elif _is_median(name, labels, step_batched=step_batched) and not math.isnan(value):
                medians.append(value / 1000)
    pending, demand, demand_seen = 0.0, 0.0, False
    for text in routers:
        for name, labels, value in _samples(text or ""):
            if labels.get(m.TIER) != tier:
                continue
            if name == m.ROUTER_PENDING.name:
                pending += value
            elif name == m.ROUTER_TIER_DEMAND.name:
                demand += value
                demand_seen = True
    return TierMetrics(
        at=now,
        queued=queued if pods else None,
        executing=executing if pods and queued is not None else None,
        p50_latency_ms=sum(medians) / len(medians) if medians else None,
        router_pending=pending,
        demand_total=demand if demand_seen else None,
    )


class EndpointSlices(Protocol):
    """The part of the Kubernetes adapter the direct source needs."""

    def endpoint_slices(self, namespace: str, services: Sequence[str]) -> list[dict[str, Any]]: ...


@dataclass
class DirectSource:
    """Scrape the tier's pods and the routers directly (no Prometheus needed)."""

    cluster: EndpointSlices
    session: aiohttp.ClientSession
    timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS

    async def _scrape(self, address: str, path: str) -> str | None:
        try:
            async with self.session.get(
                f"http://{address}{path}",
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
            ) as response:
                response.raise_for_status()
                return await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            log.debug("scrape of %s failed: %r", address, error)
            return None

    async def read(self, target: TierTarget, now: float) -> TierMetrics:
        services = {target.tier_service: "pods", target.router_service: "routers"}
        try:
            slices = await asyncio.to_thread(
                self.cluster.endpoint_slices, target.namespace, sorted(services)
            )
        except Exception as error:  # the API being unreachable is a missing reading
            log.warning("cannot list EndpointSlices in %s: %r", target.namespace, error)
            return TierMetrics(at=None)
        pods = addresses_from_slices(slices, {target.tier_service: "pods"}, TIER_METRICS.name)[
            "pods"
        ]
        routers = addresses_from_slices(
            slices, {target.router_service: "routers"}, ROUTER_METRICS.name
        )["routers"]
        texts = await asyncio.gather(
            *(self._scrape(a, "/metrics") for a in pods),
            *(self._scrape(a, "/metrics") for a in routers),
        )
        return tier_metrics_from_scrapes(
            texts[: len(pods)],
            texts[len(pods) :],
            target.tier,
            now,
            step_batched=target.step_batched,
        )
