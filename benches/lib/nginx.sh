# shellcheck shell=bash
# The setup benches/get.sh and benches/transfer.sh share, sourced by both:
# the tools they need installed with apt-get, a work folder removed at exit
# with every process started, one random file to share with its BLAKE3 id,
# nginx (sendfile on) serving it as the reference, and a canopy supernode.
# Each function says which globals it sets.

# install_missing COMMAND:PACKAGE...: installs the packages whose command
# is missing.
install_missing() {
  local missing=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# make_work NAME: sets `work` (a new folder /tmp/NAME.XXXXXX) and `pids`
# (the processes to kill); at exit both go, and nginx with them.
make_work() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap cleanup EXIT
}
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}

# write_share: sets `file` ($work/share/bench.bin, SIZE_MIB random MiB) and
# `id` (its BLAKE3); makes $work/out for the downloads.
write_share() {
  mkdir -p "$work/share" "$work/out"
  file="$work/share/bench.bin"
  echo "writing a ${SIZE_MIB} MiB file" >&2
  head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$file"
  id=$(b3sum --no-names "$file")
}

# start_nginx: nginx, sendfile on, serving the share folder; sets `port`.
start_nginx() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/nginx.conf" <<CONF
daemon on;
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server { listen 127.0.0.1:$port; root $work/share; }
}
CONF
  nginx -c "$work/nginx.conf" -p "$work"
}

# First line of a node's --json output, once it appears.
first_line() {
  for _ in $(seq 200); do
    [ -s "$1" ] && { head -n1 "$1"; return; }
    sleep 0.05
  done
  echo "no output in $1" >&2; exit 1
}
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# start_supernode: `$canopy supernode` on 127.0.0.1; sets `supernode` (its
# address).
start_supernode() {
  "$canopy" supernode --listen 127.0.0.1:0 --json > "$work/sn.json" 2>/dev/null &
  pids+=($!)
  supernode=$(json "$(first_line "$work/sn.json")" addr)
}
