#!/usr/bin/env bash
# Iterative pruning with recovery (docs/training.md): prune -> distill -> prune more.
#
#   scripts/prune-recover.sh TEACHER SCHEDULE OUT [distill options...]
#   e.g. scripts/prune-recover.sh smol-f32 wanda-20,wanda-40,wanda-50 runs/iter \
#          --steps 20 --batch 4 --seq 64 --lr 1e-4 --alpha 0.5 --temperature 2 -t 2
#
# Stage i compresses the previous stage's student (stage 1: the teacher) with the i-th method of
# SCHEDULE (calibrated on WikiText-2 validation), measures its held-out perplexity, distills it
# from TEACHER (a compressed student keeps its pruning masks fixed: distill --student FOLDER),
# and measures again. Wanda and magnitude scores of a weight already zero are 0, the lowest, so
# each stage's mask contains the previous one: the sparsity only grows. Structured methods
# (ffn-<pct>, heads-<pct>) work the same way for one stage.
# Environment: BIN (default build/bin), DATA (default ../shared/data/wikitext-2-raw),
# PPL_CTX (64), PPL_TOKENS (4096: the first N tokens of wiki.test.raw).
# Writes OUT/stage-<i>-<method> (pruned), OUT/stage-<i>-<method>-kd (distilled) and
# OUT/summary.tsv (stage, method, ppl before, ppl after).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,19p' "$0"
  exit 2
fi
teacher=$1 schedule=$2 out=$3
shift 3
BIN=${BIN:-build/bin}
DATA=${DATA:-../shared/data/wikitext-2-raw}
PPL_CTX=${PPL_CTX:-64}
PPL_TOKENS=${PPL_TOKENS:-4096}
for f in "$DATA/wiki.valid.raw" "$DATA/wiki.test.raw"; do
  [ -f "$f" ] || { echo "prune-recover: $f not found (set DATA)" >&2; exit 1; }
done
mkdir -p "$out"
ppl() {  # perplexity of a model folder on the first PPL_TOKENS tokens of the test split
  "$BIN/perplexity" --model "$1" --text "$DATA/wiki.test.raw" --ctx "$PPL_CTX" \
    --max-tokens "$PPL_TOKENS" -q | awk '$1 == "ppl" { print $2 }'
}
printf 'stage\tmethod\tppl_pruned\tppl_distilled\n' > "$out/summary.tsv"
current=$teacher
i=0
IFS=',' read -ra methods <<< "$schedule"
for m in "${methods[@]}"; do
  i=$((i + 1))
  pruned="$out/stage-$i-$m"
  echo "== stage $i: $m of $current" >&2
  "$BIN/compress" --model "$current" --method "$m" --calibrate "$DATA/wiki.valid.raw" \
    --embed-format f32 --out "$pruned" --force -q
  before=$(ppl "$pruned")
  "$BIN/distill" --teacher "$teacher" --student "$pruned" --data "$DATA/wiki.valid.raw" \
    --eval-data none --out "$pruned-kd" --force -q "$@"
  after=$(ppl "$pruned-kd")
  printf '%s\t%s\t%s\t%s\n' "$i" "$m" "$before" "$after" | tee -a "$out/summary.tsv"
  current="$pruned-kd"
done
