#!/usr/bin/env bash
# Measure the local control plane: warm cluster-up time (binaries already cached) and the
# resident memory (RSS) of its processes, idle and after scheduling GPU pods.
#
# Usage: bench/controlplane.sh [RUNS]   (default 3 runs; uses a scratch DUOTONE_CLUSTER_DIR)
# Prints a Markdown table on stdout; progress on stderr.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS="${1:-3}"
export DUOTONE_CLUSTER_DIR
DUOTONE_CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/duotone-bench.XXXXXX")
export DUOTONE_CLUSTER_NAME=bench
STATE_DIR="${DUOTONE_CLUSTER_DIR}/kwok/clusters/${DUOTONE_CLUSTER_NAME}"
trap '"${REPO_ROOT}/hack/cluster-down.sh" >/dev/null 2>&1 || true; rm -rf "$DUOTONE_CLUSTER_DIR"' EXIT

log() { echo "[bench] $*" >&2; }

# Resident memory per component in MiB, from the pid files kwokctl writes.
rss_table() {
  local pidfile pid kib total=0
  for pidfile in "${STATE_DIR}"/pids/*.pid; do
    pid=$(cat "$pidfile")
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/${pid}/status")
    total=$((total + kib))
    printf '| %s | %d |\n' "$(basename "$pidfile" .pid)" $((kib / 1024))
  done
  printf '| **total** | **%d** |\n' $((total / 1024))
}

"${REPO_ROOT}/hack/build-binaries.sh" >/dev/null

times=()
for run in $(seq "$RUNS"); do
  "${REPO_ROOT}/hack/cluster-down.sh" >/dev/null 2>&1
  log "run ${run}/${RUNS}: cluster-up"
  t0=$(date +%s%N)
  "${REPO_ROOT}/hack/cluster-up.sh" >/dev/null 2>&1
  t1=$(date +%s%N)
  times+=("$(( (t1 - t0) / 1000000 ))")
  log "  ${times[-1]} ms"
done

echo "### Warm cluster-up (binaries cached, $(nproc) cores)"
echo
echo "| run | seconds |"
echo "|---|---|"
for i in "${!times[@]}"; do
  printf '| %d | %d.%02d |\n' $((i + 1)) $((times[i] / 1000)) $(((times[i] % 1000) / 10))
done
echo

echo "### RSS of the control plane, idle (MiB)"
echo
echo "| process | RSS MiB |"
echo "|---|---|"
rss_table
echo

log "loading: 16 pods x 1 GPU in one Deployment"
kubectl_bin=$(sed -n 's/^DUOTONE_KUBECTL=//p' "${DUOTONE_CLUSTER_DIR}/binaries.env")
k() { "$kubectl_bin" --kubeconfig "${DUOTONE_CLUSTER_DIR}/kubeconfig" "$@"; }
k create -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: gpu-load}
spec:
  replicas: 16
  selector: {matchLabels: {app: gpu-load}}
  template:
    metadata: {labels: {app: gpu-load}}
    spec:
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: load
          image: registry.invalid/load
          resources: {limits: {nvidia.com/gpu: "1"}}
EOF
k rollout status deployment/gpu-load --timeout=120s >&2

echo "### RSS after a 16-pod GPU Deployment became Ready (MiB)"
echo
echo "| process | RSS MiB |"
echo "|---|---|"
rss_table
