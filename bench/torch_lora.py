#!/usr/bin/env python3
"""PEFT + transformers side of the recovery benchmark: the same LoRA steps `llmprune recover`
takes, on the same pruned model directory, data and machine.

    python bench/torch_lora.py --model PRUNED_DIR --data alpaca.json --steps 6

The model is built from the directory's config.json (per-layer widths applied as in
tests/golden/gen_golden.py) and its safetensors, float32 on the CPU. The records are the ones
llmprune trains on, in its order (its seeded Fisher-Yates shuffles are CPython's `random`), with
its tokenization (Alpaca template, cutoff, EOS, prompt labels -100) and its micro-batches
(right-padded to a multiple of 8). LoRA as PEFT builds it (r, alpha, dropout, all seven
projections); torch AdamW, gradient clipping at 1.0, accumulation over the micro-batches of a
global batch. Prints one JSON line: the median seconds of the steps after the first, trained
(labelled) tokens per second over those steps, peak RSS.
"""

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "golden"))
from gen_golden import apply_per_layer_shapes  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompt(r):
    if r.get("input"):
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{r['instruction']}\n\n### Response:\n")


def shuffled(n, seed):
    rng = random.Random(seed)
    v = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randint(0, i)
        v[i], v[j] = v[j], v[i]
    return v


def load_model(d):
    cfg_json = json.load(open(os.path.join(d, "config.json")))
    cfg = transformers.LlamaConfig.from_dict(dict(cfg_json))
    cfg._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    apply_per_layer_shapes(model, cfg_json)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(d, "model.safetensors")), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model, cfg_json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--cutoff-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model, cfg = load_model(args.model)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
    eos = cfg.get("eos_token_id")
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    text = open(args.data).read()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    train = shuffled(len(records), args.seed)  # llmprune's split with --val-size 0
    order = [train[i] for i in shuffled(len(train), args.seed + 1)]

    def example(r):
        p = prompt(r)
        ids = tok.encode(p + r["output"])[: args.cutoff_len]
        if eos is not None and ids[-1] != eos and len(ids) < args.cutoff_len:
            ids.append(eos)
        labels = list(ids)
        n = min(len(tok.encode(p)), args.cutoff_len)
        labels[:n] = [-100] * min(n, len(ids))
        return ids, labels

    def micro(rows):
        t = -(-max(len(i) for i, _ in rows) // 8) * 8
        ids = torch.tensor([i + [0] * (t - len(i)) for i, _ in rows])
        labels = torch.tensor([l + [-100] * (t - len(l)) for _, l in rows])
        return ids, labels

    times, tokens = [], []
    for step in range(args.steps):
        batch = order[step * args.batch_size:(step + 1) * args.batch_size]
        t0 = time.perf_counter()
        mbs = [micro([example(records[i]) for i in batch[k:k + args.micro_batch_size]]) for k in range(0, len(batch), args.micro_batch_size)]
        trained = 0
        for ids, labels in mbs:
            loss = pm(input_ids=ids, labels=labels).loss
            (loss / len(mbs)).backward()
            trained += int((labels[:, 1:] != -100).sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(trained)
    rest = times[1:] or times
    print(json.dumps({
        "impl": "peft", "torch": torch.__version__, "transformers": transformers.__version__, "steps": args.steps,
        "median_step_s": statistics.median(rest), "tokens_per_s": sum(tokens[1:] or tokens) / sum(rest),
        "trained_tokens": tokens, "step_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
