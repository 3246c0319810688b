#!/usr/bin/env bash
# The test command: builds optimised (the numeric tests run whole models), fetches the
# reference model into the cache if it is missing, runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything the steps below write outside target/ goes in one scratch folder, removed on exit:
# a CI machine's disk is shared, and a run once failed with ENOSPC writing its last model.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
echo "disk: $(df -Ph "$SCRATCH" | awk 'NR==2 {print $4}') free for $SCRATCH, $(df -Ph . | awk 'NR==2 {print $4}') for the build"
# Formatting first: it takes a second and names the files to run `cargo fmt` on.
cargo fmt --all -- --check
cargo build --release --workspace --locked
# The GPU collectives (NCCL through cudarc, libraries loaded at run time) must keep compiling.
cargo build --release -p llmprune-worker --features nccl --locked
# The GPU build (candle's CUDA backend, NCCL on device memory) compiles, links and starts on this
# GPU-less machine: CUDA 13.0 from PyPI, candle's kernels cached outside the clone
# (scripts/build-cuda.sh; cold ≈ 15 min on 2 cores, warm ≈ 2 min).
bash scripts/build-cuda.sh
./target/release/llmprune fetch smollm2
cargo test --release --workspace --locked --no-fail-fast
# The GPU check (scripts/gpu-check.sh) on the CPU build at small shapes, so that its run on a GPU
# machine is never its first: every check, the JSON and the table.
OUT=$SCRATCH/gpu-check bash scripts/gpu-check.sh run --device cpu --small
# The deployment example: a coordinator and two workers as separate processes on loopback.
OUT=$SCRATCH/deploy-local PORT=${DEPLOY_PORT:-17070} bash deploy/local/run.sh
rm -rf "$SCRATCH/deploy-local"
# The quickstart, reduced (a few recovery steps, a few documents and chunks): the whole job on
# SmolLM2 through `llmprune run` on 2 local workers, ending with its report.
QS=$SCRATCH/quickstart
OUT=$QS bash scripts/quickstart.sh --set recover.max_steps=3 --set recover.eval_steps=3 --set recover.val_size=16 \
  --set recover.extra_val_chunks=4 --set eval.limit=4 --set eval.ppl_max_chunks=4 > "$QS.log" 2>&1 || { tail -50 "$QS.log"; exit 1; }
python3 - "$QS/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
names = [row["name"] for row in r["table1"]]
assert names == ["dense", "pruned", "recovered"], names
assert all(row["wikitext2"] > 1 and row["average"] is not None for row in r["table1"]), r["table1"]
print("reduced quickstart:", ", ".join(f"{row['name']} wikitext2 {row['wikitext2']:.1f}" for row in r["table1"]))
PY
