#!/usr/bin/env bash
# Runs a doctest binary as several processes at once, so that a suite uses every core: one
# process per test source file, and one per test case for the files in TEST_HEAVY (a few long
# cases each). Shards start longest first (TEST_SLOW, then the rest in file order), JOBS at a
# time, each with its own log and its own TMPDIR (tests write fixed names under the temporary
# folder). At the end one summary in doctest's own words, summed over the shards:
#   [doctest] test cases: X | Y passed | Z failed | W skipped
# and, when a shard failed, its log and its name. Exit status 0 only when every shard passed.
#
# Usage: scripts/test-shards.sh [-j JOBS] [--logs DIR] [--wrap "CMD ARGS"] BINARY [DOCTEST ARGS]
#   -j JOBS   processes at a time (default: nproc); 1 runs the binary once, as it is
#   --logs    folder for the shards' logs and temporary folders (default: a new one under TMPDIR)
#   --wrap    a command every run goes through, e.g. "qemu-aarch64" or "timeout 900"
# DOCTEST ARGS (e.g. -tce="real:*") reach every shard. Arguments other than the test-case, suite
# and subcase filters, -d and -s (listing, ordering, ranges, source-file filters, reporters) run
# the binary once, unsharded, since they would clash with the shards' own -sf / -f / -l.
set -euo pipefail

# Files whose test cases run as separate processes: each holds one or a few cases that take a
# large share of the suite natively, under qemu or under ASan (docs/ci.md).
TEST_HEAVY=${TEST_HEAVY:-"test_real_models test_formats test_quant test_gptq test_dataaware"}
# Started first, in this order (the longest, docs/ci.md); the other files follow in file order.
TEST_SLOW=${TEST_SLOW:-"test_real_models test_formats test_tokenizer test_quant test_gptq
  test_dataaware test_cuda_emu test_ggml_blocks test_cuda_emu_train test_lowrank test_gguf"}
# Within a TEST_HEAVY file, the cases matching these patterns ('|'-separated globs) start before
# the file's other cases (which follow in file order): the longest under qemu and ASan.
TEST_SLOW_CASES=${TEST_SLOW_CASES:-"quant: the repacked layout ?rows*|quant: op groups*"}

jobs=$(nproc)
logs=""
wrap=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    --logs) logs=$2; shift 2 ;;
    --wrap) read -r -a wrap <<<"$2"; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 1 ]; then
  echo "usage: scripts/test-shards.sh [-j JOBS] [--logs DIR] [--wrap CMD] BINARY [DOCTEST ARGS]" >&2
  exit 2
fi
bin=$1
shift
args=("$@")
[[ "$jobs" =~ ^[0-9]+$ ]] && [ "$jobs" -ge 1 ] || {
  echo "test-shards: -j expects a positive number of processes, found '$jobs'" >&2
  exit 2
}
[ -x "$bin" ] || { echo "test-shards: '$bin' is not an executable test binary" >&2; exit 2; }

shardable=1
for a in "${args[@]}"; do
  case "$a" in
    -tc=* | -tce=* | -ts=* | -tse=* | -sc=* | -sce=* | --test-case=* | --test-case-exclude=* | \
      --test-suite=* | --test-suite-exclude=* | --subcase=* | --subcase-exclude=* | \
      -d | -d=* | --duration | --duration=* | -s | -s=* | --success | --success=*) ;;
    *) shardable=0 ;;
  esac
done
if [ "$jobs" -eq 1 ] || [ "$shardable" -eq 0 ]; then
  exec "${wrap[@]}" "$bin" "${args[@]}"
fi

# libgomp's threads (OpenBLAS's GEMMs, the OpenMP loops) spin at every barrier by default: with
# several processes sharing the cores, a spinning thread holds the core its partner needs and a
# case ran up to 60x slower (a 1 s calibration case took 57 s at two processes on two cores).
# Passive waiting sleeps at once; set OMP_WAIT_POLICY to override.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

if [ -z "$logs" ]; then
  logs=$(mktemp -d "${TMPDIR:-/tmp}/minfer-test-shards-XXXXXX")
else
  rm -rf "$logs"
  mkdir -p "$logs"
fi

# The cases the filters select, in doctest's run order (by file, then line): "file<TAB>name".
# A failed listing (bad filter, binary that does not start) fails here with its output.
list() {
  local out
  if ! out=$("${wrap[@]}" "$bin" -ltc -r=xml "$@" 2>&1); then
    echo "test-shards: listing the test cases of $bin failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  sed -n 's/.*<TestCase name="\([^"]*\)".* filename="\([^"]*\)".*/\2\t\1/p' <<<"$out"
}
selected=$(list "${args[@]}")
n_all=$(list | wc -l)
n_selected=$(grep -c . <<<"$selected" || true)

# Shards: "name<TAB>cases<TAB>doctest args" (args separated by the unit separator \x1f), sorted
# on the file's TEST_SLOW rank, then 0 for a TEST_SLOW_CASES case, 1 for the others.
us=$'\x1f'
declare -A heavy=() slow_rank=()
for f in $TEST_HEAVY; do heavy[$f]=1; done
i=0
for f in $TEST_SLOW; do slow_rank[$f]=$((i++)); done
IFS='|' read -r -a slow_cases <<<"$TEST_SLOW_CASES"
shards=()
while read -r file; do
  [ -n "$file" ] || continue
  base=$(basename "$file" .cpp)
  n=$(grep -c "^$file"$'\t' <<<"$selected")
  rank=${slow_rank[$base]:-999}
  if [ -n "${heavy[$base]:-}" ]; then
    # -f / -l: the k-th selected case of this file (doctest counts after the filters).
    k=0
    while IFS=$'\t' read -r _ case_name; do
      k=$((k + 1))
      sub=1
      for p in "${slow_cases[@]}"; do
        # shellcheck disable=SC2053  # p is a glob
        [[ -n "$p" && "$case_name" == $p ]] && sub=0
      done
      shards+=("$rank	$sub	$base#$k	1	-sf=*$file$us-f=$k$us-l=$k")
    done < <(grep "^$file"$'\t' <<<"$selected")
  else
    shards+=("$rank	1	$base	$n	-sf=*$file")
  fi
done < <(cut -f1 <<<"$selected" | uniq)
mapfile -t shards < <(printf '%s\n' "${shards[@]}" | sort -s -t $'\t' -k1,1n -k2,2n | cut -f3-)

run_shard() {  # name, doctest args (\x1f-separated)
  local name=$1 own
  IFS=$us read -r -a own <<<"$2"
  mkdir -p "$logs/tmp/$name"
  local t0=$SECONDS rc=0
  TMPDIR="$logs/tmp/$name" "${wrap[@]}" "$bin" "${own[@]}" "${args[@]}" >"$logs/$name.log" 2>&1 ||
    rc=$?
  echo "$rc $((SECONDS - t0))" >"$logs/$name.rc"
  [ "$rc" -ne 0 ] || rm -rf "$logs/tmp/$name"
}

echo "test-shards: $n_selected test cases of $bin in ${#shards[@]} processes, $jobs at a time (logs: $logs)"
t_start=$SECONDS
running=0
for s in "${shards[@]}"; do
  IFS=$'\t' read -r name _ own <<<"$s"
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_shard "$name" "$own" &
  running=$((running + 1))
done
wait

# Sum the shards. Case counts come from the listing (doctest's own line counts every case the
# filters pass, also those outside a shard's -f / -l range); failed cases and assertions from
# each shard's summary. A shard that exited without its summary (a crash, a sanitizer abort)
# counts all its cases as failed.
cases=0 failed=0 asserts=0 asserts_failed=0
failed_shards=()
for s in "${shards[@]}"; do
  IFS=$'\t' read -r name n _ <<<"$s"
  read -r rc secs <"$logs/$name.rc"
  log="$logs/$name.log"
  cases=$((cases + n))
  line=$(grep -E '^\[doctest\] test cases:' "$log" | tail -1 || true)
  aline=$(grep -E '^\[doctest\] assertions:' "$log" | tail -1 || true)
  if [ -n "$aline" ]; then
    asserts=$((asserts + $(sed -E 's/.*assertions: *([0-9]+) .*/\1/' <<<"$aline")))
    asserts_failed=$((asserts_failed + $(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$aline")))
  fi
  if [ "$rc" -ne 0 ]; then
    failed_shards+=("$name")
    if [ -n "$line" ]; then
      f=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$line")
      [ "$f" -gt 0 ] || f=$n  # exited non-zero with every case passed: count them all
      failed=$((failed + f))
    else
      failed=$((failed + n))
    fi
    echo "test-shards: $name FAILED (exit $rc, $secs s)"
  else
    echo "test-shards: $name: $n passed ($secs s)"
  fi
done

for name in "${failed_shards[@]}"; do
  echo
  echo "==================== log of failed shard $name ($logs/$name.log) ===================="
  cat "$logs/$name.log"
done

echo "==============================================================================="
echo "[doctest] test cases: $cases | $((cases - failed)) passed | $failed failed | $((n_all - n_selected)) skipped"
echo "[doctest] assertions: $asserts | $((asserts - asserts_failed)) passed | $asserts_failed failed |"
if [ "${#failed_shards[@]}" -eq 0 ]; then
  echo "[doctest] Status: SUCCESS! (${#shards[@]} processes, $jobs at a time, $((SECONDS - t_start)) s)"
  rm -rf "$logs/tmp"
else
  echo "[doctest] Status: FAILURE! failed: ${failed_shards[*]} (logs in $logs)"
  exit 1
fi
