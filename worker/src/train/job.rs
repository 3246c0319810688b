//! A whole recovery job as the coordinator describes it (`RecoverRequest`): attach adapters,
//! train, and on the first replica write the PEFT adapter and the merged weights into the
//! output directory. One process and every worker of a cluster run this same function.

use super::data::TokenizeOptions;
use super::optim::AdamWConfig;
use super::records::{Format, RecordFile};
use super::recover::{recover, RecoverOptions, StepReport};
use crate::collective::Communicator;
use crate::error::{Error, Result};
use crate::export::write_weights_into;
use crate::loader::TextTokenizer;
use crate::lora::{self, peft, LoraConfig, Projection};
use crate::model::LlamaModel;
use crate::eval::perplexity::CorpusKind;
use llmprune_shared::proto::{ExtraValPpl, RecoverReply, RecoverRequest, TrainStep};
use std::path::{Path, PathBuf};

pub fn lora_config(req: &RecoverRequest) -> Result<LoraConfig> {
    let targets = req.lora_targets.iter().map(|t| Projection::from_name(t.trim())).collect::<Result<Vec<_>>>()?;
    let config = LoraConfig { r: req.lora_r as usize, alpha: req.lora_alpha, dropout: req.lora_dropout, targets };
    config.validate()?;
    Ok(config)
}

pub fn recover_options(req: &RecoverRequest, eos: Option<u32>) -> Result<RecoverOptions> {
    let opts = RecoverOptions {
        adamw: AdamWConfig { weight_decay: req.weight_decay, ..Default::default() },
        epochs: req.epochs as usize,
        max_steps: (req.max_steps > 0).then_some(req.max_steps),
        batch_size: req.batch_size as usize,
        micro_batch_size: req.micro_batch_size as usize,
        lr: req.lr,
        warmup_steps: req.warmup_steps,
        max_grad_norm: (req.max_grad_norm > 0.0).then_some(req.max_grad_norm),
        seed: req.seed,
        val_size: req.val_size as usize,
        eval_every: req.eval_every.max(1),
        save_every: if req.save_every == 0 { u64::MAX } else { req.save_every },
        tokenize: TokenizeOptions { cutoff_len: req.cutoff_len as usize, train_on_inputs: req.train_on_inputs, add_eos: req.add_eos, eos },
        checkpoint_dir: (!req.checkpoint_dir.is_empty()).then(|| PathBuf::from(&req.checkpoint_dir)),
        resume: req.resume,
        fingerprint: req.fingerprint.clone(),
        extra_val: req
            .extra_val
            .iter()
            .map(|spec| {
                let (name, file) = spec.split_once('=').ok_or_else(|| Error::Invalid(format!("--extra-val {spec}: expected NAME=FILE")))?;
                let kind: CorpusKind = name.parse().map_err(|e| Error::Invalid(format!("--extra-val {spec}: {e}")))?;
                Ok((kind, PathBuf::from(file)))
            })
            .collect::<Result<_>>()?,
        extra_val_chunks: (req.extra_val_chunks > 0).then_some(req.extra_val_chunks as usize),
    };
    opts.validate()?;
    Ok(opts)
}

/// Runs `req` on `model` (adapters are attached here and merged at the end on every rank, so
/// the model leaves recovered). The first rank of `comm` writes `adapter/` and the merged
/// weights into `req.out_dir`.
pub fn run_recovery(
    model: &mut LlamaModel,
    tok: &TextTokenizer,
    req: &RecoverRequest,
    comm: &mut dyn Communicator,
    report: &mut dyn FnMut(&StepReport),
) -> Result<RecoverReply> {
    let config = lora_config(req)?;
    let opts = recover_options(req, model.spec.eos_token_id)?;
    let format = Format::from_name(&req.format)?;
    let data = Path::new(&req.data_path);
    let records = RecordFile::open(data, format, req.skip_bad_records)?;
    tracing::info!(records = records.len(), skipped = records.skipped, "data opened");
    let vars = lora::attach(model, &config, req.seed)?;
    let trainable: u64 = vars.iter().map(|(_, v)| v.as_tensor().elem_count() as u64).sum();
    tracing::info!(trainable, adapters = vars.len() / 2, "adapters attached");
    let outcome = recover(model, &vars, &records, tok, &opts, comm, report)?;
    let adapter_sha256 = super::checkpoint::adapter_checksum(&vars)?;
    // The replicas hold the same adapters: the first writes the output.
    let out = Some(Path::new(&req.out_dir)).filter(|d| comm.rank() == 0 && !d.as_os_str().is_empty());
    if let Some(out) = out {
        let adapter = out.join("adapter");
        std::fs::create_dir_all(&adapter).map_err(|e| Error::io(&adapter, e))?;
        peft::write(&adapter, &config, &req.base_model, &vars)?;
    }
    lora::merge(model)?;
    if let Some(out) = out {
        write_weights_into(out, &model.weights_by_name(), req.max_shard_bytes.max(1))?;
    }
    let steps = outcome
        .steps
        .iter()
        .map(|s| TrainStep {
            step: s.step,
            epoch: s.epoch as u32,
            loss: s.loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens_per_s: s.tokens_per_s,
            val_loss: s.val_loss.unwrap_or(f64::NAN),
            seconds: s.seconds,
            trained_tokens: s.trained_tokens,
        })
        .collect();
    Ok(RecoverReply {
        steps,
        val_steps: outcome.val_losses.iter().map(|v| v.0).collect(),
        val_losses: outcome.val_losses.iter().map(|v| v.1).collect(),
        train_records: outcome.train_records as u64,
        val_records: outcome.val_records as u64,
        skipped_records: records.skipped as u64,
        truncated_records: outcome.truncated_records as u64,
        trained_tokens: outcome.trained_tokens,
        seconds: outcome.seconds,
        kept_step: outcome.kept_step,
        resumed_from: outcome.resumed_from.unwrap_or(0),
        trainable_params: trainable,
        adapter_sha256,
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
        extra_val: outcome.extra_val.iter().map(|(step, name, ppl)| ExtraValPpl { step: *step, name: name.clone(), ppl: *ppl }).collect(),
    })
}
