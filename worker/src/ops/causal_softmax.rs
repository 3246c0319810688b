//! Scaled, causally masked softmax over attention scores, with backward.
//!
//! Scores are `[B, G, R, S]` where the `R` rows of a group are `n_rep` query heads of
//! `q_len` positions each (GQA without materialising repeated KV heads); row `r` is query
//! position `r % q_len`, which sits at key position `kv_offset + r % q_len`.

use super::{f32_slice, rows_per_task};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(scale · scores)` with keys after each query's position masked out.
pub fn causal_softmax(scores: &Tensor, scale: f64, q_len: usize) -> Result<Tensor> {
    let s = scores.dim(candle_core::D::Minus1)?;
    if q_len == 0 || q_len > s {
        candle_core::bail!("causal_softmax: q_len {q_len} with {s} keys");
    }
    if !super::generic::fused_kernels_take(&[scores]) {
        return super::generic::causal_softmax(scores, scale, q_len);
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32, q_len, kv_offset: s - q_len })
}

struct CausalSoftmax {
    scale: f32,
    q_len: usize,
    kv_offset: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "llmprune-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(n);
        y.par_chunks_mut(n * rows).zip(x.par_chunks(n * rows)).enumerate().for_each(|(ci, (yc, xc))| {
            for (ri, (yr, xr)) in yc.chunks_mut(n).zip(xc.chunks(n)).enumerate() {
                let visible = self.kv_offset + (ci * rows + ri) % self.q_len + 1;
                let (yv, xv) = (&mut yr[..visible], &xr[..visible]);
                let max = xv.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                let mut sum = 0f32;
                for (o, &v) in yv.iter_mut().zip(xv) {
                    *o = (v * self.scale - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                yv.iter_mut().for_each(|o| *o *= inv);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = y.detach().apply_op2_no_bwd(&g.contiguous()?.detach(), &SoftmaxGrad { scale: self.scale })?;
        Ok(Some(dx))
    }
}

/// `dx = scale · y ⊙ (g − Σ_j g_j y_j)`; masked entries have `y = 0` and get no gradient.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "llmprune-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        let n = *l1.dims().last().unwrap_or(&1);
        let chunk = n * rows_per_task(n);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(|(dc, (yc, gc))| {
            for ((dr, yr), gr) in dc.chunks_mut(n).zip(yc.chunks(n)).zip(gc.chunks(n)) {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *d = self.scale * yv * (gv - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
