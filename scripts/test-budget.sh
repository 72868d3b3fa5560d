#!/usr/bin/env bash
# Measures the test suite's time budget and writes it into README.md's Tests
# section (between the "test-budget:begin" and "test-budget:end" markers):
#
#   1. the cold build: `cargo test --workspace --no-run` into an empty
#      target folder (what a fresh clone pays before the first test);
#   2. the test time: `cargo test --workspace`, the README's command, timed
#      as a whole (its build is already done by then);
#   3. the ten slowest tests, from `cargo nextest run --workspace --profile
#      budget` (stable `cargo test` cannot time single tests; nextest's
#      JUnit report can). Only this script uses nextest.
#
#   scripts/test-budget.sh               # all three (the cold build takes ~10 min on 2 cores)
#   COLD=0 scripts/test-budget.sh        # keep the cold-build line already in the README
#   README=/dev/null scripts/test-budget.sh   # print only
#
# Needs what `cargo test --workspace` needs, plus cargo-nextest
# (`cargo install cargo-nextest --locked`). The budget: a cold `.ci/run`
# under 30 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

COLD=${COLD:-1}
README=${README:-README.md}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=$TARGET/test-budget
mkdir -p "$OUT"
command -v cargo-nextest >/dev/null 2>&1 || { echo "cargo-nextest is missing: cargo install cargo-nextest --locked" >&2; exit 1; }

now() { date +%s; }
minutes() { awk -v s="$1" 'BEGIN { printf "%d min %02d s", s / 60, s % 60 }'; }

cold_line=""
if [ "$COLD" = 1 ]; then
    cold_dir=$(mktemp -d "${TMPDIR:-/tmp}/test-budget-cold-XXXXXX")
    trap 'rm -rf "$cold_dir"' EXIT
    echo "== cold build: cargo test --workspace --no-run (empty target folder)" >&2
    start=$(now)
    CARGO_TARGET_DIR=$cold_dir cargo test --workspace --no-run >"$OUT/cold-build.log" 2>&1
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

echo "== per-test times: cargo nextest run --workspace --profile budget" >&2
start=$(now)
cargo nextest run --workspace --profile budget --no-fail-fast >"$OUT/nextest.log" 2>&1 || {
    echo "nextest run failed; see $OUT/nextest.log" >&2
    exit 1
}
nextest=$(( $(now) - start ))
junit=$TARGET/nextest/budget/junit.xml

machine="$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo)"
block=$(python3 - "$junit" "$cold_line" "$(minutes "$tests")" "$passed" "$(minutes "$nextest")" "$machine" "$(date -u +%Y-%m-%d)" <<'PY'
import sys
import xml.etree.ElementTree as ET

junit, cold_line, tests, passed, nextest, machine, day = sys.argv[1:]
cases = []
for case in ET.parse(junit).getroot().iter("testcase"):
    cases.append((float(case.get("time", "0")), case.get("classname", ""), case.get("name", "")))
cases.sort(reverse=True)
total = sum(t for t, _, _ in cases)
lines = [
    f"Measured on {day}, {machine}, by `scripts/test-budget.sh`:",
    "",
    "| what | time |",
    "|---|---|",
]
if cold_line:
    lines.append(cold_line)
lines += [
    f"| tests (`cargo test --workspace` after the build; {passed}) | {tests} |",
    f"| the same tests one process each (`cargo nextest run --workspace`; sum of test times {total / 60:.1f} min) | {nextest} |",
    "",
    "The ten slowest tests (nextest's times; a whole-system test's time",
    "includes waiting for a system slot):",
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
