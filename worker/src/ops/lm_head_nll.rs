//! Per-token negative log-likelihood through the output head, with one copy of the logits
//! at most.
//!
//! With a 49k vocabulary the logits of 10×128 tokens are 250 MB per copy, and a composed
//! `matmul → log_softmax → gather` keeps several copies alive for the backward pass. This op
//! keeps the logits themselves (turned into their gradient in place by the backward pass)
//! while they fit [`KEEP_LOGITS_FLOATS`]; beyond that it keeps only the per-row
//! log-sum-exp and recomputes the logits chunk by chunk, paying one more head matmul.

use super::Simd;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Target id that contributes nothing (a masked label, as `-100` in PyTorch).
pub const IGNORE_TARGET: u32 = u32::MAX;

/// Logits computed at once: rows per chunk × vocabulary stays near this many floats.
const CHUNK_FLOATS: usize = 8 << 20;

/// Without a graph (evaluation) the logits are computed in tiles of rows × a vocabulary slice.
/// Every matmul packs both its operands, so the tile is as square as its size allows: the
/// head is packed once per [`TILE_ROWS`] rows and the hidden states once per
/// [`TILE_VOCAB`] entries. 8 MiB tiles stay in the allocator's reused size classes, where
/// larger ones were mapped afresh (and their pages cleared) every time.
const TILE_ROWS: usize = 2048;
const TILE_VOCAB: usize = 1024;

/// Logits kept from the forward to the backward pass up to this many floats (256 MiB);
/// more are recomputed.
pub const KEEP_LOGITS_FLOATS: usize = 64 << 20;

/// `hidden` is `[N, H]`, `head` is `[V, H]`, `targets` has N ids (or [`IGNORE_TARGET`]).
/// Returns `[N]` NLLs (0 for ignored rows), differentiable in `hidden` and `head`.
pub fn lm_head_nll(hidden: &Tensor, head: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if !super::generic::fused_kernels_take(&[hidden, head]) {
        check(hidden, head, targets)?;
        return super::generic::lm_head_nll(hidden, head, targets, IGNORE_TARGET);
    }
    if !hidden.track_op() && !head.track_op() {
        return lm_head_nll_tiled(hidden, head, targets, TILE_ROWS, TILE_VOCAB);
    }
    let rows = (CHUNK_FLOATS / head.dim(0)?.max(1)).max(1);
    lm_head_nll_chunked(hidden, head, targets, rows, KEEP_LOGITS_FLOATS)
}

/// A row's log-sum-exp accumulated over vocabulary slices: the running maximum and the sum
/// of exponentials relative to it (rescaled when the maximum grows).
#[derive(Clone, Copy)]
struct OnlineLogSumExp {
    max: f32,
    sum: f64,
}

impl OnlineLogSumExp {
    const EMPTY: Self = Self { max: f32::NEG_INFINITY, sum: 0.0 };

    fn add(&mut self, slice: &[f32]) {
        let max = Simd::detect().max(slice).max(self.max);
        if max == f32::NEG_INFINITY {
            return;
        }
        if max > self.max {
            self.sum *= ((self.max - max) as f64).exp();
            self.max = max;
        }
        self.sum += exp_sum(slice, self.max);
    }

    fn value(&self) -> f32 {
        self.max + self.sum.ln() as f32
    }
}

/// The NLLs without a graph, the logits in tiles of `tile_rows` × `tile_vocab` that are
/// never all in memory: each row's log-sum-exp is accumulated tile by tile and its target's
/// logit picked from the tile that holds it.
pub fn lm_head_nll_tiled(hidden: &Tensor, head: &Tensor, targets: &[u32], tile_rows: usize, tile_vocab: usize) -> Result<Tensor> {
    let (n, v) = check(hidden, head, targets)?;
    let mut nll = Vec::with_capacity(n);
    for start in (0..n).step_by(tile_rows.max(1)) {
        let rows = tile_rows.max(1).min(n - start);
        let x = hidden.narrow(0, start, rows)?;
        let targets = &targets[start..start + rows];
        let mut lse = vec![OnlineLogSumExp::EMPTY; rows];
        let mut picked = vec![0f32; rows];
        for v0 in (0..v).step_by(tile_vocab.max(1)) {
            let width = tile_vocab.max(1).min(v - v0);
            let logits = x.matmul(&head.narrow(0, v0, width)?.t()?)?.to_dtype(DType::F32)?;
            read_f32(&logits, |tile| {
                lse.par_iter_mut().zip(tile.par_chunks(width)).for_each(|(acc, row)| acc.add(row));
                for (r, &t) in targets.iter().enumerate() {
                    if (v0..v0 + width).contains(&(t as usize)) {
                        picked[r] = tile[r * width + t as usize - v0];
                    }
                }
            })?;
        }
        nll.extend(targets.iter().zip(lse.iter().zip(&picked)).map(|(&t, (l, &p))| if t == IGNORE_TARGET { 0.0 } else { l.value() - p }));
    }
    Tensor::from_vec(nll, n, hidden.device())
}

/// Shapes and targets of an NLL request: `(rows, vocabulary)`.
fn check(hidden: &Tensor, head: &Tensor, targets: &[u32]) -> Result<(usize, usize)> {
    let (n, h) = hidden.dims2()?;
    let (v, h2) = head.dims2()?;
    if h != h2 || targets.len() != n {
        candle_core::bail!("lm_head_nll: hidden {:?}, head {:?}, {} targets", hidden.dims(), head.dims(), targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t != IGNORE_TARGET && t as usize >= v) {
        candle_core::bail!("lm_head_nll: target id {bad} is outside the vocabulary of {v}");
    }
    Ok((n, v))
}

/// [`lm_head_nll`] with explicit rows per chunk of logits and limit on kept logits.
pub fn lm_head_nll_chunked(hidden: &Tensor, head: &Tensor, targets: &[u32], chunk_rows: usize, keep_logits_floats: usize) -> Result<Tensor> {
    let (n, v) = check(hidden, head, targets)?;
    let op = LmHeadNll {
        hidden: hidden.detach(),
        head: head.detach(),
        targets: targets.to_vec(),
        chunk_rows: chunk_rows.max(1),
        // Without a graph there is no backward pass to keep them for.
        keep_logits: n * v <= keep_logits_floats && (hidden.track_op() || head.track_op()),
        saved: Mutex::new(None),
    };
    hidden.apply_op2(head, op)
}

struct LmHeadNll {
    hidden: Tensor,
    head: Tensor,
    targets: Vec<u32>,
    chunk_rows: usize,
    keep_logits: bool,
    /// What the forward pass leaves for the backward pass.
    saved: Mutex<Option<Saved>>,
}

struct Saved {
    /// Per row.
    log_sum_exp: Vec<f32>,
    /// `[N, V]` row-major, when kept.
    logits: Option<Vec<f32>>,
}

impl LmHeadNll {
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.targets.len();
        (0..n).step_by(self.chunk_rows).map(move |s| (s, self.chunk_rows.min(n - s)))
    }

    /// One chunk of logits `[rows, V]` as f32, row-major.
    fn logits(&self, start: usize, rows: usize) -> Result<Vec<f32>> {
        let logits = self.hidden.narrow(0, start, rows)?.matmul(&self.head.t()?)?;
        logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }

    /// `f` of one chunk of logits.
    fn with_logits<T>(&self, start: usize, rows: usize, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
        read_f32(&self.hidden.narrow(0, start, rows)?.matmul(&self.head.t()?)?.to_dtype(DType::F32)?, f)
    }
}

/// `f` of an f32 tensor's values, row-major: read in place on the CPU, copied elsewhere.
fn read_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&v[a..b]));
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// `log Σ_j exp(l_j)`, shifted by the maximum for stability. Each term's f32 `exp` is
/// accurate to 2 ulp; the f64 sum keeps 49k of them from losing digits to rounding.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = Simd::detect().max(row);
    max + exp_sum(row, max).ln() as f32
}

fn exp_sum(row: &[f32], shift: f32) -> f64 {
    Simd::detect().exp_sum_f64(row, shift)
}

impl CustomOp2 for LmHeadNll {
    fn name(&self) -> &'static str {
        "llmprune-lm-head-nll"
    }

    // The storages are those of `hidden` and `head`, which the op already holds as tensors:
    // running tensor ops on them reuses candle's matmul instead of a hand-written one.
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = self.head.dim(0)?;
        let n = self.targets.len();
        let mut nll = Vec::with_capacity(n);
        let mut all_lse = Vec::with_capacity(n);
        let mut kept = Vec::with_capacity(if self.keep_logits { n * v } else { 0 });
        for (start, rows) in self.chunks() {
            self.with_logits(start, rows, |logits| {
                let lse: Vec<f32> = logits.par_chunks(v).map(log_sum_exp).collect();
                for (r, &t) in self.targets[start..start + rows].iter().enumerate() {
                    nll.push(if t == IGNORE_TARGET { 0.0 } else { lse[r] - logits[r * v + t as usize] });
                }
                all_lse.extend(lse);
                if self.keep_logits {
                    kept.extend_from_slice(logits);
                }
            })?;
        }
        let saved = Saved { log_sum_exp: all_lse, logits: self.keep_logits.then_some(kept) };
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(saved);
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, hidden: &Tensor, head: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let saved = self.saved.lock().ok().and_then(|mut s| s.take());
        let Some(Saved { log_sum_exp: lse, logits }) = saved else {
            candle_core::bail!("lm_head_nll: backward without a forward pass, or twice");
        };
        let want_head = head.track_op();
        let v = self.head.dim(0)?;
        // d nll_i / d logit_ij = softmax_ij − [j = t_i], times the upstream gradient; computed
        // in place over logits whose rows start at row `start`.
        let to_grad = |logits: &mut [f32], start: usize| {
            logits.par_chunks_mut(v).enumerate().for_each(|(r, row)| {
                let i = start + r;
                let t = self.targets[i];
                if t == IGNORE_TARGET {
                    row.iter_mut().for_each(|x| *x = 0.0);
                    return;
                }
                let (c, l) = (grad[i], lse[i]);
                row.iter_mut().for_each(|x| *x = (*x - l).exp() * c);
                row[t as usize] -= c;
            });
        };
        let device = self.head.device();
        // Kept logits are one chunk of every row; otherwise each chunk is recomputed.
        let chunks: Vec<(usize, usize)> = if logits.is_some() { vec![(0, self.targets.len())] } else { self.chunks().collect() };
        let mut kept = logits;
        let mut d_hidden = Vec::new();
        let mut d_head: Option<Tensor> = None;
        for (start, rows) in chunks {
            let mut d = match kept.take() {
                Some(all) => all,
                None => self.logits(start, rows)?,
            };
            to_grad(&mut d, start);
            let d_logits = Tensor::from_vec(d, (rows, v), device)?.to_dtype(self.head.dtype())?;
            d_hidden.push(d_logits.matmul(&self.head)?);
            if want_head {
                let part = d_logits.t()?.matmul(&self.hidden.narrow(0, start, rows)?)?;
                d_head = Some(match d_head {
                    Some(acc) => (acc + part)?,
                    None => part,
                });
            }
        }
        let d_hidden = Tensor::cat(&d_hidden, 0)?;
        debug_assert_eq!(d_hidden.dims(), hidden.dims());
        Ok((Some(d_hidden), d_head))
    }
}
