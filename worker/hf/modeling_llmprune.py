"""LLaMA with per-layer widths, as `llmprune prune` writes a model whose layers were pruned
unevenly (LLM-Pruner's setting: only layers 3..27 pruned). Stock `LlamaForCausalLM` has one
width for every layer and would re-initialise the pruned layers at random under
`ignore_mismatched_sizes=True`; this config's `model_type` (`llmprune_llama`) makes transformers
refuse the model unless it is loaded with this file:

    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)

Each layer takes its widths from `num_attention_heads_per_layer`,
`num_key_value_heads_per_layer` and `intermediate_size_per_layer`; everything else is
transformers' LLaMA (tested against llmprune's logits).
"""

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


class LlmpruneLlamaConfig(LlamaConfig):
    model_type = "llmprune_llama"


class NoAttention(nn.Module):
    """A layer whose heads were all pruned: its attention adds nothing to the residual but
    o_proj's bias, where it has one (bias compensation folds the heads' mean output into it)."""

    def __init__(self, hidden, bias):
        super().__init__()
        self.o_proj = nn.Linear(0, hidden, bias=bias)

    def forward(self, hidden_states, *args, **kwargs):
        return self.o_proj(hidden_states[..., :0]), None


class LlmpruneLlamaForCausalLM(LlamaForCausalLM):
    config_class = LlmpruneLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        hidden = config.hidden_size
        head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        bias, mlp_bias = getattr(config, "attention_bias", False), getattr(config, "mlp_bias", False)
        for i, layer in enumerate(self.model.layers):
            heads = config.num_attention_heads_per_layer[i]
            kv_heads = config.num_key_value_heads_per_layer[i]
            width = config.intermediate_size_per_layer[i]
            if heads == 0:
                layer.self_attn = NoAttention(hidden, bias)
            else:
                attn = layer.self_attn
                attn.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias)
                attn.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
                attn.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=bias)
                attn.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
                attn.num_key_value_groups = heads // kv_heads
            mlp = layer.mlp
            mlp.gate_proj = nn.Linear(hidden, width, bias=mlp_bias)
            mlp.up_proj = nn.Linear(hidden, width, bias=mlp_bias)
            mlp.down_proj = nn.Linear(width, hidden, bias=mlp_bias)
        self.post_init()
