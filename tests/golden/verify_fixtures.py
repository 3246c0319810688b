#!/usr/bin/env python3
"""Cross-check the tiny fixtures with a from-scratch float64 LLaMA (no transformers involved).

    python tests/golden/verify_fixtures.py [--fixtures tests/fixtures]

Reads config.json / model.safetensors / golden.safetensors of tiny_gqa, tiny_tied_mha and tiny_qwen2,
runs an independent implementation of the forward pass (per-layer heads / kv heads / widths, GQA,
q/k/v biases, rotate-half RoPE with optional llama3 scaling, RMSNorm, SwiGLU, tied head) and its
autograd gradients, and
compares with the stored logits, loss and grads.
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file

torch.set_num_threads(1)


def inv_freq(cfg, hd):
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    assert rs["rope_type"] == "llama3"
    old, lf, hf, fac = rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"], rs["factor"]
    wl = 2 * math.pi / inv
    smooth = (old / wl - lf) / (hf - lf)
    scaled = torch.where(wl > old / lf, inv / fac, inv)
    mid = (wl >= old / hf) & (wl <= old / lf)
    return torch.where(mid, (1 - smooth) * inv / fac + smooth * inv, scaled)


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def forward(cfg, W, ids):
    n, hd, eps = cfg["num_hidden_layers"], cfg["head_dim"], cfg["rms_norm_eps"]
    heads = cfg.get("num_attention_heads_per_layer", [cfg["num_attention_heads"]] * n)
    kvs = cfg.get("num_key_value_heads_per_layer", [cfg["num_key_value_heads"]] * n)
    B, T = ids.shape
    x = W["model.embed_tokens.weight"][ids]
    f = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq(cfg, hd)[None, :]
    cos, sin = torch.cat((f, f), -1).cos(), torch.cat((f, f), -1).sin()
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(n):
        p = f"model.layers.{i}."
        h, kv = heads[i], kvs[i]
        y = rms(x, W[p + "input_layernorm.weight"], eps)
        def proj(name, heads_):
            out = y @ W[p + f"self_attn.{name}_proj.weight"].T
            bias = W.get(p + f"self_attn.{name}_proj.bias")  # Qwen2
            return (out if bias is None else out + bias).view(B, T, heads_, hd).transpose(1, 2)

        q, k, v = proj("q", h), proj("k", kv), proj("v", kv)
        q, k = q * cos + rot_half(q) * sin, k * cos + rot_half(k) * sin
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, h * hd) @ W[p + "self_attn.o_proj.weight"].T
        y = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(y @ W[p + "mlp.gate_proj.weight"].T) * (y @ W[p + "mlp.up_proj.weight"].T)
        x = x + g @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T


def check(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = {k: v.double().requires_grad_(True) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    G = load_file(os.path.join(d, "golden.safetensors"))
    ids = G["input_ids"]
    logits = forward(cfg, W, ids)
    V = logits.shape[-1]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    dl = (logits.detach() - G["logits"].double()).abs().max().item()
    dloss = abs(loss.item() - G["loss"].item())
    dg = max(((W[k].grad - G["grad." + k].double()).abs().max() / (G["grad." + k].double().abs().max())).item()
             for k in W)
    grads = sorted(k[5:] for k in G if k.startswith("grad."))
    assert grads == sorted(W), (grads, sorted(W))
    print(f"{d}: max|dlogits|={dl:.2e} |dloss|={dloss:.2e} max rel dgrad={dg:.2e}")
    assert dl < 1e-5 and dloss < 1e-6 and dg < 1e-5


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    a = ap.parse_args()
    for name in ("tiny_gqa", "tiny_tied_mha", "tiny_qwen2"):
        check(os.path.join(a.fixtures, name))
    print("ok")
