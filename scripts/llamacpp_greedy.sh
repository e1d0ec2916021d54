#!/usr/bin/env bash
# Greedy generation of minfer against llama.cpp on the same GGUF files, prompt by prompt.
#
# Outside the repo (in $LLAMACPP_CACHE, default ~/.cache/minfer/llamacpp, as bench/llamacpp.sh
# sets it up): builds scripts/llamacpp_logits.cpp against llama.cpp (greedy steps through its C
# API: token ids and top-2 margins; scripts/llamacpp_logits_build.sh), makes a Qwen2.5-class
# model (tests/fixtures/arch/make_qwen2_q4km.py: random Qwen2ForCausalLM, trained byte-level BPE
# with the qwen2 pre-tokenizer, convert_hf_to_gguf.py to F32, llama-quantize Q4_K_M) and its
# Q4_K_S, Q5_K_M, Q6_K, Q3_K_M and Q2_K files (llama-quantize from the F32 file), then for each
# model, prompt and mode compares llama.cpp's greedy token ids with
#   run-model --model M --prompt P -n N --temp 0 --json [--dtype f32]
# (scripts/llamacpp_greedy_case.py: modes native, f32, q8, q8nr), printing `identical` or the
# first differing step with both engines' top-1 minus top-2 logit there. Both stop at an
# end-of-generation token.
#
# Models: the Qwen2.5-class files, the default SmolLM2-135M-Instruct Q4_1, and the tiny phi3
# fixture (tests/fixtures/arch/phi3/model.gguf; random weights over a 101-token vocabulary).
#
# Usage: scripts/llamacpp_greedy.sh            Environment: THREADS (2), N (32), PYTHON
#        (/work/pyenv/bin/python or python3 with torch, transformers, tokenizers, gguf), SETS
#        (which models, default "qwen2 kquants smollm2 phi3").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LLAMACPP_CACHE:-${MINFER_HOME:-$HOME/.cache/minfer}/llamacpp}
THREADS=${THREADS:-2}
N=${N:-32}
PY=${PYTHON:-$( [ -x /work/pyenv/bin/python ] && echo /work/pyenv/bin/python || echo python3)}
SMOL=${SMOL:-${MINFER_HOME:-$HOME/.cache/minfer}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
SETS=${SETS:-"qwen2 kquants smollm2 phi3"}
RM="$ROOT/build/bin/run-model"

[ -d "$CACHE/build" ] || { echo "llamacpp_greedy: run bench/llamacpp.sh build first" >&2; exit 1; }
LC=$("$ROOT/scripts/llamacpp_logits_build.sh")
[ -x "$RM" ] || { echo "llamacpp_greedy: build minfer first (make)" >&2; exit 1; }

QDIR="$CACHE/models/qwen2-class"
if [ ! -f "$QDIR/model-q4km.gguf" ]; then
  echo "llamacpp_greedy: making the Qwen2.5-class model in $QDIR" >&2
  rm -rf "$QDIR"
  "$PY" "$ROOT/tests/fixtures/arch/make_qwen2_q4km.py" --out "$QDIR" --layers 4 >&2
fi
KQUANTS="Q4_K_S Q5_K_M Q6_K Q3_K_M Q2_K"
for t in $KQUANTS; do
  [ -f "$QDIR/model-$t.gguf" ] ||
    "$CACHE/build/bin/llama-quantize" "$QDIR/model-f32.gguf" "$QDIR/model-$t.gguf" "$t" 2 >/dev/null 2>&1
done

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
has() { case " $SETS " in *" $1 "*) return 0 ;; esac; return 1; }
for p in "${PROMPTS[@]}"; do
  if has qwen2; then
    compare qwen2-q4km "$QDIR/model-q4km.gguf" "$p" native f32 q8 q8nr
    compare qwen2-f32 "$QDIR/model-f32.gguf" "$p" native q8
  fi
  if has kquants; then
    for t in $KQUANTS; do compare "qwen2-$t" "$QDIR/model-$t.gguf" "$p" native q8 q8nr; done
  fi
  if has smollm2 && [ -f "$SMOL" ]; then compare smollm2-q4_1 "$SMOL" "$p" native f32 q8; fi
  if has phi3; then compare phi3-tiny "$ROOT/tests/fixtures/arch/phi3/model.gguf" "$p" native; fi
done
echo "llamacpp_greedy: $same of $total identical"
