#!/usr/bin/env bash
# Recaptures ../trace-sharded-dynamic.json: installs the pinned npm packages (npm ci), starts a
# Redis Cluster (3 masters + 3 replicas) with deploy/local/redis-cluster on free loopback ports in
# a temporary run dir, runs capture.mjs against it (MONITOR on all 6 nodes), stops the cluster
# by its recorded PIDs.
#
#   capture.sh                     subscriptionMode "dynamic" → ../trace-sharded-dynamic.json
#   capture.sh static              (or dynamic-private) → ../trace-sharded-<mode>.json
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../../../.." && pwd)"
MODE="${1:-dynamic}"
case "$MODE" in dynamic | static | dynamic-private) ;; *) echo "usage: $0 [dynamic|static|dynamic-private]" >&2; exit 2 ;; esac
cd "$HERE"
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install -y redis-server)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error

RUN="$(mktemp -d "${TMPDIR:-/tmp}/fanout-capture-sharded.XXXXXX")"
export REDIS_CLUSTER_DIR="$RUN" REDIS_CLUSTER_PORTS=free
# on exit: stop the cluster by its PIDs; keep the run dir (logs) only when something failed
trap 'rc=$?; "$REPO/deploy/local/redis-cluster" down >/dev/null 2>&1 || true
  if ((rc == 0)); then rm -rf "$RUN"; else echo "cluster logs kept in $RUN/logs" >&2; fi' EXIT
"$REPO/deploy/local/redis-cluster" up >/dev/null
PORTS="$(paste -sd, "$RUN/ports")"

OUT="$HERE/../trace-sharded-$MODE.json"
timeout 120 node capture.mjs "$PORTS" "$MODE" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(grep -c '"op"' "$OUT") commands)"
