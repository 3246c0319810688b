//! SwiGLU `silu(gate) ⊙ up`, the LLaMA MLP's activation, with backward.
//!
//! candle composes it as `silu`, `mul` and, backward, half a dozen element-wise passes over
//! `[tokens, intermediate]` with a temporary each; here it is one pass each way.

use super::{f32_slice, Simd};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const TASK: usize = 16 * 1024;

/// Differentiable `silu(gate) ⊙ up` for two tensors of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gate.dims(), up.dims());
    }
    if !super::generic::fused_kernels_take(&[gate, up]) {
        return super::generic::swiglu(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// `silu(gate) ⊙ up` without a graph: f32 on the CPU in one vectorised pass (candle's
/// `silu` calls the scalar libm `exp` per element, then `mul` makes a second pass); other
/// dtypes and devices by candle's ops.
pub fn swiglu_inference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dtype() != DType::F32 || !gate.device().is_cpu() {
        return gate.silu()? * up;
    }
    if gate.dims() != up.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gate.dims(), up.dims());
    }
    gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &FastSwiGlu)
}

struct FastSwiGlu;

impl CustomOp2 for FastSwiGlu {
    fn name(&self) -> &'static str {
        "llmprune-swiglu-inference"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut y = f32_slice(self.name(), s1, l1)?.to_vec();
        let up = f32_slice(self.name(), s2, l2)?;
        let simd = Simd::detect();
        y.par_chunks_mut(TASK).zip(up.par_chunks(TASK)).for_each(|(yc, uc)| simd.swiglu_in_place(yc, uc));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

/// The expression candle's `silu` evaluates, so the differentiable op and candle's
/// composition agree bit for bit.
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "llmprune-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = f32_slice(self.name(), s1, l1)?;
        let up = f32_slice(self.name(), s2, l2)?;
        let mut y = vec![0f32; gate.len()];
        y.par_chunks_mut(TASK).zip(gate.par_chunks(TASK).zip(up.par_chunks(TASK))).for_each(|(yc, (gc, uc))| {
            for ((o, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                *o = silu(g) * u;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.detach().apply_op3_no_bwd(&up.detach(), &grad.contiguous()?.detach(), &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `[d_gate, d_up]` stacked on a new leading axis: with `s = σ(g)`,
/// `d_up = grad · g s` and `d_gate = grad · u · s (1 + g (1 − s))`.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "llmprune-swiglu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let gate = f32_slice(self.name(), s1, l1)?;
        let up = f32_slice(self.name(), s2, l2)?;
        let grad = f32_slice(self.name(), s3, l3)?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        d_gate.par_chunks_mut(TASK).zip(d_up.par_chunks_mut(TASK)).zip(gate.par_chunks(TASK).zip(up.par_chunks(TASK)).zip(grad.par_chunks(TASK))).for_each(
            |((dgc, duc), ((gc, uc), rc))| {
                for ((((dg, du), &g), &u), &r) in dgc.iter_mut().zip(duc).zip(gc).zip(uc).zip(rc) {
                    let s = 1.0 / (1.0 + (-g).exp());
                    *du = r * g * s;
                    *dg = r * u * s * (1.0 + g * (1.0 - s));
                }
            },
        );
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
