#!/usr/bin/env python3
"""Reference fixtures of the model families beyond LLaMA's layout: tiny random Qwen3 (q/k RMSNorm
inside attention) and GLM (transformers' `glm`, the ChatGLM line: interleaved partial rotary
embedding, fused gate_up_proj, q/k/v biases); and LLaMA with `attention_bias` and `mlp_bias`
(biases on all seven projections: what bias compensation exports).

Run from the repository root with the reference venv (README.md beside this file):

    /work/pyref-venv/bin/python tests/golden/gen_families.py

Writes tests/fixtures/tiny_{qwen3,glm}/{config.json,model.safetensors,golden.safetensors}: the config
as transformers writes it, the weights in transformers' names, and float64 logits, loss and every
parameter's gradient (stored float32), as gen_golden.py does for the LLaMA fixtures.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.glm import modeling_glm as mg
from transformers.models.qwen3 import modeling_qwen3 as mq3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_golden as gg  # noqa: E402

OUT = os.path.join(gg.REPO, "tests", "fixtures")

QWEN3 = dict(
    vocab_size=64, hidden_size=32, head_dim=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=64, tie_word_embeddings=False,
    attention_bias=False, use_sliding_window=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)

GLM = dict(
    vocab_size=64, hidden_size=32, head_dim=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, hidden_act="silu", rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False,
    attention_bias=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
)


LLAMA_BIAS = dict(
    vocab_size=64, hidden_size=32, head_dim=8, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=48, hidden_act="silu", rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False,
    attention_bias=True, mlp_bias=True, rope_theta=10000.0,
)


def enable_float64_reference():
    gg.enable_float64_reference()
    for module, prefix in ((mq3, "Qwen3"), (mg, "Glm")):
        getattr(module, prefix + "RMSNorm").forward = gg._rms_forward
        getattr(module, prefix + "RotaryEmbedding").forward = gg._rope_forward
        module.eager_attention_forward = gg._eager_attention


def config_json(model_type: str, kwargs: dict) -> dict:
    cfg = transformers.CONFIG_MAPPING[model_type](**kwargs)
    cfg.architectures = [{"qwen3": "Qwen3ForCausalLM", "glm": "GlmForCausalLM", "llama": "LlamaForCausalLM"}[model_type]]
    return json.loads(cfg.to_json_string(use_diff=False))


def build(cfg_json: dict, seed: int):
    """gen_golden's random model, with Qwen3's q/k norm weights drawn like the other norms."""
    model = gg.build_tiny(cfg_json, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float32))
    return model


def write(name: str, model_type: str, kwargs: dict, seed: int, batch: int, seq: int):
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    cfg_json = config_json(model_type, kwargs)
    model = build(cfg_json, seed)
    sd = gg.weights_state_dict(model, bool(cfg_json["tie_word_embeddings"]))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    # Reload from the written files: config.json and the weights are self-consistent.
    model2 = build(cfg_json, seed + 1)
    missing, unexpected = model2.load_state_dict(load_file(os.path.join(out_dir, "model.safetensors")), strict=False)
    assert not [k for k in missing if "rotary_emb" not in k] and not unexpected, (missing, unexpected)
    model2.eval()
    gen = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg_json["vocab_size"], (batch, seq), generator=gen, dtype=torch.int64)
    rope = dict(model2.config.rope_parameters or {"rope_type": "default", "rope_theta": cfg_json["rope_theta"]})
    rotary_dim = int(cfg_json["head_dim"] * rope.get("partial_rotary_factor", 1.0))
    res = gg.golden_for(model2, input_ids, rope, rotary_dim)
    print(f"  {out_dir}: {len(sd)} tensors: {sorted(sd)[:6]}...")
    save_file(res, os.path.join(out_dir, "golden.safetensors"), metadata=gg._meta(precision="float64 compute, stored float32"))


def main():
    fixtures = {
        "tiny_qwen3": ("qwen3", QWEN3, 1357),
        "tiny_glm": ("glm", GLM, 9753),
        "tiny_llama_bias": ("llama", LLAMA_BIAS, 8642),
    }
    only = sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else list(fixtures)
    enable_float64_reference()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for name in only:
        model_type, kwargs, seed = fixtures[name]
        write(name, model_type, kwargs, seed=seed, batch=2, seq=16)


if __name__ == "__main__":
    main()
