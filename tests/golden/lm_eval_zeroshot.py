"""Zero-shot reference with EleutherAI lm-evaluation-harness on the dense SmolLM2 (dequantized f32).

The spec the Rust side follows is docs/zeroshot-tasks.md. This script:

 (a) builds a Hugging Face directory of the dense float32 model from the GGUF (gguf_ref: dequantized
     weights + the digit-fixed tokenizer), unless --hf-dir already holds one, and checks that the
     saved tokenizer and model reproduce gguf_ref's;
 (b) writes lm-eval task YAMLs (a temp dir, passed as include_path) that mirror the official
     boolq / piqa / hellaswag / winogrande / arc_easy / arc_challenge / openbookqa tasks of
     lm-eval 0.4.x but read the local JSONL files (../shared/data/zeroshot): same doc_to_text,
     doc_to_choice, doc_to_target, target_delimiter, process_docs, metrics; the
     `{id, question, choices, gold}` test files of ARC / OBQA are mapped back onto the HF fields;
 (c) runs lm_eval.simple_evaluate (HF backend, CPU, float32, --batch-size, --limit, log_samples),
     one task at a time (timed);
 (d) writes a compact JSON (--out): per task the metrics, per-example log-likelihoods and
     predictions, the first requests' strings and token ids, and the timings.

Run from the repository root (see tests/golden/README.md):
    OMP_NUM_THREADS=1 nice -n 10 /work/pyref-venv/bin/python tests/golden/lm_eval_zeroshot.py --limit 500
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASKS = ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
# The metric LLM-Pruner's tables report for each task.
PAPER_METRIC = {"boolq": "acc", "piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc",
                "arc_easy": "acc", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
# Which local file each task reads (the split the official lm-eval task evaluates).
DATA_FILE = {"boolq": "boolq.validation.jsonl", "piqa": "piqa.validation.jsonl",
             "hellaswag": "hellaswag.validation.jsonl", "winogrande": "winogrande_xl.validation.jsonl",
             "arc_easy": "arc_easy.test.jsonl", "arc_challenge": "arc_challenge.test.jsonl",
             "openbookqa": "openbookqa.test.jsonl"}

# --------------------------------------------------------------------------------------------
# (b) task YAMLs. Prompt fields are copied from lm_eval 0.4.13's lm_eval/tasks/*.yaml.

UTILS_PY = '''"""process_docs / doc_to_* for the local-JSONL mirrors of the official lm-eval tasks."""
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs  # official, unchanged
from lm_eval.tasks.winogrande.preprocess_winogrande import (  # official, unchanged
    doc_to_choice as winogrande_doc_to_choice,
    doc_to_target as winogrande_doc_to_target,
    doc_to_text as winogrande_doc_to_text,
)


def boolq_process_docs(dataset):
    # super_glue/boolq has `label` (0 = False, 1 = True); the local file (HF `boolq`) has `answer: bool`.
    return dataset.map(lambda d: {"label": int(bool(d["answer"]))})


def _test_layout_to_hf(doc, question_field):
    # {id, question, choices: [str], gold: int} -> the HF ai2_arc / openbookqa fields.
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {
        "id": doc["id"],
        question_field: doc["question"],
        "choices": {"text": list(doc["choices"]), "label": labels},
        "answerKey": labels[int(doc["gold"])],
    }


def arc_test_process_docs(dataset):
    return dataset.map(lambda d: _test_layout_to_hf(d, "question"), remove_columns=dataset.column_names)


def obqa_test_process_docs(dataset):
    return dataset.map(lambda d: _test_layout_to_hf(d, "question_stem"), remove_columns=dataset.column_names)
'''


def q(s):
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(s)


def task_yamls(data_dir):
    acc = "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    acc_norm = "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"

    def head(name, fname, split):
        path = os.path.join(data_dir, fname)
        return (f"task: {name}_local\ndataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    {split}: {q(path)}\n"
                f"output_type: multiple_choice\n{split}_split: {split}\n")

    y = {}
    # official: super_glue/boolq/default.yaml (metric_list: acc only; acc_norm added here, it
    # does not change the requests)
    y["boolq"] = head("boolq", DATA_FILE["boolq"], "validation") + (
        "process_docs: !function utils.boolq_process_docs\n"
        f"doc_to_text: {q('{{passage}}' + chr(10) + 'Question: {{question}}?' + chr(10) + 'Answer:')}\n"
        "doc_to_target: label\n"
        'doc_to_choice: ["no", "yes"]\n'
        "metric_list:\n" + acc + acc_norm)
    # official: piqa/piqa.yaml
    y["piqa"] = head("piqa", DATA_FILE["piqa"], "validation") + (
        f"doc_to_text: {q('Question: {{goal}}' + chr(10) + 'Answer:')}\n"
        "doc_to_target: label\n"
        'doc_to_choice: "{{[sol1, sol2]}}"\n'
        "metric_list:\n" + acc + acc_norm)
    # official: hellaswag/hellaswag.yaml
    y["hellaswag"] = head("hellaswag", DATA_FILE["hellaswag"], "validation") + (
        "process_docs: !function utils.hellaswag_process_docs\n"
        'doc_to_text: "{{query}}"\n'
        'doc_to_target: "{{label}}"\n'
        'doc_to_choice: "choices"\n'
        "metric_list:\n" + acc + acc_norm)
    # official: winogrande/default.yaml (acc only; acc_norm would divide by the *context* length)
    y["winogrande"] = head("winogrande", DATA_FILE["winogrande"], "validation") + (
        "doc_to_text: !function utils.winogrande_doc_to_text\n"
        "doc_to_target: !function utils.winogrande_doc_to_target\n"
        "doc_to_choice: !function utils.winogrande_doc_to_choice\n"
        "metric_list:\n" + acc)
    # official: arc/arc_easy.yaml, arc/arc_challenge.yaml (test split)
    for t in ("arc_easy", "arc_challenge"):
        y[t] = head(t, DATA_FILE[t], "test") + (
            "process_docs: !function utils.arc_test_process_docs\n"
            f"doc_to_text: {q('Question: {{question}}' + chr(10) + 'Answer:')}\n"
            'doc_to_target: "{{choices.label.index(answerKey)}}"\n'
            'doc_to_choice: "{{choices.text}}"\n'
            "metric_list:\n" + acc + acc_norm)
    # official: openbookqa/openbookqa.yaml (test split)
    y["openbookqa"] = head("openbookqa", DATA_FILE["openbookqa"], "test") + (
        "process_docs: !function utils.obqa_test_process_docs\n"
        "doc_to_text: question_stem\n"
        'doc_to_target: "{{choices.label.index(answerKey.lstrip())}}"\n'
        'doc_to_choice: "{{choices.text}}"\n'
        "metric_list:\n" + acc + acc_norm)
    return y


def write_task_dir(data_dir, dst):
    with open(os.path.join(dst, "utils.py"), "w") as f:
        f.write(UTILS_PY)
    for t, text in task_yamls(data_dir).items():
        with open(os.path.join(dst, f"{t}_local.yaml"), "w") as f:
            f.write(text)


# --------------------------------------------------------------------------------------------
# (a) the dense HF directory

CHECK_TEXTS = [
    "In 1969, 3 astronauts flew to the Moon!",
    " :\n\n\n 1",
    "Question: What is 12 + 30?\nAnswer: 42",
    "x 2020-01-31 99.5%  \t 7",
]


def build_hf_dir(gguf, hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gguf_ref import load_gguf_model, load_gguf_tokenizer

    ref_tok, note = load_gguf_tokenizer(gguf)
    assert note["digits_fix_applied"], note
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        print(f"building {hf_dir} from {gguf}", flush=True)
        src = load_gguf_model(gguf, dtype=torch.float32)
        # transformers refuses to save a model loaded "quantized with gguf": copy the (dequantized)
        # weights into a plain model of the same config.
        cfg = copy.deepcopy(src.config)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.use_cache = True
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(src.state_dict(), strict=True)
        model.eval()
        os.makedirs(hf_dir, exist_ok=True)
        model.save_pretrained(hf_dir)
        del src
        ref_tok.save_pretrained(hf_dir)
        del model
    else:
        print(f"reusing {hf_dir}", flush=True)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    for s in CHECK_TEXTS:
        a = tok.encode(s, add_special_tokens=False)
        b = ref_tok.encode(s, add_special_tokens=False)
        assert a == b, (s, a, b)
        assert tok.encode(s) == ref_tok.encode(s), s  # default settings: no BOS either
    # the saved model is the GGUF model
    ids = torch.tensor([ref_tok.encode(CHECK_TEXTS[0] + " " + CHECK_TEXTS[2])])
    with torch.no_grad():
        ref = load_gguf_model(gguf, dtype=torch.float32)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)(ids).logits
    d = (ref - got).abs().max().item()
    assert d == 0.0, f"saved model differs from the GGUF model: max |dlogits| = {d}"
    return {"tokenizer_check_texts": CHECK_TEXTS, "tokenizer_matches_gguf_ref": True,
            "model_max_abs_dlogits_vs_gguf_ref": d, "tokenizer_note": note}


# --------------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def gold_of(task, doc, target):
    if task == "winogrande":
        return {"1": 0, "2": 1}[doc["answer"]]
    return int(target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--hf-dir", default="/work/runs/smollm2-dense-hf")
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "zeroshot"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=500, help="first N docs of each task (0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--first-docs", type=int, default=3, help="docs whose request strings/ids are recorded")
    ap.add_argument("--out", default=os.path.join(REPO, "tests/fixtures/zeroshot/lm_eval_smollm2_500.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm_eval_version = getattr(lm_eval, "__version__", None)
    if lm_eval_version is None:
        from importlib.metadata import version

        lm_eval_version = version("lm_eval")

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        assert t in TASKS, t

    hf_info = build_hf_dir(args.gguf, args.hf_dir)

    lm = HFLM(pretrained=args.hf_dir, backend="causal", dtype="float32", device="cpu",
              batch_size=args.batch_size)
    # lm-eval >= 0.4.10: add_bos_token=None means "the tokenizer's default", which adds no BOS here
    bos_free = lm.tok_encode("Question: 1") == lm.tokenizer.encode("Question: 1", add_special_tokens=False)
    assert bos_free, "the tokenizer adds special tokens by default"

    out = {
        "what": "lm-evaluation-harness zero-shot reference: dense SmolLM2-135M-Instruct (Q4_1 GGUF dequantized "
                "to float32), HF backend, CPU; tasks = official lm-eval 0.4.x prompts on the local JSONL files",
        "spec": "docs/zeroshot-tasks.md",
        "lm_eval_version": lm_eval_version,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "gguf": os.path.basename(args.gguf),
        "gguf_sha256": sha256(args.gguf),
        "hf_dir_check": hf_info,
        "model_args": {"backend": "causal", "dtype": "float32", "device": "cpu", "batch_size": args.batch_size,
                       "add_bos_token": lm.add_bos_token, "bos_added": False, "max_length": lm.max_length,
                       "prefix_token_id": lm.prefix_token_id},
        "limit": args.limit or None,
        "torch_num_threads": torch.get_num_threads(),
        "os_cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "ll_rounding": 1e-6,
        "tasks": {},
    }

    total_wall = 0.0
    total_docs = 0
    total_reqs = 0
    with tempfile.TemporaryDirectory(prefix="lmeval_tasks_") as tdir:
        write_task_dir(args.data_dir, tdir)
        tm = TaskManager(include_path=tdir)
        for t in tasks:
            name = f"{t}_local"
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[name], num_fewshot=0, limit=args.limit or None, log_samples=True,
                task_manager=tm, bootstrap_iters=100000, random_seed=0, numpy_random_seed=1234,
                torch_random_seed=1234, fewshot_random_seed=1234,
            )
            wall = time.perf_counter() - t0
            r = res["results"][name]
            samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
            n = len(samples)
            nreq = sum(len(s["arguments"]) for s in samples)
            total_wall += wall
            total_docs += n
            total_reqs += nreq

            examples = []
            first = []
            for s in samples:
                lls = [float(fr[0]) for fr in s["filtered_resps"]]
                greedy = [bool(fr[1]) for fr in s["filtered_resps"]]
                gold = gold_of(t, s["doc"], s["target"])
                pred = int(np.argmax(lls))
                ex = {"doc": s["doc_id"], "ll": [round(x, 6) for x in lls], "gold": gold, "pred": pred}
                assert float(s["acc"]) == float(pred == gold), (t, s["doc_id"])
                if "acc_norm" in s:
                    lens = [len(a[1]) - 1 for a in s["arguments"]]  # continuation = " " + choice
                    pred_norm = int(np.argmax(np.array(lls) / np.array(lens, dtype=float)))
                    assert float(s["acc_norm"]) == float(pred_norm == gold), (t, s["doc_id"])
                    ex["pred_norm"] = pred_norm
                if any(greedy):
                    ex["greedy"] = [int(g) for g in greedy]
                examples.append(ex)
                if len(first) < args.first_docs:
                    reqs = []
                    for ctx, cont in s["arguments"]:
                        cenc, kenc = lm._encode_pair(ctx, cont)
                        reqs.append({"context": ctx, "continuation": cont,
                                     "context_ids": cenc, "continuation_ids": kenc})
                    first.append({"doc": s["doc_id"], "gold": gold, "requests": reqs})

            out["tasks"][t] = {
                "lm_eval_task": name,
                "official_task": t,
                "data_file": DATA_FILE[t],
                "data_sha256": sha256(os.path.join(args.data_dir, DATA_FILE[t])),
                "paper_metric": PAPER_METRIC[t],
                "lm_eval_version": lm_eval_version,
                "n": n,
                "n_requests": nreq,
                "acc": r.get("acc,none"),
                "acc_stderr": r.get("acc_stderr,none"),
                "acc_norm": r.get("acc_norm,none"),
                "acc_norm_stderr": r.get("acc_norm_stderr,none"),
                "wall_s": round(wall, 3),
                "examples_per_s": round(n / wall, 4),
                "requests_per_s": round(nreq / wall, 4),
                "first_docs": first,
                "examples": examples,
            }
            print(f"   n={n} acc={r.get('acc,none')} acc_norm={r.get('acc_norm,none')} "
                  f"wall={wall:.1f}s ({n / wall:.2f} ex/s)", flush=True)

    out["total"] = {"n": total_docs, "n_requests": total_reqs, "wall_s": round(total_wall, 3),
                    "examples_per_s": round(total_docs / total_wall, 4) if total_wall else None,
                    "requests_per_s": round(total_reqs / total_wall, 4) if total_wall else None}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    for t, v in out["tasks"].items():
        print(f"{t:14s} n={v['n']:4d} acc={v['acc']:.4f}"
              + (f" acc_norm={v['acc_norm']:.4f}" if v["acc_norm"] is not None else "")
              + f"  [{v['paper_metric']}]  {v['examples_per_s']:.2f} ex/s")
    print(f"total: {out['total']}")


if __name__ == "__main__":
    main()
