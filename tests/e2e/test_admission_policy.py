"""The chart's ValidatingAdmissionPolicy in a real kube-apiserver: `kubectl apply` refuses an IMD
that asks for an image or a toleration the chart does not allow, with a message naming the
field, and accepts one within the chart's lists.

The policy and its binding are cluster-scoped and the control plane is shared, so each test
renders them with `watchNamespaces: [<its namespace>]` (the binding then selects that namespace
alone, as a namespaced install does) and deletes them at the end.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import presets
from tests.support.cluster import Cluster, wait_for
from tests.support.helm import render

pytestmark = pytest.mark.cluster

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
ALLOWED_KEY = "duotone.io/dedicated"
RUNTIME_IMAGE = "registry.example.com/duotone-runtime:0.1.0"
ROUTER_IMAGE = "registry.example.com/duotone-router:0.1.0"


def _manifest(name: str = "sd") -> dict[str, Any]:
    """A two-tier IMD within the chart's default lists (and ALLOWED_KEY)."""
    manifest = presets.small_pair(name).build()
    manifest["spec"]["runtime"]["image"] = RUNTIME_IMAGE
    return manifest


def _tolerations(manifest: dict[str, Any], tier: str, tolerations: list[dict[str, Any]]) -> None:
    manifest["spec"]["tiers"][tier]["scheduling"] = {"tolerations": tolerations}


def _toleration(key: str) -> dict[str, Any]:
    return {"key": key, "operator": "Exists", "effect": "NoSchedule"}


def _apply(
    cluster: Cluster, namespace: str, manifest: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", f"--namespace={namespace}", "--filename=-", *extra,
        stdin=json.dumps(manifest), check=False,
    )  # fmt: skip


def _refused(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "ValidatingAdmissionPolicy" in result.stderr


@pytest.fixture
def install_policy(
    cluster: Cluster, crd: None, namespace: str, tmp_path: Path
) -> Iterator[Callable[[], None]]:
    """Apply the chart's policy and binding (rendered for this namespace, ALLOWED_KEY allowed)
    and wait until the API server enforces them."""
    values = {
        "watchNamespaces": [namespace],
        "admissionPolicy": {"allowedTolerationKeys": [ALLOWED_KEY]},
    }
    objects = [o for o in render(values, tmp_path, release=namespace) if o["kind"] in POLICY_KINDS]
    assert sorted(o["kind"] for o in objects) == sorted(POLICY_KINDS)

    def install() -> None:
        for obj in objects:
            cluster.kubectl("apply", "--server-side", "--filename=-", stdin=json.dumps(obj))
        bad = _manifest("probe")
        bad["spec"]["runtime"]["image"] = "evil.example/x:1"
        # The API server loads a new policy a moment after it is stored.
        wait_for(
            lambda: _refused(_apply(cluster, namespace, bad, "--dry-run=server")),
            timeout_s=30,
            what="the admission policy to be in force",
        )

    try:
        yield install
    finally:
        for obj in reversed(objects):
            cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found")


def _runtime_image(manifest: dict[str, Any]) -> None:
    manifest["spec"]["runtime"]["image"] = "evil.example/x:1"


def _lookalike_registry(manifest: dict[str, Any]) -> None:
    manifest["spec"]["runtime"]["image"] = "registry.example.com.evil.example/x:1"


def _router_image(manifest: dict[str, Any]) -> None:
    manifest["spec"]["router"]["image"] = "evil.example/router:1"


def _control_plane_toleration(manifest: dict[str, Any]) -> None:
    _tolerations(
        manifest,
        "flagship",
        [_toleration(ALLOWED_KEY), _toleration("node-role.kubernetes.io/control-plane")],
    )


def _every_taint(manifest: dict[str, Any]) -> None:
    _tolerations(manifest, "efficient", [{"operator": "Exists"}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            _runtime_image,
            'spec.runtime.image "evil.example/x:1" is not under an allowed prefix '
            "(registry.example.com/)",
            id="runtime image from another registry",
        ),
        pytest.param(
            _lookalike_registry,
            'spec.runtime.image "registry.example.com.evil.example/x:1" is not under an allowed',
            id="runtime image from a look-alike registry",
        ),
        pytest.param(
            _router_image,
            'spec.router.image "evil.example/router:1" is not under an allowed prefix '
            "(registry.example.com/)",
            id="router image from another registry",
        ),
        pytest.param(
            _control_plane_toleration,
            "spec.tiers.flagship.scheduling.tolerations[1].key "
            '"node-role.kubernetes.io/control-plane" is not an allowed toleration key '
            f"(allowed: {ALLOWED_KEY})",
            id="toleration of a key not allowed",
        ),
        pytest.param(
            _every_taint,
            "spec.tiers.efficient.scheduling.tolerations[0].key is empty (tolerates every taint)",
            id="toleration without a key (every taint)",
        ),
    ],
)
def test_kubectl_apply_refuses_what_the_chart_does_not_allow_naming_the_field(
    cluster: Cluster,
    namespace: str,
    install_policy: Callable[[], None],
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    install_policy()
    manifest = _manifest()
    change(manifest)
    result = _apply(cluster, namespace, manifest)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert not cluster.get_json("imd", f"--namespace={namespace}")["items"]


def test_an_imd_within_the_lists_is_accepted_and_an_update_is_checked(
    cluster: Cluster, namespace: str, install_policy: Callable[[], None]
) -> None:
    install_policy()
    manifest = _manifest()
    manifest["spec"]["router"]["image"] = ROUTER_IMAGE
    _tolerations(manifest, "efficient", [_toleration(ALLOWED_KEY)])
    _tolerations(manifest, "flagship", [_toleration(ALLOWED_KEY)])
    accepted = _apply(cluster, namespace, manifest)
    assert accepted.returncode == 0, accepted.stderr
    stored = cluster.get_json("imd", "sd", f"--namespace={namespace}")
    assert stored["spec"]["runtime"]["image"] == RUNTIME_IMAGE

    manifest["spec"]["runtime"]["image"] = "evil.example/x:2"
    refused = _apply(cluster, namespace, manifest)
    assert refused.returncode != 0, refused.stdout
    assert 'spec.runtime.image "evil.example/x:2"' in refused.stderr, refused.stderr
    stored = cluster.get_json("imd", "sd", f"--namespace={namespace}")
    assert stored["spec"]["runtime"]["image"] == RUNTIME_IMAGE


def test_the_binding_selects_the_watched_namespaces_only(
    cluster: Cluster, namespace: str, install_policy: Callable[[], None]
) -> None:
    install_policy()
    manifest = _manifest()
    manifest["spec"]["runtime"]["image"] = "evil.example/x:1"
    assert _refused(_apply(cluster, namespace, manifest, "--dry-run=server"))
    elsewhere = _apply(cluster, "default", manifest, "--dry-run=server")
    assert elsewhere.returncode == 0, elsewhere.stderr


def test_an_imd_admitted_before_the_policy_can_still_be_edited_but_not_widened(
    cluster: Cluster, namespace: str, install_policy: Callable[[], None]
) -> None:
    """Values the stored IMD already has are not checked again, so labels, the operator's
    annotations and finalizers can still be written; a new disallowed value cannot."""
    legacy = _manifest("legacy")
    legacy["spec"]["runtime"]["image"] = "old.example/runtime:1"
    _tolerations(legacy, "efficient", [_toleration("old.example/pool")])
    created = _apply(cluster, namespace, legacy)
    assert created.returncode == 0, created.stderr
    install_policy()

    legacy["metadata"]["labels"] = {"team": "images"}
    legacy["spec"]["router"]["replicas"] = 2
    edited = _apply(cluster, namespace, legacy)
    assert edited.returncode == 0, edited.stderr

    legacy["spec"]["runtime"]["image"] = "old.example/runtime:2"
    refused = _apply(cluster, namespace, legacy)
    assert 'spec.runtime.image "old.example/runtime:2"' in refused.stderr, refused.stderr

    legacy["spec"]["runtime"]["image"] = "old.example/runtime:1"
    _tolerations(legacy, "efficient", [_toleration("old.example/pool"), _toleration("new")])
    refused = _apply(cluster, namespace, legacy)
    assert 'tolerations[1].key "new" is not an allowed' in refused.stderr, refused.stderr
