#!/usr/bin/env bash
# A Canopy testnet across Linux network namespaces: each host its own
# namespace and address on one bridge, and one leaf behind a NAT router
# (nftables masquerade), so it really cannot be reached from outside.
#
#   deploy/testnet/testnet.sh up       bring the hosts up
#   deploy/testnet/testnet.sh down     tear everything down
#   deploy/testnet/testnet.sh test     up, run the scenario below, down (even on failure)
#
# Needs root, iproute2 and nftables. CANOPY=path/to/canopy (default:
# target/release/canopy, else target/debug/canopy). HOSTS=N (default 5).
#
# Hosts: cn-h1..cn-hN at 10.77.0.1..N; the NAT router cn-nat at 10.77.0.100
# outside and 192.168.77.1 inside; the NAT'd leaf cn-natleaf at 192.168.77.2.
# IPv6 on the same bridge (fd77::/64): h3 and h5 are dual-stack (fd77::3,
# fd77::5), cn-v6only has fd77::61 and no IPv4 address at all, cn-dual has
# 10.77.0.62 and fd77::62.
#
# Scenario (`test`): supernodes on h1, h2, h3 in a line; a leaf on h4
# attached to h1 and h2; the NAT'd leaf attached to h3; from h5, a search
# and a download that cross hosts, one of them from the NAT'd leaf by push;
# IPv6: the supernode on h3 listens on [::]:6346 (one dual-stack socket);
# the IPv6-only leaf joins it over IPv6, the dual-stack leaf over IPv6
# too; the IPv6-only host downloads the dual-stack leaf's file and the
# dual-stack host (joined over IPv4) the IPv6-only leaf's, and h5 (dual,
# joined over IPv4) the dual-stack leaf's: each verified, each over IPv6
# (checked by the address the bytes came from, printed as a matrix); and
# h4 (IPv4 only) the dual-stack leaf's over IPv4, which it can reach
# because that leaf also joined h1 or h2 over IPv4;
# then h1's supernode is killed with SIGKILL and the h4 leaf must be
# searchable and attached to another supernode within seconds.
set -euo pipefail

HOSTS=${HOSTS:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${CANOPY:-}" ]; then
  if [ -x "$root/target/release/canopy" ]; then CANOPY=$root/target/release/canopy; else CANOPY=$root/target/debug/canopy; fi
fi
NS_BRIDGE=cn-br
work=${TESTNET_WORK:-/tmp/canopy-testnet}

PREFIX=cn-
# shellcheck source=deploy/testnet/lib.sh
. "$here/lib.sh"
say() { printf 'testnet: %s\n' "$*" >&2; }

veth_to_bridge() { # ns, name-in-ns, address/prefix
  local ns=$1 dev=$2 addr=$3
  local peer="p-${ns#cn-}-$dev"
  local flags=()
  case "$addr" in *:*) flags=(nodad) ;; esac
  ip link add "tmp-$$" type veth peer name "$peer"
  ip link set "tmp-$$" netns "$ns"
  in_ns "$ns" ip link set "tmp-$$" name "$dev"
  ip link set "$peer" netns "$NS_BRIDGE"
  in_ns "$NS_BRIDGE" ip link set "$peer" master br0 up
  in_ns "$ns" ip addr add "$addr" dev "$dev" "${flags[@]}"
  in_ns "$ns" ip link set "$dev" up
}

up() {
  down 2>/dev/null || true
  say "bringing up $HOSTS hosts and a NAT"
  ip netns add "$NS_BRIDGE"
  in_ns "$NS_BRIDGE" ip link add br0 type bridge
  in_ns "$NS_BRIDGE" ip link set br0 up
  for i in $(seq "$HOSTS"); do
    ip netns add "cn-h$i"
    in_ns "cn-h$i" ip link set lo up
    veth_to_bridge "cn-h$i" eth0 "10.77.0.$i/24"
  done
  # IPv6: nodad, so the addresses are usable at once (no duplicate
  # address detection wait).
  in_ns cn-h3 ip addr add fd77::3/64 dev eth0 nodad
  in_ns cn-h5 ip addr add fd77::5/64 dev eth0 nodad
  ip netns add cn-v6only
  in_ns cn-v6only ip link set lo up
  veth_to_bridge cn-v6only eth0 fd77::61/64
  ip netns add cn-dual
  in_ns cn-dual ip link set lo up
  veth_to_bridge cn-dual eth0 10.77.0.62/24
  in_ns cn-dual ip addr add fd77::62/64 dev eth0 nodad
  # The NAT router: outside on the bridge, inside to the NAT'd leaf.
  ip netns add cn-nat
  ip netns add cn-natleaf
  in_ns cn-nat ip link set lo up
  in_ns cn-natleaf ip link set lo up
  veth_to_bridge cn-nat eth0 10.77.0.100/24
  ip link add "tmp-$$" type veth peer name "tmp2-$$"
  ip link set "tmp-$$" netns cn-nat
  ip link set "tmp2-$$" netns cn-natleaf
  in_ns cn-nat ip link set "tmp-$$" name eth1
  in_ns cn-natleaf ip link set "tmp2-$$" name eth0
  in_ns cn-nat ip addr add 192.168.77.1/24 dev eth1
  in_ns cn-nat ip link set eth1 up
  in_ns cn-natleaf ip addr add 192.168.77.2/24 dev eth0
  in_ns cn-natleaf ip link set eth0 up
  in_ns cn-natleaf ip route add default via 192.168.77.1
  in_ns cn-nat sysctl -q -w net.ipv4.ip_forward=1
  in_ns cn-nat nft -f - <<'NFT'
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 192.168.77.0/24 oifname "eth0" masquerade
  }
}
NFT
}




json_field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }
sources_of() { # ns, supernode, id -> number of sources
  in_ns "$1" "$CANOPY" search --supernode "$2" --json --timeout 1 --id "$3" \
    | python3 -c 'import json,sys; print(sum(len(json.loads(l)["sources"]) for l in sys.stdin))'
}
has_sources() { [ "$(sources_of "$@")" -ge "$4" ]; }

# The address `canopy get --json` (in $1) got bytes from: exactly one.
source_of() {
  python3 -c '
import json, sys
report = json.loads(open(sys.argv[1]).readline())
used = [s for s, n in report["bytes_per_source"].items() if n > 0]
assert len(used) == 1, used
print(used[0])' "$1"
}

# The supernode the dual-stack leaf joined over IPv4; fails if none yet.
v4_supernode_of_dual() {
  in_ns cn-dual "$CANOPY" status --data-dir "$work/data-dual" --json \
    | python3 -c 'import json,sys; s=[a for a in json.load(sys.stdin)["supernodes"] if not a.startswith("[")]; print(s[0]) if s else sys.exit(1)'
}

# The family of a "host:port" source label: IPv6 if bracketed.
family_of() { case "$1" in \[*) echo IPv6 ;; *) echo IPv4 ;; esac; }

ipv6_scenario() {
  mkdir -p "$work/share-v6" "$work/share-dual"
  head -c 1500000 /dev/urandom > "$work/share-v6/v6-only.bin"
  head -c 1500000 /dev/urandom > "$work/share-dual/dual.bin"
  local v6_id dual_id
  v6_id=$("$CANOPY" hash "$work/share-v6" | awk '{print $1}')
  dual_id=$("$CANOPY" hash "$work/share-dual" | awk '{print $1}')

  say "IPv6: an IPv6-only leaf and a dual-stack leaf, both joined to h3 over IPv6"
  spawn cn-v6only leafv6 leaf --supernode '[fd77::3]:6346' --share "$work/share-v6" \
    --listen '[::]:6347' --control 127.0.0.1:0 --no-port-mapping --data-dir "$work/data-v6"
  spawn cn-dual leafdual leaf --supernode '[fd77::3]:6346' --share "$work/share-dual" \
    --listen '[::]:6347' --control 127.0.0.1:0 --no-port-mapping --data-dir "$work/data-dual"
  wait_until "IPv6 leaves started" 30 started leafv6
  wait_until "IPv6 leaves started" 30 started leafdual
  wait_until "the IPv6-only leaf's file found over IPv4" 20 has_sources cn-h5 10.77.0.3:6346 "$v6_id" 1
  wait_until "the dual-stack leaf's file found over IPv6" 20 has_sources cn-v6only '[fd77::3]:6346' "$dual_id" 1

  # The dual-stack leaf, listening on [::], opens its second session in
  # the other family: to h1 or h2 (learned from h3's Pong), over IPv4.
  wait_until "the dual-stack leaf also joined a supernode over IPv4" 20 v4_supernode_of_dual
  local dual_v4_sn
  dual_v4_sn=$(v4_supernode_of_dual)

  mkdir -p "$work/out-v6only" "$work/out-dual" "$work/out-h5" "$work/out-h4"
  # from-host to-file supernode out expected-source
  local transfers=(
    "cn-v6only $dual_id [fd77::3]:6346 out-v6only [fd77::62]:6347"
    "cn-dual $v6_id 10.77.0.3:6346 out-dual [fd77::61]:6347"
    "cn-h5 $dual_id 10.77.0.3:6346 out-h5 [fd77::62]:6347"
    # Through that supernode, over IPv4. A download is reported under the
    # source's first address, IPv6 when hits named both (a dual-stack
    # source is one source); which family carried it is checked below,
    # in the dual-stack leaf's own log.
    "cn-h4 $dual_id $dual_v4_sn out-h4 [fd77::62]:6347|10.77.0.62:6347"
  )
  local line ns id sn out expected got n=0
  printf '%-10s %-10s %-18s %s\n' downloader from source family >&2
  for line in "${transfers[@]}"; do
    read -r ns id sn out expected <<< "$line"
    n=$((n + 1))
    in_ns "$ns" "$CANOPY" get --supernode "$sn" -o "$work/$out/" --json "$id" > "$work/get-v6-$n.json" \
      || { say "download $n ($ns) failed"; return 1; }
    "$CANOPY" hash "$work/$out" | grep -q "^$id " \
      || { say "download $n ($ns) does not match its id"; return 1; }
    got=$(source_of "$work/get-v6-$n.json")
    printf '%-10s %-10s %-18s %s\n' "${ns#cn-}" "${expected##*|}" "$got" "$(family_of "$got")" >&2
    [[ "|$expected|" == *"|$got|"* ]] \
      || { say "download $n ($ns) came from $got, expected $expected"; return 1; }
  done
  # h4 has no IPv6: the dual-stack leaf served it over IPv4.
  grep -q "upload started peer=10.77.0.4:[0-9]* file=$work/share-dual/dual.bin" "$work/leafdual.log" \
    || { say "the dual-stack leaf did not serve h4 over IPv4"; return 1; }
  say "ok: IPv6-only and dual-stack hosts downloaded from each other over IPv6, an IPv4-only host from the dual-stack one over IPv4, verified"
}

scenario() {
  rm -rf "$work" && mkdir -p "$work/share-h4" "$work/share-nat" "$work/out"
  head -c 3000000 /dev/urandom > "$work/share-h4/open-file.bin"
  head -c 2000000 /dev/urandom > "$work/share-nat/behind-nat.bin"
  local open_id nat_id
  open_id=$("$CANOPY" hash "$work/share-h4" | awk '{print $1}')
  nat_id=$("$CANOPY" hash "$work/share-nat" | awk '{print $1}')

  say "supernodes on h1, h2, h3 in a line"
  spawn cn-h1 sn1 supernode --listen 10.77.0.1:6346 --metrics 10.77.0.1:9346 --data-dir "$work/data-sn1"
  spawn cn-h2 sn2 supernode --listen 10.77.0.2:6346 --peer 10.77.0.1:6346 --metrics 10.77.0.2:9346 --data-dir "$work/data-sn2"
  spawn cn-h3 sn3 supernode --listen '[::]:6346' --peer 10.77.0.2:6346 --metrics 10.77.0.3:9346 --data-dir "$work/data-sn3"
  wait_until "supernodes linked" 20 metric_at_least cn-h2 10.77.0.2:9346 canopy_supernode_peers 2

  say "a leaf on h4 (attached to h1 and h2) and one behind the NAT (attached to h3)"
  spawn cn-h4 leaf4 leaf --supernode 10.77.0.1:6346 --supernode 10.77.0.2:6346 \
    --share "$work/share-h4" --listen 10.77.0.4:6347 --data-dir "$work/data-h4"
  spawn cn-natleaf leafnat leaf --supernode 10.77.0.3:6346 \
    --share "$work/share-nat" --listen 0.0.0.0:6347 --data-dir "$work/data-nat"
  wait_until "leaves started" 30 started leaf4
  wait_until "leaves started" 30 started leafnat

  say "search from h5 through h3: both files, across hosts"
  wait_until "h4's file found from h5" 20 has_sources cn-h5 10.77.0.3:6346 "$open_id" 1
  wait_until "the NAT'd leaf's file found from h5" 20 has_sources cn-h5 10.77.0.3:6346 "$nat_id" 1
  local firewalled
  firewalled=$(in_ns cn-h5 "$CANOPY" search --supernode 10.77.0.3:6346 --json --timeout 1 --id "$nat_id" | json_field sources)
  say "the NAT'd leaf is seen from $firewalled (the router); its announced address is unreachable"

  say "download from h4 (direct) and from the NAT'd leaf (push), on h5"
  in_ns cn-h5 "$CANOPY" get --supernode 10.77.0.3:6346 -o "$work/out/" --json "$open_id" > "$work/get-open.json"
  in_ns cn-h5 "$CANOPY" get --supernode 10.77.0.3:6346 -o "$work/out/" --json "$nat_id" > "$work/get-nat.json"
  [ "$("$CANOPY" hash "$work/out" | grep -c -e "^$open_id " -e "^$nat_id ")" = 2 ] \
    || { say "downloaded files do not match their ids"; return 1; }
  grep -q '(push)' "$work/get-nat.json" || { say "the NAT'd leaf was not reached by push"; cat "$work/get-nat.json" >&2; return 1; }

  ipv6_scenario

  say "SIGKILL the supernode on h1; h4's leaf must recover on another"
  kill -9 "$(cat "$work/sn1.pid")"
  wait_until "h4's file still found" 15 has_sources cn-h5 10.77.0.3:6346 "$open_id" 1
  wait_until "h4's leaf attached to h3 in place of h1" 30 metric_at_least cn-h3 10.77.0.3:9346 canopy_leaves 2
  say "ok: search, direct download, push through NAT, and recovery after SIGKILL all crossed hosts"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  test)
    [ "$(id -u)" = 0 ] || { say "needs root (network namespaces)"; exit 2; }
    trap finish EXIT
    up
    scenario
    ;;
  *) echo "usage: $0 up|down|test" >&2; exit 2 ;;
esac
