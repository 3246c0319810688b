//! The differentiable ops composed from candle's primitives, for every device and dtype:
//! what runs where the fused CPU kernels do not (a GPU, or half precision), differentiated by
//! candle's autograd. Half precision follows Hugging Face's numerics: the norm's statistics,
//! the softmax and the loss in f32, rounded once to the input's dtype. Tests hold each one
//! against its fused kernel on the CPU, forward and backward.

use candle_core::{DType, Result, Tensor, D};

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension (`LlamaRMSNorm`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let x32 = x.to_dtype(DType::F32)?;
    let inv = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x32.broadcast_mul(&inv)?.to_dtype(x.dtype())?.broadcast_mul(&w.to_dtype(x.dtype())?)
}

/// Rotary embedding in the rotate-half layout: `x` `[B, heads, T, D]`, `cos`/`sin` `[T, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let half = d / 2;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let (x1, x2) = (x.narrow(D::Minus1, 0, half)?, x.narrow(D::Minus1, half, half)?);
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)
}

/// `softmax(scale · scores)` over `[B, G, R, S]` scores whose row `r` is query position
/// `r mod q_len`, seeing keys up to `S − q_len + r mod q_len`; in f32, returned in the scores'
/// dtype.
pub fn causal_softmax(scores: &Tensor, scale: f64, q_len: usize) -> Result<Tensor> {
    let dims = scores.dims4()?;
    let (rows, keys) = (dims.2, dims.3);
    let offset = keys - q_len;
    let mask: Vec<f32> = (0..rows).flat_map(|r| (0..keys).map(move |k| if k <= offset + r % q_len { 0.0 } else { f32::NEG_INFINITY })).collect();
    let mask = Tensor::from_vec(mask, (rows, keys), scores.device())?;
    let x = (scores.to_dtype(DType::F32)? * scale)?.broadcast_add(&mask)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(scores.dtype())
}

/// `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Per-row negative log-likelihood of `targets` under `hidden Headᵀ` (`[N]`, f32; rows whose
/// target is `ignore` give 0): the logits in the weights' dtype, the log-softmax in f32.
pub fn lm_head_nll(hidden: &Tensor, head: &Tensor, targets: &[u32], ignore: u32) -> Result<Tensor> {
    let n = targets.len();
    let logits = hidden.matmul(&head.t()?)?.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
    let index: Vec<u32> = targets.iter().map(|&t| if t == ignore { 0 } else { t }).collect();
    let index = Tensor::from_vec(index, (n, 1), hidden.device())?;
    let picked = logits.gather(&index, 1)?;
    let keep: Vec<f32> = targets.iter().map(|&t| if t == ignore { 0.0 } else { 1.0 }).collect();
    let keep = Tensor::from_vec(keep, (n, 1), hidden.device())?;
    ((lse - picked)? * keep)?.squeeze(1)
}

/// Whether the fused CPU kernels can take these tensors (f32 on the CPU); the generic ops
/// take everything else.
pub fn fused_kernels_take(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}
