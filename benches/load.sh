#!/usr/bin/env bash
# Load benchmarks on real sockets: one canopy supernode process driven by
# canopy-load (crates/load), side by side with a raw relay. Writes
# benches/load/RESULTS.md and prints the same table.
#
#   leaves:  LEAVES leaf connections on one supernode, FILES files each:
#            resident memory per leaf, time to connect them all, search
#            latency at full load.
#   relay:   queries a second one supernode takes in from one supernode
#            connection and forwards to PEERS others, with RELAY_LEAVES
#            leaves x FILES files indexed; the raw relay (same frames, no
#            logic) in the same run. Relay under test on core 0
#            (taskset -c 0), generator on core 1.
#   overlay: OVERLAY_NODES supernodes in a random connected graph,
#            OVERLAY_LEAVES leaves each, BACKGROUND_QPS background queries a
#            second; query to first hit and to last hit within WINDOW s.
#
# Usage: benches/load.sh   (LEAVES=19000 DURATION=10 ... to change)
# Needs python3 and taskset (installed with apt-get if missing).
set -euo pipefail
LEAVES=${LEAVES:-19000}
FILES=${FILES:-100}
DURATION=${DURATION:-10}
PEERS=${PEERS:-32}
RELAY_LEAVES=${RELAY_LEAVES:-1000}
OVERLAY_NODES=${OVERLAY_NODES:-10}
OVERLAY_LEAVES=${OVERLAY_LEAVES:-200}
BACKGROUND_QPS=${BACKGROUND_QPS:-200}
WINDOW=${WINDOW:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

missing=()
for tool in python3:python3 taskset:util-linux curl:curl; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# One leaf is one descriptor on each side; 20,000 is this machine's cap.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "descriptors per process: $(ulimit -n)" >&2

echo "building canopy and canopy-load (release)" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p canopy-cli -p canopy-load
canopy="$CARGO_TARGET_DIR/release/canopy"
load="$CARGO_TARGET_DIR/release/canopy-load"
# Leaves connect from 127.0.0.2-9 so no one source address runs out of ports.
sources=$(seq -s, -f '127.0.0.%g' 2 9)

work=$(mktemp -d /tmp/canopy-load.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() {
  for _ in $(seq 400); do [ -s "$1" ] && return; sleep 0.05; done
  echo "no output in $1" >&2; exit 1
}
# start_supernode NAME CPU PORT METRICS_PORT [--peer ADDR ...]: starts one
# supernode (pinned to CPU unless it is "-"); its pid goes in $last_pid.
start_supernode() {
  local name=$1 cpu=$2 port=$3 mport=$4; shift 4
  local pin=()
  [ "$cpu" != "-" ] && pin=(taskset -c "$cpu")
  "${pin[@]}" "$canopy" supernode --listen "127.0.0.1:$port" --metrics "127.0.0.1:$mport" \
    --max-leaves 20000 --max-peers 40 --peers-wanted 0 --reserved-outbound-peers 0 \
    --leaf-queries-per-second 1000 --leaf-query-burst 1000 \
    --peer-queries-per-second 4000000000 --peer-query-burst 4000000000 \
    --data-dir "$work/$name" --json "$@" > "$work/$name.out" 2> "$work/$name.log" &
  last_pid=$!
  pids+=("$last_pid")
  wait_line "$work/$name.out"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# 1. Leaves on one supernode.
echo "leaves: $LEAVES leaves x $FILES files" >&2
port=$(free_port); mport=$(free_port)
start_supernode leaves 0 "$port" "$mport"
taskset -c 1 "$load" leaves --target "127.0.0.1:$port" --metrics "127.0.0.1:$mport" \
  --pid "$last_pid" --count "$LEAVES" --files "$FILES" --sources "$sources" \
  --searches 1000 --search-rate 200 --json | tee "$work/leaves.json" >&2
stop "$last_pid"

# 2. Relay rate: canopy, then the raw relay, same generator, same core.
echo "relay: canopy supernode, $PEERS peers, $RELAY_LEAVES leaves x $FILES files" >&2
port=$(free_port); mport=$(free_port)
start_supernode relay 0 "$port" "$mport"
taskset -c 1 "$load" relay --target "127.0.0.1:$port" --metrics "127.0.0.1:$mport" \
  --pid "$last_pid" --peers "$PEERS" --leaves "$RELAY_LEAVES" --files "$FILES" \
  --duration "$DURATION" --sources "$sources" --json | tee "$work/relay.json" >&2
stop "$last_pid"
echo "relay: raw relay" >&2
port=$(free_port)
taskset -c 0 "$load" raw-relay --listen "127.0.0.1:$port" --json > "$work/raw.out" &
raw_pid=$!; pids+=("$raw_pid")
wait_line "$work/raw.out"
taskset -c 1 "$load" relay --raw --target "127.0.0.1:$port" --pid "$raw_pid" \
  --peers "$PEERS" --duration "$DURATION" --json | tee "$work/raw.json" >&2
stop "$raw_pid"

# 3. Search latency across an overlay: node i dials node i-1 and, from the
# third on, one random earlier node: connected, a few hops across.
echo "overlay: $OVERLAY_NODES supernodes x $OVERLAY_LEAVES leaves" >&2
targets=(); metrics=()
for i in $(seq 0 $((OVERLAY_NODES - 1))); do
  port=$(free_port); mport=$(free_port)
  peers=()
  if [ "$i" -ge 1 ]; then peers+=(--peer "${targets[$((i - 1))]}"); fi
  if [ "$i" -ge 2 ]; then peers+=(--peer "${targets[$((RANDOM % (i - 1)))]}"); fi
  start_supernode "overlay$i" - "$port" "$mport" "${peers[@]}"
  targets+=("127.0.0.1:$port"); metrics+=("127.0.0.1:$mport")
done
join() { local IFS=,; echo "$*"; }
# Wait until every supernode has its peers.
for m in "${metrics[@]}"; do
  for _ in $(seq 200); do
    n=$(curl -s "http://$m/metrics" | awk '$1=="canopy_supernode_peers"{print $2}')
    [ "${n:-0}" -ge 1 ] && break; sleep 0.05
  done
done
sleep 1
"$load" overlay --targets "$(join "${targets[@]}")" --metrics "$(join "${metrics[@]}")" \
  --leaves-per-node "$OVERLAY_LEAVES" --files "$FILES" --sources "$sources" \
  --background-qps "$BACKGROUND_QPS" --window "$WINDOW" --json | tee "$work/overlay.json" >&2

python3 - "$work" "$root/benches/load/RESULTS.md" <<'PY'
import json, sys, datetime, os
work, out = sys.argv[1], sys.argv[2]
j = lambda n: json.load(open(os.path.join(work, n)))
lv, cr, rr, ov = j("leaves.json"), j("relay.json"), j("raw.json"), j("overlay.json")
ratio = cr["full"]["forwarded_qps"] / max(rr["full"]["forwarded_qps"], 1)
ms = lambda p: f'{p["p50_ms"]:.2f} / {p["p99_ms"]:.2f} ms'
cpu = lambda p: f'{p["relay_cpu"]*100:.0f}% / {p["generator_cpu"]*100:.0f}%' if p.get("relay_cpu") is not None else "?"
lines = [
 f"## {datetime.date.today()}, `benches/load.sh`",
 "",
 "| benchmark | figure | goal |",
 "|---|---|---|",
 f'| leaves | {lv["leaves"]} leaves x {lv["files_per_leaf"]} files: **{lv["rss_per_leaf_kib"]:.2f} KiB RSS per leaf** ({lv["rss_before_kib"]} -> {lv["rss_after_kib"]} KiB) | <= 16 KiB at 10,000+ |',
 f'| leaves | connected + handshaken + published: {lv["connect_s"]:.2f} s; all indexed: {lv["indexed_s"]:.2f} s | |',
 f'| leaves | search to first hit at full load, p50 / p99: {ms(lv["search"]["first_hit"])} ({lv["search"]["answered"]}/{lv["search"]["sent"]} answered) | |',
 f'| relay | canopy: **{cr["full"]["forwarded_qps"]:,.0f} q/s** forwarded to each of {cr["peers"]} peers (sent {cr["full"]["sent_qps"]:,.0f}); relay / generator CPU {cpu(cr["full"])} | >= 200,000 q/s |',
 f'| relay | raw relay: {rr["full"]["forwarded_qps"]:,.0f} q/s; relay / generator CPU {cpu(rr["full"])} | |',
 f'| relay | **canopy / raw: {ratio:.2f}x** | >= 0.5x |',
 f'| relay | forwarding latency p50 / p99, paced at half the measured rate: canopy {ms(cr["paced"]["latency"])} at {cr["paced"]["forwarded_qps"]:,.0f} q/s; raw {ms(rr["paced"]["latency"])} at {rr["paced"]["forwarded_qps"]:,.0f} q/s | |',
 f'| relay | latency at full speed (queues full) p50 / p99: canopy {ms(cr["full"]["latency"])}; raw {ms(rr["full"]["latency"])} | |',
 f'| overlay | {ov["supernodes"]} supernodes, {ov["leaves"]} leaves, {ov["background_qps"]:.0f} q/s background, TTL {ov["ttl"]}: first hit p50 / p99 {ms(ov["search"]["first_hit"])} | |',
 f'| overlay | last hit within {ov["window_s"]} s, p50 / p99: {ms(ov["search"]["last_hit"])}; {ov["search"]["hits_per_query"]:.1f} hits a query, {ov["search"]["answered"]}/{ov["search"]["sent"]} answered | |',
 "",
 "Raw JSON:",
 "",
 "```",
 *[json.dumps(x) for x in (lv, cr, rr, ov)],
 "```",
 "",
]
text = "\n".join(lines)
print(text)
head = "# Load benchmark results\n\nMachine: 2 cores shared with other work, loopback only. Command: `benches/load.sh`. See benches/README.md for what each figure means.\n\n"
old = open(out).read() if os.path.exists(out) else head
if not old.startswith("# "): old = head + old
parts = old.split("\n## ", 1)
new = parts[0].rstrip() + "\n\n" + text + ("\n## " + parts[1] if len(parts) > 1 else "")
open(out, "w").write(new)
PY
