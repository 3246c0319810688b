"""Compares `llmprune eval`'s per-document results with lm-evaluation-harness's (the JSON that
tests/golden/lm_eval_zeroshot.py writes): prediction agreement per task (acc and acc_norm), the
accuracies side by side, the largest log-likelihood difference, and the speed ratio.

    python3 bench/zeroshot_compare.py OURS.json LM_EVAL.json [--out SUMMARY.json]
"""

import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours", help="results.json of llmprune eval (its .samples.jsonl beside it)")
    ap.add_argument("lm_eval", help="lm_eval_zeroshot.py output")
    ap.add_argument("--out")
    a = ap.parse_args()
    ours = json.load(open(a.ours))
    ref = json.load(open(a.lm_eval))
    samples = {}
    for line in open(os.path.splitext(a.ours)[0] + ".samples.jsonl"):
        s = json.loads(line)
        samples.setdefault(s["task"], {})[s["doc"]] = s
    rows, agree_all, total_all = [], 0, 0
    for task, r in ref["tasks"].items():
        mine = samples.get(task, {})
        examples = [e for e in r["examples"] if e["doc"] in mine]
        metric = r["paper_metric"]
        key = "pred_norm" if metric == "acc_norm" else "pred"
        agree = sum(mine[e["doc"]][key] == e[key] for e in examples)
        agree_acc = sum(mine[e["doc"]]["pred"] == e["pred"] for e in examples)
        max_ll = max((abs(x - y) for e in examples for x, y in zip(mine[e["doc"]]["lls"], e["ll"])), default=0.0)
        n = len(examples)
        ours_metric = ours["results"][task][metric]
        rows.append({"task": task, "n": n, "metric": metric, "agreement": agree / max(n, 1), "agreement_acc": agree_acc / max(n, 1),
                     "llmprune": ours_metric, "lm_eval": r[metric], "max_ll_diff": max_ll})
        agree_all += agree
        total_all += n
    ours_s = ours["seconds"]["total"] - ours["seconds"]["load"]
    ref_s = ref["total"]["wall_s"]
    summary = {"rows": rows, "agreement": agree_all / max(total_all, 1), "documents": total_all,
               "llmprune_documents_per_s": total_all / ours_s, "lm_eval_documents_per_s": ref["total"]["n"] / ref_s,
               "lm_eval_threads": ref.get("torch_num_threads"), "llmprune_workers": ours["config"]["workers"]}
    summary["speedup"] = summary["llmprune_documents_per_s"] / summary["lm_eval_documents_per_s"]
    print(f"{'task':14} {'n':>4} {'metric':9} {'agree':>7} {'llmprune':>9} {'lm_eval':>8} {'max |dll|':>9}")
    for r in rows:
        print(f"{r['task']:14} {r['n']:>4} {r['metric']:9} {100 * r['agreement']:6.2f}% {100 * r['llmprune']:8.2f} {100 * r['lm_eval']:8.2f} {r['max_ll_diff']:9.1e}")
    print(f"agreement {100 * summary['agreement']:.2f}% of {total_all} documents; "
          f"{summary['llmprune_documents_per_s']:.2f} vs {summary['lm_eval_documents_per_s']:.2f} documents/s -> {summary['speedup']:.2f}x")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
