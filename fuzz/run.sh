#!/usr/bin/env bash
# Fuzzes every target for SECONDS each (default 12: about a minute in all),
# starting from the committed seeds in fuzz/corpus/<target>/. Fails on the first
# crash, leak, timeout or out-of-memory; libFuzzer then prints the input's
# path under fuzz/artifacts/<target>/. New inputs found go to
# fuzz/target/corpus/<target>/, never into the committed corpus.
#
#   fuzz/run.sh            # CI: 12 s a target
#   fuzz/run.sh 300        # a longer run
#   fuzz/run.sh 300 tree   # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on the stable
# toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags to rustc).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-12}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame http_request tree config noise lan)
fi

export RUSTC_BOOTSTRAP=1

# Longest input per target: room for a frame of 200 files or 32 addresses;
# a path and a header; a tree of 9 groups with a small last group; a config.
declare -A max_len=(
  [frame]=16384
  [http_request]=512
  [tree]=4096
  [config]=4096
  [noise]=4096
  [lan]=512
)

# cargo-fuzz has no --locked: check that fuzz/Cargo.lock is up to date
# first (it goes stale when a crate's dependencies change).
if ! cargo metadata --manifest-path fuzz/Cargo.toml --locked --format-version 1 >/dev/null; then
  echo "fuzz/Cargo.lock is out of date: update it with"
  echo "  cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null"
  echo "and commit it."
  exit 1
fi
cargo fuzz build

for target in "${targets[@]}"; do
  echo "--- fuzz $target (${seconds}s)"
  mkdir -p "fuzz/target/corpus/$target"
  log="fuzz/target/fuzz-$target.log"
  if ! cargo fuzz run "$target" "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" \
    -max_len="${max_len[$target]:-4096}" \
    -rss_limit_mb=2048 \
    -timeout=10 \
    -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E '^(INFO: seed corpus|Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done
echo "--- fuzz ok"
