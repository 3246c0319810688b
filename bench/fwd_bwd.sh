#!/usr/bin/env bash
# Forward and forward+backward of SmolLM2 on 10x128 WikiText-2 tokens, all weights
# trainable: llmprune (differentiable mode) against PyTorch/transformers on the same
# machine, one process per measurement so each peak RSS is its own. The two alternate for
# ROUNDS rounds so that a noisy neighbour slows both alike; each process reports the median
# of REPEATS steps and the summary takes each side's best round. Prints JSON lines and the
# ratios. Needs the reference venv (tests/golden/README.md): PYTHON=/path/to/venv/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-../shared/data}
REPEATS=${REPEATS:-3}
ROUNDS=${ROUNDS:-2}
TEXT="$DATA_DIR/wikitext2/wiki.test.raw"
cargo build --release --locked -q --bin llmprune
GGUF=$(./target/release/llmprune fetch smollm2)
OUT=${OUT:-bench/results/fwd_bwd.jsonl}
: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for mode in fwd fwdbwd; do
    ./target/release/llmprune bench --model "$GGUF" --text "$TEXT" --mode "$mode" --repeats "$REPEATS" 2>/dev/null | tee -a "$OUT"
    extra=(); [ "$mode" = fwd ] && extra=(--fwd-autograd)
    "$PYTHON" bench/torch_fwd_bwd.py --gguf "$GGUF" --wikitext "$TEXT" --mode "$mode" --repeats "$REPEATS" "${extra[@]}" | tail -n 1 | tee -a "$OUT"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def best(impl, mode):
    return min((r for r in rows if r["impl"] == impl and r["mode"] == mode), key=lambda r: r["seconds"])
for mode in ("fwd", "fwdbwd"):
    ours, torch = best("llmprune", mode), best("pytorch", mode)
    gflop, ceiling = ours["gflop"], ours["matmul_gflops"]
    print(f"{mode:7} llmprune {ours['seconds']:6.2f} s {ours['peak_rss_mb']:6.0f} MiB "
          f"{gflop / ours['seconds']:5.0f} GFLOP/s ({gflop / ours['seconds'] / ceiling:.0%} of matmul) | "
          f"pytorch {torch['seconds']:6.2f} s {torch['peak_rss_mb']:6.0f} MiB "
          f"{gflop / torch['seconds']:5.0f} GFLOP/s | "
          f"speed x{torch['seconds'] / ours['seconds']:.2f}, memory x{ours['peak_rss_mb'] / torch['peak_rss_mb']:.2f}")
print(f"{gflop:.0f} GFLOP per forward+backward step; this machine's matmul ceiling {ceiling:.0f} GFLOP/s")
PY
