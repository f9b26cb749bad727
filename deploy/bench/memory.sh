#!/usr/bin/env bash
# Memory and connect cost per connection, side by side: fanout over Socket.IO, fanout over
# /ws, node-ref (socket.io 4.8 + redis-adapter) and sioxide-ref (plain socketioxide 0.18 +
# socketioxide-redis 0.4), each as NODES cluster-mode nodes on one Redis, run back to back
# under the same conditions. Per system, `fanout-loadtest run connect` connects CLIENTS
# authenticated clients (CONCURRENCY handshakes in flight, no rate cap), subscribes each to
# 1 of TOPICS topics, holds them idle for HOLD and reports KB per connection (summed RSS
# after − before ÷ connections held, from /proc/<pid>), connects/s, handshake and
# subscribe-ack latency and the machine's busy fraction while connecting; then a storm of
# STORM_ROUNDS × TOPICS messages of STORM_PAYLOAD bytes on the events channel and the RSS
# at its peak and STORM_SETTLE later. One table at the end, ratios to sioxide-ref.
#
#   deploy/bench/memory.sh                              # the four systems
#   SYSTEMS="fanout sioxide-ref" deploy/bench/memory.sh
#   NODE_BIN=/path/to/old/fanout-node SYSTEMS=fanout deploy/bench/memory.sh   # before/after
#   FANOUT_ENV="FANOUT_X=1" SYSTEMS=fanout deploy/bench/memory.sh              # an A/B toggle
#
# Environment: SYSTEMS="fanout fanout-ws node-ref sioxide-ref", NODES=3, CLIENTS=10000,
# TOPICS=100, HOLD=10s, CONCURRENCY=64, STORM_ROUNDS=3 (0 = no storm), STORM_PAYLOAD=32768,
# STORM_SETTLE=30s, REDIS_PORT=6390, OUT=target/bench/<date>-memory, SKIP_BUILD=1,
# NODE_BIN (default target/release/fanout-node), FANOUT_ENV (extra VAR=value for fanout).
# Connects/s depends on how busy the box is: the table says how busy it was; rerun on a
# quiet box for figures to publish. KB per connection does not depend on it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SYSTEMS=${SYSTEMS:-fanout fanout-ws node-ref sioxide-ref}
NODES=${NODES:-3}
CLIENTS=${CLIENTS:-10000}
TOPICS=${TOPICS:-100}
HOLD=${HOLD:-10s}
CONCURRENCY=${CONCURRENCY:-64}
STORM_ROUNDS=${STORM_ROUNDS:-3}
STORM_PAYLOAD=${STORM_PAYLOAD:-32768}
STORM_SETTLE=${STORM_SETTLE:-30s}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)-memory}
TARGET=${CARGO_TARGET_DIR:-target}
LT=$TARGET/release/fanout-loadtest
NODE_BIN=${NODE_BIN:-$TARGET/release/fanout-node}
NODE_REF=deploy/bench/node-ref
SIOXIDE_REF=deploy/bench/sioxide-ref
mkdir -p "$OUT"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

stop_pids() { # stop the given PIDs and drop them from PIDS
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  local keep=()
  for q in "${PIDS[@]}"; do [[ " $* " == *" $q "* ]] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

wait_http() { # url
  for _ in $(seq 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not up: $1" >&2; return 1
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p fanout-node -p fanout-loadtest
  [[ " $SYSTEMS " == *" sioxide-ref "* ]] && (cd "$SIOXIDE_REF" && cargo build --release --locked)
  [[ " $SYSTEMS " == *" node-ref "* ]] && (cd "$NODE_REF" && npm ci --no-audit --no-fund --loglevel=error)
fi

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

start() { # system -> sets SYS_PIDS, SYS_URLS
  SYS_PIDS=(); SYS_URLS=()
  local base
  case "$1" in
    fanout|fanout-ws) base=7200 ;;
    node-ref) base=7100 ;;
    sioxide-ref) base=7000 ;;
  esac
  for i in $(seq "$NODES"); do
    local port=$((base + i))
    case "$1" in
      fanout|fanout-ws)
        # shellcheck disable=SC2086
        env FANOUT_REDIS_URL="$REDIS_URL" FANOUT_NODE_ID="f$i" FANOUT_LOG=warn ${FANOUT_ENV:-} \
          "$NODE_BIN" --bind "127.0.0.1:$port" >"$OUT/$1-$i.log" 2>&1 & ;;
      node-ref)
        (cd "$NODE_REF" && PORT=$port REDIS_URL="$REDIS_URL" exec node server.mjs) >"$OUT/$1-$i.log" 2>&1 & ;;
      sioxide-ref)
        PORT=$port REDIS_URL="$REDIS_URL" "$SIOXIDE_REF/target/release/sioxide-ref" >"$OUT/$1-$i.log" 2>&1 & ;;
    esac
    SYS_PIDS+=($!); PIDS+=($!)
    SYS_URLS+=("http://127.0.0.1:$port")
  done
  for u in "${SYS_URLS[@]}"; do wait_http "$u/healthz"; done
}

join() { local IFS=,; echo "$*"; }
pid_flags() { for p in "$@"; do printf -- '--target-pid %s ' "$p"; done; }

REPORTS=()
for sys in $SYSTEMS; do
  echo "== $sys: $NODES nodes, $CLIENTS clients" >&2
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start "$sys"
  sleep 1
  transport=socketio
  [[ "$sys" == fanout-ws ]] && transport=ws
  # shellcheck disable=SC2046
  "$LT" run connect --url "$(join "${SYS_URLS[@]}")" --seed-redis "$REDIS_URL" \
    --transport "$transport" --clients "$CLIENTS" --topics "$TOPICS" --hold "$HOLD" \
    --connect-concurrency "$CONCURRENCY" --connect-rate 0 \
    --storm-rounds "$STORM_ROUNDS" --payload "$STORM_PAYLOAD" --storm-settle "$STORM_SETTLE" \
    --label "$sys" $(pid_flags "${SYS_PIDS[@]}") --no-progress --json "$OUT/$sys.json" \
    | tee "$OUT/$sys.txt" >&2
  REPORTS+=("$OUT/$sys.json")
  stop_pids "${SYS_PIDS[@]}"
done

BASE=sioxide-ref
[[ " $SYSTEMS " == *" sioxide-ref "* ]] || BASE=$(echo "$SYSTEMS" | awk '{print $1}')
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "command: SYSTEMS=\"$SYSTEMS\" NODES=$NODES CLIENTS=$CLIENTS TOPICS=$TOPICS HOLD=$HOLD CONCURRENCY=$CONCURRENCY STORM_ROUNDS=$STORM_ROUNDS deploy/bench/memory.sh"
"$LT" compare --baseline "$BASE" \
  --note "$NODES cluster-mode nodes per system on one Redis; RSS/conn = summed RSS growth / connections held; machine busy = while connecting" \
  "${REPORTS[@]}" | tee "$OUT/compare.txt"
echo "reports and logs in $OUT"
