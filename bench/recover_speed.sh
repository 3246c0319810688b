#!/usr/bin/env bash
# Recovery speed: `llmprune recover` against PEFT + transformers (bench/torch_lora.py) taking
# the same LoRA steps (same records in the same order, same tokenization and micro-batches,
# r=8, alpha=16, dropout 0.05, all seven projections, batch 8 = 2 micro-batches of 4) on the
# same pruned SmolLM2 and machine. The two alternate for ROUNDS rounds; each side's best round
# counts. Prints JSON lines, checks that both trained on the same tokens, and the ratio.
# Needs the reference venv with peft: PYTHON=/path/to/venv/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-../shared/data}
STEPS=${STEPS:-6}
ROUNDS=${ROUNDS:-2}
DATA="$DATA_DIR/instruct/alpaca_en_demo.json"
OUT=${OUT:-bench/results/recover_speed.jsonl}
cargo build --release --locked -q --bin llmprune --bin llmprune-worker
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then
  MODEL="$work/pruned"
  ./target/release/llmprune prune --model smollm2 --calibration-ids "$DATA_DIR/calib/smollm2_calib_ids.json" --ratio 0.25 \
    --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first --out "$MODEL" > /dev/null 2>&1
fi
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  rm -rf "$work/rec"
  ./target/release/llmprune recover --model "$MODEL" --data "$DATA" --max-steps "$STEPS" --epochs 1 --batch-size 8 \
    --micro-batch-size 4 --val-size 0 --warmup-steps 1 --out "$work/rec" > /dev/null 2>&1
  python3 - "$work/rec/recover_report.json" <<'PY' | tee -a "$OUT"
import json, statistics, sys
r = json.load(open(sys.argv[1]))
curve = r["loss_curve"]
secs = [c[4] for c in curve]
toks = [c[5] for c in curve]
rest = secs[1:] or secs
print(json.dumps({"impl": "llmprune", "steps": len(curve), "median_step_s": statistics.median(rest),
                  "tokens_per_s": sum(toks[1:] or toks) / sum(rest), "trained_tokens": toks, "step_seconds": secs,
                  "peak_rss_mb": r["peak_rss_mib"]}))
PY
  "$PYTHON" bench/torch_lora.py --model "$MODEL" --data "$DATA" --steps "$STEPS" | tail -n 1 | tee -a "$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {impl: min((r for r in rows if r["impl"] == impl), key=lambda r: r["median_step_s"]) for impl in ("llmprune", "peft")}
a, b = best["llmprune"], best["peft"]
assert a["trained_tokens"] == b["trained_tokens"], ("the two trained on different tokens", a["trained_tokens"], b["trained_tokens"])
print(f"recovery step (batch 8): llmprune {a['median_step_s']:.2f} s, PEFT {b['median_step_s']:.2f} s -> llmprune is {b['median_step_s'] / a['median_step_s']:.2f}x PEFT's speed"
      f" ({a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f} trained tokens/s; peak RSS {a['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} MiB)")
PY
