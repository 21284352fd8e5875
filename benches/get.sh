#!/usr/bin/env bash
# `canopy get` with discovery included, against curl <- nginx, in one run,
# on 127.0.0.1, with one 512 MiB file and one source. A supernode and a
# leaf sharing the file are already running; each `canopy get` is a fresh
# process that starts a leaf, joins the supernode, searches for the id,
# and downloads, verifies, fsyncs and renames the file. Timed as a whole
# process (wall clock), as curl's time_total is.
#
# Prints the medians, their ratio (curl time / canopy time: above 1.0
# means canopy is faster; goal >= 0.9) and canopy's time to first byte
# (from the process's start to the first verified MiB on disk, discovery
# included; goal <= 100 ms).
#
# Usage: benches/get.sh            (RUNS=7 SIZE_MIB=512 by default)
# It installs nginx, b3sum, curl and python3 with apt-get if they are missing.
set -euo pipefail
RUNS=${RUNS:-7}
SIZE_MIB=${SIZE_MIB:-512}
root=$(cd "$(dirname "$0")/.." && pwd)

source "$root/benches/lib/nginx.sh"

install_missing nginx:nginx b3sum:b3sum curl:curl python3:python3

echo "building canopy (release)" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p canopy-cli
canopy="$root/target/release/canopy"

make_work canopy-get-bench
write_share
start_nginx
start_supernode
"$canopy" leaf --supernode "$supernode" --share "$work/share" --listen 127.0.0.1:0 --control 127.0.0.1:0 \
  --data-dir "$work/leaf" --json > "$work/leaf.json" 2>/dev/null &
pids+=($!)
first_line "$work/leaf.json" > /dev/null
# Until a search finds the file (each try returns at its first result).
for _ in $(seq 100); do
  n=$("$canopy" search --supernode "$supernode" --json --timeout 0.3 --max-results 1 --id "$id" | wc -l)
  [ "$n" -ge 1 ] && break
done
[ "$n" -ge 1 ] || { echo "the leaf's file never showed up" >&2; exit 1; }

now() { date +%s.%N; }
check() { [ "$(b3sum --no-names "$1")" = "$id" ] || { echo "$1 does not match" >&2; exit 1; }; }
# Flush earlier runs' dirty pages so no run pays for another's writeback.
settle() { sync; }

results="$work/results.txt"
: > "$results"
echo "one source, ${RUNS} runs: canopy get (discovery included) vs curl <- nginx" >&2
for _ in $(seq "$RUNS"); do
  rm -f "$work/out/curl.bin"
  settle
  t=$(curl -s -o "$work/out/curl.bin" -w '%{time_total}' "http://127.0.0.1:$port/bench.bin")
  check "$work/out/curl.bin"; echo "curl $t" >> "$results"

  rm -f "$work/out/canopy.bin"
  settle
  a=$(now)
  "$canopy" get --supernode "$supernode" -o "$work/out/canopy.bin" --json "$id" > "$work/get.json"
  b=$(now)
  check "$work/out/canopy.bin"
  echo "canopy $(python3 -c "print($b - $a)")" >> "$results"
  python3 -c 'import json,sys; print("ttfb", json.load(open(sys.argv[1]))["first_byte_seconds"])' \
    "$work/get.json" >> "$results"
done

python3 - "$results" "$SIZE_MIB" "$RUNS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    key, value = line.split()
    rows.setdefault(key, []).append(float(value))
mib, runs = int(sys.argv[2]), int(sys.argv[3])
med = {k: statistics.median(v) for k, v in rows.items()}
def rate(k): return mib / 1024 / med[k]
ratio = med["curl"] / med["canopy"]
ttfb_ms = med["ttfb"] * 1000
print(f"\n`canopy get` vs curl <- nginx: {mib} MiB, one source on 127.0.0.1, median of {runs} runs\n")
print("| canopy get (wall, discovery included) | curl <- nginx sendfile | ratio (curl / canopy) | canopy time to first byte |")
print("|---|---|---|---|")
print(f"| {med['canopy']:.3f} s ({rate('canopy'):.2f} GiB/s) | {med['curl']:.3f} s ({rate('curl'):.2f} GiB/s) "
      f"| {ratio:.2f}x ({'met' if ratio >= 0.9 else 'NOT met'}: >= 0.9x) "
      f"| {ttfb_ms:.0f} ms ({'met' if ttfb_ms <= 100 else 'NOT met'}: <= 100 ms) |")
print("\nevery run (s): canopy " + " ".join(f"{v:.3f}" for v in rows["canopy"])
      + " | curl " + " ".join(f"{v:.3f}" for v in rows["curl"])
      + " | ttfb " + " ".join(f"{v:.3f}" for v in rows["ttfb"]))
PY
