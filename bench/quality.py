"""Markdown tables of bench/quality.sh's results: every method before and after the fixed LoRA
budget, the seven tasks per task, and the ablations (perplexity only)."""
import json
import pathlib
import sys

# Every method: the criteria alone and with reconstruction, FLAP, the best configuration, and
# LLM-Pruner beside the best activation method at the larger cuts.
METHODS = [
    ("param_first_ids", "param-first (LLM-Pruner)", "Austen 10 × 64"),
    ("param_first_wiki", "param-first", "Wikipedia 256 × 128"),
    ("wanda_wiki", "wanda", "Wikipedia 256 × 128"),
    ("fluctuation_wiki", "fluctuation", "Wikipedia 256 × 128"),
    ("fluctuation_bias_wiki", "fluctuation + bias compensation (FLAP)", "Wikipedia 256 × 128"),
    ("obs_wiki", "obs", "Wikipedia 256 × 128"),
    ("wanda_rec_wiki", "wanda + reconstruct", "Wikipedia 256 × 128"),
    ("fluctuation_rec_wiki", "fluctuation + reconstruct", "Wikipedia 256 × 128"),
    ("obs_rec_wiki", "obs + reconstruct", "Wikipedia 256 × 128"),
    ("wanda_rec_arch_wiki", "wanda + reconstruct, layer profile arch (`best`)", "Wikipedia 256 × 128"),
    ("param_first_ids_r34", "param-first (LLM-Pruner), ratio 0.34", "Austen 10 × 64"),
    ("wanda_rec_wiki_r34", "wanda + reconstruct, ratio 0.34", "Wikipedia 256 × 128"),
    ("param_first_ids_r53", "param-first (LLM-Pruner), ratio 0.53", "Austen 10 × 64"),
    ("wanda_rec_wiki_r53", "wanda + reconstruct, ratio 0.53", "Wikipedia 256 × 128"),
    ("param_first_ids_r84", "param-first (LLM-Pruner), ratio 0.84", "Austen 10 × 64"),
    ("wanda_rec_wiki_r84", "wanda + reconstruct, ratio 0.84", "Wikipedia 256 × 128"),
]
# What each ingredient does: calibration size and text, scopes, bias compensation, profiles.
ABLATIONS = [
    ("param_first_wiki20", "param-first", "Wikipedia 20 × 128"),
    ("obs_rec_ids", "obs + reconstruct", "Austen 10 × 64"),
    ("obs_rec_wiki20", "obs + reconstruct", "Wikipedia 20 × 128"),
    ("obs_rec_books", "obs + reconstruct", "Austen 256 × 128"),
    ("obs_rec_std_wiki", "obs + reconstruct, standardized scope", "Wikipedia 256 × 128"),
    ("fluctuation_rec_std_wiki", "fluctuation + reconstruct, standardized scope", "Wikipedia 256 × 128"),
    ("wanda_bias_wiki", "wanda + bias compensation", "Wikipedia 256 × 128"),
    ("wanda_rec_bias_wiki", "wanda + reconstruct with bias (least squares with an intercept)", "Wikipedia 256 × 128"),
    ("wanda_rec_ramp_wiki", "wanda + reconstruct, layer profile ramp:0.5:1.5", "Wikipedia 256 × 128"),
    ("wanda_rec_rramp_wiki", "wanda + reconstruct, layer profile ramp:1.5:0.5", "Wikipedia 256 × 128"),
]
TASK_COLUMNS = "BoolQ | PIQA | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA"
DOCS = 500


def load(path):
    return json.loads(path.read_text()) if path.exists() else None


def task_cells(md_path):
    """The per-task cells and the average of an `llmprune eval` table (its one model row)."""
    if not md_path.exists():
        return None
    row = md_path.read_text().strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    return [c.split(" ±")[0] for c in cells]


def fmt(x):
    return f"{x:.2f}" if x is not None else "–"


def row_numbers(d):
    """Before and after recovery: WikiText-2, PTB, task average, and the times."""
    report = load(d / "prune_report.json")
    ppl = report["ppl"]
    ptb = ppl.get("ptb", {}).get("ppl")
    extra = load(d / "ppl_ptb.json")
    if ptb is None and extra:
        ptb = extra["results"]["ptb"]["ppl"]
    tasks = task_cells(d / f"eval_{DOCS}.md")
    rec = load(d / "recovered" / "ppl.json")
    rec_tasks = task_cells(d / "recovered" / f"eval_{DOCS}.md")
    rec_report = load(d / "recovered" / "recover_report.json")
    return {
        "params": report["params_after"],
        "wiki": ppl["wikitext2"]["ppl"],
        "ptb": ptb,
        "tasks": tasks,
        "avg": float(tasks[-1]) if tasks else None,
        "rec_wiki": rec["results"]["wikitext2"]["ppl"] if rec else None,
        "rec_ptb": rec["results"]["ptb"]["ppl"] if rec else None,
        "rec_tasks": rec_tasks,
        "rec_avg": float(rec_tasks[-1]) if rec_tasks else None,
        "rec_seconds": rec_report["seconds"]["total"] if rec_report else None,
        "seconds": report["seconds"],
        "peak": report["peak_rss_mib"],
    }


def prune_time(seconds):
    prune = sum(seconds.get(k, 0.0) for k in ("scoring", "planning", "slicing"))
    return f"{prune:.1f} s ({seconds['scoring']:.1f} s)"


out = pathlib.Path(sys.argv[1])
dense = load(out / "dense" / "ppl.json")
sizing = load(out.parent / "eval_sizing" / "sizing_500.json")
dense_avg = next((r["dense"] for r in sizing["rows"] if r["documents"] == DOCS), None) if sizing else None

print(f"#### Every method, before and after one fixed LoRA budget (tasks: average of the seven, {DOCS} documents each)\n")
print("| method | calibration | params | WikiText-2 | PTB | tasks | LoRA: WikiText-2 | LoRA: PTB | LoRA: tasks "
      "| prune time (scoring) | peak memory | LoRA time |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
if dense:
    r = dense["results"]
    print(f"| dense (no pruning) | – | 134.5M | {fmt(r['wikitext2']['ppl'])} | {fmt(r['ptb']['ppl'])} | {fmt(dense_avg)} "
          "| – | – | – | – | – | – |")
numbers = {}
for name, method, calibration in METHODS:
    d = out / name
    if not (d / "prune_report.json").exists():
        continue
    n = numbers[name] = row_numbers(d)
    lora_time = f"{n['rec_seconds']:.0f} s" if n["rec_seconds"] is not None else "–"
    print(f"| {method} | {calibration} | {n['params'] / 1e6:.1f}M | {fmt(n['wiki'])} | {fmt(n['ptb'])} | {fmt(n['avg'])} "
          f"| {fmt(n['rec_wiki'])} | {fmt(n['rec_ptb'])} | {fmt(n['rec_avg'])} | {prune_time(n['seconds'])} "
          f"| {n['peak']:.0f} MiB | {lora_time} |")

print(f"\n#### The seven tasks, {DOCS} documents each (accuracy; acc_norm for HellaSwag, ARC-c, OBQA)\n")
print(f"| method | | {TASK_COLUMNS} | average |")
print("|---|---|" + "---|" * 8)
for name, method, _ in METHODS:
    n = numbers.get(name)
    if not n:
        continue
    for stage, cells in (("pruned", n["tasks"]), ("after LoRA", n["rec_tasks"])):
        if cells:
            print(f"| {method} | {stage} | " + " | ".join(cells) + " |")

print("\n#### Ablations (perplexity only, no recovery)\n")
print("| method | calibration | params | WikiText-2 | PTB | prune time (scoring) | peak memory |")
print("|---|---|---|---|---|---|---|")
for name, method, calibration in ABLATIONS:
    d = out / name
    if not (d / "prune_report.json").exists():
        continue
    n = row_numbers(d)
    print(f"| {method} | {calibration} | {n['params'] / 1e6:.1f}M | {fmt(n['wiki'])} | {fmt(n['ptb'])} "
          f"| {prune_time(n['seconds'])} | {n['peak']:.0f} MiB |")
