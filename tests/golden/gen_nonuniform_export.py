#!/usr/bin/env python3
"""transformers loading what llmprune exports for a LLaMA pruned unevenly (per-layer widths).

Runs `llmprune prune` on tiny_gqa with LLM-Pruner's kind of layer ranges (heads of layer 0 and
neurons of layer 1 only; the same arguments as coordinator/tests/families.rs), checks that stock
transformers refuses the export without `trust_remote_code` (no silent re-initialisation of the
pruned layers), loads it with the exported `modeling_llmprune.py`, and stores its float32 logits
on fixed ids with the exported weights' checksum: tests/fixtures/tiny_gqa/nonuniform_export_golden.safetensors.
Run from the repository root after `cargo build --release`:

    /work/pyref-venv/bin/python tests/golden/gen_nonuniform_export.py
"""

import hashlib
import json
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_family_exports as fe  # noqa: E402
import gen_golden as gg  # noqa: E402

PRUNE_ARGS = ["--ratio", "0.5", "--criterion", "param-first", "--attn-layers", "0:1", "--mlp-layers", "1:2"]


def main():
    fe.PRUNE_ARGS = PRUNE_ARGS
    with tempfile.TemporaryDirectory() as tmp:
        out = fe.export("tiny_gqa", tmp)
        cfg = json.load(open(os.path.join(out, "config.json")))
        assert cfg["model_type"] == "llmprune_llama", cfg["model_type"]
        for kwargs in ({}, {"ignore_mismatched_sizes": True}):
            try:
                AutoModelForCausalLM.from_pretrained(out, **kwargs)
                raise SystemExit(f"stock transformers loaded the non-uniform export with {kwargs}")
            except ValueError as e:
                assert "trust_remote_code" in str(e), e
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, attn_implementation="eager").float().eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(fe.IDS)).logits
        weights = open(os.path.join(out, "model.safetensors"), "rb").read()
        params = sum(p.numel() for p in model.parameters())
        print(f"{type(model).__name__}: heads {cfg['num_attention_heads_per_layer']}, KV {cfg['num_key_value_heads_per_layer']}, "
              f"MLP {cfg['intermediate_size_per_layer']}, {params} parameters")
        save_file({"input_ids": torch.tensor(fe.IDS), "logits": logits.contiguous(), "params": torch.tensor([params], dtype=torch.int64)},
                  os.path.join(gg.REPO, "tests", "fixtures", "tiny_gqa", "nonuniform_export_golden.safetensors"),
                  metadata=gg._meta(weights_sha256=hashlib.sha256(weights).hexdigest(), prune=" ".join(PRUNE_ARGS)))


if __name__ == "__main__":
    main()
