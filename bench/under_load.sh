#!/usr/bin/env bash
# Decode speed with 0, 1 and 2 competing CPU-bound processes (`yes > /dev/null`), for one or two
# run-model binaries (A/B pairs, alternated), per model. Prints a Markdown table: decode tok/s
# (median of REPS), the share of the no-competitor figure it keeps, and the load other processes
# put on the machine before the competitors started (cores busy, from /proc/stat).
# Usage: bench/under_load.sh [-n TOKENS] [-r REPS] [-t THREADS] RUN_MODEL_A[,RUN_MODEL_B] MODEL...
set -euo pipefail
N=32 REPS=3 THREADS=2
while getopts "n:r:t:" o; do
  case $o in n) N=$OPTARG ;; r) REPS=$OPTARG ;; t) THREADS=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { sed -n 2,6p "$0"; exit 2; }
IFS=, read -r -a BINS <<<"$1"
shift
PROMPT="The history of the city begins with"
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT

# CPU cores busy (all processes) over 1 s, from /proc/stat.
busy_cores() {
  read -r _ u n s i w q sq st _ </proc/stat
  local b0=$((u + n + s + q + sq + st)) t0=$((u + n + s + q + sq + st + i + w))
  sleep 1
  read -r _ u n s i w q sq st _ </proc/stat
  local b1=$((u + n + s + q + sq + st)) t1=$((u + n + s + q + sq + st + i + w))
  awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v c="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? b / t * c : 0) }'
}

decode_tps() {  # binary model -> tok/s (or "fail")
  local out
  out=$(timeout 300 "$1" --model "$2" --prompt "$PROMPT" -n "$N" --temp 0 --threads "$THREADS" \
    --json 2>/dev/null) || { echo fail; return; }
  python3 -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])["gen_tok_per_s"])' "$out"
}
median() { tr ' ' '\n' | grep -v -e fail -e '^$' | sort -g | awk '{a[NR]=$1} END {print NR ? a[int((NR+1)/2)] : "fail"}'; }

echo "| model | binary | competitors | others' load before (cores) | decode tok/s (median of $REPS) | share of 0-competitor |"
echo "|---|---|---|---|---|---|"
for model in "$@"; do
  declare -A base=()
  for load in 0 1 2; do
    before=$(busy_cores)
    for ((i = 0; i < load; i++)); do yes >/dev/null & pids+=($!); done
    declare -A runs=()
    for ((r = 0; r < REPS; r++)); do
      for b in "${BINS[@]}"; do runs[$b]+="$(decode_tps "$b" "$model") "; done
    done
    cleanup
    for b in "${BINS[@]}"; do
      m=$(echo "${runs[$b]}" | median)
      [ "$load" = 0 ] && base[$b]=$m
      share=$(awk -v a="$m" -v z="${base[$b]}" 'BEGIN { if (z + 0 > 0 && a + 0 > 0) printf "%.0f %%", 100 * a / z; else print "-" }')
      echo "| $(basename "$model") | $b | $load | $before | $m (${runs[$b]% }) | $share |"
    done
    unset runs
  done
  unset base
done
