#!/usr/bin/env bash
# Install the test bed's tools if missing; idempotent, prints what it does.
#   - the real node's Debian packages: runc, the CNI plugins, iptables, ipset (the NetworkPolicy
#     enforcer's address sets), openssl, and buildah and mmdebstrap for the images (containerd,
#     kubelet, kube-proxy and kube-router are built by hack/build-binaries.sh --node);
#   - prometheus and promtool: Debian's prometheus package (real Prometheus in tests, rule tests);
#   - helm: built from its Go module (HELM_VERSION in hack/versions.env) into the binary cache;
#   - kube-score: built from its Go module (KUBE_SCORE_VERSION) into the binary cache, for the
#     manifest audit (hack/audit.py);
#   - prometheus-operator's CRDs: its Go module (PROMETHEUS_OPERATOR_VERSION) in the module cache.
#
# Usage: hack/install-tools.sh [--audit | --print-helm | --print-kube-score | --print-monitoring-crds]
#   --audit                  only helm and kube-score (what `make verify`'s audit needs; no root).
#   --print-helm             install nothing; print the helm binary's path (empty if not built yet).
#   --print-kube-score       the same for kube-score.
#   --print-monitoring-crds  print the folder holding prometheus-operator's CRD files.
# DUOTONE_HELM and DUOTONE_KUBE_SCORE override the binaries.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "${REPO_ROOT}/hack/versions.env"
CACHE_ROOT="${DUOTONE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/duotone/bin}"
HELM_BIN="${DUOTONE_HELM:-${CACHE_ROOT}/helm-${HELM_VERSION}/helm}"
KUBE_SCORE_BIN="${DUOTONE_KUBE_SCORE:-${CACHE_ROOT}/kube-score-${KUBE_SCORE_VERSION}/kube-score}"

case "${1:-}" in
  --print-helm) [[ -x "$HELM_BIN" ]] && echo "$HELM_BIN"; exit 0 ;;
  --print-kube-score) [[ -x "$KUBE_SCORE_BIN" ]] && echo "$KUBE_SCORE_BIN"; exit 0 ;;
  --print-monitoring-crds | --audit) ;;  # handled below, once the functions are defined
  "") ;;
  *) echo "install-tools: unknown argument '$1'" >&2; exit 2 ;;
esac

install_prometheus() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    echo "prometheus present: $(prometheus --version 2>&1 | head -1)"
    return
  fi
  if ! command -v apt-get >/dev/null; then
    echo "prometheus and promtool are needed; install them (Debian/Ubuntu package: prometheus)" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "==> installing Debian's prometheus package (prometheus, promtool)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  echo "prometheus installed: $(prometheus --version 2>&1 | head -1)"
}

NODE_PACKAGES=(runc containernetworking-plugins iptables ipset openssl buildah mmdebstrap)
NODE_COMMANDS=(runc /usr/lib/cni/bridge iptables ipset openssl buildah mmdebstrap)

install_node_packages() {
  local c missing=false
  for c in "${NODE_COMMANDS[@]}"; do
    command -v "$c" >/dev/null || [[ -x "$c" ]] || missing=true
  done
  if ! $missing; then
    echo "real-node packages present: ${NODE_PACKAGES[*]}"
    return
  fi
  command -v apt-get >/dev/null || {
    echo "the real node needs the Debian/Ubuntu packages: ${NODE_PACKAGES[*]}" >&2
    exit 1
  }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "==> installing Debian packages for the real node: ${NODE_PACKAGES[*]} (about 30 s)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${NODE_PACKAGES[@]}" >/dev/null
}

install_helm() {
  if [[ -x "$HELM_BIN" ]]; then
    echo "helm present: $HELM_BIN ($("$HELM_BIN" version --short 2>/dev/null))"
    return
  fi
  [[ -z "${DUOTONE_HELM:-}" ]] || { echo "DUOTONE_HELM=$DUOTONE_HELM is not executable" >&2; exit 1; }
  echo "==> building helm v${HELM_VERSION} from helm.sh/helm/v4 (about 2 minutes the first time)"
  local out
  out=$(dirname "$HELM_BIN")
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v${HELM_VERSION}" \
    "helm.sh/helm/v4/cmd/helm@v${HELM_VERSION}"
  echo "helm installed: $HELM_BIN"
}

install_kube_score() {
  if [[ -x "$KUBE_SCORE_BIN" ]]; then
    echo "kube-score present: $KUBE_SCORE_BIN"
    return
  fi
  [[ -z "${DUOTONE_KUBE_SCORE:-}" ]] || {
    echo "DUOTONE_KUBE_SCORE=$DUOTONE_KUBE_SCORE is not executable" >&2
    exit 1
  }
  echo "==> building kube-score v${KUBE_SCORE_VERSION} from github.com/zegl/kube-score (about 1 minute the first time)"
  local out
  out=$(dirname "$KUBE_SCORE_BIN")
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
    "github.com/zegl/kube-score/cmd/kube-score@v${KUBE_SCORE_VERSION}"
  echo "kube-score installed: $KUBE_SCORE_BIN"
}

# The folder of prometheus-operator's CRD files in the Go module cache (downloaded if missing).
monitoring_crds_dir() {
  local dir
  dir=$(cd /tmp && go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@v${PROMETHEUS_OPERATOR_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" ]] || {
    echo "could not download prometheus-operator v${PROMETHEUS_OPERATOR_VERSION} from the module proxy" >&2
    exit 1
  }
  echo "$dir/example/prometheus-operator-crd"
}

if [[ "${1:-}" == "--print-monitoring-crds" ]]; then
  monitoring_crds_dir
  exit 0
fi
if [[ "${1:-}" == "--audit" ]]; then
  install_helm
  install_kube_score
  exit 0
fi
install_prometheus
install_helm
install_kube_score
install_node_packages
echo "prometheus-operator CRDs present: $(monitoring_crds_dir)"
