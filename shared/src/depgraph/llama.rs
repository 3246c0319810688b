//! The channel graph of a LLaMA-family decoder (per-layer shapes, GQA, q/k/v/o and MLP
//! biases, tied head), optionally with fused projections as Phi-3 stores them.

use super::{Axis, Graph, Group, GroupMember};
use crate::ModelSpec;

/// How the projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// `q_proj`, `k_proj`, `v_proj`, `gate_proj`, `up_proj` (LLaMA, Mistral, Qwen2).
    Separate,
    /// `qkv_proj` rows `[q; k; v]` and `gate_up_proj` rows `[gate; up]` (Phi-3).
    Fused,
}

/// The graph of `spec`'s operations, parameters under Hugging Face names.
pub fn llama_graph(spec: &ModelSpec, fusion: Fusion) -> Graph {
    let (h, d) = (spec.hidden_size, spec.head_dim);
    let mut g = Graph::default();
    // The residual stream entering layer 0 is the embedding's output.
    let mut residual = g.space("embed_tokens.out", h, 1);
    g.attach("model.embed_tokens.weight", Axis::Cols, residual, 0);
    for (i, shape) in spec.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let (nh, nkv, inter) = (shape.n_heads, shape.n_kv_heads, shape.intermediate_size);

        // Pre-attention RMSNorm: element-wise on the residual stream.
        let attn_in = g.space(format!("layers.{i}.input_layernorm.out"), h, 1);
        g.elementwise(&[residual, attn_in]);
        g.attach(format!("{p}.input_layernorm.weight"), Axis::Elements, attn_in, 0);

        // Projections to heads; RoPE and the head reshape keep a head's channels together.
        let q = g.space(format!("layers.{i}.q"), nh, d);
        let k = g.space(format!("layers.{i}.k"), nkv, d);
        let v = g.space(format!("layers.{i}.v"), nkv, d);
        match fusion {
            Fusion::Separate => {
                for (name, space) in [("q", q), ("k", k), ("v", v)] {
                    g.attach(format!("{p}.self_attn.{name}_proj.weight"), Axis::Rows, space, 0);
                    g.attach(format!("{p}.self_attn.{name}_proj.weight"), Axis::Cols, attn_in, 0);
                    if spec.attention_bias {
                        g.attach(format!("{p}.self_attn.{name}_proj.bias"), Axis::Elements, space, 0);
                    }
                }
            }
            Fusion::Fused => {
                let w = format!("{p}.self_attn.qkv_proj.weight");
                g.attach(&w, Axis::Rows, q, 0);
                g.attach(&w, Axis::Rows, k, nh * d);
                g.attach(&w, Axis::Rows, v, (nh + nkv) * d);
                g.attach(&w, Axis::Cols, attn_in, 0);
                if spec.attention_bias {
                    let b = format!("{p}.self_attn.qkv_proj.bias");
                    g.attach(&b, Axis::Elements, q, 0);
                    g.attach(&b, Axis::Elements, k, nh * d);
                    g.attach(&b, Axis::Elements, v, (nh + nkv) * d);
                }
            }
        }
        // Attention: KV head j's keys and values serve query heads j·n_rep.. (repeat_kv);
        // output head t is computed from query head t alone among the queries, and from the
        // keys and values of its KV head.
        let heads_out = g.space(format!("layers.{i}.attn.out"), nh, d);
        g.expand(k, q, shape.n_rep());
        g.elementwise(&[k, v]);
        g.elementwise(&[q, heads_out]);
        g.attach(format!("{p}.self_attn.o_proj.weight"), Axis::Cols, heads_out, 0);

        // o_proj's output is added to the residual stream.
        let attn_proj = g.space(format!("layers.{i}.o_proj.out"), h, 1);
        g.attach(format!("{p}.self_attn.o_proj.weight"), Axis::Rows, attn_proj, 0);
        if spec.o_bias {
            g.attach(format!("{p}.self_attn.o_proj.bias"), Axis::Elements, attn_proj, 0);
        }
        let after_attn = g.space(format!("layers.{i}.attn_residual"), h, 1);
        g.elementwise(&[residual, attn_proj, after_attn]);

        // MLP: down(silu(gate(x)) ⊙ up(x)).
        let mlp_in = g.space(format!("layers.{i}.post_attention_layernorm.out"), h, 1);
        g.elementwise(&[after_attn, mlp_in]);
        g.attach(format!("{p}.post_attention_layernorm.weight"), Axis::Elements, mlp_in, 0);
        let gate = g.space(format!("layers.{i}.gate"), inter, 1);
        let up = g.space(format!("layers.{i}.up"), inter, 1);
        match fusion {
            Fusion::Separate => {
                for (name, space) in [("gate", gate), ("up", up)] {
                    g.attach(format!("{p}.mlp.{name}_proj.weight"), Axis::Rows, space, 0);
                    g.attach(format!("{p}.mlp.{name}_proj.weight"), Axis::Cols, mlp_in, 0);
                    if spec.mlp_bias {
                        g.attach(format!("{p}.mlp.{name}_proj.bias"), Axis::Elements, space, 0);
                    }
                }
            }
            Fusion::Fused => {
                let w = format!("{p}.mlp.gate_up_proj.weight");
                g.attach(&w, Axis::Rows, gate, 0);
                g.attach(&w, Axis::Rows, up, inter);
                g.attach(&w, Axis::Cols, mlp_in, 0);
            }
        }
        let act = g.space(format!("layers.{i}.act"), inter, 1);
        g.elementwise(&[gate, up, act]);
        g.attach(format!("{p}.mlp.down_proj.weight"), Axis::Cols, act, 0);
        let mlp_proj = g.space(format!("layers.{i}.down_proj.out"), h, 1);
        g.attach(format!("{p}.mlp.down_proj.weight"), Axis::Rows, mlp_proj, 0);
        if spec.mlp_bias {
            g.attach(format!("{p}.mlp.down_proj.bias"), Axis::Elements, mlp_proj, 0);
        }
        let next = g.space(format!("layers.{i}.out"), h, 1);
        g.elementwise(&[after_attn, mlp_proj, next]);
        residual = next;
    }
    let normed = g.space("norm.out", h, 1);
    g.elementwise(&[residual, normed]);
    g.attach("model.norm.weight", Axis::Elements, normed, 0);
    let head = if spec.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    g.attach(head, Axis::Cols, normed, 0);
    g
}

/// What a group of [`llama_graph`] prunes, read from its root's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// Attention heads of a layer (KV heads with their query heads under GQA).
    Heads(usize),
    /// MLP neurons of a layer.
    Neurons(usize),
    /// Hidden channels across the whole network.
    Hidden,
    /// Query heads of a GQA layer whose KV heads are kept ([`query_head_group`]).
    QueryHeads(usize),
}

/// Under GQA, keeping every KV head: the query heads of the head group `group` (rooted at the
/// KV heads, `n_rep` query heads each) as units of their own. Its members are the parameters
/// that the group ties to each KV head `n_rep` heads wide (q rows and bias, o_proj columns),
/// split head by head; k and v stay whole. Removing the same number of query heads under
/// every KV head keeps `repeat_kv`'s uniform shape. `None` when the layer is not GQA.
pub fn query_head_group(group: &Group, n_rep: usize) -> Option<Group> {
    let layer = match structure(&group.root)? {
        Structure::Heads(i) if n_rep > 1 => i,
        _ => return None,
    };
    let width = group.unit_width;
    let members: Vec<GroupMember> = group
        .members
        .iter()
        .filter(|m| m.channels.iter().all(|c| c.len() == n_rep * width))
        .map(|m| GroupMember {
            param: m.param.clone(),
            axis: m.axis,
            channels: m.channels.iter().flat_map(|c| c.chunks(width).map(<[usize]>::to_vec)).collect(),
        })
        .collect();
    Some(Group {
        root: format!("layers.{layer}.q_heads"),
        units: group.units * n_rep,
        unit_width: width,
        spaces: vec![format!("layers.{layer}.q"), format!("layers.{layer}.attn.out")],
        members,
    })
}

/// The structure a group of [`llama_graph`] prunes, from its root's name; `None` for a
/// group this builder does not make.
pub fn structure(root: &str) -> Option<Structure> {
    if root == "embed_tokens.out" {
        return Some(Structure::Hidden);
    }
    let rest = root.strip_prefix("layers.")?;
    let (layer, space) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    match space {
        "q" | "k" => Some(Structure::Heads(layer)),
        "q_heads" => Some(Structure::QueryHeads(layer)),
        "gate" => Some(Structure::Neurons(layer)),
        _ => None,
    }
}
