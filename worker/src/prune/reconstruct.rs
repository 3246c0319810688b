//! Least-squares reconstruction of a consumer (o_proj, down_proj) that loses input channels:
//! the kept columns re-solved so that, on the calibration inputs, its output stays as close as
//! possible to the uncut layer's, `min ‖W X − W'_K X_K‖²`, whose solution with the damped
//! Gram matrix `Hd = XᵀX/N + λI` is `W'_K = W · Hd[:, K] · Hd_KK⁻¹` (SparseGPT's and SlimGPT's
//! update, solved at once). Solved in f64 on the host, on the worker that holds the layer.

use super::activations::InputStats;
use super::gram::{cholesky, damped_gram, host_matrix};
use crate::error::{Error, Result};
use candle_core::Tensor;
use faer::linalg::solvers::Solve;
use faer::Mat;

/// The consumer `w` (`[out, in]`, named `name`) at full width, its `kept` columns (ascending)
/// re-solved from its inputs' statistics and the others zero, in `w`'s dtype and device:
/// slicing it to the kept columns gives the reconstructed weight.
pub fn reconstruct_consumer(name: &str, weight: &Tensor, stats: &InputStats, kept: &[usize], damping: f64) -> Result<Tensor> {
    let (out, width) = weight.dims2()?;
    if stats.gram.dims() != [width, width] {
        return Err(Error::Invalid(format!("{name}: input statistics of {:?} for a weight of {width} inputs", stats.gram.dims())));
    }
    if let Some(&bad) = kept.iter().find(|&&c| c >= width) {
        return Err(Error::Invalid(format!("{name}: kept input channel {bad} of {width}")));
    }
    let h = damped_gram(name, stats, damping)?;
    let w = host_matrix(weight)?;
    let k = kept.len();
    let h_kk = Mat::from_fn(k, k, |a, b| h[(kept[a], kept[b])]);
    let h_k = Mat::from_fn(k, width, |a, j| h[(kept[a], j)]);
    // Hd_KK · W'_Kᵀ = Hd[K, :] · Wᵀ.
    let rhs = &h_k * w.transpose();
    let solved = cholesky(&h_kk, &format!("the Gram matrix of {name}'s kept inputs"))?.solve(&rhs);
    let mut full = vec![0f32; out * width];
    for (a, &c) in kept.iter().enumerate() {
        for i in 0..out {
            full[i * width + c] = solved[(a, i)] as f32;
        }
    }
    Ok(Tensor::from_vec(full, (out, width), weight.device())?.to_dtype(weight.dtype())?)
}
