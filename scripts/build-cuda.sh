#!/usr/bin/env bash
# The GPU build: `llmprune` and `llmprune-worker` with candle's CUDA backend and NCCL, built and
# linked on any Linux x86-64 machine, GPU or not (the toolchain comes from scripts/setup-cuda.sh).
#
#   bash scripts/build-cuda.sh              # build, then check the binaries here
#   bash scripts/build-cuda.sh --dist DIR   # also DIR/llmprune.gz, DIR/llmprune-worker.gz:
#                                           # stripped and compressed, for a GPU machine
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
echo "build-cuda: the binaries start; a CPU job runs; --device cuda:0 without a driver says: $(grep -o 'cuda:0: the NVIDIA driver.*' "$CHECK/gpu.log" | head -1)"

if [ -n "$DIST" ]; then
  mkdir -p "$DIST"
  for b in llmprune llmprune-worker; do
    strip -o "$CHECK/$b" "$BIN/$b"
    gzip -9 -c "$CHECK/$b" > "$DIST/$b.gz"
  done
  ls -l "$DIST"
fi
