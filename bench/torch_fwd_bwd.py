#!/usr/bin/env python3
"""PyTorch side of the forward / forward+backward benchmark (SmolLM2-135M from the GGUF, float32, CPU).

    python bench/torch_fwd_bwd.py --gguf ~/.cache/llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --wikitext /work/shared/data/wikitext2/wiki.test.raw --mode fwdbwd --repeats 3

Input: the first 1280 tokens of the WikiText-2 test text tokenized per LLM-Pruner's PPL protocol
(rows joined with "\\n\\n", tokenized once; see tests/golden/gguf_ref.py), reshaped [10, 128].
All parameters require grad. One warm-up, then the median wall time of `model(ids, labels=ids)`
(plus `.loss.backward()` in fwdbwd mode; grads set to None between repeats). fwd mode runs under
torch.no_grad() (inference) unless --fwd-autograd. torch threads = --threads (2).
Prints one JSON line; peak_rss_mb is getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux) / 1024.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "golden"))
from gguf_ref import DEFAULT_GGUF, load_gguf_model, load_gguf_tokenizer, protocol_ids  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--wikitext", default="/work/shared/data/wikitext2/wiki.test.raw")
    ap.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwdbwd")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fwd-autograd", action="store_true",
                    help="in fwd mode, run the forward with autograd recording (default: torch.no_grad())")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok, _ = load_gguf_tokenizer(args.gguf)
    ids = protocol_ids(tok, "wikitext2", args.wikitext)
    n = args.rows * args.seq_len
    input_ids = ids[:n].reshape(args.rows, args.seq_len).contiguous()
    model = load_gguf_model(args.gguf, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(True)

    def step():
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        if args.mode == "fwd":
            with torch.set_grad_enabled(args.fwd_autograd):
                out = model(input_ids=input_ids, labels=input_ids)
        else:
            out = model(input_ids=input_ids, labels=input_ids)
            out.loss.backward()
        dt = time.perf_counter() - t
        return dt, out.loss.item()

    warm, loss = step()
    times = [step()[0] for _ in range(args.repeats)]
    sec = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch", "mode": args.mode, "tokens": int(input_ids.numel()),
        "seconds": round(sec, 4), "tokens_per_s": round(input_ids.numel() / sec, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeats": args.repeats, "times": [round(t, 4) for t in times], "warmup_s": round(warm, 4),
        "loss": round(loss, 6), "threads": torch.get_num_threads(),
        "fwd_autograd": bool(args.fwd_autograd) if args.mode == "fwd" else True,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
