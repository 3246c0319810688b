#!/usr/bin/env bash
# A coordinator and two workers as separate processes on loopback, the way a real cluster runs
# them (the coordinator waits for --workers 2; each worker registers with the token, read
# from a file). Prunes
# SmolLM2 block-wise (param-first, 25%, layers 3:27) into $OUT. Run by CI.
#   deploy/local/run.sh            (builds if needed; DATA_DIR, OUT, PORT, WORKERS override)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-runs/deploy-local}
PORT=${PORT:-17070}
WORKERS=${WORKERS:-2}
# The token in a file only this user reads, never on a command line (ps shows those).
TOKEN_FILE=$(mktemp)
trap 'rm -f "$TOKEN_FILE"' EXIT
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN_FILE"
BIN=./target/release
[[ -x $BIN/llmprune && -x $BIN/llmprune-worker ]] || cargo build --release --locked --bin llmprune --bin llmprune-worker
MODEL=$($BIN/llmprune fetch smollm2 | tail -1)
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"

$BIN/llmprune --token-file "$TOKEN_FILE" --listen "127.0.0.1:$PORT" prune --workers "$WORKERS" \
  --model "$MODEL" --calibration-ids "$DATA_DIR/calib/smollm2_calib_ids.json" \
  --ratio 0.25 --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first --out "$OUT" &
COORDINATOR=$!
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  # Loopback: plaintext and unconfined. Beyond loopback a worker needs --tls-* (or --insecure)
  # and --model-root/--data-root/--output-root (see deploy/README.md).
  $BIN/llmprune-worker --coordinator "http://127.0.0.1:$PORT" --token-file "$TOKEN_FILE" --name "example-$i" &
  pids+=($!)
done
status=0
wait "$COORDINATOR" || status=$?
for p in "${pids[@]}"; do wait "$p" || true; done
if [[ $status -ne 0 ]]; then
  echo "deploy/local: the coordinator failed ($status)" >&2
  exit "$status"
fi
test -f "$OUT/plan.json" && test -f "$OUT/model.safetensors.index.json"
echo "deploy/local: pruned model in $OUT"
