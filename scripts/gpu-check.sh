#!/usr/bin/env bash
# What only a GPU can show, in one run of a few minutes on one H100 (driver 580, CUDA 13.0):
# the `cuda` build computes what the CPU build computes, and how fast and in how much memory
# it does so beside PyTorch eager on the same weights and tokens, up to LLaMA-7B.
#
#   bash scripts/gpu-check.sh prepare                  # here (no GPU): gpucheck/ with the
#                                                      # stripped GPU binaries and the data
#   bash scripts/gpu-check.sh run                      # on the GPU machine, repository root
#   bash scripts/gpu-check.sh run --device cpu --small # the same checks on the CPU build at
#                                                      # small shapes (CI runs this)
#
# `run` needs Python with torch and transformers for the reference columns (PYTHON, default
# python3; without them those columns say "skipped") and nothing else; no network. Models are
# synthesized where the check runs (`llmprune synth`): SmolLM2's shape for the comparisons,
# LLaMA-7B (SmolLM2's again with --small) for memory and speed. Results: $OUT/gpu-check.json
# (one object), $OUT/gpu-check.md (the table, also printed) and $OUT/gpu-check.log.
#
# Checks (the run fails if one does not hold; figures without a bound are reported):
#   ppl       SmolLM2-shaped model, WikiText-2 chunks: DEV f32 = cpu f32 mean NLL (1e-5
#             relative), DEV bf16 within 1e-2
#   prune     LLM-Pruner's setting (block 25%, param-first, layers 3:27) on cpu f32, DEV f32,
#             DEV bf16: the same parameter count; kept units shared with the CPU's (≥ 98% for
#             f32; bf16 reported); importance scores' largest difference from the CPU's
#   recover   3 LoRA steps on the pruned model, DEV (default dtype) against cpu f32: losses
#             within 2%
#   zeroshot  the first 50 ARC-Easy documents: per-choice log-likelihoods of DEV f32 against
#             cpu f32 and against a plain transformers loop (1e-4 of the magnitude), bf16
#             reported; documents/s of llmprune and of that loop in the default dtype
#   fwdbwd    forward+backward tokens/s and peak GPU memory at SmolLM2's and the large shape,
#             llmprune (`bench`) beside transformers eager, same weights and 10 × 128 tokens;
#             the two losses agree (1e-4 in f32, 1e-2 in bf16)
#   large     a block-wise 20% prune of the large shape (param-first, 10 × 128 tokens):
#             scoring/slicing/saving seconds, peak GPU memory, scoring over PyTorch's pass
#   gpu-tests the `cuda` test binary (op parity on the GPU) and its op profile (GPU only)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=gpucheck
DATA=${DATA_DIR:-../shared/data}

# The documents and tokens the checks read, small enough to travel with the binaries.
stage_data() {
  local dest=$1
  mkdir -p "$dest/zeroshot"
  cp "$DATA/wikitext2/wiki.test.raw" "$DATA/calib/smollm2_calib_ids.json" "$DATA/instruct/alpaca_en_demo.json" "$dest/"
  head -n 50 "$DATA/zeroshot/arc_easy.test.jsonl" > "$dest/zeroshot/arc_easy.test.jsonl"
}

MODE=${1:-}
shift || true
if [ "$MODE" = prepare ]; then
  grep -qx '/gpucheck/' .gitignore || { echo "gpu-check: .gitignore must hold /gpucheck/" >&2; exit 1; }
  rm -rf "$DIR" && mkdir -p "$DIR"
  stage_data "$DIR/data"
  bash scripts/build-cuda.sh --dist "$DIR/bin"
  total=$(du -sm "$DIR" | cut -f1)
  [ "$total" -le 62 ] || { echo "gpu-check: $DIR is $total MiB; the device machine takes 64 MiB" >&2; exit 1; }
  echo "gpu-check: prepared ($total MiB); on the GPU machine: bash scripts/gpu-check.sh run (carry gpucheck)"
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: scripts/gpu-check.sh prepare | run [--device cuda:N|cpu] [--small]" >&2; exit 2; }
DEVICE=cuda:0
SMALL=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs cuda:N or cpu}; shift 2 ;;
    --small) SMALL=1; shift ;;
    *) echo "gpu-check: unknown option $1 (run takes --device and --small)" >&2; exit 2 ;;
  esac
done
case $DEVICE in cpu | cuda:[0-9]*) ;; *) echo "gpu-check: --device $DEVICE: expected cpu or cuda:N" >&2; exit 2 ;; esac

OUT=${OUT:-$DIR/out}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/gpucheck.XXXX)
trap 'rm -rf "$W"' EXIT
LOG=$OUT/gpu-check.log
CHECKS=$W/checks.jsonl
: > "$LOG"
: > "$CHECKS"
say() { echo "[gpu-check +${SECONDS}s] $*" | tee -a "$LOG" >&2; }
record() { echo "$1" >> "$CHECKS"; echo "$1" >> "$LOG"; }
export RUST_BACKTRACE=0 NO_COLOR=1
PY=${PYTHON:-python3}

if [ "$SMALL" = 1 ]; then
  BIG=smollm2 CHUNKS=10 DOCS=10 REPEAT=1
else
  BIG=llama-7b CHUNKS=40 DOCS=50 REPEAT=3
fi
if [ "$DEVICE" = cpu ]; then
  BIN=target/release
  CARD="cpu ($(nproc) cores)"
  DTYPE=f32
  [ -d "$DIR/data" ] && DATAW=$DIR/data || { DATAW=$W/data; stage_data "$DATAW"; }
else
  CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "${DEVICE#cuda:}")
  DTYPE=bf16
  DATAW=$DIR/data
  BIN=$W/bin
  mkdir -p "$BIN"
  for gz in "$DIR"/bin/*.gz; do b=$(basename "$gz" .gz); gunzip -c "$gz" > "$BIN/$b"; chmod +x "$BIN/$b"; done
  # The CUDA 13 libraries of the machine's PyTorch (cuBLAS, cudart, cuRAND, NVRTC, NCCL).
  SITE=$("$PY" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')
  LIBS=$(find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
  # The driver's libcuda.so.1 is on the loader's path, or (in containers) in /usr/local/nvidia.
  export LD_LIBRARY_PATH=$LIBS:/usr/local/nvidia/lib64:/usr/local/nvidia/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ldd "$BIN/llmprune" | grep 'not found' | tee -a "$LOG"; then say "libraries missing"; exit 1; fi
fi
say "device $DEVICE: $CARD; large shape $BIG"
LP=$BIN/llmprune
HAVE_TORCH=0
"$PY" -c 'import torch, transformers' 2>/dev/null && HAVE_TORCH=1
REF_DEVICE=$([ "$DEVICE" = cpu ] && echo cpu || echo "cuda:${DEVICE#cuda:}")
# transformers eager on the same model and input, or a note saying why not.
reference() {
  if [ "$HAVE_TORCH" = 1 ]; then
    peak_gpu "$PY" scripts/gpu_reference.py "$@" --device "$REF_DEVICE" --repeat "$REPEAT" > "$W/ref.json" 2>>"$LOG"
    REF_PEAK=$PEAK_MIB
  else
    echo '{"skipped": "no torch/transformers for '"$PY"'"}' > "$W/ref.json"; REF_PEAK=0
  fi
}

# Peak GPU memory of a command in MiB, sampled every 0.2 s (0 on the CPU), in PEAK_MIB.
peak_gpu() {
  local f=$W/mem.$RANDOM
  if [ "$DEVICE" = cpu ]; then "$@"; PEAK_MIB=0; return; fi
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "${DEVICE#cuda:}"; sleep 0.2; done ) > "$f" &
  local poll=$! rc=0
  "$@" || rc=$?
  kill $poll
  PEAK_MIB=$(sort -n "$f" | tail -1)
  return $rc
}
ids() { "$PY" -c "import json, random; r = random.Random($3); v = json.load(open('$1/config.json'))['vocab_size']; json.dump([[r.randrange(v) for _ in range(128)] for _ in range(10)], open('$2', 'w'))"; }

say "synthesizing SmolLM2's shape (f32, seed 1)"
"$LP" synth --shape smollm2 --dtype f32 --seed 1 --out "$W/small" 2>>"$LOG" >/dev/null

say "ppl: cpu f32, $DEVICE f32, $DEVICE bf16"
ppl() { "$LP" ppl --model "$W/small" --data "wikitext2=$DATAW/wiki.test.raw" --max-chunks "$CHUNKS" "$@" 2>>"$LOG" >/dev/null; }
ppl --device cpu --dtype f32 --json "$W/ppl-cpu.json"
ppl --device "$DEVICE" --dtype f32 --json "$W/ppl-dev-f32.json"
ppl --device "$DEVICE" --dtype bf16 --json "$W/ppl-dev-bf16.json"
record "$("$PY" - "$W" <<'PY'
import json, sys
w = sys.argv[1]
nll = {k: json.load(open(f"{w}/ppl-{k}.json"))["results"]["wikitext2"]["mean_nll"] for k in ("cpu", "dev-f32", "dev-bf16")}
rel = {k: abs(nll[k] - nll["cpu"]) / nll["cpu"] for k in ("dev-f32", "dev-bf16")}
print(json.dumps({"check": "ppl", "ok": rel["dev-f32"] <= 1e-5 and rel["dev-bf16"] <= 1e-2, "mean_nll": nll, "relative_to_cpu": rel}))
PY
)"

say "prune: cpu f32, $DEVICE f32, $DEVICE bf16 (LLM-Pruner's setting)"
prune() {
  local out=$1; shift
  "$LP" prune --model "$W/small" --calibration-ids "$DATAW/smollm2_calib_ids.json" --ratio 0.25 \
    --attn-layers 3:27 --mlp-layers 3:27 --criterion param-first --latency-chunks 0 --out "$out" "$@" 2>>"$LOG" >/dev/null
}
prune "$W/p-cpu" --device cpu --dtype f32
prune "$W/p-f32" --device "$DEVICE" --dtype f32
prune "$W/p-bf16" --device "$DEVICE" --dtype bf16
record "$("$PY" - "$W" <<'PY'
import json, sys
w = sys.argv[1]
def groups(name):
    plan = json.load(open(f"{w}/{name}/plan.json"))
    return {(s, g["root"]): g for s, st in enumerate(plan["steps"]) for g in st["groups"]}
cpu = groups("p-cpu")
def shared(name):
    other = groups(name)
    return sum(len(set(g["kept"]) & set(other[k]["kept"])) for k, g in cpu.items()) / max(sum(len(g["kept"]) for g in cpu.values()), 1)
def score_difference(name):
    other = groups(name)
    worst = 0.0
    for k, g in cpu.items():
        scale = max(map(abs, g["scores"])) or 1.0
        worst = max(worst, max(abs(a - b) for a, b in zip(g["scores"], other[k]["scores"])) / scale)
    return worst
rep = {n: json.load(open(f"{w}/{n}/prune_report.json")) for n in ("p-cpu", "p-f32", "p-bf16")}
out = {"check": "prune", "params": {n: r["params_after"] for n, r in rep.items()},
       "kept_shared_with_cpu": {n: shared(n) for n in ("p-f32", "p-bf16")},
       "scores_relative_to_cpu": {n: score_difference(n) for n in ("p-f32", "p-bf16")},
       "scoring_s": {n: r["seconds"]["scoring"] for n, r in rep.items()}}
out["ok"] = len(set(out["params"].values())) == 1 and out["kept_shared_with_cpu"]["p-f32"] >= 0.98
print(json.dumps(out))
PY
)"

say "recover: 3 LoRA steps, cpu f32 and $DEVICE ($DTYPE)"
recover() {
  local out=$1; shift
  "$LP" recover --model "$W/p-cpu" --data "$DATAW/alpaca_en_demo.json" --max-steps 3 --batch-size 8 --micro-batch-size 4 \
    --val-size 8 --eval-steps 3 --out "$out" "$@" 2>>"$LOG" >/dev/null
}
recover "$W/r-cpu" --device cpu
recover "$W/r-dev" --device "$DEVICE"
record "$("$PY" - "$W" <<'PY'
import json, sys
w = sys.argv[1]
rep = {n: json.load(open(f"{w}/{n}/recover_report.json")) for n in ("r-cpu", "r-dev")}
losses = {n: [row[1] for row in r["loss_curve"]] for n, r in rep.items()}
val = {n: [l for _, l in r["val_losses"]] for n, r in rep.items()}
pairs = list(zip(losses["r-cpu"], losses["r-dev"])) + list(zip(val["r-cpu"], val["r-dev"]))
ok = len(losses["r-dev"]) == 3 and all(abs(x - y) <= 0.02 * abs(x) for x, y in pairs)
print(json.dumps({"check": "recover", "ok": ok, "val_losses": val, "train_losses": losses}))
PY
)"

say "zeroshot: $DOCS ARC-Easy documents, cpu f32, $DEVICE f32 and $DTYPE, transformers"
ev() { "$LP" eval --model "$W/small" --data-dir "$DATAW/zeroshot" --tasks arc_easy --limit "$DOCS" --out "$W/$1.json" "${@:2}" 2>>"$LOG" >/dev/null; }
ev ev-cpu --device cpu --dtype f32
ev ev-f32 --device "$DEVICE" --dtype f32
ev ev-dflt --device "$DEVICE" --dtype "$DTYPE"
reference zeroshot "$W/small" "$DATAW/zeroshot/arc_easy.test.jsonl" --limit "$DOCS" --dtype f32
mv "$W/ref.json" "$W/ref-f32.json"
reference zeroshot "$W/small" "$DATAW/zeroshot/arc_easy.test.jsonl" --limit "$DOCS" --dtype "$DTYPE"
record "$("$PY" - "$W" <<'PY'
import json, sys
w = sys.argv[1]
def lls(name):
    return [json.loads(line)["lls"] for line in open(f"{w}/{name}.samples.jsonl")]
def worst(a, b):
    scale = max(abs(x) for row in b for x in row) or 1.0
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / scale
cpu = lls("ev-cpu")
out = {"check": "zeroshot", "documents": len(cpu), "lls_relative_to_cpu": {"f32": worst(lls("ev-f32"), cpu), "default": worst(lls("ev-dflt"), cpu)},
       "documents_per_s": {"llmprune": json.load(open(f"{w}/ev-dflt.json"))["documents_per_s"]}}
ok = out["lls_relative_to_cpu"]["f32"] <= 1e-4
ref32, ref = json.load(open(f"{w}/ref-f32.json")), json.load(open(f"{w}/ref.json"))
if "lls" in ref32:
    out["lls_relative_to_transformers_f32"] = worst(lls("ev-f32"), ref32["lls"])
    out["documents_per_s"]["transformers"] = ref["documents_per_s"]
    out["speed_over_transformers"] = out["documents_per_s"]["llmprune"] / ref["documents_per_s"]
    ok = ok and out["lls_relative_to_transformers_f32"] <= 1e-4
else:
    out["transformers"] = ref32
out["ok"] = ok
print(json.dumps(out))
PY
)"

say "$BIG: synthesizing $DTYPE weights"
"$LP" synth --shape "$BIG" --dtype "$DTYPE" --seed 7 --out "$W/big" 2>>"$LOG" >/dev/null
ids "$W/small" "$W/small-ids.json" 0
ids "$W/big" "$W/big-ids.json" 1

say "fwdbwd: llmprune bench and transformers, SmolLM2's shape and $BIG, $DTYPE"
: > "$W/fwdbwd.jsonl"
SHAPES="small big"
[ "$BIG" = smollm2 ] && SHAPES=big # the large shape is SmolLM2's itself
for shape in $SHAPES; do
  peak_gpu "$LP" --device "$DEVICE" bench --model "$W/$shape" --ids "$W/$shape-ids.json" --dtype "$DTYPE" --mode fwdbwd --repeats "$REPEAT" > "$W/ours.json" 2>>"$LOG"
  OURS_PEAK=$PEAK_MIB
  reference fwdbwd "$W/$shape" "$W/$shape-ids.json" --dtype "$DTYPE"
  "$PY" -c "import json, sys; print(json.dumps({'shape': sys.argv[1], 'llmprune': json.load(open(sys.argv[2])), 'peak_gpu_mib': float(sys.argv[3]), 'transformers': json.load(open(sys.argv[4])), 'transformers_peak_gpu_mib': float(sys.argv[5])}))" \
    "$shape" "$W/ours.json" "$OURS_PEAK" "$W/ref.json" "$REF_PEAK" >> "$W/fwdbwd.jsonl"
  [ "$shape" = big ] && cp "$W/ref.json" "$W/ref-big.json"
done
record "$("$PY" - "$W/fwdbwd.jsonl" "$BIG" <<'PY'
import json, sys
out = {"check": "fwdbwd", "ok": True}
for row in map(json.loads, open(sys.argv[1])):
    name = "smollm2" if row["shape"] == "small" else sys.argv[2]
    ours, ref = row["llmprune"], row["transformers"]
    entry = {"tokens_per_s": ours["tokens_per_s"], "peak_gpu_mib": row["peak_gpu_mib"], "peak_rss_mb": ours["peak_rss_mb"],
             "of_matmul_peak": ours["of_matmul_peak"]}
    if "tokens_per_s" in ref:
        entry |= {"transformers_tokens_per_s": ref["tokens_per_s"], "transformers_peak_gpu_mib": row["transformers_peak_gpu_mib"],
                  "speed_over_transformers": ours["tokens_per_s"] / ref["tokens_per_s"],
                  "loss": ours["loss"], "transformers_loss": ref["loss"], "loss_relative": abs(ours["loss"] - ref["loss"]) / ref["loss"]}
        # The same weights and tokens: the same loss, to the dtype's precision.
        out["ok"] = out["ok"] and entry["loss_relative"] <= (1e-4 if ours["dtype"] == "f32" else 1e-2)
        if row["transformers_peak_gpu_mib"]:
            entry["memory_over_transformers"] = row["peak_gpu_mib"] / row["transformers_peak_gpu_mib"]
    out[name] = entry
print(json.dumps(out))
PY
)"

say "large: $BIG block-wise 20% prune (param-first, 10 x 128 tokens, $DTYPE on $DEVICE)"
peak_gpu "$LP" prune --model "$W/big" --calibration-ids "$W/big-ids.json" --ratio 0.2 --attn-layers 4:30 --mlp-layers 4:30 \
  --criterion param-first --latency-chunks 0 --device "$DEVICE" --dtype "$DTYPE" --out "$W/big-pruned" 2>>"$LOG" >/dev/null
record "$("$PY" - "$W" "$PEAK_MIB" "$BIG" <<'PY'
import json, sys
w, peak, shape = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rep = json.load(open(f"{w}/big-pruned/prune_report.json"))
ref = json.load(open(f"{w}/ref-big.json"))
out = {"check": "large", "shape": shape, "ok": rep["params_after"] < rep["params_before"], "params_before": rep["params_before"],
       "params_after": rep["params_after"], "dtype": rep["dtype"], "seconds": rep["seconds"], "peak_gpu_mib": peak, "peak_rss_mib": rep["peak_rss_mib"]}
if "salience_pass_s_median" in ref:
    out["scoring_over_transformers_salience_pass"] = rep["seconds"]["scoring"] / ref["salience_pass_s_median"]
print(json.dumps(out))
PY
)"

if [ -x "$BIN/cuda_ops" ] && [ "$DEVICE" != cpu ]; then
  say "gpu-tests: the cuda test binary and its op profile"
  rc=0
  "$BIN/cuda_ops" --include-ignored --nocapture --test-threads 1 > "$W/tests.log" 2>&1 || rc=$?
  cat "$W/tests.log" >> "$LOG"
  record "$("$PY" - "$W/tests.log" "$rc" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
profile = [json.loads(m) for m in re.findall(r"^profile: (\{.*\})$", text, re.M)]
passed = re.findall(r"test result: ok\. (\d+) passed", text)
print(json.dumps({"check": "gpu-tests", "ok": sys.argv[2] == "0" and "skipped" not in text, "passed": int(passed[0]) if passed else 0,
                  "op_profile_ms": profile[0] if profile else None}))
PY
)"
fi

say "done"
"$PY" - "$CHECKS" "$OUT" "$DEVICE" "$CARD" "$SMALL" <<'PY'
import json, sys
checks_file, out, device, card, small = sys.argv[1:]
checks = [json.loads(line) for line in open(checks_file)]
json.dump({"device": device, "card": card, "small": small == "1", "checks": checks}, open(f"{out}/gpu-check.json", "w"), indent=1)
gpu = device != "cpu"
def mem(mib, rss):
    return f"peak GPU {mib:.0f} MiB" if gpu else f"peak RSS {rss:.0f} MiB"
def f(x, spec=".3g"):
    return "—" if x is None else format(x, spec)
by = {c["check"]: c for c in checks}
rows = []
if "ppl" in by:
    c = by["ppl"]; rows.append(("ppl (mean NLL)", c["ok"], f"f32 Δ {f(c['relative_to_cpu']['dev-f32'])}, bf16 Δ {f(c['relative_to_cpu']['dev-bf16'])} (relative to cpu f32)"))
if "prune" in by:
    c = by["prune"]; rows.append(("prune (param-first 25%)", c["ok"], f"kept shared f32 {c['kept_shared_with_cpu']['p-f32']:.1%}, bf16 {c['kept_shared_with_cpu']['p-bf16']:.1%}; scores Δ f32 {f(c['scores_relative_to_cpu']['p-f32'])}"))
if "recover" in by:
    c = by["recover"]; rows.append(("recover (3 LoRA steps)", c["ok"], "val loss cpu " + ", ".join(f"{x:.4f}" for x in c["val_losses"]["r-cpu"]) + " / device " + ", ".join(f"{x:.4f}" for x in c["val_losses"]["r-dev"])))
if "zeroshot" in by:
    c = by["zeroshot"]; d = c["documents_per_s"]
    rows.append((f"zeroshot ({c['documents']} ARC-e)", c["ok"], f"lls Δ f32 {f(c['lls_relative_to_cpu']['f32'])}, vs transformers {f(c.get('lls_relative_to_transformers_f32'))}; {d['llmprune']:.1f} docs/s vs transformers {f(d.get('transformers'), '.1f')} (×{f(c.get('speed_over_transformers'), '.2f')})"))
if "fwdbwd" in by:
    c = by["fwdbwd"]
    for shape, e in c.items():
        if isinstance(e, dict):
            text = f"{e['tokens_per_s']:.0f} tok/s vs transformers {f(e.get('transformers_tokens_per_s'), '.0f')} (×{f(e.get('speed_over_transformers'), '.2f')}); {mem(e['peak_gpu_mib'], e['peak_rss_mb'])}"
            if gpu:
                text += f" vs {f(e.get('transformers_peak_gpu_mib'), '.0f')} (×{f(e.get('memory_over_transformers'), '.2f')})"
            rows.append((f"fwd+bwd {shape}", c["ok"], text + f"; {e['of_matmul_peak']:.0%} of the matmul ceiling; loss Δ {f(e.get('loss_relative'))}"))
if "large" in by:
    c = by["large"]; s = c["seconds"]
    rows.append((f"prune {c['shape']} 20%", c["ok"], f"{c['params_before']:,} → {c['params_after']:,}; scoring {s.get('scoring', 0):.1f} s, total {s.get('total', 0):.1f} s; {mem(c['peak_gpu_mib'], c['peak_rss_mib'])}; scoring / transformers' salience pass ×{f(c.get('scoring_over_transformers_salience_pass'), '.2f')}"))
if "gpu-tests" in by:
    c = by["gpu-tests"]; rows.append(("gpu tests", c["ok"], f"{c['passed']} passed; op profile (ms) {json.dumps(c['op_profile_ms'])}"))
table = [f"gpu-check on {card} ({device}{', small shapes' if small == '1' else ''})", "", "| check | holds | figures |", "|---|---|---|"]
table += [f"| {name} | {'yes' if ok else 'NO'} | {text} |" for name, ok, text in rows]
open(f"{out}/gpu-check.md", "w").write("\n".join(table) + "\n")
print("\n".join(table))
bad = [c["check"] for c in checks if not c["ok"]]
print("failed: " + ", ".join(bad) if bad else "all checks hold")
sys.exit(1 if bad else 0)
PY
