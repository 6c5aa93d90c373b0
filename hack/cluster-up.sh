#!/usr/bin/env bash
# Start the local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and kwok as local processes on 127.0.0.1 (kwokctl's binary runtime), then register the fake
# GPU nodes of hack/kwok/gpu-nodes.yaml. Idempotent: a healthy cluster is left as it is, a
# broken one (for example after a reboot) is deleted and created again.
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
mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd)
KUBECONFIG_PATH="${CLUSTER_DIR}/kubeconfig"

log() { echo "[cluster-up] $*" >&2; }
die() { echo "[cluster-up] ERROR: $*" >&2; exit 1; }

start=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - start) / 1000000 ))ms"; }

# Resolve (and, the first time, build) the binaries: sets DUOTONE_KUBE_APISERVER and friends.
binaries=$("${REPO_ROOT}/hack/build-binaries.sh")
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

if cluster_exists; then
  if cluster_healthy; then
    log "cluster '${CLUSTER_NAME}' is already running"
  else
    log "cluster '${CLUSTER_NAME}' exists but does not answer; deleting it and starting again"
    kwokctl delete cluster >&2 || true
    rm -rf "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" "$KUBECONFIG_PATH"
  fi
fi

if ! cluster_exists; then
  rm -f "$KUBECONFIG_PATH"
  log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (state: ${KWOK_WORKDIR})"
  if ! kwokctl --config "${REPO_ROOT}/hack/kwok/kwokctl.yaml" create cluster \
      --kubeconfig "$KUBECONFIG_PATH" --wait 2m >&2; then
    log "kwokctl failed; component logs:"
    tail -n 20 "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"/logs/*.log >&2 2>/dev/null || true
    die "the control plane did not start (state kept in ${KWOK_WORKDIR} for inspection; hack/cluster-down.sh removes it)"
  fi
fi

log "registering fake nodes (hack/kwok/gpu-nodes.yaml, hack/kwok/cpu-nodes.yaml)"
# create, not apply: a Node's status is only taken from the request on create.
kubectl create -f "${REPO_ROOT}/hack/kwok/gpu-nodes.yaml" -f "${REPO_ROOT}/hack/kwok/cpu-nodes.yaml" 2>&1 \
  | grep -v AlreadyExists >&2 || true
kubectl wait --for=condition=Ready node -l type=kwok --timeout=60s >&2
# The default ServiceAccount is created by kube-controller-manager; pods need it.
for _ in $(seq 120); do
  kubectl get serviceaccount default -n default >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get serviceaccount default -n default >/dev/null || die "kube-controller-manager did not create the default ServiceAccount"

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
