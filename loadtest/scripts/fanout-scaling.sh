#!/usr/bin/env bash
# The scale-out figure: one 1M-user fan-out through ONE `herald fanout` process, then the same
# through TWO, on the distributed engines (every store on MySQL/MariaDB, the caches and the
# live hub on Redis, the bus on NATS JetStream or Kafka), in the same run, with the ratio.
#
#   cargo build --release -p herald -p herald-loadtest
#   loadtest/scripts/fanout-scaling.sh            # needs MariaDB, Redis and JetStream running
#
# Settings (environment): MYSQL (server URL without database, default mysql://root@127.0.0.1:3306),
# REDIS (redis://127.0.0.1:6379), BUS (nats://127.0.0.1:4222; kafka://… works too), USERS
# (1000000), PARTITIONS (8: the bus topics' partitions, shared by the fan-out processes),
# RUNS (2: campaigns per process count, alternating 1, 2, 1, 2, …).
# The pace limit of the large strategy is lifted so that what is measured is how fast the
# processes and the engines write, not the configured throttle.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release
MYSQL=${MYSQL:-mysql://root@127.0.0.1:3306}
REDIS=${REDIS:-redis://127.0.0.1:6379}
BUS=${BUS:-nats://127.0.0.1:4222}
USERS=${USERS:-1000000}
PARTITIONS=${PARTITIONS:-8}
RUNS=${RUNS:-2}
run=scale$(date +%s)
db=herald_$run
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE $db CHARACTER SET utf8mb4"
sep() { case "$1" in *\?*) echo "&";; *) echo "?";; esac; }
export HERALD_ADMIN_KEY=scale-admin-key-0123456789abcdef
export HERALD_INBOX__TOKEN_SECRET=scale-token-secret-0123456789abcdef-0123
export HERALD_DATA_DIR=$work
export HERALD_THROTTLE__LARGE_USERS_PER_S=10000000
export RUST_LOG=warn
for s in DIRECTORY CAMPAIGNS INBOX BROADCASTS DELIVERIES DELAYS; do
  export "HERALD_BACKENDS__$s=$MYSQL/$db?max_connections=32"
done
for s in PREFERENCE_CACHE LIVE THROTTLE BROADCAST_CACHE; do
  export "HERALD_BACKENDS__$s=$REDIS$(sep "$REDIS")prefix=$run"
done
case "$BUS" in
  kafka://*) export HERALD_BACKENDS__BUS="$BUS$(sep "$BUS")prefix=$run&partitions=$PARTITIONS" ;;
  *) export HERALD_BACKENDS__BUS="$BUS$(sep "$BUS")prefix=$run" ;;
esac

start() { # role port
  HERALD_LISTEN=127.0.0.1:$2 "$bin/herald" "$1" >"$work/$1-$2.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "herald $1 on $2 did not start:" >&2; cat "$work/$1-$2.log" >&2; exit 1
}

"$bin/herald" migrate >"$work/migrate.log" 2>&1
start api 18080
api_pid=${pids[-1]}
start fanout 18081
fanout_pids=${pids[-1]}
lt() { "$bin/herald-loadtest" --url http://127.0.0.1:18080 --admin-key "$HERALD_ADMIN_KEY" --report-dir "$work/reports" "$@"; }
lt seed --users "$USERS" >/dev/null

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Where the CPU of one campaign went: MariaDB, the broker, the fan-out processes (summed), the
# API, and what the machine left idle (CPU seconds; the run's length × cores is the total).
cpu_pids() { echo "mariadb:$(cat /run/mysqld/mysqld.pid 2>/dev/null) broker:$(pgrep -f "nats-server.* -p ${BUS##*:}" | head -1) fanout:${fanout_pids// /,} api:$api_pid"; }
snapshot() {
  for kv in $(cpu_pids); do k=${kv%%:*}; t=0; for p in $(echo "${kv#*:}" | tr , ' '); do t=$(echo "$t + $(cpu "$p")" | bc); done; printf '%s=%s ' "$k" "$t"; done
  awk -v t="$(getconf CLK_TCK)" '/^cpu /{printf "idle=%.1f", $5 / t}' /proc/stat
}

# users/s of one campaign to every seeded user, from the report's JSON, and its CPU split.
fanout_once() {
  local before after
  before=$(snapshot)
  lt fanout --sizes "$USERS" >/dev/null
  after=$(snapshot)
  python3 -c 'import json,sys,glob; f=sorted(glob.glob(sys.argv[1]+"/fanout-*.json"))[-1]; s=json.load(open(f))["figures"]["sizes"][0]; print(round(s["users_per_s"]), round(s["secs"],2))' "$work/reports"
  python3 - "$before" "$after" >&2 <<'PY'
import sys
b = dict(kv.split("=") for kv in sys.argv[1].split())
a = dict(kv.split("=") for kv in sys.argv[2].split())
print("    CPU seconds: " + ", ".join(f"{k} {float(a[k]) - float(b[k]):.1f}" for k in a))
PY
}

declare -a one two
second=
for i in $(seq 1 "$RUNS"); do
  if [ -n "$second" ]; then kill "$second"; wait "$second" 2>/dev/null || true; second=; fanout_pids=${pids[1]}; fi
  read -r ups secs < <(fanout_once); one+=("$ups"); echo "1 fan-out process:  $secs s, $ups users/s" >&2
  start fanout 18082; second=${pids[-1]}; fanout_pids="${pids[1]} $second"
  read -r ups secs < <(fanout_once); two+=("$ups"); echo "2 fan-out processes: $secs s, $ups users/s" >&2
done
python3 - "${one[*]}" "${two[*]}" "$USERS" "$BUS" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]
two = [float(x) for x in sys.argv[2].split()]
m1, m2 = statistics.median(one), statistics.median(two)
print(f"| fan-out processes | users/s per run ({int(sys.argv[3]):,} users, bus {sys.argv[4].split('://')[0]}) | median |")
print("|---|---|---:|")
print(f"| 1 | {', '.join(f'{x:,.0f}' for x in one)} | {m1:,.0f} |")
print(f"| 2 | {', '.join(f'{x:,.0f}' for x in two)} | {m2:,.0f} |")
print(f"ratio 2 / 1: {m2 / m1:.2f}")
PY
