#!/usr/bin/env bash
# Retraining-free quality beyond LLM-Pruner on SmolLM2 at LLM-Pruner's parameter count (block-wise
# 0.25 on layers 3:27, 118.6M parameters): each criterion with and without least-squares
# reconstruction, bias compensation and layer profiles, on the reference's calibration (10 × 64
# Austen tokens) and on 256 windows of 128 tokens of raw Wikipedia (calib/wiki.utf8, exllamav2's
# calibration text: not WikiText-2's test set); WikiText-2 perplexity on the first 400 chunks
# (PTB too with PTB=1), peak memory, prune time. Results: $OUT/<name>/prune_report.json,
# $OUT/table.md.
#
#   bench/quality.sh          the perplexity columns (about an hour on 2 cores); with TASKS=500
#                             RECOVER=1 PTB=1 every column, 12–26 minutes more a row
#   bench/quality.sh best     the best configuration alone (one process, ~5 minutes), ending
#                             with one JSON line {"method", "params", "wikitext2_ppl_400", "seconds"}
#                             (TASKS=500: then the seven zero-shot tasks on 500 documents each,
#                             their average added to the line as "tasks_avg")
#
# The rows ending _r34, _r53, _r84 prune 0.34, 0.53 and 0.84 of each layer's heads and neurons on
# layers 3:27: 21%, 30% and 50% of SmolLM2's parameters (whole KV groups of 3 heads go from 0.34).
#
# Columns beyond perplexity, added to every row that lacks them (its model re-pruned, without the
# perplexity, when an earlier run made the row):
#   TASKS=500   the seven zero-shot tasks on their first 500 documents each: $OUT/<name>/eval_500.{json,md}
#   RECOVER=1   one fixed LoRA budget for every row, the quickstart's (30 steps of 8 records of the
#               Alpaca demo set, 100 more held out, lr 2e-4 after 5 warm-up steps, rank 8 on every
#               projection), then WikiText-2 and PTB again (and the tasks with TASKS):
#               $OUT/<name>/recovered/{recover_report.json, ppl.json, eval_500.*}
#   PTB=1       PTB beside WikiText-2 before recovery too ($OUT/<name>/ppl_ptb.json for old rows)
# A row's pruned and recovered models live in a scratch folder only while the row runs.
#
# ONLY="a b" runs some rows; LLMPRUNE=path overrides the binary; DATA_DIR the team's data.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=${OUT:-bench/results/quality}
LLMPRUNE=${LLMPRUNE:-./target/release/llmprune}
CHUNKS=${CHUNKS:-400}
EVAL="wikitext2=$DATA_DIR/wikitext2/wiki.test.raw"
[ "${PTB:-0}" = 1 ] && EVAL="$EVAL,ptb=$DATA_DIR/ptb/ptb.valid.txt"
IDS="--calibration-ids $DATA_DIR/calib/smollm2_calib_ids.json"
WIKI="--calibration $DATA_DIR/calib/wiki.utf8 --samples 256 --seq-len 128"
# Also 20 windows: param-first in one backward pass over them (≤ 16 windows a pass: here 2).
WIKI20="--calibration $DATA_DIR/calib/wiki.utf8 --samples 20 --seq-len 128"
BOOKS="--calibration $DATA_DIR/books/emma.txt --calibration $DATA_DIR/books/persuasion.txt --samples 256 --seq-len 128"
# LLM-Pruner's setting; a row that names one of these flags replaces its value.
BLOCK=(--ratio 0.25 --attn-layers 3:27 --mlp-layers 3:27)
# Layer profiles over layers 3:27: later layers lose more (ramp), or the middle ones (arch:
# 0.6 + 0.8·sin(π(i + ½)/24), keeping more of the first and last pruned layers). On MLP neurons
# only: at 0.25 the uniform prune removes no KV group (int(3·0.25) = 0), and a profile that
# took whole groups of 3 heads from some layers would compare other parameter counts.
ARCH=0.65,0.76,0.86,0.95,1.04,1.13,1.20,1.27,1.32,1.36,1.38,1.40,1.40,1.38,1.36,1.32,1.27,1.20,1.13,1.04,0.95,0.86,0.76,0.65
BEST="wanda_rec_arch_wiki:$WIKI --criterion wanda --reconstruct --layer-profile $ARCH --attn-layers 3:3"

# prune DIR [--eval] FLAGS...: the row's model into DIR, with the table's perplexity if --eval.
prune() {
  local dir=$1; shift
  local eval=()
  if [ "$1" = --eval ]; then eval=(--eval-ppl "$EVAL" --eval-max-chunks "$CHUNKS"); shift; fi
  rm -rf "$dir"
  local block=() i
  for ((i = 0; i < ${#BLOCK[@]}; i += 2)); do
    [[ " $* " == *" ${BLOCK[i]} "* ]] || block+=("${BLOCK[i]}" "${BLOCK[i + 1]}")
  done
  "$LLMPRUNE" prune --model smollm2 --strategy block "${block[@]}" --out "$dir" "${eval[@]}" --latency-chunks 0 "$@"
}

# tasks MODEL DEST: the seven tasks on $TASKS documents each, DEST.json and DEST.md.
tasks() {
  "$LLMPRUNE" eval --model "$1" --data-dir "$DATA_DIR/zeroshot" --limit "$TASKS" --local-workers 2 \
    --out "$TMP/eval.json" > "$TMP/eval.log" 2>&1 || { tail -5 "$TMP/eval.log" >&2; return 1; }
  cp "$TMP/eval.json" "$2.json"
  cp "$TMP/eval.md" "$2.md"
}

# ppl MODEL JSON DATA...: perplexity on the table's chunks.
ppl() {
  local model=$1 json=$2; shift 2
  local data=() d
  for d in "$@"; do data+=(--data "$d"); done
  "$LLMPRUNE" ppl --model "$model" "${data[@]}" --max-chunks "$CHUNKS" --json "$json" > "$TMP/ppl.log" 2>&1 \
    || { tail -5 "$TMP/ppl.log" >&2; return 1; }
}

# The fixed LoRA budget every row gets with RECOVER=1 (examples/smollm2-laptop.toml's).
recover() {
  "$LLMPRUNE" recover --model "$1" --data "$DATA_DIR/instruct/alpaca_en_demo.json" --max-steps 30 --batch-size 8 \
    --micro-batch-size 4 --lr 2e-4 --warmup-steps 5 --val-size 100 --eval-steps 30 --out "$2" > "$TMP/recover.log" 2>&1 \
    || { tail -5 "$TMP/recover.log" >&2; return 1; }
}

WIKITEXT2="wikitext2=$DATA_DIR/wikitext2/wiki.test.raw"
PTB_DATA="ptb=$DATA_DIR/ptb/ptb.valid.txt"

# row NAME FLAGS...: whatever of the row's columns is missing. Called as `row … || exit 1`, where
# bash ignores `set -e`, so every step returns on failure itself.
row() {
  local name=$1; shift
  local dir="$OUT/$name" model="$TMP/$name.model" recovered="$TMP/$name.recovered"
  local need_ptb=0 need_tasks=0 need_recover=0
  if [[ ! -f "$dir/prune_report.json" ]]; then
    echo "== $name: prune"
    prune "$model" --eval "$@" > "$TMP/$name.log" 2>&1 || { tail -5 "$TMP/$name.log" >&2; return 1; }
    mkdir -p "$dir" && cp "$model/prune_report.json" "$dir/" || return 1
  fi
  if [[ "${PTB:-0}" = 1 && ! -f "$dir/ppl_ptb.json" ]] && ! grep -q '"ptb"' "$dir/prune_report.json"; then need_ptb=1; fi
  if [[ -n "${TASKS:-}" && ! -f "$dir/eval_$TASKS.md" ]]; then need_tasks=1; fi
  if [[ "${RECOVER:-0}" = 1 && ( ! -f "$dir/recovered/ppl.json" || ( -n "${TASKS:-}" && ! -f "$dir/recovered/eval_$TASKS.md" ) ) ]]; then
    need_recover=1
  fi
  if ((need_ptb + need_tasks + need_recover == 0)); then echo "skip $name (done)"; return 0; fi
  if [[ ! -f "$model/plan.json" ]]; then
    echo "== $name: prune again (no perplexity)"
    prune "$model" "$@" > "$TMP/$name.log" 2>&1 || { tail -5 "$TMP/$name.log" >&2; return 1; }
  fi
  if ((need_ptb)); then
    echo "== $name: PTB"
    ppl "$model" "$dir/ppl_ptb.json" "$PTB_DATA" || return 1
  fi
  if ((need_tasks)); then
    echo "== $name: $TASKS documents a task"
    tasks "$model" "$dir/eval_$TASKS" || return 1
  fi
  if ((need_recover)); then
    echo "== $name: recover (30 steps × 8 records)"
    rm -rf "$recovered"
    recover "$model" "$recovered" || return 1
    mkdir -p "$dir/recovered" && cp "$recovered/recover_report.json" "$dir/recovered/" || return 1
    ppl "$recovered" "$dir/recovered/ppl.json" "$WIKITEXT2" "$PTB_DATA" || return 1
    if [[ -n "${TASKS:-}" ]]; then
      echo "== $name: recovered, $TASKS documents a task"
      tasks "$recovered" "$dir/recovered/eval_$TASKS" || return 1
    fi
  fi
  rm -rf "$model" "$recovered"
}

if [ "${1:-}" = best ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  prune "$TMP/model" --eval ${BEST#*:} > "$TMP/log" 2>&1 || { cat "$TMP/log" >&2; exit 1; }
  end=$(date +%s.%N)
  if [ -n "${TASKS:-}" ]; then
    mkdir -p "$OUT/${BEST%%:*}"
    tasks "$TMP/model" "$OUT/${BEST%%:*}/eval_$TASKS"
    cat "$OUT/${BEST%%:*}/eval_$TASKS.md"
  fi
  python3 - "$TMP/model/prune_report.json" "${BEST%%:*}" "$start" "$end" "$OUT/${BEST%%:*}/eval_${TASKS:-none}.json" <<'PY'
import json, os, sys
report = json.load(open(sys.argv[1]))
line = {"method": sys.argv[2], "params": report["params_after"],
        "wikitext2_ppl_400": round(report["ppl"]["wikitext2"]["ppl"], 3),
        "seconds": round(float(sys.argv[4]) - float(sys.argv[3]), 1)}
if os.path.exists(sys.argv[5]):
    line["tasks_avg"] = round(100 * json.load(open(sys.argv[5]))["average"], 2)
print(json.dumps(line))
PY
  exit 0
fi

mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The dense model on the same chunks: the table's first row.
if [[ ! -f "$OUT/dense/ppl.json" && ( -z "${ONLY:-}" || " $ONLY " == *" dense "* ) ]]; then
  echo "== dense"
  mkdir -p "$OUT/dense"
  "$LLMPRUNE" ppl --model smollm2 --data "wikitext2=$DATA_DIR/wikitext2/wiki.test.raw" --data "ptb=$DATA_DIR/ptb/ptb.valid.txt" \
    --max-chunks "$CHUNKS" --json "$OUT/dense/ppl.json" > "$TMP/dense.log" 2>&1 || { tail -5 "$TMP/dense.log" >&2; exit 1; }
fi
for spec in \
  "param_first_ids:$IDS --criterion param-first" \
  "param_first_wiki20:$WIKI20 --criterion param-first" \
  "param_first_wiki:$WIKI --criterion param-first" \
  "obs_rec_wiki20:$WIKI20 --criterion obs --reconstruct" \
  "wanda_wiki:$WIKI --criterion wanda" \
  "fluctuation_wiki:$WIKI --criterion fluctuation" \
  "obs_wiki:$WIKI --criterion obs" \
  "obs_rec_ids:$IDS --criterion obs --reconstruct" \
  "obs_rec_wiki:$WIKI --criterion obs --reconstruct" \
  "fluctuation_rec_wiki:$WIKI --criterion fluctuation --reconstruct" \
  "obs_rec_books:$BOOKS --criterion obs --reconstruct" \
  "obs_rec_std_wiki:$WIKI --criterion obs --reconstruct --scope standardized" \
  "fluctuation_rec_std_wiki:$WIKI --criterion fluctuation --reconstruct --scope standardized" \
  "fluctuation_bias_wiki:$WIKI --criterion fluctuation --compensate-bias" \
  "wanda_bias_wiki:$WIKI --criterion wanda --compensate-bias" \
  "wanda_rec_bias_wiki:$WIKI --criterion wanda --reconstruct --compensate-bias" \
  "wanda_rec_wiki:$WIKI --criterion wanda --reconstruct" \
  "wanda_rec_ramp_wiki:$WIKI --criterion wanda --reconstruct --layer-profile ramp:0.5:1.5 --attn-layers 3:3" \
  "wanda_rec_rramp_wiki:$WIKI --criterion wanda --reconstruct --layer-profile ramp:1.5:0.5 --attn-layers 3:3" \
  "$BEST" \
  "param_first_ids_r34:$IDS --criterion param-first --ratio 0.34" \
  "wanda_rec_wiki_r34:$WIKI --criterion wanda --reconstruct --ratio 0.34" \
  "param_first_ids_r53:$IDS --criterion param-first --ratio 0.53" \
  "wanda_rec_wiki_r53:$WIKI --criterion wanda --reconstruct --ratio 0.53" \
  "param_first_ids_r84:$IDS --criterion param-first --ratio 0.84" \
  "wanda_rec_wiki_r84:$WIKI --criterion wanda --reconstruct --ratio 0.84"; do
  name=${spec%%:*}
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then continue; fi
  # shellcheck disable=SC2086
  row "$name" ${spec#*:} || exit 1
done
python3 bench/quality.py "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
