//! Inference with cached keys and values: a batch of rows continues each from its own number
//! of earlier positions. Serves prefix reuse (the shared context of a question's choices is
//! run once, each choice continues from it) and generation (one token at a time).

use super::layer::{AttentionPath, Packing};
use super::LlamaModel;
use crate::error::{Error, Result};
use crate::ops::CachedKv;
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
    fn lens(&self) -> Result<Vec<usize>> {
        self.rows.iter().map(|&r| self.cache.lens.get(r).copied().ok_or_else(|| Error::Invalid(format!("no cached row {r}")))).collect()
    }
}

impl LlamaModel {
    /// Runs `ids` `[B, T]` (right-padded rows with `lens` real tokens) after `past` (`None`:
    /// from position 0). Returns the last layer's hidden states `[B, T, H]` and, when `keep`,
    /// the cache of all positions, each row's real length being its past length plus
    /// `lens[b]`.
    pub fn forward_cached(&self, ids: &Tensor, lens: &[usize], past: Option<Past>, keep: bool) -> Result<(Tensor, Option<KvCache>)> {
        self.forward_cached_on(AttentionPath::for_device(self.device()), ids, lens, past, keep)
    }

    /// [`LlamaModel::forward_cached`] attending by `path`.
    pub fn forward_cached_on(&self, path: AttentionPath, ids: &Tensor, lens: &[usize], past: Option<Past>, keep: bool) -> Result<(Tensor, Option<KvCache>)> {
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
        if let Some(p) = past.filter(|p| p.cache.layers.len() != self.layers.len()) {
            return Err(Error::Invalid(format!("a cache of {} layers for a model of {}", p.cache.layers.len(), self.layers.len())));
        }
        let max_pos = past_lens.iter().max().copied().unwrap_or(0) + t;
        if max_pos > self.rope.max_positions() {
            return Err(Error::Invalid(format!("sequence of {max_pos} tokens is longer than max_position_embeddings {}", self.rope.max_positions())));
        }
        if let Some(window) = self.spec.sliding_window.filter(|&w| max_pos > w) {
            return Err(Error::Invalid(format!(
                "sequence of {max_pos} tokens is longer than the model's sliding window of {window}, which llmprune does not apply"
            )));
        }
        let device = self.device();
        // Row b's tokens are at positions past_lens[b].. : their own rotary angles.
        let positions: Vec<u32> = past_lens.iter().zip(lens).flat_map(|(&p, &l)| (p..p + l).map(|x| x as u32)).collect();
        let positions = Tensor::from_vec(positions, lens.iter().sum::<usize>(), device)?;
        // The projections and the MLP see the real tokens only.
        let pack = Packing::new(lens, t, device)?;
        let h = self.spec.hidden_size;
        let mut x = pack.pack(&self.embed_tokens(ids)?.reshape((b * t, h))?)?;
        let dtype = x.dtype();
        let cos = self.rope.cos.index_select(&positions, 0)?.to_dtype(dtype)?;
        let sin = self.rope.sin.index_select(&positions, 0)?.to_dtype(dtype)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_past = past.map(|p| CachedKv { k: &p.cache.layers[i].0, v: &p.cache.layers[i].1, rows: p.rows, lens: &past_lens });
            let (out, kv) = layer.forward_packed(&x, &pack, &cos, &sin, layer_past, keep, path, self.spec.rms_norm_eps)?;
            x = out;
            layers.extend(kv);
        }
        let x = pack.unpack(&x)?.reshape((b, t, h))?;
        let lens = past_lens.iter().zip(lens).map(|(p, l)| p + l).collect();
        Ok((x, keep.then_some(KvCache { layers, lens })))
    }
}
