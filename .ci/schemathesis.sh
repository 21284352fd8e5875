#!/usr/bin/env bash
# Fuzzes a leaf's control API with schemathesis (from PyPI) against its
# OpenAPI document (crates/daemon/openapi.json), for at most ~60 s, with
# every check schemathesis has: any 5xx, any answer the document does not
# describe (status, content type, headers, body schema), a request the
# document forbids that is accepted, or one it allows that is refused,
# fails the run.
#
#   .ci/schemathesis.sh            a real `canopy leaf` (the daemon), with
#                                  a supernode and a second leaf sharing
#                                  files, all on 127.0.0.1, started here
#   .ci/schemathesis.sh DATA_DIR   a running leaf's data directory
#                                  (its control.json and control.token)
#   .ci/schemathesis.sh --fake     the API over the fake daemon of the
#                                  API's tests (examples/fake_api.rs)
#
# schemathesis lives in a venv under target/ (kept between runs).
# SCHEMATHESIS_SECONDS sets the time budget (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

version=4.32.5
venv="$root/target/schemathesis/venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  echo "--- installing schemathesis $version"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi

data_dir=${1:-}
pids=()
# Keeps the run's exit status: the nodes are stopped and waited for (a
# leaf still saving its caches as it stops would race the removal), then
# their scratch folder is removed.
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${scratch:-}" ]; then rm -rf "$scratch" || true; fi
  exit "$status"
}
trap cleanup EXIT
# Waits up to 10 s for a file to be non-empty, or for a process to die.
wait_for_file() {
  local file=$1 pid=$2 log=$3
  for _ in $(seq 1 100); do
    [ -s "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
  done
  echo "no $file in 10 s"; cat "$log"; exit 1
}
if [ -z "$data_dir" ]; then
  echo "--- starting a supernode, a sharing leaf, and the leaf under test"
  cargo build -q -p canopy-cli
  canopy="$root/target/debug/canopy"
  scratch=$(mktemp -d)
  mkdir -p "$scratch/share" "$scratch/sharer" "$scratch/data" "$scratch/downloads"
  for name in "nocturne in e flat.flac" "field recording 01.wav" "notes.txt"; do
    head -c 300000 /dev/urandom > "$scratch/share/$name"
  done
  "$canopy" supernode --listen 127.0.0.1:0 --data-dir "$scratch/sn" --json \
    >"$scratch/sn.json" 2>"$scratch/sn.log" &
  pids+=($!)
  wait_for_file "$scratch/sn.json" "${pids[-1]}" "$scratch/sn.log"
  supernode=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["addr"])' "$scratch/sn.json")
  "$canopy" leaf --supernode "$supernode" --share "$scratch/share" --listen 127.0.0.1:0 \
    --control 127.0.0.1:0 --data-dir "$scratch/sharer" --downloads "$scratch/sharer-downloads" \
    --json >"$scratch/sharer.json" 2>"$scratch/sharer.log" &
  pids+=($!)
  wait_for_file "$scratch/sharer.json" "${pids[-1]}" "$scratch/sharer.log"
  data_dir="$scratch/data"
  "$canopy" leaf --supernode "$supernode" --listen 127.0.0.1:0 --control 127.0.0.1:0 \
    --data-dir "$data_dir" --downloads "$scratch/downloads" \
    >"$scratch/leaf.log" 2>&1 &
  pids+=($!)
  wait_for_file "$data_dir/control.json" "${pids[-1]}" "$scratch/leaf.log"
elif [ "$data_dir" = "--fake" ]; then
  echo "--- starting the API over the fake daemon"
  cargo build -q -p canopy-daemon --example fake_api
  scratch=$(mktemp -d)
  data_dir="$scratch/data"
  mkdir -p "$data_dir"
  "$root/target/debug/examples/fake_api" "$data_dir" >"$scratch/fake_api.log" 2>&1 &
  pids+=($!)
  wait_for_file "$data_dir/control.json" "${pids[-1]}" "$scratch/fake_api.log"
fi

url=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$data_dir/control.json")
token=$(cat "$data_dir/control.token")
seconds=${SCHEMATHESIS_SECONDS:-60}
report="$root/target/schemathesis/report"
echo "--- schemathesis against $url for at most ${seconds} s"
# Run from target/: schemathesis keeps a .schemathesis cache where it runs.
cd "$root/target/schemathesis"
# The hard timeout is a backstop: --max-time bounds the run itself. One
# worker: with several, schemathesis's coverage phase hit CPython 3.11's
# "AST constructor recursion depth mismatch" (its own error, not the API's).
timeout $((seconds + 60)) "$venv/bin/schemathesis" run "$root/crates/daemon/openapi.json" \
  --url "$url" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-time "$seconds" \
  --workers 1 \
  --request-timeout 10 \
  --no-color \
  --report junit --report-dir "$report"
