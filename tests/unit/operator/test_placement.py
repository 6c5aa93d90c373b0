"""What a manifest auditor looks at in the rendered children: node disk, pull policy, spread over
nodes, and the findings deliberately not followed (each skipped by annotation on its object)."""

from __future__ import annotations

from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_operator.render import placement
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from tests.support.builders import imd

SETTINGS = RenderSettings()
DIGEST = "registry.example.com/duotone-runtime@sha256:" + "ab" * 32


def _children(manifest: dict[str, Any], settings: RenderSettings = SETTINGS) -> dict[str, Any]:
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": "images"}}
    body["metadata"].update(uid="0b6f2a3e-0000-4000-8000-000000000001", generation=1)
    children = render_children(parse_imd(body), settings)
    return {c["metadata"]["name"]: c for c in children if c["kind"] == "Deployment"}


def _ignored(deployment: dict[str, Any]) -> set[str]:
    value = deployment["metadata"].get("annotations", {}).get(placement.AUDIT_IGNORE_ANNOTATION)
    return set(value.split(",")) if value else set()


def test_every_container_declares_its_node_disk_and_every_emptydir_a_size() -> None:
    manifest = imd("sd").tier("efficient").resources(ephemeralStorage="3Gi").tier("flagship")
    deployments = _children(manifest.router(resources={"ephemeralStorage": "200Mi"}).build())
    expected = {"sd-efficient": "3Gi", "sd-flagship": "10Gi", "sd-router": "200Mi"}
    for name, disk in expected.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert container["resources"]["requests"]["ephemeral-storage"] == disk
            assert container["resources"]["limits"]["ephemeral-storage"] == disk
        empty_dirs = [v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v]
        assert empty_dirs, name
        for volume in empty_dirs:
            if volume.get("medium") == "Memory":
                assert volume["sizeLimit"] == SETTINGS.shm_size
            else:
                assert volume["sizeLimit"] == disk


@pytest.mark.parametrize(
    ("image", "explicit", "expected"),
    [
        ("registry.example.com/duotone-runtime:0.1.0", None, "Always"),
        (DIGEST, None, "IfNotPresent"),
        ("registry.example.com/duotone-runtime:0.1.0", "IfNotPresent", "IfNotPresent"),
        (DIGEST, "Always", "Always"),
        ("registry.example.com/duotone-runtime:0.1.0", "Never", "Never"),
    ],
)
def test_pull_policy_follows_tag_or_digest_unless_the_imd_names_one(
    image: str, explicit: str | None, expected: str
) -> None:
    manifest = imd("sd", image=image).tier("efficient").build()
    if explicit is not None:
        manifest["spec"]["runtime"]["imagePullPolicy"] = explicit
    deployments = _children(manifest)
    tier = deployments["sd-efficient"]
    (container,) = tier["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == expected
    # The auditor's pull-policy check is skipped exactly where the advice is not followed.
    assert (placement.CHECK_PULL_POLICY in _ignored(tier)) == (expected != "Always")


def test_router_image_gets_its_own_pull_policy() -> None:
    settings = RenderSettings(
        router_image="registry.example.com/duotone-router@sha256:" + "cd" * 32
    )
    router = _children(imd("sd").tier("efficient").build(), settings)["sd-router"]
    (container,) = router["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert placement.CHECK_PULL_POLICY in _ignored(router)


def test_pods_spread_softly_over_nodes_by_default_counting_only_their_own_rollout() -> None:
    deployments = _children(imd("sd").tier("efficient", gpus=1).tier("flagship").build())
    for name, deployment in deployments.items():
        template = deployment["spec"]["template"]
        (spread,) = template["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
        assert spread["maxSkew"] == 1
        assert spread["matchLabelKeys"] == ["pod-template-hash"]
        # The selector picks this workload's pods and no other workload's.
        selector = spread["labelSelector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items()
        for other_name, other in deployments.items():
            if other_name != name:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selector.items() <= labels.items()
        assert placement.CHECK_HOST_ANTI_AFFINITY in _ignored(deployment)


def test_spread_is_configurable_and_can_be_turned_off() -> None:
    manifest = imd("sd").tier("efficient").build()
    manifest["spec"]["tiers"]["efficient"]["scheduling"] = {
        "topologySpread": [
            {"topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
        ]
    }
    manifest["spec"]["router"] = {"topologySpread": []}
    deployments = _children(manifest)
    (zone,) = deployments["sd-efficient"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert (zone["topologyKey"], zone["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone",
        "DoNotSchedule",
    )
    # No hostname spread: the auditor's anti-affinity finding is not skipped.
    assert placement.CHECK_HOST_ANTI_AFFINITY not in _ignored(deployments["sd-efficient"])
    router = deployments["sd-router"]
    assert "topologySpreadConstraints" not in router["spec"]["template"]["spec"]
    assert placement.CHECK_HOST_ANTI_AFFINITY not in _ignored(router)


def test_replica_findings_are_skipped_for_autoscaled_tiers_only() -> None:
    deployments = _children(imd("sd").tier("efficient").router(replicas=1).build())
    assert placement.CHECK_REPLICAS in _ignored(deployments["sd-efficient"])
    # One router replica is the IMD's choice, and the auditor should say so.
    assert placement.CHECK_REPLICAS not in _ignored(deployments["sd-router"])


def test_network_policy_finding_is_skipped_only_when_the_operator_renders_none() -> None:
    manifest = imd("sd").tier("efficient").build()
    with_policies = _children(manifest)
    without = _children(manifest, RenderSettings(network_policies=False))
    for name in ("sd-efficient", "sd-router"):
        assert placement.CHECK_NETWORK_POLICY not in _ignored(with_policies[name])
        assert placement.CHECK_NETWORK_POLICY in _ignored(without[name])


def test_tier_egress_opens_only_for_a_tier_that_downloads_its_model() -> None:
    def tiers_policy(manifest: dict[str, Any]) -> dict[str, Any]:
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": "images"}}
        body["metadata"].update(uid="0b6f2a3e-0000-4000-8000-000000000001", generation=1)
        (policy,) = [
            c
            for c in render_children(parse_imd(body), SETTINGS)
            if c["kind"] == "NetworkPolicy" and c["metadata"]["name"] == "sd-tiers"
        ]
        return policy

    closed = tiers_policy(imd("sd").tier("efficient").build())
    assert closed["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in closed["spec"]
    downloading = imd("sd").tier("efficient", source="hf://stabilityai/sd-turbo").build()
    downloading["spec"]["tiers"]["efficient"]["model"]["allowDownload"] = True
    assert tiers_policy(downloading)["spec"]["egress"] == [{}]
