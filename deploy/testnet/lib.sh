# Shared by the testnet scripts (testnet.sh, homes.sh): running canopy in
# network namespaces and waiting on conditions. Sourced; the caller sets
# CANOPY, $work and PREFIX (the namespaces' name prefix, e.g. "cn-") and
# defines say().

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Tears down every namespace of ours, killing what runs in it first.
down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

# Runs canopy in a namespace in the background; its JSON goes to $work/$2.json.
spawn() { # ns, name, args...
  local ns=$1 name=$2; shift 2
  # ip netns exec execs canopy, so $! is canopy's own pid (for kill -9).
  ip netns exec "$ns" "$CANOPY" "$@" --json > "$work/$name.json" 2> "$work/$name.log" &
  echo $! > "$work/$name.pid"
  # Killed at the end with the namespace: no job notice for it.
  disown $!
}

# Waits (up to $2 s) until the command in $3... succeeds.
wait_until() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then say "timed out waiting for: $what"; return 1; fi
    sleep 0.2
  done
}

started() { [ -s "$work/$1.json" ]; }
metric() { # ns, addr, name
  in_ns "$1" curl -sf "http://$2/metrics" | awk -v m="$3" '$1 == m { print $2 }'
}
metric_at_least() { [ "$(metric "$1" "$2" "$3")" -ge "$4" ] 2>/dev/null; }

# The exit trap of `test`: on failure, the end of every log; then down.
finish() {
  local status=$?
  if [ $status -ne 0 ]; then
    for f in "$work"/*.log; do [ -s "$f" ] && { echo "--- $f" >&2; tail -5 "$f" >&2; }; done
  fi
  down
  exit $status
}
