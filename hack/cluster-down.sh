#!/usr/bin/env bash
# Stop the local control plane started by hack/cluster-up.sh and remove its state. Idempotent:
# does nothing when no cluster is running. Uses the same DUOTONE_CLUSTER_DIR / DUOTONE_CLUSTER_NAME.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR="${DUOTONE_CLUSTER_DIR:-${REPO_ROOT}/.cluster}"
CLUSTER_NAME="${DUOTONE_CLUSTER_NAME:-duotone}"
STATE_DIR="${CLUSTER_DIR}/kwok/clusters/${CLUSTER_NAME}"

log() { echo "[cluster-down] $*" >&2; }

# The real node first (its kubelet and pods talk to the API server); its guard last, once the
# API server no longer listens; then check that nothing of the node is left on the host
# (processes, mounts, bridge, iptables chains, cgroups, kernel settings, host paths). A failure
# does not stop the rest of the clean-up: the script exits with it at the end.
status=0
REAL_NODE=false
if [[ -d "${CLUSTER_DIR}/node" ]]; then
  REAL_NODE=true
  "${REPO_ROOT}/hack/real-node.sh" down "$CLUSTER_DIR" || status=$?
fi
finish() {
  if $REAL_NODE; then
    "${REPO_ROOT}/hack/real-node.sh" unguard || status=$?
    "${REPO_ROOT}/hack/real-node.sh" check --node || status=$?
  fi
  exit "$status"
}

if [[ ! -d "$STATE_DIR" ]]; then
  log "no cluster '${CLUSTER_NAME}' in ${CLUSTER_DIR}; nothing to do"
  rm -f "${CLUSTER_DIR}/kubeconfig" "${CLUSTER_DIR}/binaries.env"
  finish
fi

kwokctl_bin=""
if [[ -f "${CLUSTER_DIR}/binaries.env" ]]; then
  kwokctl_bin=$(sed -n 's/^DUOTONE_KWOKCTL=//p' "${CLUSTER_DIR}/binaries.env")
fi
[[ -x "$kwokctl_bin" ]] || kwokctl_bin=$("${REPO_ROOT}/hack/build-binaries.sh" --check | sed -n 's/^DUOTONE_KWOKCTL=//p') || true

log "stopping cluster '${CLUSTER_NAME}'"
if [[ -x "$kwokctl_bin" ]]; then
  KWOK_WORKDIR="${CLUSTER_DIR}/kwok" "$kwokctl_bin" --name "$CLUSTER_NAME" delete cluster \
    --kubeconfig "${CLUSTER_DIR}/kubeconfig" >&2 || log "kwokctl delete failed; stopping processes from their pid files"
fi

# Whatever kwokctl could not stop (no kwokctl binary, a half-created cluster): the pid files.
if [[ -d "${STATE_DIR}/pids" ]]; then
  for pidfile in "${STATE_DIR}"/pids/*.pid; do
    [[ -f "$pidfile" ]] || continue
    pid=$(cat "$pidfile")
    # Only a process whose command line points into this cluster's state (a stale pid file
    # may name an unrelated process after a reboot).
    if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF "$STATE_DIR"; then
      log "stopping $(basename "$pidfile" .pid) (pid ${pid})"
      kill "$pid" 2>/dev/null || true
    fi
  done
fi

rm -rf "$STATE_DIR" "${CLUSTER_DIR}/kubeconfig" "${CLUSTER_DIR}/binaries.env" "${CLUSTER_DIR}/mode" \
  "${CLUSTER_DIR}/kwokctl-real-node.yaml"
rmdir "${CLUSTER_DIR}/kwok/clusters" "${CLUSTER_DIR}/kwok" 2>/dev/null || true
log "done"
finish
