#!/usr/bin/env bash
# What only a GPU can show, in one run of a few minutes on one H100 (driver 580, CUDA 13.0):
# the `cuda` build computes what the CPU build computes, and LLaMA-7B scores in bf16 within
# one 80 GB GPU, timed beside PyTorch doing the same pass.
#
#   bash scripts/gpu-check.sh prepare      # here (no GPU): gpucheck/ with the stripped GPU
#                                          # binaries (scripts/build-cuda.sh) and the data
#   bash scripts/gpu-check.sh run          # on the GPU machine, from the repository root;
#                                          # results in $OUT (default gpucheck/out)
#
# `run` needs the GPU machine's Python (torch with its CUDA 13 libraries, transformers) and
# nothing else; no network. Models are synthesized there (`llmprune synth`): SmolLM2's shape
# for the CPU-versus-GPU comparisons, LLaMA-7B for memory and speed. With GPU_CHECK_DEVICE=cpu
# it runs on the CPU build in target/release with GPU_CHECK_BIG (default llama-7b) as the
# large shape, which is how this script itself is tested without a GPU.
#
# Checks (each a line of $OUT/summary.jsonl; the run fails on the first that does not hold):
#   ppl      SmolLM2-shaped model, 40 WikiText-2 chunks: cuda f32 = cpu f32 (mean NLL, 1e-5
#            relative), cuda bf16 within 1e-2
#   prune    LLM-Pruner's setting (block 25%, param-first, layers 3:27) on cpu f32, cuda f32,
#            cuda bf16: the same parameter count; kept units shared with the CPU's (≥ 98%
#            for f32, reported for bf16)
#   recover  4 LoRA steps on the pruned model, cuda bf16 against cpu f32: the losses within 2%
#   eval     3 tasks × 20 documents, cuda bf16 against cpu f32: accuracies reported
#   7b       LLaMA-7B bf16 (seeded random weights): prune param-first on the GPU, peak GPU
#            memory and scoring time, beside transformers' forward+backward of the same batch
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
DIR=gpucheck
DATA=${DATA_DIR:-../shared/data}

if [ "$MODE" = prepare ]; then
  grep -qx '/gpucheck/' .gitignore || { echo "gpu-check: .gitignore must hold /gpucheck/" >&2; exit 1; }
  rm -rf "$DIR" && mkdir -p "$DIR/data/zeroshot"
  bash scripts/build-cuda.sh --dist "$DIR/bin"
  cp "$DATA/wikitext2/wiki.test.raw" "$DATA/calib/smollm2_calib_ids.json" "$DATA/instruct/alpaca_en_demo.json" "$DIR/data/"
  for t in boolq.validation piqa.validation arc_easy.test; do head -n 40 "$DATA/zeroshot/$t.jsonl" > "$DIR/data/zeroshot/$t.jsonl"; done
  du -sh "$DIR"
  echo "gpu-check: prepared; on the GPU machine: bash scripts/gpu-check.sh run (carry gpucheck)"
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: scripts/gpu-check.sh prepare|run" >&2; exit 2; }

OUT=${OUT:-$DIR/out}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda:0}
BIG=${GPU_CHECK_BIG:-llama-7b}
W=$(mktemp -d /tmp/gpucheck.XXXX)
LOG=$OUT/gpu-check.log
: > "$OUT/summary.jsonl"
say() { echo "[gpu-check +${SECONDS}s] $*" | tee -a "$LOG"; }
record() { echo "$1" | tee -a "$OUT/summary.jsonl" >> "$LOG"; }
export RUST_BACKTRACE=0 NO_COLOR=1

if [ "$DEVICE" = cpu ]; then
  BIN=target/release
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
  for b in llmprune llmprune-worker; do gunzip -c "$DIR/bin/$b.gz" > "$W/$b"; chmod +x "$W/$b"; done
  BIN=$W
  # The CUDA 13 libraries of the machine's PyTorch (cuBLAS, cudart, cuRAND, NVRTC, NCCL).
  SITE=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')
  LIBS=$(find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
  # The driver's libcuda.so.1 is on the loader's path, or (in containers) in /usr/local/nvidia.
  export LD_LIBRARY_PATH=$LIBS:/usr/local/nvidia/lib64:/usr/local/nvidia/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$BIN/llmprune" | grep 'not found' | tee -a "$LOG"; then say "libraries missing"; exit 1; fi
fi
LP=$BIN/llmprune
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# Peak GPU memory of a command, sampled every 0.2 s (MiB; 0 on the CPU).
peak_gpu() {
  local f=$W/mem.$RANDOM
  if [ "$DEVICE" = cpu ]; then "$@"; echo 0 > "$f.max"; else
    ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done ) > "$f" &
    local poll=$!
    "$@"; local rc=$?
    kill $poll; sort -n "$f" | tail -1 > "$f.max"
    [ $rc = 0 ] || return $rc
  fi
  PEAK_MIB=$(cat "$f.max")
}

say "synthesizing SmolLM2's shape (f32, seed 1)"
"$LP" synth --shape smollm2 --dtype f32 --seed 1 --out "$W/small" 2>>"$LOG" >/dev/null

say "ppl: cpu f32, $DEVICE f32, $DEVICE bf16"
ppl() { "$LP" ppl --model "$W/small" --data "wikitext2=$DIR/data/wiki.test.raw" --max-chunks 40 "$@" 2>>"$LOG" >/dev/null; }
ppl --device cpu --dtype f32 --json "$OUT/ppl-cpu.json"
ppl --device "$DEVICE" --dtype f32 --json "$OUT/ppl-dev-f32.json"
ppl --device "$DEVICE" --dtype bf16 --json "$OUT/ppl-dev-bf16.json"
record "$(python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
nll = {k: json.load(open(f"{o}/ppl-{k}.json"))["results"]["wikitext2"]["mean_nll"] for k in ("cpu", "dev-f32", "dev-bf16")}
rel = {k: abs(nll[k] - nll["cpu"]) / nll["cpu"] for k in ("dev-f32", "dev-bf16")}
ok = rel["dev-f32"] <= 1e-5 and rel["dev-bf16"] <= 1e-2
print(json.dumps({"check": "ppl", "ok": ok, "mean_nll": nll, "relative_to_cpu": rel}))
PY
)"

say "prune: cpu f32, $DEVICE f32, $DEVICE bf16 (LLM-Pruner's setting)"
prune() {
  local out=$1; shift
  "$LP" prune --model "$W/small" --calibration-ids "$DIR/data/smollm2_calib_ids.json" --ratio 0.25 \
    --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first --latency-chunks 0 --out "$out" "$@" 2>>"$LOG" >/dev/null
}
prune "$W/p-cpu" --device cpu --dtype f32
prune "$W/p-f32" --device "$DEVICE" --dtype f32
prune "$W/p-bf16" --device "$DEVICE"
record "$(DEVICE=$DEVICE python3 - "$W" <<'PY'
import json, os, sys
w = sys.argv[1]
def kept(name):
    plan = json.load(open(f"{w}/{name}/plan.json"))
    return {(s, g["root"]): set(map(str, g["kept"])) for s, st in enumerate(plan["steps"]) for g in st["groups"]}
def params(name):
    return json.load(open(f"{w}/{name}/prune_report.json"))["params_after"]
cpu = kept("p-cpu")
def shared(name):
    other = kept(name)
    total = sum(len(v) for v in cpu.values())
    return sum(len(cpu[k] & other.get(k, set())) for k in cpu) / max(total, 1)
rep = {n: json.load(open(f"{w}/{n}/prune_report.json")) for n in ("p-cpu", "p-f32", "p-bf16")}
out = {"check": "prune", "params": {n: params(n) for n in rep}, "kept_shared_with_cpu": {n: shared(n) for n in ("p-f32", "p-bf16")},
       "dtype": {n: rep[n]["dtype"] for n in rep}, "scoring_s": {n: rep[n]["seconds"]["scoring"] for n in rep}}
default = "f32" if os.environ["DEVICE"] == "cpu" else "bf16"
out["ok"] = len(set(out["params"].values())) == 1 and out["kept_shared_with_cpu"]["p-f32"] >= 0.98 and rep["p-bf16"]["dtype"] == default
print(json.dumps(out))
PY
)"

say "recover: 4 LoRA steps, cpu f32 and $DEVICE (default dtype)"
recover() {
  local out=$1; shift
  "$LP" recover --model "$W/p-cpu" --data "$DIR/data/alpaca_en_demo.json" --max-steps 4 --batch-size 8 --micro-batch-size 4 \
    --val-size 8 --eval-steps 4 --out "$out" "$@" 2>>"$LOG" >/dev/null
}
recover "$W/r-cpu" --device cpu
recover "$W/r-dev" --device "$DEVICE"
record "$(python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
rep = {n: json.load(open(f"{w}/{n}/recover_report.json")) for n in ("r-cpu", "r-dev")}
losses = {n: [row[1] for row in r["loss_curve"]] for n, r in rep.items()}
val = {n: [l for _, l in r["val_losses"]] for n, r in rep.items()}
pairs = list(zip(losses["r-cpu"], losses["r-dev"])) + list(zip(val["r-cpu"], val["r-dev"]))
ok = len(losses["r-dev"]) == 4 and all(abs(x - y) <= 0.02 * abs(x) for x, y in pairs)
print(json.dumps({"check": "recover", "ok": ok, "val_losses": val, "train_losses": losses}))
PY
)"

say "eval: 3 tasks x 20 documents, cpu f32 and $DEVICE (default dtype)"
ev() { "$LP" eval --model "$W/p-cpu" --data-dir "$DIR/data/zeroshot" --tasks boolq,piqa,arc_easy --limit 20 --out "$1" "${@:2}" 2>>"$LOG" >/dev/null; }
ev "$OUT/eval-cpu.json" --device cpu
ev "$OUT/eval-dev.json" --device "$DEVICE"
record "$(python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
acc = {k: {t: v["acc"] for t, v in json.load(open(f"{o}/eval-{k}.json"))["results"].items() if "acc" in v} for k in ("cpu", "dev")}
print(json.dumps({"check": "eval", "ok": set(acc["cpu"]) == set(acc["dev"]), "acc": acc}))
PY
)"

say "$BIG: synthesizing bf16 weights"
"$LP" synth --shape "$BIG" --dtype bf16 --seed 7 --out "$W/big" 2>>"$LOG" >/dev/null
python3 -c "import json, random; r = random.Random(0); v = json.load(open('$W/big/config.json'))['vocab_size']; json.dump([[r.randrange(v) for _ in range(64)] for _ in range(10)], open('$W/big-ids.json', 'w'))"
say "$BIG: llmprune prune (param-first, 20%, bf16 on $DEVICE)"
peak_gpu "$LP" prune --model "$W/big" --calibration-ids "$W/big-ids.json" --ratio 0.2 --attn-layers 4:30 --mlp-layers 4:30 \
  --criterion param-first --latency-chunks 0 --device "$DEVICE" --out "$W/big-pruned" 2>>"$LOG" >/dev/null
OURS_PEAK=$PEAK_MIB
if [ "$DEVICE" = cpu ]; then REF='{"skipped": "no GPU"}'; REF_PEAK=0; else
  say "$BIG: transformers forward+backward of the same batch"
  peak_gpu python3 scripts/gpu_reference.py "$W/big" "$W/big-ids.json" --dtype bf16 > "$W/ref.json" 2>>"$LOG"
  REF=$(cat "$W/ref.json"); REF_PEAK=$PEAK_MIB
fi
record "$(python3 - "$W" "$OURS_PEAK" "$REF_PEAK" "$REF" <<'PY'
import json, sys
w, ours_peak, ref_peak, ref = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
rep = json.load(open(f"{w}/big-pruned/prune_report.json"))
out = {"check": "7b", "ok": True, "params_before": rep["params_before"], "params_after": rep["params_after"], "dtype": rep["dtype"],
       "seconds": rep["seconds"], "peak_gpu_mib": ours_peak, "peak_rss_mib": rep["peak_rss_mib"], "reference": ref, "reference_peak_gpu_mib": ref_peak}
if "pass_s_median" in ref:
    out["scoring_over_reference_pass"] = rep["seconds"]["scoring"] / ref["pass_s_median"]
print(json.dumps(out))
PY
)"
say "done"
python3 -c "import json,sys; bad=[c['check'] for c in map(json.loads, open('$OUT/summary.jsonl')) if not c['ok']]; print('failed:', bad) if bad else print('all checks hold'); sys.exit(1 if bad else 0)" | tee -a "$LOG"
