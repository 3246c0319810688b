//! RMSNorm `y = x / sqrt(mean(x²) + eps) * w` over the last dimension, with backward.

use super::{f32_slice, rows_per_task};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Differentiable RMSNorm. `x` is `[.., H]`, `w` is `[H]`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    // Accumulate in f64: rows are short and the sum of squares of thousands of
    // activations loses digits in f32.
    let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (1.0 / ((ss / row.len() as f64) + eps as f64).sqrt()) as f32
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
        y.par_chunks_mut(h * rows_per_task(h))
            .zip(x.par_chunks(h * rows_per_task(h)))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    for ((yv, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                        *yv = xv * r * wv;
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

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let w = f32_slice(self.name(), s2, l2)?;
        let g = f32_slice(self.name(), s3, l3)?;
        let h = w.len();
        let mut dx = vec![0f32; x.len()];
        let chunk = h * rows_per_task(h);
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(dc, (xc, gc))| {
                for ((dr, xr), gr) in dc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    let dot: f64 = xr.iter().zip(gr).zip(w).map(|((&a, &b), &c)| (a * b * c) as f64).sum();
                    let coef = (dot as f32) * r * r * r / h as f32;
                    for (((d, &xv), &gv), &wv) in dr.iter_mut().zip(xr).zip(gr).zip(w) {
                        *d = r * wv * gv - xv * coef;
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
                    let r = inv_rms(xr, self.eps) as f64;
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
