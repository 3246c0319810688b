//! Fused kernels with hand-written backward passes, and inference kernels.
//!
//! candle's fast `rms_norm`, `softmax_last_dim` and `rope` record no backward, and composing
//! them (or SwiGLU) from primitives costs several full-size temporaries each. These ops run one pass
//! forward and one pass backward over contiguous f32 rows, on the CPU. The inference path
//! keeps candle's own fused kernels where they are fast, so tests compare the two; where they
//! are not (ragged attention, the output head's log-sum-exp, SwiGLU's scalar `exp`), it has
//! kernels of its own (`attention`, `lm_head_nll_tiled`, `swiglu_inference`) on the vector
//! loops of `vec_math`. Each differentiable op also has a path composed from candle's
//! primitives (`generic`), taken on other devices and dtypes and tested against the kernel.

mod attention;
mod causal_softmax;
mod frozen_linear;
pub mod generic;
mod lm_head_nll;
mod lora_linear;
mod rms_norm;
mod rope;
mod swiglu;
mod vec_math;

pub use attention::{packed_attention, packed_attention_with, CachedKv, Heads};
pub use causal_softmax::causal_softmax;
pub use frozen_linear::frozen_linear;
pub use lm_head_nll::{lm_head_nll, lm_head_nll_chunked, lm_head_nll_tiled, IGNORE_TARGET};
pub use lora_linear::{lora_linear, Dropout};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use swiglu::{swiglu, swiglu_inference};
pub use vec_math::Simd;

use candle_core::{CpuStorage, Layout, Result};

/// The contiguous f32 data a layout points at, or an error naming the op.
pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported on the CPU"),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rows per rayon task: enough work per task to amortise scheduling.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}
