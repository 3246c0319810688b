#!/usr/bin/env bash
# The main job on a fresh machine. Today: perplexity of dense SmolLM2 (fetched if missing)
# on the whole WikiText-2 test and PTB validation sets with LLM-Pruner's protocol.
# DATA_DIR defaults to the team data folder beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/quickstart}
cargo build --release --locked --bin llmprune
mkdir -p "$OUT"
./target/release/llmprune ppl --model smollm2 \
  --data "wikitext2=$DATA_DIR/wikitext2/wiki.test.raw" \
  --data "ptb=$DATA_DIR/ptb/ptb.valid.txt" \
  --seq-len 128 --batch-size 4 --json "$OUT/ppl.json" "$@"
echo "results: $OUT/ppl.json"
