//! Where a family's tensor layout meets llmprune's canonical one (LLaMA's names, separate
//! gate and up, rotate-half rotary channels): [`CanonicalWeights`] presents any family's
//! file in the canonical layout, and [`family_tensors`] turns canonical tensors back into the
//! family's for every file llmprune writes. The differences come from the family descriptor
//! (`llmprune_shared::family`); nothing else in the worker knows which family it runs.

use super::WeightSource;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use llmprune_shared::family::{inverse_order, rotary_row_order, RotaryStyle};
use llmprune_shared::layout::layer_of_param;
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::Path;

/// A family's weights under canonical names and layouts.
pub struct CanonicalWeights<S> {
    inner: S,
    spec: ModelSpec,
}

impl<S: WeightSource> CanonicalWeights<S> {
    pub fn new(inner: S, spec: &ModelSpec) -> Self {
        Self { inner, spec: spec.clone() }
    }
}

/// `model.layers.{i}.mlp.{gate|up}_proj.weight` → (the fused tensor's name, layer, whether up).
fn gate_or_up(name: &str) -> Option<(String, usize, bool)> {
    let i = layer_of_param(name)?;
    let prefix = format!("model.layers.{i}.mlp.");
    let which = name.strip_prefix(&prefix)?;
    let up = match which {
        "gate_proj.weight" => false,
        "up_proj.weight" => true,
        _ => return None,
    };
    Some((format!("{prefix}gate_up_proj.weight"), i, up))
}

/// For q and k weights, biases and norms of layer `i`: how many heads the rows hold.
fn rotary_rows(spec: &ModelSpec, name: &str) -> Option<usize> {
    let i = layer_of_param(name)?;
    let l = spec.layers.get(i)?;
    let tail = name.strip_prefix(&format!("model.layers.{i}.self_attn."))?;
    match tail {
        "q_proj.weight" | "q_proj.bias" => Some(l.n_heads),
        "k_proj.weight" | "k_proj.bias" => Some(l.n_kv_heads),
        "q_norm.weight" | "k_norm.weight" => Some(1),
        _ => None,
    }
}

fn reorder_rows(t: &Tensor, order: &[usize]) -> Result<Tensor> {
    let index = Tensor::from_vec(order.iter().map(|&r| r as u32).collect::<Vec<_>>(), order.len(), t.device())?;
    Ok(t.index_select(&index, 0)?)
}

impl<S: WeightSource> WeightSource for CanonicalWeights<S> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let family = self.spec.architecture.family();
        if family.fused_gate_up {
            if let Some((fused, i, up)) = gate_or_up(name) {
                let width = self.spec.layers[i].intermediate_size;
                let t = self.inner.load(&fused, device)?;
                if t.dim(0)? != 2 * width {
                    return Err(Error::Tensor { path: self.path().into(), name: fused, reason: format!("{} rows, expected 2 × {width}", t.dim(0)?) });
                }
                return Ok(t.narrow(0, if up { width } else { 0 }, width)?.contiguous()?);
            }
        }
        if family.rotary == RotaryStyle::Interleaved {
            if let Some(heads) = rotary_rows(&self.spec, name) {
                let t = self.inner.load(name, device)?;
                return reorder_rows(&t, &rotary_row_order(family.rotary, heads, self.spec.head_dim, self.spec.rotary_dim));
            }
        }
        self.inner.load(name, device)
    }

    fn names(&self) -> Vec<String> {
        let fused = self.spec.architecture.family().fused_gate_up;
        let mut names: Vec<String> = self
            .inner
            .names()
            .into_iter()
            .flat_map(|n| match n.strip_suffix("gate_up_proj.weight") {
                Some(prefix) if fused => vec![format!("{prefix}gate_proj.weight"), format!("{prefix}up_proj.weight")],
                _ => vec![n],
            })
            .collect();
        names.sort();
        names
    }
}

/// Canonical tensors (any subset of a model's, e.g. one stage's) in the family's names and
/// layouts, as its files store them.
pub fn family_tensors(spec: &ModelSpec, weights: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let family = spec.architecture.family();
    let mut out = HashMap::with_capacity(weights.len());
    for (name, t) in weights {
        if family.fused_gate_up {
            if let Some((fused, _, up)) = gate_or_up(name) {
                if up {
                    continue; // joined with its gate
                }
                let up_name = name.replace("gate_proj", "up_proj");
                let up = weights.get(&up_name).ok_or_else(|| Error::Invalid(format!("`{name}` without `{up_name}`: cannot write `{fused}`")))?;
                out.insert(fused, Tensor::cat(&[t, up], 0)?);
                continue;
            }
        }
        if family.rotary == RotaryStyle::Interleaved {
            if let Some(heads) = rotary_rows(spec, name) {
                let order = rotary_row_order(family.rotary, heads, spec.head_dim, spec.rotary_dim);
                out.insert(name.clone(), reorder_rows(t, &inverse_order(&order))?);
                continue;
            }
        }
        out.insert(name.clone(), t.clone());
    }
    Ok(out)
}
