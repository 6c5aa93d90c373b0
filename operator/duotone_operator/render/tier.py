"""Children of one tier: Deployment, Service, ConfigMap, PodDisruptionBudget (pure)."""

from __future__ import annotations

import hashlib
import json

from duotone_contracts.api.sources import parse_model_source
from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName, TierSpec
from duotone_contracts.services import TIER_GRPC, TIER_HTTP, TIER_METRICS
from duotone_contracts.tier import (
    CPU_LIMIT_MILLICORES_ENV,
    CPU_REQUEST_MILLICORES_ENV,
    TIER_DOCUMENT_FILE,
    TierDocument,
)
from duotone_operator.render import names, placement
from duotone_operator.render.objects import (
    CONFIG_MOUNT,
    Manifest,
    RenderSettings,
    container_port,
    object_metadata,
    restricted_container_security,
    restricted_pod_security,
    service_port,
)

RUNTIME_CONTAINER = "runtime"
MODEL_MOUNT = "/models"
HF_CACHE_MOUNT = "/models/hf-cache"
HF_TOKEN_MOUNT = "/var/run/secrets/duotone/hf"


def tier_config(tier: TierName, spec: TierSpec) -> dict[str, str]:
    """Data of the tier ConfigMap: the tier document the runtime launcher reads."""
    return {TIER_DOCUMENT_FILE: TierDocument(tier, spec).to_json()}


def config_hash(data: dict[str, str]) -> str:
    """Stable hash of ConfigMap data; in the pod template it rolls pods when the config changes."""
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def render_tier_config_map(imd: ImageModelDeployment, tier: TierName, spec: TierSpec) -> Manifest:
    name = imd.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(
            imd, names.tier_config_name(name, tier), names.tier_labels(name, tier)
        ),
        "data": tier_config(tier, spec),
    }


def _runtime_model_source(spec: TierSpec) -> str:
    """What the runtime loads: PVC sources become the path where the claim is mounted."""
    source = parse_model_source(spec.model.source)
    if source.kind == "pvc":
        return f"file://{MODEL_MOUNT}/{source.path}".rstrip("/")
    return spec.model.source


def _volumes(
    spec: TierSpec, config_map: str, settings: RenderSettings
) -> tuple[list[Manifest], list[Manifest]]:
    """Volumes and the runtime container's mounts: config, model, scratch, shared memory.
    Each disk-backed emptyDir is capped at the pod's ephemeral storage (the kubelet evicts a
    pod past either bound, rather than letting it fill the node's disk)."""
    disk = spec.resources.ephemeral_storage
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "tmp", "emptyDir": {"sizeLimit": disk}},
        {"name": "cache", "emptyDir": {"sizeLimit": disk}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    source = parse_model_source(spec.model.source)
    if source.kind == "pvc":
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {"claimName": source.location, "readOnly": True},
            }
        )
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    if spec.model.cache_claim_name is not None:
        volumes.append(
            {
                "name": "hf-cache",
                "persistentVolumeClaim": {
                    "claimName": spec.model.cache_claim_name,
                    "readOnly": True,
                },
            }
        )
        mounts.append({"name": "hf-cache", "mountPath": HF_CACHE_MOUNT, "readOnly": True})
    if spec.model.token_secret_ref is not None:
        volumes.append(
            {
                "name": "hf-token",
                "secret": {
                    "secretName": spec.model.token_secret_ref.name,
                    "items": [{"key": "token", "path": "token"}],
                },
            }
        )
        mounts.append({"name": "hf-token", "mountPath": HF_TOKEN_MOUNT, "readOnly": True})
    return volumes, mounts


def _cpu_millicores(name: str, resource: str) -> Manifest:
    """The runtime sizes its thread pools from the pod's CPU, not the node's cores (downward
    API; the runtime's `cpu_threads.py` prefers the cgroup quota and reads these after it)."""
    field = {"containerName": RUNTIME_CONTAINER, "resource": resource, "divisor": "1m"}
    return {"name": name, "valueFrom": {"resourceFieldRef": field}}


def _env(spec: TierSpec) -> list[Manifest]:
    hf_home = HF_CACHE_MOUNT if spec.model.cache_claim_name is not None else "/cache/huggingface"
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": hf_home},
        {"name": "HF_HUB_OFFLINE", "value": "0" if spec.model.allow_download else "1"},
        _cpu_millicores(CPU_REQUEST_MILLICORES_ENV, "requests.cpu"),
        _cpu_millicores(CPU_LIMIT_MILLICORES_ENV, "limits.cpu"),
    ]
    if spec.model.token_secret_ref is not None:
        env.append({"name": "HF_TOKEN_PATH", "value": f"{HF_TOKEN_MOUNT}/token"})
    return env


def _resources(spec: TierSpec) -> Manifest:
    amounts: dict[str, str] = {
        "cpu": spec.resources.cpu,
        "memory": spec.resources.memory,
        "ephemeral-storage": spec.resources.ephemeral_storage,
    }
    if spec.resources.gpus > 0:
        amounts[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
    # requests == limits: Guaranteed QoS, so a busy node never evicts a serving pod first.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _tolerations(spec: TierSpec) -> list[Manifest]:
    tolerations = [
        t.model_dump(mode="json", exclude_none=True) for t in spec.scheduling.tolerations
    ]
    if spec.resources.gpus > 0:
        # GPU node pools are tainted with the GPU resource name; GPU pods tolerate it.
        tolerations.append(
            {"key": spec.resources.gpu_resource_name, "operator": "Exists", "effect": "NoSchedule"}
        )
    return tolerations


def _http_probe(path: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": TIER_HTTP.name},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def render_tier_deployment(
    imd: ImageModelDeployment,
    tier: TierName,
    spec: TierSpec,
    settings: RenderSettings,
    *,
    replicas: int | None,
) -> Manifest:
    """The tier's Deployment. `replicas` is set only when creating it: after that the
    autoscaler owns spec.replicas (see `names.SCALE_FIELD_MANAGER`)."""
    name = imd.metadata.name
    config_map = names.tier_config_name(name, tier)
    volumes, mounts = _volumes(spec, config_map, settings)
    image = imd.spec.runtime.image
    pull_policy = placement.pull_policy(image, imd.spec.runtime.image_pull_policy)
    container: Manifest = {
        "name": RUNTIME_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        # The image's entrypoint is the runtime (`python -m duotone_runtime`).
        "args": [
            "serve",
            "--config",
            f"{CONFIG_MOUNT}/{TIER_DOCUMENT_FILE}",
            "--model-source",
            _runtime_model_source(spec),
            "--device",
            "cuda" if spec.resources.gpus > 0 else "cpu",
            "--http-port",
            str(TIER_HTTP.number),
            "--grpc-port",
            str(TIER_GRPC.number),
            "--metrics-port",
            str(TIER_METRICS.number),
            "--exit-timeout-secs",
            str(settings.exit_timeout_for(spec.batching.request_timeout_ms)),
        ],
        "ports": [container_port(port) for port in (TIER_HTTP, TIER_GRPC, TIER_METRICS)],
        "env": _env(spec),
        "resources": _resources(spec),
        # Loading a large pipeline takes minutes: the startup probe allows 15, liveness then
        # restarts a hung server within a minute, and readiness means the model is loaded.
        "startupProbe": _http_probe("/v2/health/live", period=10, failures=90),
        "livenessProbe": _http_probe("/v2/health/live", period=10, failures=6),
        "readinessProbe": _http_probe("/v2/health/ready", period=5, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.pre_stop_seconds}}},
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    pod_spec: Manifest = {
        "serviceAccountName": names.runtime_service_account(name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_for(
            spec.batching.request_timeout_ms
        ),
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    spread = spec.scheduling.topology_spread
    if spread:
        pod_spec["topologySpreadConstraints"] = placement.spread_constraints(
            spread, names.tier_selector(name, tier)
        )
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.node_selector)
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    deployment_spec: Manifest = {
        "selector": {"matchLabels": names.tier_selector(name, tier)},
        # Never drop below the serving capacity during a rollout; surge one pod at a time.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": names.tier_labels(name, tier),
                "annotations": {
                    names.CONFIG_HASH_ANNOTATION: config_hash(tier_config(tier, spec)),
                },
            },
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deployment_spec = {"replicas": replicas, **deployment_spec}
    metadata = object_metadata(imd, names.tier_name(name, tier), names.tier_labels(name, tier))
    ignores = placement.audit_ignores(
        pull_policies=[pull_policy],
        spread=spread,
        autoscaled=True,
        network_policies=settings.network_policies,
    )
    if ignores:
        metadata["annotations"] = ignores
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": deployment_spec,
    }


def render_tier_service(imd: ImageModelDeployment, tier: TierName) -> Manifest:
    """Headless: the router balances across the tier's pods itself (least outstanding
    requests, addresses from EndpointSlices), so a virtual IP would only cost an address."""
    name = imd.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            imd, names.tier_name(name, tier), names.tier_labels(name, tier)
        ),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": names.tier_selector(name, tier),
            "ports": [service_port(port) for port in (TIER_HTTP, TIER_GRPC, TIER_METRICS)],
        },
    }


def render_tier_pdb(imd: ImageModelDeployment, tier: TierName) -> Manifest:
    """Voluntary disruptions (drains) take one serving pod at a time."""
    name = imd.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_metadata(
            imd, names.tier_name(name, tier), names.tier_labels(name, tier)
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.tier_selector(name, tier)},
        },
    }
