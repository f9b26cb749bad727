#!/usr/bin/env bash
# How many concurrent authenticated connections one fanout node holds here, and its RSS per
# idle connection. One node is started fresh; PROCS loadtest processes (each capped by the
# 20,000 open-files limit) connect PER_PROC clients each and hold them while this script
# samples the node's RSS (/proc/<pid>/status) and fanout_sockets_connected.
#
#   deploy/bench/connect.sh                      # 2 x 9,000 = 18,000 connections
#   PROCS=3 PER_PROC=15000 deploy/bench/connect.sh
#
# Environment: PROCS=2, PER_PROC=9000, PORT=7301, HOLD=40s, CONNECT_RATE=0 (unlimited),
# CLUSTER=0 (1: FANOUT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT, Redis must be running),
# OUT=target/bench/<date>-connect, SKIP_BUILD=1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PROCS=${PROCS:-2}
PER_PROC=${PER_PROC:-9000}
PORT=${PORT:-7301}
HOLD=${HOLD:-40s}
CONNECT_RATE=${CONNECT_RATE:-0}
REDIS_PORT=${REDIS_PORT:-6390}
OUT=${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)-connect}
mkdir -p "$OUT"
LT=target/release/fanout-loadtest
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release -p fanout-node -p fanout-loadtest

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if [[ "${CLUSTER:-0}" == 1 ]]; then
  FANOUT_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" FANOUT_LOG=warn \
    target/release/fanout-node --bind "127.0.0.1:$PORT" >"$OUT/node.log" 2>&1 &
  AUTH=(--seed-redis "redis://127.0.0.1:$REDIS_PORT")
else
  env -u FANOUT_REDIS_URL FANOUT_LOG=warn \
    target/release/fanout-node --bind "127.0.0.1:$PORT" >"$OUT/node.log" 2>&1 &
  AUTH=()
fi
NODE=$!; PIDS+=($NODE)
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2*1024}' "/proc/$1/status"; }
sockets() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk '/^fanout_sockets_connected\{namespace="\/"\}/{print $2}'; }

# Log in once (REST creates the users) so login allocations are not counted per connection.
if [[ ${#AUTH[@]} == 0 ]]; then
  "$LT" run connect --url "http://127.0.0.1:$PORT" --clients 16 --hold 1s --no-progress >"$OUT/warm.txt" 2>&1
fi
sleep 1
BEFORE=$(rss $NODE)
TOTAL=$((PROCS * PER_PROC))
LPIDS=()
for i in $(seq "$PROCS"); do
  "$LT" run connect --url "http://127.0.0.1:$PORT" "${AUTH[@]}" --clients "$PER_PROC" \
    --connect-rate "$CONNECT_RATE" --hold "$HOLD" --label "connect-$i" --no-progress \
    --target-pid "$NODE" --json "$OUT/connect-$i.json" >"$OUT/connect-$i.txt" 2>&1 &
  LPIDS+=($!); PIDS+=($!)
done
# Wait until every connection is up (or the loadtests are done connecting).
MAXS=0; PEAK_RSS=0
for _ in $(seq 600); do
  s=$(sockets || echo 0); s=${s%.*}
  (( s > MAXS )) && MAXS=$s
  if (( s >= TOTAL )); then break; fi
  alive=0; for p in "${LPIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break
  sleep 0.5
done
sleep 3
AFTER=$(rss $NODE)
s=$(sockets || echo 0); s=${s%.*}; (( s > MAXS )) && MAXS=$s
for p in "${LPIDS[@]}"; do wait "$p" || true; done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "command: PROCS=$PROCS PER_PROC=$PER_PROC CLUSTER=${CLUSTER:-0} deploy/bench/connect.sh"
for i in $(seq "$PROCS"); do grep -E "^(clients|connect \(ms\)|generator)" "$OUT/connect-$i.txt" | sed "s/^/[$i] /"; done
awk -v b="$BEFORE" -v a="$AFTER" -v s="$MAXS" -v t="$TOTAL" 'BEGIN {
  printf "node held %d of %d connections; RSS %.1f MiB -> %.1f MiB; %.1f KB per connection\n",
    s, t, b/1048576, a/1048576, (s > 0 ? (a-b)/s/1000 : 0) }' | tee "$OUT/summary.txt"
