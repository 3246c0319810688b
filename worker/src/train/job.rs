//! A whole recovery job as the coordinator describes it (`RecoverRequest`): attach adapters,
//! train, and on the first replica write the PEFT adapter and the merged weights (or a
//! stage's part of them) into the output directory. One process and every worker of a
//! cluster run this same function.

use super::data::TokenizeOptions;
use super::optim::AdamWConfig;
use super::records::RecordFile;
use super::recover::{recover, RecoverEvent, RecoverOptions};
use super::TrainGroups;
use crate::confine::Confinement;
use crate::error::{Error, Result};
use crate::eval::perplexity::parse_corpus_spec;
use crate::export::{write_tensor_file, write_weights_into};
use crate::loader::TextTokenizer;
use crate::lora::{self, peft, LoraConfig, Projection};
use crate::model::LlamaModel;
use candle_core::Tensor;
use llmprune_shared::jobs::RecoverSettings;
use llmprune_shared::proto::{ExtraValPpl, RecoverReply, RecoverRequest, TrainStep};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The settings a request carries, checked (every worker checks them again).
pub fn recover_settings(req: &RecoverRequest) -> Result<RecoverSettings> {
    let settings: RecoverSettings =
        serde_json::from_str(&req.settings_json).map_err(|e| Error::Invalid(format!("the recovery request's settings do not parse: {e}")))?;
    settings.validate()?;
    Ok(settings)
}

pub fn lora_config(s: &RecoverSettings) -> Result<LoraConfig> {
    let config = LoraConfig { r: s.lora_r, alpha: s.lora_alpha, dropout: s.lora_dropout, targets: s.lora_targets.clone() };
    config.validate()?;
    Ok(config)
}

/// The training loop's options: `s` and, from the request, where it checkpoints.
pub fn recover_options(s: &RecoverSettings, req: &RecoverRequest, eos: Option<u32>) -> Result<RecoverOptions> {
    let opts = RecoverOptions {
        adamw: AdamWConfig { weight_decay: s.weight_decay, ..Default::default() },
        epochs: s.epochs,
        max_steps: s.max_steps,
        batch_size: s.batch_size,
        micro_batch_size: s.micro_batch_size,
        lr: s.lr,
        warmup_steps: s.warmup_steps,
        max_grad_norm: (s.max_grad_norm > 0.0).then_some(s.max_grad_norm),
        seed: s.seed,
        val_size: s.val_size,
        eval_every: s.eval_steps.max(1),
        save_every: s.save_steps.unwrap_or(u64::MAX),
        tokenize: TokenizeOptions { cutoff_len: s.cutoff_len, train_on_inputs: s.train_on_inputs, add_eos: !s.no_eos, eos },
        checkpoint_dir: (!req.checkpoint_dir.is_empty()).then(|| PathBuf::from(&req.checkpoint_dir)),
        resume: req.resume,
        fingerprint: req.fingerprint.clone(),
        extra_val: s.extra_val.iter().map(|spec| parse_corpus_spec(spec, "extra_val")).collect::<Result<_>>()?,
        extra_val_chunks: s.extra_val_chunks,
    };
    opts.validate()?;
    Ok(opts)
}

/// The paths `req` reads and writes, checked against the worker's `confinement`: the
/// records and validation texts read, the output and checkpoint directories written.
pub fn confine_paths(req: &RecoverRequest, confinement: &Confinement) -> Result<()> {
    let s = recover_settings(req)?;
    confinement.readable("the recovery data (data)", &s.data)?;
    for spec in &s.extra_val {
        let (_, path) = parse_corpus_spec(spec, "extra_val")?;
        confinement.readable("a validation text (extra_val)", &path)?;
    }
    for (what, dir) in [("the output directory", &req.out_dir), ("the checkpoint directory", &req.checkpoint_dir)] {
        if !dir.is_empty() {
            confinement.writable(what, Path::new(dir))?;
        }
    }
    Ok(())
}

/// The file names a pipeline stage's output takes: its weights shard and its adapter part.
pub fn stage_files(stage: usize, stages: usize) -> (String, String) {
    (format!("model-{:05}-of-{stages:05}.safetensors", stage + 1), format!("adapter_model.stage-{:05}.safetensors", stage + 1))
}

/// Runs `req` on `model` (adapters are attached here and merged at the end on every rank, so
/// the model leaves recovered). The first data-parallel rank writes into `req.out_dir`: the
/// whole model's `adapter/` and merged weights or, for a pipeline stage, the weights it `owns`
/// as one shard file and its adapters as one part; the first stage joins the parts into the
/// adapter and the coordinator indexes the shards.
pub fn run_recovery(
    model: &mut LlamaModel,
    tok: &TextTokenizer,
    req: &RecoverRequest,
    groups: &mut TrainGroups,
    owns: &dyn Fn(&str) -> bool,
    report: &mut dyn FnMut(RecoverEvent),
) -> Result<RecoverReply> {
    let settings = recover_settings(req)?;
    let config = lora_config(&settings)?;
    let family = model.spec.architecture.family();
    if family.fused_gate_up && config.targets.iter().any(|t| matches!(t, Projection::Gate | Projection::Up)) {
        // PEFT would need one adapter on the fused gate_up_proj; ours are per projection.
        return Err(Error::Invalid(format!(
            "{} stores gate and up fused (gate_up_proj): adapters on gate_proj/up_proj cannot be written for PEFT yet; leave them out of the LoRA targets",
            family.model_type
        )));
    }
    let opts = recover_options(&settings, req, model.spec.eos_token_id)?;
    let records = RecordFile::open(&settings.data, settings.format, settings.skip_bad_records)?;
    tracing::info!(records = records.len(), skipped = records.skipped, "data opened");
    let vars = lora::attach(model, &config, settings.seed)?;
    let trainable: u64 = vars.iter().map(|(_, v)| v.as_tensor().elem_count() as u64).sum();
    tracing::info!(trainable, adapters = vars.len() / 2, "adapters attached");
    let (stage, stages) = (groups.pipeline.rank(), groups.pipeline.world_size());
    let opts = match (&opts.checkpoint_dir, stages) {
        // Each stage checkpoints its own adapters.
        (Some(dir), 2..) => RecoverOptions { checkpoint_dir: Some(dir.join(format!("stage-{stage}"))), ..opts },
        _ => opts,
    };
    let outcome = recover(model, &vars, &records, tok, &opts, groups, report)?;
    let adapter_sha256 = super::checkpoint::adapter_checksum(&vars)?;
    // The replicas hold the same adapters: the first writes the output.
    let out = Some(Path::new(&req.out_dir)).filter(|d| groups.data.rank() == 0 && !d.as_os_str().is_empty());
    let adapter = out.map(|o| o.join("adapter"));
    if let Some(dir) = &adapter {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let (weights_file, adapter_part) = if stages > 1 { stage_files(stage, stages) } else { Default::default() };
    match &adapter {
        Some(dir) if stages > 1 => {
            peft::write_tensors(&dir.join(&adapter_part), &vars)?;
            // Once the first replica's stages all meet here every part is written; the first
            // stage joins them into one PEFT adapter (the coordinator only indexes the shards).
            groups.pipeline.barrier().map_err(|e| Error::collective("pipeline: waiting for the stages' adapters", e))?;
            if stage == 0 {
                let parts: Vec<String> = (0..stages).map(|s| stage_files(s, stages).1).collect();
                peft::join_parts(dir, &parts, &config, &req.base_model)?;
            }
        }
        Some(dir) => peft::write(dir, &config, &req.base_model, &vars)?,
        None => {}
    }
    lora::merge(model)?;
    let (mut tensor_names, mut weight_bytes) = (Vec::new(), 0);
    if let Some(out) = out {
        let weights: HashMap<String, Tensor> = model.weights_by_name().into_iter().filter(|(n, _)| owns(n)).collect();
        if stages > 1 {
            (tensor_names, weight_bytes) = write_tensor_file(&out.join(&weights_file), &model.spec, &weights)?;
        } else {
            write_weights_into(out, &model.spec, &weights, settings.max_shard_size.max(1))?;
        }
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
        weights_file: if out.is_some() { weights_file } else { String::new() },
        tensor_names,
        weight_bytes,
        adapter_part: if out.is_some() { adapter_part } else { String::new() },
    })
}
