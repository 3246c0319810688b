"""The activation criteria and the least-squares reconstruction of the tiny GQA model, from
transformers' forward pass (float64) and numpy, as the independent reference for llmprune's
input statistics (`worker/src/prune/activations.rs`), scores (`activation_scores.rs`) and
reconstruction (`reconstruct.rs`).

Calibration = the two rows of `tests/fixtures/tiny_gqa/golden.safetensors` `input_ids`.
* inputs of every o_proj and down_proj (forward pre-hooks): their token count, sum and Gram
  matrix  -> `activations.safetensors` (`sum.NAME`, `gram.NAME`);
* per group (heads rooted at each layer's KV heads, `layers.i.k`; MLP neurons, `layers.i.gate`):
  fluctuation = sample variance of each input channel x squared column norm of the consumer,
  wanda = column's L1 norm x RMS of the channel, summed over the unit's channels; obs = the
  consumer's mean squared output error, on these inputs, after removing the unit's channels and
  re-solving the others by damped least squares (computed as that residual, not by the
  inverse-block formula llmprune uses)  -> `activation_scores.json`;
* reconstruction: each consumer with the channels of its first unit removed (where others
  remain), the rest solved by np.linalg.solve of the damped normal equations  -> `reconstructed.safetensors`;
* bias compensation, the same consumers: alone, the removed columns times the removed channels'
  mean (`bias_only.NAME`); with reconstruction, least squares with an intercept from the centred
  inputs, damped like the Gram matrix (`weight.NAME` at full width, `bias.NAME`), the formula
  checked here against np.linalg.lstsq with an intercept column where the damping is 0
  -> `compensated.safetensors`.

    python tests/golden/gen_activation_criteria.py
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_golden import load_tiny_float64  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tiny_gqa")
DAMPING = 0.01


def damped(gram, n):
    h = gram / n
    h = (h + h.T) / 2
    d = np.diag(h).copy()
    d[d == 0] = 1.0
    np.fill_diagonal(h, d)
    return h + DAMPING * d.mean() * np.eye(len(d))


def residual(w, h, kept):
    """min over W' of E_x ||W x - W' x_K||^2 + damping, with H the damped second moment."""
    if not kept:
        return float(np.trace(w @ h @ w.T)), np.zeros_like(w)
    k = np.asarray(kept, dtype=np.int64)
    w_new = np.linalg.solve(h[np.ix_(k, k)], h[k, :] @ w.T).T
    full = np.zeros_like(w)
    full[:, k] = w_new
    d = w - full
    return float(np.trace(d @ h @ d.T)), full


def damped_cov(xc, n, damping=DAMPING):
    c = xc.T @ xc / n
    d = np.diag(c).copy()
    d[d <= 0] = 1.0
    np.fill_diagonal(c, d)
    return c + damping * d.mean() * np.eye(len(d))


def with_intercept(w, x, kept, damping=DAMPING):
    """min over W', c of E_x ||W x - W' x_K - c||^2 (ridge-damped): from the centred inputs."""
    k = np.asarray(kept, dtype=np.int64)
    mu = x.mean(0)
    cov = damped_cov(x - mu, x.shape[0], damping)
    w_new = np.linalg.solve(cov[np.ix_(k, k)], cov[k, :] @ w.T).T
    full = np.zeros_like(w)
    full[:, k] = w_new
    return full, w @ mu - w_new @ mu[k]


def check_with_intercept():
    """Without damping, `with_intercept` is lstsq with an intercept column (on a well-posed
    problem: the tiny model's 24 tokens leave its consumers' systems underdetermined)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) + rng.normal(size=7)
    w = rng.normal(size=(4, 7))
    kept = [0, 2, 3, 6]
    design = np.concatenate([x[:, kept], np.ones((300, 1))], 1)
    solved = np.linalg.lstsq(design, x @ w.T, rcond=None)[0]
    full, bias = with_intercept(w, x, kept, damping=0.0)
    assert np.allclose(full[:, kept], solved[:-1].T, atol=1e-10) and np.allclose(bias, solved[-1], atol=1e-10)


def main():
    check_with_intercept()
    cfg, golden, weights, model = load_tiny_float64(FIX)
    ids = golden["input_ids"]
    inputs = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double().numpy()
            inputs.setdefault(name, []).append(x)
        return pre

    for i, layer in enumerate(model.model.layers):
        layer.self_attn.o_proj.register_forward_pre_hook(hook(f"model.layers.{i}.self_attn.o_proj.weight"))
        layer.mlp.down_proj.register_forward_pre_hook(hook(f"model.layers.{i}.mlp.down_proj.weight"))
    with torch.no_grad():
        model(input_ids=ids)
    X = {n: np.concatenate(v, 0) for n, v in inputs.items()}
    W = {n: v.double().numpy() for n, v in weights.items()}
    hd = cfg["head_dim"]
    heads, kvs = cfg["num_attention_heads_per_layer"], cfg["num_key_value_heads_per_layer"]
    stats, scores, rebuilt, compensated = {}, {"fluctuation": {}, "wanda": {}, "obs": {}}, {}, {}
    tokens = None
    for i in range(cfg["num_hidden_layers"]):
        rep = heads[i] // kvs[i]
        for root, name, units in (
            (f"layers.{i}.k", f"model.layers.{i}.self_attn.o_proj.weight",
             [list(range(j * rep * hd, (j + 1) * rep * hd)) for j in range(kvs[i])]),
            (f"layers.{i}.gate", f"model.layers.{i}.mlp.down_proj.weight",
             [[c] for c in range(W[f"model.layers.{i}.mlp.down_proj.weight"].shape[1])]),
        ):
            x, w = X[name], W[name]
            n = x.shape[0]
            tokens = n
            gram = x.T @ x
            stats[f"sum.{name}"] = torch.from_numpy(x.sum(0)).float()
            stats[f"gram.{name}"] = torch.from_numpy(gram).float()
            var = x.var(0, ddof=1)
            fl = var * (w ** 2).sum(0)
            wa = np.abs(w).sum(0) * np.sqrt((x ** 2).mean(0))
            h = damped(gram, n)
            everything = range(w.shape[1])
            scores["fluctuation"][root] = [float(fl[u].sum()) for u in units]
            scores["wanda"][root] = [float(wa[u].sum()) for u in units]
            scores["obs"][root] = [residual(w, h, [c for c in everything if c not in u])[0] for u in units]
            kept = [c for c in everything if c not in units[0]]
            if kept:
                rebuilt[name] = torch.from_numpy(residual(w, h, kept)[1]).float()
                removed = list(units[0])
                compensated[f"bias_only.{name}"] = torch.from_numpy(w[:, removed] @ x[:, removed].mean(0)).float()
                full, bias = with_intercept(w, x, kept)
                compensated[f"weight.{name}"] = torch.from_numpy(full).float()
                compensated[f"bias.{name}"] = torch.from_numpy(bias).float()

    save_file({k: v.contiguous() for k, v in stats.items()}, os.path.join(FIX, "activations.safetensors"))
    save_file({k: v.contiguous() for k, v in rebuilt.items()}, os.path.join(FIX, "reconstructed.safetensors"))
    save_file({k: v.contiguous() for k, v in compensated.items()}, os.path.join(FIX, "compensated.safetensors"))
    with open(os.path.join(FIX, "activation_scores.json"), "w") as f:
        json.dump({"damping": DAMPING, "tokens": tokens, "scores": scores}, f, indent=1)
        f.write("\n")
    print(f"{len(rebuilt)} consumers over {tokens} tokens")


if __name__ == "__main__":
    main()
