//! Low-rank adapters (LoRA) on a model's linear projections, as PEFT builds them: for a
//! projection `y = x Wᵀ`, the adapted layer computes `y + (α/r)·(dropout(x) Aᵀ) Bᵀ` with
//! `A` `[r, in]` (Kaiming-uniform, a = √5) and `B` `[out, r]` (zeros), so training starts from
//! the base model. Base weights stay plain tensors (never given gradients); only `A` and `B`
//! are variables. Each projection takes its own layer's widths, so pruned models work.

mod dropout;
pub mod peft;

use crate::error::{Error, Result};
use crate::model::LlamaModel;
use crate::ops::{lora_linear, Dropout};
use candle_core::{DType, Tensor, Var};
use llmprune_shared::jobs::JobError;
use llmprune_shared::PyRandom;
use std::cell::Cell;

pub use dropout::dropout_mask;

/// The seven linear projections of a LLaMA-family layer, by their Hugging Face names.
/// The projections adapters go on, named once in the shared crate's job settings.
pub use llmprune_shared::jobs::Projection;

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f32,
    pub targets: Vec<Projection>,
}

impl LoraConfig {
    /// `α / r`, the factor on the adapter's output.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(JobError::new("lora_r", "must be at least 1").into());
        }
        if self.alpha.is_nan() || self.alpha <= 0.0 {
            return Err(JobError::at("lora_alpha", self.alpha, "must be positive").into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(JobError::at("lora_dropout", self.dropout, "must be in [0, 1)").into());
        }
        if self.targets.is_empty() {
            return Err(JobError::new("lora_targets", "names no projection").into());
        }
        Ok(())
    }
}

/// One projection's adapter.
pub struct Adapter {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
}

/// A layer's adapters, consulted by its projections.
pub struct LayerAdapters {
    by_projection: [Option<Adapter>; 7],
    scale: f64,
    dropout: f32,
    /// Set while training: the key of the current micro-batch's dropout masks (`None`: no
    /// dropout, as in evaluation).
    dropout_key: Cell<Option<u64>>,
}

impl LayerAdapters {
    pub fn get(&self, p: Projection) -> Option<&Adapter> {
        self.by_projection[p.index()].as_ref()
    }

    /// `x Wᵀ` plus the adapter's term for `x` `[N, in]` of projection `p` in `layer`, if it
    /// has an adapter (`None`: the caller computes the plain projection).
    pub fn project(&self, layer: usize, p: Projection, x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
        let Some(ad) = self.get(p) else { return Ok(None) };
        let dropout = self.dropout_key.get().map(|key| Dropout { key, layer, projection: p, p: self.dropout });
        Ok(Some(lora_linear(x, w, ad.a.as_tensor(), ad.b.as_tensor(), self.scale, dropout)?))
    }
}

/// PEFT's name of an adapter matrix (`a`: lora_A, else lora_B).
pub fn peft_name(layer: usize, p: Projection, a: bool) -> String {
    format!("base_model.model.model.layers.{layer}.{}.lora_{}.weight", p.module(), if a { "A" } else { "B" })
}

/// Adds fresh adapters to `model` as PEFT initialises them (A Kaiming-uniform with a = √5,
/// i.e. U(−1/√in, 1/√in), from a seeded generator; B zeros) and returns the variables by
/// PEFT name, in layer then projection order. Each layer draws from its own generator, so a
/// pipeline stage holding some of the layers gets the values the whole model gets.
pub fn attach(model: &mut LlamaModel, config: &LoraConfig, seed: u64) -> Result<Vec<(String, Var)>> {
    let device = model.device().clone();
    let mut rng = (usize::MAX, PyRandom::new(seed));
    attach_with(model, config, |layer, _, out, inp| {
        if rng.0 != layer {
            rng = (layer, PyRandom::new(seed ^ ((layer as u64 + 1) << 40)));
        }
        let rng = &mut rng.1;
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..config.r * inp).map(|_| ((2.0 * rng.random() - 1.0) * bound) as f32).collect();
        Ok((Tensor::from_vec(a, (config.r, inp), &device)?, Tensor::zeros((out, config.r), DType::F32, &device)?))
    })
}

/// Adds adapters with the given matrices (by PEFT name: a saved adapter or a checkpoint),
/// checking that every target has both, in the shapes its layer needs.
pub fn attach_from(model: &mut LlamaModel, config: &LoraConfig, tensors: &std::collections::HashMap<String, Tensor>) -> Result<Vec<(String, Var)>> {
    let device = model.device().clone();
    attach_with(model, config, |layer, p, out, inp| {
        let get = |a: bool, shape: (usize, usize)| -> Result<Tensor> {
            let name = peft_name(layer, p, a);
            let t = tensors.get(&name).ok_or_else(|| Error::Invalid(format!("the adapter has no `{name}`")))?;
            if t.dims2()? != shape {
                return Err(Error::Invalid(format!("adapter `{name}` has shape {:?}, the model needs {shape:?}", t.dims())));
            }
            Ok(t.to_dtype(DType::F32)?.to_device(&device)?)
        };
        Ok((get(true, (config.r, inp))?, get(false, (out, config.r))?))
    })
}

/// Adds an adapter to every target projection of every layer, its `(A, B)` from
/// `init(layer, projection, out, in)`.
fn attach_with(
    model: &mut LlamaModel,
    config: &LoraConfig,
    mut init: impl FnMut(usize, Projection, usize, usize) -> Result<(Tensor, Tensor)>,
) -> Result<Vec<(String, Var)>> {
    config.validate()?;
    let mut vars = Vec::new();
    for layer in &mut model.layers {
        if layer.lora.is_some() {
            return Err(Error::Invalid(format!("layer {} already has adapters", layer.index)));
        }
        let mut by_projection: [Option<Adapter>; 7] = Default::default();
        for &p in &config.targets {
            let (out, inp) = layer.projection_weight(p).dims2()?;
            let (a, b) = init(layer.index, p, out, inp)?;
            let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
            vars.push((peft_name(layer.index, p, true), a.clone()));
            vars.push((peft_name(layer.index, p, false), b.clone()));
            by_projection[p.index()] = Some(Adapter { a, b });
        }
        layer.lora = Some(LayerAdapters { by_projection, scale: config.scale(), dropout: config.dropout, dropout_key: Cell::new(None) });
    }
    Ok(vars)
}

/// Sets the key of the next forward pass's dropout masks (`None` turns dropout off).
pub fn set_dropout_key(model: &LlamaModel, key: Option<u64>) {
    for layer in &model.layers {
        if let Some(l) = &layer.lora {
            l.dropout_key.set(key);
        }
    }
}

/// Folds every adapter into its base weight (`W += (α/r)·B·A`, PEFT's merge) and removes the
/// adapters: the model is then a plain model of the same shapes.
pub fn merge(model: &mut LlamaModel) -> Result<()> {
    for layer in &mut model.layers {
        let Some(lora) = layer.lora.take() else { continue };
        for p in Projection::ALL {
            if let Some(ad) = lora.get(p) {
                let w = layer.projection_weight_mut(p);
                let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * lora.scale)?;
                *w = (&*w + delta.to_dtype(w.dtype())?)?;
            }
        }
    }
    Ok(())
}
