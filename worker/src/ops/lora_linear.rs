//! A frozen projection with its LoRA adapter as one op: `y = x Wᵀ + s·((x⊙m) Aᵀ) Bᵀ`, with
//! `m` the dropout mask (regenerated from its key, never stored). Composed from candle's ops,
//! every intermediate (the masked input, the mask, the adapter's full-width output, its scaled
//! copy, the sum) stays alive in the graph until the backward pass: four to five activations
//! of the projection's width per projection, seven projections a layer, which tripled the
//! memory of a recovery step. This op keeps only its output; the backward pass recomputes the
//! rank-r intermediate (`N·in·r` FLOPs) and never computes `W`'s gradient.

use crate::lora::{dropout_mask, Projection};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Where a projection's dropout masks come from.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub key: u64,
    pub layer: usize,
    pub projection: Projection,
    pub p: f32,
}

struct LoraLinear {
    x: Tensor,
    w: Tensor,
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: Option<Dropout>,
}

/// The mask for `x` `[N, in]`, or `None` without dropout.
fn mask(dropout: Option<Dropout>, x: &Tensor) -> Result<Option<Tensor>> {
    match dropout {
        Some(d) if d.p > 0.0 => {
            let (n, k) = x.dims2()?;
            let m = Tensor::from_vec(dropout_mask(d.key, d.layer, d.projection, n * k, d.p), (n, k), x.device())?;
            Ok(Some(m.to_dtype(x.dtype())?))
        }
        _ => Ok(None),
    }
}

/// `x` masked by `m`, or `x` itself without dropout.
fn masked(x: &Tensor, m: Option<&Tensor>) -> Result<Tensor> {
    match m {
        Some(m) => x.mul(m),
        None => Ok(x.clone()),
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let xd = masked(&self.x, mask(self.dropout, &self.x)?.as_ref())?;
        let low = (xd.matmul(&self.a.t()?)? * self.scale)?;
        let y = (self.x.matmul(&self.w.t()?)? + low.matmul(&self.b.t()?)?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The mask is regenerated once and serves the input and its gradient.
        let m = mask(self.dropout, &self.x)?;
        let xd = masked(&self.x, m.as_ref())?;
        let low = xd.matmul(&self.a.t()?)?; // [N, r]
        let g_low = (grad.matmul(&self.b)? * self.scale)?; // [N, r]: d(loss)/d(low) · s
        let dx = (grad.matmul(&self.w)? + masked(&g_low.matmul(&self.a)?, m.as_ref())?)?;
        let da = g_low.t()?.matmul(&xd)?; // [r, in]
        let db = (grad.t()?.matmul(&low)? * self.scale)?; // [out, r]
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// `x Wᵀ + s·(dropout(x) Aᵀ) Bᵀ` for `x` `[N, in]`, `w` `[out, in]` (frozen), `a` `[r, in]`,
/// `b` `[out, r]`; differentiable in `x`, `a` and `b`. Off the CPU or outside f32 it is
/// composed from candle's ops: the adapters (f32 master weights) are cast to the input's dtype
/// for the products, so their gradients come back in f32 through the cast.
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64, dropout: Option<Dropout>) -> Result<Tensor> {
    if !x.device().is_cpu() || [x, w, a, b].iter().any(|t| t.dtype() != DType::F32) {
        let xd = masked(x, mask(dropout, x)?.as_ref())?;
        let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        return x.matmul(&w.t()?)? + ((xd.matmul(&a.t()?)? * scale)?.matmul(&b.t()?))?;
    }
    x.apply_op3(a, b, LoraLinear { x: x.detach(), w: w.detach(), a: a.detach(), b: b.detach(), scale, dropout })
}
