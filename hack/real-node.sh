#!/usr/bin/env bash
# The test bed's real node: one kubelet backed by containerd + runc + CNI on this machine, joined
# to the local control plane of hack/cluster-up.sh (which calls this script with --real-node).
#
# Usage: hack/real-node.sh up CLUSTER_DIR      start it (idempotent), load the images
#        hack/real-node.sh down CLUSTER_DIR    stop it and undo every change it made to the host
#        hack/real-node.sh check [--node]      exit 1, naming each leftover, if any test-bed state
#                                              (process of the node or the control plane, mount,
#                                              bridge, iptables chain, cgroup, sysctl) is still
#                                              on the host (--node: the node's state only)
#
# What it changes on the host, all undone by `down`:
#   - a bridge duotone0 with 10.213.0.1/24, the pod network (CNI bridge + host-local + portmap);
#     pods get addresses in it that exist only on this machine;
#   - net.ipv4.ip_forward=1 (Service traffic between pods is forwarded through the host);
#   - iptables: kube-proxy's KUBE-* chains and the chain DUOTONE-GUARD, which drops anything
#     for the pod network, the API server or the kubelet that does not come from loopback or
#     the bridge, so nothing of the test bed is reachable from outside this machine;
#   - processes (containerd, kubelet, kube-proxy, the pods' shims), their mounts and the
#     kubepods cgroups. State lives in CLUSTER_DIR/node and /run/duotone-node; containerd's
#     image store is kept in the cache (~/.cache/duotone/containerd) so images load once.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/duotone"
NODE_NAME=duotone-node-0
BRIDGE=duotone0
GATEWAY=10.213.0.1
SUBNET=10.213.0.0/24
RUN_DIR=/run/duotone-node
SOCKET="${RUN_DIR}/containerd/containerd.sock"
CONTAINERD_ROOT="${DUOTONE_CONTAINERD_ROOT:-${CACHE_ROOT}/containerd}"
GUARD=DUOTONE-GUARD
SYSCTL_FILE="${RUN_DIR}.sysctl"

log() { echo "[real-node] $*" >&2; }
die() { echo "[real-node] ERROR: $*" >&2; exit 1; }

need_root() { [[ $(id -u) -eq 0 ]] || die "the real node needs root (kubelet, containerd, network)"; }

start_daemon() { # name logfile command...
  local name=$1 logfile=$2
  shift 2
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"${NODE_DIR}/pids/${name}.pid"
}

running() { # name
  local pidfile="${NODE_DIR}/pids/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_until() { # seconds description command...
  local seconds=$1 what=$2 i
  shift 2
  for i in $(seq $((seconds * 4))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  die "timed out after ${seconds}s waiting for ${what}"
}

sign_cert() { # name subject [ext]
  local name=$1 subject=$2 ext=${3:-}
  [[ -f "${PKI}/${name}.crt" ]] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "${PKI}/${name}.key" -subj "$subject" \
    -out "${PKI}/${name}.csr" 2>/dev/null
  if [[ -n "$ext" ]]; then
    openssl x509 -req -in "${PKI}/${name}.csr" -CA "${KWOK_PKI}/ca.crt" -CAkey "${KWOK_PKI}/ca.key" \
      -CAcreateserial -days 30 -out "${PKI}/${name}.crt" -extfile <(echo "$ext") 2>/dev/null
  else
    openssl x509 -req -in "${PKI}/${name}.csr" -CA "${KWOK_PKI}/ca.crt" -CAkey "${KWOK_PKI}/ca.key" \
      -CAcreateserial -days 30 -out "${PKI}/${name}.crt" 2>/dev/null
  fi
}

kubeconfig_for() { # name -> path
  local file="${NODE_DIR}/$1.kubeconfig"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "${SERVER}", certificate-authority: "${KWOK_PKI}/ca.crt"}
users:
- name: $1
  user: {client-certificate: "${PKI}/$1.crt", client-key: "${PKI}/$1.key"}
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
EOF
  echo "$file"
}

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "bridge ${BRIDGE} ${GATEWAY}/24"
    ip link add "$BRIDGE" type bridge
    ip addr add "${GATEWAY}/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  if [[ ! -f "$SYSCTL_FILE" ]]; then
    sysctl -n net.ipv4.ip_forward >"$SYSCTL_FILE"
  fi
  sysctl -qw net.ipv4.ip_forward=1
  if ! iptables -w -n -L "$GUARD" >/dev/null 2>&1; then
    iptables -w -N "$GUARD"
    iptables -w -A "$GUARD" -i lo -j RETURN
    iptables -w -A "$GUARD" -i "$BRIDGE" -j RETURN
    iptables -w -A "$GUARD" -d "$SUBNET" -j DROP
    iptables -w -A "$GUARD" -p tcp --dport "$API_PORT" -j DROP
    iptables -w -A "$GUARD" -p tcp --dport 10250 -j DROP
    iptables -w -I INPUT 1 -j "$GUARD"
    iptables -w -I FORWARD 1 -j "$GUARD"
  fi
}

write_configs() {
  mkdir -p "${NODE_DIR}/cni" "${NODE_DIR}/pids" "${NODE_DIR}/logs" "$PKI" "$CONTAINERD_ROOT" \
    "${RUN_DIR}/containerd"
  cat >"${NODE_DIR}/cni/10-duotone.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "duotone",
  "plugins": [
    {"type": "bridge", "bridge": "${BRIDGE}", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "${RUN_DIR}/ipam",
              "ranges": [[{"subnet": "${SUBNET}", "rangeStart": "10.213.0.10",
                           "rangeEnd": "10.213.0.250", "gateway": "${GATEWAY}"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"${NODE_DIR}/containerd.toml" <<EOF
version = 3
root = "${CONTAINERD_ROOT}"
state = "${RUN_DIR}/containerd"
[grpc]
  address = "${SOCKET}"
[ttrpc]
  address = "${SOCKET}.ttrpc"
[plugins.'io.containerd.cri.v1.runtime']
  # These machines cannot lower oom_score_adj (no CAP_SYS_RESOURCE): runc would fail every
  # sandbox. Every container gets the node's oom_score_adj instead.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["${CNI_BIN_DIR}"]
    conf_dir = "${NODE_DIR}/cni"
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/duotone-pause:1"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
  cat >"${NODE_DIR}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${GATEWAY}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "${KWOK_PKI}/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://${SOCKET}
imageServiceEndpoint: unix://${SOCKET}
runtimeRequestTimeout: 10m
serializeImagePulls: false
syncFrequency: 10s
maxPods: 40
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
resolvConf: /etc/resolv.conf
EOF
}

up() {
  need_root
  local cluster_dir=$1 kubeconfig ctr_pid
  NODE_DIR="${cluster_dir}/node"
  PKI="${NODE_DIR}/pki"
  KWOK_PKI=$(ls -d "${cluster_dir}"/kwok/clusters/*/pki | head -1)
  kubeconfig="${cluster_dir}/kubeconfig"
  SERVER=$(sed -n 's/^ *server: *//p' "$kubeconfig" | head -1)
  API_PORT=${SERVER##*:}
  local binaries
  binaries=$("${REPO_ROOT}/hack/build-binaries.sh" --node)
  eval "$binaries"
  CNI_BIN_DIR=/usr/lib/cni
  [[ -x "${CNI_BIN_DIR}/bridge" ]] || die "CNI plugins missing in ${CNI_BIN_DIR} (hack/install-tools.sh --node)"
  command -v runc >/dev/null || die "runc missing (hack/install-tools.sh --node)"
  if ! running containerd && [[ -S "$SOCKET" ]] && ! [[ -d "${NODE_DIR}/pids" ]]; then
    die "another real node is running on this machine (${SOCKET}); one at a time: stop it with its hack/cluster-down.sh"
  fi

  write_configs
  # What tools outside this script need to know of the node (testbed/duotone_testbed/cluster.py).
  printf 'NODE_NAME=%s\nCONTAINERD_SOCKET=%s\nNODE_IP=%s\n' "$NODE_NAME" "$SOCKET" "$GATEWAY" \
    >"${NODE_DIR}/node.env"
  network_up
  sign_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}"
  sign_cert kube-proxy "/CN=system:kube-proxy"

  local shim_dir
  shim_dir=$(dirname "$DUOTONE_CONTAINERD_SHIM_RUNC_V2")
  if ! running containerd; then
    log "containerd (${SOCKET}; images in ${CONTAINERD_ROOT})"
    start_daemon containerd "${NODE_DIR}/logs/containerd.log" \
      env PATH="${shim_dir}:${PATH}" "$DUOTONE_CONTAINERD" --config "${NODE_DIR}/containerd.toml"
  fi
  wait_until 30 "containerd" "$DUOTONE_CTR" --address "$SOCKET" version

  log "images (hack/images.sh load)"
  "${REPO_ROOT}/hack/images.sh" load "$SOCKET"

  if ! running kubelet; then
    log "kubelet (node ${NODE_NAME}, ${GATEWAY})"
    start_daemon kubelet "${NODE_DIR}/logs/kubelet.log" \
      env PATH="${shim_dir}:${PATH}" "$DUOTONE_KUBELET" --config "${NODE_DIR}/kubelet.yaml" \
      --kubeconfig "$(kubeconfig_for kubelet)" --root-dir "${NODE_DIR}/kubelet" \
      --cert-dir "${NODE_DIR}/kubelet/pki" --node-ip "$GATEWAY" --hostname-override "$NODE_NAME" \
      --node-labels "duotone.io/real-node=true,type=real" -v 1
  fi
  if ! running kube-proxy; then
    log "kube-proxy (iptables; NodePorts only on ${GATEWAY})"
    start_daemon kube-proxy "${NODE_DIR}/logs/kube-proxy.log" \
      "$DUOTONE_KUBE_PROXY" --kubeconfig "$(kubeconfig_for kube-proxy)" --proxy-mode iptables \
      --hostname-override "$NODE_NAME" --cluster-cidr "$SUBNET" --masquerade-all \
      --nodeport-addresses "${GATEWAY}/32" --bind-address 127.0.0.1 \
      --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
      --conntrack-max-per-core 0 -v 1
  fi
  wait_until 60 "kube-proxy's Service rules (log: ${NODE_DIR}/logs/kube-proxy.log)" \
    iptables -w -t nat -n -L KUBE-SERVICES
  wait_until 120 "node ${NODE_NAME} Ready" \
    "$DUOTONE_KUBECTL" --kubeconfig "$kubeconfig" wait --for=condition=Ready "node/${NODE_NAME}" --timeout=2s
  log "node ${NODE_NAME} is Ready"
}

# Every process whose executable is one of the node's binaries or that runs in a kubepods cgroup.
node_pids() {
  local pid exe
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    exe=$(readlink "/proc/${pid}/exe" 2>/dev/null) || continue
    case "$exe" in
      */node-k8s-*/*) echo "$pid" ;;
      *)
        grep -q ':/kubepods' "/proc/${pid}/cgroup" 2>/dev/null && echo "$pid"
        ;;
    esac
  done
}

node_mounts() { # mount points of the test bed, deepest first
  awk '{print $5}' /proc/self/mountinfo |
    grep -E "^(${RUN_DIR}|${CONTAINERD_ROOT}|.*/node/kubelet)(/|$)" | awk '{print length, $0}' |
    sort -rn | cut -d' ' -f2- || true
}

kubepods_cgroups() {
  find /sys/fs/cgroup -maxdepth 2 -type d -name kubepods 2>/dev/null || true
}

CHAINS='KUBE-[A-Z0-9-]*\|CNI-[A-Za-z0-9-]*'

test_bed_chains() { # tool table
  "$1" -w -t "$2" -S 2>/dev/null | sed -n "s/^-N \(${CHAINS}\|${GUARD}\)$/\1/p" || true
}

remove_chains() { # tool table: every rule that jumps to a test-bed chain, then the chains
  local tool=$1 table=$2 chains rule c
  chains=$(test_bed_chains "$tool" "$table" | grep -v "^${GUARD}$" | xargs) || true
  [[ -n "$chains" ]] || return 0
  while read -r rule; do
    [[ -n "$rule" ]] || continue
    eval "$tool -w -t $table -D ${rule#-A }" 2>/dev/null || true
  done < <("$tool" -w -t "$table" -S | grep -E -- "-j (${chains// /|})( |$)" || true)
  for c in $chains; do "$tool" -w -t "$table" -F "$c" 2>/dev/null || true; done
  for c in $chains; do "$tool" -w -t "$table" -X "$c" 2>/dev/null || true; done
}

down() {
  need_root
  local cluster_dir=$1 pid i m c
  NODE_DIR="${cluster_dir}/node"
  # kubelet first (it would restart pods), then containers, then the rest.
  for name in kubelet kube-proxy; do
    if running "$name"; then
      log "stopping ${name}"
      kill "$(cat "${NODE_DIR}/pids/${name}.pid")" 2>/dev/null || true
    fi
  done
  local kube_proxy
  kube_proxy=$("${REPO_ROOT}/hack/build-binaries.sh" --node --check 2>/dev/null | sed -n 's/^DUOTONE_KUBE_PROXY=//p') || true
  # Containers and their shims: every process in a kubepods cgroup, then the shims.
  for i in 1 2; do
    mapfile -t pids < <(node_pids)
    [[ ${#pids[@]} -eq 0 ]] && break
    kill -9 "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 40); do
      mapfile -t pids < <(node_pids)
      [[ ${#pids[@]} -eq 0 ]] && break
      sleep 0.25
    done
  done
  mapfile -t pids < <(node_pids)
  [[ ${#pids[@]} -eq 0 ]] || log "processes still running: ${pids[*]}"
  while read -r m; do
    [[ -n "$m" ]] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount ${m}"; }
  done < <(node_mounts)
  for c in $(kubepods_cgroups); do
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [[ -n "$kube_proxy" && -x "$kube_proxy" ]]; then
    "$kube_proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # kube-proxy --cleanup leaves the chains the kubelet made (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
  # KUBE-IPTABLES-HINT), in IPv6 too, and the CNI plugins' CNI-* chains.
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      remove_chains "$tool" "$table"
    done
  done
  if iptables -w -n -L "$GUARD" >/dev/null 2>&1; then
    iptables -w -D INPUT -j "$GUARD" 2>/dev/null || true
    iptables -w -D FORWARD -j "$GUARD" 2>/dev/null || true
    iptables -w -F "$GUARD" && iptables -w -X "$GUARD"
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -f "$SYSCTL_FILE" ]]; then
    sysctl -qw "net.ipv4.ip_forward=$(cat "$SYSCTL_FILE")"
    rm -f "$SYSCTL_FILE"
  fi
  rm -rf "$RUN_DIR" "${NODE_DIR}"
  # The kubelet creates these outside its root dir whatever --root-dir says.
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources /var/lib/kubelet 2>/dev/null || true
  log "node stopped; host state removed"
}

# The control plane's processes (kwokctl runs them from copies in each cluster's bin/).
control_plane_pids() {
  local pid exe
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    exe=$(readlink "/proc/${pid}/exe" 2>/dev/null) || continue
    case "$exe" in */kwok/clusters/*/bin/* | */k8s-*_etcd-*_kwok-*/*) echo "$pid" ;; esac
  done
}

check() { # [--node]: the node's state only (another control plane may be running legitimately)
  local leftovers=() pids
  if [[ "${1:-}" == --node ]]; then
    mapfile -t pids < <(node_pids)
  else
    mapfile -t pids < <(node_pids; control_plane_pids)
  fi
  [[ ${#pids[@]} -eq 0 ]] || leftovers+=("processes: ${pids[*]}")
  [[ -z "$(node_mounts)" ]] || leftovers+=("mounts: $(node_mounts | xargs)")
  ip link show "$BRIDGE" >/dev/null 2>&1 && leftovers+=("bridge ${BRIDGE}")
  local chains
  chains=$(for tool in iptables ip6tables; do
    for t in filter nat mangle; do test_bed_chains "$tool" "$t"; done
  done | xargs)
  [[ -z "$chains" ]] || leftovers+=("iptables chains: ${chains}")
  [[ -z "$(kubepods_cgroups)" ]] || leftovers+=("cgroups: $(kubepods_cgroups | xargs)")
  [[ -e "$RUN_DIR" ]] && leftovers+=("state: ${RUN_DIR}")
  [[ -f "$SYSCTL_FILE" ]] && leftovers+=("sysctl net.ipv4.ip_forward not restored")
  if [[ ${#leftovers[@]} -gt 0 ]]; then
    printf '[real-node] left behind: %s\n' "${leftovers[@]}" >&2
    return 1
  fi
  log "no test-bed state on the host"
}

case "${1:-}" in
  up) [[ -n "${2:-}" ]] || die "usage: $0 up CLUSTER_DIR"; up "$(cd "$2" && pwd)" ;;
  down) [[ -n "${2:-}" ]] || die "usage: $0 down CLUSTER_DIR"; down "$(cd "$2" && pwd)" ;;
  check) check "${2:-}" ;;
  *) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
