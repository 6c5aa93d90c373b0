"""ImageModelDeployment, API version duotone.io/v1alpha1, as typed models.

These models are the truth: `hack/generate.py` generates the CRD in `crds/` from them, and the
operator and router parse resources with them. Field names are snake_case in Python and
camelCase on the wire. Bounds sit on the fields; rules between fields are `Rule`s (CEL + Python).

Two tiers share one shape but not one set of defaults: the efficient tier defaults to few steps
at 512x512 with tight latency, the flagship tier to many steps at 1024x1024.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from duotone_contracts.api.rules import Rule, SpecModel, StatusModel, check_rules, with_defaults
from duotone_contracts.api.sources import (
    MODEL_SOURCE_FORMS,
    MODEL_SOURCE_PATTERN,
    is_valid_model_source,
)

GROUP: Final = "duotone.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "duotone.io/v1alpha1"
KIND: Final = "ImageModelDeployment"
PLURAL = "imagemodeldeployments"
SINGULAR = "imagemodeldeployment"
SHORT_NAMES = ("imd",)
CATEGORIES = ("duotone",)

MAX_NAME_LENGTH = 40
"""Longest IMD name: child names append suffixes such as `-efficient-router` and must stay
within the 63-character DNS label limit of Services."""

TierName = Literal["efficient", "flagship"]
TIER_NAMES: tuple[TierName, ...] = ("efficient", "flagship")
DType = Literal["float32", "float16", "bfloat16"]
OverflowPolicy = Literal["efficient", "reject"]
EfficientOverflowPolicy = Literal["reject", "flagship"]
MetricsSourceKind = Literal["direct", "prometheus"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
WhenUnsatisfiable = Literal["ScheduleAnyway", "DoNotSchedule"]
TolerationOperator = Literal["Exists", "Equal"]
BatchingMode = Literal["request", "step"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
ConditionStatus = Literal["True", "False", "Unknown"]

# Patterns shared by CEL and Python (RE2-compatible: no backslashes).
QUANTITY_PATTERN = "^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
QUALIFIED_NAME_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_1035_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
HTTP_URL_PATTERN = "^https?://[^ ]+$"

ShortText = Annotated[str, Field(max_length=63)]


def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def _quantity_rule(field: str, attr: str | None = None) -> Rule:
    """`field` is the wire name; `attr` the Python one where they differ."""
    return Rule(
        cel=f"self.{field}.matches('{QUANTITY_PATTERN}')",
        message=f"{field} must be a Kubernetes quantity such as 500m, 4, 16Gi",
        holds=lambda obj: _matches(QUANTITY_PATTERN, getattr(obj, attr or field)),
        field_path=f".{field}",
    )


# --------------------------------------------------------------------------- model and requests


class SecretRef(SpecModel):
    """A Secret in the IMD's namespace."""

    name: str = Field(max_length=253, description="Name of the Secret.")

    rules = (
        Rule(
            cel=f"self.name.matches('{DNS_SUBDOMAIN_PATTERN}')",
            message="name must be a valid Secret name (lowercase letters, digits, '-', '.')",
            holds=lambda ref: _matches(DNS_SUBDOMAIN_PATTERN, ref.name),
            field_path=".name",
        ),
    )


class ModelSpec(SpecModel):
    """Where the diffusers pipeline comes from and how it is loaded."""

    source: str = Field(
        max_length=512,
        description=f"Model location: {MODEL_SOURCE_FORMS}.",
    )
    dtype: DType = Field("bfloat16", description="Weights and compute dtype on the GPU.")
    allow_download: bool = Field(
        False,
        description="hf:// only: let the runtime download missing files. Off by default: "
        "the runtime serves only what is pre-pulled into the cache.",
    )
    token_secret_ref: SecretRef | None = Field(
        None,
        description="hf:// only: Secret whose `token` key holds a read-only Hugging Face token.",
    )
    cache_claim_name: str | None = Field(
        None,
        max_length=253,
        description="hf:// only: PersistentVolumeClaim holding the pre-pulled Hugging Face "
        "cache, mounted read-only as HF_HOME. Without it the cache starts empty, which only "
        "works with allowDownload.",
    )

    rules = (
        Rule(
            cel=f"self.source.matches('{MODEL_SOURCE_PATTERN}') && !self.source.contains('..')",
            message=f"model.source must be {MODEL_SOURCE_FORMS}, without '..'",
            holds=lambda model: is_valid_model_source(model.source),
            field_path=".source",
        ),
        Rule(
            cel="!self.allowDownload || self.source.startsWith('hf://')",
            message="model.allowDownload applies only to hf:// sources",
            holds=lambda model: not model.allow_download or model.source.startswith("hf://"),
            field_path=".allowDownload",
        ),
        Rule(
            cel="!has(self.tokenSecretRef) || self.source.startsWith('hf://')",
            message="model.tokenSecretRef applies only to hf:// sources",
            holds=lambda model: model.token_secret_ref is None or model.source.startswith("hf://"),
            field_path=".tokenSecretRef",
        ),
        Rule(
            cel="!has(self.cacheClaimName) || self.source.startsWith('hf://')",
            message="model.cacheClaimName applies only to hf:// sources",
            holds=lambda model: model.cache_claim_name is None or model.source.startswith("hf://"),
            field_path=".cacheClaimName",
        ),
        Rule(
            cel="!has(self.cacheClaimName) || "
            f"self.cacheClaimName.matches('{DNS_SUBDOMAIN_PATTERN}')",
            message="model.cacheClaimName must be a valid PersistentVolumeClaim name",
            holds=lambda model: (
                model.cache_claim_name is None
                or _matches(DNS_SUBDOMAIN_PATTERN, model.cache_claim_name)
            ),
            field_path=".cacheClaimName",
        ),
    )


MIN_STEPS = 1
MIN_PIXELS = 64
MAX_PIXELS = 4096
PIXEL_MULTIPLE = 8
"""Widths and heights are multiples of 8: the VAE downsamples by 8 (the limits check uses the
same bounds for requests)."""

Steps = Annotated[int, Field(ge=MIN_STEPS, le=500)]
Pixels = Annotated[int, Field(ge=MIN_PIXELS, le=MAX_PIXELS, multiple_of=PIXEL_MULTIPLE)]
Guidance = Annotated[float, Field(ge=0.0, le=50.0)]


class RequestDefaults(SpecModel):
    """What a request gets for each parameter it leaves out."""

    steps: Steps = Field(4, description="Denoising steps.")
    guidance_scale: Guidance = Field(
        0.0, description="Classifier-free guidance scale; 0 disables it."
    )
    width: Pixels = Field(512, description="Image width in pixels, a multiple of 8.")
    height: Pixels = Field(512, description="Image height in pixels, a multiple of 8.")


@with_defaults(steps=30, guidance_scale=5.0, width=1024, height=1024)
class FlagshipRequestDefaults(RequestDefaults):
    """Flagship defaults: many steps with guidance at 1024x1024."""


class RequestLimits(SpecModel):
    """Hard limits per request; the router refuses anything beyond them before any GPU work."""

    max_steps: Steps = Field(8, description="Most denoising steps a request may ask for.")
    max_width: Pixels = Field(1024, description="Widest image, a multiple of 8.")
    max_height: Pixels = Field(1024, description="Tallest image, a multiple of 8.")
    max_guidance_scale: Guidance = Field(20.0, description="Largest guidance scale.")
    max_images_per_request: int = Field(4, ge=1, le=16, description="Most images per request (n).")
    max_prompt_length: int = Field(
        2000, ge=1, le=20000, description="Longest prompt or negative prompt, in characters."
    )
    allow_edits: bool = Field(
        True, description="Serve image edits (POST /v1/images/edits) on this tier."
    )
    max_input_image_bytes: int = Field(
        4194304,
        ge=1024,
        le=52428800,
        description="Largest input image or mask file of an edit, in bytes.",
    )
    max_input_images: int = Field(
        4, ge=1, le=16, description="Most input images an edit may send (the first is edited)."
    )


@with_defaults(max_steps=50, max_width=1536, max_height=1536)
class FlagshipRequestLimits(RequestLimits):
    """Flagship limits: room for long, large generations."""


class BatchingSpec(SpecModel):
    """Triton dynamic batching and queue policy for the tier."""

    mode: BatchingMode = Field(
        "request",
        description="request: Triton's dynamic batcher groups whole requests, each group runs "
        "every step together. step: the runtime batches denoising steps; requests join and "
        "leave the running batch between steps, admitted by priority then earliest deadline.",
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        le=256,
        description="Largest batch Triton forms (step mode: most images in the running batch).",
    )
    max_queue_delay_ms: int = Field(
        10, ge=0, le=10000, description="How long Triton waits to fill a batch."
    )
    max_queue_size: int = Field(
        256, ge=1, le=100000, description="Queued requests per pod before new ones are rejected."
    )
    request_timeout_ms: int = Field(
        30000,
        ge=100,
        le=3600000,
        description="A request still queued after this long is rejected, never run.",
    )

    rules = (
        Rule(
            cel="self.requestTimeoutMs > self.maxQueueDelayMs",
            message="batching.requestTimeoutMs must be greater than batching.maxQueueDelayMs",
            holds=lambda b: b.request_timeout_ms > b.max_queue_delay_ms,
            field_path=".requestTimeoutMs",
        ),
    )


@with_defaults(
    max_batch_size=4, max_queue_delay_ms=50, max_queue_size=64, request_timeout_ms=120000
)
class FlagshipBatchingSpec(BatchingSpec):
    """Flagship batching: small batches of long generations."""


class ReplicasSpec(SpecModel):
    """Bounds for the autoscaler. `min: 0` lets an idle tier scale to zero."""

    minimum: int = Field(1, alias="min", ge=0, le=1000, description="Fewest replicas.")
    maximum: int = Field(4, alias="max", ge=1, le=1000, description="Most replicas.")

    rules = (
        Rule(
            cel="self.min <= self.max",
            message="replicas.min must be less than or equal to replicas.max",
            holds=lambda r: r.minimum <= r.maximum,
            field_path=".min",
        ),
    )


class ResourcesSpec(SpecModel):
    """Per-pod resources. `gpus: 0` runs on CPU (tests, demo)."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per pod.")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU."
    )
    cpu: str = Field("4", max_length=32, description="CPU request and limit per pod.")
    memory: str = Field("32Gi", max_length=32, description="Memory request and limit per pod.")
    ephemeral_storage: str = Field(
        "10Gi",
        max_length=32,
        description="Node disk per pod (request and limit): logs, /tmp and the model cache "
        "emptyDir, each emptyDir capped at this size. A pod that downloads its model into the "
        "emptyDir (allowDownload without cacheClaimName) needs the model's size and 2Gi more.",
    )

    rules = (
        Rule(
            cel=f"self.gpuResourceName.matches('{QUALIFIED_NAME_PATTERN}')",
            message="resources.gpuResourceName must be a resource name such as nvidia.com/gpu",
            holds=lambda r: _matches(QUALIFIED_NAME_PATTERN, r.gpu_resource_name),
            field_path=".gpuResourceName",
        ),
        _quantity_rule("cpu"),
        _quantity_rule("memory"),
        _quantity_rule("ephemeralStorage", "ephemeral_storage"),
    )


class Toleration(SpecModel):
    """A Kubernetes toleration."""

    key: str | None = Field(None, max_length=317, description="Taint key; empty matches all.")
    operator: TolerationOperator = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, max_length=63, description="Taint value (Equal only).")
    effect: TaintEffect | None = Field(None, description="Taint effect; empty matches all.")
    toleration_seconds: int | None = Field(
        None, ge=0, le=31536000, description="NoExecute only: how long the pod stays bound."
    )

    rules = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists must not set value",
            holds=lambda t: t.operator != "Exists" or t.value is None,
            field_path=".value",
        ),
    )


class TopologySpread(SpecModel):
    """How a workload's pods spread over a node topology: a topologySpreadConstraint whose
    selector is the workload's own pods (of the current rollout)."""

    topology_key: str = Field(
        "kubernetes.io/hostname",
        max_length=317,
        description="Node label whose values are the domains (hostname: one per node).",
    )
    max_skew: int = Field(
        1, ge=1, le=1000, description="Most pods one domain may hold beyond the emptiest."
    )
    when_unsatisfiable: WhenUnsatisfiable = Field(
        "ScheduleAnyway",
        description="ScheduleAnyway (soft: the scheduler prefers spreading, but a GPU pool "
        "with few nodes still takes every pod) or DoNotSchedule (hard).",
    )

    rules = (
        Rule(
            cel=f"self.topologyKey.matches('{QUALIFIED_NAME_PATTERN}')",
            message="topologySpread.topologyKey must be a label key such as kubernetes.io/hostname",
            holds=lambda t: _matches(QUALIFIED_NAME_PATTERN, t.topology_key),
            field_path=".topologyKey",
        ),
    )


def _default_spread() -> list[TopologySpread]:
    return [TopologySpread()]


def _spread_field(workload: str) -> Any:
    return Field(
        default_factory=_default_spread,
        max_length=4,
        description=f"Spread of the {workload} pods; by default soft, one per node where "
        "possible. [] turns spreading off.",
    )


def _unique_spread_keys() -> Rule:
    return Rule(
        cel="self.topologySpread.all(a, self.topologySpread.exists_one(b, "
        "b.topologyKey == a.topologyKey))",
        message="topologySpread must name each topologyKey once",
        holds=lambda s: len({t.topology_key for t in s.topology_spread}) == len(s.topology_spread),
        field_path=".topologySpread",
    )


class SchedulingSpec(SpecModel):
    """Where the tier's pods may run. GPU taints are tolerated automatically."""

    node_selector: dict[Annotated[str, Field(max_length=317)], ShortText] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Extra tolerations for the pods."
    )
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass of the pods."
    )
    topology_spread: list[TopologySpread] = _spread_field("tier's")

    rules = (_unique_spread_keys(),)


class SLOSpec(SpecModel):
    """Latency objective of the tier, used by the autoscaler, the router and the alerts."""

    p50_latency_ms: int = Field(
        400, ge=1, le=3600000, description="Target median request latency in milliseconds."
    )


@with_defaults(p50_latency_ms=6000)
class FlagshipSLOSpec(SLOSpec):
    """Flagship objective: seconds, not milliseconds."""


def _default_within_limit(wire: str, limit_wire: str, attr: str, limit_attr: str) -> Rule:
    def holds(tier: Any) -> bool:
        return bool(getattr(tier.defaults, attr) <= getattr(tier.limits, limit_attr))

    return Rule(
        cel=f"self.defaults.{wire} <= self.limits.{limit_wire}",
        message=f"defaults.{wire} must not exceed limits.{limit_wire}",
        holds=holds,
        field_path=f".defaults.{wire}",
    )


def _within_limits_rules() -> tuple[Rule, ...]:
    return (
        _default_within_limit("steps", "maxSteps", "steps", "max_steps"),
        _default_within_limit("width", "maxWidth", "width", "max_width"),
        _default_within_limit("height", "maxHeight", "height", "max_height"),
        _default_within_limit(
            "guidanceScale", "maxGuidanceScale", "guidance_scale", "max_guidance_scale"
        ),
    )


class TierSpec(SpecModel):
    """One serving tier: a model, its request envelope, batching, scale and SLO."""

    model: ModelSpec = Field(description="The diffusers pipeline this tier serves.")
    defaults: RequestDefaults = Field(
        default_factory=RequestDefaults, description="Values for parameters a request omits."
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits, description="Per-request limits, enforced by the router."
    )
    batching: BatchingSpec = Field(
        default_factory=BatchingSpec, description="Triton dynamic batching and queue policy."
    )
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec, description="Autoscaling bounds.")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Per-pod GPU, CPU and memory."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Node placement of the pods."
    )
    slo: SLOSpec = Field(default_factory=SLOSpec, description="Latency objective.")

    rules = _within_limits_rules()


@with_defaults(
    defaults=FlagshipRequestDefaults,
    limits=FlagshipRequestLimits,
    batching=FlagshipBatchingSpec,
    slo=FlagshipSLOSpec,
)
class FlagshipTierSpec(TierSpec):
    """The flagship tier: same shape, slower and higher-quality defaults."""


class TiersSpec(SpecModel):
    """The efficient and flagship tiers; both optional, at least one present."""

    efficient: TierSpec | None = Field(None, description="Fast, cheap tier.")
    flagship: FlagshipTierSpec | None = Field(None, description="Slow, high-quality tier.")

    rules = (
        Rule(
            cel="has(self.efficient) || has(self.flagship)",
            message="tiers must define at least one tier: efficient or flagship",
            holds=lambda t: t.efficient is not None or t.flagship is not None,
        ),
    )

    def present(self) -> dict[TierName, TierSpec]:
        """The tiers that are defined, efficient first."""
        tiers: dict[TierName, TierSpec] = {}
        if self.efficient is not None:
            tiers["efficient"] = self.efficient
        if self.flagship is not None:
            tiers["flagship"] = self.flagship
        return tiers


# --------------------------------------------------------------------------- traffic and scaling


class TrafficSpec(SpecModel):
    """How requests are split between tiers."""

    efficient_percent: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Share of requests naming no tier that go to the efficient tier. "
        "Only with both tiers; defaults to 80 there.",
    )
    client_tier_selection: bool = Field(
        True, description="Honour a tier named by the client (request field `tier` or `quality`)."
    )
    overflow: OverflowPolicy = Field(
        "efficient",
        description="When the flagship tier is saturated or over its SLO: serve from the "
        "efficient tier, marked degraded, or reject with 503.",
    )
    efficient_overflow: EfficientOverflowPolicy = Field(
        "reject",
        description="When the efficient tier is saturated: reject with 503 (default) or "
        "serve from the flagship tier.",
    )


DEFAULT_EFFICIENT_PERCENT = 80


class MetricsSpec(SpecModel):
    """Where the autoscaler reads queue depth and latency."""

    source: MetricsSourceKind = Field(
        "direct", description="direct: scrape the tier's pods; prometheus: query Prometheus."
    )
    prometheus_url: str | None = Field(
        None, max_length=2048, description="Prometheus base URL (source: prometheus)."
    )

    rules = (
        Rule(
            cel="self.source != 'prometheus' || has(self.prometheusUrl)",
            message="metrics.prometheusUrl is required when metrics.source is prometheus",
            holds=lambda m: m.source != "prometheus" or m.prometheus_url is not None,
            field_path=".prometheusUrl",
        ),
        Rule(
            cel=f"!has(self.prometheusUrl) || self.prometheusUrl.matches('{HTTP_URL_PATTERN}')",
            message="metrics.prometheusUrl must be an http:// or https:// URL",
            holds=lambda m: (
                m.prometheus_url is None or _matches(HTTP_URL_PATTERN, m.prometheus_url)
            ),
            field_path=".prometheusUrl",
        ),
    )


class AutoscalingSpec(SpecModel):
    """Queue- and latency-driven autoscaling of each tier."""

    enabled: bool = Field(True, description="Scale the tiers; when off, replicas stay at min.")
    target_queue_depth_per_replica: float = Field(
        4.0,
        ge=0.1,
        le=10000.0,
        description="Queued plus in-flight requests each replica should carry.",
    )
    latency_tolerance_percent: int = Field(
        10, ge=0, le=100, description="How far p50 may exceed the SLO before scaling up."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down only below every recommendation this old."
    )
    scale_to_zero_idle_seconds: int = Field(
        600, ge=0, le=86400, description="Idle time before a tier with replicas.min 0 goes to 0."
    )
    gpu_budget: int | None = Field(
        None,
        ge=1,
        le=100000,
        description="GPUs both tiers may use together; the efficient tier is served first.",
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Metric source.")


# --------------------------------------------------------------------------- router and runtime


class RateLimitSpec(SpecModel):
    """Per-API-key token buckets: one counts requests, the optional other counts work."""

    requests_per_minute_per_key: int = Field(
        600, ge=1, le=1000000, description="Sustained requests per minute for one key."
    )
    burst: int | None = Field(
        None, ge=1, le=100000, description="Bucket size; defaults to one minute's worth."
    )
    cost_per_minute_per_key: int | None = Field(
        None,
        ge=1,
        le=100000000,
        description="Sustained work per minute for one key, in image-steps at 512x512 "
        "(images x steps x width x height / 512^2); a request's whole cost must fit one "
        "minute's worth. Unset: work is not limited, only requests.",
    )


API_KEY_NAME_PATTERN = "^[-._a-zA-Z0-9]+$"
"""A key of a Secret's data, which names an API key."""


class ApiKeyTiers(SpecModel):
    """The tiers one API key may use (keys not listed may use every tier) and its priority."""

    key: str = Field(
        max_length=253,
        pattern=API_KEY_NAME_PATTERN,
        description="The API key's name: its entry in apiKeysSecretRef's Secret.",
    )
    tiers: list[TierName] = Field(
        min_length=1, max_length=2, description="Tiers the key may be served by."
    )
    priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="The highest admission priority of the key's requests in a step-batched "
        "tier (higher goes first); a request's X-Duotone-Priority header may only lower it.",
    )

    rules = (
        Rule(
            cel="self.tiers.all(t, self.tiers.exists_one(u, u == t))",
            message="tiers must not repeat a tier",
            holds=lambda k: len(set(k.tiers)) == len(k.tiers),
            field_path=".tiers",
        ),
    )


class ContainerResources(SpecModel):
    """CPU, memory and node disk of a container without GPUs."""

    cpu: str = Field("1", max_length=32, description="CPU request and limit.")
    memory: str = Field("1Gi", max_length=32, description="Memory request and limit.")
    ephemeral_storage: str = Field(
        "256Mi",
        max_length=32,
        description="Node disk (request and limit): logs and /tmp, whose emptyDir is capped "
        "at this size.",
    )

    rules = (
        _quantity_rule("cpu"),
        _quantity_rule("memory"),
        _quantity_rule("ephemeralStorage", "ephemeral_storage"),
    )


class ModerationSpec(SpecModel):
    """The router's prompt check: a prompt holding a blocked term is refused (HTTP 400,
    code moderation_blocked) before any tier sees it."""

    blocked_terms: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        max_length=1000,
        description="Words or phrases refused in a prompt, matched whole-word and "
        "case-insensitively (Unicode NFKC, case-folded).",
    )


class RouterSpec(SpecModel):
    """The OpenAI-compatible endpoint in front of the tiers."""

    replicas: int = Field(2, ge=1, le=100, description="Router replicas.")
    image: str | None = Field(
        None, max_length=512, description="Router image; defaults to the operator's setting."
    )
    api_keys_secret_ref: SecretRef | None = Field(
        None, description="Secret whose keys are API keys; without it the router is open."
    )
    rate_limit: RateLimitSpec = Field(
        default_factory=RateLimitSpec, description="Per-key rate limit."
    )
    max_body_bytes: int = Field(
        65536, ge=1024, le=10485760, description="Largest request body accepted."
    )
    api_key_tiers: list[ApiKeyTiers] = Field(
        default_factory=list,
        max_length=64,
        description="Per-key tier restrictions; keys not listed may use every tier.",
    )
    max_pending_per_tier: int = Field(
        256,
        ge=1,
        le=100000,
        description="Requests one router holds for a tier with no pod to take them (scaling "
        "from zero, or every pod ejected); beyond it new ones get 503 with Retry-After.",
    )
    resources: ContainerResources = Field(
        default_factory=ContainerResources, description="Router CPU, memory and node disk."
    )
    moderation: ModerationSpec = Field(
        default_factory=ModerationSpec, description="The prompt check before any GPU work."
    )
    topology_spread: list[TopologySpread] = _spread_field("router")

    rules = (
        _unique_spread_keys(),
        Rule(
            cel="self.apiKeyTiers.all(a, self.apiKeyTiers.exists_one(b, b.key == a.key))",
            message="router.apiKeyTiers must name each key once",
            holds=lambda r: len({a.key for a in r.api_key_tiers}) == len(r.api_key_tiers),
            field_path=".apiKeyTiers",
        ),
        Rule(
            cel="size(self.apiKeyTiers) == 0 || has(self.apiKeysSecretRef)",
            message="router.apiKeyTiers needs router.apiKeysSecretRef (keys to restrict)",
            holds=lambda r: not r.api_key_tiers or r.api_keys_secret_ref is not None,
            field_path=".apiKeyTiers",
        ),
    )


class RuntimeSpec(SpecModel):
    """The tier pods' image (built from runtime/Dockerfile)."""

    image: str = Field(max_length=512, description="Runtime image reference.")
    image_pull_policy: PullPolicy | None = Field(
        None,
        description="Pull policy of the runtime and router images. Unset: Always for an image "
        "named by tag (a tag can move; every start revalidates the pull secret), IfNotPresent "
        "for one pinned by digest (its content cannot change).",
    )

    rules = (
        Rule(
            cel="self.image.size() > 0 && !self.image.contains(' ')",
            message="runtime.image must be a non-empty image reference without spaces",
            holds=lambda r: len(r.image) > 0 and " " not in r.image,
            field_path=".image",
        ),
    )


def _min_gpus(tier: TierSpec | None) -> int:
    return 0 if tier is None else tier.replicas.minimum * tier.resources.gpus


def _cel_min_gpus(tier: str) -> str:
    return (
        f"(has(self.tiers.{tier}) ? "
        f"self.tiers.{tier}.replicas.min * self.tiers.{tier}.resources.gpus : 0)"
    )


class ImageModelDeploymentSpec(SpecModel):
    """Desired state of an ImageModelDeployment."""

    runtime: RuntimeSpec = Field(description="Image of the tier pods.")
    tiers: TiersSpec = Field(description="The serving tiers.")
    traffic: TrafficSpec = Field(default_factory=TrafficSpec, description="Traffic split.")
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Autoscaling of each tier."
    )
    router: RouterSpec = Field(default_factory=RouterSpec, description="The endpoint.")

    rules = (
        Rule(
            cel="!has(self.traffic.efficientPercent) || "
            "(has(self.tiers.efficient) && has(self.tiers.flagship))",
            message="traffic.efficientPercent may be set only when both tiers are defined",
            holds=lambda s: (
                s.traffic.efficient_percent is None
                or (s.tiers.efficient is not None and s.tiers.flagship is not None)
            ),
            field_path=".traffic.efficientPercent",
        ),
        Rule(
            cel="!has(self.autoscaling.gpuBudget) || self.autoscaling.gpuBudget >= "
            f"{_cel_min_gpus('efficient')} + {_cel_min_gpus('flagship')}",
            message="autoscaling.gpuBudget must cover the GPUs of every tier at replicas.min",
            holds=lambda s: (
                s.autoscaling.gpu_budget is None
                or s.autoscaling.gpu_budget
                >= _min_gpus(s.tiers.efficient) + _min_gpus(s.tiers.flagship)
            ),
            field_path=".autoscaling.gpuBudget",
        ),
    )

    def efficient_percent(self) -> int:
        """Effective share of unnamed requests for the efficient tier."""
        if self.tiers.efficient is None:
            return 0
        if self.tiers.flagship is None:
            return 100
        if self.traffic.efficient_percent is None:
            return DEFAULT_EFFICIENT_PERCENT
        return self.traffic.efficient_percent


# --------------------------------------------------------------------------- status


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str = Field(max_length=64, description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=128, description="CamelCase reason.")
    message: str = Field("", max_length=4096, description="Human-readable details.")
    observed_generation: int | None = Field(None, ge=0, description="Generation it describes.")
    last_transition_time: str | None = Field(
        None, max_length=64, description="When status last changed (RFC 3339)."
    )


class TierStatus(StatusModel):
    """Observed state of one tier."""

    replicas: int = Field(0, ge=0, description="Pods of the tier.")
    ready_replicas: int = Field(0, ge=0, description="Pods passing readiness.")
    desired_replicas: int | None = Field(None, ge=0, description="Autoscaler's target.")
    readiness: str | None = Field(None, max_length=32, description="ready/desired, e.g. 3/4.")
    queue_depth: float | None = Field(None, ge=0, description="Queued plus in-flight requests.")
    p50_latency_ms: float | None = Field(None, ge=0, description="Observed median latency.")
    last_scale_time: str | None = Field(None, max_length=64, description="Last scale (RFC 3339).")
    last_scale_reason: str | None = Field(
        None, max_length=1024, description="Why the autoscaler last scaled."
    )
    gpu_budget_limited: bool | None = Field(
        None, description="Whether the shared GPU budget holds this tier below its demand."
    )


class TiersStatus(StatusModel):
    """Observed state per tier."""

    efficient: TierStatus | None = None
    flagship: TierStatus | None = None


class ImageModelDeploymentStatus(StatusModel):
    """Observed state of an ImageModelDeployment."""

    observed_generation: int | None = Field(None, ge=0, description="Generation last handled.")
    endpoint: str | None = Field(None, max_length=512, description="Router URL in the cluster.")
    p50: str | None = Field(None, max_length=64, description="Observed p50 per tier.")
    tiers: TiersStatus | None = Field(None, description="Observed state per tier.")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, description="Ready, Progressing, Degraded."
    )


# --------------------------------------------------------------------------- the resource


NAME_RULE = Rule(
    cel=f"self.matches('{DNS_LABEL_1035_PATTERN}')",
    message="metadata.name must start with a letter and contain only lowercase letters, "
    "digits and '-' (it names Services)",
    holds=lambda name: _matches(DNS_LABEL_1035_PATTERN, name),
)
"""Rule on metadata.name itself (with `maxLength: MAX_NAME_LENGTH` beside it in the CRD)."""


class ObjectMeta(BaseModel):
    """The metadata fields Duotone reads; everything else passes through."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(max_length=MAX_NAME_LENGTH)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_rule(cls, name: str) -> str:
        check_rules(name, (NAME_RULE,))
        return name


class ImageModelDeployment(BaseModel):
    """One image service with up to two tiers behind one endpoint."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_version: Literal["duotone.io/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ImageModelDeployment"] = KIND
    metadata: ObjectMeta
    spec: ImageModelDeploymentSpec
    status: ImageModelDeploymentStatus | None = None


def spec_json_schema() -> dict[str, Any]:
    """pydantic's JSON schema of the spec (input to the CRD generator)."""
    return ImageModelDeploymentSpec.model_json_schema(by_alias=True, mode="validation")


def status_json_schema() -> dict[str, Any]:
    """pydantic's JSON schema of the status (input to the CRD generator)."""
    return ImageModelDeploymentStatus.model_json_schema(by_alias=True, mode="serialization")
