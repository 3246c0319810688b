"""Importance scores of the tiny GQA model, written from LLM-Pruner's formulas (reference §2.2-2.5)
with numpy, as the independent reference for llmprune's gradient statistics and group scores.

Calibration = the two rows of `tests/fixtures/tiny_gqa/golden.safetensors` `input_ids`.
* gradient of the mean loss over both rows: the fixture's `grad.*` (one backward, as the reference);
* Fisher diagonal: per-row backward passes in float64, `Σ_j g_j² / N`  -> `fisher.safetensors`;
* per group (heads rooted at each layer's KV heads, MLP neurons, hidden channels), per criterion
  (vectorize, param_first, param_second, param_mix, l1, l2), reduction `sum`: the per-member channel
  scores of §2.3, query heads folded onto their own KV head (`view(n_kv, n_rep, head_dim).sum(1)`, the
  fix of §2.5), summed over members and over each head's channels  -> `importance.json`.

    python tests/golden/gen_importance.py
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_golden import causal_lm_loss, load_tiny_float64  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tiny_gqa")


def member_scores(kind, crit, w, g, f):
    if crit in ("l1", "l2"):
        s = np.abs(w) if crit == "l1" else w * w
    elif crit in ("vectorize", "param_first"):
        s = w * g
    elif crit == "param_second":
        s = w * f * w
    else:
        s = w * g - 0.5 * w * f * w
    if kind == "norm":
        return np.abs(s)
    axis = 1 if kind == "rows" else 0
    return np.abs(s.sum(axis)) if crit == "vectorize" else np.abs(s).sum(axis)


def main():
    cfg, golden, weights, model = load_tiny_float64(FIX)
    ids = golden["input_ids"]
    per_row = []
    for j in range(ids.shape[0]):
        model.zero_grad(set_to_none=True)
        causal_lm_loss(model(input_ids=ids[j:j + 1]).logits, ids[j:j + 1]).backward()
        per_row.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    fisher = {n: sum(r[n] ** 2 for r in per_row) / len(per_row) for n in per_row[0]}
    save_file({n: v.to(torch.float32).contiguous() for n, v in fisher.items()}, os.path.join(FIX, "fisher.safetensors"))

    W = {n: v.double().numpy() for n, v in weights.items()}
    G = {n[5:]: v.double().numpy() for n, v in golden.items() if n.startswith("grad.")}
    F = {n: v.numpy() for n, v in fisher.items()}
    n, hd, H = cfg["num_hidden_layers"], cfg["head_dim"], cfg["hidden_size"]
    heads, kvs = cfg["num_attention_heads_per_layer"], cfg["num_key_value_heads_per_layer"]
    out = {}
    for crit in ("vectorize", "param_first", "param_second", "param_mix", "l1", "l2"):
        def sc(name, kind):
            return member_scores(kind, crit, W[name], G[name], F[name])
        groups = {}
        for i in range(n):
            p = f"model.layers.{i}."
            nkv, rep = kvs[i], heads[i] // kvs[i]
            kv_side = sc(p + "self_attn.k_proj.weight", "rows") + sc(p + "self_attn.v_proj.weight", "rows")
            q_side = sc(p + "self_attn.q_proj.weight", "rows") + sc(p + "self_attn.o_proj.weight", "cols")
            per_channel = kv_side + q_side.reshape(nkv, rep, hd).sum(1).reshape(-1)
            groups[f"layers.{i}.k"] = per_channel.reshape(nkv, hd).sum(1).tolist()
            groups[f"layers.{i}.gate"] = (sc(p + "mlp.gate_proj.weight", "rows") + sc(p + "mlp.up_proj.weight", "rows")
                                          + sc(p + "mlp.down_proj.weight", "cols")).tolist()
        hidden = sc("model.embed_tokens.weight", "cols") + sc("model.norm.weight", "norm") + sc("lm_head.weight", "cols")
        for i in range(n):
            p = f"model.layers.{i}."
            hidden = hidden + sc(p + "input_layernorm.weight", "norm") + sc(p + "post_attention_layernorm.weight", "norm")
            for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                hidden = hidden + sc(p + m + ".weight", "cols")
            hidden = hidden + sc(p + "self_attn.o_proj.weight", "rows") + sc(p + "mlp.down_proj.weight", "rows")
        assert hidden.shape == (H,)
        groups["embed_tokens.out"] = hidden.tolist()
        out[crit] = groups
    with open(os.path.join(FIX, "importance.json"), "w") as f:
        json.dump({"reduction": "sum", "scores": out}, f, indent=1)
        f.write("\n")
    print(f"fisher for {len(fisher)} parameters; scores for {len(out)} criteria x {len(out['l1'])} groups")


if __name__ == "__main__":
    main()
