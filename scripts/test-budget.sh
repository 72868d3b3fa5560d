#!/usr/bin/env bash
# Measures the test suite's time budget and writes it into README.md's Tests
# section (between the "test-budget:begin" and "test-budget:end" markers):
#
#   1. the cold build: `cargo test --workspace --no-run` into an empty
#      target folder (what a fresh clone pays before the first test);
#   2. the test time: `cargo test --workspace`, the README's command, timed
#      as a whole (its build is already done by then);
#   3. the ten slowest test binaries, from that run's own output;
#   4. with PER_TEST=1, the ten slowest single tests, from `cargo nextest run
#      --workspace --profile budget` (stable `cargo test` cannot time single
#      tests; nextest's JUnit report can). Only this script uses nextest,
#      and only when asked: it runs the whole suite a second time.
#
#   scripts/test-budget.sh               # 1–3 (the cold build takes ~9 min on 2 cores)
#   PER_TEST=1 scripts/test-budget.sh    # 1–4
#   COLD=0 scripts/test-budget.sh        # keep the cold-build line already in the README
#   README=/dev/null scripts/test-budget.sh   # print only
#
# Needs what `cargo test --workspace` needs (plus cargo-nextest for
# PER_TEST=1: `cargo install cargo-nextest --locked`). The budget: a cold `.ci/run`
# under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

COLD=${COLD:-1}
README=${README:-README.md}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$TARGET/test-budget
mkdir -p "$OUT"

now() { date +%s; }
minutes() { awk -v s="$1" 'BEGIN { printf "%d min %02d s", s / 60, s % 60 }'; }

cold_line=""
if [ "$COLD" = 1 ]; then
    cold_dir=$(mktemp -d "${TMPDIR:-/tmp}/test-budget-cold-XXXXXX")
    trap 'rm -rf "$cold_dir"' EXIT
    echo "== cold build: cargo test --workspace --no-run (empty target folder)" >&2
    start=$(now)
    # As .ci/run builds: without incremental compilation's cache.
    CARGO_INCREMENTAL=0 CARGO_TARGET_DIR=$cold_dir cargo test --workspace --no-run >"$OUT/cold-build.log" 2>&1
    cold=$(( $(now) - start ))
    rm -rf "$cold_dir"
    cold_line="| cold build (\`cargo test --workspace --no-run\`, empty target folder) | $(minutes "$cold") |"
fi

echo "== test time: cargo test --workspace" >&2
cargo test --workspace --no-run >"$OUT/warm-build.log" 2>&1
start=$(now)
status=0
cargo test --workspace >"$OUT/cargo-test.log" 2>&1 || status=$?
tests=$(( $(now) - start ))
passed=$(grep -E '^test result:' "$OUT/cargo-test.log" | awk '{ p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }')
if [ "$status" != 0 ]; then
    echo "cargo test --workspace failed; see $OUT/cargo-test.log" >&2
    grep -E '^(test .* FAILED|failures:|---- )' "$OUT/cargo-test.log" >&2 || true
    exit "$status"
fi

nextest_line=""
junit=""
if [ "${PER_TEST:-0}" = 1 ]; then
    echo "== per-test times: cargo nextest run --workspace --profile budget" >&2
    command -v cargo-nextest >/dev/null 2>&1 || { echo "PER_TEST=1 needs cargo-nextest: cargo install cargo-nextest --locked" >&2; exit 1; }
    start=$(now)
    cargo nextest run --workspace --profile budget --no-fail-fast >"$OUT/nextest.log" 2>&1 || {
        echo "nextest run failed; see $OUT/nextest.log" >&2
        exit 1
    }
    nextest_line="$(minutes $(( $(now) - start )))"
    junit=$TARGET/nextest/budget/junit.xml
fi

machine="$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo)"
load="$(cut -d' ' -f1-3 /proc/loadavg)"
block=$(python3 - "$OUT/cargo-test.log" "$cold_line" "$(minutes "$tests")" "$passed" "$machine" "$(date -u +%Y-%m-%d)" "$load" "$nextest_line" "$junit" <<'PY'
import os
import re
import sys

log, cold_line, tests, passed, machine, day, load, nextest, junit = sys.argv[1:]

# `cargo test` prints, per test binary, "Running <source> (<binary>)" and
# later "test result: … N passed; … finished in S s".
binaries = []
current = None
package = "?"
for line in open(log, errors="replace"):
    running = re.match(r"\s+Running (.+?) \((\S+)\)", line)
    if running:
        source, binary = running.groups()
        stem = os.path.basename(binary).rsplit("-", 1)[0]
        # A package's unit tests run first, then its tests/ binaries.
        if source.startswith("unittests"):
            package = stem.replace("_", "-")
        current = (source, package)
        continue
    result = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed.*finished in ([\d.]+)s", line)
    if result and current:
        count = int(result.group(1)) + int(result.group(2))
        binaries.append((float(result.group(3)), current[0], current[1], count))
        current = None
binaries.sort(reverse=True)

lines = [
    f"Measured on {day}, {machine}, load average {load} at the end, by `scripts/test-budget.sh`:",
    "",
    "| what | time |",
    "|---|---|",
]
if cold_line:
    lines.append(cold_line)
lines.append(f"| tests (`cargo test --workspace` after the build; {passed}) | {tests} |")
lines += [
    "",
    "The ten slowest test binaries (`cargo test` runs binaries one after",
    "another, so their times add up to the test time):",
    "",
    "| test binary | package | tests | seconds |",
    "|---|---|---|---|",
]
for seconds, source, package, count in binaries[:10]:
    lines.append(f"| `{source}` | {package} | {count} | {seconds:.0f} |")
if junit:
    import xml.etree.ElementTree as ET

    cases = sorted(
        ((float(c.get("time", "0")), c.get("classname", ""), c.get("name", ""))
         for c in ET.parse(junit).getroot().iter("testcase")),
        reverse=True,
    )
    lines += [
        "",
        f"The ten slowest tests (`cargo nextest run --workspace`, {nextest}; a",
        "whole-system test's time includes waiting for a system slot):",
        "",
        "| test | binary | seconds |",
        "|---|---|---|",
    ]
    for seconds, binary, name in cases[:10]:
        lines.append(f"| `{name}` | `{binary}` | {seconds:.1f} |")
print("\n".join(lines))
PY
)

echo "$block"
if [ "$README" != /dev/null ]; then
    python3 - "$README" "$block" "$COLD" <<'PY'
import re
import sys

path, block, cold = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
begin, end = "<!-- test-budget:begin -->", "<!-- test-budget:end -->"
if begin not in text or end not in text:
    sys.exit(f"{path} has no {begin} … {end} markers")
head, rest = text.split(begin, 1)
old, tail = rest.split(end, 1)
if cold != "1":
    # Keep the cold-build row measured by an earlier run.
    kept = [line for line in old.splitlines() if line.startswith("| cold build")]
    if kept:
        block = block.replace("|---|---|\n", "|---|---|\n" + kept[0] + "\n", 1)
open(path, "w").write(f"{head}{begin}\n{block}\n{end}{tail}")
PY
    echo "written to $README" >&2
fi
