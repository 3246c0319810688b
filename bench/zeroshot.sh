#!/usr/bin/env bash
# Zero-shot evaluation speed and agreement: `llmprune eval` against lm-evaluation-harness's
# Hugging Face backend (tests/golden/lm_eval_zeroshot.py: the official prompts on the same local
# files, batch 16) on the dense SmolLM2, the first LIMIT documents of the seven tasks, the same
# THREADS on each side, run one after the other. Prints the per-task agreement of predictions,
# both accuracies and the ratio of documents per second. Needs the reference venv with lm_eval:
# PYTHON=/path/to/venv/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-../shared/data}
LIMIT=${LIMIT:-100}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-}
OUT=${OUT:-bench/results/zeroshot}
mkdir -p "$OUT"
cargo build --release --locked -q --bin llmprune --bin llmprune-worker
cluster=()
[ -n "$WORKERS" ] && cluster=(--local-workers "$WORKERS")
RAYON_NUM_THREADS=$THREADS ./target/release/llmprune eval --model smollm2 --data-dir "$DATA_DIR/zeroshot" --limit "$LIMIT" \
  --name dense "${cluster[@]}" --out "$OUT/llmprune_$LIMIT.json" > /dev/null 2> "$OUT/llmprune_$LIMIT.log"
REF=${REF:-$OUT/lm_eval_$LIMIT.json}
if [ ! -f "$REF" ]; then
  OMP_NUM_THREADS=$THREADS "$PYTHON" tests/golden/lm_eval_zeroshot.py --limit "$LIMIT" --threads "$THREADS" --out "$REF" > "$OUT/lm_eval_$LIMIT.log" 2>&1
fi
python3 bench/zeroshot_compare.py "$OUT/llmprune_$LIMIT.json" "$REF" --out "$OUT/summary_$LIMIT.json"
