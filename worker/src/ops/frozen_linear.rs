//! `x Wᵀ` for a weight that takes no gradient (a LoRA base weight). candle's matmul backward
//! always computes both operands' gradients, so a frozen projection would still pay for its
//! weight's gradient (a third of a training step's FLOPs) and allocate a weight-sized buffer
//! per micro-batch; this op's backward computes only the input's.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

struct FrozenLinear {
    x: Tensor,
    w: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x Wᵀ` for `x` `[N, in]` and `w` `[out, in]`, differentiable in `x` only. Off the CPU or
/// outside f32 it is the plain matmul.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return x.matmul(&w.t()?);
    }
    x.apply_op1(FrozenLinear { x: x.detach(), w: w.detach() })
}
