//! `llmprune apply-plan`: replays a `plan.json` on the model it was made for, on the run's
//! workers (one in this process by default), through the planner's replay over the same engine
//! and stage code `prune` cuts with, so the output is the model `prune` wrote.

use crate::cli::ApplyPlanArgs;
use crate::cluster::driver::Cluster;
use crate::cluster::load::ModelFiles;
use crate::cluster::prune::ClusterEngine;
use crate::commands::cluster::on_cluster;
use crate::commands::create_output;
use crate::fetch::resolve_model;
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::plan::Plan;
use llmprune_shared::planner::replay_steps;
use llmprune_worker::loader::{model_checksum, open_model};
use serde_json::json;
use std::time::Instant;

pub fn run(settings: &Settings, run_id: &str, args: ApplyPlanArgs) -> Result<()> {
    let span = tracing::info_span!("apply_plan", run_id, phase = "slicing", rank = 0);
    let _enter = span.enter();
    args.cluster.check()?;
    if args.cluster.replicas != 1 || args.cluster.resume {
        return Err(anyhow!("apply-plan scores nothing: --replicas and --resume do not apply"));
    }
    if args.out.exists() {
        return Err(anyhow!("--out {}: already exists; remove it or choose another directory", args.out.display()));
    }
    let text = std::fs::read_to_string(&args.plan).with_context(|| format!("--plan {}: cannot read", args.plan.display()))?;
    let plan = Plan::from_json(&text).map_err(|e| anyhow!("--plan {}: {e}", args.plan.display()))?;
    let model_path = resolve_model(&args.model, &settings.cache_dir, &settings.python)?;
    let checksum = model_checksum(&model_path)?;
    if checksum != plan.model.sha256 {
        return Err(anyhow!(
            "--plan {} was made for the model with sha256 {} ({}); --model {} has sha256 {checksum}",
            args.plan.display(),
            plan.model.sha256,
            plan.model.path,
            model_path.display()
        ));
    }
    let t = Instant::now();
    let opened = open_model(&model_path).with_context(|| format!("opening {}", model_path.display()))?;
    let (before, tokenizer) = (opened.spec.clone(), opened.tokenizer);
    drop(opened.weights);
    let failed = |(k, e): (usize, anyhow::Error)| anyhow!("--plan {} step {}: {e:#}", args.plan.display(), k + 1);
    let (out, _partial) = create_output(&args.out, false)?;
    // Loaded exactly as `prune` loaded it (in the dtype its plan records), so the replay
    // starts from the same weights.
    let dtype = plan_dtype(&plan.settings).with_context(|| format!("--plan {}", args.plan.display()))?;
    let model = ModelFiles { spec: &before, path: &model_path, sha256: &checksum, dtype };
    let (spec, dtype) = on_cluster(None, settings, &args.cluster, run_id, async |cluster: &mut Cluster| {
        let mut engine = ClusterEngine::load(cluster, model, 1, None).await?;
        let spec = replay_steps(&mut engine, &before, &plan.steps).await.map_err(failed)?;
        engine.save(out.path(), args.output.max_shard_size).await?;
        Ok((spec, engine.dtype))
    })?;
    let report = json!({
        "plan": args.plan.display().to_string(),
        "params_before": before.n_params(),
        "params_after": spec.n_params(),
        "statistics": {"before": crate::commands::prune::table3(&before), "after": crate::commands::prune::table3(&spec)},
        "seconds": t.elapsed().as_secs_f64(),
    });
    out.write_model_files(&spec, &tokenizer, dtype)?;
    out.write_json("plan.json", &serde_json::to_value(&plan)?)?;
    out.write_json("apply_report.json", &report)?;
    out.commit()?;
    crate::commands::prune::print_shapes(&before, &spec);
    println!("model: {}", args.out.display());
    Ok(())
}

/// The dtype the plan's prune held the weights in: its `dtype` setting (`auto`: the workers'
/// default, as then); plans from before the setting existed were made in f32.
fn plan_dtype(settings: &serde_json::Value) -> Result<Option<WeightDtype>> {
    match settings.get("dtype").and_then(serde_json::Value::as_str) {
        None => Ok(Some(WeightDtype::F32)),
        Some(name) => WeightDtype::parse_name_or_auto(name).map_err(|e| anyhow!("settings.dtype {e}")),
    }
}
