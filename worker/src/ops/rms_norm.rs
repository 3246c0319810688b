//! RMSNorm `y = x / sqrt(mean(x²) + eps) * w` over the last dimension, with backward.

use super::{f32_slice, rows_per_task};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Differentiable RMSNorm. `x` is `[.., H]`, `w` is `[H]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !super::generic::fused_kernels_take(&[x, w]) {
        return super::generic::rms_norm(x, w, eps);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// `sqrt(mean(x²) + eps)` summed in f32 exactly as candle's fused kernel (and PyTorch's f32
/// LLaMA) computes it, so both execution modes give bit-identical activations. (An f64 sum is
/// more precise per call but moved SmolLM2's end-to-end logits further from an f64 reference.)
fn rms(row: &[f32], eps: f32) -> f32 {
    let sum2: f32 = row.iter().map(|v| v * v).sum();
    (sum2 / row.len() as f32 + eps).sqrt()
}

/// `1 / rms` for the backward pass, where f64 arithmetic keeps cancellation harmless.
fn inv_rms(row: &[f32], eps: f32) -> f64 {
    1.0 / rms(row, eps) as f64
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "llmprune-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let h = w.len();
        if l1.dims().last() != Some(&h) {
            candle_core::bail!("rms_norm: x {:?} does not end in the weight's {h}", l1.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * rows_per_task(h)).zip(x.par_chunks(h * rows_per_task(h))).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
                let m = rms(xr, self.eps);
                for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = xv / m * wv;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, g) = (x.detach(), w.detach(), g.contiguous()?.detach());
        let dx = x.apply_op3_no_bwd(&w, &g, &RmsNormGradX { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&g, &RmsNormGradW { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx_k = r w_k g_k − x_k r³/H Σ_i w_i g_i x_i`.
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "llmprune-rms-norm-grad-x"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let g = f32_slice(self.name(), s3, l3)?;
        let h = w.len();
        let mut dx = vec![0f32; x.len()];
        let chunk = h * rows_per_task(h);
        dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(|(dc, (xc, gc))| {
            for ((dr, xr), gr) in dc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h)) {
                let r = inv_rms(xr, self.eps);
                let dot: f64 = xr.iter().zip(gr).zip(w).map(|((&a, &b), &c)| a as f64 * b as f64 * c as f64).sum();
                let coef = dot * r * r * r / h as f64;
                for (((d, &xv), &gv), &wv) in dr.iter_mut().zip(xr).zip(gr).zip(w) {
                    *d = (r * wv as f64 * gv as f64 - xv as f64 * coef) as f32;
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `dw_i = Σ_rows g_i x_i r`.
struct RmsNormGradW {
    eps: f32,
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "llmprune-rms-norm-grad-w"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        let h = *l1.dims().last().unwrap_or(&1);
        let chunk = h * rows_per_task(h);
        let dw = x
            .par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .map(|(xc, gc)| {
                let mut acc = vec![0f64; h];
                for (xr, gr) in xc.chunks(h).zip(gc.chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    for ((a, &xv), &gv) in acc.iter_mut().zip(xr).zip(gr) {
                        *a += (xv as f64) * (gv as f64) * r;
                    }
                }
                acc
            })
            .reduce(
                || vec![0f64; h],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok((CpuStorage::F32(dw.into_iter().map(|v| v as f32).collect()), Shape::from(h)))
    }
}
