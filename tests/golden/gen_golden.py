#!/usr/bin/env python3
"""Generate the PyTorch/transformers reference fixtures that llmprune's Rust tests compare against.

Run from the repository root:

    python tests/golden/gen_golden.py --gguf ~/.cache/llmprune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/fixtures

Writes
  <out>/tiny_gqa/{config.json,model.safetensors,golden.safetensors}
  <out>/tiny_tied_mha/{config.json,model.safetensors,golden.safetensors}
  <out>/smollm2/{golden.safetensors,tokenizer_cases.json,hf_config.json}

Everything is deterministic (fixed seeds, CPU). The golden numbers of the tiny models and of SmolLM2
are computed in float64 and stored as float32. Stock transformers silently upcasts/downcasts to
float32 in a few places (RMSNorm, rotary cos/sin and inv_freq, eager softmax, the causal-LM loss);
`enable_float64_reference()` patches those so a float64 model really runs in float64, and the loss is
computed here with HF's exact semantics (shift by one, mean over all predicted tokens). For float32
inputs the patched functions are numerically identical to the stock ones. Each result is also checked
against the stock (unpatched-semantics) float32 transformers forward; tests/golden/verify_fixtures.py
re-checks the tiny fixtures with a from-scratch float64 implementation.

SmolLM2 tokenizer: transformers' GGUF tokenizer ignores `tokenizer.ggml.pre` ("smollm" = split every
digit first); gguf_ref.load_gguf_tokenizer restores that (see gguf_ref.py). tokenizer_cases.json holds
the faithful ids, plus `ids_transformers_gguf_unfixed` where the unfixed transformers tokenizer differs.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama as ml
from transformers.models.qwen2 import modeling_qwen2 as mq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_ref import load_gguf_model, load_gguf_tokenizer  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# ----------------------------------------------------------------------------------------------
# float64 reference patches
# ----------------------------------------------------------------------------------------------

_STOCK_ROPE_FORWARD = ml.LlamaRotaryEmbedding.forward
_STOCK_EAGER = ml.eager_attention_forward


def _rms_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    cdt = torch.float64 if input_dtype == torch.float64 else torch.float32
    hidden_states = hidden_states.to(cdt)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def _rope_forward(self, x, position_ids):
    if x.dtype != torch.float64:
        return _STOCK_ROPE_FORWARD(self, x, position_ids)
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def _eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    if query.dtype != torch.float64:
        return _STOCK_EAGER(module, query, key, value, attention_mask, scaling, dropout=dropout, **kwargs)
    key_states = ml.repeat_kv(key, module.num_key_value_groups)
    value_states = ml.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = torch.softmax(attn_weights, dim=-1)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def enable_float64_reference():
    # Qwen2's norm, rotary embedding and eager attention are LLaMA's, copied.
    for module, prefix in ((ml, "Llama"), (mq, "Qwen2")):
        getattr(module, prefix + "RMSNorm").forward = _rms_forward
        getattr(module, prefix + "RotaryEmbedding").forward = _rope_forward
        module.eager_attention_forward = _eager_attention


def inv_freq_f64(rope: dict, head_dim: int) -> torch.Tensor:
    """Rotary inverse frequencies in float64 (default and llama3 rope types), written out independently."""
    base = float(rope["rope_theta"])
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype == "default":
        return inv
    assert rtype == "llama3", rtype
    factor = float(rope["factor"])
    lf, hf = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old = float(rope["original_max_position_embeddings"])
    low_wl, high_wl = old / lf, old / hf
    out = []
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / factor)
        else:
            s = (old / wl - lf) / (hf - lf)
            out.append((1 - s) * f / factor + s * f)
    return torch.tensor(out, dtype=torch.float64)


def to_float64_reference(model: torch.nn.Module, rope: dict, head_dim: int) -> torch.nn.Module:
    """model.double() plus float64 rotary frequencies (HF computes them in float32)."""
    model = model.double()
    inv64 = inv_freq_f64(rope, head_dim)
    rot = model.model.rotary_emb
    hf32 = rot.original_inv_freq.to(torch.float64)
    assert torch.allclose(hf32, inv64, rtol=1e-6, atol=0), (hf32, inv64)
    rot.inv_freq = inv64.clone()
    rot.original_inv_freq = inv64.clone()
    return model


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """HF ForCausalLMLoss with labels=input_ids, in the logits' dtype: mean CE over all shifted positions."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, v), input_ids[:, 1:].reshape(-1), reduction="mean")


def rope_dict(cfg: LlamaConfig) -> dict:
    rp = getattr(cfg, "rope_parameters", None)
    if rp:
        return dict(rp)
    d = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if getattr(cfg, "rope_scaling", None):
        d.update(cfg.rope_scaling)
    return d


# ----------------------------------------------------------------------------------------------
# tiny random models
# ----------------------------------------------------------------------------------------------

def load_tiny_float64(fixture_dir: str):
    """A written tiny fixture as the float64 reference model: (config, golden tensors, weights, model)."""
    enable_float64_reference()
    cfg = json.load(open(os.path.join(fixture_dir, "config.json")))
    golden = load_file(os.path.join(fixture_dir, "golden.safetensors"))
    weights = load_file(os.path.join(fixture_dir, "model.safetensors"))
    model = build_tiny(cfg, 0)
    model.load_state_dict(weights, strict=False)
    return cfg, golden, weights, to_float64_reference(model, rope_dict(model.config), cfg["head_dim"])


def build_tiny(cfg_json: dict, seed: int) -> LlamaForCausalLM:
    """Random LLaMA-family model (biases too) at the max shapes, then sliced to the per-layer
    shapes of cfg_json."""
    cfg = transformers.CONFIG_MAPPING[cfg_json["model_type"]].from_dict(dict(cfg_json))
    cfg._attn_implementation = "eager"
    cfg.use_cache = False
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float32))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    if any(k.endswith("_per_layer") for k in cfg_json):
        apply_per_layer_shapes(model, cfg_json)
    return model


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def apply_per_layer_shapes(model: LlamaForCausalLM, cfg_json: dict):
    n = cfg_json["num_hidden_layers"]
    hd = cfg_json["head_dim"]
    heads = cfg_json.get("num_attention_heads_per_layer", [cfg_json["num_attention_heads"]] * n)
    kvs = cfg_json.get("num_key_value_heads_per_layer", [cfg_json["num_key_value_heads"]] * n)
    inter = cfg_json.get("intermediate_size_per_layer", [cfg_json["intermediate_size"]] * n)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            h, kv, it = heads[i], kvs[i], inter[i]
            assert h % kv == 0
            a, m = layer.self_attn, layer.mlp
            a.q_proj = _linear(a.q_proj.weight[: h * hd, :].clone())
            a.k_proj = _linear(a.k_proj.weight[: kv * hd, :].clone())
            a.v_proj = _linear(a.v_proj.weight[: kv * hd, :].clone())
            a.o_proj = _linear(a.o_proj.weight[:, : h * hd].clone())
            a.num_key_value_groups = h // kv
            a.num_heads, a.num_key_value_heads = h, kv  # informative; stock forward uses view(..., -1, head_dim)
            m.gate_proj = _linear(m.gate_proj.weight[:it, :].clone())
            m.up_proj = _linear(m.up_proj.weight[:it, :].clone())
            m.down_proj = _linear(m.down_proj.weight[:, :it].clone())
            m.intermediate_size = it


def weights_state_dict(model: LlamaForCausalLM, tied: bool) -> dict:
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    sd = {k: v for k, v in sd.items() if "rotary_emb" not in k}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def golden_for(model32: LlamaForCausalLM, input_ids: torch.Tensor, rope: dict, head_dim: int):
    """float64 logits/loss/grads of a float32 model; also checks against the stock float32 HF forward."""
    # stock float32 path (HF loss with labels=input_ids)
    with torch.no_grad():
        out32 = model32(input_ids=input_ids, labels=input_ids)
    # float64 reference
    import copy

    m64 = to_float64_reference(copy.deepcopy(model32), rope, head_dim)
    m64.train(False)
    m64.zero_grad(set_to_none=True)
    out = m64(input_ids=input_ids)
    logits = out.logits
    loss = causal_lm_loss(logits, input_ids)
    loss.backward()
    with torch.no_grad():
        out64hf = m64(input_ids=input_ids, labels=input_ids)  # HF loss path (upcasts to float32 internally)
    d_logits = (out32.logits.double() - logits.detach()).abs().max().item()
    d_loss = abs(out32.loss.item() - loss.item())
    d_loss_hf = abs(out64hf.loss.item() - loss.item())
    print(f"    float32 HF vs float64 ref: max|dlogits|={d_logits:.3e} |dloss|={d_loss:.3e}; "
          f"HF-loss(f64 model) vs ref loss {d_loss_hf:.3e}")
    assert d_logits < 1e-4 and d_loss < 1e-5 and d_loss_hf < 1e-5
    res = {
        "input_ids": input_ids.to(torch.int64).contiguous(),
        "logits": logits.detach().to(torch.float32).contiguous(),
        "loss": loss.detach().reshape(1).to(torch.float32),
    }
    n_grads = 0
    for name, p in m64.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
        res["grad." + name] = p.grad.detach().to(torch.float32).contiguous()
        n_grads += 1
    print(f"    loss={loss.item():.6f}  grads={n_grads}")
    return res


def _meta(**kw) -> dict:
    """safetensors metadata as ONE key (the writer orders several keys randomly -> non-reproducible bytes)."""
    kw.update(torch=torch.__version__, transformers=transformers.__version__)
    return {"info": json.dumps(kw, sort_keys=True, ensure_ascii=False)}


def write_tiny(out_dir: str, cfg_json: dict, seed: int, batch: int, seq: int):
    os.makedirs(out_dir, exist_ok=True)
    model = build_tiny(cfg_json, seed)
    tied = bool(cfg_json["tie_word_embeddings"])
    sd = weights_state_dict(model, tied)
    print(f"  {out_dir}: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} params")
    for k, v in sd.items():
        print(f"    {k} {tuple(v.shape)}")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    # reload from the written files (checks config.json + safetensors are self-consistent)
    model2 = build_tiny(cfg_json, seed + 1)  # different random weights, then overwritten
    from safetensors.torch import load_file

    loaded = load_file(os.path.join(out_dir, "model.safetensors"))
    missing, unexpected = model2.load_state_dict(loaded, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k and not (tied and k == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if tied:
        assert model2.lm_head.weight is model2.model.embed_tokens.weight
    model2.eval()

    gen = torch.Generator().manual_seed(seed + 1000)
    input_ids = torch.randint(0, cfg_json["vocab_size"], (batch, seq), generator=gen, dtype=torch.int64)
    cfg = model2.config
    res = golden_for(model2, input_ids, rope_dict(cfg), cfg_json["head_dim"])
    # the expected per-layer shapes really are in the model
    n = cfg_json["num_hidden_layers"]
    for i in range(n):
        hd = cfg_json["head_dim"]
        h = cfg_json.get("num_attention_heads_per_layer", [cfg_json["num_attention_heads"]] * n)[i]
        kv = cfg_json.get("num_key_value_heads_per_layer", [cfg_json["num_key_value_heads"]] * n)[i]
        it = cfg_json.get("intermediate_size_per_layer", [cfg_json["intermediate_size"]] * n)[i]
        H = cfg_json["hidden_size"]
        p = f"grad.model.layers.{i}."
        assert tuple(res[p + "self_attn.q_proj.weight"].shape) == (h * hd, H)
        assert tuple(res[p + "self_attn.k_proj.weight"].shape) == (kv * hd, H)
        assert tuple(res[p + "self_attn.v_proj.weight"].shape) == (kv * hd, H)
        assert tuple(res[p + "self_attn.o_proj.weight"].shape) == (H, h * hd)
        assert tuple(res[p + "mlp.gate_proj.weight"].shape) == (it, H)
        assert tuple(res[p + "mlp.down_proj.weight"].shape) == (H, it)
    save_file(res, os.path.join(out_dir, "golden.safetensors"),
              metadata=_meta(precision="float64 compute, stored float32"))


TINY_GQA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 48,
    "head_dim": 8,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "num_attention_heads_per_layer": [6, 4, 2],
    "num_key_value_heads_per_layer": [2, 2, 1],
    "intermediate_size_per_layer": [64, 40, 24],
}

TINY_TIED_MHA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 80,
    "hidden_size": 32,
    "head_dim": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 48,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
}

# ----------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF
# ----------------------------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts flew to the Moon!"


def tokenizer_texts() -> list:
    wiki = os.path.join(os.environ.get("LLMPRUNE_SHARED_DATA", "/work/shared/data"), "wikitext2", "wiki.test.raw")
    ptb = os.path.join(os.environ.get("LLMPRUNE_SHARED_DATA", "/work/shared/data"), "ptb", "ptb.valid.txt")
    with open(wiki, encoding="utf-8", newline="") as f:
        wiki600 = f.read(600)
    with open(ptb, encoding="utf-8") as f:
        ptb_line = next(line.strip() for line in f if "<unk>" in line)
    return [
        "12345 and 3.14159",
        "café naïve 日本語 🙂",
        "   leading and trailing spaces   ",
        "line one\n\nline two\n\tindented\twith tabs\t\n",
        "def f(x):\n    return x ** 2  # square\n\nprint(f(12), [1, 2, 3])\n",
        wiki600,
        ptb_line,
        "",
        " ",
        "I'm sure they'll say it's 1,000,000.00 $ or 2024-01-01T12:30 (approx.) -- ok?",
        "HELLO hello HeLLo   multiple   spaces\r\nwindows line",
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "Ünïcödé ßtraße — “quotes” … ½ ©",
        "total : \n\n\n 1 item , 22 @,@ 000 people \n 3",
    ]


def write_smollm2(out_dir: str, gguf_path: str):
    os.makedirs(out_dir, exist_ok=True)
    tok, tok_note = load_gguf_tokenizer(gguf_path, faithful=True)
    raw_tok, _ = load_gguf_tokenizer(gguf_path, faithful=False)
    print(f"  tokenizer: {tok_note}")
    model = load_gguf_model(gguf_path, dtype=torch.float32, attn_implementation="eager")
    cfg = model.config
    print("  transformers config derived from the GGUF:")
    print(cfg)
    assert tok("a")["input_ids"] == raw_tok("a")["input_ids"]
    print(f"  tokenizer class={type(tok).__name__} vocab={len(tok)} bos={tok.bos_token!r}/{tok.bos_token_id} "
          f"eos={tok.eos_token!r}/{tok.eos_token_id} pad={tok.pad_token!r}/{tok.pad_token_id} "
          f"unk={tok.unk_token!r}/{tok.unk_token_id} add_bos={getattr(tok, 'add_bos_token', None)}")
    with open(os.path.join(out_dir, "hf_config.json"), "w") as f:
        d = cfg.to_dict()
        d.pop("_name_or_path", None)  # machine-specific path
        d["_tokenizer"] = {
            "class": type(tok).__name__, "len": len(tok),
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
            "adds_bos_by_default": tok("a")["input_ids"][0] == tok.bos_token_id,
            "pre_tokenizer": json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"],
            **tok_note,
        }
        d["_versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        json.dump(d, f, indent=2, sort_keys=True, default=str)
        f.write("\n")

    enc = tok(SENTENCE, return_tensors="pt")
    input_ids = enc["input_ids"].to(torch.int64)
    print(f"  sentence -> {input_ids.shape[1]} ids: {input_ids[0].tolist()}")
    with torch.no_grad():
        out32 = model(input_ids=input_ids, labels=input_ids)
    rope = rope_dict(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    m64 = to_float64_reference(model, rope, head_dim)
    with torch.no_grad():
        logits = m64(input_ids=input_ids).logits
        loss = causal_lm_loss(logits, input_ids)
    d_logits = (out32.logits.double() - logits).abs().max().item()
    print(f"  float32 HF vs float64 ref: max|dlogits|={d_logits:.3e} |dloss|={abs(out32.loss.item() - loss.item()):.3e}")
    print(f"  loss={loss.item():.6f} (float32 HF {out32.loss.item():.6f})")
    res = {
        "input_ids": input_ids.contiguous(),
        "logits": logits[:, :8, :].to(torch.float32).contiguous(),
        "loss": loss.reshape(1).to(torch.float32),
    }
    save_file(res, os.path.join(out_dir, "golden.safetensors"),
              metadata=_meta(precision="float64 compute from GGUF-dequantized float32 weights, stored float32",
                             text=SENTENCE, gguf=os.path.basename(gguf_path)))

    cases = []
    for t in tokenizer_texts():
        case = {"text": t, "ids": tok(t)["input_ids"]}
        raw = raw_tok(t)["input_ids"]
        if raw != case["ids"]:  # transformers' GGUF tokenizer without the digit pre-tokenizer (gguf_ref.py)
            case["ids_transformers_gguf_unfixed"] = raw
        cases.append(case)
    with open(os.path.join(out_dir, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"  {len(cases)} tokenizer cases; lengths {[len(c['ids']) for c in cases]}; "
          f"{sum('ids_transformers_gguf_unfixed' in c for c in cases)} differ without the digit fix")


TINY_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 64,
    "hidden_size": 32,
    "head_dim": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 48,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (skip the smollm2 fixture if omitted)")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--only", choices=["tiny_gqa", "tiny_tied_mha", "tiny_qwen2", "smollm2"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["tiny_gqa", "tiny_tied_mha", "tiny_qwen2", "smollm2"])
    enable_float64_reference()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}")
    if "tiny_gqa" in only:
        write_tiny(os.path.join(args.out, "tiny_gqa"), TINY_GQA, seed=1234, batch=2, seq=12)
    if "tiny_tied_mha" in only:
        write_tiny(os.path.join(args.out, "tiny_tied_mha"), TINY_TIED_MHA, seed=4321, batch=2, seq=40)
    if "tiny_qwen2" in only:
        write_tiny(os.path.join(args.out, "tiny_qwen2"), TINY_QWEN2, seed=2468, batch=2, seq=16)
    if "smollm2" in only:
        if not args.gguf:
            print("no --gguf given: skipping smollm2", file=sys.stderr)
        else:
            write_smollm2(os.path.join(args.out, "smollm2"), args.gguf)


if __name__ == "__main__":
    main()
