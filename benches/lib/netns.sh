# shellcheck shell=bash
# Network namespaces for benchmarks that need real links, in the style of
# deploy/testnet/testnet.sh: a core namespace holding a bridge, homes that
# each sit behind their own router namespace (their own /24, plain routing,
# no NAT) with the home's uplink shaped on the router, and an unshaped
# infrastructure namespace on the bridge. Sourced by benches/flashcrowd.sh.
#
# Addresses (PREFIX names every namespace; default "fc"):
#   core      $PREFIX-core   bridge br0, 10.90.0.1/16 (no forwarding)
#   infra     $PREFIX-infra  10.90.0.2/16 on the bridge
#   home i    $PREFIX-r<i>   router: wan 10.90.1.<i+1>/16, lan 10.91.<i>.1/24
#             $PREFIX-h<i>   host:   eth0 10.91.<i>.2/24, default via its router
# (i from 0 to 253). Every router and the infra namespace has a route to
# every home's /24 through that home's router.
#
# Shaping: the router's wan egress (the home's uplink) is HTB at the
# uplink rate with fq_codel under it (a bfifo of NETNS_QUEUE_MS of the rate
# if the kernel has no fq_codel); the router's lan egress (toward the host)
# is netem with the one-way delay, so two homes see 2 x delay of RTT (none
# if the kernel has no netem: NETNS_NO_NETEM is set then).
# Nothing is queued on a host's own interface: a queue there is charged to
# the host's sockets (TCP small queues) and starves new connections in a
# way a home PC behind a router never sees. TCP congestion control is set
# per route (`congctl`), since a namespace can't change the default.
# Needs root and iproute2 (ip, tc).

NETNS_PREFIX=${NETNS_PREFIX:-fc}
NETNS_CONGCTL=${NETNS_CONGCTL:-cubic}

netns_core() { echo "$NETNS_PREFIX-core"; }
netns_infra() { echo "$NETNS_PREFIX-infra"; }
netns_router() { echo "$NETNS_PREFIX-r$1"; }
netns_host() { echo "$NETNS_PREFIX-h$1"; }
# Addresses of home $1's host and of the infra namespace.
netns_host_addr() { echo "10.91.$1.2"; }
netns_infra_addr() { echo "10.90.0.2"; }

# in_ns NS CMD...: runs CMD in namespace NS.
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# netns_new NS: a namespace with its loopback up.
netns_new() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

# netns_veth NS_A DEV_A NS_B DEV_B: a veth pair between two namespaces.
netns_veth() {
  local tmp_a="va$$" tmp_b="vb$$"
  ip link add "$tmp_a" type veth peer name "$tmp_b"
  ip link set "$tmp_a" netns "$1"
  ip link set "$tmp_b" netns "$3"
  ip -n "$1" link set "$tmp_a" name "$2"
  ip -n "$3" link set "$tmp_b" name "$4"
}

# netns_to_bridge NS DEV ADDR/PREFIXLEN: NS's DEV, plugged into the core's bridge.
netns_to_bridge() {
  local ns=$1 dev=$2 addr=$3 core
  core=$(netns_core)
  netns_veth "$ns" "$dev" "$core" "b-${ns#"$NETNS_PREFIX"-}"
  ip -n "$core" link set "b-${ns#"$NETNS_PREFIX"-}" master br0 up
  ip -n "$ns" addr add "$addr" dev "$dev"
  ip -n "$ns" link set "$dev" up
}

# netns_up_core: the core namespace, its bridge, and the infra namespace.
netns_up_core() {
  local core infra
  core=$(netns_core)
  infra=$(netns_infra)
  netns_new "$core"
  ip -n "$core" link add br0 type bridge
  ip -n "$core" addr add 10.90.0.1/16 dev br0
  ip -n "$core" link set br0 up
  netns_new "$infra"
  netns_to_bridge "$infra" eth0 "$(netns_infra_addr)/16"
}

# netns_up_home I UPLINK DELAY: home I's router and host. UPLINK is a tc
# rate (20mbit), DELAY a one-way delay on the way into the home (10ms; 0
# for none).
netns_up_home() {
  local i=$1 uplink=$2 delay=$3 router host
  router=$(netns_router "$i")
  host=$(netns_host "$i")
  netns_new "$router"
  netns_new "$host"
  ip netns exec "$router" sysctl -q -w net.ipv4.ip_forward=1
  netns_to_bridge "$router" wan "10.90.1.$((i + 1))/16"
  netns_veth "$router" lan "$host" eth0
  ip -n "$router" addr add "10.91.$i.1/24" dev lan
  ip -n "$router" link set lan up
  ip -n "$host" addr add "$(netns_host_addr "$i")/24" dev eth0
  ip -n "$host" link set eth0 up
  ip -n "$host" route add default via "10.91.$i.1" congctl "$NETNS_CONGCTL"
  # The uplink: what leaves the home toward the bridge. Under the rate, a
  # fair queue if the kernel has one, else a FIFO holding
  # NETNS_QUEUE_MS of the rate (a home router's buffer).
  tc -n "$router" qdisc add dev wan root handle 1: htb default 10
  tc -n "$router" class add dev wan parent 1: classid 1:10 htb rate "$uplink" ceil "$uplink" quantum 60000
  if ! tc -n "$router" qdisc add dev wan parent 1:10 handle 10: fq_codel 2>/dev/null; then
    tc -n "$router" qdisc add dev wan parent 1:10 handle 10: bfifo limit "$(netns_queue_bytes "$uplink")"
  fi
  if [ "$delay" != 0 ] && [ "$delay" != 0ms ]; then
    if ! tc -n "$router" qdisc add dev lan root netem delay "$delay" limit 100000 2>/dev/null; then
      [ -n "${NETNS_NO_NETEM:-}" ] || echo "netns: no netem in this kernel: no delay added" >&2
      NETNS_NO_NETEM=1
    fi
  fi
}

# netns_rate_bits RATE: a tc rate such as 20mbit, 512kbit or 1gbit in
# bits a second.
netns_rate_bits() {
  local rate=${1,,}
  case $rate in
    *gbit) echo $(( ${rate%gbit} * 1000000000 )) ;;
    *mbit) echo $(( ${rate%mbit} * 1000000 )) ;;
    *kbit) echo $(( ${rate%kbit} * 1000 )) ;;
    *bit) echo $(( ${rate%bit} )) ;;
    *) echo "netns: rate $1 not understood (use NNNmbit, NNNkbit, NNNgbit)" >&2; return 1 ;;
  esac
}

# netns_queue_bytes RATE: bytes of NETNS_QUEUE_MS (default 100) at RATE
# (at least 16 KiB).
netns_queue_bytes() {
  local bits bytes
  bits=$(netns_rate_bits "$1") || return 1
  bytes=$(( bits / 8 * ${NETNS_QUEUE_MS:-100} / 1000 ))
  echo $(( bytes < 16384 ? 16384 : bytes ))
}

# netns_qdiscs NS DEV: the qdisc kinds on DEV, for the record ("htb bfifo").
netns_qdiscs() {
  tc -n "$1" qdisc show dev "$2" | awk '{print $2}' | sort -u | xargs
}

# netns_routes COUNT: routes from every router (and the infra namespace)
# to each of homes 0..COUNT-1 through that home's router.
netns_routes() {
  local count=$1 i j batch
  batch=$(mktemp)
  for ((i = 0; i < count; i++)); do
    : > "$batch"
    for ((j = 0; j < count; j++)); do
      [ "$i" = "$j" ] || echo "route add 10.91.$j.0/24 via 10.90.1.$((j + 1)) congctl $NETNS_CONGCTL" >> "$batch"
    done
    ip -n "$(netns_router "$i")" -batch "$batch"
  done
  : > "$batch"
  for ((j = 0; j < count; j++)); do
    echo "route add 10.91.$j.0/24 via 10.90.1.$((j + 1)) congctl $NETNS_CONGCTL" >> "$batch"
  done
  ip -n "$(netns_infra)" -batch "$batch"
  rm -f "$batch"
}

# netns_down: every namespace named $NETNS_PREFIX-*, with whatever still
# runs in it (those processes were started in it by the benchmark).
netns_down() {
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$NETNS_PREFIX-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
