#!/usr/bin/env bash
# make demo: a local master, replproxy in front of it, and two replicas of the
# proxy. Writes flow into the master; the screen shows them arriving on every
# replica with equal DEBUG DIGESTs. Ctrl-C (or DEMO_SECONDS) ends it and
# stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "demo needs $tool: apt-get install -y redis-server redis-tools" >&2; exit 1; }
done

BASE=${DEMO_PORT_BASE:-16379}
MASTER=$BASE PROXY=$((BASE + 1)) R1=$((BASE + 2)) R2=$((BASE + 3))
DIR=$PWD/demo-data
SECONDS_TO_RUN=${DEMO_SECONDS:-30}
rm -rf "$DIR" && mkdir -p "$DIR"/{master,r1,r2}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for port in $MASTER $R1 $R2; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  wait 2>/dev/null || true
  echo "demo stopped; logs are in $DIR"
}
trap cleanup EXIT INT TERM

redis_start() { # port dir [args...]
  local port=$1 dir=$2; shift 2
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --logfile "$dir/redis.log" \
    --enable-debug-command yes --daemonize yes "$@"
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}

echo "== master on :$MASTER"
redis_start "$MASTER" "$DIR/master" --repl-diskless-sync-delay 0
redis-cli -p "$MASTER" debug populate 20000 demo:key 64 >/dev/null

echo "== replproxy on :$PROXY (data in $DIR/proxy, log in $DIR/proxy.log)"
./bin/replproxy run --listen 127.0.0.1:$PROXY --master 127.0.0.1:$MASTER \
  --data-dir "$DIR/proxy" --log-format console >"$DIR/proxy.log" 2>&1 &
pids+=($!)
until redis-cli -p "$PROXY" ping >/dev/null 2>&1; do sleep 0.1; done

echo "== replicas of the proxy on :$R1 and :$R2"
redis_start "$R1" "$DIR/r1" --replicaof 127.0.0.1 "$PROXY"
redis_start "$R2" "$DIR/r2" --replicaof 127.0.0.1 "$PROXY"

echo "== writing to the master with redis-benchmark for ${SECONDS_TO_RUN}s"
redis-benchmark -p "$MASTER" -q -l -r 100000 -t set,lpush,incr,sadd,hset -P 8 -c 4 >/dev/null 2>&1 &
pids+=($!)

field() { redis-cli -p "$1" info "$2" | tr -d '\r' | sed -n "s/^$3://p"; }
end=$((SECONDS + SECONDS_TO_RUN))
while [ $SECONDS -lt $end ]; do
  # Read downstream first, so a printed line never shows a replica ahead.
  r1=$(field $R1 replication slave_repl_offset) r2=$(field $R2 replication slave_repl_offset)
  p=$(field $PROXY replication master_repl_offset) link=$(field $PROXY replication master_link_status)
  reps=$(field $PROXY replication connected_slaves)
  m=$(field $MASTER replication master_repl_offset) slaves=$(field $MASTER replication connected_slaves)
  printf '%s  master offset %-10s slaves %s | proxy offset %-10s link %-4s replicas %s | r1 %-10s r2 %-10s\n' \
    "$(date +%T)" "$m" "$slaves" "$p" "$link" "$reps" "$r1" "$r2"
  sleep 2
done

kill "${pids[1]}" 2>/dev/null || true
echo "== load stopped; waiting for the replicas to catch up"
for _ in $(seq 1 50); do
  m=$(field $MASTER replication master_repl_offset)
  [ "$(field $R1 replication slave_repl_offset)" = "$m" ] && [ "$(field $R2 replication slave_repl_offset)" = "$m" ] && break
  sleep 0.2
done
echo "== DEBUG DIGEST (equal means the replicas hold exactly the master's data)"
for port in $MASTER $R1 $R2; do echo "  :$port $(redis-cli -p "$port" debug digest)"; done
echo "== the master sees one replica (the proxy):"
redis-cli -p "$MASTER" info replication | grep -E '^(connected_slaves|slave0)'
echo "== the proxy's view:"
redis-cli -p "$PROXY" info replication | grep -E '^(master_link_status|connected_slaves|slave[0-9]|master_repl_offset|repl_backlog_histlen)'
