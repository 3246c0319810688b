#!/usr/bin/env python3
"""Perplexity with PyTorch/transformers, exactly per LLM-Pruner's protocol (reference for llmprune's PPL).

    python tests/golden/hf_ppl.py --gguf ~/.cache/llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data wikitext2=/work/shared/data/wikitext2/wiki.test.raw \
        --data ptb=/work/shared/data/ptb/ptb.valid.txt \
        --seq-len 128 --batch-size 4 --json bench/results/torch_ppl_smollm2.json

Protocol (LLM-Pruner LLMPruner/datasets/ppl_dataset.py + LLMPruner/evaluator/ppl.py):
  * rows: WikiText-2 (a name containing "wiki") = lines of the file with their "\n"; a whitespace-only
    line is the empty row "" (as in the HF `wikitext-2-raw-v1` dataset). PTB (a name containing "ptb")
    = lines stripped of surrounding whitespace (HF `ptb_text_only` `sentence`).
  * text = "\n\n".join(rows), tokenized ONCE with the model's tokenizer default settings (SmolLM2: no BOS;
    transformers' GGUF tokenizer gets the digit pre-tokenizer fix of gguf_ref.py unless --raw-hf-tokenizer).
  * non-overlapping chunks of --seq-len tokens, remainder dropped; --max-chunks keeps the first K.
  * per chunk: logits -> shift by one -> per-token CE (reduction none) on seq_len-1 positions.
  * PPL = exp(mean NLL over all those tokens). Model in float32 on CPU (LLM-Pruner: fp16 on GPU).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_ref import load_gguf_model, load_gguf_tokenizer, protocol_ids  # noqa: E402

EXPECTED_TOKENS = {"wikitext2": 304_978, "ptb": 93_459}  # SmolLM2 tokenizer, full files

@torch.no_grad()
def eval_ppl(model, ids, seq_len, batch_size, max_chunks=None, log_every=50, label=""):
    n = ids.numel() // seq_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    chunks = ids[: n * seq_len].view(n, seq_len)
    total_nll, total_tok = 0.0, 0
    t0 = time.time()
    for b, s in enumerate(range(0, n, batch_size)):
        batch = chunks[s : s + batch_size]
        logits = model(input_ids=batch).logits
        v = logits.shape[-1]
        nll = F.cross_entropy(logits[:, :-1, :].reshape(-1, v).float(), batch[:, 1:].reshape(-1), reduction="none")
        total_nll += nll.double().sum().item()
        total_tok += nll.numel()
        if log_every and (b + 1) % log_every == 0:
            el = time.time() - t0
            print(f"  [{label}] {s + batch.shape[0]}/{n} chunks, running ppl {math.exp(total_nll / total_tok):.4f}, "
                  f"{el:.0f}s elapsed, ~{el / (s + batch.shape[0]) * (n - s - batch.shape[0]):.0f}s left", flush=True)
    mean = total_nll / max(total_tok, 1)
    return {"chunks": n, "scored_tokens": total_tok, "mean_nll": mean, "ppl": math.exp(mean),
            "seconds": round(time.time() - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                    help="the model's dtype (the loss is always taken in float32)")
    ap.add_argument("--raw-hf-tokenizer", action="store_true",
                    help="use transformers' GGUF tokenizer as is (no digit pre-tokenizer fix, see gguf_ref.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    tok, tok_note = load_gguf_tokenizer(args.gguf, faithful=not args.raw_hf_tokenizer)
    model = load_gguf_model(args.gguf, dtype=getattr(torch, args.dtype))
    print(f"loaded {args.gguf} in {time.time() - t0:.1f}s (torch {torch.__version__}, "
          f"transformers {transformers.__version__}, threads {torch.get_num_threads()})", flush=True)
    out = {
        "impl": "pytorch", "model": os.path.basename(args.gguf), "dtype": args.dtype,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "max_chunks": args.max_chunks,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "tokenizer": tok_note,
        "protocol": "LLM-Pruner ppl: rows joined with \\n\\n, tokenized once (default settings), "
                    "non-overlapping seq_len chunks, remainder dropped, exp(mean NLL of shifted tokens)",
        "results": {},
    }
    for spec in args.data:
        name, path = spec.split("=", 1)
        t1 = time.time()
        ids = protocol_ids(tok, name, path)
        tok_s = time.time() - t1
        exp = EXPECTED_TOKENS.get(name)
        note = "" if exp is None else (" (matches expected)" if exp == ids.numel() else f" (EXPECTED {exp}!)")
        print(f"{name}: {path}: {ids.numel()} tokens{note}, first ids {ids[:8].tolist()}, "
              f"tokenized in {tok_s:.1f}s", flush=True)
        r = eval_ppl(model, ids, args.seq_len, args.batch_size, args.max_chunks, label=name)
        r = {"file": path, "tokens": ids.numel(), **r}
        print(f"{name}: tokens {r['tokens']} chunks {r['chunks']} ppl {r['ppl']:.4f} "
              f"(mean nll {r['mean_nll']:.6f}) seconds {r['seconds']}", flush=True)
        out["results"][name] = r
        if args.json:  # written after each dataset, so a long run leaves partial results
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
                f.write("\n")
    print(json.dumps({k: {"tokens": v["tokens"], "chunks": v["chunks"], "ppl": v["ppl"]}
                      for k, v in out["results"].items()}))


if __name__ == "__main__":
    main()
