"""The operator against the real control plane, running under exactly its RBAC rules."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_operator.render import names
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from duotone_operator.render.tier import RUNTIME_CONTAINER
from tests.support import presets
from tests.support.builders import imd
from tests.support.cluster import Cluster, wait_for
from tests.support.manifests import load_examples
from tests.support.operator_process import OperatorProcess, imd_condition, wait_ready

pytestmark = pytest.mark.cluster

EXAMPLES = load_examples()


def _create_imd(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.create(manifest, namespace)


def _patch_imd(cluster: Cluster, namespace: str, name: str, patch: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch",
        "imd",
        name,
        f"--namespace={namespace}",
        "--type=merge",
        f"--patch={json.dumps(patch)}",
    )


def _bound_claim(cluster: Cluster, namespace: str, claim: str) -> None:
    """A PersistentVolumeClaim bound to its own PersistentVolume (no provisioner needed)."""
    volume = f"{namespace}-{claim}"[:63]
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/srv/models/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )


def _secret(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"token": "not-a-real-token"},
        },
        namespace,
    )


def _prerequisites(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    """Create what the example references (PVCs, Secrets, PriorityClasses)."""
    from duotone_operator.render.references import required_references  # noqa: PLC0415

    refs = required_references(parse_imd(manifest))
    for claim in refs.claims:
        _bound_claim(cluster, namespace, claim)
    for secret in refs.secrets:
        _secret(cluster, namespace, secret)
    for tier in manifest["spec"]["tiers"].values():
        priority = tier.get("scheduling", {}).get("priorityClassName")
        if priority and cluster.kubectl("get", "priorityclass", priority, check=False).returncode:
            cluster.create(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": priority},
                    "value": 1000,
                }
            )


def _children(cluster: Cluster, namespace: str, name: str) -> dict[tuple[str, str], Any]:
    found = {}
    for kind in (
        "serviceaccounts",
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "configmaps",
        "services",
        "poddisruptionbudgets",
        "networkpolicies.networking.k8s.io",
        "deployments",
    ):
        items = cluster.get_json(
            kind, f"--namespace={namespace}", f"--selector={names.instance_selector(name)}"
        )["items"]
        for item in items:
            found[(item["kind"], item["metadata"]["name"])] = item
    return found


def _contains(live: Any, wanted: Any, path: str = "") -> list[str]:
    """Where `live` differs from `wanted` (the server may add fields, never change ours)."""
    if isinstance(wanted, dict):
        if not isinstance(live, dict):
            return [f"{path}: {live!r} is not an object"]
        return [d for k, v in wanted.items() for d in _contains(live.get(k), v, f"{path}.{k}")]
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return [f"{path}: {live!r} != {wanted!r}"]
        return [
            d
            for i, (a, b) in enumerate(zip(live, wanted, strict=True))
            for d in _contains(a, b, f"{path}[{i}]")
        ]
    return [] if live == wanted else [f"{path}: {live!r} != {wanted!r}"]


def _deployment_generation(cluster: Cluster, namespace: str, name: str) -> int:
    return int(
        cluster.get_json("deployment", name, f"--namespace={namespace}")["metadata"]["generation"]
    )


def _pods_running(cluster: Cluster, namespace: str, name: str) -> bool:
    pods = cluster.get_json(
        "pods", f"--namespace={namespace}", f"--selector=app.kubernetes.io/instance={name}"
    )["items"]
    return bool(pods) and all(
        p["status"].get("phase") == "Running"
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    )


@pytest.mark.parametrize(("path", "manifest"), EXAMPLES, ids=[p.stem for p, _ in EXAMPLES])
def test_example_reconciles_to_ready_with_every_child(
    cluster: Cluster, namespace: str, run_operator: Any, path: Path, manifest: dict[str, Any]
) -> None:
    gpus = sum(
        t.get("resources", {}).get("gpus", 1) * t.get("replicas", {}).get("min", 1)
        for t in manifest["spec"]["tiers"].values()
    )
    cluster.wait_for_free_gpus(gpus)
    operator = run_operator(namespace)
    _prerequisites(cluster, namespace, manifest)
    _create_imd(cluster, namespace, manifest)
    name = manifest["metadata"]["name"]
    live_imd = wait_ready(cluster, namespace, name, operator)

    deployed = parse_imd(live_imd)
    wanted = render_children(
        deployed,
        RenderSettings(),
        existing_tier_deployments=frozenset(deployed.spec.tiers.present()),
    )
    children = _children(cluster, namespace, name)
    assert sorted(children) == sorted((c["kind"], c["metadata"]["name"]) for c in wanted)
    for child in wanted:
        live = children[(child["kind"], child["metadata"]["name"])]
        differences = _contains(live, {k: v for k, v in child.items() if k != "metadata"})
        assert differences == [], f"{child['kind']}/{child['metadata']['name']}: {differences}"
        assert live["metadata"]["ownerReferences"][0]["uid"] == live_imd["metadata"]["uid"]
    for tier, spec in deployed.spec.tiers.present().items():
        deployment = children[("Deployment", names.tier_name(name, tier))]
        assert deployment["spec"]["replicas"] == spec.replicas.minimum

    wait_for(lambda: _pods_running(cluster, namespace, name), timeout_s=60, what="pods Running")
    assert live_imd["status"]["endpoint"] == f"http://{name}-router.{namespace}.svc:8080"
    table = cluster.kubectl("get", "imd", name, f"--namespace={namespace}").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "READY", "ENDPOINT", "EFFICIENT", "FLAGSHIP"]
    assert "True" in row.split()
    assert f"{name}-router.{namespace}.svc" in row
    for tier, spec in deployed.spec.tiers.present().items():
        assert f"{spec.replicas.minimum}/{spec.replicas.minimum}" in row, (tier, row)
    events = cluster.get_json(
        "events", f"--namespace={namespace}", f"--field-selector=involvedObject.name={name}"
    )["items"]
    assert "Created" in {e["reason"] for e in events}
    # The router's ServiceAccount may watch its tiers' EndpointSlices and do nothing else.
    router = f"system:serviceaccount:{namespace}:{names.router_name(name)}"
    for verb, resource, allowed in [
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("list", "endpointslices.discovery.k8s.io", "yes"),
        ("get", "secrets", "no"),
        ("list", "pods", "no"),
    ]:
        answer = cluster.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            f"--namespace={namespace}",
            f"--as={router}",
            check=False,
        ).stdout.strip()
        assert answer == allowed, (verb, resource, answer)


def _tiny(name: str) -> dict[str, Any]:
    return presets.small_pair(name).build()


@pytest.fixture
def tiny_ready(cluster: Cluster, namespace: str, run_operator: Any) -> OperatorProcess:
    """An operator watching the test's namespace, and the CPU-only IMD `sd` Ready under it."""
    operator: OperatorProcess = run_operator(namespace)
    _create_imd(cluster, namespace, _tiny("sd"))
    wait_ready(cluster, namespace, "sd", operator)
    return operator


def test_changing_one_tier_rolls_only_that_tier(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready
    before = {
        t: _deployment_generation(cluster, namespace, f"sd-{t}") for t in ("efficient", "flagship")
    }

    _patch_imd(
        cluster, namespace, "sd", {"spec": {"tiers": {"efficient": {"defaults": {"steps": 3}}}}}
    )
    wait_ready(cluster, namespace, "sd", operator)
    after = {
        t: _deployment_generation(cluster, namespace, f"sd-{t}") for t in ("efficient", "flagship")
    }
    assert after["efficient"] > before["efficient"], "the efficient tier rolls"
    assert after["flagship"] == before["flagship"], "the flagship tier is untouched"
    events = cluster.get_json(
        "events", f"--namespace={namespace}", "--field-selector=involvedObject.name=sd"
    )["items"]
    assert any(e["reason"] == "Applied" and "generation 2" in e["message"] for e in events)
    config = cluster.get_json("configmap", "sd-efficient-config", f"--namespace={namespace}")
    assert json.loads(config["data"]["tier.json"])["spec"]["defaults"]["steps"] == 3

    _patch_imd(cluster, namespace, "sd", {"spec": {"runtime": {"image": "duotone-runtime:next"}}})
    wait_ready(cluster, namespace, "sd", operator)
    for tier in ("efficient", "flagship"):
        deployment = cluster.get_json("deployment", f"sd-{tier}", f"--namespace={namespace}")
        assert (
            deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            == "duotone-runtime:next"
        )


def test_removing_a_tier_deletes_its_children_and_adding_it_back_restores_them(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready
    flagship = {
        ("Deployment", "sd-flagship"),
        ("Service", "sd-flagship"),
        ("ConfigMap", "sd-flagship-config"),
        ("PodDisruptionBudget", "sd-flagship"),
    }
    assert flagship <= set(_children(cluster, namespace, "sd"))

    cluster.kubectl(
        "patch",
        "imd",
        "sd",
        f"--namespace={namespace}",
        "--type=json",
        '--patch=[{"op": "remove", "path": "/spec/tiers/flagship"}]',
    )
    wait_ready(cluster, namespace, "sd", operator)
    wait_for(
        lambda: not flagship & set(_children(cluster, namespace, "sd")),
        timeout_s=30,
        what="the flagship children to be deleted",
    )
    status = cluster.get_json("imd", "sd", f"--namespace={namespace}")["status"]
    assert "flagship" not in (status.get("tiers") or {})
    assert ("Deployment", "sd-efficient") in _children(cluster, namespace, "sd")

    _patch_imd(
        cluster,
        namespace,
        "sd",
        {"spec": {"tiers": {"flagship": _tiny("sd")["spec"]["tiers"]["flagship"]}}},
    )
    wait_ready(cluster, namespace, "sd", operator)
    assert flagship <= set(_children(cluster, namespace, "sd"))


def test_kubectl_scale_survives_the_next_reconcile(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready
    cluster.kubectl(
        "scale", "deployment", "sd-efficient", "--replicas=2", f"--namespace={namespace}"
    )

    _patch_imd(
        cluster, namespace, "sd", {"spec": {"tiers": {"flagship": {"defaults": {"steps": 9}}}}}
    )
    wait_ready(cluster, namespace, "sd", operator)
    efficient = cluster.get_json("deployment", "sd-efficient", f"--namespace={namespace}")
    assert efficient["spec"]["replicas"] == 2
    status = cluster.get_json("imd", "sd", f"--namespace={namespace}")["status"]
    wait_for(
        lambda: (
            cluster.get_json("imd", "sd", f"--namespace={namespace}")["status"]["tiers"][
                "efficient"
            ]["readiness"]
            == "2/2"
        ),
        timeout_s=30,
        what="status to show 2/2",
    )
    assert status["observedGeneration"] == 2


def test_health_and_metrics_endpoints_report_a_live_watch(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz") as health:
        assert health.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as metrics:
        text = metrics.read().decode()
    assert 'duotone_operator_reconciles_total{result="success"}' in text
    assert "duotone_operator_watch_stale_objects 0.0" in text


@pytest.mark.usefixtures("tiny_ready")
def test_deleting_the_imd_garbage_collects_every_child(cluster: Cluster, namespace: str) -> None:
    # With the router Role and RoleBinding, its PodDisruptionBudget and the two NetworkPolicies.
    assert len(_children(cluster, namespace, "sd")) == 18

    cluster.kubectl("delete", "imd", "sd", f"--namespace={namespace}")
    wait_for(
        lambda: not _children(cluster, namespace, "sd"),
        timeout_s=60,
        what="every child to be garbage collected",
    )


def test_restart_during_reconcile_of_20_imds_ends_exactly_right(
    cluster: Cluster, namespace: str, run_operator: Any
) -> None:
    count = 20
    for i in range(count):
        _create_imd(cluster, namespace, _tiny(f"sd{i:02d}"))
    first = run_operator(namespace)

    def some_children() -> bool:
        deployments = cluster.get_json("deployments", f"--namespace={namespace}")["items"]
        return 0 < len(deployments) < count * 3

    wait_for(some_children, timeout_s=60, what="the operator to be mid-way", interval_s=0.05)
    first.stop(kill=True)

    second = run_operator(namespace)
    for i in range(count):
        wait_ready(cluster, namespace, f"sd{i:02d}", second, timeout_s=120)
    for i in range(count):
        children = _children(cluster, namespace, f"sd{i:02d}")
        assert len(children) == 18, sorted(children)
    every = cluster.get_json("deployments", f"--namespace={namespace}")["items"]
    assert len(every) == count * 3
    for deployment in every:
        (owner,) = deployment["metadata"]["ownerReferences"]
        assert deployment["metadata"]["name"].startswith(owner["name"] + "-")


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        pytest.param("pvc", "PersistentVolumeClaimNotFound", id="missing PVC"),
        pytest.param("secret", "SecretNotFound", id="missing API keys Secret"),
    ],
)
def test_missing_reference_is_reported_retried_with_backoff_then_fixed(
    cluster: Cluster, namespace: str, run_operator: Any, reference: str, reason: str
) -> None:
    from tests.support.operator_process import grant_secret_reads  # noqa: PLC0415

    manifest = _tiny("sd")
    if reference == "pvc":
        manifest["spec"]["tiers"]["efficient"]["model"]["source"] = "pvc://model-store/sdxl"
    else:
        manifest["spec"]["router"] = {"apiKeysSecretRef": {"name": "sd-api-keys"}}
        # Secret reads are granted per watched namespace (a namespaced install), never
        # cluster-wide: without them the operator cannot tell that the Secret is missing.
        grant_secret_reads(cluster, namespace)
    operator: OperatorProcess = run_operator(namespace)
    _create_imd(cluster, namespace, manifest)

    def not_ready_with_reason() -> Any:
        condition = imd_condition(cluster, namespace, "sd")
        return condition if condition and condition["reason"] == reason else None

    condition = wait_for(not_ready_with_reason, timeout_s=30, what=f"Ready=False/{reason}")
    assert condition["status"] == "False"
    assert imd_condition(cluster, namespace, "sd", "Degraded")["status"] == "True"

    def warnings() -> list[Any]:
        events = cluster.get_json(
            "events", f"--namespace={namespace}", "--field-selector=involvedObject.name=sd"
        )["items"]
        return [e for e in events if e["type"] == "Warning" and e["reason"] == reason]

    # Backoff 1 s, 2 s, 4 s, 4 s ... (test settings): at 10 s, a hot loop would have posted
    # hundreds; the backoff allows at most 5.
    first_warning = wait_for(lambda: warnings() or None, timeout_s=10, what="a Warning event")
    assert reason in first_warning[0]["reason"]
    wait_for(lambda: len(warnings()) >= 3, timeout_s=20, what="retries")
    assert len(warnings()) <= 8
    assert not _children(cluster, namespace, "sd"), "nothing is created for an impossible spec"

    if reference == "pvc":
        _bound_claim(cluster, namespace, "model-store")
    else:
        _secret(cluster, namespace, "sd-api-keys")
    wait_ready(cluster, namespace, "sd", operator, timeout_s=60)


def test_gpu_resource_no_node_offers_is_reported(
    cluster: Cluster, namespace: str, run_operator: Any
) -> None:
    manifest = imd("sd").tier("efficient", gpus=1).build()
    manifest["spec"]["tiers"]["efficient"]["resources"]["gpuResourceName"] = "amd.com/gpu"
    run_operator(namespace)
    _create_imd(cluster, namespace, manifest)

    def reported() -> Any:
        condition = imd_condition(cluster, namespace, "sd")
        return condition if condition and condition["reason"] == "GPUResourceUnavailable" else None

    condition = wait_for(reported, timeout_s=30, what="Ready=False/GPUResourceUnavailable")
    assert "amd.com/gpu" in condition["message"]


def _imd_now(cluster: Cluster, namespace: str, name: str = "sd") -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json("imd", name, f"--namespace={namespace}")
    return found


def _ready_status(imd_: dict[str, Any]) -> str | None:
    for entry in (imd_.get("status") or {}).get("conditions") or []:
        if entry["type"] == "Ready":
            return str(entry["status"])
    return None


def test_a_missing_claim_keeps_ready_false_and_the_generation_unobserved_through_scales(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready
    _patch_imd(
        cluster,
        namespace,
        "sd",
        {"spec": {"tiers": {"efficient": {"model": {"source": "pvc://model-store/sd"}}}}},
    )
    wait_for(
        lambda: (
            (imd_condition(cluster, namespace, "sd") or {}).get("reason")
            == "PersistentVolumeClaimNotFound"
        ),
        timeout_s=30,
        what="Ready=False/PersistentVolumeClaimNotFound",
    )
    # Ten scales, each a burst of Deployment events (and status refreshes) while pods come
    # and go; the status is read after each one settles.
    for replicas in (2, 1, 3, 1, 2, 2, 1, 3, 2, 1):
        cluster.kubectl(
            "scale",
            "deployment",
            "sd-efficient",
            f"--replicas={replicas}",
            f"--namespace={namespace}",
        )

        def settled(want: int = replicas) -> dict[str, Any] | None:
            imd_ = _imd_now(cluster, namespace)
            tiers = (imd_.get("status") or {}).get("tiers") or {}
            return imd_ if (tiers.get("efficient") or {}).get("readyReplicas") == want else None

        imd_ = wait_for(settled, timeout_s=30, what=f"the status to count {replicas} ready pods")
        assert _ready_status(imd_) == "False", imd_["status"]
        assert imd_["status"]["observedGeneration"] == 1, imd_["status"]
    _bound_claim(cluster, namespace, "model-store")
    imd_ = wait_ready(cluster, namespace, "sd", operator, timeout_s=60)
    assert imd_["status"]["observedGeneration"] == 2


def test_an_imd_deleted_while_the_operator_is_down_goes_with_its_children(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    operator = tiny_ready  # the autoscaler runs (every 2 s): it must not add a finalizer
    assert "--autoscale-interval-seconds=0" not in operator.args
    wait_for(
        lambda: "duotone_autoscaler_decisions_total{" in _metrics(operator),
        timeout_s=30,
        what="an autoscaler round",
    )
    assert not _imd_now(cluster, namespace)["metadata"].get("finalizers")
    operator.stop()

    cluster.kubectl("delete", "imd", "sd", f"--namespace={namespace}", "--timeout=20s")
    assert cluster.kubectl(
        "get", "imd", "sd", f"--namespace={namespace}", check=False
    ).returncode, "the IMD is gone without the operator"
    wait_for(
        lambda: not _children(cluster, namespace, "sd"),
        timeout_s=60,
        what="every child to be garbage collected",
    )


def _metrics(operator: OperatorProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as answer:
        text: str = answer.read().decode()
    return text


CHILD_RESOURCES = {
    "ServiceAccount": "serviceaccount",
    "Role": "role.rbac.authorization.k8s.io",
    "RoleBinding": "rolebinding.rbac.authorization.k8s.io",
    "ConfigMap": "configmap",
    "Service": "service",
    "PodDisruptionBudget": "poddisruptionbudget",
    "NetworkPolicy": "networkpolicy.networking.k8s.io",
    "Deployment": "deployment",
}


def test_each_kind_of_child_deleted_out_of_band_is_recreated(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    children = _children(cluster, namespace, "sd")
    victims = {}
    for (kind, name), child in sorted(children.items()):
        victims.setdefault(kind, (name, child["metadata"]["uid"]))
    assert set(victims) == set(CHILD_RESOURCES)
    for kind, (name, _) in victims.items():
        cluster.kubectl("delete", CHILD_RESOURCES[kind], name, f"--namespace={namespace}")

    def recreated() -> bool:
        now = _children(cluster, namespace, "sd")
        return all(
            (kind, name) in now and now[(kind, name)]["metadata"]["uid"] != uid
            for kind, (name, uid) in victims.items()
        )

    wait_for(recreated, timeout_s=30, what="every deleted child to be recreated")
    assert set(_children(cluster, namespace, "sd")) == set(children)


def test_a_hand_edit_of_an_owned_field_is_undone_and_a_foreign_field_survives(
    cluster: Cluster, namespace: str, tiny_ready: OperatorProcess
) -> None:
    config = cluster.get_json("configmap", "sd-efficient-config", f"--namespace={namespace}")
    before = cluster.get_json("deployment", "sd-efficient", f"--namespace={namespace}")
    image = before["spec"]["template"]["spec"]["containers"][0]["image"]
    cluster.kubectl(
        "patch",
        "configmap",
        "sd-efficient-config",
        f"--namespace={namespace}",
        "--type=merge",
        '--patch={"data": {"tier.json": "{}"}, "metadata": {"annotations": '
        '{"team.example.com/owner": "images"}}}',
    )
    cluster.kubectl(
        "annotate",
        "deployment",
        "sd-efficient",
        "team.example.com/cost-centre=42",
        f"--namespace={namespace}",
    )
    cluster.kubectl(
        "set",
        "image",
        "deployment/sd-efficient",
        f"{RUNTIME_CONTAINER}=example.com/not-ours:1",
        f"--namespace={namespace}",
    )

    def restored() -> dict[str, Any] | None:
        now = cluster.get_json("configmap", "sd-efficient-config", f"--namespace={namespace}")
        return now if now["data"] == config["data"] else None

    now = wait_for(restored, timeout_s=30, what="the tier document to be restored")
    assert now["metadata"]["annotations"]["team.example.com/owner"] == "images"

    def image_restored() -> dict[str, Any] | None:
        deployment = cluster.get_json("deployment", "sd-efficient", f"--namespace={namespace}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return deployment if container["image"] == image else None

    deployment = wait_for(image_restored, timeout_s=30, what="the runtime image to be restored")
    assert deployment["metadata"]["annotations"]["team.example.com/cost-centre"] == "42"
