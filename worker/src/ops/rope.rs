//! Rotary position embedding in the Hugging Face rotate-half layout, with backward.
//!
//! `y = x cos + rotate_half(x) sin`. The rotation is orthogonal, so the backward pass is
//! the same kernel with the angle negated.

use super::{f32_slice, rows_per_task};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x` is `[B, heads, T, D]`; `cos`/`sin` are `[T, D/2]` for the positions of `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    if cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] {
        candle_core::bail!("rope: x {:?} needs cos/sin [{t}, {}], got {:?}/{:?}", x.dims(), d / 2, cos.dims(), sin.dims());
    }
    if !super::generic::fused_kernels_take(&[x, cos, sin]) {
        return super::generic::rope(x, cos, sin);
    }
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { inverse: false })
}

struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "llmprune-rope"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let cos = f32_slice(self.name(), s2, l2)?;
        let sin = f32_slice(self.name(), s3, l3)?;
        let dims = l1.dims();
        let (t, d) = (dims[2], dims[3]);
        let half = d / 2;
        let sign = if self.inverse { -1f32 } else { 1f32 };
        let mut y = vec![0f32; x.len()];
        let chunk = d * rows_per_task(d);
        y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).enumerate().for_each(|(ci, (yc, xc))| {
            let first_row = ci * (chunk / d);
            for (ri, (yr, xr)) in yc.chunks_mut(d).zip(xc.chunks(d)).enumerate() {
                let pos = (first_row + ri) % t;
                let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
                for i in 0..half {
                    let (x1, x2) = (xr[i], xr[i + half]);
                    let si = sign * s[i];
                    yr[i] = x1 * c[i] - x2 * si;
                    yr[i + half] = x2 * c[i] + x1 * si;
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?.detach();
        let dx = g.apply_op3_no_bwd(&cos.detach(), &sin.detach(), &Rope { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}
