//! The inputs' Gram matrix as the second-order criteria and the reconstruction solve with it:
//! `H = XᵀX / N` in f64 on the host, damped, and its Cholesky factor (faer).

use super::activations::InputStats;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::Llt;
use faer::{Mat, Side};

/// `H = XᵀX / N + λ·I` for the consumer `name`, `λ = damping × mean(diag H)`. Input channels
/// that were never active (`H_cc = 0`) get a unit diagonal first, as SparseGPT and ZipLM do,
/// so that `H` stays invertible whatever the damping.
pub fn damped_gram(name: &str, stats: &InputStats, damping: f64) -> Result<Mat<f64>> {
    damped_second_moment(name, stats, None, damping)
}

/// The inputs' mean `μ = Σx / N` (f64).
pub fn input_mean(name: &str, stats: &InputStats) -> Result<Vec<f64>> {
    if stats.tokens == 0 {
        return Err(Error::Invalid(format!("{name}: no calibration tokens reached its input")));
    }
    Ok(host_f64(&stats.sum)?.into_iter().map(|s| s / stats.tokens as f64).collect())
}

/// The covariance `Σ = XᵀX / N − μμᵀ`, damped as [`damped_gram`] damps `H` (channels of no
/// variance get a unit diagonal): least squares with an intercept solves with it.
pub fn damped_covariance(name: &str, stats: &InputStats, mean: &[f64], damping: f64) -> Result<Mat<f64>> {
    damped_second_moment(name, stats, Some(mean), damping)
}

fn damped_second_moment(name: &str, stats: &InputStats, mean: Option<&[f64]>, damping: f64) -> Result<Mat<f64>> {
    let n = stats.gram.dim(0)?;
    if stats.tokens == 0 {
        return Err(Error::Invalid(format!("{name}: no calibration tokens reached its input")));
    }
    let g = host_f64(&stats.gram)?;
    let tokens = stats.tokens as f64;
    let centre = |i: usize, j: usize| mean.map_or(0.0, |m| m[i] * m[j]);
    // The f32 product need not be exactly symmetric; the mean of both halves is.
    let mut h = Mat::from_fn(n, n, |i, j| (g[i * n + j] + g[j * n + i]) / (2.0 * tokens) - centre(i, j));
    for i in 0..n {
        if h[(i, i)] <= 0.0 {
            h[(i, i)] = 1.0;
        }
    }
    let lambda = damping * (0..n).map(|i| h[(i, i)]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[(i, i)] += lambda;
    }
    Ok(h)
}

/// The Cholesky factor of the symmetric positive definite `a`, or an error naming `what`.
pub fn cholesky(a: &Mat<f64>, what: &str) -> Result<Llt<f64>> {
    a.llt(Side::Lower).map_err(|_| Error::Invalid(format!("{what} is not positive definite: raise --damping")))
}

/// A tensor's elements as f64 on the host, row-major.
pub fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A `[rows, cols]` weight as an f64 matrix.
pub fn host_matrix(w: &Tensor) -> Result<Mat<f64>> {
    let (rows, cols) = w.dims2()?;
    let v = host_f64(w)?;
    Ok(Mat::from_fn(rows, cols, |i, j| v[i * cols + j]))
}
