#!/usr/bin/env bash
# Build (or reuse) the binaries of the local control plane, pinned in hack/versions.env.
#
# Usage: hack/build-binaries.sh [--node] [--check]
#   --node    also the real node's binaries: kubelet, kube-proxy (same Kubernetes version) and
#             containerd, its runc shim and ctr (CONTAINERD_VERSION), in their own cache folder,
#             and the NetworkPolicy enforcer kube-router (KUBE_ROUTER_VERSION) in another.
#   --check   build nothing; exit 1 with a message if a binary is missing.
#
# stdout: one KEY=VALUE line per binary (DUOTONE_KUBE_APISERVER=/abs/path, ...), so callers can
#         `eval "$(hack/build-binaries.sh)"`; progress and errors go to stderr.
#
# Where each binary comes from, first match wins:
#   1. an explicit override: DUOTONE_KUBE_APISERVER, DUOTONE_KUBE_CONTROLLER_MANAGER,
#      DUOTONE_KUBE_SCHEDULER, DUOTONE_KUBECTL, DUOTONE_ETCD, DUOTONE_KWOK, DUOTONE_KWOKCTL,
#      DUOTONE_KUBELET, DUOTONE_KUBE_PROXY, DUOTONE_CONTAINERD, DUOTONE_CONTAINERD_SHIM_RUNC_V2,
#      DUOTONE_CTR, DUOTONE_KUBE_ROUTER;
#   2. "$KUBEBUILDER_ASSETS/<name>" (envtest assets hold kube-apiserver, etcd and kubectl);
#   3. the cache "${DUOTONE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/duotone/bin}/k8s-<v>_etcd-<v>_kwok-<v>/"
#      (the node's binaries: ".../node-k8s-<v>_containerd-<v>/", kube-router: ".../kube-router-<v>/");
#   4. otherwise the group it belongs to (kubernetes, etcd, kwok, node, kube-router) is built
#      into the cache.
# kubectl alone may also come from PATH when the kubernetes group needs no build.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "${REPO_ROOT}/hack/versions.env"

CHECK_ONLY=false
WITH_NODE=false
BUILD_WORK=""
for arg in "$@"; do
  case "$arg" in
    --check) CHECK_ONLY=true ;;
    --node) WITH_NODE=true ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-binaries: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

CACHE_ROOT="${DUOTONE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/duotone/bin}"
BIN_DIR="${CACHE_ROOT}/k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
NODE_BIN_DIR="${CACHE_ROOT}/node-k8s-${KUBE_VERSION}_containerd-${CONTAINERD_VERSION}"
# A folder of its own, so a new enforcer version does not rebuild kubelet and containerd.
NETPOL_BIN_DIR="${CACHE_ROOT}/kube-router-${KUBE_ROUTER_VERSION}"

KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ETCD_BINARIES=(etcd)
KWOK_BINARIES=(kwok kwokctl)
NODE_KUBE_BINARIES=(kubelet kube-proxy)
NODE_CONTAINERD_BINARIES=(containerd containerd-shim-runc-v2 ctr)
NODE_NETPOL_BINARIES=(kube-router)
ALL_BINARIES=("${KUBE_BINARIES[@]}" "${ETCD_BINARIES[@]}" "${KWOK_BINARIES[@]}")
if $WITH_NODE; then
  ALL_BINARIES+=("${NODE_KUBE_BINARIES[@]}" "${NODE_CONTAINERD_BINARIES[@]}" "${NODE_NETPOL_BINARIES[@]}")
fi

log() { echo "[build-binaries] $*" >&2; }
die() { echo "[build-binaries] ERROR: $*" >&2; exit 1; }

# DUOTONE_KUBE_APISERVER for kube-apiserver, and so on.
override_var() { local n="${1//-/_}"; echo "DUOTONE_${n^^}"; }

is_node_binary() { [[ " ${NODE_KUBE_BINARIES[*]} ${NODE_CONTAINERD_BINARIES[*]} " == *" $1 "* ]]; }

# Print where a binary comes from, or nothing if it has to be built.
resolve() {
  local name=$1 var path dir=$BIN_DIR
  is_node_binary "$name" && dir=$NODE_BIN_DIR
  [[ " ${NODE_NETPOL_BINARIES[*]} " == *" $name "* ]] && dir=$NETPOL_BIN_DIR
  var=$(override_var "$name")
  if [[ -n "${!var:-}" ]]; then
    echo "${!var}"; return
  fi
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/${name}" ]]; then
    echo "${KUBEBUILDER_ASSETS}/${name}"; return
  fi
  if [[ -x "${dir}/${name}" ]]; then
    echo "${dir}/${name}"; return
  fi
}

group_missing() {
  local name
  for name in "$@"; do
    [[ -n "$(resolve "$name")" ]] || { echo "$name"; }
  done
}

fmt_duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# Run a build command in the background, print a heartbeat every 30 s with the number of
# packages compiled so far (go -v prints one line per package), and fail with the log tail.
run_with_progress() {
  local label=$1 logfile=$2; shift 2
  local start pid rc=0
  start=$(date +%s)
  "$@" >"$logfile" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    # Wake up every second so a fast build is not held back; report every 30 s.
    for _ in $(seq 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "  ${label}: $(wc -l <"$logfile") packages so far, $(fmt_duration $(( $(date +%s) - start ))) elapsed"
    fi
  done
  wait "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    tail -n 40 "$logfile" >&2
    die "${label} failed (exit ${rc}); full log: ${logfile}"
  fi
  log "  ${label}: done in $(fmt_duration $(( $(date +%s) - start )))"
}

# The value of a `go` directive and the key=value pairs of `godebug` directives in a go.mod.
gomod_go() { sed -n 's/^go \([0-9.]*\)$/\1/p' "$1"; }
gomod_godebug() {
  awk '/^godebug \(/{b=1;next} b&&/^\)/{b=0} b{print $1} /^godebug [^(]/{print $2}' "$1"
}

gomod_of() { # module@version -> path of its downloaded go.mod
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'
}

# Start a wrapper module that copies the go/godebug lines of the module it wraps, so the
# binaries get the same GODEBUG defaults as upstream's own build.
init_wrapper() {
  local dir=$1 name=$2 upstream_mod=$3 kv
  mkdir -p "$dir"
  (cd "$dir" && go mod init "$name" >/dev/null 2>&1 && go mod edit -go="$(gomod_go "$upstream_mod")")
  for kv in $(gomod_godebug "$upstream_mod"); do
    (cd "$dir" && go mod edit -godebug="$kv")
  done
}

# The wrapper module for k8s.io/kubernetes commands: its go/godebug lines, and every staging
# module that k8s.io/kubernetes requires at v0.0.0 (it replaces them with ./staging/..., which Go
# ignores in a dependency) pointed at its published tag. Sets KUBE_LDFLAGS.
prepare_kube_wrapper() {
  local dir=$1 v="v${KUBE_VERSION}" staging="v0.${KUBE_VERSION#1.}" minor upstream m k
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  log "kubernetes ${v}: preparing wrapper module (staging modules at ${staging})"
  upstream=$(gomod_of "k8s.io/kubernetes@${v}")
  [[ -n "$upstream" ]] || die "could not download k8s.io/kubernetes@${v} from the module proxy"
  init_wrapper "$dir" duotone.local/kube-binaries "$upstream"
  sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$upstream" | while read -r m; do
    if grep -qE "^[[:space:]]*${m//./\\.} v0\.0\.0" "$upstream"; then
      (cd "$dir" && go mod edit -replace="${m}=${m}@${staging}")
    fi
  done
  # The same version variables upstream's hack/lib/version.sh sets, so /version is right.
  KUBE_LDFLAGS=""
  for k in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    KUBE_LDFLAGS+=" -X ${k}.gitVersion=${v} -X ${k}.gitMajor=1 -X ${k}.gitMinor=${minor}"
    KUBE_LDFLAGS+=" -X ${k}.gitTreeState=clean -X ${k}.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
}

# build_kube_commands WORK OUT LABEL CMD...: k8s.io/kubernetes/cmd/<CMD> for each CMD into OUT.
build_kube_commands() {
  local work=$1 out=$2 label=$3 v="v${KUBE_VERSION}" c tools=() pkgs=()
  shift 3
  for c in "$@"; do
    tools+=("k8s.io/kubernetes/cmd/${c}@${v}")
    pkgs+=("k8s.io/kubernetes/cmd/${c}")
  done
  prepare_kube_wrapper "$work/$label"
  run_with_progress "resolve ${label} modules" "$work/${label}-get.log" \
    bash -c "cd '$work/$label' && go get -tool ${tools[*]}"
  log "kubernetes ${v}: compiling $* (slow the first time)"
  run_with_progress "compile ${label}" "$work/${label}-build.log" \
    bash -c "cd '$work/$label' && CGO_ENABLED=0 go build -v -trimpath -tags=selinux,notest \
      -ldflags 'all=${KUBE_LDFLAGS} -s -w' -o '$out/' ${pkgs[*]}"
}

build_kubernetes() {
  build_kube_commands "$1" "$2" kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl
}

# containerd, its runc v2 shim and ctr from containerd's Go module (no btrfs snapshotter: it
# needs cgo); runc itself and the CNI plugins come from Debian (hack/install-tools.sh --node).
build_containerd() {
  local work=$1 out=$2 v="v${CONTAINERD_VERSION}" m="github.com/containerd/containerd/v2/cmd"
  log "containerd ${v}: compiling containerd, containerd-shim-runc-v2, ctr"
  mkdir -p "$work"
  run_with_progress "compile containerd" "$work/containerd-build.log" \
    env GOBIN="$out" CGO_ENABLED=0 go install -v -trimpath -tags no_btrfs \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${v}" \
      "${m}/containerd@${v}" "${m}/containerd-shim-runc-v2@${v}" "${m}/ctr@${v}"
}

# kube-router from its Go module (no replace directives: a plain go install works). Only its
# network-policy controller runs on the node (hack/real-node.sh).
build_kube_router() {
  local work=$1 out=$2 v="v${KUBE_ROUTER_VERSION}" m="github.com/cloudnativelabs/kube-router/v2"
  log "kube-router ${v}: compiling"
  mkdir -p "$work"
  run_with_progress "compile kube-router" "$work/kube-router-build.log" \
    env GOBIN="$out" CGO_ENABLED=0 go install -v -trimpath \
      -ldflags "-s -w -X ${m}/pkg/version.Version=${v} -X ${m}/pkg/version.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      "${m}/cmd/kube-router@${v}"
}

build_etcd() {
  local work=$1 out=$2 v="v${ETCD_VERSION}" upstream
  log "etcd ${v}: preparing wrapper module"
  upstream=$(gomod_of "go.etcd.io/etcd/server/v3@${v}")
  [[ -n "$upstream" ]] || die "could not download go.etcd.io/etcd/server/v3@${v} from the module proxy"
  init_wrapper "$work/etcd" duotone.local/etcd-binary "$upstream"
  run_with_progress "resolve etcd modules" "$work/etcd-get.log" \
    bash -c "cd '$work/etcd' && go get -tool go.etcd.io/etcd/server/v3@${v}"
  log "etcd ${v}: compiling"
  run_with_progress "compile etcd" "$work/etcd-build.log" \
    bash -c "cd '$work/etcd' && CGO_ENABLED=0 go build -v -trimpath \
      -ldflags '-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${v}' -o '$out/etcd' go.etcd.io/etcd/server/v3"
}

build_kwok() {
  local work=$1 out=$2 v="v${KWOK_VERSION}"
  log "kwok ${v}: compiling kwok and kwokctl"
  mkdir -p "$work"
  run_with_progress "compile kwok" "$work/kwok-build.log" \
    env GOBIN="$out" CGO_ENABLED=0 go install -v -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kwok/cmd/kwok@${v}" "sigs.k8s.io/kwok/cmd/kwokctl@${v}"
}

# Sets missing_kube, missing_etcd and missing_kwok to the binaries each group lacks.
compute_missing() {
  missing_kube=$(group_missing kube-apiserver kube-controller-manager kube-scheduler)
  missing_etcd=$(group_missing "${ETCD_BINARIES[@]}")
  missing_kwok=$(group_missing "${KWOK_BINARIES[@]}")
  missing_node_kube="" missing_containerd="" missing_netpol=""
  if $WITH_NODE; then
    missing_node_kube=$(group_missing "${NODE_KUBE_BINARIES[@]}")
    missing_containerd=$(group_missing "${NODE_CONTAINERD_BINARIES[@]}")
    missing_netpol=$(group_missing "${NODE_NETPOL_BINARIES[@]}")
  fi
  # kubectl is built with the other kubernetes binaries, or taken from PATH when no build is needed.
  if [[ -z "$missing_kube" && -z "$(resolve kubectl)" ]] && ! command -v kubectl >/dev/null; then
    missing_kube=kubectl
  fi
}

main() {
  local missing_kube missing_etcd missing_kwok missing_node_kube missing_containerd missing_netpol
  local name path var
  # Checked here, not in resolve(): a die inside $(resolve ...) would only leave the subshell.
  for name in "${ALL_BINARIES[@]}"; do
    var=$(override_var "$name")
    if [[ -n "${!var:-}" && ! -x "${!var}" ]]; then
      die "$var=${!var} is not an executable file"
    fi
  done
  compute_missing

  if [[ -n "$missing_kube$missing_etcd$missing_kwok$missing_node_kube$missing_containerd$missing_netpol" ]] && ! $CHECK_ONLY && command -v flock >/dev/null; then
    # One build at a time per cache; whoever waited re-checks what the other one built.
    mkdir -p "$CACHE_ROOT"
    exec 9>"${CACHE_ROOT}/.build.lock"
    flock -n 9 || { log "another build is running; waiting for it"; flock 9; }
    compute_missing
  fi

  if [[ -n "$missing_kube$missing_etcd$missing_kwok$missing_node_kube$missing_containerd$missing_netpol" ]]; then
    if $CHECK_ONLY; then
      die "missing test-bed binaries: $(printf '%s\n' "$missing_kube" "$missing_etcd" "$missing_kwok" "$missing_node_kube" "$missing_containerd" "$missing_netpol" | xargs).
Run hack/build-binaries.sh (or 'make binaries') to build them into ${BIN_DIR}
(several minutes the first time), or point KUBEBUILDER_ASSETS / DUOTONE_<BINARY> at existing ones."
    fi
    command -v go >/dev/null || die "Go is needed to build the control-plane binaries (see docs/controlplane.md)"
    export GOTOOLCHAIN=local
    log "cache: ${BIN_DIR}"
    log "go: $(go version)"
    mkdir -p "$BIN_DIR"
    local work total_start
    total_start=$(date +%s)
    work=$(mktemp -d "${CACHE_ROOT}/.build.XXXXXX")
    BUILD_WORK=$work
    # Binaries land in $work/out and are renamed into the cache only when complete.
    trap 'rm -rf "${BUILD_WORK}"' EXIT
    mkdir -p "$work/out"
    [[ -z "$missing_etcd" ]] || build_etcd "$work" "$work/out"
    [[ -z "$missing_kwok" ]] || build_kwok "$work/kwok" "$work/out"
    [[ -z "$missing_kube" ]] || build_kubernetes "$work" "$work/out"
    for path in "$work"/out/*; do
      [[ -e "$path" ]] || continue
      mv -f "$path" "${BIN_DIR}/$(basename "$path")"
    done
    if [[ -n "$missing_node_kube$missing_containerd" ]]; then
      mkdir -p "$NODE_BIN_DIR" "$work/node-out"
      [[ -z "$missing_containerd" ]] || build_containerd "$work/containerd" "$work/node-out"
      [[ -z "$missing_node_kube" ]] || build_kube_commands "$work" "$work/node-out" node "${NODE_KUBE_BINARIES[@]}"
      for path in "$work"/node-out/*; do
        mv -f "$path" "${NODE_BIN_DIR}/$(basename "$path")"
      done
    fi
    if [[ -n "$missing_netpol" ]]; then
      mkdir -p "$NETPOL_BIN_DIR" "$work/netpol-out"
      build_kube_router "$work/kube-router" "$work/netpol-out"
      mv -f "$work/netpol-out/kube-router" "${NETPOL_BIN_DIR}/kube-router"
    fi
    log "all builds done in $(fmt_duration $(( $(date +%s) - total_start )))"
  else
    log "all binaries present; nothing to build (cache: ${BIN_DIR})"
  fi

  for name in "${ALL_BINARIES[@]}"; do
    path=$(resolve "$name")
    if [[ -z "$path" && "$name" == kubectl ]]; then path=$(command -v kubectl); fi
    [[ -n "$path" ]] || die "${name} is still missing after the build"
    var=$(override_var "$name")
    printf '%s=%q\n' "$var" "$path"
  done
  "$(resolve kube-apiserver)" --version >&2
}

main
