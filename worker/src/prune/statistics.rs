//! Gradient statistics of the calibration loss (reference §2.2): the gradient of the mean
//! loss over all windows (one backward pass, as the reference takes it, up to 16 windows;
//! accumulated over blocks of 16 beyond, so that 256 windows do not hold 256 windows'
//! activations) and, for the
//! second-order criteria, the diagonal empirical Fisher `Σ_j g_j² / N` from one backward pass
//! per window. The gradient stays in the dtype backward computed it in (the weights'; a copy in
//! f32 would add nothing but memory); the Fisher is squared and summed in f32 whatever the
//! weights' dtype (the reference squares fp16 gradients, where `g²` of g ≈ 1e-5 underflows).
//! Scores are computed in f32 from both ([`super::importance`]). Gradients are converted one
//! tensor at a time, so at 7B in bf16 the peak is the weights, one backward pass's gradients
//! and the f32 Fisher sum.

use crate::collective::Communicator;
use crate::error::{Error, Result};
use crate::model::{Exec, LlamaModel};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// Per parameter name: the gradient, and the Fisher diagonal when it was asked for.
pub struct GradientStats {
    pub grad: HashMap<String, Tensor>,
    pub fisher: Option<HashMap<String, Tensor>>,
}

/// Statistics of `vars` (from [`LlamaModel::make_trainable`]) over calibration `windows`
/// (equal lengths, at least 2 tokens).
pub fn gradient_stats(model: &LlamaModel, vars: &[(String, Var)], windows: &[Vec<u32>], with_fisher: bool) -> Result<GradientStats> {
    gradient_stats_with(model.device(), vars, windows, with_fisher, &mut |ids| Ok(model.loss(ids, Exec::Differentiable)?.backward()?))
}

/// [`gradient_stats`] with `backward` running the loss's backward pass over a batch of
/// windows: the whole model in one process, or this rank's stage of a pipeline.
pub fn gradient_stats_with(
    device: &candle_core::Device,
    vars: &[(String, Var)],
    windows: &[Vec<u32>],
    with_fisher: bool,
    backward: &mut dyn FnMut(&Tensor) -> Result<GradStore>,
) -> Result<GradientStats> {
    let len = windows.first().map(Vec::len).ok_or_else(|| Error::Invalid("no calibration windows".into()))?;
    if windows.iter().any(|w| w.len() != len) {
        return Err(Error::Invalid("calibration windows differ in length".into()));
    }
    let batch = Tensor::from_vec(windows.concat(), (windows.len(), len), device)?;
    let grad = mean_loss_gradient(vars, &batch, backward)?;
    let fisher = if with_fisher {
        let mut sum: HashMap<String, Tensor> = HashMap::new();
        for j in 0..windows.len() {
            let store = backward(&batch.narrow(0, j, 1)?)?;
            for (name, var) in vars {
                add_into(&mut sum, name, gradient(&store, name, var)?.to_dtype(DType::F32)?.sqr()?)?;
            }
        }
        let n = windows.len() as f64;
        Some(sum.into_iter().map(|(k, v)| Ok((k, (v / n)?))).collect::<Result<_>>()?)
    } else {
        None
    };
    Ok(GradientStats { grad, fisher })
}

/// The gradient of the mean loss over the windows of `batch` (`[N, T]`): one backward pass, as
/// the reference takes it, up to [`GRADIENT_WINDOWS_PER_PASS`] windows; beyond, the windows'
/// passes in blocks of that many, each block's gradient weighted by its share (the mean loss is
/// the windows' mean), summed in f32, so that the activations one pass holds stay bounded.
fn mean_loss_gradient(vars: &[(String, Var)], batch: &Tensor, backward: &mut dyn FnMut(&Tensor) -> Result<GradStore>) -> Result<HashMap<String, Tensor>> {
    let n = batch.dim(0)?;
    if n <= GRADIENT_WINDOWS_PER_PASS {
        return gradients(vars, backward(batch)?);
    }
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    for start in (0..n).step_by(GRADIENT_WINDOWS_PER_PASS) {
        let rows = GRADIENT_WINDOWS_PER_PASS.min(n - start);
        let store = backward(&batch.narrow(0, start, rows)?)?;
        let share = rows as f64 / n as f64;
        for (name, var) in vars {
            add_into(&mut sum, name, (gradient(&store, name, var)?.to_dtype(DType::F32)? * share)?)?;
        }
    }
    vars.iter()
        .map(|(name, var)| {
            let g = sum.remove(name).ok_or_else(|| Error::Invalid(format!("{name} received no gradient")))?;
            Ok((name.clone(), g.to_dtype(var.as_tensor().dtype())?))
        })
        .collect()
}

/// How many calibration windows one backward pass takes at most for the mean loss's
/// gradient: the reference's 10 windows are one pass, as there; more are accumulated.
pub const GRADIENT_WINDOWS_PER_PASS: usize = 16;

/// The backward passes [`gradient_stats`] takes for `windows` windows.
pub fn gradient_passes(windows: usize, with_fisher: bool) -> usize {
    windows.div_ceil(GRADIENT_WINDOWS_PER_PASS).max(1) + if with_fisher { windows } else { 0 }
}

/// Adds `t` to `sum[name]` (which it starts when absent).
fn add_into(sum: &mut HashMap<String, Tensor>, name: &str, t: Tensor) -> Result<()> {
    let acc = match sum.remove(name) {
        Some(acc) => (acc + t)?,
        None => t,
    };
    sum.insert(name.to_string(), acc);
    Ok(())
}

/// Every variable's gradient from `store`, as backward computed it.
fn gradients(vars: &[(String, Var)], store: GradStore) -> Result<HashMap<String, Tensor>> {
    vars.iter().map(|(name, var)| Ok((name.clone(), gradient(&store, name, var)?))).collect()
}

fn gradient(store: &GradStore, name: &str, var: &Var) -> Result<Tensor> {
    store.get(var.as_tensor()).cloned().ok_or_else(|| Error::Invalid(format!("{name} received no gradient")))
}

/// Combines the statistics that data-parallel replicas took over disjoint blocks of one
/// calibration set: `stats` covers `local` of the `total` windows. The gradient of the mean
/// loss and the Fisher sum are linear in the windows, so the replicas all-reduce them
/// (weighted by their share) and never the absolute values the scores take afterwards. Every
/// replica ends with the same bits (the ring all-reduce is bit-identical across ranks); they
/// equal the single-process statistics up to the order of the float sums over windows.
pub fn all_reduce_stats(stats: GradientStats, local: usize, total: usize, comm: &mut dyn Communicator) -> Result<GradientStats> {
    if comm.world_size() == 1 {
        return Ok(stats);
    }
    let share = local as f64 / total as f64;
    let mut reduce = |map: HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>> {
        let scaled = map.into_iter().map(|(name, t)| Ok((name, (t * share)?))).collect::<Result<_>>()?;
        all_reduce_by_name(scaled, "statistics", comm)
    };
    let grad = reduce(stats.grad)?;
    let fisher = stats.fisher.map(&mut reduce).transpose()?;
    Ok(GradientStats { grad, fisher })
}

/// Each tensor of `map` summed over the ranks of `comm`, in name order: every rank must reduce
/// the same tensors in the same order. `what` names them in errors.
pub fn all_reduce_by_name(mut map: HashMap<String, Tensor>, what: &str, comm: &mut dyn Communicator) -> Result<HashMap<String, Tensor>> {
    let mut names: Vec<String> = map.keys().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let t = map.remove(&name).ok_or_else(|| Error::Invalid(format!("{name} vanished")))?;
            let sum = comm.all_reduce_sum_tensor(&t).map_err(|e| Error::collective(format!("all-reducing the {what} of {name}"), e))?;
            Ok((name, sum))
        })
        .collect()
}
