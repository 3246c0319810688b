#!/usr/bin/env bash
# The main job on a fresh machine: `llmprune run` with examples/smollm2-laptop.toml on SmolLM2
# (fetched if missing) and 2 local workers: the dense model evaluated, pruned 25% block-wise
# (param-first, layers 3:27, LLM-Pruner's setting), evaluated, recovered with LoRA on the Alpaca
# demo set, evaluated; the report is OUT/report.md. DATA_DIR defaults to the team data folder
# beside the repository; OUT to runs/quickstart (an existing run is resumed: finished phases
# are kept). Extra arguments go before `run`, e.g. `--set recover.max_steps=200`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/quickstart}
for f in calib/smollm2_calib_ids.json instruct/alpaca_en_demo.json wikitext2/wiki.test.raw ptb/ptb.valid.txt zeroshot; do
  [ -e "$DATA_DIR/$f" ] || { echo "quickstart: $DATA_DIR/$f is missing: the team data folder is expected beside the repository (set DATA_DIR=/path/to/data)" >&2; exit 2; }
done
cargo build --release --locked --bin llmprune --bin llmprune-worker
sets=(
  --set "out=$OUT"
  --set "prune.calibration_ids=$DATA_DIR/calib/smollm2_calib_ids.json"
  --set "recover.data=$DATA_DIR/instruct/alpaca_en_demo.json"
  --set "recover.extra_val=wikitext2=$DATA_DIR/wikitext2/wiki.test.raw"
  --set "eval.data_dir=$DATA_DIR/zeroshot"
  --set "eval.ppl=wikitext2=$DATA_DIR/wikitext2/wiki.test.raw,ptb=$DATA_DIR/ptb/ptb.valid.txt"
)
resume=(); [ -d "$OUT" ] && resume=(--resume)
./target/release/llmprune --config examples/smollm2-laptop.toml "${sets[@]}" "$@" run "${resume[@]}"
cat "$OUT/report.md"
