#!/usr/bin/env bash
# Classic vs sharded Redis: what one publish costs Redis, and how many messages each node has
# to take from Redis, as the number of nodes grows. For each mode and node count it starts a
# fresh Redis (classic: one redis-server; sharded: a 3-master + 3-replica Redis Cluster from
# deploy/local/redis-cluster), N fanout nodes, and runs the loadtest `rooms` workload with the
# rooms spread so each node hosts 1/N of them (client i is on node i mod N and subscribes topic
# i mod TOPICS; TOPICS is a multiple of every N), publishers on other nodes than the rooms.
#
#   deploy/bench/scaling.sh                          # classic and sharded, 2 4 6 nodes
#   MODES=sharded NODE_COUNTS="2 4" deploy/bench/scaling.sh
#
# Per run it prints: published messages (all nodes' fanout_topic_messages_published_total
# {source="socket"}, warm-up included); Redis CPU per publish: utime+stime of every redis-server
# process of the run (from /proc, sampled every second), over the steady part of the publishing
# (the middle 80% of the messages), minus what the same processes burn idle (measured for
# IDLE seconds before the clients connect: cluster bus, cron), for all of them and for the
# busiest one (each Redis process is single-threaded: its 1 core is the limit); and the messages each node
# received from Redis
# (fanout_adapter_messages_received_total) per publish: ~1 for every node in classic mode, ~1/N
# in sharded mode when the adapter subscribes only to rooms the node hosts.
#
# Environment: MODES="classic sharded", NODE_COUNTS="2 4 6", CLIENTS=600, TOPICS=60,
# PUBLISHERS=5, RATE=1000 (msg/s over all publishers), DURATION=20s, WARMUP=3s, PAYLOAD=128, IDLE=5,
# BASE_PORT=7401, OUT=target/bench/<date>-scaling, SKIP_BUILD=1 (use the existing release build).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MODES=${MODES:-classic sharded}
NODE_COUNTS=${NODE_COUNTS:-2 4 6}
CLIENTS=${CLIENTS:-600}
TOPICS=${TOPICS:-60}
PUBLISHERS=${PUBLISHERS:-5}
RATE=${RATE:-1000}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
PAYLOAD=${PAYLOAD:-128}
IDLE=${IDLE:-5}
BASE_PORT=${BASE_PORT:-7401}
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)-scaling}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
NODE_BIN=${NODE_BIN:-target/release/fanout-node}
LT=${LT_BIN:-target/release/fanout-loadtest}
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release -p fanout-node -p fanout-loadtest
CLK_TCK=$(getconf CLK_TCK)

PIDS=()        # nodes and the classic redis-server of the current run
CLUSTER_DIR="" # run dir of the current Redis Cluster
stop_run() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [[ -n "$CLUSTER_DIR" ]]; then
    REDIS_CLUSTER_DIR="$CLUSTER_DIR" deploy/local/redis-cluster down >/dev/null 2>&1 || true
    CLUSTER_DIR=""
  fi
}
trap stop_run EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# cpu_ticks PID…: utime + stime of the processes, in clock ticks
cpu_ticks() {
  local p t=0
  for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
# metric PORT NAME [LABELS]: the sum of the samples of NAME on the node at PORT (only those
# whose labels contain LABELS, e.g. source="socket")
metric() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v l="${3:-}" '
    ($1 == n || index($1, n "{") == 1) && index($1, l) > 0 { s += $2 } END { printf "%.0f\n", s }'
}
# messages publishers handed to a node (not the copies other nodes received from Redis)
published_on() { metric "$1" fanout_topic_messages_published_total 'source="socket"'; }

printf '%-8s %5s %10s %22s %28s %s\n' mode nodes published "redis µs/pub all/top" "node received/pub (min..max)" "loss" | tee "$OUT/summary.txt"
for mode in $MODES; do
  for n in $NODE_COUNTS; do
    (( TOPICS % n == 0 )) || { echo "TOPICS=$TOPICS is not a multiple of $n: rooms would not be spread evenly" >&2; exit 2; }
    run="$OUT/$mode-$n"
    mkdir -p "$run"
    if [[ "$mode" == classic ]]; then
      rport=$(free_port)
      redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$run/redis.log" 2>&1 &
      PIDS+=($!)
      REDIS_PIDS=($!)
      for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
      url="redis://127.0.0.1:$rport"
    else
      CLUSTER_DIR="$run/redis-cluster"
      url="$(REDIS_CLUSTER_DIR="$CLUSTER_DIR" REDIS_CLUSTER_PORTS=free deploy/local/redis-cluster up 2>"$run/cluster.log")"
      mapfile -t cports <"$CLUSTER_DIR/ports"
      seeds=""
      for p in "${cports[@]:0:3}"; do seeds+="${seeds:+,}127.0.0.1:$p"; done
      url="redis+cluster://$seeds"
      REDIS_PIDS=()
      for p in "${cports[@]}"; do REDIS_PIDS+=("$(cat "$CLUSTER_DIR/pids/$p.pid")"); done
    fi
    ports=() urls=()
    for ((i = 0; i < n; i++)); do
      port=$((BASE_PORT + i))
      FANOUT_REDIS_URL="$url" FANOUT_LOG=warn FANOUT_NODE_ID="node$i" \
        "$NODE_BIN" --bind "127.0.0.1:$port" >"$run/node$i.log" 2>&1 &
      PIDS+=($!)
      ports+=("$port")
      urls+=("http://127.0.0.1:$port")
    done
    for port in "${ports[@]}"; do
      ok=0
      for _ in $(seq 150); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" == 200 ]] && { ok=1; break; }
        sleep 0.2
      done
      (( ok )) || { echo "node on $port not ready; see $run" >&2; exit 1; }
    done
    # what the Redis processes burn with nothing to do (ticks per second)
    idle0=$(cpu_ticks "${REDIS_PIDS[@]}"); t0=$(date +%s.%N)
    sleep "$IDLE"
    idle_rate=$(awk -v a="$idle0" -v b="$(cpu_ticks "${REDIS_PIDS[@]}")" -v t0="$t0" -v t1="$(date +%s.%N)" \
      'BEGIN { printf "%.3f", (b - a) / (t1 - t0) }')
    recv0=(); pub0=0
    for port in "${ports[@]}"; do
      recv0+=("$(metric "$port" fanout_adapter_messages_received_total)")
      pub0=$((pub0 + $(published_on "$port")))
    done
    "$LT" run rooms --url "$(IFS=,; echo "${urls[*]}")" --clients "$CLIENTS" --topics "$TOPICS" \
      --publishers "$PUBLISHERS" --rate "$RATE" --payload "$PAYLOAD" -d "$DURATION" --warmup "$WARMUP" \
      --label "$mode-$n" --no-progress --json "$run/report.json" >"$run/loadtest.txt" 2>&1 &
    lt=$!
    # samples: seconds, Redis CPU ticks, messages published so far (all nodes), ticks per process
    : >"$run/samples.txt"
    while kill -0 "$lt" 2>/dev/null; do
      p=0
      for port in "${ports[@]}"; do p=$((p + $(published_on "$port"))); done
      per_pid=""
      for rp in "${REDIS_PIDS[@]}"; do per_pid+=" $(cpu_ticks "$rp")"; done
      echo "$(date +%s.%N) $(cpu_ticks "${REDIS_PIDS[@]}") $p$per_pid" >>"$run/samples.txt"
      sleep 1
    done
    wait "$lt" || { echo "loadtest failed ($mode, $n nodes); see $run/loadtest.txt" >&2; tail -5 "$run/loadtest.txt" >&2; }
    pub1=0; per=()
    for i in "${!ports[@]}"; do
      r=$(metric "${ports[i]}" fanout_adapter_messages_received_total)
      per+=($((r - recv0[i])))
      pub1=$((pub1 + $(published_on "${ports[i]}")))
    done
    published=$((pub1 - pub0))
    loss=$(grep -oE 'lost [0-9]+ \([0-9.]+%\)' "$run/loadtest.txt" | head -1 || true)
    printf '%s\n' "${per[@]}" >"$run/received-per-node.txt"
    # Redis CPU per publish over the samples between 10% and 90% of the run's messages
    # (all processes, and the busiest one: a Redis process is single-threaded)
    cpu_per_pub=$(awk -v p0="$pub0" -v total="$published" -v hz="$CLK_TCK" -v idle="$idle_rate" '
      { d = $3 - p0 }
      d >= 0.1 * total && !a { a = 1; t0 = $1; c0 = $2; q0 = $3; for (i = 4; i <= NF; i++) s0[i] = $i }
      d <= 0.9 * total { t1 = $1; c1 = $2; q1 = $3; for (i = 4; i <= NF; i++) s1[i] = $i; nf = NF }
      END { if (!a || q1 <= q0) { print "n/a"; exit }
            mx = 0; for (i = 4; i <= nf; i++) if (s1[i] - s0[i] > mx) mx = s1[i] - s0[i]
            k = q1 - q0; span = t1 - t0; procs = nf - 3
            printf "%.1f/%.1f", ((c1 - c0) - idle * span) / hz * 1e6 / k, (mx - idle / procs * span) / hz * 1e6 / k }' "$run/samples.txt")
    awk -v m="$mode" -v n="$n" -v p="$published" -v c="$cpu_per_pub" -v l="$loss" \
      -v per="${per[*]}" 'BEGIN {
        k = split(per, r, " "); mn = -1; mx = 0
        for (i = 1; i <= k; i++) { v = r[i] / (p > 0 ? p : 1); if (mn < 0 || v < mn) mn = v; if (v > mx) mx = v }
        printf "%-8s %5d %10d %22s %28s %s\n", m, n, p, c, sprintf("%.3f..%.3f", mn, mx), l
      }' | tee -a "$OUT/summary.txt"
    stop_run
  done
done
echo "reports in $OUT"
