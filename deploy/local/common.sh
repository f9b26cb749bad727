# shellcheck shell=bash
# Shared settings and helpers of deploy/local/{up,down,status}. Sourced, not executed.
#
# Settings (environment, with defaults):
#   DEPLOY_RUN_DIR          .deploy-run (in the repository)  pids, logs, generated configs, data
#   DEPLOY_NODES            3                     number of fanout-node processes
#   DEPLOY_NODE_PORTS       3001,3002,…           their ports (comma separated; DEPLOY_NODES of them)
#   DEPLOY_REDIS            single                single: one redis-server; cluster: a Redis Cluster of
#                                                 3 masters + 3 replicas (deploy/local/redis-cluster), nodes
#                                                 in sharded mode (FANOUT_REDIS_URL=redis+cluster://…)
#   DEPLOY_REDIS_PORT       6380                  single: its port
#   DEPLOY_REDIS_CLUSTER_PORTS 7101,…,7106        cluster: the 6 ports (each also needs port + 10000),
#                                                 or free (random free ones)
#   DEPLOY_LB_PORT          8080                  HAProxy: the address clients use
#   DEPLOY_LB_STATS_PORT    8404                  HAProxy stats page (/stats) and exporter (/metrics)
#   DEPLOY_PROMETHEUS_PORT  9090
#   DEPLOY_SCRAPE_INTERVAL  1s                    Prometheus scrape interval
#   DEPLOY_READY_TIMEOUT    30                    seconds `up` waits for each component
#   DEPLOY_STOP_TIMEOUT     30                    seconds `down` waits before SIGKILL
#   FANOUT_NODE_BIN         target/release/fanout-node, else target/debug/fanout-node
#   REDIS_FANOUT_PASSWORD   random                password of the nodes' Redis user `fanout`
#   REDIS_ADMIN_PASSWORD    random                password of the Redis user `admin`
# Redis runs with deploy/redis/redis.conf and the ACL of deploy/redis/users.acl.in (the default
# user is off); the passwords `up` used are kept in DEPLOY_RUN_DIR/redis/credentials.env (0600).
# Every FANOUT_* variable in the environment reaches the nodes (FANOUT_BIND, FANOUT_NODE_ID
# and FANOUT_REDIS_URL are set per node by `up`). Everything listens on 127.0.0.1 only.

set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
RUN_DIR="${DEPLOY_RUN_DIR:-$REPO_DIR/.deploy-run}"
[[ "$RUN_DIR" == /* ]] || RUN_DIR="$PWD/$RUN_DIR"
PID_DIR="$RUN_DIR/pids"
# shellcheck disable=SC2034 # used by the scripts that source this file
LOG_DIR="$RUN_DIR/logs"
# shellcheck disable=SC2034
HOST=127.0.0.1

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need CMD PACKAGE: fail with the install command when CMD is missing.
need() {
  command -v "$1" >/dev/null 2>&1 \
    || die "'$1' is missing: apt-get install -y ${2:-$1}"
}

# HTTP status code of GET URL ("000" when nothing answers), bounded to 2 s.
http_code() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# Body of GET URL (empty on failure), bounded to 2 s.
http_body() {
  curl -s --max-time 2 "$1" 2>/dev/null || true
}

# Loads the settings `up` recorded (ports.env), so down/status act on what up started.
load_ports() {
  [[ -f "$RUN_DIR/ports.env" ]] || return 1
  # shellcheck disable=SC1091
  source "$RUN_DIR/ports.env"
}

# pid_of NAME: the PID recorded for NAME, or empty.
pid_of() {
  local f="$PID_DIR/$1.pid"
  [[ -f "$f" ]] && tr -dc '0-9' <"$f" || true
}

# alive NAME PID: PID runs and is the program started as NAME (guards against PID reuse).
alive() {
  local name="$1" pid="$2" expect argv0
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  case "$name" in
    node*) expect=fanout-node ;;
    *) expect="$name" ;;
  esac
  [[ -f "$PID_DIR/$name.exe" ]] && expect="$(basename "$(cat "$PID_DIR/$name.exe")")"
  # redis-server rewrites its title to "redis-server 127.0.0.1:port": keep the first word.
  argv0="$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | awk '{print $1}')"
  [[ "$(basename "$argv0")" == "$expect" ]]
}

# Loads the Redis passwords `up` recorded (credentials.env, mode 0600).
load_credentials() {
  [[ -f "$RUN_DIR/redis/credentials.env" ]] || return 1
  # shellcheck disable=SC1091
  source "$RUN_DIR/redis/credentials.env"
}

# redis_cli ARGS…: redis-cli on the deployment's Redis (cluster: its first node, -c follows
# redirections) as user `fanout` (password from the environment, never on the command line).
redis_cli() {
  local where=(-h "$HOST" -p "$REDIS_PORT")
  [[ "${REDIS_MODE:-single}" == cluster ]] && where=(-c -h "$HOST" -p "${REDIS_CLUSTER_PORTS[0]}")
  REDISCLI_AUTH="$REDIS_FANOUT_PASSWORD" redis-cli --no-auth-warning --user fanout "${where[@]}" "$@"
}

# Run dir of the Redis Cluster of DEPLOY_REDIS=cluster (read by deploy/local/redis-cluster).
CLUSTER_RUN_DIR="$RUN_DIR/redis-cluster"

# redis_cluster up|down|status: deploy/local/redis-cluster on this deployment's cluster, as the
# ACL user admin (password from credentials.env via the environment, never on a command line).
redis_cluster() {
  REDIS_CLUSTER_DIR="$CLUSTER_RUN_DIR" REDIS_CLUSTER_CLI_USER=admin REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" \
    "$DEPLOY_DIR/local/redis-cluster" "$@"
}

# Names of the components up started, in start order (redis, node1..N, haproxy, prometheus).
started_names() {
  local f
  [[ -f "$RUN_DIR/components" ]] || return 0
  while read -r f; do [[ -n "$f" ]] && printf '%s\n' "$f"; done <"$RUN_DIR/components"
}
