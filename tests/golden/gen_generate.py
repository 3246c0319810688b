"""Greedy continuations by transformers' `generate` (KV cache, do_sample=False) on the dense
SmolLM2 (the HF directory `lm_eval_zeroshot.py` builds from the GGUF), for `tests/generate.rs`.

    OMP_NUM_THREADS=1 /work/pyref-venv/bin/python tests/golden/gen_generate.py
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HF_DIR = "/work/runs/smollm2-dense-hf"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "generate_smollm2.json")
PROMPTS = [
    "The capital of France is",
    "Neural network pruning removes",
    "def fibonacci(n):",
]


def main():
    hf_dir = sys.argv[1] if len(sys.argv) > 1 else HF_DIR
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cases = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        cases.append({"prompt": p, "prompt_ids": ids[0].tolist(), "new_ids": new, "text": tok.decode(new)})
    with open(OUT, "w") as f:
        json.dump({"torch": torch.__version__, "max_new_tokens": 24, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
