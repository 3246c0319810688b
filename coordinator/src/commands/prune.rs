//! `llmprune prune`: pruning a model on the run's workers (one in this process by default, or
//! `--local-workers`/`--workers` as pipeline stages × replicas) into a new model directory with
//! its `plan.json` and `prune_report.json`.

use crate::cli::PruneArgs;
use crate::cluster::driver::{Cluster, RunFailed};
use crate::cluster::evaluate::{perplexities_on_cluster, Perplexities, PplJob};
use crate::cluster::load::{ModelFiles, RankReport};
use crate::cluster::prune::{ClusterEngine, ScoreCheckpoints};
use crate::commands::cluster::{on_cluster, ClusterSession};
use crate::commands::{checkpoint_dir, create_output};
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::jobs::PruneSettings;
use llmprune_shared::plan::{Plan, PlanModel, PlanStep};
use llmprune_shared::planner::{prune_steps, Criterion, ModeName, PruneRequest, StepSeconds};
use llmprune_shared::results::Latency;
use llmprune_shared::{ModelSpec, PyRandom};
use llmprune_worker::calibration::{read_rows, read_token_ids, sample_windows_with};
use llmprune_worker::export::ModelDir;
use llmprune_worker::loader::{model_checksum, open_model, TextTokenizer};
use llmprune_worker::prune::pipeline::Calibration;
use serde_json::json;
use std::time::Instant;

/// The paper's Table 3 columns that need no timing: parameters, MACs of one 64-token
/// sequence, f32 weight memory.
pub(crate) fn table3(spec: &ModelSpec) -> serde_json::Value {
    json!({"params": spec.n_params(), "macs_64_tokens": spec.forward_flops(1, 64) / 2.0,
           "weight_mib_f32": spec.n_params() as f64 * 4.0 / (1 << 20) as f64})
}

/// Prints the parameter change and each layer's widths.
pub(crate) fn print_shapes(before: &ModelSpec, after: &ModelSpec) {
    let (b, a) = (before.n_params(), after.n_params());
    println!("parameters {b} -> {a} ({:.2}%), hidden {} -> {}", 100.0 * a as f64 / b as f64, before.hidden_size, after.hidden_size);
    println!("{:>8} {:>6} {:>8} {:>6}", "layer", "heads", "kv heads", "mlp");
    for (i, l) in after.layers.iter().enumerate() {
        println!("{i:>8} {:>6} {:>8} {:>6}", l.n_heads, l.n_kv_heads, l.intermediate_size);
    }
}

/// The checks of the flags alone, before any model is opened.
pub(crate) fn check_args(args: &PruneArgs) -> Result<()> {
    args.job.validate().map_err(|e| anyhow!(e.as_flag()))?;
    args.cluster.check()?;
    let workers = args.cluster.local_workers.or(args.cluster.workers);
    match (args.cluster.replicas, workers) {
        (0, _) => return Err(anyhow!("--replicas must be at least 1")),
        (r, None) if r > 1 => return Err(anyhow!("--replicas {r} needs a cluster: add --local-workers N or --workers N")),
        (r, Some(n)) if !n.is_multiple_of(r) => return Err(anyhow!("--replicas {r} must divide the {n} workers (N/R pipeline stages × R replicas)")),
        _ => {}
    }
    eval_ppl_job(&args.job)?;
    Ok(())
}

pub fn run(settings: &Settings, run_id: &str, args: PruneArgs, shared: Option<&mut ClusterSession>) -> Result<()> {
    let span = tracing::info_span!("prune", run_id, phase = "prune", rank = 0);
    let _enter = span.enter();
    check_args(&args)?;
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let eval_ppl = eval_ppl_job(&args.job)?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let t0 = Instant::now();
    let opened = open_model(&model_path).with_context(|| format!("opening {}", model_path.display()))?;
    let checksum = model_checksum(&model_path)?;
    let spec_before = opened.spec.clone();
    let tokenizer = opened.tokenizer;
    drop(opened.weights);
    let job = &args.job;
    let req = job.request(spec_before.n_layers()).map_err(|e| anyhow!(e.as_flag()))?;
    let (mut calibration, calibration_json): (Box<Calibration>, _) = match &job.calibration_ids {
        Some(path) => {
            let w = read_token_ids(path, spec_before.vocab_size).map_err(|e| anyhow!("--calibration-ids {e}"))?;
            // Verbatim windows: every step uses them.
            (Box::new(move |_step| Ok(w.clone())), json!({"ids": path.display().to_string()}))
        }
        None if !job.calibration.is_empty() => {
            let rows = read_rows(&job.calibration).map_err(|e| anyhow!("--calibration {e}"))?;
            let files: Vec<String> = job.calibration.iter().map(|p| p.display().to_string()).collect();
            let (samples, seq_len) = (job.samples, job.seq_len);
            // One seeded stream for all steps: each step draws fresh windows, as the reference.
            let mut rng = PyRandom::new(job.seed);
            let tokenizer = &tokenizer;
            let draw = move |_step| Ok(sample_windows_with(&rows, tokenizer, samples, seq_len, &mut rng)?.into_iter().map(|w| w.ids).collect());
            (Box::new(draw), json!({"text": files, "samples": job.samples, "seq_len": job.seq_len, "seed": job.seed}))
        }
        None => (Box::new(|_step| Ok(Vec::new())), serde_json::Value::Null),
    };
    let criterion = req.criterion.name();
    // Random and activation scores reduce nothing.
    let reduction = (req.criterion.needs_gradient() || matches!(req.criterion, Criterion::L1 | Criterion::L2)).then(|| req.reduction.name());
    let settings_json = json!({
        "strategy": req.strategy.name(),
        "ratio": job.ratio,
        "attn_layers": [req.attn_layers.start, req.attn_layers.end],
        "mlp_layers": [req.mlp_layers.start, req.mlp_layers.end],
        "layers": [req.layers.start, req.layers.end],
        "criterion": criterion,
        "reduction": reduction,
        "scope": req.scope.name(),
        "normalize": job.normalize,
        "layer_profile": req.profile.name(),
        "reconstruct": job.reconstruct,
        "compensate_bias": job.compensate_bias,
        "damping": job.damping,
        "gqa": req.gqa.name(),
        "round_to": job.round_to,
        "iterative_steps": job.iterative_steps,
        "seed": job.seed,
        "calibration": calibration_json,
        "dtype": WeightDtype::name_or_auto(job.dtype),
    });
    let (out, _partial) = create_output(&args.out, args.cluster.resume)?;
    let work = PruneJob {
        model: ModelFiles { spec: &spec_before, path: &model_path, sha256: &checksum, dtype: job.dtype },
        req: &req,
        checkpoints: ScoreCheckpoints { dir: checkpoint_dir(&args.out), resume: args.cluster.resume, fingerprint: format!("{checksum} {settings_json}") },
        replicas: args.cluster.replicas,
        max_shard_bytes: job.max_shard_size,
        eval_ppl: eval_ppl.as_ref(),
        out: &out,
        tokenizer: &tokenizer,
        started: t0,
    };
    let outcome = on_cluster(shared, settings, &args.cluster, run_id, async |cluster: &mut Cluster| prune_on_cluster(cluster, work, &mut *calibration).await)
        .inspect_err(|e| {
        // Scores are kept for `--resume` only where a rerun may get further.
        if !RunFailed::is_retryable(e) {
            let _ = std::fs::remove_dir_all(checkpoint_dir(&args.out));
        }
    })?;
    let spec_after = &outcome.spec;
    let seconds = &outcome.seconds;
    let mut report = serde_json::Map::new();
    report.insert("cluster".into(), json!({"workers": outcome.ranks.len(), "replicas": args.cluster.replicas, "ranks": outcome.ranks}));
    // Total: until the workers' shards are saved.
    report.insert(
        "seconds".into(),
        json!({"load": outcome.load_s, "scoring": seconds.scoring, "planning": seconds.planning, "slicing": seconds.slicing, "total": outcome.total_s}),
    );
    let model = PlanModel { path: model_path.display().to_string(), sha256: checksum, params: spec_before.n_params() };
    let plan = Plan::new(model, settings_json, outcome.steps);
    let mut before = table3(&spec_before);
    let mut after = table3(spec_after);
    let mut ppl = serde_json::Map::new();
    if let (Some(job), Some(measured)) = (&eval_ppl, outcome.measured) {
        if let (Some(b), Some(a)) = (&outcome.latency_before, &measured.latency) {
            let dataset = job.data.first().map(|(name, _)| name.clone());
            let what = json!({"dataset": dataset, "chunks": job.latency_chunks, "seq_len": job.seq_len, "batch": 1});
            for (stats, latency) in [(&mut before, b), (&mut after, a)] {
                stats["latency_s_per_chunk"] = json!(latency.median());
                stats["latency"] = latency.to_json();
                stats["latency_measured_on"] = what.clone();
            }
        }
        ppl = measured.results;
    }
    report.insert("ppl".into(), json!(ppl));
    report.insert("statistics".into(), json!({"before": before, "after": after}));
    report.insert("params_before".into(), json!(spec_before.n_params()));
    report.insert("params_after".into(), json!(spec_after.n_params()));
    report.insert("criterion".into(), json!(criterion));
    report.insert("dtype".into(), json!(outcome.dtype.name()));
    report.insert("ratio".into(), json!(job.ratio));
    // This process's peak: with its in-process worker, the whole job; beside worker processes,
    // the coordinator's share (theirs are under `cluster.ranks`).
    report.insert("peak_rss_mib".into(), json!(llmprune_worker::memory::peak_rss_mb()));
    out.write_json("plan.json", &serde_json::to_value(&plan)?)?;
    out.write_json("prune_report.json", &serde_json::Value::Object(report))?;
    out.commit()?;
    // The run is complete: its score checkpoints are no longer needed for --resume.
    let _ = std::fs::remove_dir_all(checkpoint_dir(&args.out));
    tracing::info!(params_before = spec_before.n_params(), params_after = spec_after.n_params(), out = %args.out.display(), "pruned");
    print_shapes(&spec_before, spec_after);
    println!("model: {}", args.out.display());
    Ok(())
}

/// `--eval-ppl` (with `--latency-chunks`): the pruned model's perplexity and latency.
fn eval_ppl_job(job: &PruneSettings) -> Result<Option<PplJob>> {
    if job.eval_ppl.is_empty() {
        return Ok(None);
    }
    let ppl = crate::commands::ppl::ppl_job("--eval-ppl", &job.eval_ppl, job.eval_seq_len, 4, job.eval_max_chunks)?;
    Ok(Some(PplJob { latency_chunks: job.latency_chunks, ..ppl }))
}

/// What a prune runs on the cluster.
struct PruneJob<'a> {
    model: ModelFiles<'a>,
    req: &'a PruneRequest,
    checkpoints: ScoreCheckpoints,
    replicas: usize,
    max_shard_bytes: u64,
    eval_ppl: Option<&'a PplJob>,
    out: &'a ModelDir,
    tokenizer: &'a TextTokenizer,
    /// When the command started: the report's total runs from here to the saved shards.
    started: Instant,
}

/// What the cluster's prune produced (its shards written and indexed in the output).
struct PruneOutcome {
    spec: ModelSpec,
    steps: Vec<PlanStep>,
    load_s: f64,
    total_s: f64,
    seconds: StepSeconds,
    ranks: Vec<RankReport>,
    /// The model's latency before pruning, when measured (the whole model on a worker).
    latency_before: Option<Latency>,
    /// `--eval-ppl` of the pruned model as written.
    measured: Option<Perplexities>,
    /// The dtype the weights were held and written in.
    dtype: WeightDtype,
}

/// The planner's step loop over the cluster's workers, which then write their shards into the
/// output; then, with `--eval-ppl`, the written model's perplexity on the same workers.
async fn prune_on_cluster(cluster: &mut Cluster, job: PruneJob<'_>, calibration: &mut Calibration<'_>) -> Result<PruneOutcome> {
    let latency_req = job.eval_ppl.filter(|j| j.latency_chunks > 0).map(PplJob::request);
    let mut engine = ClusterEngine::load(cluster, job.model, job.replicas, Some(job.checkpoints)).await?;
    let latency_before = match &latency_req {
        Some(req) => engine.latency(req).await?,
        None => None,
    };
    let outcome = prune_steps(&mut engine, job.model.spec, job.req, calibration).await?;
    engine.save(job.out.path(), job.max_shard_bytes).await?;
    let total_s = job.started.elapsed().as_secs_f64();
    let (load_s, ranks, dtype) = (engine.load_s, std::mem::take(&mut engine.ranks), engine.dtype);
    drop(engine);
    job.out.write_model_files(&outcome.spec, job.tokenizer, dtype)?;
    let measured = match job.eval_ppl {
        Some(ppl) => {
            let sha = model_checksum(job.out.path())?;
            let pruned = ModelFiles { spec: &outcome.spec, path: job.out.path(), sha256: &sha, dtype: Some(dtype) };
            // Latency after only where it was timed before, on the same kind of worker.
            let ppl = PplJob { latency_chunks: if latency_before.is_some() { ppl.latency_chunks } else { 0 }, ..ppl.clone() };
            Some(perplexities_on_cluster(cluster, pruned, &ppl).await?)
        }
        None => None,
    };
    Ok(PruneOutcome { spec: outcome.spec, steps: outcome.steps, load_s, total_s, seconds: outcome.seconds, ranks, latency_before, measured, dtype })
}
