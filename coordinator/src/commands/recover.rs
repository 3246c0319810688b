//! `llmprune recover`: LoRA recovery of a pruned model on instruction data (reference §4.2) on
//! the run's workers (one in this process by default; more are data-parallel replicas or
//! pipeline stages), then the merged model, the PEFT adapter and a report, written in one go.

use crate::cli::RecoverArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::evaluate::{perplexities_on_cluster, PplJob};
use crate::cluster::load::ModelFiles;
use crate::cluster::recover::recover_on_cluster;
use crate::commands::cluster::{on_cluster, ClusterSession};
use crate::commands::ppl::parse_data;
use crate::commands::{checkpoint_dir, create_output, in_flags, worker_settings_in_flags};
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_shared::jobs::RecoverSettings;
use llmprune_shared::proto::{RecoverReply, RecoverRequest};
use llmprune_worker::loader::{model_checksum, open_model, sha256_file};
use llmprune_worker::train::records::RecordFile;
use llmprune_worker::train::recover::split;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The job every process runs, from the flags; checked here so that bad flags fail before any
/// model is loaded or worker started. The settings travel as they are.
fn request(args: &RecoverArgs, out_dir: &Path, model_sha256: &str) -> Result<RecoverRequest> {
    let job = &args.job;
    job.validate().map_err(|e| anyhow!(e.as_flag()))?;
    let settings_json = serde_json::to_string(job)?;
    let data_sha256 = sha256_file(&job.data).map_err(|e| anyhow!("--data: {e}"))?;
    Ok(RecoverRequest {
        // The same model, data and settings (not where they are written), or a checkpoint is
        // not this run's.
        fingerprint: format!("{model_sha256} {data_sha256} {settings_json}"),
        settings_json,
        checkpoint_dir: checkpoint_dir(&args.out).display().to_string(),
        resume: args.cluster.resume,
        out_dir: out_dir.display().to_string(),
        base_model: args.model.display().to_string(),
    })
}

/// `--eval-ppl`: the merged model's perplexity with the reference's protocol (128-token
/// chunks, batch 4).
fn eval_ppl_job(job: &RecoverSettings) -> Result<Option<PplJob>> {
    if job.eval_ppl.is_empty() {
        return Ok(None);
    }
    crate::commands::ppl::ppl_job("--eval-ppl", &job.eval_ppl, 128, 4, job.eval_max_chunks).map(Some)
}

/// The checks of the flags alone (the model directory aside), before anything runs.
pub(crate) fn check_flags(args: &RecoverArgs) -> Result<()> {
    if args.cluster.replicas != 1 {
        return Err(anyhow!("--replicas: recovery makes every worker a replica; split the model with --stages S instead"));
    }
    if args.stages > 1 && !args.cluster.distributed() {
        return Err(anyhow!("--stages {}: pipeline stages run on workers; add --local-workers N or --workers N", args.stages));
    }
    let workers = args.cluster.local_workers.or(args.cluster.workers).unwrap_or(1);
    if args.stages == 0 || !workers.is_multiple_of(args.stages) {
        return Err(anyhow!("--stages {}: the {workers} workers must split into equal pipelines (a divisor of {workers})", args.stages));
    }
    args.cluster.check()?;
    eval_ppl_job(&args.job)?;
    parse_data("--extra-val", &args.job.extra_val)?;
    request(args, Path::new(""), "").map(|_| ())
}

/// The records (`--data`) read and split as the workers will, so that a malformed record or a
/// `--val-size` that leaves nothing to train on fails before any model is loaded.
fn check_records(job: &RecoverSettings) -> Result<()> {
    let records = RecordFile::open(&job.data, job.format, job.skip_bad_records).map_err(|e| anyhow!("--data: {e}"))?;
    split(records.len(), job.val_size, job.seed).map_err(in_flags)?;
    Ok(())
}

fn check_args(args: &RecoverArgs) -> Result<()> {
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    if !args.model.join("config.json").is_file() {
        return Err(anyhow!("--model {}: no config.json (recover takes a directory written by `llmprune prune`)", args.model.display()));
    }
    if !args.model.join("plan.json").is_file() {
        return Err(anyhow!("--model {}: no plan.json (recover takes a directory written by `llmprune prune`)", args.model.display()));
    }
    check_flags(args)?;
    check_records(&args.job)
}

pub fn run(settings: &Settings, run_id: &str, args: RecoverArgs, shared: Option<&mut ClusterSession>) -> Result<()> {
    let span = tracing::info_span!("recover", run_id, phase = "recovering", rank = 0);
    let _enter = span.enter();
    let t0 = Instant::now();
    check_args(&args)?;
    // The reference's 128-token chunks (shorter only for toy models that cannot take 128).
    let eval_ppl = eval_ppl_job(&args.job)?;
    let (out, _partial) = create_output(&args.out, args.cluster.resume)?;
    let sha = model_checksum(&args.model)?;
    let req = request(&args, out.path(), &sha)?;
    let opened = open_model(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let (spec, tokenizer) = (opened.spec, opened.tokenizer);
    drop(opened.weights); // the workers read their own copies
    let stages = args.stages;
    let pruned = ModelFiles { spec: &spec, path: &args.model, sha256: &sha, dtype: args.job.dtype };
    let eval_ppl = eval_ppl.map(|job| PplJob { seq_len: job.seq_len.min(spec.max_position_embeddings), ..job });
    let (done, ppl) = on_cluster(shared, settings, &args.cluster, run_id, async |cluster: &mut Cluster| {
        let done = recover_on_cluster(cluster, pruned, &req, stages).await?;
        // The merged model as the workers wrote it, for the perplexity.
        out.write_model_files(&spec, &tokenizer, done.dtype)?;
        let ppl = match &eval_ppl {
            Some(job) => {
                let sha = model_checksum(out.path())?;
                let merged = ModelFiles { spec: &spec, path: out.path(), sha256: &sha, dtype: Some(done.dtype) };
                perplexities_on_cluster(cluster, merged, job).await?.results
            }
            None => serde_json::Map::new(),
        };
        Ok((done, ppl))
    })
    .map_err(worker_settings_in_flags::<RecoverSettings>)?;
    let cluster_report = json!({"workers": done.ranks.len(), "stages": stages, "replicas": done.ranks.len() / stages,
                                "stage_adapter_sha256": done.stage_adapter_sha256, "ranks": done.ranks});
    let (reply, load_s) = (done.reply, done.load_s);
    let plan_path = args.model.join("plan.json");
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path)?).with_context(|| format!("{}", plan_path.display()))?;
    out.write_json("plan.json", &plan)?;
    let mut report = report_json(&args, &reply, t0, load_s);
    report["ppl"] = json!(ppl);
    report["cluster"] = cluster_report;
    out.write_json("recover_report.json", &report)?;
    out.commit()?;
    // The output is in place: the checkpoints have served.
    let _ = std::fs::remove_dir_all(&req.checkpoint_dir);
    if let (Some(first), Some(last)) = (reply.val_losses.first(), reply.val_losses.last()) {
        println!("validation loss {first:.4} -> {last:.4} (adapters of step {})", reply.kept_step);
    }
    for (name, v) in &ppl {
        println!("{name} ppl {}", v["ppl"]);
    }
    println!("model: {}", args.out.display());
    Ok(())
}

fn report_json(args: &RecoverArgs, r: &RecoverReply, t0: Instant, load_s: f64) -> serde_json::Value {
    let s = &args.job;
    json!({
        "model": args.model.display().to_string(),
        "data": args.job.data.display().to_string(),
        "records": {"train": r.train_records, "validation": r.val_records, "skipped_malformed": r.skipped_records, "truncated": r.truncated_records},
        "lora": {"r": s.lora_r, "alpha": s.lora_alpha, "dropout": s.lora_dropout, "targets": s.lora_targets, "trainable_params": r.trainable_params},
        "optimizer": {"lr": s.lr, "warmup_steps": s.warmup_steps, "batch_size": s.batch_size, "micro_batch_size": s.micro_batch_size,
                      "weight_decay": s.weight_decay, "max_grad_norm": s.max_grad_norm, "epochs": s.epochs, "max_steps": s.max_steps.unwrap_or(0),
                      "cutoff_len": s.cutoff_len, "train_on_inputs": s.train_on_inputs, "seed": s.seed},
        "loss_curve_fields": ["step", "loss", "lr", "grad_norm", "seconds", "trained_tokens"],
        "loss_curve": r.steps.iter().map(|s| json!([s.step, s.loss, s.lr, s.grad_norm, s.seconds, s.trained_tokens])).collect::<Vec<_>>(),
        "val_losses": r.val_steps.iter().zip(&r.val_losses).map(|(s, l)| json!([s, l])).collect::<Vec<_>>(),
        "extra_val": r.extra_val.iter().map(|e| json!({"step": e.step, "name": e.name, "ppl": e.ppl})).collect::<Vec<_>>(),
        "kept_step": r.kept_step,
        "resumed_from": (r.resumed_from > 0).then_some(r.resumed_from),
        "adapter_sha256": r.adapter_sha256,
        "trained_tokens": r.trained_tokens,
        "tokens_per_s": r.trained_tokens as f64 / r.seconds.max(1e-9),
        // The training process's (the first worker's on a cluster).
        "peak_rss_mib": r.peak_rss_bytes as f64 / 1048576.0,
        "seconds": {"load": load_s, "training": r.seconds, "total": t0.elapsed().as_secs_f64()},
    })
}
