#!/usr/bin/env bash
# Greedy generation of minfer against llama.cpp on the same GGUF files, prompt by prompt.
#
# Outside the repo (in $LLAMACPP_CACHE, default ~/.cache/minfer/llamacpp, as bench/llamacpp.sh
# sets it up): builds llama.cpp's `llama-completion` if missing, makes a Qwen2.5-class model
# (tests/fixtures/arch/make_qwen2_q4km.py: random Qwen2ForCausalLM, trained byte-level BPE with the
# qwen2 pre-tokenizer, convert_hf_to_gguf.py to F32, llama-quantize Q4_K_M), then for each model
# and prompt runs
#   llama-completion -m M -p P -n N --temp 0 -no-cnv --no-display-prompt -t THREADS
#   run-model --model M --prompt P -n N --temp 0 --json            (native blocks)
#   run-model --model M --prompt P -n N --temp 0 --json --dtype f32 (dequantized at load)
# and prints, per case, `identical` or `differs` with the first differing byte of the generated
# bytes (minfer's token ids turned into bytes with the GGUF vocabulary: a random model emits
# partial UTF-8, which decoded text would blur). Both stop at an end-of-generation token.
#
# Models: the Qwen2.5-class Q4_K_M and its F32 file, the default SmolLM2-135M-Instruct Q4_1,
# and the tiny phi3 fixture (tests/fixtures/arch/phi3/model.gguf; random weights over a
# 101-token vocabulary: near-ties are likely, so a difference there is reported, not judged).
#
# Usage: scripts/llamacpp_greedy.sh            Environment: THREADS (2), N (32), PYTHON
#        (/work/pyenv/bin/python or python3 with torch, transformers, tokenizers, gguf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LLAMACPP_CACHE:-${MINFER_HOME:-$HOME/.cache/minfer}/llamacpp}
THREADS=${THREADS:-2}
N=${N:-32}
PY=${PYTHON:-$( [ -x /work/pyenv/bin/python ] && echo /work/pyenv/bin/python || echo python3)}
SMOL=${SMOL:-${MINFER_HOME:-$HOME/.cache/minfer}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
LC="$CACHE/build/bin/llama-completion"
RM="$ROOT/build/bin/run-model"

[ -d "$CACHE/build" ] || { echo "llamacpp_greedy: run bench/llamacpp.sh build first" >&2; exit 1; }
[ -x "$LC" ] || nice -n 19 cmake --build "$CACHE/build" --target llama-completion -j 2 >&2
[ -x "$RM" ] || { echo "llamacpp_greedy: build minfer first (make)" >&2; exit 1; }

QDIR="$CACHE/models/qwen2-class"
if [ ! -f "$QDIR/model-q4km.gguf" ]; then
  echo "llamacpp_greedy: making the Qwen2.5-class model in $QDIR" >&2
  rm -rf "$QDIR"
  "$PY" "$ROOT/tests/fixtures/arch/make_qwen2_q4km.py" --out "$QDIR" --layers 4 >&2
fi

PROMPTS=(
  "The history of the city"
  "In 1998, the team won"
  "Robert Boulter is an English film and television actor."
  "What is the capital of France?"
)

total=0
same=0
compare() {  # name file prompt modes...: one line per mode (scripts/llamacpp_greedy_case.py)
  local name=$1 file=$2 prompt=$3 dtype out
  shift 3
  for dtype in "$@"; do
    total=$((total + 1))
    out=$("$PY" "$ROOT/scripts/llamacpp_greedy_case.py" "$name" "$file" "$prompt" "$dtype" "$LC" "$RM" "$N" \
      "$THREADS")
    echo "$out"
    case "$out" in *" identical "*) same=$((same + 1)) ;; esac
  done
}

echo "llamacpp_greedy: $N tokens, greedy, $THREADS threads; $(uptime | sed 's/.*load/load/')"
for p in "${PROMPTS[@]}"; do
  compare qwen2-q4km "$QDIR/model-q4km.gguf" "$p" native f32 q8
  compare qwen2-f32 "$QDIR/model-f32.gguf" "$p" native q8
  [ -f "$SMOL" ] && compare smollm2-q4_1 "$SMOL" "$p" native f32 q8
  compare phi3-tiny "$ROOT/tests/fixtures/arch/phi3/model.gguf" "$p" native
done
echo "llamacpp_greedy: $same of $total identical"
