#!/usr/bin/env bash
# The README's main job, after `make` and `make models`: generate, measure, embed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
echo "== SmolLM2-135M-Instruct: generation (greedy)"
$BIN/run-model --model smollm2 --chat --temp 0 -n 64 \
  --prompt "Explain in two sentences why the sky is blue."
echo
echo "== SmolLM2-135M-Instruct: WikiText-2 perplexity, first 8192 tokens (ctx 512)"
$BIN/perplexity --model smollm2 --max-tokens 8192 --ctx 512
echo
echo "== all-MiniLM-L6-v2: cosine similarities"
printf '%s\n' "A man is eating food." "A man is eating a piece of bread." \
  "The girl is carrying a baby." "A man is riding a horse." | $BIN/embed --model minilm --similarity
