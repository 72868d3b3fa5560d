#!/usr/bin/env bash
# Regenerates the results section of BENCHMARKS.md (between the
# "results:begin" and "results:end" markers; the prose around it is kept).
#
#   scripts/bench.sh                         # 16 and 64 clients, 3 rounds of compare, 20 s per run
#   CLIENTS="16" DURATION=10s ROUNDS=5 scripts/bench.sh
#   MYSQL_URL=mysql://root:pw@127.0.0.1:3306 scripts/bench.sh
#   DTMRS=/path/to/dtmrs scripts/bench.sh    # add the dtmrs peer (default: `dtmrs` on PATH)
#   HISTORY=0 SOAK=0 scripts/bench.sh        # skip the store-history runs and the soak
#   BENCH_BIN=path/to/quickorder-bench scripts/bench.sh  # those binaries (and the services next to them), no build
#
# Needs: a MySQL/MariaDB server at MYSQL_URL (root-like: it creates and
# drops databases qob_*, and raises max_connections for the run), the
# `mysql` client, curl, and a Rust toolchain. dtmrs is optional and never built by this script:
# `cargo install dtmrs --features full` once if you want the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."

MYSQL_URL=${MYSQL_URL:-mysql://root@127.0.0.1:3306}
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-2s} # before every measured window
CLIENTS=${CLIENTS:-"16 64"}
ROUNDS=${ROUNDS:-3} # compare's rounds: every mode this many times, in alternating order
OUT=${OUT:-target/bench}
DTMRS=${DTMRS:-$(command -v dtmrs || true)}
MARKDOWN=${MARKDOWN:-BENCHMARKS.md}
HISTORY=${HISTORY:-1000000} # finished sagas in the store for the history run (0: skip)
SOAK=${SOAK:-600s}          # length of the soak run, 64 clients (0: skip)
SOAK_CLIENTS=${SOAK_CLIENTS:-64}

mkdir -p "$OUT"
if [[ -n ${BENCH_BIN:-} ]]; then
  BENCH=$BENCH_BIN
else
  cargo build --release -p quickorder-bench -p coordinator -p order-srv -p stock-srv -p order-api --bins
  BENCH=target/release/quickorder-bench
fi
# quickorder-bench starts the service binaries found next to it; so does this script.
BIN_DIR=$(dirname "$BENCH")

# mysql://user[:password]@host[:port] → arguments of the mysql client.
if [[ $MYSQL_URL =~ ^mysql://([^:@/]+)(:([^@/]*))?@([^:/]+)(:([0-9]+))?/?$ ]]; then
  MYSQL_ARGS=(-u "${BASH_REMATCH[1]}" -h "${BASH_REMATCH[4]}" -P "${BASH_REMATCH[6]:-3306}")
  [[ -n ${BASH_REMATCH[3]} ]] && MYSQL_ARGS+=("-p${BASH_REMATCH[3]}")
else
  echo "MYSQL_URL must look like mysql://user[:password]@host[:port]" >&2
  exit 2
fi

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

wait_http() { # url
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2
  return 1
}

PEER_PID=""
PEER_DB=""
PEER_DIR=""
stop_peer() {
  if [[ -n $PEER_PID ]]; then
    kill "$PEER_PID" 2>/dev/null || true
    wait "$PEER_PID" 2>/dev/null || true
    PEER_PID=""
  fi
  if [[ -n $PEER_DB ]]; then
    mysql "${MYSQL_ARGS[@]}" -e "DROP DATABASE IF EXISTS \`$PEER_DB\`" || true
    PEER_DB=""
  fi
  if [[ -n $PEER_DIR ]]; then
    rm -rf "$PEER_DIR"
    PEER_DIR=""
  fi
}
# Three pools of 64 connections (coordinator, order-srv, stock-srv) plus the
# clients do not fit MariaDB's default max_connections (151): raise it for
# the run, as the test servers do, and put it back afterwards.
ORIGINAL_MAX_CONNECTIONS=$(mysql "${MYSQL_ARGS[@]}" -N -e 'SELECT @@max_connections')
if ((ORIGINAL_MAX_CONNECTIONS < 1000)); then
  echo "max_connections: $ORIGINAL_MAX_CONNECTIONS -> 1000 for the run"
  mysql "${MYSQL_ARGS[@]}" -e 'SET GLOBAL max_connections = 1000'
fi
cleanup() {
  stop_peer
  if ((ORIGINAL_MAX_CONNECTIONS < 1000)); then
    mysql "${MYSQL_ARGS[@]}" -e "SET GLOBAL max_connections = $ORIGINAL_MAX_CONNECTIONS" || true
  fi
}
trap cleanup EXIT

# dtmrs on a fresh utf8mb4 database (mysql) or SQLite file (sqlite); sets
# PEER_URL and PEER_PID. Logging as quiet as ours (warn).
start_dtmrs() { # mysql|sqlite
  local port grpc db
  port=$(free_port)
  grpc=$(free_port)
  PEER_DIR=$(mktemp -d)
  if [[ $1 == mysql ]]; then
    PEER_DB="qob_dtmrs_$$"
    mysql "${MYSQL_ARGS[@]}" -e "CREATE DATABASE \`$PEER_DB\` CHARACTER SET utf8mb4"
    db="$MYSQL_URL/$PEER_DB"
  else
    db="sqlite:$PEER_DIR/dtmrs.db?mode=rwc"
  fi
  DTMRS_DB="$db" DTMRS_ADDR="127.0.0.1:$port" DTMRS_GRPC_ADDR="127.0.0.1:$grpc" RUST_LOG=warn \
    "$DTMRS" >"$OUT/dtmrs-$1.log" 2>&1 &
  PEER_PID=$!
  PEER_URL="http://127.0.0.1:$port/api/dtmsvr"
  wait_http "http://127.0.0.1:$port/health"
}

# Our coordinator on its embedded SQLite store (the default of etc/coordinator.yaml).
start_ours_sqlite() {
  local port grpc
  port=$(free_port)
  grpc=$(free_port)
  PEER_DIR=$(mktemp -d)
  # No etcd registration (the shipped file registers by default): the bench
  # gives its clients the address.
  LISTEN_HOST=127.0.0.1 HTTP_PORT=$port GRPC_PORT=$grpc STORE_DRIVER=sqlite STORE_DB="$PEER_DIR/coordinator.db" \
    MICRO_SERVICE_DRIVER=default LOG_LEVEL=warn "$BIN_DIR/coordinator" -f etc/coordinator.yaml >"$OUT/coordinator-sqlite.log" 2>&1 &
  PEER_PID=$!
  PEER_URL="http://127.0.0.1:$port/api/dtmsvr"
  wait_http "http://127.0.0.1:$port/api/ping"
}

SECTION="$OUT/results.md"
{
  echo "Generated by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$(git rev-parse --short HEAD 2>/dev/null || echo '?')\`$(git diff --quiet 2>/dev/null || echo ' (with local changes)'):"
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r);"
  echo "$(mysql "${MYSQL_ARGS[@]}" -N -e 'SELECT CONCAT(VERSION(), ", innodb_flush_log_at_trx_commit=", @@innodb_flush_log_at_trx_commit, ", sync_binlog=", @@sync_binlog, ", log_bin=", @@log_bin, ", innodb_buffer_pool_size=", @@innodb_buffer_pool_size DIV 1048576, " MiB")' 2>/dev/null || echo 'database version unknown');"
  echo "everything (database, coordinator, services, load generator) on this one machine; $DURATION per run after a $WARMUP warm-up;"
  echo "compare: $ROUNDS rounds, the modes in alternating order (as listed, then reversed); the other tables are single runs."
  echo
} >"$SECTION"

for clients in $CLIENTS; do
  peer_args=()
  if [[ -n $DTMRS ]]; then
    start_dtmrs mysql
    peer_args=(--peer-url "$PEER_URL" --peer-pid "$PEER_PID" --peer-name dtmrs)
  fi
  "$BENCH" compare --clients "$clients" --duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS" --mysql "$MYSQL_URL" \
    "${peer_args[@]}" --json "$OUT/compare-$clients.json" --markdown "$OUT/compare-$clients.md"
  stop_peer
  {
    echo "### $clients clients, MySQL store (MariaDB)"
    echo
    cat "$OUT/compare-$clients.md"
    echo
  } >>"$SECTION"
done

# The embedded SQLite store, peer workload (and dtmrs on SQLite when present).
first_clients=${CLIENTS%% *}
start_ours_sqlite
"$BENCH" peer --clients "$first_clients" --duration "$DURATION" --warmup "$WARMUP" --mysql "$MYSQL_URL" --dtm "$PEER_URL" \
  --peer-pid "$PEER_PID" --peer-name ours-sqlite --json "$OUT/sqlite-ours.json" --markdown "$OUT/sqlite-ours.md"
stop_peer
{
  echo "### SQLite store, peer workload (empty HTTP branches), $first_clients clients"
  echo
  cat "$OUT/sqlite-ours.md"
} >>"$SECTION"
if [[ -n $DTMRS ]]; then
  start_dtmrs sqlite
  "$BENCH" peer --clients "$first_clients" --duration "$DURATION" --warmup "$WARMUP" --mysql "$MYSQL_URL" --dtm "$PEER_URL" \
    --peer-pid "$PEER_PID" --peer-name dtmrs-sqlite --json "$OUT/sqlite-dtmrs.json" --markdown "$OUT/sqlite-dtmrs.md"
  stop_peer
  tail -n +3 "$OUT/sqlite-dtmrs.md" >>"$SECTION"
fi
echo >>"$SECTION"
echo "(SQL columns count the MariaDB server's statements, so they are empty of meaning for the SQLite rows.)" >>"$SECTION"

# sagas/s of a JSON report.
rate() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sagas_per_s"])' "$1"; }

# Does history slow the coordinator down? The same peer run on an empty store
# and on one holding $HISTORY finished sagas, back to back.
if [[ $HISTORY != 0 ]]; then
  "$BENCH" peer --clients "$first_clients" --duration "$DURATION" --warmup "$WARMUP" --mysql "$MYSQL_URL" \
    --peer-name ours-empty-store --json "$OUT/history-empty.json" --markdown "$OUT/history-empty.md"
  "$BENCH" peer --clients "$first_clients" --duration "$DURATION" --warmup "$WARMUP" --mysql "$MYSQL_URL" \
    --store-history "$HISTORY" --peer-name "ours-$HISTORY-finished" \
    --json "$OUT/history-full.json" --markdown "$OUT/history-full.md"
  {
    echo
    echo "### A store holding $HISTORY finished sagas, peer workload, $first_clients clients"
    echo
    cat "$OUT/history-empty.md"
    tail -n +3 "$OUT/history-full.md"
    echo
    python3 -c 'import sys; e, f = map(float, sys.argv[1:]); print(f"- full / empty store: **{f / e:.2f}** (target >= 0.9)")' \
      "$(rate "$OUT/history-empty.json")" "$(rate "$OUT/history-full.json")"
  } >>"$SECTION"
fi

# The soak: $SOAK_CLIENTS clients for $SOAK, the coordinator's RSS sampled every minute.
if [[ $SOAK != 0 ]]; then
  "$BENCH" peer --clients "$SOAK_CLIENTS" --duration "$SOAK" --warmup "$WARMUP" --mysql "$MYSQL_URL" --quiet \
    --peer-name ours-soak --json "$OUT/soak.json" --markdown "$OUT/soak.md" >"$OUT/soak.log" 2>&1 &
  bench_pid=$!
  rss=()
  while kill -0 "$bench_pid" 2>/dev/null; do
    sleep 60
    # The bench starts each service through a small sh guard: the
    # coordinator is the bench's grandchild.
    coordinator=""
    for guard in $(pgrep -P "$bench_pid" || true); do
      coordinator=$(pgrep -P "$guard" -x coordinator || true)
      [[ -n $coordinator ]] && break
    done
    [[ -n $coordinator ]] && rss+=("$(($(ps -o rss= -p "$coordinator") / 1024))")
  done
  wait "$bench_pid"
  {
    echo
    echo "### Soak: $SOAK_CLIENTS clients for $SOAK, peer workload"
    echo
    cat "$OUT/soak.md"
    echo
    echo "- coordinator RSS (MiB), sampled every minute: ${rss[*]}"
  } >>"$SECTION"
fi

# Put the section between the markers, keeping everything else.
if [[ ! -f $MARKDOWN ]] || ! grep -q '<!-- results:begin -->' "$MARKDOWN"; then
  printf '# Benchmarks\n\n<!-- results:begin -->\n<!-- results:end -->\n' >"$MARKDOWN"
fi
awk -v section="$SECTION" '
  /<!-- results:begin -->/ { print; while ((getline line < section) > 0) print line; skip = 1; next }
  /<!-- results:end -->/ { skip = 0 }
  !skip { print }
' "$MARKDOWN" >"$MARKDOWN.new"
mv "$MARKDOWN.new" "$MARKDOWN"
echo "updated $MARKDOWN (raw reports in $OUT/)"
