//! What happens to a consumer (o_proj, down_proj) that loses input channels, from its inputs'
//! statistics (`llmprune_shared::plan::Reconstruction`):
//! - least-squares reconstruction: the kept columns re-solved so that, on the calibration
//!   inputs, its output stays as close as possible to the uncut layer's, `min ‖W X − W'_K X_K‖²`,
//!   whose solution with the damped Gram matrix `Hd = XᵀX/N + λI` is `W'_K = W · Hd[:, K] ·
//!   Hd_KK⁻¹` (SparseGPT's and SlimGPT's update, solved at once);
//! - bias compensation: the removed channels' mean contribution `W[:, R] · μ_R` added to the
//!   bias (FLAP), so the output keeps its mean;
//! - both: least squares with an intercept, the same solve on the damped covariance, and the
//!   bias that restores the mean output, `W μ − W'_K μ_K`.
//!
//! Solved in f64 on the host, on the worker that holds the layer.

use super::activations::InputStats;
use super::gram::{cholesky, damped_covariance, damped_gram, host_matrix, input_mean};
use crate::error::{Error, Result};
use candle_core::Tensor;
use faer::linalg::solvers::Solve;
use faer::Mat;
use llmprune_shared::plan::Reconstruction;

/// A consumer after the cut's rewrite: its weight at full width (the kept columns re-solved,
/// the others zero) where the weights are re-solved, and what its bias gains where biases are
/// compensated (`[out]`), both in the weight's dtype and device.
pub struct Rewritten {
    pub weight: Option<Tensor>,
    pub bias_delta: Option<Tensor>,
}

/// The consumer `w` (`[out, in]`, named `name`) rewritten as `how` says, its `kept` input
/// channels (ascending) staying.
pub fn rewrite_consumer(name: &str, weight: &Tensor, stats: &InputStats, kept: &[usize], how: &Reconstruction) -> Result<Rewritten> {
    let (out, width) = check_shapes(name, weight, stats, kept)?;
    if !how.bias {
        let rebuilt = how.weights.then(|| reconstruct_consumer(name, weight, stats, kept, how.damping)).transpose()?;
        return Ok(Rewritten { weight: rebuilt, bias_delta: None });
    }
    let mean = input_mean(name, stats)?;
    let w = host_matrix(weight)?;
    let (new_w, delta) = if how.weights {
        let cov = damped_covariance(name, stats, &mean, how.damping)?;
        let solved = solve_kept(name, &cov, &w, kept)?;
        // The bias restores the mean output: W μ − W'_K μ_K.
        let delta: Vec<f64> = (0..out)
            .map(|i| (0..width).map(|c| w[(i, c)] * mean[c]).sum::<f64>() - kept.iter().enumerate().map(|(a, &c)| solved[(a, i)] * mean[c]).sum::<f64>())
            .collect();
        (Some(full_width(&solved, kept, out, width)), delta)
    } else {
        let mut is_kept = vec![false; width];
        for &c in kept {
            is_kept[c] = true;
        }
        let delta = (0..out).map(|i| (0..width).filter(|&c| !is_kept[c]).map(|c| w[(i, c)] * mean[c]).sum::<f64>()).collect();
        (None, delta)
    };
    let on_device = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, shape, weight.device())?.to_dtype(weight.dtype())?) };
    Ok(Rewritten {
        weight: new_w.map(|v| on_device(v, &[out, width])).transpose()?,
        bias_delta: Some(on_device(delta.into_iter().map(|d| d as f32).collect(), &[out])?),
    })
}

fn check_shapes(name: &str, weight: &Tensor, stats: &InputStats, kept: &[usize]) -> Result<(usize, usize)> {
    let (out, width) = weight.dims2()?;
    if stats.gram.dims() != [width, width] {
        return Err(Error::Invalid(format!("{name}: input statistics of {:?} for a weight of {width} inputs", stats.gram.dims())));
    }
    if let Some(&bad) = kept.iter().find(|&&c| c >= width) {
        return Err(Error::Invalid(format!("{name}: kept input channel {bad} of {width}")));
    }
    Ok((out, width))
}

/// `W'_Kᵀ` (`[k, out]`) solving `M_KK · W'_Kᵀ = M[K, :] · Wᵀ` for the damped second moment `m`.
fn solve_kept(name: &str, m: &Mat<f64>, w: &Mat<f64>, kept: &[usize]) -> Result<Mat<f64>> {
    let (k, width) = (kept.len(), m.nrows());
    let m_kk = Mat::from_fn(k, k, |a, b| m[(kept[a], kept[b])]);
    let m_k = Mat::from_fn(k, width, |a, j| m[(kept[a], j)]);
    let rhs = &m_k * w.transpose();
    Ok(cholesky(&m_kk, &format!("the Gram matrix of {name}'s kept inputs"))?.solve(&rhs))
}

/// The solved `W'_Kᵀ` as a row-major `[out, width]` weight, zero in the removed columns.
fn full_width(solved: &Mat<f64>, kept: &[usize], out: usize, width: usize) -> Vec<f32> {
    let mut full = vec![0f32; out * width];
    for (a, &c) in kept.iter().enumerate() {
        for i in 0..out {
            full[i * width + c] = solved[(a, i)] as f32;
        }
    }
    full
}

/// The consumer `w` (`[out, in]`, named `name`) at full width, its `kept` columns (ascending)
/// re-solved from its inputs' statistics and the others zero, in `w`'s dtype and device:
/// slicing it to the kept columns gives the reconstructed weight.
pub fn reconstruct_consumer(name: &str, weight: &Tensor, stats: &InputStats, kept: &[usize], damping: f64) -> Result<Tensor> {
    let (out, width) = check_shapes(name, weight, stats, kept)?;
    let h = damped_gram(name, stats, damping)?;
    let solved = solve_kept(name, &h, &host_matrix(weight)?, kept)?;
    Ok(Tensor::from_vec(full_width(&solved, kept, out, width), (out, width), weight.device())?.to_dtype(weight.dtype())?)
}
