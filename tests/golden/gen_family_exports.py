#!/usr/bin/env python3
"""Stock transformers loading what llmprune exports for the families beyond LLaMA's layout.

For tiny_qwen3 and tiny_glm (gen_families.py) this runs `llmprune prune` (uniform block-wise 50%,
param-first on fixed calibration ids; the same arguments as tests/families.rs), loads the exported
directory with AutoModelForCausalLM (no extra arguments), and stores its float32 logits on fixed ids
with the exported weights' checksum: tests/fixtures/tiny_<family>/export_golden.safetensors. The Rust
test prunes again and compares llmprune's export with these, so CI proves the round trip without
Python. Run from the repository root after `cargo build --release`:

    /work/pyref-venv/bin/python tests/golden/gen_family_exports.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_golden as gg  # noqa: E402

# Shared with tests/families.rs.
CALIBRATION = [[1, 5, 9, 13, 40, 41, 42, 7], [60, 2, 3, 33, 61, 62, 8, 9], [4, 4, 8, 15, 16, 23, 42, 0]]
PRUNE_ARGS = ["--ratio", "0.5", "--criterion", "param-first"]
IDS = [[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 3], [2, 7, 18, 28, 18, 28, 45, 9, 0, 45, 2, 35]]


def word_tokenizer(path: str, n: int):
    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(n)}, "unk_token": "w0"}}
    with open(path, "w") as f:
        json.dump(doc, f)


def export(name: str, tmp: str) -> str:
    src = os.path.join(gg.REPO, "tests", "fixtures", name)
    model = os.path.join(tmp, name)
    os.makedirs(model)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(src, f), model)
    word_tokenizer(os.path.join(model, "tokenizer.json"), json.load(open(os.path.join(model, "config.json")))["vocab_size"])
    calib = os.path.join(tmp, "calib.json")
    json.dump(CALIBRATION, open(calib, "w"))
    out = os.path.join(tmp, name + "-pruned")
    llmprune = os.path.join(gg.REPO, "target", "release", "llmprune")
    subprocess.run([llmprune, "prune", "--model", model, "--calibration-ids", calib, *PRUNE_ARGS, "--out", out], check=True)
    return out


def main():
    for name in ("tiny_qwen3", "tiny_glm"):
        with tempfile.TemporaryDirectory() as tmp:
            out = export(name, tmp)
            model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(IDS)).logits
            weights = open(os.path.join(out, "model.safetensors"), "rb").read()
            cfg = json.load(open(os.path.join(out, "config.json")))
            print(f"{name}: {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} heads, MLP {cfg['intermediate_size']}, "
                  f"{sum(p.numel() for p in model.parameters())} parameters loaded by {type(model).__name__}")
            params = torch.tensor([sum(p.numel() for p in model.parameters())], dtype=torch.int64)
            save_file({"input_ids": torch.tensor(IDS), "logits": logits.contiguous(), "params": params},
                      os.path.join(gg.REPO, "tests", "fixtures", name, "export_golden.safetensors"),
                      metadata=gg._meta(weights_sha256=hashlib.sha256(weights).hexdigest(), prune=" ".join(PRUNE_ARGS)))


if __name__ == "__main__":
    main()
