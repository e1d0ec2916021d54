#!/usr/bin/env bash
# The README's main job, after `make` and `make models`: generate with SmolLM2, compress it,
# generate with the compressed copy, then the comparison of every compression method (table +
# plot) for SmolLM2 and MiniLM.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
OUT=${OUT:-build/demo}
mkdir -p "$OUT"
echo "== SmolLM2-135M-Instruct: generation (greedy, the GGUF's Q4_1 run natively)"
$BIN/run-model --model smollm2 --chat --temp 0 -n 48 \
  --prompt "Explain in two sentences why the sky is blue."
echo
echo "== Compress SmolLM2 to int8 (weights) and to NF4 with double quantization"
$BIN/compress --model smollm2 --method int8 --out "$OUT/smollm2-int8" --force -q
$BIN/compress --model smollm2 --method nf4 --double-quant --out "$OUT/smollm2-nf4dq" --force -q
echo
echo "== The int8 copy (compressed from the same weights) generates the same way"
$BIN/run-model --model "$OUT/smollm2-int8" --chat --temp 0 -n 48 \
  --prompt "Explain in two sentences why the sky is blue."
echo
echo "== all-MiniLM-L6-v2: cosine similarities"
printf '%s\n' "A man is eating food." "A man is eating a piece of bread." \
  "The girl is carrying a baby." "A man is riding a horse." | $BIN/embed --model minilm --similarity
echo
# Every method, measured: size, perplexity (first ${DEMO_TOKENS:-4096} WikiText-2 test tokens;
# docs/quantization.md has the 16k-token table), speed. `bench --max-tokens 16384` is the default.
echo "== bench: SmolLM2-135M, every compression method"
$BIN/bench --model smollm2 --max-tokens "${DEMO_TOKENS:-4096}" --json "$OUT/bench-smollm2.json" \
  --plot "$OUT/bench-smollm2.svg"
echo
echo "== bench: all-MiniLM-L6-v2 (quality = cosine to the f32 embeddings, 200 WikiText lines)"
$BIN/bench --model minilm --json "$OUT/bench-minilm.json" --plot "$OUT/bench-minilm.svg"
echo
echo "plots: $OUT/bench-smollm2.svg $OUT/bench-minilm.svg"
