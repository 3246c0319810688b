//! `llmprune recover`: LoRA recovery of a pruned model on instruction data (reference §4.2) on
//! the run's workers (one in this process by default; more are data-parallel replicas or
//! pipeline stages), then the merged model, the PEFT adapter and a report, written in one go.

use crate::cli::RecoverArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::evaluate::{perplexities_on_cluster, PplJob};
use crate::cluster::load::ModelFiles;
use crate::cluster::recover::recover_on_cluster;
use crate::commands::checkpoint_dir;
use crate::commands::cluster::{on_cluster, ClusterSession};
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::proto::{RecoverReply, RecoverRequest};
use llmprune_worker::export::ModelDir;
use llmprune_worker::loader::{model_checksum, open_model, sha256_file};
use llmprune_worker::lora::Projection;
use llmprune_worker::train::job::{lora_config, recover_options};
use llmprune_worker::train::records::Format;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The job every process runs, from the flags; checked here so that bad flags fail before any
/// model is loaded or worker started.
fn request(args: &RecoverArgs, out_dir: &Path, model_sha256: &str) -> Result<RecoverRequest> {
    let targets: Vec<String> = args.lora_targets.split(',').map(|t| t.trim().to_string()).collect();
    for t in &targets {
        Projection::from_name(t).map_err(|e| anyhow!("--lora-targets: {e}"))?;
    }
    Format::from_name(&args.format)?;
    let mut req = RecoverRequest {
        data_path: args.data.display().to_string(),
        format: args.format.clone(),
        skip_bad_records: args.skip_bad_records,
        lora_r: args.lora_r as u32,
        lora_alpha: args.lora_alpha,
        lora_dropout: args.lora_dropout,
        lora_targets: targets,
        epochs: args.epochs as u32,
        max_steps: args.max_steps.unwrap_or(0),
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        batch_size: args.batch_size as u32,
        micro_batch_size: args.micro_batch_size as u32,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        val_size: args.val_size as u32,
        eval_every: args.eval_steps.max(1),
        save_every: args.save_steps.unwrap_or(0),
        cutoff_len: args.cutoff_len as u32,
        train_on_inputs: args.train_on_inputs,
        add_eos: !args.no_eos,
        checkpoint_dir: checkpoint_dir(&args.out).display().to_string(),
        resume: args.cluster.resume,
        fingerprint: String::new(),
        out_dir: out_dir.display().to_string(),
        max_shard_bytes: args.output.max_shard_size,
        base_model: args.model.display().to_string(),
        extra_val: args.extra_val.as_deref().map(|l| l.split(',').map(str::to_string).collect()).unwrap_or_default(),
        extra_val_chunks: args.extra_val_chunks.unwrap_or(0) as u32,
    };
    lora_config(&req)?;
    recover_options(&req, None)?;
    // The same model, data and settings (not where they are written), or a checkpoint is not
    // this run's.
    let same = RecoverRequest { checkpoint_dir: String::new(), resume: false, out_dir: String::new(), ..req.clone() };
    req.fingerprint = format!("{model_sha256} {} {same:?}", sha256_file(&args.data).map_err(|e| anyhow!("--data: {e}"))?);
    Ok(req)
}

/// `--eval-ppl`: the merged model's perplexity with the reference's protocol (128-token
/// chunks, batch 4).
fn eval_ppl_job(args: &RecoverArgs) -> Result<Option<PplJob>> {
    let Some(list) = &args.eval_ppl else { return Ok(None) };
    let data: Vec<String> = list.split(',').map(str::to_string).collect();
    crate::commands::ppl::ppl_job("--eval-ppl", &data, 128, 4, args.eval_max_chunks).map(Some)
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
    eval_ppl_job(args)?;
    request(args, Path::new(""), "").map(|_| ())
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
    check_flags(args)
}

pub fn run(settings: &Settings, run_id: &str, args: RecoverArgs, shared: Option<&mut ClusterSession>) -> Result<()> {
    let span = tracing::info_span!("recover", run_id, phase = "recovering", rank = 0);
    let _enter = span.enter();
    let t0 = Instant::now();
    check_args(&args)?;
    // The reference's 128-token chunks (shorter only for toy models that cannot take 128).
    let eval_ppl = eval_ppl_job(&args)?;
    let out = ModelDir::create(&args.out)?;
    let sha = model_checksum(&args.model)?;
    let req = request(&args, out.path(), &sha)?;
    let opened = open_model(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let (spec, tokenizer) = (opened.spec, opened.tokenizer);
    drop(opened.weights); // the workers read their own copies
    let stages = args.stages;
    let pruned = ModelFiles { spec: &spec, path: &args.model, sha256: &sha, dtype: WeightDtype::F32 };
    let eval_ppl = eval_ppl.map(|job| PplJob { seq_len: job.seq_len.min(spec.max_position_embeddings), ..job });
    let (done, ppl) = on_cluster(shared, settings, &args.cluster, run_id, async |cluster: &mut Cluster| {
        let done = recover_on_cluster(cluster, pruned, &req, stages).await?;
        // The merged model as the workers wrote it, for the perplexity.
        out.write_model_files(&spec, &tokenizer)?;
        let ppl = match &eval_ppl {
            Some(job) => {
                let sha = model_checksum(out.path())?;
                let merged = ModelFiles { spec: &spec, path: out.path(), sha256: &sha, dtype: WeightDtype::F32 };
                perplexities_on_cluster(cluster, merged, job).await?.results
            }
            None => serde_json::Map::new(),
        };
        Ok((done, ppl))
    })?;
    let cluster_report = json!({"workers": done.ranks.len(), "stages": stages, "replicas": done.ranks.len() / stages,
                                "stage_adapter_sha256": done.stage_adapter_sha256, "ranks": done.ranks});
    let (reply, load_s) = (done.reply, done.load_s);
    let plan_path = args.model.join("plan.json");
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path)?).with_context(|| format!("{}", plan_path.display()))?;
    out.write_json("plan.json", &plan)?;
    let mut report = report_json(&args, &req, &reply, t0, load_s);
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

fn report_json(args: &RecoverArgs, req: &RecoverRequest, r: &RecoverReply, t0: Instant, load_s: f64) -> serde_json::Value {
    json!({
        "model": args.model.display().to_string(),
        "data": args.data.display().to_string(),
        "records": {"train": r.train_records, "validation": r.val_records, "skipped_malformed": r.skipped_records, "truncated": r.truncated_records},
        "lora": {"r": req.lora_r, "alpha": req.lora_alpha, "dropout": req.lora_dropout, "targets": req.lora_targets, "trainable_params": r.trainable_params},
        "optimizer": {"lr": req.lr, "warmup_steps": req.warmup_steps, "batch_size": req.batch_size, "micro_batch_size": req.micro_batch_size,
                      "weight_decay": req.weight_decay, "max_grad_norm": req.max_grad_norm, "epochs": req.epochs, "max_steps": req.max_steps,
                      "cutoff_len": req.cutoff_len, "train_on_inputs": req.train_on_inputs, "seed": req.seed},
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
