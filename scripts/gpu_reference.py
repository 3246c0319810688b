"""PyTorch's side of scripts/gpu-check.sh: the same work as llmprune on the same model and
tokens, with transformers in eager mode, timed on the same machine.

    python3 scripts/gpu_reference.py fwdbwd MODEL_DIR IDS_JSON [--dtype bf16] [--repeat 3]
        One forward and backward pass of the batch, every weight trainable (as `llmprune
        bench --mode fwdbwd`); then the same pass followed by LLM-Pruner's importance
        estimate, the element-wise salience |w·g| summed (its `loss.backward()` and products).
    python3 scripts/gpu_reference.py zeroshot MODEL_DIR ARC_JSONL [--limit 50] [--dtype f32]
        A plain log-likelihood loop over ARC-Easy documents (lm-evaluation-harness's requests:
        "Question: …\\nAnswer:" and " choice", encoded whole and split at the context's
        length), one batch of a document's choices per forward pass.

Each prints one JSON line. Timed passes follow one untimed warm-up; `--device cpu` runs the
script without a GPU (how gpu-check tries it on the CPU).
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def load(args):
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device)
    sync(args)
    return model, time.perf_counter() - t0


def sync(args):
    if args.device != "cpu":
        torch.cuda.synchronize()


def peak_gib(args):
    return torch.cuda.max_memory_allocated() / 2**30 if args.device != "cpu" else None


def timed(args, step):
    """Median seconds of `args.repeat` calls of `step` after one warm-up call."""
    step()
    sync(args)
    if args.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        step()
        sync(args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def backward_pass(args):
    """One forward and backward pass of the batch, every weight trainable; then the same pass
    followed by LLM-Pruner's salience |w·g| summed (what its importance estimate costs)."""
    model, load_s = load(args)
    ids = torch.tensor(json.load(open(args.data)), dtype=torch.long).to(args.device)
    result = {}

    def step(salience):
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        result["loss"] = float(loss.detach())
        if salience:
            with torch.no_grad():
                result["salience_sum"] = float(sum((p.float() * p.grad.float()).abs().sum() for p in model.parameters() if p.grad is not None))

    median, times = timed(args, lambda: step(False))
    peak = peak_gib(args)
    salience_median, _ = timed(args, lambda: step(True))
    return {"tokens": int(ids.numel()), "load_s": load_s, "pass_s_median": median, "pass_s_all": times,
            "tokens_per_s": ids.numel() / median, "peak_gpu_gib": peak, "salience_pass_s_median": salience_median, **result}


def zeroshot(args):
    model, load_s = load(args)
    model.eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{args.model}/tokenizer.json")
    docs = [json.loads(line) for line, _ in zip(open(args.data), range(args.limit))]

    def requests(doc):
        context = f"Question: {doc['question']}\nAnswer:"
        ctx = tok.encode(context, add_special_tokens=False)
        for choice in doc["choices"]:
            whole = tok.encode(f"{context} {choice}", add_special_tokens=False)
            yield ctx, whole[len(ctx):]

    lls = []

    @torch.no_grad()
    def run():
        lls.clear()
        for doc in docs:
            pairs = list(requests(doc))
            rows = [(ctx + cont)[:-1] for ctx, cont in pairs]
            width = max(map(len, rows))
            batch = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                batch[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            logits = model(batch.to(args.device), attention_mask=mask.to(args.device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            doc_lls = []
            for i, (ctx, cont) in enumerate(pairs):
                start = len(ctx) - 1
                positions = torch.arange(start, start + len(cont), device=args.device)
                doc_lls.append(float(logp[i, positions, torch.tensor(cont, device=args.device)].sum()))
            lls.append(doc_lls)

    median, times = timed(args, run)
    return {"documents": len(docs), "load_s": load_s, "seconds_median": median, "seconds_all": times,
            "documents_per_s": len(docs) / median, "peak_gpu_gib": peak_gib(args), "lls": lls}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["fwdbwd", "zeroshot"])
    ap.add_argument("model")
    ap.add_argument("data", help="calibration ids (JSON windows), or an ARC-Easy JSON Lines file for zeroshot")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to try this script without a GPU")
    args = ap.parse_args()
    if args.mode == "zeroshot":
        out = zeroshot(args)
    else:
        out = backward_pass(args)
    tool = "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__
    print(json.dumps({"tool": tool, "mode": args.mode, "dtype": args.dtype, "device": args.device, **out}))


if __name__ == "__main__":
    main()
