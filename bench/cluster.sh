#!/usr/bin/env bash
# Pipeline overhead and per-worker memory: SmolLM2 pruned block-wise (param-first, 25%, layers
# 3:27, the team's calibration ids) in one process, on 1, 2 and 3 local workers as pipeline
# stages, and with data-parallel replicas (2 workers as 1 stage × 2 replicas, 4 as 2 × 2); each
# run's wall time, the coordinator's peak RSS and every worker's. Results: $OUT/*.json and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-bench/results/cluster}
ROUNDS=${ROUNDS:-2}
cargo build --release --locked --bin llmprune --bin llmprune-worker
mkdir -p "$OUT"
ARGS=(prune --model smollm2 --calibration-ids "$DATA_DIR/calib/smollm2_calib_ids.json" --ratio 0.25
      --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first)
for round in $(seq 1 "$ROUNDS"); do
  # WORKERS:REPLICAS; 0 is one process.
  for layout in 0:1 1:1 2:1 3:1 2:2 4:2; do
    workers=${layout%:*}
    replicas=${layout#*:}
    dir=$(mktemp -d)
    extra=()
    [[ $workers -gt 0 ]] && extra=(--local-workers "$workers" --replicas "$replicas")
    start=$(date +%s.%N)
    ./target/release/llmprune "${ARGS[@]}" "${extra[@]}" --out "$dir/m" > /dev/null 2>&1
    end=$(date +%s.%N)
    python3 - "$dir/m/prune_report.json" "$workers" "$start" "$end" "$round" "$replicas" >> "$OUT/runs.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"workers": int(sys.argv[2]), "replicas": int(sys.argv[6]), "round": int(sys.argv[5]), "wall_s": float(sys.argv[4]) - float(sys.argv[3]),
                  "coordinator_peak_rss_mib": r.get("peak_rss_mib"), "ranks": r.get("cluster", {}).get("ranks", []),
                  "seconds": r["seconds"]}))
PY
    rm -rf "$dir"
  done
done
python3 - "$OUT/runs.jsonl" <<'PY' | tee "$OUT/table.md"
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for r in runs:
    key = (r["workers"], r.get("replicas", 1))
    if key not in best or r["wall_s"] < best[key]["wall_s"]:
        best[key] = r
base = best[(0, 1)]["wall_s"]
print("| run | wall time (best of rounds) | vs one process | coordinator peak RSS | per worker: layers, weights it owns, peak RSS |")
print("|---|---|---|---|---|")
for (w, rep) in sorted(best):
    r = best[(w, rep)]
    name = "one process" if w == 0 else f"{w} local worker{'s' if w > 1 else ''}"
    if rep > 1:
        name += f" ({w // rep} stage{'s' if w // rep > 1 else ''} × {rep} replicas)"
    ranks = "; ".join(f"{x['layers'][0]}..{x['layers'][1]}{' r' + str(x['replica']) if rep > 1 else ''}: {x['params_loaded'] * 4 / 2**20:.0f} MiB, {x['peak_rss_mib']:.0f} MiB"
                      for x in r["ranks"]) or "-"
    print(f"| {name} | {r['wall_s']:.1f} s | {r['wall_s'] / base:.2f}x | {r['coordinator_peak_rss_mib']:.0f} MiB | {ranks} |")
PY
