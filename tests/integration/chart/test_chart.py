"""The Helm chart, rendered by the real Helm engine: lint, values schema, Kubernetes schemas,
a security audit of every values set, the CRD copy, RBAC modes and the dashboard ConfigMap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from duotone_monitoring.dashboard import build_dashboard
from tests.support.helm import CHART, HelmError, helm, monitoring_crd, only, render
from tests.support.manifests import CRD_PATH, ROOT

KUBE_VERSION = "1.34.0"
RBAC_RULES = yaml.safe_load((CHART / "files" / "operator-rbac-rules.yaml").read_text())
SECRET_RULES = yaml.safe_load((CHART / "files" / "operator-secret-rules.yaml").read_text())
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

VALUE_SETS = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "prometheusRule": {
                "enabled": True,
                "slo": {"availability": 0.999, "latency": 0.95},
                "runbookBaseUrl": "https://runbooks.example.com/duotone",
            },
            "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "ML"}},
        },
        id="monitoring: ServiceMonitors, PrometheusRule, dashboard in another namespace",
    ),
    pytest.param(
        {
            "watchNamespaces": ["images", "batch-images"],
            "serviceMonitor": {"enabled": True},
            "networkPolicy": {
                "metricsFrom": [
                    {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},
                ]
            },
        },
        id="namespaced: Roles in two namespaces, scrapers restricted",
    ),
    pytest.param(
        {
            "fullnameOverride": "imagegen",
            "image": {"repository": "registry.internal/duotone-operator", "tag": "0.1.0-rc1"},
            "imagePullSecrets": [{"name": "registry"}],
            "routerImage": {"repository": "registry.internal/duotone-router", "tag": "0.1.0"},
            "serviceAccount": {"create": False, "name": "imagegen"},
            "crds": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "dashboards": {"enabled": False},
            "operator": {"autoscaleIntervalSeconds": 0, "logFormat": "text", "workers": 2},
            "resources": {
                "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "64Mi"},
                "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "128Mi"},
            },
            "nodeSelector": {"pool": "system"},
            "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
        },
        id="custom: own account, no CRD, no NetworkPolicy, autoscaler off",
    ),
]


def _validate_custom(obj: dict[str, Any], crd_path: Path) -> None:
    """Validate a custom object against the openAPIV3Schema of its CRD file."""
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if obj["apiVersion"].endswith(v["name"]))
    # OpenAPI v3 schemas are closest to draft 4; the CRD's patterns are Go regexps (some do
    # not compile in Python), so the schema itself is not meta-validated.
    jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(obj)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_values_set_renders_to_valid_kubernetes_objects(
    values: dict[str, Any], tmp_path: Path
) -> None:
    objects = render(values, tmp_path)
    assert objects
    for obj in objects:
        kind = obj["kind"]
        if kind == "ServiceMonitor":
            _validate_custom(obj, monitoring_crd("servicemonitors"))
        elif kind == "PrometheusRule":
            _validate_custom(obj, monitoring_crd("prometheusrules"))
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", obj["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == "duotone"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_lint_is_clean(values: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    out = helm("lint", str(CHART), "--strict", f"--values={path}")
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[ERROR]" not in out
    assert "[WARNING]" not in out


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param({"operator": {"workers": 0}}, "operator.workers", id="workers below 1"),
        pytest.param({"replicaCount": 2}, "replicaCount", id="unknown key (no second writer)"),
        pytest.param(
            {"prometheusRule": {"slo": {"availability": 1.0}}},
            "prometheusRule.slo.availability",
            id="availability objective of 100 percent (no budget)",
        ),
        pytest.param({"watchNamespaces": ["Images"]}, "watchNamespaces.0", id="not a DNS label"),
        pytest.param(
            {"resources": {"limits": {"memory": "lots"}}},
            "resources.limits.memory",
            id="memory limit not a quantity",
        ),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(
    values: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(HelmError) as error:
        render(values, tmp_path)
    assert "values don't meet the specifications of the schema" in str(error.value)
    assert field.replace(".", "/") in str(error.value) or field in str(error.value)


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_security_audit(values: dict[str, Any], tmp_path: Path) -> None:
    """Pod Security "restricted", read-only root, resources set, no wildcard or Secret writes."""
    objects = render(values, tmp_path)
    pods = _pod_specs(objects)
    assert len(pods) == 1
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), key
        assert all("hostPath" not in v for v in pod.get("volumes", []))
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert not context.get("privileged")
            assert "add" not in context["capabilities"]
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {
                    "cpu",
                    "memory",
                    "ephemeral-storage",
                }, bound
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), volume["name"]
    for role in (o for o in objects if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            if "secrets" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get"}, rule


def test_defaults_install_the_crd_kept_on_uninstall(tmp_path: Path) -> None:
    crd = only(render({}, tmp_path), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == yaml.safe_load(CRD_PATH.read_text())["spec"]
    deleted = only(render({"crds": {"keep": False}}, tmp_path), "CustomResourceDefinition")
    assert "annotations" not in deleted["metadata"]
    assert not [
        o
        for o in render({"crds": {"enabled": False}}, tmp_path)
        if o["kind"] == "CustomResourceDefinition"
    ]


def test_chart_crd_copy_is_byte_identical_to_crds() -> None:
    copy = CHART / "files" / "crds" / CRD_PATH.name
    assert copy.read_bytes() == CRD_PATH.read_bytes()


def _lease(manifest: dict[str, Any]) -> bool:
    """The leader-election Role or RoleBinding (in the release namespace, every mode)."""
    return str(manifest["metadata"]["name"]).endswith("-leader-election")


def test_replicas_elect_one_writer_through_a_lease_in_the_release_namespace(
    tmp_path: Path,
) -> None:
    objects = render({}, tmp_path)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = {e["name"]: e for e in _pod_specs(objects)[0]["containers"][0]["env"]}
    assert env["DUOTONE_LEADER_ELECTION_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["DUOTONE_IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (role,) = [o for o in objects if o["kind"] == "Role" and _lease(o)]
    assert role["metadata"]["namespace"] == "duotone-system"
    assert role["rules"] == yaml.safe_load(
        (CHART / "files" / "operator-lease-rules.yaml").read_text()
    )
    assert only(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    single = render({"operator": {"replicas": 1}}, tmp_path)
    assert only(single, "Deployment")["spec"]["replicas"] == 1
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"]


def test_all_namespaces_get_one_cluster_role_with_exactly_the_operator_rules(
    tmp_path: Path,
) -> None:
    objects = render({}, tmp_path)
    assert only(objects, "ClusterRole")["rules"] == RBAC_RULES
    binding = only(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "duotone", "namespace": "duotone-system"}
    ]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding") and not _lease(o)]
    env = {
        e["name"]: e["value"]
        for e in _pod_specs(objects)[0]["containers"][0]["env"]
        if "value" in e
    }
    assert env["DUOTONE_NAMESPACES"] == ""


def test_listed_namespaces_get_roles_and_only_nodes_stay_cluster_wide(tmp_path: Path) -> None:
    objects = render({"watchNamespaces": ["images", "batch"]}, tmp_path)
    roles = [o for o in objects if o["kind"] == "Role" and not _lease(o)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["batch", "images"]
    namespaced = [r for r in RBAC_RULES if "nodes" not in r["resources"]]
    assert all(r["rules"] == namespaced + SECRET_RULES for r in roles)
    assert len([o for o in objects if o["kind"] == "RoleBinding" and not _lease(o)]) == 2
    cluster_role = only(objects, "ClusterRole")
    assert cluster_role["rules"] == [r for r in RBAC_RULES if "nodes" in r["resources"]]
    env = {e["name"]: e.get("value") for e in _pod_specs(objects)[0]["containers"][0]["env"]}
    assert env["DUOTONE_NAMESPACES"] == "images,batch"


def test_dashboard_configmap_carries_the_generated_dashboard_and_sidecar_label(
    tmp_path: Path,
) -> None:
    configmap = only(render({}, tmp_path), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["duotone.json"])
    assert shipped == build_dashboard()
    assert shipped == json.loads((CHART / "files" / "dashboards" / "duotone.json").read_text())


def test_pod_restarts_when_rbac_rules_change(tmp_path: Path) -> None:
    """The pod template hashes the RBAC rules, so a rules change rolls the operator."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    before = only(render({}, tmp_path), "Deployment")
    rules = chart / "files" / "operator-rbac-rules.yaml"
    rules.write_text(rules.read_text() + "- {apiGroups: [''], resources: [pods], verbs: [get]}\n")
    after = only(render({}, tmp_path, chart=chart), "Deployment")
    key = "checksum/rbac"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_no_path_of_the_repository_leaks_into_rendered_objects(tmp_path: Path) -> None:
    text = json.dumps(render(VALUE_SETS[1].values[0], tmp_path))
    assert str(ROOT) not in text


@pytest.mark.parametrize(
    ("values", "image"),
    [
        pytest.param({}, f"registry.example.com/duotone-router:{APP_VERSION}", id="default"),
        pytest.param(
            {"routerImage": {"repository": "registry.internal/duotone-router", "tag": "0.2.0"}},
            "registry.internal/duotone-router:0.2.0",
            id="own registry and tag",
        ),
    ],
)
def test_router_pods_default_to_the_router_image(
    values: dict[str, Any], image: str, tmp_path: Path
) -> None:
    """Router pods run the router's own slim image, never the runtime's."""
    container = only(render(values, tmp_path), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DUOTONE_ROUTER_IMAGE"] == image


def _secret_rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def test_all_namespaces_read_no_secret_anywhere(tmp_path: Path) -> None:
    objects = render({}, tmp_path)
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    assert not [r["metadata"]["name"] for r in roles if _secret_rules(r)]


def test_listed_namespaces_grant_secret_reads_only_in_their_roles(tmp_path: Path) -> None:
    objects = render({"watchNamespaces": ["images", "batch"]}, tmp_path)
    for cluster_role in (o for o in objects if o["kind"] == "ClusterRole"):
        assert not _secret_rules(cluster_role), cluster_role["metadata"]["name"]
    granted = {
        o["metadata"]["namespace"]: _secret_rules(o)
        for o in objects
        if o["kind"] == "Role" and _secret_rules(o)
    }
    assert granted == {
        "images": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
        "batch": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }


def _admission_policy(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        only(objects, "ValidatingAdmissionPolicy"),
        only(objects, "ValidatingAdmissionPolicyBinding"),
    )


def _variables(policy: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}


def test_admission_policy_denies_imd_writes_by_default(tmp_path: Path) -> None:
    policy, binding = _admission_policy(render({}, tmp_path))
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["duotone.io"]
    assert rule["resources"] == ["imagemodeldeployments"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"], "all namespaces"
    variables = _variables(policy)
    assert json.loads(variables["allowedImagePrefixes"]) == ["registry.example.com/"]
    assert json.loads(variables["allowedTolerationKeys"]) == []
    fields = " ".join(v.get("messageExpression", "") for v in policy["spec"]["validations"])
    for field in (
        "spec.runtime.image",
        "spec.router.image",
        "spec.tiers.efficient.scheduling.tolerations[",
        "spec.tiers.flagship.scheduling.tolerations[",
    ):
        assert field in fields, field


def test_admission_policy_is_absent_when_disabled(tmp_path: Path) -> None:
    objects = render({"admissionPolicy": {"enabled": False}}, tmp_path)
    assert not [o for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_admission_policy_lists_reach_cel_as_literals_whatever_they_hold(tmp_path: Path) -> None:
    """The lists are rendered with toJson: a quote or backslash cannot end the CEL string."""
    prefixes = ['registry.example.com/team"a/', "registry.example.com/b\\c/", ""]
    keys = ["duotone.io/dedicated", "gpu"]
    values = {"admissionPolicy": {"allowedImagePrefixes": prefixes, "allowedTolerationKeys": keys}}
    variables = _variables(_admission_policy(render(values, tmp_path))[0])
    assert json.loads(variables["allowedImagePrefixes"]) == prefixes
    assert json.loads(variables["allowedTolerationKeys"]) == keys


def test_listed_namespaces_bind_the_admission_policy_to_them_only(tmp_path: Path) -> None:
    _, binding = _admission_policy(render({"watchNamespaces": ["images", "batch"]}, tmp_path))
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["images", "batch"],
            }
        ]
    }


@pytest.mark.parametrize(
    ("values", "field"),
    [
        pytest.param(
            {"admissionPolicy": {"allowedImagePrefixes": []}},
            "admissionPolicy.allowedImagePrefixes",
            id="no image prefix (use [''] to allow every image)",
        ),
        pytest.param(
            {"admissionPolicy": {"allowedImagePrefixes": ["registry.example.com"]}},
            "admissionPolicy.allowedImagePrefixes.0",
            id="registry without its slash (would allow registry.example.com.evil)",
        ),
        pytest.param(
            {"admissionPolicy": {"allowedTolerationKeys": ["not a key"]}},
            "admissionPolicy.allowedTolerationKeys.0",
            id="toleration key not a qualified name",
        ),
        pytest.param(
            {"admissionPolicy": {"allowedRegistries": ["x/"]}},
            "admissionPolicy",
            id="unknown admissionPolicy key",
        ),
    ],
)
def test_admission_policy_values_are_checked_naming_the_field(
    values: dict[str, Any], field: str, tmp_path: Path
) -> None:
    with pytest.raises(HelmError) as error:
        render(values, tmp_path)
    assert "values don't meet the specifications of the schema" in str(error.value)
    assert field.replace(".", "/") in str(error.value), str(error.value)


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "policy", "ignored"),
    [
        ({}, "Always", False),
        ({"digest": DIGEST}, "IfNotPresent", True),
        ({"pullPolicy": "IfNotPresent"}, "IfNotPresent", True),
        ({"digest": DIGEST, "pullPolicy": "Always"}, "Always", False),
    ],
    ids=["tag", "digest", "explicit IfNotPresent", "digest pulled Always"],
)
def test_pull_policy_follows_tag_or_digest_and_is_marked_for_auditors(
    image: dict[str, str], policy: str, ignored: bool, tmp_path: Path
) -> None:
    deployment = only(render({"image": image}, tmp_path), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == policy
    repository = "registry.example.com/duotone-operator"
    expected = f"{repository}@{DIGEST}" if "digest" in image else f"{repository}:{APP_VERSION}"
    assert container["image"] == expected
    skipped = deployment["metadata"].get("annotations", {}).get("kube-score/ignore", "")
    assert ("container-image-pull-policy" in skipped.split(",")) == ignored


def test_router_image_may_be_pinned_by_digest(tmp_path: Path) -> None:
    deployment = only(render({"routerImage": {"digest": DIGEST}}, tmp_path), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DUOTONE_ROUTER_IMAGE"] == f"registry.example.com/duotone-router@{DIGEST}"


def test_operator_replicas_spread_softly_over_nodes(tmp_path: Path) -> None:
    deployment = only(render({}, tmp_path), "Deployment")
    template = deployment["spec"]["template"]
    (spread,) = template["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spread["matchLabelKeys"] == ["pod-template-hash"]
    skipped = deployment["metadata"]["annotations"]["kube-score/ignore"].split(",")
    assert "deployment-has-host-podantiaffinity" in skipped
    # Spread turned off: nothing is rendered and the auditor's finding is no longer skipped.
    off = only(render({"topologySpread": []}, tmp_path / "off"), "Deployment")
    assert "topologySpreadConstraints" not in off["spec"]["template"]["spec"]
    assert "kube-score/ignore" not in off["metadata"].get("annotations", {})
