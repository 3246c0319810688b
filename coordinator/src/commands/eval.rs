//! `llmprune eval`: zero-shot tasks with lm-evaluation-harness's semantics and perplexity,
//! sharded over the run's workers (one in this process by default), written as `results.json`
//! (the harness's layout), the per-document predictions beside it, and the paper's table.

use crate::cli::EvalArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::evaluate::evaluate_on_cluster;
use crate::cluster::load::ModelFiles;
use crate::commands::cluster::{on_cluster, ClusterSession};
use crate::commands::table::paper_table;
use crate::commands::write_json_atomic;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, bail, Context, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::proto::EvaluateRequest;
use llmprune_worker::eval::job::{eval_job, load_tasks, EvalShare};
use llmprune_worker::eval::zeroshot::metrics::{task_scores, DocResult};
use llmprune_worker::eval::zeroshot::tasks::Task;
use llmprune_worker::loader::{model_checksum, open_model};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The request every process runs, checked before any model is loaded or worker started.
fn request(args: &EvalArgs) -> Result<EvaluateRequest> {
    let job = &args.job;
    job.validate().map_err(|e| anyhow!(e.as_flag()))?;
    let all: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
    let tasks = job.task_names(&all);
    for t in &tasks {
        Task::from_name(t).map_err(|e| anyhow!("--tasks: {e}"))?;
    }
    if !tasks.is_empty() {
        let dir = job.data_dir.as_ref().ok_or_else(|| anyhow!("--data-dir is needed for the zero-shot tasks (or give --tasks '' with --ppl)"))?;
        if !dir.is_dir() {
            bail!("--data-dir {}: not a directory", dir.display());
        }
    }
    crate::commands::ppl::parse_data("--ppl", &job.ppl)?;
    let req = EvaluateRequest {
        tasks,
        data_dir: job.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
        limit: job.limit.unwrap_or(0) as u64,
        batch_tokens: job.batch_tokens as u32,
        ppl: job.ppl.clone(),
        ppl_max_chunks: job.ppl_max_chunks.unwrap_or(0) as u64,
        seq_len: job.seq_len as u32,
        latency_chunks: job.latency_chunks as u32,
        ppl_batch_size: 4,
    };
    eval_job(&req).map_err(crate::commands::in_flags)?;
    Ok(req)
}

/// The checks of the flags alone, before anything runs.
pub(crate) fn check_args(args: &EvalArgs) -> Result<()> {
    request(args).map(|_| ())
}

pub fn run(settings: &Settings, run_id: &str, args: EvalArgs, shared: Option<&mut ClusterSession>) -> Result<()> {
    let span = tracing::info_span!("eval", run_id, phase = "evaluating", rank = 0);
    let _enter = span.enter();
    args.cluster.check()?;
    if args.cluster.replicas != 1 {
        bail!("--replicas: evaluation makes every worker a whole copy of the model; give --local-workers N or --workers N only");
    }
    let t0 = Instant::now();
    let req = request(&args)?;
    let job = eval_job(&req).map_err(crate::commands::in_flags)?;
    // Bad documents fail here, before any model is loaded.
    let tasks = load_tasks(&job).map_err(|e| anyhow!("--data-dir: {e}"))?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let opened = open_model(&model_path).with_context(|| format!("opening {}", model_path.display()))?;
    opened.tokenizer.check_fits(&opened.spec)?;
    let spec = opened.spec.clone();
    drop(opened);
    let units: usize = tasks.iter().map(|t| t.docs.len()).sum();
    let sha = model_checksum(&model_path)?;
    let model = ModelFiles { spec: &spec, path: &model_path, sha256: &sha, dtype: args.job.dtype };
    let done = on_cluster(shared, settings, &args.cluster, run_id, async |cluster: &mut Cluster| evaluate_on_cluster(cluster, model, &req).await)?;
    let (share, workers, load_s, dtype) = (done.share, done.ranks.len(), done.load_s, done.dtype);
    let cluster_report = Some(json!({"workers": workers, "ranks": done.ranks}));
    let seconds = t0.elapsed().as_secs_f64();
    if share.lls.len() != units || share.lls.iter().enumerate().any(|(i, (u, _))| *u != i) {
        bail!("scores came back for {} of {units} documents", share.lls.len());
    }
    let name = args.name.clone().unwrap_or_else(|| model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let per_task = llmprune_worker::eval::zeroshot::results(&tasks, share.lls.iter().map(|(_, l)| l.clone()).collect())?;
    let results = results_json(&args, &model_path, &name, &per_task, &share, workers, dtype, seconds, load_s, units, cluster_report);
    write_outputs(&args.out, &results, &per_task)?;
    println!("{}", paper_table(&[(name.as_str(), &results)]));
    println!("results: {}", args.out.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn results_json(
    args: &EvalArgs,
    model_path: &Path,
    name: &str,
    per_task: &[(Task, Vec<DocResult>)],
    share: &EvalShare,
    workers: usize,
    dtype: WeightDtype,
    seconds: f64,
    load_s: f64,
    units: usize,
    cluster: Option<Value>,
) -> Value {
    let mut results = Map::new();
    let mut samples = Map::new();
    let mut reported = Vec::new();
    for (task, docs) in per_task {
        let scores = task_scores(docs, task.has_acc_norm());
        let mut entry = serde_json::to_value(&scores).unwrap_or_default();
        entry["alias"] = json!(task.name());
        entry["paper_metric"] = json!(task.reported_metric().name());
        reported.push(match task.reported_metric() {
            llmprune_worker::eval::zeroshot::tasks::Metric::Acc => scores.acc,
            llmprune_worker::eval::zeroshot::tasks::Metric::AccNorm => scores.acc_norm.unwrap_or(f64::NAN),
        });
        results.insert(task.name().into(), entry);
        samples.insert(task.name().into(), json!({"effective": docs.len()}));
    }
    for p in &share.ppl {
        results.insert(p.name.clone(), json!({"ppl": p.ppl(), "mean_nll": p.mean_nll(), "scored_tokens": p.count}));
    }
    let average = (!reported.is_empty()).then(|| reported.iter().sum::<f64>() / reported.len() as f64);
    let mut doc = json!({
        "name": name,
        "results": results,
        "average": average,
        "config": {
            "model": model_path.display().to_string(),
            "num_fewshot": 0,
            "limit": args.job.limit,
            "batch_tokens": args.job.batch_tokens,
            "dtype": dtype.name(),
            "data_dir": args.job.data_dir.as_ref().map(|d| d.display().to_string()),
            "ppl_seq_len": args.job.seq_len,
            "ppl_max_chunks": args.job.ppl_max_chunks,
            "workers": workers,
        },
        "n-samples": samples,
        "semantics": "lm-evaluation-harness 0.4 (docs/zeroshot-tasks.md)",
        "seconds": {"load": load_s, "total": seconds},
        "documents_per_s": units as f64 / seconds.max(1e-9),
    });
    if let (Some(latency), Some(text)) = (&share.latency, share.ppl.first()) {
        let mut timed = latency.to_json();
        for (key, value) in
            [("dataset", json!(text.name)), ("chunks", json!(args.job.latency_chunks)), ("seq_len", json!(args.job.seq_len)), ("batch", json!(1))]
        {
            timed[key] = value;
        }
        doc["latency"] = timed;
    }
    if let Some(c) = cluster {
        doc["cluster"] = c;
    }
    doc
}

/// `results.json`, the per-document predictions beside it (`results.samples.jsonl`) and the
/// table (`results.md`), each written under a temporary name and renamed.
fn write_outputs(out: &Path, results: &Value, per_task: &[(Task, Vec<DocResult>)]) -> Result<()> {
    let side = |ext: &str| -> PathBuf { out.with_extension(ext) };
    let write = |path: &Path, text: &str| crate::commands::write_file_atomic(path, text.as_bytes());
    let mut lines = String::new();
    for (task, docs) in per_task {
        for d in docs {
            let line = json!({"task": task.name(), "doc": d.doc, "gold": d.gold, "lls": d.lls, "pred": d.pred, "pred_norm": d.pred_norm,
                              "acc": u8::from(d.pred == d.gold), "acc_norm": u8::from(d.pred_norm == d.gold)});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    write(&side("samples.jsonl"), &lines)?;
    let name = results["name"].as_str().unwrap_or("model");
    write(&side("md"), &(paper_table(&[(name, results)]) + "\n"))?;
    // Last: a results.json in place means the run finished.
    write_json_atomic(out, results)
}
