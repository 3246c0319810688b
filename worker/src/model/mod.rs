//! A LLaMA-family decoder with per-layer shapes, in two execution modes.
//!
//! * [`Exec::Inference`]: candle's fused kernels; no graph is recorded.
//! * [`Exec::Differentiable`]: the crate's own fused ops with backward passes
//!   ([`crate::ops`]), so every weight turned into a `Var` receives its gradient.
//!
//! Both compute the same numbers; the tests hold them to each other and to transformers.

mod kv_cache;
mod layer;
mod rope_tables;

pub use kv_cache::{KvCache, Past};
pub use layer::{Attention, AttentionPath, DecoderLayer, Mlp, Packing};
pub use rope_tables::{inverse_frequencies, RopeTables};

use crate::error::{Error, Result};
use crate::loader::WeightSource;
use crate::lora::Projection;
use crate::ops::{self, IGNORE_TARGET};
use candle_core::{DType, Device, Tensor, Var};
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    Inference,
    Differentiable,
}

/// What part of the model to load: a contiguous range of layers, and the ends if wanted.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub layers: Range<usize>,
    pub embeddings: bool,
    pub head: bool,
    /// The weights' dtype in memory, whatever the file stores. [`Exec::Differentiable`]
    /// needs f32 on the CPU; f16/bf16 serve inference.
    pub dtype: DType,
}

impl LoadOptions {
    /// The whole model in f32.
    pub fn full(spec: &ModelSpec) -> Self {
        Self { layers: 0..spec.n_layers(), embeddings: true, head: true, dtype: DType::F32 }
    }
}

pub struct LlamaModel {
    pub spec: ModelSpec,
    /// `[V, H]`; also the output head when embeddings are tied.
    pub embed: Option<Tensor>,
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm, present with the head.
    pub norm: Option<Tensor>,
    /// `[V, H]`, only for untied heads.
    pub lm_head: Option<Tensor>,
    rope: RopeTables,
    device: Device,
    dtype: DType,
}

impl LlamaModel {
    /// Loads the parts `opts` asks for, checking every tensor's shape against `spec`.
    pub fn load(spec: ModelSpec, src: &dyn WeightSource, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let n = spec.n_layers();
        if opts.layers.start > opts.layers.end || opts.layers.end > n {
            return Err(Error::Invalid(format!("layer range {}..{} is outside the model's {n} layers", opts.layers.start, opts.layers.end)));
        }
        let (v, h) = (spec.vocab_size, spec.hidden_size);
        let tied_head = opts.head && spec.tie_word_embeddings;
        let embed = if opts.embeddings || tied_head { Some(load_checked(src, "model.embed_tokens.weight", &[v, h], device, opts.dtype)?) } else { None };
        let layers = opts.layers.clone().map(|i| DecoderLayer::load(&spec, i, src, device, opts.dtype)).collect::<Result<Vec<_>>>()?;
        let (norm, lm_head) = if opts.head {
            let norm = load_checked(src, "model.norm.weight", &[h], device, opts.dtype)?;
            let head = if spec.tie_word_embeddings { None } else { Some(load_checked(src, "lm_head.weight", &[v, h], device, opts.dtype)?) };
            (Some(norm), head)
        } else {
            (None, None)
        };
        let rope = RopeTables::new(&spec, spec.max_position_embeddings.max(1), device)?;
        Ok(Self { spec, embed, layers, norm, lm_head, rope, device: device.clone(), dtype: opts.dtype })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the weights, and so the hidden states, are held in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every weight this model holds, with its Hugging Face name.
    pub fn named_weights(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        if let Some(e) = &self.embed {
            out.push(("model.embed_tokens.weight".to_string(), e));
        }
        for l in &self.layers {
            out.extend(l.named_weights());
        }
        if let Some(n) = &self.norm {
            out.push(("model.norm.weight".to_string(), n));
        }
        if let Some(hd) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), hd));
        }
        out
    }

    /// Every weight by Hugging Face name, detached from any gradient graph (tensors share
    /// their storage with the model's).
    pub fn weights_by_name(&self) -> HashMap<String, Tensor> {
        self.named_weights().into_iter().map(|(n, w)| (n, w.detach())).collect()
    }

    /// Drops every weight the model holds (embeddings, layers, norm, head), so that tensors
    /// handed out by [`Self::weights_by_name`] are held there alone and can be freed one by
    /// one. The model cannot run afterwards: it has to be replaced by one loaded again.
    pub fn release_weights(&mut self) {
        self.embed = None;
        self.layers.clear();
        self.norm = None;
        self.lm_head = None;
    }

    fn named_weights_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = Vec::new();
        if let Some(e) = &mut self.embed {
            out.push(("model.embed_tokens.weight".to_string(), e));
        }
        for l in &mut self.layers {
            out.extend(l.named_weights_mut());
        }
        if let Some(n) = &mut self.norm {
            out.push(("model.norm.weight".to_string(), n));
        }
        if let Some(hd) = &mut self.lm_head {
            out.push(("lm_head.weight".to_string(), hd));
        }
        out
    }

    /// Turns the weights `select` accepts into variables (gradients are then recorded for
    /// them in [`Exec::Differentiable`]) and returns them by name.
    pub fn make_trainable(&mut self, select: impl Fn(&str) -> bool) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (name, w) in self.named_weights_mut() {
            if select(&name) {
                let var = Var::from_tensor(w)?;
                *w = var.as_tensor().clone();
                vars.push((name, var));
            }
        }
        Ok(vars)
    }

    /// Token embeddings `[B, T, H]` of `ids` (`[B, T]`, u32).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let embed = self.embed.as_ref().ok_or_else(|| Error::Invalid("this shard holds no embeddings".into()))?;
        let (b, t) = ids.dims2()?;
        Ok(embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, self.spec.hidden_size))?)
    }

    /// Runs this model's layers over hidden states `[B, T, H]`.
    pub fn forward_layers(&self, x: Tensor, exec: Exec) -> Result<Tensor> {
        self.forward_layers_tapped(x, exec, &mut |_, _, _| Ok(()))
    }

    /// [`LlamaModel::forward_layers`], handing `tap` each layer's index (in the model) and the
    /// inputs of its o_proj and down_proj ([`DecoderLayer::forward_tapped`]).
    pub fn forward_layers_tapped(&self, mut x: Tensor, exec: Exec, tap: &mut dyn FnMut(usize, Projection, &Tensor) -> Result<()>) -> Result<Tensor> {
        let (cos, sin) = self.rope_tables(&x)?;
        for layer in &self.layers {
            x = layer.forward_tapped(&x, &cos, &sin, self.spec.rms_norm_eps, exec, &mut |p, input| tap(layer.index, p, input))?;
        }
        Ok(x)
    }

    /// The layer at `position` among this model's layers alone over `x` `[B, T, H]`, as
    /// [`LlamaModel::forward_layers_tapped`] runs it (the same operations, so the same numbers):
    /// for passes that run every batch through one layer before the next.
    pub fn forward_layer_tapped(
        &self,
        position: usize,
        x: &Tensor,
        exec: Exec,
        tap: &mut dyn FnMut(usize, Projection, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let layer =
            self.layers.get(position).ok_or_else(|| Error::Invalid(format!("this shard holds {} layers, not a layer at {position}", self.layers.len())))?;
        let (cos, sin) = self.rope_tables(x)?;
        layer.forward_tapped(x, &cos, &sin, self.spec.rms_norm_eps, exec, &mut |p, input| tap(layer.index, p, input))
    }

    /// The rotary tables for hidden states `x` `[B, T, H]`, in their dtype, once `T` is checked
    /// against the positions and the sliding window the model supports.
    fn rope_tables(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = x.dim(1)?;
        if t > self.rope.max_positions() {
            return Err(Error::Invalid(format!("sequence of {t} tokens is longer than max_position_embeddings {}", self.rope.max_positions())));
        }
        if let Some(window) = self.spec.sliding_window.filter(|&w| t > w) {
            return Err(Error::Invalid(format!("sequence of {t} tokens is longer than the model's sliding window of {window}, which llmprune does not apply")));
        }
        let dtype = x.dtype();
        Ok((self.rope.cos.narrow(0, 0, t)?.to_dtype(dtype)?, self.rope.sin.narrow(0, 0, t)?.to_dtype(dtype)?))
    }

    /// The head's weight `[V, H]`.
    pub fn head_weight(&self) -> Result<&Tensor> {
        let w = if self.spec.tie_word_embeddings { self.embed.as_ref() } else { self.lm_head.as_ref() };
        w.ok_or_else(|| Error::Invalid("this shard holds no output head".into()))
    }

    /// Final norm of hidden states, flattened to `[B·T, H]`.
    fn final_norm(&self, x: &Tensor, exec: Exec) -> Result<Tensor> {
        let norm = self.norm.as_ref().ok_or_else(|| Error::Invalid("this shard holds no final norm".into()))?;
        let (b, t, h) = x.dims3()?;
        let y = layer::rms_norm(x, norm, self.spec.rms_norm_eps, exec)?;
        Ok(y.reshape((b * t, h))?)
    }

    /// Logits `[B, T, V]` for every position (materialised: for small inputs and tests).
    pub fn logits(&self, ids: &Tensor, exec: Exec) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.forward_layers(self.embed_tokens(ids)?, exec)?;
        let y = self.final_norm(&x, exec)?;
        Ok(y.matmul(&self.head_weight()?.t()?)?.reshape((b, t, self.spec.vocab_size))?)
    }

    /// Logits `[N, V]` of hidden states `[1, N, H]` (a few positions: generation).
    pub fn logits_from_hidden(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.final_norm(x, Exec::Inference)?;
        Ok(y.matmul(&self.head_weight()?.t()?)?)
    }

    /// Negative log-likelihood `[B, T−1]` of each next token under the causal LM.
    pub fn next_token_nll(&self, ids: &Tensor, exec: Exec) -> Result<Tensor> {
        let x = self.forward_layers(self.embed_tokens(ids)?, exec)?;
        self.next_token_nll_from_hidden(&x, ids, exec)
    }

    /// [`LlamaModel::next_token_nll`] from the last layer's hidden states `x` of `ids`.
    pub fn next_token_nll_from_hidden(&self, x: &Tensor, ids: &Tensor, exec: Exec) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t < 2 {
            return Err(Error::Invalid(format!("need at least 2 tokens per row for a loss, got {t}")));
        }
        self.hidden_to_nll(x, &shifted_targets(ids)?, exec)?.reshape((b, t))?.narrow(1, 0, t - 1).map_err(Error::from)
    }

    /// Per-position NLL `[B·T]` of `targets` (one per position; [`IGNORE_TARGET`] to skip)
    /// from the last layer's hidden states, without materialising the logits.
    pub fn hidden_to_nll(&self, x: &Tensor, targets: &[u32], exec: Exec) -> Result<Tensor> {
        let y = self.final_norm(x, exec)?;
        Ok(ops::lm_head_nll(&y, self.head_weight()?, targets)?)
    }

    /// Hugging Face's causal-LM loss: mean NLL over all predicted tokens.
    pub fn loss(&self, ids: &Tensor, exec: Exec) -> Result<Tensor> {
        let x = self.forward_layers(self.embed_tokens(ids)?, exec)?;
        self.loss_from_hidden(&x, ids, exec)
    }

    /// [`LlamaModel::loss`] from the last layer's hidden states `x` of `ids`: what the last
    /// stage of a pipeline computes, by the same operations.
    pub fn loss_from_hidden(&self, x: &Tensor, ids: &Tensor, exec: Exec) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t < 2 {
            return Err(Error::Invalid(format!("need at least 2 tokens per row for a loss, got {t}")));
        }
        let nll = self.hidden_to_nll(x, &shifted_targets(ids)?, exec)?.reshape((b, t))?.narrow(1, 0, t - 1)?;
        Ok(nll.mean_all()?)
    }
}

/// Targets for every position: the next token, and nothing after the last.
fn shifted_targets(ids: &Tensor) -> Result<Vec<u32>> {
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows.iter().flat_map(|r| r.iter().skip(1).copied().chain(std::iter::once(IGNORE_TARGET))).collect())
}

/// The candle dtype weights of `dtype` are held in.
pub fn candle_dtype(dtype: llmprune_shared::dtype::WeightDtype) -> DType {
    match dtype {
        llmprune_shared::dtype::WeightDtype::F32 => DType::F32,
        llmprune_shared::dtype::WeightDtype::F16 => DType::F16,
        llmprune_shared::dtype::WeightDtype::Bf16 => DType::BF16,
    }
}

pub(crate) fn load_checked(src: &dyn WeightSource, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
    let t = src.load(name, device)?;
    if t.dims() != shape {
        return Err(Error::Tensor {
            path: src.path().to_path_buf(),
            name: name.to_string(),
            reason: format!("has shape {:?}, the config implies {:?}", t.dims(), shape),
        });
    }
    Ok(t.to_dtype(dtype)?)
}
