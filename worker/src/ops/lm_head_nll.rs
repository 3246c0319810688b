//! Per-token negative log-likelihood through the output head, without keeping logits.
//!
//! With a 49k vocabulary the logits of 10×128 tokens are 250 MB per copy, and a composed
//! `matmul → log_softmax → gather` keeps several copies alive for the backward pass. This op
//! recomputes the logits chunk by chunk in both passes instead: memory is one chunk of
//! logits, the price one extra head matmul in the backward pass.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// Target id that contributes nothing (a masked label, as `-100` in PyTorch).
pub const IGNORE_TARGET: u32 = u32::MAX;

/// Logits held at once: rows per chunk × vocabulary stays near this many floats.
const CHUNK_FLOATS: usize = 8 << 20;

/// `hidden` is `[N, H]`, `head` is `[V, H]`, `targets` has N ids (or [`IGNORE_TARGET`]).
/// Returns `[N]` NLLs (0 for ignored rows), differentiable in `hidden` and `head`.
pub fn lm_head_nll(hidden: &Tensor, head: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let rows = (CHUNK_FLOATS / head.dim(0)?.max(1)).max(1);
    lm_head_nll_chunked(hidden, head, targets, rows)
}

/// [`lm_head_nll`] with an explicit number of rows per chunk of logits.
pub fn lm_head_nll_chunked(hidden: &Tensor, head: &Tensor, targets: &[u32], chunk_rows: usize) -> Result<Tensor> {
    let (n, h) = hidden.dims2()?;
    let (v, h2) = head.dims2()?;
    if h != h2 || targets.len() != n {
        candle_core::bail!("lm_head_nll: hidden {:?}, head {:?}, {} targets", hidden.dims(), head.dims(), targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&t| t != IGNORE_TARGET && t as usize >= v) {
        candle_core::bail!("lm_head_nll: target id {bad} is outside the vocabulary of {v}");
    }
    let op = LmHeadNll {
        hidden: hidden.detach(),
        head: head.detach(),
        targets: targets.to_vec(),
        chunk_rows: chunk_rows.max(1),
    };
    hidden.apply_op2(head, op)
}

struct LmHeadNll {
    hidden: Tensor,
    head: Tensor,
    targets: Vec<u32>,
    chunk_rows: usize,
}

impl LmHeadNll {
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.targets.len();
        (0..n).step_by(self.chunk_rows).map(move |s| (s, self.chunk_rows.min(n - s)))
    }

    /// Log-softmax of one chunk of logits as an f32 tensor `[rows, V]`.
    fn log_probs(&self, start: usize, rows: usize) -> Result<Tensor> {
        let logits = self.hidden.narrow(0, start, rows)?.matmul(&self.head.t()?)?.to_dtype(DType::F32)?;
        candle_nn::ops::log_softmax(&logits, D::Minus1)
    }
}

impl CustomOp2 for LmHeadNll {
    fn name(&self) -> &'static str {
        "llmprune-lm-head-nll"
    }

    // The storages are those of `hidden` and `head`, which the op already holds as tensors:
    // running tensor ops on them reuses candle's matmul instead of a hand-written one.
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut nll = Vec::with_capacity(self.targets.len());
        for (start, rows) in self.chunks() {
            let lp = self.log_probs(start, rows)?;
            let lp = lp.to_vec2::<f32>()?;
            for (row, &t) in lp.iter().zip(&self.targets[start..start + rows]) {
                nll.push(if t == IGNORE_TARGET { 0.0 } else { -row[t as usize] });
            }
        }
        Ok((CpuStorage::F32(nll), Shape::from(self.targets.len())))
    }

    fn bwd(&self, hidden: &Tensor, head: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let want_head = head.track_op();
        let mut d_hidden = Vec::new();
        let mut d_head: Option<Tensor> = None;
        let v = self.head.dim(0)?;
        for (start, rows) in self.chunks() {
            // d nll_i / d logits_i = softmax_i − onehot(t_i), scaled by the upstream gradient.
            let probs = self.log_probs(start, rows)?.exp()?;
            let mut coeff = vec![0f32; rows];
            let mut onehot = vec![0f32; rows * v];
            for r in 0..rows {
                let t = self.targets[start + r];
                if t != IGNORE_TARGET {
                    coeff[r] = grad[start + r];
                    onehot[r * v + t as usize] = 1.0;
                }
            }
            let coeff = Tensor::from_vec(coeff, (rows, 1), probs.device())?;
            let onehot = Tensor::from_vec(onehot, (rows, v), probs.device())?;
            let d_logits = (probs - onehot)?.broadcast_mul(&coeff)?.to_dtype(self.head.dtype())?;
            d_hidden.push(d_logits.matmul(&self.head)?);
            if want_head {
                let h = self.hidden.narrow(0, start, rows)?;
                let part = d_logits.t()?.matmul(&h)?;
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
