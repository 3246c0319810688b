#!/usr/bin/env bash
# The pruning table of the README: SmolLM2 with the team's calibration windows, block-wise 0.25
# on layers 3:27 for every criterion (and global param-first), channel-wise 0.2; each pruned model's
# perplexity on the whole WikiText-2 test and PTB validation sets, no recovery.
# Results: $OUT/<name>/prune_report.json and $OUT/table.md.  LLMPRUNE=path overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-bench/results/prune_table}
LLMPRUNE=${LLMPRUNE:-./target/release/llmprune}
EVAL="wikitext2=$DATA_DIR/wikitext2/wiki.test.raw,ptb=$DATA_DIR/ptb/ptb.valid.txt"
CALIB="--calibration-ids $DATA_DIR/calib/smollm2_calib_ids.json"
BLOCK="--strategy block --ratio 0.25 --attn-layers 3:27 --mlp-layers 3:27"
mkdir -p "$OUT"
run() {
  local name=$1; shift
  if [[ -f "$OUT/$name/prune_report.json" ]]; then echo "skip $name (done)"; return; fi
  rm -rf "$OUT/$name.model"
  local start=$SECONDS
  "$LLMPRUNE" prune --model smollm2 $CALIB --out "$OUT/$name.model" --eval-ppl "$EVAL" ${EXTRA:-} "$@"
  mkdir -p "$OUT/$name"
  cp "$OUT/$name.model/prune_report.json" "$OUT/$name.model/plan.json" "$OUT/$name/"
  echo "$((SECONDS - start))" > "$OUT/$name/wall_seconds"
  rm -rf "$OUT/$name.model"
}
for spec in \
  "random:$BLOCK --criterion random" \
  "l2:$BLOCK --criterion l2" \
  "vectorize:$BLOCK --criterion vectorize" \
  "param_first:$BLOCK --criterion param-first" \
  "param_second:$BLOCK --criterion param-second" \
  "param_mix:$BLOCK --criterion param-mix" \
  "param_first_global:$BLOCK --criterion param-first --scope global" \
  "channel_0.2:--strategy channel --ratio 0.2 --criterion param-first"; do
  name=${spec%%:*}
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then continue; fi
  # shellcheck disable=SC2086
  run "$name" ${spec#*:}
done
python3 bench/prune_table.py "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
