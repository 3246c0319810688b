//! Inference with cached keys and values: a batch of rows continues each from its own number
//! of earlier positions. Serves prefix reuse (the shared context of a question's choices is
//! run once, each choice continues from it) and generation (one token at a time).

use super::layer::Packing;
use super::LlamaModel;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Keys and values of earlier positions, per layer `[B, n_kv, P, d]`, and how many of each
/// row's `P` positions are real (the rest is padding, never attended to).
#[derive(Clone)]
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
    pub lens: Vec<usize>,
}

impl KvCache {
    /// Cached positions per row, padding included.
    pub fn positions(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }
}

/// The cached context each new row continues: row `b` continues cache row `rows[b]` (rows
/// may repeat: the choices of one question share its context).
#[derive(Clone, Copy)]
pub struct Past<'a> {
    pub cache: &'a KvCache,
    pub rows: &'a [usize],
}

impl Past<'_> {
    /// Layer `i`'s keys and values for the new rows, selected when they are not the cache's
    /// own rows in order (a copy of one layer at a time).
    fn layer(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = &self.cache.layers[i];
        if self.rows.len() == self.cache.lens.len() && self.rows.iter().enumerate().all(|(a, &b)| a == b) {
            return Ok((k.clone(), v.clone()));
        }
        let idx = Tensor::from_vec(self.rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), self.rows.len(), k.device())?;
        Ok((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))
    }

    fn lens(&self) -> Result<Vec<usize>> {
        self.rows.iter().map(|&r| self.cache.lens.get(r).copied().ok_or_else(|| Error::Invalid(format!("no cached row {r}")))).collect()
    }
}

/// The additive mask of rows continuing after `past_lens` real positions of `past` cached
/// ones, with `lens` real new positions each: a query sees the real cached positions and the
/// new ones up to itself. `[B, 1, rep·T, past + T]`, query row `r` being position `r mod T`.
fn mask(past_lens: &[usize], past: usize, t: usize, rep: usize, device: &candle_core::Device) -> Result<Tensor> {
    let b = past_lens.len();
    let keys = past + t;
    let mut m = vec![0f32; b * rep * t * keys];
    for (row, &pl) in past_lens.iter().enumerate() {
        for r in 0..rep * t {
            let i = r % t;
            let line = &mut m[(row * rep * t + r) * keys..][..keys];
            for (j, x) in line.iter_mut().enumerate() {
                let visible = if j < past { j < pl } else { j - past <= i };
                if !visible {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, rep * t, keys), device)?)
}

impl LlamaModel {
    /// Runs `ids` `[B, T]` (right-padded rows with `lens` real tokens) after `past` (`None`:
    /// from position 0). Returns the last layer's hidden states `[B, T, H]` and, when `keep`,
    /// the cache of all positions, each row's real length being its past length plus
    /// `lens[b]`.
    pub fn forward_cached(&self, ids: &Tensor, lens: &[usize], past: Option<Past>, keep: bool) -> Result<(Tensor, Option<KvCache>)> {
        let (b, t) = ids.dims2()?;
        if lens.len() != b || lens.iter().any(|&l| l > t) {
            return Err(Error::Invalid(format!("{} row lengths for {b} rows of {t} tokens", lens.len())));
        }
        let past_lens: Vec<usize> = match &past {
            Some(p) => p.lens()?,
            None => vec![0; b],
        };
        if past_lens.len() != b {
            return Err(Error::Invalid(format!("a cache of {} rows for {b} rows", past_lens.len())));
        }
        let max_pos = past_lens.iter().max().copied().unwrap_or(0) + t;
        if max_pos > self.rope.max_positions() {
            return Err(Error::Invalid(format!("sequence of {max_pos} tokens is longer than max_position_embeddings {}", self.rope.max_positions())));
        }
        if let Some(window) = self.spec.sliding_window.filter(|&w| max_pos > w) {
            return Err(Error::Invalid(format!("sequence of {max_pos} tokens is longer than the model's sliding window of {window}, which llmprune does not apply")));
        }
        let device = self.device();
        // Row b's positions are past_lens[b].. : its own rotary angles.
        let positions: Vec<u32> = past_lens.iter().flat_map(|&p| (p..p + t).map(|x| x as u32)).collect();
        let positions = Tensor::from_vec(positions, b * t, device)?;
        let half = self.spec.head_dim / 2;
        // The projections and the MLP see the real tokens only.
        let pack = Packing::new(lens, t, device)?;
        let h = self.spec.hidden_size;
        let mut x = pack.pack(&self.embed_tokens(ids)?.reshape((b * t, h))?)?;
        let dtype = x.dtype();
        let cos = self.rope.cos.index_select(&positions, 0)?.reshape((b, t, half))?.to_dtype(dtype)?;
        let sin = self.rope.sin.index_select(&positions, 0)?.reshape((b, t, half))?.to_dtype(dtype)?;
        let n_past = past.map_or(0, |p| p.cache.positions());
        let mut masks: Vec<(usize, Tensor)> = Vec::new();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let rep = layer.shape.n_rep();
            // Pruned layers may differ in their GQA fold: one mask per fold.
            let m = match masks.iter().find(|(r, _)| *r == rep) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = mask(&past_lens, n_past, t, rep, device)?;
                    masks.push((rep, m.clone()));
                    m
                }
            };
            let layer_past = past.map(|p| p.layer(i)).transpose()?;
            let (out, kv) = layer.forward_packed(&x, &pack, &cos, &sin, &m, layer_past.as_ref(), self.spec.rms_norm_eps)?;
            x = out;
            if keep {
                layers.push(kv);
            }
        }
        let x = pack.unpack(&x)?.reshape((b, t, h))?;
        let lens = past_lens.iter().zip(lens).map(|(p, l)| p + l).collect();
        Ok((x, keep.then_some(KvCache { layers, lens })))
    }
}
