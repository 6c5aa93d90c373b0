"""The autoscaler's shell: read metrics, ask `policy.autoscaling`, patch `/scale`, report.

`Autoscaler.run` ticks every IMD the watch knows every `--autoscale-interval-seconds`, one
operator-wide loop rather than a Kopf timer per IMD: a timer would make Kopf put its finalizer
on every IMD, and an IMD could then not be deleted while the operator is down or uninstalled.
Decisions are made by the pure core; this module only gathers observations, applies the
decisions and reports them (status fields, a Normal event per scale, operator metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName
from duotone_contracts.api.validation import InvalidSpecError, parse_imd
from duotone_operator.adapters import telemetry
from duotone_operator.adapters.cluster import Cluster, ClusterError
from duotone_operator.adapters.metric_sources import (
    DirectSource,
    MetricSource,
    PrometheusSource,
    tier_targets,
)
from duotone_operator.policy.autoscaling import (
    ScaleDecision,
    ScaleState,
    ScalingSpec,
    TierObservation,
    decide,
    initial_state,
    scaling_spec,
    share_gpu_budget,
)
from duotone_operator.render import names
from duotone_operator.render.status import (
    DeploymentObservation,
    scale_status,
    tier_observations,
)

log = logging.getLogger("duotone.autoscaler")

STATUS_REFRESH_SECONDS = 10.0
"""Queue depth and p50 alone rewrite the status at most this often (a scale writes at once)."""

StateKey = tuple[str, str, TierName]


@dataclass
class Autoscaler:
    """Per-IMD ticks; keeps each tier's ScaleState between them (in memory: a restarted
    operator starts from `initial_state`, which never scales down before a full window)."""

    cluster: Cluster
    observed: Mapping[tuple[str, str], DeploymentObservation] = field(default_factory=dict)
    """The reconciler's watch cache of child Deployments ((namespace, name) -> observation);
    a tick lists the Deployments only when a tier is missing from it."""
    states: dict[StateKey, ScaleState] = field(default_factory=dict)
    written: dict[tuple[str, str], tuple[dict[str, Any], float]] = field(default_factory=dict)
    sources: Callable[[ImageModelDeployment], MetricSource] | None = None
    """Where each IMD's metrics come from; None: from its spec (`default_source`)."""
    _session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def source(self, imd: ImageModelDeployment) -> MetricSource:
        if self.sources is not None:
            return self.sources(imd)
        return self.default_source(imd)

    def default_source(self, imd: ImageModelDeployment) -> MetricSource:
        """Prometheus when the IMD names one, else a direct scrape of the pods."""
        spec = imd.spec.autoscaling.metrics
        if spec.source == "prometheus" and spec.prometheus_url:
            return PrometheusSource(spec.prometheus_url, self.session())
        return DirectSource(self.cluster, self.session())

    def forget(self, namespace: str, name: str) -> None:
        """Drop the state and metric series of a deleted IMD."""
        for key in [k for k in self.states if k[:2] == (namespace, name)]:
            del self.states[key]
            for gauge in telemetry.TIER_GAUGES:
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
        self.written.pop((namespace, name), None)

    async def run(
        self,
        bodies: Callable[[], Sequence[Mapping[str, Any]]],
        interval_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Tick every IMD in `bodies()` every `interval_seconds`, until cancelled.

        Rounds start on a fixed cadence; an IMD whose previous tick is still running (a slow
        metrics source) is skipped this round rather than ticked twice at once.
        """
        running: dict[tuple[str, str], asyncio.Task[None]] = {}
        started = time.monotonic()
        try:
            while True:
                current = set()
                for body in bodies():
                    metadata = body.get("metadata") or {}
                    key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
                    current.add(key)
                    task = running.get(key)
                    if task is None or task.done():
                        running[key] = asyncio.create_task(self.tick_reporting(body, clock()))
                for key in [k for k, t in running.items() if k not in current and t.done()]:
                    del running[key]
                elapsed = time.monotonic() - started
                await asyncio.sleep(interval_seconds - elapsed % interval_seconds)
        finally:
            for task in running.values():
                task.cancel()

    async def tick_reporting(self, body: Mapping[str, Any], now: float) -> None:
        """One tick whose API or network failure is logged and counted: the next retries, and
        nothing is decided on half a picture."""
        try:
            await self.tick(body, now)
        except (ClusterError, OSError, TimeoutError, aiohttp.ClientError) as exc:
            metadata = body.get("metadata") or {}
            telemetry.SCALE_ERRORS.labels(metadata.get("namespace", "")).inc()
            log.warning("autoscaler round for %s failed: %s", metadata.get("name"), exc)

    async def tick(self, body: Mapping[str, Any], now: float) -> dict[TierName, ScaleDecision]:
        """One round for one IMD; returns the decisions (empty when there is nothing to do)."""
        try:
            imd = parse_imd(body)
        except InvalidSpecError:
            return {}  # the reconciler reports it
        if not imd.spec.autoscaling.enabled:
            return {}
        namespace, name = imd.metadata.namespace or "default", imd.metadata.name
        started = time.monotonic()
        current = await self._deployments(imd)
        targets = {t: v for t, v in tier_targets(imd).items() if t in current}
        source = self.source(imd)
        readings = await asyncio.gather(*(source.read(t, now) for t in targets.values()))

        specs = {tier: scaling_spec(imd, tier) for tier in targets}
        decisions: dict[TierName, ScaleDecision] = {}
        for tier, reading in zip(targets, readings, strict=True):
            observed = current[tier]
            observation = TierObservation(observed.desired, observed.ready, reading)
            key = (namespace, name, tier)
            state = self.states.get(key)
            if state is None:
                state = initial_state(observed.desired, now)
                telemetry.start_scale_counters(*key)
            decisions[tier], self.states[key] = decide(observation, specs[tier], state, now)
        decisions = share_gpu_budget(decisions, specs, imd.spec.autoscaling.gpu_budget)

        for tier, decision in decisions.items():
            await self._act(body, imd, tier, decision)
        await self._report_status(body, namespace, name, decisions, now)
        for tier, decision in decisions.items():
            self._export((namespace, name, tier), decision, specs[tier], now)
        telemetry.TICK_SECONDS.observe(time.monotonic() - started)
        return decisions

    async def _deployments(
        self, imd: ImageModelDeployment
    ) -> dict[TierName, DeploymentObservation]:
        namespace, name = imd.metadata.namespace or "default", imd.metadata.name
        cached = {
            tier: self.observed.get((namespace, names.tier_name(name, tier)))
            for tier in imd.spec.tiers.present()
        }
        found = {tier: obs for tier, obs in cached.items() if obs is not None}
        if len(found) == len(cached):
            return found
        listed = await asyncio.to_thread(self.cluster.deployments, namespace, name)
        return tier_observations(listed)

    async def _act(
        self,
        body: Mapping[str, Any],
        imd: ImageModelDeployment,
        tier: TierName,
        decision: ScaleDecision,
    ) -> None:
        if decision.direction == "none":
            return
        namespace, name = imd.metadata.namespace or "default", imd.metadata.name
        await asyncio.to_thread(
            self.cluster.scale_deployment, namespace, names.tier_name(name, tier), decision.replicas
        )
        telemetry.SCALE_PATCHES.labels(
            namespace, name, tier, decision.direction, decision.cause
        ).inc()
        log.info("%s/%s %s: %s", namespace, name, tier, decision.reason)
        reason = "ScaledUp" if decision.direction == "up" else "ScaledDown"
        await asyncio.to_thread(
            self.cluster.post_event, body, "Normal", reason, f"{tier}: {decision.reason}"
        )

    async def _report_status(
        self,
        body: Mapping[str, Any],
        namespace: str,
        name: str,
        decisions: Mapping[TierName, ScaleDecision],
        now: float,
    ) -> None:
        if not decisions:
            return
        patch = scale_status(decisions, body.get("status"), datetime.fromtimestamp(now, UTC))
        last, written_at = self.written.get((namespace, name), ({}, 0.0))

        def settled(status: Mapping[str, Any]) -> dict[str, Any]:
            """The patch without the figures that move on every tick."""
            return {
                tier: {k: v for k, v in fields.items() if k not in ("queueDepth", "p50LatencyMs")}
                for tier, fields in status.get("tiers", {}).items()
            }

        scaled = any(d.direction != "none" for d in decisions.values())
        if patch == last or (
            not scaled
            and settled(patch) == settled(last)
            and now - written_at < STATUS_REFRESH_SECONDS
        ):
            return
        await asyncio.to_thread(self.cluster.patch_imd_status, namespace, name, patch)
        self.written[(namespace, name)] = (patch, now)

    @staticmethod
    def _export(labels: StateKey, decision: ScaleDecision, spec: ScalingSpec, now: float) -> None:
        telemetry.SCALE_DECISIONS.labels(
            *labels, decision.direction, "true" if decision.held else "false"
        ).inc()
        telemetry.REPLICAS_CURRENT.labels(*labels).set(decision.current)
        telemetry.REPLICAS_DESIRED.labels(*labels).set(decision.replicas)
        wanted = max(
            decision.wanted or decision.replicas,
            decision.queue_recommendation or 0,
            decision.latency_recommendation or 0,
        )
        telemetry.REPLICAS_WANTED.labels(*labels).set(wanted)
        if decision.queue_depth is not None:
            telemetry.QUEUE_DEPTH.labels(*labels).set(decision.queue_depth)
        if decision.p50_latency_ms is not None:
            telemetry.P50_MS.labels(*labels).set(decision.p50_latency_ms)
        telemetry.BUDGET_LIMITED.labels(*labels).set(1 if decision.budget_limited else 0)
        telemetry.LAST_DECISION.labels(*labels).set(now)
        telemetry.REPLICAS_MAX.labels(*labels).set(spec.maximum)
        telemetry.SLO_P50_MS.labels(*labels).set(spec.slo_p50_ms)
