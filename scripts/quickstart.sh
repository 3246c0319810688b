#!/usr/bin/env bash
# The main job on a fresh machine, on SmolLM2 (fetched if missing) with 2 local workers:
# prune 25% block-wise (param-first, layers 3:27, LLM-Pruner's setting), recover with LoRA on
# the Alpaca demo set, and measure WikiText-2 + PTB perplexity of the pruned and the recovered
# model. STEPS (default 40) sets the recovery's length, CHUNKS (default 200) the perplexity's
# chunks per set (CHUNKS= : all). DATA_DIR defaults to the team data folder beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/quickstart}
STEPS=${STEPS:-40}
CHUNKS=${CHUNKS-200}
LIMIT=(); [ -n "$CHUNKS" ] && LIMIT=(--eval-max-chunks "$CHUNKS")
WORKERS=${WORKERS:-2}
cargo build --release --locked --bin llmprune --bin llmprune-worker
rm -rf "$OUT/pruned" "$OUT/recovered"
mkdir -p "$OUT"
PPL="wikitext2=$DATA_DIR/wikitext2/wiki.test.raw,ptb=$DATA_DIR/ptb/ptb.valid.txt"
./target/release/llmprune prune --model smollm2 --local-workers "$WORKERS" \
  --calibration-ids "$DATA_DIR/calib/smollm2_calib_ids.json" --ratio 0.25 \
  --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first \
  --eval-ppl "$PPL" "${LIMIT[@]}" --out "$OUT/pruned"
./target/release/llmprune recover --model "$OUT/pruned" --local-workers "$WORKERS" \
  --data "$DATA_DIR/instruct/alpaca_en_demo.json" --max-steps "$STEPS" --batch-size 8 --micro-batch-size 4 \
  --lr 2e-4 --warmup-steps 10 --val-size 100 --eval-steps 20 \
  --eval-ppl "$PPL" "${LIMIT[@]}" --out "$OUT/recovered" "$@"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
p = json.load(open(f"{out}/pruned/prune_report.json"))
r = json.load(open(f"{out}/recovered/recover_report.json"))
print(f"parameters: {p['params_before']:,} -> {p['params_after']:,}")
for name in sorted(r["ppl"]):
    print(f"{name}: pruned ppl {p['ppl'][name]['ppl']:.2f} -> recovered {r['ppl'][name]['ppl']:.2f}")
v = r["val_losses"]
print(f"validation loss {v[0][1]:.4f} -> {min(x[1] for x in v[1:]):.4f} (step {r['kept_step']})")
PY
echo "results: $OUT/pruned, $OUT/recovered"
