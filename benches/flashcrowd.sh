#!/usr/bin/env bash
# The flash crowd: one seed and N downloaders that all start at once on one
# file, each in its own home on a shaped uplink, run twice in the same run
# on the same testbed: once as a BitTorrent swarm (Debian's opentracker and
# python3-libtorrent), once with Canopy (a supernode, the seed leaf, N
# downloading leaves). Reports for each the last and mean finish time, the
# share of the bytes the seed uploaded, failed downloads, and the
# no-sharing bound (N x size / the seed's uplink); checks every file with
# b3sum. Prints a table, writes target/bench/flashcrowd-<time>.json and
# appends a section to benches/RESULTS.md.
#
# Usage: sudo benches/flashcrowd.sh
#   N=12 SIZE_MIB=64 UPLINK=20mbit    the crowd (defaults shown)
#   DELAY=10ms                        one-way delay into each home (netem; none
#                                     if the kernel has no netem)
#   TIMEOUT=<s>                       per side [default: 3 x the bound + 60]
#   ONLY=bittorrent|canopy            run one side only
#   CANOPY=path/to/canopy             [default: target/release/canopy, rebuilt
#                                     if older than the sources]
#   RESULTS=0                         don't append to benches/RESULTS.md
#   KEEP=1                            keep the work folder (/tmp/flashcrowd.*)
#
# The testbed (benches/lib/netns.sh): a core namespace with a bridge; each
# home (the seed, each downloader) a host namespace behind its own router
# namespace, its own /24 (per-/24 limits never lump homes together), plain
# routing, the uplink shaped on the router; an unshaped infra namespace for
# the tracker and the supernode. Needs root; installs opentracker,
# python3-libtorrent, b3sum and iproute2 with apt-get if missing.
set -euo pipefail
N=${N:-12}
SIZE_MIB=${SIZE_MIB:-64}
UPLINK=${UPLINK:-20mbit}
DELAY=${DELAY:-10ms}
ONLY=${ONLY:-}
root=$(cd "$(dirname "$0")/.." && pwd)
lib=$root/benches/lib
py=/usr/bin/python3 # Debian's, whose module python3-libtorrent is

NETNS_PREFIX=fc
source "$lib/netns.sh"

say() { printf 'flashcrowd: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, tc, apt-get)"
[ "$N" -ge 1 ] && [ "$N" -le 200 ] || die "N must be 1-200"
case $ONLY in "" | bittorrent | canopy) ;; *) die "ONLY is bittorrent or canopy" ;; esac

# --- what it needs -----------------------------------------------------------
missing=()
command -v opentracker >/dev/null || missing+=(opentracker)
[ -x "$py" ] && "$py" -c 'import libtorrent' 2>/dev/null || missing+=(python3-libtorrent)
command -v b3sum >/dev/null || missing+=(b3sum)
command -v tc >/dev/null && command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${CANOPY:-}" ]; then
  CANOPY=$root/target/release/canopy
  if [ ! -x "$CANOPY" ] || [ -n "$(find "$root/crates" "$root/proto" "$root/Cargo.toml" "$root/Cargo.lock" \
      -newer "$CANOPY" -type f -print -quit 2>/dev/null)" ]; then
    say "building canopy (release)"
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p canopy-cli
  fi
fi
[ -x "$CANOPY" ] || die "no canopy binary at $CANOPY"

# --- work folder, teardown ---------------------------------------------------
work=$(mktemp -d /tmp/flashcrowd.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  local status=$?
  touch "$work/bt/stop" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  netns_down
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    for f in "$work"/*/*.log "$work"/*/*.err; do
      [ -s "$f" ] && { echo "--- $f" >&2; tail -n 5 "$f" >&2; }
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then say "work folder kept: $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT SECONDS CMD...: until CMD succeeds, or fail.
wait_for() {
  local what=$1 limit=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
    sleep 0.2
  done
}
now() { echo "$EPOCHREALTIME"; }
size=$((SIZE_MIB * 1024 * 1024))
uplink_bits=$(netns_rate_bits "$UPLINK") || die "UPLINK=$UPLINK: use e.g. 20mbit"
bound=$(awk -v n="$N" -v s="$size" -v r="$uplink_bits" 'BEGIN { printf "%.1f", n * s * 8 / r }')
TIMEOUT=${TIMEOUT:-$(awk -v b="$bound" 'BEGIN { printf "%d", 3 * b + 60 }')}

# --- the file and the testbed ------------------------------------------------
mkdir -p "$work/seed" "$work/bt" "$work/canopy"
file=$work/seed/flashcrowd.bin
say "writing a $SIZE_MIB MiB file"
head -c "$size" /dev/urandom > "$file"
id=$(b3sum --no-names "$file")

say "testbed: core bridge, infra, seed + $N homes on $UPLINK uplinks"
netns_down
netns_up_core
for ((i = 0; i <= N; i++)); do netns_up_home "$i" "$UPLINK" "$DELAY"; done
netns_routes $((N + 1))
infra=$(netns_infra)
infra_addr=$(netns_infra_addr)
qdisc=$(netns_qdiscs "$(netns_router 0)" wan)
delay_used=$DELAY
[ -z "${NETNS_NO_NETEM:-}" ] || delay_used="none (no netem in this kernel)"

# check FILE: "ok" if FILE is the original, else why not.
check() {
  if [ ! -f "$1" ]; then echo missing
  elif [ "$(b3sum --no-names "$1")" = "$id" ]; then echo ok
  else echo mismatch
  fi
}

# waits until every one of the files named $2.. exists, up to $1 s from now;
# returns 1 at the deadline.
wait_files() {
  local deadline=$(($(date +%s) + $1)) f
  shift
  for f in "$@"; do
    until [ -e "$f" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || return 1
      sleep 0.2
    done
  done
}

# --- BitTorrent --------------------------------------------------------------
run_bittorrent() {
  local d=$work/bt tracker_user=nobody hash i statuses=() done_files
  say "bittorrent: opentracker and $((N + 1)) libtorrent clients"
  id -u _opentracker >/dev/null 2>&1 && tracker_user=_opentracker
  hash=$("$py" "$lib/bt_swarm.py" make "$file" "http://$infra_addr:6969/announce" "$d/flashcrowd.torrent")
  # opentracker chroots into its folder and drops root; the whitelist is
  # named relative to it so it reads the same before and after.
  mkdir -p "$d/tracker"
  chmod 755 "$d/tracker"
  echo "$hash" > "$d/tracker/whitelist.txt"
  chmod 644 "$d/tracker/whitelist.txt"
  (cd "$d/tracker" && exec ip netns exec "$infra" opentracker -i "$infra_addr" -p 6969 -P 6969 \
    -d "$d/tracker" -u "$tracker_user" -w whitelist.txt) > "$d/tracker.log" 2>&1 &
  pids+=($!)
  wait_for "opentracker" 10 in_ns "$infra" "$py" -c \
    "import socket; socket.create_connection(('$infra_addr', 6969), 1)"

  in_ns "$(netns_host 0)" "$py" "$lib/bt_swarm.py" client --seed --torrent "$d/flashcrowd.torrent" \
    --save "$work/seed" --listen "$(netns_host_addr 0):6881" --status "$d/seed.json" --stop "$d/stop" \
    > "$d/seed.log" 2>&1 &
  pids+=($!)
  seed_ready() { "$py" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["ready"] else 1)' "$d/seed.json"; }
  wait_for "the BitTorrent seed's announce" 30 seed_ready

  for ((i = 1; i <= N; i++)); do
    mkdir -p "$d/d$i"
    in_ns "$(netns_host "$i")" "$py" "$lib/bt_swarm.py" client --go "$d/go" --torrent "$d/flashcrowd.torrent" \
      --save "$d/d$i" --listen "$(netns_host_addr "$i"):6881" --status "$d/d$i.json" --stop "$d/stop" \
      > "$d/d$i.log" 2>&1 &
    pids+=($!)
    statuses+=("$d/d$i.json")
  done
  wait_files 60 "${statuses[@]}" || die "BitTorrent clients did not start"

  now > "$d/go.tmp" && mv "$d/go.tmp" "$d/go"
  say "bittorrent: go (timeout ${TIMEOUT} s)"
  all_finished() {
    "$py" -c 'import json,sys; sys.exit(0 if all(json.load(open(f))["finished_seconds"] is not None for f in sys.argv[1:]) else 1)' "$@"
  }
  local deadline=$((SECONDS + TIMEOUT))
  until all_finished "${statuses[@]}" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { say "bittorrent: timed out"; break; }
    sleep 0.5
  done
  touch "$d/stop"
  sleep 1 # the clients write their last status and leave
  for ((i = 1; i <= N; i++)); do
    echo "$i $(check "$d/d$i/flashcrowd.bin")" >> "$d/checks.txt"
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pids=()
  wait 2>/dev/null || true
}

# --- Canopy ------------------------------------------------------------------
leaf_status() { # home -> `canopy status --json` of its leaf
  in_ns "$(netns_host "$1")" "$CANOPY" status --data-dir "$work/canopy/l$1" --json
}
leaf_connected() {
  leaf_status "$1" | "$py" -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["supernodes"] else 1)'
}
seed_found() {
  in_ns "$infra" "$CANOPY" search --supernode "$infra_addr:6346" --json --timeout 1 --max-results 1 --id "$id" \
    | grep -q .
}

run_canopy() {
  local d=$work/canopy i
  say "canopy: a supernode, the seed leaf and $N leaves"
  # No port mapping and no LAN discovery (the BitTorrent clients have UPnP,
  # NAT-PMP and LSD off too): the testbed's routers are plain ones.
  ip netns exec "$infra" "$CANOPY" supernode --listen "$infra_addr:6346" --data-dir "$d/sn" --json --no-port-mapping --no-lan-discovery \
    > "$d/sn.json" 2> "$d/sn.log" &
  pids+=($!)
  start_leaf() { # home, extra args...
    local home=$1
    shift
    mkdir -p "$d/l$home/downloads"
    ip netns exec "$(netns_host "$home")" "$CANOPY" leaf --supernode "$infra_addr:6346" \
      --listen "$(netns_host_addr "$home"):6346" --control 127.0.0.1:6349 \
      --data-dir "$d/l$home" --downloads "$d/l$home/downloads" --metrics 127.0.0.1:9346 --json --no-port-mapping --no-lan-discovery "$@" \
      > "$d/l$home.json" 2> "$d/l$home.log" &
    pids+=($!)
  }
  start_leaf 0 --share "$work/seed"
  wait_for "the seed leaf's file in the supernode's index" 60 seed_found
  for ((i = 1; i <= N; i++)); do start_leaf "$i"; done
  for ((i = 1; i <= N; i++)); do wait_for "leaf $i to join the supernode" 60 leaf_connected "$i"; done

  local t0 done_files=()
  t0=$(now)
  echo "$t0" > "$d/go"
  say "canopy: go (timeout ${TIMEOUT} s)"
  for ((i = 1; i <= N; i++)); do
    (
      status=0
      in_ns "$(netns_host "$i")" "$CANOPY" get --data-dir "$d/l$i" --json "$id" > "$d/get$i.json" 2> "$d/get$i.err" \
        || status=$?
      echo "$status $(now)" > "$d/done$i.tmp"
      mv "$d/done$i.tmp" "$d/done$i"
    ) &
    done_files+=("$d/done$i")
  done
  if ! wait_files "$TIMEOUT" "${done_files[@]}"; then
    say "canopy: timed out"
    now > "$d/timed_out"
  fi
  # Each leaf's totals before anything stops.
  for ((i = 0; i <= N; i++)); do
    leaf_status "$i" > "$d/status$i.json" 2>/dev/null || true
    in_ns "$(netns_host "$i")" "$py" -c \
      'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9346/metrics", timeout=5).read().decode())' \
      > "$d/metrics$i.txt" 2>/dev/null || true
  done
  for ((i = 1; i <= N; i++)); do
    local path
    path=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("path") or "")' "$d/get$i.json" 2>/dev/null || true)
    [ -n "$path" ] || path=$d/l$i/downloads/flashcrowd.bin
    echo "$i $(check "$path")" >> "$d/checks.txt"
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pids=()
  wait 2>/dev/null || true
}

[ "$ONLY" = canopy ] || run_bittorrent
[ "$ONLY" = bittorrent ] || run_canopy

# --- report ------------------------------------------------------------------
mkdir -p "$root/target/bench"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
json_out=$root/target/bench/flashcrowd-$stamp.json
results_md=$root/benches/RESULTS.md
[ "${RESULTS:-1}" = 1 ] || results_md=
"$py" "$lib/flashcrowd_report.py" --work "$work" --n "$N" --size "$size" --uplink "$UPLINK" \
  --uplink-bits "$uplink_bits" --delay "$delay_used" --qdisc "$qdisc" --bound "$bound" \
  --timeout "$TIMEOUT" --commit "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --load "$(cut -d' ' -f1-3 /proc/loadavg)" --json-out "$json_out" --results "$results_md"
say "JSON: $json_out"
