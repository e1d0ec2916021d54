#!/usr/bin/env bash
# Builds scripts/llamacpp_logits.cpp (llama.cpp's greedy steps and logits through its C API)
# against the static llama.cpp build of bench/llamacpp.sh, into $LLAMACPP_CACHE/build/bin.
# Prints the binary's path. Rebuilds when the source is newer than the binary.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LLAMACPP_CACHE:-${MINFER_HOME:-$HOME/.cache/minfer}/llamacpp}
SRC=$(dirname "$(find "$CACHE/src" -path '*/include/llama.h' | head -1)")/..
B="$CACHE/build"
OUT="$B/bin/llamacpp_logits"
[ -f "$B/src/libllama.a" ] || { echo "llamacpp_logits_build: run bench/llamacpp.sh build first" >&2; exit 1; }
if [ ! -x "$OUT" ] || [ "$ROOT/scripts/llamacpp_logits.cpp" -nt "$OUT" ]; then
  g++ -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" "$ROOT/scripts/llamacpp_logits.cpp" \
    "$B/src/libllama.a" "$B/ggml/src/libggml.a" "$B/ggml/src/libggml-cpu.a" \
    "$B/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl -lm -o "$OUT.tmp"
  mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
