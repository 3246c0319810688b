//! `llmprune recover`: LoRA recovery of a pruned model on instruction data (reference §4.2),
//! then the merged model, the PEFT adapter and a report, written in one go.

use crate::cli::RecoverArgs;
use crate::progress::Progress;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use llmprune_worker::collective::SingleRank;
use llmprune_worker::export::ModelDir;
use llmprune_worker::lora::{self, peft, LoraConfig, Projection};
use llmprune_worker::train::data::TokenizeOptions;
use llmprune_worker::train::optim::AdamWConfig;
use llmprune_worker::train::records::{Format, RecordFile};
use llmprune_worker::loader::{model_checksum, sha256_file};
use llmprune_worker::train::recover::{recover, RecoverOptions};
use crate::commands::checkpoint_dir;
use llmprune_worker::{load_model, LoadOptions};
use serde_json::json;
use std::time::Instant;

fn options(args: &RecoverArgs, eos: Option<u32>) -> Result<(LoraConfig, RecoverOptions)> {
    let targets = args
        .lora_targets
        .split(',')
        .map(|t| Projection::from_name(t.trim()).map_err(|e| anyhow!("--lora-targets: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let lora = LoraConfig { r: args.lora_r, alpha: args.lora_alpha, dropout: args.lora_dropout, targets };
    lora.validate()?;
    let opts = RecoverOptions {
        adamw: AdamWConfig { weight_decay: args.weight_decay, ..Default::default() },
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_size: args.batch_size,
        micro_batch_size: args.micro_batch_size,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        seed: args.seed,
        val_size: args.val_size,
        eval_every: args.eval_steps.max(1),
        tokenize: TokenizeOptions { cutoff_len: args.cutoff_len, train_on_inputs: args.train_on_inputs, add_eos: !args.no_eos, eos },
        checkpoint_dir: Some(checkpoint_dir(&args.out)),
        resume: args.resume,
        fingerprint: String::new(),
    };
    opts.validate()?;
    Ok((lora, opts))
}

pub fn run(settings: &Settings, run_id: &str, args: RecoverArgs) -> Result<()> {
    let _ = settings;
    let span = tracing::info_span!("recover", run_id, phase = "recovering", rank = 0);
    let _enter = span.enter();
    let t0 = Instant::now();
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let plan_path = args.model.join("plan.json");
    if !args.model.join("config.json").is_file() {
        return Err(anyhow!("--model {}: no config.json (recover takes a directory written by `llmprune prune`)", args.model.display()));
    }
    if !plan_path.is_file() {
        return Err(anyhow!("--model {}: no plan.json (recover takes a directory written by `llmprune prune`)", args.model.display()));
    }
    let format = Format::from_name(&args.format)?;
    let eval_data = match &args.eval_ppl {
        Some(list) => crate::commands::ppl::parse_data(&list.split(',').map(str::to_string).collect::<Vec<_>>()).map_err(|e| anyhow!("--eval-ppl: {e:#}"))?,
        None => Vec::new(),
    };
    let records = RecordFile::open(&args.data, format, args.skip_bad_records).map_err(|e| anyhow!("--data: {e}"))?;
    let mut loaded = load_model(&args.model, LoadOptions::full, &Device::Cpu).with_context(|| format!("loading {}", args.model.display()))?;
    let (lora_cfg, mut opts) = options(&args, loaded.model.spec.eos_token_id)?;
    // Same model, data and settings, or a checkpoint is not this run's.
    let settings_only = RecoverOptions { checkpoint_dir: None, resume: false, ..opts.clone() };
    opts.fingerprint = format!(
        "{} {} {settings_only:?} {lora_cfg:?}",
        model_checksum(&args.model)?,
        sha256_file(&args.data).map_err(|e| anyhow!("--data: {e}"))?
    );
    tracing::info!(records = records.len(), skipped = records.skipped, "data opened");
    let vars = lora::attach(&mut loaded.model, &lora_cfg, args.seed)?;
    let trainable: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    tracing::info!(trainable, adapters = vars.len() / 2, "adapters attached");

    let mut bar: Option<Progress> = None;
    let mut last_log = Instant::now();
    let mut on_step = |r: &llmprune_worker::train::recover::StepReport| {
        let b = bar.get_or_insert_with(|| Progress::new("recovering", r.total_steps, "steps"));
        b.set(r.step);
        if last_log.elapsed().as_secs() >= 10 || r.val_loss.is_some() || r.step == r.total_steps {
            last_log = Instant::now();
            tracing::info!(step = r.step, total = r.total_steps, epoch = r.epoch, loss = format!("{:.4}", r.loss), lr = r.lr,
                           tokens_per_s = format!("{:.0}", r.tokens_per_s), eta_s = format!("{:.0}", r.eta_s), val_loss = ?r.val_loss, "step");
        }
    };
    let outcome = recover(&loaded.model, &vars, &records, &loaded.tokenizer, &opts, &mut SingleRank, &mut on_step)?;
    drop(bar);

    let out = ModelDir::create(&args.out)?;
    let adapter_dir = out.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).with_context(|| format!("creating {}", adapter_dir.display()))?;
    peft::write(&adapter_dir, &lora_cfg, &args.model.display().to_string(), &vars)?;
    lora::merge(&mut loaded.model)?;
    let mut ppl = serde_json::Map::new();
    if !eval_data.is_empty() {
        ppl = crate::commands::ppl::perplexities(&loaded.model, &loaded.tokenizer, &eval_data, 128, 4, (args.eval_max_chunks > 0).then_some(args.eval_max_chunks))?;
    }
    out.write_weights(&loaded.model.weights_by_name(), args.output.max_shard_size)?;
    out.write_model_files(&loaded.model.spec, &loaded.tokenizer)?;
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path)?).with_context(|| format!("{}", plan_path.display()))?;
    out.write_json("plan.json", &plan)?;
    let report = json!({
        "model": args.model.display().to_string(),
        "data": args.data.display().to_string(),
        "records": {"train": outcome.train_records, "validation": outcome.val_records, "skipped_malformed": records.skipped,
                    "truncated": outcome.truncated_records},
        "lora": {"r": lora_cfg.r, "alpha": lora_cfg.alpha, "dropout": lora_cfg.dropout,
                 "targets": lora_cfg.targets.iter().map(|p| p.name()).collect::<Vec<_>>(), "trainable_params": trainable},
        "optimizer": {"lr": opts.lr, "warmup_steps": opts.warmup_steps, "batch_size": opts.batch_size, "micro_batch_size": opts.micro_batch_size,
                      "weight_decay": opts.adamw.weight_decay, "max_grad_norm": opts.max_grad_norm, "epochs": opts.epochs, "max_steps": opts.max_steps,
                      "cutoff_len": opts.tokenize.cutoff_len, "train_on_inputs": opts.tokenize.train_on_inputs, "seed": opts.seed},
        "loss_curve": outcome.steps.iter().map(|s| json!([s.step, s.loss, s.lr, s.grad_norm])).collect::<Vec<_>>(),
        "val_losses": outcome.val_losses,
        "kept_step": outcome.kept_step,
        "resumed_from": outcome.resumed_from,
        "trained_tokens": outcome.trained_tokens,
        "tokens_per_s": outcome.trained_tokens as f64 / outcome.seconds.max(1e-9),
        "ppl": ppl,
        "workers": 1,
        "seconds": {"training": outcome.seconds, "total": t0.elapsed().as_secs_f64()},
    });
    out.write_json("recover_report.json", &report)?;
    out.commit()?;
    // The output is in place: the checkpoints have served.
    if let Some(dir) = &opts.checkpoint_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let (Some((_, first)), Some((_, last))) = (outcome.val_losses.first(), outcome.val_losses.last()) {
        println!("validation loss {first:.4} -> {last:.4}");
    }
    for (name, v) in &ppl {
        println!("{name} ppl {}", v["ppl"]);
    }
    println!("model: {}", args.out.display());
    Ok(())
}
