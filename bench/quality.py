"""Markdown table of bench/quality.sh's results: one row per configuration."""
import json
import pathlib
import sys

ROWS = [
    ("param_first_ids", "param-first (LLM-Pruner)", "Austen 10 × 64"),
    ("param_first_wiki20", "param-first", "Wikipedia 20 × 128"),
    ("param_first_wiki", "param-first", "Wikipedia 256 × 128"),
    ("wanda_wiki", "wanda", "Wikipedia 256 × 128"),
    ("fluctuation_wiki", "fluctuation", "Wikipedia 256 × 128"),
    ("obs_wiki", "obs", "Wikipedia 256 × 128"),
    ("obs_rec_ids", "obs + reconstruct", "Austen 10 × 64"),
    ("obs_rec_wiki20", "obs + reconstruct", "Wikipedia 20 × 128"),
    ("fluctuation_rec_wiki", "fluctuation + reconstruct", "Wikipedia 256 × 128"),
    ("obs_rec_books", "obs + reconstruct", "Austen 256 × 128"),
    ("obs_rec_std_wiki", "obs + reconstruct, standardized scope", "Wikipedia 256 × 128"),
    ("fluctuation_rec_std_wiki", "fluctuation + reconstruct, standardized scope", "Wikipedia 256 × 128"),
    ("obs_rec_wiki", "obs + reconstruct", "Wikipedia 256 × 128"),
    ("wanda_rec_wiki", "wanda + reconstruct", "Wikipedia 256 × 128"),
    ("fluctuation_bias_wiki", "fluctuation + bias compensation (FLAP)", "Wikipedia 256 × 128"),
    ("wanda_bias_wiki", "wanda + bias compensation", "Wikipedia 256 × 128"),
    ("wanda_rec_bias_wiki", "wanda + reconstruct with bias (least squares with an intercept)", "Wikipedia 256 × 128"),
    ("wanda_rec_ramp_wiki", "wanda + reconstruct, layer profile ramp:0.5:1.5", "Wikipedia 256 × 128"),
    ("wanda_rec_rramp_wiki", "wanda + reconstruct, layer profile ramp:1.5:0.5", "Wikipedia 256 × 128"),
    ("wanda_rec_arch_wiki", "wanda + reconstruct, layer profile arch (more kept at both ends; `best`)", "Wikipedia 256 × 128"),
    ("param_first_ids_r34", "param-first (LLM-Pruner), ratio 0.34", "Austen 10 × 64"),
    ("wanda_rec_wiki_r34", "wanda + reconstruct, ratio 0.34", "Wikipedia 256 × 128"),
    ("param_first_ids_r53", "param-first (LLM-Pruner), ratio 0.53", "Austen 10 × 64"),
    ("wanda_rec_wiki_r53", "wanda + reconstruct, ratio 0.53", "Wikipedia 256 × 128"),
    ("param_first_ids_r84", "param-first (LLM-Pruner), ratio 0.84", "Austen 10 × 64"),
    ("wanda_rec_wiki_r84", "wanda + reconstruct, ratio 0.84", "Wikipedia 256 × 128"),
]

out = pathlib.Path(sys.argv[1])
print("| method | calibration | params | WikiText-2 (400 chunks) | PTB (400 chunks) | prune time (scoring) | peak memory |")
print("|---|---|---|---|---|---|---|")
dense = out / "dense" / "ppl.json"
if dense.exists():
    d = json.loads(dense.read_text())["results"]
    print(f"| dense (no pruning) | – | 134.5M | {d['wikitext2']['ppl']:.2f} | {d['ptb']['ppl']:.2f} | – | – |")
for name, method, calibration in ROWS:
    path = out / name / "prune_report.json"
    if not path.exists():
        continue
    report = json.loads(path.read_text())
    ppl = report["ppl"]
    seconds = report["seconds"]
    prune = sum(seconds.get(k, 0.0) for k in ("scoring", "planning", "slicing"))
    ptb = f"{ppl['ptb']['ppl']:.2f}" if "ptb" in ppl else "–"
    print(f"| {method} | {calibration} | {report['params_after'] / 1e6:.1f}M | {ppl['wikitext2']['ppl']:.2f} | {ptb} "
          f"| {prune:.1f} s ({seconds['scoring']:.1f} s) | {report['peak_rss_mib']:.0f} MiB |")
