#!/usr/bin/env bash
# Where each process's CPU goes under load: runs one quickorder-bench mode,
# samples every process of the system under test with perf (cpu-clock,
# DWARF call graphs) in the middle of the run, and prints per process the
# share of its samples by layer (database client, gRPC, HTTP, the runtime's
# idle path) and by kind (kernel, allocator, our code and libraries). It
# also writes folded stacks per process, ready for a flame graph
# (`inferno-flamegraph < out.folded > out.svg`, or Brendan Gregg's
# flamegraph.pl).
#
#   scripts/profile.sh                       # http mode, 16 clients
#   MODE=peer CLIENTS=64 scripts/profile.sh
#   MYSQL_URL=mysql://root:pw@127.0.0.1:3306 scripts/profile.sh
#
# Needs: perf (Debian's linux-perf; kernel.perf_event_paranoid <= 2 for
# your own processes), python3, a MySQL/MariaDB server, a Rust toolchain.
# The release profile keeps line tables (Cargo.toml), so stacks carry names.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${MODE:-http}
CLIENTS=${CLIENTS:-16}
SAMPLE=${SAMPLE:-10}   # seconds of sampling
MYSQL_URL=${MYSQL_URL:-mysql://root@127.0.0.1:3306}
OUT=${OUT:-target/profile}

command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 2; }
mkdir -p "$OUT"
cargo build --release -p quickorder-bench -p coordinator -p order-srv -p stock-srv -p order-api --bins
bin=$(cd target/release && pwd -P)

# The run outlasts the sampling: 8 s to start and warm up, 5 s spare.
target/release/quickorder-bench "$MODE" --clients "$CLIENTS" --duration "$((SAMPLE + 13))s" \
  --mysql "$MYSQL_URL" --quiet --json "$OUT/$MODE.json" >"$OUT/$MODE.log" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT
sleep 8

# The servers are the bench's grandchildren (each under a small guard shell):
# found by their executable, which is the one next to the bench.
pids=()
named=() # pid=name, for the report (the processes are gone by then)
for pid in $(ls /proc | grep -E '^[0-9]+$'); do
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  case "$exe" in
    "$bin"/coordinator | "$bin"/order-api | "$bin"/order-srv | "$bin"/stock-srv)
      pids+=("$pid")
      named+=("$pid=$(basename "$exe")")
      ;;
  esac
done
((${#pids[@]} > 0)) || { echo "no server of the $MODE mode found running from $bin" >&2; exit 1; }
list=$(IFS=,; echo "${pids[*]}")

perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$list" -o "$OUT/$MODE.perf" -- sleep "$SAMPLE"
wait $bench || true
trap - EXIT
perf script -i "$OUT/$MODE.perf" -F pid,ip,sym,dso 2>/dev/null >"$OUT/$MODE.stacks"

python3 - "$OUT/$MODE.stacks" "$OUT" "$MODE" "${named[@]}" <<'EOF'
import collections, sys

stacks_file, out, mode, *named = sys.argv[1:]
names = dict(pair.split("=", 1) for pair in named)

# A sample belongs to the innermost frame (from the leaf up) that names a
# layer: a write(2) under sqlx is the database client's, a malloc under
# serde_json is JSON's, our engine's own code is ours. Library layers are
# checked first, since a library's generic frame names our types too.
# Socket reads and writes go through tokio's I/O driver: they count for
# whoever asked for them (the kernel's share is the "kernel" kind below);
# a span's wrapper future counts for what it wraps.
LAYERS = [
    ("database client (sqlx)", ("sqlx",)),
    ("gRPC (tonic, h2)", ("tonic", "h2::")),
    ("HTTP (hyper, axum, reqwest)", ("hyper", "axum", "reqwest")),
    ("JSON, protobuf (serde_json, prost)", ("serde_json", "prost")),
    ("logging, tracing", ("tracing_core", "tracing_subscriber", "tracing::span", "tracing_opentelemetry")),
    ("runtime idle (park, epoll)", ("park", "mio::poll")),
    ("runtime (tokio scheduler, timers)", ("tokio::runtime::scheduler", "tokio::runtime::task", "tokio::runtime::time")),
    ("ours (coordinator, services, barrier, protocol)", (
        "coordinator::", "order_srv::", "stock_srv::", "order_api::", "barrier::",
        "dtm_protocol::", "dtm_client::", "service_kit::", "discovery::")),
]

PASS_THROUGH = ("tokio::runtime::io", "tokio::net", "mio::net", "tokio::io", "tracing::instrument")

def layer(frames):
    for frame in frames:
        if any(k in frame for k in PASS_THROUGH):
            continue
        for label, keys in LAYERS:
            if any(k in frame for k in keys):
                return label
    return "other"

ALLOC = ("malloc", "free", "_int_", "consolidate", "unlink_chunk", "tcache", "realloc")

def kind(leaf):
    if "[kernel" in leaf:
        return "kernel"
    if "libc" in leaf and any(a in leaf for a in ALLOC):
        return "allocator"
    if "memmove" in leaf or "memcpy" in leaf:
        return "memcpy"
    return "user code"

per = collections.defaultdict(lambda: {"n": 0, "layer": collections.Counter(), "kind": collections.Counter(), "folded": collections.Counter()})
for block in open(stacks_file).read().split("\n\n"):
    lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
    if len(lines) < 2:
        continue
    head = lines[0].split()
    if not head or not head[0].isdigit():
        continue
    frames = [" ".join(l.split()[1:]) for l in lines[1:]]
    name = names.get(head[0], head[0])
    p = per[name]
    p["n"] += 1
    p["layer"][layer(frames)] += 1
    p["kind"][kind(frames[0])] += 1
    p["folded"][";".join(f.split(" (")[0].split("+0x")[0] for f in reversed(frames))] += 1

for name, p in sorted(per.items(), key=lambda x: -x[1]["n"]):
    n = p["n"]
    print(f"== {name}: {n} samples")
    for label, c in p["layer"].most_common():
        print(f"   {100 * c / n:5.1f} %  {label}")
    print("   by kind: " + ", ".join(f"{k} {100 * c / n:.0f} %" for k, c in p["kind"].most_common()))
    with open(f"{out}/{mode}-{name}.folded", "w") as f:
        for stack, c in p["folded"].items():
            f.write(f"{stack} {c}\n")
print(f"folded stacks: {out}/{mode}-<process>.folded")
EOF
