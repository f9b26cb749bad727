#!/usr/bin/env bash
# Node.js interop suite for fanout-adapter.
#   ./run.sh           classic protocol: redis-server on a free port, test/ (Node's
#                      createAdapter and redis-emitter, fanout-node)
#   ./run.sh sharded   sharded protocol: a local 3+3 Redis Cluster (deploy/local/redis-cluster,
#                      free ports, temporary run dir), test-sharded/ (Node's createShardedAdapter)
#   npm ci -> cargo build (example interop_server) -> Redis -> Rust server on a free port ->
#   node --test -> cleanup by PID.
# Logs: adapter/interop/redis.log, adapter/interop/rust-server.log.
set -euo pipefail
MODE="${1:-classic}"
case "$MODE" in classic | sharded) ;; *) echo "usage: run.sh [classic|sharded]" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: install it with 'apt-get install -y redis-server'" >&2
  exit 1
fi

npm ci --no-audit --no-fund --loglevel=error

if [[ "$MODE" == classic ]]; then
  (cd "$ROOT" && cargo build -p fanout-adapter --example interop_server && cargo build -p fanout-node)
else
  (cd "$ROOT" && cargo build -p fanout-adapter --example interop_server)
fi
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
BIN="$TARGET_DIR/debug/examples/interop_server"

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
REDIS_PORT="$(free_port)"
RUST_PORT="$(free_port)"

PIDS=()
CLUSTER_DIR=""
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$CLUSTER_DIR" ]]; then
    REDIS_CLUSTER_DIR="$CLUSTER_DIR" "$ROOT/deploy/local/redis-cluster" down >/dev/null 2>&1 || true
    rm -rf "$CLUSTER_DIR"
  fi
}
trap cleanup EXIT INT TERM

if [[ "$MODE" == classic ]]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$HERE/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null
  RUST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
else
  # a "free" port can be taken between the check and the start: up to 3 attempts
  for attempt in 1 2 3; do
    CLUSTER_DIR="$(mktemp -d -t fanout-interop-cluster-XXXXXX)"
    if REDIS_CLUSTER_DIR="$CLUSTER_DIR" REDIS_CLUSTER_PORTS=free REDIS_CLUSTER_READY_TIMEOUT=15 \
      "$ROOT/deploy/local/redis-cluster" up >"$HERE/redis.log" 2>&1; then
      break
    fi
    rm -rf "$CLUSTER_DIR"
    CLUSTER_DIR=""
    if ((attempt == 3)); then
      echo "Redis Cluster did not start; log:" >&2
      cat "$HERE/redis.log" >&2
      exit 1
    fi
  done
  mapfile -t CLUSTER_PORTS <"$CLUSTER_DIR/ports"
  CLUSTER_NODES="$(printf '127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")"
  CLUSTER_NODES="${CLUSTER_NODES%,}"
  RUST_REDIS_URL="redis+cluster://$CLUSTER_NODES"
fi

PORT="$RUST_PORT" REDIS_URL="$RUST_REDIS_URL" RUST_LOG="${RUST_LOG:-info}" \
  "$BIN" >"$HERE/rust-server.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 300); do
  grep -q "listening on" "$HERE/rust-server.log" 2>/dev/null && break
  sleep 0.1
done
if ! grep -q "listening on" "$HERE/rust-server.log"; then
  echo "Rust interop server did not start; log:" >&2
  cat "$HERE/rust-server.log" >&2
  exit 1
fi

if [[ "$MODE" == classic ]]; then
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_PORT="$RUST_PORT" \
    timeout 180 node --test --test-concurrency=1 --test-reporter=spec --test-timeout=20000 test/
else
  REDIS_CLUSTER_NODES="$CLUSTER_NODES" RUST_PORT="$RUST_PORT" \
    timeout 180 node --test --test-concurrency=1 --test-reporter=spec --test-timeout=20000 test-sharded/
fi
