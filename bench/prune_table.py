"""Markdown table of bench/prune_table.sh's results: one row per pruned model."""
import json
import pathlib
import sys

ORDER = ["random", "l2", "vectorize", "param_first", "param_second", "param_mix",
         "param_first_global", "channel_0.2"]
LABELS = {
    "random": "block 0.25, random", "l2": "block 0.25, l2", "vectorize": "block 0.25, vectorize",
    "param_first": "block 0.25, param_first", "param_second": "block 0.25, param_second",
    "param_mix": "block 0.25, param_mix", "param_first_global": "block 0.25, param_first, global",
    "channel_0.2": "channel 0.2, param_first",
}

out = pathlib.Path(sys.argv[1])
print("| pruning | params | WikiText-2 | PTB | prune time (scoring) | eval time |")
print("|---|---|---|---|---|---|")
for name in ORDER:
    path = out / name / "prune_report.json"
    if not path.exists():
        continue
    report = json.loads(path.read_text())
    ppl = report["ppl"]
    seconds = report["seconds"]
    # Scoring (gradients included), planning and slicing (loading the model and the windows
    # takes ~2 s more). Reports before the one step loop split gradients from scoring.
    prune = sum(seconds.get(k, 0.0) for k in ("gradients", "scoring", "planning", "slicing"))
    scoring = seconds.get("gradients", 0.0) + seconds.get("scoring", 0.0)
    evals = sum(r["seconds"]["eval"] + r["seconds"]["tokenize"] for r in ppl.values())
    print(f"| {LABELS[name]} | {report['params_after'] / 1e6:.1f}M "
          f"| {ppl['wikitext2']['ppl']:.2f} | {ppl['ptb']['ppl']:.2f} "
          f"| {prune:.1f} s ({scoring:.1f} s) | {evals:.0f} s |")
