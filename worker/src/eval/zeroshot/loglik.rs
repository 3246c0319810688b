//! Log-likelihoods of many requests, fast: the choices of a document share their context,
//! which runs once (its keys and values cached) while every choice continues from it; documents
//! of similar length are batched together under a token budget, longest first. A batch's
//! composition fixes its numbers, so batches are planned once for all workers.

use super::requests::TokenChoice;
use crate::error::{Error, Result};
use crate::model::{Exec, LlamaModel, Past};
use candle_core::Tensor;

/// A document's choices, scored together.
#[derive(Debug, Clone)]
pub struct Unit {
    pub choices: Vec<TokenChoice>,
}

impl Unit {
    /// Model inputs of choice `i` (its tokens but the last).
    fn input(&self, i: usize) -> &[u32] {
        let ids = &self.choices[i].ids;
        &ids[..ids.len() - 1]
    }

    /// Positions read once for every choice: the longest common prefix of the inputs, up to
    /// the first scored position (a scored position is computed with its choice).
    pub fn shared_prefix(&self) -> usize {
        let first = self.input(0);
        let common = (1..self.choices.len()).map(|i| first.iter().zip(self.input(i)).take_while(|(a, b)| a == b).count()).min().unwrap_or(first.len());
        let first_scored = self.choices.iter().map(|c| c.ids.len() - 1 - c.scored).min().unwrap_or(0);
        common.min(first_scored)
    }

    /// Tokens the model runs for this unit: the shared prefix once, every choice's remainder.
    pub fn tokens(&self) -> usize {
        self.shared_prefix() + self.suffix_tokens()
    }

    /// Tokens of the choice pass: every choice's positions after the shared prefix.
    fn suffix_tokens(&self) -> usize {
        let p = self.shared_prefix();
        (0..self.choices.len()).map(|i| self.input(i).len() - p).sum()
    }

    /// Positions after the shared prefix, the longest choice's.
    fn suffix_len(&self) -> usize {
        let p = self.shared_prefix();
        (0..self.choices.len()).map(|i| self.input(i).len() - p).max().unwrap_or(0)
    }
}

/// Batches of unit indices: units longest first, each batch as many as fit `budget` real
/// tokens in its context pass and in its choice pass (the projections see only real tokens),
/// with at most twice that padded (the padded layout carries the embeddings in and the hidden
/// states out, and the whole attention on devices without the packed kernel).
pub fn plan_batches(units: &[Unit], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    let size = |u: &Unit| u.shared_prefix() + u.suffix_len();
    order.sort_by_key(|&u| (std::cmp::Reverse(size(&units[u])), u));
    /// A batch's passes: real and longest tokens of the context pass, real and longest of
    /// the choice pass, and its rows.
    #[derive(Clone, Copy, Default)]
    struct Load {
        prefix: usize,
        prefix_max: usize,
        suffix: usize,
        suffix_max: usize,
        rows: usize,
    }
    let with = |l: Load, u: &Unit| {
        let p = u.shared_prefix();
        Load {
            prefix: l.prefix + p,
            prefix_max: l.prefix_max.max(p),
            suffix: l.suffix + u.suffix_tokens(),
            suffix_max: l.suffix_max.max(u.suffix_len()),
            rows: l.rows + u.choices.len(),
        }
    };
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut load = Load::default();
    for u in order {
        let next = with(load, &units[u]);
        let units_in = batches.last().map_or(0, Vec::len) + 1;
        let fits = next.prefix <= budget && next.suffix <= budget && units_in * next.prefix_max <= 2 * budget && next.rows * next.suffix_max <= 2 * budget;
        match batches.last_mut() {
            Some(b) if fits => {
                b.push(u);
                load = next;
            }
            _ => {
                batches.push(vec![u]);
                load = with(Load::default(), &units[u]);
            }
        }
    }
    batches
}

/// Right-pads rows of tokens into one `[rows, longest]` tensor.
fn padded(rows: &[&[u32]], device: &candle_core::Device) -> Result<(Tensor, usize)> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0, t - r.len()))).collect();
    Ok((Tensor::from_vec(flat, (rows.len(), t), device)?, t))
}

/// The log-likelihood of every choice of `units` (one batch): the contexts' shared prefixes in
/// one pass, then every choice's remainder continuing from its document's cache.
pub fn score_batch(model: &LlamaModel, units: &[&Unit]) -> Result<Vec<Vec<f64>>> {
    let device = model.device();
    let prefixes: Vec<usize> = units.iter().map(|u| u.shared_prefix()).collect();
    let past = if prefixes.iter().any(|&p| p > 0) {
        let rows: Vec<&[u32]> = units.iter().zip(&prefixes).map(|(u, &p)| &u.input(0)[..p]).collect();
        let (ids, _) = padded(&rows, device)?;
        model.forward_cached(&ids, &prefixes, None, true)?.1
    } else {
        None
    };
    // Every choice's row: its unit, its remainder.
    let mut owner = Vec::new();
    let mut rows: Vec<&[u32]> = Vec::new();
    for (k, (u, &p)) in units.iter().zip(&prefixes).enumerate() {
        for i in 0..u.choices.len() {
            owner.push(k);
            rows.push(&u.input(i)[p..]);
        }
    }
    let (ids, t) = padded(&rows, device)?;
    let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    let past = past.as_ref().map(|cache| Past { cache, rows: &owner });
    let (hidden, _) = model.forward_cached(&ids, &lens, past, false)?;
    tracing::debug!(
        units = units.len(),
        prefix_rows = units.len(),
        prefix_len = prefixes.iter().max().copied().unwrap_or(0),
        prefix_real = prefixes.iter().sum::<usize>(),
        rows = rows.len(),
        suffix_len = t,
        suffix_real = lens.iter().sum::<usize>(),
        "batch"
    );
    // Only the scored positions reach the head.
    let (mut picks, mut targets, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    let mut row = 0;
    for (u, &p) in units.iter().zip(&prefixes) {
        for c in &u.choices {
            let n = c.ids.len();
            let start = picks.len();
            for pos in n - 1 - c.scored..n - 1 {
                picks.push((row * t + pos - p) as u32);
                targets.push(c.ids[pos + 1]);
            }
            spans.push(start..picks.len());
            row += 1;
        }
    }
    let h = model.spec.hidden_size;
    let picks = Tensor::from_vec(picks, targets.len(), device)?;
    let chosen = hidden.reshape((rows.len() * t, h))?.index_select(&picks, 0)?.unsqueeze(0)?;
    let nll = model.hidden_to_nll(&chosen, &targets, Exec::Inference)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let mut spans = spans.into_iter();
    units
        .iter()
        .map(|u| {
            (0..u.choices.len())
                .map(|_| {
                    let span = spans.next().ok_or_else(|| Error::Invalid("scored spans out of step".into()))?;
                    Ok(-nll[span].iter().map(|&x| x as f64).sum::<f64>())
                })
                .collect()
        })
        .collect()
}
