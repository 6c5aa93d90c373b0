"""Children of the router: Deployment, Service, ConfigMap (routing table), ServiceAccounts."""

from __future__ import annotations

from duotone_contracts.api.v1alpha1 import ImageModelDeployment
from duotone_contracts.routing_table import ROUTING_TABLE_FILE, RoutingTable, TierRoute, Traffic
from duotone_contracts.services import (
    ROUTER_HTTP,
    ROUTER_METRICS,
    TIER_GRPC,
    TIER_HTTP,
    TIER_METRICS,
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

API_KEYS_MOUNT = "/var/run/secrets/duotone/api-keys"


def routing_table(imd: ImageModelDeployment) -> RoutingTable:
    """What the router needs to route and guard requests; hot-reloaded from its ConfigMap."""
    spec = imd.spec
    namespace = imd.metadata.namespace
    tiers = {}
    for tier, tier_spec in spec.tiers.present().items():
        service = names.tier_name(imd.metadata.name, tier)
        tiers[tier] = TierRoute(
            service=service,
            host=f"{service}.{namespace}.svc",
            grpc_port=TIER_GRPC.number,
            http_port=TIER_HTTP.number,
            metrics_port=TIER_METRICS.number,
            defaults=tier_spec.defaults,
            limits=tier_spec.limits,
            slo=tier_spec.slo,
            request_timeout_ms=tier_spec.batching.request_timeout_ms,
            batching_mode=tier_spec.batching.mode,
            max_queue_size=tier_spec.batching.max_queue_size,
        )
    router = spec.router
    return RoutingTable(
        name=imd.metadata.name,
        namespace=namespace,
        tiers=tiers,
        traffic=Traffic(
            efficient_percent=spec.efficient_percent(),
            client_tier_selection=spec.traffic.client_tier_selection,
            overflow=spec.traffic.overflow,
            efficient_overflow=spec.traffic.efficient_overflow,
        ),
        rate_limit=router.rate_limit,
        max_body_bytes=router.max_body_bytes,
        moderation=router.moderation,
        api_keys_path=API_KEYS_MOUNT if router.api_keys_secret_ref is not None else None,
        key_tiers={entry.key: tuple(entry.tiers) for entry in router.api_key_tiers},
        key_priorities={
            entry.key: entry.priority for entry in router.api_key_tiers if entry.priority
        },
        max_pending_per_tier=router.max_pending_per_tier,
    )


def longest_request_timeout_ms(imd: ImageModelDeployment) -> int:
    """The longest deadline of the IMD's tiers: how long the router's last request may take."""
    return max(t.batching.request_timeout_ms for t in imd.spec.tiers.present().values())


def render_router_config_map(imd: ImageModelDeployment) -> Manifest:
    name = imd.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(imd, names.router_config_name(name), names.router_labels(name)),
        "data": {ROUTING_TABLE_FILE: routing_table(imd).to_json()},
    }


def render_router_deployment(imd: ImageModelDeployment, settings: RenderSettings) -> Manifest:
    """The router pods. Config changes are hot-reloaded, so they do not roll these pods."""
    name = imd.metadata.name
    router = imd.spec.router
    image = router.image or settings.router_image
    disk = router.resources.ephemeral_storage
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": names.router_config_name(name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": disk}},
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if router.api_keys_secret_ref is not None:
        volumes.append(
            {"name": "api-keys", "secret": {"secretName": router.api_keys_secret_ref.name}}
        )
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
    amounts = {
        "cpu": router.resources.cpu,
        "memory": router.resources.memory,
        "ephemeral-storage": disk,
    }
    pull_policy = placement.pull_policy(image, imd.spec.runtime.image_pull_policy)
    probe: Manifest = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    container: Manifest = {
        "name": "router",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["duotone-router"],
        "args": [
            "--config",
            f"{CONFIG_MOUNT}/{ROUTING_TABLE_FILE}",
            "--port",
            str(ROUTER_HTTP.number),
            "--metrics-port",
            str(ROUTER_METRICS.number),
        ],
        "ports": [container_port(ROUTER_HTTP), container_port(ROUTER_METRICS)],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": ROUTER_HTTP.name}, **probe},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": ROUTER_HTTP.name}, **probe},
        # Endpoints stop routing here during the pause; SIGTERM then stops the listener and
        # the router finishes its in-flight requests (docs/router.md, "Rollouts and drain").
        "lifecycle": {"preStop": {"sleep": {"seconds": settings.pre_stop_seconds}}},
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    pod_spec: Manifest = {
        "serviceAccountName": names.router_name(name),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.router_termination_grace(
            longest_request_timeout_ms(imd)
        ),
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if router.topology_spread:
        pod_spec["topologySpreadConstraints"] = placement.spread_constraints(
            router.topology_spread, names.router_selector(name)
        )
    metadata = object_metadata(imd, names.router_name(name), names.router_labels(name))
    # The router's replica count is the IMD's (router.replicas): below 2 the auditor's
    # replicas warning stands, as it should.
    ignores = placement.audit_ignores(
        pull_policies=[pull_policy],
        spread=router.topology_spread,
        autoscaled=False,
        network_policies=settings.network_policies,
    )
    if ignores:
        metadata["annotations"] = ignores
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": names.router_selector(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "template": {"metadata": {"labels": names.router_labels(name)}, "spec": pod_spec},
        },
    }


def render_router_service(imd: ImageModelDeployment) -> Manifest:
    name = imd.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(imd, names.router_name(name), names.router_labels(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": names.router_selector(name),
            "ports": [service_port(ROUTER_HTTP), service_port(ROUTER_METRICS)],
        },
    }


def render_router_pdb(imd: ImageModelDeployment) -> Manifest:
    """Voluntary disruptions (drains) take one router pod at a time."""
    name = imd.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_metadata(imd, names.router_name(name), names.router_labels(name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.router_selector(name)},
        },
    }


def render_service_accounts(imd: ImageModelDeployment) -> list[Manifest]:
    """The router's (it reads EndpointSlices) and the runtime's (no API access at all)."""
    name = imd.metadata.name
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_metadata(imd, names.router_name(name), names.router_labels(name)),
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_metadata(
                imd, names.runtime_service_account(name), names.instance_labels(name)
            ),
            "automountServiceAccountToken": False,
        },
    ]


def render_router_rbac(imd: ImageModelDeployment) -> list[Manifest]:
    """The router reads its tiers' EndpointSlices, in its own namespace, and nothing else."""
    name = imd.metadata.name
    router = names.router_name(name)
    labels = names.router_labels(name)
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_metadata(imd, router, labels),
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_metadata(imd, router, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router},
            "subjects": [
                {"kind": "ServiceAccount", "name": router, "namespace": imd.metadata.namespace}
            ],
        },
    ]
