#!/usr/bin/env python3
"""How many documents a task the quickstart's evaluation needs: from two `llmprune eval`
runs' per-document samples (dense and pruned, LIMIT documents each), the 7-task averages of
the first N documents for several N, their difference and its standard error. Prints a table
and writes JSON.
    python3 bench/eval_sizing.py DENSE.samples.jsonl PRUNED.samples.jsonl --out FILE.json"""
import argparse, collections, json, math

METRIC = {"boolq": "acc", "piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc",
          "arc_easy": "acc", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}


def load(path):
    docs = collections.defaultdict(list)
    for line in open(path):
        r = json.loads(line)
        docs[r["task"]].append(r)
    return {t: sorted(v, key=lambda r: r["doc"]) for t, v in docs.items()}


def average(docs, n):
    accs = [sum(r[METRIC[t]] for r in docs[t][:n]) / n for t in METRIC]
    # Standard error of the mean of 7 task accuracies (tasks independent).
    se = math.sqrt(sum(a * (1 - a) / (n - 1) for a in accs)) / len(accs)
    return 100 * sum(accs) / len(accs), 100 * se, 100 * accs[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dense")
    ap.add_argument("pruned")
    ap.add_argument("--out")
    a = ap.parse_args()
    dense, pruned = load(a.dense), load(a.pruned)
    limit = min(len(v) for d in (dense, pruned) for v in d.values())
    rows = []
    print(f"{'N':>5} {'dense':>7} {'pruned':>7} {'dense-pruned':>13} {'±':>5} {'BoolQ dense':>12} {'BoolQ pruned':>13}")
    for n in [n for n in (40, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500) if n <= limit]:
        (d, dse, db), (p, pse, pb) = average(dense, n), average(pruned, n)
        rows.append({"documents": n, "dense": d, "pruned": p, "difference": d - p, "stderr": math.hypot(dse, pse), "boolq_dense": db, "boolq_pruned": pb})
        print(f"{n:>5} {d:7.2f} {p:7.2f} {d - p:+13.2f} {math.hypot(dse, pse):5.2f} {db:12.1f} {pb:13.1f}")
    if a.out:
        json.dump({"rows": rows, "dense": a.dense, "pruned": a.pruned}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
