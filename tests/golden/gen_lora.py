"""LoRA recovery golden vectors on the tiny GQA model (per-layer shapes, as a pruned model has),
from PEFT + torch in float64: the independent reference for llmprune's adapters, masked
instruction loss, AdamW, the linear warmup/decay schedule, gradient clipping, gradient
accumulation, the merge and PEFT's adapter file layout.

Setup (all recorded in lora.json): LoraConfig(r=4, alpha=8, dropout=0, all seven projections);
adapters initialised to 0.1·N(0,1) from a seeded generator (B non-zero too, so the adapters change
the forward from the first step); two micro-batches of two right-padded rows per optimizer step,
prompt tokens and padding labelled -100; loss = mean CE over each micro-batch's labelled tokens,
divided by the accumulation steps (the Trainer of the reference); clip_grad_norm_(1.0); torch
AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01);
get_linear_schedule_with_warmup(warmup=1, total=4); 4 steps.

    python tests/golden/gen_lora.py    ->  tests/fixtures/tiny_gqa/lora.safetensors, lora.json
"""

import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import get_linear_schedule_with_warmup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_golden import _meta, build_tiny, enable_float64_reference, rope_dict, to_float64_reference  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tiny_gqa")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA, LR, WD, WARMUP, STEPS, CLIP = 4, 8, 1e-2, 0.01, 1, 4, 1.0

# Rows: (token ids, prompt length). Micro-batch k of step s is ROWS[(2s + k) % 4 * 2 ...] below.
ROWS = [
    ([1, 17, 5, 33, 60, 2, 41, 9, 12, 70], 4),
    ([1, 8, 8, 90, 14, 3], 3),
    ([1, 55, 21, 7, 7, 64, 30, 11], 5),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9], 2),
]
MICRO = [[0, 1], [2, 3]]  # every step: micro-batch 0 = rows 0,1; micro-batch 1 = rows 2,3


def batch(rows):
    """Right-padded ids (pad 0) and labels (-100 on prompt tokens and padding)."""
    t = max(len(ROWS[r][0]) for r in rows)
    ids, labels = [], []
    for r in rows:
        toks, prompt = ROWS[r]
        ids.append(toks + [0] * (t - len(toks)))
        labels.append([-100] * prompt + toks[prompt:] + [-100] * (t - len(toks)))
    return torch.tensor(ids), torch.tensor(labels)


def loss_of(model, ids, labels):
    logits = model(input_ids=ids).logits
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


def main():
    enable_float64_reference()
    cfg = json.load(open(os.path.join(FIX, "config.json")))
    model = build_tiny(cfg, 0)
    model.load_state_dict(load_file(os.path.join(FIX, "model.safetensors")), strict=False)
    model = to_float64_reference(model, rope_dict(model.config), cfg["head_dim"])
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(7)
    params = {}
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32)).double())
                # Named as PEFT saves them (without the adapter's name, "default").
                params[name.replace(".default", "")] = p
    names = sorted(params)
    out = {f"init.{n}": params[n].detach().float().clone() for n in names}

    opt = torch.optim.AdamW([params[n] for n in names], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    log = {"losses": [], "lrs": [], "grad_norms": []}
    for step in range(STEPS):
        log["lrs"].append(opt.param_groups[0]["lr"])
        step_losses = []
        for k, rows in enumerate(MICRO):
            ids, labels = batch(rows)
            loss = loss_of(pm, ids, labels)
            step_losses.append(loss.item())
            (loss / len(MICRO)).backward()
        log["losses"].append(step_losses)
        if step == 0:
            out.update({f"grad.{n}": params[n].grad.detach().float().clone() for n in names})
        norm = torch.nn.utils.clip_grad_norm_([params[n] for n in names], CLIP)
        log["grad_norms"].append(norm.item())
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    out.update({f"final.{n}": params[n].detach().float().clone() for n in names})

    with tempfile.TemporaryDirectory() as d:
        pm.save_pretrained(d)
        saved = load_file(os.path.join(d, "adapter_model.safetensors"))
        adapter_config = json.load(open(os.path.join(d, "adapter_config.json")))
    log["peft_tensor_names"] = sorted(saved)
    log["peft_config"] = {k: adapter_config[k] for k in ["r", "lora_alpha", "lora_dropout", "bias", "task_type", "peft_type", "fan_in_fan_out"]}
    log["peft_config"]["target_modules"] = sorted(adapter_config["target_modules"])

    merged = pm.merge_and_unload()
    sd = merged.state_dict()
    for n in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.k_proj.weight"]:
        out[f"merged.{n}"] = sd[n].detach().float().clone()
    ids, labels = batch([0, 1, 2, 3])
    with torch.no_grad():
        log["merged_loss_all_rows"] = loss_of(merged, ids, labels).item()
    log["rows"] = ROWS
    log["micro_batches"] = MICRO
    log["setup"] = {"r": R, "alpha": ALPHA, "lr": LR, "weight_decay": WD, "warmup": WARMUP, "steps": STEPS, "clip": CLIP}
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(FIX, "lora.safetensors"), metadata=_meta(script="gen_lora.py"))
    with open(os.path.join(FIX, "lora.json"), "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print("losses", log["losses"], "lrs", log["lrs"], "norms", log["grad_norms"])


if __name__ == "__main__":
    main()
