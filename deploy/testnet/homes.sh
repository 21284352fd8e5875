#!/usr/bin/env bash
# Two homes behind two different routers, leaves on the open internet, and
# relaying supernodes, all in Linux network namespaces: every leaf
# downloads a file from every other, and the path each transfer took is
# printed as a matrix (direct, mapped port, LAN, push, hole punch, relay).
#
#   deploy/testnet/homes.sh up       bring the network up
#   deploy/testnet/homes.sh down     tear everything down
#   deploy/testnet/homes.sh test     up, run the matrix, down (even on failure)
#
# Needs root, iproute2, nftables and miniupnpd. CANOPY=path/to/canopy
# (default: target/release/canopy, else target/debug/canopy).
#
# The internet: a bridge (namespace ch-net), 93.184.0.0/24.
#   s1 93.184.0.1, s2 93.184.0.2   supernodes, peered, relaying
#   p1 93.184.0.11                 an open leaf
#   p2 93.184.0.12                 a leaf behind its own host firewall (no
#                                  NAT; nothing unsolicited gets in)
# Home A: router ra (WAN 93.184.0.21, LAN 192.168.1.1/24 on a bridge):
#   nftables masquerade, which keeps a connection's source port when it is
#   free (an endpoint-independent, port-preserving mapping, filtering by
#   address and port), and miniupnpd (NAT-PMP and UPnP IGD).
#   a1 192.168.1.2                 maps its port on the router
#   a2 192.168.1.3                 --no-port-mapping: firewalled
# Home B: router rb (WAN 93.184.0.22, LAN 192.168.2.1/24): masquerade
#   random, a new random port for every connection (symmetric-like), and
#   no UPnP.
#   b1 192.168.2.2                 firewalled, behind the symmetric NAT
#
# Every leaf joins both supernodes and shares a file for each other leaf;
# then each one, in turn, downloads the one meant for it from every other
# through its own running leaf (`canopy get --data-dir`; downloads are not
# shared, so each transfer has the one source under test), the file is
# checked against its id, and the path is read from the download's report
# (`paths`: the ways the sources that sent bytes were reached). The paths expected are in EXPECTED below:
# the relay only where the NATs leave no other way (a symmetric NAT facing
# a firewalled peer), hole punching between the two firewalled peers
# whose mappings are endpoint-independent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${CANOPY:-}" ]; then
  if [ -x "$root/target/release/canopy" ]; then CANOPY=$root/target/release/canopy; else CANOPY=$root/target/debug/canopy; fi
fi
NET=ch-net
work=${TESTNET_WORK:-/tmp/canopy-homes}
LEAVES=(a1 a2 b1 p1 p2)

PREFIX=ch-
# shellcheck source=deploy/testnet/lib.sh
. "$here/lib.sh"
say() { printf 'homes: %s\n' "$*" >&2; }

# A veth from namespace $1 (named $2 there, address $3) into bridge $5 of
# namespace $4.
veth_to_bridge() {
  local ns=$1 dev=$2 addr=$3 bridge_ns=$4 bridge=$5
  local peer="v-${ns#ch-}-$dev"
  ip link add "tmp-$$" type veth peer name "$peer"
  ip link set "tmp-$$" netns "$ns"
  in_ns "$ns" ip link set "tmp-$$" name "$dev"
  ip link set "$peer" netns "$bridge_ns"
  in_ns "$bridge_ns" ip link set "$peer" master "$bridge" up
  in_ns "$ns" ip addr add "$addr" dev "$dev"
  in_ns "$ns" ip link set "$dev" up
}

new_ns() { ip netns add "$1"; in_ns "$1" ip link set lo up; }

# The filter and NAT of a home router: the home's connections out and
# their replies pass, nothing unsolicited comes in but what miniupnpd
# forwards (its chains, empty without it). $2: "masquerade" or
# "masquerade random". $3: what the router does with an unsolicited
# connection to itself from the WAN: "reject with tcp reset" (OpenWrt's
# default: a punch's early SYNs are refused) or "drop" (they go
# unanswered).
router_rules() {
  in_ns "$1" sysctl -qw net.ipv4.ip_forward=1
  in_ns "$1" nft -f - <<NFT
table inet filter {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" meta l4proto icmp accept
    iifname "wan0" $3
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "br-lan" accept
    jump miniupnpd
  }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname "wan0" $2
  }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
NFT
}

# A home: router $1 (WAN $2, LAN prefix $3, NAT $4, WAN input $5), hosts
# "name:last-octet".
home() {
  local router=$1 wan=$2 lan=$3 nat=$4 input=$5; shift 5
  new_ns "$router"
  veth_to_bridge "$router" wan0 "$wan/24" "$NET" br0
  in_ns "$router" ip link add br-lan type bridge
  in_ns "$router" ip addr add "$lan.1/24" dev br-lan
  in_ns "$router" ip link set br-lan up
  local host name octet
  for host in "$@"; do
    name=${host%:*} octet=${host#*:}
    new_ns "ch-$name"
    veth_to_bridge "ch-$name" eth0 "$lan.$octet/24" "$router" br-lan
    in_ns "ch-$name" ip route add default via "$lan.1"
  done
  router_rules "$router" "$nat" "$input"
}

up() {
  down 2>/dev/null || true
  say "bringing up the internet, two homes and their routers"
  new_ns "$NET"
  in_ns "$NET" ip link add br0 type bridge
  in_ns "$NET" ip link set br0 up
  local host
  for host in s1:1 s2:2 p1:11 p2:12; do
    new_ns "ch-${host%:*}"
    veth_to_bridge "ch-${host%:*}" eth0 "93.184.0.${host#*:}/24" "$NET" br0
  done
  # p2's own firewall: its connections out and their replies, nothing
  # unsolicited in.
  in_ns ch-p2 nft -f - <<'NFT'
table inet host {
  chain input {
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
    meta l4proto icmp accept
  }
}
NFT
  home ch-ra 93.184.0.21 192.168.1 masquerade "reject with tcp reset" a1:2 a2:3
  home ch-rb 93.184.0.22 192.168.2 "masquerade random" drop b1:2
  cat > "$work/miniupnpd.conf" <<'CONF'
ext_ifname=wan0
listening_ip=br-lan
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=no
uuid=7c1d0c55-3f43-4b8e-9a0e-2f5c3f6a1b01
allow 1024-65535 192.168.1.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
CONF
  in_ns ch-ra miniupnpd -d -f "$work/miniupnpd.conf" -P "$work/miniupnpd.pid" \
    > "$work/miniupnpd.log" 2>&1 &
  wait_until "miniupnpd listening" 15 bash -c "ip netns exec ch-ra ss -Hlnu | grep -q ':5351 '"
}




sources_of() { # ns, id -> number of sources a search from there finds
  in_ns "$1" "$CANOPY" search --supernode 93.184.0.1:6346 --json --timeout 1 --id "$2" \
    | python3 -c 'import json,sys; print(sum(len(json.loads(l)["sources"]) for l in sys.stdin))'
}
found() { [ "$(sources_of "$1" "$2")" -ge 1 ]; }

# The leaf's listening port: distinct in home A, where two share a router.
port_of() { case "$1" in a2) echo 6348 ;; *) echo 6347 ;; esac; }

# The path a download took, from its report ($1: `canopy get --json`).
path_of() {
  python3 -c '
import json, sys
view = json.loads(open(sys.argv[1]).readline())
paths = sorted(set(view.get("paths") or ["?"]))
print("+".join(p.replace(" ", "-") for p in paths))' "$1"
}

# True if every path in $1 ("a+b") is one of the alternatives in $2 ("a|b").
took_only() {
  local path
  for path in ${1//+/ }; do
    [[ "|$2|" == *"|$path|"* ]] || return 1
  done
}

# What each transfer should take: "downloader<-source path", alternatives
# split by "|". A direct connection to a1 goes through its mapped port;
# between a1 and a2 it is to the LAN address (LAN discovery: the router
# can't loop a connection back to its own public address). A public
# downloader and a source behind an endpoint-independent NAT or a host
# firewall both dial: whichever gets through first makes it a push (the
# source's dial) or a hole punch (ours). A symmetric NAT facing a
# firewalled peer leaves only the relay. p2 (host firewall) downloading
# from a2 (endpoint-independent NAT) punches: p2's first SYNs reach ra
# before a2 has the Push and are refused, and the first after a2's own
# dial went out meets it. (It missed in about half the runs while both
# sides dialed every 250 ms: each of p2's SYNs reached a2 just as a2
# dropped its dial for the next; the source now dials every 300 ms.)
EXPECTED=(
  "a1<-a2 direct" "a1<-b1 push" "a1<-p1 direct" "a1<-p2 push"
  "a2<-a1 direct" "a2<-b1 relay" "a2<-p1 direct" "a2<-p2 hole-punch"
  "b1<-a1 direct" "b1<-a2 relay" "b1<-p1 direct" "b1<-p2 relay"
  "p1<-a1 direct" "p1<-a2 push|hole-punch" "p1<-b1 push" "p1<-p2 push|hole-punch"
  "p2<-a1 direct" "p2<-a2 hole-punch" "p2<-b1 relay" "p2<-p1 direct"
)

scenario() {
  rm -rf "$work" && mkdir -p "$work"
  up
  say "two relaying supernodes on the internet"
  spawn ch-s1 s1 supernode --listen 93.184.0.1:6346 --metrics 93.184.0.1:9346 \
    --data-dir "$work/data-s1" --relay-slots 8
  spawn ch-s2 s2 supernode --listen 93.184.0.2:6346 --peer 93.184.0.1:6346 \
    --metrics 93.184.0.2:9346 --data-dir "$work/data-s2" --relay-slots 8
  wait_until "supernodes linked" 20 metric_at_least ch-s1 93.184.0.1:9346 canopy_supernode_peers 1

  local leaf extra
  # A file for every (source, downloader) pair, so each transfer has one
  # source: the one under test.
  local peer
  declare -A id
  for leaf in "${LEAVES[@]}"; do
    mkdir -p "$work/share-$leaf" "$work/got-$leaf"
    for peer in "${LEAVES[@]}"; do
      [ "$peer" = "$leaf" ] && continue
      head -c 1500000 /dev/urandom > "$work/share-$leaf/$leaf-to-$peer.bin"
      id[$leaf-$peer]=$("$CANOPY" hash "$work/share-$leaf/$leaf-to-$peer.bin" | awk '{print $1}')
    done
    extra=()
    [ "$leaf" = a2 ] && extra=(--no-port-mapping)
    spawn "ch-$leaf" "leaf-$leaf" leaf --supernode 93.184.0.1:6346 --supernode 93.184.0.2:6346 \
      --share "$work/share-$leaf" --downloads "$work/got-$leaf" \
      --listen "0.0.0.0:$(port_of "$leaf")" --control 127.0.0.1:0 \
      --no-share-downloads --data-dir "$work/data-$leaf" "${extra[@]}"
  done
  for leaf in "${LEAVES[@]}"; do
    wait_until "leaf $leaf started" 30 started "leaf-$leaf"
    for peer in "${LEAVES[@]}"; do
      [ "$peer" = "$leaf" ] && continue
      wait_until "leaf $leaf's file for $peer found" 30 found ch-p1 "${id[$leaf-$peer]}"
    done
  done
  say "a1's port mapping: $(grep -ho 'mapped[^"]*' "$work/leaf-a1.log" | head -1 || echo none)"

  local line pair want from to got n=0 failed=0
  printf '%-10s %-10s %-12s %-12s %s\n' downloader source path expected verified >&2
  for line in "${EXPECTED[@]}"; do
    read -r pair want <<< "$line"
    to=${pair%%<-*} from=${pair##*<-}
    n=$((n + 1))
    local verified=no
    if in_ns "ch-$to" "$CANOPY" get --data-dir "$work/data-$to" --json "${id[$from-$to]}" \
        > "$work/get-$n.json" 2> "$work/get-$n.log" \
      && "$CANOPY" hash "$work/got-$to" | grep -q "^${id[$from-$to]} "; then
      verified=yes
    fi
    got=$( [ -s "$work/get-$n.json" ] && path_of "$work/get-$n.json" || echo none)
    printf '%-10s %-10s %-12s %-12s %s\n' "$to" "$from" "$got" "$want" "$verified" >&2
    # `want` may name alternatives ("push|hole-punch"); a transfer whose
    # connections went several ways ("hole-punch+relay") must have gone
    # only ways named.
    if [ "$verified" != yes ] || ! took_only "$got" "$want"; then failed=$((failed + 1)); fi
  done
  [ "$failed" = 0 ] || { say "$failed of $n transfers failed or took an unexpected path"; return 1; }
  say "ok: all $n pairs transferred and verified, each by the path expected"
}

case "${1:-}" in
  up) mkdir -p "$work"; up ;;
  down) down ;;
  test)
    [ "$(id -u)" = 0 ] || { say "needs root (network namespaces)"; exit 2; }
    for tool in ip nft miniupnpd curl python3; do
      command -v "$tool" >/dev/null || { say "needs $tool"; exit 2; }
    done
    trap finish EXIT
    scenario
    ;;
  *) echo "usage: $0 up|down|test" >&2; exit 2 ;;
esac
