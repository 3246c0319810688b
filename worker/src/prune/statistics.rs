//! Gradient statistics of the calibration loss (reference §2.2): the gradient of the mean
//! loss over all windows (one backward pass, as the reference takes it) and, for the
//! second-order criteria, the diagonal empirical Fisher `Σ_j g_j² / N` from one backward pass
//! per window. Both are kept in f32 whatever the weights' dtype.

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
    let grad = gradients(vars, backward(&batch)?)?;
    let fisher = if with_fisher {
        let mut sum: HashMap<String, Tensor> = HashMap::new();
        for j in 0..windows.len() {
            for (name, g) in gradients(vars, backward(&batch.narrow(0, j, 1)?)?)? {
                let sq = g.sqr()?;
                let acc = match sum.remove(&name) {
                    Some(acc) => (acc + sq)?,
                    None => sq,
                };
                sum.insert(name, acc);
            }
        }
        let n = windows.len() as f64;
        Some(sum.into_iter().map(|(k, v)| Ok((k, (v / n)?))).collect::<Result<_>>()?)
    } else {
        None
    };
    Ok(GradientStats { grad, fisher })
}

/// Every variable's gradient from `store`, in f32.
fn gradients(vars: &[(String, Var)], store: GradStore) -> Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(name, var)| {
            let g = store
                .get(var.as_tensor())
                .ok_or_else(|| Error::Invalid(format!("{name} received no gradient")))?;
            Ok((name.clone(), g.to_dtype(DType::F32)?))
        })
        .collect()
}
