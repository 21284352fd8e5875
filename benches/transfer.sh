#!/usr/bin/env bash
# Transfer benchmark: Canopy side by side with the reference tools, in one
# run, on 127.0.0.1, with a 1 GiB file. Prints medians and ratios
# (reference time / canopy time: above 1.0 means canopy is faster).
#
#   one source:   canopy get  vs  curl from nginx (sendfile on)
#   four sources: canopy get  vs  aria2c -x4 over the same four leaves
#   sharing:      canopy hash (the leaf's own scan) vs b3sum
#
# Usage: benches/transfer.sh            (RUNS=5 SIZE_MIB=1024 by default)
# It installs nginx, aria2, b3sum and curl with apt-get if they are missing.
set -euo pipefail
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)

source "$root/benches/lib/nginx.sh"

install_missing nginx:nginx aria2c:aria2 b3sum:b3sum curl:curl python3:python3

echo "building canopy (release)" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
canopy="$root/target/release/canopy"

make_work canopy-bench
write_share
start_nginx
start_supernode
leaf_urls=()
start_leaf() {
  "$canopy" leaf --supernode "$supernode" --share "$work/share" --listen 127.0.0.1:0 --control 127.0.0.1:0 \
    --data-dir "$work/leaf$1" --json > "$work/leaf$1.json" 2>/dev/null &
  pids+=($!)
  leaf_urls+=("http://$(json "$(first_line "$work/leaf$1.json")" listen)/content/$id")
}
# Waits until a search finds the file at $1 sources.
wait_sources() {
  for _ in $(seq 100); do
    n=$("$canopy" search --supernode "$supernode" --json --timeout 0.3 --id "$id" \
        | python3 -c 'import json,sys; print(sum(len(json.loads(l)["sources"]) for l in sys.stdin))')
    [ "$n" -ge "$1" ] && return
  done
  echo "only $n sources found" >&2; exit 1
}

now() { date +%s.%N; }
# Flush earlier runs' dirty pages so no run pays for another's writeback.
settle() { sync; }
canopy_get() {
  rm -f "$work/out/canopy.bin"
  settle
  "$canopy" get --supernode "$supernode" -o "$work/out/canopy.bin" --json --search-timeout 0.5 "$id" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])'
}
check() { [ "$(b3sum --no-names "$1")" = "$id" ] || { echo "$1 does not match" >&2; exit 1; }; }

results="$work/results.txt"
: > "$results"

echo "one source: canopy get vs curl <- nginx" >&2
start_leaf 1
wait_sources 1
for _ in $(seq "$RUNS"); do
  rm -f "$work/out/curl.bin"
  settle
  t=$(curl -s -o "$work/out/curl.bin" -w '%{time_total}' "http://127.0.0.1:$port/bench.bin")
  check "$work/out/curl.bin"; echo "one_curl $t" >> "$results"
  t=$(canopy_get); check "$work/out/canopy.bin"; echo "one_canopy $t" >> "$results"
done

echo "four sources: canopy get vs aria2c -x4" >&2
for n in 2 3 4; do start_leaf "$n"; done
wait_sources 4
for _ in $(seq "$RUNS"); do
  rm -f "$work/out/aria.bin"
  settle
  a=$(now)
  aria2c -q -x4 -s4 -k1M --file-allocation=none --allow-overwrite=true --auto-file-renaming=false \
    -d "$work/out" -o aria.bin "${leaf_urls[@]}"
  b=$(now)
  check "$work/out/aria.bin"
  echo "four_aria2c $(python3 -c "print($b - $a)")" >> "$results"
  t=$(canopy_get); check "$work/out/canopy.bin"; echo "four_canopy $t" >> "$results"
done

echo "sharing: canopy hash vs b3sum" >&2
for _ in $(seq "$RUNS"); do
  a=$(now); b3sum "$file" > /dev/null; b=$(now)
  echo "hash_b3sum $(python3 -c "print($b - $a)")" >> "$results"
  a=$(now); "$canopy" hash "$work/share" > "$work/hash.txt"; b=$(now)
  grep -q "^$id " "$work/hash.txt" || { echo "canopy hash disagrees with b3sum" >&2; exit 1; }
  echo "hash_canopy $(python3 -c "print($b - $a)")" >> "$results"
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
print(f"\nTransfer benchmark: {mib} MiB on 127.0.0.1, median of {runs} runs\n")
print(f"| case | canopy | reference | ratio (ref time / canopy time) | goal |")
print(f"|---|---|---|---|---|")
for name, c, r, ref, goal in [
    ("one source", "one_canopy", "one_curl", "curl <- nginx sendfile", 0.9),
    ("four sources", "four_canopy", "four_aria2c", "aria2c -x4, same leaves", 1.0),
    ("hashing (sharing)", "hash_canopy", "hash_b3sum", "b3sum", 0.9),
]:
    ratio = med[r] / med[c]
    print(f"| {name} | {med[c]:.3f} s ({rate(c):.2f} GiB/s) | {ref}: {med[r]:.3f} s ({rate(r):.2f} GiB/s) | {ratio:.2f}x | >= {goal}x {'met' if ratio >= goal else 'NOT met'} |")
PY
