"""PyTorch's cost of what llmprune's scoring does, on the same model and ids: LLM-Pruner's
importance estimate is one forward and backward pass of the calibration batch through the
whole model (its `loss.backward()`), then element-wise products. Timed on the GPU with
transformers, as LLM-Pruner runs it (bf16 here, where it runs fp16), for scripts/gpu-check.sh.

    python3 scripts/gpu_reference.py MODEL_DIR IDS_JSON [--dtype bf16|f32] [--repeat 3]

Prints one JSON line: load and pass seconds (median of the repeats), peak GPU memory.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to try this script without a GPU")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    on_gpu = args.device != "cpu"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    sync()
    load_s = time.perf_counter() - t0
    ids = torch.tensor(json.load(open(args.ids)), dtype=torch.long).to(args.device)
    times = []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeat):
        model.zero_grad(set_to_none=True)
        sync()
        t = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        # LLM-Pruner's first-order salience, w·g summed per weight, as its importance does.
        with torch.no_grad():
            total = sum((p.float() * p.grad.float()).abs().sum() for p in model.parameters() if p.grad is not None)
        sync()
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "tool": "transformers " + __import__("transformers").__version__ + ", torch " + torch.__version__,
        "dtype": args.dtype,
        "tokens": int(ids.numel()),
        "loss": float(loss.detach()),
        "salience_sum": float(total),
        "load_s": load_s,
        "pass_s_median": statistics.median(times),
        "pass_s_all": times,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
    }))


if __name__ == "__main__":
    main()
