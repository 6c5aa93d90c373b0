#!/usr/bin/env bash
# Build the product's images from the repository's Dockerfiles without a Docker daemon or a
# registry (buildah), and load them into the real node's containerd.
#
# Usage: hack/images.sh build            build what is missing or changed (no node needed)
#        hack/images.sh load SOCKET      build, then import into the containerd at SOCKET
#        hack/images.sh list             print NAME KEY SIZE of each image
#
# The images (names as the chart and the operator default to them, so nothing needs overriding):
#   registry.example.com/duotone-operator:<appVersion>      operator/Dockerfile
#   registry.example.com/duotone-router:<appVersion>        router/Dockerfile
#   registry.example.com/duotone-runtime:<appVersion>-cpu   runtime/Dockerfile on the CPU base
#   localhost/duotone-pause:1                               the node's pod sandbox (hack/node/pause.go)
# Their base is bootstrapped here from Debian packages (mmdebstrap), because no image registry can
# be reached: Debian bookworm with Python 3.11, tagged as the `python:3.11-slim` the operator and
# router Dockerfiles start FROM. The runtime's CPU base (its TRITON_IMAGE build argument; on GPU
# nodes the same Dockerfile builds on NVIDIA's Triton container) is that base plus the venv
# /opt/duotone holding the runtime's third-party dependencies (torch, diffusers, nvidia-pytriton,
# whose tritonserver runs on CPU), so a change to Duotone's code rebuilds and reloads one small
# layer, not 6 GB.
#
# Each image carries the label duotone.io/content-key: a hash of its Dockerfile, build arguments,
# base and every file it copies (tracked or untracked, not ignored). An image whose key is
# unchanged is neither rebuilt nor re-imported. buildah's storage lives in the cache
# (DUOTONE_IMAGE_CACHE, default ~/.cache/duotone/images), so `make clean` keeps it.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "${REPO_ROOT}/hack/versions.env"
CACHE="${DUOTONE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/duotone/images}"
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${REPO_ROOT}/charts/duotone/Chart.yaml")
REGISTRY=registry.example.com
BASE_IMAGE="localhost/duotone-base:${DEBIAN_SUITE}"
BASE_ALIAS="docker.io/library/python:3.11-slim"
PAUSE_IMAGE=localhost/duotone-pause:1
RUNTIME_BASE=localhost/duotone-runtime-base:cpu
KEY_LABEL=duotone.io/content-key

log() { echo "[images] $*" >&2; }
die() { echo "[images] ERROR: $*" >&2; exit 1; }
fmt_duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

bah() { buildah --root "${CACHE}/storage" --runroot "${CACHE}/run" --storage-driver overlay "$@"; }

# name|dockerfile|context folders|build args
images() {
  echo "${REGISTRY}/duotone-operator:${APP_VERSION}|operator/Dockerfile|contracts operator|"
  echo "${REGISTRY}/duotone-router:${APP_VERSION}|router/Dockerfile|contracts router|"
  echo "${REGISTRY}/duotone-runtime:${APP_VERSION}-cpu|runtime/Dockerfile|contracts runtime|TRITON_IMAGE=${RUNTIME_BASE}"
}

# The Debian packages of the base: Python 3.11 with pip and venv, the shared libpython the
# Triton Python backend's stub links to, and the CA bundle.
BASE_PACKAGES=python3,python3-pip,python3-venv,python-is-python3,libpython3.11,libstdc++6,ca-certificates

base_key() { printf '%s\n' "$DEBIAN_SUITE" "$BASE_PACKAGES" "v1" | sha256sum | cut -c1-16; }

# The third-party requirements of the runtime and the contracts, one per line (their pyproject's
# dependencies, without Duotone's own distributions).
runtime_requirements() {
  python3 - "${REPO_ROOT}/contracts/pyproject.toml" "${REPO_ROOT}/runtime/pyproject.toml" <<'EOF'
import sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        for requirement in tomllib.load(f)["project"]["dependencies"]:
            if not requirement.startswith("duotone-"):
                print(requirement)
EOF
}

runtime_base_key() { { base_key; runtime_requirements; echo v2; } | sha256sum | cut -c1-16; }

build_runtime_base() {
  local key ctr start
  key=$(runtime_base_key)
  [[ "$(stored_key "$RUNTIME_BASE")" == "$key" ]] && return
  log "${RUNTIME_BASE}: the runtime's dependencies in /opt/duotone (pip; 6 GB, several minutes)"
  start=$(date +%s)
  mapfile -t requirements < <(runtime_requirements)
  ctr=$(bah from --pull-never "$BASE_IMAGE")
  bah run --isolation chroot --network host "${MOUNTS[@]}" "$ctr" -- sh -c '
    python3 -m venv /opt/duotone &&
    PIP_NO_CACHE_DIR=1 /opt/duotone/bin/pip install --quiet --disable-pip-version-check --upgrade pip &&
    PIP_NO_CACHE_DIR=1 /opt/duotone/bin/pip install --quiet --disable-pip-version-check "$@"' \
    sh "${requirements[@]}" >&2
  bah config --label "${KEY_LABEL}=${key}" "$ctr"
  bah commit --quiet --rm "$ctr" "$RUNTIME_BASE" >/dev/null
  log "${RUNTIME_BASE}: built in $(fmt_duration $(( $(date +%s) - start )))"
}

image_key() { # dockerfile folders args
  local dockerfile=$1 folders=$2 args=$3
  {
    echo "$args"; base_key; runtime_base_key
    cat "${REPO_ROOT}/${dockerfile}" "${REPO_ROOT}/.dockerignore"
    # shellcheck disable=SC2086
    (cd "$REPO_ROOT" && git ls-files -co --exclude-standard -- $folders | LC_ALL=C sort \
      | while read -r f; do if [[ -f "$f" ]]; then echo "$f"; sha256sum <"$f"; fi; done)
  } | sha256sum | cut -c1-16
}

stored_key() { bah inspect --type image --format "{{index .ImageAnnotations \"${KEY_LABEL}\"}}{{index .OCIv1.Config.Labels \"${KEY_LABEL}\"}}" "$1" 2>/dev/null || true; }

build_base() {
  local key ctr start tar
  key=$(base_key)
  if [[ "$(stored_key "$BASE_IMAGE")" == "$key" ]]; then
    return
  fi
  start=$(date +%s)
  mkdir -p "$CACHE"
  tar="${CACHE}/base-${key}.tar"
  log "base: Debian ${DEBIAN_SUITE} minbase with ${BASE_PACKAGES} (mmdebstrap, about a minute)"
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$DEBIAN_SUITE" "$tar" "$DEBIAN_MIRROR" >&2
  ctr=$(bah from scratch)
  bah add "$ctr" "$tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label "${KEY_LABEL}=${key}" "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  bah tag "$BASE_IMAGE" "$BASE_ALIAS"
  rm -f "$tar"
  log "base: built in $(fmt_duration $(( $(date +%s) - start )))"
}

build_pause() {
  local key ctr work
  key=$(sha256sum <"${REPO_ROOT}/hack/node/pause.go" | cut -c1-16)
  [[ "$(stored_key "$PAUSE_IMAGE")" == "$key" ]] && return
  log "${PAUSE_IMAGE}: building hack/node/pause.go"
  work=$(mktemp -d)
  (cd "$work" && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w" -o pause \
    "${REPO_ROOT}/hack/node/pause.go")
  ctr=$(bah from scratch)
  bah add --chmod 0755 "$ctr" "$work/pause" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --user 65535:65535 --label "${KEY_LABEL}=${key}" "$ctr"
  bah commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$work"
}

build_one() { # name dockerfile folders args
  local name=$1 dockerfile=$2 folders=$3 args=$4 key start flags=()
  key=$(image_key "$dockerfile" "$folders" "$args")
  if [[ "$(stored_key "$name")" == "$key" ]]; then
    log "${name}: up to date (${key})"
    return
  fi
  [[ -z "$args" ]] || flags+=(--build-arg "$args")
  log "${name}: building ${dockerfile} (${key})"
  start=$(date +%s)
  local build_log="${CACHE}/build.log"
  if ! (cd "$REPO_ROOT" && bah bud --quiet --layers --isolation chroot --pull-never --network host \
    "${MOUNTS[@]}" "${flags[@]}" --label "${KEY_LABEL}=${key}" -f "$dockerfile" -t "$name" .) \
    >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "${name}: the build failed (full log: ${build_log})"
  fi
  log "${name}: built in $(fmt_duration $(( $(date +%s) - start )))"
}

build_all() {
  # One build at a time per cache; whoever waited finds the other's images up to date.
  mkdir -p "$CACHE"
  exec 8>"${CACHE}/.build.lock"
  flock -n 8 || { log "another image build is running; waiting for it"; flock 8; }
  command -v buildah >/dev/null && command -v mmdebstrap >/dev/null ||
    die "buildah and mmdebstrap are needed (hack/install-tools.sh --node installs them)"
  # Builds reach PyPI through the host's network and trust store (and pip settings, if any).
  MOUNTS=()
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
    MOUNTS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  [[ -f /etc/pip.conf ]] && MOUNTS+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  build_base
  build_pause
  build_runtime_base
  local name dockerfile folders args
  while IFS='|' read -r name dockerfile folders args; do
    build_one "$name" "$dockerfile" "$folders" "$args"
  done < <(images)
  # Layers no tag points at any more (older builds).
  bah rmi --prune >/dev/null 2>&1 || true
}

load_all() { # socket
  local socket=$1 name dockerfile folders args key loaded start ctr_bin
  ctr_bin=$(sed -n 's/^DUOTONE_CTR=//p' < <("${REPO_ROOT}/hack/build-binaries.sh" --node --check))
  ctrc() { "$ctr_bin" --address "$socket" --namespace k8s.io "$@"; }
  while IFS='|' read -r name dockerfile folders args; do
    key=$(stored_key "$name")
    loaded=$(ctrc images ls "name==${name}" 2>/dev/null | sed -n "s|.*${KEY_LABEL}=\([0-9a-f]*\).*|\1|p")
    if [[ "$loaded" == "$key" ]]; then
      log "${name}: already in the node's containerd"
      continue
    fi
    start=$(date +%s)
    # Streamed, no archive on disk; containerd skips the layers it already holds.
    bah push --quiet "$name" "docker-archive:/dev/stdout:${name}" | ctrc images import - >/dev/null
    ctrc images label "$name" "${KEY_LABEL}=${key}" >/dev/null
    log "${name}: loaded into the node in $(fmt_duration $(( $(date +%s) - start )))"
  done < <(images; echo "${PAUSE_IMAGE}|||")
}

list_all() {
  local name dockerfile folders args
  while IFS='|' read -r name dockerfile folders args; do
    printf '%s %s %s\n' "$name" "$(stored_key "$name")" \
      "$(bah images --format '{{.Size}}' "$name" 2>/dev/null | head -1)"
  done < <(images)
}

case "${1:-}" in
  build) build_all ;;
  load) [[ -n "${2:-}" ]] || die "usage: hack/images.sh load SOCKET"; build_all; load_all "$2" ;;
  list) list_all ;;
  *) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
