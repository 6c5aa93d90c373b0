#!/usr/bin/env bash
# Start the local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and kwok as local processes on 127.0.0.1 (kwokctl's binary runtime), then register the fake
# GPU nodes of hack/kwok/gpu-nodes.yaml. Idempotent: a healthy cluster is left as it is, a
# broken one (for example after a reboot) is deleted and created again.
#
# Usage: hack/cluster-up.sh [--real-node]
#   --real-node  also start one real node (kubelet + containerd + runc + CNI on this machine,
#                hack/real-node.sh) with the product's images loaded, instead of the fake CPU
#                node: pods without a GPU really run. Needs root. The fake GPU nodes stay.
#
# Environment:
#   DUOTONE_CLUSTER_DIR   state and kubeconfig (default: <repo>/.cluster)
#   DUOTONE_CLUSTER_NAME  kwokctl cluster name (default: duotone)
#   DUOTONE_<BINARY>, KUBEBUILDER_ASSETS, DUOTONE_BIN_CACHE: see hack/build-binaries.sh
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "${REPO_ROOT}/hack/versions.env"

CLUSTER_DIR="${DUOTONE_CLUSTER_DIR:-${REPO_ROOT}/.cluster}"
CLUSTER_NAME="${DUOTONE_CLUSTER_NAME:-duotone}"
REAL_NODE=false
case "${1:-}" in
  "") ;;
  --real-node) REAL_NODE=true ;;
  *) echo "cluster-up: unknown argument '$1' (see the comment at the top)" >&2; exit 2 ;;
esac
mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd)
KUBECONFIG_PATH="${CLUSTER_DIR}/kubeconfig"

log() { echo "[cluster-up] $*" >&2; }
die() { echo "[cluster-up] ERROR: $*" >&2; exit 1; }

start=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - start) / 1000000 ))ms"; }

# Resolve (and, the first time, build) the binaries: sets DUOTONE_KUBE_APISERVER and friends.
if $REAL_NODE; then
  binaries=$("${REPO_ROOT}/hack/build-binaries.sh" --node)
else
  binaries=$("${REPO_ROOT}/hack/build-binaries.sh")
fi
eval "$binaries"
printf '%s\n' "$binaries" >"${CLUSTER_DIR}/binaries.env"

# kwokctl keeps every cluster's state (pki, pids, logs, etcd data) under its workdir.
export KWOK_WORKDIR="${CLUSTER_DIR}/kwok"
export KWOK_RUNTIME=binary
export KWOK_KUBE_VERSION="v${KUBE_VERSION}"
export KWOK_ETCD_VERSION="${ETCD_VERSION}"
export KWOK_VERSION="v${KWOK_VERSION}"
export KWOK_KUBE_APISERVER_BINARY="$DUOTONE_KUBE_APISERVER"
export KWOK_KUBE_CONTROLLER_MANAGER_BINARY="$DUOTONE_KUBE_CONTROLLER_MANAGER"
export KWOK_KUBE_SCHEDULER_BINARY="$DUOTONE_KUBE_SCHEDULER"
export KWOK_KUBECTL_BINARY="$DUOTONE_KUBECTL"
export KWOK_ETCD_BINARY="$DUOTONE_ETCD"
export KWOK_CONTROLLER_BINARY="$DUOTONE_KWOK"
kwokctl() { "$DUOTONE_KWOKCTL" --name "$CLUSTER_NAME" "$@"; }
kubectl() { "$DUOTONE_KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

cluster_exists() { [[ -d "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" ]]; }
cluster_healthy() {
  [[ -f "$KUBECONFIG_PATH" ]] && kubectl get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

# A cluster made for the other mode (the API server's flags differ) is made again.
MODE_FILE="${CLUSTER_DIR}/mode"
mode=$($REAL_NODE && echo real-node || echo kwok)
if cluster_exists && [[ "$(cat "$MODE_FILE" 2>/dev/null || echo kwok)" != "$mode" ]]; then
  log "cluster '${CLUSTER_NAME}' runs in another mode; stopping it first"
  "${REPO_ROOT}/hack/cluster-down.sh"
fi

# A fixed port, so hack/real-node.sh's guard can close it before the API server listens.
REAL_NODE_API_PORT=26443

# The real node's kwokctl settings: the API server also listens on the node's bridge address
# (pods reach it through the `kubernetes` Service; DUOTONE-GUARD keeps it off other interfaces),
# talks to the kubelet with the admin client certificate, and kwok manages only the fake nodes.
real_node_config() {
  local pki="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pki"
  sed "s/^  quietPull: true$/  quietPull: true\n  kubeApiserverPort: ${REAL_NODE_API_PORT}\n  kubeApiserverCertSANs: [10.213.0.1, 10.96.0.1]/" \
    "${REPO_ROOT}/hack/kwok/kwokctl.yaml"
  cat <<EOF
  - name: kube-apiserver
    extraArgs:
      - {key: bind-address, value: 0.0.0.0, override: true}
      - {key: advertise-address, value: 10.213.0.1}
      - {key: kubelet-client-certificate, value: "${pki}/admin.crt"}
      - {key: kubelet-client-key, value: "${pki}/admin.key"}
      - {key: kubelet-preferred-address-types, value: InternalIP}
  - name: kwok-controller
    extraArgs:
      - {key: manage-all-nodes, value: "false", override: true}
      - {key: manage-nodes-with-label-selector, value: type=kwok}
EOF
}

if cluster_exists; then
  if cluster_healthy; then
    log "cluster '${CLUSTER_NAME}' is already running"
  else
    log "cluster '${CLUSTER_NAME}' exists but does not answer; deleting it and starting again"
    # cluster-down also stops a real node, whose credentials belong to the old cluster.
    "${REPO_ROOT}/hack/cluster-down.sh" || true
    rm -rf "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" "$KUBECONFIG_PATH"
  fi
fi

if ! cluster_exists; then
  rm -f "$KUBECONFIG_PATH"
  log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (state: ${KWOK_WORKDIR})"
  config="${REPO_ROOT}/hack/kwok/kwokctl.yaml"
  if $REAL_NODE; then
    config="${CLUSTER_DIR}/kwokctl-real-node.yaml"
    real_node_config >"$config"
    # The API server will listen beyond loopback: the guard goes in before it starts.
    "${REPO_ROOT}/hack/real-node.sh" guard "$CLUSTER_DIR" "$REAL_NODE_API_PORT"
  fi
  echo "$mode" >"$MODE_FILE"
  if ! kwokctl --config "$config" create cluster \
      --kubeconfig "$KUBECONFIG_PATH" --wait 2m >&2; then
    log "kwokctl failed; component logs:"
    tail -n 20 "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"/logs/*.log >&2 2>/dev/null || true
    die "the control plane did not start (state kept in ${KWOK_WORKDIR} for inspection; hack/cluster-down.sh removes it)"
  fi
fi

fake_nodes=(-f "${REPO_ROOT}/hack/kwok/gpu-nodes.yaml")
# With a real node, pods without a GPU run on it; the fake CPU node would take them.
$REAL_NODE || fake_nodes+=(-f "${REPO_ROOT}/hack/kwok/cpu-nodes.yaml")
log "registering fake nodes (${fake_nodes[*]//-f /})"
# create, not apply: a Node's status is only taken from the request on create.
kubectl create "${fake_nodes[@]}" 2>&1 | grep -v AlreadyExists >&2 || true
kubectl wait --for=condition=Ready node -l type=kwok --timeout=60s >&2
# The default ServiceAccount is created by kube-controller-manager; pods need it.
for _ in $(seq 120); do
  kubectl get serviceaccount default -n default >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get serviceaccount default -n default >/dev/null || die "kube-controller-manager did not create the default ServiceAccount"

if $REAL_NODE; then
  "${REPO_ROOT}/hack/real-node.sh" up "$CLUSTER_DIR"
fi

log "ready in $(elapsed)"
cat >&2 <<EOF

The local control plane (Kubernetes v${KUBE_VERSION}) is up. Use it with:

  export KUBECONFIG=${KUBECONFIG_PATH}
  kubectl get nodes

or, with the kubectl built for this version:

  ${DUOTONE_KUBECTL} --kubeconfig ${KUBECONFIG_PATH} get nodes

Stop it with: make cluster-down  (hack/cluster-down.sh)
EOF
echo "$KUBECONFIG_PATH"
