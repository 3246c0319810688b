//! Applying a selection: every member parameter of a group keeps the channels of the
//! group's kept units, and the model's per-layer shapes follow from the sliced weights.

use crate::error::{Error, Result};
use candle_core::Tensor;
use llmprune_shared::depgraph::{Axis, Group};
use llmprune_shared::{LayerShape, ModelSpec};
use std::collections::HashMap;

/// The weights with each group cut to its `kept` units (one list per group, ascending).
/// Groups that keep every unit are left alone. Each sliced tensor replaces its original in the
/// map as it is made, so that an original held nowhere else is freed at once: slicing needs
/// the weights plus one tensor's copy, not two models.
pub fn slice_weights(mut weights: HashMap<String, Tensor>, groups: &[Group], kept: &[Vec<usize>]) -> Result<HashMap<String, Tensor>> {
    if groups.len() != kept.len() {
        return Err(Error::Invalid(format!("{} groups but {} kept-unit lists", groups.len(), kept.len())));
    }
    for (group, kept) in groups.iter().zip(kept) {
        if let Some(&bad) = kept.iter().find(|&&u| u >= group.units) {
            return Err(Error::Invalid(format!("group `{}` has {} units; cannot keep unit {bad}", group.root, group.units)));
        }
        if kept.len() == group.units {
            continue;
        }
        for m in &group.members {
            let mut channels: Vec<u32> = kept.iter().flat_map(|&u| m.channels[u].iter().map(|&c| c as u32)).collect();
            channels.sort_unstable();
            let w = weights.get(&m.param).ok_or_else(|| Error::Invalid(format!("group `{}`: no parameter `{}`", group.root, m.param)))?;
            let dim = match m.axis {
                Axis::Rows | Axis::Elements => 0,
                Axis::Cols => 1,
            };
            let index = Tensor::from_vec(channels.clone(), channels.len(), w.device())?;
            let sliced = w.index_select(&index, dim)?;
            weights.insert(m.param.clone(), sliced);
        }
    }
    Ok(weights)
}

/// `spec` with the widths the sliced weights have: hidden size from the embedding, and per
/// layer the query heads, KV heads and MLP width from q_proj, k_proj and gate_proj.
pub fn sliced_spec(spec: &ModelSpec, weights: &HashMap<String, Tensor>) -> Result<ModelSpec> {
    let dim = |name: &str, d: usize| -> Result<usize> {
        let w = weights.get(name).ok_or_else(|| Error::Invalid(format!("no parameter `{name}`")))?;
        Ok(w.dim(d)?)
    };
    let mut out = spec.clone();
    out.hidden_size = dim("model.embed_tokens.weight", 1)?;
    for (i, layer) in out.layers.iter_mut().enumerate() {
        *layer = layer_shape(weights, spec.head_dim, i)?;
    }
    out.validate().map_err(|(field, reason)| Error::Invalid(format!("pruned model: {field}: {reason}")))?;
    Ok(out)
}

/// Layer `i`'s query heads, KV heads and MLP width, read from its q_proj, k_proj and
/// gate_proj in `weights`.
pub fn layer_shape(weights: &HashMap<String, Tensor>, head_dim: usize, i: usize) -> Result<LayerShape> {
    let dim = |name: String, d: usize| -> Result<usize> { Ok(weights.get(&name).ok_or_else(|| Error::Invalid(format!("no parameter `{name}`")))?.dim(d)?) };
    let p = format!("model.layers.{i}");
    Ok(LayerShape {
        n_heads: dim(format!("{p}.self_attn.q_proj.weight"), 0)? / head_dim,
        n_kv_heads: dim(format!("{p}.self_attn.k_proj.weight"), 0)? / head_dim,
        intermediate_size: dim(format!("{p}.mlp.gate_proj.weight"), 0)?,
    })
}

/// The model without the decoder layers `removed` (indices into `spec.layers`): their weights
/// dropped and the later layers renumbered. The residual stream simply skips them.
pub fn remove_layers(spec: &ModelSpec, weights: &HashMap<String, Tensor>, removed: &[usize]) -> Result<(ModelSpec, HashMap<String, Tensor>)> {
    let n = spec.n_layers();
    let mut gone = vec![false; n];
    for &i in removed {
        if i >= n || gone[i] {
            return Err(Error::Invalid(format!("cannot remove layer {i} of a model with {n} layers (or twice)")));
        }
        gone[i] = true;
    }
    if removed.len() == n {
        return Err(Error::Invalid(format!("removing all {n} layers leaves no model")));
    }
    let new_index: Vec<Option<usize>> = gone
        .iter()
        .scan(0usize, |next, &g| {
            Some(if g {
                None
            } else {
                *next += 1;
                Some(*next - 1)
            })
        })
        .collect();
    let mut out = HashMap::with_capacity(weights.len());
    for (name, w) in weights {
        let renamed = match name.strip_prefix("model.layers.").and_then(|rest| rest.split_once('.')) {
            Some((i, tail)) => {
                let i: usize = i.parse().map_err(|_| Error::Invalid(format!("weight `{name}`: bad layer index")))?;
                match new_index.get(i).copied().flatten() {
                    Some(j) => format!("model.layers.{j}.{tail}"),
                    None if i < n => continue,
                    None => return Err(Error::Invalid(format!("weight `{name}` is beyond the model's {n} layers"))),
                }
            }
            None => name.clone(),
        };
        out.insert(renamed, w.clone());
    }
    let mut spec = spec.clone();
    spec.layers = spec.layers.iter().zip(&gone).filter(|(_, &g)| !g).map(|(l, _)| *l).collect();
    Ok((spec, out))
}
