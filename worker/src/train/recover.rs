//! The recovery loop: epochs over a seeded shuffle of the training records, global batches cut
//! into micro-batches (global micro-batch `j` of a step runs on rank `j mod world`), one AdamW
//! step per global batch, and the validation loss every few steps. The same code runs on one
//! rank and on many: only the micro-batches a rank runs and the all-reduce differ.

use super::checkpoint::{adapter_checksum, best_step, restore, Checkpoints, TrainState};
use super::data::{micro_batch, tokenize, Example, MicroBatch, TokenizeOptions};
use super::optim::{AdamW, AdamWConfig};
use super::records::RecordFile;
use super::{train_step, StepConfig, TrainGroups};
use crate::collective::Communicator;
use crate::error::{Error, Result};
use crate::eval::perplexity::{nll_sum, CorpusKind, PplCorpus};
use crate::loader::TextTokenizer;
use crate::model::{Exec, LlamaModel};
use crate::stage::stage_forward;
use candle_core::{Tensor, Var};
use llmprune_shared::jobs::JobError;
use llmprune_shared::PyRandom;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RecoverOptions {
    pub adamw: AdamWConfig,
    pub epochs: usize,
    /// Stop after this many optimizer steps (before the epochs end).
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    /// Validation records split off the data (seeded).
    pub val_size: usize,
    /// Validation loss every this many steps (and at the end).
    pub eval_every: u64,
    /// A checkpoint every this many steps (and at every evaluation and the end).
    pub save_every: u64,
    pub tokenize: TokenizeOptions,
    /// Where checkpoints go (at every evaluation and at the end); `None`: none.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the newest checkpoint there.
    pub resume: bool,
    /// What makes two runs the same; a checkpoint with another is refused.
    pub fingerprint: String,
    /// Perplexity at every evaluation on these texts (the reference's `--extra_val_dataset`).
    pub extra_val: Vec<(CorpusKind, PathBuf)>,
    /// Chunks per text at most (`None`: all).
    pub extra_val_chunks: Option<usize>,
}

impl RecoverOptions {
    pub fn validate(&self) -> Result<()> {
        if self.micro_batch_size == 0 || self.batch_size == 0 || !self.batch_size.is_multiple_of(self.micro_batch_size) {
            let msg = format!("must be a positive multiple of {{micro_batch_size}} {}", self.micro_batch_size);
            return Err(JobError::at("batch_size", self.batch_size, msg).into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err(JobError::new("epochs", "must be at least 1").into());
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return Err(JobError::at("lr", self.lr, "must be positive").into());
        }
        if self.tokenize.cutoff_len < 2 {
            return Err(JobError::new("cutoff_len", "must be at least 2").into());
        }
        Ok(())
    }
}

/// Progress after a step, for logs and the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: usize,
    /// Mean of this step's micro-batch losses (over all ranks).
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub val_loss: Option<f64>,
    /// Wall time of the step's training (its evaluation not included).
    pub seconds: f64,
    /// Labelled tokens trained on, over all ranks.
    pub trained_tokens: u64,
    /// Perplexities of this evaluation, by text.
    #[serde(default)]
    pub extra_val: Vec<(String, f64)>,
}

/// What a recovery tells its caller as it goes.
pub enum RecoverEvent<'a> {
    /// A training step finished.
    Step(&'a StepReport),
    /// An evaluation between steps is under way (`what`: `validation loss`, `validation
    /// perplexity (wikitext2)`): `done` of `total` `unit` of this worker's part.
    Evaluating { what: String, done: usize, total: usize, unit: &'static str, eta_s: f64 },
}

/// The time training and evaluations took so far, for the ETA of the rest.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    train_s: f64,
    steps: u64,
    eval_s: f64,
    evals: u64,
}

impl Pace {
    /// Seconds left after `step` of `total`: the remaining steps at the mean step time so far,
    /// and the evaluations still due (every `eval_every` steps and after the last, when the
    /// run `evaluates`) at the mean evaluation time so far.
    fn eta_s(&self, step: u64, total: u64, eval_every: u64, evaluates: bool) -> f64 {
        let steps_left = total.saturating_sub(step);
        let evals_left = if evaluates { (step + 1..=total).filter(|s| s.is_multiple_of(eval_every.max(1)) || *s == total).count() as u64 } else { 0 };
        let mean = |s: f64, n: u64| if n == 0 { 0.0 } else { s / n as f64 };
        mean(self.train_s, self.steps) * steps_left as f64 + mean(self.eval_s, self.evals) * evals_left as f64
    }
}

/// The reporter of one evaluation's progress: (done, total) → an event.
fn evaluating<'r>(report: &'r mut dyn FnMut(RecoverEvent), what: String, unit: &'static str) -> impl FnMut(usize, usize) + 'r {
    let t = Instant::now();
    move |done, total| {
        let eta_s = llmprune_shared::proto::eta_s(t.elapsed().as_secs_f64(), done, total);
        report(RecoverEvent::Evaluating { what: what.clone(), done, total, unit, eta_s });
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoverOutcome {
    pub steps: Vec<StepReport>,
    /// Validation loss before training and at each evaluation, by step.
    pub val_losses: Vec<(u64, f64)>,
    pub train_records: usize,
    pub val_records: usize,
    pub truncated_records: usize,
    pub trained_tokens: u64,
    pub seconds: f64,
    /// The step whose adapters the model ends with: the best by validation loss (the
    /// reference's `load_best_model_at_end`), or the last step without validation.
    pub kept_step: u64,
    /// The step a resumed run started from.
    pub resumed_from: Option<u64>,
    /// Perplexities at the evaluations: (step, text, ppl).
    pub extra_val: Vec<(u64, String, f64)>,
}

/// Training and validation indices: a seeded shuffle, the first `val_size` for validation.
pub fn split(n: usize, val_size: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if val_size >= n {
        return Err(JobError::at("val_size", val_size, format!("leaves nothing to train on ({n} records)")).into());
    }
    let order = shuffled(n, seed);
    Ok((order[val_size..].to_vec(), order[..val_size].to_vec()))
}

/// `0..n` in Fisher–Yates order from a seeded generator.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = PyRandom::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.randint(0, i as u64) as usize;
        v.swap(i, j);
    }
    v
}

fn tokenized(records: &RecordFile, tok: &TextTokenizer, idx: &[usize], opts: &TokenizeOptions) -> Result<Vec<Example>> {
    let mut reader = records.reader()?;
    idx.iter().map(|&i| tokenize(tok, &reader.get(i)?, opts)).collect()
}

/// Mean validation loss over micro-batches of `val` (each data-parallel rank takes every
/// world-th; the last stage computes the losses).
fn validation_loss(model: &LlamaModel, val: &[MicroBatch], groups: &mut TrainGroups, progress: &mut dyn FnMut(usize, usize)) -> Result<f64> {
    let (rank, world) = (groups.data.rank(), groups.data.world_size());
    let mut acc = [0f32, 0f32];
    let mine = val.len().saturating_sub(rank).div_ceil(world);
    for (i, mb) in val.iter().skip(rank).step_by(world).enumerate() {
        let ids = Tensor::from_vec(mb.ids.clone(), (mb.rows, mb.len), model.device())?;
        // The operations of `micro_batch_loss`.
        let head = |x: &Tensor| -> Result<f32> {
            let nll = model.hidden_to_nll(x, &mb.targets, Exec::Differentiable)?;
            Ok((nll.sum_all()? / mb.trained_tokens as f64)?.to_scalar::<f32>()?)
        };
        if let Some(loss) = stage_forward(model, groups.pipeline, &ids, Exec::Differentiable, head)? {
            acc[0] += loss;
            acc[1] += 1.0;
        }
        progress(i + 1, mine);
    }
    groups.sum_from_last_stage(&mut acc, "the validation loss")?;
    Ok(acc[0] as f64 / acc[1].max(1.0) as f64)
}

/// Perplexity of `corpus` (its first `max` chunks) with the adapters active; data-parallel
/// rank r takes chunks r, r + world, … and the NLL sums are all-reduced.
fn sharded_ppl(model: &LlamaModel, corpus: &PplCorpus, max: Option<usize>, groups: &mut TrainGroups, progress: &mut dyn FnMut(usize, usize)) -> Result<f64> {
    let (rank, world) = (groups.data.rank(), groups.data.world_size());
    let mine = corpus.share(max, rank, world);
    let (nll, count) = nll_sum(model, groups.pipeline, &mine, corpus.seq_len, 4, progress)?;
    let mut sums = [nll as f32, count as f32];
    groups.sum_from_last_stage(&mut sums, "a perplexity")?;
    Ok((sums[0] as f64 / sums[1].max(1.0) as f64).exp())
}

/// The newest checkpoint every stage has: a stage that crashed before writing the newest
/// step's resumes, with the others, from the one before.
fn resume_point(c: &Checkpoints, pipeline: &mut dyn Communicator) -> Result<Option<(TrainState, std::collections::HashMap<String, Tensor>)>> {
    let latest = c.latest()?;
    if pipeline.world_size() == 1 {
        return Ok(latest);
    }
    // -1: none; steps are exact in f32 far beyond any run's length.
    let mine = latest.as_ref().map_or(-1.0, |(s, _)| s.step as f32);
    let all = pipeline.all_gather(&[mine]).map_err(|e| Error::collective("agreeing on a checkpoint with the other stages", e))?;
    let common = all.iter().map(|v| v.first().copied().unwrap_or(-1.0)).fold(f32::INFINITY, f32::min);
    match latest {
        _ if common < 0.0 => Ok(None),
        Some((s, t)) if s.step as f32 == common => Ok(Some((s, t))),
        _ => c.at(common as u64).map(Some),
    }
}

/// Checks that every data-parallel rank holds the same adapters (their checksums
/// all-gathered) and returns the checksum.
fn same_adapters_everywhere(vars: &[(String, Var)], comm: &mut dyn Communicator) -> Result<String> {
    let sum = adapter_checksum(vars)?;
    if comm.world_size() > 1 {
        // The digest as 16-bit pieces: exact in f32.
        let mine: Vec<f32> = sum.as_bytes().chunks(4).map(|c| u16::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(0) as f32).collect();
        let all = comm.all_gather(&mine).map_err(|e| Error::collective("comparing adapters across ranks", e))?;
        if let Some(r) = all.iter().position(|theirs| *theirs != mine) {
            return Err(Error::Invalid(format!("the adapters of rank {r} differ from rank {}'s: the replicas diverged", comm.rank())));
        }
    }
    Ok(sum)
}

/// Steps prepared ahead of the training (tokenized, padded), so that reading and tokenizing
/// overlap the previous step's compute.
const PREPARED_AHEAD: usize = 2;

/// One step's work for this rank.
struct Prepared {
    step: u64,
    epoch: usize,
    /// Micro-batches of the global batch (all ranks).
    micro_batches: usize,
    /// This rank's, with their global indices.
    mine: Vec<(usize, MicroBatch)>,
    truncated: usize,
}

/// The training order: epochs over seeded shuffles of `train`, global batches, and the
/// micro-batches of each that `rank` runs.
struct StepPlan<'a> {
    records: &'a RecordFile,
    tok: &'a TextTokenizer,
    opts: &'a RecoverOptions,
    train: &'a [usize],
    start: u64,
    total: u64,
    rank: usize,
    world: usize,
}

impl StepPlan<'_> {
    /// Sends steps `start..total` in order until the receiver hangs up.
    fn prepare(self, tx: std::sync::mpsc::SyncSender<Result<Prepared>>) {
        let result = (|| -> Result<()> {
            let mut reader = self.records.reader()?;
            let mut step = 0u64;
            for epoch in 0..self.opts.epochs.max(1) {
                let shuffle = shuffled(self.train.len(), self.opts.seed.wrapping_add(1 + epoch as u64));
                let order: Vec<usize> = shuffle.into_iter().map(|i| self.train[i]).collect();
                for batch in order.chunks(self.opts.batch_size) {
                    if step >= self.total {
                        return Ok(());
                    }
                    if step >= self.start {
                        let micro_idx: Vec<&[usize]> = batch.chunks(self.opts.micro_batch_size).collect();
                        let (mut mine, mut truncated) = (Vec::new(), 0);
                        for (j, idx) in micro_idx.iter().enumerate().filter(|(j, _)| j % self.world == self.rank) {
                            let ex = idx.iter().map(|&i| tokenize(self.tok, &reader.get(i)?, &self.opts.tokenize)).collect::<Result<Vec<_>>>()?;
                            truncated += ex.iter().filter(|e| e.truncated).count();
                            mine.push((j, micro_batch(&ex.iter().collect::<Vec<_>>(), 8)?));
                        }
                        let prepared = Prepared { step, epoch, micro_batches: micro_idx.len(), mine, truncated };
                        if tx.send(Ok(prepared)).is_err() {
                            return Ok(()); // the training stopped
                        }
                    }
                    step += 1;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    }
}

/// Trains `vars` (the model's adapters, by PEFT name) on `records`; `report` sees every step.
/// On return the adapters hold the kept step's values.
pub fn recover(
    model: &LlamaModel,
    vars: &[(String, Var)],
    records: &RecordFile,
    tok: &TextTokenizer,
    opts: &RecoverOptions,
    groups: &mut TrainGroups,
    report: &mut dyn FnMut(RecoverEvent),
) -> Result<RecoverOutcome> {
    opts.validate()?;
    let t0 = Instant::now();
    let (rank, world) = (groups.data.rank(), groups.data.world_size());
    let (train, val_idx) = split(records.len(), opts.val_size, opts.seed)?;
    let val_examples = tokenized(records, tok, &val_idx, &opts.tokenize)?;
    let val: Vec<MicroBatch> = val_examples
        .chunks(opts.micro_batch_size)
        .map(|c| micro_batch(&c.iter().collect::<Vec<_>>(), 8))
        .filter(|mb| mb.as_ref().map_or(true, |m| m.trained_tokens > 0))
        .collect::<Result<_>>()?;
    let extra_val = opts
        .extra_val
        .iter()
        // The reference's 128-token chunks (shorter only for toy models that cannot take 128).
        .map(|(kind, path)| PplCorpus::load(*kind, path, tok, 128.min(model.spec.max_position_embeddings)))
        .collect::<Result<Vec<_>>>()?;
    let steps_per_epoch = train.len().div_ceil(opts.batch_size) as u64;
    let total_steps = match opts.max_steps {
        Some(m) => m.min(steps_per_epoch * opts.epochs.max(1) as u64).max(1),
        None => steps_per_epoch * opts.epochs as u64,
    };
    let cfg = StepConfig {
        peak_lr: opts.lr,
        warmup_steps: opts.warmup_steps,
        total_steps,
        accumulation: opts.batch_size / opts.micro_batch_size,
        max_grad_norm: opts.max_grad_norm,
        seed: opts.seed,
    };
    let var_list: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(var_list.clone(), opts.adamw)?;
    let checkpoints = opts.checkpoint_dir.as_deref().map(Checkpoints::new);
    let mut state = TrainState {
        step: 0,
        fingerprint: opts.fingerprint.clone(),
        steps: Vec::new(),
        val_losses: Vec::new(),
        trained_tokens: 0,
        truncated_records: 0,
        adapter_sha256: String::new(),
    };
    let mut resumed_from = None;
    if let (true, Some(c)) = (opts.resume, &checkpoints) {
        if let Some((saved, tensors)) = resume_point(c, groups.pipeline)? {
            if saved.fingerprint != opts.fingerprint {
                return Err(Error::Invalid(format!(
                    "the checkpoint in {} is of another run (other model, data or options); remove it or drop --resume",
                    c.dir().display()
                )));
            }
            restore(&tensors, vars, &mut opt)?;
            if adapter_checksum(vars)? != saved.adapter_sha256 {
                return Err(Error::Invalid(format!("the checkpoint in {} is damaged (adapter checksum)", c.dir().display())));
            }
            tracing::info!(step = saved.step, dir = %c.dir().display(), "resuming from a checkpoint");
            resumed_from = Some(saved.step);
            state = saved;
        }
    }
    // The best adapters so far by validation loss, kept in memory (they are small).
    let mut best: Option<(u64, f64, Vec<Tensor>)> = None;
    if let Some(step) = best_step(&state.val_losses) {
        if let (Some(c), true) = (&checkpoints, step != state.step) {
            let (_, tensors) = c.at(step)?;
            let loss = state.val_losses.iter().find(|(s, _)| *s == step).map_or(f64::INFINITY, |(_, l)| *l);
            best = Some((
                step,
                loss,
                vars.iter()
                    .map(|(n, _)| tensors.get(n).cloned().ok_or_else(|| Error::Invalid(format!("checkpoint of step {step} lacks `{n}`"))))
                    .collect::<Result<_>>()?,
            ));
        }
    }
    let mut pace = Pace::default();
    if state.step == 0 && !val.is_empty() {
        let t = Instant::now();
        let loss = validation_loss(model, &val, groups, &mut evaluating(report, "validation loss".into(), "batches"))?;
        state.val_losses.push((0, loss));
        pace = Pace { eval_s: t.elapsed().as_secs_f64(), evals: 1, ..pace };
    }
    let evaluates = !val.is_empty() || !extra_val.is_empty();
    let t_train = Instant::now();
    let start_step = state.step;
    let mut tokens_here = 0u64;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(PREPARED_AHEAD);
        let plan = StepPlan { records, tok, opts, train: &train, start: start_step, total: total_steps, rank, world };
        scope.spawn(move || plan.prepare(tx));
        for prepared in rx {
            let p = prepared?;
            let t_step = Instant::now();
            state.truncated_records += p.truncated;
            let micro: Vec<(usize, &MicroBatch)> = p.mine.iter().map(|(j, mb)| (*j, mb)).collect();
            let step_cfg = StepConfig { accumulation: p.micro_batches, ..cfg };
            let stats = train_step(model, &var_list, &mut opt, &micro, p.step, &step_cfg, groups)?;
            // Loss and tokens over all ranks (counted on the last stage).
            let mut sums = [stats.losses.iter().map(|(_, l)| *l as f32).sum::<f32>(), stats.trained_tokens as f32];
            if !groups.last_stage() {
                sums = [0.0, 0.0];
            }
            groups.sum_from_last_stage(&mut sums, "the step's loss")?;
            let step_seconds = t_step.elapsed().as_secs_f64();
            state.trained_tokens += sums[1] as u64;
            tokens_here += sums[1] as u64;
            state.step = p.step + 1;
            pace.train_s += step_seconds;
            pace.steps += 1;
            let evaluate = evaluates && (state.step.is_multiple_of(opts.eval_every.max(1)) || state.step == total_steps);
            let t_eval = Instant::now();
            let mut ppl = Vec::new();
            if evaluate {
                for corpus in &extra_val {
                    let name = corpus.kind.name();
                    let mut progress = evaluating(report, format!("validation perplexity ({name})"), "chunks");
                    ppl.push((name.to_string(), sharded_ppl(model, corpus, opts.extra_val_chunks, groups, &mut progress)?));
                }
            }
            let val_loss = if evaluate && !val.is_empty() {
                let l = validation_loss(model, &val, groups, &mut evaluating(report, "validation loss".into(), "batches"))?;
                state.val_losses.push((state.step, l));
                if best.as_ref().is_none_or(|(_, b, _)| l < *b) {
                    best = Some((state.step, l, var_list.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?));
                }
                Some(l)
            } else {
                None
            };
            if evaluate {
                pace.eval_s += t_eval.elapsed().as_secs_f64();
                pace.evals += 1;
            }
            let elapsed = t_train.elapsed().as_secs_f64();
            let r = StepReport {
                step: state.step,
                total_steps,
                epoch: p.epoch,
                loss: sums[0] as f64 / p.micro_batches as f64,
                lr: stats.lr,
                grad_norm: stats.grad_norm,
                tokens_per_s: tokens_here as f64 / elapsed.max(1e-9),
                eta_s: pace.eta_s(state.step, total_steps, opts.eval_every, evaluates),
                val_loss,
                seconds: step_seconds,
                trained_tokens: sums[1] as u64,
                extra_val: ppl,
            };
            report(RecoverEvent::Step(&r));
            state.steps.push(r);
            if evaluate || state.step.is_multiple_of(opts.save_every.max(1)) || state.step == total_steps {
                state.adapter_sha256 = same_adapters_everywhere(vars, groups.data)?;
                if let (Some(c), 0) = (&checkpoints, rank) {
                    c.save(&state, vars, &opt)?;
                }
            }
        }
        Ok(())
    })?;
    let kept_step = match best {
        Some((step, _, tensors)) if step != state.step => {
            for (v, t) in var_list.iter().zip(&tensors) {
                v.set(t)?;
            }
            step
        }
        _ => state.step,
    };
    let extra_val = state.steps.iter().flat_map(|s| s.extra_val.iter().map(move |(n, p)| (s.step, n.clone(), *p))).collect();
    Ok(RecoverOutcome {
        train_records: train.len(),
        val_records: val_idx.len(),
        truncated_records: state.truncated_records,
        trained_tokens: state.trained_tokens,
        steps: state.steps,
        val_losses: state.val_losses,
        seconds: t0.elapsed().as_secs_f64(),
        kept_step,
        resumed_from,
        extra_val,
    })
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn eta_counts_the_remaining_steps_and_the_evaluations_still_due() {
        // 4 steps took 8 s, 2 evaluations 6 s: after step 4 of 10, evaluating every 3 steps,
        // 6 steps (12 s) and the evaluations after steps 6, 9 and 10 (9 s) are left.
        let pace = Pace { train_s: 8.0, steps: 4, eval_s: 6.0, evals: 2 };
        assert_eq!(pace.eta_s(4, 10, 3, true), 21.0);
        assert_eq!(pace.eta_s(4, 10, 3, false), 12.0);
        assert_eq!(pace.eta_s(10, 10, 3, true), 0.0);
        // Before any evaluation was timed, only the steps count.
        assert_eq!(Pace { eval_s: 0.0, evals: 0, ..pace }.eta_s(9, 10, 3, true), 2.0);
    }
}
