#!/usr/bin/env bash
# The quickstart's evaluation size: the dense SmolLM2 and its quickstart prune (25% block-wise,
# param-first, layers 3:27) evaluated on the first LIMIT documents of the seven tasks with 2
# local workers, then bench/eval_sizing.py: the averages of the first N documents, N = 40..LIMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
LIMIT=${LIMIT:-500}
OUT=${OUT:-bench/results/eval_sizing}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cargo build --release --locked -q --bin llmprune --bin llmprune-worker
./target/release/llmprune prune --model smollm2 --ratio 0.25 --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first \
  --calibration-ids "$DATA_DIR/calib/smollm2_calib_ids.json" --out "$TMP/pruned" > /dev/null
for m in dense pruned; do
  model=smollm2; [ $m = pruned ] && model=$TMP/pruned
  ./target/release/llmprune eval --model "$model" --data-dir "$DATA_DIR/zeroshot" --limit "$LIMIT" --name $m \
    --local-workers 2 --out "$TMP/$m.json" > /dev/null 2> "$TMP/$m.log"
done
mkdir -p "$OUT"
python3 bench/eval_sizing.py "$TMP/dense.samples.jsonl" "$TMP/pruned.samples.jsonl" --out "$OUT/sizing_$LIMIT.json"
