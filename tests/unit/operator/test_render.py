"""Rendering children: golden files per example, and the behaviour each field carries.

Regenerate the golden files after an intended change: UPDATE_GOLDEN=1 make test-fast
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from duotone_contracts.api import ImageModelDeployment, parse_imd
from duotone_contracts.tier import CPU_LIMIT_MILLICORES_ENV, CPU_REQUEST_MILLICORES_ENV
from duotone_operator.render import names
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from tests.support.builders import imd
from tests.support.manifests import ROOT, load_examples

GOLDEN_DIR = ROOT / "tests" / "data" / "golden"
SETTINGS = RenderSettings()


def _deployed(manifest: dict[str, Any], namespace: str = "images") -> ImageModelDeployment:
    """The IMD as the API server hands it to the operator (namespace, uid, generation)."""
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    body["metadata"].update(uid="0b6f2a3e-0000-4000-8000-000000000001", generation=1)
    return parse_imd(body)


def _by_kind_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


@pytest.mark.parametrize(
    ("path", "manifest"), load_examples(), ids=[p.stem for p, _ in load_examples()]
)
def test_children_match_golden_file(path: Path, manifest: dict[str, Any]) -> None:
    rendered = yaml.safe_dump_all(render_children(_deployed(manifest), SETTINGS), sort_keys=False)
    golden = GOLDEN_DIR / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}; run UPDATE_GOLDEN=1 make test-fast"
    assert rendered == golden.read_text(), f"{golden.name} differs; review, then UPDATE_GOLDEN=1"


def test_two_tier_children_are_complete_and_owned() -> None:
    deployed = _deployed(imd("sd").tier("efficient").tier("flagship").build())
    children = render_children(deployed, SETTINGS)
    assert sorted(_by_kind_name(children)) == sorted(
        [
            ("ServiceAccount", "sd-router"),
            ("ServiceAccount", "sd-runtime"),
            ("Role", "sd-router"),
            ("RoleBinding", "sd-router"),
            ("ConfigMap", "sd-efficient-config"),
            ("ConfigMap", "sd-flagship-config"),
            ("ConfigMap", "sd-router-config"),
            ("Service", "sd-efficient"),
            ("Service", "sd-flagship"),
            ("Service", "sd-router"),
            ("PodDisruptionBudget", "sd-efficient"),
            ("PodDisruptionBudget", "sd-flagship"),
            ("PodDisruptionBudget", "sd-router"),
            ("NetworkPolicy", "sd-tiers"),
            ("NetworkPolicy", "sd-router"),
            ("Deployment", "sd-efficient"),
            ("Deployment", "sd-flagship"),
            ("Deployment", "sd-router"),
        ]
    )
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == deployed.metadata.uid
        assert owner["controller"] is True
        assert child["metadata"]["namespace"] == "images"
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "sd"


def test_longest_name_keeps_children_within_dns_label_limit() -> None:
    longest = "a" * 40
    for child in render_children(
        _deployed(imd(longest).tier("efficient").tier("flagship").build()), SETTINGS
    ):
        assert len(child["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("existing", "replicas"),
    [
        pytest.param(frozenset(), 3, id="creating: replicas start at min"),
        pytest.param(
            frozenset({"efficient"}), None, id="existing: replicas left to the autoscaler"
        ),
    ],
)
def test_tier_replicas_are_set_only_on_creation(
    existing: frozenset[Any], replicas: int | None
) -> None:
    deployed = _deployed(imd("sd").tier("efficient", min=3, max=6).build())
    children = _by_kind_name(
        render_children(deployed, SETTINGS, existing_tier_deployments=existing)
    )
    assert children[("Deployment", "sd-efficient")]["spec"].get("replicas") == replicas


def _pod(children: list[dict[str, Any]], name: str) -> dict[str, Any]:
    pod: dict[str, Any] = _by_kind_name(children)[("Deployment", name)]["spec"]["template"]
    return pod


def test_every_pod_is_pod_security_restricted_with_read_only_root() -> None:
    children = render_children(
        _deployed(imd("sd").tier("efficient").tier("flagship").build()), SETTINGS
    )
    for name in ("sd-efficient", "sd-flagship", "sd-router"):
        spec = _pod(children, name)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] == container["resources"]["limits"]
            writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            assert "/tmp" in writable


def test_runtime_pod_probes_shutdown_and_gpu() -> None:
    children = render_children(_deployed(imd("sd").tier("efficient", gpus=2).build()), SETTINGS)
    spec = _pod(children, "sd-efficient")["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    exit_timeout = int(container["args"][container["args"].index("--exit-timeout-secs") + 1])
    # Triton must finish in-flight requests and exit before the kubelet kills it.
    assert pre_stop + exit_timeout < spec["terminationGracePeriodSeconds"]
    assert spec["automountServiceAccountToken"] is False


def test_cpu_tier_requests_no_gpu_and_tolerates_no_gpu_taint() -> None:
    children = render_children(_deployed(imd("sd").tier("efficient", gpus=0).build()), SETTINGS)
    spec = _pod(children, "sd-efficient")["spec"]
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert "tolerations" not in spec
    assert "--device" in spec["containers"][0]["args"]
    assert (
        spec["containers"][0]["args"][spec["containers"][0]["args"].index("--device") + 1] == "cpu"
    )


@pytest.mark.parametrize("tier", ["efficient", "flagship"])
def test_runtime_reads_its_cpu_request_and_limit_from_the_downward_api(tier: str) -> None:
    """The runtime sizes its thread pools from these, never from the node's cores."""
    manifest = imd("sd").tier(tier).resources(cpu="1500m").build()
    (container,) = _pod(render_children(_deployed(manifest), SETTINGS), f"sd-{tier}")["spec"][
        "containers"
    ]
    fields = {
        e["name"]: e["valueFrom"]["resourceFieldRef"] for e in container["env"] if "valueFrom" in e
    }
    assert fields == {
        CPU_REQUEST_MILLICORES_ENV: {
            "containerName": container["name"],
            "resource": "requests.cpu",
            "divisor": "1m",
        },
        CPU_LIMIT_MILLICORES_ENV: {
            "containerName": container["name"],
            "resource": "limits.cpu",
            "divisor": "1m",
        },
    }
    # requests == limits, so the container's cgroup has a quota the runtime prefers.
    assert container["resources"]["requests"]["cpu"] == "1500m"
    assert container["resources"]["limits"]["cpu"] == "1500m"


@pytest.mark.parametrize(
    ("source", "claim", "runtime_source"),
    [
        pytest.param(
            "pvc://store/sdxl", "store", "file:///models/sdxl", id="pvc: claim mounted read-only"
        ),
        pytest.param("pvc://store", "store", "file:///models", id="pvc root"),
        pytest.param("hf://org/name@v1", None, "hf://org/name@v1", id="hf: served from the cache"),
        pytest.param("builtin://tiny", None, "builtin://tiny", id="builtin: no volume"),
    ],
)
def test_model_volume_follows_the_source(
    source: str, claim: str | None, runtime_source: str
) -> None:
    children = render_children(
        _deployed(imd("sd").tier("efficient", source=source).build()), SETTINGS
    )
    spec = _pod(children, "sd-efficient")["spec"]
    claims = [v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ([{"claimName": claim, "readOnly": True}] if claim else [])
    args = spec["containers"][0]["args"]
    assert args[args.index("--model-source") + 1] == runtime_source


def test_hf_cache_claim_and_token_are_mounted_read_only_and_offline() -> None:
    manifest = imd("sd").tier("flagship", source="hf://org/name").build()
    manifest["spec"]["tiers"]["flagship"]["model"].update(
        cacheClaimName="hf-cache", tokenSecretRef={"name": "hf-token"}
    )
    spec = _pod(render_children(_deployed(manifest), SETTINGS), "sd-flagship")["spec"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"] if "value" in e}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_HOME"] == "/models/hf-cache"
    assert env["HF_TOKEN_PATH"].endswith("/token")
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["hf-cache"]["readOnly"] is True
    assert mounts["hf-token"]["readOnly"] is True


def test_changing_one_tier_changes_only_its_pod_template() -> None:
    before = imd("sd").tier("efficient").defaults(steps=4).tier("flagship").build()
    after = imd("sd").tier("efficient").defaults(steps=6).tier("flagship").build()
    old = render_children(_deployed(before), SETTINGS)
    new = render_children(_deployed(after), SETTINGS)
    assert _pod(old, "sd-efficient") != _pod(new, "sd-efficient"), "efficient must roll"
    assert _pod(old, "sd-flagship") == _pod(new, "sd-flagship"), "flagship untouched"
    assert _pod(old, "sd-router") == _pod(new, "sd-router"), "router hot-reloads its config"


def test_tier_services_are_headless_and_the_router_has_an_address() -> None:
    children = _by_kind_name(
        render_children(_deployed(imd("sd").tier("efficient").build()), SETTINGS)
    )
    assert children[("Service", "sd-efficient")]["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in children[("Service", "sd-router")]["spec"]


def test_removed_tier_renders_no_children() -> None:
    children = render_children(_deployed(imd("sd").tier("flagship").build()), SETTINGS)
    assert not [c for c in children if c["metadata"]["labels"].get(names.TIER_LABEL) == "efficient"]


def test_router_config_carries_split_limits_and_deadlines() -> None:
    manifest = (
        imd("sd")
        .tier("efficient")
        .limits(maxSteps=6)
        .tier("flagship")
        .traffic(efficientPercent=70)
        .build()
    )
    children = _by_kind_name(render_children(_deployed(manifest), SETTINGS))
    table = yaml.safe_load(children[("ConfigMap", "sd-router-config")]["data"]["router.json"])
    assert table["traffic"]["efficientPercent"] == 70
    assert table["tiers"]["efficient"]["limits"]["maxSteps"] == 6
    assert table["tiers"]["efficient"]["host"] == "sd-efficient.images.svc"
    assert table["tiers"]["flagship"]["requestTimeoutMs"] == 120000
    assert table["apiKeysPath"] is None


def test_router_may_only_read_endpointslices_of_its_namespace() -> None:
    children = _by_kind_name(
        render_children(_deployed(imd("sd").tier("efficient").build()), SETTINGS)
    )
    role = children[("Role", "sd-router")]
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = children[("RoleBinding", "sd-router")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sd-router", "namespace": "images"}
    ]
    assert binding["roleRef"]["name"] == "sd-router"


def _pod_selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_tier_pods_accept_only_their_router_and_the_scrapers() -> None:
    settings = RenderSettings(scraper_namespaces=("duotone-system", "monitoring"))
    children = _by_kind_name(
        render_children(_deployed(imd("sd").tier("efficient").tier("flagship").build()), settings)
    )
    policy = children[("NetworkPolicy", "sd-tiers")]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in policy["spec"]  # Egress without a rule: tier pods open nothing
    for tier in ("sd-efficient", "sd-flagship"):
        assert _pod_selected(policy, _pod(list(children.values()), tier)["metadata"]["labels"])
    assert not _pod_selected(
        policy, _pod(list(children.values()), "sd-router")["metadata"]["labels"]
    )
    triton, metrics = policy["spec"]["ingress"]
    assert {p["port"] for p in triton["ports"]} == {8000, 8001}
    (router_peer,) = triton["from"]
    router_labels = _pod(list(children.values()), "sd-router")["metadata"]["labels"]
    assert router_peer["podSelector"]["matchLabels"].items() <= router_labels.items()
    assert "namespaceSelector" not in router_peer  # this namespace only
    # Another IMD's router in the same namespace is not that peer.
    assert router_peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "sd"
    assert [p["port"] for p in metrics["ports"]] == [8002]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in metrics["from"]] == [
        {"kubernetes.io/metadata.name": "duotone-system"},
        {"kubernetes.io/metadata.name": "monitoring"},
    ]


def test_router_pods_take_clients_on_the_endpoint_and_scrapers_on_metrics() -> None:
    clients = ({"namespaceSelector": {"matchLabels": {"team": "search"}}},)
    settings = RenderSettings(scraper_namespaces=("monitoring",), router_ingress_from=clients)
    children = _by_kind_name(
        render_children(_deployed(imd("sd").tier("efficient").build()), settings)
    )
    policy = children[("NetworkPolicy", "sd-router")]
    endpoint, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in endpoint["ports"]] == [8080]
    assert endpoint["from"] == list(clients)
    assert [p["port"] for p in metrics["ports"]] == [9090]
    open_to_all = _by_kind_name(
        render_children(_deployed(imd("sd").tier("efficient").build()), SETTINGS)
    )[("NetworkPolicy", "sd-router")]
    endpoint, metrics = open_to_all["spec"]["ingress"]
    assert "from" not in endpoint  # any source may call the endpoint by default
    assert metrics["from"] == [{"namespaceSelector": {}}]


def test_no_policies_when_the_operator_renders_none() -> None:
    children = render_children(
        _deployed(imd("sd").tier("efficient").build()), RenderSettings(network_policies=False)
    )
    assert not [c for c in children if c["kind"] == "NetworkPolicy"]


def test_router_drains_for_its_longest_deadline_and_serves_metrics_apart() -> None:
    manifest = imd("sd").tier("efficient").tier("flagship").batching(requestTimeoutMs=90000).build()
    children = render_children(_deployed(manifest), SETTINGS)
    spec = _pod(children, "sd-router")["spec"]
    (container,) = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + 90 + 5
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8080,
        "metrics": 9090,
    }
    assert container["args"][container["args"].index("--metrics-port") + 1] == "9090"
    service = _by_kind_name(children)[("Service", "sd-router")]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    pdb = _by_kind_name(children)[("PodDisruptionBudget", "sd-router")]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_a_tier_queue_always_drains_within_its_exit_timeout() -> None:
    # The flagship's requests may wait 120 s in the queue: its exit timeout covers that, so a
    # rollout never cuts a queued request; the efficient tier keeps the operator's 30 s.
    children = render_children(
        _deployed(imd("sd").tier("efficient").tier("flagship").build()), SETTINGS
    )
    for tier, expected in (("sd-efficient", 30), ("sd-flagship", 120)):
        spec = _pod(children, tier)["spec"]
        (container,) = spec["containers"]
        exit_timeout = int(container["args"][container["args"].index("--exit-timeout-secs") + 1])
        assert exit_timeout == expected
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop + exit_timeout < spec["terminationGracePeriodSeconds"]


def test_router_config_carries_key_tiers_and_the_pending_cap() -> None:
    manifest = (
        imd("sd")
        .tier("efficient")
        .tier("flagship")
        .router(
            apiKeysSecretRef={"name": "keys"},
            apiKeyTiers=[{"key": "batch", "tiers": ["efficient"]}],
            maxPendingPerTier=32,
            rateLimit={"requestsPerMinutePerKey": 60, "costPerMinutePerKey": 500},
        )
        .build()
    )
    children = _by_kind_name(render_children(_deployed(manifest), SETTINGS))
    table = yaml.safe_load(children[("ConfigMap", "sd-router-config")]["data"]["router.json"])
    assert table["keyTiers"] == {"batch": ["efficient"]}
    assert table["maxPendingPerTier"] == 32
    assert table["rateLimit"] == {"requestsPerMinutePerKey": 60, "costPerMinutePerKey": 500}
