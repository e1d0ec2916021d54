#!/usr/bin/env bash
# Runs one libFuzzer harness for a bounded time from its committed seed corpus and fails on any
# finding (crash, sanitizer report, leak, timeout, out-of-memory, non-minfer exception).
#   bash tests/fuzz/run.sh <harness binary> <name> <seconds> <fuzz build dir> [extra libFuzzer flags]
# New inputs go to <build>/corpus/<name>/ (the committed seeds in tests/fuzz/corpus/<name>/ are
# only read); a crashing input lands in <build>/findings/<name>-crash-*; the log is
# <build>/logs/<name>.log and its last lines give the figures docs/fuzzing.md records.
set -euo pipefail
bin=$1 name=$2 seconds=$3 build=$4
shift 4
seeds=tests/fuzz/corpus/$name
work=$build/corpus/$name
mkdir -p "$work" "$build/findings" "$build/logs"
dict=()
[ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
log=$build/logs/$name.log
# -timeout: one input taking longer than 10 s is a finding (an unbounded loop on bad input).
# -rss_limit_mb / -malloc_limit_mb: a count read from the input must never allocate gigabytes.
set +e
"$bin" "$work" "$seeds" "${dict[@]}" -max_total_time="$seconds" -timeout=10 \
  -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
  -artifact_prefix="$build/findings/$name-" "$@" >"$log" 2>&1
rc=$?
set -e
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
if [ "$rc" -ne 0 ]; then
  echo "fuzz $name: FAILED (exit $rc), see $log"
  grep -E 'ERROR|SUMMARY|Test unit written|what\(\)' "$log" | head -20
  exit 1
fi
echo "fuzz $name: ${seconds} s, ${execs:-?} executions, no finding; $(sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//' <<<"$done_line" | awk '{print $1, $2, $3, $4}')"
