#!/usr/bin/env bash
# 100,000 live sockets over several inbox processes sharing the Redis live hub (one process
# may hold about 20,000 descriptors on the machines Herald is tested on), the clients over
# several load-generator processes; the inboxes' total RSS and the arrival of a broadcast to
# every socket.
#
#   cargo build --release -p herald -p herald-loadtest
#   loadtest/scripts/live-100k.sh              # needs MariaDB, Redis and JetStream running
#
# Settings (environment): CONNECTIONS (100000), NODES (6 inbox processes), WORKERS (6 client
# processes), BROADCASTS (3), MYSQL (mysql://root@127.0.0.1:3306), REDIS
# (redis://127.0.0.1:6379), BUS (nats://127.0.0.1:4222). The report goes to
# loadtest-reports/ (live-*.md and .json).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release
CONNECTIONS=${CONNECTIONS:-100000}
NODES=${NODES:-6}
WORKERS=${WORKERS:-6}
BROADCASTS=${BROADCASTS:-3}
MYSQL=${MYSQL:-mysql://root@127.0.0.1:3306}
REDIS=${REDIS:-redis://127.0.0.1:6379}
BUS=${BUS:-nats://127.0.0.1:4222}
run=live$(date +%s)
db=herald_$run
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE $db CHARACTER SET utf8mb4"
sep() { case "$1" in *\?*) echo "&";; *) echo "?";; esac; }
export HERALD_ADMIN_KEY=live-admin-key-0123456789abcdef
export HERALD_INBOX__TOKEN_SECRET=live-token-secret-0123456789abcdef-012345
export HERALD_DATA_DIR=$work
export RUST_LOG=warn
for s in DIRECTORY CAMPAIGNS INBOX BROADCASTS DELIVERIES DELAYS; do
  export "HERALD_BACKENDS__$s=$MYSQL/$db?max_connections=16"
done
for s in PREFERENCE_CACHE LIVE THROTTLE BROADCAST_CACHE; do
  export "HERALD_BACKENDS__$s=$REDIS$(sep "$REDIS")prefix=$run"
done
export HERALD_BACKENDS__BUS="$BUS$(sep "$BUS")prefix=$run"

start() { # role port
  (ulimit -n "$(ulimit -Hn)"; HERALD_LISTEN=127.0.0.1:$2 exec "$bin/herald" "$1") >"$work/$1-$2.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "herald $1 on $2 did not start:" >&2; cat "$work/$1-$2.log" >&2; exit 1
}

"$bin/herald" migrate >"$work/migrate.log" 2>&1
start api 19080
start fanout 19081
args=()
for i in $(seq 1 "$NODES"); do
  port=$((19100 + i))
  start inbox "$port"
  args+=(--inbox-url "http://127.0.0.1:$port" --server-pid "${pids[-1]}")
done
lt() { "$bin/herald-loadtest" --url http://127.0.0.1:19080 --admin-key "$HERALD_ADMIN_KEY" "$@"; }
lt seed --users "$CONNECTIONS" --report-dir "$work/reports" >/dev/null
lt live --connections "$CONNECTIONS" --workers "$WORKERS" --broadcasts "$BROADCASTS" \
  --wait-secs 60 "${args[@]}"
