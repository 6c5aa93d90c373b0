"""Named IMD scenes the integration and e2e tests share, as builder presets.

Each returns an `IMDBuilder`, so a test states only what its scene does differently:

    presets.scaled_pair("sd", namespace, prometheus.url).tier("flagship", min=0).build()
"""

from __future__ import annotations

from tests.support.builders import IMDBuilder, imd


def tiny_pair(name: str = "ab") -> IMDBuilder:
    """Two CPU tiers of the tiny pipeline behind a router with API-key rate limits: a quick
    efficient tier and a flagship whose queue holds one request (easy to saturate). SLOs are
    loose so that CPU noise never overflows."""
    return (
        imd(name)
        .tier("efficient")
        .resources(gpus=0, cpu="1", memory="2Gi")
        .defaults(steps=1, guidanceScale=0.0, width=64, height=64)
        .limits(maxSteps=8, maxWidth=256, maxHeight=256, maxImagesPerRequest=2)
        .batching(maxBatchSize=16, maxQueueDelayMs=5, maxQueueSize=64, requestTimeoutMs=30000)
        .slo(p50_ms=60000)
        .tier("flagship")
        .resources(gpus=0, cpu="1", memory="2Gi")
        .defaults(steps=2, guidanceScale=0.0, width=64, height=64)
        .limits(maxSteps=16, maxWidth=256, maxHeight=256, maxImagesPerRequest=2)
        .batching(maxBatchSize=1, maxQueueDelayMs=0, maxQueueSize=1, requestTimeoutMs=30000)
        .slo(p50_ms=60000)
        .traffic(efficientPercent=80)
        .router(rateLimit={"requestsPerMinutePerKey": 60, "burst": 2})
    )


def small_pair(name: str) -> IMDBuilder:
    """A CPU-only two-tier IMD small enough that 20 of them fit the fake CPU node (pods are
    scheduled, never run)."""
    return (
        imd(name)
        .tier("efficient", gpus=0)
        .resources(cpu="500m", memory="1Gi")
        .defaults(steps=2, width=64, height=64)
        .tier("flagship", gpus=0)
        .resources(cpu="500m", memory="1Gi")
        .defaults(steps=8, width=64, height=64)
        .router(replicas=1, resources={"cpu": "100m", "memory": "128Mi"})
    )


def scaled_pair(name: str, namespace: str, prometheus_url: str) -> IMDBuilder:
    """Two tiny CPU tiers at 64x64 and one small router, scaled by the autoscaler from the
    Prometheus at `prometheus_url`, 2 queued requests per replica: the skeleton of the
    autoscaler and dashboard scenes (each sets its own SLOs, batching, traffic and window)."""
    return (
        imd(name)
        .namespace(namespace)
        .tier("efficient", min=1, max=3)
        .resources(gpus=0, cpu="500m", memory="1Gi")
        .defaults(steps=8, guidanceScale=0.0, width=64, height=64)
        .limits(maxSteps=8, maxWidth=128, maxHeight=128, maxImagesPerRequest=1)
        .tier("flagship", min=0, max=2)
        .resources(gpus=0, cpu="500m", memory="1Gi")
        .defaults(steps=2, guidanceScale=0.0, width=64, height=64)
        .limits(maxSteps=8, maxWidth=128, maxHeight=128, maxImagesPerRequest=1)
        .router(replicas=1, resources={"cpu": "100m", "memory": "128Mi"})
        .autoscaling(
            targetQueueDepthPerReplica=2,
            metrics={"source": "prometheus", "prometheusUrl": prometheus_url},
        )
    )
