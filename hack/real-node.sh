#!/usr/bin/env bash
# The test bed's real node: one kubelet backed by containerd + runc + CNI on this machine, joined
# to the local control plane of hack/cluster-up.sh (which calls this script with --real-node).
#
# Usage: hack/real-node.sh guard CLUSTER_DIR PORT  install the guard chains (cluster-up calls it
#                                              before the API server starts listening)
#        hack/real-node.sh unguard             remove them (after the API server has stopped)
#        hack/real-node.sh up CLUSTER_DIR      start the node (idempotent), load the images
#        hack/real-node.sh down CLUSTER_DIR    stop it and undo what it changed on the host
#        hack/real-node.sh check [--node]      exit 1, naming each leftover, if any test-bed state
#                                              (process of the node or the control plane, mount,
#                                              bridge, iptables chain, cgroup, kernel setting,
#                                              host path) is still on the host (--node: the
#                                              node's state only)
#
# What it changes on the host, all undone by `down` and `unguard`:
#   - a bridge duotone0 with 10.213.0.1/24, the pod network (CNI bridge + host-local + portmap);
#     pods get addresses in it that exist only on this machine;
#   - kernel settings: net.ipv4.ip_forward=1 (Service traffic between pods is forwarded through
#     the host), net.bridge.bridge-nf-call-iptables=1 (bridged pod traffic passes the policy
#     rules) and the six the kubelet sets at start; all saved first, restored by `down`;
#   - iptables and ip6tables: kube-proxy's, the kubelet's and kube-router's KUBE-* chains
#     (KUBE-ROUTER-INPUT/FORWARD/OUTPUT jumped to from the filter table's built-in chains,
#     KUBE-POD-FW-*, KUBE-NWPLCY-*), and kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, their
#     inet6: twins, TMP-* while it restores); DUOTONE-GUARD in the
#     raw table's PREROUTING, which drops anything for the pod network, the Service range, the
#     API server or the kubelet that does not arrive on loopback or the bridge, so nothing of
#     the test bed is reachable from outside this machine; DUOTONE-EGRESS in the mangle table's
#     FORWARD, which keeps pods' traffic on this machine;
#   - processes (containerd, kubelet, kube-proxy, kube-router, the pods' shims), their mounts,
#     the kubepods
#     cgroups, and host paths the kubelet and containerd create outside their folders (removed
#     when they did not exist before). State lives in CLUSTER_DIR/node and /run/duotone-node*;
#     containerd's image store is kept in the cache (~/.cache/duotone/containerd) so images
#     load once.
#
# NetworkPolicy: kube-router's network-policy controller alone (no routing, no service proxy)
# enforces the cluster's NetworkPolicies on the pod network, with iptables rules in FORWARD
# (bridged pod-to-pod traffic, which needs net.bridge.bridge-nf-call-iptables=1), INPUT and
# OUTPUT, and ipsets of pod addresses. It runs as its own identity (user duotone:kube-router,
# ClusterRole duotone:kube-router: read pods, namespaces, nodes, services, endpoints,
# EndpointSlices and NetworkPolicies).
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
EGRESS=DUOTONE-EGRESS
SERVICE_CIDR=10.96.0.0/16
# Kernel settings the node changes: ip_forward and bridge-nf-call-iptables (here: the policy
# enforcer filters bridged traffic), the kubelet's defaults (it sets them at start), saved before
# and restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Host paths the kubelet, containerd and its shims create outside their configured folders;
# those that did not exist before `up` are removed by `down` (the list of them is kept).
HOST_PATHS=(/run/containerd /opt/containerd /var/run/nri /var/log/pods /var/log/containers
  /var/lib/cni /var/lib/kubelet)
CREATED_FILE="${RUN_DIR}.created"
SYSCTL_FILE="${RUN_DIR}.sysctl"
OWNER_FILE="${RUN_DIR}.owner"

log() { echo "[real-node] $*" >&2; }
die() { echo "[real-node] ERROR: $*" >&2; exit 1; }

# One real node per machine (bridge, addresses, ports): the cluster folder that owns it.
claim() { # cluster_dir
  local owner
  owner=$(cat "$OWNER_FILE" 2>/dev/null || true)
  if [[ -n "$owner" && "$owner" != "$1" && -d "${owner}/node" ]]; then
    die "another real node runs on this machine (cluster folder ${owner}); one at a time: stop it with DUOTONE_CLUSTER_DIR=${owner} hack/cluster-down.sh"
  fi
  echo "$1" >"$OWNER_FILE"
}

need_root() { [[ $(id -u) -eq 0 ]] || die "the real node needs root (kubelet, containerd, network)"; }

start_daemon() { # name logfile command...
  local name=$1 logfile=$2
  shift 2
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"${NODE_DIR}/pids/${name}.pid"
}

running() { # name: its pid file names a live process running that program (not a reused pid)
  local pidfile="${NODE_DIR}/pids/$1.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid=$(cat "$pidfile")
  [[ "$(readlink "/proc/${pid}/exe" 2>/dev/null)" == */"$1" ]]
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

# DUOTONE-GUARD, in the raw table's PREROUTING (before kube-proxy's DNAT and its FORWARD
# accept), IPv4 and IPv6: what arrives on another interface than loopback or the bridge, for the
# pod network, the Service range, the API server's port or the kubelet's, is dropped.
# DUOTONE-EGRESS, in the mangle table's FORWARD: pods reach each other, Services and this host,
# nothing beyond it. Mangle, not filter: the filter table's FORWARD starts with kube-router's
# chain (it keeps its jump first), which ACCEPTs every pod packet its policies allow, so a rule
# after it would never see them; mangle's FORWARD runs before any filter rule.
# Rebuilt on every call (idempotent). cluster-up calls it before the API server listens.
guard_up() { # api_port
  local api_port=$1 tool
  for tool in iptables ip6tables; do
    "$tool" -w -t raw -n -L "$GUARD" >/dev/null 2>&1 || "$tool" -w -t raw -N "$GUARD"
    "$tool" -w -t raw -F "$GUARD"
    "$tool" -w -t raw -A "$GUARD" -i lo -j RETURN
    "$tool" -w -t raw -A "$GUARD" -i "$BRIDGE" -j RETURN
    "$tool" -w -t raw -A "$GUARD" -p tcp --dport "$api_port" -j DROP
    "$tool" -w -t raw -A "$GUARD" -p tcp --dport 10250 -j DROP
    "$tool" -w -t raw -C PREROUTING -j "$GUARD" 2>/dev/null ||
      "$tool" -w -t raw -I PREROUTING 1 -j "$GUARD"
  done
  iptables -w -t raw -I "$GUARD" 3 -d "$SUBNET" -j DROP
  iptables -w -t raw -I "$GUARD" 3 -d "$SERVICE_CIDR" -j DROP
  iptables -w -t mangle -n -L "$EGRESS" >/dev/null 2>&1 || iptables -w -t mangle -N "$EGRESS"
  iptables -w -t mangle -F "$EGRESS"
  iptables -w -t mangle -A "$EGRESS" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -w -t mangle -A "$EGRESS" -i "$BRIDGE" -j DROP
  iptables -w -t mangle -C FORWARD -j "$EGRESS" 2>/dev/null ||
    iptables -w -t mangle -I FORWARD 1 -j "$EGRESS"
}

guard_down() {
  local tool table
  for tool in iptables ip6tables; do
    if "$tool" -w -t raw -n -L "$GUARD" >/dev/null 2>&1; then
      "$tool" -w -t raw -D PREROUTING -j "$GUARD" 2>/dev/null || true
      "$tool" -w -t raw -F "$GUARD" && "$tool" -w -t raw -X "$GUARD"
    fi
  done
  for table in mangle filter; do # filter: where earlier versions of this script put it
    if iptables -w -t "$table" -n -L "$EGRESS" >/dev/null 2>&1; then
      iptables -w -t "$table" -D FORWARD -j "$EGRESS" 2>/dev/null || true
      iptables -w -t "$table" -F "$EGRESS" && iptables -w -t "$table" -X "$EGRESS"
    fi
  done
}

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "bridge ${BRIDGE} ${GATEWAY}/24"
    ip link add "$BRIDGE" type bridge
    ip addr add "${GATEWAY}/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local key path
  if [[ ! -f "$SYSCTL_FILE" ]]; then
    for key in "${SYSCTLS[@]}"; do
      echo "${key}=$(sysctl -n "$key")"
    done >"$SYSCTL_FILE"
  fi
  if [[ ! -f "$CREATED_FILE" ]]; then
    for path in "${HOST_PATHS[@]}"; do
      [[ -e "$path" ]] || echo "$path"
    done >"$CREATED_FILE"
  fi
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  guard_up "$API_PORT"
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
  claim "$cluster_dir"

  write_configs
  # What tools outside this script need to know of the node (testbed/duotone_testbed/cluster.py).
  printf 'NODE_NAME=%s\nCONTAINERD_SOCKET=%s\nNODE_IP=%s\n' "$NODE_NAME" "$SOCKET" "$GATEWAY" \
    >"${NODE_DIR}/node.env"
  network_up
  sign_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}"
  sign_cert kube-proxy "/CN=system:kube-proxy"
  sign_cert kube-router "/CN=duotone:kube-router"

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
      --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
      --conntrack-tcp-timeout-close-wait 0 -v 1
  fi
  wait_until 60 "kube-proxy's Service rules (log: ${NODE_DIR}/logs/kube-proxy.log)" \
    iptables -w -t nat -n -L KUBE-SERVICES
  wait_until 120 "node ${NODE_NAME} Ready" \
    "$DUOTONE_KUBECTL" --kubeconfig "$kubeconfig" wait --for=condition=Ready "node/${NODE_NAME}" --timeout=2s
  log "node ${NODE_NAME} is Ready"
  netpol_up "$kubeconfig"
}

# kube-router's network-policy controller: its read-only RBAC (applied with the admin
# kubeconfig), then the process. It needs the Node object (its address), so it starts after the
# node registered, and it is ready once its chains are in the filter table.
netpol_up() { # admin_kubeconfig
  command -v ipset >/dev/null || die "ipset missing (hack/install-tools.sh)"
  "$DUOTONE_KUBECTL" --kubeconfig "$1" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "duotone:kube-router"}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "duotone:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "duotone:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "duotone:kube-router"}
EOF
  if ! running kube-router; then
    log "kube-router (NetworkPolicy enforcement only)"
    start_daemon kube-router "${NODE_DIR}/logs/kube-router.log" \
      "$DUOTONE_KUBE_ROUTER" --kubeconfig "$(kubeconfig_for kube-router)" \
      --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false \
      --run-service-proxy=false --service-cluster-ip-range "$SERVICE_CIDR" \
      --enable-ipv4=true --enable-ipv6=false --health-port 0 --metrics-port 0 -v 1
  fi
  wait_until 60 "kube-router's policy chains (log: ${NODE_DIR}/logs/kube-router.log)" \
    iptables -w -n -L KUBE-ROUTER-FORWARD
}

# Every process whose executable is one of the node's binaries or that runs in a kubepods cgroup.
node_pids() {
  local pid exe
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    exe=$(readlink "/proc/${pid}/exe" 2>/dev/null) || continue
    case "$exe" in
      */node-k8s-*/* | */kube-router-*/kube-router) echo "$pid" ;;
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
# kube-router's address sets (IPv6 ones carry the inet6: prefix; TMP-* exist while it restores).
IPSETS='^(inet6:)?(KUBE-|TMP-)'

test_bed_ipsets() {
  command -v ipset >/dev/null || return 0
  ipset list -n 2>/dev/null | grep -E "$IPSETS" || true
}

remove_ipsets() { # after the rules that use them are gone
  local s
  for s in $(test_bed_ipsets); do
    ipset destroy "$s" 2>/dev/null || log "could not destroy ipset ${s}"
  done
}

test_bed_chains() { # tool table
  "$1" -w -t "$2" -S 2>/dev/null | sed -n "s/^-N \(${CHAINS}\|${GUARD}\|${EGRESS}\)$/\1/p" || true
}

remove_chains() { # tool table: every rule that jumps to a test-bed chain, then the chains
  local tool=$1 table=$2 chains rule c
  chains=$(test_bed_chains "$tool" "$table" | grep -v -e "^${GUARD}$" -e "^${EGRESS}$" | xargs) || true
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
  local cluster_dir=$1 pid i m c owner
  NODE_DIR="${cluster_dir}/node"
  owner=$(cat "$OWNER_FILE" 2>/dev/null || true)
  if [[ -n "$owner" && "$owner" != "$cluster_dir" && -d "${owner}/node" ]]; then
    log "the real node on this machine belongs to ${owner}; leaving it alone"
    rm -rf "$NODE_DIR"
    return 0
  fi
  # kubelet first (it would restart pods), then containers, then the rest.
  for name in kubelet kube-proxy kube-router; do
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
  remove_ipsets
  # DUOTONE-GUARD stays until cluster-down has stopped the API server (`unguard`).
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -f "$SYSCTL_FILE" ]]; then
    while read -r line; do
      [[ -n "$line" ]] && sysctl -qw "$line" 2>/dev/null || log "could not restore ${line}"
    done <"$SYSCTL_FILE"
    rm -f "$SYSCTL_FILE"
  fi
  if [[ -f "$CREATED_FILE" ]]; then
    while read -r path; do
      [[ -n "$path" ]] && rm -rf --one-file-system "$path"
    done <"$CREATED_FILE"
    rm -f "$CREATED_FILE"
  fi
  rm -rf "$RUN_DIR" "${NODE_DIR}" "$OWNER_FILE"
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
    for t in filter nat mangle raw; do test_bed_chains "$tool" "$t"; done
  done | xargs)
  [[ -z "$chains" ]] || leftovers+=("iptables chains: ${chains}")
  local sets
  sets=$(test_bed_ipsets | xargs)
  [[ -z "$sets" ]] || leftovers+=("ipsets: ${sets}")
  [[ -z "$(kubepods_cgroups)" ]] || leftovers+=("cgroups: $(kubepods_cgroups | xargs)")
  [[ -e "$RUN_DIR" ]] && leftovers+=("state: ${RUN_DIR}")
  [[ -f "$SYSCTL_FILE" ]] && leftovers+=("kernel settings not restored (${SYSCTL_FILE})")
  [[ -f "$CREATED_FILE" ]] && leftovers+=("host paths not removed ($(xargs <"$CREATED_FILE"))")
  [[ -f "$OWNER_FILE" ]] && leftovers+=("state: ${OWNER_FILE}")
  if [[ ${#leftovers[@]} -gt 0 ]]; then
    printf '[real-node] left behind: %s\n' "${leftovers[@]}" >&2
    return 1
  fi
  log "no test-bed state on the host"
}

case "${1:-}" in
  up) [[ -n "${2:-}" ]] || die "usage: $0 up CLUSTER_DIR"; up "$(cd "$2" && pwd)" ;;
  guard)
    [[ -n "${3:-}" ]] || die "usage: $0 guard CLUSTER_DIR API_PORT"
    need_root
    # The node folder marks the host as changed, so cluster-down undoes it even if the cluster
    # never starts.
    claim "$(cd "$2" && pwd)"
    mkdir -p "$2/node"
    guard_up "$3"
    ;;
  unguard) need_root; guard_down ;;
  down) [[ -n "${2:-}" ]] || die "usage: $0 down CLUSTER_DIR"; down "$(cd "$2" && pwd)" ;;
  check) check "${2:-}" ;;
  *) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
