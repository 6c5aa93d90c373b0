"""Where and how the workload pods start: image pull policy, spread across nodes, and the
manifest-auditor findings the operator deliberately does not follow, with the reason (pure).

Platform teams score manifests with kube-score before they reach a cluster (docs/helm.md,
"Manifest audit"). A finding Duotone does not follow is skipped for that one object with the
auditor's own annotation, `kube-score/ignore`, never globally; each skip below says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from duotone_contracts.api.v1alpha1 import PullPolicy, TopologySpread
from duotone_operator.render.objects import Manifest

AUDIT_IGNORE_ANNOTATION: Final = "kube-score/ignore"
"""kube-score skips the checks this annotation lists for the object that carries it."""

HOSTNAME_KEY: Final = "kubernetes.io/hostname"

CHECK_PULL_POLICY: Final = "container-image-pull-policy"
"""kube-score wants `Always`. Not followed when the image is pinned by digest (its content
cannot change, and `Always` would make every scale-up of a GPU tier depend on the registry
being up), or when the IMD names another policy on purpose (images preloaded on the nodes)."""

CHECK_HOST_ANTI_AFFINITY: Final = "deployment-has-host-podantiaffinity"
"""kube-score wants a podAntiAffinity on the hostname. Duotone spreads with a
topologySpreadConstraint on the hostname instead, which kube-score does not recognise: a
required anti-affinity leaves pods Pending on a GPU pool with fewer nodes than replicas, and a
preferred one bounds nothing and costs the scheduler a pass over every pod of the namespace."""

CHECK_REPLICAS: Final = "deployment-replicas"
"""kube-score wants at least 2 replicas. A tier's replica count is the autoscaler's, between
the IMD's replicas.min and replicas.max; a min of 1 (or 0, scale to zero) is the owner's cost
choice for a GPU pool, and the autoscaler adds pods under load."""

CHECK_NETWORK_POLICY: Final = "pod-networkpolicy"
"""kube-score wants a NetworkPolicy selecting every pod. Skipped only when the operator renders
none (`workloadNetworkPolicy.enabled: false` in the chart): the installer's choice, for
policies managed elsewhere or a CNI that does not enforce them."""

POD_TEMPLATE_HASH: Final = "pod-template-hash"
"""The label a Deployment's ReplicaSet puts on its pods: spreading counts only the pods of the
current rollout, so old pods that are about to go do not skew where new ones land."""


def pinned_by_digest(image: str) -> bool:
    """`repo@sha256:...` names immutable content; `repo:tag` may move."""
    return "@" in image


def pull_policy(image: str, explicit: PullPolicy | None) -> PullPolicy:
    """The IMD's policy when it names one; otherwise Always for a tag, IfNotPresent for a
    digest.

    e.g. ("reg/runtime:1.0", None) -> "Always"; ("reg/runtime@sha256:ab..", None) ->
    "IfNotPresent"; ("reg/runtime:1.0", "Never") -> "Never"
    """
    if explicit is not None:
        return explicit
    return "IfNotPresent" if pinned_by_digest(image) else "Always"


def spread_constraints(
    spread: Sequence[TopologySpread], selector: Mapping[str, str]
) -> list[Manifest]:
    """topologySpreadConstraints over the workload's own pods."""
    return [
        {
            "maxSkew": s.max_skew,
            "topologyKey": s.topology_key,
            "whenUnsatisfiable": s.when_unsatisfiable,
            "labelSelector": {"matchLabels": dict(selector)},
            "matchLabelKeys": [POD_TEMPLATE_HASH],
        }
        for s in spread
    ]


def audit_ignores(
    *,
    pull_policies: Sequence[PullPolicy],
    spread: Sequence[TopologySpread],
    autoscaled: bool,
    network_policies: bool,
) -> dict[str, str]:
    """The `kube-score/ignore` annotation of one Deployment: the checks whose advice the
    rendered object deliberately does not follow (see the CHECK_* constants); {} if none."""
    checks: list[str] = []
    if any(policy != "Always" for policy in pull_policies):
        checks.append(CHECK_PULL_POLICY)
    if any(s.topology_key == HOSTNAME_KEY for s in spread):
        checks.append(CHECK_HOST_ANTI_AFFINITY)
    if autoscaled:
        checks.append(CHECK_REPLICAS)
    if not network_policies:
        checks.append(CHECK_NETWORK_POLICY)
    return {AUDIT_IGNORE_ANNOTATION: ",".join(checks)} if checks else {}
