#!/usr/bin/env bash
# minfer against llama.cpp on the same weights, same machine, same thread count, in one run.
#
# Outside the repo (in $LLAMACPP_CACHE, default ~/.cache/minfer/llamacpp): downloads the
# llama-cpp-python sdist with pip (it vendors llama.cpp), builds llama-bench and llama-quantize
# (CPU, -march=native, cmake), and makes F32 / F16 / Q8_0 / Q4_0 / Q4_1 GGUFs of the default model
# (SmolLM2-135M-Instruct, Q4_1) with `llama-quantize --allow-requantize` (F32 and F16 are the Q4_1
# weights dequantized, the very weights minfer's f32 baseline runs). Then, pair by pair (each
# llama.cpp file right before the minfer method it is compared with, so that a load change hits
# both), `llama-bench -p PREFILL -n 0` and `-p 0 -n DECODE -d PREFILL` (decode at the depth minfer's
# bench decodes at: after its prefill) and `bench --prefill PREFILL --decode DECODE`,
# and the memory bandwidth (bench_membw). Prints the ratio table (minfer / llama.cpp) with each
# row's decode GB/s and share of the measured read bandwidth, and the other processes' load.
#
# `load`: decode of both engines (llama.cpp Q8_0, minfer int8) with 0, 1 and 2 competing
# CPU-bound processes, three runs each.
#
# minfer runs with an F16 KV cache (KV_CACHE=f16, bench --kv-cache), as llama.cpp does by default
# (llama-bench's -ctk / -ctv f16): at the decode depth both read the same cache bytes per token.
#
# ROUNDS > 1 repeats the whole series of pairs that many times (round r in OUT/r<r>/) and the
# table gives each ratio's median over the rounds with its range: on a shared host one pair's
# ratio moves by tens of percent from one minute to the next.
#
# Usage: bench/llamacpp.sh [build|run|load|all]   (make bench-llamacpp runs `all`)
# Environment: THREADS (2), PREFILL (512), DECODE (128), LLAMA_REPS (llama-bench -r, 5), ROUNDS (1),
#              KV_CACHE (minfer's KV cache: f16, the default, or f32),
#              MODEL (the .gguf), OUT (a new results folder; one that holds a run is refused,
#              default $LLAMACPP_CACHE/results-<UTC time>), JOBS (build jobs, 2), TEST_TEXT (bench
#              --test-text, when WikiText-2 is not at bench's default path).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LLAMACPP_CACHE:-${MINFER_HOME:-$HOME/.cache/minfer}/llamacpp}
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}
THREADS=${THREADS:-2}
PREFILL=${PREFILL:-512}
DECODE=${DECODE:-128}
MODEL=${MODEL:-${MINFER_HOME:-$HOME/.cache/minfer}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
# minfer method : llama.cpp type (the pairs of the comparison, equal or near bits per weight)
PAIRS=${PAIRS:-"f32:F32 fp16:F16 int8:Q8_0 int4:Q4_0 nf4:Q4_0 w8a8:Q8_0 int4-g32-asym:Q4_1"}

fetch_and_build() {
  mkdir -p "$CACHE"
  if [ ! -x "$CACHE/build/bin/llama-bench" ] || [ ! -x "$CACHE/build/bin/llama-quantize" ]; then
    if [ ! -d "$CACHE/src" ]; then
      echo "llamacpp: downloading the llama-cpp-python sdist (vendors llama.cpp) into $CACHE" >&2
      rm -rf "$CACHE/sdist.tmp" && mkdir -p "$CACHE/sdist.tmp"
      "$PY" -m pip download --no-deps --no-binary :all: -d "$CACHE/sdist.tmp" llama-cpp-python >&2
      tarball=$(ls "$CACHE"/sdist.tmp/llama_cpp_python-*.tar.gz | head -n1)
      mkdir -p "$CACHE/src.tmp"
      tar -xzf "$tarball" -C "$CACHE/src.tmp" --strip-components=1
      mv "$CACHE/src.tmp" "$CACHE/src"
      basename "$tarball" > "$CACHE/sdist-version"
      rm -rf "$CACHE/sdist.tmp"
    fi
    echo "llamacpp: building llama-bench and llama-quantize (CPU, -march=native; takes a while)" >&2
    cmake -S "$CACHE/src/vendor/llama.cpp" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
    nice -n 19 cmake --build "$CACHE/build" -j "$JOBS" --target llama-bench llama-quantize >&2
  fi
}

make_ggufs() {
  mkdir -p "$CACHE/models"
  [ -f "$MODEL" ] || "$ROOT/build/bin/fetch-model" smollm2 >&2
  [ -f "$MODEL" ] || { echo "llamacpp: $MODEL not found" >&2; exit 1; }
  local t out
  for t in F32 F16 Q8_0 Q4_0 Q4_1; do
    out="$CACHE/models/$(basename "$MODEL" .gguf)-$t.gguf"
    [ -f "$out" ] && continue
    echo "llamacpp: making $out" >&2
    "$CACHE/build/bin/llama-quantize" --allow-requantize "$MODEL" "$out.tmp" "$t" >"$out.log" 2>&1 ||
      { echo "llamacpp: llama-quantize $t failed, see $out.log" >&2; exit 1; }
    mv "$out.tmp" "$out"
  done
}

# Other processes' busy CPU cores over 1 s (/proc/stat; this script sleeps meanwhile).
busy_cores() {
  local u n s i w q sq st b0 t0 b1 t1
  read -r _ u n s i w q sq st _ </proc/stat
  b0=$((u + n + s + q + sq + st)) t0=$((b0 + i + w))
  sleep 1
  read -r _ u n s i w q sq st _ </proc/stat
  b1=$((u + n + s + q + sq + st)) t1=$((b1 + i + w))
  awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v c="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? b / t * c : 0) }'
}

run_all() {
  [ -x "$ROOT/build/bin/bench" ] && [ -x "$ROOT/build/bin/bench_membw" ] ||
    { echo "llamacpp: build minfer first (make)" >&2; exit 1; }
  OUT=${OUT:-$CACHE/results-$(date -u +%Y%m%dT%H%M%SZ)}
  # A run never writes over earlier results: an OUT holding a run (info.txt) or round folders
  # (r1, r2, ...: also the symlinks of a folder made to combine runs with llamacpp_table.py, which
  # a run would write through) is refused before anything starts.
  if [ -e "$OUT/info.txt" ] || compgen -G "$OUT/r[0-9]*" >/dev/null; then
    echo "llamacpp: OUT=$OUT already holds results (info.txt or round folders r1, r2, ...);" \
      "give OUT a new folder" >&2
    exit 2
  fi
  make_ggufs
  mkdir -p "$OUT"
  echo "llamacpp: results in $OUT" >&2
  {
    echo "llama.cpp: $(cat "$CACHE/sdist-version" 2>/dev/null || echo '?')"
    "$CACHE/build/bin/llama-bench" --version 2>&1 | head -n 2 || true
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "threads $THREADS, prefill $PREFILL, decode $DECODE, model $MODEL, minfer KV cache ${KV_CACHE:-f16}"
  } >"$OUT/info.txt"
  "$ROOT/build/bin/bench_membw" --threads "$THREADS" --json >"$OUT/membw.json"
  local pair method type gguf round dir
  for ((round = 1; round <= ${ROUNDS:-1}; round++)); do
    dir=$OUT
    if [ "${ROUNDS:-1}" -gt 1 ]; then
      dir=$OUT/r$round
      mkdir -p "$dir"
      echo "llamacpp: round $round of $ROUNDS" >&2
    fi
    for pair in $PAIRS; do
      method=${pair%%:*} type=${pair##*:}
      gguf="$CACHE/models/$(basename "$MODEL" .gguf)-$type.gguf"
      echo "llamacpp: $type (llama.cpp) then $method (minfer)" >&2
      echo "{\"load_cores\": $(busy_cores)}" >"$dir/llama-$method-load.json"
      # Decode at the same depth on both sides: minfer's bench decodes right after its PREFILL-token
      # prefill (the KV cache holds PREFILL tokens), so llama.cpp's generation test runs at
      # --n-depth PREFILL too (its plain tg test starts from an empty cache, which reads no KV).
      "$CACHE/build/bin/llama-bench" -m "$gguf" -p "$PREFILL" -n 0 -t "$THREADS" -r "${LLAMA_REPS:-5}" -o json \
        >"$dir/llama-$method-pp.json" 2>"$dir/llama-$method.log"
      "$CACHE/build/bin/llama-bench" -m "$gguf" -p 0 -n "$DECODE" -d "$PREFILL" -t "$THREADS" -r "${LLAMA_REPS:-5}" \
        -o json >"$dir/llama-$method-tg.json" 2>>"$dir/llama-$method.log"
      "$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1])) + json.load(open(sys.argv[2]))))' \
        "$dir/llama-$method-pp.json" "$dir/llama-$method-tg.json" >"$dir/llama-$method.json"
      "$ROOT/build/bin/bench" --model "$MODEL" --methods "$method" --prefill "$PREFILL" \
        --decode "$DECODE" --threads "$THREADS" --max-tokens 1024 --quiet --kv-cache "${KV_CACHE:-f16}" \
        ${TEST_TEXT:+--test-text "$TEST_TEXT"} \
        --json "$dir/minfer-$method.json" >"$dir/minfer-$method.md" 2>"$dir/minfer-$method.log"
    done
  done
  "$PY" "$ROOT/bench/llamacpp_table.py" "$OUT" "$PAIRS" | tee "$OUT/table.md"
}

# Decode under load, both engines: llama.cpp Q8_0 (llama-bench -p 0 -n 64) and minfer int8
# (run-model, 64 tokens) with 0, 1 and 2 competing `yes > /dev/null` processes, alternated.
under_load() {
  make_ggufs
  local q8="$CACHE/models/$(basename "$MODEL" .gguf)-Q8_0.gguf" i8="$CACHE/models/minfer-int8"
  [ -d "$i8" ] || "$ROOT/build/bin/compress" --model "$MODEL" --method int8 --out "$i8" >&2
  local load r l m
  pids=()
  trap 'for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done' EXIT
  echo "| competitors | others' load before (cores) | llama.cpp Q8_0 decode tok/s | minfer int8 decode tok/s |"
  echo "|---|---|---|---|"
  for load in 0 1 2; do
    local before
    before=$(busy_cores)
    for ((r = 0; r < load; r++)); do yes >/dev/null & pids+=($!); done
    l="" m=""
    for r in 1 2 3; do
      l+="$("$CACHE/build/bin/llama-bench" -m "$q8" -p 0 -n 64 -r 1 -t "$THREADS" -o json 2>/dev/null |
        "$PY" -c 'import json,sys; print("%.1f" % [t["avg_ts"] for t in json.load(sys.stdin)][0])') "
      m+="$("$ROOT/build/bin/run-model" --model "$i8" --prompt "The history of the city" -n 64 \
        --temp 0 --threads "$THREADS" --json 2>/dev/null |
        "$PY" -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["gen_tok_per_s"])') "
    done
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    pids=()
    echo "| $load | $before | ${l% } | ${m% } |"
  done
}

case "${1:-all}" in
  build) fetch_and_build ;;
  run) run_all ;;
  load) under_load ;;
  all) fetch_and_build && run_all ;;
  *) echo "usage: $0 [build|run|load|all]" >&2; exit 2 ;;
esac
