//! Recovery training: LoRA adapters trained on instruction data with AdamW, gradient
//! accumulation over micro-batches and, across data-parallel ranks, an all-reduce of the
//! adapter gradients so that every rank takes the same step.

pub mod checkpoint;
pub mod data;
pub mod job;
pub mod optim;
pub mod records;
pub mod recover;

use crate::collective::Communicator;
use crate::error::{Error, Result};
use crate::lora::set_dropout_key;
use crate::model::{Exec, LlamaModel};
use candle_core::{Tensor, Var};
use data::MicroBatch;
use optim::{clip_grad_norm, linear_schedule, AdamW};

/// Mean next-token NLL over the labelled positions of a micro-batch (the reference's
/// `CrossEntropyLoss(ignore_index=-100)`), differentiable in the model's variables.
pub fn micro_batch_loss(model: &LlamaModel, mb: &MicroBatch) -> Result<Tensor> {
    if mb.trained_tokens == 0 {
        return Err(Error::Invalid("a micro-batch without labelled tokens (every response was cut off or masked)".into()));
    }
    let ids = Tensor::from_vec(mb.ids.clone(), (mb.rows, mb.len), model.device())?;
    let x = model.forward_layers(model.embed_tokens(&ids)?, Exec::Differentiable)?;
    let nll = model.hidden_to_nll(&x, &mb.targets, Exec::Differentiable)?;
    Ok((nll.sum_all()? / mb.trained_tokens as f64)?)
}

/// How one optimizer step is taken.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Micro-batches per optimizer step over all ranks (the global batch / micro-batch size).
    pub accumulation: usize,
    /// Gradient-norm limit (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Seeds the dropout masks, with the step and the micro-batch's global index.
    pub seed: u64,
}

/// What a step did.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// This rank's micro-batch losses, by global micro-batch index.
    pub losses: Vec<(usize, f64)>,
    pub grad_norm: f64,
    pub lr: f64,
    pub trained_tokens: usize,
}

/// The dropout key of global micro-batch `index` of `step`: the same on whichever rank runs it.
pub fn dropout_key(seed: u64, step: u64, index: usize) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (step << 20) ^ index as u64
}

/// One optimizer step of `step` (0-based): `micro` holds this rank's micro-batches with their
/// global indices; each loss is divided by the accumulation, the gradients are summed here and
/// over the ranks (`comm`), clipped, and AdamW steps at the scheduled rate.
pub fn train_step(
    model: &LlamaModel,
    vars: &[Var],
    opt: &mut AdamW,
    micro: &[(usize, &MicroBatch)],
    step: u64,
    cfg: &StepConfig,
    comm: &mut dyn Communicator,
) -> Result<StepStats> {
    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut losses = Vec::with_capacity(micro.len());
    let mut trained_tokens = 0;
    for &(index, mb) in micro {
        if mb.trained_tokens == 0 {
            // Every response cut off: nothing to learn from, and no loss to divide.
            continue;
        }
        set_dropout_key(model, Some(dropout_key(cfg.seed, step, index)));
        let loss = micro_batch_loss(model, mb)?;
        losses.push((index, loss.to_scalar::<f32>()? as f64));
        trained_tokens += mb.trained_tokens;
        let store = (loss / cfg.accumulation as f64)?.backward()?;
        for (sum, var) in sums.iter_mut().zip(vars) {
            let g = store.get(var.as_tensor()).ok_or_else(|| Error::Invalid("an adapter received no gradient".into()))?;
            *sum = Some(match sum.take() {
                Some(s) => (s + g)?,
                None => g.clone(),
            });
        }
    }
    set_dropout_key(model, None);
    let mut grads = sums
        .into_iter()
        .zip(vars)
        .map(|(s, v)| s.map_or_else(|| v.as_tensor().zeros_like(), Ok))
        .collect::<candle_core::Result<Vec<_>>>()?;
    if comm.world_size() > 1 {
        grads = all_reduce(grads, comm)?;
    }
    // Without a limit the norm is still measured, for the report.
    let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;
    let lr = linear_schedule(cfg.peak_lr, step, cfg.warmup_steps, cfg.total_steps);
    opt.step(&grads, lr)?;
    Ok(StepStats { losses, grad_norm, lr, trained_tokens })
}

/// Sums the gradients over the ranks in one flat buffer (one collective call per step).
fn all_reduce(grads: Vec<Tensor>, comm: &mut dyn Communicator) -> Result<Vec<Tensor>> {
    let mut flat = Vec::with_capacity(grads.iter().map(Tensor::elem_count).sum());
    for g in &grads {
        flat.extend(g.flatten_all()?.to_vec1::<f32>()?);
    }
    comm.all_reduce_sum(&mut flat).map_err(|e| Error::Invalid(format!("all-reducing the adapter gradients: {e}")))?;
    let mut at = 0;
    grads
        .iter()
        .map(|g| {
            let n = g.elem_count();
            let t = Tensor::from_slice(&flat[at..at + n], g.shape(), g.device())?;
            at += n;
            Ok(t)
        })
        .collect()
}
