#!/usr/bin/env bash
# Side-by-side benchmark: fanout vs the Node.js reference server (deploy/bench/node-ref:
# socket.io + @socket.io/redis-adapter, pinned), same workload, same machine, loopback only. Starts Redis plus N nodes of each system in turn, runs
# fanout-loadtest against each, and prints one table with ratios to node-ref.
#
#   deploy/bench/compare.sh rooms                     # 3000 clients, 30 topics, 200 msg/s
#   deploy/bench/compare.sh storm                     # 2000 clients, 1 topic, 20 msg/s
#   deploy/bench/compare.sh rooms --duration 60s      # extra flags go to `fanout-loadtest run`
#
# Environment:
#   NODES=3           nodes per system
#   CLUSTER=auto      fanout in cluster mode (FANOUT_REDIS_URL); "auto" falls back to
#                     1 embedded fanout node vs 1 node-ref node when cluster mode is not
#                     ready (/readyz, or a 1-second smoke run loses messages); 0 forces that
#   REDIS_PORT=6390   Redis started for the run (redis-server must be installed)
#   OUT=target/bench/<date>-<workload>   where JSON reports, logs and the SVG go
#   SKIP_BUILD=1      use the existing release binaries
#   NODE_BIN=…        the fanout-node binary to run (default target/release/fanout-node), e.g.
#                     an older build for a before/after comparison
set -euo pipefail

WORKLOAD=${1:?usage: compare.sh WORKLOAD [fanout-loadtest run flags...]}
shift || true
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
NODES=${NODES:-3}
CLUSTER=${CLUSTER:-auto}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)-$WORKLOAD}
mkdir -p "$OUT"
LT=target/release/fanout-loadtest
NODE_BIN=${NODE_BIN:-target/release/fanout-node}
PEER_DIR=deploy/bench/node-ref

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

stop_pids() { # stop the given PIDs and drop them from PIDS
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  local keep=()
  for q in "${PIDS[@]}"; do [[ " $* " == *" $q "* ]] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

wait_http() { # url
  for _ in $(seq 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not up: $1" >&2; return 1
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p fanout-node -p fanout-loadtest
fi
(cd "$PEER_DIR" && npm ci --no-audit --no-fund --loglevel=error)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

start_fanout() { # n cluster(0|1) -> sets FANOUT_PIDS, FANOUT_URLS
  FANOUT_PIDS=(); FANOUT_URLS=()
  for i in $(seq "$1"); do
    local port=$((7200 + i))
    if [[ "$2" == 1 ]]; then
      FANOUT_REDIS_URL="$REDIS_URL" FANOUT_NODE_ID="f$i" FANOUT_LOG=warn \
        "$NODE_BIN" --bind "127.0.0.1:$port" >"$OUT/fanout-$i.log" 2>&1 &
    else
      env -u FANOUT_REDIS_URL FANOUT_NODE_ID="f$i" FANOUT_LOG=warn \
        "$NODE_BIN" --bind "127.0.0.1:$port" >"$OUT/fanout-$i.log" 2>&1 &
    fi
    FANOUT_PIDS+=($!); PIDS+=($!)
    FANOUT_URLS+=("http://127.0.0.1:$port")
  done
  for u in "${FANOUT_URLS[@]}"; do wait_http "$u/healthz"; done
}

start_noderef() { # n -> sets REF_PIDS, REF_URLS
  REF_PIDS=(); REF_URLS=()
  for i in $(seq "$1"); do
    local port=$((7100 + i))
    (cd "$PEER_DIR" && PORT=$port REDIS_URL="$REDIS_URL" exec node server.mjs) >"$OUT/node-ref-$i.log" 2>&1 &
    REF_PIDS+=($!); PIDS+=($!)
    REF_URLS+=("http://127.0.0.1:$port")
  done
  for u in "${REF_URLS[@]}"; do wait_http "$u/healthz"; done
}

join() { local IFS=,; echo "$*"; }
pid_flags() { for p in "$@"; do printf -- '--target-pid %s ' "$p"; done; }

# Decide fanout's mode: cluster if its nodes report ready and a short smoke run across
# them loses nothing.
MODE=cluster
if [[ "$CLUSTER" == 0 ]]; then
  MODE=embedded
elif [[ "$CLUSTER" == auto ]]; then
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start_fanout "$NODES" 1
  ready=1
  for u in "${FANOUT_URLS[@]}"; do
    curl -fsS "$u/readyz" 2>/dev/null | grep -q '"ready":true' || ready=0
  done
  if [[ $ready == 1 ]] && "$LT" run rooms --url "$(join "${FANOUT_URLS[@]}")" \
      --seed-redis "$REDIS_URL" --clients 60 --topics 3 --rate 30 --warmup 0s \
      --duration 1s --drain 1s --no-progress --json "$OUT/smoke.json" >"$OUT/smoke.txt" 2>&1 \
      && grep -q '"lost": 0,' "$OUT/smoke.json" && grep -q '"expected": [1-9]' "$OUT/smoke.json"; then
    MODE=cluster
  else
    MODE=embedded
  fi
  stop_pids "${FANOUT_PIDS[@]}"
fi
if [[ $MODE == cluster ]]; then N=$NODES; else N=1; fi
if [[ $MODE == cluster ]]; then
  NOTE="fanout: $N nodes, cluster mode (FANOUT_REDIS_URL); node-ref: $N nodes + redis-adapter"
else
  NOTE="fanout: 1 EMBEDDED node (cluster mode not ready); node-ref: 1 node + redis-adapter"
fi
echo "== $NOTE"

# node-ref
redis-cli -p "$REDIS_PORT" flushall >/dev/null
start_noderef "$N"
"$LT" run "$WORKLOAD" --url "$(join "${REF_URLS[@]}")" --seed-redis "$REDIS_URL" \
  --label node-ref $(pid_flags "${REF_PIDS[@]}") --no-progress --json "$OUT/node-ref.json" "$@" \
  | tee "$OUT/node-ref.txt"
stop_pids "${REF_PIDS[@]}"

# fanout
redis-cli -p "$REDIS_PORT" flushall >/dev/null
if [[ $MODE == cluster ]]; then
  start_fanout "$N" 1
  AUTH=(--seed-redis "$REDIS_URL")
else
  start_fanout 1 0
  AUTH=()
fi
"$LT" run "$WORKLOAD" --url "$(join "${FANOUT_URLS[@]}")" "${AUTH[@]}" \
  --label fanout $(pid_flags "${FANOUT_PIDS[@]}") --no-progress --json "$OUT/fanout.json" "$@" \
  | tee "$OUT/fanout.txt"
stop_pids "${FANOUT_PIDS[@]}"

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "command: deploy/bench/compare.sh $WORKLOAD $*"
"$LT" compare --baseline node-ref --note "$NOTE" --svg "$OUT/compare.svg" \
  "$OUT/node-ref.json" "$OUT/fanout.json" | tee "$OUT/compare.txt"
echo "reports, logs and plot in $OUT"
