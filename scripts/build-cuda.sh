#!/usr/bin/env bash
# The GPU build: `llmprune` and `llmprune-worker` with candle's CUDA backend and NCCL, and the
# GPU's tests (worker/tests/cuda_ops.rs), built and linked on any Linux x86-64 machine, GPU or
# not (the toolchain comes from scripts/setup-cuda.sh).
#
#   bash scripts/build-cuda.sh              # build, then check the binaries here
#   bash scripts/build-cuda.sh --dist DIR   # also DIR/llmprune.gz and DIR/cuda_ops.gz (the
#                                           # tests): stripped and compressed, for a GPU machine
#
# The build goes to $LLMPRUNE_CUDA_TARGET (default ~/.cache/llmprune/target-cuda), outside the
# clone, so that candle's kernels (≈10 min of nvcc on 2 cores) are built once per machine.
# The check: the binaries start with the link-time stub standing in for the driver; a CPU job
# runs, and `--device cuda:0` fails with a message that names the driver.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=
if [ "${1:-}" = --dist ]; then
  DIST=${2:?--dist needs a directory}
fi
eval "$(bash scripts/setup-cuda.sh)"
export CARGO_TARGET_DIR=${LLMPRUNE_CUDA_TARGET:-$HOME/.cache/llmprune/target-cuda}
t0=$(date +%s)
cargo build --release --locked -p llmprune-coordinator -p llmprune-worker \
  --features llmprune-coordinator/cuda,llmprune-worker/cuda
TESTS=$(cargo test --release --locked -p llmprune-worker --features cuda --test cuda_ops --no-run --message-format json |
  python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "cuda_ops"][0])')
echo "build-cuda: built in $(( $(date +%s) - t0 )) s into $CARGO_TARGET_DIR"
BIN=$CARGO_TARGET_DIR/release

CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
export LD_LIBRARY_PATH=$LLMPRUNE_CUDA_LIBS:$CUDA_HOME/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$BIN/llmprune" synth --shape smollm2 --dtype bf16 --seed 1 --out "$CHECK/model" >/dev/null
for _ in $(seq 100); do printf 'the model reads a line of text and the line ends here . '; done > "$CHECK/text.txt"
ppl() { "$BIN/llmprune" ppl --model "$CHECK/model" --data "wikitext2=$CHECK/text.txt" --max-chunks 1 "$@"; }
ppl --device cpu >/dev/null 2>"$CHECK/cpu.log" || { cat "$CHECK/cpu.log"; echo "build-cuda: the CUDA build failed a CPU job" >&2; exit 1; }
if ppl --device cuda:0 >/dev/null 2>"$CHECK/gpu.log"; then
  echo "build-cuda: --device cuda:0 ran against the stub driver" >&2; exit 1
fi
grep -q "cuda:0: the NVIDIA driver cannot be used here" "$CHECK/gpu.log" || { cat "$CHECK/gpu.log"; echo "build-cuda: unexpected failure of --device cuda:0" >&2; exit 1; }
"$TESTS" --nocapture > "$CHECK/tests.log" 2>&1 || { cat "$CHECK/tests.log"; echo "build-cuda: the GPU tests failed without a GPU (they must skip)" >&2; exit 1; }
grep -q "skipped: no CUDA device" "$CHECK/tests.log" || { cat "$CHECK/tests.log"; echo "build-cuda: the GPU tests did not skip without a GPU" >&2; exit 1; }
echo "build-cuda: the binaries start; the GPU tests skip; a CPU job runs; --device cuda:0 without a driver says: $(grep -o 'cuda:0: the NVIDIA driver.*' "$CHECK/gpu.log" | head -1)"

if [ -n "$DIST" ]; then
  mkdir -p "$DIST"
  # The worker binary stays here: one GPU runs every phase in-process, and 64 MiB travel.
  for b in "$BIN/llmprune" "$TESTS"; do
    name=$(basename "$b" | sed 's/-[0-9a-f]\{16\}$//')
    strip -o "$CHECK/$name" "$b"
    gzip -9 -c "$CHECK/$name" > "$DIST/$name.gz"
  done
  ls -l "$DIST"
fi
