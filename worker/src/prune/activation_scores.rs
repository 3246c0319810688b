//! The activation criteria: a head or neuron scored by what its removal does to the
//! projection that consumes it (o_proj for heads, down_proj for neurons), from that
//! projection's weight and the statistics of its input over the calibration tokens
//! ([`super::activations`]). Per input channel `c` of the consumer `W` (`[out, in]`), with
//! `N` tokens, `s = Σ_t x_t` and `G = Σ_t x_t x_tᵀ`:
//!
//! - `fluctuation` (FLAP): `var_c · Σ_i W_ic²`, `var_c = (G_cc − s_c²/N) / (N − 1)`;
//! - `wanda` (structured Wanda): `Σ_i |W_ic| · √(G_cc / N)`;
//!
//! each summed over the unit's channels; and `obs` (Optimal Brain Surgeon, ZipLM's structured
//! form): with `H = G/N` damped and `P = H⁻¹`, a unit whose channels are `g` scores
//! `tr(W_g (P_gg)⁻¹ W_gᵀ)`, the increase of the consumer's mean squared output error when
//! those channels go and the remaining columns are re-solved. Scores are computed in f64.

use super::activations::{ActivationStats, InputStats};
use super::gram::{cholesky, damped_gram, host_f64, host_matrix};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use faer::linalg::solvers::{DenseSolveCore, Solve};
use faer::Mat;
use llmprune_shared::depgraph::{Axis, Group, GroupMember};
use llmprune_shared::planner::{Criterion, ModeName};
use std::collections::HashMap;

/// The member of `group` whose input channels are the group's outputs and whose input
/// statistics were gathered: o_proj's columns for heads, down_proj's for neurons.
pub fn consumer_member<'g>(group: &'g Group, stats: &ActivationStats) -> Result<&'g GroupMember> {
    group.members.iter().find(|m| m.axis == Axis::Cols && stats.contains_key(&m.param)).ok_or_else(|| no_consumer(group))
}

/// The error for a group none of whose members' inputs were gathered.
pub fn no_consumer(group: &Group) -> Error {
    Error::Invalid(format!("group `{}` has no o_proj or down_proj input among its members: the activation criteria score heads and neurons", group.root))
}

/// One score per unit of `group` by the activation criterion `criterion`.
pub fn activation_group_scores(
    group: &Group,
    criterion: Criterion,
    weights: &HashMap<String, Tensor>,
    stats: &ActivationStats,
    damping: f64,
) -> Result<Vec<f32>> {
    let member = consumer_member(group, stats)?;
    let w = weights.get(&member.param).ok_or_else(|| Error::Invalid(format!("no weight `{}`", member.param)))?;
    let s = &stats[&member.param];
    let per_unit = |channel: &[f64]| -> Vec<f32> { member.channels.iter().map(|cs| cs.iter().map(|&c| channel[c]).sum::<f64>() as f32).collect() };
    match criterion {
        Criterion::Fluctuation => {
            let n = s.tokens as f64;
            if s.tokens < 2 {
                return Err(Error::Invalid(format!("{}: the fluctuation of its inputs needs at least 2 calibration tokens", member.param)));
            }
            let (diag, sum) = (gram_diagonal(s)?, host_f64(&s.sum)?);
            let col_sq = host_f64(&w.to_dtype(DType::F32)?.sqr()?.sum(0)?)?;
            let channel: Vec<f64> = (0..diag.len()).map(|c| ((diag[c] - sum[c] * sum[c] / n) / (n - 1.0)).max(0.0) * col_sq[c]).collect();
            Ok(per_unit(&channel))
        }
        Criterion::Wanda => {
            let n = s.tokens as f64;
            let diag = gram_diagonal(s)?;
            let col_abs = host_f64(&w.to_dtype(DType::F32)?.abs()?.sum(0)?)?;
            let channel: Vec<f64> = (0..diag.len()).map(|c| col_abs[c] * (diag[c] / n).sqrt()).collect();
            Ok(per_unit(&channel))
        }
        Criterion::Obs => {
            let h = damped_gram(&member.param, s, damping)?;
            let inverse = cholesky(&h, &format!("the Gram matrix of {}'s inputs", member.param))?.inverse();
            let w = host_matrix(w)?;
            member.channels.iter().map(|g| obs_score(&w, &inverse, g, &member.param)).collect()
        }
        other => Err(Error::Invalid(format!("{} is not an activation criterion", other.name()))),
    }
}

/// `tr(W_g (P_gg)⁻¹ W_gᵀ)` for the channels `g` of `w` (`[out, in]`), `P` the inverse Gram matrix.
fn obs_score(w: &Mat<f64>, inverse: &Mat<f64>, g: &[usize], name: &str) -> Result<f32> {
    let k = g.len();
    let block = Mat::from_fn(k, k, |a, b| inverse[(g[a], g[b])]);
    let w_g_t = Mat::from_fn(k, w.nrows(), |a, i| w[(i, g[a])]);
    let solved = cholesky(&block, &format!("a block of the inverse Gram matrix of {name}'s inputs"))?.solve(&w_g_t);
    let mut total = 0f64;
    for a in 0..k {
        for i in 0..w.nrows() {
            total += w_g_t[(a, i)] * solved[(a, i)];
        }
    }
    Ok(total as f32)
}

/// `G_cc` for every channel, without copying the whole matrix to the host.
fn gram_diagonal(s: &InputStats) -> Result<Vec<f64>> {
    let n = s.gram.dim(0)?;
    let index = Tensor::from_vec((0..n as u32).map(|c| c * (n as u32 + 1)).collect::<Vec<_>>(), n, s.gram.device())?;
    host_f64(&s.gram.flatten_all()?.index_select(&index, 0)?)
}
