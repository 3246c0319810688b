//! Recovery training: LoRA adapters trained on instruction data with AdamW, gradient
//! accumulation over micro-batches and, across data-parallel ranks, an all-reduce of the
//! adapter gradients so that every rank takes the same step. A model too large for one
//! device trains as pipeline stages: each micro-batch flows through the stages and back, and
//! the gradient norm for clipping is gathered over the stages.

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
use crate::stage::stage_backward;
use candle_core::{Tensor, Var};
use data::MicroBatch;
use optim::{clip_to_norm, linear_schedule, squared_norms, AdamW};

/// A rank's collectives while training.
pub struct TrainGroups<'a> {
    /// The copies of this rank's model (or stage) that see other micro-batches.
    pub data: &'a mut dyn Communicator,
    /// The stages of this rank's pipeline, by stage (one rank: the whole model).
    pub pipeline: &'a mut dyn Communicator,
}

impl TrainGroups<'_> {
    /// Sums `values` over the whole run: the last stage's (the others hold zeros, which adds
    /// nothing exactly) summed over the data-parallel ranks.
    pub fn sum_from_last_stage(&mut self, values: &mut [f32], what: &str) -> Result<()> {
        let err = |e: crate::collective::CommError| Error::collective(format!("all-reducing {what}"), e);
        if self.pipeline.world_size() > 1 {
            self.pipeline.all_reduce_sum(values).map_err(err)?;
        }
        if self.data.world_size() > 1 {
            self.data.all_reduce_sum(values).map_err(err)?;
        }
        Ok(())
    }

    /// Whether this rank computes the loss.
    pub fn last_stage(&self) -> bool {
        self.pipeline.rank() + 1 == self.pipeline.world_size()
    }
}

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
/// over the data-parallel ranks, clipped by the norm over all stages, and AdamW steps at the
/// scheduled rate. Losses are known on the last stage only.
pub fn train_step(
    model: &LlamaModel,
    vars: &[Var],
    opt: &mut AdamW,
    micro: &[(usize, &MicroBatch)],
    step: u64,
    cfg: &StepConfig,
    groups: &mut TrainGroups,
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
        let ids = Tensor::from_vec(mb.ids.clone(), (mb.rows, mb.len), model.device())?;
        let mut loss_value = None;
        // The operations of `micro_batch_loss`, on the last stage.
        let head = |x: &Tensor| -> Result<Tensor> {
            let nll = model.hidden_to_nll(x, &mb.targets, Exec::Differentiable)?;
            let loss = (nll.sum_all()? / mb.trained_tokens as f64)?;
            loss_value = Some(loss.to_scalar::<f32>()? as f64);
            Ok((loss / cfg.accumulation as f64)?)
        };
        let store = stage_backward(model, groups.pipeline, &ids, head)?;
        losses.extend(loss_value.map(|l| (index, l)));
        trained_tokens += mb.trained_tokens;
        for (sum, var) in sums.iter_mut().zip(vars) {
            let g = store.get(var.as_tensor()).ok_or_else(|| Error::Invalid("an adapter received no gradient".into()))?;
            *sum = Some(match sum.take() {
                Some(s) => (s + g)?,
                None => g.clone(),
            });
        }
    }
    set_dropout_key(model, None);
    let mut grads = sums.into_iter().zip(vars).map(|(s, v)| s.map_or_else(|| v.as_tensor().zeros_like(), Ok)).collect::<candle_core::Result<Vec<_>>>()?;
    if groups.data.world_size() > 1 {
        grads = all_reduce(grads, groups.data)?;
    }
    // Every tensor's squared norm, in the order one process holds them (stage by stage), so
    // that the norm has the single process's bits.
    let mut squares = squared_norms(&grads)?;
    if groups.pipeline.world_size() > 1 {
        let all = groups.pipeline.all_gather(&squares).map_err(|e| Error::collective("gathering the gradient norm over the stages", e))?;
        squares = all.concat();
    }
    let grad_norm = squares.iter().map(|&s| s as f64).sum::<f64>().sqrt();
    // Without a limit the norm is still measured, for the report.
    clip_to_norm(&mut grads, grad_norm, cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;
    let lr = linear_schedule(cfg.peak_lr, step, cfg.warmup_steps, cfg.total_steps);
    opt.step(&grads, lr)?;
    Ok(StepStats { losses, grad_norm, lr, trained_tokens })
}

/// Sums the gradients over the ranks in one flat buffer (one collective call per step), on
/// the device that holds them.
fn all_reduce(grads: Vec<Tensor>, comm: &mut dyn Communicator) -> Result<Vec<Tensor>> {
    let flat = grads.iter().map(|g| g.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
    let sum = comm.all_reduce_sum_tensor(&Tensor::cat(&flat, 0)?).map_err(|e| Error::collective("all-reducing the adapter gradients", e))?;
    let mut at = 0;
    grads
        .iter()
        .map(|g| {
            let n = g.elem_count();
            let t = sum.narrow(0, at, n)?.reshape(g.shape())?.to_dtype(g.dtype())?;
            at += n;
            Ok(t)
        })
        .collect()
}
